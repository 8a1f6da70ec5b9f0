"""DINOv2 features sampled at track positions (transformers ``Dinov2Model``).

The paper (SegAnyMo) uses the *key* facet of block 11 -- the last block -- of DINOv2-B/14,
extracted at patch stride 7 (overlapping 14x14 patches, so a 2x denser grid and 4x the tokens)
on the frame resized up to a multiple of 14, and looks each track up at its query-frame position
(nearest cell). The 12 heads' 64-d keys are concatenated channel-interleaved (channel d * 12 + h),
giving 768 values per track.

This implementation computes the same quantity with the transformers model:

* ``facet='key'`` returns the block's attention keys (``k_proj`` of the block's normalised
  input), reordered to the original's channel order, so features from the original pipeline and
  from here are interchangeable; ``facet='token'`` returns the block's output tokens instead.
* ``layer`` picks the block (-1 = last; 11 for DINOv2-B); blocks after it are not run.
* ``stride`` 7 reproduces the overlapping patches: the patch embedding convolution runs at stride
  7 and the position embeddings are interpolated (bicubic) to the denser grid. Stride 14 (the
  default here) is the model's own grid, 4x fewer tokens and ~10x faster, for CPU and edge use.
* ``input_size`` caps the longer side (rounded to a multiple of 14); 0 keeps the frame's size
  rounded up to a multiple of 14, as in the paper.
* Tracks sample the grid **bilinearly** at their current position (patch centres at
  ``i * stride + 6.5`` input pixels), which the pipeline does once per track, when it is first
  seen on a frame where the features are computed: the online stand-in for "the query frame".

Output: ``(N, semantic_dim)`` float32, ``semantic_dim`` = the model's hidden size (768 for
DINOv2-B, 384 for -S, 1024 for -L, 1536 for -G); the paper's classifier expects 768.
DINOv2 checkpoints with register tokens (``Dinov2WithRegistersModel``) are not supported.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from anymo_ros.config import SemanticsConfig
from anymo_ros.devices import BackendUnavailable, ModelBackend, checkpoint_source

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class FeatureMap:
    """Features of one frame on the patch grid."""

    features: torch.Tensor          # (C, grid_h, grid_w) float32
    frame_size: tuple[int, int]     # (width, height) of the frame the tracks live in
    input_size: tuple[int, int]     # (width, height) fed to the model
    stride: int
    patch: int

    @property
    def semantic_dim(self) -> int:
        return int(self.features.shape[0])


class DinoV2Semantics(ModelBackend):
    """``extract(rgb, xy) -> (N, semantic_dim)``; or ``feature_map`` once and ``sample`` many times."""

    kind = "semantics"
    name = "dinov2"

    def __init__(self, config: SemanticsConfig | None = None, device: torch.device | str = "cpu",
                 precision: str = "fp32"):
        super().__init__(device, precision)
        self.config = config or SemanticsConfig()
        if self.config.facet not in ("key", "token"):
            raise BackendUnavailable(f"DINOv2 facet '{self.config.facet}' is not 'key' or 'token'")
        if self.config.stride not in (7, 14):
            raise BackendUnavailable(f"DINOv2 stride {self.config.stride} is not 7 or 14")
        self.model_source = self.config.model
        self.mean = torch.tensor(_IMAGENET_MEAN).view(3, 1, 1)
        self.std = torch.tensor(_IMAGENET_STD).view(3, 1, 1)

    @classmethod
    def from_model(cls, model, config: SemanticsConfig | None = None, device: torch.device | str = "cpu",
                   precision: str = "fp32") -> "DinoV2Semantics":
        """Wrap an already built ``Dinov2Model`` (tests, benchmarks)."""
        backend = cls(config, device, precision)
        backend.model_source = "<in-memory model>"
        backend._adopt(model)
        return backend


    def load(self) -> None:
        if self.model is not None:
            return
        from transformers import AutoImageProcessor, Dinov2Model

        source = checkpoint_source(self.config.model, "DINOv2")
        model = Dinov2Model.from_pretrained(source)
        try:
            processor = AutoImageProcessor.from_pretrained(source)
            self.mean = torch.tensor(processor.image_mean, dtype=torch.float32).view(3, 1, 1)
            self.std = torch.tensor(processor.image_std, dtype=torch.float32).view(3, 1, 1)
        except (OSError, ValueError, AttributeError):
            pass  # no processor saved with the weights: the ImageNet statistics DINOv2 uses
        self._adopt(model)

    def _adopt(self, model) -> None:
        num_layers = model.config.num_hidden_layers
        if not -num_layers <= self.config.layer < num_layers:
            raise BackendUnavailable(f"DINOv2 layer {self.config.layer} does not exist "
                                     f"(the model has {num_layers} blocks)")
        self.model = model.to(self.device).eval()
        self.layer_index = self.config.layer % num_layers

    def drop(self) -> None:
        self.model = None

    @property
    def semantic_dim(self) -> int:
        if self.model is None:
            raise RuntimeError("DINOv2 is not loaded; call load() first")
        return int(self.model.config.hidden_size)

    @property
    def patch(self) -> int:
        patch = self.model.config.patch_size
        return int(patch[0] if isinstance(patch, (tuple, list)) else patch)

    def input_shape(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) fed to the model: multiples of the patch size."""
        patch = self.patch
        if self.config.input_size <= 0:
            return (-(-height // patch) * patch, -(-width // patch) * patch)
        scale = self.config.input_size / max(height, width)
        return (max(patch, int(round(height * scale / patch)) * patch),
                max(patch, int(round(width * scale / patch)) * patch))

    @torch.inference_mode()
    def feature_map(self, rgb: np.ndarray) -> FeatureMap:
        if self.model is None:
            raise RuntimeError("DINOv2 is not loaded; call load() first")
        height, width = rgb.shape[:2]
        in_height, in_width = self.input_shape(height, width)
        resized = rgb if (in_height, in_width) == (height, width) else \
            cv2.resize(rgb, (in_width, in_height), interpolation=cv2.INTER_LINEAR)
        pixels = torch.from_numpy(np.ascontiguousarray(resized)).permute(2, 0, 1).float().div_(255.0)
        pixels = ((pixels - self.mean) / self.std).unsqueeze(0).to(self.device)
        with self.autocast():
            tokens, grid = self._forward(pixels)
        features = tokens[0].float().transpose(0, 1).reshape(-1, *grid)
        return FeatureMap(features, (width, height), (in_width, in_height), self.config.stride, self.patch)

    def _forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Patch tokens (1, grid_h * grid_w, C) of the configured facet and block, and the grid size."""
        model = self.model
        embeddings = model.embeddings
        projection = embeddings.patch_embeddings.projection
        patches = F.conv2d(pixels.to(projection.weight.dtype), projection.weight, projection.bias,
                           stride=self.config.stride)
        grid = tuple(patches.shape[-2:])
        tokens = patches.flatten(2).transpose(1, 2)
        position = embeddings.position_embeddings
        side = int(round((position.shape[1] - 1) ** 0.5))
        patch_position = position[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        patch_position = F.interpolate(patch_position.float(), size=grid, mode="bicubic", align_corners=False)
        patch_position = patch_position.to(tokens.dtype).flatten(2).transpose(1, 2)
        cls = embeddings.cls_token + position[:, :1]
        hidden = torch.cat([cls.expand(tokens.shape[0], -1, -1), tokens + patch_position], dim=1)
        layers = model.encoder.layer
        for layer in layers[: self.layer_index]:
            hidden = _layer_output(layer(hidden))
        block = layers[self.layer_index]
        if self.config.facet == "token":
            return _layer_output(block(hidden))[:, 1:], grid
        attention = block.attention
        key_projection = getattr(attention, "k_proj", None) or attention.attention.key
        keys = key_projection(block.norm1(hidden))[:, 1:]
        heads = model.config.num_attention_heads
        count, channels = keys.shape[1], keys.shape[2]
        # Original channel order: (head_dim, heads) flattened, i.e. channel = d * heads + h.
        keys = keys.reshape(1, count, heads, channels // heads).transpose(2, 3).reshape(1, count, channels)
        return keys, grid

    def sample(self, feature_map: FeatureMap, xy: np.ndarray) -> np.ndarray:
        """Bilinear features (N, C) float32 at points (N, 2) in frame pixels; NaN rows for non-finite points."""
        xy = np.asarray(xy, np.float32).reshape(-1, 2)
        channels, grid_h, grid_w = feature_map.features.shape
        out = np.full((len(xy), channels), np.nan, np.float32)
        finite = np.isfinite(xy).all(axis=1)
        if not finite.any():
            return out
        width, height = feature_map.frame_size
        in_width, in_height = feature_map.input_size
        centre = (feature_map.patch - 1) / 2.0
        # frame pixel -> model-input pixel (pixel centres) -> patch-grid coordinate
        u = (xy[finite, 0] + 0.5) * in_width / width - 0.5
        v = (xy[finite, 1] + 0.5) * in_height / height - 0.5
        gx = (u - centre) / feature_map.stride
        gy = (v - centre) / feature_map.stride
        nx = 2.0 * gx / max(grid_w - 1, 1) - 1.0 if grid_w > 1 else np.zeros_like(gx)
        ny = 2.0 * gy / max(grid_h - 1, 1) - 1.0 if grid_h > 1 else np.zeros_like(gy)
        grid = torch.from_numpy(np.stack([nx, ny], axis=1).astype(np.float32)).to(feature_map.features.device)
        sampled = F.grid_sample(feature_map.features.unsqueeze(0), grid.view(1, 1, -1, 2), mode="bilinear",
                                padding_mode="border", align_corners=True)
        out[finite] = sampled[0, :, 0, :].transpose(0, 1).cpu().numpy()
        return out

    def extract(self, rgb: np.ndarray, xy: np.ndarray) -> np.ndarray:
        """Features (N, semantic_dim) float32 of the points ``xy`` (frame pixels) in ``rgb``."""
        return self.sample(self.feature_map(rgb), xy)


def _layer_output(output):
    return output[0] if isinstance(output, tuple) else output
