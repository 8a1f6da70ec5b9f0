"""SAM2 / EdgeTAM streaming video segmentation (transformers), as a :class:`PromptableVideoSegmenter`.

Built on transformers' ``Sam2VideoModel`` (or ``EdgeTamVideoModel``, same session and processor,
``Sam2VideoProcessor``) in streaming mode: a session is opened without a video
(``processor.init_video_session()``), each frame is preprocessed on arrival, clicks are added for
the current frame with ``processor.add_inputs_to_inference_session`` and the model runs on the
frame with ``model(inference_session=..., frame_idx=..., frame=...)``, which propagates every
object from its memory and conditions the prompted ones on their clicks.

What this adapter adds to the library's streaming mode:

* Objects come and go mid-stream. The session only ever appends objects; ``remove_object``
  re-packs its per-object state so that a removed object stops costing time and memory.
* Bounded memory on an endless stream. The session keeps every frame, every output and every
  prompt; after each frame the adapter drops what the model can no longer use: frames other than
  the current one, unprompted outputs older than the memory horizon (``num_maskmem`` frames for
  mask memory, ``max_object_pointers_in_encoder`` for object pointers), all but the newest
  ``conditioning_frames`` prompted frames per object, and old clicks.
* Lazy evaluation: ``masks()`` runs the model once per frame however many objects were prompted,
  and again only if new clicks arrive on the same frame.

Clicks given before ``masks()`` on a frame make it a conditioning frame for that object (what the
paper's periodic re-prompting wants); clicks after it on the same frame also re-run the other
objects on that frame (same result, extra time), so prompt first, then read masks.

Loading: ``model`` is a Hugging Face id or a directory saved with ``save_pretrained`` (model and
processor). Defaults: ``facebook/sam2.1-hiera-large`` (the paper's SAM2-L; ``-tiny``, ``-small``,
``-base-plus`` trade accuracy for speed) and ``yonigozlan/EdgeTAM-hf`` (EdgeTAM; its RepViT
backbone needs the ``timm`` package).
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch

from anymo_ros.densify.prompting import PromptableVideoSegmenter
from anymo_ros.devices import BackendUnavailable, ModelBackend, checkpoint_source

SAM2_DEFAULT_MODEL = "facebook/sam2.1-hiera-large"
EDGETAM_DEFAULT_MODEL = "yonigozlan/EdgeTAM-hf"
FAMILIES = ("sam2", "edgetam")


def default_model(family: str) -> str:
    return EDGETAM_DEFAULT_MODEL if family == "edgetam" else SAM2_DEFAULT_MODEL


def model_class(family: str):
    if family == "sam2":
        from transformers import Sam2VideoModel
        return Sam2VideoModel
    if family == "edgetam":
        from transformers import EdgeTamVideoModel
        return EdgeTamVideoModel
    raise BackendUnavailable(f"unknown video segmenter family '{family}' (available: {', '.join(FAMILIES)})")


class Sam2VideoSegmenter(ModelBackend, PromptableVideoSegmenter):
    """Streaming SAM2 (``family='sam2'``) or EdgeTAM (``family='edgetam'``) segmenter."""

    kind = "densify"

    def __init__(self, family: str = "sam2", model: str = "", device: torch.device | str = "cpu",
                 precision: str = "fp32", conditioning_frames: int = 4):
        ModelBackend.__init__(self, device, precision)
        if family not in FAMILIES:
            raise BackendUnavailable(f"unknown video segmenter family '{family}' (available: {', '.join(FAMILIES)})")
        self.family = family
        self.name = family
        self.model_source = model or default_model(family)
        self.conditioning_frames = max(1, int(conditioning_frames))
        self.processor = None
        self._session = None
        self._frame_size: tuple[int, int] | None = None
        self.reset()

    @classmethod
    def from_model(cls, model, processor, family: str = "sam2", device: torch.device | str = "cpu",
                   precision: str = "fp32", conditioning_frames: int = 4) -> "Sam2VideoSegmenter":
        """Wrap an already built model and processor (tests, benchmarks)."""
        segmenter = cls(family, "<in-memory model>", device, precision, conditioning_frames)
        segmenter._adopt(model, processor)
        return segmenter

    # ------------------------------------------------------------------ lifecycle

    def load(self) -> None:
        if self.model is not None:
            return
        from transformers import Sam2VideoProcessor

        what = "EdgeTAM" if self.family == "edgetam" else "SAM2"
        source = checkpoint_source(self.model_source, what)
        model = model_class(self.family).from_pretrained(source)
        processor = Sam2VideoProcessor.from_pretrained(source)
        self._adopt(model, processor)

    def _adopt(self, model, processor) -> None:
        self.model = model.to(self.device).eval()
        self.processor = processor
        config = model.config
        # Unprompted outputs older than this are never read again (mask memory and object pointers).
        self.memory_horizon = max(int(config.num_maskmem), int(config.max_object_pointers_in_encoder))

    def drop(self) -> None:
        self.reset()
        self.model = None
        self.processor = None

    # ------------------------------------------------------------------ PromptableVideoSegmenter
    def start(self, frame_size: tuple[int, int]) -> None:
        if self.model is None:
            raise RuntimeError(f"{self.family} is not loaded; call load() first")
        width, height = frame_size
        self._frame_size = (int(width), int(height))
        self._session = self.processor.init_video_session(inference_device=self.device, dtype=torch.float32)
        self._session.video_height, self._session.video_width = int(height), int(width)
        self._index = -1
        self._pixels = None
        self._masks = {}
        self._pending = set()
        self._stale = False

    def add_frame(self, rgb: np.ndarray) -> int:
        height, width = rgb.shape[:2]
        if self._session is None:
            self.start((width, height))
        elif (width, height) != self._frame_size:
            raise ValueError(f"frame of {width}x{height} in a stream of {self._frame_size[0]}x{self._frame_size[1]}; "
                             "call start() for a new size")
        kwargs = {"device": self.device} if self.device.type == "cuda" else {}
        inputs = self.processor(images=np.ascontiguousarray(rgb), return_tensors="pt", **kwargs)
        self._pixels = inputs.pixel_values[0]
        self._index += 1
        self._masks = {}
        self._pending.clear()
        self._stale = True
        return self._index

    def prompt(self, object_id: int, points: np.ndarray, labels: np.ndarray | None = None) -> None:
        if self._index < 0:
            raise RuntimeError("prompt() needs a frame: call add_frame() first")
        points = np.asarray(points, np.float32).reshape(-1, 2)
        labels = np.ones(len(points), np.int64) if labels is None else np.asarray(labels, np.int64).reshape(-1)
        if len(points) == 0 or len(points) != len(labels):
            raise ValueError(f"need K >= 1 points with K labels, got {len(points)} points and {len(labels)} labels")
        width, height = self._frame_size
        self.processor.add_inputs_to_inference_session(
            inference_session=self._session, frame_idx=self._index, obj_ids=int(object_id),
            input_points=[[points.tolist()]], input_labels=[[labels.tolist()]], original_size=(height, width))
        self._pending.add(int(object_id))
        self._stale = True

    def remove_object(self, object_id: int) -> None:
        if self._session is None:
            return
        remove_session_object(self._session, int(object_id))
        self._pending.discard(int(object_id))
        self._masks.pop(int(object_id), None)

    def masks(self) -> dict[int, np.ndarray]:
        if self._stale:
            if self._session.get_obj_num():
                self._masks = self._run()
            else:
                self._masks = {}
                if self._session.processed_frames:
                    self._session.processed_frames.clear()
            self._stale = False
        return dict(self._masks)

    def reset(self) -> None:
        if self._session is not None:
            self._session.reset_inference_session()
        self._session = None
        self._frame_size = None
        self._index = -1
        self._pixels = None
        self._masks: dict[int, np.ndarray] = {}
        self._pending: set[int] = set()
        self._stale = False

    @property
    def object_ids(self) -> list[int]:
        return [] if self._session is None else [int(i) for i in self._session.obj_ids]

    @property
    def frame_index(self) -> int:
        return self._index

    # ------------------------------------------------------------------ internals
    def _run(self) -> dict[int, np.ndarray]:
        session = self._session
        session.obj_with_new_inputs = [oid for oid in session.obj_ids if oid in self._pending]
        with torch.inference_mode(), self.autocast():
            output = self.model(inference_session=session, frame_idx=self._index, frame=self._pixels)
        width, height = self._frame_size
        logits = self.processor.post_process_masks([output.pred_masks.float()], original_sizes=[[height, width]],
                                                   binarize=False)[0]
        masks = {int(oid): (logits[i, 0] > 0).cpu().numpy() for i, oid in enumerate(output.object_ids)}
        self._pending.clear()
        self._prune()
        return masks

    def _prune(self) -> None:
        """Drop what the model will not read again, so memory stays flat on an endless stream."""
        session, now = self._session, self._index
        for frame in [f for f in session.processed_frames if f != now]:
            del session.processed_frames[frame]
        oldest = now - self.memory_horizon
        for obj_idx, outputs in session.output_dict_per_obj.items():
            unprompted = outputs["non_cond_frame_outputs"]
            for frame in [f for f in unprompted if f < oldest]:
                del unprompted[frame]
            prompted = outputs["cond_frame_outputs"]
            for frame in sorted(prompted)[:-self.conditioning_frames]:
                del prompted[frame]
            tracked = session.frames_tracked_per_obj[obj_idx]
            for frame in [f for f in tracked if f < oldest]:
                del tracked[frame]
            for inputs in (session.point_inputs_per_obj[obj_idx], session.mask_inputs_per_obj[obj_idx]):
                for frame in [f for f in inputs if f < now]:
                    del inputs[frame]


def remove_session_object(session, object_id: int) -> None:
    """Remove one object from a ``Sam2VideoInferenceSession`` (or EdgeTAM's): its inputs, outputs
    and memory; the others keep theirs, re-indexed. Unknown ids are ignored."""
    old_index = session._obj_id_to_idx.get(object_id)
    if old_index is None:
        return
    if object_id in session.obj_with_new_inputs:
        session.obj_with_new_inputs = [oid for oid in session.obj_with_new_inputs if oid != object_id]
    kept_ids = [oid for oid in session.obj_ids if oid != object_id]
    old_of_new = [session._obj_id_to_idx[oid] for oid in kept_ids]
    session._obj_id_to_idx = OrderedDict((oid, new) for new, oid in enumerate(kept_ids))
    session._obj_idx_to_id = OrderedDict((new, oid) for new, oid in enumerate(kept_ids))
    session.obj_ids = list(kept_ids)
    for container in (session.point_inputs_per_obj, session.mask_inputs_per_obj, session.output_dict_per_obj,
                      session.frames_tracked_per_obj):
        values = [container[old] for old in old_of_new]
        container.clear()
        container.update(enumerate(values))
