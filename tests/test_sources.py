"""The hand-off, the paced sources (replay, simulator) and make_source."""

from __future__ import annotations

import asyncio
import importlib
import json
import time
from pathlib import Path

import pytest

from hallway.config import Config, ScannerConfig
from hallway.errors import SourceError
from hallway.models import Advertisement
from hallway.sources import AdvertisementSource, Handoff, SourceState, make_source
from hallway.sources.replay import ReplaySource
from hallway.sources.simulated import SimulatedSource
from hallway.trace import advertisement_json

try:  # tests/ as a package (tests/__init__.py) or as a plain folder on sys.path
    from tests.bluez_env import running, wait_until
except ImportError:
    from bluez_env import running, wait_until

T0 = 1585785600.0


def adv(i: int, ts: float = T0) -> Advertisement:
    return Advertisement(ts=ts, address=f"5A:00:00:00:00:{i:02X}", address_type="random",
                         rssi=-60 - i % 20, manufacturer_data={0xFFFF: bytes([i % 256]) * 4})


def write_trace(path: Path, ads: list[Advertisement], *, bad: int = 0) -> Path:
    lines = [json.dumps(advertisement_json(a)) for a in ads]
    for k in range(bad):
        lines.insert(1 + k, "{not json" if k % 2 == 0 else '{"ts": "yesterday"}')
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def has_simulator() -> bool:
    try:
        return hasattr(importlib.import_module("hallway.simulator"), "live_stream")
    except ImportError:
        return False


needs_simulator = pytest.mark.skipif(not has_simulator(),
                                     reason="hallway.simulator.live_stream not available")


# -- Handoff ----------------------------------------------------------------------------

def test_handoff_drops_oldest_when_full_and_counts() -> None:
    handoff = Handoff(3)
    for i in range(5):
        handoff.put_nowait(adv(i))
    assert handoff.stats() == {"queued": 3, "dropped": 2, "total": 5}

    async def take() -> list[Advertisement]:
        return await handoff.get_batch(10)

    batch = asyncio.run(take())
    assert [a.address[-2:] for a in batch] == ["02", "03", "04"]
    assert handoff.stats() == {"queued": 0, "dropped": 2, "total": 5}


async def test_handoff_get_batch_waits_and_limits() -> None:
    handoff = Handoff(100)
    waiter = asyncio.create_task(handoff.get_batch(2))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    for i in range(5):
        handoff.put_nowait(adv(i))
    first = await asyncio.wait_for(waiter, 1)
    assert len(first) == 2
    assert len(await handoff.get_batch(10)) == 3
    again = asyncio.create_task(handoff.get_batch())
    await asyncio.sleep(0.05)
    assert not again.done()  # empty again: waits
    handoff.put_nowait(adv(9))
    assert len(await asyncio.wait_for(again, 1)) == 1


async def test_handoff_drain_calls_the_consumer_per_batch_in_order() -> None:
    handoff = Handoff(1000)
    batches: list[list[str]] = []
    draining = asyncio.create_task(
        handoff.drain(lambda batch: batches.append([a.address[-2:] for a in batch]),
                      max_items=4))
    await asyncio.sleep(0)
    for i in range(3):
        handoff.put_nowait(adv(i))
    await asyncio.sleep(0)
    assert batches == [["00", "01", "02"]]  # what arrived together is one batch
    for i in range(3, 13):
        handoff.put_nowait(adv(i))
    for _ in range(4):
        await asyncio.sleep(0)
    assert batches[1:] == [["03", "04", "05", "06"], ["07", "08", "09", "0A"], ["0B", "0C"]]
    with pytest.raises(RuntimeError, match="consumer"):
        await handoff.get_batch()  # one consumer at a time
    handoff.stop_draining()
    await asyncio.wait_for(draining, 1)
    handoff.put_nowait(adv(0x20))  # nobody drains now: it waits for the next consumer
    await asyncio.sleep(0)
    assert len(batches) == 4
    assert [a.address[-2:] for a in await handoff.get_batch()] == ["20"]
    assert handoff.stats() == {"queued": 0, "dropped": 0, "total": 14}


async def test_handoff_drain_ends_with_the_consumers_error() -> None:
    handoff = Handoff(10)

    def consume(batch: list[Advertisement]) -> None:
        raise ValueError(f"cannot take {len(batch)}")

    handoff.put_nowait(adv(1))  # queued before the consumer came: handled at once
    with pytest.raises(ValueError, match="cannot take 1"):
        await asyncio.wait_for(handoff.drain(consume), 1)
    handoff.put_nowait(adv(2))
    assert len(await handoff.get_batch()) == 1  # the hand-off is free for a new consumer


def test_handoff_rejects_nonsense_sizes() -> None:
    with pytest.raises(ValueError, match="maxsize"):
        Handoff(0)
    with pytest.raises(ValueError, match="max_items"):
        asyncio.run(Handoff(1).get_batch(0))


# -- Replay -----------------------------------------------------------------------------

async def collect_with_times(handoff: Handoff, count: int, timeout_s: float = 5.0
                             ) -> list[tuple[float, Advertisement]]:
    got: list[tuple[float, Advertisement]] = []
    async with asyncio.timeout(timeout_s):
        while len(got) < count:
            batch = await handoff.get_batch()
            now = time.monotonic()
            got.extend((now, a) for a in batch)
    return got


@pytest.mark.parametrize("speed", [1.0, 2.0])
async def test_replay_paces_in_real_time_and_keeps_ts(tmp_path: Path, speed: float) -> None:
    ads = [adv(i, T0 + 0.15 * i) for i in range(6)]
    source = ReplaySource(write_trace(tmp_path / "t.jsonl", ads, bad=2), speed=speed)
    handoff = Handoff(100)
    async with running(source, handoff) as task:
        got = await collect_with_times(handoff, 6)
        await asyncio.wait_for(task, 2)  # a finite trace ends run()
    start = got[0][0]
    for k, (at, a) in enumerate(got):
        expected = 0.15 * k / speed
        assert expected - 0.01 <= at - start <= expected + 0.12, (k, at - start)
        assert a == ads[k]  # ts kept as recorded
    assert source.state is SourceState.STOPPED
    stats = source.stats()
    assert stats["delivered"] == 6
    assert stats["bad_lines"] == 2
    assert stats["status"] == "finished"


async def test_replay_can_shift_ts_to_now(tmp_path: Path) -> None:
    ads = [adv(i, T0 + 0.1 * i) for i in range(4)]
    source = ReplaySource(write_trace(tmp_path / "t.jsonl", ads), shift_ts=True)
    handoff = Handoff(100)
    before = time.time()
    async with running(source, handoff):
        got = await collect_with_times(handoff, 4)
    for k, (_at, a) in enumerate(got):
        assert a.address == ads[k].address
        assert a.ts == pytest.approx(got[0][1].ts + 0.1 * k, abs=1e-6)
        assert before - 0.01 <= a.ts <= time.time() + 0.01


async def test_replay_missing_file_fails_without_raising(tmp_path: Path) -> None:
    source = ReplaySource(tmp_path / "absent.jsonl")
    async with running(source, Handoff(16)) as task:
        await wait_until(lambda: source.state is SourceState.FAILED, what="FAILED")
        assert not task.done()  # waits to be cancelled
        assert not source.healthy(time.monotonic())
        assert "absent.jsonl" in (source.last_error or "")


# -- Simulator --------------------------------------------------------------------------

@needs_simulator
async def test_simulator_is_paced_against_the_wall_clock() -> None:
    source = SimulatedSource("booth", seed=3)
    handoff = Handoff(100_000)
    seen: list[tuple[float, float]] = []
    async with running(source, handoff):
        async with asyncio.timeout(10):
            while time.time() - (seen[0][0] if seen else time.time()) < 1.5:
                for a in await handoff.get_batch():
                    seen.append((time.time(), a.ts))
        assert source.state is SourceState.SCANNING
        assert source.healthy(time.monotonic())
    assert len(seen) > 5
    for delivered_at, ts in seen:
        assert ts <= delivered_at + 0.01  # never ahead of the clock
        assert delivered_at - ts < 0.5  # and not held back
    assert seen[-1][0] - seen[0][0] > 1.0  # spread over time, not dumped at once


@needs_simulator
async def test_simulator_unknown_scenario_fails() -> None:
    source = SimulatedSource("no-such-venue")
    async with running(source, Handoff(16)):
        await wait_until(lambda: source.state is SourceState.FAILED, what="FAILED")
        assert "no-such-venue" in (source.last_error or "")
        assert not source.healthy(time.monotonic())


# -- make_source and the shared contract -------------------------------------------------

def test_make_source_picks_by_config(tmp_path: Path) -> None:
    trace = str(tmp_path / "t.jsonl")
    replay = make_source(Config(scanner=ScannerConfig(source="replay", trace=trace)))
    assert isinstance(replay, ReplaySource)
    sim = make_source(Config(scanner=ScannerConfig(source="simulator", scenario="booth")))
    assert isinstance(sim, SimulatedSource)
    from hallway.sources.bleak import BleakSource

    radio = make_source(Config(scanner=ScannerConfig(adapter="hci1")))
    assert isinstance(radio, BleakSource)
    assert radio.name == "bleak:hci1"
    for source in (replay, sim, radio):
        assert isinstance(source, AdvertisementSource)
        assert source.state is SourceState.STOPPED
    with pytest.raises(SourceError, match=r"scanner\.trace"):
        make_source(Config(scanner=ScannerConfig(source="replay")))


async def test_replay_follows_the_source_contract(tmp_path: Path) -> None:
    ads = [adv(i, T0 + 0.05 * i) for i in range(200)]
    source = ReplaySource(write_trace(tmp_path / "t.jsonl", ads))
    assert source.stats()["state"] == "stopped"
    handoff = Handoff(1000)
    async with running(source, handoff):
        await wait_until(lambda: handoff.stats()["total"] > 0, what="delivery")
        assert source.state is SourceState.SCANNING
        assert source.healthy(time.monotonic())
        assert source.last_error is None
        assert {"state", "status"} <= source.stats().keys()
    assert source.state is SourceState.STOPPED
    assert source.stats()["status"] == "stopped"  # cancelled, not finished
