"""Evaluation datasets: image-folder video sequences with ground-truth masks, and Hopkins tracks.

Video layouts found by `discover_sequences(root)`:

* per-sequence folders:  ``<root>/<seq>/frames/*.jpg|*.png`` and ``<root>/<seq>/masks/*.png``
  (``root`` may also be one such ``<seq>`` folder);
* DAVIS:  ``<root>/JPEGImages/480p/<seq>/*.jpg`` and ``<root>/Annotations/480p/<seq>/*.png``.

A mask belongs to the frame with the same file stem (``00012.jpg`` <-> ``00012.png``); frames are
ordered by natural sort of their names (``frame2`` before ``frame10``).
"""
from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import scipy.io

from anymo_ros.tools.metrics import binarize_mask, mask_instance_ids

DEFAULT_FPS = 30.0
FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")
MASK_SUFFIX = ".png"


class DatasetError(Exception):
    """A dataset file or folder is missing, unreadable or inconsistent; the message names it."""


def _natural_key(path: Path) -> list:
    # Digit runs compare as numbers; re.split keeps text and digit runs at alternating positions.
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def _read_image(path: Path, flags: int) -> np.ndarray:
    image = cv2.imread(str(path), flags)
    if image is None:
        raise DatasetError(f"cannot read image {path}")
    return image


class Sequence:
    """One video with ground-truth masks; images are read from disk only when asked for."""

    def __init__(self, name: str, frame_paths: list[Path], mask_paths: list[Path | None], fps: float = DEFAULT_FPS):
        if len(frame_paths) != len(mask_paths):
            raise ValueError("frame_paths and mask_paths must have one entry per frame")
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.name = name
        self.frame_paths = list(frame_paths)
        self.mask_paths = list(mask_paths)   # None where a frame has no ground truth
        self.fps = float(fps)
        self._image_size: tuple[int, int] | None = None

    @classmethod
    def from_folders(
        cls, name: str, frames_dir: Path, masks_dir: Path, fps: float = DEFAULT_FPS, sparse_masks: bool = False
    ) -> "Sequence":
        """Pair the frames in `frames_dir` with masks in `masks_dir` by file stem.

        Every frame needs a mask unless `sparse_masks` (datasets annotating every n-th frame);
        a mask without a frame is always an error.
        """
        if not frames_dir.is_dir():
            raise DatasetError(f"frame folder {frames_dir} does not exist")
        if not masks_dir.is_dir():
            raise DatasetError(f"mask folder {masks_dir} does not exist")
        frame_paths = sorted(
            (p for p in frames_dir.iterdir() if p.suffix.lower() in FRAME_SUFFIXES), key=_natural_key
        )
        if not frame_paths:
            raise DatasetError(f"no frames ({', '.join(FRAME_SUFFIXES)}) in {frames_dir}")
        frames_by_stem: dict[str, Path] = {}
        for path in frame_paths:
            if path.stem in frames_by_stem:
                raise DatasetError(f"frames {frames_by_stem[path.stem]} and {path} share the stem '{path.stem}'")
            frames_by_stem[path.stem] = path
        masks_by_stem = {p.stem: p for p in masks_dir.iterdir() if p.suffix.lower() == MASK_SUFFIX}
        if not masks_by_stem:
            raise DatasetError(f"no masks (*{MASK_SUFFIX}) in {masks_dir}")
        orphans = sorted(set(masks_by_stem) - set(frames_by_stem))
        if orphans:
            raise DatasetError(f"mask {masks_by_stem[orphans[0]]} has no frame named '{orphans[0]}' in {frames_dir}")
        mask_paths = [masks_by_stem.get(path.stem) for path in frame_paths]
        if not sparse_masks:
            for frame_path, mask_path in zip(frame_paths, mask_paths):
                if mask_path is None:
                    expected = masks_dir / (frame_path.stem + MASK_SUFFIX)
                    raise DatasetError(f"missing ground-truth mask {expected} for frame {frame_path}")
        return cls(name, frame_paths, mask_paths, fps)

    def __len__(self) -> int:
        return len(self.frame_paths)

    def __repr__(self) -> str:
        return f"Sequence({self.name!r}, {len(self)} frames, {self.fps:g} fps)"

    def stamp(self, index: int) -> float:
        """Capture time of a frame in seconds, from the frame rate."""
        return index / self.fps

    def has_mask(self, index: int) -> bool:
        return self.mask_paths[index] is not None

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of the first frame; every frame and mask must have it."""
        if self._image_size is None:
            self.frame(0)
        return self._image_size

    def frame(self, index: int) -> np.ndarray:
        """Frame `index` as an (H, W, 3) RGB uint8 array."""
        path = self.frame_paths[index]
        bgr = _read_image(path, cv2.IMREAD_COLOR)   # always 8-bit, 3 channels
        if self._image_size is None:
            self._image_size = bgr.shape[:2]
        self._check_size(bgr, path, "frame")
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def mask(self, index: int) -> np.ndarray:
        """Ground-truth foreground of frame `index` as an (H, W) bool array (`binarize_mask` rule)."""
        return binarize_mask(self._read_mask(index))

    def instance_mask(self, index: int) -> np.ndarray:
        """Ground-truth object ids of frame `index` (int64, 0 = background; `mask_instance_ids`)."""
        return mask_instance_ids(self._read_mask(index))

    def _read_mask(self, index: int) -> np.ndarray:
        path = self.mask_paths[index]
        if path is None:
            raise DatasetError(f"frame {self.frame_paths[index]} has no ground-truth mask")
        # UNCHANGED keeps label values and 16-bit depth that a colour conversion would alter.
        image = _read_image(path, cv2.IMREAD_UNCHANGED)
        self._check_size(image, path, "mask")
        return image

    def _check_size(self, image: np.ndarray, path: Path, kind: str) -> None:
        height, width = self.image_size
        if image.shape[:2] != (height, width):
            raise DatasetError(
                f"{kind} {path} is {image.shape[1]}x{image.shape[0]} but sequence '{self.name}' "
                f"is {width}x{height} (size of {self.frame_paths[0]})"
            )


def _sequence_folders(root: Path, davis_resolution: str) -> dict[str, tuple[Path, Path]]:
    """name -> (frames folder, masks folder) for whichever layout `root` has."""
    davis_frames = root / "JPEGImages" / davis_resolution
    if davis_frames.is_dir():
        davis_masks = root / "Annotations" / davis_resolution
        return {d.name: (d, davis_masks / d.name) for d in sorted(davis_frames.iterdir()) if d.is_dir()}
    if (root / "frames").is_dir():
        return {root.name: (root / "frames", root / "masks")}
    return {d.name: (d / "frames", d / "masks") for d in sorted(root.iterdir()) if (d / "frames").is_dir()}


def discover_sequences(
    root: str | Path,
    names: list[str] | None = None,
    fps: float = DEFAULT_FPS,
    sparse_masks: bool = False,
    davis_resolution: str = "480p",
) -> list[Sequence]:
    """All sequences under `root` (see the module docstring), or only `names`, in that order."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset root {root} is not a folder")
    folders = _sequence_folders(root, davis_resolution)
    if not folders:
        raise DatasetError(
            f"no sequences under {root}: expected <seq>/frames + <seq>/masks folders or "
            f"JPEGImages/{davis_resolution}/<seq> + Annotations/{davis_resolution}/<seq>"
        )
    if names:
        unknown = [name for name in names if name not in folders]
        if unknown:
            raise DatasetError(f"no sequence {', '.join(unknown)} under {root}; found: {', '.join(folders)}")
    selected = names or list(folders)
    return [Sequence.from_folders(name, *folders[name], fps=fps, sparse_masks=sparse_masks) for name in selected]


# --- Hopkins-style trajectory sets -------------------------------------------------------------


def find_hopkins_files(root: str | Path, names: list[str] | None = None) -> list[Path]:
    """Hopkins sequence files: ``<root>/<seq>/<seq>.mat`` (or `root` itself when it is a .mat file).

    Other .mat files (such as the set's SeqList.mat) are not sequences and are skipped.
    """
    root = Path(root)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise DatasetError(f"Hopkins root {root} does not exist")
    files = {d.name: d / f"{d.name}.mat" for d in sorted(root.iterdir()) if (d / f"{d.name}.mat").is_file()}
    if not files:
        raise DatasetError(f"no Hopkins sequences under {root}: expected <seq>/<seq>.mat files")
    if names:
        unknown = [name for name in names if name not in files]
        if unknown:
            raise DatasetError(f"no Hopkins sequence {', '.join(unknown)} under {root}; found: {', '.join(files)}")
    return [files[name] for name in (names or files)]


def load_hopkins(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Point trajectories and ground-truth motion groups of one Hopkins .mat file.

    The file holds a 1x1 struct ``Data`` whose ``ySparse`` is a (3, N, T) array: for each of the
    N points and T frames the homogeneous image position (x, y, 1), x along image columns; and
    whose ``GtLabel`` is (N, 1) with the motion group (1..K) of every point. An observation is
    missing when any coordinate is NaN or its homogeneous coordinate is 0.

    Returns xy (N, T, 2) float64 in pixels (NaN where missing), visible (N, T) bool and labels
    (N,) int64. Positions may lie slightly outside the image: they are kept as given.
    """
    path = Path(path)
    try:
        contents = scipy.io.loadmat(str(path))
    except (OSError, ValueError) as error:
        raise DatasetError(f"cannot read Hopkins file {path}: {error}") from error
    if "Data" not in contents:
        raise DatasetError(f"Hopkins file {path} has no 'Data' struct")
    data = contents["Data"].ravel()[0]
    for field_name in ("ySparse", "GtLabel"):
        if field_name not in (data.dtype.names or ()):
            raise DatasetError(f"Hopkins file {path} has no Data.{field_name}")
    points = np.asarray(data["ySparse"], dtype=np.float64)
    labels = np.asarray(data["GtLabel"]).ravel().astype(np.int64)
    if points.ndim != 3 or points.shape[0] != 3:
        raise DatasetError(f"Data.ySparse in {path} has shape {points.shape}, expected (3, points, frames)")
    if points.shape[1] != len(labels):
        raise DatasetError(f"Data.GtLabel in {path} has {len(labels)} labels for {points.shape[1]} points")
    homogeneous = points[2]
    visible = np.isfinite(points).all(axis=0) & (homogeneous != 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        xy = np.moveaxis(points[:2] / homogeneous, 0, -1)
    xy[~visible] = np.nan
    return xy, visible, labels
