"""The CUDA paths on a GPU: the learned classifier, every learned backend and the pipeline.

These run only where torch sees a CUDA GPU, and skip elsewhere. The same code's CPU paths are
covered by test_backends.py and test_trajectory_transformer.py.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from test_backends import HEIGHT, WIDTH, _tiny_classifier, full_config

from anymo_ros.classify.training import classification_scores, scene_window
from anymo_ros.classify.trajectory_transformer import LearnedTrackClassifier, shipped_weights_path
from anymo_ros.config import SegmenterConfig
from anymo_ros.devices import autocast
from anymo_ros.pipeline import MotionSegmenter
from anymo_ros.tools.bench_backends import random_dinov2, save_random_checkpoints
from anymo_ros.tools.synthetic import render_clip

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA GPU (torch.cuda.is_available() is False)")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return save_random_checkpoints(tmp_path_factory.mktemp("checkpoints"), "tiny")


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return (a & b).sum() / union if union else 1.0


def test_shipped_classifier_gives_the_same_probabilities_on_cuda_as_on_cpu():
    window = scene_window(700_000_000, 512, 16, with_depth=False, rng=np.random.default_rng(0))
    outputs = {}
    for device in ("cpu", "cuda"):
        classifier = LearnedTrackClassifier(shipped_weights_path(), device=device)
        assert next(classifier.model.parameters()).device.type == device
        outputs[device] = classifier.predict(window.xy, window.visible, window.confidence, window.image_size)
    assert outputs["cuda"].shape == (512,)
    np.testing.assert_allclose(outputs["cuda"], outputs["cpu"], atol=1e-3)
    # Agreement on what the labels say, not on noise.
    assert classification_scores(outputs["cuda"], window.dynamic)["auroc"] > 0.9


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_pipeline_runs_every_learned_backend_on_cuda(checkpoints, tmp_path, precision):
    clip = render_clip(seed=2, num_frames=8, width=WIDTH, height=HEIGHT, num_objects=2, camera_motion="pan")
    config = full_config(checkpoints)
    config.device, config.precision = "cuda", precision
    config.processing_width = WIDTH
    config.classifier.backend = "learned"
    config.classifier.weights = str(_tiny_classifier(tmp_path / "classifier.pt", random_dinov2().config.hidden_size))
    _take_library_workspaces(precision)
    before = torch.cuda.memory_allocated()
    segmenter = MotionSegmenter(config)
    assert segmenter.problems == []
    assert segmenter.models.device.type == "cuda" and segmenter.models.precision == precision
    assert all(next(model.parameters()).device.type == "cuda" for model in _torch_models(segmenter))
    assert torch.cuda.memory_allocated() > before
    for frame, stamp in zip(clip.frames, clip.stamps):
        result = segmenter.feed(frame, stamp)
        assert result.label_image.shape == (HEIGHT, WIDTH) and result.label_image.dtype == np.uint16
        assert {"depth", "semantics", "densify"} <= set(result.stage_times)
        assert not result.events   # no stage fell back
    assert np.isfinite(segmenter.window.tracks(segmenter._ids).depth).any()
    segmenter.release()
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() <= before + (1 << 20)   # released models leave no GPU memory held


def test_embedded_default_with_the_classifier_on_cuda_segments_as_on_cpu():
    clip = render_clip(seed=1, num_frames=40, num_objects=2, camera_motion="pan")
    labels = {}
    for device in ("cpu", "cuda"):
        config = SegmenterConfig()
        config.device = device
        segmenter = MotionSegmenter(config)
        assert segmenter.problems == [] and segmenter.models.device.type == device
        labels[device] = [segmenter.feed(frame, stamp).label_image > 0 for frame, stamp in zip(clip.frames, clip.stamps)]
    warm = slice(15, None)
    assert np.mean([_iou(g, c) for g, c in zip(labels["cuda"][warm], labels["cpu"][warm])]) > 0.95
    assert np.mean([_iou(g, m > 0) for g, m in zip(labels["cuda"][warm], clip.masks[warm])]) > 0.7


def _take_library_workspaces(precision: str) -> None:
    """cuBLAS keeps a workspace per process (32 MiB on Hopper) from its first matrix product on;
    take it before measuring what the pipeline holds."""
    square = torch.ones(64, 64, device="cuda")
    with autocast(torch.device("cuda"), precision):
        (square @ square).sum().item()


def _torch_models(segmenter: MotionSegmenter) -> list[torch.nn.Module]:
    models = [segmenter.classifier.learned.classifier.model]
    return models + [backend.model for backend in segmenter.models.models() if isinstance(backend.model, torch.nn.Module)]
