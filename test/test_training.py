"""Training of the learned track classifier: data, augmentation, scores, a short run, the shipped
weights and their metadata, the fast anchored variant, and the SegAnyMo checkpoint mapping."""
import hashlib
import json

import numpy as np
import pytest
import scipy.io
import torch

from anymo_ros.classify.features import FEATURE_DIM, track_features
from anymo_ros.classify.segany_checkpoint import convert_segany_state_dict, load_segany_checkpoint, parameter_names
from anymo_ros.classify.training import (
    FAST_MODEL,
    FINGERPRINT_BATCHES,
    TrackedClip,
    TrainingConfig,
    TrainingData,
    Augmentation,
    augment,
    auroc,
    classification_scores,
    cut_window,
    fingerprint_batch,
    scene_window,
    track_rendered_clip,
    train,
    training_pool,
)
from anymo_ros.classify.trajectory_transformer import (
    LearnedTrackClassifier,
    _EgoMotionResiduals,
    TrajectoryTransformer,
    TrajectoryTransformerConfig,
    shipped_weights_path,
    weighted_bce,
)
from anymo_ros.classify.online import OnlineTrackClassifier
from anymo_ros.config import ClassifierConfig
from anymo_ros.tools.eval_classifier import main as eval_classifier_main
from anymo_ros.tools.eval_cli import track_grouper

SHIPPED = shipped_weights_path()
needs_shipped = pytest.mark.skipif(not SHIPPED.is_file(), reason="no trained weights in resource/")


def tiny_config(**overrides) -> TrajectoryTransformerConfig:
    sizes = dict(
        motion_dim=8, motion_heads=2, motion_ffn_dim=16, motion_encoder_layers=1, motion_decoder_layers=1,
        decoupled_dim=16, decoupled_heads=2, decoupled_ffn_dim=32, decoupled_encoder_blocks=1,
        decoupled_decoder_blocks=1, semantic_dim=0, dropout=0.0, track_anchors=3, ego_motion_inputs=True,
        ego_motion_baseline=2,
    )
    return TrajectoryTransformerConfig(**{**sizes, **overrides})


def run(model, *args, **kwargs):
    with torch.no_grad():
        return model(*args, **kwargs)


# --- data -----------------------------------------------------------------------------------


def test_tracked_render_labels_object_tracks_dynamic():
    clip = track_rendered_clip(seed=3, num_frames=8, image_size=(192, 144), num_objects=1, camera_motion="pan")
    assert clip.xy.shape[1:] == (8, 2) and clip.visible.shape == clip.on_object.shape
    window = cut_window(clip, start=0, length=8, stride=1)
    assert (window.visible.sum(axis=1) >= 2).all()
    # The object covers a tenth of the image or so: some tracks, but a minority, lie on it.
    assert 0.0 < window.dynamic.mean() < 0.5
    assert not np.isnan(window.xy).any()


def test_window_label_is_the_majority_over_visible_steps():
    visible = np.array([[True, True, True, False], [True, True, False, False], [False, True, True, True]])
    on_object = np.array([[True, True, False, True], [True, False, False, False], [True, False, True, True]])
    clip = TrackedClip(np.zeros((3, 4, 2), np.float32), visible, visible.astype(np.float32), on_object, (10, 10))
    window = cut_window(clip, 0, 4, 1)
    # 2 of 3, 1 of 2 (a tie is not a majority), 2 of 3 (the unseen step does not count).
    assert window.dynamic.tolist() == [True, False, True]
    assert cut_window(clip, 0, 2, 2).visible.tolist() == [[True, True]]   # frames 0 and 2


def test_augment_keeps_labels_with_their_tracks_and_points_inside_the_image():
    rng = np.random.default_rng(0)
    window = scene_window(11, 200, 12, with_depth=True, rng=rng)
    window.dynamic[:] = np.arange(len(window)) % 2 == 0
    window.xy[:, :, 0] = np.where(window.dynamic[:, None], 1000.0, window.xy[:, :, 0])  # mark dynamic rows
    for seed in range(5):
        out = augment(window, np.random.default_rng(seed), Augmentation(), tracked=False)
        width, height = out.image_size
        assert out.xy.shape == (len(out), 12, 2) and out.depth.shape == (len(out), 12)
        assert (out.visible.sum(axis=1) >= 2).all()
        seen = out.xy[out.visible]
        assert (seen >= 0).all() and (seen[:, 0] <= width - 1).all() and (seen[:, 1] <= height - 1).all()
        assert (out.confidence[~out.visible] == 0).all()


def test_training_batches_are_reproducible_and_padded():
    config = TrainingConfig(batch_clips=3, tracks_per_clip=(20, 40), window=(5, 7), rendered_share=0.0)
    first, again = TrainingData(config, []).batch(4), TrainingData(config, []).batch(4)
    torch.testing.assert_close(first.features, again.features, rtol=0, atol=0)
    assert first.features.shape[-1] == FEATURE_DIM and first.features.shape[0] == 3
    assert 5 <= first.features.shape[2] <= 7
    assert not first.visible[~first.track_mask].any() and (first.labels[~first.track_mask] == 0).all()
    assert not torch.equal(TrainingData(config, []).batch(5).labels, first.labels)


# --- scores ---------------------------------------------------------------------------------


def test_auroc_counts_ordered_pairs_and_ties_as_half():
    score = np.array([0.1, 0.4, 0.35, 0.8, 0.4])
    positive = np.array([False, False, True, True, True])
    # Positive-negative pairs (3 x 2): 0.35 > 0.1, 0.35 < 0.4, 0.8 > both, 0.4 > 0.1, 0.4 = 0.4.
    assert auroc(score, positive) == pytest.approx((1 + 0 + 2 + 1 + 0.5) / 6)
    assert np.isnan(auroc(score, np.zeros(5, bool)))


def test_classification_scores():
    scores = classification_scores(np.array([0.9, 0.6, 0.2, 0.1]), np.array([True, False, True, False]))
    assert scores["accuracy"] == 0.5 and scores["precision"] == 0.5 and scores["recall"] == 0.5
    assert scores["auroc"] == 0.75


# --- training -------------------------------------------------------------------------------


def test_short_training_run_lowers_the_loss():
    model_config = tiny_config(decoupled_decoder_blocks=0, motion_decoder_layers=0)
    config = TrainingConfig(steps=60, batch_clips=4, tracks_per_clip=(48, 96), window=(6, 8), rendered_share=0.0,
                            warmup_steps=5, learning_rate=1e-2)
    held_out = TrainingData(config, []).batch(100_000)

    def loss_of(model):
        with torch.no_grad():
            logits = model.eval()(held_out.features, held_out.visible, track_mask=held_out.track_mask)
        return weighted_bce(logits, held_out.labels, held_out.track_mask).item()

    torch.manual_seed(config.seed)
    before = loss_of(TrajectoryTransformer(model_config))
    result = train(model_config, config, log=lambda line: None)
    assert len(result.losses) == 60
    assert loss_of(result.model) < 0.9 * before
    assert np.mean(result.losses[-10:]) < np.mean(result.losses[:10])


def test_worker_processes_change_when_data_are_made_not_the_weights():
    model_config = tiny_config(decoupled_decoder_blocks=0, motion_decoder_layers=0)
    config = TrainingConfig(steps=6, batch_clips=2, tracks_per_clip=(16, 32), window=(5, 6), rendered_share=0.5,
                            rendered_clips=2, rendered_frames=12, warmup_steps=2)
    here = train(model_config, config, log=lambda line: None)
    ahead = train(model_config, config, log=lambda line: None, workers=2)
    assert here.data_sha256 == ahead.data_sha256
    assert here.losses == ahead.losses
    for (name, weight), (_, again) in zip(here.model.state_dict().items(), ahead.model.state_dict().items()):
        assert torch.equal(weight, again), name


def test_training_command_refuses_a_negative_worker_count(tmp_path, capsys):
    from anymo_ros.tools.train_classifier import main as train_classifier_main
    with pytest.raises(SystemExit) as exit_info:
        train_classifier_main(["--workers", "-1", "--out", str(tmp_path / "weights.pt")])
    assert exit_info.value.code == 2
    assert "--workers must be 0 or more" in capsys.readouterr().err
    assert not (tmp_path / "weights.pt").exists()


# --- the fast variant: attention across tracks through anchors --------------------------------


def random_batch(tracks=9, window=5, seed=0):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(1, tracks, window, FEATURE_DIM, generator=generator)
    visible = torch.rand(1, tracks, window, generator=generator) > 0.3
    visible[..., 0] = True
    return features, visible


def anchored_model(**overrides):
    torch.manual_seed(0)
    return TrajectoryTransformer(tiny_config(**overrides)).eval()


def test_anchored_model_builds_anchor_attention_and_no_track_by_track_attention():
    model = anchored_model()
    assert model.motion_encoder[0].track_attention.anchors.shape == (3, 8)
    assert model.decoupled_encoder[0].attention.anchors.shape == (3, 16)
    assert model.decoupled_decoder[0].memory_attention.anchors.shape == (3, 16)


def test_anchored_model_is_permutation_equivariant():
    model = anchored_model()
    features, visible = random_batch(tracks=41)   # enough for the camera-motion fits
    order = torch.randperm(41, generator=torch.Generator().manual_seed(1))
    logits = run(model, features, visible)
    torch.testing.assert_close(run(model, features[:, order], visible[:, order]), logits[:, order], rtol=0, atol=1e-5)


def test_anchored_model_ignores_invisible_steps_and_padding_tracks():
    model = anchored_model()
    features, visible = random_batch(tracks=40)
    reference = run(model, features, visible)
    changed = features.clone()
    changed[~visible] = 100.0 * torch.randn(int((~visible).sum()), FEATURE_DIM)
    torch.testing.assert_close(run(model, changed, visible), reference, rtol=0, atol=1e-5)

    padding = 50.0 * torch.randn(1, 4, 5, FEATURE_DIM)
    padded = run(model, torch.cat((features, padding), dim=1), torch.cat((visible, torch.ones(1, 4, 5, dtype=bool)), 1),
                 track_mask=torch.arange(44)[None] < 40)
    torch.testing.assert_close(padded[:, :40], reference, rtol=0, atol=1e-5)


def test_anchored_model_output_is_finite_for_invisible_tracks_and_clips():
    model = anchored_model()
    features, visible = random_batch()
    visible[0, 2] = False
    assert torch.isfinite(run(model, features, visible)).all()
    assert torch.isfinite(run(model, features, torch.zeros_like(visible))).all()


def ego_motion_residuals(xy: np.ndarray, baseline: int = 0) -> torch.Tensor:
    """Residual channels (N, T, 3 or 5) of fully visible pixel tracks (N, T, 2) in a 640 x 480 image."""
    visible = np.ones(xy.shape[:2], bool)
    features = track_features(xy, visible, visible.astype(np.float32), (640, 480))
    return _EgoMotionResiduals(baseline)(features[None], torch.from_numpy(visible)[None])[0]


def test_ego_motion_residuals_single_out_tracks_off_the_camera_motion():
    rng = np.random.default_rng(0)
    frames = np.arange(6)[None, :, None]
    start = rng.uniform((20, 20), (620, 460), (300, 1, 2))
    movers = np.arange(300) < 30

    # A turning, zooming camera: a rotation about the image centre, the same for every point.
    angle, zoom = 0.004 * frames, 1.0 + 0.003 * frames
    centred = start - (320, 240)
    turned = np.concatenate((np.cos(angle) * centred[..., :1] - np.sin(angle) * centred[..., 1:],
                             np.sin(angle) * centred[..., :1] + np.cos(angle) * centred[..., 1:]), -1)
    xy = zoom * turned + (320, 240) + np.where(movers[:, None, None], (2.0, -1.5), 0.0) * frames
    flow = ego_motion_residuals(xy)[:, :-1, :2].abs().amax(-1)
    assert flow[~movers].median() < 0.5 < 2.0 < flow[movers].median()
    assert (ego_motion_residuals(xy)[:, -1] == 0).all()   # no step after the last frame

    # A camera moving sideways past points at different depths: parallax along the image rows, so
    # static points differ in speed (no flow field fits them) but not in direction (epipolar lines).
    depth = rng.uniform(2.0, 20.0, (300, 1, 1))
    xy = start + np.stack((-40.0 / depth[..., 0], np.zeros_like(depth[..., 0])), -1) * frames
    xy = xy + np.where(movers[:, None, None], (0.0, 2.0), 0.0) * frames   # movers drift down
    epipolar = ego_motion_residuals(xy)[:, :-1, 2]
    assert epipolar[~movers].median() < 0.5 < 2.0 < epipolar[movers].median()


def test_long_baseline_residuals_find_a_slow_mover_that_one_frame_cannot():
    # A panning camera, 0.3 px of tracking noise, and movers that drift 0.25 px per frame more.
    rng = np.random.default_rng(1)
    frames = np.arange(16)[None, :, None]
    movers = np.arange(300) < 30
    xy = rng.uniform((20, 20), (620, 460), (300, 1, 2)) + (3.0, 0.5) * frames \
        + np.where(movers[:, None, None], (0.25, 0.0), 0.0) * frames + rng.normal(0.0, 0.3, (300, 16, 2))
    residuals = ego_motion_residuals(xy, baseline=8)
    assert residuals.shape == (300, 16, 5)
    one_frame = residuals[:, :-1, :2].abs().amax(-1).mean(1)
    long = residuals[:, 8:, 3:].abs().amax(-1).mean(1)
    assert one_frame[movers].median() < 1.3 * one_frame[~movers].median()
    assert long[movers].median() > 2.0 * long[~movers].median()
    assert (residuals[:, :8, 3:] == 0).all()   # no frame 8 steps back yet
    # The first three channels do not depend on the baseline.
    torch.testing.assert_close(residuals[..., :3], ego_motion_residuals(xy), rtol=0, atol=0)


@pytest.mark.parametrize("baseline", [0, 3])
def test_ego_motion_residuals_ignore_invalid_steps(baseline):
    features, visible = random_batch(tracks=40, window=6)
    residuals = _EgoMotionResiduals(baseline)(features, visible)
    changed = features.clone()
    changed[~visible] = 1e6
    torch.testing.assert_close(_EgoMotionResiduals(baseline)(changed, visible), residuals, rtol=0, atol=0)
    paired = visible[..., :-1] & visible[..., 1:]
    assert (residuals[:, :, :-1, :3][~paired] == 0).all()
    if baseline:
        both = visible[..., :-baseline] & visible[..., baseline:]
        assert (residuals[:, :, baseline:, 3:][~both] == 0).all()
        assert residuals[:, :, baseline:, 3:][both].abs().min() > 0


# --- shipped weights ------------------------------------------------------------------------


@needs_shipped
def test_shipped_weights_match_their_metadata():
    info = json.loads(SHIPPED.with_suffix(".json").read_text())
    data = SHIPPED.read_bytes()
    assert info["sha256"] == hashlib.sha256(data).hexdigest()
    assert info["size_bytes"] == len(data) < 20 * 2**20
    classifier = LearnedTrackClassifier(SHIPPED)
    assert classifier.model.config == TrajectoryTransformerConfig.from_dict(info["model"]) == FAST_MODEL


@needs_shipped
def test_training_data_are_those_the_shipped_weights_were_trained_on():
    """The shipped file reproduces only from the data it was trained on. A change to the scene
    generator, the renderer, the tracker or the augmentations changes those data: then retrain
    (`anymo-train-classifier`) and ship the new weights with the change."""
    info = json.loads(SHIPPED.with_suffix(".json").read_text())
    config = TrainingConfig()
    assert json.loads(json.dumps(config.to_dict())) == {key: info["training"][key] for key in config.to_dict()}
    data = TrainingData(config, training_pool(config, workers=2))
    digest = hashlib.sha256()
    for step in range(FINGERPRINT_BATCHES):
        fingerprint_batch(digest, data.batch(step))
    assert digest.hexdigest() == info["data"]["first_batches_sha256"], \
        "the training data changed since the shipped weights were trained: retrain them"


@needs_shipped
def test_shipped_weights_beat_chance_by_a_wide_margin():
    classifier = LearnedTrackClassifier(SHIPPED)
    probabilities, labels = [], []
    for seed in range(4):   # fixed scenes, far from both training and validation seeds
        window = scene_window(700_000_000 + seed, 400, 16, with_depth=False, rng=np.random.default_rng(seed))
        probabilities.append(classifier.predict(window.xy, window.visible, window.confidence, window.image_size))
        labels.append(window.dynamic)
    scores = classification_scores(np.concatenate(probabilities), np.concatenate(labels))
    majority = max(scores["dynamic_share"], 1.0 - scores["dynamic_share"])
    assert scores["auroc"] > 0.9
    assert scores["accuracy"] > majority + 0.5 * (1.0 - majority)


def panning_tracks_with_a_mover() -> tuple[np.ndarray, np.ndarray]:
    """Hopkins-style tracks (200, 20, 2): 150 background points panning, 50 on an object."""
    rng = np.random.default_rng(0)
    start = np.concatenate([rng.uniform((0, 0), (640, 480), (150, 2)), rng.uniform((200, 150), (300, 250), (50, 2))])
    velocity = np.concatenate([np.tile((1.0, 0.5), (150, 1)), np.tile((-3.0, 2.0), (50, 1))])
    return start[:, None] + velocity[:, None] * np.arange(20)[None, :, None], np.repeat([1, 2], [150, 50])


@needs_shipped
def test_learned_grouper_splits_hopkins_style_tracks():
    xy, _ = panning_tracks_with_a_mover()
    groups = track_grouper("learned", ClassifierConfig())(xy, np.ones((200, 20), bool))
    assert groups.shape == (200,) and groups[:150].mean() < 0.1 and groups[150:].mean() > 0.9


@needs_shipped
def test_eval_classifier_reports_every_classifier(tmp_path, capsys):
    xy, labels = panning_tracks_with_a_mover()
    y_sparse = np.concatenate([np.moveaxis(xy, -1, 0), np.ones((1, *xy.shape[:2]))])
    (tmp_path / "pan").mkdir()
    scipy.io.savemat(str(tmp_path / "pan" / "pan.mat"), {"Data": {"ySparse": y_sparse, "GtLabel": labels[:, None]}})
    report = tmp_path / "report.json"
    assert eval_classifier_main(["--scenes", "2", "--renders", "1", "--hopkins", str(tmp_path),
                                 "--json", str(report)]) == 0
    out = capsys.readouterr().out
    assert "learned accuracy" in out and "geo auroc" in out and "ens recall" in out and "learned err" in out
    assert "ensemble err" in out
    saved = json.loads(report.read_text())
    assert [row["set"] for row in saved["validation"]] == ["scenes", "scenes_depth", "tracked"]
    assert saved["hopkins"]["mean"]["learned"] < 0.1


# --- the original SegAnyMo checkpoint -------------------------------------------------------


def original_state_dict(config: TrajectoryTransformerConfig) -> dict[str, torch.Tensor]:
    """Random tensors under the original names, with the original shapes (1x1 convolution kernels,
    packed attention projections, an FFN input of 16 + 768 channels)."""
    generator = torch.Generator().manual_seed(0)
    ours = TrajectoryTransformer(config).state_dict()
    state = {}
    for our_name, their_name in parameter_names(config):
        shape = ours[our_name].shape
        if their_name.endswith(("input_fc1.weight", "fc2.weight")):
            shape = (*shape, 1, 1)
        state.setdefault(their_name, torch.randn(shape, generator=generator))
    return {f"module.{name}": tensor for name, tensor in state.items()}


def test_segany_checkpoint_loads_into_the_paper_model(tmp_path):
    config = TrajectoryTransformerConfig()
    state = original_state_dict(config)
    assert state["module.decoder.encoders.0.ffn.0.weight"].shape == (512, 128 + 768)
    assert state["module.joint_encoder.input_fc1.weight"].shape == (16, 88, 1, 1)
    path = tmp_path / "moseg.pth"
    torch.save({"model_state_dict": state}, path)
    model = load_segany_checkpoint(path)
    layer = model.motion_encoder[1]
    shared = state["module.joint_encoder.transformer_model.encoder.layers.1.self_attn.in_proj_weight"]
    torch.testing.assert_close(layer.time_attention.in_proj.weight, shared)
    torch.testing.assert_close(layer.track_attention.in_proj.weight, shared)
    torch.testing.assert_close(model.motion_decoder[0].norm_tracks.weight,
                               state["module.joint_encoder.transformer_model.decoder.layers.0.norm4.weight"])
    torch.testing.assert_close(model.input_projection[0].weight, state["module.joint_encoder.input_fc1.weight"][..., 0, 0])
    features, visible = random_batch(tracks=6, window=4)
    assert torch.isfinite(run(model, features, visible, torch.randn(1, 6, 768))).all()


def test_segany_checkpoint_given_as_classifier_weights_is_mapped(tmp_path, caplog):
    path = tmp_path / "moseg.pth"
    torch.save({"model_state_dict": original_state_dict(TrajectoryTransformerConfig())}, path)
    with caplog.at_level("WARNING"):
        classifier = OnlineTrackClassifier(ClassifierConfig(backend="learned", weights=str(path)))
    assert classifier.learned.classifier.model.config == TrajectoryTransformerConfig()
    assert "original SegAnyMo checkpoint" in caplog.text
    junk = tmp_path / "junk.pt"
    torch.save({"weights": torch.zeros(3)}, junk)
    with pytest.raises(ValueError, match="neither a weights file written by anymo-train-classifier nor a SegAnyMo"):
        LearnedTrackClassifier(junk)


def test_mapped_attention_computes_what_torch_multihead_attention_computes():
    config = TrajectoryTransformerConfig()
    state = original_state_dict(config)
    model = TrajectoryTransformer(config).eval()
    model.load_state_dict(convert_segany_state_dict(state, config))
    reference = torch.nn.MultiheadAttention(128, 8).eval()
    reference.load_state_dict({name.split("attention.")[-1]: tensor for name, tensor in state.items()
                               if name.startswith("module.decoder.encoders.2.attention.")})
    x = torch.randn(1, 10, 128)
    expected = reference(x.transpose(0, 1), x.transpose(0, 1), x.transpose(0, 1), need_weights=False)[0]
    torch.testing.assert_close(run(model.decoupled_encoder[2].attention, x, None), expected.transpose(0, 1),
                               rtol=1e-5, atol=1e-5)


def test_segany_mapping_names_what_does_not_fit():
    config = TrajectoryTransformerConfig()
    state = original_state_dict(config)
    for fast_part in ({"track_anchors": 4}, {"ego_motion_inputs": True}):
        with pytest.raises(ValueError, match="track_anchors=0 and ego_motion_inputs=False"):
            convert_segany_state_dict(state, TrajectoryTransformerConfig(**fast_part))
    broken = dict(state)
    broken["module.decoder.output_layer.weight"] = torch.zeros(2, 128)
    with pytest.raises(ValueError, match=r"decoder.output_layer.weight has shape \(2, 128\)"):
        convert_segany_state_dict(broken, config)
    del broken["module.decoder.output_layer.weight"]
    broken["module.decoder.extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="missing.*output_layer.*unused.*extra"):
        convert_segany_state_dict(broken, config)
