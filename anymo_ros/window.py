"""Sliding window of the last W frames of track states, and per-track value alignment."""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np


@dataclass
class WindowTracks:
    """Dense (track, time) view of the window, oldest frame first."""

    ids: np.ndarray          # (N,)
    xy: np.ndarray           # (N, T, 2) float32, NaN where the track has no state
    visible: np.ndarray      # (N, T) bool
    confidence: np.ndarray   # (N, T) float32
    depth: np.ndarray | None  # (N, T) float32, NaN where unknown; None without a depth source
    stamps: np.ndarray       # (T,) float64 seconds


@dataclass
class _FrameEntry:
    frame_index: int
    stamp: float
    ids: np.ndarray
    xy: np.ndarray
    visible: np.ndarray
    confidence: np.ndarray
    depth: np.ndarray | None


class TrackWindow:
    """Ring buffer of per-frame track states; memory is bounded by ``length`` frames."""

    def __init__(self, length: int):
        if length < 2:
            raise ValueError(f"window length must be at least 2 frames, got {length}")
        self.length = length
        self._frames: deque[_FrameEntry] = deque(maxlen=length)

    def __len__(self) -> int:
        return len(self._frames)

    def reset(self) -> None:
        self._frames.clear()

    def append(self, frame_index: int, stamp: float, ids: np.ndarray, xy: np.ndarray, visible: np.ndarray,
               confidence: np.ndarray, depth: np.ndarray | None = None) -> None:
        order = np.argsort(ids, kind="stable")
        self._frames.append(_FrameEntry(
            frame_index, stamp, ids[order], xy[order], visible[order], confidence[order],
            None if depth is None else depth[order]))

    def add_to_newest(self, ids: np.ndarray, xy: np.ndarray, confidence: np.ndarray) -> None:
        """Add visible tracks to the newest frame: tracks born at the next frame that the
        tracker followed one frame back. ``ids`` must not be in that frame yet; depth there is unknown."""
        if not self._frames or len(ids) == 0:
            return
        frame = self._frames[-1]
        all_ids = np.concatenate([frame.ids, ids])
        order = np.argsort(all_ids, kind="stable")
        depth = None if frame.depth is None else np.concatenate([frame.depth, np.full(len(ids), np.nan, np.float32)])[order]
        self._frames[-1] = _FrameEntry(
            frame.frame_index, frame.stamp, all_ids[order], np.concatenate([frame.xy, xy])[order],
            np.concatenate([frame.visible, np.ones(len(ids), bool)])[order],
            np.concatenate([frame.confidence, confidence])[order], depth)

    def tracks(self, ids: np.ndarray) -> WindowTracks:
        """The window's history of the given track ids."""
        count, steps = len(ids), len(self._frames)
        xy = np.full((count, steps, 2), np.nan, np.float32)
        visible = np.zeros((count, steps), bool)
        confidence = np.zeros((count, steps), np.float32)
        has_depth = steps > 0 and all(f.depth is not None for f in self._frames)
        depth = np.full((count, steps), np.nan, np.float32) if has_depth else None
        for step, frame in enumerate(self._frames):
            rows, found = lookup(frame.ids, ids)
            xy[found, step] = frame.xy[rows]
            visible[found, step] = frame.visible[rows]
            confidence[found, step] = frame.confidence[rows]
            if depth is not None:
                depth[found, step] = frame.depth[rows]
        stamps = np.array([f.stamp for f in self._frames], np.float64)
        return WindowTracks(ids, xy, visible, confidence, depth, stamps)

    def positions(self, ids: np.ndarray, age: int) -> tuple[np.ndarray, np.ndarray]:
        """Positions (N, 2; NaN where unknown) and visibility of the given track ids ``age``
        frames before the newest frame: the cheap path when two frames are all that is needed."""
        frame = self._frames[-1 - age]
        rows, found = lookup(frame.ids, ids)
        xy = np.full((len(ids), 2), np.nan, np.float32)
        xy[found] = frame.xy[rows]
        visible = np.zeros(len(ids), bool)
        visible[found] = frame.visible[rows]
        return xy, visible


def lookup(sorted_ids: np.ndarray, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``query`` ids in ``sorted_ids``: (rows of the found ones, mask of found queries)."""
    if len(sorted_ids) == 0:
        return np.zeros(0, np.int64), np.zeros(len(query), bool)
    position = np.clip(np.searchsorted(sorted_ids, query), 0, len(sorted_ids) - 1)
    found = sorted_ids[position] == query
    return position[found], found


def carry_over(old_ids: np.ndarray, old_values: np.ndarray, new_ids: np.ndarray, fill) -> np.ndarray:
    """Values of ``old_ids`` (sorted) re-indexed to ``new_ids``; ids not seen before get ``fill``."""
    values = np.empty((len(new_ids),) + old_values.shape[1:], old_values.dtype)
    values[...] = fill
    rows, found = lookup(old_ids, new_ids)
    values[found] = old_values[rows]
    return values
