"""The learned trajectory classifier: input features, masking, invariances, loss and weight files."""
import math
import re

import numpy as np
import pytest
import torch

from anymo_ros.classify.features import FEATURE_DIM, frequency_encode, track_features
from anymo_ros.classify.trajectory_transformer import (
    LearnedTrackClassifier,
    TrajectoryTransformer,
    TrajectoryTransformerConfig,
    _key_mask,
    save_weights,
    weighted_bce,
)
from anymo_ros.tools.bench_classifier import benchmark_classifier

SEMANTIC_DIM = 6


def tiny_config(**overrides) -> TrajectoryTransformerConfig:
    sizes = dict(
        motion_dim=8, motion_heads=2, motion_ffn_dim=16, motion_encoder_layers=1, motion_decoder_layers=1,
        decoupled_dim=16, decoupled_heads=2, decoupled_ffn_dim=32, decoupled_encoder_blocks=2,
        decoupled_decoder_blocks=2, semantic_dim=SEMANTIC_DIM, dropout=0.0,
    )
    return TrajectoryTransformerConfig(**{**sizes, **overrides})


def tiny_model(**overrides) -> TrajectoryTransformer:
    torch.manual_seed(0)
    return TrajectoryTransformer(tiny_config(**overrides)).eval()


def random_batch(batch=1, tracks=7, window=5, seed=0):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(batch, tracks, window, FEATURE_DIM, generator=generator)
    visible = torch.rand(batch, tracks, window, generator=generator) > 0.3
    visible[..., 0] = True  # every track seen at least once
    semantics = torch.randn(batch, tracks, SEMANTIC_DIM, generator=generator)
    return features, visible, semantics


def run(model, *args, **kwargs):
    with torch.no_grad():
        return model(*args, **kwargs)


# --- features -------------------------------------------------------------------------------

def test_frequency_encoding_holds_the_input_then_sin_cos_at_powers_of_two_pi():
    x = torch.tensor([[0.25, -0.5], [0.1, 0.9]])
    encoded = frequency_encode(x, num_freqs=10)
    assert encoded.shape == (2, 42)
    torch.testing.assert_close(encoded[:, :2], x)
    for k in (0, 3, 9):
        block = encoded[:, 2 + 4 * k: 6 + 4 * k]
        torch.testing.assert_close(block[:, :2], torch.sin(2**k * math.pi * x))
        torch.testing.assert_close(block[:, 2:], torch.cos(2**k * math.pi * x))


def test_features_have_88_channels_with_scaled_positions_visibility_and_confidence():
    xy = np.array([[[0.0, 0.0], [99.0, 49.0], [49.5, 24.5]]], np.float32)   # corners and centre
    visible = np.array([[True, True, False]])
    confidence = np.array([[0.9, 0.8, 0.1]], np.float32)
    features = track_features(xy, visible, confidence, image_size=(100, 50))
    assert features.shape == (1, 3, 88) and features.dtype == torch.float32
    torch.testing.assert_close(features[0, :2, :2], torch.tensor([[-1.0, -1.0], [1.0, 1.0]]))
    torch.testing.assert_close(features[0, :, 86], torch.tensor([1.0, 1.0, 0.0]))
    torch.testing.assert_close(features[0, :, 87], torch.tensor([0.9, 0.8, 0.1]))


def test_steps_are_zero_where_the_next_point_is_invisible():
    xy = np.array([[[10, 10], [20, 10], [90, 90], [40, 10], [50, 10]]], np.float32)
    visible = np.array([[True, True, False, True, True]])
    depth = np.array([[1.0, 2.0, 3.0, 4.0, 5.0]], np.float32)
    features = track_features(xy, visible, np.ones((1, 5), np.float32), (101, 101), depth=depth)
    step_u = features[0, :, 42]
    torch.testing.assert_close(step_u, torch.tensor([0.2, 0.0, 0.0, 0.2, 0.0]))  # 10 px of 0..100 -> 0.2
    assert (features[0, :, 43] == 0).all()
    depth_step = features[0, :, 85]
    assert depth_step[1] == 0 and depth_step[2] == 0 and depth_step[4] == 0


def test_depth_is_neutral_without_a_depth_source():
    xy = np.random.default_rng(0).uniform(0, 100, size=(4, 6, 2))
    features = track_features(xy, np.ones((4, 6), bool), np.ones((4, 6)), (100, 100), depth=None)
    assert (features[..., 84] == 0.5).all()
    assert (features[..., 85] == 0.0).all()


def test_depth_is_min_max_normalised_per_frame_over_visible_tracks():
    depth = np.array([[2.0, 10.0], [4.0, 30.0], [1000.0, 20.0]], np.float32)
    visible = np.array([[True, True], [True, True], [False, True]])
    features = track_features(np.zeros((3, 2, 2)), visible, np.ones((3, 2)), (10, 10), depth=depth)
    torch.testing.assert_close(features[:2, 0, 84], torch.tensor([0.0, 1.0]))   # 1000 is unseen
    torch.testing.assert_close(features[:, 1, 84], torch.tensor([0.0, 1.0, 0.5]))


# --- model ----------------------------------------------------------------------------------

def test_paper_config_builds_the_paper_sizes_and_runs():
    torch.manual_seed(0)
    model = TrajectoryTransformer(TrajectoryTransformerConfig()).eval()
    assert model.input_projection[0].weight.shape == (16, 88)
    assert model.decoupled_encoder[0].ffn_expand.weight.shape == (512, 128 + 768)
    assert len(model.decoupled_encoder) == 4 and len(model.decoupled_decoder) == 4
    features, visible, _ = random_batch(tracks=8, window=4)
    semantics = torch.randn(1, 8, 768)
    logits = run(model, features, visible, semantics)
    assert logits.shape == (1, 8) and torch.isfinite(logits).all()


def test_features_at_invisible_steps_do_not_change_the_output():
    model = tiny_model()
    features, visible, semantics = random_batch()
    assert (~visible).any()
    changed = features.clone()
    changed[~visible] = 100.0 * torch.randn(int((~visible).sum()), FEATURE_DIM)
    torch.testing.assert_close(
        run(model, changed, visible, semantics), run(model, features, visible, semantics), rtol=0, atol=1e-6
    )


def test_fully_invisible_tracks_and_clips_give_finite_output():
    model = tiny_model()
    features, visible, semantics = random_batch()
    visible[0, 2] = False
    assert torch.isfinite(run(model, features, visible, semantics)).all()
    assert torch.isfinite(run(model, features, torch.zeros_like(visible), semantics)).all()


def test_sequences_without_valid_keys_attend_to_all_keys_instead_of_none():
    key_valid = torch.tensor([[True, False, True], [False, False, False]])
    mask = _key_mask(key_valid)
    assert mask.shape == (2, 1, 1, 3)
    assert mask[0].flatten().tolist() == [True, False, True]
    assert mask[1].all()
    assert _key_mask(torch.ones(2, 3, dtype=torch.bool)) is None


def test_permuting_tracks_permutes_the_output():
    model = tiny_model()
    features, visible, semantics = random_batch(tracks=9)
    order = torch.randperm(9, generator=torch.Generator().manual_seed(1))
    logits = run(model, features, visible, semantics)
    permuted = run(model, features[:, order], visible[:, order], semantics[:, order])
    torch.testing.assert_close(permuted, logits[:, order], rtol=0, atol=1e-5)


def test_padding_tracks_do_not_change_real_tracks():
    model = tiny_model()
    clip_a = random_batch(tracks=4, seed=1)
    clip_b = random_batch(tracks=6, seed=2)
    alone_a = run(model, *clip_a)
    alone_b = run(model, *clip_b)

    padding = random_batch(tracks=2, seed=3)  # garbage, visible: only track_mask hides it
    padded_a = [torch.cat((part, pad), dim=1) for part, pad in zip(clip_a, padding)]
    features, visible, semantics = (torch.cat((a, b)) for a, b in zip(padded_a, clip_b))
    track_mask = torch.ones(2, 6, dtype=torch.bool)
    track_mask[0, 4:] = False
    batched = run(model, features, visible, semantics, track_mask)
    torch.testing.assert_close(batched[0, :4], alone_a[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(batched[1], alone_b[0], rtol=0, atol=1e-5)


def test_runs_with_and_without_semantics_and_semantics_matter():
    model = tiny_model()
    features, visible, semantics = random_batch()
    without = run(model, features, visible, None)
    # No semantics is the same as zero semantics (the model skips adding zeros).
    torch.testing.assert_close(run(model, features, visible, torch.zeros_like(semantics)), without)
    assert not torch.allclose(run(model, features, visible, semantics), without, atol=1e-4)
    with pytest.raises(ValueError, match="channels"):
        run(model, features, visible, torch.zeros(1, 7, SEMANTIC_DIM + 1))


def test_semantic_dropout_zeroes_semantics_in_training_only():
    model = tiny_model(semantic_dropout=1.0)
    features, visible, semantics = random_batch()
    without = run(model, features, visible, None)
    model.train()  # dropout is 0 in the tiny config, so only the semantic dropout differs
    torch.testing.assert_close(run(model, features, visible, semantics), without)
    model.eval()
    assert not torch.allclose(run(model, features, visible, semantics), without, atol=1e-4)


def test_motion_only_model_without_decoders():
    model = tiny_model(semantic_dim=0, motion_decoder_layers=0, decoupled_decoder_blocks=0)
    features, visible, _ = random_batch()
    assert torch.isfinite(run(model, features, visible)).all()


# --- loss -----------------------------------------------------------------------------------

def test_weighted_bce_matches_a_hand_computed_value():
    logits = torch.tensor([0.0, 2.0, -1.0])
    labels = torch.tensor([1.0, 0.0, 0.0])
    # N = 3, N_pos = 1: the positive weighs (3 - 1) / 1 = 2.
    expected = (2 * math.log(2) + math.log(1 + math.e**2) + math.log(1 + math.e**-1)) / 3
    assert weighted_bce(logits, labels).item() == pytest.approx(expected, rel=1e-6)


def test_weighted_bce_ignores_invalid_tracks():
    logits = torch.tensor([[0.0, 2.0, -1.0, 5.0]])
    labels = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    valid = torch.tensor([[True, True, True, False]])
    expected = weighted_bce(logits[:, :3], labels[:, :3])
    assert weighted_bce(logits, labels, valid).item() == pytest.approx(expected.item(), rel=1e-6)


# --- weights and inference wrapper ----------------------------------------------------------

def numpy_window(tracks=5, window=6):
    rng = np.random.default_rng(0)
    return dict(
        xy=rng.uniform(0, 64, size=(tracks, window, 2)).astype(np.float32),
        visible=rng.random((tracks, window)) > 0.2,
        confidence=rng.uniform(0.5, 1, size=(tracks, window)).astype(np.float32),
        image_size=(64, 48),
        depth=rng.uniform(1, 5, size=(tracks, window)).astype(np.float32),
        semantics=rng.normal(size=(tracks, SEMANTIC_DIM)).astype(np.float32),
    )


def test_saved_weights_reload_to_identical_predictions(tmp_path):
    model = tiny_model()
    path = tmp_path / "classifier.pt"
    save_weights(model, path)
    loaded = LearnedTrackClassifier(path)
    assert loaded.model.config == model.config
    inputs = numpy_window()
    expected = LearnedTrackClassifier.from_model(model).predict(**inputs)
    probabilities = loaded.predict(**inputs)
    assert probabilities.shape == (5,) and probabilities.dtype == np.float32
    assert ((probabilities >= 0) & (probabilities <= 1)).all()
    np.testing.assert_array_equal(probabilities, expected)


def test_predict_handles_no_tracks():
    classifier = LearnedTrackClassifier.from_model(tiny_model())
    inputs = numpy_window(tracks=0)
    assert classifier.predict(**inputs).shape == (0,)


def test_missing_weights_file_names_the_path(tmp_path):
    missing = tmp_path / "nowhere" / "classifier.pt"
    with pytest.raises(FileNotFoundError, match=r"classifier weights.*" + re.escape(str(missing))):
        LearnedTrackClassifier(missing)


def test_benchmark_reports_one_row_per_size():
    rows = benchmark_classifier([8, 16], [4], repeats=1, config=tiny_config(), with_semantics=True)
    assert [(row["num_tracks"], row["window"]) for row in rows] == [(8, 4), (16, 4)]
    assert all(row["min_ms"] > 0 for row in rows)


def test_benchmark_command_times_the_shipped_architecture(capsys):
    from anymo_ros.tools.bench_classifier import main as bench_main
    bench_main(["--tracks", "8", "--windows", "4", "--repeats", "1", "--model", "shipped"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:2] == ["tracks", "window"] and lines[1].split()[:2] == ["8", "4"]
