"""A private system bus with a fake BlueZ, for tests that run bleak's real BlueZ backend.

``bluez_env(monkeypatch)`` starts a ``dbus-daemon`` of its own in a short temp folder, points
``DBUS_SYSTEM_BUS_ADDRESS`` at it, and runs ``tests/support/fakebluez.py`` on it;
everything is stopped by PID on exit. Tests import it (it is not a conftest plugin).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hallway.models import Advertisement
from hallway.sources.base import AdvertisementSource, Handoff
from tests.support.fakebluez import FakeBlueZProcess, PrivateBus

needs_dbus = pytest.mark.skipif(shutil.which("dbus-daemon") is None,
                                reason="dbus-daemon is not installed")


@dataclass
class BlueZEnv:
    """The private bus, the fake BlueZ process on it, and their folder."""

    bus: PrivateBus
    fake: FakeBlueZProcess
    directory: Path

    async def new_fake(self, **kwargs: Any) -> FakeBlueZProcess:
        """Start a fresh fake BlueZ (after the old one was stopped)."""
        self.fake = FakeBlueZProcess(self.bus.address, self.directory / "control", **kwargs)
        await self.fake.start()
        return self.fake


@contextlib.asynccontextmanager
async def bluez_env(monkeypatch: pytest.MonkeyPatch, **fake_kwargs: Any
                    ) -> AsyncIterator[BlueZEnv]:
    """A running private bus with a fake BlueZ on it (see the module docstring)."""
    directory = Path(tempfile.mkdtemp(prefix="hw-bz-"))  # short: Unix socket paths are limited
    bus = PrivateBus(directory)
    bus.start()
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", bus.address)
    env = BlueZEnv(bus, FakeBlueZProcess(bus.address, directory / "control", **fake_kwargs),
                   directory)
    try:
        await env.fake.start()
        yield env
    finally:
        await env.fake.stop()
        bus.stop()
        shutil.rmtree(directory, ignore_errors=True)


@contextlib.asynccontextmanager
async def running(source: AdvertisementSource, handoff: Handoff
                  ) -> AsyncIterator[asyncio.Task[None]]:
    """Run ``source`` for the duration of the block; cancel it after and check it stops."""
    task = asyncio.create_task(source.run(handoff), name="source-under-test")
    try:
        yield task
    finally:
        task.cancel()
        async with asyncio.timeout(10):
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def wait_until(predicate: Callable[[], bool], *, timeout_s: float = 10.0,
                     what: str = "condition") -> float:
    """Poll ``predicate`` until true; return the seconds it took; fail after ``timeout_s``."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.01)
    return time.monotonic() - start


async def drain(handoff: Handoff, *, count: int, timeout_s: float = 10.0) -> list[Advertisement]:
    """Take ``count`` advertisements out of ``handoff`` (fail after ``timeout_s``)."""
    got: list[Advertisement] = []
    async with asyncio.timeout(timeout_s):
        while len(got) < count:
            got.extend(await handoff.get_batch(count - len(got)))
    return got


async def first_delivery(handoff: Handoff, *, after: Callable[[], Awaitable[object]],
                         timeout_s: float = 10.0) -> float:
    """Run ``after()``, then return seconds until ``handoff`` accepts something new."""
    before = handoff.stats()["total"]
    await after()
    start = time.monotonic()
    await wait_until(lambda: handoff.stats()["total"] > before, timeout_s=timeout_s,
                     what="advertisements to flow again")
    return time.monotonic() - start
