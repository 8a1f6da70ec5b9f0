"""Compare the geometric, learned and ensemble track classifiers on synthetic validation and Hopkins.

    python -m anymo_ros.tools.eval_classifier [--weights FILE] [--hopkins ROOT]

Synthetic validation: the windows that training validates on (seeds training never uses; 3-D
scenes without and with depth, and Lucas-Kanade tracks of rendered clips), scored per track:
accuracy, precision and recall of the dynamic class, and AUROC of the dynamic probability. The
learned classifier sees each window whole; the geometric and the ensemble classifiers run frame
by frame over it as in the pipeline and are scored on their state after the last frame. Hopkins:
misclassification rate per sequence, as ``anymo-eval tracks``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

from anymo_ros.classify.online import OnlineTrackClassifier
from anymo_ros.classify.training import (
    TrainingConfig,
    TrackWindow,
    ValidationSet,
    classification_scores,
    predict_windows,
    validation_sets,
)
from anymo_ros.classify.trajectory_transformer import load_weights, shipped_weights_path
from anymo_ros.config import ClassifierConfig
from anymo_ros.tools.datasets import find_hopkins_files
from anymo_ros.tools.eval_cli import TRACK_BACKENDS, evaluate_tracks, format_table, json_ready, track_grouper

# Where the project's evaluation data sit next to a checkout, as the tests expect them.
DEFAULT_HOPKINS = Path(__file__).resolve().parents[3] / "shared" / "data" / "hopkins12"
SCORE_NAMES = ("accuracy", "precision", "recall", "auroc")
VALIDATION_BACKENDS = (("geometric", "geo"), ("learned", "learned"), ("ensemble", "ens"))


def online_scores(windows: list[TrackWindow], config: ClassifierConfig) -> dict[str, float]:
    """Scores of ``config``'s classifier run frame by frame over each window, as in the pipeline."""
    probabilities, decisions = [], []
    classifier = OnlineTrackClassifier(config)
    for window in windows:
        state = classifier.classify_tracks(window.xy, window.visible, window.image_size)
        probabilities.append(np.zeros(len(window)) if state is None else state.probability)
        decisions.append(np.zeros(len(window), bool) if state is None else state.dynamic)
    dynamic = np.concatenate([window.dynamic for window in windows])
    return classification_scores(np.concatenate(probabilities), dynamic, np.concatenate(decisions))


def compare_on_validation(weights: Path, sets: list[ValidationSet], config: ClassifierConfig) -> list[dict]:
    """One row per validation set with each classifier's scores (keys ``<backend>_<score>``)."""
    model = load_weights(weights)
    rows = []
    for validation in sets:
        dynamic = np.concatenate([window.dynamic for window in validation.windows])
        scores = {
            "geometric": online_scores(validation.windows, dataclasses.replace(config, backend="geometric")),
            "learned": classification_scores(np.concatenate(predict_windows(model, validation.windows)), dynamic),
            "ensemble": online_scores(validation.windows, dataclasses.replace(config, backend="ensemble")),
        }
        row = {"set": validation.name, "tracks": len(dynamic), "dynamic": float(dynamic.mean())}
        for backend, values in scores.items():
            row.update({f"{backend}_{name}": values[name] for name in SCORE_NAMES})
        rows.append(row)
    return rows


def _print_validation(rows: list[dict]) -> None:
    columns = [("set", "set"), ("tracks", "tracks"), ("dynamic", "dynamic")]
    for name in SCORE_NAMES:
        columns += [(f"{backend}_{name}", f"{short} {name}") for backend, short in VALIDATION_BACKENDS]
    total = sum(row["tracks"] for row in rows)
    # Track-weighted mean: every validation track counts once.
    footer = {"set": "all", "tracks": total,
              "dynamic": sum(row["dynamic"] * row["tracks"] for row in rows) / total}
    for key, _ in columns[3:]:
        footer[key] = sum(row[key] * row["tracks"] for row in rows) / total
    print(format_table(rows, footer, columns))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, help="learned classifier weights (default: the shipped file)")
    parser.add_argument("--hopkins", type=Path, default=DEFAULT_HOPKINS if DEFAULT_HOPKINS.is_dir() else None,
                        help="Hopkins folder of <seq>/<seq>.mat files (default: shared/data/hopkins12 next to the "
                             "checkout, when there)")
    parser.add_argument("--scenes", type=int, default=TrainingConfig.validation_scenes,
                        help="3-D scene windows per validation set")
    parser.add_argument("--renders", type=int, default=TrainingConfig.validation_renders,
                        help="tracked rendered clips")
    parser.add_argument("--json", type=Path, help="also write all scores to this JSON file")
    args = parser.parse_args(argv)

    weights = args.weights or shipped_weights_path()
    config = ClassifierConfig(weights=str(weights))
    sets = validation_sets(TrainingConfig(validation_scenes=args.scenes, validation_renders=args.renders))
    validation = compare_on_validation(weights, sets, config)
    print("Synthetic validation (per track, dynamic = positive)")
    _print_validation(validation)
    report = {"weights": str(weights), "validation": validation}

    if args.hopkins is not None:
        groupers = {backend: track_grouper(backend, config) for backend in TRACK_BACKENDS}
        rows = evaluate_tracks(find_hopkins_files(args.hopkins), groupers, progress=False)
        mean = {"sequence": "mean", "points": sum(row["points"] for row in rows), "groups": ""}
        mean.update({name: float(np.mean([row[name] for row in rows])) for name in groupers})
        print("\nHopkins misclassification rate (lower is better)")
        print(format_table(rows, mean, [("sequence", "sequence"), ("points", "points"), ("groups", "groups"),
                                        *((name, f"{name} err") for name in groupers)]))
        report["hopkins"] = {"root": str(args.hopkins), "mean": mean, "sequences": rows}
    if args.json:
        args.json.write_text(json.dumps(json_ready(report), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
