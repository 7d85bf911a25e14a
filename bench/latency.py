"""Event latency and CPU of the whole daemon over bleak's real BlueZ backend.

A fake BlueZ on a private dbus-daemon plays a venue at a fixed rate (1,000/s and 5,000/s by
default): 90 % strangers on rotating addresses, 10 % from 200 enrolled badges that come and go
(arrive, change zone, walk out), so events keep flowing. ``hallway run`` (a real subprocess,
source = bleak) resolves, tracks and publishes; 100 subscribers read every event over TCP (from 4
subscriber processes, as separate apps would).

Figures, per rate:
- daemon latency: from the moment bleak handed the causing advertisement to the daemon (the
  event's ``ts`` is that moment) to the event's line being read by each subscriber, p50/p99;
- the bus hop: from the fake BlueZ's send to a bare bleak scanner's callback, measured in the
  same run by a probe process (each advertisement carries its send time), p50/p99;
- end to end, send -> subscriber: each event's daemon latency plus a hop drawn from the probe's
  measured hops, p50/p99 (and the p99 upper bound: the two p99s summed);
- CPU per advertisement of the daemon and of the probe (a bare bleak scanner with the daemon's
  scanner options whose callback only counts, and times every 4th hop), from /proc over the
  same window, and their ratio; the daemon's CPU share and how much of it is in the kernel.

HALLWAY_BENCH_PROFILE=FILE runs the daemon under cProfile (HALLWAY_BENCH_PROFILE_CPU=1: timed
by the main thread's CPU clock instead of the wall clock); read FILE with pstats.

With ``--tls`` the daemon serves TLS (its self-signed certificate) and every subscriber
connects over TLS 1.3: the difference to a plain run is TLS's cost per event.

Usage: .venv/bin/python bench/latency.py [--rates 1000 5000] [--seconds 20] [--subscribers 100]
                                         [--tls]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))  # the test doubles in tests/support

from tests.support.fakebluez import STAMP_COMPANY, FakeBlueZProcess, PrivateBus  # noqa: E402

TOKEN = "bench-token-0123456789abcdef"
BADGES = 200
TICKS = os.sysconf("SC_CLK_TCK")
WORKERS = 4  # subscriber processes
HOP_SAMPLE = 4  # the probe times every 4th advertisement's bus hop
USE_TLS = False  # set by --tls


def client_tls() -> ssl.SSLContext | None:
    """The subscribers' TLS context (no CA: the bench trusts its own daemon), or None."""
    if not USE_TLS:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def cpu_times(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICKS, int(fields[12]) / TICKS


def thread_times(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of each thread of a process so far, by thread id."""
    out: dict[int, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            out[int(task.name)] = (int(fields[11]) + int(fields[12])) / TICKS
    return out


def badge_address(i: int) -> str:
    return f"C0:DE:00:00:{i >> 8:02X}:{i & 0xFF:02X}"


def make_venue(path: Path, *, rate: float, seconds: float, seed: int = 7) -> int:
    """A trace: badges cycling through visits, strangers filling the rest of ``rate``."""
    rng = random.Random(seed)
    rows: list[tuple[float, str, str, int]] = []
    badge_rate = rate * 0.10
    per_badge_gap = BADGES / badge_rate  # seconds between one badge's advertisements
    for i in range(BADGES):
        t = rng.uniform(0, 6)
        while t < seconds:
            # A visit: close (immediate), then across the room (near/far), then walking out.
            stay = rng.uniform(5, 9)
            for end, rssi in ((t + stay * 0.5, -52), (t + stay, -70), (t + stay + 8, -100)):
                while t < min(end, seconds):
                    rows.append((t, badge_address(i), "public", rssi + rng.randint(-2, 2)))
                    t += per_badge_gap * rng.uniform(0.8, 1.2)
            t += rng.uniform(2, 6)  # gone, silent
    strangers = [
        f"{rng.randint(0x40, 0x7F):02X}:" + ":".join(f"{rng.randint(0, 255):02X}"
                                                      for _ in range(5))
        for _ in range(3000)
    ]
    stranger_count = int(rate * 0.90 * seconds)
    for n in range(stranger_count):
        rows.append((n / (rate * 0.90), rng.choice(strangers), "random", rng.randint(-95, -60)))
    rows.sort()
    with path.open("w") as out:
        for ts, address, kind, rssi in rows:
            out.write(json.dumps({"ts": ts, "address": address, "address_type": kind,
                                  "rssi": rssi}) + "\n")
    return len(rows)


def write_setup(directory: Path, port: int, subscribers: int) -> Path:
    contacts = directory / "contacts.jsonl"
    contacts.write_text("".join(
        json.dumps({"id": f"badge-{i}", "name": f"Badge {i}",
                    "keys": [{"kind": "address", "address": badge_address(i)}]}) + "\n"
        for i in range(BADGES)))
    config = directory / "hallway.toml"
    config.write_text(
        # forget_strangers off: the daemon parses (and counts) every advertisement the bare
        # scanner hears, so CPU per advertisement compares like for like
        f'[scanner]\nname = "bench"\nsource = "bleak"\nforget_strangers = false\n'
        f'[storage]\ndatabase = "{directory / "hallway.db"}"\n'
        f'[server]\ntcp_port = {port}\nunix_socket = ""\ntokens = ["{TOKEN}"]\n'
        f"max_connections = {subscribers + 16}\nmax_connections_per_token = {subscribers + 8}\n"
        "queue_size = 100000\n" + ("tls = true\n" if USE_TLS else "") +
        '[mdns]\nenabled = false\n[logging]\nlevel = "warning"\nformat = "json"\n'
        "[proximity]\narrive_confirm_s = 1.0\ndepart_confirm_s = 2.0\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    subprocess.run([sys.executable, "-m", "hallway", "contacts", "import", str(contacts),
                    "--db", str(directory / "hallway.db")], check=True, env=env,
                   capture_output=True)
    return config


async def probe_main(out: Path, seconds: float) -> None:
    """A bare bleak scanner, set up as the daemon's BleakSource sets up its own (adapter,
    active, DuplicateData): its callback counts, and on every HOP_SAMPLE-th advertisement
    keeps the send->callback hop from the stamp (so it stays close to an empty callback)."""
    from bleak import BleakScanner

    count = 0
    hops: list[float] = []

    def callback(_device: Any, data: Any) -> None:
        nonlocal count
        count += 1
        if count % HOP_SAMPLE:
            return
        stamp = data.manufacturer_data.get(STAMP_COMPANY)
        if stamp is not None and len(stamp) == 8:
            hops.append(time.time() - struct.unpack("<d", stamp)[0])

    scanner = BleakScanner(callback, scanning_mode="active",
                           bluez={"adapter": "hci0", "filters": {"DuplicateData": True}})
    await scanner.start()
    print("PROBE-READY", flush=True)
    await asyncio.sleep(seconds)
    await scanner.stop()
    out.write_text(json.dumps({"count": count, "hops": hops}))


class Subscriber:
    """One well-behaved app: reads every line, keeping (read time - event ts) per event."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.seqs: list[int] = []

    async def run(self, port: int, ready: asyncio.Event, counter: list[int]) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20,
                                                       ssl=client_tls())
        await reader.readline()
        writer.write((json.dumps({"type": "subscribe", "token": TOKEN}) + "\n").encode())
        await writer.drain()
        await reader.readline()
        counter[0] += 1
        if counter[0] >= counter[1]:
            ready.set()
        try:
            while line := await reader.readline():
                now = time.time()
                msg = json.loads(line)
                if "seq" in msg and msg.get("type") in ("arrived", "zone", "departed"):
                    self.latencies.append(now - msg["ts"])
                    self.seqs.append(msg["seq"])
        finally:
            writer.close()


async def worker_main(port: int, count: int, out: Path) -> None:
    """A process of ``count`` subscribers (apps are separate processes, not one loop)."""
    subs = [Subscriber() for _ in range(count)]
    ready = asyncio.Event()
    counter = [0, count]
    tasks = [asyncio.create_task(sub.run(port, ready, counter)) for sub in subs]
    await asyncio.wait_for(ready.wait(), 30)
    print("WORKER-READY", flush=True)
    await asyncio.to_thread(sys.stdin.readline)  # told to stop
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    out.write_text(json.dumps([{"latencies": s.latencies, "seqs": s.seqs} for s in subs]))


async def status(port: int) -> dict[str, Any]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_tls())
    await reader.readline()
    writer.write((json.dumps({"type": "status", "token": TOKEN}) + "\n").encode())
    await writer.drain()
    reply: dict[str, Any] = json.loads(await reader.readline())
    writer.close()
    return reply


async def run_rate(rate: float, seconds: float, subscribers: int) -> dict[str, Any]:
    directory = Path(tempfile.mkdtemp(prefix="hw-lat-"))
    bus = PrivateBus(directory)
    bus.start()
    os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = bus.address
    fake = FakeBlueZProcess(bus.address, directory / "control")
    daemon: subprocess.Popen[bytes] | None = None
    probe: subprocess.Popen[bytes] | None = None
    try:
        await fake.start()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        config = write_setup(directory, port, subscribers)
        trace = directory / "venue.jsonl"
        lines = make_venue(trace, rate=rate, seconds=seconds)
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        profile = _profile_args()
        daemon = subprocess.Popen([sys.executable, *profile, "run", "--config", str(config)],
                                  env=env, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                reply = await status(port)
                if reply.get("source_state") == "scanning":
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("daemon did not start scanning")
            await asyncio.sleep(0.2)
        probe_out = directory / "probe.json"
        probe = subprocess.Popen([sys.executable, __file__, "--probe", str(probe_out),
                                  "--seconds", str(seconds + 4)], env=env,
                                 stdout=subprocess.PIPE)
        assert probe.stdout is not None
        await asyncio.to_thread(probe.stdout.readline)
        per_worker = -(-subscribers // WORKERS)
        workers = []
        for w in range(WORKERS):
            count = min(per_worker, subscribers - w * per_worker)
            if count <= 0:
                break
            proc = subprocess.Popen(
                [sys.executable, __file__, "--worker", str(directory / f"w{w}.json"),
                 "--port", str(port), "--subscribers", str(count),
                 *(["--tls"] if USE_TLS else [])],
                env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            workers.append(proc)
        for proc in workers:
            assert proc.stdout is not None
            await asyncio.to_thread(proc.stdout.readline)
        before = await status(port)
        cpu0 = {"daemon": cpu_times(daemon.pid), "probe": cpu_times(probe.pid)}
        threads0 = thread_times(daemon.pid)
        wall0 = time.monotonic()
        await fake.command("play", path=str(trace), rate=None, stamp=True, wait=True,
                           timeout_s=seconds * 4 + 60)
        await asyncio.sleep(1.0)
        wall = time.monotonic() - wall0
        cpu1 = {"daemon": cpu_times(daemon.pid), "probe": cpu_times(probe.pid)}
        threads1 = thread_times(daemon.pid)
        after = await status(port)
        await asyncio.to_thread(probe.wait, 60)
        probe_result = json.loads(probe_out.read_text())
        subs = []
        for w, proc in enumerate(workers):
            assert proc.stdin is not None
            proc.stdin.write(b"stop\n")
            proc.stdin.flush()
            await asyncio.to_thread(proc.wait, 30)
            for item in json.loads((directory / f"w{w}.json").read_text()):
                sub = Subscriber()
                sub.latencies, sub.seqs = item["latencies"], item["seqs"]
                subs.append(sub)
    finally:
        for proc in (probe, daemon):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(20)
        await fake.stop()
        bus.stop()
        os.environ.pop("DBUS_SYSTEM_BUS_ADDRESS", None)
        shutil.rmtree(directory, ignore_errors=True)

    daemon_adv = after["advertisements"] - before["advertisements"]
    main_thread = threads1.get(daemon.pid, 0.0) - threads0.get(daemon.pid, 0.0)
    other_threads = sorted((threads1[t] - threads0.get(t, 0.0) for t in threads1
                            if t != daemon.pid), reverse=True)
    latencies = [x for sub in subs for x in sub.latencies]
    hops = probe_result["hops"]
    rng = random.Random(1)
    combined = [x + rng.choice(hops) for x in latencies] if hops else []
    complete = all(sub.seqs == subs[0].seqs for sub in subs)
    daemon_user = cpu1["daemon"][0] - cpu0["daemon"][0]
    daemon_sys = cpu1["daemon"][1] - cpu0["daemon"][1]
    daemon_cpu = daemon_user + daemon_sys
    probe_cpu = sum(cpu1["probe"]) - sum(cpu0["probe"])
    daemon_per_adv = daemon_cpu / max(daemon_adv, 1)
    probe_per_adv = probe_cpu / max(probe_result["count"], 1)
    return {
        "rate": rate,
        "trace_lines": lines,
        "daemon_advertisements": daemon_adv,
        "dropped": after["dropped"] - before["dropped"],
        "events": len(subs[0].seqs),
        "samples": len(latencies),
        "every_subscriber_got_every_event": complete,
        "daemon_p50_ms": pct(latencies, 0.50) * 1e3,
        "daemon_p99_ms": pct(latencies, 0.99) * 1e3,
        "hop_p50_ms": pct(hops, 0.50) * 1e3,
        "hop_p99_ms": pct(hops, 0.99) * 1e3,
        "e2e_p50_ms": pct(combined, 0.50) * 1e3,
        "e2e_p99_ms": pct(combined, 0.99) * 1e3,
        "e2e_p99_bound_ms": (pct(latencies, 0.99) + pct(hops, 0.99)) * 1e3,
        "probe_advertisements": probe_result["count"],
        "daemon_cpu_share": daemon_cpu / wall,
        "daemon_sys_share": daemon_sys / max(daemon_cpu, 1e-9),
        "daemon_us_per_adv": daemon_per_adv * 1e6,
        "probe_us_per_adv": probe_per_adv * 1e6,
        "main_thread_share": main_thread / max(daemon_user + daemon_sys, 1e-9),
        "other_threads": " ".join(f"{x:.2f}" for x in other_threads if x > 0) or "-",
        "cpu_ratio": daemon_per_adv / probe_per_adv if probe_per_adv else float("nan"),
    }


def _profile_args() -> list[str]:
    """Interpreter arguments that start ``hallway``, under cProfile if HALLWAY_BENCH_PROFILE=FILE.

    HALLWAY_BENCH_PROFILE_CPU=1 times the main thread's CPU instead of the wall clock, so
    time spent waiting for the loop's next event does not dominate the profile.
    """
    out = os.environ.get("HALLWAY_BENCH_PROFILE")
    if not out:
        return ["-m", "hallway"]
    clock = "time.thread_time" if os.environ.get("HALLWAY_BENCH_PROFILE_CPU") == "1" else (
        "time.perf_counter")
    code = ("import cProfile, runpy, sys, time\n"
            f"p = cProfile.Profile({clock})\n"
            "sys.argv = ['hallway', *sys.argv[1:]]\n"
            "p.enable()\n"
            "try:\n    runpy.run_module('hallway', run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            f"finally:\n    p.disable()\n    p.dump_stats({out!r})\n")
    return ["-c", code]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rates", type=float, nargs="+", default=[1000.0, 5000.0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--subscribers", type=int, default=100)
    parser.add_argument("--probe", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--tls", action="store_true", help="serve and subscribe over TLS")
    args = parser.parse_args()
    global USE_TLS  # noqa: PLW0603 - one switch for the whole bench, set once here
    USE_TLS = args.tls
    if args.worker:
        asyncio.run(worker_main(args.port, args.subscribers, args.worker))
        return
    if args.probe:
        asyncio.run(probe_main(args.probe, args.seconds))
        return
    if shutil.which("dbus-daemon") is None:
        raise SystemExit("dbus-daemon is needed (apt-get install dbus)")
    results = [asyncio.run(run_rate(rate, args.seconds, args.subscribers))
               for rate in args.rates]
    print(f"hallway latency, {args.subscribers} subscribers, {args.seconds:.0f} s per rate, "
          f"{os.cpu_count()} cores, {'TLS' if USE_TLS else 'plain TCP'}")
    keys = [
        ("rate", "rate (adv/s)", "{:.0f}"),
        ("daemon_advertisements", "advertisements into the daemon", "{:d}"),
        ("probe_advertisements", "advertisements into the bare scanner", "{:d}"),
        ("dropped", "dropped at the hand-off", "{:d}"),
        ("events", "events", "{:d}"),
        ("samples", "event reads measured", "{:d}"),
        ("every_subscriber_got_every_event", "every subscriber got every event", "{}"),
        ("daemon_p50_ms", "daemon: bleak -> subscriber p50 (ms)", "{:.2f}"),
        ("daemon_p99_ms", "daemon: bleak -> subscriber p99 (ms)", "{:.2f}"),
        ("hop_p50_ms", "bus hop: send -> bleak p50 (ms)", "{:.2f}"),
        ("hop_p99_ms", "bus hop: send -> bleak p99 (ms)", "{:.2f}"),
        ("e2e_p50_ms", "end to end p50 (ms)", "{:.2f}"),
        ("e2e_p99_ms", "end to end p99 (ms)", "{:.2f}"),
        ("e2e_p99_bound_ms", "end to end p99 upper bound (ms)", "{:.2f}"),
        ("daemon_cpu_share", "daemon CPU share (cores)", "{:.3f}"),
        ("daemon_sys_share", "daemon CPU: kernel part", "{:.2f}"),
        ("main_thread_share", "daemon CPU: main thread's part", "{:.2f}"),
        ("other_threads", "daemon CPU: other threads (s)", "{}"),
        ("daemon_us_per_adv", "daemon CPU per advertisement (us)", "{:.1f}"),
        ("probe_us_per_adv", "bare bleak scanner CPU per adv (us)", "{:.1f}"),
        ("cpu_ratio", "daemon / bare scanner CPU ratio", "{:.2f}"),
    ]
    width = max(len(label) for _, label, _ in keys)
    for key, label, fmt in keys:
        cells = "  ".join(f"{fmt.format(r[key]):>10}" for r in results)
        print(f"{label:<{width}}  {cells}")


if __name__ == "__main__":
    main()
