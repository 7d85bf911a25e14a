"""A measurement aid: the loop thread's CPU time in each callback the event loop runs.

The daemon's target is that no callback holds the event loop for more than 10 ms. A task that
sleeps for a few milliseconds and records how late it wakes (the daemon's loop probe) sees the
sum of every callback run meanwhile, and on a busy machine mostly the time spent waiting for a
core; neither is the longest callback. :class:`CallbackTimer` times each ``Handle._run`` of
asyncio's own event loop (every callback, and every step of every task, is one) by the thread's
CPU clock and keeps the longest, a count of those over 10 ms and the most recent slow ones
with the time they ended, so a benchmark can attribute them to its phases.

It patches ``asyncio.events.Handle._run`` for the whole process, so it is installed only when
asked for (``$HALLWAY_LOOP_PROBE_S``, by benchmarks) and costs about a microsecond a callback.
A slow callback is named by its function's qualified name (a task by its coroutine's), never
by its arguments, so nothing about a contact or a device can show.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections import deque
from collections.abc import Callable
from typing import Any

SLOW_S = 0.005
"""Callbacks at least this long are kept in :attr:`CallbackTimer.slow` (the newest 64)."""


def callback_name(callback: Callable[..., Any]) -> str:
    """A callback's qualified name; a task step's is its coroutine's (no argument values)."""
    owner = getattr(callback, "__self__", None)
    if isinstance(owner, asyncio.Task):
        coro = owner.get_coro()
        return str(getattr(coro, "__qualname__", type(coro).__name__))
    return str(getattr(callback, "__qualname__", type(callback).__name__))


class CallbackTimer:
    """The longest callbacks of asyncio's event loop by the loop thread's CPU (see module)."""

    def __init__(self) -> None:
        self.max_s = 0.0
        self.max_name = ""
        self.over_10ms = 0
        self.callbacks = 0
        self.slow: deque[tuple[float, float, str, float]] = deque(maxlen=64)
        """(time.monotonic() at the end, CPU seconds, name, of which in the cyclic GC) of
        recent callbacks ≥ SLOW_S."""
        self.gc_max_s = [0.0, 0.0, 0.0]
        """The longest collection of each generation, CPU seconds."""
        self.gc_runs = [0, 0, 0]
        self._original: Callable[[asyncio.Handle], None] | None = None
        self._gc_started = 0.0
        self._gc_in_callback = 0.0

    def install(self) -> None:
        """Start timing every callback of every asyncio loop in this process."""
        if self._original is not None:
            return
        original = asyncio.events.Handle._run
        self._original = original
        clock = time.thread_time

        def timed_run(handle: asyncio.Handle) -> None:
            self._gc_in_callback = 0.0
            started = clock()
            try:
                original(handle)
            finally:
                spent = clock() - started
                self.callbacks += 1
                if spent >= SLOW_S:
                    self._slow(handle, spent)

        asyncio.events.Handle._run = timed_run  # type: ignore[method-assign, assignment]
        gc.callbacks.append(self._gc_phase)

    def _gc_phase(self, phase: str, info: dict[str, int]) -> None:
        """The cyclic GC starts or stops (``gc.callbacks``): time each collection."""
        now = time.thread_time()
        if phase == "start":
            self._gc_started = now
            return
        spent = now - self._gc_started
        generation = info.get("generation", 2)
        self.gc_runs[generation] += 1
        self.gc_max_s[generation] = max(self.gc_max_s[generation], spent)
        self._gc_in_callback += spent

    def uninstall(self) -> None:
        """Stop timing (the loop runs its callbacks as before)."""
        if self._original is not None:
            asyncio.events.Handle._run = self._original  # type: ignore[method-assign, assignment]
            self._original = None
            gc.callbacks.remove(self._gc_phase)

    def _slow(self, handle: asyncio.Handle, spent: float) -> None:
        name = callback_name(handle._callback)  # type: ignore[attr-defined]
        self.slow.append((time.monotonic(), spent, name, self._gc_in_callback))
        if spent > 0.010:
            self.over_10ms += 1
        if spent > self.max_s:
            self.max_s, self.max_name = spent, name

    def figures(self) -> dict[str, Any]:
        """For ``status``: the longest callback, how many went over 10 ms, the recent slow ones."""
        return {
            "loop_callback_max_ms": round(self.max_s * 1000, 2),
            "loop_callback_max_name": self.max_name,
            "loop_callbacks_over_10ms": self.over_10ms,
            "loop_callbacks": self.callbacks,
            "loop_callbacks_slow": [
                [round(at, 3), round(spent * 1000, 2), name, round(in_gc * 1000, 2)]
                for at, spent, name, in_gc in self.slow],
            "gc_max_ms": [round(spent * 1000, 2) for spent in self.gc_max_s],
            "gc_runs": list(self.gc_runs),
        }
