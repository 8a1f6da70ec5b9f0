"""One frame of track classification: camera-motion fit, per-track scoring, temporal smoothing.

The pipeline runs this on live tracks; the offline trajectory evaluation runs it on recorded
tracks (Hopkins-style point sets), so both score tracks the same way. The scorer is the
geometric classifier (residual to the camera's motion) or the learned trajectory transformer
(the window's tracks); the camera motion is fitted either way, for the dense stage.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from anymo_ros.camera_motion import CameraMotion, fit_camera_motion
from anymo_ros.classify.geometric import GeometricClassifier
from anymo_ros.classify.smoothing import ProbabilitySmoother
from anymo_ros.config import ClassifierConfig
from anymo_ros.window import WindowTracks, carry_over

def weights_path(config: ClassifierConfig) -> Path:
    """The learned classifier's weights: the configured file, or the one shipped in resource/."""
    if config.weights:
        return Path(config.weights).expanduser()
    from anymo_ros.classify.trajectory_transformer import shipped_weights_path
    return shipped_weights_path()


class LearnedScorer:
    """Dynamic probability of each live track from its window history, by the trajectory transformer."""

    def __init__(self, config: ClassifierConfig, device: str = "cpu"):
        from anymo_ros.classify.trajectory_transformer import LearnedTrackClassifier
        self.classifier = LearnedTrackClassifier(weights_path(config), device=device)
        self._ids = np.zeros(0, np.int64)
        self._visible_steps = np.zeros(0, np.int64)

    def reset(self) -> None:
        self._ids = np.zeros(0, np.int64)
        self._visible_steps = np.zeros(0, np.int64)

    def update(self, ids: np.ndarray, window: WindowTracks, image_size: tuple[int, int],
               semantics: np.ndarray | None = None) -> np.ndarray:
        visible_steps = window.visible.sum(axis=1)
        self._ids, self._visible_steps = ids, visible_steps
        raw = np.full(len(ids), np.nan, np.float32)
        ready = visible_steps >= 2
        if ready.any():
            xy = np.nan_to_num(window.xy[ready])
            depth = None if window.depth is None else window.depth[ready]
            raw[ready] = self.classifier.predict(
                xy, window.visible[ready], window.confidence[ready], image_size, depth,
                None if semantics is None else semantics[ready])
        return raw

    def evidence_count(self, ids: np.ndarray) -> np.ndarray:
        return carry_over(self._ids, np.maximum(self._visible_steps - 1, 0), ids, 0)


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

    def __init__(self, config: ClassifierConfig, device: str = "cpu"):
        """Raises ValueError for an unknown backend, FileNotFoundError for missing weights."""
        self.config = config
        if config.backend == "geometric":
            self.scorer = GeometricClassifier(config)
        elif config.backend == "learned":
            self.scorer = LearnedScorer(config, device)
        else:
            raise ValueError(f"unknown classifier backend '{config.backend}' (available: 'geometric', 'learned')")
        self.smoother = ProbabilitySmoother(config)

    def reset(self) -> None:
        self.scorer.reset()
        self.smoother.reset()

    @property
    def backend(self) -> str:
        return "learned" if isinstance(self.scorer, LearnedScorer) else "geometric"

    def probability_of(self, ids: np.ndarray, default: float = 0.0) -> np.ndarray:
        """Current smoothed probability of sorted ``ids``; ``default`` for unknown tracks."""
        return carry_over(self.smoother.ids, self.smoother.probability, ids, default)

    def step(self, ids: np.ndarray, prev_xy: np.ndarray, xy: np.ndarray, paired: np.ndarray,
             image_size: tuple[int, int], prior: np.ndarray, fit_backward: bool = False,
             window: WindowTracks | None = None, semantics: np.ndarray | None = None) -> FrameClassification:
        """Classify sorted track ``ids`` at the current frame.

        ``prev_xy``/``xy`` are positions in the previous and current frame, ``paired`` marks
        tracks visible in both; ``prior`` is the probability given to tracks seen the first time.
        The learned scorer also needs the ``window`` history of ``ids`` (current frame included)
        and takes optional per-track ``semantics``.
        """
        static_weight = 1.0 - self.probability_of(ids, 0.5)
        forward = fit_camera_motion(prev_xy[paired], xy[paired], static_weight[paired], image_size)
        backward = None
        if fit_backward:
            backward = fit_camera_motion(xy[paired], prev_xy[paired], static_weight[paired], image_size)
        residual = np.full((len(ids), 2), np.nan, np.float32)
        if forward is not None:
            residual[paired] = forward.residual(prev_xy[paired], xy[paired]) / forward.noise_sigma
        if isinstance(self.scorer, LearnedScorer):
            raw = self.scorer.update(ids, window, image_size, semantics)
        else:
            raw = self.scorer.update(ids, residual)
        probability, dynamic = self.smoother.update(ids, raw, prior)
        has_evidence = self.scorer.evidence_count(ids) > 0
        return FrameClassification(probability, dynamic, has_evidence, paired, forward, backward)

    def classify_tracks(self, xy: np.ndarray, visible: np.ndarray, image_size: tuple[int, int],
                        prior: float = 0.25, window_length: int = 16) -> FrameClassification | None:
        """Run over recorded tracks (N, T, 2) / (N, T) and return the state after the last frame."""
        self.reset()
        ids = np.arange(len(xy), dtype=np.int64)
        priors = np.full(len(xy), prior, np.float32)
        confidence = visible.astype(np.float32)
        result = None
        for t in range(1, xy.shape[1]):
            paired = visible[:, t - 1] & visible[:, t]
            first = max(0, t - window_length + 1)
            window = WindowTracks(ids, xy[:, first:t + 1].astype(np.float32), visible[:, first:t + 1],
                                  confidence[:, first:t + 1], None, np.arange(first, t + 1, dtype=np.float64))
            result = self.step(ids, xy[:, t - 1].astype(np.float32), xy[:, t].astype(np.float32), paired,
                               image_size, priors, window=window)
        return result
