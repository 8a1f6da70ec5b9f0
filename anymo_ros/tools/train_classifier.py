"""Train the learned trajectory classifier on synthetic scenes and write its weights and metadata.

    python -m anymo_ros.tools.train_classifier --out resource/trajectory_classifier.pt

writes the weights (``save_weights`` format) and, next to them, a JSON file of the same stem with
the model and training settings, the validation scores, the software the run used and the
SHA-256 of the weights file. With the defaults it reproduces the shipped file bit for bit on the
same torch/numpy/OpenCV versions and CPU instruction set (recorded in the metadata); elsewhere
floating-point differences make the weights differ slightly, which the recorded validation scores
let one judge. ``--steps`` and ``--seed`` give other runs (quick checks, seed studies).
``--workers`` processes render the clip pool and make the batches ahead of the model; they
change the run's time, never its weights.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import platform
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from anymo_ros.classify.training import (
    FAST_MODEL,
    RENDER_IMAGE_SIZES,
    SCENE_IMAGE_SIZES,
    TrainingConfig,
    TrainingResult,
    train,
    validation_sets,
)
from anymo_ros.classify.trajectory_transformer import save_weights
from anymo_ros.tools.synthetic import CLIP_CAMERA_MOTIONS, TRAJECTORY_CAMERA_MOTIONS

DEFAULT_OUT = Path("resource") / "trajectory_classifier.pt"


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def state_dict_sha256(model: torch.nn.Module) -> str:
    """Hash of the parameter values alone: unlike the file's, it does not depend on the file name,
    which torch.save writes into the archive."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().numpy().tobytes())
    return digest.hexdigest()


def metadata(config: TrainingConfig, result: TrainingResult, weights: Path, command: str, seconds: float,
             workers: int) -> dict:
    """Everything that describes the weights file: what it is, how it was made, how good it is."""
    model = result.model
    return {
        "weights_file": weights.name,
        "sha256": file_sha256(weights),
        "state_dict_sha256": state_dict_sha256(model),
        "size_bytes": weights.stat().st_size,
        "parameters": sum(p.numel() for p in model.parameters()),
        "model": model.config.to_dict(),
        "training": {
            **config.to_dict(),
            "optimizer": "Adam (L2 weight decay), linear warm-up then cosine decay",
            "loss": "weighted_bce: per-clip BCE, dynamic tracks weighted by (N - N_dynamic) / N_dynamic",
            "final_loss": float(np.mean(result.losses[-100:])),
            "wall_seconds": round(seconds, 1),   # validation sets, render pool and training
        },
        "data": {
            "scene_image_sizes": SCENE_IMAGE_SIZES,
            "scene_camera_motions": TRAJECTORY_CAMERA_MOTIONS,
            "render_image_sizes": RENDER_IMAGE_SIZES,
            "render_camera_motions": CLIP_CAMERA_MOTIONS,
            "semantics": "none: motion-only model (semantic_dim 0)",
            "first_batches_sha256": result.data_sha256,
        },
        "validation": result.validation,
        "decision_threshold": 0.5,
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "opencv": cv2.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "torch_threads": config.threads,
            "data_workers": workers,   # time only: the weights are the same with any number
        },
        "command": command,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"weights file (default {DEFAULT_OUT})")
    parser.add_argument("--steps", type=int, default=TrainingConfig.steps, help="optimiser steps")
    parser.add_argument("--seed", type=int, default=TrainingConfig.seed)
    parser.add_argument("--threads", type=int, default=TrainingConfig.threads,
                        help="torch threads; the sums, and so the weights, depend on it")
    parser.add_argument("--workers", type=int, default=1,
                        help="processes that render and make batches ahead of the model (0: none); "
                             "they save time, not change the weights (default 1)")
    args = parser.parse_args(argv)
    if args.workers < 0:
        parser.error("--workers must be 0 or more")

    config = dataclasses.replace(TrainingConfig(), steps=args.steps, seed=args.seed, threads=args.threads)
    started = time.perf_counter()
    print("building validation sets", flush=True)
    validation = validation_sets(config, args.workers)
    result = train(FAST_MODEL, config, validation, log=lambda line: print(line, flush=True), workers=args.workers)
    save_weights(result.model, args.out)
    command = " ".join(["python -m anymo_ros.tools.train_classifier", *(argv if argv is not None else sys.argv[1:])])
    info = metadata(config, result, args.out, command, time.perf_counter() - started, args.workers)
    args.out.with_suffix(".json").write_text(json.dumps(info, indent=2) + "\n")
    for name, scores in result.validation.items():
        print(f"{name:14s} " + "  ".join(f"{key} {value:.4f}" for key, value in scores.items() if key != "tracks"))
    print(f"wrote {args.out} ({info['size_bytes']} bytes, sha256 {info['sha256'][:16]}...) "
          f"in {info['training']['wall_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
