"""Per-stage time of the learned backends, per preset, with randomly initialised models.

    python -m anymo_ros.tools.bench_backends                     # tiny and real-size models, CPU
    python -m anymo_ros.tools.bench_backends --sizes tiny        # tiny only (seconds)
    python -m anymo_ros.tools.bench_backends --device cuda --frames 20

Speed does not depend on the weights, so the models are built from their configuration classes
with random weights, nothing is downloaded: "tiny" uses the small configurations the tests use,
"real" the classes' default configurations (DINOv2-B/14, Depth Anything V2-S, SAM2.1-Hiera-T;
EdgeTAM with its default config, which has a Hiera backbone instead of the released RepViT one).
Stages:

* depth: Depth Anything on one frame, at ``depth.input_size``;
* semantics: DINOv2 feature map at the preset's stride and input size, plus sampling 1000 tracks;
* segmenter: SAM2/EdgeTAM propagation of 2 objects to a new frame, and one medoid re-prompt.

Each stage reports ms per call and ms per frame once its ``every`` rate is applied. A real-size
segmenter whose first frame takes over ``--max-seconds`` is skipped, with a note.
"""
from __future__ import annotations

import argparse
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from anymo_ros.config import SegmenterConfig

# ---------------------------------------------------------------------------------- model builders
TINY_IMAGE = 128   # SAM2 input side of the tiny configuration


def tiny_sam2_config(family: str = "sam2", image_size: int = TINY_IMAGE):
    """A SAM2 (or EdgeTAM) video config small enough for CPU tests (~1.4 M parameters).

    Constraints found in the model code: the memory attention's cross-attention takes 64-channel
    memories (``memory_encoder_output_channels`` = 64), object pointers are split into 64-channel
    pieces (so hidden sizes are a multiple of 64 above it: 128), a global-attention block cannot be
    the first block of a pooling stage, and EdgeTAM's perceiver width equals the memory width.
    """
    if family == "edgetam":
        from transformers import EdgeTamVideoConfig as VideoConfig
        from transformers import EdgeTamVideoMaskDecoderConfig as MaskDecoderConfig
        from transformers import EdgeTamVideoPromptEncoderConfig as PromptEncoderConfig
    else:
        from transformers import Sam2VideoConfig as VideoConfig
        from transformers import Sam2VideoMaskDecoderConfig as MaskDecoderConfig
        from transformers import Sam2VideoPromptEncoderConfig as PromptEncoderConfig
    side = image_size
    vision = dict(
        model_type="sam2_vision_model",
        backbone_config=dict(
            model_type="sam2_hiera_det_model", hidden_size=16, num_attention_heads=1, image_size=[side, side],
            blocks_per_stage=[1, 1, 2, 1], embed_dim_per_stage=[16, 32, 64, 128],
            num_attention_heads_per_stage=[1, 1, 2, 2], window_size_per_stage=[4, 4, 4, 2],
            global_attention_blocks=[3], window_positional_embedding_background_size=[2, 2]),
        backbone_channel_list=[128, 64, 32, 16],
        backbone_feature_sizes=[[side // 4, side // 4], [side // 8, side // 8], [side // 16, side // 16]],
        fpn_hidden_size=128)
    common = dict(
        vision_config=vision,
        # Config objects, not dicts: transformers up to 5.17 builds the mask decoder's from a dict
        # with the prompt encoder's class.
        prompt_encoder_config=PromptEncoderConfig(hidden_size=128, image_size=side, patch_size=16, mask_input_channels=4),
        mask_decoder_config=MaskDecoderConfig(hidden_size=128, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32),
        image_size=side, memory_attention_hidden_size=128, memory_attention_num_layers=1,
        memory_attention_rope_feat_sizes=[side // 16, side // 16], memory_encoder_hidden_size=128,
        memory_encoder_output_channels=64, mask_downsampler_embed_dim=128, memory_fuser_embed_dim=128,
        memory_fuser_intermediate_dim=64, num_maskmem=3, max_object_pointers_in_encoder=4)
    if family == "edgetam":
        return VideoConfig(
            **common, memory_attention_mlp_hidden_size=128, memory_attention_rope_k_sizes=[4, 4],
            perceiver_resampler_num_latents=16, perceiver_resampler_num_latents_2d=16,
            perceiver_resampler_hidden_size=64, perceiver_resampler_mlp_intermediate_size=64,
            perceiver_resampler_attention_head_dim=64)
    return VideoConfig(**common, memory_attention_feed_forward_hidden_size=128)


def sam2_processor(image_size: int = 1024):
    """A ``Sam2VideoProcessor`` for a model with ``image_size`` input (1024 for the released models)."""
    from transformers import Sam2ImageProcessor, Sam2VideoProcessor
    from transformers.models.sam2_video.video_processing_sam2_video import Sam2VideoVideoProcessor

    size = {"height": image_size, "width": image_size}
    return Sam2VideoProcessor(
        image_processor=Sam2ImageProcessor(size=size, mask_size={"height": image_size // 4, "width": image_size // 4}),
        video_processor=Sam2VideoVideoProcessor(size=size), target_size=image_size)


def random_sam2(family: str = "sam2", size: str = "tiny", seed: int = 0):
    """(model, processor) with random weights: the tiny config or the class's default config."""
    from anymo_ros.densify.sam2 import model_class

    torch.manual_seed(seed)
    if size == "tiny":
        config = tiny_sam2_config(family)
    else:
        from transformers import EdgeTamVideoConfig, Sam2VideoConfig
        config = EdgeTamVideoConfig() if family == "edgetam" else Sam2VideoConfig()
    model = model_class(family)(config).eval()
    image_size = config.image_size if isinstance(config.image_size, int) else config.image_size[0]
    return model, sam2_processor(image_size)


def tiny_dinov2_config():
    from transformers import Dinov2Config
    return Dinov2Config(hidden_size=48, num_hidden_layers=3, num_attention_heads=4, intermediate_size=96,
                        image_size=56, patch_size=14)


def random_dinov2(size: str = "tiny", seed: int = 0):
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(seed)
    config = tiny_dinov2_config() if size == "tiny" else Dinov2Config(image_size=518)
    return Dinov2Model(config).eval()


def tiny_depth_anything_config():
    from transformers import DepthAnythingConfig
    backbone = dict(model_type="dinov2", hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                    intermediate_size=64, image_size=56, patch_size=14, out_indices=[1, 2, 3, 4],
                    reshape_hidden_states=False)
    return DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=32, neck_hidden_sizes=[8, 16, 24, 32],
                               fusion_hidden_size=16, head_hidden_size=8)


def random_depth_anything(size: str = "tiny", seed: int = 0):
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation

    torch.manual_seed(seed)
    config = tiny_depth_anything_config() if size == "tiny" else DepthAnythingConfig()
    return DepthAnythingForDepthEstimation(config).eval()


def depth_anything_processor(input_size: int = 518):
    """The image processor the Depth Anything V2 checkpoints ship."""
    from transformers import DPTImageProcessor
    return DPTImageProcessor(size={"height": input_size, "width": input_size}, keep_aspect_ratio=True,
                             ensure_multiple_of=14, image_mean=[0.485, 0.456, 0.406],
                             image_std=[0.229, 0.224, 0.225], do_pad=False)


def save_random_checkpoints(root: Path, size: str = "tiny") -> dict[str, Path]:
    """Write random-weight checkpoints (model + processor, ``save_pretrained`` layout) under ``root``:
    what a local checkpoint directory looks like, for tests of the real loading code."""
    root = Path(root)
    paths = {}
    for family in ("sam2", "edgetam"):
        model, processor = random_sam2(family, size)
        paths[family] = root / family
        model.save_pretrained(paths[family])
        processor.save_pretrained(paths[family])
    paths["dinov2"] = root / "dinov2"
    random_dinov2(size).save_pretrained(paths["dinov2"])
    paths["depth_anything"] = root / "depth_anything"
    random_depth_anything(size).save_pretrained(paths["depth_anything"])
    depth_anything_processor().save_pretrained(paths["depth_anything"])
    return paths


# ---------------------------------------------------------------------------------- presets
PRESETS = ("embedded", "jetson", "full_gpu")


def preset_config(name: str) -> SegmenterConfig:
    """The preset's pipeline config: config/<name>.yaml where it exists, else the defaults."""
    if name == "embedded":
        return SegmenterConfig()
    path = Path(__file__).resolve().parents[2] / "config" / f"{name}.yaml"
    return SegmenterConfig.from_yaml(path) if path.exists() else SegmenterConfig()


@dataclass
class StageTime:
    preset: str
    size: str
    stage: str
    backend: str
    ms_per_call: float
    every: int
    note: str = ""

    @property
    def ms_per_frame(self) -> float:
        return self.ms_per_call / self.every


def _time(fn, repeats: int) -> float:
    """Median ms of ``repeats`` calls after one warm-up call (allocations, lazy init)."""
    fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return 1000.0 * float(np.median(times))


def bench_preset(preset: str, size: str, frames: list[np.ndarray], device: str, repeats: int,
                 max_seconds: float) -> list[StageTime]:
    from anymo_ros.densify.sam2 import Sam2VideoSegmenter
    from anymo_ros.depth.depth_anything import DepthAnythingDepth
    from anymo_ros.semantics.dinov2 import DinoV2Semantics

    config = preset_config(preset)
    config.device = device
    rows: list[StageTime] = []
    rng = np.random.default_rng(0)
    height, width = frames[0].shape[:2]
    tracks = rng.uniform((0, 0), (width - 1, height - 1), size=(1000, 2)).astype(np.float32)

    if config.depth.backend == "depth_anything":
        depth = DepthAnythingDepth.from_model(random_depth_anything(size), config.depth, device)
        rows.append(StageTime(preset, size, "depth", "depth_anything",
                              _time(lambda: depth.estimate(frames[0]), repeats),
                              config.depth.every, "input {1}x{0}".format(*depth.input_shape(height, width))))
        depth.release()
    if config.semantics.backend == "dinov2":
        semantics = DinoV2Semantics.from_model(random_dinov2(size), config.semantics, device)
        in_h, in_w = semantics.input_shape(height, width)
        rows.append(StageTime(preset, size, "semantics", f"dinov2/s{config.semantics.stride}",
                              _time(lambda: semantics.extract(frames[0], tracks), repeats), config.semantics.every,
                              f"input {in_w}x{in_h}, dim {semantics.semantic_dim}"))
        semantics.release()
    if config.densify.backend in ("sam2", "edgetam"):
        family = config.densify.backend
        model, processor = random_sam2(family, size)
        segmenter = Sam2VideoSegmenter.from_model(model, processor, family, device)
        segmenter.start((width, height))
        started = time.perf_counter()
        segmenter.add_frame(frames[0])
        segmenter.prompt(1, tracks[:1])
        segmenter.prompt(2, tracks[1:2])
        segmenter.masks()
        first = time.perf_counter() - started
        if first > max_seconds:
            rows.append(StageTime(preset, size, "segmenter", family, 1000 * first, 1,
                                  f"first frame took {first:.0f} s > {max_seconds:.0f} s: skipped"))
        else:
            counter = iter(range(1, 10 ** 9))

            def propagate():
                segmenter.add_frame(frames[next(counter) % len(frames)])
                segmenter.masks()

            def reprompt():
                segmenter.add_frame(frames[next(counter) % len(frames)])
                segmenter.prompt(1, tracks[2:3])
                segmenter.masks()

            rows.append(StageTime(preset, size, "segmenter", f"{family} propagate 2 obj", _time(propagate, repeats), 1,
                                  f"model input {processor.target_size}"))
            rows.append(StageTime(preset, size, "segmenter", f"{family} + re-prompt", _time(reprompt, repeats),
                                  config.sam2.reprompt_every))
        segmenter.release()
    return rows


def print_table(rows: list[StageTime]) -> None:
    print(f"{'preset':<10} {'size':<5} {'stage':<10} {'backend':<26} {'ms/call':>9} {'every':>5} {'ms/frame':>9}  note")
    for row in rows:
        print(f"{row.preset:<10} {row.size:<5} {row.stage:<10} {row.backend:<26} {row.ms_per_call:9.1f} "
              f"{row.every:5d} {row.ms_per_frame:9.1f}  {row.note}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="+", default=["jetson", "full_gpu"], choices=PRESETS)
    parser.add_argument("--sizes", nargs="+", default=["tiny", "real"], choices=["tiny", "real"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--width", type=int, default=480, help="frame width (processing resolution)")
    parser.add_argument("--height", type=int, default=270)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-seconds", type=float, default=60.0,
                        help="skip a segmenter whose first frame takes longer than this")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    from anymo_ros.tools.synthetic import render_clip

    frames = render_clip(seed=0, num_frames=4, width=args.width, height=args.height, num_objects=2).frames
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, device {args.device}, frames {args.width}x{args.height}")
    rows = []
    for preset in args.presets:
        for size in args.sizes:
            rows += bench_preset(preset, size, frames, args.device, args.repeats, args.max_seconds)
    print_table(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
