"""Check-in over GATT: what a write costs the daemon, and what a flood of bad ones does.

Runs the real daemon (``hallway run``, bleak source, ``[checkin] enabled``) against the fake
BlueZ on a private bus, both as child processes, and drives the fake's simulated centrals:

1. **valid**: ``--valid`` check-ins, one connection each (connect, write, disconnect), as
   phones do; the round trip of each write (fake -> dbus-daemon -> daemon -> back) and the
   daemon's CPU per write.
2. **flood**: ``--rate`` bad writes a second (wrong length, wrong version, unknown identifier)
   from ``--centrals`` attackers for ``--seconds``; the daemon's CPU per write, what it refused
   and how, its loop lag and memory, and how late a badge that walks up meanwhile arrives.

Prints one JSON object. Full scale: ``python bench/checkin.py --valid 500 --rate 1000
--seconds 60``; CI-ish scale: ``--valid 100 --rate 1000 --seconds 10``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))  # the test doubles in tests/support

from tests.support.fakebluez import FakeBlueZProcess, PrivateBus  # noqa: E402

from hallway.identity.crypto import derive_rpik, interval_number, rpi_for_interval  # noqa: E402
from hallway.parsing.checkin import encode_checkin  # noqa: E402

KEY = bytes.fromhex("75c734c6dd1a782de7a965da5eb93125")
BADGE = "C4:7C:8D:6A:12:34"
TOKEN = "bench-token-0123456789abcdef"


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def status(sock_path: Path) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(sock_path))
        reader = sock.makefile("rb")
        reader.readline()
        sock.sendall((json.dumps({"type": "status", "token": TOKEN}) + "\n").encode())
        result: dict[str, Any] = json.loads(reader.readline())
        return result


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def wait_arrival(sock_path: Path, contact: str, timeout_s: float) -> float | None:
    """Seconds until ``contact`` is present (asked of the daemon every 50 ms)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(str(sock_path))
            reader = sock.makefile("rb")
            reader.readline()
            sock.sendall((json.dumps({"type": "present", "token": TOKEN}) + "\n").encode())
            reply = json.loads(reader.readline())
        if any(p["contact"]["id"] == contact for p in reply.get("present", [])):
            return time.monotonic() - start
        await asyncio.sleep(0.05)
    return None


async def main(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="hw-ci-"))
    bus = PrivateBus(tmp)
    bus.start()
    env = {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": bus.address,
           "PYTHONPATH": str(ROOT / "src")}
    os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = bus.address
    fake = FakeBlueZProcess(bus.address, tmp / "control")
    await fake.start()
    contacts = tmp / "contacts.jsonl"
    contacts.write_text(
        json.dumps({"id": "c-phone", "name": "Phone",
                    "keys": [{"kind": "hallway-v1", "key": KEY.hex()}]}) + "\n"
        + json.dumps({"id": "c-badge", "name": "Badge",
                      "keys": [{"kind": "address", "address": BADGE}]}) + "\n")
    subprocess.run([sys.executable, "-m", "hallway", "contacts", "import", str(contacts),
                    "--db", str(tmp / "hallway.db")], check=True, env=env, capture_output=True)
    config = tmp / "hallway.toml"
    config.write_text(
        f'[scanner]\nsource = "bleak"\n[storage]\ndatabase = "{tmp / "hallway.db"}"\n'
        f'[server]\ntcp_enabled = false\nunix_socket = "{tmp / "hallway.sock"}"\n'
        f'tokens = ["{TOKEN}"]\n[mdns]\nenabled = false\n[logging]\nlevel = "info"\n'
        f'[checkin]\nenabled = true\n')
    log = (tmp / "daemon.log").open("wb")
    daemon = subprocess.Popen([sys.executable, "-m", "hallway", "run", "--config", str(config)],
                              env=env, stdout=log, stderr=subprocess.STDOUT)
    result: dict[str, Any] = {"valid": args.valid, "rate": args.rate, "seconds": args.seconds,
                              "centrals": args.centrals}
    try:
        sock_path = tmp / "hallway.sock"
        deadline = time.monotonic() + 30
        while True:
            stats = await fake.command("stats")
            if stats["advertisements"] and stats["applications"] and sock_path.exists():
                break
            if time.monotonic() > deadline:
                raise RuntimeError("the daemon did not register")
            await asyncio.sleep(0.1)
        rpi = rpi_for_interval(derive_rpik(KEY), interval_number(time.time()))
        value = encode_checkin(rpi, heard_rssi=-65, tx_power=-60).hex()
        # 1. valid check-ins, one connection each
        cpu0 = cpu_s(daemon.pid)
        rtts = []
        for n in range(args.valid):
            started = time.perf_counter()
            address = f"6A:00:00:00:{n >> 8:02X}:{n & 255:02X}"
            answer = await fake.command("central", address=address, values=[value])
            rtts.append((time.perf_counter() - started) * 1000)
            if answer["tally"] != {"ok": 1}:
                raise RuntimeError(f"check-in refused: {answer}")
        cpu1 = cpu_s(daemon.pid)
        result["valid_round_trip_ms_p50"] = round(pct(rtts, 0.5), 2)
        result["valid_round_trip_ms_p99"] = round(pct(rtts, 0.99), 2)
        result["valid_daemon_cpu_us_per_checkin"] = round(
            (cpu1 - cpu0) / max(1, args.valid) * 1e6, 1)
        # 2. the flood, with a badge walking up 3 s in
        before = status(sock_path)["checkin"]
        rss0 = rss_mib(daemon.pid)
        cpu0 = cpu_s(daemon.pid)
        flood = asyncio.create_task(fake.command(
            "hostile", centrals=args.centrals, rate=args.rate, duration_s=args.seconds,
            timeout_s=args.seconds * 5 + 60))
        await asyncio.sleep(min(3.0, args.seconds / 3))
        rss_mid = rss_mib(daemon.pid)
        now = time.time()
        badge = [{"ts": now + i * 0.1, "address": BADGE, "rssi": -55}
                 for i in range(int(args.seconds * 10))]
        trace = tmp / "badge.jsonl"
        trace.write_text("".join(json.dumps(row) + "\n" for row in badge))
        await fake.command("play", path=str(trace), rate=None, wait=False)
        result["badge_arrival_s_during_flood"] = await wait_arrival(sock_path, "c-badge", 20)
        lags = []
        rss_series = []
        while not flood.done():
            lags.append(status(sock_path)["loop_lag_ms"])
            rss_series.append(rss_mib(daemon.pid))
            await asyncio.sleep(0.5)
        tally = (await flood)["tally"]
        cpu1 = cpu_s(daemon.pid)
        after = status(sock_path)
        counts = after["checkin"]
        writes = counts["writes"] - before["writes"]
        result["flood_writes_answered"] = writes
        result["flood_writes_per_s"] = round(writes / args.seconds, 1)
        result["flood_daemon_cpu_us_per_write"] = round((cpu1 - cpu0) / max(1, writes) * 1e6, 1)
        result["flood_daemon_cpu_share"] = round((cpu1 - cpu0) / args.seconds, 3)
        result["flood_refused"] = {k: counts[k] - before[k] for k in (
            "bad_length", "bad_magic", "bad_version", "unknown_rpi", "rate_limited",
            "too_many_centrals", "bad_request")}
        result["flood_accepted"] = counts["accepted"] - before["accepted"]
        result["flood_disconnects"] = counts["disconnects"] - before["disconnects"]
        result["flood_central_replies"] = tally
        result["loop_lag_ms_max"] = max(lags) if lags else None
        quarters = [rss_series[min(len(rss_series) - 1, len(rss_series) * q // 4)]
                    for q in (1, 2, 3)] if rss_series else []
        result["rss_mib"] = {"before": round(rss0, 1), "3s_in": round(rss_mid, 1),
                             "quarters": [round(v, 1) for v in quarters],
                             "after": round(rss_mib(daemon.pid), 1)}
        result["source_state_after"] = after["source_state"]
    finally:
        daemon.terminate()
        try:
            daemon.wait(20)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
        log.close()
        await fake.stop()
        bus.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--valid", type=int, default=100)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--centrals", type=int, default=40)
    print(json.dumps(asyncio.run(main(parser.parse_args())), indent=1))
