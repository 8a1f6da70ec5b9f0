"""Load the weights of the original SegAnyMo trajectory classifier into :class:`TrajectoryTransformer`.

The released model is ``traj_oa_depth`` of the SegAnyMo code (nnanhuang/SegAnyMo) with the
transformer decoder (``oanet: False``), depth, visibility/confidence and late DINOv2 features, as
in its example training config. Its checkpoint is ``{"model_state_dict": ...}`` with parameters
under ``joint_encoder.`` (the motion transformer) and ``decoder.`` (the motion-semantic decoupled
transformer); a ``module.`` prefix from multi-GPU training is accepted too.

Parameter compatibility is exact: every tensor of the checkpoint has a place of the same size in
the paper-size model (``TrajectoryTransformerConfig()``) and every parameter of that model is
filled, so :func:`load_segany_checkpoint` loads strictly. Mapping notes:

* The input projection's 1x1 convolutions (``input_fc1``, ``fc2``) become linear layers (the
  kernel's trailing 1x1 is dropped).
* Each original space-time layer has one attention (``self_attn``) used twice, along time and
  across tracks; its weights are copied into both our ``time_attention`` and ``track_attention``.
* ``nn.MultiheadAttention``'s packed ``in_proj_weight``/``in_proj_bias`` (query, key, value rows
  in that order) are our ``in_proj`` as they are.
* Norms are matched by position: encoder layer ``norm1`` (after time), ``norm3`` (after tracks),
  ``norm2`` (after the FFN); decoder layer ``norm1`` (time), ``norm4`` (tracks), ``norm2``
  (memory), ``norm3`` (FFN).

Output compatibility is not exact, for reasons in the inputs and in the masking, not in the
weights:

1. Frequency encoding. The original encodes coordinates and steps with sin/cos(2^k x), ours
   (features.py) with sin/cos(2^k pi x). No linear layer turns one into the other, so the first
   layer of a loaded model sees inputs it was not trained on. This is the one difference that
   makes loaded weights unusable without fine-tuning.
2. Depth channels. The original takes Depth Anything disparity min-max normalised over the whole
   image of each frame; ours normalises depth over the frame's visible tracks. Both lie in [0, 1]
   but the values differ.
3. Visibility and confidence. The original feeds the soft values of its tracker
   (1 - sigmoid(occlusion logit), 1 - sigmoid(expected distance)); ours feeds 0/1 visibility and
   the tracker's confidence.
4. Positions. The original divides by the image size (x / W * 2 - 1, clipped); ours maps pixel
   centres 0..W-1 onto [-1, 1]: a scale difference of (W - 1) / W.
5. Masking. The original masks invalid steps only as keys of the two self-attentions of the
   motion transformer; it attends to them in the memory attention and max-pools over every step,
   and the decoupled transformer attends to padded tracks. Ours masks them everywhere, so outputs
   differ wherever a track is invisible for part of the window (identical when all are visible).
"""
from __future__ import annotations

from pathlib import Path

import torch

from anymo_ros.classify.trajectory_transformer import TrajectoryTransformer, TrajectoryTransformerConfig

_ATTENTION = {"in_proj_weight": "in_proj.weight", "in_proj_bias": "in_proj.bias",
              "out_proj.weight": "out_proj.weight", "out_proj.bias": "out_proj.bias"}
_NORM = ("weight", "bias")


def _motion_layer_names(ours: str, theirs: str, decoder: bool) -> list[tuple[str, str]]:
    """(our name, original name) pairs of one space-time layer."""
    pairs = []
    for their_suffix, our_suffix in _ATTENTION.items():
        # One original attention serves both axes.
        pairs.append((f"{ours}.time_attention.{our_suffix}", f"{theirs}.self_attn.{their_suffix}"))
        pairs.append((f"{ours}.track_attention.{our_suffix}", f"{theirs}.self_attn.{their_suffix}"))
        if decoder:
            pairs.append((f"{ours}.memory_attention.{our_suffix}", f"{theirs}.multihead_attn.{their_suffix}"))
    norms = {"norm_time": "norm1", "norm_tracks": "norm4", "norm_memory": "norm2", "norm_ffn": "norm3"} if decoder \
        else {"norm_time": "norm1", "norm_tracks": "norm3", "norm_ffn": "norm2"}
    for our_norm, their_norm in norms.items():
        pairs += [(f"{ours}.{our_norm}.{p}", f"{theirs}.{their_norm}.{p}") for p in _NORM]
    for our_linear, their_linear in (("ffn.expand", "linear1"), ("ffn.contract", "linear2")):
        pairs += [(f"{ours}.{our_linear}.{p}", f"{theirs}.{their_linear}.{p}") for p in _NORM]
    return pairs


def parameter_names(config: TrajectoryTransformerConfig) -> list[tuple[str, str]]:
    """(our name, original name) for every parameter of a model with ``config``'s layer counts."""
    motion = "joint_encoder.transformer_model"
    pairs = [
        ("input_projection.0.weight", "joint_encoder.input_fc1.weight"),
        ("input_projection.0.bias", "joint_encoder.input_fc1.bias"),
        ("input_projection.2.weight", "joint_encoder.fc2.weight"),
        ("input_projection.2.bias", "joint_encoder.fc2.bias"),
    ]
    for i in range(config.motion_encoder_layers):
        pairs += _motion_layer_names(f"motion_encoder.{i}", f"{motion}.encoder.layers.{i}", decoder=False)
    pairs += [(f"motion_encoder_norm.{p}", f"{motion}.encoder.norm.{p}") for p in _NORM]
    for i in range(config.motion_decoder_layers):
        pairs += _motion_layer_names(f"motion_decoder.{i}", f"{motion}.decoder.layers.{i}", decoder=True)
    if config.motion_decoder_layers:
        pairs += [(f"motion_decoder_norm.{p}", f"{motion}.decoder.norm.{p}") for p in _NORM]
    pairs += [(f"decoupled_embedding.{p}", f"decoder.embedding.embedding.{p}") for p in _NORM]
    for i in range(config.decoupled_encoder_blocks):
        ours, theirs = f"decoupled_encoder.{i}", f"decoder.encoders.{i}"
        pairs += [(f"{ours}.attention.{o}", f"{theirs}.attention.{t}") for t, o in _ATTENTION.items()]
        for our_part, their_part in (("ffn_expand", "ffn.0"), ("ffn_contract", "ffn.2"),
                                     ("norm_attention", "norm1"), ("norm_ffn", "norm2")):
            pairs += [(f"{ours}.{our_part}.{p}", f"{theirs}.{their_part}.{p}") for p in _NORM]
    for i in range(config.decoupled_decoder_blocks):
        ours, theirs = f"decoupled_decoder.{i}", f"decoder.decoders.{i}"
        for our_attention, their_attention in (("self_attention", "self_attention"),
                                               ("memory_attention", "cross_attention")):
            pairs += [(f"{ours}.{our_attention}.{o}", f"{theirs}.{their_attention}.{t}") for t, o in _ATTENTION.items()]
        for our_part, their_part in (("ffn.expand", "ffn.0"), ("ffn.contract", "ffn.2"), ("norm_self", "norm1"),
                                     ("norm_memory", "norm2"), ("norm_ffn", "norm3")):
            pairs += [(f"{ours}.{our_part}.{p}", f"{theirs}.{their_part}.{p}") for p in _NORM]
    pairs += [(f"output.{p}", f"decoder.output_layer.{p}") for p in _NORM]
    return pairs


def convert_segany_state_dict(
    state_dict: dict[str, torch.Tensor], config: TrajectoryTransformerConfig | None = None
) -> dict[str, torch.Tensor]:
    """Our state dict from the original one; ValueError naming missing, unused or misshapen tensors.

    ``config`` gives the layer counts (default: the paper's, which the released model uses); it
    must have the original's full attention across tracks and plain inputs.
    """
    config = config or TrajectoryTransformerConfig()
    if config.track_anchors or config.ego_motion_inputs:
        raise ValueError("the original model attends across all tracks and takes no ego-motion inputs; "
                         "use a config with track_anchors=0 and ego_motion_inputs=False")
    theirs = {name.removeprefix("module."): tensor for name, tensor in state_dict.items()}
    pairs = parameter_names(config)
    missing = sorted({their for _, their in pairs} - set(theirs))
    unused = sorted(set(theirs) - {their for _, their in pairs})
    if missing or unused:
        raise ValueError(f"not a SegAnyMo trajectory classifier state dict for this config: "
                         f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                         f"unused {unused[:5]}{'...' if len(unused) > 5 else ''}")
    expected = TrajectoryTransformer(config).state_dict()
    converted = {}
    for our_name, their_name in pairs:
        tensor = theirs[their_name]
        if our_name.startswith("input_projection.") and tensor.dim() == 4:
            tensor = tensor.flatten(1)   # 1x1 convolution kernel -> linear weight
        if tensor.shape != expected[our_name].shape:
            raise ValueError(f"{their_name} has shape {tuple(tensor.shape)}, "
                             f"{our_name} needs {tuple(expected[our_name].shape)}")
        converted[our_name] = tensor.detach().clone().float()
    return converted


def is_segany_checkpoint(saved: object) -> bool:
    """Whether a loaded ``torch.load`` result looks like the original code's checkpoint."""
    state = saved.get("model_state_dict", saved) if isinstance(saved, dict) else None
    return isinstance(state, dict) and any(
        isinstance(name, str) and name.removeprefix("module.").startswith("joint_encoder.") for name in state)


def load_segany_checkpoint(
    path: str | Path, config: TrajectoryTransformerConfig | None = None, device: str = "cpu"
) -> TrajectoryTransformer:
    """A model with the original checkpoint's weights, in eval mode (see the module docstring for
    why its outputs differ from the original's)."""
    return segany_model(torch.load(Path(path), map_location=device, weights_only=True), config, device)


def segany_model(saved: dict, config: TrajectoryTransformerConfig | None = None,
                 device: str = "cpu") -> TrajectoryTransformer:
    """:func:`load_segany_checkpoint` for a checkpoint already read by ``torch.load``."""
    state_dict = saved.get("model_state_dict", saved)
    config = config or TrajectoryTransformerConfig()
    model = TrajectoryTransformer(config)
    model.load_state_dict(convert_segany_state_dict(state_dict, config))
    return model.to(device).eval()
