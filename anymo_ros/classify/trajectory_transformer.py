"""The paper's learned trajectory classifier: a window of point tracks in, a dynamic probability per track out.

Two stages, as in SegAnyMo:

1. Motion transformer (width 16). The (T, 88) features of each track go through two 1x1
   convolutions (per-step linear layers, 88 -> 16 -> 16), then space-time layers that attend along
   time within each track and across tracks at each frame. As in the original code it is an
   encoder-decoder pair (2 + 2 layers) whose decoder starts from the same projected input and
   also attends, along time, to the encoder's output. Invisible steps are masked out as keys
   everywhere; a max-pool over the visible steps gives one 16-d motion vector per track.
2. Motion-semantic decoupled transformer (width 128, 4 encoder + 4 decoder blocks) over the
   tracks. Attention only ever sees motion features; the track's DINOv2 vector joins only as
   extra input to each encoder FFN (128 + 768 -> 512 -> 128). A linear layer gives the logit.

Departures from the original code, all in favour of exact masking: separate weights for the time
and track attentions (the original shares one), keys masked in every attention (the original
leaves the memory and the second stage unmasked) and a max-pool over visible steps only, so
neither invisible steps nor padded tracks can change any other output.

Cost: the attention across tracks grows as N^2 * T and dominates on a CPU; about 0.3 s for
1024 tracks x 16 frames on 2 cores, a tenth of that for 256 tracks
(``python -m anymo_ros.tools.bench_classifier``).

Two optional additions (both off in the default, paper-size config) make a fast variant possible
(the shipped one is ``training.FAST_MODEL``):

* ``track_anchors`` M > 0: every attention across tracks goes through M learned anchor tokens
  (the Set Transformer's induced set attention; the SegAnyMo code has a similar "virtual track"
  option that its released model does not use): the anchors attend to the tracks, the tracks
  to the anchors, O(N * M) instead of O(N^2). Masking and permutation equivariance hold as for
  full attention.
* ``ego_motion_inputs``: three weight-free input channels per step, the step's departure from
  the camera motion fitted to all tracks of the frame (a homography and an epipolar
  geometry, robust least squares). A small model trained for an hour on a CPU cannot learn that
  geometry from the coordinates alone; given the residuals it learns when to trust which.
  ``ego_motion_baseline`` k adds two: the departure from a homography fitted over the last k
  frames, which finds the slow movers and the followed ones that one frame hides in its noise.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from anymo_ros.classify.features import FEATURE_DIM, NUM_FREQUENCIES, track_features

_log = logging.getLogger(__name__)


@dataclass
class TrajectoryTransformerConfig:
    """Hyper-parameters of :class:`TrajectoryTransformer`; the defaults are the paper's model."""

    input_dim: int = FEATURE_DIM          # per-step feature channels (see features.py)
    motion_dim: int = 16                  # width of the motion transformer
    motion_heads: int = 4
    motion_ffn_dim: int = 64
    motion_encoder_layers: int = 2        # space-time layers, as in the original code
    motion_decoder_layers: int = 2        # 0 drops the decoder: the pooled encoder output is used
    decoupled_dim: int = 128              # width of the motion-semantic decoupled transformer
    decoupled_heads: int = 8
    decoupled_ffn_dim: int = 512
    decoupled_encoder_blocks: int = 4
    decoupled_decoder_blocks: int = 4
    semantic_dim: int = 768               # DINOv2-B/14 feature size; 0 builds a motion-only model
    semantic_dropout: float = 0.5         # training only: chance that a clip's semantics are zeroed
    dropout: float = 0.1
    track_anchors: int = 0                # 0: full attention across tracks (the paper); M > 0: through M
                                          # learned anchor tokens, O(N * M) instead of O(N^2) per frame
    ego_motion_inputs: bool = False       # add each step's departure from the fitted camera motion to
                                          # the input features (not in the paper)
    ego_motion_baseline: int = 0          # with ego_motion_inputs: also the departure over this many
                                          # frames (0: off)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrajectoryTransformerConfig":
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown trajectory transformer config keys: {sorted(unknown)}")
        return cls(**values)


def _key_mask(key_valid: torch.Tensor) -> torch.Tensor | None:
    """SDPA mask (S, 1, 1, L) from per-sequence key validity (S, L); None when all keys are valid.

    A sequence without any valid key gives NaN on some CUDA kernels (the CPU ones return zeros),
    so it attends to all its keys instead. Only invalid queries live in such a sequence (its
    frame, track or clip has no valid key), and their outputs are never used as keys or pooled,
    so this cannot leak into a valid output.
    """
    key_valid = key_valid | ~key_valid.any(dim=-1, keepdim=True)
    if bool(key_valid.all()):
        return None  # the unmasked kernel is faster
    # A strided mask makes the CPU kernel expand it to the full (S, Lq, Lk) size first.
    return key_valid.contiguous()[:, None, None, :]


class _Attention(nn.Module):
    """Multi-head attention over axis 1 of (S, L, D) sequences, built on F.scaled_dot_product_attention.

    One packed in-projection serves both self-attention (a single GEMM) and attention into a
    memory; the fused kernel never materialises the (L, L) weights on the CPU.
    """

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.dropout = dropout
        self.in_proj = nn.Linear(dim, 3 * dim)
        self.out_proj = nn.Linear(dim, dim)
        # nn.MultiheadAttention's initialisation, which the original model trained with.
        nn.init.xavier_uniform_(self.in_proj.weight)
        nn.init.zeros_(self.in_proj.bias)
        nn.init.zeros_(self.out_proj.bias)

    def forward(
        self, query: torch.Tensor, mask: torch.Tensor | None, memory: torch.Tensor | None = None
    ) -> torch.Tensor:
        """query (S, Lq, D); mask from :func:`_key_mask`; memory (S, Lk, D), None for self-attention."""
        if memory is None:
            q, k, v = self.in_proj(query).chunk(3, dim=-1)
        else:
            dim = query.shape[-1]
            q = F.linear(query, self.in_proj.weight[:dim], self.in_proj.bias[:dim])
            k, v = F.linear(memory, self.in_proj.weight[dim:], self.in_proj.bias[dim:]).chunk(2, dim=-1)
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
        )
        return self.out_proj(out.transpose(1, 2).flatten(2))


class _AnchoredAttention(nn.Module):
    """Attention across a set through a few learned anchor tokens (the Set Transformer's induced set
    attention): the anchors attend to the valid keys, then every query attends to the anchors.

    Same interface as :class:`_Attention`. Cost grows as L * M instead of L^2. The anchors are
    shared by all sequences and summarise the keys with a permutation-invariant, masked attention,
    so permuting the set permutes the output and masked keys influence nothing; the anchors
    themselves are always valid, so the second attention needs no mask.
    """

    def __init__(self, dim: int, heads: int, dropout: float, num_anchors: int):
        super().__init__()
        self.anchors = nn.Parameter(torch.empty(num_anchors, dim))
        nn.init.normal_(self.anchors, std=dim ** -0.5)
        self.gather = _Attention(dim, heads, dropout)
        self.gather_norm = nn.LayerNorm(dim)
        self.scatter = _Attention(dim, heads, dropout)

    def forward(
        self, query: torch.Tensor, mask: torch.Tensor | None, memory: torch.Tensor | None = None
    ) -> torch.Tensor:
        keys = query if memory is None else memory
        anchors = self.anchors.expand(keys.shape[0], -1, -1)
        summary = self.gather_norm(anchors + self.gather(anchors, mask, keys))
        return self.scatter(query, None, summary)


def _set_attention(dim: int, heads: int, dropout: float, num_anchors: int) -> nn.Module:
    """Attention across tracks: full (num_anchors 0) or through ``num_anchors`` anchor tokens."""
    if num_anchors:
        return _AnchoredAttention(dim, heads, dropout, num_anchors)
    return _Attention(dim, heads, dropout)


class _FeedForward(nn.Module):
    def __init__(self, dim: int, hidden_dim: int, dropout: float):
        super().__init__()
        self.expand = nn.Linear(dim, hidden_dim)
        self.contract = nn.Linear(hidden_dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.contract(self.dropout(F.relu(self.expand(x))))


@dataclass
class _SpaceTimeMasks:
    """Key masks of one batch for both attention axes, computed once per forward."""

    along_time: torch.Tensor | None    # (B*N, 1, 1, T)
    across_tracks: torch.Tensor | None  # (B*T, 1, 1, N)

    @classmethod
    def from_valid(cls, valid: torch.Tensor) -> "_SpaceTimeMasks":
        batch, tracks, window = valid.shape
        return cls(
            along_time=_key_mask(valid.reshape(batch * tracks, window)),
            across_tracks=_key_mask(valid.transpose(1, 2).reshape(batch * window, tracks)),
        )


class _SpaceTimeLayer(nn.Module):
    """Attention along time within each track, then across tracks at each frame, then (decoder
    layers) along time into the encoder memory, then the FFN; post-norm residuals as in the original."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float, attends_memory: bool, anchors: int = 0):
        super().__init__()
        self.time_attention = _Attention(dim, heads, dropout)
        self.track_attention = _set_attention(dim, heads, dropout, anchors)
        self.memory_attention = _Attention(dim, heads, dropout) if attends_memory else None
        self.ffn = _FeedForward(dim, ffn_dim, dropout)
        self.norm_time = nn.LayerNorm(dim)
        self.norm_tracks = nn.LayerNorm(dim)
        self.norm_memory = nn.LayerNorm(dim) if attends_memory else None
        self.norm_ffn = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, x: torch.Tensor, masks: _SpaceTimeMasks, memory: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x (B, N, T, D) -> (B, N, T, D); memory (B, N, T, D) for decoder layers."""
        batch, tracks, window, dim = x.shape
        along_time = x.reshape(batch * tracks, window, dim)
        update = self.time_attention(along_time, masks.along_time)
        x = self.norm_time(x + self.dropout(update).view_as(x))

        across_tracks = x.transpose(1, 2).reshape(batch * window, tracks, dim)
        update = self.track_attention(across_tracks, masks.across_tracks)
        # Back to (B, N, T, D) memory order: the next steps are slow on strided tensors.
        update = update.view(batch, window, tracks, dim).transpose(1, 2).reshape_as(x)
        x = self.norm_tracks(x + self.dropout(update))

        if self.memory_attention is not None:
            update = self.memory_attention(
                x.reshape(batch * tracks, window, dim), masks.along_time,
                memory.reshape(batch * tracks, window, dim),
            )
            x = self.norm_memory(x + self.dropout(update).view_as(x))

        return self.norm_ffn(x + self.dropout(self.ffn(x)))


class _DecoupledEncoderBlock(nn.Module):
    """Self-attention over motion features only; the semantic vector joins only the FFN input."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, semantic_dim: int, dropout: float, anchors: int = 0):
        super().__init__()
        self.attention = _set_attention(dim, heads, dropout, anchors)
        self.ffn_expand = nn.Linear(dim + semantic_dim, ffn_dim)
        self.ffn_contract = nn.Linear(ffn_dim, dim)
        self.norm_attention = nn.LayerNorm(dim)
        self.norm_ffn = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, semantics: torch.Tensor | None) -> torch.Tensor:
        """x (B, N, D); semantics (B, N, semantic_dim) or None for all zeros."""
        x = self.norm_attention(x + self.dropout(self.attention(x, mask)))
        # Equal to ffn_expand(cat(x, semantics)) without building the wide input; the semantic
        # half is skipped outright when there are no semantics, as it would only add zeros.
        dim = x.shape[-1]
        hidden = F.linear(x, self.ffn_expand.weight[:, :dim], self.ffn_expand.bias)
        if semantics is not None:
            hidden = hidden + F.linear(semantics, self.ffn_expand.weight[:, dim:])
        update = self.ffn_contract(self.dropout(F.relu(hidden)))
        return self.norm_ffn(x + self.dropout(update))


class _DecoupledDecoderBlock(nn.Module):
    """Self-attention on motion features, then cross-attention into the encoder memory, then the FFN."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float, anchors: int = 0):
        super().__init__()
        self.self_attention = _set_attention(dim, heads, dropout, anchors)
        self.memory_attention = _set_attention(dim, heads, dropout, anchors)
        self.ffn = _FeedForward(dim, ffn_dim, dropout)
        self.norm_self = nn.LayerNorm(dim)
        self.norm_memory = nn.LayerNorm(dim)
        self.norm_ffn = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, memory: torch.Tensor) -> torch.Tensor:
        x = self.norm_self(x + self.dropout(self.self_attention(x, mask)))
        x = self.norm_memory(x + self.dropout(self.memory_attention(x, mask, memory)))
        return self.norm_ffn(x + self.dropout(self.ffn(x)))


_ENCODED_PAIR = 2 * (2 * NUM_FREQUENCIES + 1)   # channels of one frequency-encoded (x, y) pair
_POSITION = slice(0, 2)                           # the raw (u, v): each encoding starts with its input
_STEP = slice(_ENCODED_PAIR, _ENCODED_PAIR + 2)   # the raw (du, dv) to the next frame


class _EgoMotionResiduals(nn.Module):
    """Weight-free extra inputs: how far each step departs from the camera motion of its frame.

    For every frame, two models of the static scene's motion to the next frame are fitted to the
    steps of all valid tracks: a homography (exact for a turning or zooming camera, or a distant
    scene) and an epipolar geometry (any rigid scene seen by a moving camera).
    The fits are iteratively reweighted least squares that discount steps far off the model, so
    the moving minority barely shapes them. Each step gets its homography residual (x, y) and its
    epipolar (Sampson) distance in units of the frame's robust residual scale, log-compressed.
    Steps without a next observation, and all steps of a frame with too few tracks for the fits,
    get zeros.

    With a ``baseline`` of k frames, two more channels hold each step's homography residual
    (x, y) over the last k frames, fitted and scaled the same way, zero for the first k steps. A
    slow mover, or one the camera follows, departs from the camera's motion by less than the
    tracking noise in one frame, but k times as much over k frames, while the noise does not
    add up alike.

    The fits only see valid steps and sum over tracks, so invalid steps and padding tracks
    influence nothing and the order of tracks does not matter. They are inputs, not learned:
    no gradient flows through them.
    """

    # A least-squares fit, then one reweighted fit. A first fit weighted by each step's distance
    # from the frame's median step holds to the camera under a large, fast mover (retrained:
    # synthetic 3-D scenes +0.02), but lost on real video (DAVIS-dev track AUROC 0.959 -> 0.940,
    # most of it on moving water), so the plain start stays.
    iterations = 2
    min_points = 16  # per frame; the epipolar fit has 8 unknowns

    def __init__(self, baseline: int = 0):
        super().__init__()
        self.baseline = baseline
        self.channels = 5 if baseline else 3

    def forward(self, features: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """(B, N, T, input_dim) features and (B, N, T) validity -> (B, N, T, channels)."""
        batch, tracks, window, _ = features.shape
        with torch.no_grad():
            paired = self._frame_sets(valid[..., :-1] & valid[..., 1:])
            x, y = self._coordinates(features[..., :-1, _POSITION], paired)
            u, v = self._coordinates(features[..., :-1, _POSITION] + features[..., :-1, _STEP], paired)
            flow_x, flow_y, epipolar = _fit_frame_motion(x, y, u, v, paired, self.iterations)
            residuals = features.new_zeros(batch, window, tracks, self.channels)
            residuals[:, :-1, :, :3] = self._compress(torch.stack((flow_x, flow_y, epipolar), -1), paired, batch)
            span = self.baseline
            if span and window > span:
                both = self._frame_sets(valid[..., :-span] & valid[..., span:])
                x, y = self._coordinates(features[..., :-span, _POSITION], both)
                u, v = self._coordinates(features[..., span:, _POSITION], both)
                flow_x, flow_y, _ = _fit_frame_motion(x, y, u, v, both, self.iterations, with_epipolar=False)
                residuals[:, span:, :, 3:] = self._compress(torch.stack((flow_x, flow_y), -1), both, batch)
        return residuals.transpose(1, 2)

    def _frame_sets(self, paired: torch.Tensor) -> torch.Tensor:
        """(B, N, F) pairs -> (B * F, N): one point set per (clip, frame). Fewer points than
        min_points leave the models underdetermined: those sets are left empty."""
        batch, tracks, frames = paired.shape
        paired = paired.transpose(1, 2).reshape(batch * frames, tracks)
        return paired & (paired.sum(dim=1, keepdim=True) >= self.min_points)

    @staticmethod
    def _coordinates(positions: torch.Tensor, paired: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x and y (S, N) of (B, N, F, 2) positions, zero outside ``paired``. Double precision: the
        fits' normal equations must resolve residuals of a thousandth of the image."""
        return tuple(torch.where(paired, positions[..., axis].transpose(1, 2).reshape(paired.shape).double(), 0.0)
                     for axis in range(2))

    @staticmethod
    def _compress(residuals: torch.Tensor, paired: torch.Tensor, batch: int) -> torch.Tensor:
        """Signed log1p of scaled residuals (B * F, N, C), zero where unpaired, as (B, F, N, C)."""
        compressed = residuals.sign() * residuals.abs().log1p()
        compressed = torch.where(paired.unsqueeze(-1), compressed, 0.0).float()
        return compressed.view(batch, -1, *compressed.shape[1:])


# The fits below work on point sets (S, N) of coordinates, one tensor per coordinate: products of
# whole tensors are much faster on a CPU than reductions and matrix products over axes of size 3.


def _fit_frame_motion(
    x: torch.Tensor, y: torch.Tensor, u: torch.Tensor, v: torch.Tensor, paired: torch.Tensor, iterations: int,
    with_epipolar: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Scaled residuals of the point pairs (x, y) -> (u, v), each (S, N): the homography's in x and
    y, and the epipolar (Sampson) distance (None without ``with_epipolar``)."""
    weight = paired.double()
    x, y = _normalise_points(x, y, weight)
    u, v = _normalise_points(u, v, weight)
    one, zero = torch.ones_like(x), torch.zeros_like(x)
    # Linear constraints (S, 9, K) on the 9 entries of each matrix, one column per point (two for
    # the homography): the weights change from fit to fit, the constraints do not.
    homography_rows = torch.cat((torch.stack((-x, -y, -one, zero, zero, zero, u * x, u * y, u), 1),
                                 torch.stack((zero, zero, zero, -x, -y, -one, v * x, v * y, v), 1)), dim=2)
    epipolar_rows = torch.stack((u * x, u * y, u, v * x, v * y, v, x, y, one), 1) if with_epipolar else None
    homography_weight = epipolar_weight = weight
    epipolar = None
    for _ in range(iterations):
        h = _null_vector(homography_rows, homography_weight.repeat(1, 2)).unsqueeze(-1)
        mapped_w = h[:, 6] * x + h[:, 7] * y + h[:, 8]
        mapped_w = torch.where(mapped_w.abs() < 1e-12, 1e-12, mapped_w)
        flow_x = u - (h[:, 0] * x + h[:, 1] * y + h[:, 2]) / mapped_w
        flow_y = v - (h[:, 3] * x + h[:, 4] * y + h[:, 5]) / mapped_w
        scale = _robust_scale((flow_x.square() + flow_y.square()).sqrt(), paired)
        flow_x, flow_y = flow_x / scale, flow_y / scale
        # Cauchy weights: a step a few scales off the fitted motion barely counts in the next fit.
        homography_weight = weight / (1.0 + 0.25 * (flow_x.square() + flow_y.square()))
        if with_epipolar:
            epipolar = _sampson_distance(x, y, u, v, _null_vector(epipolar_rows, epipolar_weight))
            epipolar = epipolar / _robust_scale(epipolar, paired)
            epipolar_weight = weight / (1.0 + 0.25 * epipolar.square())
    return flow_x, flow_y, epipolar


def _normalise_points(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Hartley's conditioning: the weighted points centred, at a mean distance of sqrt(2)."""
    count = weight.sum(1, keepdim=True).clamp_min(1.0)
    x = x - (x * weight).sum(1, keepdim=True) / count
    y = y - (y * weight).sum(1, keepdim=True) / count
    spread = ((x.square() + y.square()).sqrt() * weight).sum(1, keepdim=True) / count
    factor = 2.0 ** 0.5 / spread.clamp_min(1e-9)
    return x * factor, y * factor


def _null_vector(rows: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """(S, 9) unit vector h minimising sum_k weight_k (rows[:, :, k] . h)^2 for rows (S, 9, K)."""
    normal = (rows * weight.unsqueeze(1)) @ rows.transpose(1, 2)
    return torch.linalg.eigh(normal).eigenvectors[..., 0]


def _sampson_distance(x: torch.Tensor, y: torch.Tensor, u: torch.Tensor, v: torch.Tensor,
                      fundamental: torch.Tensor) -> torch.Tensor:
    """(S, N) first-order distance of the pairs (x, y) -> (u, v) from the epipolar geometry of the
    row-major ``fundamental`` (S, 9), made rank 2 first as a fundamental matrix is."""
    left, singular, right = torch.linalg.svd(fundamental.view(-1, 3, 3))
    f = (left @ torch.diag_embed(singular * singular.new_tensor([1.0, 1.0, 0.0])) @ right).flatten(1).unsqueeze(-1)
    # The epipolar line of (x, y) in the second image, and of (u, v) in the first.
    line_u, line_v, line_w = f[:, 0] * x + f[:, 1] * y + f[:, 2], f[:, 3] * x + f[:, 4] * y + f[:, 5], \
        f[:, 6] * x + f[:, 7] * y + f[:, 8]
    back_x, back_y = f[:, 0] * u + f[:, 3] * v + f[:, 6], f[:, 1] * u + f[:, 4] * v + f[:, 7]
    algebraic = u * line_u + v * line_v + line_w
    gradient = line_u.square() + line_v.square() + back_x.square() + back_y.square()
    return algebraic.abs() / gradient.clamp_min(1e-18).sqrt()


def _robust_scale(values: torch.Tensor, paired: torch.Tensor) -> torch.Tensor:
    """(S, 1) median absolute value over the paired entries as a Gaussian sigma, with a small floor."""
    median = torch.nanmedian(torch.where(paired, values.abs(), torch.nan), dim=-1, keepdim=True).values
    return 1.4826 * median.nan_to_num(1.0) + 1e-4


class TrajectoryTransformer(nn.Module):
    """Dynamic/static logit per track from a window of track features (see the module docstring).

    Semantics are optional: without them the semantic FFN input is zeros. Training zeroes each
    clip's semantics with probability ``config.semantic_dropout``, so a model run without a DINO
    backend still sees in-distribution input.
    """

    def __init__(self, config: TrajectoryTransformerConfig):
        super().__init__()
        self.config = config
        c = config
        self.ego_motion = _EgoMotionResiduals(c.ego_motion_baseline) if c.ego_motion_inputs else None
        extra_inputs = self.ego_motion.channels if self.ego_motion is not None else 0
        self.input_projection = nn.Sequential(
            nn.Linear(c.input_dim + extra_inputs, c.motion_dim), nn.ReLU(),
            nn.Linear(c.motion_dim, c.motion_dim), nn.ReLU(),
        )
        self.motion_encoder = nn.ModuleList(
            _SpaceTimeLayer(c.motion_dim, c.motion_heads, c.motion_ffn_dim, c.dropout, False, c.track_anchors)
            for _ in range(c.motion_encoder_layers)
        )
        self.motion_encoder_norm = nn.LayerNorm(c.motion_dim)
        self.motion_decoder = nn.ModuleList(
            _SpaceTimeLayer(c.motion_dim, c.motion_heads, c.motion_ffn_dim, c.dropout, True, c.track_anchors)
            for _ in range(c.motion_decoder_layers)
        )
        self.motion_decoder_norm = nn.LayerNorm(c.motion_dim) if c.motion_decoder_layers else None
        self.decoupled_embedding = nn.Linear(c.motion_dim, c.decoupled_dim)
        self.decoupled_encoder = nn.ModuleList(
            _DecoupledEncoderBlock(
                c.decoupled_dim, c.decoupled_heads, c.decoupled_ffn_dim, c.semantic_dim, c.dropout, c.track_anchors
            )
            for _ in range(c.decoupled_encoder_blocks)
        )
        self.decoupled_decoder = nn.ModuleList(
            _DecoupledDecoderBlock(c.decoupled_dim, c.decoupled_heads, c.decoupled_ffn_dim, c.dropout, c.track_anchors)
            for _ in range(c.decoupled_decoder_blocks)
        )
        self.output = nn.Linear(c.decoupled_dim, 1)

    def forward(
        self,
        features: torch.Tensor,
        visible: torch.Tensor,
        semantics: torch.Tensor | None = None,
        track_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (B, N).

        Args:
            features: (B, N, T, input_dim) from :func:`track_features`.
            visible: (B, N, T) bool; invisible steps influence no output.
            semantics: (B, N, semantic_dim) per-track semantic vectors, or None.
            track_mask: (B, N) bool, False for padding tracks, which influence no real track.
        """
        valid = visible if track_mask is None else visible & track_mask.unsqueeze(-1)
        motion = self._pool_motion(features, valid)
        # Tracks never seen in the window carry no motion: keep them out of the keys too.
        track_valid = valid.any(dim=-1)
        return self._classify(motion, track_valid, self._checked_semantics(semantics))

    def _pool_motion(self, features: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """(B, N, T, input_dim) -> (B, N, motion_dim): space-time transformer, max over valid steps."""
        masks = _SpaceTimeMasks.from_valid(valid)
        # The first layer as a sum over the two inputs, so the wide input is never concatenated.
        first, input_dim = self.input_projection[0], self.config.input_dim
        hidden = F.linear(features, first.weight[:, :input_dim], first.bias)
        if self.ego_motion is not None:
            hidden = hidden + F.linear(self.ego_motion(features, valid), first.weight[:, input_dim:])
        projected = self.input_projection[1:](hidden)
        memory = projected
        for layer in self.motion_encoder:
            memory = layer(memory, masks)
        memory = self.motion_encoder_norm(memory)
        motion = memory
        if self.motion_decoder:
            motion = projected
            for layer in self.motion_decoder:
                motion = layer(motion, masks, memory=memory)
            motion = self.motion_decoder_norm(motion)
        pooled = motion.masked_fill(~valid.unsqueeze(-1), -torch.inf).amax(dim=2)
        return torch.where(valid.any(dim=-1, keepdim=True), pooled, 0.0)

    def _checked_semantics(self, semantics: torch.Tensor | None) -> torch.Tensor | None:
        if semantics is None:
            return None
        if semantics.shape[-1] != self.config.semantic_dim:
            raise ValueError(
                f"semantic vectors have {semantics.shape[-1]} channels, the model expects {self.config.semantic_dim}"
            )
        if self.training and self.config.semantic_dropout > 0:
            keep = torch.rand(semantics.shape[0], 1, 1, device=semantics.device) >= self.config.semantic_dropout
            semantics = semantics * keep
        return semantics

    def _classify(self, motion: torch.Tensor, track_valid: torch.Tensor, semantics: torch.Tensor | None) -> torch.Tensor:
        """(B, N, motion_dim) -> logits (B, N) with the motion-semantic decoupled transformer."""
        mask = _key_mask(track_valid)
        embedded = self.decoupled_embedding(motion)
        memory = embedded
        for block in self.decoupled_encoder:
            memory = block(memory, mask, semantics)
        x = embedded
        for block in self.decoupled_decoder:
            x = block(x, mask, memory)
        return self.output(x).squeeze(-1)


def weighted_bce(logits: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """The paper's loss: BCE over the tracks of each clip, positives weighted by (N - N_pos) / N_pos.

    logits, labels (1 dynamic, 0 static) and valid are (..., N) with one clip per row; N counts the
    clip's valid tracks. The weight balances the usually rare dynamic tracks against the static
    ones. Returns the mean weighted loss over all valid tracks.
    """
    labels = labels.to(logits.dtype)
    valid = torch.ones_like(labels) if valid is None else valid.to(logits.dtype)
    num_tracks = valid.sum(dim=-1, keepdim=True)
    num_positive = (labels * valid).sum(dim=-1, keepdim=True)
    # A clip without positives has nothing to weight; clamping keeps the unused weight finite.
    positive_weight = (num_tracks - num_positive) / num_positive.clamp_min(1.0)
    weights = torch.where(labels > 0.5, positive_weight, 1.0) * valid
    losses = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    return (weights * losses).sum() / valid.sum().clamp_min(1.0)


WEIGHTS_FILE = "trajectory_classifier.pt"


def shipped_weights_path() -> Path:
    """The weights shipped in resource/: in the source tree, else in the installed share folder."""
    source_tree = Path(__file__).resolve().parents[2] / "resource" / WEIGHTS_FILE
    if source_tree.is_file():
        return source_tree
    try:
        from ament_index_python.packages import get_package_share_directory
        return Path(get_package_share_directory("anymo_ros")) / "resource" / WEIGHTS_FILE
    except (ImportError, LookupError):  # no ROS, or the package is not installed
        return source_tree


def save_weights(model: TrajectoryTransformer, path: str | Path) -> None:
    """Write ``{"config": dict, "state_dict": ...}``, everything needed to rebuild the model."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"config": model.config.to_dict(), "state_dict": model.state_dict()}, path)


def load_weights(path: str | Path, device: str = "cpu") -> TrajectoryTransformer:
    """Rebuild a model written by :func:`save_weights`, or mapped from an original SegAnyMo
    checkpoint (see segany_checkpoint.py; its outputs are not exactly the original's), in eval mode.

    Raises FileNotFoundError for a missing file and ValueError for a file that is neither.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"trajectory classifier weights not found: {path}")
    saved = torch.load(path, map_location=device, weights_only=True)
    if not (isinstance(saved, dict) and "config" in saved and "state_dict" in saved):
        from anymo_ros.classify.segany_checkpoint import is_segany_checkpoint, segany_model
        if not is_segany_checkpoint(saved):
            raise ValueError(f"{path} is neither a weights file written by anymo-train-classifier "
                             "nor a SegAnyMo checkpoint")
        _log.warning("%s is an original SegAnyMo checkpoint: mapped onto the paper-size model; its inputs "
                     "differ from the original's, so its outputs are not the original's (see the README)", path)
        return segany_model(saved, device=device)
    model = TrajectoryTransformer(TrajectoryTransformerConfig.from_dict(saved["config"]))
    model.load_state_dict(saved["state_dict"])
    return model.to(device).eval()


class LearnedTrackClassifier:
    """Numpy-in, numpy-out inference wrapper around :class:`TrajectoryTransformer`."""

    def __init__(self, weights_path: str | Path, device: str = "cpu"):
        self._use(load_weights(weights_path, device), device)

    @classmethod
    def from_model(cls, model: TrajectoryTransformer, device: str = "cpu") -> "LearnedTrackClassifier":
        classifier = cls.__new__(cls)
        classifier._use(model, device)
        return classifier

    def _use(self, model: TrajectoryTransformer, device: str) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()

    def predict(
        self,
        xy: np.ndarray,
        visible: np.ndarray,
        confidence: np.ndarray,
        image_size: tuple[int, int],
        depth: np.ndarray | None = None,
        semantics: np.ndarray | None = None,
    ) -> np.ndarray:
        """Dynamic probability (N,) float32 for N tracks over a window of T frames.

        Arguments are those of :func:`track_features`, plus ``semantics``: (N, semantic_dim)
        vectors or None when there is no semantic backend.
        """
        num_tracks = len(visible)
        if num_tracks == 0:
            return np.zeros(0, np.float32)
        with torch.inference_mode():
            # Features are built where the model runs: on a GPU their encoding costs a CPU ~10 ms.
            visible_t = torch.as_tensor(visible, dtype=torch.bool, device=self.device)
            features = track_features(torch.as_tensor(xy, dtype=torch.float32, device=self.device), visible_t,
                                      confidence, image_size, depth)
            semantics_t = None
            if semantics is not None:
                semantics_t = torch.as_tensor(semantics, dtype=torch.float32, device=self.device).unsqueeze(0)
            logits = self.model(features.unsqueeze(0), visible_t.unsqueeze(0), semantics_t)
            return torch.sigmoid(logits[0]).cpu().numpy().astype(np.float32, copy=False)
