"""sensor_msgs/Image and CompressedImage <-> numpy, without cv_bridge; depth images -> metres.

cv_bridge is avoided on purpose: its PyPI port maps 16-bit encodings to 8-bit types. Input
functions accept any object with the message's fields (rclpy's or rosbags'), so they also serve
the bag tools without ROS; only ``array_to_image`` needs sensor_msgs.
"""
from __future__ import annotations

import array
import sys

import cv2
import numpy as np

from anymo_ros.depth.sensor import SUPPORTED_ENCODINGS as DEPTH_ENCODINGS
from anymo_ros.depth.sensor import DepthError, depth_to_metres, fit_depth_to_frame

# encoding -> (channel type, channels); mono16 is our label output (and a depth encoding).
LAYOUTS = {
    "rgb8": (np.uint8, 3),
    "bgr8": (np.uint8, 3),
    "rgba8": (np.uint8, 4),
    "bgra8": (np.uint8, 4),
    "mono8": (np.uint8, 1),
    "mono16": (np.uint16, 1),
    "16UC1": (np.uint16, 1),
    "32FC1": (np.float32, 1),
}
# colour encodings the node accepts, and the conversion of each to RGB (None: already RGB)
_TO_RGB = {
    "rgb8": None,
    "bgr8": cv2.COLOR_BGR2RGB,
    "rgba8": cv2.COLOR_RGBA2RGB,
    "bgra8": cv2.COLOR_BGRA2RGB,
    "mono8": cv2.COLOR_GRAY2RGB,
}
INPUT_ENCODINGS = tuple(_TO_RGB)
_HOST_IS_BIGENDIAN = sys.byteorder == "big"


class ImageConversionError(ValueError):
    """A message that cannot become an image. ``kind`` names the problem for the diagnostics counters."""

    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind = kind


def image_to_array(msg, encodings=tuple(LAYOUTS)) -> np.ndarray:
    """Pixels of a sensor_msgs/Image as (H, W) or (H, W, C) in native byte order.

    Honours ``step`` (row padding) and ``is_bigendian``; raises ImageConversionError for an
    encoding outside ``encodings``, an empty image, a step shorter than a row, or short data.
    """
    if msg.encoding not in encodings:
        raise ImageConversionError(
            "unsupported_encoding",
            f"unsupported encoding '{msg.encoding}' (supported: {', '.join(encodings)})")
    channel_type, channels = LAYOUTS[msg.encoding]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height == 0 or width == 0:
        raise ImageConversionError("empty", f"empty image ({width}x{height})")
    dtype = np.dtype(channel_type).newbyteorder(">" if msg.is_bigendian else "<")
    row_bytes = width * channels * dtype.itemsize
    if step < row_bytes:
        raise ImageConversionError(
            "bad_step",
            f"step {step} is shorter than one row of {width} px x {channels} channel(s) "
            f"x {dtype.itemsize} byte(s) = {row_bytes} bytes ({msg.encoding})")
    if len(msg.data) < step * height:
        raise ImageConversionError(
            "truncated", f"image data has {len(msg.data)} bytes, step x height needs {step * height}")
    rows = np.frombuffer(msg.data, np.uint8, count=step * height).reshape(height, step)[:, :row_bytes]
    shape = (height, width, channels) if channels > 1 else (height, width)
    pixels = np.ascontiguousarray(rows).view(dtype).reshape(shape)
    return pixels.astype(dtype.newbyteorder("="), copy=False)


def image_to_rgb(msg) -> np.ndarray:
    """An input sensor_msgs/Image (rgb8, bgr8, rgba8, bgra8 or mono8) as RGB uint8 (H, W, 3)."""
    pixels = image_to_array(msg, INPUT_ENCODINGS)
    conversion = _TO_RGB[msg.encoding]
    return np.ascontiguousarray(pixels) if conversion is None else cv2.cvtColor(pixels, conversion)


def depth_image_to_metres(msg, frame_size: tuple[int, int]) -> tuple[np.ndarray, str | None]:
    """A depth sensor_msgs/Image (16UC1 or mono16 in mm, 32FC1 in m) as float32 metres at the colour
    frame's (width, height), NaN where there is no measurement (0, NaN, inf, <= 0); plus a note
    when it is usable but was resized or is mostly invalid.

    Raises ImageConversionError for a message that cannot be read (kinds as ``image_to_array``),
    a depth image not registered to the colour frame ('size_mismatch': another aspect ratio), or
    one without a single valid pixel ('no_valid_depth').
    """
    metres = depth_to_metres(image_to_array(msg, DEPTH_ENCODINGS), msg.encoding)
    try:
        metres, note = fit_depth_to_frame(metres, frame_size)
    except DepthError as error:
        raise ImageConversionError("size_mismatch", str(error)) from error
    if not np.isfinite(metres).any():
        raise ImageConversionError("no_valid_depth", note)
    return metres, note


def compressed_to_rgb(msg) -> np.ndarray:
    """A sensor_msgs/CompressedImage (JPEG, PNG, ...) as RGB uint8 (H, W, 3)."""
    if len(msg.data) == 0:
        raise ImageConversionError("empty", f"empty compressed image (format '{msg.format}')")
    decoded = cv2.imdecode(np.frombuffer(msg.data, np.uint8), cv2.IMREAD_COLOR)
    if decoded is None:
        raise ImageConversionError(
            "decode_failed", f"cannot decode {len(msg.data)} bytes of compressed image (format '{msg.format}')")
    return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)


def array_to_image(pixels: np.ndarray, encoding: str, header) -> "Image":
    """A sensor_msgs/Image holding ``pixels`` (uint8 for *8 encodings, uint16 for mono16 and 16UC1,
    float32 for 32FC1), unpadded."""
    channel_type, channels = LAYOUTS[encoding]
    expected_ndim = 3 if channels > 1 else 2
    if pixels.dtype != channel_type or pixels.ndim != expected_ndim or (channels > 1 and pixels.shape[2] != channels):
        raise ValueError(f"cannot store {pixels.dtype} pixels of shape {pixels.shape} as {encoding}")
    from sensor_msgs.msg import Image

    pixels = np.ascontiguousarray(pixels)
    msg = Image()
    msg.header = header
    msg.height, msg.width = pixels.shape[:2]
    msg.encoding = encoding
    msg.is_bigendian = _HOST_IS_BIGENDIAN
    msg.step = pixels.shape[1] * channels * pixels.itemsize
    # array.array from bytes is a single copy; a numpy array would be copied element by element.
    msg.data = array.array("B", pixels.tobytes())
    return msg
