"""One frame of track classification: camera-motion fit, per-track scoring, temporal smoothing.

The pipeline runs this on live tracks; the offline trajectory evaluation runs it on recorded
tracks (Hopkins-style point sets), so both score tracks the same way.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from anymo_ros.camera_motion import CameraMotion, fit_camera_motion
from anymo_ros.classify.geometric import GeometricClassifier
from anymo_ros.classify.smoothing import ProbabilitySmoother
from anymo_ros.config import ClassifierConfig
from anymo_ros.window import carry_over


@dataclass
class FrameClassification:
    """Classification of the tracks of one frame (rows follow the sorted ids passed in)."""

    probability: np.ndarray      # (N,) smoothed dynamic probability
    dynamic: np.ndarray          # (N,) bool, after hysteresis
    has_evidence: np.ndarray     # (N,) bool, the track has at least one residual in the window
    paired: np.ndarray           # (N,) bool, visible in the previous and the current frame
    forward: CameraMotion | None   # previous -> current camera motion
    backward: CameraMotion | None  # current -> previous, fitted only when asked for


class OnlineTrackClassifier:
    """Geometric dynamic/static classification of tracks, fed one frame at a time."""

    def __init__(self, config: ClassifierConfig):
        self.config = config
        self.scorer = GeometricClassifier(config)
        self.smoother = ProbabilitySmoother(config)

    def reset(self) -> None:
        self.scorer.reset()
        self.smoother.reset()

    def probability_of(self, ids: np.ndarray, default: float = 0.0) -> np.ndarray:
        """Current smoothed probability of sorted ``ids``; ``default`` for unknown tracks."""
        return carry_over(self.smoother.ids, self.smoother.probability, ids, default)

    def step(self, ids: np.ndarray, prev_xy: np.ndarray, xy: np.ndarray, paired: np.ndarray,
             image_size: tuple[int, int], prior: np.ndarray, fit_backward: bool = False) -> FrameClassification:
        """Classify sorted track ``ids`` at the current frame.

        ``prev_xy``/``xy`` are positions in the previous and current frame, ``paired`` marks
        tracks visible in both; ``prior`` is the probability given to tracks seen the first time.
        """
        static_weight = 1.0 - self.probability_of(ids, 0.5)
        forward = fit_camera_motion(prev_xy[paired], xy[paired], static_weight[paired], image_size)
        backward = None
        if fit_backward:
            backward = fit_camera_motion(xy[paired], prev_xy[paired], static_weight[paired], image_size)
        residual = np.full((len(ids), 2), np.nan, np.float32)
        if forward is not None:
            residual[paired] = forward.residual(prev_xy[paired], xy[paired]) / forward.noise_sigma
        raw = self.scorer.update(ids, residual)
        probability, dynamic = self.smoother.update(ids, raw, prior)
        has_evidence = self.scorer.evidence_count(ids) > 0
        return FrameClassification(probability, dynamic, has_evidence, paired, forward, backward)

    def classify_tracks(self, xy: np.ndarray, visible: np.ndarray, image_size: tuple[int, int],
                        prior: float = 0.25) -> FrameClassification | None:
        """Run over recorded tracks (N, T, 2) / (N, T) and return the state after the last frame."""
        self.reset()
        ids = np.arange(len(xy), dtype=np.int64)
        priors = np.full(len(xy), prior, np.float32)
        result = None
        for t in range(1, xy.shape[1]):
            paired = visible[:, t - 1] & visible[:, t]
            result = self.step(ids, xy[:, t - 1].astype(np.float32), xy[:, t].astype(np.float32), paired,
                               image_size, priors)
        return result
