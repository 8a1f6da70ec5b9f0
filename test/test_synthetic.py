"""The synthetic scene generators: determinism, mask/motion consistency, trajectory ground truth."""
import cv2
import numpy as np
import pytest

from anymo_ros.tools.synthetic import (
    TRAJECTORY_CAMERA_MOTIONS,
    _Body,
    _occluded,
    _surface_normal,
    _surface_to_world,
    render_clip,
    sample_trajectories,
)


def _flow(frame_a, frame_b):
    gray_a = cv2.cvtColor(frame_a, cv2.COLOR_RGB2GRAY)
    gray_b = cv2.cvtColor(frame_b, cv2.COLOR_RGB2GRAY)
    return cv2.calcOpticalFlowFarneback(gray_a, gray_b, None, 0.5, 4, 21, 3, 5, 1.1, 0)


def _interior(mask, margin=15):
    return cv2.erode(mask.astype(np.uint8), np.ones((margin, margin), np.uint8)) > 0


def _centroid(mask):
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()])


# ---------------------------------------------------------------------------------- clips

def test_clip_shapes_dtypes_and_stamps():
    clip = render_clip(seed=0, num_frames=5, width=320, height=240, num_objects=2, fps=20.0)
    assert len(clip.frames) == len(clip.masks) == len(clip.stamps) == 5
    assert clip.fps == 20.0
    assert clip.stamps == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2])
    for frame, mask in zip(clip.frames, clip.masks):
        assert frame.shape == (240, 320, 3) and frame.dtype == np.uint8
        assert mask.shape == (240, 320) and mask.dtype == np.uint16
        assert set(np.unique(mask)) <= {0, 1, 2}


def test_clip_is_deterministic_per_seed():
    first = render_clip(seed=7, num_frames=4, width=320, height=240, num_objects=2)
    again = render_clip(seed=7, num_frames=4, width=320, height=240, num_objects=2)
    other = render_clip(seed=8, num_frames=4, width=320, height=240, num_objects=2)
    for a, b in zip(first.frames + first.masks, again.frames + again.masks):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first.frames[0], other.frames[0])
    assert not np.array_equal(first.masks[0], other.masks[0])


@pytest.mark.parametrize("camera_motion", ["static", "pan", "zoom", "shake", "orbit"])
def test_masks_follow_the_rendered_object_and_background_follows_the_camera(camera_motion):
    clip = render_clip(seed=2, num_frames=8, num_objects=1, camera_motion=camera_motion)
    area = 640 * 480
    t = 5
    object_now, object_next = clip.masks[t] == 1, clip.masks[t + 1] == 1
    assert object_now.sum() > 0.03 * area and object_next.sum() > 0.03 * area
    flow = _flow(clip.frames[t], clip.frames[t + 1])

    # The mask moves with the pixels it labels: mask centroid step equals measured flow inside it.
    mask_step = _centroid(object_next) - _centroid(object_now)
    object_flow = np.median(flow[_interior(object_now)], axis=0)
    assert np.linalg.norm(mask_step - object_flow) < 1.0

    background = _interior(clip.masks[t] == 0) & _interior(clip.masks[t + 1] == 0)
    background_flow = flow[background]
    speed = np.median(np.linalg.norm(background_flow, axis=1))
    if camera_motion == "static":
        assert speed < 0.2
    else:
        assert 0.5 < speed < 7.0
    # The object moves against the background next to it, not with it.
    near = background & (cv2.dilate(object_now.astype(np.uint8), np.ones((61, 61), np.uint8)) > 0)
    relative = object_flow - np.median(flow[near], axis=0)
    assert 1.5 < np.linalg.norm(relative) < 10.0


def test_masks_cover_exactly_the_pixels_that_change_under_a_static_camera():
    clip = render_clip(seed=5, num_frames=6, num_objects=2, camera_motion="static")
    before, after = (cv2.blur(frame.astype(np.float32), (3, 3)) for frame in clip.frames[3:5])
    changed = np.abs(before - after).max(axis=2) > 8.0     # far above the smoothed sensor noise
    labelled = (clip.masks[3] > 0) | (clip.masks[4] > 0)
    edge_tolerance = cv2.dilate(labelled.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    assert (changed & ~edge_tolerance).sum() < 30
    assert changed[labelled].mean() > 0.8


def test_orbit_background_layers_show_parallax():
    clip = render_clip(seed=4, num_frames=8, num_objects=0, camera_motion="orbit")
    flow = _flow(clip.frames[4], clip.frames[5])
    far = np.median(flow[20:140, 40:-40], axis=(0, 1))        # upper image: far layer
    ground = np.median(flow[400:470, 40:-40], axis=(0, 1))    # lower image: ground band
    assert np.linalg.norm(far - ground) > 1.0
    # Both move the same way, the far layer faster: an orbit around a point nearer than both.
    assert np.dot(far, ground) > 0 and np.linalg.norm(far) > np.linalg.norm(ground)


def test_static_camera_without_objects_changes_only_by_noise():
    still = render_clip(seed=3, num_frames=3, num_objects=0, camera_motion="static")
    moving = render_clip(seed=3, num_frames=3, num_objects=0, camera_motion="pan")
    assert all(not mask.any() for mask in still.masks)

    def difference(clip, smooth):
        a, b = (cv2.blur(f.astype(np.float32), (smooth, smooth)) for f in clip.frames[1:3])
        return float(np.mean(np.abs(a - b)))

    assert difference(still, 1) < 3.5          # sensor noise only, sigma 2
    assert difference(still, 7) < 0.6          # and it averages away
    assert difference(moving, 7) > 5.0         # whereas real motion does not


@pytest.mark.parametrize("camera_motion", ["static", "pan"])
def test_occluder_hides_object_then_it_reappears(camera_motion):
    clip = render_clip(seed=1, num_frames=60, width=320, height=240, num_objects=1,
                       camera_motion=camera_motion, occluder=True)
    areas = np.array([(mask == 1).sum() for mask in clip.masks])
    hidden = int(np.argmin(areas))
    assert 5 < hidden < 55
    assert areas[0] > 0.04 * 320 * 240
    assert areas[hidden] < 0.1 * areas[0]
    assert areas[hidden:].max() > 0.6 * areas[0]     # comes back out, with the same id


# ---------------------------------------------------------------------------- trajectories

def _world_points(sample):
    """(N, T, 3) world positions recovered from the visible observations (NaN elsewhere)."""
    rays = np.concatenate([sample.xy.astype(np.float64), np.ones(sample.xy.shape[:2] + (1,))], axis=2)
    camera = rays @ np.linalg.inv(sample.intrinsics).T * sample.depth[..., None]
    return np.einsum("tji,ntj->nti", sample.world_to_camera, camera) + sample.camera_center[None]


def _in_image(sample):
    width, height = sample.image_size
    x, y = sample.xy[..., 0], sample.xy[..., 1]
    with np.errstate(invalid="ignore"):
        return (x >= 0) & (x <= width - 1) & (y >= 0) & (y <= height - 1)


def test_trajectory_shapes_and_dtypes():
    sample = sample_trajectories(seed=0, num_tracks=300, num_frames=12, image_size=(320, 240), fps=25.0)
    assert sample.xy.shape == (300, 12, 2) and sample.xy.dtype == np.float32
    assert sample.visible.shape == (300, 12) and sample.visible.dtype == bool
    assert sample.depth.shape == (300, 12) and sample.depth.dtype == np.float32
    assert sample.dynamic.shape == (300,) and sample.dynamic.dtype == bool
    assert sample.object_index.shape == (300,) and sample.object_index.dtype == np.int16
    assert sample.query_frame.shape == (300,) and sample.query_frame.dtype == np.int16
    assert sample.image_size == (320, 240) and sample.fps == 25.0
    assert sample.intrinsics.shape == (3, 3)
    assert sample.world_to_camera.shape == (12, 3, 3) and sample.camera_center.shape == (12, 3)
    np.testing.assert_allclose(sample.world_to_camera @ np.swapaxes(sample.world_to_camera, 1, 2),
                               np.broadcast_to(np.eye(3), (12, 3, 3)), atol=1e-9)
    assert sample.camera_motion in TRAJECTORY_CAMERA_MOTIONS


def test_trajectories_are_deterministic_per_seed():
    first, again, other = (sample_trajectories(seed, num_tracks=256) for seed in (5, 5, 6))
    arrays = ("xy", "visible", "depth", "dynamic", "object_index", "query_frame", "world_to_camera", "camera_center")
    for name in arrays:
        np.testing.assert_array_equal(getattr(first, name), getattr(again, name))
    assert not np.array_equal(first.xy, other.xy, equal_nan=True)


@pytest.mark.parametrize("camera_motion", TRAJECTORY_CAMERA_MOTIONS)
def test_trajectory_ground_truth_is_consistent(camera_motion):
    dynamic_spreads = []
    for seed in range(3):
        sample = sample_trajectories(seed, num_tracks=512, camera_motion=camera_motion)
        tracks = np.arange(len(sample.xy))
        # Visibility: never off-image or behind the camera; depth exactly where visible.
        assert not (sample.visible & ~_in_image(sample)).any()
        np.testing.assert_array_equal(np.isfinite(sample.depth), sample.visible)
        assert (sample.depth[sample.visible] > 0).all()
        assert sample.visible[tracks, sample.query_frame].all()
        # Labels: only object points move, and static points back-project to one world point.
        assert not (sample.dynamic & (sample.object_index == 0)).any()
        world = _world_points(sample)
        spread = np.linalg.norm(world - np.nanmean(world, axis=1, keepdims=True), axis=2)
        assert np.nanmax(spread[~sample.dynamic]) < 1e-3
        seen_twice = sample.visible.sum(axis=1) >= 2
        dynamic_spreads += list(np.nanmax(spread[sample.dynamic & seen_twice], axis=1))
    # Dynamic points really move between the frames they are seen in.
    assert len(dynamic_spreads) > 50
    assert np.mean(np.array(dynamic_spreads) > 5e-4) > 0.95


def test_stationary_camera_keeps_static_tracks_still():
    sample = sample_trajectories(3, num_tracks=512, camera_motion="stationary")
    np.testing.assert_array_equal(sample.camera_center, sample.camera_center[:1].repeat(len(sample.camera_center), 0))
    static = ~sample.dynamic & sample.visible.all(axis=1)
    assert static.sum() > 100
    assert np.abs(sample.xy[static] - sample.xy[static, :1]).max() < 1e-3


def test_occluded_static_points_lie_behind_a_visible_surface():
    checked = behind = 0
    for seed in range(2):
        sample = sample_trajectories(seed, num_tracks=4096, camera_motion="orbit")
        world = np.nanmean(_world_points(sample), axis=1)     # exact for static tracks
        seen_static = (~sample.dynamic & sample.visible.any(axis=1))[:, None]
        hidden_static = _in_image(sample) & ~sample.visible & seen_static
        for t in range(0, sample.xy.shape[1], 3):
            hidden = np.flatnonzero(hidden_static[:, t])
            shown = np.flatnonzero(sample.visible[:, t])
            hidden_depth = ((world[hidden] - sample.camera_center[t]) @ sample.world_to_camera[t].T)[:, 2]
            distance = np.linalg.norm(sample.xy[hidden, None, t] - sample.xy[None, shown, t], axis=2)
            nearby = distance < 6.0
            has_neighbour = nearby.any(axis=1)
            nearest_depth = np.where(nearby, sample.depth[shown, t][None], np.inf).min(axis=1)
            checked += has_neighbour.sum()
            behind += (has_neighbour & (nearest_depth < hidden_depth)).sum()
    assert checked > 100
    assert behind / checked > 0.95


def test_moving_objects_get_a_share_of_the_tracks():
    shares = np.array([np.mean(sample_trajectories(seed, num_tracks=256).object_index > 0) for seed in range(30)])
    assert 0 < np.sum(shares == 0) < 15           # some samples have no moving object, most do
    assert 0.05 < np.median(shares[shares > 0]) < 0.45


def test_camera_motions_move_the_camera_as_named():
    def motion(name):
        sample = sample_trajectories(1, num_tracks=16, camera_motion=name)
        travel = sample.camera_center[-1] - sample.camera_center[0]
        turn = sample.world_to_camera[-1] @ sample.world_to_camera[0].T
        angle = np.arccos(np.clip((np.trace(turn) - 1) / 2, -1, 1))
        return np.linalg.norm(travel), angle, travel, sample.world_to_camera[0][2]

    distance, angle, _, _ = motion("stationary")
    assert distance == 0 and angle == 0
    distance, angle, _, _ = motion("panning")
    assert distance < 0.1 and angle > 0.05
    distance, _, travel, optical_axis = motion("forward")
    assert distance > 0.5 and np.dot(travel / distance, optical_axis) > 0.9
    distance, _, travel, optical_axis = motion("walking")
    assert 0.1 < distance < 1.5 and np.dot(travel / distance, optical_axis) > 0.8
    distance, angle, _, _ = motion("orbit")
    assert distance > 0.05 and angle > 0.03


def test_surfaces_hide_points_behind_them_and_their_own_back():
    # Camera at the origin looking down +z; a box at z = 5 turning about the vertical axis by
    # 0, 90 and 180 degrees; a wall facing the camera at z = 10.
    angle = np.array([0.0, np.pi / 2, np.pi])
    turn = np.zeros((3, 3, 3))
    turn[:, 0, 0] = turn[:, 2, 2] = np.cos(angle)
    turn[:, 0, 2], turn[:, 2, 0], turn[:, 1, 1] = np.sin(angle), -np.sin(angle), 1.0
    box = _Body("box", 0.5 * turn, np.tile([0.0, 0.0, 5.0], (3, 1)), 1)
    facing_camera = np.diag([1.0, -1.0, -1.0])
    wall = _Body("plane", np.repeat(facing_camera[None], 3, axis=0), np.tile([0.0, 0.0, 10.0], (3, 1)), 0)
    bodies = [box, wall]
    front_of_box = np.array([[0.0, 0.0, -1.0]])
    on_wall = np.array([[0.0, 0.0, 0.0], [3.0, 0.0, 0.0]])    # behind the box, and off to the side
    which = np.array([0, 1, 1])
    world = np.concatenate([_surface_to_world(box, front_of_box), _surface_to_world(wall, on_wall)], axis=1)
    normal = np.concatenate([_surface_normal(box, front_of_box), _surface_normal(wall, on_wall)], axis=1)
    hidden = _occluded(bodies, which, world, normal, np.zeros((3, 3)))
    np.testing.assert_array_equal(hidden[:, 0], [False, True, True])    # turns away from the camera
    np.testing.assert_array_equal(hidden[:, 1], [True, True, True])     # always behind the box
    np.testing.assert_array_equal(hidden[:, 2], [False, False, False])
