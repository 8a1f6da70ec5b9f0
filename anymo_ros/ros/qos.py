"""Quality-of-service profiles of the node's topics.

A reliable subscriber receives nothing from a best-effort publisher (and the other way round)
without any error, so the node logs the profile it uses.
"""
from __future__ import annotations

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy


def input_qos(reliable: bool) -> QoSProfile:
    """Camera input: sensor-data style (best effort, newest frame only) unless ``reliable``.

    A reliable subscription keeps a few frames so that none is lost in transport: then every
    frame the node does not process is one it counted as dropped.
    """
    if reliable:
        return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10,
                          reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                      reliability=ReliabilityPolicy.BEST_EFFORT, durability=DurabilityPolicy.VOLATILE)


def output_qos() -> QoSProfile:
    """Every output: reliable, so recorders and slow subscribers get every result."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10,
                      reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)


def describe(profile: QoSProfile) -> str:
    """One-line summary for the log, e.g. 'best_effort, keep_last(1), volatile'."""
    return (f"{profile.reliability.name.lower()}, {profile.history.name.lower()}({profile.depth}), "
            f"{profile.durability.name.lower()}")
