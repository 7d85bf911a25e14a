"""A real daemon serving the web pages on a replayed venue, and Debian's chromium to look at it.

The venue: badges (``address`` keys) that start advertising one after another, so arrivals
come at known moments; half of the people agreed to be shown (``display``).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.daemon_env import (
    TOKEN,
    Daemon,
    beacon_rows,
    free_port,
    import_contacts,
    start_daemon,
    write_config,
    write_trace,
)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
HAVE_CHROMIUM = Path(CHROMIUM).exists() and shutil.which("chromium") is not None
ORGS = ("Analytical Engines", "Harbour Labs", "Quiet Systems")
TAGS = ("speaker", "rust", "privacy", "hardware")


def address(index: int) -> str:
    return f"C4:7C:8D:{index // 256:02X}:{index % 256:02X}:01"


def people(count: int) -> list[dict[str, Any]]:
    """Even-numbered people may be shown; each knows the next two."""
    result = []
    for i in range(count):
        result.append({
            "id": f"p-{i:03d}", "name": f"Person{i:03d} Surname{i:03d}",
            "org": ORGS[i % len(ORGS)], "tags": [TAGS[i % len(TAGS)]],
            "display": i % 2 == 0,
            "knows": [f"p-{(i + 1) % count:03d}", f"p-{(i + 2) % count:03d}"],
            "keys": [{"kind": "address", "address": address(i)}],
        })
    return result


def venue_trace(path: Path, count: int, *, start: float, every_s: float, duration_s: float,
                near: set[int] | None = None) -> None:
    """Person ``i`` starts advertising at ``start + i * every_s`` and keeps on for
    ``duration_s``; those in ``near`` stand close to the scanner (immediate zone)."""
    rows = []
    for i in range(count):
        rssi = -50 if near and i in near else -72
        rows += beacon_rows(address(i), start=start + i * every_s, duration_s=duration_s,
                            rssi=rssi, every_s=0.25)
    write_trace(path, rows)


@dataclass
class Venue:
    """One daemon with web pages over a replayed trace."""

    tmp: Path
    port: int
    web_port: int
    config: Path
    daemon: Daemon | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def url(self, page: str, *, token: str | None = TOKEN) -> str:
        return f"{self.base}/{page}" + (f"#token={token}" if token else "")

    def start(self) -> Daemon:
        self.daemon = start_daemon(self.tmp, self.config, port=self.port)
        self.daemon.wait_for_notification("READY=1", 30)
        return self.daemon

    def stop(self) -> None:
        if self.daemon is not None:
            self.daemon.stop()


def make_venue(tmp: Path, count: int, *, every_s: float = 0.3, duration_s: float = 240.0,
               near: set[int] | None = None, lead_s: float = 2.0,
               apps_dir: Path | None = None) -> Venue:
    import_contacts(tmp, people(count))
    port, web_port = free_port(), free_port()
    trace = tmp / "trace.jsonl"
    venue_trace(trace, count, start=time.time() + lead_s, every_s=every_s, duration_s=duration_s,
                near=near)
    apps = f'apps_dir = "{apps_dir}"\n' if apps_dir is not None else ""
    config = write_config(tmp, port=port, trace=trace,
                          extra=f"[web]\nenabled = true\nport = {web_port}\n{apps}")
    return Venue(tmp, port, web_port, config)


@dataclass
class Recorder:
    """A socket subscriber in a thread: every event with the wall-clock time it arrived."""

    port: int
    events: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self, since_seq: int | None = None) -> None:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        sock.settimeout(0.2)
        request: dict[str, Any] = {"type": "subscribe", "token": TOKEN}
        if since_seq is not None:
            request["since_seq"] = since_seq
        sock.sendall((json.dumps(request) + "\n").encode())

        def run() -> None:
            buffer = b""
            while not self._stop.is_set():
                try:
                    chunk = sock.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    break
                if not chunk:
                    break
                at = time.time()
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    message = json.loads(line)
                    if "seq" in message and message.get("type") in (
                        "arrived", "zone", "departed", "moved"
                    ):
                        self.events.append((at, message))
            sock.close()

        self._thread = threading.Thread(target=run, name="recorder", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def arrivals(self) -> dict[int, float]:
        return {m["seq"]: at for at, m in self.events if m["type"] == "arrived"}


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent / "src")}
