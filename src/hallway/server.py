"""The event sockets of SPEC §6: newline-delimited JSON over TCP and a Unix socket.

This module only moves bytes: the rules of a session (hello, auth, subscribe, status/present,
pings, the auth deadline, scopes and per-token caps) live in ``hallway.session``, a sans-IO
core that is fed each line and the time and returns actions; ``EventServer._act`` carries
them out. Per connection: ``hello``; then, within ``auth_timeout_s``, one ``subscribe`` (or
``status``/``present``) line with a valid token; then ``subscribed`` with the snapshot, the
replay (or ``resync``) and live events from the hub's bounded per-subscriber queue. Nothing
about any contact is written before a valid subscribe.

Defences: lines longer than ``max_line_bytes`` get ``too_large``, anything that is not one
UTF-8 JSON object gets ``bad_request``; both close. Wrong tokens get ``unauthorized`` (past a
per-address budget ``rate_limited`` with ``retry_after_s``) and close; a valid token is served
whatever its address did. At ``max_connections`` a new connection evicts the oldest one still
unauthenticated, or is refused (``busy``) if every connection has authenticated; one token
holds at most ``max_connections_per_token``. A subscriber whose queue overflows, or whose
unsent output grows past a bound, is sent ``lagged`` and closed; a peer that then does not
read is aborted after a grace period. The kernel send buffer of each connection is kept small
so these bounds hold per client.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ipaddress
import os
import secrets
import socket
import sqlite3
import ssl
import stat
import struct
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hallway.access import WATCH_INTERVAL_S, TokenWatch
from hallway.codec import encode_line
from hallway.config import Config, ServerConfig, is_loopback_host
from hallway.errors import ConfigError, Problem
from hallway.hub import Hub, Subscription
from hallway.logs import get_logger
from hallway.session import (
    UNSCOPED,
    Action,
    Close,
    Gate,
    Rules,
    Scope,
    Send,
    SendPing,
    SendPresent,
    SendStatus,
    Session,
    StartSubscription,
    State,
    token_digest,
)
from hallway.tls import server_context

log = get_logger(__name__)

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
HANDSHAKES_AT_ONCE = 8
"""TLS handshakes the server runs at the same time (each is a few ms of CPU on the loop)."""
HANDSHAKES_PER_ADDRESS = 3
"""... of which one address may run at most this many; its others wait their turn."""
HANDSHAKE_RATE_PER_ADDRESS = 20.0
"""After a burst of ``max_connections``, one address starts at most this many handshakes a
second; its next waits (a wait past its deadline ends the connection at once)."""
HANDSHAKES_PER_TURN = 2
"""... and at most this many start in one turn of the event loop: a burst of ClientHellos is
spread over turns, so event delivery runs between them (each costs about half a ms)."""
HANDSHAKE_SLOT_S = 2.0
"""A TLS handshake must finish within this long of its ClientHello."""
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


@dataclass(frozen=True, slots=True)
class Security:
    """What secures a server beyond its config: the TLS context and the token database."""

    tls: ssl.SSLContext | None
    token_db: Path | None


def security(config: Config, *, state_dir: Path | None) -> Security:
    """The TLS context (the certificate made at first start if needed) and the token table;
    warns when the TCP socket serves a network without TLS."""
    server = config.server
    folder = state_dir or Path(config.storage.database).resolve().parent
    context = server_context(server, folder) if server.tcp_enabled else None
    if server.plain_off_loopback:
        log.warning("tcp_without_tls", host=server.tcp_host,
                    hint="tokens and contact data cross the network in clear; set server.tls")
    database = config.storage.database
    token_db = None if database == ":memory:" or server.auth == "none" else Path(database)
    return Security(context, token_db)


# -- connections ------------------------------------------------------------------------------


class _Connection:
    """One client: its streams, state and the single write path."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
        *, ident: int, session: Session,
    ) -> None:
        self.ident = ident
        self.session = session
        self.listener = session.listener
        self.peer = session.peer
        self.reader = reader
        self.writer = writer
        self._transport = writer.transport
        self.opened = session.opened
        self.last_sent = self.opened
        self.subscription: Subscription | None = None
        self.in_handshake = False
        self.closing = False
        self.on_closing: Callable[[_Connection], None] | None = None
        self.task: asyncio.Task[Any] | None = None
        self._lingering = False
        self._expiry: asyncio.TimerHandle | None = None

    def upgraded(self) -> None:
        """The stream now runs over TLS: write through the new transport."""
        self._transport = self.writer.transport

    @property
    def transport(self) -> asyncio.WriteTransport:
        """The stream's transport, or the last one known when asyncio left the stream without
        one (a connection lost just as its TLS handshake ended)."""
        current: asyncio.WriteTransport | None = self.writer.transport
        return self._transport if current is None else current

    def send(self, data: bytes) -> bool:
        """Queue bytes for the peer; False once the connection is closing."""
        if self.closing or self.transport.is_closing():
            return False
        self.writer.write(data)
        self.last_sent = time.monotonic()
        return True

    def send_now(self, data: bytes) -> bool:
        """Write ``data`` if the connection holds no unsent output; False (nothing written)
        otherwise. The hub's fan-out path: no task wake-up, order and backpressure kept.

        Through the transport, which hands the bytes to the socket (or to TLS) at once when its
        buffer is empty and keeps what the kernel does not take; a non-empty buffer means
        earlier lines still wait, so this line must wait behind them (in the queue).
        """
        transport = self._transport
        if self.closing or transport.is_closing() or transport.get_write_buffer_size():
            return False
        transport.write(data)
        self.last_sent = time.monotonic()
        return True

    def send_json(self, obj: dict[str, Any]) -> bool:
        """Queue one protocol line."""
        return self.send(encode_line(obj))

    @property
    def unsent(self) -> int:
        """Bytes written but not yet handed to the kernel."""
        return self.transport.get_write_buffer_size()

    def close(self, *, grace_s: float = CLOSE_GRACE_S, linger: bool = False) -> None:
        """Stop sending: flush what is queued, then close; abort if not done within ``grace_s``.

        With ``linger`` only the sending side is shut (FIN after the last line) and ``finish``
        reads and discards what the peer still sends: closing a socket with unread input sends
        a reset, which could destroy the error line before the peer reads it.
        """
        if self.closing:
            return
        self._mark_closing()
        if self.subscription is not None:
            self.subscription.close()
        transport = self.transport
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
        self.transport.close()
        # Bounded: the expiry timer aborts the transport (and a stream asyncio left without
        # one may never hear of its close: the timeout).
        with contextlib.suppress(ConnectionError, OSError, TimeoutError):
            async with asyncio.timeout(CLOSE_GRACE_S + CLOSE_TIMEOUT_S):
                await self.writer.wait_closed()
        if self._expiry is not None:
            self._expiry.cancel()

    def reject(self, code: str, message: str, *, grace_s: float = REJECT_GRACE_S,
               extra: dict[str, Any] | None = None) -> None:
        """Send an error line and close (lingering)."""
        self.send_json({"type": "error", "code": code, "message": message, **(extra or {})})
        self.close(grace_s=grace_s, linger=True)

    def _mark_closing(self) -> None:
        if not self.closing:
            self.closing = True
            if self.on_closing is not None:
                self.on_closing(self)

    @property
    def authenticated(self) -> bool:
        """True once the session accepted a token."""
        return self.session.state in (State.AUTHENTICATED, State.SUBSCRIBED)

    def abort(self) -> None:
        """Drop the connection now."""
        self._mark_closing()
        if self.subscription is not None:
            self.subscription.close()
        self.transport.abort()


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
    rate_limited: int = 0
    tls_failed: int = 0
    pings: int = 0


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
        token_db: Path | None = None,
        tls: ssl.SSLContext | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not tokens and config.tcp_enabled and not is_loopback_host(config.tcp_host):
            raise ConfigError([Problem("<config>", "server.tokens", "a token is required when "
                                       "tcp_host is not a loopback address")])
        self._config = config
        self._hub = hub
        self._scanner = scanner
        self._version = version
        self._rules = Rules(auth_timeout_s=config.auth_timeout_s,
                            ping_interval_s=config.ping_interval_s,
                            max_line_bytes=config.max_line_bytes,
                            server=f"hallway/{version}", scanner=scanner,
                            lookup=hub.contact)
        per_token = config.max_connections_per_token or max(1, config.max_connections * 3 // 4)
        self._gate = Gate(max_connections_per_token=per_token)
        self._handshake_slots = asyncio.Semaphore(HANDSHAKES_AT_ONCE)
        self._peer_slots = _PeerSlots(HANDSHAKES_PER_ADDRESS)
        self._turns = _TurnGate(HANDSHAKES_PER_TURN)
        self._pace = _PeerPace(HANDSHAKE_RATE_PER_ADDRESS, burst=config.max_connections)
        # Compared as SHA-256 digests: equal lengths, so the time taken tells nothing either.
        self._config_tokens = [
            (token_digest(t), Scope(f"{UNSCOPED}-{n}")) for n, t in enumerate(tokens, start=1)
        ]
        self._scoped: list[tuple[bytes, Scope]] = []
        self._gate.set_tokens(self._config_tokens)
        self._tls = tls
        self._clock = clock  # the events' clock, for a token's history bound
        self._watch = TokenWatch(token_db) if token_db is not None and tokens else None
        self._watcher: asyncio.Task[None] | None = None
        self._status_provider = status_provider
        self._present_provider = present_provider
        self._servers: list[asyncio.Server] = []
        self._unix_path: Path | None = None
        self._unix_inode: tuple[int, int] | None = None
        self._conns: dict[int, _Connection] = {}
        # Kept as connections change, so that admitting one under a flood costs no scan of
        # all the others: how many are open (not closing); the ones admitted but not yet
        # authenticated, oldest first (insertion order), in all and by address; and how many
        # addresses hold each number of them, with the highest such number.
        self._open = 0
        self._waiting_all: dict[int, _Connection] = {}
        self._waiting: dict[str, dict[int, _Connection]] = {}
        self._holding: collections.Counter[int] = collections.Counter()
        self._most = 0
        self._next_ident = 1
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
        if self._watch is not None:
            await self._read_tokens()
            self._watcher = asyncio.create_task(self._watch_tokens(), name="hallway-token-watch")
        log.info("server_listening", tcp_port=self._tcp_port, unix_socket=config.unix_socket,
                 auth="none" if self._gate.open else "token", tls=self._tls is not None)

    async def _read_tokens(self) -> None:
        assert self._watch is not None
        try:
            tokens = await asyncio.to_thread(self._watch.read)
        except sqlite3.Error as exc:
            log.debug("token_table_unreadable", error=str(exc))
            return
        if tokens != self._scoped:
            self.set_scoped_tokens(tokens)

    async def _watch_tokens(self) -> None:
        """Read the token table every second: new tokens work, revoked ones end."""
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            await self._read_tokens()

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
        # Bind inside a fresh directory only this process can enter (mkdtemp: 0700, a new
        # name), set the mode there, then rename into place: no one can swap the socket for a
        # symlink before the chmod, and the socket is never visible with a wider mode.
        # Short names: a Unix socket's path is limited to 107 bytes, and this one is longer
        # than the final path by only a few characters.
        private = Path(tempfile.mkdtemp(prefix=".hw", dir=path.parent))
        temp = private / "s"
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
        finally:
            with contextlib.suppress(OSError):
                os.rmdir(private)
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
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        if self._watch is not None:
            self._watch.close()
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
            "refused_peer": self._gate.refused_peer,
            "rate_limited": n.rate_limited,
            "tls_failed": n.tls_failed,
            "pings": n.pings,
        }

    # -- tokens -------------------------------------------------------------------------------

    def set_scoped_tokens(self, tokens: Sequence[tuple[bytes, Scope]]) -> int:
        """Replace the scoped tokens (digest, scope); end the connections of any token that
        was revoked or whose scope changed. Returns how many connections were ended."""
        self._scoped = list(tokens)
        gone = self._gate.set_tokens([*self._config_tokens, *self._scoped])
        ended = 0
        if gone:
            for conn in list(self._conns.values()):
                scope = conn.session.scope
                if scope is not None and scope.name in gone and not conn.closing:
                    self._act(conn, conn.session.revoked())
                    ended += 1
            if ended:
                log.info("token_connections_ended", tokens=len(gone), connections=ended)
        return ended

    # -- accepting ----------------------------------------------------------------------------

    async def _on_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peername = writer.get_extra_info("peername")
        host = str(peername[0]) if peername else "?"
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        await self._serve(reader, writer, listener="tcp", peer=host, loopback=loopback,
                          tls=self._tls)

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

    def _admit(self, conn: _Connection) -> bool:
        if self._open < self._config.max_connections:
            return True
        if not self._waiting_all:
            self._n.refused_busy += 1
            conn.reject("busy", "too many connections")
            return False
        # The oldest waiting connection of the address holding the most: one address's flood
        # (of handshakes or idle sockets) evicts itself, never the others' clients.
        # (Idents grow with the opening time: the first found is the oldest. Under a flood
        # from one address it is near the front; from many, every address holds as many.)
        most, waiting = self._most, self._waiting
        oldest = next(c for c in self._waiting_all.values() if len(waiting[c.peer]) == most)
        self._n.evicted += 1
        if oldest.in_handshake:
            oldest.abort()  # no line can be said in the middle of a TLS handshake
        else:
            oldest.reject("unauthorized", "connection limit reached before you subscribed")
        return True

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
        *, listener: str, peer: str, loopback: bool, tls: ssl.SSLContext | None = None,
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
        session = Session(self._gate, self._rules, opened=time.monotonic(), peer=peer,
                          listener=listener, loopback=loopback)
        conn = _Connection(reader, writer, ident=ident, session=session)
        conn.task = task
        self._n.accepted += 1
        admitted = not self._closed and self._admit(conn)
        self._conns[ident] = conn  # tracked until its socket is closed, admitted or not
        if admitted:
            self._open += 1
            self._wait(conn)
            conn.on_closing = self._on_closing
            if conn.authenticated:  # no token asked (auth "none"): nothing to wait for
                self._unwait(conn)
        try:
            if tls is not None:
                admitted = admitted and await self._start_tls(conn, tls)
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
            if not conn.closing and conn.on_closing is not None:
                self._on_closing(conn)  # ended without a close (cancelled at shutdown)
            session.end()
            self._conns.pop(ident, None)

    def _on_closing(self, conn: _Connection) -> None:
        """An admitted connection starts closing: it is no longer open, nor waiting."""
        conn.on_closing = None
        self._open -= 1
        self._unwait(conn)

    def _wait(self, conn: _Connection) -> None:
        """``conn`` waits to authenticate."""
        conns = self._waiting.setdefault(conn.peer, {})
        conns[conn.ident] = conn
        self._waiting_all[conn.ident] = conn
        held = len(conns)
        self._holding[held - 1] -= 1
        self._holding[held] += 1
        self._most = max(self._most, held)

    def _unwait(self, conn: _Connection) -> None:
        """``conn`` no longer waits to authenticate (it did, or it is closing)."""
        if self._waiting_all.pop(conn.ident, None) is None:
            return
        conns = self._waiting[conn.peer]
        held = len(conns)
        del conns[conn.ident]
        if not conns:
            del self._waiting[conn.peer]
        self._holding[held] -= 1
        self._holding[held - 1] += 1
        while self._most and self._holding[self._most] <= 0:
            self._most -= 1

    async def _start_tls(self, conn: _Connection, context: ssl.SSLContext) -> bool:
        """The TLS handshake, within the connection's auth deadline; False (aborted) if it
        fails. It runs as an admitted, unauthenticated connection: counted, and evicted first
        when its address holds the most connections waiting."""
        deadline = conn.opened + self._config.auth_timeout_s
        conn.in_handshake = True
        try:
            # Nothing is spent on a client until its ClientHello is there. Then one address
            # runs at most HANDSHAKES_PER_ADDRESS handshakes (its others wait, costing
            # nothing), and the server at most HANDSHAKES_AT_ONCE, so their CPU interleaves
            # with event delivery instead of queueing ahead of it and one address's flood
            # cannot take every turn; each must finish within HANDSHAKE_SLOT_S.
            async with asyncio.timeout(max(deadline - time.monotonic(), 0.1)):
                await _readable(conn.writer.transport)
                wait = self._pace.take(conn.peer, time.monotonic(), deadline)
                if wait is None:
                    raise TimeoutError  # its address's handshakes are booked past its deadline
                if wait > 0:
                    await asyncio.sleep(wait)
                async with self._peer_slots.slot(conn.peer), self._handshake_slots:
                    await self._turns.wait()
                    limit = min(HANDSHAKE_SLOT_S, deadline - time.monotonic())
                    await conn.writer.start_tls(context,
                                                ssl_handshake_timeout=max(limit, 0.1))
        except AttributeError as exc:
            # asyncio's start_tls gives the stream no transport when the connection is lost
            # just as the handshake ends, and the stream then fails on it: a failed handshake.
            if conn.writer.transport is not None:
                raise
            self._n.tls_failed += 1
            log.debug("tls_handshake_failed", peer=conn.peer, error=type(exc).__name__)
            conn.abort()
            return False
        except (ssl.SSLError, ConnectionError, OSError, TimeoutError) as exc:
            self._n.tls_failed += 1
            log.debug("tls_handshake_failed", peer=conn.peer, error=type(exc).__name__)
            conn.abort()
            return False
        finally:
            conn.in_handshake = False
        conn.upgraded()
        return not conn.closing

    async def _guarded(self, conn: _Connection) -> None:
        try:
            await self._run(conn)
        except (ConnectionError, OSError):
            conn.abort()
        except Exception:  # a fault in one connection must not take the server down
            log.exception("connection_failed", conn=conn.ident)
            conn.abort()

    # -- carrying out the session's actions ---------------------------------------------------

    def _act(self, conn: _Connection, actions: list[Action]) -> None:
        """Do what the session asked, in order (the one dispatch of every request)."""
        if conn.authenticated:
            self._unwait(conn)
        for action in actions:
            if conn.closing:
                return
            if isinstance(action, Send):
                conn.send_json(action.message)
            elif isinstance(action, SendPing):
                if conn.send_json({"type": "ping", "seq": self._hub.last_seq,
                                   "ts": round(time.time(), 3)}):
                    self._n.pings += 1
            elif isinstance(action, Close):
                self._close(conn, action)
            elif not self._hub.running:
                self._close(conn, Close("busy", "shutting down"))
            elif isinstance(action, SendStatus):
                self._send_status(conn)
            elif isinstance(action, SendPresent):
                self._send_present(conn, action)
            else:
                self._subscribe(conn, action)

    def _close(self, conn: _Connection, action: Close) -> None:
        code = action.code
        refusal = conn.session.refusal
        if refusal is not None:  # a wrong token: warn at the first of a run, then debug
            if refusal.streak == 1:
                log.warning("auth_failed", peer=conn.peer, listener=conn.listener)
            else:
                log.debug("auth_failed", peer=conn.peer, streak=refusal.streak, code=code)
        if code == "unauthorized":
            self._n.unauthorized += 1
            if conn.session.auth_timed_out:
                self._n.auth_timeouts += 1
        elif code == "rate_limited":
            self._n.rate_limited += 1
        elif code == "bad_request":
            self._n.bad_request += 1
        elif code == "too_large":
            self._n.too_large += 1
        conn.reject(code, action.message, extra=action.extra)

    async def _run(self, conn: _Connection) -> None:
        session = conn.session
        self._act(conn, session.start())
        while conn.subscription is None and not conn.closing:
            if not await self._receive(conn):
                return
        if conn.subscription is not None and not conn.closing:
            await self._stream(conn, conn.subscription)

    async def _receive(self, conn: _Connection, *, ticks: bool = True) -> bool:
        """Read one line (or wait for the session's next tick) and act on it; False at end."""
        session = conn.session
        wait = session.wake_at(conn.last_sent) - time.monotonic() if ticks else None
        try:
            async with asyncio.timeout(None if wait is None else max(wait, 0.0)):
                raw = await conn.reader.readline()
        except TimeoutError:
            self._act(conn, session.tick(time.monotonic(), conn.last_sent))
            return True
        except ValueError:  # the stream's line limit: max_line_bytes
            self._act(conn, session.too_large())
            return False
        if not raw:
            return False
        self._act(conn, session.receive(raw, time.monotonic()))
        return not conn.closing

    def _subscribe(self, conn: _Connection, action: StartSubscription) -> None:
        scope = action.scope
        hidden = scope.hidden_fields
        conn.subscription = self._hub.subscribe(
            filter_=action.filter, since_seq=action.since_seq,
            queue_size=self._config.queue_size, on_lagged=lambda: self._lagged(conn),
            max_replay=self._config.max_replay_events,
            transform=scope.project if hidden else None,
        )
        if hidden:
            sub = conn.subscription
            sub.present = [scope.project_entry(entry) for entry in sub.present]
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

    def _send_present(self, conn: _Connection, action: SendPresent) -> None:
        """The live estimates (not the event-consistent snapshot of ``subscribed``) of the
        present contacts that pass the request's filter (within the token's scope)."""
        wanted = action.filter
        entries = self._present_provider() if self._present_provider else self._hub.present()
        conn.send_json({"type": "present", "present": [
            action.scope.project_entry(entry) for entry in entries
            if wanted.matches(entry["contact"]["id"], frozenset(entry["contact"].get("tags", ())))
        ]})

    def _lagged(self, conn: _Connection) -> None:
        if conn.closing:
            return
        self._n.lagged += 1
        log.info("subscriber_lagged", conn=conn.ident, peer=conn.peer)
        conn.reject("lagged", "you fell behind; reconnect with since_seq to resume",
                    grace_s=LAG_GRACE_S)

    def _history_bound(self, scope: Scope) -> float | None:
        if scope.history_s is None:
            return None
        newest = self._hub.newest_ts
        now = self._clock()
        return (now if newest is None else max(now, newest)) - scope.history_s

    async def _stream(self, conn: _Connection, sub: Subscription) -> None:
        session = conn.session
        conn.send_json({"type": "subscribed", "seq": sub.seq, "present": sub.present})
        reader = asyncio.create_task(
            self._read_after(conn, sub), name=f"hallway-conn-{conn.ident}-rx"
        )
        try:
            if sub.resync:
                self._resync(conn, sub)
            elif sub.needs_replay and sub.since_seq is not None:
                assert session.scope is not None
                bound = self._history_bound(session.scope)
                cursor = sub.since_seq
                while cursor < sub.seq and not conn.closing:
                    page = await self._hub.replay(sub, after=cursor, not_before_ts=bound)
                    bound = None  # only the first event after since_seq can be too old
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
                wait = session.wake_at(conn.last_sent) - time.monotonic()
                if wait <= 0:
                    self._act(conn, session.tick(time.monotonic(), conn.last_sent))
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
        """Lines after subscribing (status, present); errors close; end of input is allowed."""
        try:
            while not conn.closing:
                if not await self._receive(conn, ticks=False):
                    break
        except (ConnectionError, OSError):
            conn.abort()
            return
        if conn.closing:
            return
        # The peer may have only shut down its sending side: keep streaming until it is gone.
        # Shielded: cancelling a wait on the stream's close future would cancel the future.
        closed = asyncio.create_task(conn.writer.wait_closed(),
                                     name=f"hallway-conn-{conn.ident}-closed")
        closed.add_done_callback(_consume_result)
        with contextlib.suppress(ConnectionError, OSError):
            await asyncio.shield(closed)
        sub.close()


class _PeerSlots:
    """A few turns per address (a semaphore each, kept only while someone uses it)."""

    def __init__(self, per_peer: int) -> None:
        self._per_peer = per_peer
        self._slots: dict[str, tuple[asyncio.Semaphore, list[int]]] = {}

    @contextlib.asynccontextmanager
    async def slot(self, peer: str) -> AsyncIterator[None]:
        """Hold one of ``peer``'s turns (waiting for it, first come first served)."""
        entry = self._slots.get(peer)
        if entry is None:
            entry = self._slots[peer] = (asyncio.Semaphore(self._per_peer), [0])
        semaphore, users = entry
        users[0] += 1
        try:
            async with semaphore:
                yield
        finally:
            users[0] -= 1
            if not users[0]:
                del self._slots[peer]


class _PeerPace:
    """Handshakes per address: a burst, then a steady rate (a token bucket whose passes are
    booked ahead: a connection waits for its own, first come first served)."""

    MAX_PEERS = 4096

    def __init__(self, rate: float, *, burst: int) -> None:
        self._rate = rate
        self._burst = float(max(burst, 1))
        self._level: dict[str, tuple[float, float]] = {}  # peer -> (passes left, at)

    def take(self, peer: str, now: float, deadline: float) -> float | None:
        """Book ``peer``'s next pass: the seconds to wait for it, or None (nothing booked) if
        that would be after ``deadline``."""
        level, at = self._level.get(peer, (self._burst, now))
        level = min(self._burst, level + (now - at) * self._rate)
        wait = max(0.0, (1.0 - level) / self._rate)
        if now + wait > deadline:
            return None
        if len(self._level) >= self.MAX_PEERS and peer not in self._level:
            self._forget_full(now)
        self._level[peer] = (level - 1.0, now)
        return wait

    def _forget_full(self, now: float) -> None:
        """Drop the addresses whose bucket has refilled (they start full again anyway)."""
        full = [peer for peer, (level, at) in self._level.items()
                if level + (now - at) * self._rate >= self._burst]
        for peer in full:
            del self._level[peer]
        if len(self._level) >= self.MAX_PEERS:  # all busy: the oldest quarter starts afresh
            for peer in list(self._level)[: self.MAX_PEERS // 4]:
                del self._level[peer]


class _TurnGate:
    """At most ``per_turn`` passes in one turn of the event loop; the others wait, first come
    first served, for later turns (I/O callbacks, e.g. event delivery, run in between)."""

    def __init__(self, per_turn: int) -> None:
        self._per_turn = per_turn
        self._used = 0
        self._resetting = False
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    def _next_turn(self) -> None:
        # Scheduled behind this turn's callbacks: it runs in the next turn.
        if not self._resetting:
            self._resetting = True
            asyncio.get_running_loop().call_soon(self._reset)

    def _reset(self) -> None:
        self._resetting = False
        self._used = 0
        while self._waiters and self._used < self._per_turn:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                self._used += 1
        if self._used:
            self._next_turn()

    async def wait(self) -> None:
        """Return in a turn with a pass left (taking it), or once given one."""
        if self._used < self._per_turn and not self._waiters:
            self._used += 1
            self._next_turn()
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._next_turn()
        await waiter


async def _readable(transport: asyncio.BaseTransport) -> None:
    """Wait until the peer sent something (or closed), without reading it: the transport stops
    reading, so the bytes stay in the socket for the TLS layer that ``start_tls`` puts on it
    (it resumes reading itself)."""
    sock = transport.get_extra_info("socket")
    if sock is None or not isinstance(transport, asyncio.ReadTransport):
        return
    transport.pause_reading()
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()
    # The transport owns its descriptor in the selector: watch a duplicate of it instead.
    fd = os.dup(sock.fileno())

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    try:
        loop.add_reader(fd, wake)
        try:
            await ready
        finally:
            loop.remove_reader(fd)
    finally:
        os.close(fd)


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
