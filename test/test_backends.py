"""Learned backends (SAM2/EdgeTAM streaming, DINOv2, Depth Anything), devices, fallbacks, sensor depth.

No weights are downloaded: tiny randomly initialised models are built from the real config and
model classes and saved with ``save_pretrained``, so the real loading code reads them back from a
local checkpoint directory, as it would a downloaded one.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from anymo_ros.config import DepthConfig, Sam2Config, SegmenterConfig, SemanticsConfig
from anymo_ros.densify.prompting import TwoStagePrompting
from anymo_ros.densify.sam2 import Sam2VideoSegmenter
from anymo_ros.depth.depth_anything import DepthAnythingDepth, normalise_min_max
from anymo_ros.depth.sensor import DepthError, SensorDepth, depth_to_metres, fit_depth_to_frame
from anymo_ros.devices import (
    BackendUnavailable,
    RateScheduler,
    autocast,
    checkpoint_source,
    create_backends,
    parse_device,
    resolve_device,
)
from anymo_ros.semantics import SemanticTrackCache
from anymo_ros.semantics.dinov2 import DinoV2Semantics
from anymo_ros.tools.bench_backends import random_dinov2, save_random_checkpoints
from anymo_ros.tools.synthetic import render_clip

WIDTH, HEIGHT = 160, 96


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from threads, and on a busy machine waiting for them costs 10-50x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return save_random_checkpoints(tmp_path_factory.mktemp("checkpoints"), "tiny")


@pytest.fixture(scope="module")
def clip():
    return render_clip(seed=2, num_frames=10, width=WIDTH, height=HEIGHT, num_objects=2, camera_motion="pan")


def full_config(checkpoints, densify: str = "sam2") -> SegmenterConfig:
    config = SegmenterConfig()
    config.depth = DepthConfig(backend="depth_anything", model=str(checkpoints["depth_anything"]), input_size=56)
    config.semantics = SemanticsConfig(backend="dinov2", model=str(checkpoints["dinov2"]), input_size=112, every=2)
    config.densify.backend = densify
    config.sam2 = Sam2Config(model=str(checkpoints[densify]))
    return config


# ---------------------------------------------------------------------------------- factory and fallbacks
def test_every_backend_loads_from_a_local_checkpoint_and_runs(checkpoints, clip):
    backends, problems = create_backends(full_config(checkpoints))
    assert problems == []
    assert backends.names == {"depth": "depth_anything", "semantics": "dinov2", "densify": "sam2",
                              "device": "cpu", "precision": "fp32"}
    frame = clip.frames[0]
    depth = backends.depth.estimate(frame)
    assert depth.shape == (HEIGHT, WIDTH) and depth.dtype == np.float32
    assert np.nanmin(depth) == 0.0 and np.nanmax(depth) == 1.0
    xy = np.array([[0, 0], [WIDTH - 1, HEIGHT - 1], [50.5, 20.25]], np.float32)
    features = backends.semantics.extract(frame, xy)
    assert features.shape == (3, backends.semantics.semantic_dim) == (3, 48) and features.dtype == np.float32
    assert np.isfinite(features).all()
    result = backends.prompting.step(frame, np.arange(3), xy, np.ones(3, bool), np.full(3, 0.99, np.float32))
    assert result.track_object.shape == (3,) and result.created == []   # 3 tracks never form a group
    backends.release()
    assert not any(b.loaded for b in backends.models())
    assert backends.load() == [] and all(b.loaded for b in backends.models())
    backends.release()


def test_missing_checkpoint_falls_back_with_a_reason_naming_the_path(checkpoints, tmp_path):
    config = full_config(checkpoints)
    missing = {kind: str(tmp_path / f"no_{kind}") for kind in ("depth", "semantics", "densify")}
    config.depth.model, config.semantics.model, config.sam2.model = missing["depth"], missing["semantics"], missing["densify"]
    backends, problems = create_backends(config)
    assert (backends.depth, backends.semantics, backends.segmenter, backends.prompting) == (None, None, None, None)
    assert backends.names["depth"] == "none" and backends.names["semantics"] == "none" and backends.names["densify"] == "flow"
    assert len(problems) == 3 and backends.problems == problems
    for kind, fallback in (("depth", "'none'"), ("semantics", "'none'"), ("densify", "'flow'")):
        (reason,) = [p for p in problems if p.startswith(kind)]
        assert missing[kind] in reason and "does not exist" in reason and reason.endswith(f"falling back to {fallback}")


def test_cuda_requested_on_a_cpu_only_machine_runs_on_cpu(checkpoints, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    config = full_config(checkpoints)
    config.device, config.precision = "cuda", "fp16"
    backends, problems = create_backends(config)
    assert backends.device == torch.device("cpu") and backends.precision == "fp32"
    assert len(problems) == 1 and "CUDA is unavailable" in problems[0] and "running on cpu" in problems[0]
    assert backends.depth is not None and backends.depth.device.type == "cpu"
    backends.release()


def test_out_of_memory_while_loading_falls_back(checkpoints, monkeypatch):
    def out_of_memory(self):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(DinoV2Semantics, "load", out_of_memory)
    config = full_config(checkpoints)
    backends, problems = create_backends(config)
    assert backends.semantics is None and backends.depth is not None and backends.segmenter is not None
    assert problems == [f"semantics backend 'dinov2' unavailable: out of memory on cpu loading "
                        f"'{config.semantics.model}'; falling back to 'none'"]
    reason = backends.disable("densify", RuntimeError("CUDA error: out of memory"))
    assert "out of memory" in reason and "running" in reason and backends.segmenter is None and backends.prompting is None
    backends.release()


def test_defaults_and_unknown_names_never_raise():
    backends, problems = create_backends(SegmenterConfig())
    assert problems == [] and backends.models() == []
    assert backends.names["densify"] == "flow"
    config = SegmenterConfig()
    config.depth.backend, config.semantics.backend, config.densify.backend = "lidar", "clip", "grabcut"
    config.device = "tpu"
    backends, problems = create_backends(config, load=False)
    assert len(problems) == 4 and backends.models() == []
    assert "device 'tpu'" in problems[0] and "'lidar'" in problems[1] and "'grabcut'" in problems[3]


def test_edgetam_loads_and_a_file_checkpoint_is_refused(checkpoints, tmp_path):
    backends, problems = create_backends(full_config(checkpoints, densify="edgetam"))
    assert problems == [] and backends.names["densify"] == "edgetam"
    backends.release()
    weights = tmp_path / "sam2_hiera_large.pt"
    weights.write_bytes(b"")
    with pytest.raises(BackendUnavailable, match="is a file"):
        checkpoint_source(str(weights), "SAM2")
    assert checkpoint_source("facebook/sam2.1-hiera-tiny", "SAM2") == "facebook/sam2.1-hiera-tiny"


# ---------------------------------------------------------------------------------- SAM2 / EdgeTAM streaming
@pytest.mark.parametrize("family", ["sam2", "edgetam"])
def test_streaming_survives_objects_added_and_removed_mid_stream(checkpoints, clip, family):
    segmenter = Sam2VideoSegmenter(family, str(checkpoints[family]), conditioning_frames=2)
    segmenter.load()
    segmenter.start((WIDTH, HEIGHT))
    expected = {0: {1}, 1: {1}, 2: {1, 2}, 3: {1, 2}, 4: {2}, 5: {2, 3}, 6: {2, 3}, 7: set(), 8: {4}, 9: {4}}
    for t, frame in enumerate(clip.frames):
        assert segmenter.add_frame(frame) == t
        if t == 0:
            segmenter.prompt(1, np.array([[40.0, 50.0]]))
        if t == 2:
            segmenter.prompt(2, np.array([[100.0, 30.0], [110.0, 40.0]]), np.array([1, 0]))
        if t == 4:
            segmenter.remove_object(1)
        if t == 5:
            segmenter.prompt(3, np.array([[10.0, 10.0]]))
            segmenter.prompt(2, np.array([[105.0, 35.0]]))       # re-prompt an existing object
        if t == 7:
            segmenter.remove_object(2)
            segmenter.remove_object(3)
            segmenter.remove_object(99)                           # unknown: ignored
        if t == 8:
            segmenter.prompt(4, np.array([[80.0, 48.0]]))
        masks = segmenter.masks()
        assert set(masks) == expected[t] and sorted(segmenter.object_ids) == sorted(expected[t])
        for mask in masks.values():
            assert mask.shape == (HEIGHT, WIDTH) and mask.dtype == bool
        if t == 6:   # a click after masks() on the same frame is taken too
            segmenter.prompt(3, np.array([[12.0, 12.0]]))
            assert set(segmenter.masks()) == {2, 3}
        session = segmenter._session
        assert set(session.processed_frames or ()) <= {t}, "only the current frame is kept"
        for outputs in session.output_dict_per_obj.values():
            assert all(f >= t - segmenter.memory_horizon for f in outputs["non_cond_frame_outputs"])
            assert len(outputs["cond_frame_outputs"]) <= 2
    segmenter.reset()
    assert segmenter.object_ids == []
    segmenter.release()
    assert not segmenter.loaded


def test_two_stage_prompting_drives_sam2(checkpoints, clip):
    segmenter = Sam2VideoSegmenter("sam2", str(checkpoints["sam2"]))
    segmenter.load()
    prompting = TwoStagePrompting(segmenter, Sam2Config(reprompt_every=3))
    gx, gy = np.meshgrid(np.arange(4, WIDTH, 8), np.arange(4, HEIGHT, 8))
    xy = np.stack([gx.ravel(), gy.ravel()], axis=1).astype(np.float32)
    ids = np.arange(len(xy))
    for t, (frame, truth) in enumerate(zip(clip.frames[:5], clip.masks[:5])):
        probability = np.where(truth[xy[:, 1].astype(int), xy[:, 0].astype(int)] > 0, 0.99, 0.01).astype(np.float32)
        result = prompting.step(frame, ids, xy, np.ones(len(ids), bool), probability)
        assert result.track_object.shape == ids.shape
        assert set(result.masks) <= set(prompting.object_ids) == set(segmenter.object_ids)
        for mask in result.masks.values():
            assert mask.shape == (HEIGHT, WIDTH) and mask.dtype == bool
    segmenter.release()


# ---------------------------------------------------------------------------------- DINOv2
def test_dinov2_key_and_token_facets_match_the_library_forward(clip):
    model = random_dinov2("tiny")
    frame = clip.frames[0][:56, :56]        # the tiny model's own 4x4 grid: no interpolation anywhere
    semantics = DinoV2Semantics.from_model(model, SemanticsConfig(input_size=0, layer=-1, facet="key"))
    keys = semantics.feature_map(frame).features        # (C, 4, 4)
    captured = {}
    handle = model.encoder.layer[-1].attention.k_proj.register_forward_hook(
        lambda module, inputs, output: captured.setdefault("keys", output))
    pixels = ((torch.from_numpy(frame).permute(2, 0, 1).float() / 255 - semantics.mean) / semantics.std)[None]
    with torch.no_grad():
        hidden = model(pixel_values=pixels, output_hidden_states=True).hidden_states
    handle.remove()
    reference = captured["keys"][0, 1:].reshape(16, 4, 12).transpose(1, 2).reshape(16, 48)   # channel = d * heads + h
    torch.testing.assert_close(keys.reshape(48, 16).T, reference, rtol=1e-4, atol=1e-5)
    tokens = DinoV2Semantics.from_model(model, SemanticsConfig(input_size=0, facet="token", layer=1)).feature_map(frame)
    torch.testing.assert_close(tokens.features.reshape(48, 16).T, hidden[2][0, 1:], rtol=1e-4, atol=1e-5)


def test_dinov2_stride_7_grid_and_bilinear_sampling(clip):
    semantics = DinoV2Semantics.from_model(random_dinov2("tiny"), SemanticsConfig(stride=7, input_size=0))
    frame = clip.frames[0]
    fmap = semantics.feature_map(frame)
    in_w, in_h = fmap.input_size
    assert (in_w, in_h) == (168, 98) and fmap.features.shape == (48, (98 - 14) // 7 + 1, (168 - 14) // 7 + 1)
    # A point at a patch centre reads that cell; half-way between two centres reads their mean.
    rows, cols = 3, 5
    centre_x = (cols * 7 + 6.5 + 0.5) * WIDTH / in_w - 0.5
    centre_y = (rows * 7 + 6.5 + 0.5) * HEIGHT / in_h - 0.5
    next_x = ((cols + 1) * 7 + 6.5 + 0.5) * WIDTH / in_w - 0.5
    sampled = semantics.sample(fmap, np.array([[centre_x, centre_y], [(centre_x + next_x) / 2, centre_y],
                                               [np.nan, 0.0]], np.float32))
    cell = fmap.features[:, rows, cols].numpy()
    np.testing.assert_allclose(sampled[0], cell, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(sampled[1], (cell + fmap.features[:, rows, cols + 1].numpy()) / 2, rtol=1e-4, atol=1e-5)
    assert np.isnan(sampled[2]).all()


def test_semantic_track_cache_keeps_the_first_vector_per_track():
    cache = SemanticTrackCache(2)
    ids, xy, visible = np.array([5, 6, 7]), np.array([[1, 1], [2, 2], [3, 3]], np.float32), np.array([True, True, False])
    assert cache.update(ids, xy, visible, lambda points: points.copy()) == 2
    assert cache.update(ids, xy + 10, np.ones(3, bool), lambda points: points.copy()) == 1   # only 7 is new
    vectors, known = cache.vectors(np.array([5, 7, 8]))
    assert known.tolist() == [True, True, False] and vectors.tolist() == [[1, 1], [13, 13], [0, 0]]
    cache.update(np.array([7]), xy[:1], np.ones(1, bool), lambda points: points.copy())
    assert len(cache) == 1, "vectors of dead tracks are forgotten"


# ---------------------------------------------------------------------------------- depth
def test_sensor_depth_conversion():
    millimetres = np.array([[0, 1000], [2500, 65535]], np.uint16)
    metres = depth_to_metres(millimetres, "16UC1")
    assert metres.dtype == np.float32 and np.isnan(metres[0, 0])
    np.testing.assert_allclose(metres[~np.isnan(metres)], [1.0, 2.5, 65.535], rtol=1e-6)
    floats = np.array([[np.nan, 1.5], [np.inf, 0.0], [-2.0, 3.0]], np.float32)
    converted = depth_to_metres(floats, "32FC1")
    assert np.isnan(converted).tolist() == [[True, False], [True, True], [True, False]]
    with pytest.raises(DepthError, match="unsupported depth encoding 'rgb8'"):
        depth_to_metres(floats, "rgb8")
    with pytest.raises(DepthError, match="uint16"):
        depth_to_metres(floats, "16UC1")
    half = np.full((48, 80), 2.0, np.float32)
    resized, note = fit_depth_to_frame(half, (WIDTH, HEIGHT))
    assert resized.shape == (HEIGHT, WIDTH) and "resized" in note
    with pytest.raises(DepthError, match="aspect ratio"):
        fit_depth_to_frame(np.ones((50, 50), np.float32), (WIDTH, HEIGHT))
    sensor = SensorDepth()
    empty, note = sensor.convert(np.zeros((HEIGHT, WIDTH), np.uint16), "16UC1", (WIDTH, HEIGHT))
    assert empty is None and "no valid pixel" in note
    depth, note = sensor.convert(np.full((HEIGHT, WIDTH), 1500, np.uint16), "16UC1", (WIDTH, HEIGHT))
    assert note is None and depth.shape == (HEIGHT, WIDTH) and np.allclose(depth, 1.5)


def test_depth_anything_input_shape_and_normalisation(checkpoints):
    depth = DepthAnythingDepth(DepthConfig(model=str(checkpoints["depth_anything"]), input_size=518))
    depth.load()
    assert depth.input_shape(480, 854) == (518, 924)          # as the checkpoints' processor: short side 518
    np.testing.assert_allclose(depth.mean, [0.485, 0.456, 0.406])
    depth.release()
    assert not depth.loaded
    values = normalise_min_max(np.array([[2.0, 4.0], [np.nan, 3.0]], np.float32))
    assert values[0].tolist() == [0.0, 1.0] and np.isnan(values[1, 0]) and values[1, 1] == 0.5
    assert (normalise_min_max(np.full((2, 2), 7.0)) == 0.5).all()


# ---------------------------------------------------------------------------------- devices and scheduling
def test_device_parsing_and_autocast():
    assert parse_device("cpu") == ("cpu", None) and parse_device("cuda") == ("cuda", None)
    assert parse_device(" CUDA:2 ") == ("cuda", 2)
    for bad in ("gpu", "cuda:", "cpu:0", "cuda:-1"):
        with pytest.raises(ValueError):
            parse_device(bad)
    device, reason = resolve_device("cpu")
    assert device == torch.device("cpu") and reason is None
    if not torch.cuda.is_available():
        device, reason = resolve_device("cuda:1")
        assert device.type == "cpu" and "CUDA is unavailable" in reason
    with autocast("cpu", "fp16"):
        assert torch.ones(2).dtype == torch.float32


def test_rate_scheduler_reuses_the_last_result():
    scheduler = RateScheduler(3)
    calls = []
    results = [scheduler.run(lambda t=t: calls.append(t) or t) for t in range(7)]
    assert calls == [0, 3, 6] and results == [0, 0, 0, 3, 3, 3, 6]
    assert scheduler.rates() == {"every": 3.0, "frames": 7.0, "runs": 3.0, "run_fraction": 3 / 7}
    scheduler.reset()
    assert scheduler.due() and scheduler.last is None
    with pytest.raises(ValueError):
        RateScheduler(0)


def test_new_config_sections_keep_embedded_defaults():
    config = SegmenterConfig()
    assert (config.depth.backend, config.semantics.backend, config.densify.backend) == ("none", "none", "flow")
    assert config.precision == "fp32"
    for section in (config.depth, config.semantics, config.sam2):
        for f in dataclasses.fields(section):
            assert f.metadata.get("description"), f"{type(section).__name__}.{f.name} has no description"


# ---------------------------------------------------------------------------------- the pipeline with every model
def _tiny_classifier(path, semantic_dim: int):
    from anymo_ros.classify.trajectory_transformer import TrajectoryTransformer, TrajectoryTransformerConfig, save_weights
    torch.manual_seed(0)
    save_weights(TrajectoryTransformer(TrajectoryTransformerConfig(
        motion_dim=8, motion_heads=2, motion_ffn_dim=16, motion_encoder_layers=1, motion_decoder_layers=0,
        decoupled_dim=16, decoupled_heads=2, decoupled_ffn_dim=32, decoupled_encoder_blocks=1,
        decoupled_decoder_blocks=1, semantic_dim=semantic_dim)), path)
    return path


def test_pipeline_runs_every_learned_backend_and_falls_back_mid_stream(checkpoints, clip, tmp_path):
    from anymo_ros.pipeline import MotionSegmenter
    config = full_config(checkpoints)
    config.processing_width = WIDTH
    config.classifier.backend = "learned"
    config.classifier.weights = str(_tiny_classifier(tmp_path / "classifier.pt", random_dinov2().config.hidden_size))
    segmenter = MotionSegmenter(config)
    assert segmenter.problems == []
    assert segmenter.backends == {"tracker": "lk", "classifier": "learned", "densify": "sam2",
                                  "depth": "depth_anything", "semantics": "dinov2"}
    results = [segmenter.feed(frame, stamp) for frame, stamp in zip(clip.frames[:6], clip.stamps[:6])]
    for result in results:
        assert result.label_image.shape == (HEIGHT, WIDTH) and result.label_image.dtype == np.uint16
        assert {"depth", "semantics", "densify"} <= set(result.stage_times)
        assert not result.events
    assert len(segmenter.semantic_cache) > 0
    assert segmenter.window.tracks(segmenter._ids).depth is not None   # monocular depth reached the tracks
    ids_so_far = segmenter.models.prompting.next_id

    def broken(*args, **kwargs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
    segmenter.models.prompting.step = broken
    result = segmenter.feed(clip.frames[6], clip.stamps[6])
    assert any("densify backend 'sam2' unavailable" in event and "'flow'" in event for event in result.events)
    assert segmenter.backends["densify"] == "flow" and segmenter.problems
    for frame, stamp in zip(clip.frames[7:], clip.stamps[7:]):
        result = segmenter.feed(frame, stamp)
        assert all(obj.object_id >= ids_so_far for obj in result.objects)   # ids are never reused
    segmenter.release()
    assert segmenter.load() == []


@pytest.mark.parametrize("preset, expected", [
    ("full_gpu.yaml", {"densify.backend": "sam2", "semantics.model": "facebook/dinov2-base",
                       "depth.backend": "depth_anything", "classifier.backend": "learned",
                       "classifier.learned_every": 1}),
    ("jetson.yaml", {"densify.backend": "edgetam", "semantics.model": "facebook/dinov2-small",
                     "depth.backend": "sensor", "classifier.learned_every": 1}),
])
def test_presets_name_their_models_and_fall_back_cleanly_without_weights(preset, expected, monkeypatch):
    from pathlib import Path

    from anymo_ros.pipeline import MotionSegmenter
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")   # no hub here: loading must fail fast and say why
    config = SegmenterConfig.from_yaml(Path(__file__).resolve().parents[1] / "config" / preset)
    values = dict((name, value) for name, value, _ in config.flat_items())
    for name, value in expected.items():
        assert values[name] == value
    segmenter = MotionSegmenter(config)
    if not torch.cuda.is_available():
        assert any("CUDA" in problem or "cuda" in problem for problem in segmenter.problems)
    assert segmenter.backends["densify"] == "flow"
    clip = render_clip(seed=2, num_frames=3, width=WIDTH, height=HEIGHT, num_objects=1, camera_motion="pan")
    for frame, stamp in zip(clip.frames, clip.stamps):
        assert segmenter.feed(frame, stamp).label_image.shape == (HEIGHT, WIDTH)
