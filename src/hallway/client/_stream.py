"""One connection to a daemon: TCP, TLS with a pinned certificate, or a Unix socket, reading
whole JSON lines.

The TLS handshake is completed and the certificate's fingerprint compared before a single
byte is read or sent over it, so a server that cannot prove the pinned certificate never
sees a token.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import hmac
import json
import socket
import ssl
from typing import Any

from hallway.client._errors import FingerprintMismatch, ProtocolError
from hallway.client._target import Target

DEFAULT_BUFFER_BYTES = 4 << 20
CHUNK_BYTES = 1 << 16
_decode = json.JSONDecoder().decode


class ConnectionCut(ConnectionError):
    """The connection ended in the middle of a line (the partial line is discarded)."""


def tls_context() -> ssl.SSLContext:
    """TLS 1.2+ without CA validation: the server is authenticated by its pinned fingerprint."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def certificate_fingerprint(der: bytes) -> str:
    """The SHA-256 of a certificate's DER form, as 64 lowercase hex digits."""
    return hashlib.sha256(der).hexdigest()


def _keepalive(sock: socket.socket) -> None:
    """No delay for small writes, and TCP keepalive so a daemon whose host vanished is noticed
    within about a minute, whatever its ping interval."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in (("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3)):
            if hasattr(socket, name):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


class Stream:
    """A line-oriented connection; ``read`` returns one JSON object or None at a clean end."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 where: str, *, line_limit: int = DEFAULT_BUFFER_BYTES) -> None:
        self._reader = reader
        self._writer = writer
        self._lines: collections.deque[bytes] = collections.deque()
        self._partial = b""
        self._line_limit = line_limit
        self.where = where

    @classmethod
    async def open(cls, target: Target, *, timeout_s: float,
                   buffer_bytes: int = DEFAULT_BUFFER_BYTES) -> Stream:
        """Connect (and for TLS, verify the pinned certificate) within ``timeout_s``.

        OSError/TimeoutError when nothing answers; FingerprintMismatch when the certificate
        is not the pinned one."""
        where = target.describe()
        async with asyncio.timeout(timeout_s):
            if target.path is not None:
                reader, writer = await asyncio.open_unix_connection(
                    target.path, limit=buffer_bytes)
            elif target.fingerprint is None:
                reader, writer = await asyncio.open_connection(
                    target.host, target.port, limit=buffer_bytes)
            else:
                reader, writer = await asyncio.open_connection(
                    target.host, target.port, limit=buffer_bytes, ssl=tls_context(),
                    server_hostname=target.host, ssl_handshake_timeout=timeout_s)
        stream = cls(reader, writer, where, line_limit=buffer_bytes)
        if target.fingerprint is not None:
            ssl_object = writer.get_extra_info("ssl_object")
            der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
            got = certificate_fingerprint(der) if der else None
            if got is None or not hmac.compare_digest(got, target.fingerprint):
                await stream.close()
                raise FingerprintMismatch(where, target.fingerprint, got)
        sock = writer.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            _keepalive(sock)
        return stream

    async def read(self, timeout_s: float | None = None) -> dict[str, Any] | None:
        """The next line as a JSON object; None when the server closed cleanly between lines.

        ConnectionCut when it closed inside a line, ProtocolError when a line is not a JSON
        object or is longer than the buffer, TimeoutError after ``timeout_s`` of silence.
        Lines are taken from the socket a chunk at a time (one wait for many lines)."""
        while not self._lines:
            async with asyncio.timeout(timeout_s):
                chunk = await self._reader.read(CHUNK_BYTES)
            if not chunk:
                if self._partial:
                    self._partial = b""
                    raise ConnectionCut(
                        f"{self.where}: the connection ended in the middle of a line")
                return None
            *complete, self._partial = (self._partial + chunk).split(b"\n")
            self._lines.extend(line for line in complete if line.strip())
            if len(self._partial) > self._line_limit:
                raise ProtocolError(f"{self.where}: a line longer than the read buffer")
        line = self._lines.popleft()
        try:
            value = _decode(line.decode())
        except ValueError:
            raise ProtocolError(f"{self.where}: a line that is not JSON") from None
        if not isinstance(value, dict):
            raise ProtocolError(f"{self.where}: a line that is not a JSON object")
        return value

    async def send(self, message: dict[str, Any]) -> None:
        """Write one message as a line."""
        self._writer.write(json.dumps(message).encode() + b"\n")
        await self._writer.drain()

    async def close(self) -> None:
        """Close the connection (without waiting long for the peer)."""
        self._writer.close()
        with contextlib.suppress(OSError, TimeoutError, ssl.SSLError):
            async with asyncio.timeout(1.0):
                await self._writer.wait_closed()
