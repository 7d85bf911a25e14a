"""Run ``hallway run`` as a real subprocess for tests: config, notify socket, socket clients."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "test-token-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def write_trace(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in sorted(rows, key=lambda r: r["ts"])))


def beacon_rows(address: str, *, start: float, duration_s: float, rssi: int = -55,
                every_s: float = 0.2) -> list[dict[str, Any]]:
    """A badge with a fixed public address advertising steadily (an ``address`` key)."""
    count = int(duration_s / every_s)
    return [
        {"ts": start + i * every_s, "address": address, "address_type": "public",
         "rssi": rssi + (i % 3) - 1}
        for i in range(count)
    ]


@dataclass
class Daemon:
    """A running ``hallway run`` process and what it sent to systemd."""

    proc: subprocess.Popen[bytes]
    notify: socket.socket
    port: int
    unix_path: Path
    log_path: Path
    messages: list[str] = field(default_factory=list)

    def notifications(self, timeout_s: float = 0.0) -> list[str]:
        """Drain the notify socket (waiting up to ``timeout_s`` for the first datagram)."""
        if self.notify.fileno() < 0:
            return []
        self.notify.settimeout(timeout_s if timeout_s > 0 else 0.001)
        got = []
        while True:
            try:
                data = self.notify.recv(65536)
            except (TimeoutError, BlockingIOError):
                break
            got.append(data.decode())
            self.notify.settimeout(0.001)
        self.messages.extend(got)
        return got

    def wait_for_notification(self, prefix: str, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.log()}")
            for message in self.notifications(0.2):
                for line in message.splitlines():
                    if line.startswith(prefix):
                        return line
        raise AssertionError(f"no {prefix!r} within {timeout_s}s; got {self.messages}\n"
                             f"{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.notify.close()
        return self.proc.returncode


def write_config(tmp: Path, *, port: int, trace: Path | None = None, source: str = "replay",
                 extra: str = "") -> Path:
    config = tmp / "hallway.toml"
    trace_line = f'trace = "{trace}"\n' if trace else ""
    config.write_text(
        f'[scanner]\nname = "test-kiosk"\nsource = "{source}"\n{trace_line}'
        f'[storage]\ndatabase = "{tmp / "hallway.db"}"\nreload_interval_s = 0.5\n'
        f'[server]\ntcp_port = {port}\nunix_socket = "{tmp / "hallway.sock"}"\n'
        f'tokens = ["{TOKEN}"]\nping_interval_s = 2.0\n'
        f'[mdns]\nenabled = false\n'
        f'[logging]\nlevel = "debug"\nformat = "json"\n' + extra
    )
    return config


def start_daemon(tmp: Path, config: Path, *, port: int, watchdog_usec: int = 1_000_000,
                 env_extra: dict[str, str] | None = None) -> Daemon:
    notify_path = tmp / f"notify-{time.monotonic_ns()}.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "src"),
        "NOTIFY_SOCKET": str(notify_path),
        "WATCHDOG_USEC": str(watchdog_usec),
        **(env_extra or {}),
    }
    env.pop("WATCHDOG_PID", None)
    log_path = tmp / f"daemon-{time.monotonic_ns()}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "hallway", "run", "--config", str(config)],
                                env=env, stdout=log, stderr=subprocess.STDOUT)
    return Daemon(proc, notify, port, tmp / "hallway.sock", log_path)


class Client:
    """A blocking SPEC §6 client over TCP, for tests (its own line buffer survives timeouts)."""

    def __init__(self, port: int, *, timeout_s: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
        self._buffer = b""
        self.hello = self.read()

    def send(self, obj: dict[str, Any]) -> None:
        self.sock.sendall((json.dumps(obj) + "\n").encode())

    def read(self) -> dict[str, Any]:
        while b"\n" not in self._buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("connection closed")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        result: dict[str, Any] = json.loads(line)
        return result

    def subscribe(self, **fields: Any) -> dict[str, Any]:
        self.send({"type": "subscribe", "token": TOKEN, **fields})
        return self.read()

    def events(self, timeout_s: float) -> Iterator[dict[str, Any]]:
        """Event objects (pings skipped) until ``timeout_s`` passes without the caller stopping."""
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                msg = self.read()
            except (TimeoutError, OSError):
                return
            if msg.get("type") != "ping":
                yield msg

    def close(self) -> None:
        self.sock.close()


def import_contacts(tmp: Path, lines: list[dict[str, Any]]) -> None:
    src = tmp / "contacts.jsonl"
    src.write_text("".join(json.dumps(line) + "\n" for line in lines))
    subprocess.run(
        [sys.executable, "-m", "hallway", "contacts", "import", str(src), "--db",
         str(tmp / "hallway.db")],
        check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
