"""Crashes: SIGKILL at random moments of a busy venue, a full disk, a read-only database.

The daemon replays a busy venue (hundreds of badges coming and going, dozens of events a
second) while the CLI imports contacts alongside it; both are killed with SIGKILL at random
moments. After each kill the store must pass ``PRAGMA integrity_check``, hold every contact and
key whose import returned (an import killed halfway is all there or not at all), never give a
``seq`` to two different events, hold every event a subscriber was sent, and let a subscriber
resume with ``since_seq`` into one gapless sequence. A full disk (a small tmpfs) and a read-only
database (a bind mount remounted ``ro``) must end in a clear error and a non-zero exit, with the
store still sound.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.reliability_env import (
    Subscriber,
    badge_address,
    env,
    hallway,
    record,
    scaled,
    start_daemon,
    write_config,
    write_jsonl,
)

pytestmark = pytest.mark.timeout(scaled(300, 1800))

BUSY_PROXIMITY = {
    "initial_interval_s": 0.2, "quiet_after_intervals": 2.0, "quiet_min_s": 0.6,
    "fade_timeout_s": 1.0, "quiet_hold_s": 1.0, "arrive_confirm_s": 0.4,
    "depart_confirm_s": 0.0, "steady_s": 0.0, "zone_confirm_s": 0.4,
}


def busy_venue(folder: Path, *, badges: int, duration_s: float, seed: int = 1
               ) -> tuple[Path, Path]:
    """A trace of ``badges`` badges each coming (2-4 s, every 0.2 s) and going (2-4 s) over
    ``duration_s``, and the contacts file that holds them."""
    rng = random.Random(seed)
    start = time.time()
    rows: list[dict[str, Any]] = []
    contacts = []
    for index in range(badges):
        address = badge_address(index)
        contacts.append({"id": f"c-busy-{index:04d}", "name": f"Busy Badge {index}",
                         "tags": ["busy"], "keys": [{"kind": "address", "address": address}]})
        t = start + rng.uniform(0, 3)
        while t < start + duration_s:
            on, off = rng.uniform(2, 4), rng.uniform(2, 4)
            level = rng.choice((-50, -62, -72))
            moment = t
            while moment < min(t + on, start + duration_s):
                rows.append({"ts": round(moment, 4), "address": address,
                             "address_type": "public", "rssi": level + rng.randint(-2, 2)})
                moment += 0.2
            t += on + off
    trace = write_jsonl(folder / "busy-trace.jsonl", rows, sort_by="ts")
    return trace, write_jsonl(folder / "busy-contacts.jsonl", contacts)


def integrity(db: Path) -> str:
    """``PRAGMA integrity_check`` of the store as found (WAL recovered by a fresh reader)."""
    with sqlite3.connect(f"file:{db}?mode=rw", uri=True, timeout=10) as conn:
        answer = conn.execute("PRAGMA integrity_check").fetchone()[0]
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    return str(answer)


@dataclass
class Snapshot:
    """What the store holds after a kill."""

    contacts: set[str]
    keys: set[tuple[str, str, str]]
    events: dict[int, str]
    last_seq: int


def snapshot(db: Path) -> Snapshot:
    """Read contacts, keys, the event log and the seq high-water mark."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as conn:
        contacts = {row[0] for row in conn.execute("SELECT id FROM contacts")}
        keys = {tuple(row) for row in conn.execute("SELECT contact_id, kind, value FROM keys")}
        events = {int(s): str(p) for s, p in conn.execute("SELECT seq, payload FROM events")}
        last = int(conn.execute("SELECT value FROM meta WHERE key = 'last_seq'").fetchone()[0])
    return Snapshot(contacts, keys, events, last)  # type: ignore[arg-type]


# -- contacts imported alongside, some imports killed ----------------------------------------


@dataclass
class Importer:
    """Imports batches of new contacts with the CLI in a thread; kills some halfway."""

    db: Path
    folder: Path
    rng: random.Random
    committed: dict[str, set[tuple[str, str, str]]] = field(default_factory=dict)
    uncertain: list[dict[str, set[tuple[str, str, str]]]] = field(default_factory=list)
    killed: int = 0
    failed: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _batch: int = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="importer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(120)

    def _write_batch(self) -> tuple[Path, dict[str, set[tuple[str, str, str]]]]:
        self._batch += 1
        size = self.rng.choice((5, 50, 400))
        lines, expected = [], {}
        for j in range(size):
            cid = f"c-imp-{self._batch:03d}-{j:04d}"
            key = self.rng.randbytes(16).hex()
            address = badge_address(self._batch * 10_000 + j, prefix=0x5C)
            lines.append({"id": cid, "name": f"Imported {self._batch}/{j}",
                          "keys": [{"kind": "hallway-v1", "key": key},
                                   {"kind": "address", "address": address}]})
            expected[cid] = {(cid, "hallway-v1", key), (cid, "address", address)}
        path = write_jsonl(self.folder / f"import-{self._batch:03d}.jsonl", lines)
        return path, expected

    def _run(self) -> None:
        while not self._stop.is_set():
            path, expected = self._write_batch()
            proc = subprocess.Popen(
                [sys.executable, "-m", "hallway", "contacts", "import", str(path), "--db",
                 str(self.db)], env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            kill_after = self.rng.uniform(0.3, 1.5) if self.rng.random() < 0.3 else None
            try:
                _, err = proc.communicate(timeout=kill_after or 120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                self.killed += 1
                self.uncertain.append(expected)
                continue
            if proc.returncode == 0:
                self.committed.update(expected)
            else:
                self.failed.append(err.decode(errors="replace")[-500:])


# -- the SIGKILL loop -------------------------------------------------------------------------


def _alternation_faults(events: list[dict[str, Any]]) -> list[str]:
    state: dict[str, str] = {}
    faults = []
    for event in events:
        cid, kind = event["contact"]["id"], event["type"]
        before = state.get(cid, "departed")
        if kind == "arrived" and before != "departed":
            faults.append(f"seq {event['seq']}: {cid} arrived twice")
        if kind in ("departed", "zone") and before == "departed":
            faults.append(f"seq {event['seq']}: {cid} {kind} while absent")
        if kind in ("arrived", "departed"):
            state[cid] = kind
    return faults


def test_sigkill_during_busy_venue(tmp_path: Path) -> None:
    kills = scaled(20, 100)
    started = time.monotonic()
    trace, contacts = busy_venue(tmp_path, badges=200, duration_s=60)
    config = write_config(tmp_path, trace=trace, proximity=BUSY_PROXIMITY,
                          logging={"level": "info"})
    db = tmp_path / "hallway.db"
    hallway("contacts", "import", str(contacts), "--db", str(db))
    rng = random.Random(2026)
    importer = Importer(db, tmp_path, random.Random(7))
    importer.start()
    received: list[dict[str, Any]] = []
    seen_payloads: dict[int, str] = {}
    resumed_gapless = 0
    restart_s: list[float] = []
    try:
        for cycle in range(kills):
            launched = time.monotonic()
            daemon = start_daemon(config, log_name=f"daemon-{cycle:03d}.log")
            try:
                daemon.wait_listening(30)
                since = received[-1]["seq"] if received else None
                sub = Subscriber(daemon.port, **({"since_seq": since} if since else {}))
                restart_s.append(time.monotonic() - launched)
                time.sleep(rng.uniform(0.2, 1.5))
            finally:
                daemon.kill()
            sub.close()
            got = sub.events()
            if since is not None and got:
                assert got[0]["seq"] == since + 1, (cycle, since, got[0])
                resumed_gapless += 1
            received.extend(got)
            # The store after the kill.
            assert integrity(db) == "ok", f"cycle {cycle}"
            snap = snapshot(db)
            for seq, payload in snap.events.items():
                assert seen_payloads.setdefault(seq, payload) == payload, f"seq {seq} reused"
            assert not snap.events or snap.last_seq >= max(snap.events)
            for event in got:
                logged = snap.events.get(event["seq"])
                assert logged is not None, event
                assert json.loads(logged) == event
    finally:
        importer.stop()
    seqs = [e["seq"] for e in received]
    assert seqs == list(range(1, len(seqs) + 1)), "the resumed stream has a gap or a repeat"
    final = snapshot(db)
    for cid, keys in importer.committed.items():
        assert cid in final.contacts, f"imported contact {cid} lost"
        assert keys <= final.keys, f"a key of {cid} lost"
    for batch in importer.uncertain:
        stored = [cid for cid in batch if cid in final.contacts]
        assert len(stored) in (0, len(batch)), "a killed import left half a batch"
    assert not importer.failed, importer.failed[:2]
    faults = _alternation_faults(received)
    record("crash", kills=kills, events_received=len(seqs), events_logged=len(final.events),
           resumed_gapless=resumed_gapless, imports_committed=len(importer.committed),
           imports_killed=importer.killed, contacts=len(final.contacts),
           restart_to_subscribed_s_max=round(max(restart_s), 2),
           alternation_faults=len(faults), seconds=round(time.monotonic() - started, 1))
    assert resumed_gapless >= kills // 2
    assert not faults, faults[:5]


# -- a full disk and a read-only database -----------------------------------------------------


@contextlib.contextmanager
def mounted(target: Path, *args: str) -> Iterator[Path]:
    """``mount ARGS TARGET`` for the block (skip with the reason if mounting is not allowed)."""
    target.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None:
        pytest.skip("no mount command here")
    done = subprocess.run(["mount", *args, str(target)], capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        print(f"skipping: mount {' '.join(args)} failed: {done.stderr.strip()}")
        pytest.skip(f"mounting is not permitted here: {done.stderr.strip()}")
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], capture_output=True, check=False)


def remount_read_only(target: Path) -> None:
    """Make a bind mount read-only (skip if not permitted)."""
    done = subprocess.run(["mount", "-o", "remount,bind,ro", str(target)], capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot remount read-only here: {done.stderr.strip()}")


def fill(folder: Path, *, leave_kib: int) -> Path:
    """A filler file that leaves about ``leave_kib`` KiB free on ``folder``'s file system."""
    stats = os.statvfs(folder)
    free = stats.f_bavail * stats.f_frsize
    filler = folder / "filler"
    with filler.open("wb") as handle:
        handle.truncate(0)
        chunk = b"\0" * (64 * 1024)
        left = max(free - leave_kib * 1024, 0)
        with contextlib.suppress(OSError):
            while left > 0:
                left -= handle.write(chunk[: min(len(chunk), left)])
    return filler


def test_disk_full_exits_with_a_clear_error(tmp_path: Path) -> None:
    started = time.monotonic()
    trace, contacts = busy_venue(tmp_path, badges=200, duration_s=60)
    with mounted(tmp_path / "small", "-t", "tmpfs", "-o", "size=4m", "tmpfs") as small:
        db = small / "hallway.db"
        config = write_config(tmp_path, trace=trace, proximity=BUSY_PROXIMITY,
                              storage={"database": str(db), "write_failure_exit_s": 2.0},
                              logging={"level": "info"})
        hallway("contacts", "import", str(contacts), "--db", str(db))
        filler = fill(small, leave_kib=256)
        daemon = start_daemon(config, log_name="daemon-full.log")
        try:
            daemon.wait_listening(30)
            sub = Subscriber(daemon.port)
            code = daemon.proc.wait(60)
        finally:
            daemon.kill()
        sub.close()
        took_s = time.monotonic() - started
        output = daemon.log_text()
        assert code != 0
        assert "database or disk is full" in output.splitlines()[-1], output[-2000:]
        assert "Traceback" not in output
        filler.unlink()
        assert integrity(db) == "ok"
        snap = snapshot(db)
        assert len(snap.contacts) == 200
        for event in sub.events():  # whatever was sent had been logged
            assert event["seq"] in snap.events
        # With room again, the daemon runs and seq goes on.
        again = start_daemon(config, log_name="daemon-after-full.log")
        try:
            again.wait_ready(30)
            resumed = Subscriber(again.port, since_seq=snap.last_seq)
            _, event = resumed.wait_for(lambda m: m.get("type") in ("arrived", "departed"),
                                        timeout_s=20)
            resumed.close()
            assert event["seq"] > snap.last_seq
            assert again.stop() == 0
        finally:
            again.kill()
        assert integrity(db) == "ok"
    record("disk-full", exit_code=code, events_before_full=len(snap.events),
           seconds_to_exit=round(took_s, 1), message=output.splitlines()[-1][-120:])


def test_read_only_database_is_refused_clearly(tmp_path: Path) -> None:
    trace, contacts = busy_venue(tmp_path, badges=20, duration_s=10)
    writable = tmp_path / "rw"
    writable.mkdir()
    db = writable / "hallway.db"
    hallway("contacts", "import", str(contacts), "--db", str(db))
    before = db.read_bytes()
    with mounted(tmp_path / "ro", "--bind", str(writable)) as view:
        remount_read_only(view)
        config = write_config(tmp_path, trace=trace,
                              storage={"database": str(view / "hallway.db")})
        daemon = start_daemon(config, log_name="daemon-ro.log")
        try:
            code = daemon.proc.wait(30)
        finally:
            daemon.kill()
        output = daemon.log_text()
        assert code != 0
        assert "read-only" in output.splitlines()[-1], output[-2000:]
        imported = hallway("contacts", "import", str(contacts), "--db", str(view / "hallway.db"),
                           check=False)
        assert imported.returncode != 0
        assert "read-only" in imported.stderr
    assert db.read_bytes() == before
    assert integrity(db) == "ok"
    record("read-only", exit_code=code, message=output.splitlines()[-1][-120:])
