"""Building blocks of the weight-free densifier: regions, hole filling, flow magnitude, colour refinement."""
import cv2
import numpy as np

from anymo_ros.config import DensifyConfig
from anymo_ros.densify.flow import (
    FlowResidualDensifier,
    fill_holes,
    flow_magnitude,
    quantise_colours,
    refine_around,
    refine_with_colour,
    split_by_motion,
    warp_backward,
)

SPACING = 12.0


def _grid(x0, y0, columns, rows):
    xs, ys = np.meshgrid(np.arange(columns) * SPACING + x0, np.arange(rows) * SPACING + y0)
    return np.c_[xs.ravel(), ys.ravel()].astype(np.float32)


def _split(xy, velocity):
    rng = np.random.default_rng(0)
    noisy = velocity + rng.normal(0, 0.1, velocity.shape)
    return sorted(sorted(group.tolist()) for group in split_by_motion(xy, noisy, 1.5 * SPACING, 6))


def test_two_movers_with_a_gap_between_their_tracks_are_two_groups():
    top, bottom = _grid(100, 40, 8, 4), _grid(100, 40 + 3 * SPACING + 20, 8, 4)
    xy = np.r_[top, bottom]
    rows_top, rows_bottom = list(range(len(top))), list(range(len(top), len(xy)))
    velocity = np.r_[np.tile([-7.0, 0.0], (len(top), 1)), np.tile([2.0, 0.5], (len(bottom), 1))]
    assert _split(xy, velocity) == [rows_top, rows_bottom]
    # Tracks of unknown velocity join the group of their nearest track.
    unknown = velocity.copy()
    unknown[[0, len(top)]] = np.nan
    assert _split(xy, unknown) == [rows_top, rows_bottom]
    # Moving alike, or one moving with the camera (own velocity ~0): one group.
    assert _split(xy, np.tile([-7.0, 0.0], (len(xy), 1))) == [list(range(len(xy)))]
    with_camera = velocity.copy()
    with_camera[len(top):] = 0.0
    assert _split(xy, with_camera) == [list(range(len(xy)))]
    # No velocity known yet (a track's first frames): nothing to split on.
    assert _split(xy, np.full_like(velocity, np.nan)) == [list(range(len(xy)))]


def test_a_turning_body_is_one_group_even_with_a_gap_in_its_tracks():
    def turning(points):
        # 0.08 rad per frame about the body's centre while drifting right: neighbours differ by 1 px.
        offset = points - np.array([154.0, 94.0])
        return 0.08 * np.c_[-offset[:, 1], offset[:, 0]] + np.array([4.0, 0.0])

    body = _grid(100, 40, 10, 10)
    assert _split(body, turning(body)) == [list(range(len(body)))]
    # A limb beyond a textureless gap moves unlike the body's middle, but within the spread of
    # the body's own velocities: still one group.
    limb = _grid(100 + 9 * SPACING + 25, 40, 4, 4)
    xy = np.r_[body, limb]
    assert _split(xy, np.r_[turning(body), turning(limb) + np.array([1.5, 0.0])]) == [list(range(len(xy)))]


def test_a_moving_blob_without_dynamic_tracks_continues_an_object_but_founds_none():
    # A blob of strong motion evidence holding two dynamic tracks (an object needs six): a fast,
    # blurred mover whose tracks were all lost and re-seeded. It is an object only where an
    # object of the previous frame lies now.
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)
    densifier = FlowResidualDensifier(DensifyConfig())
    densifier.motion_map = np.zeros((120, 160), np.float32)    # flow scale 0.5
    densifier.motion_map[40:80, 60:100] = 0.9
    blob_tracks = np.array([[150.0, 110.0], [170.0, 130.0]], np.float32)
    static_tracks = _grid(12, 12, 20, 3)
    here = np.zeros((120, 160), bool)
    here[45:85, 55:95] = True                                   # last frame's object, warped to now
    elsewhere = np.zeros((120, 160), bool)
    elsewhere[0:40, 0:40] = True

    assert densifier.regions(rgb, blob_tracks, static_tracks) == []
    assert densifier.regions(rgb, blob_tracks, static_tracks, continuing=elsewhere) == []
    for dynamic in (blob_tracks, np.zeros((0, 2), np.float32)):
        regions = densifier.regions(rgb, dynamic, static_tracks, continuing=here)
        assert len(regions) == 1
        blob = densifier.motion_map > 0.5
        iou = (regions[0].mask & blob).sum() / (regions[0].mask | blob).sum()
        assert iou > 0.8
        assert len(regions[0].track_rows) == len(dynamic)


def test_fill_holes_fills_enclosed_background_only():
    mask = np.zeros((60, 80), bool)
    mask[10:40, 10:40] = True
    mask[20:30, 20:30] = False          # enclosed: filled
    mask[0:20, 60:80] = True
    mask[0:5, 65:70] = False            # open to the border: kept
    expected = mask.copy()
    expected[20:30, 20:30] = True
    np.testing.assert_array_equal(fill_holes(mask), expected)


def test_flow_magnitude_is_the_vector_length():
    flow = np.random.default_rng(0).normal(size=(20, 30, 2)).astype(np.float32)
    np.testing.assert_allclose(flow_magnitude(flow), np.linalg.norm(flow, axis=2), rtol=1e-5)


def test_warp_backward_samples_where_each_pixel_came_from():
    image = np.zeros((20, 20), np.float32)
    image[5, 5] = 1.0
    flow = np.zeros((20, 20, 2), np.float32)
    flow[..., 0] = -3.0                 # every pixel came from 3 px to its left
    assert warp_backward(image, flow, cv2.INTER_NEAREST)[5, 8] == 1.0


def test_colour_refinement_trims_a_halo_of_background_colour():
    # A red disc on a textured green background; the coarse mask spills 8 px onto the background,
    # where the motion evidence is only lukewarm.
    rng = np.random.default_rng(0)
    image = np.zeros((120, 160, 3), np.uint8)
    image[..., 0], image[..., 2] = 30, 40
    image[..., 1] = 150 + rng.integers(0, 40, (120, 160))
    truth = np.zeros((120, 160), np.uint8)
    cv2.circle(truth, (80, 60), 30, 1, -1)
    image[truth > 0] = (200, 40, 40)
    coarse = np.zeros((120, 160), np.uint8)
    cv2.circle(coarse, (80, 60), 38, 1, -1)
    motion = np.where(truth > 0, 0.9, np.where(coarse > 0, 0.6, 0.1)).astype(np.float32)
    refined = refine_with_colour(coarse > 0, quantise_colours(image), motion, size=10)

    def iou(a, b):
        return (a & b).sum() / (a | b).sum()
    assert iou(refined, truth > 0) > 0.95 > iou(coarse > 0, truth > 0) + 0.2
    # Refining inside the box around the mask gives the same mask as refining the whole frame.
    canvas = np.zeros((400, 500, 3), np.uint8)
    canvas[..., 1] = rng.integers(0, 255, (400, 500))
    canvas[250:370, 300:460] = image
    canvas_mask = np.zeros((400, 500), bool)
    canvas_mask[250:370, 300:460] = coarse > 0
    canvas_motion = np.full((400, 500), 0.1, np.float32)
    canvas_motion[250:370, 300:460] = motion
    whole = refine_with_colour(canvas_mask, quantise_colours(canvas), canvas_motion, size=10)
    np.testing.assert_array_equal(refine_around(canvas_mask, canvas, canvas_motion, 10), whole)
    np.testing.assert_array_equal(whole[250:370, 300:460], refined)


def test_colour_refinement_trims_a_thin_object_narrower_than_the_band():
    # A red bar 10 px thick whose coarse mask spills 3 px on each side: a 10 px band would leave
    # no inside to learn the bar's colours from, so the band shrinks to half the mask's depth.
    rng = np.random.default_rng(1)
    image = np.zeros((120, 160, 3), np.uint8)
    image[..., 1] = 150 + rng.integers(0, 40, (120, 160))
    truth = np.zeros((120, 160), bool)
    truth[55:65, 20:140] = True
    image[truth] = (200, 40, 40)
    coarse = np.zeros((120, 160), bool)
    coarse[52:68, 17:143] = True
    motion = np.where(truth, 0.9, np.where(coarse, 0.6, 0.1)).astype(np.float32)
    refined = refine_with_colour(coarse, quantise_colours(image), motion, size=10)
    assert (refined & truth).sum() / (refined | truth).sum() > 0.9 > (coarse & truth).sum() / coarse.sum() + 0.2
