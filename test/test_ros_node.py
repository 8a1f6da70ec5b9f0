"""segment_node over real DDS: synthetic video in, masks, tracks, overlay and diagnostics out;
bad input, overload, and the installed executable as a process of its own."""
import signal
import subprocess
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("rclpy", reason="ROS 2 rclpy is not importable; run: bash scripts/test.sh")
pytest.importorskip("anymo_ros.msg", reason="anymo_ros messages are not built; run: bash scripts/setup_env.sh")
from ament_index_python.packages import PackageNotFoundError, get_package_prefix  # noqa: E402
from conftest import wait_until  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from anymo_ros.msg import TrackArray  # noqa: E402
from anymo_ros.ros.conversions import seconds_to_stamp  # noqa: E402
from anymo_ros.ros.image_conversion import array_to_image, image_to_array, image_to_rgb  # noqa: E402
from anymo_ros.tools.synthetic import render_clip  # noqa: E402

WIDTH, HEIGHT = 320, 240
WARMUP_FRAMES = 8
START = 1000.0  # stamp of the first frame, s


def frame_message(frame: np.ndarray, stamp: float, frame_id: str = "camera_optical") -> Image:
    return array_to_image(frame, "rgb8", Header(stamp=seconds_to_stamp(stamp), frame_id=frame_id))


def output_for(inbox, header: Header):
    """The received message whose header is exactly ``header``, waiting for it."""
    return wait_until(lambda: next((m for m in inbox.messages if m.header == header), None),
                      what=f"the output for stamp {header.stamp.sec}.{header.stamp.nanosec:09d}")


def stream_in_lockstep(publisher, masks, messages) -> list:
    """Publish each message once its predecessor's result is in (so none is dropped); the results."""
    outputs = []
    for msg in messages:
        publisher.publish(msg)
        outputs.append(output_for(masks, msg.header))
    return outputs


def publish_until_answered(publisher, masks, messages) -> int:
    """Publish the messages one by one until a result arrives; the index of the last one sent.

    For a node in another process, whose side of the publisher-subscriber match is not
    observable from here: the first messages may go out before it listens.
    """
    for index, msg in enumerate(messages):
        publisher.publish(msg)
        deadline = time.monotonic() + 1.0
        while not masks.messages and time.monotonic() < deadline:
            time.sleep(0.01)
        if masks.messages:
            return index
    pytest.fail(f"no result for any of {len(messages)} frames")


def node_status(diagnostics, node) -> dict[str, str] | None:
    """Key-value pairs of the newest diagnostics status of ``node``."""
    name = f"{node.get_fully_qualified_name()}: "
    for array in reversed(diagnostics.messages):
        for status in array.status:
            if status.name.startswith(name):
                return {kv.key: kv.value for kv in status.values}
    return None


def logged(rosout, node, *words: str) -> bool:
    """Whether ``node`` logged a line containing every word."""
    logger = node.get_logger().name
    return any(log.name == logger and all(word in log.msg for word in words) for log in rosout.messages)


def iou(labels: np.ndarray, truth: np.ndarray) -> float:
    union = np.logical_or(labels > 0, truth > 0).sum()
    return float(np.logical_and(labels > 0, truth > 0).sum() / union) if union else 1.0


def test_moving_object_is_segmented_with_a_stable_id(ros):
    clip = render_clip(seed=1, num_frames=24, width=WIDTH, height=HEIGHT, num_objects=1, camera_motion="pan", fps=15)
    ros.start_segment_node()
    masks = ros.subscribe_masks()
    tracks = ros.subscribe(TrackArray, f"{ros.namespace}/moving_objects/tracks")
    overlays = ros.subscribe(Image, f"{ros.namespace}/moving_objects/overlay")
    publisher = ros.image_publisher()
    inputs = [frame_message(frame, START + stamp) for frame, stamp in zip(clip.frames, clip.stamps)]

    outputs = stream_in_lockstep(publisher, masks, inputs)

    ids = []
    for index, (msg_in, out, truth) in enumerate(zip(inputs, outputs, clip.masks)):
        assert out.header == msg_in.header and out.labels.header == msg_in.header
        labels = image_to_array(out.labels)
        assert labels.shape == (HEIGHT, WIDTH) and out.labels.encoding == "mono16"
        assert sorted(o.id for o in out.objects) == sorted(set(np.unique(labels).tolist()) - {0})
        if index >= WARMUP_FRAMES:
            assert iou(labels, truth) > 0.5, f"frame {index}"
            under_object = labels[truth > 0]
            ids.append(np.bincount(under_object[under_object > 0]).argmax())
    assert len(set(ids)) == 1, f"object id changed: {ids}"
    last = outputs[-1]
    assert last.frame_index == len(inputs) - 1 and last.dropped_frames == 0
    assert last.window_length > 0 and last.processing_latency > 0
    assert last.end_to_end_latency >= last.processing_latency
    (obj,) = last.objects
    assert obj.num_tracks > 0 and obj.age >= len(inputs) - WARMUP_FRAMES and obj.bbox.width > 0

    # debug outputs: same headers; the overlay is the input image with the objects drawn on it
    track_msg = output_for(tracks, last.header)
    assert any(t.object_id == obj.id for t in track_msg.tracks)
    overlay = image_to_rgb(output_for(overlays, last.header))
    assert overlay.shape == (HEIGHT, WIDTH, 3)
    labels = image_to_array(last.labels)
    far_from_objects = cv2.dilate((labels > 0).astype(np.uint8), np.ones((31, 31), np.uint8)) == 0
    np.testing.assert_array_equal(overlay[far_from_objects], clip.frames[-1][far_from_objects])
    assert not np.array_equal(overlay[labels > 0], clip.frames[-1][labels > 0])


def test_static_scene_under_camera_motion_has_no_objects(ros):
    clip = render_clip(seed=2, num_frames=20, width=WIDTH, height=HEIGHT, num_objects=0, camera_motion="pan", fps=15)
    ros.start_segment_node()
    masks = ros.subscribe_masks()
    publisher = ros.image_publisher()
    inputs = [frame_message(frame, START + stamp) for frame, stamp in zip(clip.frames, clip.stamps)]
    outputs = stream_in_lockstep(publisher, masks, inputs)
    assert [len(out.objects) for out in outputs] == [0] * len(outputs)
    assert all(not image_to_array(out.labels).any() for out in outputs)


def test_compressed_input(ros):
    clip = render_clip(seed=3, num_frames=4, width=WIDTH, height=HEIGHT, num_objects=1, fps=15)
    node = ros.start_segment_node(use_compressed=True)
    assert node.input_topic == ros.image_topic + "/compressed"
    masks = ros.subscribe_masks()
    publisher = ros.image_publisher(CompressedImage, ros.image_topic + "/compressed")
    messages = []
    for frame, stamp in zip(clip.frames, clip.stamps):
        _, jpeg = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        messages.append(CompressedImage(header=Header(stamp=seconds_to_stamp(START + stamp), frame_id="cam"),
                                        format="jpeg", data=jpeg.tobytes()))
    outputs = stream_in_lockstep(publisher, masks, messages)
    assert all(image_to_array(out.labels).shape == (HEIGHT, WIDTH) for out in outputs)


def bad_images(good: Image) -> dict[str, tuple[Image, tuple[str, ...]]]:
    """kind -> (a broken copy of ``good``, words its log line must contain)."""
    def broken(**fields) -> Image:
        values = dict(header=good.header, height=good.height, width=good.width, encoding=good.encoding,
                      is_bigendian=good.is_bigendian, step=good.step, data=bytes(good.data))
        values.update(fields)
        return Image(**values)

    return {
        "unsupported_encoding": (broken(encoding="yuv422"), ("yuv422", "unsupported encoding")),
        "truncated": (broken(data=bytes(good.data)[: len(good.data) // 2]), ("truncated", "bytes")),
        "bad_step": (broken(step=good.width * 2), ("bad_step", f"step {good.width * 2}")),
        "empty": (broken(height=0, width=0, step=0, data=b""), ("empty image",)),
        "invalid_image": (array_to_image(np.zeros((8, 8, 3), np.uint8), "rgb8", good.header), ("too small",)),
    }


@pytest.mark.parametrize("kind", list(bad_images(frame_message(np.zeros((4, 4, 3), np.uint8), 0.0))))
def test_bad_input_is_reported_and_survived(ros, kind):
    clip = render_clip(seed=4, num_frames=3, width=WIDTH, height=HEIGHT, num_objects=1, fps=15)
    node = ros.start_segment_node()
    masks, diagnostics, rosout = ros.subscribe_masks(), ros.subscribe_diagnostics(), ros.subscribe_rosout()
    publisher = ros.image_publisher()
    first, later = (frame_message(clip.frames[i], START + clip.stamps[i]) for i in (0, 2))
    bad, words = bad_images(frame_message(clip.frames[1], START + clip.stamps[1]))[kind]

    stream_in_lockstep(publisher, masks, [first])
    publisher.publish(bad)
    status = wait_until(lambda: (s := node_status(diagnostics, node)) and s.get(f"bad input: {kind}") == "1" and s,
                        what=f"diagnostics counting the {kind} frame")
    assert status["bad input"] == "1" and status["last bad input"].startswith(kind)
    wait_until(lambda: logged(rosout, node, "bad input", *words), what=f"a log line about the {kind} frame")

    stream_in_lockstep(publisher, masks, [later])  # still alive and processing
    assert [m.header for m in masks.messages] == [first.header, later.header]


@pytest.mark.parametrize("case", ["size_change", "stamp_backwards"])
def test_stream_discontinuity_resets_the_window(ros, case):
    clip = render_clip(seed=5, num_frames=6, width=WIDTH, height=HEIGHT, num_objects=1, fps=15)
    small = render_clip(seed=5, num_frames=2, width=256, height=192, num_objects=1, fps=15)
    before = [frame_message(f, START + s) for f, s in zip(clip.frames[:4], clip.stamps[:4])]
    if case == "size_change":
        after = [frame_message(f, START + 1.0 + s) for f, s in zip(small.frames, small.stamps)]
        words, shape = ("size changed",), (192, 256)
    else:  # a bag replayed from its start
        after = [frame_message(f, START + s) for f, s in zip(clip.frames[4:], clip.stamps[:2])]
        words, shape = ("backwards",), (HEIGHT, WIDTH)
    node = ros.start_segment_node()
    masks, diagnostics, rosout = ros.subscribe_masks(), ros.subscribe_diagnostics(), ros.subscribe_rosout()
    publisher = ros.image_publisher()

    outputs = stream_in_lockstep(publisher, masks, before + after)

    assert outputs[len(before)].window_length == 1  # the window restarted with this frame
    assert all(image_to_array(out.labels).shape == shape for out in outputs[len(before):])
    status = wait_until(lambda: (s := node_status(diagnostics, node)) and s["pipeline events"] == "1" and s,
                        what="diagnostics counting the pipeline event")
    assert all(word in status["last pipeline event"] for word in words)
    wait_until(lambda: logged(rosout, node, *words), what="a log line about the reset")


def test_overload_drops_frames_and_keeps_latency_bounded(ros):
    clip = render_clip(seed=6, num_frames=60, width=WIDTH, height=HEIGHT, num_objects=1, fps=30)
    inputs = [frame_message(f, START + s) for f, s in zip(clip.frames, clip.stamps)]
    ros.start_segment_node(reliable_input=True)  # reliable: the mailbox, not the transport, does the dropping
    masks = ros.subscribe_masks()
    publisher = ros.image_publisher(reliable=True)
    measured = stream_in_lockstep(publisher, masks, inputs[:10])
    interval = np.median([m.processing_latency for m in measured[2:]]) / 3  # 3x the processing rate

    for msg in inputs[10:]:
        publisher.publish(msg)
        time.sleep(interval)
    last = output_for(masks, inputs[-1].header)
    time.sleep(0.2)  # anything still in flight

    outputs = masks.messages
    burst = [m for m in outputs if m.frame_index >= 10]
    # The node numbers the frames it receives. On a loaded machine the executor can lag behind the
    # burst and the subscription's keep_last history can lose some before the node sees them.
    received = last.frame_index + 1
    assert 0.75 * len(inputs) <= received <= len(inputs)
    assert last.dropped_frames > 0
    assert len(outputs) + last.dropped_frames == received  # every received frame is published or counted
    assert len({m.frame_index for m in outputs}) == len(outputs)
    # Newest-frame-wins: latency stays near one processing time instead of growing with a queue.
    processing = np.median([m.processing_latency for m in burst])
    early, late = (np.median([m.end_to_end_latency for m in part]) for part in (burst[:5], burst[-5:]))
    assert late < 3 * max(early, processing) + 0.05, (early, late, processing)


def test_installed_executable_runs_as_its_own_process(ros):
    try:
        executable = Path(get_package_prefix("anymo_ros")) / "lib" / "anymo_ros" / "segment_node"
    except PackageNotFoundError:
        pytest.skip("anymo_ros is not installed in AMENT_PREFIX_PATH; run: bash scripts/setup_env.sh")
    clip = render_clip(seed=7, num_frames=12, width=WIDTH, height=HEIGHT, num_objects=1, fps=15)
    masks, diagnostics = ros.subscribe_masks(), ros.subscribe_diagnostics()
    process = subprocess.Popen(
        [str(executable), "--ros-args", "-r", f"__ns:={ros.namespace}", "-p", f"image_topic:={ros.image_topic}",
         "-p", "pipeline.processing_width:=320", "-p", "diagnostics_period:=0.25"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        publisher = ros.image_publisher()
        inputs = [frame_message(f, START + s) for f, s in zip(clip.frames, clip.stamps)]
        answered = publish_until_answered(publisher, masks, inputs)
        outputs = stream_in_lockstep(publisher, masks, inputs[answered + 1:])
        assert [out.header for out in outputs] == [msg.header for msg in inputs[answered + 1:]]
        wait_until(lambda: any(status.name.startswith(f"{ros.namespace}/segment_node")
                               for array in diagnostics.messages for status in array.status),
                   what="diagnostics from the process")
    finally:
        process.send_signal(signal.SIGINT)
        try:
            log, _ = process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            log = "did not stop on SIGINT\n" + process.communicate()[0]
    assert process.returncode == 0, log
    assert f"input: Image on {ros.image_topic}" in log


def test_missing_classifier_weights_fall_back_to_the_embedded_default(ros, tmp_path):
    missing = tmp_path / "no_such_weights.pt"
    diagnostics, rosout = ros.subscribe_diagnostics(), ros.subscribe_rosout()
    node = ros.start_segment_node(**{"pipeline.classifier.backend": "learned",
                                     "pipeline.classifier.weights": str(missing)})
    assert node.segmenter.backends["classifier"] == "geometric"
    status = wait_until(lambda: node_status(diagnostics, node), what="diagnostics of the node")
    assert status["backend: classifier"] == "geometric"
    assert str(missing) in status["fallback 1"] and "geometric" in status["fallback 1"]
    wait_until(lambda: logged(rosout, node, "learned", str(missing), "falling back"),
               what="one log line naming the missing weights")
    # And it segments on the fallback.
    clip = render_clip(seed=1, num_frames=14, width=WIDTH, height=HEIGHT, num_objects=1, camera_motion="pan", fps=15)
    masks, publisher = ros.subscribe_masks(), ros.image_publisher()
    inputs = [frame_message(frame, START + stamp) for frame, stamp in zip(clip.frames, clip.stamps)]
    outputs = stream_in_lockstep(publisher, masks, inputs)
    assert iou(image_to_array(outputs[-1].labels), clip.masks[-1]) > 0.5
