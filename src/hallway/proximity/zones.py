"""Zones (SPEC §5): immediate below ``immediate_m``, near below ``near_m``, far beyond.

A zone changes only when the distance is past the edge by the hysteresis (given as a distance
factor, from decibels, so it is the same signal margin at every edge); an estimate wandering
less than that around an edge keeps the zone it had.
"""

from __future__ import annotations

from enum import StrEnum


class Zone(StrEnum):
    """The zone names of SPEC §5, nearest first."""

    IMMEDIATE = "immediate"
    NEAR = "near"
    FAR = "far"


ORDER: tuple[Zone, ...] = (Zone.IMMEDIATE, Zone.NEAR, Zone.FAR)


class ZoneMap:
    """Distance -> zone, with and without hysteresis."""

    __slots__ = ("_edges", "_factor")

    def __init__(self, *, immediate_m: float, near_m: float, hysteresis_factor: float) -> None:
        if not 0 < immediate_m < near_m:
            raise ValueError("zone edges must satisfy 0 < immediate_m < near_m")
        if hysteresis_factor < 1.0:
            raise ValueError("hysteresis factor must be at least 1")
        self._edges = (immediate_m, near_m)
        self._factor = hysteresis_factor

    def zone_of(self, distance: float) -> Zone:
        """The zone of a distance, without hysteresis."""
        immediate, near = self._edges
        if distance < immediate:
            return Zone.IMMEDIATE
        if distance < near:
            return Zone.NEAR
        return Zone.FAR

    def next_zone(self, current: Zone, distance: float) -> Zone:
        """The zone after seeing ``distance`` while in ``current``, with hysteresis."""
        index = ORDER.index(current)
        edges = self._edges
        factor = self._factor
        while index < 2 and distance >= edges[index] * factor:
            index += 1
        while index > 0 and distance < edges[index - 1] / factor:
            index -= 1
        return ORDER[index]
