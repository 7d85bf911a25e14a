"""Who may see what on the web pages: tokens become an ``Access``, kept in a signed cookie.

The login exchange: a page POSTs the token it was given (typed in, or read from the URL's
fragment, which a browser never sends) to ``/api/login``; the server asks its
``TokenAuthority`` for the token's ``Access`` and answers with an HttpOnly, SameSite=Strict
session cookie that names the access by its ``ref`` (never the secret), an expiry and an
HMAC. Every request and every open stream asks the authority again by ``ref``, so a token
that is revoked or changes scope takes effect on open pages at once.

The seam for tokens is ``TokenAuthority``: ``check(secret)`` for the login and
``recheck(ref)`` afterwards. ``ServerTokens`` is the daemon's: the config's tokens (every page,
every contact) and the scoped tokens of ``hallway tokens`` (the kiosk and the dashboard, within
the token's tags and contacts; the enrollment page too where the token was made with
``--enroll``), read again from the token table at most once a
second, so a revoked token's pages go blank within about two seconds. ``StaticTokens``: the
config's tokens alone.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from hallway.access import TokenWatch
from hallway.filters import Filter
from hallway.session import Scope, token_digest

PAGES = frozenset({"kiosk", "dashboard", "enroll"})
"""What an access may open: the kiosk and the dashboard read; ``enroll`` also writes."""
SESSION_KEY_FILE = "web-session.key"
COOKIE_NAME = "hallway_session"
_COOKIE_VERSION = "v1"


@dataclass(frozen=True, slots=True)
class Access:
    """What one token may see: pages, and the contacts within its scope (None: any)."""

    name: str
    ref: str
    pages: frozenset[str] = PAGES
    contacts: frozenset[str] | None = None
    tags: frozenset[str] | None = None

    @property
    def filter(self) -> Filter:
        """The hub filter of this access (it narrows every subscription it makes)."""
        return Filter(self.contacts, self.tags)

    @property
    def everyone(self) -> bool:
        """True when no contact is out of this access's scope."""
        return self.contacts is None and self.tags is None

    def covers(self, contact_id: str, tags: Iterable[str] | None) -> bool:
        """True if a contact with ``contact_id`` and ``tags`` is within this access's scope."""
        return self.filter.matches(contact_id, None if tags is None else frozenset(tags))

    def summary(self) -> dict[str, object]:
        """The scope as the page is told it (no secret, no ref)."""
        return {
            "name": self.name,
            "pages": sorted(self.pages),
            "contacts": None if self.contacts is None else sorted(self.contacts),
            "tags": None if self.tags is None else sorted(self.tags),
        }


class TokenAuthority(Protocol):
    """Where the web server learns what a token may see (the scoped tokens plug in here)."""

    def check(self, secret: str) -> Access | None:
        """The access of a presented token, or None if it is not valid."""

    def recheck(self, ref: str) -> Access | None:
        """The access a session names by ``ref``, or None if that token is gone."""


def _ref(secret: str) -> str:
    return hashlib.sha256(b"hallway-web-ref\0" + secret.encode()).hexdigest()[:32]


class StaticTokens:
    """The server's configured tokens: each opens every page and sees every contact."""

    def __init__(self, tokens: Sequence[str]) -> None:
        self._by_ref = {_ref(token): f"token {index}" for index, token in
                        enumerate(tokens, start=1)}
        self._digests = [(hashlib.sha256(t.encode()).digest(), _ref(t)) for t in tokens]

    def check(self, secret: str) -> Access | None:
        """Constant-time comparison against every configured token."""
        given = hashlib.sha256(secret.encode()).digest()
        found: str | None = None
        for digest, ref in self._digests:
            if hmac.compare_digest(given, digest):
                found = ref
        return None if found is None else self.recheck(found)

    def recheck(self, ref: str) -> Access | None:
        """Still configured? (Static tokens change only with a restart.)"""
        name = self._by_ref.get(ref)
        return None if name is None else Access(name=name, ref=ref)


SCOPED_PAGES = frozenset({"kiosk", "dashboard"})
"""What a scoped token may open: it reads within its scope; enrolling needs ``--enroll``."""
TABLE_READ_S = 1.0


class ServerTokens:
    """The config's tokens and the token table's scoped tokens (see the module's docstring)."""

    def __init__(self, tokens: Sequence[str], *, token_db: Path | None) -> None:
        self._static = StaticTokens(tokens)
        self._watch = None if token_db is None else TokenWatch(token_db)
        self._table: dict[str, tuple[bytes, Scope]] = {}
        self._read_at = float("-inf")

    def _scoped(self) -> dict[str, tuple[bytes, Scope]]:
        now = time.monotonic()
        if self._watch is not None and now - self._read_at >= TABLE_READ_S:
            self._read_at = now
            try:
                rows = self._watch.read()
            except sqlite3.Error:
                rows = None  # keep the last reading; the daemon's own watch reports errors
            if rows is not None:
                self._table = {f"t-{scope.name}": (digest, scope) for digest, scope in rows}
        return self._table

    @staticmethod
    def _access(ref: str, scope: Scope) -> Access:
        pages = SCOPED_PAGES | {"enroll"} if scope.enroll else SCOPED_PAGES
        return Access(name=scope.name, ref=ref, pages=pages, contacts=scope.contacts,
                      tags=scope.tags)

    def check(self, secret: str) -> Access | None:
        """A config token, else a scoped one (compared by digest, in constant time)."""
        found = self._static.check(secret)
        given = token_digest(secret)
        for ref, (digest, scope) in self._scoped().items():
            if hmac.compare_digest(given, digest) and found is None:
                found = self._access(ref, scope)
        return found

    def recheck(self, ref: str) -> Access | None:
        """The access of ``ref`` as the tokens stand now (None once revoked)."""
        if not ref.startswith("t-"):
            return self._static.recheck(ref)
        entry = self._scoped().get(ref)
        return None if entry is None else self._access(ref, entry[1])


def load_session_key(state_dir: Path | None) -> bytes:
    """The key that signs session cookies: ``<state_dir>/web-session.key`` (created 0600), so
    sessions survive a restart; a fresh random key when there is no state directory."""
    if state_dir is None:
        return secrets.token_bytes(32)
    path = state_dir / SESSION_KEY_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        data = path.read_bytes()
        if len(data) >= 32:
            return data[:32]
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC, 0o600)
    key = secrets.token_bytes(32)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key)
    return key


class SessionSigner:
    """Issues and verifies session cookie values: ``v1.<ref>.<expires>.<mac>``."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def _mac(self, body: str) -> str:
        digest = hmac.new(self._key, body.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def issue(self, ref: str, *, now: float, max_age_s: float) -> str:
        """A cookie value naming ``ref`` until ``now + max_age_s``."""
        body = f"{_COOKIE_VERSION}.{ref}.{int(now + max_age_s)}"
        return f"{body}.{self._mac(body)}"

    def verify(self, value: str, *, now: float) -> str | None:
        """The ``ref`` of a valid, unexpired cookie value, else None."""
        parts = value.split(".")
        if len(parts) != 4 or parts[0] != _COOKIE_VERSION or not parts[2].isdigit():
            return None
        body = ".".join(parts[:3])
        if not hmac.compare_digest(self._mac(body), parts[3]):
            return None
        if int(parts[2]) <= now:
            return None
        return parts[1]


class LoginLimiter:
    """Failed logins per peer: a burst, refilled slowly; a peer over it waits."""

    def __init__(self, *, burst: int = 10, refill_per_s: float = 0.5, peers: int = 4096) -> None:
        self._burst = burst
        self._refill = refill_per_s
        self._max_peers = peers
        self._peers: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def _budget(self, peer: str, now: float) -> float:
        budget, updated = self._peers.get(peer, (float(self._burst), now))
        return min(float(self._burst), budget + (now - updated) * self._refill)

    def retry_after(self, peer: str, now: float) -> float:
        """Seconds until ``peer`` may try again (0: now)."""
        budget = self._budget(peer, now)
        return 0.0 if budget >= 1.0 else (1.0 - budget) / self._refill

    def failed(self, peer: str, now: float) -> None:
        """Spend one attempt of ``peer``'s budget."""
        self._peers[peer] = (max(0.0, self._budget(peer, now) - 1.0), now)
        self._peers.move_to_end(peer)
        while len(self._peers) > self._max_peers:
            self._peers.popitem(last=False)

    def succeeded(self, peer: str) -> None:
        """Forget ``peer``'s failures."""
        self._peers.pop(peer, None)
