"""BleakSource figures: advertisements/s through bleak's BlueZ backend into the Handoff,
latency from the fake BlueZ's send to the Handoff, and recovery after BlueZ dies.

Runs a private dbus-daemon and the fake BlueZ in its own process (see
hallway.testing.fakebluez); nothing touches a real radio. Usage:

    .venv/bin/python bench/bleak_source.py [--seconds 3] [--restarts 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import struct
import tempfile
import time
from pathlib import Path

from hallway.config import ScannerConfig
from hallway.sources.base import Handoff, SourceState
from hallway.sources.bleak import BleakSource
from hallway.testing.fakebluez import STAMP_COMPANY, FakeBlueZProcess, PrivateBus


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


async def throughput(fake: FakeBlueZProcess, consumer: Consumer, handoff: Handoff,
                     source: BleakSource, rate: float, seconds: float) -> None:
    consumer.latencies.clear()
    start_count = consumer.count
    start_drop = handoff.stats()["dropped"]
    heard0 = source.stats()["heard"]
    t0 = time.monotonic()
    answer = await fake.command("steady", devices=200, rate=rate, duration_s=seconds, wait=True,
                                stamp=True, timeout_s=seconds * 20 + 30)
    # let the tail drain
    for _ in range(200):
        if source.stats()["heard"] - int(heard0) >= answer["sent"]:
            break
        await asyncio.sleep(0.02)
    elapsed = time.monotonic() - t0
    got = consumer.count - start_count
    lat = consumer.latencies
    print(f"  asked {rate:>8.0f}/s  sent {answer['sent']:>7}  delivered {got:>7} "
          f"in {elapsed:5.2f} s = {got / elapsed:>8.0f}/s  dropped {handoff.stats()['dropped'] - start_drop:>6}"
          f"  latency p50 {pct(lat, 0.5) * 1e3:6.2f} ms  p99 {pct(lat, 0.99) * 1e3:7.2f} ms")


async def recovery(directory: Path, bus: PrivateBus, fake: FakeBlueZProcess, handoff: Handoff,
                   source: BleakSource, restarts: int) -> FakeBlueZProcess:
    times = []
    for _ in range(restarts):
        await fake.command("steady", devices=5, rate=500, duration_s=60)
        await asyncio.sleep(0.3)
        await fake.stop(kill=True)
        while source.state is SourceState.SCANNING:
            await asyncio.sleep(0.005)
        await asyncio.sleep(1.0)
        fake = FakeBlueZProcess(bus.address, directory / "control")
        await fake.start()
        ready = time.monotonic()
        before = handoff.stats()["total"]
        await fake.command("steady", devices=5, rate=500, duration_s=60)
        while handoff.stats()["total"] == before:
            await asyncio.sleep(0.001)
        times.append(time.monotonic() - ready)
        await fake.command("stop_jobs")
    print(f"  BlueZ killed and restarted {restarts}x: scanning resumed after "
          f"median {statistics.median(times) * 1e3:.0f} ms, max {max(times) * 1e3:.0f} ms "
          "(from the new BlueZ owning its name to the first advertisement in the hand-off)")
    return fake


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
    consumer = Consumer(handoff)
    tasks = [asyncio.create_task(source.run(handoff)), asyncio.create_task(consumer.run())]
    try:
        while source.state is not SourceState.SCANNING:
            await asyncio.sleep(0.01)
        print("BleakSource through bleak's BlueZ backend, fake BlueZ "
              f"in its own process, {os.cpu_count()} cores:")
        for rate in (1000, 5000, 10000, 20000, 40000):
            await throughput(fake, consumer, handoff, source, rate, args.seconds)
        fake = await recovery(directory, bus, fake, handoff, source, args.restarts)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await fake.stop()
        bus.stop()
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
