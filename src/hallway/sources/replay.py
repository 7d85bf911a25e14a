"""ReplaySource: a SPEC §2 trace file played in real time (or faster) into the pipeline.

Timestamps are kept as recorded by default: hallway-v1 identifiers rotate with absolute time,
so a replay resolves only on the trace's own clock, and events carry trace time (SPEC §5).
With ``shift_ts=True`` each record's ``ts`` is moved onto the wall clock (the first record
becomes the moment playing began), for demos that mix a trace with live consumers. Malformed
lines are counted and skipped. ``run`` returns when the trace ends.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import IO

from hallway.errors import SourceError
from hallway.logs import FailureStreak, get_logger
from hallway.models import Advertisement
from hallway.sources.pacing import PacedSource
from hallway.trace import read_trace

log = get_logger(__name__)


class ReplaySource(PacedSource):
    """Plays a trace file; ``speed`` > 1 plays faster than recorded."""

    def __init__(self, path: str | Path, *, name: str = "replay", speed: float = 1.0,
                 shift_ts: bool = False) -> None:
        super().__init__(name, speed=speed, shift_ts=shift_ts)
        self._path = Path(path)
        self._bad_lines = FailureStreak(log)  # never ends: a bad trace line stays bad

    def _open(self, start_ts: float) -> tuple[float | None, Iterator[Advertisement]]:
        try:
            handle = self._path.open("r", encoding="utf-8", errors="replace")
        except OSError as exc:
            raise SourceError(f"cannot open trace {self._path}: {exc.strerror or exc}") from None
        return None, self._records(handle)

    def _records(self, handle: IO[str]) -> Iterator[Advertisement]:
        with handle:
            for number, item in read_trace(handle):
                if isinstance(item, str):
                    self._bad_lines.failed("trace_line_skipped", file=str(self._path),
                                           line=number, reason=item)
                    continue
                yield item

    def _extra_stats(self) -> dict[str, int | float | str]:
        return {"bad_lines": self._bad_lines.count}
