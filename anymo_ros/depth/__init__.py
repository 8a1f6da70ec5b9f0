"""Depth sources for the trajectory features.

* ``sensor``: the synced depth image (16UC1 in mm, or 32FC1 in m) as float32 metres, NaN where
  invalid (:mod:`anymo_ros.depth.sensor`, numpy only).
* ``depth_anything``: Depth Anything V2 through transformers, relative disparity min-max
  normalised per frame to [0, 1], as the paper does (:mod:`anymo_ros.depth.depth_anything`).
* ``none``: no depth; the features then carry neutral depth.

Backends are built (and their models loaded) by :func:`anymo_ros.devices.create_backends`.
"""
from anymo_ros.depth.sensor import DepthError, SensorDepth, depth_to_disparity, depth_to_metres, fit_depth_to_frame

__all__ = ["DepthError", "SensorDepth", "depth_to_disparity", "depth_to_metres", "fit_depth_to_frame"]
