"""Datasets, the Hopkins loader and the anymo-eval runner, on tiny data written per test."""
import dataclasses
import json
import sys
import types
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.io

from anymo_ros.config import ClassifierConfig
from anymo_ros.tools import eval_cli
from anymo_ros.tools.metrics import misclassification_rate
from anymo_ros.tools.datasets import DatasetError, discover_sequences, find_hopkins_files, load_hopkins
from anymo_ros.tools.eval_cli import EvaluationError, evaluate_root, evaluate_sequence, evaluate_tracks, main
from anymo_ros.types import SegmentationResult, TrackSnapshot

HOPKINS_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "hopkins12"
HEIGHT, WIDTH = 48, 64


def object_mask(index: int) -> np.ndarray:
    """Ground truth of the toy videos: a 12x12 square moving 2 px right per frame."""
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    mask[18:30, 10 + 2 * index:22 + 2 * index] = 255
    return mask


def write_sequence(frames_dir: Path, masks_dir: Path, count: int = 4, frame_suffix: str = ".png") -> None:
    frames_dir.mkdir(parents=True)
    masks_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for index in range(count):
        cv2.imwrite(str(frames_dir / f"{index:05d}{frame_suffix}"), rng.integers(0, 255, (HEIGHT, WIDTH, 3), np.uint8))
        cv2.imwrite(str(masks_dir / f"{index:05d}.png"), object_mask(index))


@pytest.fixture
def folder_dataset(tmp_path):
    """<root>/<seq>/frames + masks layout with two sequences."""
    for name in ("walk", "run"):
        write_sequence(tmp_path / name / "frames", tmp_path / name / "masks")
    return tmp_path


class OracleSegmenter:
    """Returns the ground truth as object 5, or nothing; records what it was fed. Its tracks, on
    a 4 px grid, are dynamic (probability 1) exactly on the ground truth when it is perfect."""

    def __init__(self, perfect: bool = True):
        self.perfect = perfect
        self.stamps: list[float] = []

    def feed(self, image: np.ndarray, stamp: float) -> SegmentationResult:
        assert image.dtype == np.uint8 and image.shape == (HEIGHT, WIDTH, 3)
        index = len(self.stamps)
        self.stamps.append(stamp)
        labels = np.zeros((HEIGHT, WIDTH), np.uint16)
        if self.perfect:
            labels[object_mask(index) > 0] = 5
        column, row = np.meshgrid(np.arange(2, WIDTH, 4), np.arange(2, HEIGHT, 4))
        xy = np.stack((column.ravel(), row.ravel()), axis=1).astype(np.float32)
        tracks = dataclasses.replace(
            TrackSnapshot.empty(), ids=np.arange(len(xy)), xy=xy, visible=np.ones(len(xy), bool),
            dynamic_prob=(labels[row.ravel(), column.ravel()] > 0).astype(np.float32))
        return SegmentationResult(stamp=stamp, label_image=labels, objects=[], tracks=tracks,
                                  window_length=0, processing_time=0.01)


# --- sequence discovery ------------------------------------------------------------------------


def test_discovers_folder_layout(folder_dataset):
    sequences = discover_sequences(folder_dataset)
    assert [s.name for s in sequences] == ["run", "walk"]
    sequence = sequences[0]
    assert len(sequence) == 4 and sequence.fps == 30.0
    assert [p.name for p in sequence.mask_paths] == [p.stem + ".png" for p in sequence.frame_paths]
    frame = sequence.frame(1)
    assert frame.dtype == np.uint8 and frame.shape == (HEIGHT, WIDTH, 3)
    assert np.array_equal(sequence.mask(1), object_mask(1) > 0)
    assert sequence.stamp(3) == pytest.approx(0.1)


def test_frames_are_rgb(tmp_path):
    write_sequence(tmp_path / "s" / "frames", tmp_path / "s" / "masks", count=1)
    blue_bgr = np.full((HEIGHT, WIDTH, 3), (255, 0, 0), np.uint8)
    cv2.imwrite(str(tmp_path / "s" / "frames" / "00000.png"), blue_bgr)
    assert discover_sequences(tmp_path)[0].frame(0)[0, 0].tolist() == [0, 0, 255]


def test_discovers_davis_layout_and_selects_sequences(tmp_path):
    for name in ("bear", "car"):
        write_sequence(tmp_path / "JPEGImages" / "480p" / name, tmp_path / "Annotations" / "480p" / name,
                       frame_suffix=".jpg")
    sequences = discover_sequences(tmp_path, names=["car"], fps=25.0)
    assert [s.name for s in sequences] == ["car"]
    assert sequences[0].fps == 25.0
    assert sequences[0].mask(2).sum() == 144


def test_single_sequence_folder_and_natural_order(tmp_path):
    (tmp_path / "frames").mkdir()
    (tmp_path / "masks").mkdir()
    for index in (1, 2, 10):
        cv2.imwrite(str(tmp_path / "frames" / f"frame{index}.png"), np.zeros((HEIGHT, WIDTH, 3), np.uint8))
        cv2.imwrite(str(tmp_path / "masks" / f"frame{index}.png"), object_mask(0))
    (sequence,) = discover_sequences(tmp_path)
    assert [p.name for p in sequence.frame_paths] == ["frame1.png", "frame2.png", "frame10.png"]


def test_missing_mask_names_the_file(folder_dataset):
    (folder_dataset / "walk" / "masks" / "00002.png").unlink()
    with pytest.raises(DatasetError, match=r"missing ground-truth mask .*walk/masks/00002\.png"):
        discover_sequences(folder_dataset)
    sparse = discover_sequences(folder_dataset, names=["walk"], sparse_masks=True)[0]
    assert [sparse.has_mask(i) for i in range(4)] == [True, True, False, True]
    with pytest.raises(DatasetError, match="00002.png has no ground-truth mask"):
        sparse.mask(2)


def test_mask_without_frame_is_an_error(folder_dataset):
    cv2.imwrite(str(folder_dataset / "run" / "masks" / "00009.png"), object_mask(0))
    with pytest.raises(DatasetError, match=r"mask .*00009\.png has no frame"):
        discover_sequences(folder_dataset)


def test_unreadable_frame_names_the_file(folder_dataset):
    (folder_dataset / "run" / "frames" / "00001.png").write_bytes(b"not an image")
    sequence = discover_sequences(folder_dataset, names=["run"])[0]
    with pytest.raises(DatasetError, match=r"cannot read image .*run/frames/00001\.png"):
        sequence.frame(1)


def test_size_mismatch_names_the_mask(folder_dataset):
    cv2.imwrite(str(folder_dataset / "run" / "masks" / "00003.png"), np.zeros((HEIGHT, WIDTH + 1), np.uint8))
    sequence = discover_sequences(folder_dataset, names=["run"])[0]
    expected = rf"mask .*00003\.png is {WIDTH + 1}x{HEIGHT} but sequence 'run' is {WIDTH}x{HEIGHT}"
    with pytest.raises(DatasetError, match=expected):
        sequence.mask(3)


def test_unknown_sequence_and_empty_root(folder_dataset, tmp_path_factory):
    with pytest.raises(DatasetError, match="no sequence swim .*found: run, walk"):
        discover_sequences(folder_dataset, names=["swim"])
    with pytest.raises(DatasetError, match="no sequences under"):
        discover_sequences(tmp_path_factory.mktemp("empty"))


# --- Hopkins -----------------------------------------------------------------------------------


def write_hopkins(path: Path, xy: np.ndarray, labels: np.ndarray) -> None:
    """A .mat file shaped like the Hopkins 12 files: Data.ySparse (3, N, T), Data.GtLabel (N, 1)."""
    num_points, num_frames = xy.shape[:2]
    y_sparse = np.concatenate([np.moveaxis(xy, -1, 0), np.ones((1, num_points, num_frames))])
    y_sparse[:, np.isnan(xy).any(axis=-1)] = 0.0   # missing observation: zero homogeneous vector
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(str(path), {"Data": {
        "GtLabel": labels.reshape(-1, 1).astype(np.uint8), "Name": path.stem, "ySparse": y_sparse,
        "nFrames": np.array([[num_frames]], np.uint8), "nSparsePoints": np.array([[num_points]], np.uint16),
    }})


def test_load_hopkins_axis_order_and_missing_data(tmp_path):
    xy = np.array([[[10.0, 20.0], [11.0, 21.0], [12.0, 22.0]],
                   [[100.0, 5.0], [np.nan, np.nan], [104.0, 5.0]]])   # point 1 unseen in frame 1
    path = tmp_path / "toy" / "toy.mat"
    write_hopkins(path, xy, np.array([2, 1]))
    loaded_xy, visible, labels = load_hopkins(path)
    assert loaded_xy.shape == (2, 3, 2)
    assert visible.tolist() == [[True, True, True], [True, False, True]]
    assert np.allclose(loaded_xy[visible], xy[visible])
    assert np.isnan(loaded_xy[1, 1]).all()
    assert labels.tolist() == [2, 1]
    assert find_hopkins_files(tmp_path) == [path]


def test_load_hopkins_rejects_other_mat_files(tmp_path):
    path = tmp_path / "SeqList.mat"
    scipy.io.savemat(str(path), {"SeqList": np.array(["a", "b"])})
    with pytest.raises(DatasetError, match="no 'Data' struct"):
        load_hopkins(path)


@pytest.mark.skipif(not HOPKINS_ROOT.is_dir(), reason="Hopkins 12 data not available")
def test_real_hopkins_files():
    files = find_hopkins_files(HOPKINS_ROOT)
    assert len(files) == 12
    for path in files:
        xy, visible, labels = load_hopkins(path)
        num_points, num_frames = visible.shape
        assert xy.shape == (num_points, num_frames, 2) and labels.shape == (num_points,)
        assert set(np.unique(labels)) <= {1, 2, 3} and len(np.unique(labels)) >= 2
        # Axis check: a point moves a few pixels between frames, while points are far apart.
        step = np.nanmedian(np.linalg.norm(np.diff(xy, axis=1), axis=-1))
        spread = np.nanmedian(np.linalg.norm(xy[:, 0] - xy[:, 0].mean(axis=0), axis=-1))
        assert step < 10.0 < spread
        # x spans the 640 px width, y the 480 px height.
        assert np.nanmax(xy[..., 0]) > 500 and np.nanmax(xy[..., 1]) < 500


# --- runner ------------------------------------------------------------------------------------


def test_evaluate_sequence_is_causal_and_scores_frames(folder_dataset):
    sequence = discover_sequences(folder_dataset, names=["walk"], fps=20.0)[0]
    segmenter = OracleSegmenter()
    scores = evaluate_sequence(sequence, segmenter, instances=True, progress=False)
    assert segmenter.stamps == pytest.approx([0.0, 0.05, 0.10, 0.15])
    assert (scores.frames, scores.scored) == (4, 4)
    assert scores.j == scores.f == scores.instance_j == 1.0
    assert scores.latency(95) == pytest.approx(0.01)


def test_evaluate_sequence_warm_up_and_frame_limit(folder_dataset):
    sequence = discover_sequences(folder_dataset, names=["walk"])[0]
    scores = evaluate_sequence(sequence, OracleSegmenter(perfect=False), max_frames=3, skip_first=1, progress=False)
    assert (scores.frames, scores.scored) == (3, 2)
    assert scores.j == scores.f == 0.0
    # Its tracks of the two scored frames all say static: the object's are missed.
    assert len(scores.track_dynamic) == 2 and all(dynamic.any() for dynamic in scores.track_dynamic)
    assert scores.track_scores()["recall"] == 0.0 and scores.track_scores()["auroc"] == 0.5


def test_evaluate_root_uses_a_fresh_segmenter_per_sequence(folder_dataset):
    created: list[OracleSegmenter] = []

    def factory():
        created.append(OracleSegmenter())
        return created[-1]

    scores = evaluate_root(folder_dataset, factory, progress=False)
    assert [s.name for s in scores] == ["run", "walk"]
    assert [len(s.stamps) for s in created] == [4, 4]


def test_label_image_of_the_wrong_size_is_reported(folder_dataset):
    class Wrong(OracleSegmenter):
        def feed(self, image, stamp):
            result = super().feed(image, stamp)
            result.label_image = result.label_image[:, :-1]
            return result

    sequence = discover_sequences(folder_dataset, names=["run"])[0]
    with pytest.raises(EvaluationError, match="label image for frame"):
        evaluate_sequence(sequence, Wrong(), progress=False)


def test_mos_command_end_to_end(folder_dataset, tmp_path, monkeypatch, capsys):
    fake_pipeline = types.ModuleType("anymo_ros.pipeline")
    fake_pipeline.MotionSegmenter = lambda config: OracleSegmenter()
    monkeypatch.setitem(sys.modules, "anymo_ros.pipeline", fake_pipeline)
    report = tmp_path / "scores.json"
    assert main(["mos", str(folder_dataset), "--sequences", "walk", "--json", str(report), "--instances"]) == 0
    table = capsys.readouterr().out
    assert "walk" in table and "inst J" in table and "trk AUROC" in table and "mean" in table
    saved = json.loads(report.read_text())
    assert saved["mean"]["J"] == 1.0 and saved["mean"]["J&F"] == 1.0
    assert saved["mean"]["track_auroc"] == 1.0 and saved["mean"]["track_accuracy"] == 1.0
    assert saved["sequences"][0]["per_frame_F"] == [1.0] * 4
    assert saved["config"]["classifier.backend"] == "ensemble"


def test_mos_command_with_the_real_pipeline(tmp_path, capsys):
    pytest.importorskip("anymo_ros.pipeline")
    # Textured background with a textured square sliding across it.
    rng = np.random.default_rng(1)
    background = cv2.GaussianBlur(rng.integers(0, 255, (96, 128, 3), np.uint8), (0, 0), 1.5)
    patch = cv2.GaussianBlur(rng.integers(0, 255, (24, 24, 3), np.uint8), (0, 0), 1.0)
    frames, masks = tmp_path / "toy" / "frames", tmp_path / "toy" / "masks"
    frames.mkdir(parents=True)
    masks.mkdir(parents=True)
    for index in range(12):
        frame, mask = background.copy(), np.zeros((96, 128), np.uint8)
        left = 20 + 3 * index
        frame[36:60, left:left + 24] = patch
        mask[36:60, left:left + 24] = 255
        cv2.imwrite(str(frames / f"{index:03d}.png"), frame)
        cv2.imwrite(str(masks / f"{index:03d}.png"), mask)
    config = tmp_path / "config.yaml"
    config.write_text("processing_width: 128\n")
    assert main(["mos", str(tmp_path), "--config", str(config), "--max-frames", "12"]) == 0
    assert "toy" in capsys.readouterr().out


def test_mos_command_errors(tmp_path, folder_dataset, capsys):
    assert main(["mos", str(tmp_path / "absent")]) == 2
    assert "anymo-eval: error: dataset root" in capsys.readouterr().err
    bad_config = tmp_path / "bad.yaml"
    bad_config.write_text("tracker:\n  no_such_parameter: 1\n")
    assert main(["mos", str(folder_dataset), "--config", str(bad_config)]) == 2
    assert "no_such_parameter" in capsys.readouterr().err


def test_tracks_with_an_injected_grouper(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat([1, 2, 3], 10)
    write_hopkins(tmp_path / "a" / "a.mat", rng.uniform(0, 100, (30, 5, 2)), labels)
    files = find_hopkins_files(tmp_path)
    groupers = {"oracle": lambda xy, visible: labels[::-1].copy(), "one": lambda xy, visible: np.zeros(30)}
    rows = evaluate_tracks(files, groupers, progress=False)
    assert rows[0]["sequence"] == "a" and rows[0]["groups"] == 3
    assert rows[0]["oracle"] == 0.0                # a relabelling of the truth
    assert rows[0]["one"] == pytest.approx(2 / 3)


def synthetic_tracks(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """150 background points panning with the camera, 50 object points moving against it."""
    rng = np.random.default_rng(seed)
    start = np.concatenate([rng.uniform((0, 0), (640, 480), (150, 2)), rng.uniform((200, 150), (300, 250), (50, 2))])
    velocity = np.concatenate([np.tile((1.0, 0.5), (150, 1)), np.tile((-3.0, 2.0), (50, 1))])
    xy = start[:, None] + velocity[:, None] * np.arange(20)[None, :, None] + rng.normal(0, 0.2, (200, 20, 2))
    visible = rng.random((200, 20)) > 0.1
    xy[~visible] = np.nan
    return xy, visible, np.repeat([1, 2], [150, 50])


def test_geometric_grouper_separates_the_moving_group():
    xy, visible, labels = synthetic_tracks()
    groups = eval_cli.track_grouper("geometric", ClassifierConfig())(xy, visible)
    assert groups.shape == (200,) and set(np.unique(groups)) <= {0, 1}
    assert misclassification_rate(groups, labels) < 0.05


def test_tracks_command(tmp_path, capsys):
    xy, _, labels = synthetic_tracks()
    write_hopkins(tmp_path / "pan" / "pan.mat", xy, labels)
    report = tmp_path / "tracks.json"
    assert main(["tracks", str(tmp_path), "--json", str(report)]) == 0
    assert "geometric err" in capsys.readouterr().out
    saved = json.loads(report.read_text())
    assert saved["sequences"][0]["sequence"] == "pan" and 0.0 <= saved["mean"]["geometric"] <= 1.0
    missing = tmp_path / "no_weights.pt"
    config = tmp_path / "learned.yaml"
    config.write_text(f"classifier:\n  weights: {missing}\n")
    assert main(["tracks", str(tmp_path), "--classifier", "learned", "--config", str(config)]) == 2
    assert f"weights not found: {missing}" in capsys.readouterr().err


def test_help_describes_the_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "mos" in out and "tracks" in out
