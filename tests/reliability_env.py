"""Harness for the reliability suites (fuzz, abuse, crash, radio faults, privacy).

A real ``hallway run`` subprocess on loopback with a config written here, blocking socket
clients speaking SPEC §6, trace builders, the ``hallway`` CLI as a subprocess, and a recorder of
figures. Tests assert what must hold; the figures they measure (counts, durations, memory,
latencies) are printed and, when ``$HALLWAY_RELIABILITY_RESULTS`` names a file, appended to it
as JSON lines for ``bench/reliability.py`` to tabulate. ``$HALLWAY_RELIABILITY_SCALE=long``
makes the suites run their longer versions (the bench sets it; CI does not).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "reliability-token-0123456789abcdef"
SCALE = os.environ.get("HALLWAY_RELIABILITY_SCALE", "ci")
RESULTS_ENV = "HALLWAY_RELIABILITY_RESULTS"


def scaled(ci: int, long: int) -> int:
    """``ci`` normally, ``long`` when the bench runs the longer versions."""
    return long if SCALE == "long" else ci


def record(suite: str, **figures: Any) -> None:
    """Print figures and append them to ``$HALLWAY_RELIABILITY_RESULTS`` if set."""
    row = {"suite": suite, "scale": SCALE, **figures}
    print(f"[reliability] {json.dumps(row, sort_keys=True)}")
    path = os.environ.get(RESULTS_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row, sort_keys=True) + "\n")


def env() -> dict[str, str]:
    """The environment for hallway subprocesses: this tree's sources first."""
    out = dict(os.environ)
    out["PYTHONPATH"] = str(ROOT / "src")
    out.pop("NOTIFY_SOCKET", None)
    out.pop("WATCHDOG_USEC", None)
    return out


def hallway(*args: str, check: bool = True, timeout_s: float = 120.0
            ) -> subprocess.CompletedProcess[str]:
    """Run the ``hallway`` CLI of this tree; fail with its output if ``check`` and it fails."""
    done = subprocess.run([sys.executable, "-m", "hallway", *args], env=env(), text=True,
                          capture_output=True, timeout=timeout_s, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"hallway {' '.join(args)} exited {done.returncode}:\n"
                             f"{done.stdout}\n{done.stderr}")
    return done


# -- config -----------------------------------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {_toml_value(v)}"
                               for k, v in value.items()) + "}"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def toml_text(sections: Mapping[str, Mapping[str, Any]]) -> str:
    """A TOML document of ``[section]`` tables of plain values."""
    parts = []
    for name, table in sections.items():
        parts.append(f"[{name}]")
        parts.extend(f"{key} = {_toml_value(value)}" for key, value in table.items()
                     if value is not None)
        parts.append("")
    return "\n".join(parts)


def write_config(directory: Path, *, trace: Path | None = None, source: str = "replay",
                 **sections: Mapping[str, Any]) -> Path:
    """A daemon config in ``directory``: replay of ``trace``, TCP on a free loopback port,
    token auth, no mDNS, JSON logs at debug level; ``sections`` override per key."""
    base: dict[str, dict[str, Any]] = {
        "scanner": {"name": "reliability", "source": source,
                    "trace": str(trace) if trace is not None else None},
        "storage": {"database": str(directory / "hallway.db"), "reload_interval_s": 0.5},
        "server": {"tcp_host": "127.0.0.1", "tcp_port": 0,
                   "unix_socket": str(directory / "hallway.sock"), "tokens": [TOKEN],
                   "ping_interval_s": 2.0},
        "mdns": {"enabled": False},
        "logging": {"level": "debug", "format": "json"},
    }
    for name, table in sections.items():
        base.setdefault(name, {}).update(table)
    path = directory / "hallway.toml"
    path.write_text(toml_text(base), encoding="utf-8")
    return path


# -- the daemon -------------------------------------------------------------------------------


@dataclass
class Daemon:
    """A ``hallway run`` subprocess; its log (JSON lines) goes to ``log_path``."""

    proc: subprocess.Popen[bytes]
    config: Path
    log_path: Path
    port: int = 0
    started_at: float = field(default_factory=time.monotonic)
    tls: bool = False  # the TCP socket serves TLS (clients then connect over TLS)

    @property
    def pid(self) -> int:
        """The process id."""
        return self.proc.pid

    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc.poll() is None

    def log_text(self) -> str:
        """Everything the daemon wrote so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def log_events(self) -> list[dict[str, Any]]:
        """The daemon's JSON log lines, parsed (other lines are skipped)."""
        out = []
        for line in self.log_text().splitlines():
            with contextlib.suppress(ValueError):
                obj = json.loads(line)
                if isinstance(obj, dict):
                    out.append(obj)
        return out

    def wait_listening(self, timeout_s: float = 30.0) -> int:
        """Wait for the TCP listener; return its port."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.log_text()}")
            for event in self.log_events():
                if event.get("event") == "server_listening" and event.get("tcp_port"):
                    self.port = int(event["tcp_port"])
                    return self.port
            time.sleep(0.05)
        raise AssertionError(f"daemon not listening within {timeout_s} s:\n{self.log_text()}")

    def wait_ready(self, timeout_s: float = 30.0) -> dict[str, Any]:
        """Wait until the daemon answers ``status`` with its source scanning; return it."""
        self.wait_listening(timeout_s)
        deadline = time.monotonic() + timeout_s
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            if not self.alive():
                raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.log_text()}")
            with contextlib.suppress(OSError, EOFError, ValueError):
                last = self.status()
                if last.get("source_state") == "scanning":
                    return last
            time.sleep(0.05)
        raise AssertionError(f"daemon not scanning within {timeout_s} s: {last}\n"
                             f"{self.log_text()[-4000:]}")

    def status(self, *, timeout_s: float = 5.0) -> dict[str, Any]:
        """One ``status`` request over TCP."""
        with LineClient(self.port, timeout_s=timeout_s, tls=self.tls) as client:
            client.send({"type": "status", "token": TOKEN})
            reply = client.read(timeout_s)
        if reply is None or reply.get("type") != "status":
            raise ValueError(f"unexpected status reply {reply!r}")
        return reply

    def memory_kb(self) -> tuple[int, int]:
        """``(VmRSS, VmHWM)`` of the process in KiB: now and peak."""
        fields: dict[str, int] = {}
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    fields[key] = int(value.split()[0])
        return fields.get("VmRSS", 0), fields.get("VmHWM", 0)

    def kill(self) -> None:
        """SIGKILL and reap."""
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, *, timeout_s: float = 20.0) -> int:
        """SIGTERM, wait (SIGKILL after ``timeout_s``); return the exit code."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                raise AssertionError(f"daemon ignored SIGTERM for {timeout_s} s") from None
        return int(self.proc.returncode)


def start_daemon(config: Path, *, log_name: str | None = None,
                 extra_env: Mapping[str, str] | None = None, tls: bool = False) -> Daemon:
    """Start ``hallway run --config CONFIG`` (not waiting for it)."""
    name = log_name or f"daemon-{time.monotonic_ns()}.log"
    log_path = config.parent / name
    process_env = {**env(), **(extra_env or {})}
    with log_path.open("ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "hallway", "run", "--config", str(config)],
                                env=process_env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    return Daemon(proc, config, log_path, tls=tls)


@contextlib.contextmanager
def running_daemon(config: Path, **kwargs: Any) -> Iterator[Daemon]:
    """A started and ready daemon, stopped (or killed) afterwards."""
    daemon = start_daemon(config, **kwargs)
    try:
        daemon.wait_ready()
        yield daemon
    finally:
        if daemon.alive():
            try:
                daemon.stop()
            except AssertionError:
                daemon.kill()


def client_tls() -> ssl.SSLContext:
    """A test client's TLS context: no CA (the daemon's certificate is self-signed; the
    pinning itself is tested in tests/test_security.py)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


# -- clients ----------------------------------------------------------------------------------


class LineClient:
    """A blocking SPEC §6 client over TCP from a chosen loopback address; reads the hello."""

    def __init__(self, port: int, *, source_ip: str | None = None, timeout_s: float = 10.0,
                 read_hello: bool = True, tls: bool = False) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.settimeout(timeout_s)
        if source_ip is not None:
            self.sock.bind((source_ip, 0))
        self.sock.connect(("127.0.0.1", port))
        if tls:
            self.sock = client_tls().wrap_socket(self.sock)
        self._buffer = b""
        self.eof = False
        self.hello: dict[str, Any] | None = self.read(timeout_s) if read_hello else None

    def __enter__(self) -> LineClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, obj: Mapping[str, Any]) -> None:
        """One JSON line."""
        self.send_raw(json.dumps(obj).encode() + b"\n")

    def send_raw(self, data: bytes) -> None:
        """Bytes as they are."""
        self.sock.sendall(data)

    def read_line(self, timeout_s: float) -> bytes | None:
        """The next line (without newline); None at end of input or after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                return None
            except ConnectionResetError:
                data = b""
            if not data:
                self.eof = True
                if self._buffer:
                    line, self._buffer = self._buffer, b""
                    return line
                return None
            self._buffer += data
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def read(self, timeout_s: float = 10.0) -> dict[str, Any] | None:
        """The next line as a JSON object; None at end of input or after ``timeout_s``."""
        line = self.read_line(timeout_s)
        if line is None:
            return None
        value = json.loads(line)
        if not isinstance(value, dict):
            raise ValueError(f"not a JSON object: {line[:200]!r}")
        return value

    def subscribe(self, **fields: Any) -> dict[str, Any]:
        """Send a subscribe with the token; return the reply."""
        self.send({"type": "subscribe", "token": TOKEN, **fields})
        reply = self.read()
        if reply is None:
            raise EOFError("no reply to subscribe")
        return reply

    def close(self) -> None:
        """Close the socket."""
        with contextlib.suppress(OSError):
            self.sock.close()


EVENT_TYPES = frozenset({"arrived", "zone", "departed"})


class Subscriber:
    """A subscribed client whose lines a thread collects with their arrival times."""

    def __init__(self, port: int, *, source_ip: str | None = None, **fields: Any) -> None:
        self.client = LineClient(port, source_ip=source_ip)
        self.reply = self.client.subscribe(**fields)
        if self.reply.get("type") != "subscribed":
            raise AssertionError(f"not subscribed: {self.reply}")
        self.lines: list[tuple[float, bytes]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="subscriber", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                line = self.client.read_line(0.2)
            except OSError:
                break
            if line is not None:
                self.lines.append((time.time(), line))
            elif self.client.eof:
                break

    @property
    def closed(self) -> bool:
        """True once the server closed the connection."""
        return self.client.eof

    def messages(self) -> list[dict[str, Any]]:
        """Every line received so far, parsed."""
        return [json.loads(line) for _, line in list(self.lines)]

    def events(self) -> list[dict[str, Any]]:
        """The SPEC §5 events received so far."""
        return [m for m in self.messages() if m.get("type") in EVENT_TYPES]

    def timed_events(self) -> list[tuple[float, dict[str, Any]]]:
        """``(arrival time, event)`` pairs."""
        out = []
        for at, line in list(self.lines):
            msg = json.loads(line)
            if msg.get("type") in EVENT_TYPES:
                out.append((at, msg))
        return out

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], *, timeout_s: float,
                 what: str = "an event") -> tuple[float, dict[str, Any]]:
        """The first received message matching ``predicate``, with its arrival time."""
        deadline = time.monotonic() + timeout_s
        seen = 0
        while True:
            lines = list(self.lines)
            for at, line in lines[seen:]:
                msg = json.loads(line)
                if predicate(msg):
                    return at, msg
            seen = len(lines)
            if time.monotonic() > deadline or (self.closed and seen == len(self.lines)):
                raise AssertionError(f"no {what} within {timeout_s} s "
                                     f"(closed={self.closed}, {seen} lines)")
            time.sleep(0.02)

    def close(self) -> None:
        """Stop collecting and close."""
        self._stop.set()
        self.client.close()
        self._thread.join(5)


# -- traces and contacts ----------------------------------------------------------------------


def badge_rows(address: str, *, start: float, duration_s: float, every_s: float = 0.25,
               rssi: int = -55) -> list[dict[str, Any]]:
    """SPEC §2 rows of a badge with a fixed public address advertising steadily."""
    count = max(1, int(duration_s / every_s))
    return [{"ts": round(start + i * every_s, 4), "address": address, "address_type": "public",
             "rssi": rssi + (i % 3) - 1} for i in range(count)]


def write_jsonl(path: Path, rows: list[dict[str, Any]], *, sort_by: str | None = None) -> Path:
    """Write rows as JSON lines (sorted by ``sort_by`` if given)."""
    if sort_by is not None:
        rows = sorted(rows, key=lambda row: row[sort_by])
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    return path


def badge_address(index: int, *, prefix: int = 0xC4) -> str:
    """A public address for badge ``index`` (unicast, globally administered)."""
    raw = bytes([prefix & 0xFC, 0x7C, 0x8D, (index >> 16) & 0xFF, (index >> 8) & 0xFF,
                 index & 0xFF])
    return ":".join(f"{b:02X}" for b in raw)


# -- a subscriber in its own process (its own GIL: clean arrival times under load) ------------


@dataclass
class SubscriberProcess:
    """``python -m tests.reliability_env subscribe``: arrival time and line, one per line."""

    proc: subprocess.Popen[bytes]
    out: Path

    def timed_messages(self) -> list[tuple[float, dict[str, Any]]]:
        """``(arrival time, message)`` for every line received so far."""
        rows = []
        for line in self.out.read_text(encoding="utf-8").splitlines():
            at, _, text = line.partition(" ")
            with contextlib.suppress(ValueError):
                rows.append((float(at), json.loads(text)))
        return rows

    def timed_events(self) -> list[tuple[float, dict[str, Any]]]:
        """``(arrival time, event)`` for the SPEC §5 events received so far."""
        return [(at, m) for at, m in self.timed_messages() if m.get("type") in EVENT_TYPES]

    def closed(self) -> bool:
        """True if the process ended (the server closed the connection, or it failed)."""
        return self.proc.poll() is not None

    def stop(self) -> None:
        """End it (SIGTERM) and wait."""
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(10)


def start_subscriber_process(port: int, out: Path, *, source_ip: str | None = None,
                             timeout_s: float = 15.0, tls: bool = False) -> SubscriberProcess:
    """Start a subscriber process and wait for its ``subscribed`` line."""
    argv = [sys.executable, "-m", "tests.reliability_env", "subscribe", str(port), str(out)]
    if source_ip is not None:
        argv.append(source_ip)
    proc = subprocess.Popen(argv, env={**env(), "PYTHONPATH": f"{ROOT}:{ROOT / 'src'}",
                                       "HALLWAY_TEST_TLS": "1" if tls else ""},
                            cwd=ROOT)
    sub = SubscriberProcess(proc, out)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if out.exists() and any(m.get("type") == "subscribed" for _, m in sub.timed_messages()):
            return sub
        if proc.poll() is not None:
            raise AssertionError(f"subscriber process exited {proc.returncode}")
        time.sleep(0.05)
    sub.stop()
    raise AssertionError("subscriber process did not subscribe")


def _subscribe_main(port: int, out: Path, source_ip: str | None) -> int:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    client = LineClient(port, source_ip=source_ip,
                        tls=bool(os.environ.get("HALLWAY_TEST_TLS")))
    client.send({"type": "subscribe", "token": TOKEN})
    with out.open("w", encoding="utf-8") as handle:
        while not stop.is_set():
            line = client.read_line(0.2)
            if line is not None:
                handle.write(f"{time.time():.6f} {line.decode()}\n")
                handle.flush()
            elif client.eof:
                return 1
    client.close()
    return 0


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "subscribe":
        raise SystemExit(_subscribe_main(int(sys.argv[2]), Path(sys.argv[3]),
                                         sys.argv[4] if len(sys.argv) > 4 else None))
    raise SystemExit("usage: python -m tests.reliability_env subscribe PORT OUT [SOURCE_IP]")
