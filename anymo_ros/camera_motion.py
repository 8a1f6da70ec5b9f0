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
_NOISE_FLOOR = 0.15         # px: tracking accuracy of LK on real video, plus fitting error
_PARALLAX_GAIN = 1.05        # F must explain this many times the homography's inliers
_PARALLAX_MIN_CELLS = 4      # of 16: how widely parallax must spread to be the static scene's
_PARALLAX_TOLERANCE = 0.5    # px: along-epipolar residual counts half where static depth spread is this


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
    parallax_spread: np.ndarray | None = None  # (rows, cols, 1) local spread of static residuals, px
    epipolar_bias: np.ndarray | None = None    # (rows, cols, 1) smooth epipolar distance of static points, px

    def residual(self, source: np.ndarray, target: np.ndarray) -> np.ndarray:
        """Motion of correspondences not explained by the camera (N, 2), px, epipolar-weighted."""
        return self._weigh(source, target, target - self.predict(source))

    def residual_field(self, backward_flow: np.ndarray) -> np.ndarray:
        """Per-pixel residual (H, W, 2) of a flow field whose source frame this model describes."""
        height, width = backward_flow.shape[:2]
        residual = backward_flow - self.displacement_field(width, height)
        if self.fundamental is None:
            return residual
        # The point path of _weigh, written per pixel with broadcasting: it runs on every frame.
        scale = np.array([self.image_size[0] / width, self.image_size[1] / height], np.float32)
        xs = ((np.arange(width, dtype=np.float32) + 0.5) * scale[0] - 0.5)[None, :]
        ys = ((np.arange(height, dtype=np.float32) + 0.5) * scale[1] - 0.5)[:, None]
        f = self.fundamental.astype(np.float32)
        a, b, c = (f[i, 0] * xs + f[i, 1] * ys + f[i, 2] for i in range(3))
        norm = np.maximum(np.sqrt(a * a + b * b), 1e-12)
        target_x = xs + backward_flow[..., 0] * scale[0]
        target_y = ys + backward_flow[..., 1] * scale[1]
        distance = (a * target_x + b * target_y + c) / norm
        bias = cv2.resize(self.epipolar_bias, (width, height), interpolation=cv2.INTER_LINEAR)
        spread = cv2.resize(self.parallax_spread, (width, height), interpolation=cv2.INTER_LINEAR)
        normal = np.stack([a / norm, b / norm], axis=-1)
        weighted = _combine(residual * scale, normal, (distance - bias)[..., None], spread[..., None])
        return weighted / scale

    def epipolar_distance(self, source: np.ndarray, target: np.ndarray) -> np.ndarray:
        """Signed distance (N, 1), px, of each target from its source's epipolar line."""
        lines, norm = self._epipolar_lines(source)
        return ((lines[:, :2] * target).sum(axis=1, keepdims=True) + lines[:, 2:]) / norm

    def _epipolar_lines(self, source: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lines = np.c_[source, np.ones(len(source))] @ self.fundamental.T
        return lines, np.maximum(np.linalg.norm(lines[:, :2], axis=1, keepdims=True), 1e-12)

    def _weigh(self, source: np.ndarray, target: np.ndarray, residual: np.ndarray) -> np.ndarray:
        """Across the epipolar line: the target's true epipolar distance, which no static point
        can have; along it: the model residual, down-weighted, since unknown depth explains it."""
        if self.fundamental is None or len(source) == 0:
            return residual.astype(np.float32)
        lines, norm = self._epipolar_lines(source)
        distance = self.epipolar_distance(source, target) - _sample_grid(self.epipolar_bias, source, self.image_size)
        spread = _sample_grid(self.parallax_spread, source, self.image_size)
        return _combine(residual, lines[:, :2] / norm, distance, spread)

    def predict(self, xy: np.ndarray) -> np.ndarray:
        """Camera-only target positions of source points (N, 2)."""
        if len(xy) == 0:
            return xy.astype(np.float32)
        moved = cv2.perspectiveTransform(xy.reshape(-1, 1, 2).astype(np.float64), self.homography).reshape(-1, 2)
        return (moved + self.field_at(xy)).astype(np.float32)

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

    def field_at(self, xy: np.ndarray) -> np.ndarray:
        return _sample_grid(self.field, xy, self.image_size)


def _combine(residual: np.ndarray, normal: np.ndarray, distance: np.ndarray, spread: np.ndarray) -> np.ndarray:
    """Epipolar distance across the line, plus the residual along it weighted against how much
    static points nearby disagree in depth (``spread``, px); arrays (..., 2) / (..., 1)."""
    along = residual - (residual * normal).sum(axis=-1, keepdims=True) * normal
    along_weight = 1.0 / (1.0 + spread / _PARALLAX_TOLERANCE)
    return (distance * normal + along_weight * along).astype(np.float32)


def _sample_grid(grid: np.ndarray, xy: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """Bilinear samples (N, C) of a coarse grid (rows, cols, C) spanning the image at points (N, 2)."""
    rows, cols = grid.shape[:2]
    count = len(xy)
    # remap takes maps below 32767 columns: lay the points out in rows of a fixed width.
    width = min(max(count, 1), 4096)
    padded = -(-max(count, 1) // width) * width
    map_x = np.zeros(padded, np.float32)
    map_y = np.zeros(padded, np.float32)
    map_x[:count] = xy[:, 0] / image_size[0] * cols - 0.5
    map_y[:count] = xy[:, 1] / image_size[1] * rows - 0.5
    sampled = cv2.remap(grid, map_x.reshape(-1, width), map_y.reshape(-1, width), cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_REPLICATE)
    return sampled.reshape(padded, -1)[:count]


def fit_camera_motion(source: np.ndarray, target: np.ndarray, static_weight: np.ndarray,
                      image_size: tuple[int, int], parallax_from_believed: bool = False) -> CameraMotion | None:
    """Fit the camera motion from correspondences; ``static_weight`` in [0, 1] is the prior belief
    that each point is static (from earlier frames). Returns None when there are too few points.

    ``parallax_from_believed`` lets only points believed static vote for the parallax regime.
    Over a long baseline a large mover seen by a rotating camera fits a degenerate fundamental
    matrix with the background; frame to frame the vote stays label-free, so that parallax
    wrongly labelled moving can return to the static scene.
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
            voters = believed if parallax_from_believed else np.ones(len(src), bool)
            f_votes = int((f_inliers & voters).sum())
            parallax = f_inliers & voters & (h_error >= 2.0)
            if f_votes > _PARALLAX_GAIN * max(int(((h_error < 2.0) & voters).sum()), 1) and f_votes >= 30 \
                    and _spread(src[parallax], image_size) >= _PARALLAX_MIN_CELLS:
                # Two views cannot tell parallax from motion along epipolar lines (two translating
                # layers fit one F exactly), so points believed moving stay out of the model. A
                # parallax point wrongly believed moving still recovers: it has no epipolar distance.
                static = f_inliers & believed
                homography, _ = _robust_homography(src[static], dst[static])
            else:
                fundamental = None
        else:
            fundamental = None
    if homography is None or static.sum() < _MIN_POINTS:
        return None
    residual = dst[static] - cv2.perspectiveTransform(src[static].reshape(-1, 1, 2), homography).reshape(-1, 2)
    weight = static_weight[static].clip(0.25, 1.0)
    field = _interpolate_field(src[static], residual, weight, image_size)
    motion = CameraMotion(homography, field, image_size, 0.0, int(static.sum()), fundamental, static)
    if fundamental is not None:
        # All epipolar inliers: depth spread is a property of the scene, whatever was believed.
        epipolar = f_inliers
        deviation = dst[epipolar] - motion.predict(src[epipolar])
        spread = _interpolate(src[epipolar], (deviation ** 2).sum(axis=1, keepdims=True),
                              static_weight[epipolar].clip(0.25, 1.0), image_size)
        motion.parallax_spread = np.sqrt(spread)
        # An F a little off leaves static points a smooth, steady epipolar distance; frame after
        # frame that bias would add up like motion, so it is removed as the field is.
        distance = motion.epipolar_distance(src[static], dst[static])
        motion.epipolar_bias = _interpolate_field(src[static], distance, weight, image_size)
    # Noise from all points, not only the inliers, which are biased towards small residuals;
    # the median stays robust while moving points are fewer than half.
    deviation = motion.residual(src, dst)
    motion.noise_sigma = max(1.4826 * float(np.median(np.abs(deviation))), _NOISE_FLOOR)
    return motion


def _spread(xy: np.ndarray, image_size: tuple[int, int]) -> int:
    """Cells of a 4 x 4 image grid holding points. Parallax of a static scene spreads widely; a
    compact group that only F explains is more likely one object moving along epipolar lines."""
    col = np.clip((xy[:, 0] / image_size[0] * 4).astype(int), 0, 3)
    row = np.clip((xy[:, 1] / image_size[1] * 4).astype(int), 0, 3)
    return len(np.unique(row * 4 + col))


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
    """Smooth residual field; large residuals count less, being more likely a missed mover."""
    magnitude = np.linalg.norm(residual, axis=1)
    scale = 3.0 * max(float(np.median(magnitude)), 0.5)
    return _interpolate(xy, residual, weight / (1.0 + (magnitude / scale) ** 2), image_size)


def _interpolate(xy: np.ndarray, values: np.ndarray, weight: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """Normalised convolution of per-point values (N, C) on a coarse grid (rows, cols, C)."""
    width, height = image_size
    cols = _FIELD_CELLS if width >= height else max(2, round(_FIELD_CELLS * width / height))
    rows = _FIELD_CELLS if height > width else max(2, round(_FIELD_CELLS * height / width))
    col = np.clip((xy[:, 0] / width * cols).astype(int), 0, cols - 1)
    row = np.clip((xy[:, 1] / height * rows).astype(int), 0, rows - 1)
    sums = np.zeros((rows, cols, values.shape[1]), np.float64)
    weights = np.zeros((rows, cols), np.float64)
    np.add.at(sums, (row, col), values * weight[:, None])
    np.add.at(weights, (row, col), weight)
    sums = cv2.GaussianBlur(sums, (0, 0), _FIELD_SIGMA_CELLS, borderType=cv2.BORDER_REPLICATE).reshape(rows, cols, -1)
    weights = cv2.GaussianBlur(weights, (0, 0), _FIELD_SIGMA_CELLS, borderType=cv2.BORDER_REPLICATE)
    # Shrink towards zero where support is thin, so a few tracks cannot invent a field.
    grid = sums / (weights + 0.5).reshape(rows, cols, 1)
    return grid.astype(np.float32).reshape(rows, cols, -1)
