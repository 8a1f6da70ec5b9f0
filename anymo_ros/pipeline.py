"""MotionSegmenter: the one streaming pipeline that the node, the offline tools and the tests drive.

Per frame: track points -> fit the camera's motion on the static scene -> classify each track
dynamic or static over the sliding window -> densify dynamic tracks into object regions ->
give each object a stable id. Everything runs causally on the frames seen so far.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter

import cv2
import numpy as np

from anymo_ros.camera_motion import CameraMotion
from anymo_ros.classify.online import OnlineTrackClassifier, check_classifier_parameters
from anymo_ros.config import SegmenterConfig
from anymo_ros.densify.flow import (
    FlowResidualDensifier,
    colour_band,
    refine_around,
    warp_backward,
)
from anymo_ros.devices import create_backends
from anymo_ros.identity import Claim, IdentityTracker, mask_centroid, own_motion
from anymo_ros.semantics import SemanticTrackCache
from anymo_ros.tracking import TrackUpdate, create_tracker
from anymo_ros.types import MovingObject, SegmentationResult, TrackSnapshot
from anymo_ros.window import TrackWindow, carry_over

_log = logging.getLogger(__name__)
_VELOCITY_FRAMES = 4   # frames over which a track's recent motion is measured for grouping


class InvalidImageError(ValueError):
    """The frame cannot be processed (wrong shape, type or size); the pipeline state is untouched."""


class MotionSegmenter:
    """Streaming motion segmentation: ``feed`` one RGB frame at a time, get labels and objects."""

    def __init__(self, config: SegmenterConfig | None = None):
        self.config = config or SegmenterConfig()
        cfg = self.config
        if cfg.torch_threads < 0:
            raise ValueError(f"torch_threads must be 0 (torch's default) or more, got {cfg.torch_threads}")
        if cfg.torch_threads:
            import torch  # only here: the rest of the pipeline needs torch only for learned models
            torch.set_num_threads(cfg.torch_threads)
        # Learned models (depth, semantics, SAM2); any that cannot be had falls back, with a reason.
        self.problems: list[str] = []  # backends that could not start, with the fallback taken
        self.models, problems = create_backends(cfg)
        for problem in problems:
            self._note(problem)
        self.tracker = self._create_tracker()
        self.classifier = self._create_classifier()
        self.semantic_cache = self._create_semantic_cache()
        self._prompting_used = self.models.prompting
        self.densifier = FlowResidualDensifier(cfg.densify)
        self.identity = IdentityTracker(cfg.identity)
        self.window = TrackWindow(cfg.window)
        self.max_stamp_gap = 2.0
        self._frame_index = 0
        self._reset_state()

    def _create_tracker(self):
        try:
            return create_tracker(self.config.tracker)
        except ValueError as error:
            self._note(f"tracker unavailable ({error}); falling back to 'lk'")
            return create_tracker(dataclasses.replace(self.config.tracker, backend="lk"))

    def _note(self, problem: str) -> None:
        _log.warning(problem)
        self.problems.append(problem)

    def _create_classifier(self) -> OnlineTrackClassifier:
        """The configured classifier; the geometric one, with the reason recorded, if it cannot load.

        A parameter out of range is the user's to fix, not a reason to fall back: ValueError.
        """
        check_classifier_parameters(self.config.classifier)
        try:
            return OnlineTrackClassifier(self.config.classifier, str(self.models.device))
        except (FileNotFoundError, RuntimeError, KeyError, ValueError) as error:
            self._note(f"classifier '{self.config.classifier.backend}' unavailable ({error}); "
                       f"falling back to 'geometric'")
            return OnlineTrackClassifier(dataclasses.replace(self.config.classifier, backend="geometric"))

    def _create_semantic_cache(self) -> SemanticTrackCache | None:
        """Per-track semantics feed the learned classifier only, at the width it was trained for."""
        semantics = self.models.semantics
        if semantics is None:
            return None
        if not self.classifier.needs_window:
            self._fall_back("semantics", "only the learned classifier uses semantics")
            return None
        expected = self.classifier.learned.classifier.model.config.semantic_dim
        if semantics.semantic_dim != expected:
            self._fall_back("semantics", f"features of width {semantics.semantic_dim}, the classifier takes {expected}")
            return None
        return SemanticTrackCache(semantics.semantic_dim)

    def _fall_back(self, kind: str, error: BaseException | str) -> str:
        reason = self.models.disable(kind, error)
        self._note(reason)
        return reason

    @property
    def backends(self) -> dict[str, str]:
        names = self.models.names
        return {"tracker": self.tracker.name, "classifier": self.classifier.backend,
                "densify": names["densify"], "depth": names["depth"], "semantics": names["semantics"]}

    def release(self) -> None:
        """Free the learned models (and GPU memory); ``load`` brings them back."""
        self.models.release()

    def load(self) -> list[str]:
        """(Re)load the learned models; returns the reasons of any that fell back."""
        problems = self.models.load()
        self.problems.extend(problems)
        return problems

    def reset(self, reason: str) -> None:
        """Start a new window (scene cut, bag loop, size change); object ids are never reused."""
        _log.info("pipeline reset: %s", reason)
        self._reset_state()

    def _reset_state(self) -> None:
        self.models.reset()
        if self.semantic_cache is not None:
            self.semantic_cache.reset()
        self.tracker.reset()
        self.classifier.reset()
        self.densifier.reset()
        self.identity.reset()
        self.window.reset()
        self._input_size: tuple[int, int] | None = None
        self._last_stamp: float | None = None
        self._ids = np.zeros(0, np.int64)
        self._xy = np.zeros((0, 2), np.float32)
        self._visible = np.zeros(0, bool)
        self._confidence = np.zeros(0, np.float32)
        self._prev_xy = np.zeros((0, 2), np.float32)
        self._object_of_track = np.zeros(0, np.int32)
        self._identity_of_track = np.zeros(0, np.int32)   # the id a track votes for next frame
        self._members: dict[int, np.ndarray] = {}
        self._labels_small: np.ndarray | None = None
        self._frame_interval = 0.0
        self._first_seen: dict[int, float] = {}
        self._first_frame: dict[int, int] = {}

    # ------------------------------------------------------------------ public entry point
    def feed(self, image: np.ndarray, stamp: float, depth: np.ndarray | None = None) -> SegmentationResult:
        """Process one RGB uint8 frame (H, W, 3) taken at ``stamp`` seconds.

        ``depth`` (H, W) float32 metres, NaN where invalid, is stored with the tracks for
        classifiers that use it. Raises InvalidImageError for frames that cannot be used.
        """
        started = time.perf_counter()
        _validate(image)
        events = self._check_continuity(image, stamp)
        stage_times: dict[str, float] = {}

        tic = time.perf_counter()
        height, width = image.shape[:2]
        scale = self.config.processing_width / width
        proc_size = (self.config.processing_width, max(8, round(height * scale)))
        small = cv2.resize(image, proc_size, interpolation=cv2.INTER_AREA) if proc_size != (width, height) else image
        gray = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
        stage_times["preprocess"] = time.perf_counter() - tic

        tic = time.perf_counter()
        updates = self.tracker.push(gray, self._frame_index)
        stage_times["track"] = time.perf_counter() - tic

        if depth is None and self.models.depth is not None and hasattr(self.models.depth, "relative_depth"):
            depth = self._run_model("depth", lambda: self.models.depth_rate.run(self.models.depth.relative_depth, image),
                                    stage_times, events)
        features = None
        if self.semantic_cache is not None:
            features = self._run_model("semantics", lambda: self.models.semantics_rate.run(
                self.models.semantics.feature_map, image), stage_times, events)
        for update in updates:
            self._consume(update, small, gray, stamp, depth, features, scale, stage_times, events)

        tic = time.perf_counter()
        label_image, objects = self._compose_output(image, scale, stamp)
        stage_times["output"] = time.perf_counter() - tic
        tracks = self._snapshot(scale)
        self._frame_index += 1
        return SegmentationResult(
            stamp=stamp, label_image=label_image, objects=objects, tracks=tracks,
            window_length=len(self.window), processing_time=time.perf_counter() - started,
            stage_times=stage_times, events=events)

    # ------------------------------------------------------------------ stages
    def _run_model(self, kind: str, run, stage_times: dict[str, float], events: list[str]):
        """A learned stage; on failure (out of memory, a broken model) it falls back for good."""
        tic = time.perf_counter()
        try:
            return run()
        except Exception as error:  # noqa: BLE001 - the stream goes on without the model
            events.append(self._fall_back(kind, error))
            return None
        finally:
            stage_times[kind] = time.perf_counter() - tic

    def _check_continuity(self, image: np.ndarray, stamp: float) -> list[str]:
        events = []
        size = (image.shape[1], image.shape[0])
        if self._input_size is not None and size != self._input_size:
            events.append(f"image size changed from {self._input_size[0]}x{self._input_size[1]} "
                          f"to {size[0]}x{size[1]}; window reset")
        elif self._last_stamp is not None and stamp <= self._last_stamp:
            events.append(f"stamp went backwards ({self._last_stamp:.3f} s -> {stamp:.3f} s); window reset")
        elif self._last_stamp is not None and stamp - self._last_stamp > self.max_stamp_gap:
            events.append(f"stamp jumped forward by {stamp - self._last_stamp:.2f} s; window reset")
        if events:
            self.reset(events[0])
        self._frame_interval = stamp - self._last_stamp if self._last_stamp is not None else 0.0
        self._input_size = size
        self._last_stamp = stamp
        return events

    def _consume(self, update: TrackUpdate, rgb: np.ndarray, gray: np.ndarray, stamp: float,
                 depth: np.ndarray | None, features, scale: float, stage_times: dict[str, float],
                 events: list[str]) -> None:
        order = np.argsort(update.ids, kind="stable")
        ids, xy = update.ids[order], update.xy[order]
        visible, confidence = update.visible[order], update.confidence[order]
        position_error = update.position_error[order]
        prev_xy = carry_over(self._ids, self._xy, ids, np.nan)
        paired = carry_over(self._ids, self._visible, ids, False) & visible
        if update.born_previous_xy is not None and len(self.window):
            # Tracks born with a first step: it joins the previous frame like any other step.
            born_previous_xy = update.born_previous_xy[order]
            followed = np.flatnonzero(np.isfinite(born_previous_xy[:, 0]) & visible)
            prev_xy[followed] = born_previous_xy[followed]
            paired[followed] = True
            self.window.add_to_newest(ids[followed], prev_xy[followed], confidence[followed])

        tic = time.perf_counter()
        # New tracks start undecided, leaning on the motion map as far as it has seen their pixel
        # (not at all on the first frames of a stream), and need their own evidence.
        prior = np.full(len(ids), 0.25, np.float32)
        prior_weight = np.zeros(len(ids), np.float32)
        new_static_weight = None
        motion_map = self.densifier.motion_map
        if motion_map is not None:
            map_xy = xy * (motion_map.shape[1] / gray.shape[1])
            moving = _sample(motion_map, map_xy)
            prior, new_static_weight = 0.5 * moving, 1.0 - moving
            prior_weight = _sample(self.densifier.history_weight, map_xy)
        track_depth = None
        if depth is not None:
            track_depth = _sample(depth.astype(np.float32, copy=False), xy / scale, invalid=np.nan)
        self.window.append(update.frame_index, stamp, ids, xy, visible, confidence, track_depth)
        window = self.window.tracks(ids) if self.classifier.needs_window else None
        semantics = None
        if self.semantic_cache is not None:
            if features is not None and self.models.semantics_rate.fresh:
                self.semantic_cache.update(ids, xy / scale, visible,
                                           lambda points: self.models.semantics.sample(features, points))
            semantics, _ = self.semantic_cache.vectors(ids)
        frame = self.classifier.step(ids, prev_xy, xy, paired, (gray.shape[1], gray.shape[0]), prior,
                                     fit_backward=True, window=window, semantics=semantics, visible=visible,
                                     position_error=position_error,
                                     new_static_weight=new_static_weight, prior_weight=prior_weight)
        probability = frame.probability
        stage_times["classify"] = stage_times.get("classify", 0.0) + time.perf_counter() - tic

        tic = time.perf_counter()
        known_probability = np.where(frame.has_evidence & visible, probability, np.nan)
        self.densifier.update(gray, frame.backward, xy, known_probability, self.config.tracker.grid_spacing)
        stage_times["flow"] = stage_times.get("flow", 0.0) + time.perf_counter() - tic

        tic = time.perf_counter()
        static = visible & frame.has_evidence & (probability < 0.3)
        object_of_track = None
        if self.models.prompting is not None:
            object_of_track = self._run_model(
                "densify", lambda: self._prompt(rgb, ids, xy, visible, known_probability, update.frame_index, stamp),
                stage_times, events)
            if object_of_track is None:  # SAM2 just failed: the flow densifier's ids continue after SAM2's
                self.identity.skip_ids_below(self._prompting_used.next_id)
        if object_of_track is None:
            object_of_track = self._segment(rgb, ids, xy, prev_xy, visible & frame.dynamic, static, frame.backward,
                                            update.frame_index, stamp)
        else:
            self._identity_of_track = object_of_track
        stage_times["segment"] = stage_times.get("segment", 0.0) + time.perf_counter() - tic

        self._ids, self._xy, self._visible = ids, xy, visible
        self._confidence = confidence
        self._object_of_track = object_of_track
        self._prev_xy = prev_xy

    def _segment(self, rgb: np.ndarray, ids: np.ndarray, xy: np.ndarray, prev_xy: np.ndarray, dynamic: np.ndarray,
                 static: np.ndarray, camera_backward: CameraMotion | None, frame_index: int,
                 stamp: float) -> np.ndarray:
        """Regions from the motion map, ids from the identity tracker; returns each track's object id."""
        densifier = self.densifier
        dynamic_rows = np.flatnonzero(dynamic)
        own_velocity = None
        if camera_backward is not None:
            dynamic_xy = xy[dynamic_rows]
            # The camera's motion over the last frame stands in for its mean over the lag.
            camera_velocity = dynamic_xy - camera_backward.predict(dynamic_xy)
            own_velocity = self._recent_velocity(ids[dynamic_rows]) - camera_velocity
        previous_objects = carry_over(self._ids, self._identity_of_track, ids, 0)
        warped_labels = None
        if self._labels_small is not None and densifier.backward_flow is not None \
                and self._labels_small.shape == densifier.backward_flow.shape[:2]:
            warped_labels = warp_backward(self._labels_small, densifier.backward_flow, cv2.INTER_NEAREST)
        regions = densifier.regions(rgb, xy[dynamic_rows], xy[static], own_velocity, self.config.tracker.grid_spacing,
                                    None if warped_labels is None else warped_labels > 0)
        claims = []
        for region in regions:
            votes = Counter(int(o) for o in previous_objects[dynamic_rows[region.track_rows]] if o > 0)
            overlap: dict[int, float] = {}
            if warped_labels is not None:
                under = warped_labels[region.mask]
                for object_id, count in zip(*np.unique(under[under > 0], return_counts=True)):
                    overlap[int(object_id)] = count / max(len(under), 1)
            claims.append(Claim(dict(votes), overlap))
        flow_scale = densifier.motion_map.shape[1] / rgb.shape[1]
        velocities, own_motions = [], []
        for region in regions:
            rows = dynamic_rows[region.track_rows]
            step = (xy[rows] - prev_xy[rows]) * flow_scale
            step = step[np.isfinite(step).all(axis=1)]
            velocities.append(step.mean(axis=0) if len(step) else np.zeros(2))
            own = None if own_velocity is None else own_velocity[region.track_rows] * flow_scale
            own_motions.append(None if own is None else own_motion(own))
        groups = self.identity.assign([r.mask for r in regions], [len(r.track_rows) for r in regions],
                                      claims, velocities, frame_index, stamp, own_motions)
        height, width = densifier.motion_map.shape
        labels = np.zeros((height, width), np.uint16)
        object_of_track = np.zeros(len(ids), np.int32)
        self._members = {}
        for object_id, members in groups:
            union = np.logical_or.reduce([regions[m].mask for m in members])
            labels[union] = object_id
            rows = np.concatenate([dynamic_rows[regions[m].track_rows] for m in members])
            object_of_track[rows] = object_id
            self._members[object_id] = rows
            self._first_seen.setdefault(object_id, stamp)
            self._first_frame.setdefault(object_id, frame_index)
        self._labels_small = labels
        # Tracks of a remembered object that is not seen this frame, now inside another object
        # (two movers seen as one blob), keep voting for their own: when the blob splits again,
        # each part gets its id back.
        seen = [object_id for object_id, _ in groups]
        absorbed = (object_of_track > 0) & (previous_objects > 0) & ~np.isin(previous_objects, seen) \
            & np.isin(previous_objects, list(self.identity.memory))
        self._identity_of_track = np.where(absorbed, previous_objects, object_of_track).astype(np.int32)
        return object_of_track

    def _recent_velocity(self, ids: np.ndarray) -> np.ndarray:
        """Each track's mean motion (processing px per frame) over the last few frames; NaN if not
        seen at both ends."""
        lag = min(_VELOCITY_FRAMES, len(self.window) - 1)
        if lag < 1:
            return np.full((len(ids), 2), np.nan, np.float32)
        now, seen_now = self.window.positions(ids, 0)
        then, seen_then = self.window.positions(ids, lag)
        velocity = (now - then) / lag
        velocity[~(seen_now & seen_then)] = np.nan
        return velocity

    def _prompt(self, rgb: np.ndarray, ids: np.ndarray, xy: np.ndarray, visible: np.ndarray,
                probability: np.ndarray, frame_index: int, stamp: float) -> np.ndarray:
        """SAM2 two-stage prompting from the tracks; its object ids persist through SAM2's memory."""
        prompting = self._prompting_used = self.models.prompting
        result = prompting.step(rgb, ids, xy, visible, probability)
        motion_map = self.densifier.motion_map
        labels = result.label_image(rgb.shape[:2])
        if motion_map is not None and labels.shape != motion_map.shape:
            labels = cv2.resize(labels, (motion_map.shape[1], motion_map.shape[0]), interpolation=cv2.INTER_NEAREST)
        self._labels_small = labels
        self._members = {object_id: np.flatnonzero(result.track_object == object_id) for object_id in result.masks}
        for object_id in result.masks:
            self._first_seen.setdefault(object_id, stamp)
            self._first_frame.setdefault(object_id, frame_index)
        return result.track_object

    def _compose_output(self, image: np.ndarray, scale: float,
                        stamp: float) -> tuple[np.ndarray, list[MovingObject]]:
        height, width = image.shape[:2]
        labels_small = self._labels_small
        if labels_small is None or not labels_small.any():
            return np.zeros((height, width), np.uint16), []
        # Upsample each mask softly, not the label grid, so boundaries are not blocky; flow masks
        # then have their boundary band re-decided by colour at full resolution (SAM2's are sharp).
        labels = np.zeros((height, width), np.uint16)
        refine = self.models.prompting is None
        if refine:
            motion = cv2.resize(self.densifier.motion_map, (width, height), interpolation=cv2.INTER_LINEAR)
            band = colour_band((height, width))
        for object_id in np.unique(labels_small[labels_small > 0]):
            soft = cv2.resize((labels_small == object_id).astype(np.float32), (width, height),
                              interpolation=cv2.INTER_LINEAR)
            mask = soft > 0.5
            if refine:
                mask = refine_around(mask, image, motion, band)
            labels[mask] = object_id
        dt = self._frame_interval
        motion_map = self.densifier.motion_map
        objects = []
        for object_id in np.unique(labels[labels > 0]):
            object_id = int(object_id)
            mask = labels == object_id
            mask_small = labels_small == object_id   # what an object without tracks is measured on
            left, top, box_width, box_height = cv2.boundingRect(mask.view(np.uint8))
            centroid = mask_centroid(mask)
            rows = self._members.get(object_id, np.zeros(0, np.int64))
            moved = rows[self._visible[rows] & np.isfinite(self._prev_xy[rows, 0])]
            velocity = np.zeros(2)
            if len(moved) and dt > 0:
                velocity = (self._xy[moved] - self._prev_xy[moved]).mean(axis=0) / scale / dt
            elif dt > 0:
                velocity = self._dense_velocity(mask_small, width) / dt
            score = 0.0
            if len(rows):
                score = float(self.classifier.probability_of(self._ids[rows]).mean())
            elif motion_map is not None and motion_map.shape == mask_small.shape:
                # An object carried on by the motion map alone (see FlowResidualDensifier.regions).
                score = float(motion_map[mask_small].mean())
            objects.append(MovingObject(
                object_id=object_id,
                score=score,
                bbox=(left, top, box_width, box_height),
                centroid=(float(centroid[0]), float(centroid[1])),
                velocity=(float(velocity[0]), float(velocity[1])),
                num_tracks=int(len(rows)),
                age=self._frame_index - self._first_frame[object_id],
                first_seen=self._first_seen[object_id],
            ))
        return labels, objects

    def _dense_velocity(self, mask_small: np.ndarray, input_width: int) -> np.ndarray:
        """Mean image motion (input px per frame) over a mask at flow resolution, from the dense flow."""
        flow = self.densifier.backward_flow
        if flow is None or flow.shape[:2] != mask_small.shape or not mask_small.any():
            return np.zeros(2)
        # The flow points back to where each pixel was: the motion is its negative.
        return -flow[mask_small].mean(axis=0).astype(np.float64) * (input_width / mask_small.shape[1])

    def _snapshot(self, scale: float) -> TrackSnapshot:
        if len(self._ids) == 0:
            return TrackSnapshot.empty()
        probability = self.classifier.probability_of(self._ids)
        return TrackSnapshot(
            ids=self._ids.copy(), xy=(self._xy / scale).astype(np.float32), visible=self._visible.copy(),
            confidence=self._confidence.copy(), dynamic_prob=probability.astype(np.float32),
            object_id=self._object_of_track.copy())


def _validate(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray):
        raise InvalidImageError(f"expected a numpy array, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise InvalidImageError(f"expected an RGB image of shape (H, W, 3), got shape {image.shape}")
    if image.dtype != np.uint8:
        raise InvalidImageError(f"expected uint8 pixels, got {image.dtype}")
    if image.shape[0] < 16 or image.shape[1] < 16:
        raise InvalidImageError(f"image of {image.shape[1]}x{image.shape[0]} is too small (minimum 16x16)")


def _sample(image: np.ndarray, xy: np.ndarray, invalid: float = 0.0) -> np.ndarray:
    """Nearest-pixel values of ``image`` at points (N, 2); ``invalid`` outside the image."""
    height, width = image.shape[:2]
    col = np.round(xy[:, 0]).astype(np.int64) if len(xy) else np.zeros(0, np.int64)
    row = np.round(xy[:, 1]).astype(np.int64) if len(xy) else np.zeros(0, np.int64)
    inside = (col >= 0) & (col < width) & (row >= 0) & (row < height)
    values = np.full(len(xy), invalid, np.float32)
    values[inside] = image[row[inside], col[inside]]
    return values
