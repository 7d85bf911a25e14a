"""The rules of one socket session, without I/O (the sans-IO core of ``hallway.server``).

Theory of operation. A ``Session`` is fed what happened on its connection: a received line
(``receive``), a line that was too long (``too_large``), or the passage of time (``tick``),
each with ``now`` on the monotonic clock; it answers with a list of actions for the server to
carry out (send a line, send an error and close, start a subscription, send the status or the
present set, send a ping). It never touches a socket, a clock or the hub, so unit tests drive
it line by line.

States (a table; anything not listed is ``bad_request``, which closes):

    state          input                          -> state         actions
    greeting       subscribe/status/present+token -> authenticated  (request's actions)
    greeting       valid subscribe                -> subscribed     StartSubscription
    greeting       wrong token                    -> closed         Close(unauthorized|rate_limited)
    greeting       tick past auth deadline        -> closed         Close(unauthorized)
    authenticated  status | present               -> authenticated  SendStatus | SendPresent
    authenticated  subscribe                      -> subscribed     StartSubscription
    subscribed     status | present               -> subscribed     SendStatus | SendPresent
    subscribed     subscribe                      -> closed         Close(bad_request)
    any open       tick, idle >= ping interval    -> (same)         SendPing

Who may do what is the ``Gate``'s business, shared by every session of a server: the token
table (hashed tokens with their ``Scope``), the budget of wrong tokens per peer address, the
connections per token and the per-token budget of expensive requests (status, present, resume).
All of it takes ``now``; the gate is pure too.

Wrong tokens and valid ones. A valid token is accepted whatever its peer's record of wrong
tokens: only wrong tokens are counted (per peer address), a success does not reset the count,
and a peer over its budget is answered ``rate_limited`` with ``retry_after_s``. Checking a
presented token before the peer's budget is safe because tokens carry at least 128 random bits:
no number of guesses at any rate finds one, so the budget only sheds work and noise, and a
client with a valid token behind the same NAT as an attacker still gets in.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any

from hallway import codec
from hallway.filters import Filter
from hallway.models import Contact

PROTOCOL_VERSION = 1
MAX_FILTER_ITEMS = 10_000
MAX_FILTER_ITEM_LEN = 256
AUTH_BURST = 10
"""Wrong tokens a peer address may present at once ..."""
AUTH_REFILL_PER_S = 0.5
"""... and how fast that budget refills (one more every 2 s)."""
MAX_PEERS_TRACKED = 4096
STREAK_QUIET_S = 60.0
"""A peer's run of wrong tokens ends after this long without one (for logging)."""
REQUEST_BURST = 50
"""Expensive requests (status, present, a resume) a token may make at once ..."""
REQUEST_REFILL_PER_S = 20.0
"""... and how fast that budget refills."""
BASE_FIELDS = frozenset({"id", "name", "org", "title", "handles", "tags"})
"""Contact fields every token sees."""
EXTRA_FIELDS = frozenset({"display", "knows"})
"""Contact fields a scoped token sees only where its scope names them (``--fields``)."""


# -- scopes ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Scope:
    """What one token may see and ask. ``None`` in a limit means no limit.

    ``tags``/``contacts`` bound the contacts (both given: both must match, as in a filter);
    ``history_s`` bounds how far back a resume may reach; ``present`` allows the ``present``
    request; ``fields`` are the extra contact fields (of ``EXTRA_FIELDS``) it may see;
    ``enroll`` lets it open the web enrollment page (the sockets do not use it).
    """

    name: str
    tags: frozenset[str] | None = None
    contacts: frozenset[str] | None = None
    history_s: float | None = None
    present: bool = True
    fields: frozenset[str] = EXTRA_FIELDS
    enroll: bool = False

    @property
    def filter(self) -> Filter | None:
        """The contacts this scope admits as a filter (None: all)."""
        if self.tags is None and self.contacts is None:
            return None
        return Filter(self.contacts, self.tags)

    def narrow(self, wanted: Filter) -> Filter:
        """The client's filter within this scope: it narrows, never widens."""
        bound = self.filter
        if bound is None:
            return wanted
        return replace(wanted, within=bound)

    @property
    def hidden_fields(self) -> frozenset[str]:
        """Contact fields removed from everything this token is sent."""
        return EXTRA_FIELDS - self.fields

    def project(self, line: bytes) -> bytes:
        """An encoded event line with the hidden contact fields removed (fast path: none)."""
        hidden = self.hidden_fields
        if not hidden or not any(f'"{key}"'.encode() in line for key in hidden):
            return line
        data = codec.decode(line)
        contact = data.get("contact")
        if isinstance(contact, dict):
            data["contact"] = {k: v for k, v in contact.items() if k not in hidden}
        return codec.encode_line(data)

    def project_entry(self, entry: dict[str, Any]) -> dict[str, Any]:
        """A ``present`` entry (or event object) with the hidden contact fields removed."""
        hidden = self.hidden_fields
        contact = entry.get("contact")
        if not hidden or not isinstance(contact, dict) or hidden.isdisjoint(contact):
            return entry
        return {**entry, "contact": {k: v for k, v in contact.items() if k not in hidden}}

    def describe(self) -> dict[str, Any]:
        """The scope as shown by ``hallway tokens list`` (never a secret)."""
        return {
            "tags": None if self.tags is None else sorted(self.tags),
            "contacts": None if self.contacts is None else sorted(self.contacts),
            "history_s": self.history_s,
            "present": self.present,
            "fields": sorted(self.fields),
            "enroll": self.enroll,
        }


UNSCOPED = "config"
"""Name of the scope of the tokens from the config (``tokens``, ``token_file``): no limits."""


def token_digest(token: str) -> bytes:
    """How a token is kept and compared: its SHA-256 (tokens are random, so no salt needed)."""
    return hashlib.sha256(token.encode()).digest()


# -- the gate ---------------------------------------------------------------------------------


@dataclass(slots=True)
class _Bucket:
    level: float
    updated: float
    streak: int = 0
    last_failure: float = -math.inf

    def take(self, now: float, *, burst: float, refill_per_s: float) -> float:
        """Take one unit: 0.0 if there was one, else the seconds until there will be."""
        self.level = min(burst, self.level + (now - self.updated) * refill_per_s)
        self.updated = now
        if self.level >= 1.0:
            self.level -= 1.0
            return 0.0
        return max(0.1, math.ceil((1.0 - self.level) / refill_per_s * 10) / 10)


@dataclass(frozen=True, slots=True)
class Grant:
    """A token accepted: its scope (the name identifies the token)."""

    scope: Scope


@dataclass(frozen=True, slots=True)
class Refusal:
    """A token refused: the error code, its message and extra fields (``retry_after_s``)."""

    code: str
    message: str
    extra: dict[str, Any] = field(default_factory=dict)
    streak: int = 1
    """Wrong tokens in the peer's current run (1: the first, worth a warning)."""


class Gate:
    """Tokens and their scopes, wrong-token budgets per peer, caps per token. Pure: ``now`` in.

    ``peer_key`` of a connection is its IP address (or ``unix:uid=N``), never a port.
    """

    def __init__(self, *, max_connections_per_token: int,
                 request_burst: float = REQUEST_BURST,
                 request_refill_per_s: float = REQUEST_REFILL_PER_S) -> None:
        self._tokens: dict[bytes, Scope] = {}
        self._peers: OrderedDict[str, _Bucket] = OrderedDict()
        self._connections: dict[str, int] = {}
        self._requests: dict[str, _Bucket] = {}
        self._max_per_token = max_connections_per_token
        self._request_burst = request_burst
        self._request_refill = request_refill_per_s
        self.refused_peer = 0

    # the token table

    @property
    def open(self) -> bool:
        """True when no token is configured (``auth = "none"``)."""
        return not self._tokens

    def set_tokens(self, tokens: Iterable[tuple[bytes, Scope]]) -> set[str]:
        """Replace the token table (digest, scope); the names of scopes no longer valid."""
        before = {scope.name: scope for scope in self._tokens.values()}
        self._tokens = dict(tokens)
        after = {scope.name: scope for scope in self._tokens.values()}
        return {name for name, scope in before.items() if after.get(name) != scope}

    def scope_names(self) -> set[str]:
        """Names of the scopes of the tokens now valid."""
        return {scope.name for scope in self._tokens.values()}

    # authentication

    def authenticate(self, token: object, peer: str, now: float) -> Grant | Refusal:
        """Check a presented token first (constant time per candidate), then the budget."""
        given = token_digest(token if isinstance(token, str) else "")
        found: Scope | None = None
        for digest, scope in self._tokens.items():
            if hmac.compare_digest(given, digest):
                found = scope
        if found is not None:
            return Grant(found)
        bucket = self._peer(peer, now)
        if now - bucket.last_failure > STREAK_QUIET_S:
            bucket.streak = 0
        bucket.streak += 1
        bucket.last_failure = now
        wait = bucket.take(now, burst=AUTH_BURST, refill_per_s=AUTH_REFILL_PER_S)
        if wait > 0:
            self.refused_peer += 1
            return Refusal("rate_limited", "too many wrong tokens from your address",
                           {"retry_after_s": wait}, bucket.streak)
        return Refusal("unauthorized", "missing or wrong token", streak=bucket.streak)

    def _peer(self, peer: str, now: float) -> _Bucket:
        bucket = self._peers.get(peer)
        if bucket is None:
            bucket = _Bucket(AUTH_BURST, now)
            self._peers[peer] = bucket
            while len(self._peers) > MAX_PEERS_TRACKED:
                self._peers.popitem(last=False)
        else:
            self._peers.move_to_end(peer)
        return bucket

    # caps per token

    def connect(self, scope: Scope) -> bool:
        """Count one more connection of ``scope``'s token; False (not counted) at its cap."""
        count = self._connections.get(scope.name, 0)
        if count >= self._max_per_token:
            return False
        self._connections[scope.name] = count + 1
        return True

    def disconnect(self, scope: Scope) -> None:
        """One connection of ``scope``'s token ended."""
        count = self._connections.get(scope.name, 0) - 1
        if count > 0:
            self._connections[scope.name] = count
        else:
            self._connections.pop(scope.name, None)

    def connections(self, name: str) -> int:
        """Open connections of the token named ``name``."""
        return self._connections.get(name, 0)

    def request(self, scope: Scope, now: float) -> float:
        """Take one expensive request from the token's budget: 0.0, or seconds to wait."""
        bucket = self._requests.get(scope.name)
        if bucket is None:
            bucket = self._requests[scope.name] = _Bucket(self._request_burst, now)
        return bucket.take(now, burst=self._request_burst, refill_per_s=self._request_refill)


# -- actions ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Send:
    """Send this protocol object."""

    message: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Close:
    """Send an ``error`` line with ``code`` and close the connection."""

    code: str
    message: str
    extra: dict[str, Any] = field(default_factory=dict)

    def line(self) -> dict[str, Any]:
        """The error object."""
        return {"type": "error", "code": self.code, "message": self.message, **self.extra}


@dataclass(frozen=True, slots=True)
class StartSubscription:
    """Subscribe to the hub with this (already narrowed) filter; resume after ``since_seq``
    (no further back than ``scope.history_s``)."""

    filter: Filter
    since_seq: int | None
    scope: Scope


@dataclass(frozen=True, slots=True)
class SendStatus:
    """Send the ``status`` reply."""


@dataclass(frozen=True, slots=True)
class SendPresent:
    """Send the ``present`` reply: the present contacts that pass ``filter``."""

    filter: Filter
    scope: Scope


@dataclass(frozen=True, slots=True)
class SendPing:
    """Send a ``ping``."""


Action = Send | Close | StartSubscription | SendStatus | SendPresent | SendPing


def error(code: str, message: str, **extra: Any) -> Send:
    """An error line that does not close the connection."""
    return Send({"type": "error", "code": code, "message": message, **extra})


# -- the session ------------------------------------------------------------------------------


class State(Enum):
    GREETING = "greeting"
    AUTHENTICATED = "authenticated"
    SUBSCRIBED = "subscribed"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class Rules:
    """The server's settings a session follows."""

    auth_timeout_s: float
    ping_interval_s: float
    max_line_bytes: int
    server: str
    scanner: str
    lookup: Callable[[str], Contact | None] | None = None
    """The current contact by id, for ``knows_of`` filters (which follow the person's knows)."""


class Session:
    """One connection's protocol state. Feed it lines and time; carry out what it returns."""

    def __init__(self, gate: Gate, rules: Rules, *, opened: float, peer: str,
                 listener: str, loopback: bool) -> None:
        self._gate = gate
        self._rules = rules
        self.opened = opened
        self.peer = peer
        self.listener = listener
        self.loopback = loopback
        self.state = State.GREETING
        self.scope: Scope | None = None
        self.counted = False  # this session counts against its token's connections
        self.auth_timed_out = False
        self.refusal: Refusal | None = None  # why the token was refused, if it was

    # inputs

    def start(self) -> list[Action]:
        """The greeting."""
        return [Send({
            "type": "hello", "protocol": PROTOCOL_VERSION, "server": self._rules.server,
            "scanner": self._rules.scanner, "auth": "none" if self._gate.open else "token",
        })]

    def receive(self, raw: bytes, now: float) -> list[Action]:
        """One line from the peer (blank lines are ignored)."""
        if self.state is State.CLOSED or not raw.strip():
            return []
        try:
            message = codec.decode(raw)
        except codec.DecodeError as exc:
            return self._close("bad_request", f"line is {exc}")
        kind = message.get("type")
        if not isinstance(kind, str):
            return self._close("bad_request", 'expected a JSON object with a "type"')
        if self.state is State.GREETING:
            if kind not in ("subscribe", "status", "present"):
                return self._close("bad_request", 'expected a "subscribe" line')
            refused = self._authorize(message, now)
            if refused is not None:
                return refused
        if kind == "subscribe":
            if self.state is State.SUBSCRIBED:
                return self._close("bad_request", "already subscribed")
            return self._subscribe(message, now)
        if kind == "status":
            return self._budget(now) or [SendStatus()]
        if kind == "present":
            return self._present(message, now)
        if self.state is State.SUBSCRIBED:
            return []  # unknown types after subscribing are ignored (forward compatible)
        return self._close("bad_request", f'unknown request type "{kind[:40]}"')

    def too_large(self) -> list[Action]:
        """The peer sent a line longer than ``max_line_bytes``."""
        return self._close("too_large", f"line longer than {self._rules.max_line_bytes} bytes")

    def tick(self, now: float, idle_since: float) -> list[Action]:
        """Time passed; ``idle_since`` is when the connection was last sent anything."""
        if self.state is State.CLOSED:
            return []
        if self.state is State.GREETING and now >= self.opened + self._rules.auth_timeout_s:
            self.auth_timed_out = True
            limit = f"{self._rules.auth_timeout_s:g} s"
            return self._close("unauthorized", f"no valid subscribe within {limit}")
        if now >= idle_since + self._rules.ping_interval_s:
            return [SendPing()]
        return []

    def wake_at(self, idle_since: float) -> float:
        """When ``tick`` must next be called (the monotonic clock)."""
        if self.state is State.CLOSED:
            return math.inf
        ping = idle_since + self._rules.ping_interval_s
        if self.state is State.GREETING:
            return min(ping, self.opened + self._rules.auth_timeout_s)
        return ping

    def revoked(self) -> list[Action]:
        """The session's token was revoked (or its scope changed): end it."""
        return self._close("unauthorized", "your token was revoked")

    def end(self) -> None:
        """The connection is gone: release what it held (idempotent)."""
        if self.counted and self.scope is not None:
            self._gate.disconnect(self.scope)
        self.counted = False
        self.state = State.CLOSED

    # rules

    def _close(self, code: str, message: str, **extra: Any) -> list[Action]:
        self.state = State.CLOSED
        return [Close(code, message, extra)]

    def _authorize(self, message: dict[str, Any], now: float) -> list[Action] | None:
        if self._gate.open:
            if self.listener == "tcp" and not self.loopback:
                return self._close("unauthorized", "this server accepts only local connections")
            self.scope = Scope(UNSCOPED)
        else:
            verdict = self._gate.authenticate(message.get("token"), self.peer, now)
            if isinstance(verdict, Refusal):
                self.refusal = verdict
                return self._close(verdict.code, verdict.message, **verdict.extra)
            self.scope = verdict.scope
        if not self._gate.connect(self.scope):
            return self._close("busy", "too many connections with this token")
        self.counted = True
        self.state = State.AUTHENTICATED
        return None

    def _budget(self, now: float) -> list[Action]:
        assert self.scope is not None
        wait = self._gate.request(self.scope, now)
        if wait > 0:
            return [error("rate_limited", "too many requests with this token",
                          retry_after_s=wait)]
        return []

    def _filter(self, message: dict[str, Any]) -> Filter | list[Action]:
        assert self.scope is not None
        try:
            wanted = Filter.of(_string_list(message, "contacts"), _string_list(message, "tags"),
                               knows_of=_knows_of(message), lookup=self._rules.lookup)
        except ValueError as exc:
            return self._close("bad_request", str(exc))
        return self.scope.narrow(wanted)

    def _subscribe(self, message: dict[str, Any], now: float) -> list[Action]:
        assert self.scope is not None
        narrowed = self._filter(message)
        if isinstance(narrowed, list):
            return narrowed
        try:
            since_seq = _since_seq(message)
        except ValueError as exc:
            return self._close("bad_request", str(exc))
        if since_seq is not None:
            wait = self._gate.request(self.scope, now)
            if wait > 0:  # a resume reads the log: refused before anything is subscribed
                return self._close("rate_limited", "too many resumes with this token",
                                   retry_after_s=wait)
        self.state = State.SUBSCRIBED
        return [StartSubscription(narrowed, since_seq, self.scope)]

    def _present(self, message: dict[str, Any], now: float) -> list[Action]:
        assert self.scope is not None
        if not self.scope.present:
            return [error("forbidden", "this token may not ask for the present set")]
        narrowed = self._filter(message)
        if isinstance(narrowed, list):
            return narrowed
        return self._budget(now) or [SendPresent(narrowed, self.scope)]


def _string_list(data: dict[str, Any], key: str) -> list[str] | None:
    value = data.get(key)
    if value is None:
        return None
    if (
        not isinstance(value, list)
        or len(value) > MAX_FILTER_ITEMS
        or not all(isinstance(v, str) and 0 < len(v) <= MAX_FILTER_ITEM_LEN for v in value)
    ):
        raise ValueError(f'"{key}" must be a list of non-empty strings')
    return value


def _knows_of(data: dict[str, Any]) -> str | None:
    """The ``knows_of`` contact id of a request (events about the people it knows)."""
    value = data.get("knows_of")
    if value is None:
        return None
    if not isinstance(value, str) or not 1 <= len(value) <= 64:
        raise ValueError('"knows_of" must be a contact id (1-64 characters)')
    return value


def _since_seq(data: dict[str, Any]) -> int | None:
    value = data.get("since_seq")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError('"since_seq" must be a non-negative integer')
    return value

