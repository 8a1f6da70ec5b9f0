"""Metrics on hand-made masks whose scores are known exactly."""
import numpy as np
import pytest

from anymo_ros.tools.metrics import (
    SequenceScorer,
    binarize_mask,
    boundary_f,
    boundary_map,
    boundary_tolerance,
    covering_ids,
    ids_per_object,
    instance_jaccard,
    jaccard,
    mask_instance_ids,
    match_instances,
    misclassification_rate,
    summarize,
    track_ground_truth,
)


def square(top=40, left=40, side=20, shape=(100, 100)):
    mask = np.zeros(shape, bool)
    mask[top:top + side, left:left + side] = True
    return mask


def test_tolerance_follows_the_image_diagonal():
    assert boundary_tolerance((100, 100)) == 2      # ceil(0.008 * 141.4)
    assert boundary_tolerance((480, 854)) == 8      # ceil(0.008 * 979.6), DAVIS 480p


def test_identical_masks_score_one():
    mask = square()
    assert jaccard(mask, mask) == 1.0
    assert boundary_f(mask, mask) == 1.0


def test_disjoint_masks_score_zero():
    a, b = square(10, 10), square(60, 60)
    assert jaccard(a, b) == 0.0
    assert boundary_f(a, b) == 0.0


def test_shift_within_tolerance_keeps_perfect_contours():
    gt, pred = square(), square(left=42)               # 2 px shift, tolerance 2 px
    assert jaccard(pred, gt) == pytest.approx(18 * 20 / (2 * 400 - 18 * 20))
    assert boundary_f(pred, gt) == 1.0


def test_shift_beyond_tolerance_loses_the_far_edges():
    gt, pred = square(), square(left=43)               # 3 px shift, tolerance 2 px
    assert jaccard(pred, gt) == pytest.approx(17 * 20 / (2 * 400 - 17 * 20))
    # Of the 76 contour pixels of the shifted square, matched within 2 px: 19 on the top row,
    # 19 on the bottom row, 4 on the leading column next to the corners, none on the trailing
    # column. The setup is symmetric, so precision = recall = F = 42 / 76.
    assert np.count_nonzero(boundary_map(pred)) == 76
    assert boundary_f(pred, gt) == pytest.approx(42 / 76)


def test_empty_prediction():
    empty = np.zeros((50, 50), bool)
    assert jaccard(empty, empty) == 1.0
    assert boundary_f(empty, empty) == 1.0
    assert jaccard(empty, square(shape=(50, 50), top=10, left=10)) == 0.0
    assert boundary_f(empty, square(shape=(50, 50), top=10, left=10)) == 0.0


def test_image_frame_is_not_a_contour():
    full = np.ones((30, 40), bool)
    assert not boundary_map(full).any()
    assert boundary_f(full, full) == 1.0
    left_half = np.zeros((30, 40), bool)
    left_half[:, :20] = True
    assert np.array_equal(np.flatnonzero(boundary_map(left_half).any(axis=0)), [19])


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        jaccard(np.zeros((4, 4), bool), np.zeros((4, 5), bool))


def _instance_example():
    """One-row label images where greedy matching picks the wrong pairs.

    GT: 1 = x 0..9, 2 = x 10..19, 3 = x 30..34 (never predicted).
    Pred: 3 = x 0..2, 7 = x 3..15, 9 = x 40..44 (overlaps nothing).
    IoU(7, 1) = 7/16 is the largest entry, but 7 -> 2 (6/17) with 3 -> 1 (3/10) sums higher.
    """
    gt, pred = np.zeros((1, 50), np.uint16), np.zeros((1, 50), np.uint16)
    gt[0, 0:10], gt[0, 10:20], gt[0, 30:35] = 1, 2, 3
    pred[0, 0:3], pred[0, 3:16], pred[0, 40:45] = 3, 7, 9
    return pred, gt


def test_hungarian_instance_matching():
    pred, gt = _instance_example()
    matches = match_instances(pred, gt)
    assert [(p, g) for p, g, _ in matches] == [(3, 1), (7, 2)]
    assert [iou for _, _, iou in matches] == pytest.approx([3 / 10, 6 / 17])


def test_instance_jaccard_counts_missed_objects_as_zero():
    pred, gt = _instance_example()
    assert instance_jaccard(pred, gt) == pytest.approx((3 / 10 + 6 / 17 + 0.0) / 3)
    assert instance_jaccard(gt, gt) == 1.0


def test_instance_jaccard_without_ground_truth_objects():
    empty = np.zeros((5, 5), np.uint16)
    assert instance_jaccard(empty, empty) == 1.0
    one_object = empty.copy()
    one_object[1:3, 1:3] = 4
    assert instance_jaccard(one_object, empty) == 0.0


def test_misclassification_rate_ignores_group_ids():
    true_groups = np.array([1, 1, 1, 2, 2, 2, 3, 3])
    assert misclassification_rate(np.array([7, 7, 7, 0, 0, 0, 4, 4]), true_groups) == 0.0
    # 5 -> 1 (2 points), 9 -> 2 (3 points), 0 -> 3 (2 points): one point (the 9 among group 1) is wrong.
    assert misclassification_rate(np.array([5, 5, 9, 9, 9, 9, 0, 0]), true_groups) == pytest.approx(1 / 8)


def test_misclassification_rate_counts_unmatched_groups_as_errors():
    true_groups = np.array([0, 0, 0, 1, 1, 1])
    # Six singleton groups: only two can be matched, one point each.
    assert misclassification_rate(np.arange(6), true_groups) == pytest.approx(4 / 6)
    # One group for everything: matched to one true group, the other three points are wrong.
    assert misclassification_rate(np.zeros(6, int), true_groups) == pytest.approx(3 / 6)


def test_binarize_rule_is_any_non_zero_colour_channel():
    grey = np.array([[0, 1, 127, 128, 255]], np.uint8)
    assert binarize_mask(grey).tolist() == [[False, True, True, True, True]]
    labels = np.array([[0, 1, 2, 300]], np.uint16)
    assert binarize_mask(labels).tolist() == [[False, True, True, True]]
    colour = np.zeros((1, 3, 3), np.uint8)
    colour[0, 1] = (128, 0, 0)
    colour[0, 2] = (0, 0, 1)
    assert binarize_mask(colour).tolist() == [[False, True, True]]


def test_binarize_ignores_alpha():
    # Grey+alpha masks (OpenCV decodes them to four channels) have an opaque alpha everywhere.
    bgra = np.zeros((1, 2, 4), np.uint8)
    bgra[..., 3] = 255
    bgra[0, 1, :3] = 255
    assert binarize_mask(bgra).tolist() == [[False, True]]
    grey_alpha = np.array([[[0, 255], [9, 255]]], np.uint8)
    assert binarize_mask(grey_alpha).tolist() == [[False, True]]


def test_instance_ids_agree_with_binarize():
    colour = np.zeros((2, 2, 3), np.uint8)
    colour[0, 0] = (128, 0, 0)
    colour[0, 1] = (0, 128, 0)
    colour[1, 0] = (128, 0, 0)
    ids = mask_instance_ids(colour)
    assert ids[0, 0] == ids[1, 0] != ids[0, 1]
    assert np.array_equal(ids > 0, binarize_mask(colour))
    grey_as_colour = np.repeat(np.array([[0, 255]], np.uint8)[..., None], 4, axis=2)
    assert mask_instance_ids(grey_as_colour).tolist() == [[0, 255]]


def test_sequence_scorer_and_summary():
    gt = square()
    scorer = SequenceScorer("toy")
    scorer.add_frame(np.zeros((100, 100), np.uint16), processing_time=0.02)        # warm-up, not scored
    scorer.add_frame(gt.astype(np.uint16) * 3, processing_time=0.01, gt_mask=gt)   # object id 3: foreground
    scorer.add_frame(np.zeros((100, 100), np.uint16), processing_time=0.01, gt_mask=gt)
    scores = scorer.result()
    assert (scores.frames, scores.scored) == (3, 2)
    assert scores.j == pytest.approx(0.5)
    assert scores.f == pytest.approx(0.5)
    assert scores.jf == pytest.approx(0.5)
    assert scores.fps == pytest.approx(3 / 0.04)
    assert scores.latency(50) == pytest.approx(0.01)

    unscored = SequenceScorer("no-gt")
    unscored.add_frame(np.zeros((4, 4), np.uint16), processing_time=0.04)
    mean = summarize([scores, unscored.result()])
    assert mean["J"] == pytest.approx(0.5)          # sequences without scored frames do not count
    assert mean["frames"] == 4
    assert mean["fps"] == pytest.approx(4 / 0.08)


def test_ids_per_object_lists_the_ids_that_covered_each_true_object():
    truth = np.zeros((10, 10), np.uint8)
    truth[:, :5], truth[:, 5:] = 1, 2
    steady = np.where(truth == 1, 4, 7).astype(np.uint16)
    swapped = np.where(truth == 1, 7, 0).astype(np.uint16)   # object 2 unseen, object 1 under id 7
    swapped[0, :3] = 4                                       # a minority of object 1 still under id 4
    assert covering_ids(swapped, truth) == {1: 7}
    assert ids_per_object([steady, steady], [truth, truth]) == {1: [4], 2: [7]}
    assert ids_per_object([steady, swapped], [truth, truth]) == {1: [4, 7], 2: [7]}


def test_track_ground_truth_labels_by_the_mask_and_skips_the_boundary_band():
    gt = square()                                      # rows and columns 40..59
    xy = np.array([[50, 50],                           # deep inside: dynamic
                   [10, 10],                           # far outside: static
                   [41, 50],                           # inside, 1 px from the edge
                   [37, 50],                           # outside, 3 px from the edge
                   [150, 5],                          # outside the image
                   [np.nan, np.nan]], np.float32)      # no position
    dynamic, scored = track_ground_truth(xy, gt, margin=4)
    assert scored.tolist() == [True, True, False, False, False, False]
    assert dynamic.tolist() == [True, False, True, False, False, False]
    _, scored_without_margin = track_ground_truth(xy, gt, margin=0)
    assert scored_without_margin.tolist() == [True, True, True, True, False, False]


def test_sequence_scorer_scores_the_tracks_of_annotated_frames():
    gt = square()
    xy = np.array([[50, 50], [45, 55], [10, 10], [90, 20], [50, 40]], np.float32)  # the last is in the 2 px band
    scorer = SequenceScorer("toy")
    empty = np.zeros((100, 100), np.uint16)
    scorer.add_frame(empty, 0.01, None, None, xy, np.ones(5))                     # unannotated: not scored
    scorer.add_frame(empty, 0.01, gt, None, xy, np.array([0.9, 0.4, 0.1, 0.6, 0.0]))
    scorer.add_frame(empty, 0.01, gt, None, xy[:3], np.array([0.8, 0.7, 0.2]))
    scores = scorer.result()
    row = scores.summary()
    # Scored: (0.9, 0.4, 0.1, 0.6) then (0.8, 0.7, 0.2); dynamic are the first two of each frame.
    assert row["track_count"] == 7
    assert row["track_accuracy"] == pytest.approx(5 / 7)   # 0.4 missed, 0.6 a false alarm
    assert row["track_precision"] == pytest.approx(3 / 4)
    assert row["track_recall"] == pytest.approx(3 / 4)
    # Positives 0.9, 0.4, 0.8, 0.7 against negatives 0.1, 0.6, 0.2: 11 of 12 pairs ordered.
    assert row["track_auroc"] == pytest.approx(11 / 12)

    untracked = SequenceScorer("no-tracks")
    untracked.add_frame(gt.astype(np.uint16), 0.01, gt)
    assert "track_auroc" not in untracked.result().summary()
    one_class = SequenceScorer("all-static")
    one_class.add_frame(empty, 0.01, np.zeros_like(gt), None, xy, np.zeros(5))
    mean = summarize([scores, untracked.result(), one_class.result()])
    assert mean["track_auroc"] == pytest.approx(11 / 12)    # undefined for the one-class sequence
    assert mean["track_accuracy"] == pytest.approx((5 / 7 + 1.0) / 2)
    assert "track_auroc" not in summarize([untracked.result()])
