"""Plain data passed between the pipeline stages and out to the ROS layer and tools."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class TrackSnapshot:
    """Every live track at one frame, in input-image pixels."""

    ids: np.ndarray            # (N,) int64, unique per run
    xy: np.ndarray             # (N, 2) float32, (x, y)
    visible: np.ndarray        # (N,) bool
    confidence: np.ndarray     # (N,) float32 in [0, 1]
    dynamic_prob: np.ndarray   # (N,) float32 in [0, 1], smoothed over time
    object_id: np.ndarray      # (N,) int32, 0 = no object

    @classmethod
    def empty(cls) -> "TrackSnapshot":
        return cls(
            ids=np.zeros(0, np.int64), xy=np.zeros((0, 2), np.float32), visible=np.zeros(0, bool),
            confidence=np.zeros(0, np.float32), dynamic_prob=np.zeros(0, np.float32),
            object_id=np.zeros(0, np.int32),
        )

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class MovingObject:
    """One moving object in the current frame."""

    object_id: int
    score: float                                  # mean dynamic probability of its tracks (without
                                                  # tracks: mean motion evidence over its mask)
    bbox: tuple[int, int, int, int]               # x, y, width, height in pixels
    centroid: tuple[float, float]                 # mask centroid (x, y) in pixels
    velocity: tuple[float, float]                 # image-plane velocity of its tracks, px/s (without
                                                  # moving tracks: mean dense flow over its mask)
    num_tracks: int                               # supporting dynamic tracks
    age: int                                      # frames since first seen
    first_seen: float                             # stamp (s) of the first frame it was seen


@dataclass
class SegmentationResult:
    """What the pipeline returns for one frame."""

    stamp: float
    label_image: np.ndarray                       # (H, W) uint16, 0 = static, k = object id k
    objects: list[MovingObject]
    tracks: TrackSnapshot
    window_length: int                            # frames currently in the sliding window
    processing_time: float                        # seconds spent in feed()
    stage_times: dict[str, float] = field(default_factory=dict)
    events: list[str] = field(default_factory=list)  # resets and input problems seen on this frame
