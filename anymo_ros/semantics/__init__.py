"""Per-track semantic features for the learned classifier.

* ``dinov2``: DINOv2 features sampled at each track's position (:mod:`anymo_ros.semantics.dinov2`);
  ``semantic_dim`` is the model's hidden size (768 for DINOv2-B, as the paper's classifier expects).
* ``none``: no semantics; the classifier gets zero vectors, which its semantic dropout trains for.

The paper looks a track's semantics up once, in its query frame. Online, :class:`SemanticTrackCache`
keeps one vector per track id, taken on the first frame where features are computed after the
track appears (DINOv2 runs every ``semantics.every`` frames); tracks without one yet read zeros.
numpy only; the DINOv2 backend itself is built by :func:`anymo_ros.devices.create_backends`.
"""
from __future__ import annotations

from typing import Callable

import numpy as np


class SemanticTrackCache:
    """One semantic vector per live track id."""

    def __init__(self, semantic_dim: int):
        self.semantic_dim = int(semantic_dim)
        self._vectors: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self._vectors)

    def reset(self) -> None:
        self._vectors.clear()

    def missing(self, ids: np.ndarray) -> np.ndarray:
        """Bool (N,): which of ``ids`` have no vector yet."""
        return np.array([int(i) not in self._vectors for i in ids], bool)

    def update(self, ids: np.ndarray, xy: np.ndarray, visible: np.ndarray,
               sample: Callable[[np.ndarray], np.ndarray]) -> int:
        """Sample vectors for visible tracks that have none (``sample(xy) -> (M, C)``); forget dead ids.

        Call it on frames where a fresh feature map exists. Returns how many vectors were added.
        """
        ids = np.asarray(ids)
        alive = set(int(i) for i in ids)
        for dead in set(self._vectors) - alive:
            del self._vectors[dead]
        rows = np.flatnonzero(self.missing(ids) & np.asarray(visible, bool) & np.isfinite(xy).all(axis=1))
        if len(rows) == 0:
            return 0
        vectors = np.asarray(sample(xy[rows]), np.float32)
        if vectors.shape != (len(rows), self.semantic_dim):
            raise ValueError(f"semantic sampler returned {vectors.shape}, expected ({len(rows)}, {self.semantic_dim})")
        added = 0
        for row, vector in zip(rows, vectors):
            if np.isfinite(vector).all():
                self._vectors[int(ids[row])] = vector
                added += 1
        return added

    def vectors(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, C) float32 vectors (zeros where unknown) and the (N,) bool mask of known ones."""
        out = np.zeros((len(ids), self.semantic_dim), np.float32)
        known = np.zeros(len(ids), bool)
        for row, track_id in enumerate(ids):
            vector = self._vectors.get(int(track_id))
            if vector is not None:
                out[row] = vector
                known[row] = True
        return out, known


__all__ = ["SemanticTrackCache"]
