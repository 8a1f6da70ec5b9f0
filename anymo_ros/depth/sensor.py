"""Depth from a sensor: conversion of ROS depth images to metres, and checks against the colour frame.

ROS depth images come in two encodings (REP 118):

* ``16UC1`` (also seen as ``mono16``): unsigned millimetres, 0 = no measurement;
* ``32FC1``: float metres, NaN (or +-inf, or <= 0) = no measurement.

Both become float32 metres with NaN wherever there is no valid measurement, which is what
``MotionSegmenter.feed(..., depth=...)`` takes. numpy only.
"""
from __future__ import annotations

import cv2
import numpy as np

MILLIMETRE_ENCODINGS = ("16UC1", "mono16")
METRE_ENCODINGS = ("32FC1",)
SUPPORTED_ENCODINGS = MILLIMETRE_ENCODINGS + METRE_ENCODINGS
MOSTLY_INVALID = 0.9   # fraction of invalid pixels above which a depth frame gets a warning


class DepthError(ValueError):
    """A depth image that cannot be used; the message says why."""


def depth_to_metres(data: np.ndarray, encoding: str) -> np.ndarray:
    """(H, W) float32 metres, NaN where invalid, from a depth image in a ROS encoding."""
    if encoding not in SUPPORTED_ENCODINGS:
        raise DepthError(f"unsupported depth encoding '{encoding}' (expected 16UC1 in mm or 32FC1 in m)")
    data = np.asarray(data)
    if data.ndim == 3 and data.shape[2] == 1:
        data = data[:, :, 0]
    if data.ndim != 2 or data.size == 0:
        raise DepthError(f"a depth image must be (H, W) with pixels, got shape {data.shape}")
    if encoding in MILLIMETRE_ENCODINGS:
        if data.dtype != np.uint16:
            raise DepthError(f"{encoding} depth must be uint16 millimetres, got {data.dtype}")
        metres = data.astype(np.float32) * np.float32(0.001)
        metres[data == 0] = np.nan
        return metres
    if data.dtype != np.float32:
        raise DepthError(f"{encoding} depth must be float32 metres, got {data.dtype}")
    metres = data.astype(np.float32, copy=True)
    metres[~np.isfinite(metres) | (metres <= 0)] = np.nan
    return metres


def fit_depth_to_frame(depth: np.ndarray, frame_size: tuple[int, int]) -> tuple[np.ndarray, str | None]:
    """Depth (metres, NaN invalid) at the colour frame's (width, height); plus a note if anything was off.

    A depth image of another size (a registered depth stream at lower resolution) is resized with
    nearest-neighbour sampling, which never mixes depths across an edge and keeps NaN holes. An
    image of another aspect ratio is not registered to the colour frame and is refused.
    """
    width, height = frame_size
    note = None
    if depth.shape != (height, width):
        depth_height, depth_width = depth.shape
        if abs(depth_width / depth_height - width / height) > 0.01:
            raise DepthError(f"depth image {depth_width}x{depth_height} does not match the colour frame "
                             f"{width}x{height} (another aspect ratio: not registered to the camera)")
        depth = cv2.resize(depth, (width, height), interpolation=cv2.INTER_NEAREST)
        note = f"depth image {depth_width}x{depth_height} resized to the colour frame {width}x{height}"
    invalid = float(np.mean(~np.isfinite(depth)))
    if invalid >= 1.0:
        note = "depth image has no valid pixel (all NaN/0/inf); depth ignored on this frame"
    elif invalid > MOSTLY_INVALID:
        note = f"depth image is {100 * invalid:.0f} % invalid (NaN/0/inf)"
    return depth, note


def depth_to_disparity(depth: np.ndarray) -> np.ndarray:
    """1 / depth, NaN kept: the quantity Depth Anything (and the paper's tracks) carry."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return (1.0 / depth).astype(np.float32)


class SensorDepth:
    """The 'sensor' depth backend: no model, just conversion and checks of the synced depth image."""

    kind = "depth"
    name = "sensor"
    loaded = True

    def load(self) -> None:
        pass

    def release(self) -> None:
        pass

    def convert(self, data: np.ndarray, encoding: str,
                frame_size: tuple[int, int]) -> tuple[np.ndarray | None, str | None]:
        """Metres at the frame size, or None with the reason when the image cannot be used."""
        try:
            metres = depth_to_metres(data, encoding)
            metres, note = fit_depth_to_frame(metres, frame_size)
        except DepthError as error:
            return None, str(error)
        if not np.isfinite(metres).any():
            return None, note
        return metres, note
