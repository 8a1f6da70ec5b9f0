"""Weight-free densifier: dense flow minus the camera's flow, accumulated along the flow over time.

For every pixel of the current frame, OpenCV DIS gives where it was in the previous frame
(backward flow). The camera model, fitted on the static tracks, says where the camera alone
would have put it. Their difference, in units of the residual noise at static tracks, is the
per-frame motion evidence. Evidence is accumulated recursively: the previous motion map is
carried along the flow into the current frame and blended with today's evidence, which keeps
slow or momentarily flow-less parts of an object lit and lets one-frame flow errors fade. The
blend is normalised by how much history each pixel has (an exponential average with bias
correction), so the first frames and pixels entering the image are not pulled towards zero.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from anymo_ros.camera_motion import CameraMotion
from anymo_ros.config import DensifyConfig
from anymo_ros.identity import moving_alike, own_motion

_DIS_PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}
_EVIDENCE_CENTER = 3.0   # residual (noise sigmas) with even odds of motion; Rayleigh tail ~1 %
_EVIDENCE_SLOPE = 1.5
_FLOW_WEIGHT = 0.5       # flow evidence counts like half a track
_BACKGROUND_LEVEL = 0.2  # motion-map value below which a pixel seeds the background
_ABSORB_KERNEL = np.ones((6, 6), np.uint8)  # the paper's stage-1 dilation, 3 iterations
_FLOW_NOISE_FLOOR = 0.3  # px: DIS errors are spatially correlated, so the sampled spread understates them
_LINK_SPACINGS = 1.5     # tracks closer than this many seeding-grid spacings are spatial neighbours
_BAND_REACH = 0.5       # fraction of the way from an object's edge to its deepest point that the colour
                         # band may reach: a wider band leaves a thin object (a hull, a leg) too little
                         # inside to learn its colours from
_MIN_COLOUR_SAMPLES = 200  # pixels each colour histogram needs; a small early blob of a larger object
                           # shares its colours with its ring, and colour would trim it to nothing
_CONTINUE_OVERLAP = 0.5  # fraction of a map part under last frame's objects for it to continue one
_SPLIT_SUPPORT = 2       # times an object's minimum of tracks that a part needs to split off: a
                         # sliver of dragged or parallax tracks beside an object is no second mover


@dataclass
class Region:
    """One candidate object: a connected part of the motion map backed by dynamic tracks."""

    mask: np.ndarray          # (h, w) bool at flow resolution
    track_rows: np.ndarray    # rows (into the dynamic-track arrays given) of the tracks inside


class FlowResidualDensifier:
    """Keeps the accumulated motion map and turns it plus dynamic tracks into regions."""

    def __init__(self, config: DensifyConfig):
        if config.flow_preset not in _DIS_PRESETS:
            raise ValueError(f"unknown flow_preset '{config.flow_preset}' (choose from {sorted(_DIS_PRESETS)})")
        self.config = config
        self._dis = cv2.DISOpticalFlow_create(_DIS_PRESETS[config.flow_preset])
        self.reset()

    def reset(self) -> None:
        self.motion_map: np.ndarray | None = None   # accumulated P(moving), flow resolution
        self.history_weight: np.ndarray | None = None   # per pixel: total weight of the evidence averaged
        self.backward_flow: np.ndarray | None = None
        self._prev_small: np.ndarray | None = None

    def flow_size(self, gray: np.ndarray) -> tuple[int, int]:
        height, width = gray.shape
        scale = self.config.flow_scale
        return max(8, round(width * scale)), max(8, round(height * scale))

    def update(self, gray: np.ndarray, camera_backward: CameraMotion | None, track_xy: np.ndarray,
               track_probability: np.ndarray, track_spacing: float) -> np.ndarray:
        """Add the current frame (processing resolution); returns the accumulated motion map.

        ``camera_backward`` maps current-frame points to the previous frame. ``track_xy`` are
        current track positions (processing px) with their dynamic probability (NaN where a
        track has no evidence yet); ``track_spacing`` is the typical distance between tracks.
        """
        width, height = self.flow_size(gray)
        scale = width / gray.shape[1]
        small = gray if gray.shape == (height, width) else cv2.resize(gray, (width, height), interpolation=cv2.INTER_AREA)
        previous_small, self._prev_small = self._prev_small, small
        if previous_small is None or previous_small.shape != small.shape or camera_backward is None:
            self.motion_map = np.zeros((height, width), np.float32)
            self.history_weight = np.zeros((height, width), np.float32)
            self.backward_flow = None
            return self.motion_map
        # Pixels just uncovered have no past, and their backward flow is a guess. Marking them
        # (by forward-backward disagreement, or as pixels no previous pixel moves onto) and
        # dropping their flow evidence and history also marks fast and blurred objects, whose
        # flow fails the same tests, and loses more there than it saves behind movers.
        flow = self._dis.calc(small, previous_small, None)
        magnitude = flow_magnitude(camera_backward.residual_field(flow))
        known = np.isfinite(track_probability)
        static_xy = track_xy[known & (track_probability < 0.3)] * scale
        sigma = _residual_noise(magnitude, static_xy)
        flow_evidence = 1.0 / (1.0 + np.exp(-_EVIDENCE_SLOPE * (magnitude / sigma - _EVIDENCE_CENTER)))
        # Tracks are sharper evidence than flow, which smears across boundaries; flow fills in
        # where tracks are missing (textureless surfaces).
        track_vote, support = _splat(track_xy[known] * scale, track_probability[known], (height, width),
                                     sigma=0.75 * track_spacing * scale)
        evidence = (support * track_vote + _FLOW_WEIGHT * flow_evidence) / (support + _FLOW_WEIGHT)
        carried_weight = self.config.evidence_decay * warp_backward(self.history_weight, flow, cv2.INTER_LINEAR)
        carried_sum = carried_weight * warp_backward(self.motion_map, flow, cv2.INTER_LINEAR)
        fresh_weight = 1.0 - self.config.evidence_decay
        self.history_weight = (carried_weight + fresh_weight).astype(np.float32)
        self.motion_map = ((carried_sum + fresh_weight * evidence) / self.history_weight).astype(np.float32)
        self.backward_flow = flow
        return self.motion_map

    def regions(self, rgb: np.ndarray, dynamic_xy: np.ndarray, static_xy: np.ndarray,
                dynamic_velocity: np.ndarray | None = None, track_spacing: float = 0.0,
                continuing: np.ndarray | None = None) -> list[Region]:
        """Object regions: parts of the thresholded motion map holding enough dynamic tracks,
        with boundaries snapped to image edges by a marker watershed.

        ``rgb`` is the processing-resolution frame; ``dynamic_xy``/``static_xy`` are positions
        (processing px) of tracks confidently dynamic / static. With ``dynamic_velocity`` (px per
        frame, the camera's motion taken out; NaN where unknown) and ``track_spacing``, a part of
        the map holding separate groups of tracks that move differently (``split_by_motion``) is
        split into one region per group. ``continuing`` (flow resolution, bool) marks where
        objects of the previous frame lie now: a part of the map lying mostly there continues
        an object and needs no dynamic tracks, since a fast, blurred or deforming mover can
        lose all its tracks for a frame or two while the map still sees it move.
        """
        if self.motion_map is None or (len(dynamic_xy) == 0 and continuing is None):
            return []
        height, width = self.motion_map.shape
        scale = width / rgb.shape[1]
        foreground = (self.motion_map > self.config.foreground_threshold).astype(np.uint8)
        foreground = cv2.morphologyEx(foreground, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
        count, components = cv2.connectedComponents(foreground, connectivity=8)
        if count <= 1:
            return []
        # Tracks sit on texture, often just outside a blurred boundary: look them up in a dilated copy.
        reach = cv2.dilate(components.astype(np.float32), np.ones((5, 5), np.uint8)).astype(np.int32)
        dyn_col, dyn_row = _pixel(dynamic_xy * scale, width, height)
        track_component = np.where(components[dyn_row, dyn_col] > 0, components[dyn_row, dyn_col],
                                   reach[dyn_row, dyn_col])
        min_area = self.config.min_object_area * height * width
        candidates = []   # (seed mask, rows of its tracks)
        for component in range(1, count):
            rows = np.flatnonzero(track_component == component)
            seed = components == component
            if seed.sum() < min_area:
                continue
            if len(rows) < self.config.min_object_tracks and not _continues(seed, continuing):
                continue
            groups = [rows]
            if dynamic_velocity is not None and track_spacing > 0:
                groups = [rows[g] for g in split_by_motion(dynamic_xy[rows], dynamic_velocity[rows],
                                                           _LINK_SPACINGS * track_spacing,
                                                           self.config.min_object_tracks)]
            if len(groups) == 1:
                candidates.append((seed, rows))
                continue
            for group, part in zip(groups, _nearest_track_parts(seed, dyn_col, dyn_row, groups)):
                candidates.append((part, group))
        candidates.sort(key=lambda c: -len(c[1]))
        # The paper's stage-1 rule: tracks within a dilated accepted object belong to it, so
        # slivers of dragged tracks beside an object do not become objects of their own.
        absorbed = np.zeros((height, width), np.uint8)
        kept = []
        for seed, rows in candidates:
            own = rows[absorbed[dyn_row[rows], dyn_col[rows]] == 0]
            if seed.sum() < min_area:
                continue
            if len(own) < self.config.min_object_tracks:
                free = seed & (absorbed == 0)
                if free.sum() < min_area or not _continues(free, continuing):
                    continue
            kept.append((seed, rows))
            absorbed |= cv2.dilate(seed.astype(np.uint8), _ABSORB_KERNEL, iterations=3)
        if not kept:
            return []
        markers = self._markers(kept, dyn_col, dyn_row, static_xy * scale)
        small_rgb = rgb if rgb.shape[:2] == (height, width) else cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA)
        cv2.watershed(np.ascontiguousarray(small_rgb), markers)
        regions = []
        band = colour_band((height, width))
        for label, (_, rows) in enumerate(kept, start=2):
            mask = refine_around(markers == label, small_rgb, self.motion_map, band)
            mask = fill_holes(mask)
            if mask.sum() >= min_area:
                regions.append(Region(mask, rows))
        return regions

    def _markers(self, kept: list[tuple[np.ndarray, np.ndarray]], dyn_col: np.ndarray, dyn_row: np.ndarray,
                 static_xy: np.ndarray) -> np.ndarray:
        """Watershed seeds: 1 = background, 2.. = objects, 0 = undecided band around each object."""
        height, width = self.motion_map.shape
        band = max(3, round(0.02 * max(height, width)))
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * band + 1, 2 * band + 1))
        objects = np.logical_or.reduce([seed for seed, _ in kept]).astype(np.uint8)
        markers = np.where(cv2.dilate(objects, kernel) > 0, 0, 1).astype(np.int32)
        markers[self.motion_map < _BACKGROUND_LEVEL] = 1
        for label, (seed, _) in enumerate(kept, start=2):
            markers[cv2.erode(seed.astype(np.uint8), kernel) > 0] = label
        # Tracks outrank the smooth map: a static track inside a blob is background.
        st_col, st_row = _pixel(static_xy, width, height)
        markers[st_row, st_col] = 1
        for label, (_, rows) in enumerate(kept, start=2):
            markers[dyn_row[rows], dyn_col[rows]] = label
        return markers


def _continues(seed: np.ndarray, continuing: np.ndarray | None) -> bool:
    return continuing is not None and seed.any() and continuing[seed].mean() >= _CONTINUE_OVERLAP


def split_by_motion(xy: np.ndarray, velocity: np.ndarray, link_distance: float, min_tracks: int) -> list[np.ndarray]:
    """Groups of tracks (row indices) by spatial proximity and motion similarity.

    ``velocity`` is each track's own motion, the camera's taken out (px per frame, NaN where
    unknown). Neighbouring tracks (closer than ``link_distance``) that move alike are chained
    into parts. A part of at least twice ``min_tracks`` tracks that moves unlike the camera is an
    object, unless its median velocity is alike another's, when they join (one object whose
    tracks have a gap, as on a textureless surface). Other parts (background dragged along
    with an object) and tracks of unknown velocity join the group of their nearest track. A
    deforming body stays one group, since its motion changes little from one track to the next.
    """
    count = len(xy)
    everything = [np.arange(count)]
    known = np.isfinite(velocity).all(axis=1)
    if known.sum() < 2 * _SPLIT_SUPPORT * min_tracks:
        return everything
    # A second mover would put enough tracks off the median motion (the common case ends here).
    unlike = ~moving_alike(velocity[known], np.median(velocity[known], axis=0))
    if unlike.sum() < _SPLIT_SUPPORT * min_tracks:
        return everything
    pairs = cKDTree(xy).query_pairs(link_distance, output_type="ndarray")
    pairs = pairs[known[pairs[:, 0]] & known[pairs[:, 1]]]
    pairs = pairs[moving_alike(velocity[pairs[:, 0]], velocity[pairs[:, 1]])]
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(count, count))
    parts, part_of = connected_components(graph, directed=False)
    big, motions, spreads = [], [], []
    known_per_part = np.bincount(part_of[known], minlength=parts)
    for part in np.flatnonzero(known_per_part >= _SPLIT_SUPPORT * min_tracks):
        rows = np.flatnonzero((part_of == part) & known)
        motion, spread = own_motion(velocity[rows])
        if not moving_alike(motion, np.zeros(2)):
            big.append(part)
            motions.append(motion)
            spreads.append(spread)
    if len(big) < 2:
        return everything
    motions, spreads = np.array(motions), np.array(spreads)
    alike = moving_alike(motions[:, None], motions[None], spreads[:, None], spreads[None])
    groups, group_of_big = connected_components(alike, directed=False)
    if groups == 1:
        return everything
    group_of_part = np.full(parts, -1)
    group_of_part[big] = group_of_big
    group = group_of_part[part_of]
    placed = np.flatnonzero(group >= 0)
    loose = np.flatnonzero(group < 0)
    if len(loose):
        _, nearest = cKDTree(xy[placed]).query(xy[loose])
        group[loose] = group[placed[nearest]]
    return [np.flatnonzero(group == g) for g in range(groups)]


def _nearest_track_parts(seed: np.ndarray, dyn_col: np.ndarray, dyn_row: np.ndarray,
                         groups: list[np.ndarray]) -> list[np.ndarray]:
    """Splits ``seed`` into one part per track group: each pixel goes to the group of its nearest track."""
    # Only the box around the seed and its tracks matters.
    track_rows, track_cols = dyn_row[np.concatenate(groups)], dyn_col[np.concatenate(groups)]
    left, top, box_width, box_height = cv2.boundingRect(seed.view(np.uint8))
    bottom, right = max(top + box_height, track_rows.max() + 1), max(left + box_width, track_cols.max() + 1)
    top, left = min(top, track_rows.min()), min(left, track_cols.min())
    distances = []
    for rows in groups:
        sources = np.ones((bottom - top, right - left), np.uint8)
        sources[dyn_row[rows] - top, dyn_col[rows] - left] = 0
        distances.append(cv2.distanceTransform(sources, cv2.DIST_L2, cv2.DIST_MASK_5))
    nearest = np.full(seed.shape, -1)
    nearest[top:bottom, left:right] = np.argmin(np.stack(distances), axis=0)
    return [seed & (nearest == g) for g in range(len(groups))]


def quantise_colours(rgb: np.ndarray) -> np.ndarray:
    """Colour bin (16 levels per channel) of every pixel."""
    q = (rgb >> 4).astype(np.int32)
    return (q[..., 0] << 8) | (q[..., 1] << 4) | q[..., 2]


def colour_band(shape: tuple[int, int]) -> int:
    """Half-width (px) of the boundary band that colour re-decides, for an image of ``shape``.

    The coarse mask's edge is uncertain by about the reach of the track splat (1.5 sigma at the
    default grid, 3 % of the image width) plus the DIS patch; on DAVIS J&F rises from a band of
    1.5 % to a plateau between 2.5 and 4 %.
    """
    return max(3, round(0.03 * max(shape)))


def refine_with_colour(mask: np.ndarray, quantised: np.ndarray, motion_map: np.ndarray,
                       size: int | None = None) -> np.ndarray:
    """Re-decide a band around the mask boundary from colour histograms of the object's inside
    and its surroundings, weighted by the motion evidence: boundaries follow the object's
    colours where flow and tracks are too coarse to place them. ``size`` is the band's
    half-width (default: ``colour_band`` of the arrays given); it reaches at most half-way into
    the object, so a thin object keeps an inside to learn its colours from."""
    size = size or colour_band(mask.shape)
    # Distances to the mask and to its outside give the eroded, dilated and ring regions at
    # once, far cheaper than morphology with kernels this large.
    mask_u8 = mask.astype(np.uint8)
    inside_depth = cv2.distanceTransform(mask_u8, cv2.DIST_L2, cv2.DIST_MASK_5)
    size = max(2, min(size, round(_BAND_REACH * float(inside_depth.max()))))
    outside_distance = cv2.distanceTransform(1 - mask_u8, cv2.DIST_L2, cv2.DIST_MASK_5)
    inner = inside_depth > size
    outer = outside_distance <= size
    ring = ~outer & (outside_distance <= 2 * size)
    if inner.sum() < _MIN_COLOUR_SAMPLES or ring.sum() < _MIN_COLOUR_SAMPLES:
        return mask
    bins = 16 ** 3
    inside = np.bincount(quantised[inner], minlength=bins).astype(np.float32) + 0.5
    outside = np.bincount(quantised[ring], minlength=bins).astype(np.float32) + 0.5
    inside /= inside.sum()
    outside /= outside.sum()
    band = outer & ~inner
    colour = inside[quantised[band]] / (inside[quantised[band]] + outside[quantised[band]])
    motion = np.clip(motion_map[band], 0.05, 0.95)
    odds = colour * motion / (colour * motion + (1 - colour) * (1 - motion))
    refined = inner.copy()
    refined[band] = odds > 0.5
    refined = cv2.medianBlur(refined.astype(np.uint8), 5) > 0
    return refined


def refine_around(mask: np.ndarray, rgb: np.ndarray, motion_map: np.ndarray, size: int) -> np.ndarray:
    """``refine_with_colour`` (band half-width ``size``) computed only in the mask's box plus the
    colour ring, which is all it reads: the same mask at the cost of the box."""
    height, width = mask.shape
    left, top, box_width, box_height = cv2.boundingRect(mask.view(np.uint8))
    margin = 3 * size + 2
    crop = (slice(max(top - margin, 0), min(top + box_height + margin, height)),
            slice(max(left - margin, 0), min(left + box_width + margin, width)))
    refined = np.zeros_like(mask)
    refined[crop] = refine_with_colour(mask[crop], quantise_colours(rgb[crop]), motion_map[crop], size)
    return refined


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """The mask with every background part that does not reach the border filled in."""
    height, width = mask.shape
    flood = np.zeros((height + 2, width + 2), np.uint8)
    flood[1:-1, 1:-1] = mask
    cv2.floodFill(flood, None, (0, 0), 1)   # the outside, reached through the 1 px frame
    return mask | (flood[1:-1, 1:-1] == 0)


def flow_magnitude(flow: np.ndarray) -> np.ndarray:
    """Per-pixel length of an (h, w, 2) float32 vector field."""
    return cv2.magnitude(np.ascontiguousarray(flow[..., 0]), np.ascontiguousarray(flow[..., 1]))


def _pixel(xy: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    col = np.clip(np.round(xy[:, 0]).astype(int), 0, width - 1)
    row = np.clip(np.round(xy[:, 1]).astype(int), 0, height - 1)
    return col, row


def _splat(xy: np.ndarray, values: np.ndarray, shape: tuple[int, int], sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian-weighted average of point values (vote) and point density in tracks (support)."""
    height, width = shape
    col, row = _pixel(xy, width, height)
    weighted = np.zeros(shape, np.float32)
    density = np.zeros(shape, np.float32)
    np.add.at(weighted, (row, col), values.astype(np.float32))
    np.add.at(density, (row, col), 1.0)
    weighted = cv2.GaussianBlur(weighted, (0, 0), sigma)
    density = cv2.GaussianBlur(density, (0, 0), sigma)
    vote = weighted / np.maximum(density, 1e-6)
    # Scaled so that one track within about sigma counts as support 1.
    support = density * (2.0 * np.pi * sigma * sigma)
    return vote, support


def warp_backward(image: np.ndarray, backward_flow: np.ndarray, interpolation: int) -> np.ndarray:
    """Bring a previous-frame image into the current frame: sample it where each pixel came from."""
    height, width = backward_flow.shape[:2]
    grid_x, grid_y = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    return cv2.remap(image, grid_x + backward_flow[..., 0], grid_y + backward_flow[..., 1], interpolation,
                     borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def _residual_noise(magnitude: np.ndarray, static_xy: np.ndarray) -> float:
    """Per-axis noise of the flow residual, from the static tracks (or the whole map as fallback)."""
    height, width = magnitude.shape
    if len(static_xy) >= 20:
        col = np.clip(static_xy[:, 0].astype(int), 0, width - 1)
        row = np.clip(static_xy[:, 1].astype(int), 0, height - 1)
        samples = magnitude[row, col]
    else:
        samples = magnitude.ravel()
    # The median of a Rayleigh(sigma) magnitude is sigma * sqrt(2 ln 2).
    return max(float(np.median(samples)) / 1.1774, _FLOW_NOISE_FLOOR)
