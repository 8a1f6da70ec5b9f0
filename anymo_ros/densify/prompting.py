"""The paper's two-stage SAM2 prompting (SegAnyMo), run online on a stream; model-agnostic.

Offline, SegAnyMo prompts SAM2 from the dynamic tracks of the whole video:

* Stage 1 (grouping): on the frame with the most visible dynamic points, click their medoid;
  dilate the mask (6x6 kernel, 3 iterations); if >= 6 tracks fall in the dilated mask, the tracks in
  the undilated mask form an object; remove every track in the dilated mask; repeat until fewer
  than 6 remain.
* Stage 2 (per object): re-prompt every 16 frames at the medoid of the object's visible tracks;
  if fewer than 70 % of them land in the mask, re-prompt with 3 points (the one nearest the
  centroid and the two farthest from it). Finally merge objects whose masks overlap (IoU > 0.9,
  or one covering >= 90 % of the other) in >= 30 % of the frames.

Online (:class:`TwoStagePrompting`), per frame, on the tracks of that frame:

1. The frame goes to the segmenter. Dynamic tracks are selected with the paper's thresholds
   (the "top 3" fallback keeps only tracks with probability >= 0.5: online it must not keep a
   stopped object alive, and 3 tracks never form a group anyway).
2. Stage 2 for objects due (every ``reprompt_every`` frames since their last prompt): medoid click
   on the object's visible dynamic tracks, then the 3-point click where coverage is short. These
   prompts come before the segmenter propagates to the frame, so they condition it.
3. The segmenter propagates every object to the frame.
4. Stage 1 on the dynamic tracks outside every object's dilated mask ("the current frame is the
   frame with the most visible dynamic points", online). Each click is tried as a new object and
   kept only if the group holds enough tracks and its mask is not an existing object's; otherwise
   it is withdrawn, and its tracks (at least the clicked one and its nearest neighbours) rest for
   ``reprompt_every`` frames.
5. Objects whose tracks have turned static or vanished (or whose mask stays empty) for
   ``drop_patience`` frames are dropped. A pair of objects is merged (the younger id goes, its
   tracks and pixels join the older) once their masks overlapped in ``merge_fraction`` x
   ``merge_window`` of the last ``merge_window`` frames both existed in: the paper's "30 % of the
   frames" over a sliding history (9 of 30 frames by default).

The segmenter is anything implementing :class:`PromptableVideoSegmenter`: the SAM2/EdgeTAM adapter
(:mod:`anymo_ros.densify.sam2`) or, for tests, :class:`OracleSegmenter` on ground-truth masks.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass, field
from typing import Sequence

import cv2
import numpy as np

from anymo_ros.config import Sam2Config

DYNAMIC_THRESHOLDS = (0.95, 0.93, 0.9, 0.85, 0.8, 0.75, 0.7)
MIN_DYNAMIC_TRACKS = 10       # the first threshold leaving at least this many tracks is used...
FALLBACK_TOP_K = 3            # ...else the most dynamic 3
MIN_DYNAMIC_PROBABILITY = 0.5  # the fallback's tracks count only this dynamic (they never form a group)
MAX_CLICKS_PER_FRAME = 10     # stage-1 clicks per frame (the original's iteration cap)
_MEDOID_SAMPLE = 1500         # points above which the medoid is searched on an even subsample


# ---------------------------------------------------------------------------------- segmenter interface
class PromptableVideoSegmenter(ABC):
    """A streaming promptable video segmenter (SAM2-like).

    Use per frame: ``add_frame`` -> any ``prompt`` / ``remove_object`` -> ``masks``. ``prompt``
    clicks on the current frame; ``masks`` returns every object's mask on the current frame
    (propagated from memory, or from this frame's clicks), computing it when needed. Calling
    ``prompt`` again after ``masks`` on the same frame is allowed; the next ``masks`` recomputes.
    """

    name = "segmenter"

    @abstractmethod
    def start(self, frame_size: tuple[int, int]) -> None:
        """Begin a stream of frames of ``frame_size`` = (width, height); forgets every object."""

    @abstractmethod
    def add_frame(self, rgb: np.ndarray) -> int:
        """Append the next (H, W, 3) uint8 RGB frame; returns its index in the stream."""

    @abstractmethod
    def prompt(self, object_id: int, points: np.ndarray, labels: np.ndarray | None = None) -> None:
        """Click ``points`` (K, 2) (x, y pixels) with ``labels`` (K,) (1 = positive, 0 = negative;
        default all positive) for ``object_id`` on the current frame; a new id adds an object.
        Replaces earlier clicks of that object on this frame."""

    @abstractmethod
    def remove_object(self, object_id: int) -> None:
        """Forget an object (no-op for an unknown id)."""

    @abstractmethod
    def masks(self) -> dict[int, np.ndarray]:
        """object id -> (H, W) bool mask on the current frame, for every object."""

    @abstractmethod
    def reset(self) -> None:
        """Forget every object and frame; ``start`` must be called again."""

    @property
    @abstractmethod
    def object_ids(self) -> list[int]:
        """Ids of the objects being tracked."""


class OracleSegmenter(PromptableVideoSegmenter):
    """Ground-truth stand-in for SAM2 in tests.

    Given per-frame instance masks (uint16, 0 = background), a click selects the ground-truth
    object under the positive points (the most common non-zero label among them; an empty mask if
    all are on background), and later frames return that same object's mask: perfect
    propagation. ``log`` records every prompt as (frame index, object id, number of points).
    """

    name = "oracle"

    def __init__(self, instance_masks: Sequence[np.ndarray]):
        self.instance_masks = list(instance_masks)
        self.log: list[tuple[int, int, int]] = []
        self.removed: list[tuple[int, int]] = []
        self.reset()

    def start(self, frame_size: tuple[int, int]) -> None:
        self._frame_size = frame_size
        self._objects: dict[int, int] = {}

    def add_frame(self, rgb: np.ndarray) -> int:
        self._index += 1
        if self._index >= len(self.instance_masks):
            raise IndexError(f"the oracle has ground truth for {len(self.instance_masks)} frames only")
        return self._index

    def prompt(self, object_id: int, points: np.ndarray, labels: np.ndarray | None = None) -> None:
        points = np.asarray(points, np.float32).reshape(-1, 2)
        labels = np.ones(len(points), np.int64) if labels is None else np.asarray(labels)
        truth = self.instance_masks[self._index]
        height, width = truth.shape
        under = []
        for (x, y), label in zip(points, labels):
            col, row = int(round(x)), int(round(y))
            if label == 1 and 0 <= col < width and 0 <= row < height and truth[row, col] > 0:
                under.append(int(truth[row, col]))
        self._objects[int(object_id)] = max(set(under), key=under.count) if under else 0
        self.log.append((self._index, int(object_id), len(points)))

    def remove_object(self, object_id: int) -> None:
        if self._objects.pop(int(object_id), None) is not None:
            self.removed.append((self._index, int(object_id)))

    def masks(self) -> dict[int, np.ndarray]:
        truth = self.instance_masks[self._index]
        return {oid: (truth == gt) if gt > 0 else np.zeros(truth.shape, bool) for oid, gt in self._objects.items()}

    def reset(self) -> None:
        self._index = -1
        self._objects = {}
        self._frame_size = None

    @property
    def object_ids(self) -> list[int]:
        return list(self._objects)

    def truth_of(self, object_id: int) -> int:
        """The ground-truth label an object was prompted on (0: background)."""
        return self._objects[int(object_id)]


# ---------------------------------------------------------------------------------- geometry helpers
def select_dynamic(probability: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """The paper's dynamic-track selection: thresholds 0.95 ... 0.7 in turn, the first leaving >= 10
    tracks; if none does, the 3 most dynamic tracks. Only ``valid`` tracks (finite probability) count."""
    probability = np.asarray(probability, np.float32)
    valid = np.isfinite(probability) if valid is None else (np.asarray(valid, bool) & np.isfinite(probability))
    for threshold in DYNAMIC_THRESHOLDS:
        chosen = valid & (probability >= threshold)
        if chosen.sum() >= MIN_DYNAMIC_TRACKS:
            return chosen
    chosen = np.zeros(len(probability), bool)
    rows = np.flatnonzero(valid)
    if len(rows):
        chosen[rows[np.argsort(-probability[rows], kind="stable")[:FALLBACK_TOP_K]]] = True
    return chosen


def medoid_index(points: np.ndarray) -> int:
    """Index of the point with the smallest summed distance to all others (the original's "densest point")."""
    points = np.asarray(points, np.float64).reshape(-1, 2)
    if len(points) <= 2:
        return 0
    candidates = points
    step = max(1, len(points) // _MEDOID_SAMPLE)
    reference = points[::step]
    distance = np.sqrt(((candidates[:, None, :] - reference[None, :, :]) ** 2).sum(-1)).sum(1)
    return int(np.argmin(distance))


def three_point_prompt(points: np.ndarray) -> np.ndarray:
    """The point nearest the centroid and the two farthest from it (fewer when there are fewer points)."""
    points = np.asarray(points, np.float32).reshape(-1, 2)
    centroid = points.mean(axis=0)
    distance = np.linalg.norm(points - centroid, axis=1)
    nearest = int(np.argmin(distance))
    others = [i for i in np.argsort(distance)[::-1] if i != nearest][:2]
    return points[[nearest] + others]


def dilate(mask: np.ndarray, kernel: int, iterations: int) -> np.ndarray:
    if kernel <= 1 or iterations <= 0:
        return mask.astype(bool, copy=True)
    return cv2.dilate(mask.astype(np.uint8), np.ones((kernel, kernel), np.uint8), iterations=iterations) > 0


def points_in_mask(mask: np.ndarray | None, xy: np.ndarray) -> np.ndarray:
    """Bool (N,): which points (x, y pixels; the pixel they fall in) lie on the mask; outside the image is False."""
    xy = np.asarray(xy, np.float32).reshape(-1, 2)
    if mask is None or len(xy) == 0:
        return np.zeros(len(xy), bool)
    height, width = mask.shape
    finite = np.isfinite(xy).all(axis=1)
    col = np.zeros(len(xy), np.int64)
    row = np.zeros(len(xy), np.int64)
    col[finite] = np.floor(xy[finite, 0] + 0.5).astype(np.int64)
    row[finite] = np.floor(xy[finite, 1] + 0.5).astype(np.int64)
    inside = finite & (col >= 0) & (col < width) & (row >= 0) & (row < height)
    result = np.zeros(len(xy), bool)
    result[inside] = mask[row[inside], col[inside]]
    return result


def masks_overlap(a: np.ndarray, b: np.ndarray, iou: float, cover: float) -> bool:
    """The paper's merge test: IoU above ``iou``, or either mask covered by the other to ``cover``."""
    area_a, area_b = int(a.sum()), int(b.sum())
    if area_a == 0 or area_b == 0:
        return False
    intersection = int(np.logical_and(a, b).sum())
    union = area_a + area_b - intersection
    return intersection / union > iou or intersection / area_a >= cover or intersection / area_b >= cover


# ---------------------------------------------------------------------------------- the online algorithm
@dataclass
class _Object:
    object_id: int
    members: set[int]
    created: int
    last_prompt: int
    missing: int = 0


@dataclass
class PromptingResult:
    """What :meth:`TwoStagePrompting.step` found on one frame."""

    masks: dict[int, np.ndarray]          # object id -> (H, W) bool, non-empty masks only
    track_object: np.ndarray              # (N,) int32 object id per input track, 0 = none
    dynamic: np.ndarray                   # (N,) bool, the tracks selected as dynamic
    created: list[int] = field(default_factory=list)
    dropped: list[int] = field(default_factory=list)
    merged: list[tuple[int, int]] = field(default_factory=list)          # (kept id, merged-away id)
    reprompted: list[tuple[int, int]] = field(default_factory=list)      # (object id, number of points)
    clicks: int = 0                        # stage-1 clicks tried

    def label_image(self, shape: tuple[int, int] | None = None) -> np.ndarray:
        """(H, W) uint16 label image: 0 = static, k = object k; where masks overlap the smaller wins."""
        if shape is None:
            shape = next(iter(self.masks.values())).shape if self.masks else (0, 0)
        labels = np.zeros(shape, np.uint16)
        for object_id, mask in sorted(self.masks.items(), key=lambda item: -int(item[1].sum())):
            labels[mask] = object_id
        return labels


class TwoStagePrompting:
    """Online SegAnyMo prompting of a :class:`PromptableVideoSegmenter` from dynamic point tracks."""

    def __init__(self, segmenter: PromptableVideoSegmenter, config: Sam2Config | None = None):
        self.segmenter = segmenter
        self.config = config or Sam2Config()
        self._next_id = 1
        self.reset()

    def reset(self) -> None:
        """A new stream; ids keep counting up, so none is reused within a run."""
        self.segmenter.reset()
        self._objects: dict[int, _Object] = {}
        self._overlap: dict[tuple[int, int], deque] = {}
        self._resting: dict[int, int] = {}      # track id -> frame until which it may not seed a click
        self._frame_size: tuple[int, int] | None = None

    @property
    def object_ids(self) -> list[int]:
        return sorted(self._objects)

    def members_of(self, object_id: int) -> set[int]:
        return set(self._objects[object_id].members)

    @property
    def next_id(self) -> int:
        """The id the next new object will get; ids are never reused."""
        return self._next_id

    def step(self, rgb: np.ndarray, ids: np.ndarray, xy: np.ndarray, visible: np.ndarray,
             probability: np.ndarray) -> PromptingResult:
        """One frame: ``rgb`` (H, W, 3) uint8; per track its id, (x, y) in ``rgb`` pixels, visibility
        and dynamic probability (NaN = unknown). Returns masks and each track's object."""
        cfg = self.config
        ids = np.asarray(ids, np.int64)
        xy = np.asarray(xy, np.float32).reshape(-1, 2)
        visible = np.asarray(visible, bool) & np.isfinite(xy).all(axis=1)
        probability = np.asarray(probability, np.float32)
        frame_size = (rgb.shape[1], rgb.shape[0])
        if self._frame_size != frame_size:
            if self._frame_size is not None:
                self.reset()
            self.segmenter.start(frame_size)
            self._frame_size = frame_size
        t = self.segmenter.add_frame(rgb)
        dynamic = select_dynamic(probability, visible) & (probability >= MIN_DYNAMIC_PROBABILITY)
        row_of = {int(track_id): row for row, track_id in enumerate(ids)}
        for obj in self._objects.values():
            obj.members &= row_of.keys()
        self._resting = {tid: until for tid, until in self._resting.items() if until > t and tid in row_of}
        result = PromptingResult(masks={}, track_object=np.zeros(len(ids), np.int32), dynamic=dynamic)

        # Stage 2: re-prompt due objects before the segmenter propagates to this frame.
        first_clicks: dict[int, np.ndarray] = {}
        for obj in self._objects.values():
            if t - obj.last_prompt < cfg.reprompt_every:
                continue
            rows = self._support_rows(obj, row_of, visible, dynamic)
            if len(rows) == 0:
                continue
            points = xy[rows]
            self.segmenter.prompt(obj.object_id, points[medoid_index(points)][None], np.ones(1, np.int64))
            obj.last_prompt = t
            first_clicks[obj.object_id] = points
            result.reprompted.append((obj.object_id, 1))
        masks = self.segmenter.masks()
        retried = False
        for object_id, points in first_clicks.items():
            if points_in_mask(masks.get(object_id), points).mean() < cfg.coverage:
                prompt = three_point_prompt(points)
                self.segmenter.prompt(object_id, prompt, np.ones(len(prompt), np.int64))
                result.reprompted.append((object_id, len(prompt)))
                retried = True
        if retried:
            masks = self.segmenter.masks()

        # Stage 1: group the dynamic tracks no object covers into new objects.
        if t % max(1, cfg.discover_every) == 0:
            masks = self._discover(t, ids, xy, visible, dynamic, masks, result)

        # Track membership, and dropping objects whose tracks turned static or vanished.
        for obj in list(self._objects.values()):
            mask = masks.get(obj.object_id)
            inside = points_in_mask(mask, xy) & visible & dynamic
            obj.members.update(int(i) for i in ids[inside])
            supported = len(self._support_rows(obj, row_of, visible, dynamic)) > 0
            empty = mask is None or not mask.any()
            obj.missing = 0 if supported and not empty else obj.missing + 1
            if obj.missing > cfg.drop_patience:
                self._remove(obj.object_id, masks)
                result.dropped.append(obj.object_id)

        self._merge(masks, result)

        # Each track's object: visible, on the mask, and dynamic or a member. Smaller masks win overlaps.
        areas = {oid: int(mask.sum()) for oid, mask in masks.items() if oid in self._objects}
        for object_id in sorted(areas, key=lambda oid: -areas[oid]):
            if areas[object_id] == 0:
                continue
            members = self._objects[object_id].members
            member = np.fromiter((int(i) in members for i in ids), bool, len(ids))
            on_mask = points_in_mask(masks[object_id], xy) & visible & (dynamic | member)
            result.track_object[on_mask] = object_id
            result.masks[object_id] = masks[object_id]
        return result

    # ------------------------------------------------------------------ stages
    def _support_rows(self, obj: _Object, row_of: dict[int, int], visible: np.ndarray,
                      dynamic: np.ndarray) -> np.ndarray:
        rows = np.array([row_of[i] for i in obj.members if i in row_of], np.int64)
        return rows[visible[rows] & dynamic[rows]] if len(rows) else rows

    def _discover(self, t: int, ids: np.ndarray, xy: np.ndarray, visible: np.ndarray, dynamic: np.ndarray,
                  masks: dict[int, np.ndarray], result: PromptingResult) -> dict[int, np.ndarray]:
        cfg = self.config
        candidates = visible & dynamic
        candidates &= np.fromiter((int(i) not in self._resting for i in ids), bool, len(ids))
        for object_id in self._objects:
            mask = masks.get(object_id)
            if mask is not None and mask.any():
                candidates &= ~points_in_mask(dilate(mask, cfg.dilation_kernel, cfg.dilation_iterations), xy)
        rows = np.flatnonzero(candidates)
        clicks = 0
        while len(rows) >= cfg.min_group_tracks and clicks < MAX_CLICKS_PER_FRAME \
                and len(self._objects) < cfg.max_objects:
            clicks += 1
            points = xy[rows]
            clicked = medoid_index(points)
            new_id = self._next_id
            self.segmenter.prompt(new_id, points[clicked][None], np.ones(1, np.int64))
            masks = self.segmenter.masks()
            mask = masks.get(new_id)
            if mask is None:
                mask = np.zeros((self._frame_size[1], self._frame_size[0]), bool)
            in_mask = points_in_mask(mask, points)
            in_dilated = points_in_mask(dilate(mask, cfg.dilation_kernel, cfg.dilation_iterations), points)
            duplicate = any(masks_overlap(mask, masks[other], cfg.merge_iou, cfg.merge_cover)
                            for other in self._objects if other in masks)
            if in_dilated.sum() >= cfg.min_group_tracks and in_mask.any() and not duplicate:
                self._objects[new_id] = _Object(new_id, set(int(i) for i in ids[rows[in_mask]]), t, t)
                self._next_id += 1
                result.created.append(new_id)
                done = in_dilated
            else:
                # Withdrawn. Its tracks, and the clicked track's neighbourhood (a click SAM2 finds
                # nothing at removes no track otherwise), rest instead of being clicked every frame.
                self.segmenter.remove_object(new_id)
                masks.pop(new_id, None)
                distance = np.linalg.norm(points - points[clicked], axis=1)
                done = in_dilated.copy()
                done[np.argsort(distance, kind="stable")[:cfg.min_group_tracks]] = True
                for track_id in ids[rows[done]]:
                    self._resting[int(track_id)] = t + cfg.reprompt_every
            done[clicked] = True
            rows = rows[~done]
        result.clicks = clicks
        return masks

    def _remove(self, object_id: int, masks: dict[int, np.ndarray]) -> None:
        self.segmenter.remove_object(object_id)
        self._objects.pop(object_id, None)
        masks.pop(object_id, None)
        for pair in [pair for pair in self._overlap if object_id in pair]:
            del self._overlap[pair]

    def _merge(self, masks: dict[int, np.ndarray], result: PromptingResult) -> None:
        cfg = self.config
        needed = max(1, int(np.ceil(cfg.merge_fraction * cfg.merge_window)))
        alive = sorted(oid for oid in self._objects if oid in masks)
        for i, first in enumerate(alive):
            for second in alive[i + 1:]:
                history = self._overlap.setdefault((first, second), deque(maxlen=cfg.merge_window))
                history.append(masks_overlap(masks[first], masks[second], cfg.merge_iou, cfg.merge_cover))
        for (first, second), history in sorted(self._overlap.items()):
            if first not in self._objects or second not in self._objects or sum(history) < needed:
                continue
            # The older object keeps its id and takes the other's tracks and pixels.
            self._objects[first].members |= self._objects[second].members
            masks[first] = masks[first] | masks[second]
            self._remove(second, masks)
            result.merged.append((first, second))
