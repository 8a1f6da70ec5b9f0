"""Pipeline results -> anymo_ros messages, and ROS time <-> seconds."""
from __future__ import annotations

import math

from builtin_interfaces.msg import Time
from sensor_msgs.msg import RegionOfInterest

from anymo_ros.msg import MovingObject, MovingObjectArray, Track, TrackArray
from anymo_ros.ros.image_conversion import array_to_image
from anymo_ros.types import SegmentationResult, TrackSnapshot


def stamp_to_seconds(stamp: Time) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


def seconds_to_stamp(seconds: float) -> Time:
    nanoseconds = round(seconds * 1e9)
    return Time(sec=nanoseconds // 1_000_000_000, nanosec=nanoseconds % 1_000_000_000)


def masks_message(result: SegmentationResult, header, frame_index: int, dropped_frames: int) -> MovingObjectArray:
    """The /moving_objects/masks message; end_to_end_latency is left for the publisher to set."""
    msg = MovingObjectArray()
    msg.header = header
    msg.labels = array_to_image(result.label_image, "mono16", header)
    msg.objects = [_moving_object(obj) for obj in result.objects]
    msg.window_length = result.window_length
    msg.processing_latency = float(result.processing_time)
    msg.frame_index = frame_index
    msg.dropped_frames = dropped_frames
    return msg


def _moving_object(obj) -> MovingObject:
    x, y, width, height = obj.bbox
    return MovingObject(
        id=obj.object_id,
        score=_finite(obj.score),
        bbox=RegionOfInterest(x_offset=x, y_offset=y, width=width, height=height, do_rectify=False),
        centroid_x=_finite(obj.centroid[0]), centroid_y=_finite(obj.centroid[1]),
        velocity_x=_finite(obj.velocity[0]), velocity_y=_finite(obj.velocity[1]),
        num_tracks=obj.num_tracks, age=obj.age, first_seen=seconds_to_stamp(obj.first_seen),
    )


def tracks_message(tracks: TrackSnapshot, header) -> TrackArray:
    msg = TrackArray()
    msg.header = header
    # tolist() turns numpy scalars into the Python numbers the message fields expect.
    msg.tracks = [
        Track(id=track_id, x=x, y=y, visible=visible, confidence=confidence,
              dynamic_probability=probability, object_id=object_id)
        for track_id, (x, y), visible, confidence, probability, object_id in zip(
            tracks.ids.tolist(), tracks.xy.tolist(), tracks.visible.tolist(), tracks.confidence.tolist(),
            tracks.dynamic_prob.tolist(), tracks.object_id.tolist())
    ]
    return msg


def _finite(value: float) -> float:
    """NaN/inf would reach subscribers as garbage; report 0 instead."""
    value = float(value)
    return value if math.isfinite(value) else 0.0
