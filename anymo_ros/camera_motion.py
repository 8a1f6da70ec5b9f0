"""Camera-induced image motion, fitted from point correspondences on the static scene.

The model is a homography plus a smooth correction field interpolated from the static tracks'
residuals. The homography captures rotation, zoom and far scenes; the field captures parallax of
nearer structure, which one homography cannot (DESIGN.md: "copes with parallax"). The field is
coarse on purpose: it cannot bend around an object-sized region, so independently moving
objects stay visible in the residual.

When the camera translates enough for parallax to matter (a fundamental matrix explains clearly
more points than the homography), the static scene is taken from the epipolar inliers, and the
part of a residual along the epipolar line, which unknown depth can explain, counts less than
the part across it, which no static point can have.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

_MIN_POINTS = 12
_FIELD_CELLS = 12            # field resolution along the longer image side
_FIELD_SIGMA_CELLS = 1.2     # Gaussian spread of each residual when interpolating
_NOISE_FLOOR = 0.1          # px: sub-pixel tracking accuracy of LK on real video
_PARALLAX_GAIN = 1.15        # F must explain this many times the homography's inliers
_ALONG_EPIPOLAR_WEIGHT = 0.3 # depth explains motion along the epipolar line, not across it


@dataclass
class CameraMotion:
    """Maps points of the source frame to where the camera alone would move them in the target."""

    homography: np.ndarray          # (3, 3) source -> target
    field: np.ndarray               # (rows, cols, 2) smooth residual correction, source coordinates
    image_size: tuple[int, int]     # (width, height) of the source frame
    noise_sigma: float              # robust per-axis std of static residuals, px
    num_static: int                 # correspondences the fit used
    fundamental: np.ndarray | None = None  # (3, 3) source -> target, set in the parallax regime
    static: np.ndarray | None = None       # (N,) bool, correspondences taken as static scene

    def residual(self, source: np.ndarray, target: np.ndarray) -> np.ndarray:
        """Motion of correspondences not explained by the camera (N, 2), px, epipolar-weighted."""
        return self._weigh(source, target - self.predict(source))

    def residual_field(self, backward_flow: np.ndarray) -> np.ndarray:
        """Per-pixel residual (H, W, 2) of a flow field whose source frame this model describes."""
        height, width = backward_flow.shape[:2]
        residual = backward_flow - self.displacement_field(width, height)
        if self.fundamental is None:
            return residual
        scale_x, scale_y = self.image_size[0] / width, self.image_size[1] / height
        xs, ys = np.meshgrid((np.arange(width, dtype=np.float32) + 0.5) * scale_x - 0.5,
                             (np.arange(height, dtype=np.float32) + 0.5) * scale_y - 0.5)
        flat = self._weigh(np.stack([xs.ravel(), ys.ravel()], axis=1), residual.reshape(-1, 2))
        return flat.reshape(height, width, 2)

    def _weigh(self, source: np.ndarray, residual: np.ndarray) -> np.ndarray:
        if self.fundamental is None or len(source) == 0:
            return residual.astype(np.float32)
        lines = np.c_[source, np.ones(len(source))] @ self.fundamental.T
        normal = lines[:, :2] / np.maximum(np.linalg.norm(lines[:, :2], axis=1, keepdims=True), 1e-12)
        across = (residual * normal).sum(axis=1, keepdims=True) * normal
        return (across + _ALONG_EPIPOLAR_WEIGHT * (residual - across)).astype(np.float32)

    def predict(self, xy: np.ndarray) -> np.ndarray:
        """Camera-only target positions of source points (N, 2)."""
        if len(xy) == 0:
            return xy.astype(np.float32)
        moved = cv2.perspectiveTransform(xy.reshape(-1, 1, 2).astype(np.float64), self.homography).reshape(-1, 2)
        return (moved + self._field_at(xy)).astype(np.float32)

    def displacement_field(self, width: int, height: int) -> np.ndarray:
        """Camera-only displacement (H, W, 2) for every pixel of a source frame of the given size."""
        scale_x, scale_y = self.image_size[0] / width, self.image_size[1] / height
        xs = (np.arange(width, dtype=np.float32) + 0.5) * scale_x - 0.5
        ys = (np.arange(height, dtype=np.float32) + 0.5) * scale_y - 0.5
        grid = np.stack(np.meshgrid(xs, ys), axis=-1)
        moved = cv2.perspectiveTransform(grid.reshape(-1, 1, 2), self.homography.astype(np.float32))
        homography_flow = moved.reshape(height, width, 2) - grid
        field = cv2.resize(self.field, (width, height), interpolation=cv2.INTER_LINEAR)
        flow = homography_flow + field
        flow[..., 0] /= scale_x
        flow[..., 1] /= scale_y
        return flow

    def _field_at(self, xy: np.ndarray) -> np.ndarray:
        rows, cols = self.field.shape[:2]
        map_x = (xy[:, 0] / self.image_size[0] * cols - 0.5).astype(np.float32).reshape(1, -1)
        map_y = (xy[:, 1] / self.image_size[1] * rows - 0.5).astype(np.float32).reshape(1, -1)
        sampled = cv2.remap(self.field, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        return sampled.reshape(-1, 2)


def fit_camera_motion(source: np.ndarray, target: np.ndarray, static_weight: np.ndarray,
                      image_size: tuple[int, int]) -> CameraMotion | None:
    """Fit the camera motion from correspondences; ``static_weight`` in [0, 1] is the prior belief
    that each point is static (from earlier frames). Returns None when there are too few points.
    """
    if len(source) < _MIN_POINTS:
        return None
    src, dst = source.astype(np.float64), target.astype(np.float64)
    believed = static_weight >= 0.5
    if believed.sum() < _MIN_POINTS:
        believed = np.ones(len(src), bool)
    homography, h_inliers = _robust_homography(src[believed], dst[believed])
    if homography is None:
        return None
    h_error = np.linalg.norm(dst - cv2.perspectiveTransform(src.reshape(-1, 1, 2), homography).reshape(-1, 2), axis=1)
    static = believed & (h_error < 4.0 * max(_NOISE_FLOOR, float(np.median(h_error[believed]))) + 1.0)
    fundamental = None
    if len(src) >= 30:
        # Epipolar inliers do not depend on earlier labels, so parallax regions labelled moving
        # by mistake can return to the static scene.
        fundamental, f_inliers = _robust_fundamental(src, dst)
        if fundamental is not None:
            f_inliers = f_inliers.ravel().astype(bool)
            if f_inliers.sum() > _PARALLAX_GAIN * max(int((h_error < 2.0).sum()), 1) and f_inliers.sum() >= 30:
                # Two views cannot tell parallax from motion along epipolar lines (two translating
                # layers fit one F exactly), so points long believed moving stay out.
                static = f_inliers & (static_weight >= 0.3)
                homography, _ = _robust_homography(src[static], dst[static])
            else:
                fundamental = None
        else:
            fundamental = None
    if homography is None or static.sum() < _MIN_POINTS:
        return None
    residual = dst[static] - cv2.perspectiveTransform(src[static].reshape(-1, 1, 2), homography).reshape(-1, 2)
    field = _interpolate_field(src[static], residual, static_weight[static].clip(0.25, 1.0), image_size)
    motion = CameraMotion(homography, field, image_size, 0.0, int(static.sum()), fundamental, static)
    # Noise from all points, not only the inliers, which are biased towards small residuals;
    # the median stays robust while moving points are fewer than half.
    deviation = motion.residual(src, dst)
    motion.noise_sigma = max(1.4826 * float(np.median(np.abs(deviation))), _NOISE_FLOOR)
    return motion


def _robust_fundamental(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
    try:
        fundamental, inliers = cv2.findFundamentalMat(src, dst, cv2.USAC_MAGSAC, 1.0, 0.99, 200)
    except cv2.error:  # degenerate configurations (all points on a plane, no motion) assert inside USAC
        return None, None
    if fundamental is None or fundamental.shape != (3, 3):
        return None, None
    return fundamental, inliers


def _robust_homography(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
    if len(src) < 4:
        return None, None
    homography, inliers = cv2.findHomography(src, dst, cv2.USAC_MAGSAC, ransacReprojThreshold=2.0,
                                             maxIters=200, confidence=0.99)
    if homography is None:
        homography, inliers = cv2.findHomography(src, dst, cv2.RANSAC, 2.0)
    return homography, inliers


def _interpolate_field(xy: np.ndarray, residual: np.ndarray, weight: np.ndarray,
                       image_size: tuple[int, int]) -> np.ndarray:
    """Normalised convolution of residual vectors on a coarse grid; empty areas fall back to zero."""
    width, height = image_size
    cols = _FIELD_CELLS if width >= height else max(2, round(_FIELD_CELLS * width / height))
    rows = _FIELD_CELLS if height > width else max(2, round(_FIELD_CELLS * height / width))
    col = np.clip((xy[:, 0] / width * cols).astype(int), 0, cols - 1)
    row = np.clip((xy[:, 1] / height * rows).astype(int), 0, rows - 1)
    # Robust: a large residual is more likely a missed moving point than parallax.
    magnitude = np.linalg.norm(residual, axis=1)
    scale = 3.0 * max(float(np.median(magnitude)), 0.5)
    w = weight / (1.0 + (magnitude / scale) ** 2)
    sums = np.zeros((rows, cols, 2), np.float64)
    weights = np.zeros((rows, cols), np.float64)
    np.add.at(sums, (row, col), residual * w[:, None])
    np.add.at(weights, (row, col), w)
    sums = cv2.GaussianBlur(sums, (0, 0), _FIELD_SIGMA_CELLS, borderType=cv2.BORDER_REPLICATE)
    weights = cv2.GaussianBlur(weights, (0, 0), _FIELD_SIGMA_CELLS, borderType=cv2.BORDER_REPLICATE)
    # Shrink towards zero where support is thin, so a few tracks cannot invent a field.
    field = sums / (weights[..., None] + 0.5)
    return field.astype(np.float32)
