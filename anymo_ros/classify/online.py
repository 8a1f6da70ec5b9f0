"""One frame of track classification: camera-motion fit, per-track scoring, temporal smoothing.

The pipeline runs this on live tracks; the offline trajectory evaluation runs it on recorded
tracks (Hopkins-style point sets), so both score tracks the same way. The scorer is the
geometric classifier (residual to the camera's motion), the learned trajectory transformer
(the window's tracks), or both averaged (``ensemble``); the camera motion is fitted either way,
for the dense stage.
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
    """Dynamic probability of each live track from its window history, by the trajectory transformer.

    With ``every`` k > 1 each frame scores one k-th of the tracks in turn (by id), plus every
    track that has no score yet; the others keep the probability of their last run. Every track
    is re-scored each k frames, new tracks as soon as they have a step, and the model's cost is
    spread evenly over the frames instead of falling on every k-th. The model sees the scored
    tracks only, a few hundred of them, as in training; with fewer than k times ``MIN_CONTEXT``
    tracks ready, it scores them all each frame.
    """

    MIN_CONTEXT = 64   # the fewest tracks per clip the shipped model was trained on

    def __init__(self, config: ClassifierConfig, device: str = "cpu"):
        from anymo_ros.classify.trajectory_transformer import LearnedTrackClassifier
        self.classifier = LearnedTrackClassifier(weights_path(config), device=device)
        self.every = config.learned_every
        self.reset()

    def reset(self) -> None:
        self._ids = np.zeros(0, np.int64)
        self._visible_steps = np.zeros(0, np.int64)
        self._scored_ids = np.zeros(0, np.int64)
        self._scores = np.zeros(0, np.float32)
        self._calls = 0

    def update(self, ids: np.ndarray, window: WindowTracks, image_size: tuple[int, int],
               semantics: np.ndarray | None = None) -> np.ndarray:
        visible_steps = window.visible.sum(axis=1)
        self._ids, self._visible_steps = ids, visible_steps
        ready = visible_steps >= 2
        scores = carry_over(self._scored_ids, self._scores, ids, np.nan)
        in_turn = ids % self.every == self._calls % self.every
        # The count starts at the first frame with something to score.
        self._calls += int(ready.any())
        chosen = ready
        if ready.sum() >= self.every * self.MIN_CONTEXT:
            chosen = ready & (in_turn | np.isnan(scores))
        if chosen.any():
            xy = np.nan_to_num(window.xy[chosen])
            depth = None if window.depth is None else window.depth[chosen]
            scores[chosen] = self.classifier.predict(
                xy, window.visible[chosen], window.confidence[chosen], image_size, depth,
                None if semantics is None else semantics[chosen])
        self._scored_ids, self._scores = ids, scores
        return scores

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


BACKENDS = ("geometric", "learned", "ensemble")


def check_classifier_parameters(config: ClassifierConfig) -> None:
    """ValueError naming the first numeric classifier parameter out of range."""
    if not 0.0 <= config.learned_weight <= 1.0:
        raise ValueError(f"learned_weight must lie in [0, 1], got {config.learned_weight}")
    if config.long_baseline < 0:
        raise ValueError(f"long_baseline must be 0 (off) or a number of frames, got {config.long_baseline}")
    if config.learned_every < 1:
        raise ValueError(f"learned_every must be at least 1, got {config.learned_every}")


class OnlineTrackClassifier:
    """Dynamic/static classification of tracks, fed one frame at a time."""

    def __init__(self, config: ClassifierConfig, device: str = "cpu"):
        """Raises ValueError for an unknown backend, a parameter out of range or unreadable
        weights, FileNotFoundError for missing weights."""
        if config.backend not in BACKENDS:
            raise ValueError(f"unknown classifier backend '{config.backend}' (available: {', '.join(BACKENDS)})")
        check_classifier_parameters(config)
        self.config = config
        self.geometric = GeometricClassifier(config) if config.backend != "learned" else None
        self.learned = LearnedScorer(config, device) if config.backend != "geometric" else None
        self.smoother = ProbabilitySmoother(config)

    def reset(self) -> None:
        for scorer in (self.geometric, self.learned):
            if scorer is not None:
                scorer.reset()
        self.smoother.reset()

    @property
    def backend(self) -> str:
        return self.config.backend

    @property
    def needs_window(self) -> bool:
        """Whether ``step`` needs the window history (and can use semantics): the learned scorer runs."""
        return self.learned is not None

    def probability_of(self, ids: np.ndarray, default: float = 0.0) -> np.ndarray:
        """Current smoothed probability of sorted ``ids``; ``default`` for unknown tracks."""
        return carry_over(self.smoother.ids, self.smoother.probability, ids, default)

    def step(self, ids: np.ndarray, prev_xy: np.ndarray, xy: np.ndarray, paired: np.ndarray,
             image_size: tuple[int, int], prior: np.ndarray, fit_backward: bool = False,
             window: WindowTracks | None = None, semantics: np.ndarray | None = None,
             visible: np.ndarray | None = None, position_error: np.ndarray | None = None,
             new_static_weight: np.ndarray | None = None,
             prior_weight: np.ndarray | None = None) -> FrameClassification:
        """Classify sorted track ``ids`` at the current frame.

        ``prev_xy``/``xy`` are positions in the previous and current frame, ``paired`` marks
        tracks visible in both, ``visible`` those visible now (default: ``paired``); ``prior`` is
        the probability given to tracks seen the first time, worth ``prior_weight`` observations
        (default 1; see ``ProbabilitySmoother``). ``position_error`` (px, per axis) is
        the tracker's own error estimate of each track's step; the geometric scorer adds it to the
        camera fit's noise, so that a poorly tracked point (blur, water, low texture) needs a
        larger residual to count as moving. ``new_static_weight`` is the camera fit's belief that
        each track seen for the first time is static (default 0.5): a track born with a first step
        inside a moving region would otherwise let the fit's smooth field absorb that motion.
        The learned scorer also needs the ``window`` history of ``ids`` (current frame included)
        and takes optional per-track ``semantics``.
        """
        static_weight = 1.0 - self.probability_of(ids, np.nan)
        unseen = np.isnan(static_weight)
        static_weight[unseen] = 0.5 if new_static_weight is None else new_static_weight[unseen]
        forward = fit_camera_motion(prev_xy[paired], xy[paired], static_weight[paired], image_size)
        backward = None
        if fit_backward:
            backward = fit_camera_motion(xy[paired], prev_xy[paired], static_weight[paired], image_size)
        evidence = np.zeros(len(ids), np.int64)
        geometric = learned = None
        if self.geometric is not None:
            residual = np.full((len(ids), 2), np.nan, np.float32)
            if forward is not None:
                noise = np.full(int(paired.sum()), forward.noise_sigma, np.float32)
                if position_error is not None and paired.any():
                    # The fit's noise already holds the typical track's error: add only the excess.
                    error = position_error[paired] ** 2
                    noise = np.sqrt(noise ** 2 + np.maximum(error - np.median(error), 0.0))
                residual[paired] = forward.residual(prev_xy[paired], xy[paired]) / noise[:, None]
            seen = paired if visible is None else visible
            tracked_xy = np.where(seen[:, None], xy, np.nan)
            geometric = self.geometric.update(ids, residual, tracked_xy, static_weight, image_size)
            evidence = np.maximum(evidence, self.geometric.evidence_count(ids))
        if self.learned is not None:
            if window is None:
                raise ValueError(f"the '{self.backend}' classifier needs the window of the tracks")
            learned = self.learned.update(ids, window, image_size, semantics)
            evidence = np.maximum(evidence, self.learned.evidence_count(ids))
        raw = combine_probabilities(geometric, learned, self.config.learned_weight)
        probability, dynamic = self.smoother.update(ids, raw, prior, prior_weight)
        return FrameClassification(probability, dynamic, evidence > 0, paired, forward, backward)

    def classify_tracks(self, xy: np.ndarray, visible: np.ndarray, image_size: tuple[int, int],
                        prior: float = 0.25, window_length: int = 16,
                        position_error: np.ndarray | None = None) -> FrameClassification | None:
        """Run over recorded tracks (N, T, 2) / (N, T) and return the state after the last frame.

        ``position_error`` (N, T), when given, is the tracker's error estimate of each step (see ``step``).
        """
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
                               image_size, priors, window=window, visible=visible[:, t],
                               position_error=None if position_error is None else position_error[:, t])
        return result


def combine_probabilities(geometric: np.ndarray | None, learned: np.ndarray | None,
                          learned_weight: float) -> np.ndarray:
    """Weighted mean of the scorers' probabilities; where one has none (NaN), the other's."""
    if learned is None:
        return geometric
    if geometric is None:
        return learned
    mixed = learned_weight * learned + (1.0 - learned_weight) * geometric
    return np.where(np.isnan(learned), geometric, np.where(np.isnan(geometric), learned, mixed)).astype(np.float32)
