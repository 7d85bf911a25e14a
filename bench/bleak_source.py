"""BleakSource figures: advertisements/s through bleak's BlueZ backend into the Handoff,
latency from the fake BlueZ's send to the Handoff, and recovery after BlueZ dies.

Runs a private dbus-daemon and the fake BlueZ in its own process (see
tests.support.fakebluez); nothing touches a real radio. Usage:

    .venv/bin/python bench/bleak_source.py [--seconds 3] [--restarts 5]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hallway.config import ScannerConfig
from hallway.sources.base import Handoff, SourceState
from hallway.sources.bleak import BleakSource

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the test doubles in tests/
from tests.support.fakebluez import STAMP_COMPANY, FakeBlueZProcess, PrivateBus


class Consumer:
    """Drains the hand-off like the pipeline would, keeping send->hand-off latencies."""

    def __init__(self, handoff: Handoff) -> None:
        self.handoff = handoff
        self.count = 0
        self.latencies: list[float] = []

    async def run(self) -> None:
        while True:
            for adv in await self.handoff.get_batch(1024):
                self.count += 1
                stamp = adv.manufacturer_data.get(STAMP_COMPANY)
                if stamp is not None and len(stamp) == 8:
                    self.latencies.append(adv.ts - struct.unpack("<d", stamp)[0])


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def poll(predicate: Callable[[], bool], interval_s: float = 0.002) -> None:
    """Return once ``predicate()`` holds (checked every ``interval_s``)."""
    while True:
        if predicate():
            return
        await asyncio.sleep(interval_s)


@dataclass
class Bench:
    directory: Path
    bus: PrivateBus
    fake: FakeBlueZProcess
    source: BleakSource
    handoff: Handoff
    consumer: Consumer

    async def throughput(self, rate: float, seconds: float) -> None:
        consumer, handoff, source = self.consumer, self.handoff, self.source
        consumer.latencies.clear()
        start_count = consumer.count
        start_drop = handoff.stats()["dropped"]
        heard0 = int(source.stats()["heard"])
        t0 = time.monotonic()
        cpu0 = time.process_time()
        answer = await self.fake.command("steady", devices=200, rate=rate, duration_s=seconds,
                                         wait=True, stamp=True, timeout_s=seconds * 20 + 30)
        with contextlib.suppress(TimeoutError):  # let the tail drain
            async with asyncio.timeout(5):
                await poll(lambda: int(source.stats()["heard"]) - heard0 >= answer["sent"])
        elapsed = time.monotonic() - t0
        cpu = time.process_time() - cpu0
        got = consumer.count - start_count
        dropped = handoff.stats()["dropped"] - start_drop
        lat = consumer.latencies
        print(f"  asked {rate:>6.0f}/s: delivered {got:>6}/{answer['sent']:<6} in {elapsed:5.2f} s "
              f"= {got / elapsed:>6.0f}/s, dropped {dropped}, send->hand-off p50 "
              f"{pct(lat, 0.5) * 1e3:.2f} ms p99 {pct(lat, 0.99) * 1e3:.2f} ms; receiving "
              f"process {cpu / elapsed:4.0%} of a core = {got / cpu:,.0f} per CPU-second")

    async def recovery(self, restarts: int) -> None:
        times = []
        for _ in range(restarts):
            await self.fake.command("steady", devices=5, rate=500, duration_s=60)
            await asyncio.sleep(0.3)
            await self.fake.stop(kill=True)
            await poll(lambda: self.source.state is not SourceState.SCANNING)
            await asyncio.sleep(1.0)
            self.fake = FakeBlueZProcess(self.bus.address, self.directory / "control")
            await self.fake.start()
            ready = time.monotonic()
            before = self.handoff.stats()["total"]
            await self.fake.command("steady", devices=5, rate=500, duration_s=60)
            await poll(lambda n=before: self.handoff.stats()["total"] > n, 0.0005)
            times.append(time.monotonic() - ready)
            await self.fake.command("stop_jobs")
        print(f"  BlueZ killed and restarted {restarts}x: scanning resumed after median "
              f"{statistics.median(times) * 1e3:.0f} ms, max {max(times) * 1e3:.0f} ms (from the "
              "new BlueZ owning its name to the first advertisement in the hand-off)")


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--restarts", type=int, default=5)
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="hw-bench-"))
    bus = PrivateBus(directory)
    bus.start()
    os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = bus.address
    fake = FakeBlueZProcess(bus.address, directory / "control")
    await fake.start()
    config = ScannerConfig(queue_size=100_000, silence_restart_s=30, backoff_max_s=2,
                           start_timeout_s=2, device_prune_s=60)
    handoff = Handoff(config.queue_size)
    source = BleakSource(config)
    bench = Bench(directory, bus, fake, source, handoff, Consumer(handoff))
    tasks = [asyncio.create_task(source.run(handoff)),
             asyncio.create_task(bench.consumer.run())]
    try:
        await poll(lambda: source.state is SourceState.SCANNING)
        print("BleakSource through bleak's BlueZ backend, fake BlueZ in its own process, "
              f"{os.cpu_count()} cores (shared):")
        for rate in (1000, 5000, 10000, 20000, 40000):
            await bench.throughput(rate, args.seconds)
        await bench.recovery(args.restarts)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await bench.fake.stop()
        bus.stop()
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
