"""Evaluation metrics: DAVIS region/boundary scores, instance matching and the Hopkins error rate.

Conventions shared by every function here:

* Masks are boolean (H, W) arrays; label images are integer (H, W) arrays where 0 is background
  and every other value is one object.
* Sequence scores are the mean of per-frame scores; dataset scores are the mean of sequence
  scores (the DAVIS convention, so long sequences do not dominate).
* Track scores judge the classifier on real video: a track inside the ground-truth mask counts
  as dynamic, one outside as static, and one near the mask's boundary is not scored.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

from anymo_ros.classify.training import classification_scores

DAVIS_TOLERANCE_RATIO = 0.008

_FOUR_CONNECTED = ndimage.generate_binary_structure(2, 1)


# --- ground-truth decoding -------------------------------------------------------------------


def _colour_channels(image: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, C) view of an image without its alpha channel.

    One or two channels are grey (+ alpha); three or four are colour (+ alpha). OpenCV also
    decodes grey+alpha PNGs into four channels, which is why the alpha is always dropped.
    """
    if image.ndim == 2:
        return image
    if image.ndim != 3 or image.shape[-1] not in (1, 2, 3, 4):
        raise ValueError(f"expected a (H, W) or (H, W, 1-4) mask image, got shape {image.shape}")
    return image[..., :1] if image.shape[-1] <= 2 else image[..., :3]


def binarize_mask(image: np.ndarray) -> np.ndarray:
    """Foreground of a ground-truth mask image.

    Rule: a pixel is foreground when any of its colour channels is non-zero; an alpha channel
    (the 2nd of 2 or the 4th of 4 channels) is ignored. This reads 0/255 masks, label images
    (1, 2, ... per object) and colour-coded palette masks alike, and relies on masks being
    lossless (PNG): an anti-aliased or JPEG-compressed mask would grow by its soft edge.
    """
    image = np.asarray(image)
    if image.dtype == bool:
        return image.copy()
    colour = _colour_channels(image)
    return colour != 0 if colour.ndim == 2 else np.any(colour != 0, axis=-1)


def mask_instance_ids(image: np.ndarray) -> np.ndarray:
    """Per-object ids (int64, 0 = background) of a ground-truth mask image.

    Grey images use the grey value as the id. Colour images use the colour packed into one integer
    (a grey image stored as colour keeps its grey value), so the id of an object is stable across
    frames. Non-zero ids are exactly the foreground of `binarize_mask`.
    """
    image = np.asarray(image)
    if image.dtype == bool:
        return image.astype(np.int64)
    if not np.issubdtype(image.dtype, np.integer):
        raise ValueError(f"instance masks must be integer images, got {image.dtype}")
    colour = _colour_channels(image).astype(np.int64)
    if colour.ndim == 2:
        return colour
    if colour.shape[-1] == 1 or (colour == colour[..., :1]).all():
        return colour[..., 0]
    base = int(np.iinfo(image.dtype).max) + 1
    return (colour[..., 0] * base + colour[..., 1]) * base + colour[..., 2]


# --- region and boundary scores --------------------------------------------------------------


def _check_same_shape(pred: np.ndarray, gt: np.ndarray) -> None:
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground-truth shape {gt.shape}")


def jaccard(pred: np.ndarray, gt: np.ndarray) -> float:
    """Region similarity J: intersection over union; 1.0 when both masks are empty."""
    pred, gt = np.asarray(pred, bool), np.asarray(gt, bool)
    _check_same_shape(pred, gt)
    union = np.count_nonzero(pred | gt)
    return 1.0 if union == 0 else np.count_nonzero(pred & gt) / union


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """One-pixel contour of a mask: foreground pixels with a 4-connected background neighbour.

    The image frame is not a contour: an object cut by the image edge has no boundary along it.
    """
    mask = np.asarray(mask, bool)
    interior = ndimage.binary_erosion(mask, structure=_FOUR_CONNECTED, border_value=1)
    return mask & ~interior


def boundary_tolerance(shape: tuple[int, ...], tolerance_ratio: float = DAVIS_TOLERANCE_RATIO) -> int:
    """Matching distance in pixels: ceil(ratio x image diagonal), as in DAVIS (8 px at 854x480)."""
    return int(np.ceil(tolerance_ratio * np.hypot(shape[0], shape[1])))


def boundary_f(pred: np.ndarray, gt: np.ndarray, tolerance_ratio: float = DAVIS_TOLERANCE_RATIO) -> float:
    """Contour accuracy F of the DAVIS benchmark.

    Rule: take the contours of both masks (`boundary_map`). A contour pixel of one mask is
    matched when a contour pixel of the other lies within `boundary_tolerance` pixels (Euclidean,
    the same as dilating the other contour by a disk of that radius). Precision is the matched
    fraction of the predicted contour, recall that of the ground-truth contour, and
    F = 2PR / (P + R). Both contours empty gives 1.0; exactly one empty gives 0.0.
    """
    pred, gt = np.asarray(pred, bool), np.asarray(gt, bool)
    _check_same_shape(pred, gt)
    pred_contour, gt_contour = boundary_map(pred), boundary_map(gt)
    pred_count, gt_count = np.count_nonzero(pred_contour), np.count_nonzero(gt_contour)
    if pred_count == 0 and gt_count == 0:
        return 1.0
    if pred_count == 0 or gt_count == 0:
        return 0.0
    tolerance = boundary_tolerance(gt.shape, tolerance_ratio)
    # Every contour pixel lies in the joint bounding box, so distances computed inside it are
    # exact; cropping makes the transforms several times cheaper on small objects.
    rows, cols = np.nonzero(pred_contour | gt_contour)
    box = np.s_[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    pred_contour, gt_contour = pred_contour[box], gt_contour[box]
    # distance_transform_edt measures the distance to the nearest zero, so invert the contours.
    precision = np.count_nonzero(ndimage.distance_transform_edt(~gt_contour)[pred_contour] <= tolerance) / pred_count
    recall = np.count_nonzero(ndimage.distance_transform_edt(~pred_contour)[gt_contour] <= tolerance) / gt_count
    if precision + recall == 0:
        return 0.0
    return 2.0 * precision * recall / (precision + recall)


# --- track labels ----------------------------------------------------------------------------


def track_ground_truth(xy: np.ndarray, gt_mask: np.ndarray, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """Dynamic labels and which of the tracks at ``xy`` (N, 2) can be scored against ``gt_mask``.

    A track is dynamic when its pixel lies in the mask. Tracks less than ``margin`` px from the
    mask's boundary, where a point is as likely on the object as behind it, and tracks outside
    the image or without a position are not scored. Returns (dynamic, scored), both (N,) bool.
    """
    height, width = gt_mask.shape
    column, row = np.round(np.nan_to_num(xy, nan=-1.0)).astype(np.int64).T
    scored = (column >= 0) & (column < width) & (row >= 0) & (row < height)
    column, row = np.where(scored, column, 0), np.where(scored, row, 0)
    mask = gt_mask.astype(np.uint8)
    # Distance of each pixel to the nearest pixel of the other side of the boundary.
    inside = cv2.distanceTransform(mask, cv2.DIST_L2, 5)
    outside = cv2.distanceTransform(1 - mask, cv2.DIST_L2, 5)
    dynamic = gt_mask[row, column]
    clearance = np.where(dynamic, inside[row, column], outside[row, column])
    return dynamic & scored, scored & (clearance > margin)


# --- instance matching -----------------------------------------------------------------------


def _contingency(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct values of a and b, and counts[i, j] of positions where a == a_ids[i] and b == b_ids[j]."""
    a_ids, a_index = np.unique(np.ravel(a), return_inverse=True)
    b_ids, b_index = np.unique(np.ravel(b), return_inverse=True)
    counts = np.bincount(a_index * len(b_ids) + b_index, minlength=len(a_ids) * len(b_ids))
    return a_ids, b_ids, counts.reshape(len(a_ids), len(b_ids))


def _instance_iou(pred_labels: np.ndarray, gt_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Non-zero predicted ids, non-zero ground-truth ids and their IoU matrix."""
    pred_labels, gt_labels = np.asarray(pred_labels), np.asarray(gt_labels)
    _check_same_shape(pred_labels, gt_labels)
    # Pixels that are background in both change no IoU; dropping them keeps the sort small.
    any_object = (pred_labels != 0) | (gt_labels != 0)
    pred_ids, gt_ids, overlap = _contingency(pred_labels[any_object], gt_labels[any_object])
    pred_area, gt_area = overlap.sum(axis=1), overlap.sum(axis=0)
    pred_keep, gt_keep = pred_ids != 0, gt_ids != 0
    intersection = overlap[np.ix_(pred_keep, gt_keep)]
    union = pred_area[pred_keep, None] + gt_area[None, gt_keep] - intersection
    # Every kept id covers at least one pixel, so no union is zero.
    return pred_ids[pred_keep], gt_ids[gt_keep], intersection / union


def match_instances(pred_labels: np.ndarray, gt_labels: np.ndarray) -> list[tuple[int, int, float]]:
    """One-to-one matching of predicted to ground-truth objects maximising the summed IoU.

    Hungarian assignment on the IoU matrix; pairs that do not overlap are not matches and are
    dropped. Returns (pred_id, gt_id, iou) sorted by gt_id.
    """
    pred_ids, gt_ids, iou = _instance_iou(pred_labels, gt_labels)
    rows, cols = linear_sum_assignment(iou, maximize=True)
    matches = [(int(pred_ids[r]), int(gt_ids[c]), float(iou[r, c])) for r, c in zip(rows, cols) if iou[r, c] > 0]
    return sorted(matches, key=lambda match: match[1])


def instance_jaccard(pred_labels: np.ndarray, gt_labels: np.ndarray) -> float:
    """Per-frame instance J: mean IoU over ground-truth objects after `match_instances`.

    An unmatched ground-truth object scores 0, so missed objects are penalised; extra predicted
    objects are not (they do not change the mean over ground truth). A frame without
    ground-truth objects scores 1.0 when nothing is predicted and 0.0 otherwise.
    """
    pred_ids, gt_ids, iou = _instance_iou(pred_labels, gt_labels)
    if len(gt_ids) == 0:
        return 1.0 if len(pred_ids) == 0 else 0.0
    rows, cols = linear_sum_assignment(iou, maximize=True)
    return float(iou[rows, cols].sum() / len(gt_ids))


def covering_ids(pred_labels: np.ndarray, gt_labels: np.ndarray) -> dict[int, int]:
    """For each ground-truth object, the predicted id that covers most of it (objects no
    prediction touches are left out)."""
    covering = {}
    for true_id in np.unique(gt_labels[gt_labels > 0]):
        under = pred_labels[gt_labels == true_id]
        counts = np.bincount(under[under > 0])
        if counts.any():
            covering[int(true_id)] = int(np.argmax(counts))
    return covering


def ids_per_object(pred_labels: list[np.ndarray], gt_labels: list[np.ndarray]) -> dict[int, list[int]]:
    """For each ground-truth object, every id that covered most of it in some frame: one id per
    object when identity holds."""
    seen: dict[int, set[int]] = {}
    for pred, gt in zip(pred_labels, gt_labels):
        for true_id, object_id in covering_ids(pred, gt).items():
            seen.setdefault(true_id, set()).add(object_id)
    return {true_id: sorted(ids) for true_id, ids in sorted(seen.items())}


# --- trajectory grouping ---------------------------------------------------------------------


def misclassification_rate(pred_groups: np.ndarray, true_groups: np.ndarray) -> float:
    """Hopkins-155 error: fraction of points in the wrong group after the best relabelling.

    Predicted groups are matched one-to-one to true groups to maximise the number of agreeing
    points (Hungarian on the confusion matrix); every point whose predicted group is unmatched or
    matched to another true group is an error. Group ids are arbitrary labels.
    """
    pred_groups, true_groups = np.ravel(pred_groups), np.ravel(true_groups)
    if pred_groups.shape != true_groups.shape:
        raise ValueError(f"{len(pred_groups)} predicted groups for {len(true_groups)} points")
    if len(true_groups) == 0:
        raise ValueError("misclassification rate of zero points is undefined")
    _, _, confusion = _contingency(pred_groups, true_groups)
    rows, cols = linear_sum_assignment(confusion, maximize=True)
    return float(1.0 - confusion[rows, cols].sum() / len(true_groups))


# --- per-sequence accumulation ---------------------------------------------------------------


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


@dataclass
class SequenceScores:
    """Scores and timings of one sequence. Means over no frames are NaN."""

    name: str
    frames: int = 0                                          # frames the pipeline processed
    jaccard: list[float] = field(default_factory=list)       # per scored frame
    boundary: list[float] = field(default_factory=list)      # per scored frame
    instance_jaccard: list[float] = field(default_factory=list)  # per scored frame, when requested
    processing_times: list[float] = field(default_factory=list)  # seconds, per processed frame
    track_probability: list[np.ndarray] = field(default_factory=list)  # per scored frame: scored tracks'
    track_dynamic: list[np.ndarray] = field(default_factory=list)      # dynamic probability and label

    @property
    def scored(self) -> int:
        return len(self.jaccard)

    @property
    def j(self) -> float:
        return _mean(self.jaccard)

    @property
    def f(self) -> float:
        return _mean(self.boundary)

    @property
    def jf(self) -> float:
        return (self.j + self.f) / 2.0

    @property
    def instance_j(self) -> float:
        return _mean(self.instance_jaccard)

    @property
    def fps(self) -> float:
        """Throughput of the pipeline alone: frames per second of summed processing time."""
        total = float(np.sum(self.processing_times))
        return len(self.processing_times) / total if total > 0 else float("nan")

    def track_scores(self) -> dict[str, float] | None:
        """Accuracy, precision, recall (probability >= 0.5) and AUROC over all scored tracks of
        all frames (a track counts once per frame); None without tracks."""
        if not sum(len(dynamic) for dynamic in self.track_dynamic):
            return None
        return classification_scores(np.concatenate(self.track_probability), np.concatenate(self.track_dynamic))

    def latency(self, percentile: float) -> float:
        """Percentile of the per-frame processing time, in seconds."""
        return float(np.percentile(self.processing_times, percentile)) if self.processing_times else float("nan")

    def summary(self) -> dict[str, float | int | str]:
        row: dict[str, float | int | str] = {
            "sequence": self.name, "frames": self.frames, "scored": self.scored,
            "J": self.j, "F": self.f, "J&F": self.jf,
            "fps": self.fps, "latency_p50": self.latency(50), "latency_p95": self.latency(95),
        }
        if self.instance_jaccard:
            row["instance_J"] = self.instance_j
        tracks = self.track_scores()
        if tracks is not None:
            row.update({"track_count" if name == "tracks" else f"track_{name}": value for name, value in tracks.items()})
        return row


class SequenceScorer:
    """Collects one sequence's pipeline outputs and scores them against the ground truth.

    Used by the offline image-folder evaluation and by any other source of label images (for
    example recorded results), so every evaluation scores frames the same way.
    """

    def __init__(self, name: str, tolerance_ratio: float = DAVIS_TOLERANCE_RATIO):
        self._scores = SequenceScores(name)
        self._tolerance_ratio = tolerance_ratio

    def add_frame(
        self,
        label_image: np.ndarray,
        processing_time: float | None = None,
        gt_mask: np.ndarray | None = None,
        gt_instances: np.ndarray | None = None,
        track_xy: np.ndarray | None = None,
        track_probability: np.ndarray | None = None,
    ) -> None:
        """Record one output label image (0 = static).

        Without `gt_mask` the frame only counts for timing (unannotated or warm-up frames).
        All moving objects merge into one foreground for J and F (the MOS protocol);
        `gt_instances` (ground-truth ids) adds the instance J. The positions `track_xy` (N, 2) of
        the tracks visible in the frame and their dynamic probability (N,) add the track scores;
        tracks closer to the mask's boundary than the F-measure's tolerance are not scored.
        """
        self._scores.frames += 1
        if processing_time is not None:
            self._scores.processing_times.append(float(processing_time))
        if gt_mask is None:
            return
        foreground = np.asarray(label_image) > 0
        self._scores.jaccard.append(jaccard(foreground, gt_mask))
        self._scores.boundary.append(boundary_f(foreground, gt_mask, self._tolerance_ratio))
        if gt_instances is not None:
            self._scores.instance_jaccard.append(instance_jaccard(label_image, gt_instances))
        if track_xy is not None:
            dynamic, scored = track_ground_truth(track_xy, gt_mask, boundary_tolerance(gt_mask.shape,
                                                                                       self._tolerance_ratio))
            self._scores.track_probability.append(np.asarray(track_probability, np.float64)[scored])
            self._scores.track_dynamic.append(dynamic[scored])

    def result(self) -> SequenceScores:
        return self._scores


def summarize(sequences: list[SequenceScores]) -> dict[str, float | int | str]:
    """Dataset row: J, F and J&F averaged over the sequences that have scored frames; FPS and
    latency over all processed frames pooled; track scores averaged over the sequences with
    scored tracks (leaving out a score a sequence does not define, as AUROC with one class)."""
    pooled = SequenceScores("mean", processing_times=[t for s in sequences for t in s.processing_times])
    scored = [s for s in sequences if s.scored]
    row: dict[str, float | int | str] = {
        "sequence": "mean",
        "frames": sum(s.frames for s in sequences),
        "scored": sum(s.scored for s in sequences),
        "J": _mean([s.j for s in scored]),
        "F": _mean([s.f for s in scored]),
        "J&F": _mean([s.jf for s in scored]),
        "fps": pooled.fps, "latency_p50": pooled.latency(50), "latency_p95": pooled.latency(95),
    }
    if any(s.instance_jaccard for s in sequences):
        row["instance_J"] = _mean([s.instance_j for s in sequences if s.instance_jaccard])
    tracked = [scores for scores in (s.track_scores() for s in sequences) if scores is not None]
    for name in ("accuracy", "precision", "recall", "auroc") if tracked else ():
        row[f"track_{name}"] = _mean([value for scores in tracked if math.isfinite(value := scores[name])])
    return row
