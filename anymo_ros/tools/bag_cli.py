"""anymo-bag: camera data to rosbag2, replay through the running segment_node, results out of bags.

    anymo-bag from-frames DIR BAG        image folder -> bag of sensor_msgs/Image
    anymo-bag from-video FILE BAG        video file -> bag of sensor_msgs/Image
    anymo-bag replay BAG --out OUTBAG    the bag's images into the running node over DDS; its
                                         /moving_objects/masks recorded into OUTBAG
    anymo-bag export OUTBAG DIR          result bag -> 16-bit label PNGs and an overlay video

Bags are read and written with rosbags; our message types are registered from the msg/*.msg
text, so every command except replay works without ROS. Frame i of a converted sequence is
stamped ``start_time + i / fps``, the stamps anymo-eval gives the same frames, which is how
`anymo-eval bag` pairs recorded results with ground truth.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import functools
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

import cv2
import numpy as np
from rosbags.rosbag2 import Reader, ReaderError, StoragePlugin, Writer, WriterError
from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore
from tqdm import tqdm

from anymo_ros.ros.image_conversion import LAYOUTS, compressed_to_rgb, image_to_array, image_to_rgb
from anymo_ros.ros.overlay import render_overlay
from anymo_ros.tools.datasets import (
    DEFAULT_FPS, FRAME_SUFFIXES, DatasetError, Sequence, _natural_key, discover_sequences)

DEFAULT_IMAGE_TOPIC = "/camera/image_raw"
DEFAULT_MASKS_TOPIC = "/moving_objects/masks"
GROUND_TRUTH_SUFFIX = "/ground_truth"   # from-frames --masks: <topic>/ground_truth, mono8, 255 = moving
IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_TYPE = "sensor_msgs/msg/CompressedImage"
MASKS_TYPE = "anymo_ros/msg/MovingObjectArray"
STORAGES = {"sqlite3": StoragePlugin.SQLITE3, "mcap": StoragePlugin.MCAP}
BAG_VERSION = 9          # rosbag2 format of Jazzy and Kilted
FRAME_ENCODINGS = ("rgb8", "bgr8", "mono8")
REPLAY_TIMEOUT = 5.0     # s without the awaited output before a frame counts as dropped
DISCOVERY_TIMEOUT = 20.0
# Matching is observable only from our side; the node's side of the match follows shortly after,
# and a frame published before it would be lost.
DISCOVERY_SETTLE = 0.5

# encodings frames can be stored in, and the conversion from RGB to each (None: already RGB)
_FROM_RGB = {"rgb8": None, "bgr8": cv2.COLOR_RGB2BGR, "mono8": cv2.COLOR_RGB2GRAY}


class BagError(Exception):
    """A bag, frame or video cannot be converted, read or replayed; the message names the file."""


# --- message types and images --------------------------------------------------------------------


def _message_definition_dir() -> Path:
    """msg/ of the source tree (also behind a symlink install), else the installed package's share/."""
    source = Path(__file__).resolve().parents[2] / "msg"
    if source.is_dir():
        return source
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
        return Path(get_package_share_directory("anymo_ros")) / "msg"
    except (ImportError, PackageNotFoundError) as error:
        raise BagError(f"cannot find the anymo_ros message definitions (msg/*.msg): {error}") from error


@functools.cache
def bag_typestore() -> Typestore:
    """ROS 2 Kilted types plus ours, read from msg/*.msg (no built messages needed)."""
    store = get_typestore(Stores.ROS2_KILTED)
    types = {}
    for path in sorted(_message_definition_dir().glob("*.msg")):
        types.update(get_types_from_msg(path.read_text(), f"anymo_ros/msg/{path.stem}"))
    store.register(types)
    return store


def frame_stamp_ns(index: int, fps: float, start_time: float = 0.0) -> int:
    """Stamp of frame ``index`` of a converted sequence, in nanoseconds."""
    return round(start_time * 1e9) + round(index * 1e9 / fps)


def _stamp_ns(stamp) -> int:
    return stamp.sec * 1_000_000_000 + stamp.nanosec


def format_stamp(stamp_ns: int) -> str:
    """Seconds with every nanosecond: '12.000000000'."""
    return f"{stamp_ns // 1_000_000_000}.{stamp_ns % 1_000_000_000:09d}"


def image_message(pixels: np.ndarray, encoding: str, stamp_ns: int, frame_id: str):
    """A rosbags sensor_msgs/Image of ``pixels`` ((H, W) or (H, W, C); uint16 for mono16, else
    uint8), unpadded and little-endian."""
    channel_type, channels = LAYOUTS[encoding]
    if pixels.dtype != channel_type or pixels.shape[2:] != ((channels,) if channels > 1 else ()):
        raise ValueError(f"cannot store {pixels.dtype} pixels of shape {pixels.shape} as {encoding}")
    types = bag_typestore().types
    height, width = pixels.shape[:2]
    header = types["std_msgs/msg/Header"](
        stamp=types["builtin_interfaces/msg/Time"](sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000),
        frame_id=frame_id)
    data = np.ascontiguousarray(pixels, pixels.dtype.newbyteorder("<")).view(np.uint8).reshape(-1)
    return types[IMAGE_TYPE](header=header, height=height, width=width, encoding=encoding, is_bigendian=0,
                             step=width * channels * pixels.itemsize, data=data)


# --- reading bags ---------------------------------------------------------------------------------


class BagRecord(NamedTuple):
    log_time: int   # ns, the bag's receive/record time
    raw: bytes      # serialized (CDR) message
    msg: object     # the deserialized rosbags message


class TopicReader:
    """The messages of one topic of a bag, checked on opening: the topic exists, has an expected
    type and is not empty (BagError naming the bag otherwise)."""

    def __init__(self, bag: Path, topic: str, msgtypes: tuple[str, ...]):
        self.bag, self.topic = Path(bag), topic
        try:
            self._reader = Reader(self.bag)
            self._reader.open()
        except (FileNotFoundError, ReaderError) as error:
            raise BagError(f"cannot read bag {self.bag}: {error}") from error
        self._connections = [c for c in self._reader.connections if c.topic == topic]
        try:
            if not self._connections:
                topics = ", ".join(sorted({c.topic for c in self._reader.connections})) or "none"
                raise BagError(f"bag {self.bag} has no topic {topic} (topics: {topics})")
            found = {c.msgtype for c in self._connections}
            if len(found) > 1 or not found <= set(msgtypes):
                raise BagError(f"topic {topic} in bag {self.bag} has type {', '.join(sorted(found))}; "
                               f"expected {' or '.join(msgtypes)}")
            self.msgtype = found.pop()
            self.count = sum(c.msgcount for c in self._connections)
            if self.count == 0:
                raise BagError(f"bag {self.bag} has no messages on {topic}")
        except BagError:
            self._reader.close()
            raise

    def __iter__(self) -> Iterator[BagRecord]:
        store = bag_typestore()
        for _, log_time, raw in self._reader.messages(self._connections):
            yield BagRecord(log_time, raw, store.deserialize_cdr(raw, self.msgtype))

    def describe(self, msg) -> str:
        return f"{self.topic} message at stamp {format_stamp(_stamp_ns(msg.header.stamp))} s in {self.bag}"

    def close(self) -> None:
        self._reader.close()

    def __enter__(self) -> "TopicReader":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def read_images(bag: Path, topic: str = DEFAULT_IMAGE_TOPIC) -> Iterator[tuple[int, np.ndarray]]:
    """(header stamp in ns, RGB uint8 image) of every Image or CompressedImage on ``topic``."""
    with TopicReader(bag, topic, (IMAGE_TYPE, COMPRESSED_TYPE)) as reader:
        for record in reader:
            try:
                rgb = compressed_to_rgb(record.msg) if reader.msgtype == COMPRESSED_TYPE else image_to_rgb(record.msg)
            except ValueError as error:
                raise BagError(f"{reader.describe(record.msg)}: {error}") from error
            yield _stamp_ns(record.msg.header.stamp), rgb


@dataclass(frozen=True)
class RecordedResult:
    """One /moving_objects/masks message of a result bag."""

    stamp_ns: int            # the input frame's stamp
    labels: np.ndarray       # (H, W) uint16, 0 = static, k = object id k
    processing_time: float   # s, the node's pipeline time for this frame


def read_results(bag: Path, topic: str = DEFAULT_MASKS_TOPIC) -> Iterator[RecordedResult]:
    """Every segmentation result on ``topic`` of a result bag, in bag order."""
    with TopicReader(bag, topic, (MASKS_TYPE,)) as reader:
        for record in reader:
            msg = record.msg
            try:
                if msg.labels.encoding != "mono16":
                    raise ValueError(f"labels have encoding '{msg.labels.encoding}', expected mono16")
                labels = image_to_array(msg.labels)
            except ValueError as error:
                raise BagError(f"{reader.describe(msg)}: {error}") from error
            yield RecordedResult(_stamp_ns(msg.header.stamp), labels, float(msg.processing_latency))


# --- writing image bags ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageBagOptions:
    topic: str = DEFAULT_IMAGE_TOPIC
    fps: float | None = DEFAULT_FPS   # None (from-video only): the video's frame rate
    start_time: float = 0.0      # s, stamp of the first frame
    encoding: str = "rgb8"
    frame_id: str = "camera"
    storage: str = "sqlite3"


def _new_writer(bag: Path, storage: str) -> Writer:
    try:
        return Writer(bag, version=BAG_VERSION, storage_plugin=STORAGES[storage])
    except WriterError as error:
        raise BagError(f"cannot create bag {bag}: {error}") from error


def write_image_bag(bag: Path, frames: Iterable[tuple[np.ndarray, np.ndarray | None]], options: ImageBagOptions,
                    with_masks: bool = False, total: int | None = None) -> int:
    """Write (RGB frame, ground-truth foreground or None) pairs as Images stamped by frame rate;
    the number written. A failed or interrupted conversion leaves no bag behind."""
    store = bag_typestore()
    writer = _new_writer(bag, options.storage)
    try:
        writer.open()
    except WriterError as error:
        raise BagError(f"cannot create bag {bag}: {error}") from error
    count = 0
    try:
        image_connection = writer.add_connection(options.topic, IMAGE_TYPE, typestore=store)
        mask_connection = (writer.add_connection(options.topic + GROUND_TRUTH_SUFFIX, IMAGE_TYPE, typestore=store)
                           if with_masks else None)
        conversion = _FROM_RGB[options.encoding]
        for rgb, mask in tqdm(frames, total=total, desc=bag.name, unit="frame", disable=None):
            stamp = frame_stamp_ns(count, options.fps, options.start_time)
            pixels = rgb if conversion is None else cv2.cvtColor(rgb, conversion)
            image = image_message(pixels, options.encoding, stamp, options.frame_id)
            writer.write(image_connection, stamp, store.serialize_cdr(image, IMAGE_TYPE))
            if mask_connection is not None:
                mask_image = image_message(mask.astype(np.uint8) * 255, "mono8", stamp, options.frame_id)
                writer.write(mask_connection, stamp, store.serialize_cdr(mask_image, IMAGE_TYPE))
            count += 1
    except BaseException:
        writer.abort()
        shutil.rmtree(bag, ignore_errors=True)   # the writer refuses existing paths: the folder is ours
        raise
    writer.close()
    return count


def frame_sequence(folder: Path, name: str | None = None, fps: float = DEFAULT_FPS,
                   with_masks: bool = False) -> Sequence:
    """The one sequence to convert: ``folder`` itself when it holds images, else the sequence
    `discover_sequences` finds there (``name`` chooses among several)."""
    folder = Path(folder)
    images = sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in FRAME_SUFFIXES),
                    key=_natural_key) if folder.is_dir() else []
    if images:
        if with_masks or name:
            raise BagError(f"{folder} is a plain image folder: one sequence, without ground-truth masks "
                           "(--masks and --sequence apply to dataset folders)")
        return Sequence(folder.name, images, [None] * len(images), fps)
    sequences = discover_sequences(folder, [name] if name else None, fps=fps, sparse_masks=not with_masks)
    if len(sequences) > 1:
        raise BagError(f"{folder} holds {len(sequences)} sequences ({', '.join(s.name for s in sequences)}); "
                       "a bag holds one: choose it with --sequence NAME")
    return sequences[0]


def frames_to_bag(folder: Path, bag: Path, options: ImageBagOptions, sequence_name: str | None = None,
                  with_masks: bool = False) -> int:
    """from-frames: one sequence of an image folder -> bag; the number of frames."""
    sequence = frame_sequence(folder, sequence_name, options.fps, with_masks)
    frames = ((sequence.frame(i), sequence.mask(i) if with_masks else None) for i in range(len(sequence)))
    return write_image_bag(bag, frames, options, with_masks, total=len(sequence))


def video_to_bag(video: Path, bag: Path, options: ImageBagOptions) -> int:
    """from-video: every frame of a video -> bag, stamped at the video's frame rate unless
    ``options.fps`` is set; the number of frames."""
    if not Path(video).is_file():
        raise BagError(f"video {video} does not exist")
    capture = cv2.VideoCapture(str(video))
    try:
        if not capture.isOpened():
            raise BagError(f"cannot open video {video} (not a format OpenCV can decode)")
        video_fps = capture.get(cv2.CAP_PROP_FPS)
        fps = options.fps or video_fps
        if not fps or not np.isfinite(fps) or fps <= 0:
            raise BagError(f"video {video} reports no frame rate; set one with --fps")
        ok, first = capture.read()
        if not ok:
            raise BagError(f"no frame could be read from video {video}")

        def frames() -> Iterator[tuple[np.ndarray, None]]:
            ok, bgr = True, first
            while ok:
                yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), None
                ok, bgr = capture.read()

        total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
        return write_image_bag(bag, frames(), dataclasses.replace(options, fps=fps), total=total)
    finally:
        capture.release()


# --- replay through the node -----------------------------------------------------------------------


@dataclass
class ReplaySummary:
    """Every frame of the input topic is sent or, after an interruption, not sent; every frame sent
    has an output in the result bag or counts as dropped."""

    frames_total: int
    sent: int = 0
    timed_out: int = 0                 # lockstep frames given up on; a later output still counts
    ignored_outputs: int = 0           # outputs for stamps this replay did not send
    latencies: list[float] = field(default_factory=list)   # s, publish -> output, per output
    interrupted: bool = False

    @property
    def outputs(self) -> int:
        return len(self.latencies)

    @property
    def dropped(self) -> int:
        return self.sent - self.outputs

    def lines(self) -> list[str]:
        lines = [f"{self.sent} frames in, {self.outputs} outputs, {self.dropped} dropped"
                 + (f" ({self.timed_out} timed out)" if self.timed_out else "")]
        if self.interrupted:
            lines.append(f"interrupted: {self.frames_total - self.sent} of {self.frames_total} frames not sent")
        if self.latencies:
            milliseconds = 1000.0 * np.asarray(self.latencies)
            lines.append("latency publish -> output: " + ", ".join(
                f"{name} {value:.1f} ms" for name, value in (
                    ("mean", milliseconds.mean()), ("p50", np.percentile(milliseconds, 50)),
                    ("p95", np.percentile(milliseconds, 95)), ("max", milliseconds.max()))))
        if self.ignored_outputs:
            lines.append(f"{self.ignored_outputs} outputs for frames this replay did not send were ignored")
        return lines


class _ResultRecorder:
    """Owns the result bag. The executor thread hands over the node's output for every frame we
    sent; the publishing thread writes them (SQLite connections belong to the thread that opened
    them) and waits for outputs by stamp."""

    def __init__(self, writer: Writer, masks_topic: str, serialize, summary: ReplaySummary):
        self._writer, self._masks_topic, self._serialize = writer, masks_topic, serialize
        self._summary = summary
        self._connection = None
        self._condition = threading.Condition()
        self._sent_at: dict[int, float] = {}     # stamp ns -> time.monotonic() of publishing
        self._answered: set[int] = set()
        self._unwritten: collections.deque[tuple[int, bytes]] = collections.deque()
        self._last_output = 0.0

    def open(self) -> None:
        self._writer.open()
        self._connection = self._writer.add_connection(self._masks_topic, MASKS_TYPE, typestore=bag_typestore())

    def close(self, description: dict[str, object]) -> None:
        """After the executor stopped; ``description`` goes into the bag's metadata with the counts."""
        self.write_received()
        summary = self._summary
        counts = {"frames_in": summary.sent, "outputs": summary.outputs, "dropped": summary.dropped,
                  "interrupted": summary.interrupted}
        for key, value in {**description, **counts}.items():
            self._writer.set_custom_data(f"anymo_ros.replay.{key}", str(value))
        self._writer.close()

    def expect(self, stamp_ns: int) -> None:
        """Call before publishing: an in-process node can answer before publish() returns."""
        with self._condition:
            self._sent_at[stamp_ns] = time.monotonic()

    def on_output(self, msg) -> None:
        """Subscription callback (executor thread)."""
        received = time.monotonic()
        stamp = _stamp_ns(msg.header.stamp)
        with self._condition:
            if stamp not in self._sent_at or stamp in self._answered:
                self._summary.ignored_outputs += 1
                return
            self._answered.add(stamp)
            self._unwritten.append((stamp, self._serialize(msg)))
            self._summary.latencies.append(received - self._sent_at[stamp])
            self._last_output = received
            self._condition.notify_all()

    def write_received(self) -> None:
        """Write the outputs received so far (publishing thread)."""
        while True:
            with self._condition:
                if not self._unwritten:
                    return
                stamp, raw = self._unwritten[0]
            # Log time = the input's stamp, so the result bag lines up with the input bag.
            self._writer.write(self._connection, stamp, raw)
            with self._condition:
                self._unwritten.popleft()

    def wait_for(self, stamp_ns: int, timeout: float) -> bool:
        with self._condition:
            answered = self._condition.wait_for(lambda: stamp_ns in self._answered, timeout)
        self.write_received()
        return answered

    def wait_for_all(self, idle_timeout: float) -> None:
        """Until every frame sent has its output, or no output came for ``idle_timeout`` s."""
        started = time.monotonic()
        with self._condition:
            while len(self._answered) < len(self._sent_at):
                remaining = max(started, self._last_output) + idle_timeout - time.monotonic()
                if remaining <= 0:
                    break
                self._condition.wait(remaining)
        self.write_received()


def replay_bag(bag: Path, out_bag: Path, topic: str = DEFAULT_IMAGE_TOPIC, publish_topic: str | None = None,
               masks_topic: str = DEFAULT_MASKS_TOPIC, rate: float | None = 1.0, timeout: float = REPLAY_TIMEOUT,
               best_effort: bool = False, storage: str = "sqlite3",
               discovery_timeout: float = DISCOVERY_TIMEOUT) -> ReplaySummary:
    """Publish the images of ``topic`` to the running node and record its outputs into ``out_bag``.

    ``rate`` plays at the bag's timing scaled by it; None plays as fast as possible in lockstep:
    each frame once the previous one's output arrived, or after ``timeout`` s (the frame then counts
    as dropped). The publisher is reliable (it matches a best-effort or reliable node), or best
    effort with ``best_effort``. Ctrl-C stops publishing; the result bag keeps what arrived.
    """
    try:
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.serialization import serialize_message
        from sensor_msgs.msg import CompressedImage, Image

        from anymo_ros.msg import MovingObjectArray
        from anymo_ros.ros.qos import describe, input_qos, output_qos
        from anymo_ros.ros.spinning import ExecutorThread
    except ImportError as error:
        raise BagError(f"replay needs ROS 2 and the built anymo_ros messages ({error}); "
                       "run: bash scripts/setup_env.sh && source scripts/env.sh") from error

    writer = _new_writer(out_bag, storage)   # fails now, not after discovery, if out_bag exists
    with TopicReader(bag, topic, (IMAGE_TYPE, COMPRESSED_TYPE)) as frames, contextlib.ExitStack() as cleanup:
        summary = ReplaySummary(frames.count)
        recorder = _ResultRecorder(writer, masks_topic, serialize_message, summary)
        # A context of its own, without signal handlers: Ctrl-C is a KeyboardInterrupt, and the
        # replay can share a process with other ROS code.
        context = Context()
        rclpy.init(args=[], context=context)
        cleanup.callback(context.try_shutdown)
        node = rclpy.create_node("anymo_bag_replay", context=context)
        cleanup.callback(node.destroy_node)

        publish_qos = input_qos(reliable=not best_effort)
        message_class = {IMAGE_TYPE: Image, COMPRESSED_TYPE: CompressedImage}[frames.msgtype]
        publisher = node.create_publisher(message_class, publish_topic or topic, publish_qos)
        subscription = node.create_subscription(MovingObjectArray, masks_topic, recorder.on_output, output_qos())
        node.get_logger().info(
            f"publishing {frames.msgtype} from {bag} {topic} on {publisher.topic_name} with QoS "
            f"{describe(publish_qos)}" + ("" if best_effort else " (matches a node with reliable_input true or false)")
            + f"; recording {subscription.topic_name} with QoS {describe(output_qos())}")
        _wait_for_node(publisher, subscription, discovery_timeout, best_effort)

        recorder.open()
        cleanup.callback(recorder.close, {"input_bag": bag, "input_topic": topic})
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        spinner = ExecutorThread(executor, "replay_executor").start()
        cleanup.callback(spinner.stop)   # first: it waits for a running callback, then nothing writes
        try:
            _publish_frames(frames, publisher, recorder, summary, rate, timeout, node.get_logger())
            recorder.wait_for_all(timeout)
        except KeyboardInterrupt:
            summary.interrupted = True
    return summary


def _wait_for_node(publisher, subscription, timeout: float, best_effort: bool) -> None:
    deadline = time.monotonic() + timeout
    while publisher.get_subscription_count() == 0 or subscription.get_publisher_count() == 0:
        if time.monotonic() > deadline:
            if publisher.get_subscription_count() == 0:
                hint = " (a node with reliable_input:=true ignores a best-effort publisher)" if best_effort else ""
                missing = f"nothing subscribes to {publisher.topic_name}{hint}"
            else:
                missing = f"nothing publishes {subscription.topic_name}"
            raise BagError(f"no segment_node found after {timeout:g} s: {missing}; is it running, with "
                           "image_topic set to the published topic?")
        time.sleep(0.05)
    time.sleep(DISCOVERY_SETTLE)


def _publish_frames(frames: TopicReader, publisher, recorder: _ResultRecorder, summary: ReplaySummary,
                    rate: float | None, timeout: float, logger) -> None:
    started, first_log_time = time.monotonic(), None
    for index, record in enumerate(tqdm(frames, total=frames.count, desc="replay", unit="frame", disable=None)):
        stamp = _stamp_ns(record.msg.header.stamp)
        if rate is not None:
            first_log_time = record.log_time if first_log_time is None else first_log_time
            time.sleep(max(0.0, started + (record.log_time - first_log_time) * 1e-9 / rate - time.monotonic()))
        recorder.expect(stamp)
        publisher.publish(record.raw)   # the bag's bytes as they are
        summary.sent += 1
        recorder.write_received()
        if rate is None and not recorder.wait_for(stamp, timeout):
            summary.timed_out += 1
            logger.warning(f"frame {index} (stamp {format_stamp(stamp)} s): no output within {timeout:g} s; "
                           "counted as dropped, moving on")


# --- export ---------------------------------------------------------------------------------------


def export_results(result_bag: Path, out_dir: Path, masks_topic: str = DEFAULT_MASKS_TOPIC,
                   images_bag: Path | None = None, image_topic: str = DEFAULT_IMAGE_TOPIC,
                   fps: float | None = None) -> tuple[int, Path]:
    """Write ``out_dir/labels/<index>_<stamp>.png`` (16-bit labels, index = position in the result
    bag) and an overlay video: the objects drawn over the images of ``images_bag`` (matched by
    stamp), or over black without it. Returns the number of results and the video's path."""
    label_dir = Path(out_dir) / "labels"
    label_dir.mkdir(parents=True, exist_ok=True)
    stamps = []
    for index, result in enumerate(tqdm(read_results(result_bag, masks_topic), desc="labels", unit="frame",
                                        disable=None)):
        stamp = result.stamp_ns
        path = label_dir / f"{index:06d}_{format_stamp(stamp)}.png"
        if not cv2.imwrite(str(path), result.labels):
            raise BagError(f"cannot write {path}")
        stamps.append(stamp)
    if fps is None:
        # The outputs' usual spacing: dropped frames do not change it.
        interval = float(np.median(np.diff(stamps))) if len(stamps) > 1 else 0.0
        fps = 1e9 / interval if interval > 0 else DEFAULT_FPS

    images = read_images(images_bag, image_topic) if images_bag else None
    video = None
    try:
        for result in tqdm(read_results(result_bag, masks_topic), total=len(stamps), desc="video", unit="frame",
                           disable=None):
            if images is None:
                background = np.zeros((*result.labels.shape, 3), np.uint8)
            else:
                background = _image_at(images, result.stamp_ns, images_bag, image_topic)
                if background.shape[:2] != result.labels.shape:
                    raise BagError(f"image at stamp {format_stamp(result.stamp_ns)} s in {images_bag} is "
                                   f"{background.shape[1]}x{background.shape[0]}, its labels in {result_bag} are "
                                   f"{result.labels.shape[1]}x{result.labels.shape[0]}")
            overlay = render_overlay(background, result.labels)
            video = video or _VideoFile(Path(out_dir) / "overlay", fps, overlay.shape[:2])
            video.write(overlay, result.stamp_ns)
    finally:
        if video is not None:
            video.close()
    return len(stamps), video.path


def _image_at(images: Iterator[tuple[int, np.ndarray]], stamp_ns: int, bag: Path, topic: str) -> np.ndarray:
    """The next image stamped ``stamp_ns``; images without a result (dropped frames) are skipped."""
    for image_stamp, rgb in images:
        if image_stamp == stamp_ns:
            return rgb
    raise BagError(f"no image with stamp {format_stamp(stamp_ns)} s on {topic} in {bag} "
                   "(after the previous result's image)")


class _VideoFile:
    """mp4 (mp4v) where OpenCV can write it, else Motion-JPEG avi."""

    def __init__(self, stem: Path, fps: float, size: tuple[int, int]):
        self.size = size
        height, width = size
        for suffix, codec in ((".mp4", "mp4v"), (".avi", "MJPG")):
            self.path = stem.with_suffix(suffix)
            self._writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*codec), fps, (width, height))
            if self._writer.isOpened():
                return
        raise BagError(f"OpenCV can write neither mp4v nor MJPG video to {stem.parent}")

    def write(self, rgb: np.ndarray, stamp_ns: int) -> None:
        if rgb.shape[:2] != self.size:
            raise BagError(f"result at stamp {format_stamp(stamp_ns)} s is {rgb.shape[1]}x{rgb.shape[0]}, "
                           f"the video {self.path} is {self.size[1]}x{self.size[0]}")
        self._writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))

    def close(self) -> None:
        self._writer.release()


# --- command line ---------------------------------------------------------------------------------


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _image_bag_options(args: argparse.Namespace) -> ImageBagOptions:
    return ImageBagOptions(topic=args.topic, fps=args.fps, start_time=args.start_time, encoding=args.encoding,
                           frame_id=args.frame_id, storage=args.storage)


def _run_from_frames(args: argparse.Namespace) -> int:
    count = frames_to_bag(args.folder, args.bag, _image_bag_options(args), args.sequence, args.masks)
    print(f"anymo-bag: wrote {count} frames to {args.bag} ({args.topic}"
          + (f", ground truth on {args.topic}{GROUND_TRUTH_SUFFIX}" if args.masks else "") + ")")
    return 0


def _run_from_video(args: argparse.Namespace) -> int:
    count = video_to_bag(args.video, args.bag, _image_bag_options(args))
    print(f"anymo-bag: wrote {count} frames to {args.bag} ({args.topic})")
    return 0


def _run_replay(args: argparse.Namespace) -> int:
    summary = replay_bag(args.bag, args.out, args.topic, args.publish_as, args.masks_topic,
                         None if args.as_fast_as_possible else args.rate, args.timeout, args.best_effort,
                         args.storage, args.discovery_timeout)
    for line in summary.lines():
        print(f"anymo-bag replay: {line}")
    print(f"anymo-bag replay: wrote {summary.outputs} results to {args.out} ({args.masks_topic})")
    return 130 if summary.interrupted else 0


def _run_export(args: argparse.Namespace) -> int:
    count, video = export_results(args.bag, args.out_dir, args.masks_topic, args.images, args.image_topic, args.fps)
    print(f"anymo-bag: wrote {count} label images to {args.out_dir / 'labels'} and {video}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="anymo-bag",
        description="Camera data to rosbag2 bags, replay through the running segment_node, and results out of bags.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    image_bag = argparse.ArgumentParser(add_help=False)
    image_bag.add_argument("--topic", default=DEFAULT_IMAGE_TOPIC, help=f"image topic (default {DEFAULT_IMAGE_TOPIC})")
    image_bag.add_argument("--start-time", type=float, default=0.0, metavar="SECONDS",
                           help="stamp of the first frame (default 0, the stamps anymo-eval uses)")
    image_bag.add_argument("--encoding", choices=FRAME_ENCODINGS, default="rgb8", help="image encoding (default rgb8)")
    image_bag.add_argument("--frame-id", default="camera", help="header frame_id (default camera)")
    image_bag.add_argument("--storage", choices=tuple(STORAGES), default="sqlite3",
                           help="bag storage format (default sqlite3)")

    from_frames = commands.add_parser(
        "from-frames", parents=[image_bag], help="image folder -> bag",
        description="Write one sequence of an image folder to a bag of sensor_msgs/Image, frame i stamped "
                    "start-time + i/fps. DIR is a folder of images, a sequence folder (DIR/frames, DIR/masks), "
                    "or a dataset (DIR/<seq>/frames, or DAVIS DIR/JPEGImages/480p/<seq>) with --sequence.")
    from_frames.add_argument("folder", type=Path, metavar="DIR")
    from_frames.add_argument("bag", type=Path, metavar="BAG", help="bag to create (a folder)")
    from_frames.add_argument("--sequence", metavar="NAME", help="the sequence to convert when DIR holds several")
    from_frames.add_argument("--fps", type=_positive_float, default=DEFAULT_FPS,
                             help=f"frame rate that sets the stamps (default {DEFAULT_FPS:g})")
    from_frames.add_argument("--masks", action="store_true",
                             help=f"also store the ground-truth masks as mono8 Images on <topic>{GROUND_TRUTH_SUFFIX} "
                                  "(255 = moving object); every frame needs one")
    from_frames.set_defaults(run=_run_from_frames)

    from_video = commands.add_parser(
        "from-video", parents=[image_bag], help="video file -> bag",
        description="Write every frame of a video (any format OpenCV reads) to a bag of sensor_msgs/Image, "
                    "stamped by the video's frame rate.")
    from_video.add_argument("video", type=Path, metavar="FILE")
    from_video.add_argument("bag", type=Path, metavar="BAG", help="bag to create (a folder)")
    from_video.add_argument("--fps", type=_positive_float, help="frame rate for the stamps (default: the video's)")
    from_video.set_defaults(run=_run_from_video)

    replay = commands.add_parser(
        "replay", help="play a bag into the running segment_node and record its results",
        description="Publish the bag's images over DDS to the running segment_node and record its "
                    "moving_objects/masks into OUTBAG. Every frame is accounted for: it has an output in OUTBAG "
                    "or counts as dropped. Ctrl-C stops; OUTBAG keeps what arrived. Needs ROS 2 and the built "
                    "messages (source scripts/env.sh).")
    replay.add_argument("bag", type=Path, metavar="BAG")
    replay.add_argument("--out", type=Path, required=True, metavar="OUTBAG", help="result bag to create")
    replay.add_argument("--topic", default=DEFAULT_IMAGE_TOPIC,
                        help=f"image topic of BAG, Image or CompressedImage (default {DEFAULT_IMAGE_TOPIC})")
    replay.add_argument("--publish-as", metavar="TOPIC", help="publish on this topic instead (default: --topic)")
    replay.add_argument("--masks-topic", default=DEFAULT_MASKS_TOPIC,
                        help=f"the node's result topic (default {DEFAULT_MASKS_TOPIC})")
    pace = replay.add_mutually_exclusive_group()
    pace.add_argument("--rate", type=_positive_float, default=1.0,
                      help="play at the bag's timing times RATE (default 1); a busy node drops frames")
    pace.add_argument("--as-fast-as-possible", action="store_true",
                      help="publish each frame once the previous one's result arrived (or --timeout passed)")
    replay.add_argument("--timeout", type=_positive_float, default=REPLAY_TIMEOUT, metavar="SECONDS",
                        help=f"wait this long for a result before counting a frame as dropped (default "
                             f"{REPLAY_TIMEOUT:g})")
    replay.add_argument("--best-effort", action="store_true",
                        help="best-effort publisher, as the node's default input QoS (default: reliable, which "
                             "a node with reliable_input true or false accepts)")
    replay.add_argument("--discovery-timeout", type=_positive_float, default=DISCOVERY_TIMEOUT, metavar="SECONDS",
                        help=f"how long to wait for the node (default {DISCOVERY_TIMEOUT:g})")
    replay.add_argument("--storage", choices=tuple(STORAGES), default="sqlite3",
                        help="result bag storage format (default sqlite3)")
    replay.set_defaults(run=_run_replay)

    export = commands.add_parser(
        "export", help="result bag -> label PNGs and an overlay video",
        description="Write every result of OUTBAG as a 16-bit label PNG, DIR/labels/<index>_<stamp>.png (index: "
                    "position in OUTBAG, stamp: the input frame's), and the video DIR/overlay.mp4 (or .avi) of "
                    "the objects drawn over the input images of --images, or over black.")
    export.add_argument("bag", type=Path, metavar="OUTBAG")
    export.add_argument("out_dir", type=Path, metavar="DIR")
    export.add_argument("--masks-topic", default=DEFAULT_MASKS_TOPIC,
                        help=f"result topic (default {DEFAULT_MASKS_TOPIC})")
    export.add_argument("--images", type=Path, metavar="BAG", help="bag with the input images")
    export.add_argument("--image-topic", default=DEFAULT_IMAGE_TOPIC,
                        help=f"image topic of --images (default {DEFAULT_IMAGE_TOPIC})")
    export.add_argument("--fps", type=_positive_float, help="video frame rate (default: from the stamps)")
    export.set_defaults(run=_run_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (BagError, DatasetError) as error:
        print(f"anymo-bag: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("anymo-bag: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
