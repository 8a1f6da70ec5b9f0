"""Node statistics (counters, rates, latency percentiles) and their /diagnostics message."""
from __future__ import annotations

import threading
import time
from collections import Counter, deque
from dataclasses import dataclass

import numpy as np
from diagnostic_msgs.msg import DiagnosticStatus, KeyValue


@dataclass
class StatsSnapshot:
    """Everything one diagnostics message reports."""

    period: float                       # seconds covered by the rates
    received: int                       # totals since start
    processed: int
    dropped: int                        # all frames dropped for lack of time, including...
    dropped_waiting_for_depth: int      # ...those given up waiting for a depth pair
    not_active: int                     # frames not processed because the node was not active
    with_depth: int                     # frames processed with a depth image
    bad_input: dict[str, int]
    last_bad_input: str
    bad_depth: dict[str, int]           # depth images that could not be used (frame processed without)
    last_bad_depth: str
    pipeline_events: int                # window resets and input problems the pipeline reported
    last_pipeline_event: str
    input_rate: float                   # Hz over the period
    output_rate: float
    latency_percentiles: tuple[float, float] | None     # end-to-end (p50, p95) in s, recent frames
    processing_percentiles: tuple[float, float] | None  # pipeline time (p50, p95) in s
    new_problems: bool                  # bad input, bad depth or pipeline events during the period


class NodeStatistics:
    """Thread-safe counters shared by the subscription callback, the worker and the diagnostics timer."""

    def __init__(self, latency_samples: int = 200):
        self._lock = threading.Lock()
        self._received = 0
        self._processed = 0
        self._not_active = 0
        self._with_depth = 0
        self._bad_input: Counter[str] = Counter()
        self._last_bad_input = ""
        self._bad_depth: Counter[str] = Counter()
        self._last_bad_depth = ""
        self._pipeline_events = 0
        self._last_pipeline_event = ""
        self._latency: deque[float] = deque(maxlen=latency_samples)
        self._processing: deque[float] = deque(maxlen=latency_samples)
        self._period_start = time.monotonic()
        self._period_counts = (0, 0, 0, 0)  # received, processed, bad input + depth, pipeline events at period start

    def on_received(self) -> int:
        """Count a new image; returns its frame index."""
        with self._lock:
            self._received += 1
            return self._received - 1

    def on_not_active(self, count: int = 1) -> None:
        """Frames that arrived, or were still waiting, while the node was not active."""
        with self._lock:
            self._not_active += count

    def on_processed(self, latency: float, processing_time: float, with_depth: bool = False) -> None:
        with self._lock:
            self._processed += 1
            self._with_depth += with_depth
            self._latency.append(latency)
            self._processing.append(processing_time)

    def on_bad_input(self, kind: str, reason: str) -> None:
        with self._lock:
            self._bad_input[kind] += 1
            self._last_bad_input = f"{kind}: {reason}"

    def on_bad_depth(self, kind: str, reason: str) -> None:
        with self._lock:
            self._bad_depth[kind] += 1
            self._last_bad_depth = f"{kind}: {reason}"

    def on_pipeline_event(self, event: str) -> None:
        with self._lock:
            self._pipeline_events += 1
            self._last_pipeline_event = event

    def snapshot(self, dropped: int, dropped_waiting_for_depth: int = 0) -> StatsSnapshot:
        """Totals, plus rates since the previous snapshot (which starts a new period).

        The drop counts come from where frames are dropped: the mailbox counts replaced frames
        atomically with the swap, and the depth pairing counts images given up (part of ``dropped``).
        """
        with self._lock:
            now = time.monotonic()
            period = max(now - self._period_start, 1e-6)
            bad_total = sum(self._bad_input.values()) + sum(self._bad_depth.values())
            received0, processed0, bad0, events0 = self._period_counts
            snapshot = StatsSnapshot(
                period=period, received=self._received, processed=self._processed, dropped=dropped,
                dropped_waiting_for_depth=dropped_waiting_for_depth, not_active=self._not_active,
                with_depth=self._with_depth,
                bad_input=dict(self._bad_input), last_bad_input=self._last_bad_input,
                bad_depth=dict(self._bad_depth), last_bad_depth=self._last_bad_depth,
                pipeline_events=self._pipeline_events, last_pipeline_event=self._last_pipeline_event,
                input_rate=(self._received - received0) / period,
                output_rate=(self._processed - processed0) / period,
                latency_percentiles=_percentiles(self._latency),
                processing_percentiles=_percentiles(self._processing),
                new_problems=bad_total > bad0 or self._pipeline_events > events0,
            )
            self._period_start = now
            self._period_counts = (self._received, self._processed, bad_total, self._pipeline_events)
            return snapshot


def _percentiles(samples: deque[float]) -> tuple[float, float] | None:
    if not samples:
        return None
    p50, p95 = np.percentile(np.fromiter(samples, float), [50, 95])
    return float(p50), float(p95)


def _ms(percentiles: tuple[float, float] | None) -> tuple[str, str]:
    if percentiles is None:
        return "n/a", "n/a"
    return f"{percentiles[0] * 1e3:.1f}", f"{percentiles[1] * 1e3:.1f}"


def diagnostic_status(name: str, snapshot: StatsSnapshot, input_topic: str, backends: dict[str, str],
                      fallbacks: list[str], state: str = "active", depth_input: str = "") -> DiagnosticStatus:
    """One DiagnosticStatus: WARN while bad input, bad depth or pipeline events (resets) happen, or
    while a configured backend runs on its fallback; OK otherwise (also while not active: that is
    a state asked for). ``state`` is the lifecycle state; ``depth_input`` describes the depth
    subscription, empty when there is none."""
    latency_p50, latency_p95 = _ms(snapshot.latency_percentiles)
    processing_p50, processing_p95 = _ms(snapshot.processing_percentiles)
    depth_values = {
        "frames with depth": str(snapshot.with_depth),
        "frames dropped waiting for depth": str(snapshot.dropped_waiting_for_depth),
        "bad depth": str(sum(snapshot.bad_depth.values())),
        **{f"bad depth: {kind}": str(count) for kind, count in sorted(snapshot.bad_depth.items())},
        "last bad depth": snapshot.last_bad_depth,
    } if depth_input else {}
    values = {
        "lifecycle state": state,
        "input topic": input_topic,
        "depth input": depth_input or "none",
        "frames received": str(snapshot.received),
        "frames processed": str(snapshot.processed),
        "frames dropped": str(snapshot.dropped),
        "frames not processed (not active)": str(snapshot.not_active),
        **depth_values,
        "input rate (Hz)": f"{snapshot.input_rate:.2f}",
        "output rate (Hz)": f"{snapshot.output_rate:.2f}",
        "latency p50 (ms)": latency_p50,
        "latency p95 (ms)": latency_p95,
        "processing time p50 (ms)": processing_p50,
        "processing time p95 (ms)": processing_p95,
        "bad input": str(sum(snapshot.bad_input.values())),
        **{f"bad input: {kind}": str(count) for kind, count in sorted(snapshot.bad_input.items())},
        "last bad input": snapshot.last_bad_input,
        "pipeline events": str(snapshot.pipeline_events),
        "last pipeline event": snapshot.last_pipeline_event,
        **{f"backend: {stage}": backend for stage, backend in backends.items()},
        **{f"fallback {index + 1}": reason for index, reason in enumerate(fallbacks)},
    }
    if state != "active":
        level, message = DiagnosticStatus.OK, f"{state}: not processing ({snapshot.not_active} frames not processed)"
    elif snapshot.received == 0:
        level, message = DiagnosticStatus.OK, f"waiting for images on {input_topic}"
    else:
        level = DiagnosticStatus.WARN if snapshot.new_problems or fallbacks else DiagnosticStatus.OK
        message = (f"{snapshot.output_rate:.1f} Hz, latency p95 {latency_p95} ms, "
                   f"{snapshot.dropped} dropped, {sum(snapshot.bad_input.values())} bad input")
        if fallbacks:
            message += f", {len(fallbacks)} backend fallback(s)"
    return DiagnosticStatus(
        level=level, name=name, message=message, hardware_id="",
        values=[KeyValue(key=key, value=value) for key, value in values.items()])
