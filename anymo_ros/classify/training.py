"""Training of the learned trajectory classifier on our own synthetic scenes.

Two sources of labelled track windows, mixed in every batch:

* **3-D scenes** (:func:`~anymo_ros.tools.synthetic.sample_trajectories`): exact point tracks
  through random scenes with every camera motion, with depth and ground-truth dynamic labels.
  Fresh scenes are drawn for every batch, so the model never sees a scene twice.
* **Tracked renders** (:func:`~anymo_ros.tools.synthetic.render_clip`): rendered video of every
  clip camera motion, tracked by the pipeline's own Lucas-Kanade tracker. A track is dynamic when
  the ground-truth instance mask under it is an object at most of its visible steps in the
  window, so its noise, drift, losses and re-seeding are the real tracker's. Rendering and
  tracking are slow, so a fixed pool of clips is tracked once and windows are cut from it.

Augmentations aim at real video: pixel noise and per-track drift, occlusion gaps and tracker-like
births and losses, frame-rate changes (frame rate of the scene, or every k-th frame of a clip),
crops and anisotropic rescaling (resolution and aspect), and per-frame skew and shake (a rolling
shutter and a hand-held camera; they move static and dynamic points alike, so the labels hold).
Most windows come without depth, as the pipeline usually runs without it; the rest get depth or
disparity with noise. Windows whose tracks are mostly dynamic are drawn again (see :func:`usable`).

Semantics are left out: the shipped model is motion-only (``semantic_dim`` 0). Zero semantics in
training would leave the semantic weights untrained, so a model that took 768-d DINOv2 vectors
would only be fed noise through them at run time.

Everything is deterministic for a given :class:`TrainingConfig`: each batch and each rendered clip
comes from seeded generators as a function of its index alone (worker processes, if any, only
make them ahead of time), the model from ``torch.manual_seed``, and :func:`train` fixes torch's
thread count (floating-point sums depend on how work is split across threads).
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import cv2
import numpy as np
import torch

from anymo_ros.classify.features import track_features
from anymo_ros.classify.trajectory_transformer import (
    TrajectoryTransformer,
    TrajectoryTransformerConfig,
    weighted_bce,
)
from anymo_ros.config import TrackerConfig
from anymo_ros.tools.synthetic import (
    CLIP_CAMERA_MOTIONS,
    TRAJECTORY_CAMERA_MOTIONS,
    render_clip,
    sample_trajectories,
)
from anymo_ros.tracking import create_tracker

# The fast model shipped in resource/: one space-time layer and a two-block decoupled encoder,
# attention across tracks through 16 anchor tokens, and the fitted camera motion's residuals,
# frame to frame and over 8 frames, as extra inputs (see trajectory_transformer.py). 1024 tracks
# x 16 frames take about 18 ms on 2 CPU cores, where the paper-size model takes 0.3 s.
FAST_MODEL = TrajectoryTransformerConfig(
    motion_dim=16,
    motion_heads=2,
    motion_ffn_dim=64,
    motion_encoder_layers=1,
    motion_decoder_layers=0,
    decoupled_dim=64,
    decoupled_heads=4,
    decoupled_ffn_dim=128,
    decoupled_encoder_blocks=2,
    decoupled_decoder_blocks=0,
    semantic_dim=0,
    semantic_dropout=0.0,
    # Every batch is new data, so there is nothing to regularise against; dropout would only slow
    # training down.
    dropout=0.0,
    track_anchors=16,
    ego_motion_inputs=True,
    ego_motion_baseline=8,
)

# Image sizes of the 3-D scenes: landscape video formats, 4:3, and a portrait phone.
SCENE_IMAGE_SIZES = ((640, 480), (854, 480), (480, 270), (640, 360), (320, 240), (1280, 720), (480, 640))
# Rendered clips are tracked at about the pipeline's processing size (480 px wide).
RENDER_IMAGE_SIZES = ((480, 270), (480, 360), (400, 300), (544, 306))
# Seeds at or above this are validation's; training seeds stay below.
VALIDATION_SEED_BASE = 1_000_000_000
# Pixel quantities of the augmentations are quoted for this image width and scale with the width.
_REFERENCE_WIDTH = 480.0
# Draws per training window before an unusable one is kept anyway (practically never).
_ATTEMPTS = 8


@dataclass
class TrackWindow:
    """Labelled tracks of one window: the classifier's input and target."""

    xy: np.ndarray               # (N, T, 2) float32 pixels
    visible: np.ndarray          # (N, T) bool
    confidence: np.ndarray       # (N, T) float32 in [0, 1], 0 where invisible
    depth: np.ndarray | None     # (N, T) float32, or None without a depth source
    dynamic: np.ndarray          # (N,) bool
    image_size: tuple[int, int]  # (width, height)

    def __len__(self) -> int:
        return len(self.dynamic)


@dataclass
class TrackedClip:
    """Lucas-Kanade tracks of one rendered clip, with the ground truth under every observation."""

    xy: np.ndarray               # (N, T, 2) float32, NaN where the track is not observed
    visible: np.ndarray          # (N, T) bool
    confidence: np.ndarray       # (N, T) float32
    on_object: np.ndarray        # (N, T) bool: the instance mask is an object at the observation
    image_size: tuple[int, int]


@dataclass
class Augmentation:
    """Strengths of the augmentations; pixel values are quoted for a 480 px wide image.

    Noise and drift are drawn log-uniformly per window. The pipeline's Lucas-Kanade tracker jitters
    by about 0.01 px on the clean renders; real video (blur, compression, texture) is noisier,
    hence ranges up to half a pixel. The tracked renders get the weaker ``tracked_*`` ranges on
    top of their real tracker noise.
    """

    crop_probability: float = 0.5
    crop_fraction: tuple[float, float] = (0.6, 1.0)      # kept share of each image side
    rescale: tuple[float, float] = (0.5, 2.0)             # image size factor
    aspect_change: float = 0.2                            # log-range of the extra per-axis factor
    skew_probability: float = 0.5
    max_skew: float = 0.01                                # x shift across the image height, per width
    max_stretch: float = 0.005                            # y shift across the image height, per height
    shake_probability: float = 0.3
    max_shake_px: float = 1.5                             # per-frame jitter of the whole image
    noise_px: tuple[float, float] = (0.02, 0.5)           # per-step position noise (std)
    drift_px: tuple[float, float] = (0.002, 0.05)         # per-step random-walk drift (std)
    tracked_noise_px: tuple[float, float] = (0.005, 0.2)
    tracked_drift_px: tuple[float, float] = (0.001, 0.02)
    max_gapped_share: float = 0.3                         # tracks with an occlusion gap, at most
    no_return_probability: float = 0.5                    # windows whose tracks end at their first loss


@dataclass
class TrainingConfig:
    """Everything that decides the trained weights, apart from the model's hyper-parameters."""

    seed: int = 0
    steps: int = 12000
    batch_clips: int = 8
    tracks_per_clip: tuple[int, int] = (64, 512)     # range of tracks kept per training window
    window: tuple[int, int] = (8, 32)                # range of frames per window
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 200
    final_lr_fraction: float = 0.05                  # cosine decay ends at this fraction of the peak
    grad_clip: float = 1.0
    rendered_share: float = 0.4                      # windows cut from tracked renders, the rest 3-D scenes
    rendered_clips: int = 240                        # tracked render pool size
    rendered_frames: int = 48
    depth_share: float = 0.25                        # 3-D scene windows that come with depth
    max_dynamic_share: float = 0.5                   # windows with more dynamic tracks are drawn again
    augmentation: Augmentation = field(default_factory=Augmentation)
    threads: int = 1                                 # more only pays on an idle machine; sums depend on it
    validation_scenes: int = 48                      # per validation set
    validation_renders: int = 24
    validation_window: int = 16
    validation_tracks: int = 768

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# --- tracked renders ------------------------------------------------------------------------


def track_rendered_clip(
    seed: int,
    num_frames: int,
    image_size: tuple[int, int],
    num_objects: int,
    camera_motion: str,
    occluder: bool = False,
    tracker_config: TrackerConfig | None = None,
) -> TrackedClip:
    """Render a clip and track it with the pipeline's tracker, frame by frame as the node does."""
    width, height = image_size
    clip = render_clip(seed, num_frames, width, height, num_objects, camera_motion, occluder=occluder)
    tracker = create_tracker(tracker_config or TrackerConfig())
    updates = []
    for index, frame in enumerate(clip.frames):
        updates += tracker.push(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY), index)
    ids = np.unique(np.concatenate([update.ids for update in updates]))
    xy = np.full((len(ids), num_frames, 2), np.nan, np.float32)
    visible = np.zeros((len(ids), num_frames), bool)
    confidence = np.zeros((len(ids), num_frames), np.float32)
    on_object = np.zeros((len(ids), num_frames), bool)
    for update in updates:
        rows = np.searchsorted(ids, update.ids)
        t = update.frame_index
        seen = update.visible
        xy[rows[seen], t] = update.xy[seen]
        visible[rows[seen], t] = True
        confidence[rows[seen], t] = update.confidence[seen]
        px = np.clip(np.round(update.xy[seen, 0]).astype(int), 0, width - 1)
        py = np.clip(np.round(update.xy[seen, 1]).astype(int), 0, height - 1)
        on_object[rows[seen], t] = clip.masks[t][py, px] > 0
    return TrackedClip(xy, visible, confidence, on_object, (width, height))


def render_pool(first_seed: int, count: int, num_frames: int, workers: int = 0) -> list[TrackedClip]:
    """``count`` tracked renders with seeds from ``first_seed``, cycling through camera motions.

    Object count (0-3), image size and occluder follow from the seed, so the pool is fixed, and
    the same with any number of ``workers`` (processes; 0 renders here).
    """
    return list(_in_order(_PoolClips(first_seed, count, num_frames), workers))


def training_pool(config: TrainingConfig, workers: int = 0) -> list[TrackedClip]:
    """The tracked renders that training cuts windows from (none without ``rendered_share``)."""
    if config.rendered_share <= 0:
        return []
    return render_pool(config.seed * 100_000, config.rendered_clips, config.rendered_frames, workers)


class _PoolClips(torch.utils.data.Dataset):
    """Clip ``index`` of a render pool: a function of the index alone."""

    def __init__(self, first_seed: int, count: int, num_frames: int):
        self.first_seed, self.count, self.num_frames = first_seed, count, num_frames

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> TrackedClip:
        seed = self.first_seed + index
        rng = np.random.default_rng([seed, 1])
        num_objects = int(rng.choice([0, 1, 1, 2, 2, 3]))
        return track_rendered_clip(
            seed,
            self.num_frames,
            RENDER_IMAGE_SIZES[int(rng.integers(len(RENDER_IMAGE_SIZES)))],
            num_objects,
            CLIP_CAMERA_MOTIONS[index % len(CLIP_CAMERA_MOTIONS)],
            occluder=num_objects > 0 and rng.random() < 0.3,
        )


def _in_order(items: torch.utils.data.Dataset, workers: int) -> torch.utils.data.DataLoader:
    """The items in index order, made by ``workers`` processes ahead of use (0: made here on demand).

    Every item is a function of its index, so the workers change when an item is made, never what
    it is. Workers are spawned, not forked: a fork copies OpenCV's and OpenMP's thread pools
    without their threads, and a child that then uses them hangs. They run one torch and one OpenCV
    thread each. The loader draws its seeds from its own generator, so the caller's torch random
    stream is left as it was.
    """
    return torch.utils.data.DataLoader(items, batch_size=None, shuffle=False, num_workers=workers,
                                       worker_init_fn=_single_threaded_worker, generator=torch.Generator(),
                                       multiprocessing_context="spawn" if workers else None,
                                       prefetch_factor=4 if workers else None)


def _single_threaded_worker(worker_id: int) -> None:
    torch.set_num_threads(1)
    cv2.setNumThreads(1)


def cut_window(clip: TrackedClip, start: int, length: int, stride: int) -> TrackWindow:
    """Every ``stride``-th frame from ``start``, ``length`` frames; tracks seen twice or more in it.

    A track is dynamic when it lies on an object at most of its visible steps in the window.
    """
    frames = start + stride * np.arange(length)
    visible = clip.visible[:, frames]
    keep = visible.sum(axis=1) >= 2
    visible = visible[keep]
    on_object = clip.on_object[keep][:, frames]
    dynamic = 2 * (on_object & visible).sum(axis=1) > visible.sum(axis=1)
    xy = np.nan_to_num(clip.xy[keep][:, frames])
    return TrackWindow(xy, visible, clip.confidence[keep][:, frames], None, dynamic, clip.image_size)


# --- 3-D scenes -----------------------------------------------------------------------------


def scene_window(seed: int, num_tracks: int, window: int, with_depth: bool, rng: np.random.Generator) -> TrackWindow:
    """A window of tracks through a fresh 3-D scene (seed ``seed``); camera motion from the seed.

    The frame rate (8-60 fps) sets how far things move between frames; tracks only exist from
    their seeding frame on (as with an online tracker) in half of the scenes.
    """
    image_size = SCENE_IMAGE_SIZES[int(rng.integers(len(SCENE_IMAGE_SIZES)))]
    fps = float(np.exp(rng.uniform(np.log(8.0), np.log(60.0))))
    sample = sample_trajectories(seed, num_tracks, window, image_size, fps,
                                 camera_motion=TRAJECTORY_CAMERA_MOTIONS[seed % len(TRAJECTORY_CAMERA_MOTIONS)])
    visible = sample.visible.copy()
    if rng.random() < 0.5:
        visible &= np.arange(window)[None, :] >= sample.query_frame[:, None]
    xy = np.nan_to_num(sample.xy)
    depth = None
    if with_depth:
        depth = sample.depth * np.exp(rng.normal(0.0, rng.uniform(0.0, 0.1), sample.depth.shape)).astype(np.float32)
        if rng.random() < 0.5:
            depth = 1.0 / depth   # disparity, as monocular depth networks give
    return TrackWindow(xy, visible, _tracker_confidence(rng, visible), depth, sample.dynamic.copy(), image_size)


def _tracker_confidence(rng: np.random.Generator, visible: np.ndarray) -> np.ndarray:
    """Lucas-Kanade-like confidence exp(-forward-backward error), or 1 (a tracker without one)."""
    if rng.random() < 0.3:
        return visible.astype(np.float32)
    error = np.abs(rng.normal(0.0, rng.uniform(0.1, 0.5), visible.shape))
    return np.where(visible, np.exp(-error), 0.0).astype(np.float32)


# --- augmentation ---------------------------------------------------------------------------


def augment(window: TrackWindow, rng: np.random.Generator, strength: Augmentation, tracked: bool) -> TrackWindow:
    """Crop and rescale, skew and shake, noise and drift, and visibility drop-outs.

    ``tracked`` windows come from the real tracker and get weaker extra noise.
    """
    xy, visible = window.xy.astype(np.float64), window.visible.copy()
    width, height = window.image_size
    length = visible.shape[1]

    if rng.random() < strength.crop_probability:   # a smaller, differently shaped image
        crop_w, crop_h = (np.array([width, height]) * rng.uniform(*strength.crop_fraction, 2)).astype(int)
        x0, y0 = rng.integers(0, width - crop_w + 1), rng.integers(0, height - crop_h + 1)
        xy -= (x0, y0)
        width, height = int(crop_w), int(crop_h)
    # The features are scale-free, but pixel noise below is not.
    scale = _log_uniform(rng, strength.rescale) * np.exp(rng.uniform(-strength.aspect_change, strength.aspect_change, 2))
    xy *= scale
    width, height = max(int(round(width * scale[0])), 16), max(int(round(height * scale[1])), 16)
    pixel = width / _REFERENCE_WIDTH

    # Rolling-shutter skew and shake: one image-space transform per frame, applied to every point.
    if rng.random() < strength.skew_probability:
        rows = xy[..., 1] / height - 0.5
        xy[..., 0] += _smooth_series(rng, length)[None, :] * rng.uniform(0.0, strength.max_skew) * width * rows
        xy[..., 1] += _smooth_series(rng, length)[None, :] * rng.uniform(0.0, strength.max_stretch) * height * rows
    if rng.random() < strength.shake_probability:
        xy += rng.normal(0.0, rng.uniform(0.0, strength.max_shake_px) * pixel, (1, length, 2))

    noise = _log_uniform(rng, strength.tracked_noise_px if tracked else strength.noise_px) * pixel
    drift = _log_uniform(rng, strength.tracked_drift_px if tracked else strength.drift_px) * pixel
    xy += rng.normal(0.0, noise, xy.shape)
    xy += np.cumsum(rng.normal(0.0, drift, xy.shape), axis=1)

    visible &= (xy[..., 0] >= 0) & (xy[..., 0] <= width - 1) & (xy[..., 1] >= 0) & (xy[..., 1] <= height - 1)
    visible = _drop_outs(rng, visible, strength)
    keep = visible.sum(axis=1) >= 2
    depth = None if window.depth is None else window.depth[keep]
    return TrackWindow(
        xy[keep].astype(np.float32), visible[keep], np.where(visible, window.confidence, 0.0)[keep].astype(np.float32),
        depth, window.dynamic[keep], (width, height),
    )


def _log_uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(np.exp(rng.uniform(np.log(bounds[0]), np.log(bounds[1]))))


def _smooth_series(rng: np.random.Generator, length: int) -> np.ndarray:
    """A random series with values about in [-1, 1] that changes smoothly from frame to frame."""
    knots = rng.uniform(-1.0, 1.0, 4)
    return np.interp(np.linspace(0.0, 3.0, length), np.arange(4), knots)


def _drop_outs(rng: np.random.Generator, visible: np.ndarray, strength: Augmentation) -> np.ndarray:
    """Occlusion gaps in some tracks and, for a tracker that cannot re-find points, no return after one."""
    num_tracks, length = visible.shape
    visible = visible.copy()
    gapped = rng.random(num_tracks) < rng.uniform(0.0, strength.max_gapped_share)
    start = rng.integers(0, length, num_tracks)
    gap = rng.integers(1, max(length // 3, 1) + 1, num_tracks)
    steps = np.arange(length)[None, :]
    visible &= ~(gapped[:, None] & (steps >= start[:, None]) & (steps < (start + gap)[:, None]))
    if rng.random() < strength.no_return_probability:
        seen = np.cumsum(visible, axis=1) > 0
        lost = seen & ~visible
        visible &= np.cumsum(lost, axis=1) == 0
    return visible


def subsample_tracks(window: TrackWindow, count: int, rng: np.random.Generator) -> TrackWindow:
    if len(window) <= count:
        return window
    rows = np.sort(rng.choice(len(window), count, replace=False))
    depth = None if window.depth is None else window.depth[rows]
    return TrackWindow(window.xy[rows], window.visible[rows], window.confidence[rows], depth,
                       window.dynamic[rows], window.image_size)


def usable(window: TrackWindow, max_dynamic_share: float) -> bool:
    """Whether a window can be learnt from: it has tracks, and at most ``max_dynamic_share`` of
    them are dynamic. When most tracks move (an object filling a cropped view), nothing in the
    tracks tells which motion is the camera's, and the label would only teach noise."""
    return len(window) > 0 and window.dynamic.mean() <= max_dynamic_share


# --- batches --------------------------------------------------------------------------------


@dataclass
class Batch:
    features: torch.Tensor      # (B, N, T, 88)
    visible: torch.Tensor       # (B, N, T) bool
    track_mask: torch.Tensor    # (B, N) bool, False for padding
    labels: torch.Tensor        # (B, N) float, 1 dynamic

    @property
    def num_tracks(self) -> int:
        return int(self.track_mask.sum())


def collate(windows: list[TrackWindow]) -> Batch:
    """Features of equally long windows, padded to the longest track count."""
    length = windows[0].visible.shape[1]
    size = max(max(len(window) for window in windows), 1)
    features = torch.zeros(len(windows), size, length, 88)
    visible = torch.zeros(len(windows), size, length, dtype=torch.bool)
    track_mask = torch.zeros(len(windows), size, dtype=torch.bool)
    labels = torch.zeros(len(windows), size)
    for row, window in enumerate(windows):
        count = len(window)
        features[row, :count] = track_features(window.xy, window.visible, window.confidence, window.image_size,
                                               window.depth)
        visible[row, :count] = torch.from_numpy(window.visible)
        track_mask[row, :count] = True
        labels[row, :count] = torch.from_numpy(window.dynamic.astype(np.float32))
    return Batch(features, visible, track_mask, labels)


class TrainingData(torch.utils.data.Dataset):
    """The training batches: a seeded stream, the same for the same config and step.

    As a dataset, item ``step`` is ``batch(step)``, one per optimiser step.
    """

    def __init__(self, config: TrainingConfig, pool: list[TrackedClip]):
        self.config = config
        self.pool = pool

    def __len__(self) -> int:
        return self.config.steps

    def __getitem__(self, step: int) -> Batch:
        return self.batch(step)

    def batch(self, step: int) -> Batch:
        cfg = self.config
        rng = np.random.default_rng([cfg.seed, step])
        length = int(rng.integers(cfg.window[0], cfg.window[1] + 1))
        windows = []
        for index in range(cfg.batch_clips):
            count = int(rng.integers(cfg.tracks_per_clip[0], cfg.tracks_per_clip[1] + 1))
            windows.append(subsample_tracks(self._window(rng, length, step * cfg.batch_clips + index, count), count, rng))
        return collate(windows)

    def _window(self, rng: np.random.Generator, length: int, number: int, count: int) -> TrackWindow:
        """The ``number``-th augmented window of the stream, drawn again until it is usable."""
        cfg = self.config
        for attempt in range(_ATTEMPTS):
            if self.pool and rng.random() < cfg.rendered_share:
                window = augment(self._rendered_window(rng, length), rng, cfg.augmentation, tracked=True)
            else:
                # Scene seeds follow the window number, so no scene repeats and none is validation's.
                seed = (cfg.seed * 1_000_003 + number * _ATTEMPTS + attempt) % VALIDATION_SEED_BASE
                window = scene_window(seed, int(count * 1.25), length, rng.random() < cfg.depth_share, rng)
                window = augment(window, rng, cfg.augmentation, tracked=False)
            if usable(window, cfg.max_dynamic_share):
                break
        return window

    def _rendered_window(self, rng: np.random.Generator, length: int) -> TrackWindow:
        clip = self.pool[int(rng.integers(len(self.pool)))]
        frames = clip.visible.shape[1]
        stride = int(rng.integers(1, min(3, (frames - 1) // max(length - 1, 1)) + 1))
        start = int(rng.integers(0, frames - stride * (length - 1)))
        return cut_window(clip, start, length, stride)


# --- validation -----------------------------------------------------------------------------


@dataclass
class ValidationSet:
    name: str
    windows: list[TrackWindow] = field(default_factory=list)


def validation_sets(config: TrainingConfig, workers: int = 0) -> list[ValidationSet]:
    """Fixed windows from seeds training never uses, with the training augmentations.

    ``scenes``: 3-D scenes without depth (the pipeline's usual case); ``scenes_depth``: the same
    kind of scenes with depth; ``tracked``: tracked renders. Windows are ``validation_window``
    frames long, as the pipeline's; unusable ones (see :func:`usable`) are left out.
    """
    length = config.validation_window
    sets = []
    for name, with_depth in (("scenes", False), ("scenes_depth", True)):
        windows = []
        for index in itertools.count():
            seed = VALIDATION_SEED_BASE + 2 * index + with_depth
            rng = np.random.default_rng([seed, 2])
            window = scene_window(seed, config.validation_tracks, length, with_depth, rng)
            window = augment(window, rng, config.augmentation, tracked=False)
            if usable(window, config.max_dynamic_share):
                windows.append(window)
            if len(windows) == config.validation_scenes:
                break
        sets.append(ValidationSet(name, windows))
    windows = []
    for index, clip in enumerate(render_pool(VALIDATION_SEED_BASE, config.validation_renders, config.rendered_frames,
                                                  workers)):
        rng = np.random.default_rng([VALIDATION_SEED_BASE + index, 3])
        start = int(rng.integers(0, clip.visible.shape[1] - length + 1))
        window = augment(cut_window(clip, start, length, 1), rng, config.augmentation, tracked=True)
        if usable(window, config.max_dynamic_share):
            windows.append(window)
    sets.append(ValidationSet("tracked", windows))
    return sets


def predict_windows(model: TrajectoryTransformer, windows: list[TrackWindow]) -> list[np.ndarray]:
    """Dynamic probability of every track of every window, one window at a time."""
    model.eval()
    probabilities = []
    with torch.inference_mode():
        for window in windows:
            batch = collate([window])
            logits = model(batch.features, batch.visible)[0, :len(window)]
            probabilities.append(torch.sigmoid(logits).numpy())
    return probabilities


def classification_scores(
    probability: np.ndarray, dynamic: np.ndarray, predicted: np.ndarray | None = None
) -> dict[str, float]:
    """Track accuracy, precision and recall (dynamic is positive) and AUROC of ``probability``.

    Decisions are ``predicted`` when given (a classifier's own), else probability >= 0.5.
    """
    predicted = probability >= 0.5 if predicted is None else predicted
    true_positive = float(np.sum(predicted & dynamic))
    return {
        "tracks": int(len(dynamic)),
        "dynamic_share": float(np.mean(dynamic)) if len(dynamic) else math.nan,
        "accuracy": float(np.mean(predicted == dynamic)) if len(dynamic) else math.nan,
        "precision": true_positive / float(predicted.sum()) if predicted.any() else math.nan,
        "recall": true_positive / float(dynamic.sum()) if dynamic.any() else math.nan,
        "auroc": auroc(probability, dynamic),
    }


def auroc(score: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve: the chance that a random positive outscores a random negative."""
    num_positive, num_negative = int(positive.sum()), int((~positive).sum())
    if num_positive == 0 or num_negative == 0:
        return math.nan
    order = np.argsort(score, kind="stable")
    ranks = np.empty(len(score))
    ranks[order] = np.arange(1, len(score) + 1)
    # Tied scores share their mean rank.
    _, inverse, counts = np.unique(score, return_inverse=True, return_counts=True)
    ranks = (np.bincount(inverse, ranks) / counts)[inverse]
    return float((ranks[positive].sum() - num_positive * (num_positive + 1) / 2) / (num_positive * num_negative))


def validate(model: TrajectoryTransformer, sets: list[ValidationSet]) -> dict[str, dict[str, float]]:
    """Scores per validation set, over all its tracks pooled."""
    scores = {}
    for validation in sets:
        probability = predict_windows(model, validation.windows)
        dynamic = np.concatenate([window.dynamic for window in validation.windows])
        scores[validation.name] = classification_scores(np.concatenate(probability), dynamic)
    return scores


# --- training -------------------------------------------------------------------------------


def learning_rate(config: TrainingConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to ``final_lr_fraction`` of the peak."""
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(config.steps - config.warmup_steps, 1)
    floor = config.final_lr_fraction
    return config.learning_rate * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress)))


# The data stream's fingerprint covers this many first batches: 3-D scenes and tracked renders.
FINGERPRINT_BATCHES = 8


def fingerprint_batch(digest: "hashlib._Hash", batch: Batch) -> None:
    digest.update(batch.features.numpy().tobytes())
    digest.update(batch.labels.numpy().tobytes())


@dataclass
class TrainingResult:
    model: TrajectoryTransformer
    losses: list[float]                  # training loss per step
    validation: dict[str, dict[str, float]]
    data_sha256: str                     # fingerprint of the training data stream (first batches)


@contextlib.contextmanager
def _reproducible_torch(threads: int):
    """Fixed thread count and deterministic kernels while training; the caller's settings after."""
    previous = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(previous[0])
        torch.use_deterministic_algorithms(previous[1])


def train(
    model_config: TrajectoryTransformerConfig,
    config: TrainingConfig,
    validation: list[ValidationSet] | None = None,
    log: Callable[[str], None] = print,
    log_every: int = 100,
    workers: int = 0,
) -> TrainingResult:
    """Train a fresh model with Adam on the paper's weighted BCE; validate at the end.

    Runs on ``config.threads`` threads with deterministic algorithms, so the same config on the
    same software and CPU gives the same weights. ``workers`` processes render the pool and make
    the batches ahead of the model (0: all in this process); they do not change the weights.
    """
    with _reproducible_torch(config.threads):
        started = time.perf_counter()
        torch.manual_seed(config.seed)
        model = TrajectoryTransformer(model_config)
        optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
        pool = training_pool(config, workers)
        log(f"tracked {len(pool)} rendered clips in {time.perf_counter() - started:.0f} s")
        fingerprint = hashlib.sha256()
        losses = []
        for step, batch in enumerate(_in_order(TrainingData(config, pool), workers)):
            if step < FINGERPRINT_BATCHES:
                fingerprint_batch(fingerprint, batch)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(config, step)
            model.train()
            logits = model(batch.features, batch.visible, track_mask=batch.track_mask)
            loss = weighted_bce(logits, batch.labels, batch.track_mask & batch.visible.any(dim=-1))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            losses.append(loss.item())
            if log_every and (step + 1) % log_every == 0:
                log(f"step {step + 1}/{config.steps}  loss {np.mean(losses[-log_every:]):.4f}  "
                    f"lr {learning_rate(config, step):.2e}  {time.perf_counter() - started:.0f} s")
        scores = validate(model, validation) if validation else {}
    model.eval()
    return TrainingResult(model, losses, scores, fingerprint.hexdigest())
