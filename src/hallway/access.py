"""Scoped subscriber tokens in the database (``hallway tokens``), and the daemon's watch on them.

A token is made once (``secrets.token_urlsafe``: 192 random bits), shown once, and kept only
as its SHA-256 digest with a name and a scope (see ``hallway.session.Scope``). ``revoke``
deletes the row (with SQLite's ``secure_delete`` the digest does not stay in free pages); a
running daemon reads the table every ``WATCH_INTERVAL_S`` and ends the revoked token's
connections, so a revoke takes effect within about a second.

The table is made by migration 5 of ``hallway.store.MIGRATIONS``. These functions use their
own short-lived ``sqlite3`` connection (the file is in WAL mode, so they never block the
daemon's writers for long); ``SqliteStore.open`` must have migrated the file first.
"""

from __future__ import annotations

import math
import re
import secrets
import sqlite3
import time
from collections.abc import Iterable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hallway import codec
from hallway.errors import HallwayError
from hallway.session import EXTRA_FIELDS, UNSCOPED, Scope, token_digest

WATCH_INTERVAL_S = 1.0
"""How often a running daemon reads the token table (a revoke ends connections within 2 s)."""
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
TOKEN_BYTES = 24

class TokenError(HallwayError):
    """A token command could not be done (bad name, duplicate, unknown name)."""


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """One token as ``list`` shows it: never the secret."""

    name: str
    scope: Scope
    created_at: float


def check_name(name: str) -> str:
    """A valid token name, or TokenError naming the rule."""
    if not NAME_RE.match(name):
        raise TokenError(f"token name {name[:70]!r}: use 1-64 letters, digits, '.', '_' or '-', "
                         "starting with a letter or digit")
    if name.startswith(UNSCOPED):
        raise TokenError(f"token names starting with {UNSCOPED!r} are kept for the config's "
                         "tokens")
    return name


def scope_of(name: str, *, tags: Iterable[str] | None = None,
             contacts: Iterable[str] | None = None, history_s: float | None = None,
             present: bool = True, fields: Iterable[str] = (), enroll: bool = False) -> Scope:
    """A scope from command-line values, checked."""
    extra = frozenset(fields)
    unknown = extra - EXTRA_FIELDS
    if unknown:
        raise TokenError(f"unknown contact field(s) {', '.join(sorted(unknown))}; "
                         f"choose from {', '.join(sorted(EXTRA_FIELDS))}")
    if history_s is not None and (not math.isfinite(history_s) or history_s < 0):
        raise TokenError("--history must be a non-negative number of seconds")
    return Scope(
        check_name(name),
        tags=None if tags is None else frozenset(tags),
        contacts=None if contacts is None else frozenset(contacts),
        history_s=history_s,
        present=present,
        fields=extra,
        enroll=enroll,
    )


def _scope_json(scope: Scope) -> str:
    return codec.encode(scope.describe())


def _scope_from(name: str, text: str) -> Scope:
    data: dict[str, Any] = codec.decode(text)
    tags, contacts, history = data.get("tags"), data.get("contacts"), data.get("history_s")
    return Scope(
        name,
        tags=None if tags is None else frozenset(str(t) for t in tags),
        contacts=None if contacts is None else frozenset(str(c) for c in contacts),
        history_s=None if history is None else float(history),
        present=bool(data.get("present", True)),
        fields=frozenset(str(f) for f in data.get("fields", ())) & EXTRA_FIELDS,
        enroll=data.get("enroll") is True,  # absent in rows made before the enroll scope
    )


def _connect(db: Path) -> sqlite3.Connection:
    if not db.exists():
        raise TokenError(f"{db}: no such database")
    conn = sqlite3.connect(str(db), timeout=10.0, isolation_level=None)
    conn.execute("PRAGMA secure_delete = ON")
    return conn


def add_token(db: Path, scope: Scope, *, now: float | None = None) -> str:
    """Store a new token with ``scope`` under ``scope.name``; the secret (shown once)."""
    secret = secrets.token_urlsafe(TOKEN_BYTES)
    while secret.startswith("-"):  # never mistaken for an option when passed by hand
        secret = secrets.token_urlsafe(TOKEN_BYTES)
    with closing(_connect(db)) as conn:
        try:
            conn.execute(
                "INSERT INTO tokens (name, digest, scope, created_at) VALUES (?, ?, ?, ?)",
                (scope.name, token_digest(secret), _scope_json(scope),
                 time.time() if now is None else now),
            )
        except sqlite3.IntegrityError:
            raise TokenError(f"a token named {scope.name!r} exists; revoke it first") from None
    return secret


def list_tokens(db: Path) -> list[TokenInfo]:
    """Every token's name, scope and creation time, by name."""
    with closing(_connect(db)) as conn:
        rows = conn.execute("SELECT name, scope, created_at FROM tokens ORDER BY name").fetchall()
    return [TokenInfo(name, _scope_from(name, scope), float(created)) for name, scope, created
            in rows]


def revoke_token(db: Path, name: str) -> None:
    """Delete the token named ``name``; TokenError if there is none."""
    with closing(_connect(db)) as conn:
        cursor = conn.execute("DELETE FROM tokens WHERE name = ?", (name,))
        if cursor.rowcount == 0:
            raise TokenError(f"no token named {name!r}")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # no old copy of the row in the WAL


class TokenWatch:
    """The daemon's reader of the token table (one connection, used from one thread at a time)."""

    def __init__(self, db: Path) -> None:
        self._db = db
        self._conn: sqlite3.Connection | None = None

    def read(self) -> list[tuple[bytes, Scope]]:
        """The tokens now in the table (digest, scope); rows that do not parse are skipped."""
        if self._conn is None:
            self._conn = sqlite3.connect(str(self._db), timeout=5.0, isolation_level=None,
                                         check_same_thread=False)
        rows = self._conn.execute("SELECT name, digest, scope FROM tokens").fetchall()
        out = []
        for name, digest, scope in rows:
            try:
                out.append((bytes(digest), _scope_from(str(name), str(scope))))
            except (ValueError, TypeError):
                continue
        return out

    def close(self) -> None:
        """Close the connection (idempotent)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
