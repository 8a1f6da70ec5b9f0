"""Which camera image waits for its depth image, and which goes on without one.

message_filters' ApproximateTimeSynchronizer pairs a camera image with the depth image nearest in
stamp (within the slop), but only once both have arrived, and it never reports an image that
finds no pair. ``DepthPairing`` sits beside it so that masks keep coming when depth does not:

* while pairs form, each image waits for its pair and is processed with depth;
* after ``patience`` images in a row without a pair (depth stream missing, silent, or stamped
  outside the slop), images are processed at once without depth, until a pair forms again;
* an image is processed once at most; one still waiting when a newer image goes out is given up
  (it would lose to the newer one in the node's newest-frame mailbox anyway) and counted.

Pure Python, so it is testable without ROS.
"""
from __future__ import annotations

import threading
from typing import Generic, Hashable, TypeVar

T = TypeVar("T")


class DepthPairing(Generic[T]):
    def __init__(self, patience: int):
        if patience < 1:
            raise ValueError(f"patience must be at least one image, got {patience}")
        self.patience = patience
        self._lock = threading.Lock()
        self._waiting: dict[Hashable, T] = {}   # image stamp -> frame, in arrival order
        self._unpaired = 0                      # images since the last pair
        self._given_up = 0

    def image(self, stamp: Hashable, frame: T) -> T | None:
        """A new camera image: the frame to process now without depth, or None while it waits."""
        with self._lock:
            self._unpaired += 1
            if self._waiting.pop(stamp, None) is not None:  # a repeated stamp (bag loop): the newer one waits
                self._given_up += 1
            if self._unpaired <= self.patience:
                self._waiting[stamp] = frame
                return None
            self._give_up(len(self._waiting))
            return frame

    def paired(self, stamp: Hashable) -> T | None:
        """The synchronizer paired the image stamped ``stamp``: its frame, to process with that
        depth, or None when the image already went on without depth or was given up."""
        with self._lock:
            self._unpaired = 0
            if stamp not in self._waiting:
                return None
            self._give_up(list(self._waiting).index(stamp))   # the images that arrived before it
            return self._waiting.pop(stamp)

    def clear(self) -> int:
        """Forget the waiting images (the node stops processing); returns how many there were."""
        with self._lock:
            count = len(self._waiting)
            self._waiting.clear()
            self._unpaired = 0
            return count

    @property
    def given_up(self) -> int:
        """Images dropped while waiting for a depth pair, since the start."""
        with self._lock:
            return self._given_up

    def _give_up(self, oldest: int) -> None:
        for stamp in list(self._waiting)[:oldest]:
            del self._waiting[stamp]
        self._given_up += oldest
