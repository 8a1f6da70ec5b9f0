"""Stable object ids across frames and windows.

A region inherits the id that most of its tracks carried last frame, or failing that the id
whose previous mask (carried along the flow) it overlaps most. Regions claiming the same id
close together and moving alike are one object seen in pieces and are merged; far apart, or
moving differently, the larger keeps the id. What matches nothing is compared with objects
that are lost, or seen only as a weak remnant, at the position predicted from their last
well-supported sighting: this carries an id through a short occlusion. Ids are never reused
within a run.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from anymo_ros.config import IdentityConfig

_MIN_MASK_OVERLAP = 0.3
_MIN_TRACKS_KEPT = 0.5       # of an object's tracks at its last sighting: most of them in one region
_MERGE_GAP = 0.05            # fraction of the image diagonal between pieces of one object
_REIDENTIFY_GATE = 0.15      # fraction of the image diagonal around a lost object's prediction
_WEAK_SUPPORT = 0.5          # fraction of peak support below which a sighting is a remnant
_PEAK_DECAY = 0.98           # per frame
_DISTINCT_SPEED = 1.0        # px per frame: slower differences are tracker noise or deformation
_DISTINCT_FRACTION = 0.3     # of the faster speed: parts of a turning or deforming body differ by less
_SEPARATION = 5.0            # separate movers differ by this many times their velocity spreads


def moving_alike(velocity_a: np.ndarray, velocity_b: np.ndarray, spread_a=0.0, spread_b=0.0) -> np.ndarray:
    """Whether two velocities (px per frame, broadcasting) could belong to one object. ``spread_*``
    is how much each velocity varies over the tracks it sums up: rigid movers are tight clusters
    in velocity, the parts of a body in motion are not."""
    difference = np.linalg.norm(velocity_a - velocity_b, axis=-1)
    faster = np.maximum(np.linalg.norm(velocity_a, axis=-1), np.linalg.norm(velocity_b, axis=-1))
    return difference < np.maximum(np.maximum(_DISTINCT_SPEED, _DISTINCT_FRACTION * faster),
                                   _SEPARATION * (np.asarray(spread_a) + np.asarray(spread_b)))


def own_motion(velocity: np.ndarray) -> tuple[np.ndarray, float] | None:
    """Median and spread (median distance from it) of track velocities (N, 2); None without any."""
    velocity = velocity[np.isfinite(velocity).all(axis=1)]
    if len(velocity) == 0:
        return None
    median = np.median(velocity, axis=0)
    return median, float(np.median(np.linalg.norm(velocity - median, axis=1)))


def separate_movers(motion_a: tuple[np.ndarray, float] | None, motion_b: tuple[np.ndarray, float] | None) -> bool:
    """Whether two parts, by their ``own_motion`` (the camera's motion taken out), are two moving objects."""
    if motion_a is None or motion_b is None:
        return False
    (velocity_a, spread_a), (velocity_b, spread_b) = motion_a, motion_b
    still = np.zeros(2)
    return not (moving_alike(velocity_a, still) or moving_alike(velocity_b, still)
                or moving_alike(velocity_a, velocity_b, spread_a, spread_b))


@dataclass
class ObjectMemory:
    object_id: int
    first_seen: float
    first_frame: int
    last_frame: int
    centroid: np.ndarray      # (2,) flow px, last sighting
    velocity: np.ndarray      # (2,) flow px per frame, smoothed track motion
    area: float
    tracks: int               # supporting tracks at the last sighting
    peak_tracks: float        # slowly decaying maximum of the support
    anchor_frame: int         # last sighting with support near the peak
    anchor_centroid: np.ndarray
    anchor_velocity: np.ndarray

    @property
    def weak(self) -> bool:
        """Seen as a remnant (an occluder eating the object): its id may move to a better match."""
        return self.tracks < _WEAK_SUPPORT * self.peak_tracks


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
               velocities: list[np.ndarray], frame_index: int, stamp: float,
               own_motions: list[tuple[np.ndarray, float] | None] | None = None) -> list[tuple[int, list[int]]]:
        """Returns (object id, indices of the regions forming it) per object of this frame.

        ``velocities`` are each region's mean track motion (px per frame, mask pixels); tracks keep
        moving with the object while occlusion eats its mask, so they predict better than centroids.
        ``own_motions`` are each region's ``own_motion`` (None where unknown): two regions that
        both move, and differently, are never merged.
        """
        own_motions = own_motions or [None] * len(masks)
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
                # A region that grew around most of an object's tracks (a mover just found, whose
                # other tracks turn dynamic a frame later) is that object, however few of the
                # region's tracks and pixels it brought.
                kept = claim.track_votes.get(object_id, 0) / max(self.memory[object_id].tracks, 1)
                if vote >= self.config.min_track_overlap or overlap >= _MIN_MASK_OVERLAP or kept >= _MIN_TRACKS_KEPT:
                    candidates.append((vote + overlap, region, object_id))
        candidates.sort(key=lambda c: -c[0])
        centroids = [mask_centroid(mask) for mask in masks]
        groups: dict[int, list[int]] = {}
        taken: set[int] = set()
        for _, region, object_id in candidates:
            if region in taken:
                continue
            members = groups.get(object_id)
            if members is None:
                groups[object_id] = [region]
            elif _gap(masks, members, region) <= _MERGE_GAP * diagonal \
                    and not separate_movers(own_motions[region], own_motions[members[0]]):
                members.append(region)
            else:
                continue
            taken.add(region)
        # Objects seen strongly this frame are settled; lost ones and weak remnants are open.
        settled = {oid for oid, members in groups.items()
                   if sum(track_counts[m] for m in members) >= _WEAK_SUPPORT * self.memory[oid].peak_tracks}
        for region in sorted(set(range(len(masks))) - taken, key=lambda r: -track_counts[r]):
            object_id = self._reidentify(centroids[region], frame_index, settled, diagonal)
            if object_id is None:
                object_id = self._new_id()
            elif object_id in groups:
                # The remnant was residue at the occluder's edge; the object is where it re-emerged.
                groups[self._new_id()] = groups.pop(object_id)
            groups[object_id] = [region]
            settled.add(object_id)
        self._remember(groups, masks, track_counts, velocities, frame_index, stamp)
        return sorted(groups.items())

    def skip_ids_below(self, next_id: int) -> None:
        """Ids below ``next_id`` were handed out elsewhere (another densifier): never give them."""
        self._next_id = max(self._next_id, next_id)

    def _new_id(self) -> int:
        object_id = self._next_id
        self._next_id += 1
        return object_id

    def _reidentify(self, centroid: np.ndarray, frame_index: int, settled: set[int], diagonal: float) -> int | None:
        best, best_distance = None, _REIDENTIFY_GATE * diagonal
        for memory in self.memory.values():
            if memory.object_id in settled or not (memory.weak or memory.last_frame < frame_index - 1):
                continue
            elapsed = frame_index - memory.anchor_frame
            predicted = memory.anchor_centroid + memory.anchor_velocity * elapsed
            # The prediction grows less certain the longer the object is out of sight.
            slack = 0.5 * np.sqrt(memory.area) + 0.5 * elapsed * max(float(np.linalg.norm(memory.anchor_velocity)), 1.0)
            distance = float(np.linalg.norm(predicted - centroid)) - slack
            if distance < best_distance:
                best, best_distance = memory.object_id, distance
        return best

    def _remember(self, groups: dict[int, list[int]], masks: list[np.ndarray], track_counts: list[int],
                  velocities: list[np.ndarray], frame_index: int, stamp: float) -> None:
        for object_id, members in groups.items():
            union = np.logical_or.reduce([masks[m] for m in members])
            weights = np.array([max(track_counts[m], 1) for m in members], float)
            velocity = (np.array([velocities[m] for m in members]) * weights[:, None]).sum(axis=0) / weights.sum()
            centroid = mask_centroid(union)
            tracks = sum(track_counts[m] for m in members)
            memory = self.memory.get(object_id)
            if memory is None:
                self.memory[object_id] = ObjectMemory(
                    object_id, stamp, frame_index, frame_index, centroid, velocity, float(union.sum()), tracks,
                    float(tracks), frame_index, centroid, velocity)
                continue
            memory.velocity = 0.5 * memory.velocity + 0.5 * velocity
            memory.peak_tracks = max(memory.peak_tracks * _PEAK_DECAY, float(tracks))
            memory.centroid, memory.last_frame, memory.tracks = centroid, frame_index, tracks
            if not memory.weak:
                memory.area = float(union.sum())
                memory.anchor_frame, memory.anchor_centroid, memory.anchor_velocity = \
                    frame_index, centroid, memory.velocity.copy()
        expired = [oid for oid, m in self.memory.items() if frame_index - m.last_frame > self.config.max_lost_frames]
        for object_id in expired:
            del self.memory[object_id]


def mask_centroid(mask: np.ndarray) -> np.ndarray:
    """(x, y) mean of a mask's pixels; (0, 0) for an empty mask."""
    moments = cv2.moments(mask.astype(np.uint8), binaryImage=True)
    if moments["m00"] == 0:
        return np.zeros(2)
    return np.array([moments["m10"] / moments["m00"], moments["m01"] / moments["m00"]])


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
