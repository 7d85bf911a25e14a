"""What receiving advertisements costs: bleak's BlueZ backend against our own D-Bus match.

Issue #18 asks, among the ways to drop strangers before anything per-address is kept, for
"your own D-Bus matching where bleak's cache is the problem". Both receivers here run in a
process of their own (``--receiver``), scanning the fake BlueZ (its own process) on a private
dbus-daemon, and report the CPU time of their process per advertisement:

- ``bleak``: ``BleakSource`` as the daemon runs it (bleak's manager parses every signal into its
  per-device cache, the scanner builds a ``BLEDevice`` and ``AdvertisementData``, our callback
  screens; ``forget_strangers`` drops a stranger's entries at once), every advertisement a
  stranger's (the screen says no), pruning off (measured apart: it is the same for both);
- ``match``: a dbus-fast ``MessageBus`` of our own with match rules for BlueZ's
  ``InterfacesAdded`` and device ``PropertiesChanged`` only, a handler that reads the address
  (from the object path for a change), type, RSSI, manufacturer and service data straight from
  the unmarshalled body and screens, keeping nothing per address; discovery started with
  ``SetDiscoveryFilter`` and ``StartDiscovery`` itself.

dbus-fast unmarshals every message it receives before any handler sees it, so neither receiver
can reject a stranger before the body is parsed; the match saves bleak's bookkeeping only.

Streams: ``flood`` (every advertisement from a new random address: an ``InterfacesAdded``
each) and ``venue`` (200 devices repeating: ``PropertiesChanged``), at ``--rate`` for
``--seconds``.

Usage: .venv/bin/python bench/dbus_match.py [--rate 1500] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))  # the test doubles in tests/support

from dbus_fast import BusType, Message, MessageType, Variant  # noqa: E402
from dbus_fast.aio import MessageBus  # noqa: E402
from tests.support.fakebluez import FakeBlueZProcess, PrivateBus  # noqa: E402

from hallway.config import ScannerConfig  # noqa: E402
from hallway.models import Advertisement  # noqa: E402
from hallway.sources.base import Handoff, SourceState  # noqa: E402
from hallway.sources.bleak import BleakSource  # noqa: E402

ADAPTER = "/org/bluez/hci0"
DEVICE_IFACE = "org.bluez.Device1"


def never(_a: str, _t: str, _m: Mapping[int, bytes], _s: Mapping[str, bytes],
          _u: Sequence[str]) -> bool:
    """The flood's screen: every advertisement is a stranger's."""
    return False


def always(_a: str, _t: str, _m: Mapping[int, bytes], _s: Mapping[str, bytes],
           _u: Sequence[str]) -> bool:
    """The venue's screen: every advertisement could be a contact's (it goes on)."""
    return True


class Count:
    def __init__(self) -> None:
        self.n = 0

    def heard(self, _ts: float) -> None:
        self.n += 1


async def receive_bleak(count: Count, screen: Any) -> tuple[Any, Any]:
    config = ScannerConfig(queue_size=100_000, silence_restart_s=600, start_timeout_s=5,
                           device_prune_s=3600, stranger_prune_s=3600, max_devices=1_000_000)
    handoff = Handoff(config.queue_size, screen=screen, heard=count.heard)
    source = BleakSource(config)
    forward = handoff.put_nowait

    def put(adv: Any) -> None:  # what the screen let through is counted too, then dropped
        count.n += 1
        forward(adv)  # nothing consumes: the queue keeps the newest
    handoff.put_nowait = put  # type: ignore[method-assign]
    task = asyncio.create_task(source.run(handoff))
    while source.state is not SourceState.SCANNING:
        await asyncio.sleep(0.01)

    async def stop() -> None:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
    return stop, source


async def receive_match(count: Count, screen: Any) -> tuple[Any, Any]:
    bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    prefix = ADAPTER + "/dev_"
    wall = time.time
    empty: dict[Any, Any] = {}
    kept: list[Advertisement] = []  # as the hand-off would hold them

    def on_message(msg: Message) -> None:
        if msg.message_type is not MessageType.SIGNAL:
            return
        member = msg.member
        if member == "PropertiesChanged":
            path = msg.path or ""
            if not path.startswith(prefix):
                return
            changed = msg.body[1]
            rssi = changed.get("RSSI")
            if rssi is None:
                return
            address = path[len(prefix):].replace("_", ":")
            kind = "random"  # not in a change: a receiver keeps it from InterfacesAdded
        elif member == "InterfacesAdded":
            props = msg.body[1].get(DEVICE_IFACE)
            if props is None:
                return
            changed = props
            address = props["Address"].value
            kind = props["AddressType"].value
            rssi = props.get("RSSI")
        else:
            return
        mfr = changed.get("ManufacturerData")
        svc = changed.get("ServiceData")
        manufacturer = {k: v.value for k, v in mfr.value.items()} if mfr is not None else empty
        service = {k: v.value for k, v in svc.value.items()} if svc is not None else empty
        if not screen(address, kind, manufacturer, service, ()):
            count.heard(wall())
            return
        kept.append(Advertisement(wall(), address, kind, rssi.value if rssi is not None else
                                  -127, None, None, manufacturer, service, (), "hci0"))
        if len(kept) > 100_000:
            kept.clear()
        count.n += 1

    bus.add_message_handler(on_message)
    for rule in (
        "type='signal',sender='org.bluez',interface='org.freedesktop.DBus.ObjectManager',"
        "member='InterfacesAdded'",
        "type='signal',sender='org.bluez',interface='org.freedesktop.DBus.Properties',"
        f"member='PropertiesChanged',arg0='{DEVICE_IFACE}',path_namespace='{ADAPTER}'",
    ):
        await bus.call(Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                               interface="org.freedesktop.DBus", member="AddMatch",
                               signature="s", body=[rule]))
    for member, signature, body in (
        ("SetDiscoveryFilter", "a{sv}", [{"Transport": Variant("s", "le"),
                                          "DuplicateData": Variant("b", True)}]),
        ("StartDiscovery", "", []),
    ):
        reply = await bus.call(Message(destination="org.bluez", path=ADAPTER,
                                       interface="org.bluez.Adapter1", member=member,
                                       signature=signature, body=body))
        if reply.message_type is MessageType.ERROR:
            raise RuntimeError(f"{member}: {reply.error_name}")

    async def stop() -> None:
        bus.disconnect()
    return stop, None


async def receiver_main(kind: str, stream: str) -> None:
    """One receiver: report readiness, then CPU seconds and count whenever asked."""
    count = Count()
    screen = never if stream == "flood" else always
    stop, _ = await (receive_bleak(count, screen) if kind == "bleak"
                     else receive_match(count, screen))
    print("@@READY", flush=True)
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        if line.strip() == "stop":
            break
        print("@@" + json.dumps({"cpu": time.process_time(), "heard": count.n}), flush=True)
    await stop()


async def measure(kind: str, stream: str, rate: float, seconds: float) -> dict[str, Any]:
    directory = Path(tempfile.mkdtemp(prefix="hw-match-"))
    bus = PrivateBus(directory / "bus")
    bus.start()
    fake = FakeBlueZProcess(bus.address, directory / "control")
    proc: subprocess.Popen[str] | None = None
    try:
        await fake.start()
        env = {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": bus.address,
               "PYTHONPATH": str(ROOT / "src")}
        proc = subprocess.Popen(
            [sys.executable, __file__, "--receiver", kind, "--streams", stream], env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert proc.stdin is not None
        assert proc.stdout is not None
        stdin, stdout = proc.stdin, proc.stdout

        async def reply() -> str:
            """The receiver's next line of ours (its log lines go to the same stdout)."""
            while line := await asyncio.to_thread(stdout.readline):
                if line.startswith("@@"):
                    return line[2:]
            raise RuntimeError(f"the {kind} receiver ended")

        if (await reply()).strip() != "READY":
            raise RuntimeError(f"the {kind} receiver did not start")

        async def ask() -> dict[str, float]:
            stdin.write("?\n")
            stdin.flush()
            answer: dict[str, float] = json.loads(await reply())
            return answer

        await asyncio.sleep(1.0)  # start-up settled
        before = await ask()
        count = int(rate * seconds)
        if stream == "flood":
            await fake.command("flood", kind="random", rate=rate, count=count, wait=True,
                               timeout_s=seconds * 10 + 30)
        else:
            await fake.command("steady", devices=200, rate=rate, duration_s=seconds, wait=True,
                               timeout_s=seconds * 10 + 30)
        after = await ask()
        for _ in range(50):  # the tail
            if after["heard"] - before["heard"] >= count:
                break
            await asyncio.sleep(0.1)
            after = await ask()
        stats = await fake.command("stats")
        heard = int(after["heard"] - before["heard"])
        cpu = after["cpu"] - before["cpu"]
        return {"receiver": kind, "stream": stream, "rate": rate, "sent": count,
                "heard": heard, "cpu_s": round(cpu, 3),
                "us_per_advertisement": round(cpu / count * 1e6, 1),
                "cores_at_rate": round(cpu / seconds, 3), "bluez_signals": stats.get("signals")}
    finally:
        if proc is not None:
            with contextlib.suppress(OSError):
                assert proc.stdin is not None
                proc.stdin.write("stop\n")
                proc.stdin.flush()
            try:
                await asyncio.to_thread(proc.wait, 10)
            except subprocess.TimeoutExpired:
                proc.kill()
        await fake.stop()
        bus.stop()
        shutil.rmtree(directory, ignore_errors=True)


async def main_async(args: argparse.Namespace) -> None:
    rows = []
    for stream in args.streams:
        for kind in ("bleak", "match"):
            rows.append(await measure(kind, stream, args.rate, args.seconds))
            print(f"  {rows[-1]}", flush=True)
    print(f"\nreceiving advertisements, {args.rate:g}/s for {args.seconds:g} s each, "
          f"{os.cpu_count()} cores (load average {os.getloadavg()[0]:.1f})")
    print(f"  {'stream':<8} {'receiver':<8} {'heard':>8} {'µs/adv':>8} {'cores':>6}")
    for row in rows:
        print(f"  {row['stream']:<8} {row['receiver']:<8} {row['heard']:>8} "
              f"{row['us_per_advertisement']:>8} {row['cores_at_rate']:>6}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--receiver", choices=("bleak", "match"))
    parser.add_argument("--rate", type=float, default=1500.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--streams", nargs="+", default=["flood", "venue"])
    args = parser.parse_args()
    if args.receiver:
        asyncio.run(receiver_main(args.receiver, args.streams[0]))
        return
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
