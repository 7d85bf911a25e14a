"""The edges both composition roots build alike: the daemon (``hallway.service``) and the venue
(``hallway.venue.service``).

``Edges`` owns the store (WAL checkpoints taken on a second connection in the background), the
hub over its event log (which gives up after ``storage.write_failure_exit_s`` of failed
writes, and prunes on the root's clock), the socket server with its tokens, the mDNS
announcer, the systemd notifier, and two loops: the checkpointer and the watchdog. The
watchdog sends WATCHDOG=1 only while the root says it is healthy, the event log is being
written and the loop is responsive; it sends STATUS= every ``STATUS_INTERVAL_S``; and it ends
the root (by raising) when the event log writer gave up. The roots keep what differs: where
events come from and what turns them into decisions.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hallway import __version__
from hallway.announce import ZeroconfAnnouncer
from hallway.config import Config
from hallway.errors import ConfigError, HallwayError, Problem
from hallway.hub import Hub
from hallway.lifecycle import bounded, close_edges, stop_front
from hallway.logs import get_logger
from hallway.models import Contact
from hallway.notify import SystemdNotifier
from hallway.server import EventServer, Security, load_tokens, security
from hallway.store import SqliteStore

if TYPE_CHECKING:
    from hallway.web.app import WebServer

log = get_logger(__name__)

CHECKPOINT_INTERVAL_S = 1.0
STATUS_INTERVAL_S = 5.0
ANNOUNCE_TIMEOUT_S = 15.0


def raise_fatal(group: BaseExceptionGroup[BaseException]) -> None:
    """A root's task group ended with ``group``: when it holds only HallwayErrors (the event
    log writer gave up), raise the first, so the root ends with that reason; else return (the
    caller re-raises the group)."""
    fatal, others = group.split(HallwayError)
    if fatal is None or others is not None:
        return
    first: BaseException = fatal
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    raise first from None


def _log_error(event: str, exc: BaseException) -> None:
    log.warning(event, error=str(exc))


class EdgesFacade:
    """What a composition root tells about its edges once started (both roots alike)."""

    _edges: Edges

    @property
    def tcp_port(self) -> int | None:
        """The TCP port listened on (once started; None without TCP)."""
        return self._edges.tcp_port

    @property
    def web_port(self) -> int | None:
        """The bound port of the web pages (None when ``[web]`` is off)."""
        return self._edges.web_port

    @property
    def tokens(self) -> list[str]:
        """The subscriber tokens in force."""
        return self._edges.tokens

    @property
    def announced_name(self) -> str | None:
        """The mDNS instance name registered (None before, or without mDNS)."""
        return self._edges.announced_name


class Edges:
    """Store, hub, server, announcer, notifier and watchdog for one composition root."""

    def __init__(
        self,
        config: Config,
        *,
        notifier: SystemdNotifier,
        state_dir: Path | None = None,
        role: str | None = None,
        note_error: Callable[[str, BaseException], None] = _log_error,
    ) -> None:
        self.config = config
        self.notifier = notifier
        self._state_dir = state_dir
        self._role = role
        self._note_error = note_error
        self.store: SqliteStore | None = None
        self.hub: Hub | None = None
        self.server: EventServer | None = None
        self.announcer: ZeroconfAnnouncer | None = None
        self.web: WebServer | None = None
        self.web_port: int | None = None
        self._security = Security(None, None)
        self.tokens: list[str] = []
        self.tcp_port: int | None = None
        self.announced_name: str | None = None
        self.loop_lag_s = 0.0

    # -- start-up, in this order ----------------------------------------------------------------

    async def open_store(self) -> SqliteStore:
        """Open the database; its WAL checkpoints move to a second connection (``checkpointer``)."""
        store = await SqliteStore.open(self.config.storage.database)
        self.store = store
        await store.checkpoint_in_background()
        return store

    async def start_hub(
        self,
        *,
        contact_lookup: Callable[[str], Contact | None],
        clock: Callable[[], float | None] | None = None,
        batch_window_s: float = 0.0,
    ) -> Hub:
        """The hub over the store's event log. ``clock``: the root's clock for retention.

        ``batch_window_s`` 0: group commit alone (events published while a write is in flight
        share the next one), no extra waiting window.
        """
        assert self.store is not None, "open_store first"
        storage = self.config.storage
        hub = Hub(
            self.store,
            scanner=self.config.scanner.name,
            contact_lookup=contact_lookup,
            retention_s=storage.event_retention_s,
            retention_count=storage.event_retention_count,
            batch_window_s=batch_window_s,
            give_up_after_s=storage.write_failure_exit_s,
            clock=clock if clock is not None else time.time,
        )
        self.hub = hub
        await hub.start()
        return hub

    async def start_server(
        self,
        *,
        status_provider: Callable[[], dict[str, Any]],
        present_provider: Callable[[], list[dict[str, Any]]] | None = None,
        clock: Callable[[], float] | None = None,
    ) -> EventServer:
        """The socket server (tokens loaded, TLS set up), and the announcer for its TCP port.
        ``clock``: the root's clock, for token expiry and scope history."""
        assert self.hub is not None, "start_hub first"
        config = self.config
        self.tokens = list(load_tokens(config.server, state_dir=self._state_dir))
        secured = security(config, state_dir=self._state_dir)
        server = EventServer(
            config.server,
            self.hub,
            scanner=config.scanner.name,
            version=__version__,
            tokens=self.tokens,
            status_provider=status_provider,
            present_provider=present_provider,
            token_db=secured.token_db,
            tls=secured.tls,
            clock=clock if clock is not None else time.time,
        )
        self.server = server
        self._security = secured
        await server.start()
        self.tcp_port = server.tcp_port
        if config.mdns.enabled and self.tcp_port is not None:
            self.announcer = ZeroconfAnnouncer(
                config.mdns,
                scanner=config.scanner.name,
                port=self.tcp_port,
                auth="token" if self.tokens else "none",
                role=self._role,
                tls=secured.tls is not None,
                host=config.server.tcp_host,
            )
        return server

    async def start_web(
        self,
        *,
        lookup: Callable[[str], Contact | None],
        status: Callable[[], dict[str, Any]],
        clock: Callable[[], float],
        contacts: SqliteStore | None = None,
        on_contacts_changed: Callable[[], None] | None = None,
        role: str = "scanner",
    ) -> WebServer | None:
        """The web pages (``[web]``), when enabled: over this hub and log, signed in with the
        server's tokens and scopes, served with the socket's TLS certificate when it has one.
        ``contacts``: the store enrollment writes to (None: no enrollment page)."""
        web = self.config.web
        if not web.enabled:
            return None
        # Imported only when the pages are served: aiohttp is a fifth of the daemon's start-up.
        from hallway.web.access import ServerTokens, load_session_key  # noqa: PLC0415
        from hallway.web.app import WebServer  # noqa: PLC0415

        assert self.hub is not None, "start_server first"
        assert self.store is not None
        if not self.tokens and self._security.token_db is None:
            raise ConfigError([Problem("<config>", "web.enabled", "the web pages need token "
                                       'auth (server.auth = "token")')])
        server = WebServer(
            host=web.host, port=web.port, hub=self.hub, log_store=self.store,
            authority=ServerTokens(self.tokens, token_db=self._security.token_db),
            session_key=load_session_key(self._state_dir), session_s=web.session_s,
            lookup=lookup, status=status, clock=clock, title=web.title,
            chart_hours=web.chart_hours, max_streams=web.max_streams, store=contacts,
            on_contacts_changed=on_contacts_changed, ssl_context=self._security.tls,
            role="venue" if role == "venue" else "scanner",
            apps_dir=None if web.apps_dir is None else Path(web.apps_dir),
        )
        try:
            await server.start()
        except OSError as exc:
            raise ConfigError([Problem("<config>", "web", f"cannot listen on {web.host}:"
                                       f"{web.port}: {exc.strerror or exc}")]) from None
        self.web = server
        self.web_port = server.port
        return server

    async def announce(self) -> str | None:
        """Register by mDNS (bounded); the name, or None (failure noted, the root runs on)."""
        if self.announcer is None:
            return None
        try:
            await asyncio.wait_for(self.announcer.start(), timeout=ANNOUNCE_TIMEOUT_S)
        except (TimeoutError, HallwayError, OSError) as exc:
            self._note_error("mdns_failed", exc)
            return None
        self.announced_name = self.announcer.name
        return self.announced_name

    # -- loops ----------------------------------------------------------------------------------

    async def checkpointer(self) -> None:
        """Copy the WAL into the database file every second, off the writers' path."""
        assert self.store is not None
        while True:
            await asyncio.sleep(CHECKPOINT_INTERVAL_S)
            await self.store.checkpoint()

    async def watchdog(
        self,
        *,
        healthy: Callable[[float, float], bool],
        status_line: Callable[[], str],
        on_status: Callable[[], None] | None = None,
    ) -> None:
        """WATCHDOG=1 while ``healthy(now, interval)``, the event log is written and the loop
        keeps time; STATUS= (after ``on_status``) every STATUS_INTERVAL_S. Raises the hub's
        failure when its writer gave up, which ends the root with that reason."""
        hub = self.hub
        assert hub is not None
        notifier = self.notifier
        interval = notifier.watchdog_interval_s or STATUS_INTERVAL_S
        step = min(interval, STATUS_INTERVAL_S, 1.0)
        last_status = float("-inf")
        expected = time.monotonic() + step
        while True:
            await asyncio.sleep(step)
            if (failure := hub.failure) is not None:
                raise failure  # the event log cannot be written: exit with the reason
            now = time.monotonic()
            self.loop_lag_s = max(0.0, now - expected)
            expected = now + step
            fine = (
                hub.writing
                and self.loop_lag_s < max(1.0, interval / 2)
                and healthy(now, interval)
            )
            if notifier.watchdog_interval_s is not None and fine:
                notifier.send(watchdog=1)
            if now - last_status >= STATUS_INTERVAL_S:
                if on_status is not None:
                    on_status()
                notifier.send(status=status_line())
                last_status = now

    # -- shutdown -------------------------------------------------------------------------------

    async def stop_front(self, tasks: Sequence[asyncio.Task[None]]) -> None:
        """STOPPING=1, mDNS goodbye, stop accepting, end the loops (the hub still takes
        events: the root publishes its shutdown departures next)."""
        self.notifier.send(stopping=1, status="stopping")
        if self.web is not None:
            await bounded(self.web.close(), "close_web")
        await stop_front(announcer=self.announcer, server=self.server, tasks=tasks)
        self.announcer = None

    async def close(self) -> None:
        """Close what was built, in reverse order (idempotent)."""
        if self.web is not None:
            await bounded(self.web.close(), "close_web")
        await close_edges(announcer=self.announcer, server=self.server, hub=self.hub,
                          store=self.store)
        self.announcer = None
        self.notifier.close()
