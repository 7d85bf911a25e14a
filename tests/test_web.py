"""The web server in-process (aiohttp's test client over a real hub and SQLite store): sign-in,
scopes, the kiosk's privacy, resuming by seq, enrollment; and the pure views."""

from __future__ import annotations

import io
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from hallway.config import LoggingConfig
from hallway.hub import Hub
from hallway.logs import configure_logging
from hallway.models import Contact, EventType, KeyKind, PresenceEvent
from hallway.store import SqliteStore
from hallway.web.access import (
    Access,
    LoginLimiter,
    SessionSigner,
    StaticTokens,
    load_session_key,
)
from hallway.web.app import WebServer
from hallway.web.views import KioskView, problems, timeline

TOKEN = "web-test-token-0123456789"
HEADERS = {"X-Hallway": "1"}


def _contacts() -> list[Contact]:
    return [
        Contact(id="c-ada", name="Ada Lovelace", org="Engines", tags=("speaker",),
                display=True, knows=frozenset({"c-grace"})),
        Contact(id="c-grace", name="Grace Hopper", org="Navy", tags=("speaker",),
                display=True, handles={"linkedin": "grace-hopper"}),
        Contact(id="c-hidden", name="Hidden Person", org="Engines", tags=("speaker",),
                display=False),
        Contact(id="c-staff", name="Staff Member", tags=("staff",), display=True),
    ]


class Scoped:
    """A token authority like the scoped tokens: one full token, one kiosk-only token limited
    to the ``staff`` tag (a real implementation of the seam, not a stand-in of our code)."""

    def __init__(self) -> None:
        self.full = Access(name="organiser", ref="ref-full")
        self.kiosk = Access(name="staff kiosk", ref="ref-kiosk", pages=frozenset({"kiosk"}),
                            tags=frozenset({"staff"}))
        self.valid = {"full-token-0123456789": self.full, "kiosk-token-0123456789": self.kiosk}

    def check(self, secret: str) -> Access | None:
        return self.valid.get(secret)

    def recheck(self, ref: str) -> Access | None:
        return next((a for a in self.valid.values() if a.ref == ref), None)


class Rig:
    def __init__(self, store: SqliteStore, hub: Hub, contacts: dict[str, Contact],
                 server: WebServer) -> None:
        self.store, self.hub, self.contacts, self.server = store, hub, contacts, server
        self.now = time.time()

    def publish(self, kind: EventType, contact_id: str, zone: str = "near", **extra: Any) -> None:
        self.now += 1
        self.hub.publish([PresenceEvent(kind, self.now, contact_id, zone=zone, distance_m=2.0,
                                        rssi=-60.0, via=KeyKind.ADDRESS, **extra)])


async def _rig(tmp_path: Path, authority: Any) -> tuple[Rig, TestClient[Any, Any]]:
    store = await SqliteStore.open(tmp_path / "hallway.db")
    contacts = {c.id: c for c in _contacts()}
    await store.import_contacts(list(contacts.values()))
    hub = Hub(store, scanner="test", contact_lookup=contacts.get, retention_s=3600,
              retention_count=1000, batch_window_s=0.0)
    await hub.start()
    server = WebServer(
        host="127.0.0.1", port=0, hub=hub, log_store=store, authority=authority,
        session_key=b"k" * 32, session_s=3600, lookup=contacts.get,
        status=lambda: {"scanner": "test", "source_state": "backoff", "dropped": 3,
                        "last_error": "adapter gone"},
        clock=time.time, title="Test venue", chart_hours=1, store=store,
    )
    client: TestClient[Any, Any] = TestClient(TestServer(server.app()))
    await client.start_server()
    return Rig(store, hub, contacts, server), client


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[tuple[Rig, TestClient[Any, Any]]]:
    made = await _rig(tmp_path, StaticTokens([TOKEN]))
    yield made
    await made[1].close()
    await made[0].server.close()
    await made[0].hub.close()
    await made[0].store.close()


@pytest.fixture
async def scoped(tmp_path: Path) -> AsyncIterator[tuple[Rig, TestClient[Any, Any]]]:
    made = await _rig(tmp_path, Scoped())
    yield made
    await made[1].close()
    await made[0].server.close()
    await made[0].hub.close()
    await made[0].store.close()


async def _login(client: TestClient[Any, Any], token: str) -> int:
    response = await client.post("/api/login", json={"token": token}, headers=HEADERS)
    return int(response.status)


async def _messages(client: TestClient[Any, Any], page: str, *, until: int,
                    headers: dict[str, str] | None = None) -> tuple[list[dict[str, Any]], bytes]:
    """Read a stream until a message with ``seq`` >= ``until`` (or a snapshot at it)."""
    response = await client.get(f"/api/stream/{page}", headers=headers or {})
    assert response.status == 200
    raw = b""
    messages: list[dict[str, Any]] = []
    async with asyncio_timeout(5):
        while True:
            line = await response.content.readline()
            raw += line
            if line.startswith(b"data: "):
                message = json.loads(line[6:])
                messages.append(message)
                if message.get("seq", -1) >= until and message.get("type") != "status":
                    break
    response.close()
    return messages, raw


def asyncio_timeout(seconds: float) -> Any:
    import asyncio

    return asyncio.timeout(seconds)


async def _settle(hub: Hub, seq: int) -> None:
    import asyncio

    for _ in range(200):
        if hub.last_seq >= seq:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"hub did not reach seq {seq}")


async def test_sign_in_cookie_and_nothing_without_it(rig: tuple[Rig, TestClient[Any, Any]],
                                                     ) -> None:
    _, client = rig
    for path in ("/api/stream/kiosk", "/api/stream/dashboard", "/api/timeline", "/api/contacts"):
        assert (await client.get(path)).status == 401, path
    assert await (await client.get("/api/session")).json() == {"signed_in": False}
    # Pages are shells: nothing about anyone, strict headers.
    page = await client.get("/kiosk")
    assert page.status == 200
    assert "Ada" not in await page.text()
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    # A POST without our header is refused before the token is even looked at.
    assert (await client.post("/api/login", json={"token": TOKEN})).status == 400
    assert await _login(client, "wrong-token-0123456789") == 401
    response = await client.post("/api/login", json={"token": TOKEN}, headers=HEADERS)
    assert response.status == 200
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    assert TOKEN not in cookie
    assert (await (await client.get("/api/session")).json())["signed_in"] is True


async def test_wrong_tokens_are_rate_limited(rig: tuple[Rig, TestClient[Any, Any]]) -> None:
    _, client = rig
    codes = [await _login(client, f"wrong-token-{i:012d}") for i in range(12)]
    assert codes[:10] == [401] * 10
    assert codes[10:] == [429, 429]
    # A peer over its budget waits, even with the right token.
    assert await _login(client, TOKEN) == 429


async def test_kiosk_stream_never_carries_a_hidden_person(
    rig: tuple[Rig, TestClient[Any, Any]],
) -> None:
    r, client = rig
    await _login(client, TOKEN)
    r.publish(EventType.ARRIVED, "c-hidden", "near")
    r.publish(EventType.ARRIVED, "c-grace", "near")
    await _settle(r.hub, 2)
    response = await client.get("/api/stream/kiosk")
    raw = b""
    async with asyncio_timeout(5):
        while b"\n\n" not in raw.split(b"data: ", 1)[-1]:
            raw += await response.content.readany()
    r.publish(EventType.ARRIVED, "c-ada", "immediate")
    r.publish(EventType.ZONE, "c-hidden", "far", previous_zone="near")
    r.publish(EventType.DEPARTED, "c-hidden", "far", dwell_s=3.0)
    async with asyncio_timeout(5):
        while raw.count(b"\nid: ") + raw.startswith(b"id: ") < 4:
            raw += await response.content.readany()
    response.close()
    messages = [json.loads(line[6:]) for line in raw.split(b"\n") if line.startswith(b"data: ")]
    assert b"Hidden" not in raw
    assert b"c-hidden" not in raw
    snapshot = messages[0]
    assert [p["id"] for p in snapshot["people"]] == ["c-grace"]
    # Grace shares her LinkedIn handle: the kiosk can show its QR code to connect.
    assert snapshot["people"][0]["connect"].startswith("data:image/svg+xml")
    assert snapshot["hidden"] == {"close": 1, "room": 0}
    ada = messages[1]
    assert ada["type"] == "arrived"
    assert ada["greet"]["knows"] == ["c-grace"]  # Ada knows Grace, who is shown here
    assert ada["greet"]["tags"] == {"speaker": ["c-grace"]}  # not the hidden speaker
    assert messages[2]["hidden"] == {"close": 0, "room": 1}
    assert messages[3]["hidden"] == {"close": 0, "room": 0}


async def test_resume_by_last_event_id_neither_loses_nor_repeats(
    rig: tuple[Rig, TestClient[Any, Any]],
) -> None:
    r, client = rig
    await _login(client, TOKEN)
    r.publish(EventType.ARRIVED, "c-ada")
    await _settle(r.hub, 1)
    first, _ = await _messages(client, "dashboard", until=1)
    assert first[0]["type"] == "snapshot"
    assert first[0]["seq"] == 1
    # Missed while away: three events; the browser comes back with Last-Event-ID: 1.
    r.publish(EventType.ARRIVED, "c-grace")
    r.publish(EventType.ZONE, "c-ada", "far", previous_zone="near")
    r.publish(EventType.DEPARTED, "c-grace", dwell_s=2.0)
    await _settle(r.hub, 4)
    again, _ = await _messages(client, "dashboard", until=4, headers={"Last-Event-ID": "1"})
    snapshot = again[0]
    assert snapshot["seq"] == 4
    assert [e["seq"] for e in snapshot["history"]] == [2, 3, 4]
    assert [e["contact"]["id"] for e in snapshot["present"]] == ["c-ada"]
    # From the snapshot on, live events follow with their seq as id.
    r.publish(EventType.DEPARTED, "c-ada", dwell_s=5.0)
    await _settle(r.hub, 5)
    live, raw = await _messages(client, "dashboard", until=5, headers={"Last-Event-ID": "4"})
    assert live[0]["history"][0]["seq"] == 5
    assert b"id: 5\n" in raw


async def test_scoped_token_sees_only_its_scope(
    scoped: tuple[Rig, TestClient[Any, Any]],
) -> None:
    r, client = scoped
    assert await _login(client, "kiosk-token-0123456789") == 200
    for path in ("/api/stream/dashboard", "/api/timeline", "/api/contacts"):
        assert (await client.get(path)).status == 403, path
    response = await client.post("/api/contacts", json={"name": "X"}, headers=HEADERS)
    assert response.status == 403
    r.publish(EventType.ARRIVED, "c-ada")
    r.publish(EventType.ARRIVED, "c-staff")
    await _settle(r.hub, 2)
    messages, raw = await _messages(client, "kiosk", until=2)
    assert [p["id"] for p in messages[0]["people"]] == ["c-staff"]
    assert messages[0]["hidden"] == {"close": 0, "room": 0}  # out of scope: not even counted
    assert b"Ada" not in raw
    assert b"c-ada" not in raw


async def test_enrollment_validates_like_the_importer_and_never_logs_the_key(
    rig: tuple[Rig, TestClient[Any, Any]],
) -> None:
    r, client = rig
    logged = io.StringIO()
    configure_logging(LoggingConfig(level="debug", format="json"), stream=logged)
    await _login(client, TOKEN)
    bad = await client.post("/api/contacts", headers=HEADERS, json={
        "name": "Badge Person", "carrier": "address", "address": "not-an-address"})
    assert bad.status == 400
    assert "keys[0]" in (await bad.json())["error"]
    clash = await client.post("/api/contacts", headers=HEADERS, json={"name": "Ada Lovelace",
                                                                      "id": "c-ada"})
    assert clash.status == 409
    response = await client.post("/api/contacts", headers=HEADERS, json={
        "name": "Edsger Dijkstra", "org": "Eindhoven", "tags": "speaker, algorithms",
        "display": True, "knows": "c-ada, c-nobody", "carrier": "phone"})
    assert response.status == 201
    body = await response.json()
    assert body["contact"]["id"] == "edsger-dijkstra"
    assert body["qr"].startswith("data:image/svg+xml")
    stored = await r.store.get_contact("edsger-dijkstra")
    assert stored.display is True
    assert stored.tags == ("speaker", "algorithms")
    key = next(k.value for k in stored.keys if k.kind is KeyKind.HALLWAY_V1)
    k_param = body["uri"].split("k=")[1]
    assert key not in logged.getvalue()
    assert k_param not in logged.getvalue()
    assert "web_contact_added" in logged.getvalue()
    badge = await client.post("/api/contacts", headers=HEADERS, json={
        "name": "Badge Person", "carrier": "ibeacon",
        "uuid": "426c7565-4368-6172-6d42-6561636f6e73", "major": "3838", "minor": "4949"})
    assert badge.status == 201
    assert "qr" not in await badge.json()
    revoked = await client.post("/api/contacts/badge-person/revoke", headers=HEADERS)
    assert revoked.status == 200
    assert "badge-person" in await r.store.revoked_ids()
    listed = await (await client.get("/api/contacts")).json()
    assert "badge-person" not in {c["id"] for c in listed["contacts"]}
    assert all("key" not in json.dumps(c).lower().replace('"keys"', "") for c in
               listed["contacts"])


async def test_session_key_survives_a_restart(tmp_path: Path) -> None:
    first = load_session_key(tmp_path)
    assert load_session_key(tmp_path) == first
    assert (tmp_path / "web-session.key").stat().st_mode & 0o077 == 0
    signer = SessionSigner(first)
    value = signer.issue("ref-1", now=1000.0, max_age_s=60)
    assert SessionSigner(load_session_key(tmp_path)).verify(value, now=1030.0) == "ref-1"
    assert signer.verify(value, now=1061.0) is None
    assert signer.verify(value.replace("ref-1", "ref-2"), now=1030.0) is None
    assert SessionSigner(b"x" * 32).verify(value, now=1030.0) is None


def test_login_limiter_refills() -> None:
    limiter = LoginLimiter(burst=2, refill_per_s=1.0)
    limiter.failed("p", 0.0)
    limiter.failed("p", 0.0)
    assert limiter.retry_after("p", 0.0) == pytest.approx(1.0)
    assert limiter.retry_after("p", 1.0) == 0.0
    assert limiter.retry_after("other", 0.0) == 0.0


def test_kiosk_view_hides_a_person_whose_display_is_withdrawn() -> None:
    contacts = {c.id: c for c in _contacts()}
    view = KioskView(contacts.get)
    view.reset([{"contact": {"id": "c-ada"}, "zone": "near", "since": 1.0}])
    contacts["c-ada"] = Contact(id="c-ada", name="Ada Lovelace", display=False)
    message = view.apply({"type": "zone", "seq": 2, "ts": 2.0, "contact": {"id": "c-ada"},
                          "zone": "far"})
    assert message == {"seq": 2, "ts": 2.0, "type": "hide", "id": "c-ada",
                       "hidden": {"close": 0, "room": 1}}
    gone = view.apply({"type": "departed", "seq": 3, "ts": 3.0, "contact": {"id": "c-ada"},
                       "zone": "far", "reason": "revoked"})
    assert gone["type"] == "hidden"
    assert "name" not in gone


def test_timeline_counts_who_was_there_when_the_window_opened() -> None:
    events = [
        # c-a was present before the window (its first event here is a zone change)
        {"seq": 5, "ts": 130.0, "type": "zone", "contact": {"id": "c-a"}, "zone": "far",
         "previous_zone": "near"},
        {"seq": 6, "ts": 170.0, "type": "arrived", "contact": {"id": "c-b"}, "zone": "near"},
        {"seq": 7, "ts": 250.0, "type": "departed", "contact": {"id": "c-a"}, "zone": "far"},
    ]
    present = [{"contact": {"id": "c-b"}, "zone": "near"},
               {"contact": {"id": "c-c"}, "zone": "immediate"}]  # there all along
    series = timeline(events, present, start=100.0, end=290.0, bucket_s=60.0)
    assert series["zones"]["near"] == [0, 1, 1, 1]
    assert series["zones"]["far"] == [1, 1, 0, 0]
    assert series["zones"]["immediate"] == [1, 1, 1, 1]
    assert series["arrivals"] == [0, 1, 0, 0]
    assert series["departures"] == [0, 0, 1, 0]


def test_problems_are_named() -> None:
    assert problems({"source_state": "scanning", "advertisements_per_s": 40.0,
                     "uptime_s": 100}) == []
    found = problems({"source_state": "backoff", "dropped": 3, "last_error": "adapter gone"})
    assert found[0].startswith("the radio is not scanning")
    assert "3 advertisements were dropped" in found[1]
    assert found[2] == "last error: adapter gone"
    assert problems({"source_state": "scanning", "advertisements_per_s": 0,
                     "uptime_s": 60}) == [
        "scanning, but nothing is heard: is the adapter in range of anyone?"]
    venue = problems({"role": "venue", "broker_connected": False, "scanners_offline": ["b"]})
    assert len(venue) == 2


async def test_venue_role_has_no_enrollment(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "venue.db")
    hub = Hub(store, scanner="venue", contact_lookup=lambda _id: None, retention_s=3600,
              retention_count=1000, batch_window_s=0.0)
    await hub.start()
    server = WebServer(
        host="127.0.0.1", port=0, hub=hub, log_store=store, authority=StaticTokens([TOKEN]),
        session_key=b"k" * 32, session_s=3600, lookup=lambda _id: None,
        status=lambda: {"role": "venue", "broker_connected": False, "scanners_offline": ["b"]},
        clock=time.time, title="Venue", chart_hours=1, role="venue",
    )
    await server.start()  # a real listener on a free port
    assert server.port
    client: TestClient[Any, Any] = TestClient(TestServer(server.app()))
    await client.start_server()
    try:
        await _login(client, TOKEN)
        session = await (await client.get("/api/session")).json()
        assert session["role"] == "venue"
        assert session["enroll_available"] is False
        assert (await client.get("/api/contacts")).status == 404
        assert (await client.get("/api/stream/enroll")).status == 404
        response = await client.get("/api/stream/dashboard")
        status: dict[str, Any] = {}
        async with asyncio_timeout(5):
            while status.get("type") != "status":
                line = await response.content.readline()
                if line.startswith(b"data: "):
                    status = json.loads(line[6:])
        response.close()
        assert status["problems"][0].startswith("the MQTT broker cannot be reached")
    finally:
        await client.close()
        await server.close()
        await hub.close()
        await store.close()


async def test_network_upload_is_matched_in_memory_and_only_matches_kept(
    rig: tuple[Rig, TestClient[Any, Any]],
) -> None:
    r, client = rig
    logged = io.StringIO()
    configure_logging(LoggingConfig(level="debug", format="json"), stream=logged)
    await _login(client, TOKEN)
    export = (b"url,email\n"
              b"https://www.linkedin.com/in/grace-hopper,\n"
              b"https://www.linkedin.com/in/nobody-enrolled-here,stranger@example.org\n")
    response = await client.post("/api/contacts/c-staff/network?format=csv", data=export,
                                 headers={**HEADERS, "X-Filename": "connections.csv"})
    assert response.status == 200, await response.text()
    body = await response.json()
    assert body["read"] == 2
    assert body["matched"] == 1
    assert body["knows"] == 1
    assert (await r.store.get_contact("c-staff")).knows == frozenset({"c-grace"})
    for secret in ("nobody-enrolled-here", "stranger@example.org", "connections.csv"):
        assert secret not in logged.getvalue()
        assert secret not in await response.text()
    unreadable = await client.post("/api/contacts/c-staff/network?format=x",
                                   data=b"\x00\x01 not an archive", headers=HEADERS)
    assert unreadable.status == 400
    assert "nothing was stored" in (await unreadable.json())["error"]
    assert (await client.post("/api/contacts/c-nobody/network", data=export,
                              headers=HEADERS)).status == 404


def test_venue_keeps_display_and_knows_from_the_scanners_events() -> None:
    from hallway.config import VenueConfig
    from hallway.mqtt import public_event
    from hallway.venue.arbiter import Arbiter

    event = public_event({"type": "arrived", "seq": 1, "ts": 10.0, "zone": "near",
                          "contact": {"id": "c-ada", "name": "Ada", "display": True,
                                      "knows": ["c-grace"], "keys": "never carried"}})
    assert event is not None
    assert "keys" not in event["contact"]
    arbiter = Arbiter(VenueConfig(), path_loss_exponent=2.0)
    arbiter.seen("kiosk-a", event["contact"], ts=10.0, distance_m=2.0, now=10.0, zone="near",
                 rssi=-60.0, via="address")
    contact = arbiter.contact("c-ada")
    assert contact is not None
    assert contact.display is True
    assert contact.knows == frozenset({"c-grace"})
    assert KioskView(arbiter.contact).feed_item(
        {"seq": 1, "ts": 10.0, "type": "arrived", "contact": {"id": "c-ada"}})["name"] == "Ada"


def test_profile_links_from_shared_handles() -> None:
    from hallway.web.views import profile_links

    assert profile_links({"linkedin": "ada-lovelace", "twitter": "@ada",
                          "mastodon": "https://example.social/@ada", "email": "a/b"}) == [
        {"service": "linkedin", "url": "https://www.linkedin.com/in/ada-lovelace"},
        {"service": "twitter", "url": "https://x.com/ada"},
        {"service": "mastodon", "url": "https://example.social/@ada"},
    ]


async def test_scoped_tokens_from_the_token_table_and_their_revocation(tmp_path: Path) -> None:
    import asyncio

    from hallway.access import add_token, revoke_token, scope_of
    from hallway.web.access import ServerTokens

    db = tmp_path / "hallway.db"
    await (await SqliteStore.open(db)).close()  # migrated: the token table exists
    secret = add_token(db, scope_of("staff-kiosk", tags=["staff"]))
    tokens = ServerTokens([TOKEN], token_db=db)
    full = tokens.check(TOKEN)
    assert full is not None
    assert full.pages == frozenset({"kiosk", "dashboard", "enroll"})
    scoped = tokens.check(secret)
    assert scoped is not None
    assert scoped.pages == frozenset({"kiosk", "dashboard"})  # no enrollment
    assert scoped.tags == frozenset({"staff"})
    assert tokens.check("not-a-token-0123456789") is None
    revoke_token(db, "staff-kiosk")
    await asyncio.sleep(1.05)  # the table is read again at most once a second
    assert tokens.recheck(scoped.ref) is None
    assert tokens.recheck(full.ref) == full


async def test_no_apps_are_served_without_an_apps_dir(
    rig: tuple[Rig, TestClient[Any, Any]],
) -> None:
    _, client = rig
    response = await client.get("/apps/who-is-here.html")
    assert response.status == 404
    assert b"<html" not in await response.read()


async def test_a_scoped_token_opens_enrollment_only_with_the_enroll_scope(tmp_path: Path) -> None:
    """``hallway tokens add NAME --enroll``: that token may enroll (within its scope); a scoped
    token made without it gets the kiosk and the dashboard only."""
    import argparse

    from hallway.access import add_token, list_tokens, scope_of
    from hallway.commands.tokens import register
    from hallway.web.access import ServerTokens

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(), argparse.ArgumentParser(add_help=False))
    assert parser.parse_args(["tokens", "add", "desk", "--enroll"]).enroll is True
    assert parser.parse_args(["tokens", "add", "desk"]).enroll is False

    db = tmp_path / "hallway.db"
    await (await SqliteStore.open(db)).close()
    reader = add_token(db, scope_of("staff-reader", tags=["staff"]))
    desk = add_token(db, scope_of("staff-desk", tags=["staff"], enroll=True))
    assert {i.name: i.scope.enroll for i in list_tokens(db)} == {
        "staff-desk": True, "staff-reader": False}
    r, client = await _rig(tmp_path, ServerTokens([TOKEN], token_db=db))
    try:
        assert await _login(client, reader) == 200
        assert (await client.get("/api/session")).status == 200
        assert (await client.get("/api/contacts")).status == 403
        assert (await client.get("/api/stream/enroll")).status == 403
        response = await client.post("/api/contacts", json={"name": "X", "tags": "staff"},
                                     headers=HEADERS)
        assert response.status == 403
        client.session.cookie_jar.clear()
        assert await _login(client, desk) == 200
        session = await (await client.get("/api/session")).json()
        assert "enroll" in session["access"]["pages"]
        listed = await (await client.get("/api/contacts")).json()
        assert [c["id"] for c in listed["contacts"]] == ["c-staff"]  # still within its scope
    finally:
        await client.close()
        await r.server.close()
        await r.hub.close()
        await r.store.close()


async def test_pages_are_served_over_tls_with_the_sockets_certificate(tmp_path: Path) -> None:
    import ssl

    import aiohttp

    from hallway.config import ServerConfig
    from hallway.tls import server_context

    context = server_context(ServerConfig(tls=True), tmp_path)
    assert context is not None
    store = await SqliteStore.open(tmp_path / "hallway.db")
    hub = Hub(store, scanner="t", contact_lookup=lambda _id: None, retention_s=3600,
              retention_count=1000, batch_window_s=0.0)
    await hub.start()
    server = WebServer(
        host="127.0.0.1", port=0, hub=hub, log_store=store, authority=StaticTokens([TOKEN]),
        session_key=b"k" * 32, session_s=3600, lookup=lambda _id: None, status=dict,
        clock=time.time, title="TLS", chart_hours=1, ssl_context=context,
    )
    await server.start()
    try:
        client_ssl = ssl.create_default_context()
        client_ssl.check_hostname = False
        client_ssl.verify_mode = ssl.CERT_NONE  # the fingerprint is checked by apps, not here
        async with aiohttp.ClientSession() as session:
            url = f"https://127.0.0.1:{server.port}"
            async with session.post(f"{url}/api/login", json={"token": TOKEN}, headers=HEADERS,
                                    ssl=client_ssl) as response:
                assert response.status == 200
                assert "Secure" in response.headers["Set-Cookie"]
    finally:
        await server.close()
        await hub.close()
        await store.close()
