"""Online point trackers."""
from anymo_ros.config import TrackerConfig
from anymo_ros.tracking.base import PointTracker, TrackUpdate


def create_tracker(config: TrackerConfig) -> PointTracker:
    """The tracker backend named by ``config.backend``."""
    if config.backend == "lk":
        from anymo_ros.tracking.lucas_kanade import LucasKanadeTracker
        return LucasKanadeTracker(config)
    raise ValueError(f"unknown tracker backend '{config.backend}' (available: 'lk')")


__all__ = ["PointTracker", "TrackUpdate", "create_tracker"]
