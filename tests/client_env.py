"""What the client tests share: a cutting TCP proxy, a cycling venue trace, a self-signed
certificate, and a small scripted hallway server (plain or TLS) that records what it receives."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import json
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.daemon_env import write_trace

BADGES = [f"C4:7C:8D:6A:10:{i:02X}" for i in range(8)]
CONTACTS = [
    {"id": f"c-{i}", "name": f"Badge {i}", "tags": ["odd" if i % 2 else "even"],
     "keys": [{"kind": "address", "address": address}]}
    for i, address in enumerate(BADGES)
]


def cycling_trace(path: Path, *, duration_s: float, period_s: float = 8.0) -> Path:
    """Eight badges, each loud for half of ``period_s`` and far out of range for the other half
    (staggered): a steady stream of arrivals and departures, a few a second."""
    start = time.time() + 0.3
    rows = []
    steps = int(duration_s / 0.2)
    for i, address in enumerate(BADGES):
        offset = i * period_s / len(BADGES)
        for step in range(steps):
            t = step * 0.2
            loud = ((t + offset) % period_s) < period_s / 2
            rows.append({"ts": start + t, "address": address, "address_type": "public",
                         "rssi": (-50 if loud else -100) + (step % 3) - 1})
    write_trace(path, rows)
    return path


def logged_seqs(db: Path) -> list[int]:
    """Every seq in a daemon's event log, in order."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(db)) as conn:
        return [row[0] for row in conn.execute("SELECT seq FROM events ORDER BY seq")]


# -- a proxy that cuts connections in the middle of a line --------------------------------------


@dataclass
class CuttingProxy:
    """Forwards 127.0.0.1:port to ``upstream``. Each of the first ``cuts`` connections is cut
    after ``after_events`` event lines: half of the next event line is sent, then both sides
    are closed. ``paused`` refuses new connections (closes them at once)."""

    upstream: int
    cuts: int = 0
    after_events: int = 3
    paused: bool = False
    connections: int = 0
    cut_done: int = 0
    server: asyncio.Server | None = None
    port: int = 0
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._on_client, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        self.drop_all()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def drop_all(self) -> None:
        """Close every forwarded connection now (between lines or not)."""
        for writer in self._writers:
            writer.close()
        self._writers.clear()

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.paused:
            writer.close()
            return
        self.connections += 1
        cut = self.cut_done < self.cuts
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream,
                                                                 limit=1 << 22)
        except OSError:
            writer.close()
            return
        self._writers += [writer, up_writer]

        async def client_to_server() -> None:
            with contextlib.suppress(OSError):
                while data := await reader.read(65536):
                    up_writer.write(data)
                    await up_writer.drain()

        async def server_to_client() -> None:
            events = 0
            with contextlib.suppress(OSError):
                while line := await up_reader.readline():
                    is_event = (b'"contact"' in line and b'"seq"' in line
                                and b'"present"' not in line)
                    if cut and is_event and events >= self.after_events:
                        writer.write(line[: len(line) // 2])
                        await writer.drain()
                        self.cut_done += 1
                        return
                    events += is_event
                    writer.write(line)
                    await writer.drain()

        up = asyncio.create_task(client_to_server())
        self._tasks.add(up)
        try:
            await server_to_client()
        finally:
            up.cancel()
            self._tasks.discard(up)
            writer.close()
            up_writer.close()


# -- TLS --------------------------------------------------------------------------------------


def self_signed(tmp: Path, name: str = "hallway-test") -> tuple[Path, Path, str]:
    """A self-signed certificate and key (PEM files) and the certificate's SHA-256 (hex)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    cert_path = tmp / f"{name}.crt"
    key_path = tmp / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    fingerprint = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    return cert_path, key_path, fingerprint


def server_tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


# -- a scripted hallway server ------------------------------------------------------------------

Script = Callable[["FakeConnection"], Awaitable[None]]


@dataclass
class FakeConnection:
    """One connection to a FakeHallway: what it received, and a way to send lines."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    received: bytearray = field(default_factory=bytearray)

    async def send(self, obj: dict[str, Any]) -> None:
        self.writer.write((json.dumps(obj) + "\n").encode())
        await self.writer.drain()

    async def read(self, timeout_s: float = 5.0) -> dict[str, Any] | None:
        async with asyncio.timeout(timeout_s):
            line = await self.reader.readline()
        self.received += line
        return json.loads(line) if line.strip() else None


@dataclass
class FakeHallway:
    """A TCP (or TLS) server speaking just enough hallway, one ``script`` per connection;
    ``received`` is every byte any connection sent to it, ``handshakes`` counts TLS handshakes
    that completed."""

    script: Script
    tls: ssl.SSLContext | None = None
    received: bytearray = field(default_factory=bytearray)
    connections: int = 0
    server: asyncio.Server | None = None
    port: int = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._on_client, "127.0.0.1", 0, ssl=self.tls)
        self.port = self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2):
                    await self.server.wait_closed()

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn = FakeConnection(reader, writer)
        try:
            await self.script(conn)
            # Keep reading what the client says until it leaves.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(3):
                    while data := await reader.read(65536):
                        conn.received += data
        except (OSError, TimeoutError, ValueError):
            pass
        finally:
            self.received += conn.received
            writer.close()


def event_line(seq: int, contact: dict[str, Any], kind: str = "arrived") -> dict[str, Any]:
    return {"type": kind, "seq": seq, "ts": time.time(), "scanner": "fake", "contact": contact,
            "zone": "near", "distance_m": 2.0, "rssi": -60.0, "via": "address"}
