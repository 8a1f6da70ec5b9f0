"""Sensor depth input: depth images to metres, the pairing of images with depth, and the node with
a depth topic over real DDS (paired by message_filters, which is skipped where it is missing)."""
import sys

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="ROS 2 rclpy is not importable; run: bash scripts/test.sh")
pytest.importorskip("anymo_ros.msg", reason="anymo_ros messages are not built; run: bash scripts/setup_env.sh")
from conftest import wait_until  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402
from test_ros_image_conversion import raw_image  # noqa: E402
from test_ros_node import (  # noqa: E402
    HEIGHT, START, WIDTH, frame_message, logged, node_status, output_for, stream_in_lockstep)

from anymo_ros.ros.conversions import seconds_to_stamp  # noqa: E402
from anymo_ros.ros.depth_pairing import DepthPairing  # noqa: E402
from anymo_ros.ros.image_conversion import ImageConversionError, array_to_image, depth_image_to_metres  # noqa: E402
from anymo_ros.ros.qos import input_qos  # noqa: E402
from anymo_ros.ros.segment_node import DEPTH_PATIENCE  # noqa: E402
from anymo_ros.tools.synthetic import render_clip  # noqa: E402

NAN = np.nan


# --- depth images to metres (no message_filters, no DDS) ---------------------------------------------

@pytest.mark.parametrize("encoding", ["16UC1", "mono16"])
@pytest.mark.parametrize("padding", [0, 2])
@pytest.mark.parametrize("bigendian", [False, True])
def test_millimetre_depth_becomes_metres_with_zero_invalid(encoding, padding, bigendian):
    millimetres = np.array([[0, 1500, 65535], [250, 0, 1]], np.uint16)
    metres, note = depth_image_to_metres(raw_image(millimetres, encoding, padding, bigendian), (3, 2))
    assert metres.dtype == np.float32 and note is None
    np.testing.assert_allclose(metres, [[NAN, 1.5, 65.535], [0.25, NAN, 0.001]], rtol=1e-6)


@pytest.mark.parametrize("bigendian", [False, True])
def test_float_depth_keeps_metres_with_nan_zero_inf_and_negative_invalid(bigendian):
    values = np.array([[NAN, 0.0, 2.25], [np.inf, -1.0, 0.5]], np.float32)
    metres, note = depth_image_to_metres(raw_image(values, "32FC1", 4, bigendian), (3, 2))
    assert metres.dtype == np.float32 and note is None
    np.testing.assert_array_equal(metres, [[NAN, NAN, 2.25], [NAN, NAN, 0.5]])


def test_registered_depth_at_lower_resolution_is_resized_to_the_frame():
    half = np.array([[1000, 2000], [0, 4000]], np.uint16)
    metres, note = depth_image_to_metres(array_to_image(half, "16UC1", Header()), (4, 4))
    assert metres.shape == (4, 4) and "resized" in note
    np.testing.assert_array_equal(metres[2:, :2], NAN)
    assert metres[0, 0] == pytest.approx(1.0) and metres[3, 3] == pytest.approx(4.0)


@pytest.mark.parametrize("message, frame_size, kind, words", [
    (array_to_image(np.zeros((2, 3, 3), np.uint8), "rgb8", Header()), (3, 2), "unsupported_encoding", ("rgb8",)),
    (array_to_image(np.ones((2, 3), np.uint16), "16UC1", Header()), (4, 4), "size_mismatch", ("3x2", "4x4")),
    (array_to_image(np.zeros((2, 3), np.uint16), "16UC1", Header()), (3, 2), "no_valid_depth", ("no valid pixel",)),
    (array_to_image(np.full((2, 3), NAN, np.float32), "32FC1", Header()), (3, 2), "no_valid_depth", ("no valid pixel",)),
    (Image(height=2, width=3, encoding="32FC1", step=12, data=bytes(10)), (3, 2), "truncated", ("10 bytes",)),
])
def test_unusable_depth_raises_with_its_kind(message, frame_size, kind, words):
    with pytest.raises(ImageConversionError) as raised:
        depth_image_to_metres(message, frame_size)
    assert raised.value.kind == kind and all(word in str(raised.value) for word in words)


# --- pairing logic (pure Python) -----------------------------------------------------------------------

def test_images_wait_for_their_pair_and_older_waiting_images_are_given_up():
    pairing = DepthPairing(patience=3)
    assert pairing.image(1, "frame 1") is None and pairing.image(2, "frame 2") is None
    assert pairing.paired(2) == "frame 2"
    assert pairing.given_up == 1 and pairing.paired(1) is None   # frame 1 lost to the newer frame 2
    assert pairing.image(3, "frame 3") is None and pairing.paired(3) == "frame 3"
    assert pairing.given_up == 1


def test_images_go_on_alone_while_depth_is_missing_and_pairs_resume():
    pairing = DepthPairing(patience=3)
    assert [pairing.image(stamp, f"frame {stamp}") for stamp in (1, 2, 3)] == [None] * 3
    assert pairing.image(4, "frame 4") == "frame 4" and pairing.given_up == 3
    assert pairing.image(5, "frame 5") == "frame 5"
    assert pairing.paired(5) is None        # depth is back, but frame 5 went on without it...
    assert pairing.image(6, "frame 6") is None and pairing.paired(6) == "frame 6"   # ...frame 6 waits for it
    assert pairing.given_up == 3


def test_repeated_stamp_replaces_the_waiting_image_and_clear_forgets():
    pairing = DepthPairing(patience=3)
    pairing.image(7, "first")
    pairing.image(7, "second")   # a bag played again from its start
    assert pairing.paired(7) == "second" and pairing.given_up == 1
    pairing.image(8, "third")
    assert pairing.clear() == 1 and pairing.paired(8) is None


# --- the node over DDS ---------------------------------------------------------------------------------

def start_depth_node(ros, **parameters):
    return ros.start_segment_node(depth_topic=f"{ros.namespace}/camera/depth", reliable_input=True,
                                  **{"pipeline.depth.backend": "sensor", **parameters})


def test_without_message_filters_images_go_on_without_depth(ros, monkeypatch):
    monkeypatch.setitem(sys.modules, "message_filters", None)   # an installation without it
    clip = render_clip(seed=3, num_frames=3, width=WIDTH, height=HEIGHT, num_objects=1, fps=15)
    rosout, diagnostics = ros.subscribe_rosout(), ros.subscribe_diagnostics()
    node = start_depth_node(ros)
    masks, publisher = ros.subscribe_masks(), ros.image_publisher(reliable=True)
    inputs = [frame_message(f, START + s) for f, s in zip(clip.frames, clip.stamps)]
    outputs = stream_in_lockstep(publisher, masks, inputs)
    assert [out.header for out in outputs] == [msg.header for msg in inputs]
    status = wait_until(lambda: node_status(diagnostics, node), what="diagnostics")
    assert "message_filters is missing" in status["depth input"]
    assert any("message_filters" in value for key, value in status.items() if key.startswith("fallback"))
    wait_until(lambda: logged(rosout, node, "depth_topic", "message_filters", "without depth"),
               what="one log line saying why there is no depth")


@pytest.fixture
def message_filters():
    return pytest.importorskip("message_filters", reason="message_filters is not on PyPI (it comes with a "
                                                         "ROS 2 installation); the depth synchronisation is skipped")


def depth_publisher(ros, node):
    publisher = ros.node.create_publisher(Image, node.depth_subscription.topic_name, input_qos(reliable=True))
    wait_until(lambda: publisher.get_subscription_count() > 0 and node.depth_subscription.get_publisher_count() > 0,
               what="depth publisher and subscription to match")
    return publisher


def depth_message(pixels: np.ndarray, encoding: str, stamp: float) -> Image:
    return array_to_image(pixels, encoding, Header(stamp=seconds_to_stamp(stamp), frame_id="depth"))


def record_depth(monkeypatch, node) -> list:
    """The depth argument of every segmenter.feed call from now on."""
    depths = []
    feed = node.segmenter.feed

    def recorded(image, stamp, depth=None):
        depths.append(depth)
        return feed(image, stamp, depth=depth)

    monkeypatch.setattr(node.segmenter, "feed", recorded)
    return depths


def test_jittered_depth_pairs_with_its_image(ros, message_filters, monkeypatch):
    clip = render_clip(seed=1, num_frames=8, width=WIDTH, height=HEIGHT, num_objects=1, fps=15)
    diagnostics = ros.subscribe_diagnostics()
    node = start_depth_node(ros, depth_sync_slop=0.02)
    masks, images = ros.subscribe_masks(), ros.image_publisher(reliable=True)
    depths = depth_publisher(ros, node)
    fed = record_depth(monkeypatch, node)
    millimetres = np.full((HEIGHT, WIDTH), 1500, np.uint16)
    millimetres[:10] = 0                                   # no measurement
    metres = np.full((HEIGHT // 2, WIDTH // 2), 2.5, np.float32)   # registered, at half resolution
    metres[0, 0] = np.nan

    for index, (frame, stamp) in enumerate(zip(clip.frames, clip.stamps)):
        image = frame_message(frame, START + stamp)
        jitter = 0.008 if index % 2 else -0.008              # within the 20 ms slop
        depth = (depth_message(millimetres, "16UC1", START + stamp + jitter) if index < 4
                 else depth_message(metres, "32FC1", START + stamp + jitter))
        first, second = (image, depth) if index % 2 else (depth, image)   # either may come first
        (images if first is image else depths).publish(first)
        (images if second is image else depths).publish(second)
        output_for(masks, image.header)

    assert len(fed) == len(clip.frames) and all(depth is not None and depth.shape == (HEIGHT, WIDTH) for depth in fed)
    assert np.isnan(fed[0][:10]).all()
    np.testing.assert_allclose(fed[0][10:], 1.5, rtol=1e-6)
    assert np.isnan(fed[-1][:2, :2]).all() and np.nanmin(fed[-1]) == np.nanmax(fed[-1]) == np.float32(2.5)
    status = wait_until(
        lambda: (s := node_status(diagnostics, node)) and s["frames with depth"] == "8" and s,
        what="diagnostics counting 8 frames with depth")
    assert status["frames dropped waiting for depth"] == "0" and status["bad depth"] == "0"


def test_silent_depth_stream_still_yields_masks_and_depth_resumes(ros, message_filters, monkeypatch):
    clip = render_clip(seed=2, num_frames=DEPTH_PATIENCE + 8, width=WIDTH, height=HEIGHT, num_objects=1, fps=15)
    inputs = [frame_message(f, START + s) for f, s in zip(clip.frames, clip.stamps)]
    diagnostics = ros.subscribe_diagnostics()
    node = start_depth_node(ros)
    masks, images = ros.subscribe_masks(), ros.image_publisher(reliable=True)
    fed = record_depth(monkeypatch, node)

    # No depth at all: the first images wait for a pair, then images go on without depth.
    for msg in inputs[:DEPTH_PATIENCE]:
        images.publish(msg)
    alone = stream_in_lockstep(images, masks, inputs[DEPTH_PATIENCE:DEPTH_PATIENCE + 4])
    assert [m.header for m in masks.messages] == [m.header for m in alone]
    assert alone[-1].dropped_frames == DEPTH_PATIENCE and fed == [None] * 4

    # Depth comes back: from the first pair on, frames carry depth again.
    depths = depth_publisher(ros, node)
    depth = np.full((HEIGHT, WIDTH), 1000, np.uint16)
    for msg, stamp in zip(inputs[DEPTH_PATIENCE + 4:], clip.stamps[DEPTH_PATIENCE + 4:]):
        depths.publish(depth_message(depth, "16UC1", START + stamp))
        images.publish(msg)
        output_for(masks, msg.header)
    assert fed[4] is None and all(d is not None for d in fed[5:])
    status = wait_until(
        lambda: (s := node_status(diagnostics, node)) and s["frames with depth"] == "3" and s,
        what="diagnostics counting the frames with depth")
    assert status["frames dropped waiting for depth"] == str(DEPTH_PATIENCE)
    assert status["frames dropped"] == str(DEPTH_PATIENCE)


def test_bad_depth_is_reported_and_the_frame_processed_without_it(ros, message_filters, monkeypatch):
    clip = render_clip(seed=4, num_frames=4, width=WIDTH, height=HEIGHT, num_objects=1, fps=15)
    rosout, diagnostics = ros.subscribe_rosout(), ros.subscribe_diagnostics()
    node = start_depth_node(ros)
    masks, images = ros.subscribe_masks(), ros.image_publisher(reliable=True)
    depths = depth_publisher(ros, node)
    fed = record_depth(monkeypatch, node)
    bad = [(np.zeros((HEIGHT, WIDTH, 3), np.uint8), "rgb8"),              # not a depth encoding
           (np.ones((HEIGHT, HEIGHT), np.uint16), "16UC1"),               # not registered: another aspect ratio
           (np.full((HEIGHT, WIDTH), np.nan, np.float32), "32FC1"),       # no valid pixel
           (np.full((HEIGHT, WIDTH), 800, np.uint16), "16UC1")]           # good again

    for frame, stamp, (pixels, encoding) in zip(clip.frames, clip.stamps, bad):
        image = frame_message(frame, START + stamp)
        depths.publish(depth_message(pixels, encoding, START + stamp))
        images.publish(image)
        output_for(masks, image.header)

    assert fed[:3] == [None] * 3 and fed[3] is not None
    status = wait_until(
        lambda: (s := node_status(diagnostics, node)) and s["bad depth"] == "3" and s,
        what="diagnostics counting the bad depth images")
    assert (status["bad depth: unsupported_encoding"], status["bad depth: size_mismatch"],
            status["bad depth: no_valid_depth"]) == ("1", "1", "1")
    assert status["last bad depth"].startswith("no_valid_depth") and status["bad input"] == "0"
    for kind in ("unsupported_encoding", "size_mismatch", "no_valid_depth"):
        wait_until(lambda: logged(rosout, node, "bad depth", kind, "without depth"),
                   what=f"a log line about the {kind} depth image")
