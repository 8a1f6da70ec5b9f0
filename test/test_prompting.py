"""The online two-stage SAM2 prompting (SegAnyMo), with a ground-truth segmenter standing in for SAM2.

Scenes are either rendered clips tracked by the real Lucas-Kanade tracker (probabilities from the
ground-truth masks), or boxes with exactly known point tracks, to stage specific situations:
touching objects, one object split into two groups, tracks drifting off an object, an object
stopping.
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from anymo_ros.config import Sam2Config, TrackerConfig
from anymo_ros.densify.prompting import (
    OracleSegmenter,
    TwoStagePrompting,
    dilate,
    masks_overlap,
    medoid_index,
    points_in_mask,
    select_dynamic,
    three_point_prompt,
)
from anymo_ros.tools.synthetic import render_clip
from anymo_ros.tracking import create_tracker

WIDTH, HEIGHT = 160, 120


# ---------------------------------------------------------------------------------- scenes
class BoxScene:
    """Axis-aligned boxes moving at constant velocity over a static background, with point tracks
    on a grid over every box (ids fixed per box point) and a sparser static background grid."""

    def __init__(self, boxes: list[tuple[float, float, float, float, float, float]], num_frames: int,
                 spacing: int = 5, background_spacing: int = 10):
        self.boxes = boxes   # (x0, y0, width, height, vx, vy) per box; label = index + 1
        self.num_frames = num_frames
        offsets, labels = [], []
        for label, (x0, y0, w, h, _, _) in enumerate(boxes, start=1):
            gx, gy = np.meshgrid(np.arange(x0 + 2, x0 + w - 1, spacing), np.arange(y0 + 2, y0 + h - 1, spacing))
            offsets.append(np.stack([gx.ravel() - x0, gy.ravel() - y0], axis=1))
            labels.append(np.full(gx.size, label))
        self.box_offsets = np.concatenate(offsets).astype(np.float32)
        self.box_labels = np.concatenate(labels)
        bx, by = np.meshgrid(np.arange(3, WIDTH, background_spacing), np.arange(3, HEIGHT, background_spacing))
        self.background = np.stack([bx.ravel(), by.ravel()], axis=1).astype(np.float32)
        self.ids = np.arange(1, len(self.box_labels) + len(self.background) + 1, dtype=np.int64)
        self.frame = np.zeros((HEIGHT, WIDTH, 3), np.uint8)

    def origin(self, label: int, t: int) -> np.ndarray:
        x0, y0, _, _, vx, vy = self.boxes[label - 1]
        return np.array([x0 + vx * t, y0 + vy * t], np.float32)

    def mask(self, t: int) -> np.ndarray:
        mask = np.zeros((HEIGHT, WIDTH), np.uint16)
        for label, (_, _, w, h, _, _) in enumerate(self.boxes, start=1):
            x0, y0 = np.round(self.origin(label, t)).astype(int)
            mask[max(y0, 0):max(y0 + h, 0), max(x0, 0):max(x0 + w, 0)] = label
        return mask

    def masks(self) -> list[np.ndarray]:
        return [self.mask(t) for t in range(self.num_frames)]

    def tracks(self, t: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """ids, xy, visible, dynamic probability at frame t."""
        origins = np.stack([self.origin(label, t) for label in self.box_labels])
        box_xy = origins + self.box_offsets
        xy = np.concatenate([box_xy, self.background])
        mask = self.mask(t)
        col = np.clip(np.round(self.background[:, 0]).astype(int), 0, WIDTH - 1)
        row = np.clip(np.round(self.background[:, 1]).astype(int), 0, HEIGHT - 1)
        background_visible = mask[row, col] == 0
        inside = (box_xy[:, 0] >= 0) & (box_xy[:, 0] < WIDTH) & (box_xy[:, 1] >= 0) & (box_xy[:, 1] < HEIGHT)
        visible = np.concatenate([inside, background_visible])
        probability = np.concatenate([np.full(len(box_xy), 0.99, np.float32), np.full(len(self.background), 0.02, np.float32)])
        return self.ids, xy.astype(np.float32), visible, probability


def run(prompting: TwoStagePrompting, scene: BoxScene, frames: range, edit=None) -> list:
    results = []
    for t in frames:
        ids, xy, visible, probability = scene.tracks(t)
        if edit is not None:
            xy, probability = edit(t, ids, xy.copy(), probability.copy())
        results.append(prompting.step(scene.frame, ids, xy, visible, probability))
    return results


def truth_of_objects(oracle: OracleSegmenter, prompting: TwoStagePrompting) -> dict[int, int]:
    return {oid: oracle.truth_of(oid) for oid in prompting.object_ids}


# ---------------------------------------------------------------------------------- helpers
def test_dynamic_selection_follows_the_paper_thresholds():
    probability = np.array([0.99] * 4 + [0.94] * 8 + [0.1] * 20, np.float32)
    assert select_dynamic(probability).sum() == 12          # 0.95 leaves 4, 0.93 leaves 12 >= 10
    few = np.array([0.99, 0.8, 0.7, 0.6, 0.2], np.float32)
    assert np.flatnonzero(select_dynamic(few)).tolist() == [0, 1, 2]   # no threshold leaves 10: top 3
    assert not select_dynamic(few, valid=np.zeros(5, bool)).any()


def test_point_helpers():
    points = np.array([[0, 0], [1, 0], [2, 0], [10, 0]], np.float32)
    assert medoid_index(points) in (1, 2)
    prompt = three_point_prompt(points)
    assert prompt.shape == (3, 2) and prompt[0].tolist() == [2, 0] and [10, 0] in prompt.tolist()
    mask = np.zeros((20, 20), bool)
    mask[5:10, 5:10] = True
    assert points_in_mask(mask, np.array([[7, 7], [4.4, 7], [30, 7], [np.nan, 1]])).tolist() == [True, False, False, False]
    grown = dilate(mask, 6, 3)
    assert grown[5:10, 5:10].all() and grown.sum() > 4 * mask.sum()
    assert masks_overlap(mask, grown, 0.9, 0.9)          # mask covered by its dilation
    other = np.zeros_like(mask)
    other[0:3, 0:3] = True
    assert not masks_overlap(mask, other, 0.9, 0.9)


# ---------------------------------------------------------------------------------- the algorithm
def test_rendered_objects_are_found_with_the_real_tracker():
    clip = render_clip(seed=3, num_frames=24, width=WIDTH * 2, height=HEIGHT * 2, num_objects=2, camera_motion="pan")
    oracle = OracleSegmenter(clip.masks)
    prompting = TwoStagePrompting(oracle, Sam2Config())
    tracker = create_tracker(TrackerConfig(grid_spacing=8))
    for t, (frame, truth) in enumerate(zip(clip.frames, clip.masks)):
        update = tracker.push(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY), t)[0]
        on_object = points_in_mask(truth > 0, update.xy)
        probability = np.where(on_object, 0.97, 0.05).astype(np.float32)
        result = prompting.step(frame, update.ids, update.xy, update.visible, probability)
    found = truth_of_objects(oracle, prompting)
    visible_labels = {int(label) for label in np.unique(clip.masks[-1]) if label > 0}
    assert set(found.values()) == visible_labels, found
    assert len(set(found.values())) == len(found), "one object per ground-truth instance"
    for object_id, label in found.items():
        rows = result.track_object == object_id
        assert rows.any() and points_in_mask(clip.masks[-1] == label, update.xy[rows]).mean() > 0.95


def test_touching_objects_get_two_ids():
    scene = BoxScene([(30, 40, 40, 40, 1.0, 0.0), (70, 40, 40, 40, 1.0, 0.0)], num_frames=6)
    oracle = OracleSegmenter(scene.masks())
    prompting = TwoStagePrompting(oracle, Sam2Config())
    first = run(prompting, scene, range(1))[0]
    assert sorted(truth_of_objects(oracle, prompting).values()) == [1, 2]
    assert len(first.created) == 2 and len(first.masks) == 2
    run(prompting, scene, range(1, 6))
    assert sorted(truth_of_objects(oracle, prompting).values()) == [1, 2]


class SplittingOracle(OracleSegmenter):
    """For ``part_frames`` frames after an object's first click, SAM2 sees only the half of the
    ground-truth object on the click's side; afterwards its mask grows to the whole object."""

    def __init__(self, instance_masks, part_frames: int):
        super().__init__(instance_masks)
        self.part_frames = part_frames
        self.first_click: dict[int, tuple[int, float]] = {}

    def prompt(self, object_id, points, labels=None):
        super().prompt(object_id, points, labels)
        self.first_click.setdefault(int(object_id), (self._index, float(np.asarray(points).reshape(-1, 2)[0, 0])))

    def masks(self):
        masks = super().masks()
        for object_id, mask in masks.items():
            clicked_at, x = self.first_click[object_id]
            if self._index - clicked_at < self.part_frames and mask.any():
                centre = np.nonzero(mask)[1].mean()
                columns = np.arange(mask.shape[1])
                masks[object_id] = mask & ((columns < centre) if x < centre else (columns >= centre))[None, :]
        return masks


def test_object_split_into_two_groups_is_merged():
    scene = BoxScene([(20, 30, 90, 50, 1.0, 0.5)], num_frames=24)
    oracle = SplittingOracle(scene.masks(), part_frames=3)
    config = Sam2Config()
    prompting = TwoStagePrompting(oracle, config)
    results = run(prompting, scene, range(24))
    assert len(results[0].created) == 2, "each half of the box is first grouped on its own"
    merges = [(t, pair) for t, result in enumerate(results) for pair in result.merged]
    assert len(merges) == 1
    when, (kept, gone) = merges[0]
    needed = int(np.ceil(config.merge_fraction * config.merge_window))
    assert when == 3 + needed - 1, "merged once the masks overlapped in 30 % of the merge window"
    assert kept < gone and prompting.object_ids == [kept]
    assert list(results[-1].masks) == [kept]
    assert (results[-1].masks[kept] == (scene.mask(23) == 1)).all()
    assert gone in [object_id for _, object_id in oracle.removed]


def test_reprompt_every_n_frames_and_three_points_when_coverage_drops():
    scene = BoxScene([(40, 30, 50, 40, 1.0, 0.0)], num_frames=40)
    oracle = OracleSegmenter(scene.masks())
    prompting = TwoStagePrompting(oracle, Sam2Config(reprompt_every=16))
    drifting: set[int] = set()

    def drift(t, ids, xy, probability):
        # From frame 32, 40 % of the box's tracks slide off it (tracker drift), still dynamic.
        if t >= 32:
            if not drifting:
                members = sorted(prompting.members_of(prompting.object_ids[0]))
                drifting.update(members[: int(0.4 * len(members)) + 1])
            rows = np.isin(ids, list(drifting))
            xy[rows, 1] += 45.0
        return xy, probability

    results = run(prompting, scene, range(40), edit=drift)
    (object_id,) = prompting.object_ids
    prompts = [(t, n) for t, oid, n in oracle.log if oid == object_id]
    assert prompts == [(0, 1), (16, 1), (32, 1), (32, 3)]
    assert results[16].reprompted == [(object_id, 1)]
    assert results[32].reprompted == [(object_id, 1), (object_id, 3)]
    assert all(not r.reprompted for t, r in enumerate(results) if t not in (16, 32))
    assert oracle.truth_of(object_id) == 1


def test_object_whose_tracks_turn_static_is_dropped():
    scene = BoxScene([(40, 30, 40, 40, 1.0, 0.0)], num_frames=30)
    oracle = OracleSegmenter(scene.masks())
    prompting = TwoStagePrompting(oracle, Sam2Config(drop_patience=5))

    def stop(t, ids, xy, probability):
        if t >= 10:
            probability[probability > 0.5] = 0.05   # the classifier now calls the box static
        return xy, probability

    results = run(prompting, scene, range(30), edit=stop)
    (object_id,) = results[0].created
    dropped_at = [t for t, r in enumerate(results) if r.dropped]
    assert dropped_at == [10 + 5], "dropped after drop_patience frames without dynamic tracks"
    assert results[14].masks and not results[15].masks and prompting.object_ids == []
    assert oracle.removed == [(15, object_id)]
    assert not any(r.created for r in results[1:]), "a static object is not found again"


def test_background_click_is_rejected_and_rests():
    scene = BoxScene([(40, 30, 40, 40, 0.0, 0.0)], num_frames=4)
    oracle = OracleSegmenter([np.zeros((HEIGHT, WIDTH), np.uint16)] * 4)   # SAM2 sees nothing there

    prompting = TwoStagePrompting(oracle, Sam2Config())
    results = run(prompting, scene, range(4))
    assert prompting.object_ids == [] and not any(r.created for r in results)
    assert results[0].clicks >= 1 and oracle.removed, "the rejected click is withdrawn from the segmenter"
    assert all(r.clicks == 0 for r in results[1:]), "its tracks rest instead of being clicked every frame"


def test_ids_are_not_reused_after_reset():
    scene = BoxScene([(40, 30, 40, 40, 1.0, 0.0)], num_frames=3)
    oracle = OracleSegmenter(scene.masks() * 2)
    prompting = TwoStagePrompting(oracle, Sam2Config())
    first = run(prompting, scene, range(1))[0].created
    prompting.reset()
    second = run(prompting, scene, range(1))[0].created
    assert first and second and min(second) > max(first)


def test_track_object_output():
    scene = BoxScene([(30, 40, 40, 40, 1.0, 0.0), (90, 20, 30, 30, -1.0, 1.0)], num_frames=3)
    oracle = OracleSegmenter(scene.masks())
    prompting = TwoStagePrompting(oracle, Sam2Config())
    result = run(prompting, scene, range(3))[-1]
    ids, xy, visible, _ = scene.tracks(2)
    assert result.track_object.shape == ids.shape and result.track_object.dtype == np.int32
    for object_id, mask in result.masks.items():
        assert mask.shape == (HEIGHT, WIDTH) and mask.dtype == bool
        rows = result.track_object == object_id
        label = oracle.truth_of(object_id)
        assert (scene.box_labels[rows[: len(scene.box_labels)]] == label).all()
        assert rows[: len(scene.box_labels)].sum() == (scene.box_labels == label).sum()
    assert not result.track_object[len(scene.box_labels):].any(), "background tracks belong to no object"
    labels = result.label_image((HEIGHT, WIDTH))
    assert labels.dtype == np.uint16 and set(np.unique(labels)) == {0} | set(result.masks)
    for object_id, mask in result.masks.items():
        assert (labels[mask] == object_id).all()


@pytest.mark.parametrize("bad", [np.nan, -1.0])
def test_unknown_probabilities_are_ignored(bad):
    scene = BoxScene([(40, 30, 40, 40, 1.0, 0.0)], num_frames=2)
    oracle = OracleSegmenter(scene.masks())
    prompting = TwoStagePrompting(oracle, Sam2Config())
    ids, xy, visible, probability = scene.tracks(0)
    probability[:] = bad
    result = prompting.step(scene.frame, ids, xy, visible, probability)
    assert not result.dynamic.any() and not result.created
