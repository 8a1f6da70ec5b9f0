"""Speed and memory of the streaming pipeline: prints figures, asserts nothing.

    anymo-bench                          # throughput, stages, latency, peak RSS at 854x480
    anymo-bench --soak 10000             # adds RSS after 10 000 frames (memory growth)
    anymo-bench --classifier-grid        # learned-classifier time over tracks x window length
    anymo-bench --frames ROOT/SEQ/frames # real frames instead of the synthetic scene

Frames are fed back to back, as fast as the pipeline takes them, so throughput is the pipeline's
own rate; latency is the time ``feed`` takes, from frame in to result out.
"""
from __future__ import annotations

import argparse
import platform
import resource
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from anymo_ros.config import SegmenterConfig
from anymo_ros.pipeline import MotionSegmenter


def current_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def load_frames(frames_dir: str | None, width: int, height: int, count: int) -> list[np.ndarray]:
    """RGB frames at width x height: a real image folder if given, else the synthetic scene."""
    if frames_dir:
        paths = sorted(p for p in Path(frames_dir).iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
        if not paths:
            raise SystemExit(f"anymo-bench: error: no .jpg/.png frames in {frames_dir}")
        frames = []
        for path in paths[:count]:
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None:
                raise SystemExit(f"anymo-bench: error: cannot read {path}")
            frames.append(cv2.cvtColor(cv2.resize(image, (width, height)), cv2.COLOR_BGR2RGB))
        return frames
    from anymo_ros.tools.synthetic import render_clip
    return render_clip(seed=0, num_frames=count, width=width, height=height, num_objects=2,
                       camera_motion="pan").frames


def run_stream(segmenter: MotionSegmenter, frames: list[np.ndarray], count: int, fps: float = 30.0):
    """Feed ``count`` frames (cycling through ``frames`` forwards and backwards so the motion stays
    continuous); returns per-frame latencies and summed stage times."""
    cycle = frames + frames[-2:0:-1] if len(frames) > 2 else frames
    latencies = np.empty(count)
    stages: dict[str, float] = {}
    for index in range(count):
        result = segmenter.feed(cycle[index % len(cycle)], index / fps)
        latencies[index] = result.processing_time
        for name, seconds in result.stage_times.items():
            stages[name] = stages.get(name, 0.0) + seconds
    return latencies, stages


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="anymo-bench", description=__doc__.split("\n")[0])
    parser.add_argument("--config", help="pipeline config YAML (default: built-in defaults)")
    parser.add_argument("--width", type=int, default=854)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--frames", help="folder of real frames to use instead of the synthetic scene")
    parser.add_argument("--count", type=int, default=300, help="frames timed for throughput and latency")
    parser.add_argument("--warmup", type=int, default=20, help="frames fed before timing starts")
    parser.add_argument("--soak", type=int, default=0, help="also stream this many frames and report RSS")
    parser.add_argument("--threads", type=int, default=2,
                        help="OpenCV threads, and torch's for --classifier-grid (the pipeline's torch threads are "
                             "the config's torch_threads)")
    parser.add_argument("--classifier-grid", action="store_true",
                        help="time the learned classifier over 256/1024/4096 tracks x 8/16/32/64 frames")
    args = parser.parse_args(argv)

    cv2.setNumThreads(args.threads)
    config = SegmenterConfig.from_yaml(args.config) if args.config else SegmenterConfig()
    print(f"machine: {platform.processor() or platform.machine()}, {args.threads} OpenCV threads, "
          f"{config.torch_threads or 'default'} torch threads, input {args.width}x{args.height}, "
          f"processing width {config.processing_width}")

    frames = load_frames(args.frames, args.width, args.height, 120)
    segmenter = MotionSegmenter(config)
    print("backends: " + ", ".join(f"{stage} {name}" for stage, name in segmenter.backends.items())
          + f"; device {segmenter.models.device}, precision {segmenter.models.precision}")
    for problem in segmenter.problems:
        print(f"fallback: {problem}")
    run_stream(segmenter, frames, args.warmup)
    started = time.perf_counter()
    latencies, stages = run_stream(segmenter, frames, args.count)
    elapsed = time.perf_counter() - started
    print(f"throughput: {args.count / elapsed:.1f} FPS over {args.count} frames")
    print(f"latency: p50 {1000 * np.percentile(latencies, 50):.1f} ms, "
          f"p95 {1000 * np.percentile(latencies, 95):.1f} ms, max {1000 * latencies.max():.1f} ms")
    print("per-stage mean (ms): " + ", ".join(
        f"{name} {1000 * seconds / args.count:.1f}" for name, seconds in stages.items()))
    print(f"peak RSS: {peak_rss_mb():.0f} MB")

    if args.soak:
        soak = MotionSegmenter(config)
        run_stream(soak, frames, 500)
        rss_early = current_rss_mb()
        run_stream(soak, frames, args.soak - 500)
        print(f"RSS after 500 frames: {rss_early:.0f} MB; after {args.soak} frames: {current_rss_mb():.0f} MB")

    if args.classifier_grid:
        from anymo_ros.tools.bench_classifier import MODELS, benchmark_classifier
        torch.set_num_threads(args.threads)
        for name, architecture in MODELS.items():
            print(f"learned classifier, {name} architecture")
            benchmark_classifier(config=architecture())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
