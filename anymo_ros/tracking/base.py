"""Online point-tracker interface.

A tracker is pushed one frame at a time and answers with zero or more :class:`TrackUpdate`, each
the state of its tracks at one earlier-or-current frame. Frame-by-frame trackers (Lucas-Kanade)
answer every push with the update for that frame. Chunk-based online trackers (CoTracker3-online,
causal BootsTAPIR) buffer a few frames and answer once per chunk with several updates that trail
the newest frame by ``latency_frames``; the pipeline consumes updates in frame order either way.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np


@dataclass
class TrackUpdate:
    """Track states at one frame, in processing-resolution pixels."""

    frame_index: int
    ids: np.ndarray          # (N,) int64, unique within a tracker run
    xy: np.ndarray           # (N, 2) float32
    visible: np.ndarray      # (N,) bool
    confidence: np.ndarray   # (N,) float32 in [0, 1]
    born: np.ndarray         # (N,) bool, True for tracks seeded at this frame
    position_error: np.ndarray  # (N,) float32 px: the tracker's per-axis error estimate of this step, 0 if none
    # (N, 2) float32: where each track born at this frame was one frame earlier, when the tracker
    # could follow it back (its first step then exists at birth); NaN elsewhere. None: not offered.
    born_previous_xy: np.ndarray | None = None


class PointTracker(ABC):
    """Common interface of every point tracker backend."""

    name: str = ""          # backend name, as in the config
    latency_frames: int = 0

    @abstractmethod
    def push(self, gray: np.ndarray, frame_index: int) -> list[TrackUpdate]:
        """Take the next frame (uint8 grayscale, processing resolution); return finished updates."""

    @abstractmethod
    def reset(self) -> None:
        """Forget all tracks; the next push starts afresh (track ids keep increasing)."""
