"""The event sockets of SPEC §6: newline-delimited JSON over TCP and a Unix socket.

Per connection: ``hello``; then, within ``auth_timeout_s``, one ``subscribe`` (or ``status``)
line with a valid token; then ``subscribed`` with the snapshot, the replay (or ``resync``) and
live events from the hub's bounded per-subscriber queue. Nothing about any contact is written
before a valid subscribe. A ``ping`` goes out on any connection that was sent nothing for
``ping_interval_s``.

Defences: lines longer than ``max_line_bytes`` get ``too_large``, anything that is not one
UTF-8 JSON object gets ``bad_request``; both close. Wrong tokens get ``unauthorized`` and close;
each peer (IP address, or uid on the Unix socket) has a budget of failed attempts that refills
slowly, and a peer over it is refused at once. At ``max_connections`` a new connection evicts
the oldest one still unauthenticated, or is refused (``busy``) if every connection has
authenticated. A subscriber whose queue overflows, or whose unsent output grows past a bound,
is sent ``lagged`` and closed; a peer that then does not read is aborted after a grace period.
The kernel send buffer of each connection is kept small so these bounds hold per client.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import json
import os
import secrets
import socket
import stat
import struct
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hallway.config import ServerConfig, is_loopback_host
from hallway.errors import ConfigError, Problem, ProtocolError
from hallway.hub import Filter, Hub, Subscription, encode_line
from hallway.logs import get_logger

log = get_logger(__name__)

PROTOCOL_VERSION = 1
SNDBUF_BYTES = 64 * 1024
"""Kernel send buffer per connection; bounds what a non-reading client holds up."""
MAX_UNSENT_BYTES = 512 * 1024
"""Unsent output a connection may hold in user space before it is treated as lagged."""
LAG_GRACE_S = 10.0
"""How long a cut-off (lagged) client may take to read its last lines before an abort."""
REJECT_GRACE_S = 2.0
"""How long a refused client may take to read the error line before an abort."""
CLOSE_GRACE_S = 2.0
"""How long an orderly close may take to flush before an abort."""
MAX_LINGER_BYTES = 1 << 20
"""Input still read (and discarded) from a refused client before the socket is closed."""
DRAIN_TIMEOUT_S = 60.0
"""A subscriber that accepts no bytes for this long is cut off as lagged."""
CLOSE_TIMEOUT_S = 3.0
MAX_FILTER_ITEMS = 10_000
MAX_FILTER_ITEM_LEN = 256
AUTH_BURST = 10
"""Failed authentications a peer may make at once ..."""
AUTH_REFILL_PER_S = 0.5
"""... and how fast that budget refills."""
STREAK_QUIET_S = 60.0
MAX_PEERS_TRACKED = 4096
TOKEN_FILE_NAME = "token"  # noqa: S105 - a file name, not a secret


# -- tokens -----------------------------------------------------------------------------------


def _read_token_file(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        reason = exc.strerror or str(exc)
        problem = Problem(str(path), "server.token_file", f"cannot read: {reason}")
        raise ConfigError([problem]) from None
    tokens = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if len(line) < 16:
            problem = Problem(str(path), "server.token_file", "token shorter than 16 characters",
                              number)
            raise ConfigError([problem])
        tokens.append(line)
    if path.stat().st_mode & stat.S_IROTH:
        log.warning("token_file_world_readable", path=str(path))
    return tokens


def _create_token_file(path: Path) -> str:
    token = secrets.token_hex(24)  # hex: never starts with '-', safe as a CLI argument
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    try:
        fd = os.open(path, flags, 0o640)
    except FileExistsError:
        return ""
    except OSError as exc:
        reason = exc.strerror or str(exc)
        problem = Problem(str(path), "server.token_file", f"cannot create: {reason}")
        raise ConfigError([problem]) from None
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        os.fchmod(handle.fileno(), 0o640)
        handle.write(token + "\n")
    log.info("token_generated", path=str(path))
    return token


def load_tokens(config: ServerConfig, *, state_dir: Path | None, create: bool = True) -> list[str]:
    """The subscriber tokens: config ``tokens`` plus ``token_file``; else the state dir's token.

    With neither configured, ``<state_dir>/token`` is read, or generated (mode 0640) when
    ``create``. ``auth = "none"`` gives no tokens. Raises ConfigError when token auth is on and
    no token can be found.
    """
    if config.auth == "none":
        return []
    tokens = list(config.tokens)
    if config.token_file is not None:
        path = Path(config.token_file)
        if not path.exists() and create and not tokens:
            _create_token_file(path)
        tokens.extend(_read_token_file(path))
    if not tokens and state_dir is not None:
        path = state_dir / TOKEN_FILE_NAME
        if not path.exists() and create:
            _create_token_file(path)
        if path.exists():
            tokens.extend(_read_token_file(path))
    if not tokens:
        raise ConfigError([Problem("<config>", "server.tokens", "no subscriber token configured "
                                   '(set tokens or token_file, or auth = "none" on loopback)')])
    return tokens


# -- per-peer authentication budget -----------------------------------------------------------


@dataclass(slots=True)
class _PeerAuth:
    budget: float
    updated: float
    streak: int = 0
    last_failure: float = 0.0


class _AuthLimiter:
    """Failed-token budget per peer; logs the first failure of a streak, repeats at debug."""

    def __init__(self) -> None:
        self._peers: OrderedDict[str, _PeerAuth] = OrderedDict()
        self.refused = 0

    def _state(self, peer: str, now: float) -> _PeerAuth:
        state = self._peers.get(peer)
        if state is None:
            state = _PeerAuth(budget=AUTH_BURST, updated=now)
            self._peers[peer] = state
            while len(self._peers) > MAX_PEERS_TRACKED:
                self._peers.popitem(last=False)
        else:
            self._peers.move_to_end(peer)
            state.budget = min(AUTH_BURST, state.budget + (now - state.updated) * AUTH_REFILL_PER_S)
            state.updated = now
        return state

    def allowed(self, peer: str, now: float) -> bool:
        """False while ``peer`` has used up its budget of failed attempts."""
        if peer not in self._peers:
            return True
        if self._state(peer, now).budget >= 1.0:
            return True
        self.refused += 1
        self.failed(peer, now, listener="", refused=True)
        return False

    def failed(self, peer: str, now: float, *, listener: str, refused: bool = False) -> None:
        """Record one failed attempt and log it (warning once per streak)."""
        state = self._state(peer, now)
        if not refused:
            state.budget = max(0.0, state.budget - 1.0)
        if state.streak and now - state.last_failure > STREAK_QUIET_S:
            log.info("auth_failure_streak_ended", peer=peer, failures=state.streak)
            state.streak = 0
        state.streak += 1
        state.last_failure = now
        if state.streak == 1:
            log.warning("auth_failed", peer=peer, listener=listener)
        else:
            log.debug("auth_failed", peer=peer, streak=state.streak, refused=refused)

    def succeeded(self, peer: str) -> None:
        """End the peer's failure streak."""
        state = self._peers.pop(peer, None)
        if state is not None and state.streak > 1:
            log.info("auth_failure_streak_ended", peer=peer, failures=state.streak)


# -- connections ------------------------------------------------------------------------------


class _Reject(Exception):
    """Send one error line and close."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class _Connection:
    """One client: its streams, state and the single write path."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
        *, ident: int, listener: str, peer: str, loopback: bool,
    ) -> None:
        self.ident = ident
        self.listener = listener
        self.peer = peer
        self.loopback = loopback
        self.reader = reader
        self.writer = writer
        self._transport = writer.transport
        sock = writer.get_extra_info("socket")
        self._fd: int = sock.fileno() if sock is not None else -1
        self._flushed = False  # True: all we wrote is known to have gone to the kernel
        self.opened = time.monotonic()
        self.last_sent = self.opened
        self.authenticated = False
        self.subscription: Subscription | None = None
        self.closing = False
        self.task: asyncio.Task[Any] | None = None
        self._lingering = False
        self._expiry: asyncio.TimerHandle | None = None

    def send(self, data: bytes) -> bool:
        """Queue bytes for the peer; False once the connection is closing."""
        if self.closing or self.writer.transport.is_closing():
            return False
        self.writer.write(data)
        self._flushed = False  # it may sit in the transport's buffer: send_now must look
        self.last_sent = time.monotonic()
        return True

    def send_now(self, data: bytes) -> bool:
        """Write ``data`` if the connection holds no unsent output; False (nothing written)
        otherwise. The hub's fan-out path: no task wake-up, order and backpressure kept.

        It runs once per event per subscriber, so it writes to the socket itself rather than
        through the transport's general ``write``: only when the transport is open (its
        socket, and so this descriptor, is closed only after ``is_closing()`` turns true) and
        holds nothing unsent (so the order is kept; ``_flushed`` says so without asking while
        everything written went to the kernel). What the kernel does not take, and any error,
        goes to the transport, which buffers the rest or closes the connection as usual.
        """
        transport = self._transport
        if self.closing or transport.is_closing():
            return False
        if not self._flushed:
            if transport.get_write_buffer_size():
                return False
            self._flushed = True
        try:
            sent = os.write(self._fd, data)
        except OSError:  # full (BlockingIOError) or broken: the transport takes it from here
            sent = 0
        if sent < len(data):
            transport.write(data[sent:])
            self._flushed = False
        self.last_sent = time.monotonic()
        return True

    def send_json(self, obj: dict[str, Any]) -> bool:
        """Queue one protocol line."""
        return self.send(encode_line(obj))

    @property
    def unsent(self) -> int:
        """Bytes written but not yet handed to the kernel."""
        return self.writer.transport.get_write_buffer_size()

    def close(self, *, grace_s: float = CLOSE_GRACE_S, linger: bool = False) -> None:
        """Stop sending: flush what is queued, then close; abort if not done within ``grace_s``.

        With ``linger`` only the sending side is shut (FIN after the last line) and ``finish``
        reads and discards what the peer still sends: closing a socket with unread input sends
        a reset, which could destroy the error line before the peer reads it.
        """
        if self.closing:
            return
        self.closing = True
        if self.subscription is not None:
            self.subscription.close()
        transport = self.writer.transport
        self._expiry = asyncio.get_running_loop().call_later(grace_s, transport.abort)
        if transport.is_closing():
            return
        self._lingering = linger and transport.can_write_eof()
        if self._lingering:
            transport.write_eof()
        else:
            transport.close()

    async def finish(self) -> None:
        """After the handler: linger if asked (bounded), close, and wait for the close."""
        self.close()
        if self._lingering:
            discarded = 0
            with contextlib.suppress(ConnectionError, OSError):
                while discarded < MAX_LINGER_BYTES:
                    data = await self.reader.read(65536)
                    if not data:
                        break
                    discarded += len(data)
        self.writer.transport.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()  # bounded: the expiry timer aborts the transport
        if self._expiry is not None:
            self._expiry.cancel()

    def reject(self, code: str, message: str, *, grace_s: float = REJECT_GRACE_S) -> None:
        """Send an error line and close (lingering)."""
        self.send_json({"type": "error", "code": code, "message": message})
        self.close(grace_s=grace_s, linger=True)

    def abort(self) -> None:
        """Drop the connection now."""
        self.closing = True
        if self.subscription is not None:
            self.subscription.close()
        self.writer.transport.abort()


@dataclass(slots=True)
class _Counters:
    accepted: int = 0
    subscribed: int = 0
    status_requests: int = 0
    unauthorized: int = 0
    bad_request: int = 0
    too_large: int = 0
    lagged: int = 0
    auth_timeouts: int = 0
    evicted: int = 0
    refused_busy: int = 0
    refused_peer: int = 0
    pings: int = 0


def _parse_line(raw: bytes) -> dict[str, Any]:
    """One client line as a JSON object with a string ``type``, or ProtocolError(bad_request)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("bad_request", "line is not valid UTF-8") from None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        raise ProtocolError("bad_request", "line is not valid JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise ProtocolError("bad_request", 'expected a JSON object with a "type"')
    return data


def _string_list(data: dict[str, Any], key: str) -> list[str] | None:
    value = data.get(key)
    if value is None:
        return None
    if (
        not isinstance(value, list)
        or len(value) > MAX_FILTER_ITEMS
        or not all(isinstance(v, str) and 0 < len(v) <= MAX_FILTER_ITEM_LEN for v in value)
    ):
        raise ProtocolError("bad_request", f'"{key}" must be a list of non-empty strings')
    return value


def _since_seq(data: dict[str, Any]) -> int | None:
    value = data.get("since_seq")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ProtocolError("bad_request", '"since_seq" must be a non-negative integer')
    return value


def _knows_of(data: dict[str, Any]) -> str | None:
    """The ``knows_of`` contact id of a subscribe (events about the people it knows)."""
    value = data.get("knows_of")
    if value is None:
        return None
    if not isinstance(value, str) or not 1 <= len(value) <= 64:
        raise ProtocolError("bad_request", '"knows_of" must be a contact id (1-64 characters)')
    return value


class EventServer:
    """TCP and Unix-socket listeners speaking SPEC §6 on top of a Hub."""

    def __init__(
        self,
        config: ServerConfig,
        hub: Hub,
        *,
        scanner: str,
        version: str,
        tokens: Sequence[str],
        status_provider: Callable[[], dict[str, Any]] | None = None,
        present_provider: Callable[[], list[dict[str, Any]]] | None = None,
    ) -> None:
        if not tokens and config.tcp_enabled and not is_loopback_host(config.tcp_host):
            raise ConfigError([Problem("<config>", "server.tokens", "a token is required when "
                                       "tcp_host is not a loopback address")])
        self._config = config
        self._hub = hub
        self._scanner = scanner
        self._version = version
        # Compared as SHA-256 digests: equal lengths, so the time taken tells nothing either.
        self._tokens = [hashlib.sha256(t.encode()).digest() for t in tokens]
        self._status_provider = status_provider
        self._present_provider = present_provider
        self._servers: list[asyncio.Server] = []
        self._unix_path: Path | None = None
        self._unix_inode: tuple[int, int] | None = None
        self._conns: dict[int, _Connection] = {}
        self._next_ident = 1
        self._limiter = _AuthLimiter()
        self._n = _Counters()
        self._tcp_port: int | None = None
        self._closed = False

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind the configured listeners."""
        config = self._config
        limit = config.max_line_bytes
        try:
            if config.tcp_enabled:
                server = await asyncio.start_server(
                    self._on_tcp, host=config.tcp_host, port=config.tcp_port,
                    limit=limit, backlog=min(config.max_connections, 1024), reuse_address=True,
                )
                self._servers.append(server)
                self._tcp_port = int(server.sockets[0].getsockname()[1])
            if config.unix_socket:
                self._servers.append(await self._start_unix(Path(config.unix_socket), limit))
        except OSError as exc:
            await self.close()
            where = (f"{config.tcp_host}:{config.tcp_port}" if config.tcp_enabled
                     else str(config.unix_socket))
            raise ConfigError([Problem("<config>", "server", f"cannot listen on {where}: "
                                       f"{exc.strerror or exc}")]) from None
        log.info("server_listening", tcp_port=self._tcp_port, unix_socket=config.unix_socket,
                 auth="token" if self._tokens else "none")

    async def _start_unix(self, path: Path, limit: int) -> asyncio.Server:
        mode = int(self._config.unix_socket_mode, 8)
        try:
            existing: os.stat_result | None = os.lstat(path)
        except FileNotFoundError:
            existing = None
        if existing is not None:
            if not stat.S_ISSOCK(existing.st_mode):
                raise OSError(17, f"{path} exists and is not a socket")
            if await _socket_answers(path):
                raise OSError(98, f"another process is listening on {path}")
            os.unlink(path)
        # Bind under a temporary name, set the mode, then rename: never visible with a wider mode.
        temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(temp))
            os.chmod(temp, mode)
            os.rename(temp, path)
        except BaseException:
            sock.close()
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()
            raise
        info = os.stat(path)
        self._unix_path, self._unix_inode = path, (info.st_dev, info.st_ino)
        return await asyncio.start_unix_server(
            self._on_unix, sock=sock, limit=limit, backlog=min(self._config.max_connections, 1024)
        )

    async def stop_accepting(self) -> None:
        """Close the listeners (existing connections stay) and remove the socket file."""
        servers, self._servers = self._servers, []
        for server in servers:
            server.close()
        if self._unix_path is not None:
            with contextlib.suppress(OSError):
                info = self._unix_path.stat()
                if (info.st_dev, info.st_ino) == self._unix_inode:
                    self._unix_path.unlink()
            self._unix_path = None

    async def close(self) -> None:
        """Stop accepting, let subscribers drain briefly, then close every connection."""
        if self._closed:
            return
        self._closed = True
        await self.stop_accepting()
        for conn in list(self._conns.values()):
            sub = conn.subscription
            if conn.closing:
                conn.abort()  # it was told why already; no more lingering
            elif sub is not None:
                sub.finish()  # its handler sends what is queued, then closes
            else:
                conn.close(grace_s=1.0)
        tasks = [c.task for c in self._conns.values() if c.task is not None]
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=CLOSE_TIMEOUT_S)
        if pending:
            for conn in list(self._conns.values()):
                conn.abort()
            _, pending = await asyncio.wait(pending, timeout=1.0)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=CLOSE_TIMEOUT_S)

    @property
    def tcp_port(self) -> int | None:
        """The bound TCP port (useful when the configured port is 0)."""
        return self._tcp_port

    def stats(self) -> dict[str, int]:
        """Connection and protocol counters."""
        n = self._n
        conns = list(self._conns.values())
        return {
            "connections": sum(1 for c in conns if not c.closing),
            "closing": sum(1 for c in conns if c.closing),
            "subscribers": sum(1 for c in conns if c.subscription is not None),
            "unauthenticated": sum(1 for c in conns if not c.authenticated and not c.closing),
            "accepted": n.accepted,
            "subscribed": n.subscribed,
            "status_requests": n.status_requests,
            "unauthorized": n.unauthorized,
            "bad_request": n.bad_request,
            "too_large": n.too_large,
            "lagged": n.lagged,
            "auth_timeouts": n.auth_timeouts,
            "evicted": n.evicted,
            "refused_busy": n.refused_busy,
            "refused_peer": self._limiter.refused,
            "pings": n.pings,
        }

    # -- accepting ----------------------------------------------------------------------------

    async def _on_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peername = writer.get_extra_info("peername")
        host = str(peername[0]) if peername else "?"
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        await self._serve(reader, writer, listener="tcp", peer=host, loopback=loopback)

    async def _on_unix(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = "unix"
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                size = struct.calcsize("3i")
                creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, size)
                _, uid, _ = struct.unpack("3i", creds)
                peer = f"unix:uid={uid}"
        await self._serve(reader, writer, listener="unix", peer=peer, loopback=True)

    def _admit(self, conn: _Connection, now: float) -> bool:
        if not self._limiter.allowed(conn.peer, now):
            conn.reject("unauthorized", "too many failed attempts; try again later")
            return False
        active = sum(1 for c in self._conns.values() if not c.closing)
        if active < self._config.max_connections:
            return True
        waiting = [c for c in self._conns.values() if not c.authenticated and not c.closing]
        if not waiting:
            self._n.refused_busy += 1
            conn.reject("busy", "too many connections")
            return False
        oldest = min(waiting, key=lambda c: c.opened)
        self._n.evicted += 1
        oldest.reject("unauthorized", "connection limit reached before you subscribed")
        return True

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
        *, listener: str, peer: str, loopback: bool,
    ) -> None:
        ident = self._next_ident
        self._next_ident += 1
        task = asyncio.current_task()
        if task is not None:
            task.set_name(f"hallway-conn-{ident}")
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SNDBUF_BYTES)
        conn = _Connection(reader, writer, ident=ident, listener=listener, peer=peer,
                           loopback=loopback)
        conn.task = task
        self._n.accepted += 1
        admitted = not self._closed and self._admit(conn, time.monotonic())
        self._conns[ident] = conn  # tracked until its socket is closed, admitted or not
        try:
            if admitted:
                await self._guarded(conn)
            elif len(self._conns) > 2 * self._config.max_connections:
                conn.abort()  # a flood: refused sockets may not linger without bound either
            await conn.finish()
        except asyncio.CancelledError:
            # Only close() cancels these tasks, and asyncio's stream callback would log a
            # cancelled handler as an error: the cancellation ends here.
            conn.abort()
        finally:
            self._conns.pop(ident, None)

    async def _guarded(self, conn: _Connection) -> None:
        try:
            await self._run(conn)
        except _Reject as exc:
            self._count(exc.code)
            conn.reject(exc.code, exc.message)
        except (ConnectionError, OSError):
            conn.abort()
        except Exception:  # a fault in one connection must not take the server down
            log.exception("connection_failed", conn=conn.ident)
            conn.abort()

    def _count(self, code: str) -> None:
        if code == "unauthorized":
            self._n.unauthorized += 1
        elif code == "bad_request":
            self._n.bad_request += 1
        elif code == "too_large":
            self._n.too_large += 1

    # -- protocol -----------------------------------------------------------------------------

    def _ping(self, conn: _Connection) -> None:
        if conn.send_json({"type": "ping", "seq": self._hub.last_seq, "ts": round(time.time(), 3)}):
            self._n.pings += 1

    async def _read_message(self, conn: _Connection) -> dict[str, Any] | None:
        """The next non-blank line as a message; None at end of input."""
        while True:
            try:
                raw = await conn.reader.readline()
            except ValueError:
                raise _Reject("too_large", f"line longer than {self._config.max_line_bytes} "
                              "bytes") from None
            if not raw:
                return None
            if not raw.strip():
                continue
            try:
                return _parse_line(raw)
            except ProtocolError as exc:
                raise _Reject(exc.code, str(exc)) from None

    async def _run(self, conn: _Connection) -> None:
        config = self._config
        conn.send_json({
            "type": "hello", "protocol": PROTOCOL_VERSION, "server": f"hallway/{self._version}",
            "scanner": self._scanner, "auth": "token" if self._tokens else "none",
        })
        deadline = conn.opened + config.auth_timeout_s
        while conn.subscription is None:
            now = time.monotonic()
            if now >= deadline and not conn.authenticated:
                self._n.auth_timeouts += 1
                limit = f"{config.auth_timeout_s:g} s"
                raise _Reject("unauthorized", f"no valid subscribe within {limit}")
            next_ping = conn.last_sent + config.ping_interval_s
            wake = next_ping if conn.authenticated else min(deadline, next_ping)
            try:
                async with asyncio.timeout(max(wake - now, 0.0)):
                    message = await self._read_message(conn)
            except TimeoutError:
                if time.monotonic() >= next_ping:
                    self._ping(conn)
                continue
            if message is None or conn.closing:
                return
            self._handle_first(conn, message)
        await self._stream(conn, conn.subscription)

    def _authorize(self, conn: _Connection, message: dict[str, Any]) -> None:
        if conn.authenticated:
            return
        now = time.monotonic()
        if not self._tokens:
            if conn.listener == "tcp" and not conn.loopback:
                raise _Reject("unauthorized", "this server accepts only local connections")
            conn.authenticated = True
            return
        token = message.get("token")
        given = hashlib.sha256(token.encode() if isinstance(token, str) else b"").digest()
        matched = False
        for candidate in self._tokens:
            matched |= hmac.compare_digest(given, candidate)
        if not matched:
            self._limiter.failed(conn.peer, now, listener=conn.listener)
            raise _Reject("unauthorized", "missing or wrong token")
        self._limiter.succeeded(conn.peer)
        conn.authenticated = True

    def _handle_first(self, conn: _Connection, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind not in ("subscribe", "status", "present"):
            raise _Reject("bad_request", 'expected a "subscribe" line')
        self._authorize(conn, message)
        if not self._hub.running:
            raise _Reject("busy", "shutting down")
        if kind == "status":
            self._send_status(conn)
            return
        if kind == "present":
            self._send_present(conn, message)
            return
        try:
            contacts = _string_list(message, "contacts")
            tags = _string_list(message, "tags")
            since_seq = _since_seq(message)
            knows_of = _knows_of(message)
        except ProtocolError as exc:
            raise _Reject(exc.code, str(exc)) from None
        conn.subscription = self._hub.subscribe(
            contacts=contacts, tags=tags, knows_of=knows_of, since_seq=since_seq,
            queue_size=self._config.queue_size, on_lagged=lambda: self._lagged(conn),
        )
        self._n.subscribed += 1

    def _send_status(self, conn: _Connection) -> None:
        self._n.status_requests += 1
        if self._status_provider is not None:
            body = dict(self._status_provider())
        else:
            body = {"scanner": self._scanner, "server": f"hallway/{self._version}",
                    "seq": self._hub.last_seq, "hub": self._hub.stats(),
                    "sockets": self.stats()}
        conn.send_json({**body, "type": "status"})

    def _send_present(self, conn: _Connection, message: dict[str, Any]) -> None:
        """The live estimates (not the event-consistent snapshot of ``subscribed``) of the
        present contacts that pass the message's filters."""
        try:
            contacts = _string_list(message, "contacts")
            tags = _string_list(message, "tags")
        except ProtocolError as exc:
            raise _Reject(exc.code, str(exc)) from None
        wanted = Filter.of(contacts, tags)
        entries = self._present_provider() if self._present_provider else self._hub.present()
        conn.send_json({"type": "present", "present": [
            entry for entry in entries
            if wanted.matches(entry["contact"]["id"], frozenset(entry["contact"].get("tags", ())))
        ]})

    def _lagged(self, conn: _Connection) -> None:
        if conn.closing:
            return
        self._n.lagged += 1
        log.info("subscriber_lagged", conn=conn.ident, peer=conn.peer)
        conn.reject("lagged", "you fell behind; reconnect with since_seq to resume",
                    grace_s=LAG_GRACE_S)

    async def _stream(self, conn: _Connection, sub: Subscription) -> None:
        ping_s = self._config.ping_interval_s
        conn.send_json({"type": "subscribed", "seq": sub.seq, "present": sub.present})
        reader = asyncio.create_task(
            self._read_after(conn, sub), name=f"hallway-conn-{conn.ident}-rx"
        )
        try:
            if sub.resync:
                self._resync(conn, sub)
            elif sub.needs_replay and sub.since_seq is not None:
                cursor = sub.since_seq
                while cursor < sub.seq and not conn.closing:
                    page = await self._hub.replay(sub, after=cursor)
                    if page is None:
                        self._resync(conn, sub)
                        break
                    cursor, lines = page
                    if lines:
                        conn.send(b"".join(lines))
                        await self._drain(conn)
                sub.replay_done()
            # Live: the hub writes each line itself while this connection keeps up; this task
            # wakes only for pings, a backlog (the peer is slow) or the end.
            sub.attach(conn.send_now)
            while not conn.closing:
                wait = conn.last_sent + ping_s - time.monotonic()
                if wait <= 0:
                    self._ping(conn)
                    continue
                live = await sub.get(wait)
                if live is None:
                    break
                if live:
                    conn.send(b"".join(live))
                await self._drain(conn)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader

    def _resync(self, conn: _Connection, sub: Subscription) -> None:
        conn.send_json({
            "type": "resync", "seq": sub.seq, "since_seq": sub.since_seq, "present": sub.present,
            "message": "the events after since_seq are no longer held",
        })

    async def _drain(self, conn: _Connection) -> None:
        if conn.unsent > MAX_UNSENT_BYTES:
            self._lagged(conn)
            return
        try:
            async with asyncio.timeout(DRAIN_TIMEOUT_S):
                await conn.writer.drain()
        except TimeoutError:
            self._lagged(conn)

    async def _read_after(self, conn: _Connection, sub: Subscription) -> None:
        """Lines after subscribing: status requests; errors close; end of input is allowed."""
        try:
            while not conn.closing:
                message = await self._read_message(conn)
                if message is None or conn.closing:
                    break
                if message["type"] == "status":
                    self._send_status(conn)
                elif message["type"] == "present":
                    self._send_present(conn, message)
                elif message["type"] == "subscribe":
                    raise _Reject("bad_request", "already subscribed")
        except _Reject as exc:
            self._count(exc.code)
            conn.reject(exc.code, exc.message)
            return
        except (ConnectionError, OSError):
            conn.abort()
            return
        # The peer may have only shut down its sending side: keep streaming until it is gone.
        # Shielded: cancelling a wait on the stream's close future would cancel the future.
        closed = asyncio.create_task(conn.writer.wait_closed(),
                                     name=f"hallway-conn-{conn.ident}-closed")
        closed.add_done_callback(_consume_result)
        with contextlib.suppress(ConnectionError, OSError):
            await asyncio.shield(closed)
        sub.close()


def _consume_result(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()


async def _socket_answers(path: Path) -> bool:
    """True if something accepts connections on the Unix socket at ``path``."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), timeout=1.0)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True
