"""anymo-demo: stream a synthetic video through the real segment_node over DDS.

Renders a short clip of objects moving over a textured background seen by a moving camera,
starts the installed node as its own process, publishes the frames in real time as
sensor_msgs/Image, records /moving_objects/masks and /moving_objects/overlay, writes the
overlay video to the output directory and prints a one-line summary.
Needs the built workspace: `bash scripts/demo.sh` sets it up and runs this.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import rclpy
from ament_index_python.packages import PackageNotFoundError, get_package_prefix
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import SingleThreadedExecutor
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from anymo_ros.msg import MovingObjectArray
from anymo_ros.ros.conversions import seconds_to_stamp
from anymo_ros.ros.image_conversion import array_to_image, image_to_array, image_to_rgb
from anymo_ros.ros.qos import input_qos, output_qos
from anymo_ros.ros.spinning import ExecutorThread
from anymo_ros.tools.metrics import ids_per_object, jaccard
from anymo_ros.tools.synthetic import render_clip

DEMO_NAMESPACE = "/anymo_demo"
WARMUP_FRAMES = 8  # frames the window needs before masks are scored
STARTUP_TIMEOUT = 30.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="anymo-demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=90, help="clip length (default 90)")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--objects", type=int, default=2, help="independently moving objects (default 2)")
    parser.add_argument("--camera-motion", default="pan", help="static, pan, zoom, shake or orbit (default pan)")
    parser.add_argument("--fps", type=float, default=15.0, help="publishing rate (default 15)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("out"), help="output directory (default out/)")
    return parser.parse_args(argv)


class _Recorder:
    """Collects the node's outputs from the executor thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.masks: list[MovingObjectArray] = []
        self.overlays: dict[tuple[int, int], np.ndarray] = {}
        self.node_is_up = threading.Event()

    def on_masks(self, msg: MovingObjectArray) -> None:
        with self.lock:
            self.masks.append(msg)

    def on_overlay(self, msg: Image) -> None:
        with self.lock:
            self.overlays[_stamp_key(msg.header)] = image_to_rgb(msg)

    def on_diagnostics(self, msg: DiagnosticArray) -> None:
        if any(status.name.startswith(f"{DEMO_NAMESPACE}/segment_node") for status in msg.status):
            self.node_is_up.set()

    def has_result_for(self, header: Header) -> bool:
        with self.lock:
            return any(m.header == header for m in self.masks)


def _stamp_key(header: Header) -> tuple[int, int]:
    return header.stamp.sec, header.stamp.nanosec


def node_executable() -> Path:
    try:
        return Path(get_package_prefix("anymo_ros")) / "lib" / "anymo_ros" / "segment_node"
    except PackageNotFoundError:
        sys.exit("anymo-demo: anymo_ros is not built; run: bash scripts/demo.sh")


def stream_clip(clip, process: subprocess.Popen, recorder: _Recorder) -> tuple[list[Header], float]:
    """Publish the clip in real time once the node is up; the headers sent and the seconds it took."""
    node = rclpy.create_node("anymo_demo", namespace=DEMO_NAMESPACE)
    node.create_subscription(MovingObjectArray, "moving_objects/masks", recorder.on_masks, output_qos())
    node.create_subscription(Image, "moving_objects/overlay", recorder.on_overlay, output_qos())
    node.create_subscription(DiagnosticArray, "/diagnostics", recorder.on_diagnostics, output_qos())
    publisher = node.create_publisher(Image, f"{DEMO_NAMESPACE}/camera/image_raw", input_qos(reliable=False))
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spinner = ExecutorThread(executor, "demo_executor").start()
    try:
        # The node is up once its diagnostics arrive; by then its subscription has matched too.
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not recorder.node_is_up.wait(0.1) or publisher.get_subscription_count() == 0:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("segment_node did not come up")
        start_stamp = node.get_clock().now().nanoseconds * 1e-9
        headers = [Header(stamp=seconds_to_stamp(start_stamp + stamp), frame_id="demo_camera")
                   for stamp in clip.stamps]
        started = time.monotonic()
        for index, (frame, header) in enumerate(zip(clip.frames, headers)):
            time.sleep(max(0.0, started + index / clip.fps - time.monotonic()))  # real time
            publisher.publish(array_to_image(frame, "rgb8", header))
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and not recorder.has_result_for(headers[-1]):
            time.sleep(0.05)
        elapsed = time.monotonic() - started
        time.sleep(0.3)  # the overlay follows the masks
        return headers, elapsed
    finally:
        spinner.stop()
        node.destroy_node()


def write_video(path: Path, frames: list[np.ndarray], fps: float) -> Path:
    """mp4 (mp4v) where OpenCV can write it, else Motion-JPEG avi; returns the file written."""
    height, width = frames[0].shape[:2]
    for target, codec in ((path.with_suffix(".mp4"), "mp4v"), (path.with_suffix(".avi"), "MJPG")):
        writer = cv2.VideoWriter(str(target), cv2.VideoWriter_fourcc(*codec), fps, (width, height))
        if writer.isOpened():
            for frame in frames:
                writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
            writer.release()
            return target
    raise RuntimeError("OpenCV can write neither mp4v nor MJPG video")


def summary(args: argparse.Namespace, clip, headers: list[Header], masks: list[MovingObjectArray],
            elapsed: float, video: Path) -> str:
    index_of = {_stamp_key(header): index for index, header in enumerate(headers)}
    frame_indices = [index_of[_stamp_key(m.header)] for m in masks]
    scored = [(image_to_array(m.labels), clip.masks[index])
              for m, index in zip(masks, frame_indices) if index >= WARMUP_FRAMES]
    ious = [jaccard(labels > 0, truth > 0) for labels, truth in scored]
    per_object = ids_per_object(*zip(*scored)) if scored else {}
    ids = sorted({o.id for m in masks for o in m.objects})
    latencies = np.array([m.end_to_end_latency for m in masks]) * 1e3
    pipeline_fps = 1.0 / np.mean([m.processing_latency for m in masks])
    last = max(masks, key=lambda m: m.frame_index)
    return (f"demo: {len(clip.frames)} frames at {args.width}x{args.height} sent, {last.frame_index + 1} received, "
            f"{len(masks)} segmented, {last.dropped_frames} dropped | "
            f"{args.objects} moving objects, ids seen {ids}; after {WARMUP_FRAMES} frames: ids per object "
            f"{per_object}, mean IoU {np.mean(ious) if ious else float('nan'):.2f} | "
            f"{len(masks) / elapsed:.1f} FPS out at {clip.fps:g} FPS in, pipeline {pipeline_fps:.1f} FPS | "
            f"latency p50 {np.percentile(latencies, 50):.0f} ms, p95 {np.percentile(latencies, 95):.0f} ms | "
            f"video {video}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Only this process and the node talk; keep discovery on this machine.
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    args.out.mkdir(parents=True, exist_ok=True)
    clip = render_clip(seed=args.seed, num_frames=args.frames, width=args.width, height=args.height,
                       num_objects=args.objects, camera_motion=args.camera_motion, fps=args.fps)
    node_log_path = args.out / "segment_node.log"
    with open(node_log_path, "w") as node_log:
        process = subprocess.Popen(
            [str(node_executable()), "--ros-args", "-r", f"__ns:={DEMO_NAMESPACE}",
             "-p", f"image_topic:={DEMO_NAMESPACE}/camera/image_raw"],
            stdout=node_log, stderr=subprocess.STDOUT)
    recorder = _Recorder()
    rclpy.init()
    try:
        headers, elapsed = stream_clip(clip, process, recorder)
    except RuntimeError as error:
        print(f"anymo-demo: {error}; see {node_log_path}", file=sys.stderr)
        return 1
    finally:
        rclpy.try_shutdown()
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()

    with recorder.lock:
        masks = sorted(recorder.masks, key=lambda m: m.frame_index)
        overlay_frames = [recorder.overlays[key] for key in map(_stamp_key, (m.header for m in masks))
                          if key in recorder.overlays]
    if not masks or not overlay_frames:
        print(f"anymo-demo: no results from segment_node; see {node_log_path}", file=sys.stderr)
        return 1
    video = write_video(args.out / "demo_overlay", overlay_frames, clip.fps)
    print(summary(args, clip, headers, masks, elapsed, video))
    return 0 if process.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
