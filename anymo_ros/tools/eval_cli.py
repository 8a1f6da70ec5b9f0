"""anymo-eval: score the motion segmenter offline on video datasets and on Hopkins trajectory sets.

``anymo-eval mos ROOT`` feeds every sequence to a fresh pipeline one frame at a time, in order and
with stamps from the frame rate, exactly as the node receives a camera stream, and scores the
output against the ground-truth masks (moving-object segmentation: every object merged into one
foreground). ``anymo-eval bag OUTBAG GT_DIR`` scores the same way the node's results recorded by
``anymo-bag replay``. ``anymo-eval tracks ROOT`` classifies Hopkins point trajectories and reports
the misclassification rate.

The evaluation functions (`evaluate_sequence`, `evaluate_root`, `evaluate_result_bag`,
`evaluate_tracks`) are the library behind the commands, for benchmarks and other scorers.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import yaml
from tqdm import tqdm

from anymo_ros.config import ClassifierConfig, SegmenterConfig
from anymo_ros.tools.bag_cli import DEFAULT_MASKS_TOPIC, BagError, format_stamp, frame_stamp_ns, read_results
from anymo_ros.tools.datasets import (
    DEFAULT_FPS,
    DatasetError,
    Sequence,
    discover_sequences,
    find_hopkins_files,
    load_hopkins,
)
from anymo_ros.tools.metrics import SequenceScorer, SequenceScores, misclassification_rate, summarize
from anymo_ros.types import SegmentationResult, TrackSnapshot

TRACK_BACKENDS = ("geometric", "learned", "ensemble")


class EvaluationError(Exception):
    """The evaluation cannot run as asked (bad option, config or pipeline output)."""


class Segmenter(Protocol):
    def feed(self, image: np.ndarray, stamp: float) -> SegmentationResult: ...


SegmenterFactory = Callable[[], Segmenter]
# (xy (N, T, 2), visible (N, T)) -> group id per track (N,)
TrackGrouper = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _tqdm_disable(progress: bool) -> bool | None:
    # None lets tqdm hide the bar when stderr is not a terminal (logs, CI).
    return None if progress else True


# --- video sequences ---------------------------------------------------------------------------


def evaluate_sequence(
    sequence: Sequence,
    segmenter: Segmenter,
    instances: bool = False,
    max_frames: int | None = None,
    skip_first: int = 0,
    progress: bool = True,
) -> SequenceScores:
    """Feed `sequence` to `segmenter` frame by frame and score every annotated frame.

    The segmenter sees each frame once, in order, before the next is read: nothing looks ahead.
    The first `skip_first` frames are processed but not scored (warm-up); `max_frames` stops
    early. `instances` adds the per-frame instance J against the ground-truth object ids.
    """
    scorer = SequenceScorer(sequence.name)
    count = len(sequence) if max_frames is None else min(max_frames, len(sequence))
    for index in tqdm(range(count), desc=sequence.name, unit="frame", leave=False, disable=_tqdm_disable(progress)):
        result = segmenter.feed(sequence.frame(index), sequence.stamp(index))
        _score_frame(scorer, sequence, index, result.label_image, result.processing_time, instances, skip_first,
                     result.tracks)
    return scorer.result()


def _score_frame(scorer: SequenceScorer, sequence: Sequence, index: int, label_image: np.ndarray,
                 processing_time: float | None, instances: bool, skip_first: int,
                 tracks: TrackSnapshot | None = None) -> None:
    """Add frame `index`'s output to `scorer`, scored when it is annotated and past the warm-up;
    with the frame's `tracks`, their dynamic probabilities are scored too."""
    gt_mask = gt_instances = None
    if index >= skip_first and sequence.has_mask(index):
        if instances:
            gt_instances = sequence.instance_mask(index)
            gt_mask = gt_instances > 0
        else:
            gt_mask = sequence.mask(index)
        if label_image.shape != gt_mask.shape:
            raise EvaluationError(
                f"pipeline returned a {label_image.shape} label image for frame "
                f"{sequence.frame_paths[index]} with a {gt_mask.shape} mask"
            )
    track_xy = track_probability = None
    if tracks is not None and gt_mask is not None:
        track_xy, track_probability = tracks.xy[tracks.visible], tracks.dynamic_prob[tracks.visible]
    scorer.add_frame(label_image, processing_time, gt_mask, gt_instances, track_xy, track_probability)


def evaluate_root(
    root: str | Path,
    segmenter_factory: SegmenterFactory,
    names: list[str] | None = None,
    fps: float = DEFAULT_FPS,
    sparse_masks: bool = False,
    instances: bool = False,
    max_frames: int | None = None,
    skip_first: int = 0,
    progress: bool = True,
) -> list[SequenceScores]:
    """`evaluate_sequence` on every sequence under `root` (or `names`), each with a new segmenter.

    A fresh segmenter per sequence, as a node restarted per video: no state carries over. All
    sequences are discovered and checked before the first frame is processed.
    """
    sequences = discover_sequences(root, names, fps=fps, sparse_masks=sparse_masks)
    return [
        evaluate_sequence(sequence, segmenter_factory(), instances, max_frames, skip_first, progress)
        for sequence in sequences
    ]


def pipeline_factory(config: SegmenterConfig) -> SegmenterFactory:
    """Factory of the production pipeline with `config`."""
    try:
        from anymo_ros.pipeline import MotionSegmenter
    except ImportError as error:
        raise EvaluationError(f"cannot import the pipeline: {error}") from error

    def create() -> Segmenter:
        try:
            return MotionSegmenter(config)
        except ValueError as error:  # the pipeline's verdict on the configuration
            raise EvaluationError(f"cannot create the pipeline: {error}") from error

    return create


def evaluate_result_bag(
    bag: str | Path,
    sequence: Sequence,
    topic: str = DEFAULT_MASKS_TOPIC,
    start_time: float = 0.0,
    instances: bool = False,
    skip_first: int = 0,
    progress: bool = True,
) -> tuple[SequenceScores, int]:
    """Score the results that `anymo-bag replay` recorded in `bag` against `sequence`.

    A result belongs to the frame with its stamp: frame i of a bag made by `anymo-bag from-frames`
    is stamped start_time + i / sequence.fps. A frame without a result (dropped by the node) is
    scored as an empty mask. Returns the scores and the number of frames without a result.
    """
    scorer = SequenceScorer(sequence.name)
    frame_of_stamp = {frame_stamp_ns(index, sequence.fps, start_time): index for index in range(len(sequence))}
    empty = np.zeros(sequence.image_size, np.uint16)
    next_index = received = 0
    for result in tqdm(read_results(Path(bag), topic), total=len(sequence), desc=sequence.name, unit="frame",
                       leave=False, disable=_tqdm_disable(progress)):
        index = frame_of_stamp.get(result.stamp_ns)
        if index is None:
            raise EvaluationError(
                f"result at stamp {format_stamp(result.stamp_ns)} s in {bag} matches no frame of '{sequence.name}' "
                f"({len(sequence)} frames at {sequence.fps:g} fps from {start_time:g} s); pass the --fps and "
                "--start-time the bag was made with")
        if index < next_index:
            raise EvaluationError(f"result at stamp {format_stamp(result.stamp_ns)} s in {bag} is out of order "
                                  f"or repeated (frame {index} after frame {next_index - 1})")
        for dropped in range(next_index, index):
            _score_frame(scorer, sequence, dropped, empty, None, instances, skip_first)
        _score_frame(scorer, sequence, index, result.labels, result.processing_time, instances, skip_first)
        next_index, received = index + 1, received + 1
    for dropped in range(next_index, len(sequence)):
        _score_frame(scorer, sequence, dropped, empty, None, instances, skip_first)
    return scorer.result(), len(sequence) - received


# --- Hopkins trajectories ----------------------------------------------------------------------


def _image_size_of(xy: np.ndarray) -> tuple[int, int]:
    # Hopkins files do not store the image size; the extent of the points stands in for it.
    return int(np.ceil(np.nanmax(xy[..., 0]))) + 1, int(np.ceil(np.nanmax(xy[..., 1]))) + 1


def online_grouper(config: ClassifierConfig) -> TrackGrouper:
    """Static (0) / dynamic (1) groups from ``config``'s classifier (geometric or ensemble), run frame
    by frame exactly as the pipeline runs it (there is no dense motion map, so new tracks get the
    no-map prior). A track's group is its dynamic state after the last frame.
    """
    from anymo_ros.classify.online import OnlineTrackClassifier

    try:
        classifier = OnlineTrackClassifier(config)
    except FileNotFoundError as error:
        raise EvaluationError(str(error)) from error

    def group(xy: np.ndarray, visible: np.ndarray) -> np.ndarray:
        state = classifier.classify_tracks(xy, visible, _image_size_of(xy))
        if state is None:
            return np.zeros(len(xy), np.int64)
        return state.dynamic.astype(np.int64)

    return group


def learned_grouper(config: ClassifierConfig) -> TrackGrouper:
    """Static (0) / dynamic (1) groups from the learned classifier (``config.weights``, or the shipped
    weights when empty), which sees every frame of the sequence as one window. Hopkins tracks carry
    no tracker confidence: visible points get confidence 1.
    """
    from anymo_ros.classify.trajectory_transformer import LearnedTrackClassifier, shipped_weights_path

    try:
        classifier = LearnedTrackClassifier(config.weights or shipped_weights_path())
    except FileNotFoundError as error:
        raise EvaluationError(str(error)) from error

    def group(xy: np.ndarray, visible: np.ndarray) -> np.ndarray:
        probability = classifier.predict(np.nan_to_num(xy), visible, visible.astype(np.float32), _image_size_of(xy))
        return (probability >= 0.5).astype(np.int64)

    return group


def track_grouper(backend: str, config: ClassifierConfig) -> TrackGrouper:
    """The trajectory grouping of a classifier backend; EvaluationError if it does not exist."""
    if backend in ("geometric", "ensemble"):
        return online_grouper(dataclasses.replace(config, backend=backend))
    if backend == "learned":
        return learned_grouper(config)
    raise EvaluationError(f"unknown classifier backend '{backend}' (choose from {', '.join(TRACK_BACKENDS)})")


def evaluate_tracks(
    files: list[Path], groupers: dict[str, TrackGrouper], progress: bool = True
) -> list[dict[str, float | int | str]]:
    """Misclassification rate of every grouper on every Hopkins file: one row per sequence."""
    rows: list[dict[str, float | int | str]] = []
    for path in tqdm(files, desc="tracks", unit="seq", leave=False, disable=_tqdm_disable(progress)):
        xy, visible, labels = load_hopkins(path)
        row: dict[str, float | int | str] = {
            "sequence": path.stem, "points": len(labels), "frames": visible.shape[1],
            "groups": len(np.unique(labels)), "missing": float(1.0 - visible.mean()),
        }
        for backend, grouper in groupers.items():
            row[backend] = misclassification_rate(grouper(xy, visible), labels)
        rows.append(row)
    return rows


# --- command line ------------------------------------------------------------------------------


def _load_config(path: str | None) -> SegmenterConfig:
    if path is None:
        return SegmenterConfig()
    try:
        return SegmenterConfig.from_yaml(path)
    except (OSError, yaml.YAMLError, KeyError, ValueError) as error:
        raise EvaluationError(f"cannot use config {path}: {error}") from error


def json_ready(value):
    """JSON has no NaN: undefined scores become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: json_ready(item) for key, item in value.items()}
    if isinstance(value, list):
        return [json_ready(item) for item in value]
    return value


def _write_json(path: str, report: dict) -> None:
    try:
        Path(path).write_text(json.dumps(json_ready(report), indent=2) + "\n")
    except OSError as error:
        raise EvaluationError(f"cannot write {path}: {error}") from error


def _format_cell(value: float | int | str, column: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        return "-"
    if column.startswith("latency"):
        return f"{1000.0 * value:.1f}"
    if column == "fps":
        return f"{value:.1f}"
    return f"{value:.3f}"


def format_table(rows: list[dict], footer: dict, columns: list[tuple[str, str]]) -> str:
    """Plain-text table of `rows` and a `footer` row (the mean); `columns` are (row key, header) pairs."""
    header = [title for _, title in columns]
    body = [[_format_cell(row.get(key, math.nan), key) for key, _ in columns] for row in [*rows, footer]]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(columns))]

    def join(cells: list[str]) -> str:
        return "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(cells, widths)))

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([join(header), rule, *(join(line) for line in body[:-1]), rule, join(body[-1])])


def _print_scores(scores: list[SequenceScores], instances: bool) -> dict[str, float | int | str]:
    """Print the J/F/speed table of `scores` with their mean; returns the mean row."""
    rows, mean = [s.summary() for s in scores], summarize(scores)
    columns = [("sequence", "sequence"), ("frames", "frames"), ("scored", "scored"),
               ("J", "J"), ("F", "F"), ("J&F", "J&F")]
    if instances:
        columns.append(("instance_J", "inst J"))
    if "track_auroc" in mean:
        columns += [("track_accuracy", "trk acc"), ("track_auroc", "trk AUROC")]
    columns += [("fps", "FPS"), ("latency_p50", "p50 ms"), ("latency_p95", "p95 ms")]
    print(format_table(rows, mean, columns))
    return mean


def _run_mos(args: argparse.Namespace) -> None:
    config = _load_config(args.config)
    scores = evaluate_root(
        args.root, pipeline_factory(config), args.sequences, fps=args.fps, sparse_masks=args.sparse_masks,
        instances=args.instances, max_frames=args.max_frames, skip_first=args.skip_first,
    )
    mean = _print_scores(scores, args.instances)
    if args.json:
        _write_json(args.json, {
            "root": str(args.root),
            "options": {"fps": args.fps, "max_frames": args.max_frames, "skip_first": args.skip_first,
                        "sparse_masks": args.sparse_masks, "instances": args.instances},
            "config": {name: value for name, value, _ in config.flat_items()},
            "mean": mean,
            "sequences": [dict(s.summary(), per_frame_J=s.jaccard, per_frame_F=s.boundary,
                               per_frame_instance_J=s.instance_jaccard, processing_times=s.processing_times)
                          for s in scores],
        })


def _run_bag(args: argparse.Namespace) -> None:
    sequences = discover_sequences(args.gt_root, [args.sequence] if args.sequence else None, fps=args.fps,
                                   sparse_masks=args.sparse_masks)
    if len(sequences) > 1:
        raise EvaluationError(f"{args.gt_root} holds {len(sequences)} sequences "
                              f"({', '.join(s.name for s in sequences)}); choose the bag's with --sequence NAME")
    sequence = sequences[0]
    scores, missing = evaluate_result_bag(args.bag, sequence, args.topic, args.start_time, args.instances,
                                          args.skip_first)
    if missing:
        print(f"anymo-eval: {missing} of {len(sequence)} frames have no result in {args.bag} (dropped); "
              "scored as empty masks", file=sys.stderr)
    _print_scores([scores], args.instances)


def _run_tracks(args: argparse.Namespace) -> None:
    config = _load_config(args.config).classifier
    files = find_hopkins_files(args.root, args.sequences)
    if args.classifier == "all":
        groupers = {}
        for backend in TRACK_BACKENDS:
            try:
                groupers[backend] = track_grouper(backend, config)
            except EvaluationError as error:
                print(f"anymo-eval: skipping: {error}", file=sys.stderr)
    else:
        groupers = {args.classifier: track_grouper(args.classifier, config)}
    rows = evaluate_tracks(files, groupers)
    mean: dict[str, float | int | str] = {
        "sequence": "mean", "points": sum(int(r["points"]) for r in rows), "frames": "", "groups": "",
        "missing": float(np.mean([r["missing"] for r in rows])),
    }
    mean.update({backend: float(np.mean([r[backend] for r in rows])) for backend in groupers})
    columns = [("sequence", "sequence"), ("points", "points"), ("frames", "frames"), ("groups", "groups"),
               ("missing", "missing")] + [(backend, f"{backend} err") for backend in groupers]
    print(format_table(rows, mean, columns))
    if args.json:
        _write_json(args.json, {"root": str(args.root), "config": dataclasses.asdict(config),
                                "mean": mean, "sequences": rows})


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be zero or more, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="anymo-eval",
        description="Offline evaluation of the anymo_ros motion segmentation pipeline.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    mos = commands.add_parser(
        "mos", help="moving-object segmentation scores (J, F, J&F, speed) on video datasets",
        description="Run the pipeline causally over every sequence, as the node would on a live stream, and "
                    "score its foreground (all objects merged) against the ground-truth masks. Layouts: "
                    "ROOT/<seq>/frames/*.jpg|png with ROOT/<seq>/masks/*.png, or DAVIS "
                    "ROOT/JPEGImages/480p/<seq> with ROOT/Annotations/480p/<seq>. J and F are averaged over "
                    "frames, then over sequences; FPS and latency come from the pipeline's processing time.",
    )
    mos.add_argument("root", type=Path, help="dataset folder")
    mos.add_argument("--sequences", nargs="+", metavar="NAME", help="evaluate only these sequences")
    mos.add_argument("--config", metavar="YAML", help="pipeline configuration (default: built-in defaults)")
    mos.add_argument("--json", metavar="OUT", help="also write all scores, per frame included, to this JSON file")
    mos.add_argument("--instances", action="store_true",
                     help="also score per-object instance J (Hungarian matching on IoU, missed objects count 0)")
    mos.add_argument("--max-frames", type=_positive_int, metavar="N", help="process at most N frames per sequence")
    mos.add_argument("--fps", type=_positive_float, default=DEFAULT_FPS,
                     help=f"frame rate that sets the frame stamps (default {DEFAULT_FPS:g})")
    mos.add_argument("--skip-first", type=_non_negative_int, default=0, metavar="N",
                     help="process but do not score the first N frames of each sequence (default 0)")
    mos.add_argument("--sparse-masks", action="store_true",
                     help="allow frames without a mask (they are processed, not scored); by default a missing "
                          "mask is an error")
    mos.set_defaults(run=_run_mos)

    bag = commands.add_parser(
        "bag", help="the same scores for the node's results recorded in a bag (anymo-bag replay)",
        description="Score the label images of a result bag (anymo-bag replay) against the ground-truth masks "
                    "of one sequence, as 'mos' scores the pipeline. Results are matched to frames by stamp: "
                    "frame i is stamped start-time + i/fps, as anymo-bag from-frames made the input bag. A frame "
                    "without a result (dropped by the node) is scored as an empty mask. FPS and latency come "
                    "from the node's processing time.",
    )
    bag.add_argument("bag", type=Path, metavar="OUTBAG", help="result bag")
    bag.add_argument("gt_root", type=Path, metavar="GT_DIR", help="dataset folder with the sequence's frames and masks")
    bag.add_argument("--sequence", metavar="NAME", help="the bag's sequence when GT_DIR holds several")
    bag.add_argument("--topic", default=DEFAULT_MASKS_TOPIC, help=f"result topic (default {DEFAULT_MASKS_TOPIC})")
    bag.add_argument("--fps", type=_positive_float, default=DEFAULT_FPS,
                     help=f"frame rate the input bag was stamped with (default {DEFAULT_FPS:g})")
    bag.add_argument("--start-time", type=float, default=0.0, metavar="SECONDS",
                     help="stamp of the input bag's first frame (default 0)")
    bag.add_argument("--instances", action="store_true", help="also score per-object instance J (as mos)")
    bag.add_argument("--skip-first", type=_non_negative_int, default=0, metavar="N",
                     help="do not score the first N frames (default 0)")
    bag.add_argument("--sparse-masks", action="store_true", help="allow frames without a mask (not scored)")
    bag.set_defaults(run=_run_bag)

    tracks = commands.add_parser(
        "tracks", help="misclassification rate of the track classifier on Hopkins-style trajectory sets",
        description="Group the point trajectories of every ROOT/<seq>/<seq>.mat (Hopkins format: Data.ySparse, "
                    "Data.GtLabel) with a classifier backend and report the misclassification rate after the "
                    "best matching of predicted to true groups.",
    )
    tracks.add_argument("root", type=Path, help="folder of <seq>/<seq>.mat files, or one .mat file")
    tracks.add_argument("--sequences", nargs="+", metavar="NAME", help="evaluate only these sequences")
    tracks.add_argument("--classifier", choices=(*TRACK_BACKENDS, "all"), default="geometric",
                        help="classifier backend (default geometric); 'all' runs every available one")
    tracks.add_argument("--config", metavar="YAML", help="pipeline configuration whose classifier section is used")
    tracks.add_argument("--json", metavar="OUT", help="also write the scores to this JSON file")
    tracks.set_defaults(run=_run_tracks)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (BagError, DatasetError, EvaluationError) as error:
        print(f"anymo-eval: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
