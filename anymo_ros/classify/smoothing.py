"""Per-track temporal smoothing of dynamic probabilities, with hysteresis on the dynamic state."""
from __future__ import annotations

import numpy as np

from anymo_ros.config import ClassifierConfig
from anymo_ros.window import carry_over


class ProbabilitySmoother:
    """Exponential smoothing per track id; a track turns dynamic above ``hysteresis_on`` and only
    turns static again below ``hysteresis_off``, so labels do not flicker near the threshold.

    A new track starts from a prior worth ``prior_weight`` observations (1: the prior counts as
    much as the average it starts; 0: it counts for nothing and the first observation is taken
    as it is). The average is bias-corrected, as the motion map is: with weight w before an
    observation, the state weighs (1 - smoothing) * w against the observation's ``smoothing``.
    With a full-weight prior this is plain exponential smoothing.
    """

    def __init__(self, config: ClassifierConfig):
        self.config = config
        self.reset()

    def reset(self) -> None:
        self.ids = np.zeros(0, np.int64)
        self.probability = np.zeros(0, np.float32)
        self.weight = np.zeros(0, np.float32)
        self.dynamic = np.zeros(0, bool)

    def update(self, ids: np.ndarray, raw: np.ndarray, prior: np.ndarray,
               prior_weight: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Blend this frame's raw probabilities (NaN = no evidence) into the state of sorted ``ids``.

        ``prior`` initialises tracks seen for the first time, with ``prior_weight`` in [0, 1]
        (default 1). Returns (smoothed, dynamic).
        """
        previous = carry_over(self.ids, self.probability, ids, np.nan)
        weight = carry_over(self.ids, self.weight, ids, np.nan)
        first = np.isnan(previous)
        previous = np.where(first, prior, previous)
        weight = np.where(first, 1.0 if prior_weight is None else prior_weight, weight)
        observed = ~np.isnan(raw)
        carried = (1.0 - self.config.smoothing) * weight
        new_weight = np.where(observed, carried + self.config.smoothing, weight)
        blended = (carried * previous + self.config.smoothing * np.nan_to_num(raw)) / np.maximum(new_weight, 1e-6)
        smoothed = np.where(observed, blended, previous).astype(np.float32)
        was_dynamic = carry_over(self.ids, self.dynamic, ids, False)
        dynamic = np.where(was_dynamic, smoothed > self.config.hysteresis_off, smoothed > self.config.hysteresis_on)
        self.ids, self.probability, self.dynamic = ids, smoothed, dynamic
        self.weight = new_weight.astype(np.float32)
        return smoothed, dynamic
