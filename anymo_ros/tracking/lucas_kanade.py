"""Pyramidal Lucas-Kanade point tracker with a forward-backward check and grid re-seeding."""
from __future__ import annotations

import cv2
import numpy as np

from anymo_ros.config import TrackerConfig
from anymo_ros.tracking.base import PointTracker, TrackUpdate

_MAX_TRACKS_PER_CELL = 2  # lets tracks converge a little before the youngest are dropped


class LucasKanadeTracker(PointTracker):
    """Tracks corners frame to frame; lost points end their track, empty grid cells get new ones.

    Visibility is the forward-backward test (status of both passes and error below
    ``fb_threshold``); confidence is ``exp(-fb_error / fb_threshold)``, and the position error of
    the step is half the forward-backward error (two passes' errors add up). LK cannot re-find an
    occluded point, so an occluded track ends and a fresh one is seeded when the area reappears.
    A new point is also followed one frame back, under the same test: where that succeeds, the
    track is born with its first step (and its confidence and error), so it can be classified a
    frame earlier. On a mover whose tracks are short-lived (blur, deformation) that frame is much
    of their life.
    """

    name = "lk"

    def __init__(self, config: TrackerConfig):
        self.config = config
        self._criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 20, 0.03)
        self._next_id = 1
        self.reset()

    def reset(self) -> None:
        self._prev_gray: np.ndarray | None = None
        self._xy = np.zeros((0, 2), np.float32)
        self._ids = np.zeros(0, np.int64)

    def push(self, gray: np.ndarray, frame_index: int) -> list[TrackUpdate]:
        if self._prev_gray is not None and self._prev_gray.shape != gray.shape:
            self.reset()
        previous_gray = self._prev_gray
        if previous_gray is not None and len(self._ids):
            update = self._track(gray, frame_index)
        else:
            update = _empty_update(frame_index)
        self._prev_gray = gray
        born_ids, born_xy = self._seed(gray)
        count = len(born_ids)
        born_previous_xy = np.full((count, 2), np.nan, np.float32)
        born_confidence = np.ones(count, np.float32)
        born_error = np.zeros(count, np.float32)   # no step, no error
        if count and previous_gray is not None:
            back_xy, followed, confidence, born_error = self._follow(gray, previous_gray, born_xy)
            born_previous_xy[followed] = back_xy[followed]
            born_confidence[followed] = confidence[followed]
        return [TrackUpdate(
            frame_index,
            np.concatenate([update.ids, born_ids]),
            np.concatenate([update.xy, born_xy]),
            np.concatenate([update.visible, np.ones(count, bool)]),
            np.concatenate([update.confidence, born_confidence]),
            np.concatenate([update.born, np.ones(count, bool)]),
            np.concatenate([update.position_error, born_error]),
            np.concatenate([np.full((len(update.ids), 2), np.nan, np.float32), born_previous_xy]),
        )]

    def _follow(self, source: np.ndarray, target: np.ndarray,
                xy: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Points ``xy`` of ``source`` found in ``target``: positions, whether they pass the
        forward-backward test, and the confidence and position error (px) of that step (0 where
        it fails)."""
        cfg = self.config
        window = (cfg.lk_window, cfg.lk_window)
        found, status_fwd, _ = cv2.calcOpticalFlowPyrLK(
            source, target, xy.reshape(-1, 1, 2), None, winSize=window, maxLevel=cfg.lk_levels,
            criteria=self._criteria)
        back, status_bwd, _ = cv2.calcOpticalFlowPyrLK(
            target, source, found, None, winSize=window, maxLevel=cfg.lk_levels, criteria=self._criteria)
        found = found.reshape(-1, 2)
        fb_error = np.linalg.norm(back.reshape(-1, 2) - xy, axis=1)
        height, width = target.shape
        # LK's window must lie in the image; half outside, it drifts with the border.
        margin = cfg.lk_window / 2
        inside = (found[:, 0] >= margin) & (found[:, 0] <= width - 1 - margin) & \
            (found[:, 1] >= margin) & (found[:, 1] <= height - 1 - margin)
        passed = (status_fwd.ravel() == 1) & (status_bwd.ravel() == 1) & (fb_error < cfg.fb_threshold) & inside
        passed &= np.isfinite(found).all(axis=1)
        confidence = np.where(passed, np.exp(-fb_error / cfg.fb_threshold), 0.0).astype(np.float32)
        position_error = np.where(passed, fb_error / 2, 0.0).astype(np.float32)
        return found.astype(np.float32), passed, confidence, position_error

    def _track(self, gray: np.ndarray, frame_index: int) -> TrackUpdate:
        cfg = self.config
        p1, visible, confidence, position_error = self._follow(self._prev_gray, gray, self._xy)
        update = TrackUpdate(frame_index, self._ids.copy(), p1, visible, confidence,
                             np.zeros(len(self._ids), bool), position_error)
        keep = visible & _not_crowded(p1, self._ids, cfg.grid_spacing, gray.shape)
        self._xy = p1[keep].astype(np.float32)
        self._ids = self._ids[keep]
        return update

    def _seed(self, gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One new point at the strongest corner of every grid cell that has no live track."""
        cfg = self.config
        spacing = cfg.grid_spacing
        rows, cols = gray.shape[0] // spacing, gray.shape[1] // spacing
        budget = cfg.max_tracks - len(self._ids)
        if rows == 0 or cols == 0 or budget <= 0:
            return np.zeros(0, np.int64), np.zeros((0, 2), np.float32)
        strength = cv2.cornerMinEigenVal(gray, blockSize=3)[: rows * spacing, : cols * spacing]
        cells = strength.reshape(rows, spacing, cols, spacing).transpose(0, 2, 1, 3).reshape(rows, cols, -1)
        best = cells.argmax(axis=2)
        best_strength = np.take_along_axis(cells, best[..., None], axis=2)[..., 0]
        occupied = np.zeros((rows, cols), bool)
        if len(self._xy):
            cell_x = np.clip((self._xy[:, 0] // spacing).astype(int), 0, cols - 1)
            cell_y = np.clip((self._xy[:, 1] // spacing).astype(int), 0, rows - 1)
            occupied[cell_y, cell_x] = True
        threshold = cfg.min_corner_quality * max(float(strength.max()), 1e-12)
        candidates = ~occupied & (best_strength > threshold)
        cy, cx = np.nonzero(candidates)
        if len(cy) > budget:
            strongest = np.argsort(-best_strength[cy, cx])[:budget]
            cy, cx = cy[strongest], cx[strongest]
        offset = best[cy, cx]
        xy = np.stack([cx * spacing + offset % spacing, cy * spacing + offset // spacing], axis=1).astype(np.float32)
        ids = np.arange(self._next_id, self._next_id + len(xy), dtype=np.int64)
        self._next_id += len(xy)
        self._xy = np.concatenate([self._xy, xy])
        self._ids = np.concatenate([self._ids, ids])
        return ids, xy


def _not_crowded(xy: np.ndarray, ids: np.ndarray, spacing: int, shape: tuple[int, int]) -> np.ndarray:
    """False for the youngest tracks of a grid cell holding more than the allowed number."""
    cols = max(shape[1] // spacing, 1)
    cell = (np.clip(xy[:, 1], 0, shape[0] - 1) // spacing).astype(np.int64) * (cols + 1) + \
        (np.clip(xy[:, 0], 0, shape[1] - 1) // spacing).astype(np.int64)
    order = np.lexsort((ids, cell))  # oldest (smallest id) first within a cell
    sorted_cell = cell[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_cell)) + 1]
    rank = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    keep = np.empty(len(xy), bool)
    keep[order] = rank < _MAX_TRACKS_PER_CELL
    return keep


def _empty_update(frame_index: int) -> TrackUpdate:
    return TrackUpdate(frame_index, np.zeros(0, np.int64), np.zeros((0, 2), np.float32), np.zeros(0, bool),
                       np.zeros(0, np.float32), np.zeros(0, bool), np.zeros(0, np.float32))
