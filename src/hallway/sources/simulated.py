"""SimulatedSource: a live simulated venue (``hallway.simulator.live_stream``) in real time.

The simulator is asked to start at the current wall-clock time, so its timestamps are already
"now"; each record is handed over when the wall clock reaches it.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator, Callable, Iterable
from typing import cast

from hallway.errors import SourceError
from hallway.models import Advertisement
from hallway.sources.pacing import PacedSource

StreamFactory = Callable[..., Iterable[Advertisement] | AsyncIterator[Advertisement]]


def _live_stream() -> StreamFactory:
    module = importlib.import_module("hallway.simulator")
    return cast(StreamFactory, module.live_stream)


class SimulatedSource(PacedSource):
    """Paces ``live_stream(scenario, seed=, start_ts=)`` against the wall clock."""

    def __init__(self, scenario: str, *, seed: int = 1, name: str = "simulator") -> None:
        super().__init__(name)
        self._scenario = scenario
        self._seed = seed

    def _open(self, start_ts: float
              ) -> tuple[float | None, Iterable[Advertisement] | AsyncIterator[Advertisement]]:
        try:
            factory = _live_stream()
            records = factory(self._scenario, seed=self._seed, start_ts=start_ts)
        except (ImportError, AttributeError) as exc:
            raise SourceError(f"the simulator is not available: {exc}") from None
        except (KeyError, ValueError) as exc:
            reason = exc.args[0] if exc.args else type(exc).__name__
            raise SourceError(f"cannot simulate: {reason}") from None
        return start_ts, records
