"""segment_node: segments anything that moves in a camera stream and publishes instance masks.

Topics (relative names, so a namespace applies; the input is `image_topic`):
  in   <image_topic> (sensor_msgs/Image) or <image_topic>/compressed (sensor_msgs/CompressedImage);
       with `depth_topic`, also that depth image (sensor_msgs/Image, 16UC1 in mm or 32FC1 in m)
  out  moving_objects/masks (MovingObjectArray), moving_objects/tracks (TrackArray),
       moving_objects/overlay (sensor_msgs/Image, rgb8), /diagnostics (diagnostic_msgs/DiagnosticArray)

A managed (lifecycle) node: configure builds the pipeline and loads its models, activate starts
processing, deactivate stops it and releases the models, cleanup and shutdown release them too.
With `autostart` (the default) it configures and activates itself at start-up.

The subscription callback only puts the message in a one-slot mailbox; a worker thread runs the
pipeline on the newest frame, so frames that arrive while it is busy are dropped and counted, and
so are frames that arrive while the node is not active.
"""
from __future__ import annotations

import dataclasses
import gc
import sys
import threading
import time
import traceback
from dataclasses import dataclass

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import ExternalShutdownException
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from sensor_msgs.msg import CompressedImage, Image

from anymo_ros.msg import MovingObjectArray, TrackArray
from anymo_ros.pipeline import InvalidImageError, MotionSegmenter
from anymo_ros.ros import qos
from anymo_ros.ros.conversions import masks_message, stamp_to_seconds, tracks_message
from anymo_ros.ros.depth_pairing import DepthPairing
from anymo_ros.ros.diagnostics import NodeStatistics, diagnostic_status
from anymo_ros.ros.image_conversion import (
    ImageConversionError, array_to_image, compressed_to_rgb, depth_image_to_metres, image_to_rgb)
from anymo_ros.ros.mailbox import LatestMailbox
from anymo_ros.ros.overlay import render_overlay
from anymo_ros.ros.parameters import declare_parameters

NODE_NAME = "segment_node"
LOG_THROTTLE_SECONDS = 5.0
DEPTH_PATIENCE = 5      # images in a row without a depth pair before images go on without depth
DEPTH_SYNC_QUEUE = 10   # messages per topic the synchronizer keeps while looking for pairs


@dataclass(frozen=True)
class _PendingFrame:
    msg: Image | CompressedImage
    received: float      # time.monotonic() in the subscription callback
    frame_index: int
    depth: Image | None = None


class SegmentNode(LifecycleNode):
    def __init__(self, **node_options):
        super().__init__(NODE_NAME, **node_options)
        self.settings, self._config = declare_parameters(self)
        # Built on the first configure and kept across cleanup, so object ids are never reused in a run.
        self.segmenter: MotionSegmenter | None = None
        self._state = "unconfigured"
        self._active = False
        # Held by the worker for a whole frame: a transition that takes it waits for the frame in flight.
        self._gate = threading.Lock()
        self._stats = NodeStatistics()
        self._mailbox: LatestMailbox[_PendingFrame] = LatestMailbox()
        self._last_logged: dict[str, float] = {}
        self._problems: list[str] = []   # the node's own fallbacks, reported next to the pipeline's

        output_qos = qos.output_qos()
        # Lifecycle publishers publish only while the node is active; diagnostics also report the other states.
        self._masks_pub = self.create_lifecycle_publisher(MovingObjectArray, "moving_objects/masks", output_qos)
        self._tracks_pub = self.create_lifecycle_publisher(TrackArray, "moving_objects/tracks", output_qos)
        self._overlay_pub = self.create_lifecycle_publisher(Image, "moving_objects/overlay", output_qos)
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", output_qos)

        if self.settings.use_compressed:
            message_type, topic = CompressedImage, self.settings.image_topic.rstrip("/") + "/compressed"
            self._to_rgb = compressed_to_rgb
        else:
            message_type, topic = Image, self.settings.image_topic
            self._to_rgb = image_to_rgb
        # Subscribed in every state, so that frames arriving while not active are counted.
        input_qos = qos.input_qos(self.settings.reliable_input)
        self._depth_pairing: DepthPairing[_PendingFrame] | None = None
        self.depth_input = ""
        if not (self.settings.depth_topic and self._subscribe_with_depth(message_type, topic, input_qos)):
            self.subscription = self.create_subscription(message_type, topic, self._on_image, input_qos)
        self.input_topic = self.subscription.topic_name
        self.get_logger().info(
            f"input: {message_type.__name__} on {self.input_topic}, QoS {qos.describe(input_qos)} "
            f"(a publisher must offer {input_qos.reliability.name.lower()} or better); "
            f"depth: {self.depth_input or 'none'}; outputs: QoS {qos.describe(output_qos)}")
        self._check_depth_backend()
        for problem in self._problems:
            self.get_logger().warning(problem)

        self._diagnostics_timer = self.create_timer(self.settings.diagnostics_period, self._publish_diagnostics)
        self._worker = threading.Thread(target=self._work, name="segment_worker", daemon=True)
        self._worker.start()
        if self.settings.autostart:
            try:
                self._autostart()
            except RuntimeError:
                self.destroy_node()
                raise

    def _subscribe_with_depth(self, message_type, topic: str, input_qos) -> bool:
        """Camera and depth images paired by message_filters; False, with the reason noted, when
        message_filters is missing (then images go on without depth)."""
        depth_topic = self.settings.depth_topic
        try:
            import message_filters  # not on PyPI (it comes with a ROS 2 install): only this path needs it
        except ImportError as error:
            self.depth_input = f"{depth_topic}: not subscribed, message_filters is missing"
            self._problems.append(
                f"depth_topic '{depth_topic}' is set but message_filters cannot be imported ({error}); it comes "
                "with a ROS 2 installation (package message_filters), not from PyPI: processing images without depth")
            return False
        self._depth_pairing = DepthPairing(DEPTH_PATIENCE)
        image_filter = message_filters.Subscriber(self, message_type, topic, qos_profile=input_qos)
        depth_filter = message_filters.Subscriber(self, Image, depth_topic, qos_profile=input_qos)
        # Registered before the synchronizer, so every image is known before its pair can form.
        image_filter.registerCallback(self._on_image_awaiting_depth)
        synchronizer = message_filters.ApproximateTimeSynchronizer(
            [image_filter, depth_filter], DEPTH_SYNC_QUEUE, self.settings.depth_sync_slop)
        synchronizer.registerCallback(self._on_image_and_depth)
        self.subscription, self.depth_subscription = image_filter.sub, depth_filter.sub
        self.depth_input = (f"{self.depth_subscription.topic_name}, paired within {self.settings.depth_sync_slop:g} s; "
                            f"without a pair for {DEPTH_PATIENCE} images, images go on without depth")
        return True

    def _check_depth_backend(self) -> None:
        """Note a depth configuration that does not do what it seems to."""
        backend = self._config.depth.backend
        if backend == "sensor" and not self.settings.depth_topic:
            self._problems.append("pipeline.depth.backend is 'sensor' but depth_topic is empty: no depth image "
                                  "is subscribed, processing images without depth")
        elif backend == "depth_anything" and self._depth_pairing is not None:
            self._problems.append("depth_topic is set and pipeline.depth.backend is 'depth_anything': frames with a "
                                  "depth image use it, the model runs on the others; choose one depth source")

    def _autostart(self) -> None:
        for name, transition in (("configure", self.trigger_configure), ("activate", self.trigger_activate)):
            if transition() != TransitionCallbackReturn.SUCCESS:
                raise RuntimeError(f"autostart: {name} failed (see the log above)")

    # ------------------------------------------------------------------ lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            if self.segmenter is None:
                self.segmenter = MotionSegmenter(self._config)
                problems = self.segmenter.problems
            else:  # after cleanup: the same pipeline, its models loaded again
                problems = self.segmenter.load()
        except Exception as error:  # noqa: BLE001 - a failed transition says why and leaves the node unconfigured
            self.get_logger().error(f"configure failed: {type(error).__name__}: {error}")
            return TransitionCallbackReturn.FAILURE
        backends = ", ".join(f"{stage}={name}" for stage, name in self.segmenter.backends.items())
        self.get_logger().info(f"pipeline backends: {backends}; device {self._config.device}")
        for problem in problems:
            self.get_logger().warning(problem)
        self._state = "inactive"
        return super().on_configure(state)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        for problem in self.segmenter.load():  # models released by deactivate come back; no-op when loaded
            self.get_logger().warning(problem)
        result = super().on_activate(state)  # the output publishers, before the first frame goes out
        _freeze_long_lived_objects()
        self._active = True
        self._state = "active"
        return result

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_processing()
        self.segmenter.release()
        self.segmenter.reset("deactivated: the next activation starts a new stream")
        self._state = "inactive"
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.segmenter.release()
        self._state = "unconfigured"
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_processing()
        if self.segmenter is not None:
            self.segmenter.release()
        self._state = "finalized"
        return super().on_shutdown(state)

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        # rclpy gets here when a transition callback raised, and does not log the exception.
        self.get_logger().error(f"a lifecycle transition from '{state.label}' failed; models released, unconfigured")
        self._stop_processing()
        if self.segmenter is not None:
            self.segmenter.release()
        self._state = "unconfigured"
        return super().on_error(state)

    def _stop_processing(self) -> None:
        with self._gate:  # waits for the frame in flight, whose results still go out
            self._active = False
        gc.unfreeze()   # models released from here on can be collected
        # Frames still waiting belong to the stream that stops here.
        if self._mailbox.take(timeout=0) is not None:
            self._stats.on_not_active()
        if self._depth_pairing is not None:
            self._stats.on_not_active(self._depth_pairing.clear())

    # ------------------------------------------------------------------ input side
    def _new_frame(self, msg: Image | CompressedImage) -> _PendingFrame:
        return _PendingFrame(msg, time.monotonic(), self._stats.on_received())

    def _on_image(self, msg: Image | CompressedImage) -> None:
        """Never blocks: the newest frame replaces any frame the worker has not taken yet."""
        if not self._active:
            self._stats.on_not_active()
            return
        self._mailbox.put(self._new_frame(msg))

    def _on_image_awaiting_depth(self, msg: Image | CompressedImage) -> None:
        """With depth: the image waits for its pair, or goes on alone while depth does not come."""
        if not self._active:
            self._stats.on_not_active()
            return
        stamp = msg.header.stamp
        frame = self._depth_pairing.image((stamp.sec, stamp.nanosec), self._new_frame(msg))
        if frame is not None:
            self._mailbox.put(frame)

    def _on_image_and_depth(self, msg: Image | CompressedImage, depth: Image) -> None:
        stamp = msg.header.stamp
        frame = self._depth_pairing.paired((stamp.sec, stamp.nanosec))
        if frame is not None:
            self._mailbox.put(dataclasses.replace(frame, depth=depth))

    def _dropped(self) -> int:
        """Frames not processed for lack of time: replaced in the mailbox or given up waiting for depth."""
        return self._mailbox.dropped + (self._depth_pairing.given_up if self._depth_pairing else 0)

    # ------------------------------------------------------------------ worker
    def _work(self) -> None:
        while (pending := self._mailbox.take()) is not None:
            with self._gate:
                if self._active:
                    self._process(pending)
                else:  # arrived just before a deactivation
                    self._stats.on_not_active()

    def _process(self, pending: _PendingFrame) -> None:
        msg = pending.msg
        try:
            image = self._to_rgb(msg)
            depth = None if pending.depth is None else self._depth_metres(pending.depth, image)
            result = self.segmenter.feed(image, stamp_to_seconds(msg.header.stamp), depth=depth)
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
        masks = masks_message(result, header, pending.frame_index, self._dropped())
        latency = time.monotonic() - pending.received
        masks.end_to_end_latency = latency
        self._masks_pub.publish(masks)
        self._stats.on_processed(latency, result.processing_time, with_depth=depth is not None)

        if self.settings.publish_tracks and self._tracks_pub.get_subscription_count() > 0:
            self._tracks_pub.publish(tracks_message(result.tracks, header))
        if self.settings.publish_overlay and self._overlay_pub.get_subscription_count() > 0:
            self._overlay_pub.publish(array_to_image(render_overlay(image, result.label_image), "rgb8", header))

    def _depth_metres(self, msg: Image, image: np.ndarray) -> np.ndarray | None:
        """The paired depth image in metres at the frame's size; None (logged, counted) when unusable."""
        try:
            metres, note = depth_image_to_metres(msg, (image.shape[1], image.shape[0]))
        except ImageConversionError as error:
            self._stats.on_bad_depth(error.kind, str(error))
            self._log_throttled(f"depth_{error.kind}", f"bad depth on {self.depth_subscription.topic_name} "
                                f"({error.kind}), frame processed without depth: {error}")
            return None
        if note:
            self._log_throttled("depth_note", f"depth on {self.depth_subscription.topic_name}: {note}")
        return metres

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
        given_up = self._depth_pairing.given_up if self._depth_pairing else 0
        snapshot = self._stats.snapshot(self._mailbox.dropped + given_up, given_up)
        segmenter = self.segmenter
        backends = segmenter.backends if segmenter is not None else {}
        fallbacks = self._problems + (segmenter.problems if segmenter is not None else [])
        status = diagnostic_status(f"{self.get_fully_qualified_name()}: motion segmentation", snapshot,
                                   self.input_topic, backends, fallbacks, self._state, self.depth_input)
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self._diagnostics_pub.publish(array)

    def destroy_node(self) -> None:
        self._mailbox.close()
        self._worker.join()
        gc.unfreeze()
        if self.segmenter is not None:
            self.segmenter.release()
        super().destroy_node()


def _freeze_long_lived_objects() -> None:
    """Take what exists at activation out of the garbage collector's full passes.

    A full pass walks every tracked object; with torch, the models and rclpy loaded it stalls
    the frame it lands in by about 100 ms, a few times a minute. What exists at activation
    (modules, models, ROS entities) lives as long as the node. Garbage is collected first, so
    none is frozen; deactivation unfreezes, so released models can be collected again.
    """
    gc.collect()
    gc.freeze()


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
