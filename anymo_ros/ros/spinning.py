"""An rclpy executor spinning in a background thread, and a safe way to stop it."""
from __future__ import annotations

import threading

SPIN_SLICE = 0.05  # s: the longest a stop request waits for the thread's current wait


class ExecutorThread:
    """Spins ``executor`` in a thread of its own until ``stop``.

    rclpy's ``Executor.shutdown`` is not safe while another thread spins: it destroys the
    executor's guard condition without waiting for the callbacks in flight, a callback then
    raises ``InvalidHandle``, and ``spin`` re-raises it, killing the spinning thread. So the
    thread spins in short slices and checks for a stop between them; ``stop`` joins it before it
    shuts the executor down. A single-threaded executor runs its callbacks in that thread, so none
    is left running; a multi-threaded one's ``shutdown`` joins its workers.

    Spinning also ends when the executor's context shuts down. ``error`` holds the exception
    of a callback that ended spinning early (rclpy re-raises it).
    """

    def __init__(self, executor, name: str):
        self.executor = executor
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, name=name, daemon=True)

    def start(self) -> "ExecutorThread":
        self._thread.start()
        return self

    def _spin(self) -> None:
        try:
            while not self._stop.is_set() and self.executor.context.ok():
                self.executor.spin_once(timeout_sec=SPIN_SLICE)
        except BaseException as error:  # noqa: BLE001 - kept for the owner, which decides
            self.error = error

    def stop(self, timeout: float | None = None) -> None:
        """Stop spinning, then shut the executor down. RuntimeError if the thread is still in a
        callback after ``timeout`` s (the executor is then left as it is)."""
        self._stop.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise RuntimeError(f"{self._thread.name}: a callback did not return within {timeout:g} s")
        self.executor.shutdown()
