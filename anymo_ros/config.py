"""Pipeline configuration: one dataclass tree, the single source of defaults and descriptions.

The ROS node declares one parameter per leaf field (``tracker.max_tracks`` and so on), with the
field's description; the offline tools read the same tree from YAML.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import yaml


def _param(default: Any, description: str, **kwargs: Any) -> Any:
    return field(default=default, metadata={"description": description, **kwargs})


@dataclass
class TrackerConfig:
    backend: str = _param("lk", "Point tracker: 'lk' (pyramidal Lucas-Kanade, built in).")
    max_tracks: int = _param(1200, "Upper bound on live tracks. About 1000 keeps the CPU budget at 854x480.")
    grid_spacing: int = _param(12, "Seeding grid spacing in processing pixels; a cell without a live track gets a new one.")
    lk_window: int = _param(15, "Lucas-Kanade window size in processing pixels.")
    lk_levels: int = _param(3, "Pyramid levels for Lucas-Kanade.")
    fb_threshold: float = _param(1.0, "Forward-backward error (processing px) above which a point is lost.")
    min_corner_quality: float = _param(0.001, "Shi-Tomasi quality for new seeds; textureless cells get no track.")


@dataclass
class ClassifierConfig:
    backend: str = _param("ensemble", "Dynamic/static track classifier: 'geometric' (camera-motion residual), 'learned' "
                                      "(the shipped trajectory transformer) or 'ensemble' (the two probabilities averaged).")
    weights: str = _param("", "Weights file for the learned classifier; empty means the file shipped in resource/.")
    learned_weight: float = _param(
        0.35, "Ensemble only: weight of the learned probability in the mean with the geometric one. Below 0.5 "
        "(with hysteresis_on 0.6) a confident geometric score can turn a track dynamic on its own, and the "
        "learned score, trained on synthetic scenes only, moves the undecided ones.")
    learned_every: int = _param(4, "Tracks the learned classifier re-scores each k frames: every frame it scores one "
                                   "k-th of them in turn, plus the new ones; the others keep their last learned "
                                   "probability.")
    residual_window: int = _param(12, "Frames of per-track residual history scored by the geometric classifier.")
    long_baseline: int = _param(8, "Frames between the two views of the geometric classifier's long-baseline residual, "
                                   "which finds slow and large movers that a frame-to-frame fit absorbs; 0 turns it off.")
    z_threshold: float = _param(8.0, "Residual significance (in noise sigmas) at which a track is half-way dynamic.")
    smoothing: float = _param(0.5, "Weight of the newest probability in the per-track exponential smoothing.")
    hysteresis_on: float = _param(0.6, "Smoothed probability above which a track turns dynamic.")
    hysteresis_off: float = _param(0.4, "Smoothed probability below which a dynamic track turns static again.")


@dataclass
class DensifyConfig:
    backend: str = _param("flow", "Dense mask backend: 'flow' (weight-free DIS flow residual, built in), 'sam2' or 'edgetam' (the paper's two-stage prompting of a streaming video segmenter; needs a checkpoint, see sam2.model).")
    flow_preset: str = _param("medium", "OpenCV DIS preset: 'ultrafast', 'fast' or 'medium'.")
    flow_scale: float = _param(
        0.5, "Scale of the flow field relative to processing resolution; the motion map and the region "
        "stage work at this scale too. 'medium' at half scale costs less than 'fast' at full scale, and "
        "the coarser map leaks less into dark, textureless background behind fast movers.")
    evidence_decay: float = _param(0.45, "Weight of the warped previous motion map in the temporal accumulation.")
    foreground_threshold: float = _param(0.6, "Accumulated motion probability above which a pixel can belong to an object.")
    min_object_tracks: int = _param(6, "Dynamic tracks an object needs before it is reported.")
    min_object_area: float = _param(0.002, "Smallest object area as a fraction of the image.")


@dataclass
class IdentityConfig:
    max_lost_frames: int = _param(20, "Frames an unseen object keeps its id for re-identification after occlusion.")
    min_track_overlap: float = _param(0.3, "Fraction of an object's tracks that must carry an old id for it to inherit that id.")


@dataclass
class DepthConfig:
    backend: str = _param("none", "Depth source: 'none', 'sensor' (the synced depth image: 16UC1 in mm or 32FC1 in m) "
                                  "or 'depth_anything' (Depth Anything V2, relative depth, via transformers).")
    model: str = _param("depth-anything/Depth-Anything-V2-Small-hf",
                        "Depth Anything V2 checkpoint: a Hugging Face model id or a local directory.")
    input_size: int = _param(518, "Shorter image side fed to Depth Anything, a multiple of 14 (518 as in training).")
    every: int = _param(1, "Run the depth model on every k-th frame; the last map is reused in between.")


@dataclass
class SemanticsConfig:
    backend: str = _param("none", "Per-track semantic features for the learned classifier: 'none' or 'dinov2' "
                                  "(DINOv2 via transformers).")
    model: str = _param("facebook/dinov2-base", "DINOv2 checkpoint: a Hugging Face model id or a local directory.")
    layer: int = _param(-1, "Transformer block the features come from; negative counts from the end "
                            "(-1: the last block, block 11 of DINOv2-B as in the paper).")
    facet: str = _param("key", "'key' (the block's attention keys, as in the paper) or 'token' (the block's output).")
    stride: int = _param(14, "Patch stride in pixels: 14 (the model's own) or 7 (overlapping patches as in the paper, "
                             "4x the tokens).")
    input_size: int = _param(448, "Longer image side fed to DINOv2, rounded to a multiple of 14; 0 keeps the frame "
                                  "size (rounded up), as in the paper.")
    every: int = _param(4, "Run DINOv2 on every k-th frame; tracks born in between get their vector at the next run.")


@dataclass
class Sam2Config:
    model: str = _param("", "Checkpoint for densify.backend 'sam2' or 'edgetam': a Hugging Face model id or a local "
                            "directory; empty: facebook/sam2.1-hiera-large (sam2) or yonigozlan/EdgeTAM-hf (edgetam).")
    min_group_tracks: int = _param(6, "Stage 1: dynamic tracks a clicked mask (dilated) must hold to become an object.")
    dilation_kernel: int = _param(6, "Stage 1: side of the square kernel that dilates each clicked mask.")
    dilation_iterations: int = _param(3, "Stage 1: dilation iterations.")
    discover_every: int = _param(1, "Look for new objects among uncovered dynamic tracks every k-th frame.")
    reprompt_every: int = _param(16, "Stage 2: re-prompt each object at the medoid of its tracks every N frames.")
    coverage: float = _param(0.7, "Stage 2: if fewer of the object's tracks than this fraction land in its mask, "
                                  "re-prompt with 3 points (nearest the centroid and the two farthest).")
    merge_iou: float = _param(0.9, "Two object masks overlap when their IoU exceeds this, ...")
    merge_cover: float = _param(0.9, "... or when one covers at least this fraction of the other.")
    merge_fraction: float = _param(0.3, "Merge two objects once their masks overlapped in this fraction of "
                                        "merge_window frames (among the last merge_window frames both existed in).")
    merge_window: int = _param(30, "Frames of overlap history kept per pair of objects for merging.")
    drop_patience: int = _param(10, "Frames an object may have no visible dynamic track (or an empty mask) "
                                    "before it is dropped.")
    max_objects: int = _param(16, "Most objects tracked at once; new groups beyond it are ignored.")
    conditioning_frames: int = _param(4, "Prompted frames kept in each object's memory; older ones are dropped, "
                                         "so cost stays constant on an endless stream.")


@dataclass
class SegmenterConfig:
    device: str = _param("cpu", "Torch device for learned models: 'cpu', 'cuda' or 'cuda:N'.")
    precision: str = _param("fp32", "Arithmetic of learned models on CUDA: 'fp32', 'fp16' or 'bf16' (autocast); "
                                    "CPU always runs fp32.")
    torch_threads: int = _param(1, "Threads torch computes with on the CPU (process-wide); 0 keeps torch's default of one "
                                   "per core. With more than one, torch's workers wait on cores that other processes "
                                   "hold, and the learned classifier can stall for up to a second on a loaded machine.")
    processing_width: int = _param(480, "Frames are resized to this width for tracking and flow; masks are returned at input size.")
    window: int = _param(16, "Sliding-window length in frames: the track history the classifier sees.")
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    densify: DensifyConfig = field(default_factory=DensifyConfig)
    identity: IdentityConfig = field(default_factory=IdentityConfig)
    depth: DepthConfig = field(default_factory=DepthConfig)
    semantics: SemanticsConfig = field(default_factory=SemanticsConfig)
    sam2: Sam2Config = field(default_factory=Sam2Config)

    # --- flat view used by the ROS parameter layer and YAML files ---
    def flat_items(self) -> Iterator[tuple[str, Any, str]]:
        """(dotted name, value, description) for every leaf field."""
        yield from _flat_items(self, "")

    def update_flat(self, values: dict[str, Any]) -> None:
        """Set leaf fields from dotted names; unknown names raise KeyError naming them."""
        for name, value in values.items():
            owner, leaf = _resolve(self, name)
            current = getattr(owner, leaf)
            setattr(owner, leaf, _coerce(value, type(current), name))

    @classmethod
    def from_yaml(cls, path: str | Path) -> "SegmenterConfig":
        """Read a config file: either a plain nested mapping or a ROS parameter file."""
        data = yaml.safe_load(Path(path).read_text()) or {}
        config = cls()
        config.update_flat(_pipeline_values(data))
        return config


def _flat_items(obj: Any, prefix: str) -> Iterator[tuple[str, Any, str]]:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        name = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            yield from _flat_items(value, name + ".")
        else:
            yield name, value, f.metadata.get("description", "")


def _resolve(config: Any, dotted: str) -> tuple[Any, str]:
    parts = dotted.split(".")
    owner = config
    for part in parts[:-1]:
        if not hasattr(owner, part) or not dataclasses.is_dataclass(getattr(owner, part)):
            raise KeyError(f"unknown pipeline parameter '{dotted}'")
        owner = getattr(owner, part)
    if not hasattr(owner, parts[-1]) or dataclasses.is_dataclass(getattr(owner, parts[-1])):
        raise KeyError(f"unknown pipeline parameter '{dotted}'")
    return owner, parts[-1]


def _coerce(value: Any, kind: type, name: str) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"parameter '{name}' must be true or false, got {value!r}")
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind):
        raise ValueError(f"parameter '{name}' must be {kind.__name__}, got {value!r}")
    return value


def _flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _pipeline_values(data: dict) -> dict[str, Any]:
    """Pipeline leaves from a YAML mapping; ROS files nest them under '<node>: ros__parameters: pipeline:'."""
    for node_section in data.values():
        if isinstance(node_section, dict) and "ros__parameters" in node_section:
            return _flatten(node_section["ros__parameters"].get("pipeline", {}))
    return _flatten(data.get("pipeline", data))
