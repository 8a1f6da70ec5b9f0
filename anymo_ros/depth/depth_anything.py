"""Depth Anything V2 (transformers ``DepthAnythingForDepthEstimation``): relative depth per frame.

Depth Anything predicts relative *inverse* depth (disparity: larger is nearer), up to an unknown
scale and shift. As in SegAnyMo's preprocessing, each frame's map is min-max normalised to [0, 1]
(1 = nearest point of the frame); the trajectory features normalise again over the tracks.
``relative_depth`` flips it (0 = nearest) for consumers trained on depth-ordered values.

Preprocessing follows the checkpoints' image processor: the shorter side goes to ``input_size``
(518 in training), both sides rounded to a multiple of 14, bicubic, ImageNet mean/std (read from
the checkpoint's processor when it has one). The prediction is upsampled back to the frame size.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from anymo_ros.config import DepthConfig
from anymo_ros.devices import ModelBackend, checkpoint_source

_PATCH = 14
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class DepthAnythingDepth(ModelBackend):
    """``estimate(rgb) -> (H, W) float32`` in [0, 1], normalised relative disparity (1 = nearest)."""

    kind = "depth"
    name = "depth_anything"
    output_kind = "relative_disparity"

    def __init__(self, config: DepthConfig | None = None, device: torch.device | str = "cpu", precision: str = "fp32"):
        super().__init__(device, precision)
        self.config = config or DepthConfig()
        self.model_source = self.config.model
        self.mean = np.array(_IMAGENET_MEAN, np.float32)
        self.std = np.array(_IMAGENET_STD, np.float32)

    @classmethod
    def from_model(cls, model, config: DepthConfig | None = None, device: torch.device | str = "cpu",
                   precision: str = "fp32") -> "DepthAnythingDepth":
        """Wrap an already built model (tests, benchmarks)."""
        backend = cls(config, device, precision)
        backend.model_source = "<in-memory model>"
        backend.model = model.to(backend.device).eval()
        return backend


    def load(self) -> None:
        if self.model is not None:
            return
        from transformers import AutoImageProcessor, DepthAnythingForDepthEstimation

        source = checkpoint_source(self.config.model, "Depth Anything")
        model = DepthAnythingForDepthEstimation.from_pretrained(source)
        try:
            processor = AutoImageProcessor.from_pretrained(source)
            self.mean = np.asarray(processor.image_mean, np.float32)
            self.std = np.asarray(processor.image_std, np.float32)
        except (OSError, ValueError, AttributeError):
            pass  # no processor saved with the weights: the ImageNet statistics every checkpoint uses
        self.model = model.to(self.device).eval()

    def drop(self) -> None:
        self.model = None

    def input_shape(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) fed to the model for a frame of that size."""
        scale = self.config.input_size / min(height, width)
        return (max(_PATCH, int(round(height * scale / _PATCH)) * _PATCH),
                max(_PATCH, int(round(width * scale / _PATCH)) * _PATCH))

    @torch.inference_mode()
    def estimate(self, rgb: np.ndarray) -> np.ndarray:
        if self.model is None:
            raise RuntimeError("Depth Anything is not loaded; call load() first")
        height, width = rgb.shape[:2]
        in_height, in_width = self.input_shape(height, width)
        resized = cv2.resize(rgb, (in_width, in_height), interpolation=cv2.INTER_CUBIC)
        pixels = (resized.astype(np.float32) / 255.0 - self.mean) / self.std
        pixel_values = torch.from_numpy(pixels.transpose(2, 0, 1)).unsqueeze(0).to(self.device)
        with self.autocast():
            predicted = self.model(pixel_values=pixel_values).predicted_depth
        disparity = F.interpolate(predicted.float().unsqueeze(1), size=(height, width), mode="bicubic",
                                  align_corners=False)[0, 0]
        return normalise_min_max(disparity.cpu().numpy())

    def relative_depth(self, rgb: np.ndarray) -> np.ndarray:
        """``1 - estimate(rgb)``: the same map ordered like depth (0 = nearest, 1 = farthest), for
        consumers trained on depth rather than disparity. Not metric: the unknown scale and shift
        of Depth Anything's disparity make 1 / disparity meaningless."""
        return (1.0 - self.estimate(rgb)).astype(np.float32)


def normalise_min_max(values: np.ndarray) -> np.ndarray:
    """Per-frame min-max to [0, 1] over finite values; a flat map becomes all 0.5."""
    values = values.astype(np.float32, copy=False)
    finite = np.isfinite(values)
    if not finite.any():
        return np.full(values.shape, np.nan, np.float32)
    low, high = float(values[finite].min()), float(values[finite].max())
    if high - low <= np.finfo(np.float32).eps * max(1.0, abs(high)):
        return np.where(finite, 0.5, np.nan).astype(np.float32)
    return ((values - low) / (high - low)).astype(np.float32)
