"""Geometric dynamic/static classifier: how far each track departs from the camera's motion.

Each frame, the camera motion between the previous and the current frame is fitted on the
static scene (:mod:`anymo_ros.camera_motion`); every track's residual, in units of the fit's
noise, is kept for the last ``residual_window`` frames. Three statistics score a track:

* consistent drift: ``|sum(r)| / sqrt(n)``, Rayleigh(1)-distributed for a static point, growing
  like ``sqrt(n)`` for an object that keeps moving the same way;
* energy: the standardised excess of ``sum(|r|^2)`` over its static expectation ``2n``, which
  catches motion that changes direction (limbs, shaking objects);
* long baseline: the residual of a second camera fit between the frame ``long_baseline`` frames
  back and the current one (the median of its last few values). A large object moving a pixel
  per frame stays inside the frame-to-frame fit's inlier band and bends that fit towards itself;
  over several frames it leaves the band, and the fit holds to the static scene.

The largest, ``z``, becomes a probability ``sigmoid(3 ln(z / z_threshold))``. Real tracker
noise is heavy-tailed, so the threshold sits well above the Gaussian 3 sigma and the
probability follows the ratio, not the difference.
"""
from __future__ import annotations

import numpy as np

from anymo_ros.camera_motion import fit_camera_motion
from anymo_ros.config import ClassifierConfig
from anymo_ros.window import carry_over

_ENERGY_CLIP = 6.0   # sigmas: one tracker glitch must not make a track dynamic on its own
_SLOPE = 3.0
_LONG_MEDIAN = 4     # long-baseline residuals per track (the latest fits) whose median is scored
_LONG_EVERY = 2      # frames between long-baseline fits: neighbours share most of their baseline
# px: over several frames a camera model's error (coarse parallax field, one homography) grows
# past the tracker's accuracy; on clean tracks a layer boundary would otherwise read as motion.
_LONG_NOISE_FLOOR = 0.25


class GeometricClassifier:
    """Keeps each track's normalised residual history and scores it."""

    def __init__(self, config: ClassifierConfig):
        self.config = config
        self.reset()

    def reset(self) -> None:
        self._ids = np.zeros(0, np.int64)
        self._history = np.zeros((0, self.config.residual_window, 2), np.float32)
        self._positions = np.zeros((0, max(self.config.long_baseline, 1), 2), np.float32)
        self._long_history = np.zeros((0, _LONG_MEDIAN, 2), np.float32)
        self._frames = 0

    def update(self, ids: np.ndarray, normalised_residual: np.ndarray, xy: np.ndarray,
               static_weight: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
        """Add this frame's residuals (N, 2; NaN where a track has none) for sorted ``ids``.

        ``xy`` (N, 2) are the current positions, NaN where a track is not visible;
        ``static_weight`` is the belief that each track is static.
        Returns the dynamic probability per track, NaN for tracks with no residual yet.
        """
        history = _push(carry_over(self._ids, self._history, ids, np.nan), normalised_residual)
        long_history = None
        if self.config.long_baseline > 0:
            positions = carry_over(self._ids, self._positions, ids, np.nan)
            long_history = carry_over(self._ids, self._long_history, ids, np.nan)
            if self._frames % _LONG_EVERY == 0:
                long_residual = _long_baseline_residual(positions[:, 0], xy, static_weight, image_size)
                long_history = _push(long_history, long_residual)
            self._frames += 1
            self._positions = _push(positions, xy)
            self._long_history = long_history
        self._ids, self._history = ids, history
        return self.score(history, long_history)

    def evidence_count(self, ids: np.ndarray) -> np.ndarray:
        """Residuals held per track (sorted ``ids`` as last passed to update)."""
        counts = np.isfinite(self._history[..., 0]).sum(axis=1)
        return carry_over(self._ids, counts, ids, 0)

    @staticmethod
    def statistic(history: np.ndarray, long_history: np.ndarray | None = None) -> np.ndarray:
        """z per track from residual histories (N, K, 2) in noise units; NaN where empty.

        ``long_history`` (N, M, 2) holds the long-baseline residuals, when they are used.
        """
        valid = np.isfinite(history[..., 0])
        count = valid.sum(axis=1)
        safe = np.where(valid[..., None], history, 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            drift = np.linalg.norm(safe.sum(axis=1), axis=1) / np.sqrt(count)
            squared = np.minimum((safe ** 2).sum(axis=2), _ENERGY_CLIP ** 2).sum(axis=1)
            energy = (squared - 2.0 * count) / (2.0 * np.sqrt(count))
        z = np.maximum(drift, energy)
        z[count == 0] = np.nan
        if long_history is not None:
            magnitude = np.linalg.norm(long_history, axis=2)
            has_long = np.isfinite(magnitude).any(axis=1)
            long = np.full(len(z), np.nan)
            long[has_long] = np.nanmedian(magnitude[has_long], axis=1)
            z = np.where(has_long & (count > 0), np.fmax(z, long), z)
        return z

    def score(self, history: np.ndarray, long_history: np.ndarray | None = None) -> np.ndarray:
        z = self.statistic(history, long_history)
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            ratio = np.maximum(z, 1e-6) / self.config.z_threshold
            return (1.0 / (1.0 + ratio ** -_SLOPE)).astype(np.float32)


def _push(history: np.ndarray, newest: np.ndarray) -> np.ndarray:
    """Drop the oldest entry of per-track histories (N, K, ...) and append ``newest`` (N, ...)."""
    history = np.roll(history, -1, axis=1)
    history[:, -1] = newest
    return history


def _long_baseline_residual(old_xy: np.ndarray, xy: np.ndarray, static_weight: np.ndarray,
                            image_size: tuple[int, int]) -> np.ndarray:
    """Residual (N, 2) in noise units of tracks seen at both ends of the baseline; NaN elsewhere."""
    residual = np.full(xy.shape, np.nan, np.float32)
    both = np.isfinite(old_xy[:, 0]) & np.isfinite(xy[:, 0])
    motion = fit_camera_motion(old_xy[both], xy[both], static_weight[both], image_size,
                               parallax_from_believed=True)
    if motion is not None:
        residual[both] = motion.residual(old_xy[both], xy[both]) / max(motion.noise_sigma, _LONG_NOISE_FLOOR)
    return residual
