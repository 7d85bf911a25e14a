"""Pure proximity core: RSSI smoothing, distance, zones and the per-contact presence machine."""

from hallway.proximity.tracker import Tracker

__all__ = ["Tracker"]
