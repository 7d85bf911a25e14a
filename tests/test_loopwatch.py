"""The callback timer behind the daemon's "longest callback" figure ($HALLWAY_LOOP_PROBE_S)."""

from __future__ import annotations

import asyncio
import gc
import time

from hallway.loopwatch import CallbackTimer


def _spin_cpu(seconds: float) -> None:
    """Hold the thread for ``seconds`` of its own CPU time (not wall time)."""
    start = time.thread_time()
    while time.thread_time() - start < seconds:
        pass


async def _slow_task() -> None:
    _spin_cpu(0.012)


def test_each_callback_and_task_step_is_timed_and_named() -> None:
    timer = CallbackTimer()
    timer.install()
    try:
        async def main() -> None:
            loop = asyncio.get_running_loop()
            loop.call_soon(_spin_cpu, 0.020)
            for _ in range(50):
                loop.call_soon(_spin_cpu, 0.0)  # short ones count but are not slow
            await asyncio.create_task(_slow_task())
            await asyncio.sleep(0.01)

        asyncio.run(main())
    finally:
        timer.uninstall()
    figures = timer.figures()
    assert figures["loop_callback_max_ms"] >= 20.0
    assert figures["loop_callback_max_name"] == "_spin_cpu"
    assert figures["loop_callbacks_over_10ms"] == 2
    assert figures["loop_callbacks"] >= 52
    names = [name for _, _, name, _ in figures["loop_callbacks_slow"]]
    assert names == ["_spin_cpu", "_slow_task"]


class _Cycle:
    def __init__(self) -> None:
        self.me = self
        self.payload = [object() for _ in range(8)]


def _collect_garbage() -> None:
    for _ in range(200_000):
        _Cycle()  # unreachable cycles: only the cyclic GC frees them
    gc.collect()


def test_a_slow_callback_says_how_much_of_it_was_the_cyclic_gc() -> None:
    timer = CallbackTimer()
    timer.install()
    try:
        async def main() -> None:
            asyncio.get_running_loop().call_soon(_collect_garbage)
            await asyncio.sleep(0.01)

        asyncio.run(main())
    finally:
        timer.uninstall()
    figures = timer.figures()
    assert gc.callbacks.count(timer._gc_phase) == 0  # uninstalled
    slow = {name: (ms, in_gc) for _, ms, name, in_gc in figures["loop_callbacks_slow"]}
    ms, in_gc = slow["_collect_garbage"]
    assert 0.0 < in_gc <= ms
    assert figures["gc_runs"][2] >= 1
    assert figures["gc_max_ms"][2] > 0.0


def test_uninstalled_the_loop_runs_untimed() -> None:
    timer = CallbackTimer()
    timer.install()
    timer.uninstall()

    async def main() -> None:
        asyncio.get_running_loop().call_soon(_spin_cpu, 0.012)
        await asyncio.sleep(0.01)

    asyncio.run(main())
    assert timer.callbacks == 0
    assert timer.max_s == 0.0
