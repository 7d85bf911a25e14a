"""Abusive clients against a running daemon on loopback, bounded in count and time.

While a busy venue plays, a well-behaved subscriber measures event latency first alone (the
quiet baseline), then while abusers run side by side: 1,000 connections that never
authenticate, slow-loris partial lines, 1 MiB lines, invalid JSON and invalid UTF-8, wrong
tokens at a high rate from one peer, and subscribers that never read. The subscriber must get
every event, in order, with p99 latency within twice the baseline; the daemon's memory must
stay bounded; every abuser must be refused or cut off as SPEC §6 says; wrong tokens are
rate-limited per peer and logged at WARNING once per streak. Abusers use their own loopback
addresses (127.0.0.0/8), so the per-peer limits of one do not touch another; they run in their
own process at a lower priority and the subscriber in another, so that on one shared machine
neither's own CPU use is charged to the daemon. Below a 10 ms baseline the CI check compares
against 10 ms (scheduler jitter); bench/reliability.py reports the plain ratio.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import ssl
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.reliability_env import (
    ROOT,
    SCALE,
    TOKEN,
    Daemon,
    client_tls,
    env,
    hallway,
    record,
    scaled,
    start_daemon,
    start_subscriber_process,
    write_config,
)
from tests.test_crash import BUSY_PROXIMITY, busy_venue

pytestmark = pytest.mark.timeout(scaled(300, 1800))

IDLE_CONNECTIONS = 1000
MAX_CONNECTIONS = 256
AUTH_TIMEOUT_S = 3.0
MAX_LINE = 65536
WRONG_TOKEN_PEER = "127.0.0.66"
GOOD_PEER = "127.0.0.10"
RSS_LIMIT_KIB = 400 * 1024
NOISE_FLOOR_MS = 10.0
STALL_MS = 250.0  # CI scale: the subscriber is never held up this long by the abusers
"""Below this a p99 is scheduler jitter on a shared 2-core machine: the CI check compares
against ``max(baseline, floor)``; bench/reliability.py reports the plain ratio."""


@dataclass
class Tally:
    """What the abusers saw."""

    counts: Counter[str] = field(default_factory=Counter)

    def add(self, what: str, n: int = 1) -> None:
        self.counts[what] += n


async def _connect(port: int, source_ip: str, *, rcvbuf: int | None = None
                   ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.bind((source_ip, 0))
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return await asyncio.open_connection(sock=sock, limit=4 * MAX_LINE)


async def _error_code(reader: asyncio.StreamReader, timeout_s: float) -> str:
    """Read until an error line or the end; its code, ``closed`` or ``timeout``."""
    try:
        async with asyncio.timeout(timeout_s):
            while line := await reader.readline():
                msg = json.loads(line)
                if msg.get("type") == "error":
                    return f"{msg.get('code')}: {msg.get('message')}"
    except TimeoutError:
        return "timeout"
    except (ConnectionError, ValueError):
        return "closed"
    return "closed"


def _close(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        writer.transport.abort()


async def idle_flood(port: int, tally: Tally, stop: asyncio.Event) -> None:
    """Open IDLE_CONNECTIONS connections that never say anything; hold them."""
    writers = []
    try:
        for i in range(IDLE_CONNECTIONS):
            if stop.is_set():
                break
            try:
                _, writer = await _connect(port, f"127.0.{1 + i // 250}.{1 + i % 250}")
            except OSError:
                tally.add("idle_connect_failed")
                continue
            writers.append(writer)
            tally.add("idle_opened")
            if i % 25 == 24:
                await asyncio.sleep(0.1)  # 1,000 in about 4 s
        await stop.wait()
    finally:
        for writer in writers:
            if writer.transport.is_closing():
                tally.add("idle_closed_by_server")
            _close(writer)


async def slow_loris(port: int, tally: Tally, stop: asyncio.Event, *, count: int = 50) -> None:
    """Connections that dribble a line one byte every 0.3 s and never finish it."""

    async def one(i: int) -> None:
        try:
            reader, writer = await _connect(port, f"127.0.20.{1 + i}")
        except OSError:
            tally.add("loris_connect_failed")
            return
        started = time.monotonic()
        text = b'{"type": "subscribe", "token": "' + b"x" * 10_000
        outcome = asyncio.create_task(_error_code(reader, 60))
        try:
            for byte in text:
                if stop.is_set() or outcome.done():
                    break
                writer.write(bytes([byte]))
                await asyncio.sleep(0.3)
            code = await outcome if outcome.done() else "still open"
            tally.add(f"loris {code.split(':')[0]}")
            tally.add(f"loris said: {code.split(':', 1)[-1].strip()}")
            if code.startswith("unauthorized"):
                tally.counts["loris_cut_after_ms"] = max(
                    tally.counts["loris_cut_after_ms"], int((time.monotonic() - started) * 1000))
        finally:
            outcome.cancel()
            _close(writer)

    await asyncio.gather(*(one(i) for i in range(count)))


async def big_lines(port: int, tally: Tally, stop: asyncio.Event) -> None:
    """1 MiB lines, one connection after another (about 10 a second)."""
    payload = b"[" * (1 << 20) + b"\n"
    i = 0
    while not stop.is_set():
        i += 1
        try:
            reader, writer = await _connect(port, f"127.0.30.{1 + i % 200}")
            writer.write(payload)
            code = await _error_code(reader, 10)
            tally.add(f"big {code.split(':')[0]}")
            _close(writer)
        except OSError:
            tally.add("big_connect_failed")
        await asyncio.sleep(0.1)


async def garbage_lines(port: int, tally: Tally, stop: asyncio.Event) -> None:
    """Invalid JSON and invalid UTF-8 lines (about 40 connections a second)."""
    lines = [b"\xff\xfe\xfd\n", b"{not json\n", b'{"type": "subscribe", "token": "\xc3\x28"}\n',
             b"[1, 2, 3]\n", b'"just a string"\n', b"\x00" * 100 + b"\n"]
    i = 0
    while not stop.is_set():
        i += 1
        try:
            reader, writer = await _connect(port, f"127.0.40.{1 + i % 200}")
            writer.write(lines[i % len(lines)])
            code = await _error_code(reader, 10)
            tally.add(f"garbage {code.split(':')[0]}")
            _close(writer)
        except OSError:
            tally.add("garbage_connect_failed")
        await asyncio.sleep(0.025)


async def wrong_tokens(port: int, tally: Tally, stop: asyncio.Event) -> None:
    """Wrong tokens from one peer, as fast as the answers come (at most 200 a second)."""
    while not stop.is_set():
        try:
            reader, writer = await _connect(port, WRONG_TOKEN_PEER)
            writer.write(b'{"type": "subscribe", "token": "not-the-token-0123456789"}\n')
            code = await _error_code(reader, 10)
            if "too many" in code:
                tally.add("wrong_token refused at once")
            elif code.startswith("unauthorized"):
                tally.add("wrong_token rejected")
            else:
                tally.add(f"wrong_token {code}")
            _close(writer)
        except OSError:
            tally.add("wrong_token_connect_failed")
        await asyncio.sleep(0.005)


def _last_words(sock: socket.socket, timeout_s: float) -> str:
    """Read a socket to its end; the code of the last error line, or ``open``."""
    sock.settimeout(timeout_s)
    data = b""
    try:
        while chunk := sock.recv(1 << 20):
            data += chunk
    except TimeoutError:
        return "open"
    except ConnectionResetError:
        return "reset"
    for line in reversed(data.splitlines()):
        with contextlib.suppress(ValueError):
            msg = json.loads(line)
            if msg.get("type") == "error":
                return str(msg.get("code"))
    return "closed"


async def non_readers(port: int, tally: Tally, stop: asyncio.Event, *, count: int = 3) -> None:
    """Valid subscribers (resuming from the start) that never read a byte until the end."""
    socks = []
    for i in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.bind((f"127.0.50.{1 + i}", 0))
        await asyncio.to_thread(sock.connect, ("127.0.0.1", port))
        sock.sendall(json.dumps({"type": "subscribe", "token": TOKEN, "since_seq": 0}).encode()
                     + b"\n")
        socks.append(sock)
    await stop.wait()
    for sock in socks:
        # A cut-off subscriber finds "lagged" at the end of what it was sent.
        outcome = await asyncio.to_thread(_last_words, sock, 15)
        tally.add(f"non_reader {outcome}")
        sock.close()


async def abuse(port: int, seconds: float) -> Counter[str]:
    """Every abuser at once for ``seconds``; what they saw."""
    tally = Tally()
    stop = asyncio.Event()
    abusers = [
        asyncio.create_task(idle_flood(port, tally, stop)),
        asyncio.create_task(slow_loris(port, tally, stop)),
        asyncio.create_task(big_lines(port, tally, stop)),
        asyncio.create_task(garbage_lines(port, tally, stop)),
        asyncio.create_task(wrong_tokens(port, tally, stop)),
        asyncio.create_task(non_readers(port, tally, stop)),
    ]
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.wait_for(asyncio.gather(*abusers), timeout=60)
    return tally.counts


# -- TLS abusers ------------------------------------------------------------------------------

HANDSHAKE_FLOOD_PEER = "127.0.0.77"
NEWCOMER_PEER = "127.0.0.88"


async def _tls_connect(port: int, source_ip: str, timeout_s: float = 10.0
                       ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((source_ip, 0))
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    async with asyncio.timeout(timeout_s):
        return await asyncio.open_connection(sock=sock, ssl=client_tls(), server_hostname="",
                                             limit=4 * MAX_LINE)


async def tls_idle_flood(port: int, tally: Tally, stop: asyncio.Event) -> None:
    """IDLE_CONNECTIONS connections, each from its own address: half never start the TLS
    handshake (bare TCP), half finish it and then say nothing; all held."""
    held: list[Any] = []

    async def one(i: int) -> None:
        source = f"127.0.{1 + i // 250}.{1 + i % 250}"
        try:
            if i % 2:
                _, writer = await _tls_connect(port, source, timeout_s=5)
                tally.add("tls_idle_handshaken")
            else:
                _, writer = await _connect(port, source)
                tally.add("tls_idle_bare")
        except (OSError, TimeoutError, ssl.SSLError):
            tally.add("tls_idle_refused")
            return
        held.append(writer)

    try:
        for first in range(0, IDLE_CONNECTIONS, 50):
            if stop.is_set():
                break
            await asyncio.gather(*(one(i) for i in range(first, first + 50)))
        await stop.wait()
    finally:
        for writer in held:
            _close(writer)


async def handshake_flood(port: int, tally: Tally, stop: asyncio.Event, *,
                          parallel: int = 20) -> None:
    """Full TLS handshakes from one address, ``parallel`` at a time, as fast as they go."""

    async def one() -> None:
        while not stop.is_set():
            try:
                _, writer = await _tls_connect(port, HANDSHAKE_FLOOD_PEER, timeout_s=5)
            except (OSError, TimeoutError, ssl.SSLError):
                tally.add("handshake_flood_failed")
                await asyncio.sleep(0.01)
                continue
            tally.add("handshake_flood_done")
            _close(writer)

    await asyncio.gather(*(one() for _ in range(parallel)))


async def newcomer(port: int, tally: Tally, stop: asyncio.Event) -> None:
    """A good client from another address connecting anew every 0.5 s during the floods:
    the TLS handshake and a subscribe must go through each time, and quickly."""
    while not stop.is_set():
        started = time.monotonic()
        try:
            reader, writer = await _tls_connect(port, NEWCOMER_PEER)
            async with asyncio.timeout(10):
                await reader.readline()  # hello
                writer.write(json.dumps({"type": "subscribe", "token": TOKEN}).encode() + b"\n")
                reply = json.loads(await reader.readline())
            took_ms = int((time.monotonic() - started) * 1000)
            tally.add(f"newcomer {reply.get('type')}")
            tally.counts["newcomer_max_ms"] = max(tally.counts["newcomer_max_ms"], took_ms)
            _close(writer)
        except (OSError, TimeoutError, ValueError, ssl.SSLError):
            tally.add("newcomer failed")
        await asyncio.sleep(0.5)


async def tls_abuse(port: int, seconds: float) -> Counter[str]:
    """The TLS abusers at once for ``seconds``; what they saw."""
    tally = Tally()
    stop = asyncio.Event()
    abusers = [
        asyncio.create_task(tls_idle_flood(port, tally, stop)),
        asyncio.create_task(handshake_flood(port, tally, stop)),
        asyncio.create_task(newcomer(port, tally, stop)),
    ]
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.wait_for(asyncio.gather(*abusers), timeout=60)
    return tally.counts


# -- measuring --------------------------------------------------------------------------------


def playback_offset(daemon: Daemon, first_ts: float) -> float:
    """Wall time minus trace time, from the moment the replay began playing (its log line)."""
    for event in daemon.log_events():
        if event.get("event") == "source_state" and event.get("status") == "playing":
            began = datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00"))
            return began.timestamp() - first_ts
    raise AssertionError("no 'playing' line in the daemon's log")


def latencies_ms(events: list[tuple[float, dict[str, Any]]], offset: float, since: float,
                 until: float) -> list[float]:
    """Event latencies (arrival minus decision time on the wall clock) in ``[since, until)``."""
    return [(at - (event["ts"] + offset)) * 1000 for at, event in events if since <= at < until]


def cpu_s(pid: int) -> float:
    """User plus system CPU seconds used by a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def p99(values: list[float]) -> float:
    """The 99th percentile."""
    return statistics.quantiles(values, n=100)[98] if len(values) >= 2 else float("nan")


async def sample_memory(daemon: Daemon, samples: list[tuple[float, int]],
                        stop: asyncio.Event) -> None:
    while not stop.is_set():
        rss, _ = daemon.memory_kb()
        samples.append((time.time(), rss))
        await asyncio.sleep(0.25)


async def poll_status(daemon: Daemon, duration_s: float, took: list[float]) -> None:
    """Ask for status once a second for ``duration_s`` (answered promptly, even under abuse);
    the connection count never passes the limit."""
    deadline = time.monotonic() + duration_s
    while time.monotonic() < deadline:
        await asyncio.sleep(min(1.0, max(deadline - time.monotonic(), 0.0)))
        asked = time.monotonic()
        status = await asyncio.to_thread(daemon.status, timeout_s=5)
        took.append(time.monotonic() - asked)
        assert status["connections"] <= MAX_CONNECTIONS + 1, status


# -- the test ---------------------------------------------------------------------------------


async def test_abusive_clients(tmp_path: Path) -> None:
    quiet_s = float(scaled(10, 30))
    abuse_s = float(scaled(15, 120))
    trace, contacts = busy_venue(tmp_path, badges=150, duration_s=quiet_s + abuse_s + 60)
    with trace.open() as handle:
        first_ts = json.loads(handle.readline())["ts"]
    config = write_config(tmp_path, trace=trace, proximity=BUSY_PROXIMITY,
                          server={"max_connections": MAX_CONNECTIONS,
                                  "auth_timeout_s": AUTH_TIMEOUT_S, "max_line_bytes": MAX_LINE,
                                  "queue_size": 256},
                          logging={"level": "info"})
    hallway("contacts", "import", str(contacts), "--config", str(config))
    daemon = start_daemon(config, log_name="daemon-abuse.log")
    tally = Tally()
    memory: list[tuple[float, int]] = []
    try:
        daemon.wait_ready(30)
        offset = playback_offset(daemon, first_ts)
        sub = start_subscriber_process(daemon.port, tmp_path / "good-subscriber.txt",
                                       source_ip=GOOD_PEER)
        start_seq = sub.timed_messages()[0][1]["seq"]
        done = asyncio.Event()
        sampler = asyncio.create_task(sample_memory(daemon, memory, done))
        quiet_from = time.time() + 1.0  # past the subscribe's own first moments
        status_times: list[float] = []
        cpu_quiet = cpu_s(daemon.pid)
        await poll_status(daemon, quiet_s, status_times)
        quiet_until = abuse_from = time.time()
        cpu_abuse = cpu_s(daemon.pid)
        cpu_quiet = cpu_abuse - cpu_quiet
        quiet_rss = max(rss for _, rss in memory)
        tally_file = tmp_path / "abusers.json"
        abusers = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.test_abuse", str(daemon.port), str(abuse_s),
            str(tally_file), cwd=ROOT, env={**env(), "PYTHONPATH": f"{ROOT}:{ROOT / 'src'}"})
        await poll_status(daemon, abuse_s, status_times)
        abuse_until = time.time()
        cpu_abuse = cpu_s(daemon.pid) - cpu_abuse
        assert await asyncio.wait_for(abusers.wait(), timeout=90) == 0
        tally.counts.update(json.loads(tally_file.read_text()))
        done.set()
        await sampler
        await asyncio.sleep(1.0)  # the last events reach the subscriber
        final_status = daemon.status()
        _, peak_rss = daemon.memory_kb()
        assert not sub.closed(), "the well-behaved subscriber was cut off"
        sub.stop()
        assert daemon.stop() == 0
    finally:
        daemon.kill()
    log = daemon.log_events()

    # Every event, in order, nothing missing.
    timed = sub.timed_events()
    seqs = [e["seq"] for _, e in timed]
    assert seqs == list(range(start_seq + 1, start_seq + 1 + len(seqs)))
    assert seqs[-1] >= final_status["last_seq"]
    quiet = latencies_ms(timed, offset, quiet_from, quiet_until)
    abused = latencies_ms(timed, offset, abuse_from, abuse_until)
    quiet_p99, abuse_p99 = p99(quiet), p99(abused)
    counts = tally.counts
    sockets = final_status["sockets"]
    auth_warnings = [e for e in log if e.get("event") == "auth_failed"
                     and e.get("peer") == WRONG_TOKEN_PEER and e.get("level") == "warning"]
    record("abuse", quiet_s=quiet_s, abuse_s=abuse_s, events=len(seqs),
           quiet_events=len(quiet), abuse_events=len(abused),
           quiet_p50_ms=round(statistics.median(quiet), 1), quiet_p99_ms=round(quiet_p99, 1),
           abuse_p50_ms=round(statistics.median(abused), 1), abuse_p99_ms=round(abuse_p99, 1),
           quiet_rss_mib=round(quiet_rss / 1024, 1), peak_rss_mib=round(peak_rss / 1024, 1),
           quiet_cpu_pct=round(100 * cpu_quiet / quiet_s), abuse_cpu_pct=round(
               100 * cpu_abuse / abuse_s), p99_ratio=round(abuse_p99 / quiet_p99, 2),
           status_max_s=round(max(status_times), 3), abusers=dict(counts),
           server=sockets, auth_warnings=len(auth_warnings))
    # Latency held.
    assert len(quiet) >= 50
    assert len(abused) >= 50
    # The 2x figure is a speed target: it is checked on the long run (bench/reliability.py,
    # docs/reliability.md), where 120 s of abuse give a stable p99. The short CI run shares
    # its 2 cores with the rest of the suite, so here it only has to show no stall.
    bound = 2 * max(quiet_p99, NOISE_FLOOR_MS) if SCALE == "long" else STALL_MS
    assert abuse_p99 <= bound, (quiet_p99, abuse_p99)
    # Memory stayed bounded.
    assert peak_rss < RSS_LIMIT_KIB, peak_rss
    # Every kind of abuse was met as SPEC §6 says.
    assert counts["idle_opened"] == IDLE_CONNECTIONS
    assert sockets["evicted"] >= IDLE_CONNECTIONS - MAX_CONNECTIONS
    assert counts["loris unauthorized"] >= 45, counts
    assert counts["loris_cut_after_ms"] < (AUTH_TIMEOUT_S + 2) * 1000
    assert counts["big too_large"] >= 10, counts
    assert not [k for k in counts if k.startswith("big ") and k != "big too_large"], counts
    assert counts["garbage bad_request"] >= 50, counts
    assert not [k for k in counts if k.startswith("garbage ") and k != "garbage bad_request"]
    # Wrong tokens: a burst is answered, then the peer is told to wait (rate_limited); one
    # warning.
    assert counts["wrong_token refused at once"] > 10 * counts["wrong_token rejected"], counts
    assert counts["wrong_token rejected"] <= 10 + abuse_s * 0.5 + 2
    assert len(auth_warnings) == 1, auth_warnings
    # Cut off: the "lagged" line is the last one sent, read only if the client reads within
    # the grace period; after it the connection is dropped.
    cut_off = sum(counts[f"non_reader {how}"] for how in ("lagged", "closed", "reset"))
    assert cut_off == 3, counts
    assert sockets["lagged"] >= 3


async def test_abusive_tls_clients(tmp_path: Path) -> None:
    """With TLS on: 1,000 abusive TLS connections (bare TCP never handshaking, and finished
    handshakes that never subscribe) plus a flood of full handshakes from one address. The
    good TLS subscriber keeps its latency; a newcomer from another address always gets in."""
    quiet_s = float(scaled(10, 30))
    abuse_s = float(scaled(15, 120))
    trace, contacts = busy_venue(tmp_path, badges=150, duration_s=quiet_s + abuse_s + 60)
    with trace.open() as handle:
        first_ts = json.loads(handle.readline())["ts"]
    config = write_config(tmp_path, trace=trace, proximity=BUSY_PROXIMITY,
                          server={"max_connections": MAX_CONNECTIONS, "tls": True,
                                  "auth_timeout_s": AUTH_TIMEOUT_S, "max_line_bytes": MAX_LINE,
                                  "queue_size": 256},
                          logging={"level": "info"})
    hallway("contacts", "import", str(contacts), "--config", str(config))
    daemon = start_daemon(config, log_name="daemon-tls-abuse.log", tls=True)
    try:
        daemon.wait_ready(30)
        offset = playback_offset(daemon, first_ts)
        sub = start_subscriber_process(daemon.port, tmp_path / "good-tls-subscriber.txt",
                                       source_ip=GOOD_PEER, tls=True)
        start_seq = sub.timed_messages()[0][1]["seq"]
        quiet_from = time.time() + 1.0
        status_times: list[float] = []
        await poll_status(daemon, quiet_s, status_times)
        quiet_until = abuse_from = time.time()
        cpu_abuse = cpu_s(daemon.pid)
        tally_file = tmp_path / "tls-abusers.json"
        abusers = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.test_abuse", str(daemon.port), str(abuse_s),
            str(tally_file), "tls", cwd=ROOT,
            env={**env(), "PYTHONPATH": f"{ROOT}:{ROOT / 'src'}"})
        await poll_status(daemon, abuse_s, status_times)
        abuse_until = time.time()
        cpu_abuse = cpu_s(daemon.pid) - cpu_abuse
        assert await asyncio.wait_for(abusers.wait(), timeout=90) == 0
        counts: Counter[str] = Counter(json.loads(tally_file.read_text()))
        await asyncio.sleep(1.0)
        final_status = daemon.status()
        assert not sub.closed(), "the well-behaved TLS subscriber was cut off"
        sub.stop()
        assert daemon.stop() == 0
    finally:
        daemon.kill()

    timed = sub.timed_events()
    seqs = [e["seq"] for _, e in timed]
    assert seqs == list(range(start_seq + 1, start_seq + 1 + len(seqs)))
    quiet = latencies_ms(timed, offset, quiet_from, quiet_until)
    abused = latencies_ms(timed, offset, abuse_from, abuse_until)
    quiet_p99, abuse_p99 = p99(quiet), p99(abused)
    sockets = final_status["sockets"]
    record("tls_abuse", quiet_s=quiet_s, abuse_s=abuse_s, events=len(seqs),
           quiet_p50_ms=round(statistics.median(quiet), 1), quiet_p99_ms=round(quiet_p99, 1),
           abuse_p50_ms=round(statistics.median(abused), 1), abuse_p99_ms=round(abuse_p99, 1),
           p99_ratio=round(abuse_p99 / quiet_p99, 2),
           abuse_cpu_pct=round(100 * cpu_abuse / abuse_s),
           status_max_s=round(max(status_times), 3), abusers=dict(counts), server=sockets)
    assert len(quiet) >= 50
    assert len(abused) >= 50
    bound = 2 * max(quiet_p99, NOISE_FLOOR_MS) if SCALE == "long" else STALL_MS
    assert abuse_p99 <= bound, (quiet_p99, abuse_p99)
    opened = counts["tls_idle_handshaken"] + counts["tls_idle_bare"]
    assert opened + counts["tls_idle_refused"] == IDLE_CONNECTIONS, counts
    assert opened >= IDLE_CONNECTIONS * 0.9, counts
    # The flood from one address is held to its handshake budget; the rest refused unpaid.
    assert counts["handshake_flood_done"] >= 50, counts
    assert counts["handshake_flood_done"] <= 20 + 10 * abuse_s + 20, counts
    assert sockets["tls_refused"] >= 1
    # Handshakes from one address never starve another's: every newcomer got in, quickly.
    assert counts["newcomer subscribed"] >= abuse_s, counts  # about 2 a second
    assert counts["newcomer failed"] == 0, counts
    assert counts["newcomer_max_ms"] < 3000, counts
    # Every idle connection was ended: evicted at the limit, or at its auth deadline (a
    # finished handshake) or handshake deadline (bare TCP).
    ended = sockets["evicted"] + sockets["auth_timeouts"] + sockets["tls_failed"]
    assert ended >= opened - MAX_CONNECTIONS, sockets


if __name__ == "__main__":
    # The abusers as their own process at a lower priority: on one shared machine their own
    # CPU use would otherwise be charged to the daemon's latency (on a network it is not).
    os.nice(10)
    run = tls_abuse if sys.argv[4:] == ["tls"] else abuse
    counts = asyncio.run(run(int(sys.argv[1]), float(sys.argv[2])))
    Path(sys.argv[3]).write_text(json.dumps(dict(counts)))
