"""Per-track, per-frame input features of the trajectory classifier.

Each track of a window of T frames becomes a (T, 88) sequence, in the channel order of the
original model:

====================  ====  ==========================================================
channels              size  content
====================  ====  ==========================================================
0:42                  42    frequency encoding of (u, v), the position scaled to [-1, 1]
42:84                 42    frequency encoding of (du, dv), the step to the next frame
84                    1     depth, min-max normalised over the frame's visible tracks
85                    1     step in normalised depth to the next frame
86                    1     visibility (1 visible, 0 not)
87                    1     tracker confidence
====================  ====  ==========================================================

A step (position, depth) is only measured between two visible observations; elsewhere it is
zero, as is the last frame's. Inputs at invisible frames are replaced by fixed values, so that a
tracker's stale or NaN coordinates for a lost point never reach the model (which masks those
frames anyway).
"""
from __future__ import annotations

import math

import numpy as np
import torch

NUM_FREQUENCIES = 10
FEATURE_DIM = 2 * 2 * (2 * NUM_FREQUENCIES + 1) + 4  # 88

# Without a depth source every point sits at mid-depth and never moves in depth. Training should
# feed these values for part of its clips, so that running without depth stays in-distribution.
NEUTRAL_DEPTH = 0.5
NEUTRAL_DEPTH_STEP = 0.0


def frequency_encode(x: torch.Tensor, num_freqs: int = NUM_FREQUENCIES) -> torch.Tensor:
    """NeRF-style positional encoding of the last dimension, input included.

    For x of shape (..., D) returns (..., D * (1 + 2 * num_freqs)) laid out as
    ``[x, sin(2^0 pi x), cos(2^0 pi x), sin(2^1 pi x), cos(2^1 pi x), ...]``, each sin/cos block
    covering all D inputs. For coordinates in [-1, 1] the periods range from the whole image
    (k = 0) to about 2 px of a 1000 px image (k = 9). This is NeRF's form; the SegAnyMo code
    leaves out the pi, which wastes the lowest frequencies on a [-1, 1] input.
    """
    scales = math.pi * 2.0 ** torch.arange(num_freqs, dtype=x.dtype, device=x.device)
    angles = x.unsqueeze(-2) * scales.unsqueeze(-1)  # (..., F, D)
    periodic = torch.stack((angles.sin(), angles.cos()), dim=-2)  # (..., F, 2, D)
    return torch.cat((x, periodic.flatten(-3)), dim=-1)


def track_features(
    xy: np.ndarray | torch.Tensor,
    visible: np.ndarray | torch.Tensor,
    confidence: np.ndarray | torch.Tensor,
    image_size: tuple[int, int],
    depth: np.ndarray | torch.Tensor | None = None,
) -> torch.Tensor:
    """Build the (N, T, 88) float32 classifier input for N tracks over T frames.

    Args:
        xy: (N, T, 2) positions (x, y) in pixels of the image the tracks live in.
        visible: (N, T) bool, whether the tracker saw the point in that frame.
        confidence: (N, T) tracker confidence in [0, 1].
        image_size: (width, height) of that image in pixels.
        depth: (N, T) depth (or disparity: whichever the depth source gives, as in training) at
            each point, or None when there is no depth source. Each frame is min-max normalised
            over its visible tracks, which removes the unknown scale of monocular depth. Values
            at invisible frames, and non-finite values, are ignored (neutral depth, zero step).
            With None, depth is ``NEUTRAL_DEPTH`` (0.5) and its step ``NEUTRAL_DEPTH_STEP`` (0)
            everywhere.
    """
    xy = torch.as_tensor(xy, dtype=torch.float32)
    visible = torch.as_tensor(visible, dtype=torch.bool, device=xy.device)
    confidence = torch.as_tensor(confidence, dtype=torch.float32, device=xy.device)
    num_tracks, window = visible.shape
    if num_tracks == 0:
        return torch.zeros((0, window, FEATURE_DIM), dtype=torch.float32, device=xy.device)
    width, height = image_size

    # Pixel centres 0 .. size-1 map onto [-1, 1].
    scale = torch.tensor([2.0 / max(width - 1, 1), 2.0 / max(height - 1, 1)], device=xy.device)
    uv = torch.where(visible.unsqueeze(-1), xy * scale - 1.0, 0.0)

    both_visible = torch.zeros_like(visible)
    both_visible[:, :-1] = visible[:, :-1] & visible[:, 1:]
    duv = torch.zeros_like(uv)
    duv[:, :-1] = torch.where(both_visible[:, :-1].unsqueeze(-1), uv[:, 1:] - uv[:, :-1], 0.0)

    if depth is None:
        depth_norm = torch.full_like(confidence, NEUTRAL_DEPTH)
        depth_step = torch.full_like(confidence, NEUTRAL_DEPTH_STEP)
    else:
        depth = torch.as_tensor(depth, dtype=torch.float32, device=xy.device)
        observed = visible & torch.isfinite(depth)
        depth_norm = _normalise_per_frame(depth, observed)
        both_observed = observed[:, :-1] & observed[:, 1:]
        depth_step = torch.zeros_like(depth_norm)
        depth_step[:, :-1] = torch.where(both_observed, depth_norm[:, 1:] - depth_norm[:, :-1], 0.0)

    return torch.cat(
        (
            frequency_encode(uv),
            frequency_encode(duv),
            depth_norm.unsqueeze(-1),
            depth_step.unsqueeze(-1),
            visible.float().unsqueeze(-1),
            confidence.unsqueeze(-1),
        ),
        dim=-1,
    )


def _normalise_per_frame(depth: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    """Min-max normalise each frame (column) over its observed entries; the others get the neutral value."""
    low = torch.where(observed, depth, torch.inf).amin(dim=0, keepdim=True)
    high = torch.where(observed, depth, -torch.inf).amax(dim=0, keepdim=True)
    # A frame with one visible track (or a flat one) has no range: put it at 0 instead of dividing by 0.
    span = (high - low).clamp_min(1e-6)
    return torch.where(observed, (depth - low) / span, NEUTRAL_DEPTH)
