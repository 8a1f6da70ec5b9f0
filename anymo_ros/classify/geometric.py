"""Geometric dynamic/static classifier: how far each track departs from the camera's motion.

Each frame, the camera motion between the previous and the current frame is fitted on the
static scene (:mod:`anymo_ros.camera_motion`); every track's residual, in units of the fit's
noise, is kept for the last ``residual_window`` frames. Two statistics score a track:

* consistent drift: ``|sum(r)| / sqrt(n)``, Rayleigh(1)-distributed for a static point, growing
  like ``sqrt(n)`` for an object that keeps moving the same way;
* energy: the standardised excess of ``sum(|r|^2)`` over its static expectation ``2n``, which
  catches motion that changes direction (limbs, shaking objects).

The larger one, ``z``, becomes a probability ``sigmoid(3 ln(z / z_threshold))``. Real tracker
noise is heavy-tailed, so the threshold sits well above the Gaussian 3 sigma and the
probability follows the ratio, not the difference.
"""
from __future__ import annotations

import numpy as np

from anymo_ros.config import ClassifierConfig
from anymo_ros.window import carry_over

_ENERGY_CLIP = 6.0   # sigmas: one tracker glitch must not make a track dynamic on its own
_SLOPE = 3.0


class GeometricClassifier:
    """Keeps each track's normalised residual history and scores it."""

    def __init__(self, config: ClassifierConfig):
        self.config = config
        self.reset()

    def reset(self) -> None:
        self._ids = np.zeros(0, np.int64)
        self._history = np.zeros((0, self.config.residual_window, 2), np.float32)

    def update(self, ids: np.ndarray, normalised_residual: np.ndarray) -> np.ndarray:
        """Add this frame's residuals (N, 2; NaN where a track has none) for sorted ``ids``.

        Returns the dynamic probability per track, NaN for tracks with no residual yet.
        """
        history = carry_over(self._ids, self._history, ids, np.nan)
        history = np.roll(history, -1, axis=1)
        history[:, -1] = normalised_residual
        self._ids, self._history = ids, history
        return self.score(history)

    def evidence_count(self, ids: np.ndarray) -> np.ndarray:
        """Residuals held per track (sorted ``ids`` as last passed to update)."""
        counts = np.isfinite(self._history[..., 0]).sum(axis=1)
        return carry_over(self._ids, counts, ids, 0)

    @staticmethod
    def statistic(history: np.ndarray) -> np.ndarray:
        """z per track from residual histories (N, K, 2) in noise units; NaN where empty."""
        valid = np.isfinite(history[..., 0])
        count = valid.sum(axis=1)
        safe = np.where(valid[..., None], history, 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            drift = np.linalg.norm(safe.sum(axis=1), axis=1) / np.sqrt(count)
            squared = np.minimum((safe ** 2).sum(axis=2), _ENERGY_CLIP ** 2).sum(axis=1)
            energy = (squared - 2.0 * count) / (2.0 * np.sqrt(count))
        z = np.maximum(drift, energy)
        z[count == 0] = np.nan
        return z

    def score(self, history: np.ndarray) -> np.ndarray:
        z = self.statistic(history)
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            ratio = np.maximum(z, 1e-6) / self.config.z_threshold
            return (1.0 / (1.0 + ratio ** -_SLOPE)).astype(np.float32)
