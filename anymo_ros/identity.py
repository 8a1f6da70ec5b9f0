"""Stable object ids across frames and windows.

A region inherits the id that most of its tracks carried last frame, or failing that the id
whose previous mask (carried along the flow) it overlaps most. Regions claiming the same id
close together are one object seen in pieces and are merged; far apart, the larger keeps the
id. What matches nothing is compared with recently lost objects at their predicted position,
which carries an id through a short occlusion. Ids are never reused within a run.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from anymo_ros.config import IdentityConfig

_MIN_MASK_OVERLAP = 0.3
_MERGE_GAP = 0.05            # fraction of the image diagonal between pieces of one object
_REIDENTIFY_GATE = 0.15      # fraction of the image diagonal around a lost object's prediction


@dataclass
class ObjectMemory:
    object_id: int
    first_seen: float
    first_frame: int
    last_frame: int
    centroid: np.ndarray      # (2,) flow px
    velocity: np.ndarray      # (2,) flow px per frame
    area: float


@dataclass
class Claim:
    """Evidence that a region is a known object."""

    track_votes: dict[int, int]       # previous object id -> number of the region's tracks carrying it
    mask_overlap: dict[int, float]    # previous object id -> fraction of the region on its old mask


class IdentityTracker:
    """Assigns persistent ids to the regions of each frame."""

    def __init__(self, config: IdentityConfig):
        self.config = config
        self._next_id = 1
        self.memory: dict[int, ObjectMemory] = {}

    def reset(self) -> None:
        """Forget the objects (a new scene); ids keep counting up so none is reused."""
        self.memory.clear()

    def assign(self, masks: list[np.ndarray], track_counts: list[int], claims: list[Claim],
               frame_index: int, stamp: float) -> list[tuple[int, list[int]]]:
        """Returns (object id, indices of the regions forming it) per object of this frame."""
        height, width = masks[0].shape if masks else (1, 1)
        diagonal = float(np.hypot(height, width))
        candidates = []  # (score, region, id)
        for region, claim in enumerate(claims):
            total = max(track_counts[region], 1)
            for object_id in set(claim.track_votes) | set(claim.mask_overlap):
                if object_id not in self.memory:
                    continue
                vote = claim.track_votes.get(object_id, 0) / total
                overlap = claim.mask_overlap.get(object_id, 0.0)
                if vote >= self.config.min_track_overlap or overlap >= _MIN_MASK_OVERLAP:
                    candidates.append((vote + overlap, region, object_id))
        candidates.sort(key=lambda c: -c[0])
        centroids = [_centroid(mask) for mask in masks]
        groups: dict[int, list[int]] = {}
        taken: set[int] = set()
        for _, region, object_id in candidates:
            if region in taken:
                continue
            members = groups.get(object_id)
            if members is None:
                groups[object_id] = [region]
            elif _gap(masks, members, region) <= _MERGE_GAP * diagonal:
                members.append(region)
            else:
                continue
            taken.add(region)
        seen = set(groups)
        for region in range(len(masks)):
            if region in taken:
                continue
            object_id = self._reidentify(centroids[region], frame_index, seen, diagonal)
            if object_id is None:
                object_id = self._next_id
                self._next_id += 1
            groups[object_id] = [region]
            seen.add(object_id)
        self._remember(groups, masks, frame_index, stamp)
        return sorted(groups.items())

    def _reidentify(self, centroid: np.ndarray, frame_index: int, seen: set[int], diagonal: float) -> int | None:
        best, best_distance = None, _REIDENTIFY_GATE * diagonal
        for memory in self.memory.values():
            if memory.object_id in seen or memory.last_frame >= frame_index:
                continue
            elapsed = frame_index - memory.last_frame
            predicted = memory.centroid + memory.velocity * elapsed
            distance = float(np.linalg.norm(predicted - centroid))
            if distance < best_distance + 0.5 * np.sqrt(memory.area):
                best, best_distance = memory.object_id, distance
        return best

    def _remember(self, groups: dict[int, list[int]], masks: list[np.ndarray], frame_index: int, stamp: float) -> None:
        for object_id, members in groups.items():
            union = np.logical_or.reduce([masks[m] for m in members])
            centroid = _centroid(union)
            memory = self.memory.get(object_id)
            if memory is None:
                self.memory[object_id] = ObjectMemory(object_id, stamp, frame_index, frame_index, centroid,
                                                      np.zeros(2), float(union.sum()))
                continue
            elapsed = max(frame_index - memory.last_frame, 1)
            step = (centroid - memory.centroid) / elapsed
            memory.velocity = 0.5 * memory.velocity + 0.5 * step
            memory.centroid, memory.area, memory.last_frame = centroid, float(union.sum()), frame_index
        expired = [oid for oid, m in self.memory.items() if frame_index - m.last_frame > self.config.max_lost_frames]
        for object_id in expired:
            del self.memory[object_id]


def _centroid(mask: np.ndarray) -> np.ndarray:
    rows, cols = np.nonzero(mask)
    if len(rows) == 0:
        return np.zeros(2)
    return np.array([cols.mean(), rows.mean()])


def _gap(masks: list[np.ndarray], members: list[int], region: int) -> float:
    """Distance between the bounding boxes of a region and a group of regions (0 if they touch)."""
    def box(mask):
        rows, cols = np.nonzero(mask)
        return np.array([cols.min(), rows.min(), cols.max(), rows.max()], float)
    group_boxes = np.array([box(masks[m]) for m in members])
    lo = group_boxes[:, :2].min(axis=0)
    hi = group_boxes[:, 2:].max(axis=0)
    other = box(masks[region])
    dx = max(other[0] - hi[0], lo[0] - other[2], 0.0)
    dy = max(other[1] - hi[1], lo[1] - other[3], 0.0)
    return float(np.hypot(dx, dy))
