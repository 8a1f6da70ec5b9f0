"""Our messages: built from pipeline results, serialized by rclpy, read and written by rosbags
(with the types registered from msg/*.msg, as a bag tool without ROS would)."""
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="ROS 2 rclpy is not importable; run: bash scripts/test.sh")
pytest.importorskip("anymo_ros.msg", reason="anymo_ros messages are not built; run: bash scripts/setup_env.sh")
from rclpy.serialization import deserialize_message, serialize_message  # noqa: E402
from rosbags.typesys import Stores, get_types_from_msg, get_typestore  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from anymo_ros.msg import MovingObjectArray, TrackArray  # noqa: E402
from anymo_ros.ros.conversions import (  # noqa: E402
    masks_message, seconds_to_stamp, stamp_to_seconds, tracks_message)
from anymo_ros.ros.image_conversion import image_to_array  # noqa: E402
from anymo_ros.types import MovingObject, SegmentationResult, TrackSnapshot  # noqa: E402

MSG_DIR = Path(__file__).resolve().parents[1] / "msg"


@pytest.fixture(scope="module")
def typestore():
    """A rosbags type store that knows our message definitions, read from msg/*.msg."""
    store = get_typestore(Stores.ROS2_KILTED)
    types = {}
    for path in sorted(MSG_DIR.glob("*.msg")):
        types.update(get_types_from_msg(path.read_text(), f"anymo_ros/msg/{path.stem}"))
    store.register(types)
    return store


def sample_result() -> SegmentationResult:
    labels = np.zeros((6, 8), np.uint16)
    labels[1:4, 2:5] = 7
    tracks = TrackSnapshot(
        ids=np.array([3, 11], np.int64), xy=np.array([[2.5, 1.25], [6.0, 4.5]], np.float32),
        visible=np.array([True, False]), confidence=np.array([0.875, 0.25], np.float32),
        dynamic_prob=np.array([0.75, 0.125], np.float32), object_id=np.array([7, 0], np.int32))
    obj = MovingObject(object_id=7, score=0.75, bbox=(2, 1, 3, 3), centroid=(3.0, 2.0), velocity=(12.5, float("nan")),
                       num_tracks=1, age=4, first_seen=99.5)
    return SegmentationResult(stamp=100.25, label_image=labels, objects=[obj], tracks=tracks,
                              window_length=5, processing_time=0.0125)


def header() -> Header:
    return Header(stamp=seconds_to_stamp(100.25), frame_id="camera_optical")


def test_masks_message_carries_the_result():
    result = sample_result()
    msg = masks_message(result, header(), frame_index=12, dropped_frames=3)
    assert msg.header == header()
    assert msg.labels.header == header() and msg.labels.encoding == "mono16"
    np.testing.assert_array_equal(image_to_array(msg.labels), result.label_image)
    (obj,) = msg.objects
    assert (obj.id, obj.num_tracks, obj.age) == (7, 1, 4)
    assert (obj.bbox.x_offset, obj.bbox.y_offset, obj.bbox.width, obj.bbox.height) == (2, 1, 3, 3)
    assert (obj.velocity_x, obj.velocity_y) == (12.5, 0.0)  # NaN is not sent
    assert stamp_to_seconds(obj.first_seen) == pytest.approx(99.5)
    assert (msg.window_length, msg.frame_index, msg.dropped_frames) == (5, 12, 3)
    assert msg.processing_latency == pytest.approx(0.0125)


def test_tracks_message_carries_every_track():
    msg = tracks_message(sample_result().tracks, header())
    assert [(t.id, t.x, t.y, t.visible, t.confidence, t.dynamic_probability, t.object_id) for t in msg.tracks] == [
        (3, 2.5, 1.25, True, 0.875, 0.75, 7),
        (11, 6.0, 4.5, False, 0.25, 0.125, 0),
    ]


@pytest.mark.parametrize("build, typename", [
    (lambda: masks_message(sample_result(), header(), 12, 3), "anymo_ros/msg/MovingObjectArray"),
    (lambda: tracks_message(sample_result().tracks, header()), "anymo_ros/msg/TrackArray"),
])
def test_rosbags_round_trip(typestore, build, typename):
    msg = build()
    wire = serialize_message(msg)
    decoded = typestore.deserialize_cdr(wire, typename)
    assert decoded.header.frame_id == "camera_optical"
    assert decoded.header.stamp.sec == 100 and decoded.header.stamp.nanosec == 250_000_000
    if typename.endswith("MovingObjectArray"):
        assert decoded.objects[0].id == 7 and decoded.labels.encoding == "mono16"
        assert bytes(decoded.labels.data) == bytes(msg.labels.data)
    else:
        assert [track.id for track in decoded.tracks] == [3, 11]
    # Compare decoded messages, not bytes: alignment padding is unspecified, and rclpy keeps
    # float32 fields as unrounded Python floats until serialization.
    rewritten = typestore.serialize_cdr(decoded, typename)
    assert deserialize_message(bytes(rewritten), type(msg)) == deserialize_message(wire, type(msg))


def test_stamp_conversion_round_trip():
    for seconds in (0.0, 1.5, 1_700_000_000.123456789):
        stamp = seconds_to_stamp(seconds)
        assert 0 <= stamp.nanosec < 1_000_000_000
        assert stamp_to_seconds(stamp) == pytest.approx(seconds, abs=1e-9 * max(seconds, 1))


def test_message_types_are_the_built_ones():
    assert MovingObjectArray.__module__.startswith("anymo_ros.msg")
    assert TrackArray.__module__.startswith("anymo_ros.msg")
