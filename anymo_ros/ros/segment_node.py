"""segment_node: segments anything that moves in a camera stream and publishes instance masks.

Topics (relative names, so a namespace applies; the input is `image_topic`):
  in   <image_topic> (sensor_msgs/Image) or <image_topic>/compressed (sensor_msgs/CompressedImage)
  out  moving_objects/masks (MovingObjectArray), moving_objects/tracks (TrackArray),
       moving_objects/overlay (sensor_msgs/Image, rgb8), /diagnostics (diagnostic_msgs/DiagnosticArray)

The subscription callback only puts the message in a one-slot mailbox; a worker thread runs the
pipeline on the newest frame, so frames that arrive while it is busy are dropped and counted.
"""
from __future__ import annotations

import sys
import threading
import time
import traceback
from dataclasses import dataclass

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from sensor_msgs.msg import CompressedImage, Image

from anymo_ros.msg import MovingObjectArray, TrackArray
from anymo_ros.pipeline import InvalidImageError, MotionSegmenter
from anymo_ros.ros import qos
from anymo_ros.ros.conversions import masks_message, stamp_to_seconds, tracks_message
from anymo_ros.ros.diagnostics import NodeStatistics, diagnostic_status
from anymo_ros.ros.image_conversion import ImageConversionError, array_to_image, compressed_to_rgb, image_to_rgb
from anymo_ros.ros.mailbox import LatestMailbox
from anymo_ros.ros.overlay import render_overlay
from anymo_ros.ros.parameters import declare_parameters

NODE_NAME = "segment_node"
LOG_THROTTLE_SECONDS = 5.0


@dataclass
class _PendingFrame:
    msg: Image | CompressedImage
    received: float      # time.monotonic() in the subscription callback
    frame_index: int


class SegmentNode(Node):
    def __init__(self, **node_options):
        super().__init__(NODE_NAME, **node_options)
        self.settings, config = declare_parameters(self)
        self.segmenter = MotionSegmenter(config)
        self._stats = NodeStatistics()
        self._mailbox: LatestMailbox[_PendingFrame] = LatestMailbox()
        self._last_logged: dict[str, float] = {}

        output_qos = qos.output_qos()
        self._masks_pub = self.create_publisher(MovingObjectArray, "moving_objects/masks", output_qos)
        self._tracks_pub = self.create_publisher(TrackArray, "moving_objects/tracks", output_qos)
        self._overlay_pub = self.create_publisher(Image, "moving_objects/overlay", output_qos)
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", output_qos)

        if self.settings.use_compressed:
            message_type, topic = CompressedImage, self.settings.image_topic.rstrip("/") + "/compressed"
            self._to_rgb = compressed_to_rgb
        else:
            message_type, topic = Image, self.settings.image_topic
            self._to_rgb = image_to_rgb
        input_qos = qos.input_qos(self.settings.reliable_input)
        self.subscription = self.create_subscription(message_type, topic, self._on_image, input_qos)
        self.input_topic = self.subscription.topic_name
        self.get_logger().info(
            f"input: {message_type.__name__} on {self.input_topic}, QoS {qos.describe(input_qos)} "
            f"(a publisher must offer {input_qos.reliability.name.lower()} or better); "
            f"outputs: QoS {qos.describe(output_qos)}")
        backends = ", ".join(f"{stage}={name}" for stage, name in self.segmenter.backends.items())
        self.get_logger().info(f"pipeline backends: {backends}; device {config.device}")
        for problem in self.segmenter.problems:
            self.get_logger().warning(problem)

        self._diagnostics_timer = self.create_timer(self.settings.diagnostics_period, self._publish_diagnostics)
        self._worker = threading.Thread(target=self._work, name="segment_worker", daemon=True)
        self._worker.start()

    # ------------------------------------------------------------------ input side
    def _on_image(self, msg: Image | CompressedImage) -> None:
        """Never blocks: the newest frame replaces any frame the worker has not taken yet."""
        self._mailbox.put(_PendingFrame(msg, time.monotonic(), self._stats.on_received()))

    def _work(self) -> None:
        while (pending := self._mailbox.take()) is not None:
            self._process(pending)

    def _process(self, pending: _PendingFrame) -> None:
        msg = pending.msg
        try:
            image = self._to_rgb(msg)
            result = self.segmenter.feed(image, stamp_to_seconds(msg.header.stamp))
        except ImageConversionError as error:
            self._bad_input(error.kind, str(error))
            return
        except InvalidImageError as error:
            self._bad_input("invalid_image", str(error))
            return
        except Exception as error:  # noqa: BLE001 - a pipeline failure on one frame must not stop the node
            self._bad_input("pipeline_error", f"{type(error).__name__}: {error}", details=traceback.format_exc())
            return
        for event in result.events:
            self._stats.on_pipeline_event(event)
            self._log_throttled("pipeline_event", f"{event} (frame stamp {stamp_to_seconds(msg.header.stamp):.3f})")

        header = msg.header
        masks = masks_message(result, header, pending.frame_index, self._mailbox.dropped)
        latency = time.monotonic() - pending.received
        masks.end_to_end_latency = latency
        self._masks_pub.publish(masks)
        self._stats.on_processed(latency, result.processing_time)

        if self.settings.publish_tracks and self._tracks_pub.get_subscription_count() > 0:
            self._tracks_pub.publish(tracks_message(result.tracks, header))
        if self.settings.publish_overlay and self._overlay_pub.get_subscription_count() > 0:
            self._overlay_pub.publish(array_to_image(render_overlay(image, result.label_image), "rgb8", header))

    def _bad_input(self, kind: str, reason: str, details: str = "") -> None:
        self._stats.on_bad_input(kind, reason)
        self._log_throttled(kind, f"bad input on {self.input_topic} ({kind}), frame skipped: {reason}"
                            + (f"\n{details}" if details else ""))

    def _log_throttled(self, key: str, text: str) -> None:
        """At most one line per kind of problem every LOG_THROTTLE_SECONDS."""
        now = time.monotonic()
        if now - self._last_logged.get(key, -LOG_THROTTLE_SECONDS) >= LOG_THROTTLE_SECONDS:
            self._last_logged[key] = now
            self.get_logger().warning(text)

    # ------------------------------------------------------------------ diagnostics
    def _publish_diagnostics(self) -> None:
        snapshot = self._stats.snapshot(self._mailbox.dropped)
        status = diagnostic_status(f"{self.get_fully_qualified_name()}: motion segmentation", snapshot,
                                   self.input_topic, self.segmenter.backends, self.segmenter.problems)
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self._diagnostics_pub.publish(array)

    def destroy_node(self) -> None:
        self._mailbox.close()
        self._worker.join()
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    rclpy.init(args=args)
    try:
        node = SegmentNode()
    except Exception as error:  # noqa: BLE001 - report a configuration error in one line
        rclpy.logging.get_logger(NODE_NAME).fatal(f"cannot start: {error}")
        rclpy.try_shutdown()
        return 1
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
