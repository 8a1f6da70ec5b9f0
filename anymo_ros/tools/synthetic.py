"""Synthetic scenes with exactly known motion.

Two generators share this module:

* ``render_clip`` renders RGB video of textured sprites moving over a layered (2.5-D)
  background seen by a moving camera, with occlusion-aware instance masks. It drives the
  demo and the end-to-end tests.
* ``sample_trajectories`` samples point trajectories in random 3-D scenes with a pinhole
  camera, with visibility, depth and per-track dynamic labels. It feeds classifier training.

Everything is deterministic per seed and uses only numpy and OpenCV.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

CLIP_CAMERA_MOTIONS = ("static", "pan", "zoom", "shake", "orbit")

# Depths (m) of the clip layers, far to near. Objects sit between the ground band and the
# occluder so that drawing in depth order is also the correct occlusion order.
_FAR_DEPTH = 35.0
_GROUND_DEPTH = 14.0
_OBJECT_DEPTH_RANGE = (6.5, 10.0)
_OCCLUDER_DEPTH = 6.0
# Speeds in px/frame are quoted for frames this wide and scale with the actual width, so a
# smaller rendering shows the same scene at lower resolution.
_REFERENCE_WIDTH = 640.0
_SENSOR_NOISE_RANGE = 2     # grey levels: noise is the sum of two uniform integers in [-2, 2], std 2
_OPTICS_BLUR_SIGMA = 0.6    # px


# --------------------------------------------------------------------------------------
# Shared geometry helpers
# --------------------------------------------------------------------------------------

def _rotation(axis: int, angle: np.ndarray | float) -> np.ndarray:
    """Rotation matrices about one coordinate axis, vectorised over ``angle``."""
    angle = np.asarray(angle, dtype=np.float64)
    cos, sin = np.cos(angle), np.sin(angle)
    out = np.zeros(angle.shape + (3, 3))
    i, j = ((1, 2), (2, 0), (0, 1))[axis]
    out[..., axis, axis] = 1.0
    out[..., i, i] = cos
    out[..., j, j] = cos
    out[..., i, j] = -sin
    out[..., j, i] = sin
    return out


def _camera_to_world(yaw: np.ndarray, pitch: np.ndarray, roll: np.ndarray) -> np.ndarray:
    """Camera axes (x right, y down, z forward) in world coordinates, one matrix per frame."""
    return _rotation(1, yaw) @ _rotation(0, pitch) @ _rotation(2, roll)


def _smooth_noise(rng: np.random.Generator, num_frames: int, sigma: float, dims: int) -> np.ndarray:
    """(num_frames, dims) Gaussian-filtered white noise with unit variance per sample."""
    radius = int(3 * sigma) + 1
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    kernel /= np.sqrt(np.sum(kernel ** 2))
    white = rng.standard_normal((num_frames + 2 * radius, dims))
    return np.stack([np.convolve(white[:, d], kernel, mode="valid") for d in range(dims)], axis=1)


# --------------------------------------------------------------------------------------
# Part A: rendered clips
# --------------------------------------------------------------------------------------

@dataclass
class SyntheticClip:
    frames: list[np.ndarray]   # (H, W, 3) uint8 RGB
    masks: list[np.ndarray]    # (H, W) uint16 instance ids of visible pixels, 0 = static background
    stamps: list[float]        # seconds, starting at 0, 1/fps apart
    fps: float


@dataclass
class _ClipCamera:
    intrinsics: np.ndarray   # (T, 3, 3): focal length changes when zooming
    rotation: np.ndarray     # (T, 3, 3) world to camera
    center: np.ndarray       # (T, 3) camera centre in world coordinates
    focal: float             # focal length of the canonical (frame-0) view
    principal: tuple[float, float]


def _sweep(rng: np.random.Generator, num_frames: int) -> np.ndarray:
    """Slow back-and-forth coordinate with slope in [-1, 1] per frame, starting at 0.

    The first ~60 frames lie around the steepest part, so a short clip moves steadily in
    one direction, while a long clip turns back instead of drifting without bound.
    """
    period = rng.uniform(200.0, 260.0)
    phase = -np.pi * 60.0 / period + rng.uniform(-0.2, 0.2)
    frames = np.arange(num_frames, dtype=np.float64)
    return (np.sin(2 * np.pi * frames / period + phase) - np.sin(phase)) * period / (2 * np.pi)


def _clip_camera(rng: np.random.Generator, motion: str, num_frames: int, width: int, height: int,
                 focal: float) -> _ClipCamera:
    yaw, pitch, roll = np.zeros(num_frames), np.zeros(num_frames), np.zeros(num_frames)
    center = np.zeros((num_frames, 3))
    focals = np.full(num_frames, focal)
    pixel_scale = width / _REFERENCE_WIDTH
    direction = rng.choice([-1.0, 1.0])
    if motion == "pan":
        # Rotation plus a sideways step: the near ground band gains ~1 px/frame over the far layer.
        sweep = direction * _sweep(rng, num_frames)
        yaw = rng.uniform(2.5, 4.5) * pixel_scale / focal * sweep
        center[:, 0] = rng.uniform(0.8, 1.5) * pixel_scale * _GROUND_DEPTH / focal * sweep
    elif motion == "zoom":
        # Relative scale change per frame; 0.5-1 % moves the image corners by ~2-4 px/frame.
        focals = focal * np.exp(rng.uniform(0.005, 0.01) * direction * _sweep(rng, num_frames))
    elif motion == "shake":
        # Hand-held jitter: fast tremor on top of slow drift, mostly rotation.
        span = max(num_frames, 64)   # long enough to calibrate the amplitude on short clips too
        jitter = _smooth_noise(rng, span, 1.5, 3) + 0.7 * _smooth_noise(rng, span, 6.0, 3)
        step_rms = np.sqrt(np.mean(np.sum(np.diff(jitter[:, :2], axis=0) ** 2, axis=1)))
        amplitude = rng.uniform(1.5, 3.5) * pixel_scale / (focal * step_rms)
        jitter = jitter[:num_frames] * amplitude
        yaw, pitch, roll = jitter[:, 0], jitter[:, 1], 0.4 * jitter[:, 2]
        center = 0.01 * _smooth_noise(rng, num_frames, 3.0, 3)
    elif motion == "orbit":
        # Circle a point at object depth while looking at it: the far layer and the ground
        # band move in the same direction at very different speeds, nearer things reverse.
        pivot = float(np.mean(_OBJECT_DEPTH_RANGE))
        yaw = direction * rng.uniform(4.0, 6.5) * pixel_scale / focal * _sweep(rng, num_frames)
        pitch = 0.1 * rng.uniform(-1.0, 1.0) * yaw
        center[:, 0] = -pivot * np.sin(yaw)
        center[:, 2] = pivot * (1.0 - np.cos(yaw))
    elif motion != "static":
        raise ValueError(f"camera_motion must be one of {CLIP_CAMERA_MOTIONS}, got {motion!r}")
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    intrinsics = np.zeros((num_frames, 3, 3))
    intrinsics[:, 0, 0] = focals
    intrinsics[:, 1, 1] = focals
    intrinsics[:, 0, 2] = cx
    intrinsics[:, 1, 2] = cy
    intrinsics[:, 2, 2] = 1.0
    rotation = np.swapaxes(_camera_to_world(yaw, pitch, roll), 1, 2)
    return _ClipCamera(intrinsics, rotation, center, focal, (cx, cy))


def _plane_homographies(camera: _ClipCamera, depth: float, offset: tuple[float, float]) -> np.ndarray:
    """(T, 3, 3) maps from a canvas on the world plane Z = depth to each frame's image.

    Canvas pixel (u, v) is the point that the frame-0 camera saw at pixel (u + offset).
    """
    cx, cy = camera.principal
    scale = depth / camera.focal
    canvas_to_world = np.array([
        [scale, 0.0, (offset[0] - cx) * scale],
        [0.0, scale, (offset[1] - cy) * scale],
        [0.0, 0.0, depth],
    ])
    # World point minus camera centre, as a linear map of the homogeneous canvas pixel.
    relative = np.repeat(canvas_to_world[None], len(camera.center), axis=0)
    relative[:, :, 2] -= camera.center
    homographies = camera.intrinsics @ camera.rotation @ relative
    return homographies / homographies[:, 2:3, 2:3]


def _apply_homography(homography: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Map (..., 2) points through a 3x3 homography."""
    mapped = points @ homography[:2, :2].T + homography[:2, 2]
    w = points @ homography[2, :2] + homography[2, 2]
    return mapped / w[..., None]


def _canvas_extent(camera: _ClipCamera, depth: float, width: int, height: int,
                   margin: int = 6) -> tuple[tuple[int, int], tuple[int, int]]:
    """Offset and (width, height) of a canvas on the plane that covers every frame's view."""
    homographies = _plane_homographies(camera, depth, (0.0, 0.0))
    corners = np.array([[0.0, 0.0], [width - 1.0, 0.0], [0.0, height - 1.0], [width - 1.0, height - 1.0]])
    seen = np.concatenate([_apply_homography(np.linalg.inv(h), corners) for h in homographies])
    low = np.floor(seen.min(axis=0)).astype(int) - margin
    high = np.ceil(seen.max(axis=0)).astype(int) + margin
    return (int(low[0]), int(low[1])), (int(high[0] - low[0]), int(high[1] - low[1]))


def _noise_field(rng: np.random.Generator, height: int, width: int, cell: int, channels: int) -> np.ndarray:
    """Smooth value noise in [0, 1] whose features are about ``cell`` pixels wide."""
    grid_h, grid_w = height // cell + 2, width // cell + 2
    coarse = rng.random((grid_h, grid_w, channels), dtype=np.float32)
    fine = cv2.resize(coarse, (grid_w * cell, grid_h * cell), interpolation=cv2.INTER_CUBIC)
    return fine.reshape(grid_h * cell, grid_w * cell, channels)[:height, :width]


def _detail(rng: np.random.Generator, height: int, width: int, octaves: tuple[tuple[int, float], ...]) -> np.ndarray:
    """Zero-mean grey-level detail summed over several feature sizes."""
    total = np.zeros((height, width, 1), np.float32)
    for cell, weight in octaves:
        total += weight * (_noise_field(rng, height, width, cell, 1) - 0.5)
    return total


def _scene_texture(rng: np.random.Generator, height: int, width: int, tint: np.ndarray) -> np.ndarray:
    """(height, width, 3) uint8 texture with detail at every scale that trackers can lock onto."""
    colour = tint * (0.35 + 0.65 * _noise_field(rng, height, width, 150, 3))
    shade = 1.0 + 1.6 * _detail(rng, height, width, ((3, 0.35), (8, 0.3), (20, 0.25), (50, 0.25)))
    image = np.clip(colour * shade * 255.0, 0, 255).astype(np.uint8)
    # Filled shapes and lines give sharp corners, which point trackers need.
    for _ in range(max(1, height * width // 2500)):
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        size = int(rng.integers(4, 40))
        kind = rng.integers(4)
        if kind == 0:
            axes = (size, int(rng.integers(3, 40)))
            cv2.ellipse(image, (x, y), axes, float(rng.uniform(0, 180)), 0, 360, fill, -1, cv2.LINE_AA)
        elif kind == 1:
            cv2.rectangle(image, (x, y), (x + size, y + int(rng.integers(4, 40))), fill, -1, cv2.LINE_AA)
        elif kind == 2:
            points = (np.array([x, y]) + rng.integers(-size, size + 1, (int(rng.integers(3, 6)), 2))).astype(np.int32)
            cv2.fillPoly(image, [points], fill, cv2.LINE_AA)
        else:
            end = (x + int(rng.integers(-60, 61)), y + int(rng.integers(-60, 61)))
            cv2.line(image, (x, y), end, fill, int(rng.integers(1, 4)), cv2.LINE_AA)
    # Re-shade so the shapes carry fine texture too instead of flat colour.
    grain = 1.0 + 0.8 * _detail(rng, height, width, ((2, 0.5), (5, 0.5)))
    return np.clip(image * grain, 0, 255).astype(np.uint8)


def _rgba(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    return np.concatenate([rgb, alpha[..., None]], axis=2)


def _object_sprite(rng: np.random.Generator, area: float, aspect: float) -> np.ndarray:
    """(S, S, 4) uint8 RGBA sprite: an ellipse or rounded polygon with its own saturated texture.

    Its long axis lies along the sprite x axis; ``aspect`` is the short to long axis ratio.
    """
    semi_major = np.sqrt(area / (np.pi * aspect))
    size = int(2 * semi_major) + 12
    centre = size / 2.0
    alpha = np.zeros((size, size), np.uint8)
    if rng.random() < 0.5:
        axes = (int(semi_major), int(semi_major * aspect))
        cv2.ellipse(alpha, (int(centre), int(centre)), axes, 0.0, 0, 360, 255, -1, cv2.LINE_AA)
    else:
        corners = int(rng.integers(5, 9))
        angles = (np.arange(corners) + rng.uniform(-0.3, 0.3, corners)) * 2 * np.pi / corners
        radii = rng.uniform(0.85, 1.1, corners)
        outline = np.stack([semi_major * radii * np.cos(angles), aspect * semi_major * radii * np.sin(angles)], axis=1)
        cv2.fillPoly(alpha, [np.round(outline + centre).astype(np.int32)], 255, cv2.LINE_AA)
        # Round the corners: blur, cut at the half level, then anti-alias the new edge.
        blurred = cv2.GaussianBlur(alpha, (0, 0), 0.12 * semi_major * aspect)
        alpha = cv2.GaussianBlur(np.where(blurred >= 128, 255, 0).astype(np.uint8), (0, 0), 0.7)
    # Saturated single-hue body with a pattern and grain, unlike the muted background.
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    pattern_angle = rng.uniform(0, np.pi)
    along = xs * np.cos(pattern_angle) + ys * np.sin(pattern_angle)
    across = -xs * np.sin(pattern_angle) + ys * np.cos(pattern_angle)
    period = rng.uniform(10, 24)
    if rng.random() < 0.5:
        pattern = 0.5 + 0.5 * np.sin(2 * np.pi * along / period)
    else:
        pattern = (np.sin(2 * np.pi * along / period) * np.sin(2 * np.pi * across / period) > 0).astype(np.float32)
    grain = _detail(rng, size, size, ((2, 0.6), (5, 0.6), (12, 0.5)))[..., 0]
    hue = rng.uniform(0, 180)
    hsv = np.stack([
        np.full_like(pattern, hue) + 12.0 * (pattern - 0.5),
        rng.uniform(170, 240) + 30.0 * grain,
        110.0 + 90.0 * pattern + 160.0 * grain,
    ], axis=2)
    hsv[..., 0] %= 180.0
    rgb = cv2.cvtColor(np.clip(hsv, 0, 255).astype(np.uint8), cv2.COLOR_HSV2RGB)
    return _rgba(rgb, alpha)


@dataclass
class _Sprite:
    rgba: np.ndarray
    homographies: np.ndarray   # (T, 3, 3) sprite pixel to image pixel
    label: int | None          # mask value written where opaque; None leaves the mask alone


def _similarity(scale: np.ndarray, angle: np.ndarray, translation: np.ndarray, pivot: float) -> np.ndarray:
    """(T, 3, 3) sprite-pixel maps: rotate and scale about the sprite centre, then translate."""
    cos, sin = scale * np.cos(angle), scale * np.sin(angle)
    out = np.zeros((len(scale), 3, 3))
    out[:, 0, 0], out[:, 0, 1], out[:, 1, 0], out[:, 1, 1] = cos, -sin, sin, cos
    out[:, 0, 2] = translation[:, 0] - pivot * (cos - sin)
    out[:, 1, 2] = translation[:, 1] - pivot * (sin + cos)
    out[:, 2, 2] = 1.0
    return out


def _object_path(rng: np.random.Generator, num_frames: int, width: int, height: int, speed: float,
                 safe_radius: float, fastest_at_mid: bool) -> np.ndarray:
    """(T, 2) smooth elliptical path in image pixels, centred so that it stays mostly in frame."""
    semi_x = rng.uniform(0.12, 0.25) * width
    semi_y = semi_x * rng.uniform(0.6, 1.0)
    tilt = rng.uniform(0, np.pi)
    # |velocity| swings between omega*semi_y and omega*semi_x around the requested speed.
    omega = speed / np.sqrt((semi_x ** 2 + semi_y ** 2) / 2.0) * rng.choice([-1.0, 1.0])
    # At phase pi/2 the path runs along its long axis, at its top speed.
    phase_at_mid = np.pi / 2 if fastest_at_mid else rng.uniform(0, 2 * np.pi)
    phase = omega * (np.arange(num_frames) - num_frames // 2) + phase_at_mid
    local = np.stack([semi_x * np.cos(phase), semi_y * np.sin(phase)], axis=1)
    offsets = local @ _rotation(2, tilt)[:2, :2].T
    reach = np.abs(offsets).max(axis=0) + 0.5 * safe_radius
    low, high = reach, np.array([width, height]) - reach
    centre = np.where(low < high, rng.uniform(np.minimum(low, high), np.maximum(low, high)),
                      np.array([width, height]) / 2.0)
    return centre + offsets


def _object_sprites(rng: np.random.Generator, camera: _ClipCamera, num_objects: int, num_frames: int,
                    width: int, height: int, occluder: bool) -> list[_Sprite]:
    depths = rng.uniform(*_OBJECT_DEPTH_RANGE, num_objects)
    mid = num_frames // 2
    frames = np.arange(num_frames)
    sprites = []
    for index in range(num_objects):
        # The object that passes behind the occluder is the farthest, small, elongated, fast and
        # crosses broadside at mid-clip, so a bar can hide it completely for a few frames and
        # the whole pass fits in a short clip.
        hides = occluder and index == 0
        if hides:
            depths[index] = _OBJECT_DEPTH_RANGE[1]
        area = (0.06 if hides else rng.uniform(0.06, 0.15)) * width * height
        speed = (6.5 if hides else rng.uniform(3.5, 6.0)) * width / _REFERENCE_WIDTH
        rgba = _object_sprite(rng, area, 0.55 if hides else rng.uniform(0.55, 1.0))
        pivot = rgba.shape[0] / 2.0
        scale = np.sqrt(area / max(1.0, rgba[..., 3].sum() / 255.0))
        path_in_image = _object_path(rng, num_frames, width, height, speed, np.sqrt(area), hides)
        # The path is drawn in the mid-clip view and pinned to the world, so camera motion
        # shifts it but its speed relative to a static point at the same depth stays as drawn.
        plane = _plane_homographies(camera, depths[index], (0.0, 0.0))
        path = _apply_homography(np.linalg.inv(plane[mid]), path_in_image)
        if hides:
            heading = path[min(mid + 1, num_frames - 1)] - path[max(mid - 1, 0)]
            angle = np.full(num_frames, np.arctan2(heading[1], heading[0]) + np.pi / 2)
        else:
            angle = rng.uniform(0, 2 * np.pi) + rng.uniform(0.0, 0.3) * np.sin(rng.uniform(0.01, 0.05) * frames)
        zoom = scale * (1.0 + 0.06 * np.sin(rng.uniform(0.02, 0.08) * frames + rng.uniform(0, 2 * np.pi)))
        homographies = plane @ _similarity(zoom, angle, path, pivot)
        sprites.append(_Sprite(rgba, homographies, index + 1))
    order = np.argsort(-depths, kind="stable")   # far to near
    return [sprites[i] for i in order]


def _occluder_sprite(rng: np.random.Generator, camera: _ClipCamera, hidden: _Sprite, num_frames: int,
                     width: int, height: int) -> _Sprite:
    """A bar on a near world plane, placed across the path of ``hidden`` at mid-clip."""
    offset, (canvas_w, canvas_h) = _canvas_extent(camera, _OCCLUDER_DEPTH, width, height)
    homographies = _plane_homographies(camera, _OCCLUDER_DEPTH, offset)
    mid = num_frames // 2
    before, after = max(mid - 1, 0), min(mid + 1, num_frames - 1)
    centre_in_sprite = np.array([hidden.rgba.shape[1], hidden.rgba.shape[0]]) / 2.0
    crossing = _apply_homography(hidden.homographies[mid], centre_in_sprite)
    on_bar = _apply_homography(np.linalg.inv(homographies[mid]), crossing)
    # Image velocity of the object relative to the bar point it is crossing.
    object_step = (_apply_homography(hidden.homographies[after], centre_in_sprite)
                   - _apply_homography(hidden.homographies[before], centre_in_sprite))
    bar_step = _apply_homography(homographies[after], on_bar) - _apply_homography(homographies[before], on_bar)
    relative = (object_step - bar_step) / max(after - before, 1)
    speed = float(np.linalg.norm(relative))
    across = relative / speed if speed > 1e-6 else np.array([1.0, 0.0])
    along = np.array([-across[1], across[0]])
    # Wide enough to hide the whole object for about three frames.
    outline = np.argwhere(hidden.rgba[..., 3] >= 128)[:, ::-1].astype(np.float64)
    footprint = _apply_homography(hidden.homographies[mid], outline) @ across
    half_width = (footprint.max() - footprint.min() + 3.0 * speed) / 2.0
    half_length = float(np.hypot(width, height))
    corners = np.array([crossing + sa * half_width * across + sb * half_length * along
                        for sa, sb in ((-1, -1), (1, -1), (1, 1), (-1, 1))])
    canvas_corners = _apply_homography(np.linalg.inv(homographies[mid]), corners)
    alpha = np.zeros((canvas_h, canvas_w), np.uint8)
    cv2.fillPoly(alpha, [np.round(canvas_corners * 16).astype(np.int32)], 255, cv2.LINE_AA, shift=4)
    texture = _scene_texture(rng, canvas_h, canvas_w, np.array([0.55, 0.42, 0.32], np.float32))
    return _Sprite(_rgba(texture, alpha), homographies, 0)


def _composite(frame: np.ndarray, mask: np.ndarray, sprite: _Sprite, frame_index: int) -> None:
    """Alpha-blend one warped RGBA sprite into the uint8 ``frame`` in place, only over its footprint."""
    height, width = frame.shape[:2]
    homography = sprite.homographies[frame_index]
    h, w = sprite.rgba.shape[:2]
    corners = _apply_homography(homography, np.array([[0.0, 0.0], [w, 0.0], [0.0, h], [w, h]]))
    x0, y0 = np.maximum(np.floor(corners.min(axis=0)).astype(int) - 1, 0)
    x1 = min(int(np.ceil(corners[:, 0].max())) + 2, width)
    y1 = min(int(np.ceil(corners[:, 1].max())) + 2, height)
    if x1 <= x0 or y1 <= y0:
        return
    to_roi = np.array([[1.0, 0.0, -x0], [0.0, 1.0, -y0], [0.0, 0.0, 1.0]]) @ homography
    warped = cv2.warpPerspective(sprite.rgba, to_roi, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR,
                                 borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    weight = warped[..., 3].astype(np.float32) * (1.0 / 255.0)
    region = frame[y0:y1, x0:x1]
    region[...] = cv2.blendLinear(region, cv2.cvtColor(warped, cv2.COLOR_RGBA2RGB), 1.0 - weight, weight)
    if sprite.label is not None:
        mask[y0:y1, x0:x1][weight >= 0.5] = sprite.label


def _ground_band(rng: np.random.Generator, camera: _ClipCamera, width: int, height: int) -> _Sprite:
    """Near layer covering the lower image below a wavy skyline, for parallax against the far layer."""
    offset, (canvas_w, canvas_h) = _canvas_extent(camera, _GROUND_DEPTH, width, height)
    columns = np.arange(canvas_w) + offset[0]
    skyline = height * (0.58 + 0.05 * np.sin(columns / rng.uniform(40, 90) + rng.uniform(0, 6.3))
                        + 0.04 * np.sin(columns / rng.uniform(120, 250) + rng.uniform(0, 6.3)))
    rows = np.arange(canvas_h)[:, None] + offset[1]
    alpha = np.clip((rows - skyline[None, :]) * 128.0 + 128.0, 0, 255).astype(np.uint8)
    texture = _scene_texture(rng, canvas_h, canvas_w, np.array([0.55, 0.6, 0.4], np.float32))
    return _Sprite(_rgba(texture, alpha), _plane_homographies(camera, _GROUND_DEPTH, offset), None)


def _add_sensor_noise(rng: np.random.Generator, frame: np.ndarray) -> np.ndarray:
    """``frame`` plus zero-mean integer noise, saturated to uint8.

    A sum of two small uniform integers is close enough to Gaussian for sensor noise and several
    times cheaper to draw and add than normal samples.
    """
    span = 2 * _SENSOR_NOISE_RANGE + 1
    noisy = frame.astype(np.int16)
    noisy += rng.integers(0, span, frame.shape, dtype=np.uint8)
    noisy += rng.integers(0, span, frame.shape, dtype=np.uint8)
    noisy -= 2 * _SENSOR_NOISE_RANGE
    return np.clip(noisy, 0, 255).astype(np.uint8)


def render_clip(seed: int = 0, num_frames: int = 60, width: int = 640, height: int = 480, num_objects: int = 1,
                camera_motion: str = "pan", fps: float = 30.0, occluder: bool = False) -> SyntheticClip:
    """Render a clip of textured objects moving in front of a layered background.

    camera_motion: "static"; "pan" (turn plus sideways step, mild parallax); "zoom" (focal
    length change, no parallax); "shake" (hand-held jitter); "orbit" (circle a point at object
    depth while looking at it, strong parallax). At 640 px width the background moves about
    1-6 px/frame and objects 2-8 px/frame relative to a static point at their depth; pixel
    speeds scale with ``width``.
    occluder: add a near static bar that object 1 passes fully behind around mid-clip.
    """
    if num_frames < 1:
        raise ValueError("num_frames must be at least 1")
    if occluder and num_objects < 1:
        raise ValueError("occluder needs at least one object to hide")
    rng = np.random.default_rng(seed)
    focal = 0.8 * width
    camera = _clip_camera(rng, camera_motion, num_frames, width, height, focal)

    far_offset, (far_w, far_h) = _canvas_extent(camera, _FAR_DEPTH, width, height)
    far_texture = _scene_texture(rng, far_h, far_w, np.array([0.75, 0.7, 0.8], np.float32))
    far_homographies = _plane_homographies(camera, _FAR_DEPTH, far_offset)
    layers = [_ground_band(rng, camera, width, height)]
    objects = _object_sprites(rng, camera, num_objects, num_frames, width, height, occluder)
    layers += objects
    if occluder:
        hidden = next(sprite for sprite in objects if sprite.label == 1)
        layers.append(_occluder_sprite(rng, camera, hidden, num_frames, width, height))

    frames, masks = [], []
    for t in range(num_frames):
        frame = cv2.warpPerspective(far_texture, far_homographies[t], (width, height), flags=cv2.INTER_LINEAR,
                                    borderMode=cv2.BORDER_REFLECT)
        mask = np.zeros((height, width), np.uint16)
        for layer in layers:
            _composite(frame, mask, layer, t)
        frames.append(_add_sensor_noise(rng, cv2.GaussianBlur(frame, (0, 0), _OPTICS_BLUR_SIGMA)))
        masks.append(mask)
    stamps = [t / fps for t in range(num_frames)]
    return SyntheticClip(frames=frames, masks=masks, stamps=stamps, fps=float(fps))


# --------------------------------------------------------------------------------------
# Part B: 3-D point trajectories
# --------------------------------------------------------------------------------------

TRAJECTORY_CAMERA_MOTIONS = ("forward", "walking", "panning", "orbit", "stationary")

_DYNAMIC_EPSILON = 1e-3     # m: a point whose world position moves less than this over the clip is static
_NEAR_PLANE = 0.05          # m: points closer to the camera plane than this are not visible
_OCCLUSION_MARGIN = 1e-3    # fraction of the ray: surfaces this close to the point do not hide it
_WORLD_DOWN = np.array([0.0, 1.0, 0.0])   # world axes follow the camera's: x right, y down, z forward


@dataclass
class TrajectorySample:
    """Point tracks through a random 3-D scene, with the ground truth that produced them.

    Pixel coordinates put pixel centres on integers: the image spans [0, width-1] x [0, height-1].
    A camera-frame point is ``world_to_camera[t] @ (X - camera_center[t])``; ``intrinsics``
    maps it to pixels.
    """

    xy: np.ndarray              # (N, T, 2) float32 (x, y); exact projection whenever the point is in
                                # front of the camera (also off-image or occluded), NaN behind it
    visible: np.ndarray         # (N, T) bool: in frame, in front of the camera and not occluded
    depth: np.ndarray           # (N, T) float32 camera-frame z in metres, NaN where not visible
    dynamic: np.ndarray         # (N,) bool: the point's world position changes over the clip
    object_index: np.ndarray    # (N,) int16: 0 = static world, k = moving object k
    image_size: tuple[int, int]  # (width, height)
    fps: float
    query_frame: np.ndarray     # (N,) int16: frame the track was seeded at; visible there
    intrinsics: np.ndarray      # (3, 3) float64 pinhole matrix
    world_to_camera: np.ndarray  # (T, 3, 3) float64 rotation
    camera_center: np.ndarray   # (T, 3) float64 camera centre in world coordinates (m)
    camera_motion: str


@dataclass
class _Body:
    """One convex surface: a plane, box, ellipsoid, or the dome that closes the scene.

    Surface points live in normalised coordinates n: the plane z = 0 (seen from z > 0), the
    cube [-1, 1]^3, or the unit sphere. At frame t a point is at ``linear[t] @ n +
    translation[t]``. ``linear`` is rotation times size; a time-varying, non-rotational part
    (stretch, shear) makes the body deform, and keeps ray casting and normals exact.
    """

    shape: str                  # "plane", "box", "ellipsoid" or "dome" (a sphere seen from inside)
    linear: np.ndarray          # (T, 3, 3)
    translation: np.ndarray     # (T, 3)
    object_index: int
    inverse: np.ndarray = field(init=False)   # (T, 3, 3) world offsets back to normalised coordinates

    def __post_init__(self) -> None:
        self.inverse = np.linalg.inv(self.linear)


def _sized(rotation: np.ndarray, half_extent: np.ndarray) -> np.ndarray:
    """Linear part of a body with the given rotation(s) and half extents."""
    return rotation * np.asarray(half_extent, float)[..., None, :]


def _static_body(shape: str, num_frames: int, rotation: np.ndarray, translation: np.ndarray,
                 half_extent: np.ndarray) -> _Body:
    return _Body(shape, np.repeat(_sized(rotation, half_extent)[None], num_frames, axis=0),
                 np.repeat(translation[None], num_frames, axis=0), 0)


def _basis_with_normal(normal: np.ndarray) -> np.ndarray:
    """Rotation whose third column is ``normal``, so a body-frame plane z = 0 faces that way."""
    normal = normal / np.linalg.norm(normal)
    helper = np.array([1.0, 0.0, 0.0]) if abs(normal[0]) < 0.9 else np.array([0.0, 0.0, 1.0])
    first = np.cross(helper, normal)
    first /= np.linalg.norm(first)
    return np.stack([first, np.cross(normal, first), normal], axis=1)


def _look_at(centers: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """(T, 3, 3) camera-to-world rotations looking from ``centers`` at ``targets``, world y down."""
    forward = targets - centers
    forward /= np.linalg.norm(forward, axis=-1, keepdims=True)
    right = np.cross(_WORLD_DOWN, forward)
    right /= np.linalg.norm(right, axis=-1, keepdims=True)
    return np.stack([right, np.cross(forward, right), forward], axis=-1)


def _axis_angle(axis: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """(T, 3, 3) rotations by ``angle`` (T,) about a fixed unit ``axis`` (Rodrigues)."""
    cross = np.array([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]])
    sin, cos = np.sin(angle)[:, None, None], np.cos(angle)[:, None, None]
    return np.eye(3) + sin * cross + (1.0 - cos) * (cross @ cross)


def _ego_motion(rng: np.random.Generator, motion: str, times: np.ndarray, fps: float,
                camera_height: float) -> tuple[np.ndarray, np.ndarray]:
    """Camera-to-world rotations (T, 3, 3) and centres (T, 3); the first centre is the origin."""
    num_frames = len(times)
    tremor_sigma = max(1.0, 0.06 * fps)   # hand tremor is smooth over ~60 ms
    yaw = np.full(num_frames, rng.uniform(-0.2, 0.2))
    pitch = np.full(num_frames, rng.uniform(-0.15, 0.03))   # mostly level or looking slightly down
    roll = np.full(num_frames, rng.normal(0.0, 0.02))
    center = np.zeros((num_frames, 3))
    if motion in ("forward", "walking"):
        if motion == "forward":
            speed = rng.uniform(2.0, 20.0)
            yaw = yaw + rng.normal(0.0, 0.1) * times                    # gentle curve in the road
            vibration = 0.003
        else:
            speed = rng.uniform(0.6, 1.8)
            yaw = yaw + rng.normal(0.0, 0.15) * times
            vibration = rng.uniform(0.005, 0.02)
        heading = np.stack([np.sin(yaw), np.zeros(num_frames), np.cos(yaw)], axis=1)
        steps = speed * heading / fps
        center = np.concatenate([np.zeros((1, 3)), np.cumsum(steps[:-1], axis=0)])
        if motion == "walking":
            # Head bob at step frequency, sideways sway at half of it.
            step_hz = rng.uniform(1.6, 2.2)
            bob = rng.uniform(0.015, 0.04)
            center[:, 1] += bob * np.sin(2 * np.pi * step_hz * times + rng.uniform(0, 2 * np.pi))
            sideways = np.stack([np.cos(yaw), np.zeros(num_frames), -np.sin(yaw)], axis=1)
            center += 0.5 * bob * np.sin(np.pi * step_hz * times + rng.uniform(0, 2 * np.pi))[:, None] * sideways
            center -= center[0]
        shake = vibration * _smooth_noise(rng, num_frames, tremor_sigma, 3)
        yaw, pitch, roll = yaw + shake[:, 0], pitch + shake[:, 1], roll + shake[:, 2]
        return _camera_to_world(yaw, pitch, roll), center
    if motion == "panning":
        yaw = yaw + rng.choice([-1.0, 1.0]) * rng.uniform(0.15, 0.8) * times
        pitch = pitch + rng.normal(0.0, 0.05) * times
        rotation = _camera_to_world(yaw, pitch, roll)
        # A tripod head turns about a point a few centimetres behind the optical centre.
        lever = np.array([0.0, 0.0, rng.uniform(0.03, 0.1)])
        return rotation, rotation @ lever - rotation[0] @ lever
    if motion == "orbit":
        # Hand-held orbit: walk round a target on the ground while keeping it centred.
        radius = rng.uniform(2.0, 10.0)
        angle = rng.choice([-1.0, 1.0]) * rng.uniform(0.15, 0.6) * times
        target = np.array([0.0, camera_height - rng.uniform(0.2, 1.2), radius])
        center = np.stack([-radius * np.sin(angle), np.zeros(num_frames), radius * (1.0 - np.cos(angle))], axis=1)
        center += 0.01 * _smooth_noise(rng, num_frames, tremor_sigma, 3)
        center -= center[0]
        tremor = rng.uniform(0.003, 0.012) * _smooth_noise(rng, num_frames, tremor_sigma, 3)
        return _look_at(center, target[None]) @ _camera_to_world(*tremor.T), center
    if motion != "stationary":
        raise ValueError(f"camera_motion must be one of {TRAJECTORY_CAMERA_MOTIONS}, got {motion!r}")
    return _camera_to_world(yaw, pitch, roll), center


@dataclass
class _PinholeRig:
    intrinsics: np.ndarray       # (3, 3)
    camera_to_world: np.ndarray  # (T, 3, 3)
    center: np.ndarray           # (T, 3)
    width: int
    height: int

    def rays(self, frames: np.ndarray, pixels: np.ndarray) -> np.ndarray:
        """World directions (M, 3) through ``pixels`` (M, 2) at ``frames`` (M,), with unit camera z."""
        inverse = np.linalg.inv(self.intrinsics)
        local = np.concatenate([pixels, np.ones((len(pixels), 1))], axis=1) @ inverse.T
        return np.einsum("mij,mj->mi", self.camera_to_world[frames], local)

    def back_project(self, frame: int, pixel: np.ndarray, depth: float) -> np.ndarray:
        return self.center[frame] + depth * self.rays(np.array([frame]), pixel[None])[0]

    def to_camera(self, points: np.ndarray) -> np.ndarray:
        """(T, N, 3) world points to camera coordinates, frame by frame."""
        return (points - self.center[:, None, :]) @ self.camera_to_world

    def project(self, camera_points: np.ndarray) -> np.ndarray:
        return camera_points[..., :2] / camera_points[..., 2:3] * np.diag(self.intrinsics)[:2] + self.intrinsics[:2, 2]

    def random_pixels(self, rng: np.random.Generator, count: int) -> np.ndarray:
        return rng.uniform([0.0, 0.0], [self.width - 1.0, self.height - 1.0], (count, 2))


def _hides(rig: _PinholeRig, frame: int, near: np.ndarray, radius: float, far: np.ndarray) -> bool:
    """Whether a ball of ``radius`` around ``near`` covers the view of point ``far`` at ``frame``."""
    camera_points = (np.stack([near, far]) - rig.center[frame]) @ rig.camera_to_world[frame]
    if not 0.0 < camera_points[0, 2] < camera_points[1, 2]:
        return False
    pixels = rig.project(camera_points)
    return bool(np.linalg.norm(pixels[0] - pixels[1]) < rig.intrinsics[0, 0] * radius / camera_points[0, 2])


def _static_scene(rng: np.random.Generator, rig: _PinholeRig, camera_height: float,
                  movers: list[_Body]) -> list[_Body]:
    """Ground, optional side walls, scattered boxes and blobs, and a dome that catches every ray.

    Nothing is placed where the camera or a moving body passes; walls stand beyond both.
    """
    num_frames = len(rig.center)
    bodies = [_static_body("plane", num_frames, _basis_with_normal(-_WORLD_DOWN),
                           np.array([0.0, camera_height, 0.0]), np.ones(3))]
    # Paths to keep clear, each with its bounding radius: the camera's and every moving body's.
    paths = [(rig.center, 0.0)] + [(body.translation, _object_bounds([body])[1]) for body in movers]
    reach = max(np.abs(path[:, 0]).max() + radius for path, radius in paths)
    for side in (-1.0, 1.0):
        if rng.random() < 0.4:
            bodies.append(_static_body("plane", num_frames, _basis_with_normal(np.array([-side, 0.0, 0.0])),
                                       np.array([side * (reach + rng.uniform(2.0, 10.0)), 0.0, 0.0]), np.ones(3)))
    for _ in range(int(rng.integers(3, 13))):
        if rng.random() < 0.2:      # pole or tree trunk
            half = np.array([rng.uniform(0.08, 0.25), rng.uniform(1.0, 3.0), rng.uniform(0.08, 0.25)])
        else:
            half = rng.uniform(0.2, 1.5, 3)
        frame = int(rng.integers(num_frames))
        anchor = rig.back_project(frame, rig.random_pixels(rng, 1)[0], np.exp(rng.uniform(np.log(2.0), np.log(40.0))))
        anchor[1] = camera_height - half[1]   # resting on the ground
        if any(np.linalg.norm((path - anchor)[:, [0, 2]], axis=1).min() < np.linalg.norm(half) + radius + 0.3
               for path, radius in paths):
            continue    # something would pass through it
        mid = num_frames // 2
        if any(_hides(rig, mid, anchor, np.linalg.norm(half), path[mid]) for path, _ in paths[1:]):
            continue    # keep moving objects in sight, at least mid-clip
        shape = "box" if rng.random() < 0.7 else "ellipsoid"
        bodies.append(_static_body(shape, num_frames, _rotation(1, rng.uniform(0, 2 * np.pi)), anchor, half))
    dome_radius = max(rng.uniform(60.0, 200.0), max(np.linalg.norm(path, axis=1).max() for path, _ in paths) + 40.0)
    bodies.append(_static_body("dome", num_frames, np.eye(3), np.zeros(3), np.full(3, dome_radius)))
    return bodies


_OBJECT_KINDS = ("person", "car", "ball", "crate", "blob")
_SPEED_RANGE = {"person": (0.1, 2.5), "car": (1.0, 20.0), "ball": (0.5, 8.0), "crate": (0.05, 3.0), "blob": (0.05, 1.5)}


def _moving_object(rng: np.random.Generator, rig: _PinholeRig, times: np.ndarray, fps: float,
                   camera_height: float, object_index: int) -> list[_Body] | None:
    """Bodies of one independently moving object, or None when no clear placement was found."""
    num_frames = len(times)
    mid = num_frames // 2
    tau = times - times[mid]
    kind = _OBJECT_KINDS[int(rng.integers(len(_OBJECT_KINDS)))]
    if kind == "person":
        torso = np.array([rng.uniform(0.2, 0.25), rng.uniform(0.3, 0.4), rng.uniform(0.12, 0.16)])
        leg = np.array([0.08, rng.uniform(0.38, 0.45), 0.08])
        height = 2 * (torso[1] + leg[1])
    elif kind == "car":
        half = np.array([rng.uniform(0.8, 1.0), rng.uniform(0.65, 0.85), rng.uniform(1.9, 2.4)])
    elif kind == "ball":
        half = np.full(3, rng.uniform(0.1, 0.5))
    else:
        half = rng.uniform(0.2, 0.8, 3) if kind == "crate" else rng.uniform(0.3, 1.0, 3)
    if kind != "person":
        height = 2 * half[1]
    low, high = _SPEED_RANGE[kind]
    speed = np.exp(rng.uniform(np.log(low), np.log(high)))
    if rng.random() < 0.15:
        speed = rng.uniform(0.02, 0.1)   # barely moving, the hardest to tell from static
    flying = kind == "ball" and rng.random() < 0.5
    extent = 0.5 * height + 0.3 if kind == "person" else np.linalg.norm(half)   # bounding radius
    ground_y = camera_height - 0.5 * height    # centre height when standing on the ground
    # The hard case: motion along the camera's own translation (or along the line of sight when
    # the camera does not translate) makes image motion that looks like static parallax.
    parallel = rng.random() < 0.3
    camera_velocity = (rig.center[-1] - rig.center[0]) / max(times[-1], 1e-9)
    camera_velocity[1] = 0.0
    if parallel and np.linalg.norm(camera_velocity) > 0.3:
        speed = np.linalg.norm(camera_velocity) * rng.uniform(0.3, 1.5)

    for _ in range(8):
        pixel = np.array([rng.uniform(0.1, 0.9) * (rig.width - 1), rng.uniform(0.3, 0.9) * (rig.height - 1)])
        anchor = rig.back_project(mid, pixel, np.exp(rng.uniform(np.log(2.5), np.log(30.0))))
        anchor[1] = min(anchor[1], ground_y) if flying else ground_y
        heading = rng.uniform(0, 2 * np.pi)
        if parallel:
            direction = camera_velocity if np.linalg.norm(camera_velocity) > 0.3 else anchor - rig.center[mid]
            heading = np.arctan2(direction[0], direction[2]) + (np.pi if rng.random() < 0.4 else 0.0)
        yaw_rate = rng.normal(0.0, 0.3) if kind in ("person", "car") else 0.0
        headings = heading + yaw_rate * tau
        speeds = np.maximum(speed + rng.normal(0.0, 0.5) * tau, 0.0)
        velocity = speeds[:, None] * np.stack([np.sin(headings), np.zeros(num_frames), np.cos(headings)], axis=1)
        travelled = np.concatenate([np.zeros((1, 3)), np.cumsum((velocity[1:] + velocity[:-1]) / (2 * fps), axis=0)])
        position = anchor + travelled - travelled[mid]
        if flying:
            position[:, 1] += rng.uniform(-4.0, 1.0) * tau + 0.5 * 9.81 * tau ** 2
            position[:, 1] = np.minimum(position[:, 1], ground_y)
        if np.linalg.norm(position - rig.center, axis=1).min() > extent + 0.5:
            break
    else:
        return None

    facing = _rotation(1, headings)
    if kind == "person":
        return _person(rng, facing, position, torso, leg, speed, tau, object_index)
    if kind == "ball":
        if flying:
            axis = rng.normal(size=3)
            spin = _axis_angle(axis / np.linalg.norm(axis), rng.uniform(1.0, 15.0) * tau)
        else:
            # Rolling without slipping about the horizontal axis across the heading.
            spin = _axis_angle(np.array([1.0, 0.0, 0.0]), -np.cumsum(speeds) / (fps * half[0]))
        rotation = facing @ spin
    elif kind == "crate" and rng.random() < 0.5:
        axis = rng.normal(size=3)
        rotation = facing @ _axis_angle(axis / np.linalg.norm(axis), rng.uniform(0.5, 6.0) * tau)
    else:
        rotation = facing
    form = np.repeat(np.diag(half)[None], num_frames, axis=0)
    if kind == "blob":
        # Pulsing and swaying like something soft or animate: per-axis stretch, plus the top
        # shearing sideways against the bottom.
        rate = 2 * np.pi * rng.uniform(0.5, 2.0)
        stretch = rng.uniform(0.05, 0.2, 3) * np.sin(rate * tau[:, None] + rng.uniform(0, 2 * np.pi, 3))
        form = form * (1.0 + stretch[:, None, :])
        sway = rng.uniform(0.0, 0.4, 2)[None] * np.sin(rate * tau[:, None] + rng.uniform(0, 2 * np.pi, 2))
        form[:, 0, 1] = sway[:, 0] * half[1]
        form[:, 2, 1] = sway[:, 1] * half[1]
    shape = "box" if kind in ("car", "crate") or (kind == "blob" and rng.random() < 0.5) else "ellipsoid"
    return [_Body(shape, rotation @ form, position, object_index)]


def _person(rng: np.random.Generator, facing: np.ndarray, center: np.ndarray, torso: np.ndarray, leg: np.ndarray,
            speed: float, tau: np.ndarray, object_index: int) -> list[_Body]:
    """Articulated walker: a torso and two legs swinging in antiphase about the hips.

    ``center`` is mid-height, so the feet touch the ground at ``center + leg + torso`` below.
    """
    torso_center = center + facing @ np.array([0.0, -leg[1], 0.0])
    stride_hz = rng.uniform(0.8, 2.0)
    swing = rng.uniform(0.2, 0.5) * min(1.0, speed) * np.sin(2 * np.pi * stride_hz * tau + rng.uniform(0, 2 * np.pi))
    bodies = [_Body("box", _sized(facing, torso), torso_center, object_index)]
    for side in (-1.0, 1.0):
        leg_rotation = facing @ _rotation(0, side * swing)
        hip = torso_center + facing @ np.array([side * 0.55 * torso[0], torso[1], 0.0])
        leg_center = hip + leg_rotation @ np.array([0.0, leg[1], 0.0])
        bodies.append(_Body("box", _sized(leg_rotation, leg), leg_center, object_index))
    return bodies


def _rays_in_body(body: _Body, frames: np.ndarray, origins: np.ndarray, directions: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Rays (K, L, 3) at ``frames`` (K,) in the body's normalised coordinates (ray parameter kept)."""
    to_normalised = np.swapaxes(body.inverse[frames], 1, 2)
    return (origins - body.translation[frames][:, None, :]) @ to_normalised, directions @ to_normalised


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a[..., 0] * b[..., 0] + a[..., 1] * b[..., 1] + a[..., 2] * b[..., 2]


def _hit_distance(shape: str, start: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """Ray parameter of the first surface crossing ahead of the start, inf where there is none."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if shape == "plane":
            hit = -start[..., 2] / direction[..., 2]
        elif shape == "box":
            first, second = (-1.0 - start) / direction, (1.0 - start) / direction
            near, far = np.minimum(first, second), np.maximum(first, second)
            # Explicit per-axis maxima: reductions over a length-3 axis are slow in numpy.
            entry = np.maximum(np.maximum(near[..., 0], near[..., 1]), near[..., 2])
            leave = np.minimum(np.minimum(far[..., 0], far[..., 1]), far[..., 2])
            hit = np.where(entry <= leave, entry, np.inf)   # a start inside the box (entry < 0) is a miss
        else:
            a = _dot(direction, direction)
            b = _dot(start, direction)
            c = _dot(start, start) - 1.0
            discriminant = b * b - a * c
            root = np.sqrt(np.maximum(discriminant, 0.0))
            # The dome is seen from inside, so its surface is the far crossing.
            hit = (-b + root) / a if shape == "dome" else (-b - root) / a
            hit = np.where(discriminant >= 0.0, hit, np.inf)
    return np.where(hit > 0.0, hit, np.inf)


def _cast(bodies: list[_Body], rig: _PinholeRig, frames: np.ndarray, pixels: np.ndarray
          ) -> tuple[np.ndarray, np.ndarray]:
    """Nearest surface through each pixel: body index (M,) (-1 for none) and rest coordinates (M, 3)."""
    origins = rig.center[frames][:, None, :]
    directions = rig.rays(frames, pixels)[:, None, :]
    nearest = np.full(len(frames), np.inf)
    which = np.full(len(frames), -1)
    where = np.zeros((len(frames), 3))
    for index, body in enumerate(bodies):
        start, direction = _rays_in_body(body, frames, origins, directions)
        distance = _hit_distance(body.shape, start, direction)[:, 0]
        closer = distance < nearest
        nearest[closer] = distance[closer]
        which[closer] = index
        where[closer] = start[closer, 0] + distance[closer, None] * direction[closer, 0]
    return which, where


def _surface_to_world(body: _Body, rest: np.ndarray) -> np.ndarray:
    """(T, n, 3) world positions of rest points (n, 3) on ``body`` at every frame."""
    return rest @ np.swapaxes(body.linear, 1, 2) + body.translation[:, None, :]


def _surface_normal(body: _Body, rest: np.ndarray) -> np.ndarray:
    """(T, n, 3) outward world normals (unnormalised) at rest points (n, 3)."""
    if body.shape == "plane":
        local = np.broadcast_to(np.array([0.0, 0.0, 1.0]), rest.shape)
    elif body.shape == "box":
        face = np.argmax(np.abs(rest), axis=1)
        local = np.zeros_like(rest)
        local[np.arange(len(rest)), face] = np.sign(rest[np.arange(len(rest)), face])
    else:
        local = -rest if body.shape == "dome" else rest   # the dome is seen from inside
    # Normals map with the inverse transpose of the linear part.
    return local @ body.inverse


def _object_bounds(bodies: list[_Body]) -> tuple[np.ndarray, float]:
    """Per-frame centre (T, 3) and a bounding radius of a group of bodies."""
    center = np.mean([body.translation for body in bodies], axis=0)
    corners = np.array(np.meshgrid([-1.0, 1.0], [-1.0, 1.0], [-1.0, 1.0])).reshape(3, 8).T
    radius = max(np.linalg.norm(_surface_to_world(body, corners) - center[:, None, :], axis=2).max() for body in bodies)
    return center, float(radius)


def _seed_on_object(rng: np.random.Generator, bodies: list[_Body], rig: _PinholeRig, members: np.ndarray,
                    count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Up to ``count`` visible surface points on the bodies ``members`` (indices into ``bodies``)."""
    center, radius = _object_bounds([bodies[i] for i in members])
    camera_points = rig.to_camera(center[:, None, :])[:, 0]
    in_front = camera_points[:, 2] > 0.3
    projected = rig.project(camera_points)
    reach = rig.intrinsics[0, 0] * radius / np.maximum(camera_points[:, 2], 0.3)
    low = np.maximum(projected - reach[:, None], 0.0)
    high = np.minimum(projected + reach[:, None], [rig.width - 1.0, rig.height - 1.0])
    usable = np.flatnonzero(in_front & np.all(low < high, axis=1))
    if count == 0 or len(usable) == 0:
        return np.zeros(0, int), np.zeros((0, 3)), np.zeros(0, int)
    frames = rng.choice(usable, 4 * count)
    pixels = rng.uniform(low[frames], high[frames])
    which, rest = _cast(bodies, rig, frames, pixels)
    keep = np.flatnonzero(np.isin(which, members))[:count]
    return which[keep], rest[keep], frames[keep]


def _seed_anywhere(rng: np.random.Generator, bodies: list[_Body], rig: _PinholeRig, count: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``count`` surface points seen through random pixels; half of them seeded at the first frame.

    Every ray meets something, the dome at the latest.
    """
    num_frames = len(rig.center)
    frames = np.where(rng.random(count) < 0.5, 0, rng.integers(0, num_frames, count))
    which, rest = _cast(bodies, rig, frames, rig.random_pixels(rng, count))
    return which, rest, frames


def _occluded(bodies: list[_Body], which: np.ndarray, world: np.ndarray, normal: np.ndarray,
              center: np.ndarray) -> np.ndarray:
    """(T, N) whether surface points (T, N, 3) on ``bodies[which]`` are hidden from camera centres (T, 3).

    A point's own (convex) body hides it when the surface faces away; any other body hides it
    when it crosses the line of sight in front of the point.
    """
    to_camera = center[:, None, :] - world
    hidden = _dot(normal, to_camera) <= 0.0
    frames = np.arange(len(center))
    for index, body in enumerate(bodies):
        if body.shape == "dome":
            continue    # it is behind everything
        start, direction = _rays_in_body(body, frames, center[:, None, :], -to_camera)
        blocks = _hit_distance(body.shape, start, direction) < 1.0 - _OCCLUSION_MARGIN
        hidden |= blocks & (which != index)[None, :]
    return hidden


def sample_trajectories(seed: int, num_tracks: int = 1024, num_frames: int = 16,
                        image_size: tuple[int, int] = (640, 480), fps: float = 30.0, max_objects: int = 4,
                        camera_motion: str | None = None) -> TrajectorySample:
    """Point tracks through a random 3-D scene seen by a moving pinhole camera.

    The static world is a ground plane, optional side walls, scattered boxes, poles and blobs,
    closed by a distant dome. 0 to ``max_objects`` objects move independently: people with
    swinging legs, cars, rolling or thrown balls, tumbling crates and deforming blobs, some
    barely moving and some moving along the camera's own translation or line of sight (whose
    image motion mimics parallax). camera_motion: "forward" (driving), "walking" (with bob and
    shake), "panning" (tripod turn), "orbit" (hand-held, circling a point while facing it),
    "stationary"; None picks one at random. Tracks are seeded at random frames on the nearest
    visible surface; moving objects get about 5-40 % of them when present.
    """
    rng = np.random.default_rng(seed)
    width, height = image_size
    motion = camera_motion if camera_motion is not None else TRAJECTORY_CAMERA_MOTIONS[
        int(rng.integers(len(TRAJECTORY_CAMERA_MOTIONS)))]
    times = np.arange(num_frames) / fps
    focal = width / (2.0 * np.tan(np.radians(rng.uniform(50.0, 85.0)) / 2.0))
    intrinsics = np.array([[focal, 0.0, (width - 1) / 2.0], [0.0, focal, (height - 1) / 2.0], [0.0, 0.0, 1.0]])
    camera_height = rng.uniform(1.2, 1.8) if motion in ("forward", "walking") else rng.uniform(0.8, 2.0)
    camera_to_world, center = _ego_motion(rng, motion, times, fps, camera_height)
    rig = _PinholeRig(intrinsics, camera_to_world, center, width, height)

    num_objects = 0 if rng.random() < 0.2 or max_objects == 0 else int(rng.integers(1, max_objects + 1))
    movers: list[_Body] = []
    placed_objects = 0
    for _ in range(num_objects):
        moving = _moving_object(rng, rig, times, fps, camera_height, placed_objects + 1)
        if moving is not None:
            movers += moving
            placed_objects += 1
    bodies = _static_scene(rng, rig, camera_height, movers) + movers
    body_object = np.array([body.object_index for body in bodies])

    # Seed a share of the tracks on the moving objects, the rest anywhere in view.
    seeds = []
    if placed_objects:
        on_objects = int(round(rng.uniform(0.05, 0.4) * num_tracks))
        wanted = rng.multinomial(on_objects, rng.dirichlet(np.ones(placed_objects)))
        for index in range(placed_objects):
            seeds.append(_seed_on_object(rng, bodies, rig, np.flatnonzero(body_object == index + 1), wanted[index]))
    seeds.append(_seed_anywhere(rng, bodies, rig, num_tracks - sum(len(seed[0]) for seed in seeds)))
    which, rest, query = (np.concatenate(parts) for parts in zip(*seeds))
    order = rng.permutation(num_tracks)   # interleave object and background tracks
    which, rest, query = which[order], rest[order], query[order]

    world = np.zeros((num_frames, num_tracks, 3))
    normal = np.zeros((num_frames, num_tracks, 3))
    for index in np.unique(which):
        chosen = which == index
        world[:, chosen] = _surface_to_world(bodies[index], rest[chosen])
        normal[:, chosen] = _surface_normal(bodies[index], rest[chosen])
    dynamic = np.linalg.norm(world - world[:1], axis=2).max(axis=0) > _DYNAMIC_EPSILON

    camera_points = rig.to_camera(world)
    depth = camera_points[..., 2]
    in_front = depth > _NEAR_PLANE
    with np.errstate(divide="ignore", invalid="ignore"):
        xy = np.where(in_front[..., None], rig.project(camera_points), np.nan)
    in_image = (xy[..., 0] >= 0) & (xy[..., 0] <= width - 1) & (xy[..., 1] >= 0) & (xy[..., 1] <= height - 1)
    visible = in_front & in_image & ~_occluded(bodies, which, world, normal, center)

    return TrajectorySample(
        xy=np.swapaxes(xy, 0, 1).astype(np.float32),
        visible=np.ascontiguousarray(visible.T),
        depth=np.where(visible, depth, np.nan).T.astype(np.float32),
        dynamic=dynamic,
        object_index=body_object[which].astype(np.int16),
        image_size=(int(width), int(height)),
        fps=float(fps),
        query_frame=query.astype(np.int16),
        intrinsics=intrinsics,
        world_to_camera=np.ascontiguousarray(np.swapaxes(camera_to_world, 1, 2)),
        camera_center=center,
        camera_motion=motion,
    )
