"""What the receiver itself hears: its listening pattern, learned from every device on the air.

A scanner that listens in windows (a phone's low-power scan, a host sharing its radio, Wi-Fi
holding the antenna of a combo chip) loses packets whatever the distance. Its own pattern shows
in the stream of *all* advertisements, strangers' included: while it listens, packets from the
crowd arrive every few milliseconds; between windows nothing arrives from anyone. This module
keeps only counters about that stream (no address, no payload, nothing per device):

- the typical gap between consecutive advertisements (a running mean of their logarithms, so
  the short gaps inside a window set it, not the long ones between windows);
- dead time: the part of every gap beyond ``DEAD_FACTOR`` times that typical gap. For a
  receiver that listens all the time and a crowd sending at random, gaps that long are rare
  (about 1 %) and the excess is small, so dead time stays near 0; for a windowed receiver it
  is the time between windows;
- the listening share ``duty`` = 1 - dead time / time, and the typical length of a dead gap.

Both are exponentially decayed sums (``HALF_LIFE_S``), so a receiver that changes its pattern
is followed within minutes. With too little traffic to tell (``confident`` False) the monitor
assumes nothing: callers must treat the receiver as possibly lossy.
"""

from __future__ import annotations

import math

HALF_LIFE_S = 300.0
DEAD_FACTOR = 8.0  # a gap this many typical gaps long is dead time (beyond the typical)
MIN_DEAD_S = 0.02  # shorter than this is never dead time (an advertising event's spread)
MAX_GAP_S = 60.0  # a longer silence of everything is an outage, not a pattern
MIN_EVENTS = 200  # advertisements before the estimate means anything
MIN_SPAN_S = 30.0  # ... and seconds of stream
_LOG_WEIGHT = 0.01


class ReceiverMonitor:
    """The listening share and the dead-gap length of a receiver, from arrival times only."""

    __slots__ = ("_dead", "_dead_gaps", "_dead_len", "_events", "_last", "_log_gap", "_span",
                 "_total")

    def __init__(self) -> None:
        self._last: float | None = None
        self._log_gap = math.log(0.01)  # running mean of log(gap)
        self._dead = 0.0  # decayed dead seconds
        self._total = 0.0  # decayed seconds
        self._dead_len = 0.0  # decayed sum of dead-gap lengths
        self._dead_gaps = 0.0  # decayed count of dead gaps
        self._events = 0
        self._span = 0.0

    def heard(self, ts: float) -> None:
        """One advertisement (anyone's) heard at ``ts``."""
        last = self._last
        self._events += 1
        if last is None or ts > last + MAX_GAP_S:
            self._last = ts
            return
        gap = ts - last
        if gap <= 0.0:
            return  # out of order or the same instant: nothing to learn
        self._last = ts
        self._span += gap
        self._log_gap += _LOG_WEIGHT * (math.log(max(gap, 1e-4)) - self._log_gap)
        keep = 0.5 ** (gap / HALF_LIFE_S)
        threshold = max(DEAD_FACTOR * math.exp(self._log_gap), MIN_DEAD_S)
        dead = gap - threshold if gap > threshold else 0.0
        self._total = self._total * keep + gap
        self._dead = self._dead * keep + dead
        if dead > 0.0:
            self._dead_len = self._dead_len * keep + gap
            self._dead_gaps = self._dead_gaps * keep + 1.0
        else:
            self._dead_len *= keep
            self._dead_gaps *= keep

    def snapshot(self) -> tuple[float, ...]:
        """The counters, to carry to another monitor (a replay's reader process)."""
        return (
            -1.0 if self._last is None else self._last, self._log_gap, self._dead, self._total,
            self._dead_len, self._dead_gaps, float(self._events), self._span,
        )

    def load(self, snapshot: tuple[float, ...]) -> None:
        """Take over the counters of ``snapshot``."""
        last, self._log_gap, self._dead, self._total, self._dead_len, self._dead_gaps, events, \
            self._span = snapshot
        self._last = None if last < 0 else last
        self._events = int(events)

    @property
    def confident(self) -> bool:
        """Enough of the stream was heard for ``duty`` to mean something."""
        return self._events >= MIN_EVENTS and self._span >= MIN_SPAN_S

    @property
    def duty(self) -> float:
        """The share of time the receiver listens (1.0 until ``confident``: callers decide)."""
        if self._total <= 0.0:
            return 1.0
        return max(0.0, min(1.0, 1.0 - self._dead / self._total))

    @property
    def dead_gap_s(self) -> float:
        """The typical length of a gap between listening windows (0 if there are none)."""
        if self._dead_gaps < 1e-9:
            return 0.0
        return self._dead_len / self._dead_gaps

    def status(self) -> dict[str, float | bool]:
        """Figures for ``hallway status`` (counters only)."""
        return {
            "listening_share": round(self.duty, 3),
            "dead_gap_s": round(self.dead_gap_s, 3),
            "confident": self.confident,
        }
