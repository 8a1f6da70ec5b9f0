"""Speed of the learned trajectory classifier over track counts and window lengths.

Times :meth:`LearnedTrackClassifier.predict` end to end (features and model, numpy in and out) on
synthetic tracks, with untrained weights: the speed does not depend on them. ``--model shipped``
(the default) times the architecture of the weights shipped in resource/, ``--model paper``
the paper-size model.

    python -m anymo_ros.tools.bench_classifier --tracks 256 1024 --windows 8 16 --repeats 5
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from anymo_ros.classify.trajectory_transformer import (
    LearnedTrackClassifier,
    TrajectoryTransformer,
    TrajectoryTransformerConfig,
)

IMAGE_SIZE = (480, 270)


def _shipped_architecture() -> TrajectoryTransformerConfig:
    from anymo_ros.classify.training import FAST_MODEL
    return FAST_MODEL


MODELS = {"shipped": _shipped_architecture, "paper": TrajectoryTransformerConfig}


def synthetic_window(num_tracks: int, window: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random-walk tracks; about a quarter start part-way through the window, as fresh seeds do."""
    rng = np.random.default_rng(seed)
    start = rng.uniform((0, 0), IMAGE_SIZE, size=(num_tracks, 1, 2))
    xy = start + np.cumsum(rng.normal(0.0, 2.0, size=(num_tracks, window, 2)), axis=1)
    first_frame = np.where(rng.random(num_tracks) < 0.25, rng.integers(0, window, num_tracks), 0)
    visible = np.arange(window)[None, :] >= first_frame[:, None]
    return {
        "xy": xy.astype(np.float32),
        "visible": visible,
        "confidence": rng.uniform(0.5, 1.0, size=(num_tracks, window)).astype(np.float32),
        "depth": rng.uniform(1.0, 10.0, size=(num_tracks, window)).astype(np.float32),
    }


def benchmark_classifier(
    num_tracks_list=(256, 1024, 4096),
    window_list=(8, 16, 32, 64),
    repeats: int = 5,
    config: TrajectoryTransformerConfig | None = None,
    with_semantics: bool = False,
    device: str = "cpu",
) -> list[dict]:
    """Time one classification per (tracks, window) pair and print a table.

    Uses torch's current thread count (the caller sets it, e.g. ``torch.set_num_threads(2)``).
    Returns one dict per pair: num_tracks, window, median_ms, min_ms, threads, device,
    with_semantics. The minimum is the better figure on a machine shared with other work.
    """
    config = config or TrajectoryTransformerConfig()
    torch.manual_seed(0)
    classifier = LearnedTrackClassifier.from_model(TrajectoryTransformer(config), device=device)
    rows = []
    for num_tracks in num_tracks_list:
        for window in window_list:
            inputs = synthetic_window(num_tracks, window)
            semantics = None
            if with_semantics:
                semantics = np.random.default_rng(1).normal(size=(num_tracks, config.semantic_dim)).astype(np.float32)
            classifier.predict(image_size=IMAGE_SIZE, semantics=semantics, **inputs)  # warm-up
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                classifier.predict(image_size=IMAGE_SIZE, semantics=semantics, **inputs)
                times.append(time.perf_counter() - start)
            rows.append({
                "num_tracks": num_tracks,
                "window": window,
                "median_ms": 1000.0 * float(np.median(times)),
                "min_ms": 1000.0 * min(times),
                "threads": torch.get_num_threads(),
                "device": device,
                "with_semantics": with_semantics,
            })
    print_table(rows)
    return rows


def print_table(rows: list[dict]) -> None:
    print(f"{'tracks':>7} {'window':>6} {'median ms':>10} {'min ms':>9}  threads  device  semantics")
    for row in rows:
        print(
            f"{row['num_tracks']:>7} {row['window']:>6} {row['median_ms']:>10.1f} {row['min_ms']:>9.1f}"
            f"  {row['threads']:>7}  {row['device']:<6}  {row['with_semantics']}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracks", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--windows", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--semantics", action="store_true", help="feed 768-d semantic vectors")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", choices=sorted(MODELS), default="shipped",
                        help="architecture: the shipped fast variant or the paper-size model")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    benchmark_classifier(args.tracks, args.windows, args.repeats, config=MODELS[args.model](),
                         with_semantics=args.semantics, device=args.device)


if __name__ == "__main__":
    main()
