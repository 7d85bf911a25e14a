"""The web server: the kiosk, the dashboard and the enrollment page, with live updates by SSE.

Built on aiohttp (one dependency: the HTTP server, streaming responses for Server-Sent Events,
and a test client). It runs inside the daemon and inside ``hallway venue`` on its own port and
subscribes to their ``Hub`` in-process, like a socket subscriber without the socket.

Privacy by construction:
- pages and assets carry nothing about anyone; data comes only from ``/api/...``, and only to
  a valid session (see ``hallway.web.access``); a session sees only its token's scope;
- a token is never in a URL the server sees: the page POSTs it (from the URL's fragment or a
  form) and gets an HttpOnly, SameSite=Strict cookie; no request is logged at all;
- the kiosk stream never carries a person who is not to be shown (``display``), not even an
  id: only counts (``hallway.web.views.KioskView``);
- a revoked contact's departure reaches every open stream like any event; streams re-check
  their session every second, so a withdrawn token closes them.

Streams (``/api/stream/<page>``) resume by ``seq``: every event is sent with ``id: <seq>``, the
first message is a snapshot with ``id: <seq of the snapshot>`` and the events missed since the
``Last-Event-ID`` (or ``?since=``) the browser reconnects with, so a reconnect neither loses
nor repeats an event.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import re
import secrets
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote

from aiohttp import web

from hallway.contacts_io import enroll_uri
from hallway.errors import ContactNotFound, NetworkFileError, StoreError
from hallway.hub import Hub, Subscription
from hallway.logs import get_logger
from hallway.models import Contact, ContactKey, KeyKind
from hallway.network_import import import_network
from hallway.store import SqliteStore
from hallway.web.access import (
    COOKIE_NAME,
    Access,
    LoginLimiter,
    SessionSigner,
    TokenAuthority,
)
from hallway.web.enroll import FormError, contact_from_form, contact_summary, qr_data_uri
from hallway.web.views import KioskView, problems, timeline

log = get_logger(__name__)

PAGES = {"kiosk": "kiosk.html", "dashboard": "dashboard.html", "enroll": "enroll.html"}
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8",
                 ".js": "text/javascript; charset=utf-8", ".svg": "image/svg+xml"}
APP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
"""A file name ``/apps/`` serves from ``web.apps_dir`` (no folders, no hidden files)."""
REQUEST_HEADER = "X-Hallway"
"""Every POST must carry it: a cross-site form or a script elsewhere cannot set it without a
CORS preflight we never grant (with the SameSite=Strict cookie, against request forgery)."""
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
STREAM_QUEUE = 1024
"""Events buffered per stream; a browser further behind is cut off and resumes by seq."""
MAX_HISTORY = 5000
"""Missed events sent in a snapshot; further behind, the page is told to start afresh."""
RECENT_EVENTS = 60
"""Events a page's first stream shows in its feed (the ones before it opened)."""
RECHECK_S = 1.0
"""How often an open stream asks whether its session is still valid."""
STATUS_EVERY_S = 2.0
PING_EVERY_S = 15.0
MAX_TIMELINE_EVENTS = 200_000
MAX_JSON_BYTES = 1024 * 1024
MAX_UPLOAD_BYTES = 64 * 1024 * 1024
"""A network export uploaded from the enrollment page (read in memory, then discarded)."""


def sse(data: Mapping[str, Any], *, event_id: int | None = None) -> bytes:
    """One Server-Sent Event: optional ``id``, then the JSON on one ``data`` line."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}data: {text}\n\n".encode()


@functools.lru_cache(maxsize=1024)
def _link_qr(url: str) -> str:
    """A profile link's QR code (SVG data URI), so someone at the kiosk can connect."""
    return qr_data_uri(url)


def _with_qr(message: dict[str, Any]) -> dict[str, Any]:
    """Kiosk people with a profile link carry its QR code (``connect``)."""
    people = message.get("people") or ([message["person"]] if "person" in message else [])
    for entry in people:
        links = entry.get("links")
        if links and "connect" not in entry:
            entry["connect"] = _link_qr(links[0]["url"])
    return message


def _since(request: web.Request) -> int | None:
    raw = request.headers.get("Last-Event-ID") or request.query.get("since")
    if raw is None or not raw.strip().isdigit():
        return None
    return int(raw.strip())


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


class _Denied(Exception):
    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


def _load_assets() -> dict[str, tuple[bytes, str]]:
    assets: dict[str, tuple[bytes, str]] = {}
    folder = resources.files("hallway.web") / "static"
    for item in folder.iterdir():
        name = item.name
        suffix = name[name.rfind("."):] if "." in name else ""
        if item.is_file() and suffix in CONTENT_TYPES:
            assets[name] = (item.read_bytes(), CONTENT_TYPES[suffix])
    return assets


class WebServer:
    """The pages' HTTP(S) server over a running hub; ``start`` binds, ``close`` is idempotent."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        hub: Hub,
        log_store: SqliteStore,
        authority: TokenAuthority,
        session_key: bytes,
        session_s: float,
        lookup: Callable[[str], Contact | None],
        status: Callable[[], dict[str, Any]],
        clock: Callable[[], float],
        title: str,
        chart_hours: float,
        max_streams: int = 64,
        store: SqliteStore | None = None,
        on_contacts_changed: Callable[[], None] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        role: Literal["scanner", "venue"] = "scanner",
        apps_dir: Path | None = None,
    ) -> None:
        self._host, self._port = host, port
        self._hub = hub
        self._log_store = log_store
        self._authority = authority
        self._signer = SessionSigner(session_key)
        self._session_s = session_s
        self._lookup = lookup
        self._status = status
        self._clock = clock
        self._title = title
        self._chart_s = chart_hours * 3600.0
        self._max_streams = max_streams
        self._store = store
        self._on_contacts_changed = on_contacts_changed
        self._ssl = ssl_context
        self._role = role
        self._apps_dir = apps_dir
        self._limiter = LoginLimiter()
        self._assets = _load_assets()
        self._streams: set[Subscription] = set()
        self._closing = asyncio.Event()
        self._contacts_version = 0
        self._contacts_event = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._bound_port: int | None = None
        self._revoked: int | None = None
        self._revoked_version = -1
        self._n = {"logins": 0, "login_failures": 0, "streams_total": 0, "denied": 0}

    # -- lifecycle ----------------------------------------------------------------------------

    def app(self) -> web.Application:
        """The aiohttp application (routes and headers), also for in-process tests."""
        app = web.Application(client_max_size=MAX_UPLOAD_BYTES, middlewares=[self._headers])
        page = self._page
        app.router.add_get("/", self._index)
        for name in PAGES:
            app.router.add_get(f"/{name}", page)
        app.router.add_get("/static/{name}", self._asset)
        app.router.add_get("/apps/{name}", self._app_file)
        app.router.add_post("/api/login", self._login)
        app.router.add_post("/api/logout", self._logout)
        app.router.add_get("/api/session", self._session)
        app.router.add_get("/api/stream/{page}", self._stream)
        app.router.add_get("/api/timeline", self._timeline)
        app.router.add_get("/api/contacts", self._contacts)
        app.router.add_post("/api/contacts", self._add_contact)
        app.router.add_post("/api/contacts/{id}/phone-key", self._phone_key)
        app.router.add_post("/api/contacts/{id}/revoke", self._revoke)
        app.router.add_post("/api/contacts/{id}/network", self._network)
        return app

    async def start(self) -> None:
        """Bind the listener (port 0 picks a free one)."""
        runner = web.AppRunner(self.app(), access_log=None, handle_signals=False,
                               shutdown_timeout=2.0)
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port, ssl_context=self._ssl,
                           reuse_address=True)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        address = runner.addresses[0]
        self._bound_port = int(address[1])
        log.info("web_listening", host=self._host, port=self._bound_port,
                 tls=self._ssl is not None)

    async def close(self) -> None:
        """End every stream, then stop serving (bounded)."""
        self._closing.set()
        for sub in list(self._streams):
            sub.close()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    @property
    def port(self) -> int | None:
        """The bound port."""
        return self._bound_port

    @property
    def scheme(self) -> str:
        """``https`` when serving TLS, else ``http``."""
        return "https" if self._ssl is not None else "http"

    def stats(self) -> dict[str, int]:
        """Counters: open streams, logins, refusals."""
        return {"streams": len(self._streams), **self._n}

    def contacts_changed(self) -> None:
        """The contacts changed (a reload saw a new generation): enrollment lists refresh."""
        self._contacts_version += 1
        self._contacts_event.set()
        self._contacts_event = asyncio.Event()

    # -- plumbing -----------------------------------------------------------------------------

    @web.middleware
    async def _headers(self, request: web.Request,
                       handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                       ) -> web.StreamResponse:
        try:
            response = await handler(request)
        except _Denied as denied:
            self._n["denied"] += 1
            response = denied.response
        if not response.prepared:
            response.headers.update(SECURITY_HEADERS)
            if request.path.startswith("/api/"):
                response.headers["Cache-Control"] = "no-store"
        return response

    def _access(self, request: web.Request, page: str | None = None) -> Access:
        value = request.cookies.get(COOKIE_NAME)
        ref = self._signer.verify(value, now=time.time()) if value else None
        access = self._authority.recheck(ref) if ref is not None else None
        if access is None:
            raise _Denied(_error(401, "not signed in"))
        if page is not None and page not in access.pages:
            raise _Denied(_error(403, f"this token may not open the {page} page"))
        return access

    @staticmethod
    def _require_header(request: web.Request) -> None:
        if request.headers.get(REQUEST_HEADER) != "1":
            raise _Denied(_error(400, f"missing the {REQUEST_HEADER} header"))

    async def _json_body(self, request: web.Request) -> dict[str, Any]:
        self._require_header(request)
        if (request.content_length or 0) > MAX_JSON_BYTES:
            raise _Denied(_error(413, "the body is too large"))
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            raise _Denied(_error(400, "the body is not JSON")) from None
        if not isinstance(body, dict):
            raise _Denied(_error(400, "the body must be a JSON object"))
        return body

    # -- pages and assets ---------------------------------------------------------------------

    async def _index(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/kiosk")

    async def _page(self, request: web.Request) -> web.StreamResponse:
        body, kind = self._assets[PAGES[request.path.strip("/")]]
        return web.Response(body=body, content_type=kind.split(";")[0], charset="utf-8")

    async def _asset(self, request: web.Request) -> web.StreamResponse:
        found = self._assets.get(request.match_info["name"])
        if found is None or found[1].startswith("text/html"):
            return _error(404, "no such file")
        body, kind = found
        response = web.Response(body=body, content_type=kind.split(";")[0])
        if kind.startswith("text/"):
            response.charset = "utf-8"
        return response

    async def _app_file(self, request: web.Request) -> web.StreamResponse:
        """A file of ``web.apps_dir`` (same origin: it signs in and reads the streams as the
        pages do, under the same headers). Only plain names of the folder itself, of the
        page types; nothing when no folder is configured."""
        name = request.match_info["name"]
        suffix = name[name.rfind("."):] if "." in name else ""
        if self._apps_dir is None or not APP_NAME.match(name) or suffix not in CONTENT_TYPES:
            return _error(404, "no such file")
        path = self._apps_dir / name
        try:
            if path.resolve().parent != self._apps_dir.resolve() or not path.is_file():
                return _error(404, "no such file")
            body = await asyncio.to_thread(path.read_bytes)
        except OSError:
            return _error(404, "no such file")
        kind = CONTENT_TYPES[suffix]
        response = web.Response(body=body, content_type=kind.split(";")[0])
        if kind.startswith("text/"):
            response.charset = "utf-8"
        response.headers["Cache-Control"] = "no-cache"
        return response

    # -- sessions -----------------------------------------------------------------------------

    async def _login(self, request: web.Request) -> web.StreamResponse:
        body = await self._json_body(request)
        peer = request.remote or "?"
        now = time.monotonic()
        wait = self._limiter.retry_after(peer, now)
        if wait > 0:
            response = _error(429, "too many failed attempts; try again later",
                              retry_after_s=round(wait, 1))
            response.headers["Retry-After"] = str(max(1, round(wait)))
            return response
        token = body.get("token")
        access = self._authority.check(token) if isinstance(token, str) and token else None
        if access is None:
            self._limiter.failed(peer, now)
            self._n["login_failures"] += 1
            log.warning("web_login_failed", peer=peer)
            return _error(401, "that token is not valid here")
        self._limiter.succeeded(peer)
        self._n["logins"] += 1
        log.info("web_login", peer=peer, token=access.name)
        response = web.json_response(self._session_body(access))
        response.set_cookie(
            COOKIE_NAME, self._signer.issue(access.ref, now=time.time(),
                                            max_age_s=self._session_s),
            max_age=int(self._session_s), path="/", httponly=True, samesite="Strict",
            secure=self._ssl is not None,
        )
        return response

    async def _logout(self, request: web.Request) -> web.StreamResponse:
        self._require_header(request)
        response = web.json_response({"signed_out": True})
        response.del_cookie(COOKIE_NAME, path="/")
        return response

    def _session_body(self, access: Access) -> dict[str, Any]:
        return {"signed_in": True, "access": access.summary(), "title": self._title,
                "role": self._role,
                "enroll_available": self._store is not None}

    async def _session(self, request: web.Request) -> web.StreamResponse:
        try:
            access = self._access(request)
        except _Denied:
            return web.json_response({"signed_in": False})
        return web.json_response(self._session_body(access))

    # -- streams ------------------------------------------------------------------------------

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        page = request.match_info["page"]
        if page not in PAGES:
            return _error(404, "no such stream")
        access = self._access(request, page)
        if len(self._streams) >= self._max_streams:
            return _error(503, "too many open pages")
        if self._closing.is_set():
            return _error(503, "shutting down")
        response = web.StreamResponse(headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-store",
            "X-Accel-Buffering": "no", **SECURITY_HEADERS,
        })
        if page == "enroll":
            if self._store is None:
                return _error(404, "enrollment is not available here")
            await response.prepare(request)
            await self._enroll_stream(request, response, access)
            return response
        lagged = asyncio.Event()
        sub = self._hub.subscribe(
            contacts=None if access.contacts is None else sorted(access.contacts),
            tags=None if access.tags is None else sorted(access.tags),
            since_seq=_since(request), queue_size=STREAM_QUEUE, on_lagged=lagged.set,
        )
        self._streams.add(sub)
        self._n["streams_total"] += 1
        try:
            await response.prepare(request)
            await response.write(b"retry: 1000\n\n")
            await self._event_stream(request, response, access=access, page=page, sub=sub,
                                     lagged=lagged)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            sub.close()
            self._streams.discard(sub)
        return response

    async def _history(self, sub: Subscription) -> tuple[list[dict[str, Any]], bool]:
        """The events in (since_seq, snapshot seq] (a page's first stream: the last few, for
        its feed); True when they are not all available."""
        try:
            if sub.resync:
                return [], True
            if sub.since_seq is None:
                page = await self._hub.replay(sub, after=max(0, sub.seq - RECENT_EVENTS))
                return ([] if page is None else [json.loads(line) for line in page[1]]), False
            if not sub.needs_replay:
                return [], False
            cursor = sub.since_seq
            events: list[dict[str, Any]] = []
            while cursor < sub.seq:
                page = await self._hub.replay(sub, after=cursor)
                if page is None:
                    return [], True
                cursor, lines = page
                events.extend(json.loads(line) for line in lines)
                if len(events) > MAX_HISTORY:
                    return [], True
            return events, False
        finally:
            sub.replay_done()

    async def _status_message(self) -> dict[str, Any]:
        if self._store is not None and self._revoked_version != self._contacts_version:
            self._revoked_version = self._contacts_version
            with contextlib.suppress(StoreError):
                self._revoked = len(await self._store.revoked_ids())
        status = self._status()
        return {"type": "status", "status": status, "problems": problems(status),
                "web": self.stats(), "revoked": self._revoked}

    async def _event_stream(self, request: web.Request, response: web.StreamResponse, *,
                            access: Access, page: str, sub: Subscription,
                            lagged: asyncio.Event) -> None:
        history, resync = await self._history(sub)
        kiosk = KioskView(self._lookup) if page == "kiosk" else None
        if kiosk is not None:
            kiosk.reset(sub.present)
            first = _with_qr(kiosk.snapshot(seq=sub.seq, history=history, resync=resync))
            first["title"] = self._title
        else:
            first = {"type": "snapshot", "seq": sub.seq, "present": sub.present,
                     "history": history, "resync": resync, "role": self._role}
        chunks = [sse(first, event_id=sub.seq)]
        if page == "dashboard":
            chunks.append(sse(await self._status_message()))
        await response.write(b"".join(chunks))
        checked = sent = status_at = time.monotonic()
        transport = request.transport
        while not lagged.is_set() and not self._closing.is_set():
            lines = await sub.get(RECHECK_S)
            if lines is None:
                break
            out = []
            for line in lines:
                event = json.loads(line)
                message = _with_qr(kiosk.apply(event)) if kiosk is not None else event
                out.append(sse(message, event_id=int(event["seq"])))
            now = time.monotonic()
            if now - checked >= RECHECK_S:
                checked = now
                current = self._authority.recheck(access.ref)
                if current is None or current != access:
                    break  # withdrawn or changed: the page asks again and reconnects
            if page == "dashboard" and now - status_at >= STATUS_EVERY_S:
                status_at = now
                out.append(sse(await self._status_message()))
            if not out and now - sent >= PING_EVERY_S:
                out.append(b": ping\n\n")
            if out:
                await response.write(b"".join(out))
                sent = now
            if transport is None or transport.is_closing():
                break

    async def _enroll_stream(self, request: web.Request, response: web.StreamResponse,
                             access: Access) -> None:
        version = -1
        sent = time.monotonic()
        transport = request.transport
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            await response.write(b"retry: 1000\n\n")
            while not self._closing.is_set():
                if version != self._contacts_version:
                    version = self._contacts_version
                    await response.write(sse({"type": "contacts",
                                              "contacts": await self._list(access)}))
                    sent = time.monotonic()
                changed = self._contacts_event
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(RECHECK_S):
                        await changed.wait()
                if self._authority.recheck(access.ref) != access:
                    break
                if transport is None or transport.is_closing():
                    break
                if time.monotonic() - sent >= PING_EVERY_S:
                    await response.write(b": ping\n\n")
                    sent = time.monotonic()

    # -- the dashboard's chart ----------------------------------------------------------------

    async def _first_seq_at(self, store: SqliteStore, start: float) -> int:
        """The first logged seq whose event's ts is at or after ``start`` (binary search)."""
        lo = (await store.first_retained_seq()) or 1
        hi = self._hub.last_seq + 1
        while lo < hi:
            mid = (lo + hi) // 2
            rows = await store.events_after(mid - 1, limit=1)
            if not rows:
                hi = mid
                continue
            if float(json.loads(rows[0].payload)["ts"]) >= start:
                hi = mid
            else:
                lo = rows[0].seq + 1
        return lo

    async def _timeline(self, request: web.Request) -> web.StreamResponse:
        access = self._access(request, "dashboard")
        end = self._clock()
        start = end - self._chart_s
        store = self._log_store
        wanted = access.filter
        present = [entry for entry in self._hub.present()
                   if wanted.matches(entry["contact"]["id"],
                                     frozenset(entry["contact"].get("tags", ())))]
        upto = self._hub.last_seq
        events: list[dict[str, Any]] = []
        cursor = await self._first_seq_at(store, start) - 1
        while cursor < upto and len(events) < MAX_TIMELINE_EVENTS:
            rows = await store.events_after(cursor, limit=2000)
            if not rows:
                break
            for row in rows:
                if row.seq > upto:
                    break
                event = json.loads(row.payload)
                contact = event.get("contact") or {}
                tags = contact.get("tags") if "name" in contact else None
                if wanted.matches(str(contact.get("id", "")),
                                  None if tags is None else frozenset(tags)):
                    events.append(event)
            cursor = rows[-1].seq
        series = timeline(events, present, start=start, end=end, bucket_s=60.0)
        return web.json_response({**series, "now": end, "seq": upto})

    # -- enrollment ---------------------------------------------------------------------------

    def _enroll_store(self, request: web.Request) -> tuple[Access, SqliteStore]:
        access = self._access(request, "enroll")
        if self._store is None:
            raise _Denied(_error(404, "enrollment is not available here"))
        return access, self._store

    async def _list(self, access: Access) -> list[dict[str, Any]]:
        assert self._store is not None
        return [contact_summary(c) for c in await self._store.list_contacts()
                if access.covers(c.id, c.tags)]

    def _changed(self) -> None:
        self.contacts_changed()
        if self._on_contacts_changed is not None:
            self._on_contacts_changed()

    async def _contacts(self, request: web.Request) -> web.StreamResponse:
        access, _ = self._enroll_store(request)
        return web.json_response({"contacts": await self._list(access)})

    async def _add_contact(self, request: web.Request) -> web.StreamResponse:
        access, store = self._enroll_store(request)
        form = await self._json_body(request)
        try:
            contact, uri = contact_from_form(form, now=time.time())
        except FormError as exc:
            return _error(400, str(exc))
        if not access.covers(contact.id, contact.tags):
            return _error(403, "this contact would be outside your token's scope")
        try:
            await store.add_contact(contact)
        except StoreError as exc:
            return _error(409, str(exc))
        self._changed()
        log.info("web_contact_added", contact=contact.id,
                 keys=sorted({k.kind.value for k in contact.keys}))
        body: dict[str, Any] = {"contact": contact_summary(contact)}
        if uri is not None:
            body.update(uri=uri, qr=qr_data_uri(uri))
        return web.json_response(body, status=201)

    async def _in_scope(self, request: web.Request) -> tuple[SqliteStore, Contact]:
        access, store = self._enroll_store(request)
        self._require_header(request)
        try:
            contact = await store.get_contact(request.match_info["id"])
        except ContactNotFound:
            raise _Denied(_error(404, "no such contact")) from None
        if not access.covers(contact.id, contact.tags):
            raise _Denied(_error(404, "no such contact"))
        return store, contact

    async def _phone_key(self, request: web.Request) -> web.StreamResponse:
        store, contact = await self._in_scope(request)
        fresh = ContactKey(KeyKind.HALLWAY_V1, secrets.token_bytes(16).hex())
        others = [k for k in contact.keys if k.kind is not KeyKind.HALLWAY_V1]
        try:
            await store.replace_keys(contact.id, [*others, fresh])
        except (StoreError, ContactNotFound) as exc:
            return _error(409, str(exc))
        self._changed()
        log.info("web_phone_key_replaced", contact=contact.id)
        uri = enroll_uri(contact.id, fresh.value)
        return web.json_response({"contact": contact_summary(contact), "uri": uri,
                                  "qr": qr_data_uri(uri)})

    async def _revoke(self, request: web.Request) -> web.StreamResponse:
        store, contact = await self._in_scope(request)
        try:
            await store.revoke(contact.id, now=time.time())
        except ContactNotFound:
            return _error(404, "no such contact")
        self._changed()
        log.info("web_contact_revoked", contact=contact.id)
        return web.json_response({"revoked": contact.id})

    async def _network(self, request: web.Request) -> web.StreamResponse:
        """A person's network export, matched in memory: only the matches are stored, the file
        is discarded and nothing about it but the counts is logged or answered."""
        store, contact = await self._in_scope(request)
        fmt = request.query.get("format") or None
        if fmt is not None and fmt not in ("linkedin", "x", "vcard", "csv"):
            return _error(400, "format: one of linkedin, x, vcard, csv")
        try:
            data = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _error(413, f"the file is larger than {MAX_UPLOAD_BYTES // (1 << 20)} MiB")
        filename = request.headers.get("X-Filename")
        try:
            outcome = await import_network(
                store, contact.id, data, fmt=fmt,
                filename=None if filename is None else unquote(filename)[:256],
                mutual_only=request.query.get("mutual_only") == "1",
            )
        except NetworkFileError as exc:
            return _error(400, f"the file cannot be read: {exc}; nothing was stored")
        except ContactNotFound:
            return _error(404, "no such contact")
        finally:
            del data
        self._changed()
        counts = outcome.result.counts()
        log.info("web_network_imported", contact=contact.id, **counts)
        return web.json_response({**counts, "knows": outcome.knows_total})
