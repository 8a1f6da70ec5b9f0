"""One-slot hand-over from the subscription callback to the processing worker."""
from __future__ import annotations

import threading
from typing import Generic, TypeVar

T = TypeVar("T")


class LatestMailbox(Generic[T]):
    """Holds only the newest item: ``put`` never blocks, and an item replaced before the worker
    took it counts as dropped."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._item: T | None = None
        self._dropped = 0
        self._closed = False

    def put(self, item: T) -> None:
        with self._condition:
            if self._item is not None:
                self._dropped += 1
            self._item = item
            self._condition.notify()

    def take(self, timeout: float | None = None) -> T | None:
        """The newest item, waiting up to ``timeout`` s; None on timeout or once closed."""
        with self._condition:
            self._condition.wait_for(lambda: self._item is not None or self._closed, timeout)
            item, self._item = self._item, None
            return None if self._closed else item

    @property
    def dropped(self) -> int:
        with self._condition:
            return self._dropped

    def close(self) -> None:
        """Wake the worker for shutdown; later items are ignored."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()
