"""anymo-bag (frames and video to bags, export, replay through the real node) and anymo-eval bag."""
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from rosbags.rosbag2 import Reader, Writer

from anymo_ros.config import SegmenterConfig
from anymo_ros.tools import eval_cli
from anymo_ros.tools.bag_cli import (
    BAG_VERSION, DEFAULT_IMAGE_TOPIC, GROUND_TRUTH_SUFFIX, IMAGE_TYPE, MASKS_TYPE, bag_typestore, frame_stamp_ns,
    image_message, main, replay_bag)
from anymo_ros.tools.datasets import discover_sequences
from anymo_ros.tools.eval_cli import evaluate_result_bag, evaluate_root, pipeline_factory
from anymo_ros.tools.synthetic import render_clip

HEIGHT, WIDTH = 48, 64
CLIP_SIZE = (320, 240)   # replay tests: the size the other node tests use
NODE_PIPELINE = {"processing_width": 320}   # the replayed node's and the offline pipeline's config


# --- helpers ---------------------------------------------------------------------------------------


def square_mask(index: int) -> np.ndarray:
    """Ground truth of the toy sequences: a 12x12 square moving 2 px right per frame."""
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    mask[18:30, 10 + 2 * index:22 + 2 * index] = 255
    return mask


def write_frames(folder: Path, frames: list[np.ndarray], suffix: str = ".png") -> list[Path]:
    folder.mkdir(parents=True)
    paths = [folder / f"{index:05d}{suffix}" for index in range(len(frames))]
    for path, rgb in zip(paths, frames):
        assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return paths


def write_sequence(root: Path, name: str, frames: list[np.ndarray], masks: list[np.ndarray]) -> Path:
    """<root>/<name>/frames + masks, the layout anymo-eval reads."""
    write_frames(root / name / "frames", frames)
    (root / name / "masks").mkdir()
    for index, mask in enumerate(masks):
        assert cv2.imwrite(str(root / name / "masks" / f"{index:05d}.png"), mask)
    return root / name


def random_frames(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (HEIGHT, WIDTH, 3), np.uint8) for _ in range(count)]


def bag_messages(bag: Path, topic: str) -> list[tuple[int, object]]:
    """(log time, deserialized message) of every message on ``topic``, read with plain rosbags."""
    store = bag_typestore()
    with Reader(bag) as reader:
        connections = [c for c in reader.connections if c.topic == topic]
        return [(log_time, store.deserialize_cdr(raw, c.msgtype))
                for c, log_time, raw in reader.messages(connections)]


def unpadded_pixels(msg) -> np.ndarray:
    """An unpadded 8-bit Image's pixels, decoded independently of the tool."""
    channels = msg.step // msg.width
    pixels = np.asarray(msg.data).reshape(msg.height, msg.width, channels)
    return pixels[..., 0] if channels == 1 else pixels


def stamp_ns(msg) -> int:
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


def write_result_bag(bag: Path, results: dict[int, np.ndarray], processing_time: float = 0.02) -> None:
    """A result bag as replay records it: one MovingObjectArray per stamp (ns) -> label image."""
    store = bag_typestore()
    types = store.types
    with Writer(bag, version=BAG_VERSION) as writer:
        connection = writer.add_connection("/moving_objects/masks", MASKS_TYPE, typestore=store)
        for stamp, labels in results.items():
            label_image = image_message(labels, "mono16", stamp, "camera")
            msg = types[MASKS_TYPE](header=label_image.header, labels=label_image, objects=[], window_length=1,
                                    processing_latency=processing_time, end_to_end_latency=processing_time,
                                    frame_index=0, dropped_frames=0)
            writer.write(connection, stamp, store.serialize_cdr(msg, MASKS_TYPE))


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --- from-frames and from-video ------------------------------------------------------------------


@pytest.mark.parametrize("encoding, storage", [
    ("rgb8", "sqlite3"), ("rgb8", "mcap"), ("mono8", "sqlite3"), ("mono8", "mcap"), ("bgr8", "sqlite3"),
])
def test_frames_round_trip_is_byte_identical(tmp_path, capsys, encoding, storage):
    frames = random_frames(4)
    write_sequence(tmp_path / "data", "walk", frames, [square_mask(i) for i in range(4)])
    bag = tmp_path / "walk_bag"
    code, out, err = run_cli(capsys, "from-frames", tmp_path / "data", bag, "--encoding", encoding, "--storage",
                             storage, "--fps", "10", "--start-time", "100", "--frame-id", "cam", "--masks")
    assert code == 0, err
    assert "wrote 4 frames" in out
    assert list(bag.glob("*.mcap" if storage == "mcap" else "*.db3"))

    images = bag_messages(bag, DEFAULT_IMAGE_TOPIC)
    expected = {"rgb8": frames,
                "bgr8": [cv2.cvtColor(f, cv2.COLOR_RGB2BGR) for f in frames],
                "mono8": [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]}[encoding]
    assert len(images) == 4
    for index, ((log_time, msg), pixels) in enumerate(zip(images, expected)):
        assert msg.encoding == encoding and msg.header.frame_id == "cam"
        assert stamp_ns(msg) == log_time == frame_stamp_ns(index, 10.0, 100.0)
        assert unpadded_pixels(msg).tobytes() == pixels.tobytes()
    masks = bag_messages(bag, DEFAULT_IMAGE_TOPIC + GROUND_TRUTH_SUFFIX)
    assert [m.encoding for _, m in masks] == ["mono8"] * 4
    for index, (_, msg) in enumerate(masks):
        assert stamp_ns(msg) == stamp_ns(images[index][1])
        np.testing.assert_array_equal(unpadded_pixels(msg), square_mask(index))


def test_plain_folder_and_sequence_choice(tmp_path, capsys):
    frames = random_frames(3)
    write_frames(tmp_path / "plain", frames, ".jpg")
    code, _, err = run_cli(capsys, "from-frames", tmp_path / "plain", tmp_path / "plain_bag")
    assert code == 0, err
    decoded = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in sorted((tmp_path / "plain").iterdir())]
    assert [unpadded_pixels(m).tobytes() for _, m in bag_messages(tmp_path / "plain_bag", DEFAULT_IMAGE_TOPIC)] == \
        [f.tobytes() for f in decoded]

    for name, seed in (("walk", 1), ("run", 2)):
        write_sequence(tmp_path / "data", name, random_frames(2, seed), [square_mask(i) for i in range(2)])
    code, _, err = run_cli(capsys, "from-frames", tmp_path / "data", tmp_path / "both")
    assert code == 2 and "2 sequences (run, walk)" in err and "--sequence" in err
    assert not (tmp_path / "both").exists()
    code, _, err = run_cli(capsys, "from-frames", tmp_path / "data", tmp_path / "run_bag", "--sequence", "run")
    assert code == 0, err
    (_, first), _ = bag_messages(tmp_path / "run_bag", DEFAULT_IMAGE_TOPIC)
    assert unpadded_pixels(first).tobytes() == random_frames(2, 2)[0].tobytes()


def test_from_video(tmp_path, capsys):
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 12.0, (WIDTH, HEIGHT))
    assert writer.isOpened()
    for rgb in random_frames(6):
        writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    writer.release()
    capture = cv2.VideoCapture(str(video))
    decoded = []
    while (frame := capture.read())[0]:
        decoded.append(cv2.cvtColor(frame[1], cv2.COLOR_BGR2RGB))
    capture.release()

    code, out, err = run_cli(capsys, "from-video", video, tmp_path / "bag", "--storage", "mcap")
    assert code == 0, err
    assert "wrote 6 frames" in out
    images = bag_messages(tmp_path / "bag", DEFAULT_IMAGE_TOPIC)
    assert [stamp_ns(m) for _, m in images] == [frame_stamp_ns(i, 12.0) for i in range(6)]
    assert [unpadded_pixels(m).tobytes() for _, m in images] == [f.tobytes() for f in decoded]


def test_conversion_errors_name_the_file_and_leave_no_bag(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(capsys, "from-frames", tmp_path / "empty", tmp_path / "bag")
    assert code == 2 and f"no sequences under {tmp_path / 'empty'}" in err

    paths = write_frames(tmp_path / "broken", random_frames(3))
    paths[1].write_bytes(b"not an image")
    code, _, err = run_cli(capsys, "from-frames", tmp_path / "broken", tmp_path / "bag")
    assert code == 2 and f"cannot read image {paths[1]}" in err

    paths = write_frames(tmp_path / "sizes", random_frames(2) + [np.zeros((HEIGHT + 2, WIDTH, 3), np.uint8)])
    code, _, err = run_cli(capsys, "from-frames", tmp_path / "sizes", tmp_path / "bag")
    assert code == 2 and f"frame {paths[2]} is {WIDTH}x{HEIGHT + 2}" in err

    sequence = write_sequence(tmp_path / "data", "walk", random_frames(3), [square_mask(i) for i in range(3)])
    (sequence / "masks" / "00001.png").unlink()
    code, _, err = run_cli(capsys, "from-frames", tmp_path / "data", tmp_path / "bag", "--masks")
    assert code == 2 and f"missing ground-truth mask {sequence / 'masks' / '00001.png'}" in err
    assert not (tmp_path / "bag").exists()
    code, _, err = run_cli(capsys, "from-frames", tmp_path / "data", tmp_path / "bag")   # masks not needed
    assert code == 0, err
    code, _, err = run_cli(capsys, "from-frames", tmp_path / "data", tmp_path / "bag")
    assert code == 2 and "exists already" in err

    code, _, err = run_cli(capsys, "from-video", tmp_path / "missing.mp4", tmp_path / "video_bag")
    assert code == 2 and f"video {tmp_path / 'missing.mp4'} does not exist" in err


# --- export and anymo-eval bag, on result bags written here ------------------------------------


@pytest.fixture
def recorded_run(tmp_path, capsys):
    """A 5-frame sequence, its image bag (10 fps), and a result bag of perfect labels (object 3)
    in which frame 2 has no result (dropped)."""
    frames = random_frames(5)
    masks = [square_mask(i) for i in range(5)]
    write_sequence(tmp_path / "data", "walk", frames, masks)
    assert run_cli(capsys, "from-frames", tmp_path / "data", tmp_path / "images", "--fps", "10")[0] == 0
    results = {frame_stamp_ns(i, 10.0): (masks[i] > 0).astype(np.uint16) * 3 for i in (0, 1, 3, 4)}
    write_result_bag(tmp_path / "results", results)
    return tmp_path, results


def test_export_writes_label_pngs_and_overlay_video(recorded_run, capsys):
    tmp_path, results = recorded_run
    for name, extra in (("plain", []), ("overlay", ["--images", tmp_path / "images"])):
        code, out, err = run_cli(capsys, "export", tmp_path / "results", tmp_path / name, *extra)
        assert code == 0, err
        pngs = sorted((tmp_path / name / "labels").glob("*.png"))
        assert [p.name for p in pngs] == ["000000_0.000000000.png", "000001_0.100000000.png",
                                          "000002_0.300000000.png", "000003_0.400000000.png"]
        for png, labels in zip(pngs, results.values()):
            written = cv2.imread(str(png), cv2.IMREAD_UNCHANGED)
            assert written.dtype == np.uint16
            np.testing.assert_array_equal(written, labels)
        (video,) = (tmp_path / name).glob("overlay.*")
        capture = cv2.VideoCapture(str(video))
        assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 4
        ok, first = capture.read()
        assert ok and first.shape == (HEIGHT, WIDTH, 3)
        capture.release()


def test_eval_bag_scores_results_by_stamp(recorded_run, capsys):
    tmp_path, _ = recorded_run
    (sequence,) = discover_sequences(tmp_path / "data", fps=10.0)
    scores, missing = evaluate_result_bag(tmp_path / "results", sequence, progress=False)
    assert missing == 1
    assert scores.jaccard == [1.0, 1.0, 0.0, 1.0, 1.0]   # the dropped frame scores as an empty mask
    assert scores.processing_times == pytest.approx([0.02] * 4)   # float32 in the message

    assert eval_cli.main(["bag", str(tmp_path / "results"), str(tmp_path / "data"), "--fps", "10"]) == 0
    captured = capsys.readouterr()
    assert "1 of 5 frames have no result" in captured.err
    assert captured.out.splitlines()[2].split()[:6] == ["walk", "5", "5", "0.800", "0.800", "0.800"]

    assert eval_cli.main(["bag", str(tmp_path / "results"), str(tmp_path / "data"), "--fps", "30"]) == 2
    assert "matches no frame of 'walk'" in capsys.readouterr().err


def test_empty_bag_and_missing_topic_are_clear_errors(tmp_path, capsys):
    with Writer(tmp_path / "empty", version=BAG_VERSION) as writer:
        writer.add_connection("/moving_objects/masks", MASKS_TYPE, typestore=bag_typestore())
        writer.add_connection(DEFAULT_IMAGE_TOPIC, IMAGE_TYPE, typestore=bag_typestore())
    code, _, err = run_cli(capsys, "export", tmp_path / "empty", tmp_path / "out")
    assert code == 2 and f"bag {tmp_path / 'empty'} has no messages on /moving_objects/masks" in err
    code, _, err = run_cli(capsys, "export", tmp_path / "empty", tmp_path / "out", "--masks-topic", "/other")
    assert code == 2 and "has no topic /other (topics: /camera/image_raw, /moving_objects/masks)" in err
    code, _, err = run_cli(capsys, "export", tmp_path / "nothing", tmp_path / "out")
    assert code == 2 and f"cannot read bag {tmp_path / 'nothing'}" in err


@pytest.mark.parametrize("command", ["from-frames", "from-video", "replay", "export"])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0 and "usage: anymo-bag " + command in capsys.readouterr().out


# --- replay through the real node -----------------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic_bag(tmp_path_factory):
    """A rendered clip as a dataset sequence (frames + masks) and as an image bag (15 fps)."""
    root = tmp_path_factory.mktemp("replay")
    clip = render_clip(seed=1, num_frames=16, width=CLIP_SIZE[0], height=CLIP_SIZE[1], num_objects=1,
                       camera_motion="pan", fps=15)
    write_sequence(root / "data", "clip", clip.frames, clip.masks)
    assert main(["from-frames", str(root / "data"), str(root / "clip_bag"), "--fps", "15"]) == 0
    return root


def start_node(ros):
    return ros.start_segment_node(**{f"pipeline.{name}": value for name, value in NODE_PIPELINE.items()})


def test_replay_through_the_node_scores_as_offline(ros, synthetic_bag, tmp_path, capsys):
    start_node(ros)
    summary = replay_bag(synthetic_bag / "clip_bag", tmp_path / "out", publish_topic=ros.image_topic,
                         masks_topic=f"{ros.namespace}/moving_objects/masks", rate=None)
    assert (summary.sent, summary.outputs, summary.dropped, summary.interrupted) == (16, 16, 0, False)
    recorded = bag_messages(tmp_path / "out", f"{ros.namespace}/moving_objects/masks")
    assert [stamp_ns(m) for _, m in recorded] == [frame_stamp_ns(i, 15.0) for i in range(16)]

    # The node's results score exactly as the same pipeline run offline on the same frames.
    (sequence,) = discover_sequences(synthetic_bag / "data", fps=15.0)
    live, missing = evaluate_result_bag(tmp_path / "out", sequence, f"{ros.namespace}/moving_objects/masks",
                                        progress=False)
    config = SegmenterConfig()
    config.update_flat(NODE_PIPELINE)
    (offline,) = evaluate_root(synthetic_bag / "data", pipeline_factory(config), fps=15.0, progress=False)
    assert missing == 0
    assert (live.jaccard, live.boundary) == (offline.jaccard, offline.boundary)
    # not a comparison of empty outputs: the node found the object
    assert any(np.asarray(msg.labels.data).any() for _, msg in recorded)

    config_file = tmp_path / "pipeline.yaml"
    config_file.write_text(yaml.safe_dump({"pipeline": NODE_PIPELINE}))
    tables = []
    for argv in (["bag", tmp_path / "out", synthetic_bag / "data", "--fps", "15",
                  "--topic", f"{ros.namespace}/moving_objects/masks"],
                 ["mos", synthetic_bag / "data", "--fps", "15", "--config", config_file]):
        assert eval_cli.main([str(arg) for arg in argv]) == 0
        tables.append([line.split()[:6] for line in capsys.readouterr().out.splitlines()])
    assert tables[0] == tables[1]   # same table; only speed columns (after J&F) may differ


def test_replay_at_a_rate_accounts_for_every_frame(ros, synthetic_bag, tmp_path):
    start_node(ros)
    masks_topic = f"{ros.namespace}/moving_objects/masks"
    summary = replay_bag(synthetic_bag / "clip_bag", tmp_path / "out", publish_topic=ros.image_topic,
                         masks_topic=masks_topic, rate=4.0, timeout=1.5, best_effort=True)
    assert summary.sent == 16 and summary.outputs + summary.dropped == 16 and summary.outputs > 0
    assert len(bag_messages(tmp_path / "out", masks_topic)) == summary.outputs
    custom = yaml.safe_load((tmp_path / "out" / "metadata.yaml").read_text())[
        "rosbag2_bagfile_information"]["custom_data"]
    assert {key: custom[f"anymo_ros.replay.{key}"] for key in ("frames_in", "outputs", "dropped", "interrupted")} == \
        {"frames_in": "16", "outputs": str(summary.outputs), "dropped": str(summary.dropped), "interrupted": "False"}


def test_interrupted_replay_keeps_a_valid_result_bag(ros, synthetic_bag, tmp_path):
    start_node(ros)
    masks_topic = f"{ros.namespace}/moving_objects/masks"
    seen = ros.subscribe_masks()
    # Its own process, so that Ctrl-C (SIGINT) reaches it as it would from a terminal.
    process = subprocess.Popen(
        [sys.executable, "-m", "anymo_ros.tools.bag_cli", "replay", str(synthetic_bag / "clip_bag"),
         "--out", str(tmp_path / "out"), "--publish-as", ros.image_topic, "--masks-topic", masks_topic,
         "--rate", "0.25"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        seen.wait_for_count(2, timeout=30)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 130, out + err
    assert "interrupted:" in out and "of 16 frames not sent" in out
    (line,) = [line for line in out.splitlines() if "frames in," in line]
    outputs = int(line.split("frames in, ")[1].split(" outputs")[0])
    recorded = bag_messages(tmp_path / "out", masks_topic)
    assert 2 <= len(recorded) == outputs < 16
