"""IdentityTracker on hand-made regions."""
import numpy as np

from anymo_ros.config import IdentityConfig
from anymo_ros.identity import Claim, IdentityTracker

SHAPE = (120, 200)


def _box(x, y, w=20, h=20):
    mask = np.zeros(SHAPE, bool)
    mask[y:y + h, x:x + w] = True
    return mask


def _no_claim():
    return Claim({}, {})


def test_new_regions_get_new_ids_and_claims_keep_them():
    tracker = IdentityTracker(IdentityConfig())
    first = tracker.assign([_box(10, 10), _box(100, 50)], [10, 10], [_no_claim(), _no_claim()],
                           [np.zeros(2), np.zeros(2)], 0, 0.0)
    assert [oid for oid, _ in first] == [1, 2]
    # Region order swapped; the tracks' votes decide which is which.
    second = tracker.assign([_box(102, 50), _box(12, 10)], [10, 10],
                            [Claim({2: 9}, {}), Claim({1: 10}, {})], [np.zeros(2), np.zeros(2)], 1, 0.1)
    assert dict(second) == {1: [1], 2: [0]}
    third = tracker.assign([_box(14, 10), _box(150, 90)], [10, 10], [Claim({1: 10}, {}), _no_claim()],
                           [np.zeros(2), np.zeros(2)], 2, 0.2)
    assert dict(third) == {1: [0], 3: [1]}


def test_an_object_keeps_its_id_when_its_region_grows_around_its_tracks():
    """A mover just found: the next frame its region is four times larger (its other tracks turned
    dynamic), so its 28 old tracks are few of the region's and its old mask covers little of it."""
    tracker = IdentityTracker(IdentityConfig())
    assert tracker.assign([_box(60, 40, 20, 20)], [30], [_no_claim()], [np.zeros(2)], 0, 0.0) == [(1, [0])]
    grown = tracker.assign([_box(50, 30, 40, 40)], [120], [Claim({1: 28}, {1: 0.25})], [np.zeros(2)], 1, 0.1)
    assert grown == [(1, [0])]
    # A region holding only a few of the object's tracks and little of its mask is someone else.
    other = tracker.assign([_box(150, 80, 40, 40)], [120], [Claim({1: 10}, {1: 0.1})], [np.zeros(2)], 2, 0.2)
    assert other == [(2, [0])]


def test_pieces_of_one_object_merge_but_distant_claimants_do_not():
    tracker = IdentityTracker(IdentityConfig())
    tracker.assign([_box(50, 40, 40, 40)], [20], [_no_claim()], [np.zeros(2)], 0, 0.0)
    pieces = tracker.assign([_box(50, 40, 40, 18), _box(50, 60, 40, 20)], [10, 10],
                            [Claim({1: 10}, {}), Claim({1: 10}, {})], [np.zeros(2)] * 2, 1, 0.1)
    assert pieces == [(1, [0, 1])]
    apart = tracker.assign([_box(0, 0, 30, 30), _box(170, 90, 30, 30)], [12, 8],
                           [Claim({1: 12}, {}), Claim({1: 8}, {})], [np.zeros(2)] * 2, 2, 0.2)
    assert dict(apart)[1] == [0] and len(apart) == 2


def test_close_pieces_that_move_differently_stay_two_objects():
    """Two objects that were seen as one blob split again: both pieces carry the blob's id."""
    tracker = IdentityTracker(IdentityConfig())
    tracker.assign([_box(50, 40, 40, 40)], [20], [_no_claim()], [np.zeros(2)], 0, 0.0)
    pieces = [_box(50, 40, 40, 18), _box(50, 60, 40, 20)]
    claims = [Claim({1: 10}, {}), Claim({1: 10}, {})]
    # Own motions (camera taken out) with their spreads over each piece's tracks.
    one_left, one_right = (np.array([-6.0, 0.0]), 0.2), (np.array([3.0, 0.5]), 0.2)
    split = tracker.assign(pieces, [10, 10], claims, [np.zeros(2)] * 2, 1, 0.1, [one_left, one_right])
    assert [members for _, members in split] == [[0], [1]] and split[0][0] == 1
    # Alike once the spread of each piece's tracks (a body whose parts move) is allowed for.
    tracker = IdentityTracker(IdentityConfig())
    tracker.assign([_box(50, 40, 40, 40)], [20], [_no_claim()], [np.zeros(2)], 0, 0.0)
    loose_left, loose_right = (one_left[0], 1.0), (one_right[0], 1.0)
    assert tracker.assign(pieces, [10, 10], claims, [np.zeros(2)] * 2, 1, 0.1,
                          [loose_left, loose_right]) == [(1, [0, 1])]
    # A piece that moves like the camera (background dragged along) is no second mover.
    tracker = IdentityTracker(IdentityConfig())
    tracker.assign([_box(50, 40, 40, 40)], [20], [_no_claim()], [np.zeros(2)], 0, 0.0)
    assert tracker.assign(pieces, [10, 10], claims, [np.zeros(2)] * 2, 1, 0.1,
                          [one_left, (np.array([0.3, 0.0]), 0.1)]) == [(1, [0, 1])]


def test_object_reappearing_after_occlusion_gets_its_id_back():
    tracker = IdentityTracker(IdentityConfig(max_lost_frames=20))
    velocity = np.array([4.0, 0.0])
    for frame in range(5):
        claim = Claim({1: 10}, {}) if frame else _no_claim()
        tracker.assign([_box(20 + 4 * frame, 50)], [10], [claim], [velocity], frame, frame / 10)
    for frame in range(5, 12):  # hidden
        tracker.assign([], [], [], [], frame, frame / 10)
    # Re-emerges where its motion predicts, with fresh tracks that carry no id.
    back = tracker.assign([_box(20 + 4 * 12, 50)], [6], [_no_claim()], [velocity], 12, 1.2)
    assert back == [(1, [0])]
    elsewhere = tracker.assign([_box(20 + 4 * 13, 50), _box(170, 5)], [6, 6], [Claim({1: 6}, {}), _no_claim()],
                               [velocity, np.zeros(2)], 13, 1.3)
    assert dict(elsewhere) == {1: [0], 2: [1]}


def test_forgotten_after_max_lost_frames_and_ids_never_reused_after_reset():
    tracker = IdentityTracker(IdentityConfig(max_lost_frames=3))
    tracker.assign([_box(20, 50)], [10], [_no_claim()], [np.zeros(2)], 0, 0.0)
    for frame in range(1, 6):
        tracker.assign([], [], [], [], frame, frame / 10)
    assert tracker.assign([_box(20, 50)], [10], [_no_claim()], [np.zeros(2)], 6, 0.6) == [(2, [0])]
    tracker.reset()
    assert tracker.assign([_box(20, 50)], [10], [Claim({2: 10}, {})], [np.zeros(2)], 7, 0.7) == [(3, [0])]
