"""Lucas-Kanade tracker: sub-pixel accuracy, visibility, re-seeding, interface."""
import cv2
import numpy as np

from anymo_ros.config import TrackerConfig
from anymo_ros.tracking import create_tracker
from anymo_ros.window import TrackWindow


def _texture(seed=0, size=(240, 320)):
    rng = np.random.default_rng(seed)
    noise = rng.random((size[0] // 8, size[1] // 8)).astype(np.float32)
    image = cv2.resize(noise, (size[1], size[0]), interpolation=cv2.INTER_CUBIC)
    image += 0.3 * cv2.GaussianBlur(rng.random(size).astype(np.float32), (0, 0), 1.5)
    return np.clip(image / image.max() * 255, 0, 255).astype(np.uint8)


def _shifted(image, dx, dy):
    matrix = np.float32([[1, 0, dx], [0, 1, dy]])
    return cv2.warpAffine(image, matrix, (image.shape[1], image.shape[0]), flags=cv2.INTER_CUBIC,
                          borderMode=cv2.BORDER_REFLECT)


def test_translating_texture_gives_subpixel_tracks():
    base = _texture()
    tracker = create_tracker(TrackerConfig())
    shift = np.array([0.7, -0.4])
    first = tracker.push(base, 0)[0]
    assert len(first.ids) > 200 and first.born.all()
    for step in range(1, 6):
        update = tracker.push(_shifted(base, *(shift * step)), step)[0]
    survivors = np.isin(update.ids, first.ids) & update.visible
    assert np.all(first.position_error == 0)  # a seed sits where it was found
    assert np.median(update.position_error[survivors]) < 0.05  # clean texture: the two passes agree
    # Away from the reflected border the motion is a pure translation.
    start = first.xy[np.searchsorted(first.ids, update.ids[survivors])]
    interior = (start[:, 0] > 20) & (start[:, 0] < 300) & (start[:, 1] > 20) & (start[:, 1] < 220)
    error = update.xy[survivors][interior] - (start[interior] + shift * 5)
    assert interior.sum() > 150
    assert np.median(np.linalg.norm(error, axis=1)) < 0.1
    assert update.confidence[survivors].min() > 0.3


def test_points_leaving_the_frame_become_invisible_and_cells_are_reseeded():
    wide = _texture(1, size=(240, 400))
    tracker = create_tracker(TrackerConfig())
    first = tracker.push(wide[:, 80:], 0)[0]
    start_x = dict(zip(first.ids.tolist(), first.xy[:, 0].tolist()))
    reported_outside = lost_inside = born_left = 0
    for step in range(1, 9):
        # The camera pans left by 6 px per frame: content moves right and leaves on the right.
        update = tracker.push(np.ascontiguousarray(wide[:, 80 - 6 * step: 400 - 6 * step]), step)[0]
        for track_id, visible in zip(update.ids.tolist(), update.visible.tolist()):
            if track_id not in start_x:
                continue
            expected = start_x[track_id] + 6 * step
            reported_outside += visible and expected > 319
            lost_inside += (not visible) and 20 < expected < 290
        born_left += int((update.xy[update.born][:, 0] < 6 * step).sum())
    assert reported_outside == 0
    assert lost_inside < 0.05 * len(start_x)
    alive = set(update.ids[update.visible].tolist())
    assert not any(start_x[i] + 48 > 319 for i in alive if i in start_x)
    # The strip that comes into view on the left gets fresh tracks.
    assert born_left > 10


def test_occluded_points_are_lost():
    base = _texture(3)
    tracker = create_tracker(TrackerConfig())
    first = tracker.push(base, 0)[0]
    occluded = base.copy()
    occluded[80:160, 100:220] = 128  # a flat occluder hides the texture
    update = tracker.push(occluded, 1)[0]
    old = ~update.born
    start = first.xy[np.searchsorted(first.ids, update.ids[old])]
    hidden = (start[:, 0] > 108) & (start[:, 0] < 212) & (start[:, 1] > 88) & (start[:, 1] < 152)
    assert hidden.sum() > 10
    assert update.visible[old][hidden].mean() < 0.2
    assert update.visible[old][~hidden].mean() > 0.8


def test_track_ids_are_unique_and_never_reused_after_reset():
    base = _texture(4)
    tracker = create_tracker(TrackerConfig(max_tracks=300))
    seen = set(tracker.push(base, 0)[0].ids.tolist())
    assert len(seen) <= 300
    tracker.reset()
    again = tracker.push(base, 0)[0].ids.tolist()
    assert len(again) == len(set(again))
    assert not seen & set(again)


def test_unknown_backend_is_a_clear_error():
    import pytest
    with pytest.raises(ValueError, match="unknown tracker backend 'cotracker'"):
        create_tracker(TrackerConfig(backend="cotracker"))


def test_window_positions_agree_with_the_full_history():
    window = TrackWindow(4)
    for frame in range(6):
        ids = np.array([7, 3, 5 + frame])   # unsorted; track 5+frame lives one frame
        xy = np.c_[ids * 10.0 + frame, ids + frame].astype(np.float32)
        window.append(frame, frame / 10, ids, xy, np.array([True, frame % 2 == 0, True]), np.ones(3, np.float32))
    query = np.array([3, 7, 9, 42])
    history = window.tracks(query)
    for age in range(4):
        xy, visible = window.positions(query, age)
        np.testing.assert_array_equal(xy, history.xy[:, -1 - age])
        np.testing.assert_array_equal(visible, history.visible[:, -1 - age])
    assert np.isnan(window.positions(query, 0)[0][3]).all()   # never seen

    # Tracks born at the next frame and followed back join the newest frame, in id order.
    window.add_to_newest(np.array([4, 40]), np.float32([[1, 2], [3, 4]]), np.float32([0.5, 0.9]))
    xy, visible = window.positions(np.array([3, 4, 40]), 0)
    np.testing.assert_array_equal(xy[1:], [[1, 2], [3, 4]])
    assert visible[1:].all() and window.tracks(np.array([4])).confidence[0, -1] == 0.5
    assert np.isnan(window.positions(np.array([4]), 1)[0]).all()


def test_new_points_are_followed_one_frame_back_where_they_were_in_view():
    wide = _texture(2, size=(240, 400))
    tracker = create_tracker(TrackerConfig())
    first = tracker.push(wide[:, 80:], 0)[0]
    assert first.born.all() and np.isnan(first.born_previous_xy).all()   # no earlier frame
    followed = entered = 0
    for step in range(1, 6):
        # Content moves right by 6 px per frame; the left strip has just come into view.
        update = tracker.push(np.ascontiguousarray(wide[:, 80 - 6 * step: 400 - 6 * step]), step)[0]
        assert np.isnan(update.born_previous_xy[~update.born]).all()
        born_xy, back_xy = update.xy[update.born], update.born_previous_xy[update.born]
        known = np.isfinite(back_xy[:, 0])
        np.testing.assert_allclose(back_xy[known], born_xy[known] - [6, 0], atol=0.15)
        assert (born_xy[known][:, 0] >= 6).all()   # where it was out of view there is no step
        followed += int(known.sum())
        entered += int((born_xy[:, 0] < 6).sum())
        np.testing.assert_array_equal(update.position_error[update.born][~known], 0)
    assert followed > 20 and entered > 5
