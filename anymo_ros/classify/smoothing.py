"""Per-track temporal smoothing of dynamic probabilities, with hysteresis on the dynamic state."""
from __future__ import annotations

import numpy as np

from anymo_ros.config import ClassifierConfig
from anymo_ros.window import carry_over


class ProbabilitySmoother:
    """Exponential smoothing per track id; a track turns dynamic above ``hysteresis_on`` and only
    turns static again below ``hysteresis_off``, so labels do not flicker near the threshold."""

    def __init__(self, config: ClassifierConfig):
        self.config = config
        self.reset()

    def reset(self) -> None:
        self.ids = np.zeros(0, np.int64)
        self.probability = np.zeros(0, np.float32)
        self.dynamic = np.zeros(0, bool)

    def update(self, ids: np.ndarray, raw: np.ndarray, prior: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Blend this frame's raw probabilities (NaN = no evidence) into the state of sorted ``ids``.

        ``prior`` initialises tracks seen for the first time. Returns (smoothed, dynamic).
        """
        previous = carry_over(self.ids, self.probability, ids, np.nan)
        previous = np.where(np.isnan(previous), prior, previous)
        weight = self.config.smoothing
        smoothed = np.where(np.isnan(raw), previous, (1.0 - weight) * previous + weight * raw).astype(np.float32)
        was_dynamic = carry_over(self.ids, self.dynamic, ids, False)
        dynamic = np.where(was_dynamic, smoothed > self.config.hysteresis_off, smoothed > self.config.hysteresis_on)
        self.ids, self.probability, self.dynamic = ids, smoothed, dynamic
        return smoothed, dynamic
