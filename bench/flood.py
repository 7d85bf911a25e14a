"""BLE spam, a small computer's CPU budget and wedged radios, against the whole daemon.

``hallway run`` (a real subprocess, source = bleak) scans a fake BlueZ on a private
dbus-daemon. Enrolled: 30,000 IRK contacts, of which 100 are phones that come and go with a new
resolvable private address at each visit, and 100 badges (address keys) that come and go. The
venue's normal traffic (``--venue-rate``, 500/s: 40 % from those 200, about one advertisement a
second each, 60 % from 3,000 strangers' resolvable addresses) plays throughout; 100 subscribers
read every event over TCP (one in this process, which also times arrivals; the rest in 4 worker
processes from bench/latency.py).

Runs (``--runs``, all by default):

- ``flood-random``: plus ``--flood-rate`` (1,000/s) advertisements each from a NEW
  non-resolvable random address (BLE spam) for ``--minutes``;
- ``flood-rpa``: the same with new resolvable private addresses, so each costs the resolver a
  trial against every IRK (the IRK budget decides what happens);
- ``quarter-core``: no flood; the daemon confined to one core with a quarter of it (see
  ``confine``), at each of ``--core-rates`` of normal traffic for ``--core-seconds``;
- ``ladder``: wedges injected into the fake BlueZ while the venue plays; the time from each to
  the daemon scanning (and hearing) again, and which step cleared it.

Figures: daemon RSS over time (and its spread after the first 5 minutes, or after the first
third of a shorter run), BlueZ device objects (max), contacts' arrival delay (first
advertisement of a visit -> the subscriber's read of ``arrived``; p50/p99, badges and IRK
phones apart), subscriber latency (advertisement received -> read, p50/p99 over all 100),
drops at the hand-off, the resolver's deferred IRK trials; and to tell the daemon's delays from
the machine's: the daemon's own share (``status`` ``fanout``: reception to the end of the
fan-out), its loop probe, the harness's CPU (fake BlueZ, dbus-daemon, subscriber processes),
the load average, the bench subscriber's p99 per 20 s. ``--daemon-nice -10`` runs the daemon
ahead of the harness; ``--irk-trials-per-s`` sets the trial budget. Figures start once every
contact is loaded.

Confinement: ``systemd-run --scope -p CPUQuota=25% -p AllowedCPUs=0 CMD`` where systemd runs
the machine; else a cgroup made directly: v2 (``cpu.max`` = ``25000 100000``, ``cpuset.cpus``
= 0) or v1 (``cpu.cfs_quota_us`` = 25000 of ``cpu.cfs_period_us`` = 100000; cpuset 0), the
daemon placed in it before it execs. Needs root (or a delegated cgroup).

``--tracker-only`` replays the venue alone (no flood, no daemon, no bus) through the daemon's
own pipeline in trace time, with the same proximity settings, and prints the arrival delays
the tracker itself gives: the floor under the whole daemon's figures.

``--resolver-only TRIALS...`` replays the same venue and RPA flood through the resolver alone
(no daemon): each IRK phone's delay from its first advertisement to its address resolving, at
each IRK trial budget, and the resolver's CPU.

Usage (full scale; needs about 75 minutes):
  .venv/bin/python bench/flood.py --minutes 30
Reduced (what the docs' figures say they used), under the shared bench lock:
  flock /tmp/hallway-bench.lock .venv/bin/python bench/flood.py --minutes 3 \
      --runs flood-random flood-rpa
  flock /tmp/hallway-bench.lock .venv/bin/python bench/flood.py --runs quarter-core \
      --core-seconds 30 --core-rates 500 1000 1500
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
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))  # the test doubles in tests/support

from tests.support.fakebluez import FakeBlueZProcess, PrivateBus  # noqa: E402

from hallway.identity.crypto import make_rpa  # noqa: E402

TOKEN = "bench-token-0123456789abcdef"
BADGES = 100  # address-key contacts that come and go
PHONES = 100  # IRK contacts that come and go (a new RPA each visit)
WORKERS = 4
CGROUP_NAME = "hallway-flood-bench"


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def badge_address(i: int) -> str:
    return f"C0:DE:00:00:{i >> 8:02X}:{i & 0xFF:02X}"


def irk_of(i: int) -> bytes:
    return random.Random(f"irk-{i}").randbytes(16)


# -- setup ---------------------------------------------------------------------------------


def write_contacts(path: Path, irk_contacts: int) -> None:
    with path.open("w") as out:
        for i in range(BADGES):
            out.write(json.dumps({"id": f"badge-{i}", "name": f"Badge {i}", "keys": [
                {"kind": "address", "address": badge_address(i)}]}) + "\n")
        for i in range(irk_contacts):
            out.write(json.dumps({"id": f"phone-{i}", "name": f"Phone {i}", "keys": [
                {"kind": "irk", "irk": irk_of(i).hex()}]}) + "\n")


FORGET_STRANGERS = True
IRK_TRIALS_PER_S: int | None = None  # None: the daemon's default
DAEMON_NICE = 0  # the daemon's niceness against the harness's (which stays at 0)


def write_config(directory: Path, port: int, subscribers: int, db: Path) -> Path:
    config = directory / "hallway.toml"
    forget = "true" if FORGET_STRANGERS else "false"
    config.write_text(
        f'[scanner]\nname = "bench"\nsource = "bleak"\nstart_timeout_s = 2.0\n'
        f"forget_strangers = {forget}\n"
        f"start_retries = 2\nbackoff_max_s = 2.0\nsilence_restart_s = 3.0\n"
        f'[storage]\ndatabase = "{db}"\n'
        f'[server]\ntcp_port = {port}\nunix_socket = ""\ntokens = ["{TOKEN}"]\n'
        f"max_connections = {subscribers + 16}\nqueue_size = 100000\n"
        # every subscriber shares the one token (the default allows 3/4 of max_connections)
        f"max_connections_per_token = {subscribers + 16}\n"
        f'[mdns]\nenabled = false\n[logging]\nlevel = "info"\nformat = "json"\n'
        f"[proximity]\narrive_confirm_s = 1.0\ndepart_confirm_s = 2.0\n")
    if IRK_TRIALS_PER_S is not None:
        with config.open("a") as out:
            out.write(f"[identity]\nirk_trials_per_s = {IRK_TRIALS_PER_S}\n")
    return config


@dataclass
class Venue:
    path: Path
    lines: int
    visits: list[tuple[float, str]]  # (trace time a visit's first advertisement, contact id)


def make_venue(path: Path, *, rate: float, seconds: float, seed: int = 7,
               share: float = 0.4) -> Venue:
    """Badges and IRK phones cycling through visits (``share`` of the advertisements);
    strangers' RPAs filling the rest."""
    rng = random.Random(seed)
    rows: list[tuple[float, str, str, int]] = []
    visits: list[tuple[float, str]] = []
    people = BADGES + PHONES
    gap = people / (rate * share)  # seconds between one person's advertisements
    for i in range(people):
        t = rng.uniform(0, 6)
        while t < seconds:
            if i < BADGES:
                who, address, kind = f"badge-{i}", badge_address(i), "public"
            else:
                k = i - BADGES
                prand = bytes([0x40 | rng.randrange(0x40)]) + rng.randbytes(2)
                who, address, kind = f"phone-{k}", make_rpa(irk_of(k), prand), "random"
            visits.append((t, who))
            stay = rng.uniform(10, 16)
            for end, rssi in ((t + stay * 0.5, -52), (t + stay, -68), (t + stay + 6, -100)):
                while t < min(end, seconds):
                    rows.append((t, address, kind, rssi + rng.randint(-2, 2)))
                    t += gap * rng.uniform(0.8, 1.2)
            # Gone, silent, long enough that a tracker departs them before they come back
            # (its departure takes about 10-15 s here): the contacts really come and go.
            t += rng.uniform(30, 60)
    strangers = [make_rpa(rng.randbytes(16), bytes([0x40 | rng.randrange(0x40)])
                          + rng.randbytes(2)) for _ in range(3000)]
    for n in range(int(rate * (1 - share) * seconds)):
        rows.append((n / (rate * (1 - share)), rng.choice(strangers), "random",
                     rng.randint(-95, -60)))
    rows.sort()
    with path.open("w") as out:
        for ts, address, kind, rssi in rows:
            out.write(json.dumps({"ts": ts, "address": address, "address_type": kind,
                                  "rssi": rssi}) + "\n")
    return Venue(path, len(rows), visits)


# -- confinement -----------------------------------------------------------------------------


def _systemd_usable() -> bool:
    return Path("/run/systemd/system").is_dir() and shutil.which("systemd-run") is not None


def confine_argv(argv: list[str]) -> tuple[list[str], Callable[[], None] | None, str]:
    """``(argv, preexec, how)`` running ``argv`` on one core with a quarter of it."""
    if _systemd_usable():
        return (["systemd-run", "--scope", "--quiet", "-p", "CPUQuota=25%",
                 "-p", "AllowedCPUs=0", *argv], None, "systemd-run --scope CPUQuota=25% "
                "AllowedCPUs=0")
    v2 = Path("/sys/fs/cgroup")
    if (v2 / "cgroup.controllers").is_file() and "cpu" in (v2 / "cgroup.controllers").read_text():
        group = v2 / CGROUP_NAME
        group.mkdir(exist_ok=True)
        (group / "cpu.max").write_text("25000 100000")
        with contextlib.suppress(OSError):
            (group / "cpuset.cpus").write_text("0")
        procs = [group / "cgroup.procs"]
        how = f"cgroup v2 {group}: cpu.max 25000 100000, cpuset.cpus 0"
    else:
        cpu = Path("/sys/fs/cgroup/cpu") / CGROUP_NAME
        cpuset = Path("/sys/fs/cgroup/cpuset") / CGROUP_NAME
        cpu.mkdir(exist_ok=True)
        (cpu / "cpu.cfs_period_us").write_text("100000")
        (cpu / "cpu.cfs_quota_us").write_text("25000")
        cpuset.mkdir(exist_ok=True)
        (cpuset / "cpuset.cpus").write_text("0")
        (cpuset / "cpuset.mems").write_text("0")
        procs = [cpu / "cgroup.procs", cpuset / "cgroup.procs"]
        how = (f"cgroup v1 {cpu} (cpu.cfs_quota_us 25000 of cpu.cfs_period_us 100000) and "
               f"{cpuset} (cpuset.cpus 0)")

    def enter() -> None:
        for path in procs:
            path.write_text(str(os.getpid()))

    return argv, enter, how


def unconfine() -> None:
    for base in (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/cpu"),
                 Path("/sys/fs/cgroup/cpuset")):
        with contextlib.suppress(OSError):
            (base / CGROUP_NAME).rmdir()


# -- the daemon and its clients ----------------------------------------------------------------


async def status(port: int) -> dict[str, Any]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        await reader.readline()
        writer.write((json.dumps({"type": "status", "token": TOKEN}) + "\n").encode())
        await writer.drain()
        reply: dict[str, Any] = json.loads(await reader.readline())
        return reply
    finally:
        writer.close()


@dataclass
class Watcher:
    """One subscriber in this process: event read times and latencies."""

    arrivals: list[tuple[float, str]] = field(default_factory=list)  # (read time, contact)
    latencies: list[tuple[float, float]] = field(default_factory=list)  # (read time, latency)
    events: int = 0

    async def run(self, port: int, ready: asyncio.Event) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
        await reader.readline()
        writer.write((json.dumps({"type": "subscribe", "token": TOKEN}) + "\n").encode())
        await writer.drain()
        await reader.readline()
        ready.set()
        try:
            while line := await reader.readline():
                now = time.time()
                msg = json.loads(line)
                kind = msg.get("type")
                if kind in ("arrived", "zone", "departed"):
                    self.events += 1
                    self.latencies.append((now, now - msg["ts"]))
                    if kind == "arrived":
                        self.arrivals.append((now, msg["contact"]["id"]))
        finally:
            writer.close()


class Rig:
    """Private bus, fake BlueZ, the daemon, 100 subscribers."""

    def __init__(self, directory: Path, db: Path, subscribers: int, *, confined: bool,
                 rfkill: bool = False) -> None:
        self.directory = directory
        self.db = db
        self.subscribers = subscribers
        self.confined = confined
        self.rfkill = rfkill
        self.confinement = ""
        self.bus = PrivateBus(directory / "bus")
        self.fake: FakeBlueZProcess | None = None
        self.daemon: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes]] = []
        self.watcher = Watcher()
        self.watch_task: asyncio.Task[None] | None = None
        self.port = 0
        self.log_path = directory / "daemon.log"

    async def start(self) -> None:
        self.bus.start()
        os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = self.bus.address
        rfkill = self.directory / "dev" / "rfkill" if self.rfkill else None
        if rfkill is not None:
            rfkill.parent.mkdir(exist_ok=True)
            index = self.directory / "sys/class/bluetooth/hci0/rfkill0/index"
            index.parent.mkdir(parents=True, exist_ok=True)
            index.write_text("0\n")
        self.fake = FakeBlueZProcess(self.bus.address, self.directory / "control",
                                     rfkill=rfkill)
        await self.fake.start()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        config = write_config(self.directory, self.port, self.subscribers, self.db)
        # The daemon's loop probe (see Service): the longest the loop was held between reads.
        path = [str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]
        env = {"HALLWAY_LOOP_PROBE_S": "0.005", **os.environ, "PYTHONPATH": os.pathsep.join(path)}
        if self.rfkill:
            env["HALLWAY_TEST_SYSFS"] = str(self.directory / "sys")
            env["HALLWAY_TEST_DEV"] = str(self.directory / "dev")
        argv = [sys.executable, "-m", "hallway", "run", "--config", str(config)]
        preexec = None
        if self.confined:
            argv, preexec, self.confinement = confine_argv(argv)
        if DAEMON_NICE:  # every thread of the daemon (a niceness is per thread on Linux)
            confine = preexec

            def preexec() -> None:
                os.nice(DAEMON_NICE)
                if confine is not None:
                    confine()
        with self.log_path.open("ab") as log:
            self.daemon = subprocess.Popen(argv, env=env, stdout=log, stderr=log,
                                           preexec_fn=preexec)  # noqa: PLW1509
        deadline = time.monotonic() + 300
        while True:
            # Scanning, and every contact loaded (a one-off cost at start: 30,000 IRKs take
            # seconds of CPU, which would otherwise land in the first figures).
            with contextlib.suppress(OSError, ValueError):
                st = await status(self.port)
                if st.get("source_state") == "scanning" and st.get("contacts_loaded"):
                    break
            if time.monotonic() > deadline or self.daemon.poll() is not None:
                raise RuntimeError(f"the daemon did not start scanning; see {self.log_path}")
            await asyncio.sleep(0.25)
        ready = asyncio.Event()
        self.watch_task = asyncio.create_task(self.watcher.run(self.port, ready))
        await asyncio.wait_for(ready.wait(), 30)
        others = self.subscribers - 1
        per = -(-others // WORKERS)
        for w in range(WORKERS):
            count = min(per, others - w * per)
            if count <= 0:
                break
            proc = subprocess.Popen(
                [sys.executable, str(ROOT / "bench" / "latency.py"), "--worker",
                 str(self.directory / f"w{w}.json"), "--port", str(self.port),
                 "--subscribers", str(count)],
                env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            self.workers.append(proc)
        for proc in self.workers:
            assert proc.stdout is not None
            await asyncio.to_thread(proc.stdout.readline)

    async def command(self, cmd: str, **args: Any) -> dict[str, Any]:
        assert self.fake is not None
        return await self.fake.command(cmd, **args)

    async def stop(self) -> list[float]:
        """Stop everything; the workers' latencies (seconds)."""
        latencies: list[float] = []
        for w, proc in enumerate(self.workers):
            if proc.stdin is not None and proc.poll() is None:
                with contextlib.suppress(OSError):
                    proc.stdin.write(b"stop\n")
                    proc.stdin.flush()
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(proc.wait, 30)
            with contextlib.suppress(OSError, ValueError):
                for item in json.loads((self.directory / f"w{w}.json").read_text()):
                    latencies.extend(item["latencies"])
        if self.watch_task is not None:
            self.watch_task.cancel()
            with contextlib.suppress(BaseException):
                await self.watch_task
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.terminate()
            try:
                await asyncio.to_thread(self.daemon.wait, 30)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
        if self.fake is not None:
            await self.fake.stop()
        self.bus.stop()
        os.environ.pop("DBUS_SYSTEM_BUS_ADDRESS", None)
        if self.confined:
            unconfine()
        return latencies

    def other_cpu(self) -> dict[str, float]:
        """CPU seconds so far of the harness: fake BlueZ, dbus-daemon, subscriber workers."""
        out: dict[str, float] = {}
        pids = {"fake_bluez": self.fake.pid if self.fake is not None else None,
                "dbus_daemon": self.bus.pid,
                "workers": None}
        for name, pid in pids.items():
            if pid is not None:
                with contextlib.suppress(OSError):
                    out[name] = cpu_s(pid)
        total = 0.0
        for proc in self.workers:
            with contextlib.suppress(OSError):
                total += cpu_s(proc.pid)
        out["workers"] = total
        out["bench"] = cpu_s(os.getpid())
        return out

    def log_events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out


_PROBE_KEYS = ("loop_lag_ms", "loop_stall_max_ms", "loop_stalls_over_10ms",
               "loop_busy_max_ms", "loop_busy_over_10ms")


def fanout_late(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """The daemon's own share: events fanned out more than 10/50/100 ms after their
    advertisement was received, of all events, between two status reads."""
    b, a = before.get("fanout") or {}, after.get("fanout") or {}
    out: dict[str, Any] = {"events": after["last_seq"] - before["last_seq"]}
    for key in ("over_10ms", "over_50ms", "over_100ms"):
        if key in a:
            out[key] = a[key] - b.get(key, 0)
    out["max_ms_ever"] = a.get("max_ms")
    return out


def windows(latencies: list[tuple[float, float]], start: float, width: float
            ) -> list[tuple[int, int, float]]:
    """``(window start s, events, p99 ms)`` of one subscriber's latencies per ``width`` s."""
    buckets: dict[int, list[float]] = {}
    for read, x in latencies:
        buckets.setdefault(int((read - start) // width), []).append(x)
    return [(int(k * width), len(v), round(pct(v, 0.99) * 1e3, 1))
            for k, v in sorted(buckets.items())]


def arrival_delays(visits: list[tuple[float, str]], play_start: float,
                   arrivals: list[tuple[float, str]]) -> dict[str, list[float]]:
    """For each ``arrived`` read, the delay from the start of that contact's latest visit."""
    starts: dict[str, list[float]] = {}
    for t, who in visits:
        starts.setdefault(who, []).append(play_start + t)
    out: dict[str, list[float]] = {"badge": [], "phone": []}
    for read, who in arrivals:
        begun = [s for s in starts.get(who, []) if s <= read + 0.05]
        if begun:
            out["badge" if who.startswith("badge") else "phone"].append(read - begun[-1])
    return out


# -- runs ----------------------------------------------------------------------------------------


async def run_flood(kind: str, args: argparse.Namespace, db: Path) -> dict[str, Any]:
    seconds = args.minutes * 60
    directory = Path(tempfile.mkdtemp(prefix="hw-flood-"))
    venue = make_venue(directory / "venue.jsonl", rate=args.venue_rate, seconds=seconds + 5)
    rig = Rig(directory, db, args.subscribers, confined=False)
    samples: list[dict[str, float]] = []
    try:
        await rig.start()
        assert rig.daemon is not None
        before = await status(rig.port)
        cpu0 = cpu_s(rig.daemon.pid)
        others0 = rig.other_cpu()
        load0 = os.getloadavg()[0]
        await rig.command("play", path=str(venue.path), rate=None)
        play_start = time.time()  # the answer comes once the trace is read and playing starts
        await rig.command("flood", kind=kind, rate=args.flood_rate,
                          count=int(args.flood_rate * seconds), seed=11)
        t0 = time.monotonic()
        while (elapsed := time.monotonic() - t0) < seconds:
            await asyncio.sleep(min(5.0, seconds - elapsed))
            fake = await rig.command("stats")
            st = await status(rig.port)
            if "source_stats" not in st:
                raise RuntimeError(f"status: {st}")
            samples.append({"t": round(time.monotonic() - t0, 1),
                            "rss_mib": round(rss_mib(rig.daemon.pid), 1),
                            "devices": fake["devices"],
                            "tracked": st["source_stats"].get("tracked_devices", 0),
                            "dropped": st["dropped"] - before["dropped"],
                            "advertisements": st["advertisements"],
                            "load": os.getloadavg()[0],
                            "lane": st.get("trial_lane", {}),
                            **{k: st[k] for k in _PROBE_KEYS if k in st}})
            if args.verbose:
                print(f"  {samples[-1]}", flush=True)
        cpu = cpu_s(rig.daemon.pid) - cpu0
        others = {k: round((v - others0.get(k, 0.0)) / (time.monotonic() - t0), 3)
                  for k, v in rig.other_cpu().items()}
        after = await status(rig.port)
        fake = await rig.command("stats")
        await rig.command("stop_jobs")
        wall = time.monotonic() - t0
    finally:
        worker_latencies = await rig.stop()
        shutil.rmtree(directory, ignore_errors=True)
    delays = arrival_delays(venue.visits, play_start, rig.watcher.arrivals)
    lat = worker_latencies + [x for _, x in rig.watcher.latencies]
    settle = 300.0 if seconds > 600 else seconds / 3
    later = [s["rss_mib"] for s in samples if s["t"] >= settle]
    pruned = after["source_stats"].get("pruned", 0) - before["source_stats"].get("pruned", 0)
    return {
        "run": f"flood-{kind}",
        "seconds": round(wall),
        "venue_rate": args.venue_rate,
        "flood_rate": args.flood_rate,
        "advertisements": after["advertisements"] - before["advertisements"],
        "reported_by_bluez": fake["reported"],
        "dropped": after["dropped"] - before["dropped"],
        "rss_start_mib": samples[0]["rss_mib"] if samples else float("nan"),
        "rss_max_mib": max(s["rss_mib"] for s in samples),
        "rss_after_settle_min_mib": min(later) if later else float("nan"),
        "rss_after_settle_max_mib": max(later) if later else float("nan"),
        "settle_s": settle,
        "devices_max": max(s["devices"] for s in samples),
        "devices_end": samples[-1]["devices"],
        "pruned": pruned,
        "cpu_cores": round(cpu / wall, 3),
        "harness_cpu_cores": others,
        "load_average_start_end": (round(load0, 2), round(os.getloadavg()[0], 2)),
        "events": rig.watcher.events,
        "arrivals_badge": len(delays["badge"]),
        "arrivals_phone": len(delays["phone"]),
        "arrival_badge_p50_s": pct(delays["badge"], 0.5),
        "arrival_badge_p99_s": pct(delays["badge"], 0.99),
        "arrival_phone_p50_s": pct(delays["phone"], 0.5),
        "arrival_phone_p99_s": pct(delays["phone"], 0.99),
        "subscriber_p50_ms": pct(lat, 0.5) * 1e3,
        "subscriber_p99_ms": pct(lat, 0.99) * 1e3,
        "subscriber_over_50ms": sum(1 for x in lat if x > 0.05),
        "daemon_fanout_late": fanout_late(before, after),
        "subscribers_latencies": len(lat),
        "watcher_p99_by_20s": windows(rig.watcher.latencies, play_start, 20.0),
        "samples": samples,
    }


async def run_quarter_core(args: argparse.Namespace, db: Path) -> dict[str, Any]:
    directory = Path(tempfile.mkdtemp(prefix="hw-core-"))
    rig = Rig(directory, db, args.subscribers, confined=True)
    rows = []
    try:
        await rig.start()
        assert rig.daemon is not None
        for rate in args.core_rates:
            venue = make_venue(directory / f"venue-{rate:.0f}.jsonl", rate=rate,
                               seconds=args.core_seconds, seed=int(rate))
            before = await status(rig.port)
            cpu0 = cpu_s(rig.daemon.pid)
            mark = time.time()
            t0 = time.monotonic()
            await rig.command("play", path=str(venue.path), rate=None, wait=True,
                              timeout_s=args.core_seconds * 4 + 60)
            wall = time.monotonic() - t0
            await asyncio.sleep(2.0)
            after = await status(rig.port)
            cpu = cpu_s(rig.daemon.pid) - cpu0
            lat = [x for read, x in rig.watcher.latencies if read >= mark]
            rows.append({
                "rate": rate,
                "sent": venue.lines,
                "advertisements": after["advertisements"] - before["advertisements"],
                "dropped": after["dropped"] - before["dropped"],
                "events": len(lat),
                "subscriber_p50_ms": pct(lat, 0.5) * 1e3,
                "subscriber_p99_ms": pct(lat, 0.99) * 1e3,
                "cpu_cores": round(cpu / wall, 3),
                "loop_lag_ms": after.get("loop_lag_ms"),
                "daemon_fanout_late": fanout_late(before, after),
                "load_average": round(os.getloadavg()[0], 2),
            })
            print(f"  quarter core at {rate:.0f}/s: {rows[-1]}", flush=True)
    finally:
        await rig.stop()
        shutil.rmtree(directory, ignore_errors=True)
    holds = [r["rate"] for r in rows if r["dropped"] == 0 and r["subscriber_p99_ms"] <= 100]
    return {"run": "quarter-core", "confinement": rig.confinement, "rows": rows,
            "highest_rate_that_holds": max(holds) if holds else None}


async def run_ladder(args: argparse.Namespace, db: Path) -> dict[str, Any]:
    directory = Path(tempfile.mkdtemp(prefix="hw-ladder-"))
    rig = Rig(directory, db, args.subscribers, confined=False, rfkill=True)
    results = []
    try:
        await rig.start()
        venue = make_venue(directory / "venue.jsonl", rate=200, seconds=600)
        await rig.command("play", path=str(venue.path), rate=None)

        async def hearing_again(since: float, timeout_s: float = 90
                                ) -> tuple[float, dict[str, Any]]:
            base = (await status(rig.port))["advertisements"]
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                st = await status(rig.port)
                if (st["source_state"] == "scanning" and st["advertisements"] > base + 20
                        and st["source_stats"].get("recovery_rung") == "none"):
                    return time.monotonic() - since, st
                await asyncio.sleep(0.1)
            raise RuntimeError(f"no recovery: {st}")

        async def inject(name: str, *, mode: str, clears: str, end_scan: bool,
                         unclear: bool = False) -> None:
            await asyncio.sleep(3)  # scanning and hearing before the fault
            started = time.monotonic()
            await rig.command("wedge", mode=mode, clears=clears)
            if end_scan:  # the running scan ends: the controller drops off and comes back
                # (not by powering it off, which would clear a wedge that clears that way)
                await rig.command("remove_adapter")
                await asyncio.sleep(0.5)
                await rig.command("add_adapter")
            gave_up_status = None
            if unclear:
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    st = await status(rig.port)
                    if st["source_stats"].get("recovery_rung") == "gave up":
                        gave_up_status = st
                        break
                    await asyncio.sleep(0.2)
                await rig.command("wedge", mode=None)  # someone replugs the adapter
            took, st = await hearing_again(started)
            results.append({"wedge": name, "seconds_to_scanning": round(took, 2),
                            "cleared_by": st["source_stats"].get("cleared_by"),
                            "gave_up_status": None if gave_up_status is None else
                            gave_up_status["source_stats"].get("status")})
            print(f"  {results[-1]}", flush=True)

        await inject("silent until powered off", mode="silent", clears="power", end_scan=False)
        await inject("StartDiscovery failing until powered off", mode="start-fails",
                     clears="power", end_scan=True)
        await inject("StartDiscovery failing until reset (rfkill)", mode="start-fails",
                     clears="reset", end_scan=True)
        # No reset possible (the stand-in rfkill is taken away): the daemon gives up.
        shutil.rmtree(directory / "sys")
        await inject("StartDiscovery failing, no reset possible", mode="start-fails",
                     clears="reset", end_scan=True, unclear=True)
        started = time.monotonic()
        await rig.command("rename_adapter", name="hci1")
        took, st = await hearing_again(started)
        results.append({"wedge": "adapter gone, back as hci1",
                        "seconds_to_scanning": round(took, 2),
                        "cleared_by": f"followed to {st['source_stats'].get('adapter')}"})
        print(f"  {results[-1]}", flush=True)
    finally:
        await rig.stop()
        shutil.rmtree(directory, ignore_errors=True)
    return {"run": "ladder", "silence_restart_s": 3.0, "rows": results}


async def prepare_db(directory: Path, irk_contacts: int) -> tuple[Path, float]:
    db = directory / "hallway.db"
    contacts = directory / "contacts.jsonl"
    write_contacts(contacts, irk_contacts)
    started = time.monotonic()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    await asyncio.to_thread(subprocess.run, [
        sys.executable, "-m", "hallway", "contacts", "import", str(contacts), "--db", str(db)],
        check=True, env=env, capture_output=True)
    return db, time.monotonic() - started


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    shared = Path(tempfile.mkdtemp(prefix="hw-flood-db-"))
    results: list[dict[str, Any]] = []
    try:
        db, took = await prepare_db(shared, args.irk_contacts)
        print(f"{args.irk_contacts:,} IRK contacts + {BADGES} badges imported in {took:.1f} s",
              flush=True)
        for run in args.runs:
            print(f"run {run} ...", flush=True)
            if run in ("flood-random", "flood-rpa"):
                results.append(await run_flood(run.split("-")[1], args, db))
            elif run == "quarter-core":
                results.append(await run_quarter_core(args, db))
            elif run == "ladder":
                results.append(await run_ladder(args, db))
            print(json.dumps({k: v for k, v in results[-1].items() if k != "samples"}),
                  flush=True)
    finally:
        shutil.rmtree(shared, ignore_errors=True)
    return results


def venue_rows(args: argparse.Namespace) -> tuple[Venue, list[dict[str, Any]]]:
    """The venue of a ``--minutes`` run (no flood) and its advertisements as trace rows, for
    the in-process replays (``--resolver-only``, ``--tracker-only``)."""
    directory = Path(tempfile.mkdtemp(prefix="hw-flood-venue-"))
    try:
        venue = make_venue(directory / "venue.jsonl", rate=args.venue_rate,
                           seconds=args.minutes * 60 + 5)
        with (directory / "venue.jsonl").open() as lines:
            return venue, [json.loads(line) for line in lines]
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def resolver_only(args: argparse.Namespace) -> None:
    """The same venue and RPA flood through the resolver alone (no daemon, no bus): how long
    after its first advertisement each IRK phone's address resolves, by trial budget."""
    from hallway.config import IdentityConfig
    from hallway.identity.resolver import Resolver
    from hallway.models import Advertisement, Contact, ContactKey, KeyKind

    seconds = args.minutes * 60
    _, rows = venue_rows(args)
    rng = random.Random(11)
    for n in range(int(args.flood_rate * seconds)):
        raw = bytes([0x40 | rng.randrange(0x40)]) + rng.randbytes(5)
        rows.append({"ts": n / args.flood_rate, "address": ":".join(f"{b:02X}" for b in raw),
                     "address_type": "random", "rssi": rng.randint(-90, -40)})
    rows.sort(key=lambda row: row["ts"])
    stream = [Advertisement(row["ts"], row["address"], row["address_type"], rssi=row["rssi"])
              for row in rows if row["address_type"] == "random"]
    others = random.Random(5)
    contacts = [Contact(f"phone-{k}", "x", keys=(ContactKey(KeyKind.IRK, irk_of(k).hex()),))
                for k in range(PHONES)]
    contacts += [Contact(f"other-{k}", "x",
                         keys=(ContactKey(KeyKind.IRK, others.randbytes(16).hex()),))
                 for k in range(args.irk_contacts - PHONES)]
    print(f"resolver alone: the venue's {len(stream) - int(args.flood_rate * seconds):,} "
          f"resolvable-address advertisements and {int(args.flood_rate * seconds):,} flood "
          f"addresses over {seconds:g} s, {args.irk_contacts:,} IRKs")
    for trials in args.resolver_only:
        resolver = Resolver(IdentityConfig(irk_trials_per_s=trials,
                                           irk_backend=args.irk_backend))
        resolver.set_contacts(contacts, now=0.0)
        first: dict[str, float] = {}
        done: set[str] = set()
        delays: list[float] = []
        cpu = time.thread_time()
        for adv in stream:
            if adv.address in done:
                continue
            first.setdefault(adv.address, adv.ts)
            match = resolver.resolve(adv)
            if match is not None and match.contact_id.startswith("phone-"):
                delays.append(adv.ts - first.pop(adv.address))
                done.add(adv.address)
        cpu = time.thread_time() - cpu
        delays.sort()
        stats = resolver.stats()
        print(f"  [{resolver.irk_backend}] budget {stats['irk_trials_per_s']:,} trials/s: "
              f"{len(delays)} phone addresses resolved, first advertisement -> resolved "
              f"p50 {delays[len(delays) // 2]:.2f} s, p99 {delays[len(delays) * 99 // 100]:.2f} s, "
              f"max {delays[-1]:.2f} s; {stats['irk_cache_misses']:,} trials of "
              f"{args.irk_contacts:,} IRKs, resolver CPU {cpu:.1f} s "
              f"({cpu / seconds:.3f} of a core)")


def tracker_only(args: argparse.Namespace) -> None:
    """The venue without the flood through the pipeline alone, in trace time (see module)."""
    from hallway.config import Config
    from hallway.models import Advertisement, Contact, ContactKey, KeyKind
    from hallway.pipeline import Pipeline

    venue, rows = venue_rows(args)
    pipeline = Pipeline(Config.model_validate(
        {"proximity": {"arrive_confirm_s": 1.0, "depart_confirm_s": 2.0}}))
    contacts = [Contact(f"badge-{i}", "x", keys=(ContactKey(KeyKind.ADDRESS, badge_address(i)),))
                for i in range(BADGES)]
    contacts += [Contact(f"phone-{k}", "x", keys=(ContactKey(KeyKind.IRK, irk_of(k).hex()),))
                 for k in range(PHONES)]
    pipeline.load_contacts(contacts, now=0.0)
    arrivals: list[tuple[float, str]] = []
    departures: list[tuple[float, str]] = []
    next_tick = 1.0
    for row in rows:
        while row["ts"] >= next_tick:
            departures += [(next_tick, e.contact_id) for e in pipeline.tick(next_tick)
                           if e.type.value == "departed"]
            next_tick += 1.0
        adv = Advertisement(row["ts"], row["address"], row["address_type"], rssi=row["rssi"])
        for event in pipeline.feed(adv):
            if event.type.value == "arrived":
                arrivals.append((row["ts"], event.contact_id))
            elif event.type.value == "departed":
                departures.append((row["ts"], event.contact_id))
    delays = arrival_delays(venue.visits, 0.0, arrivals)
    # An arrival that follows a departure declared after the visit had begun: the contact
    # was still present when it came back, was departed, and arrived again.
    late_departure = 0
    for read, who in arrivals:
        begun = max(t for t, w in venue.visits if w == who and t <= read + 0.05)
        if any(begun <= t <= read for t, w in departures if w == who):
            late_departure += 1
    print(f"tracker alone (trace time, no flood): {len(venue.visits):,} visits, "
          f"{len(arrivals)} arrivals, {len(departures)} departures")
    for kind, values in delays.items():
        values.sort()
        print(f"  {kind}: arrival delay p50 {pct(values, 0.5):.2f} s, "
              f"p99 {pct(values, 0.99):.2f} s, max {values[-1]:.2f} s over {len(values)}")
    print(f"  arrivals after a departure declared once the visit had begun: {late_departure}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", nargs="+", default=["flood-random", "flood-rpa",
                                                      "quarter-core", "ladder"])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--flood-rate", type=float, default=1000.0)
    parser.add_argument("--venue-rate", type=float, default=500.0)
    parser.add_argument("--irk-contacts", type=int, default=30_000)
    parser.add_argument("--subscribers", type=int, default=100)
    parser.add_argument("--core-rates", type=float, nargs="+",
                        default=[250.0, 500.0, 1000.0, 1500.0])
    parser.add_argument("--core-seconds", type=float, default=60.0)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--verbose", action="store_true", help="print each 5 s sample")
    parser.add_argument("--daemon-nice", type=int, default=0,
                        help="run the daemon at this niceness (e.g. -10, as root: ahead of the "
                             "fake BlueZ, dbus-daemon and the subscribers; to tell the "
                             "daemon's own delays from competing for the cores)")
    parser.add_argument("--irk-trials-per-s", type=int,
                        help="identity.irk_trials_per_s (default: the daemon's)")
    parser.add_argument("--keep-strangers-in-bleak", action="store_true",
                        help="scanner.forget_strangers = false (to measure what it saves)")
    parser.add_argument("--resolver-only", type=int, nargs="+", metavar="TRIALS_PER_S",
                        help="replay the venue and the RPA flood through the resolver alone "
                        "at these IRK budgets (0: none) and print the phones' resolve delays")
    parser.add_argument("--irk-backend", default="auto", choices=["auto", "python"],
                        help="with --resolver-only")
    parser.add_argument("--tracker-only", action="store_true",
                        help="replay the venue (no flood) through the pipeline alone and print "
                        "the tracker's own arrival delays")
    args = parser.parse_args()
    if args.tracker_only:
        tracker_only(args)
        return
    if args.resolver_only:
        resolver_only(args)
        return
    if shutil.which("dbus-daemon") is None:
        raise SystemExit("dbus-daemon is needed (apt-get install dbus)")
    global FORGET_STRANGERS, IRK_TRIALS_PER_S, DAEMON_NICE  # noqa: PLW0603 - one switch per run
    FORGET_STRANGERS = not args.keep_strangers_in_bleak
    IRK_TRIALS_PER_S = args.irk_trials_per_s
    DAEMON_NICE = args.daemon_nice
    results = asyncio.run(main_async(args))
    print(f"\nhallway flood bench: {args.minutes:g} min per flood, {args.irk_contacts:,} IRK "
          f"contacts, {args.subscribers} subscribers, {os.cpu_count()} cores")
    for result in results:
        print(f"\n== {result['run']}")
        for key, value in result.items():
            if key in ("run", "samples", "rows"):
                continue
            print(f"  {key:<28} {value:.2f}" if isinstance(value, float)
                  else f"  {key:<28} {value}")
        for row in result.get("rows", []):
            print(f"  {row}")
        if "samples" in result:
            step = max(1, len(result["samples"]) // 12)
            series = ", ".join(f"{s['t']:.0f}s {s['rss_mib']:.0f}MiB/{s['devices']}dev"
                               for s in result["samples"][::step])
            print(f"  RSS/devices over time: {series}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
