"""Where a daemon is and how to reach it: the connection URI, a Unix socket path, ``HOST:PORT``.

The URI an operator hands to an app is ``hallway://HOST:PORT?token=SECRET&fp=sha256:HEX``:
``fp`` pins the SHA-256 of the server certificate's DER form and means TLS; without ``fp`` the
connection is plain TCP (loopback only, as a rule). Everything here is pure parsing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from urllib.parse import parse_qs, quote, urlsplit

from hallway.client._errors import TokenWithheld

DEFAULT_PORT = 7447
SCHEME = "hallway"
_HEX = re.compile(r"^[0-9a-f]{64}$")


class TargetError(ValueError):
    """A connection target, URI or fingerprint that cannot be used; the message says why."""


def parse_fingerprint(text: str) -> str:
    """A certificate fingerprint as 64 lowercase hex digits.

    Accepts ``sha256:HEX`` or bare ``HEX``, with or without ``:`` between byte pairs (as
    ``openssl x509 -fingerprint`` prints it)."""
    value = text.strip()
    if value.lower().startswith("sha256:"):
        value = value[len("sha256:"):]
    elif ":" in value and len(value) != 95:
        algorithm = value.split(":", 1)[0]
        raise TargetError(f"fingerprint: only sha256 is supported, not {algorithm!r}")
    value = value.replace(":", "").lower()
    if not _HEX.match(value):
        raise TargetError("fingerprint: expected sha256: and 64 hex digits")
    return value


@dataclass(frozen=True, slots=True)
class Target:
    """A daemon's socket, and what may be sent to it.

    Exactly one of ``path`` (a Unix socket) or ``host``/``port`` (TCP) is set. ``token`` is the
    secret to subscribe with; ``fingerprint`` (64 hex digits) means TLS with the server
    certificate pinned. ``named`` is True when a person or app named this host (a URI, a path,
    ``HOST:PORT``) and False for a daemon found by mDNS: such a candidate only ever receives a
    token over TLS from a server that proved the pinned fingerprint.
    """

    host: str | None = None
    port: int | None = None
    path: str | None = None
    token: str | None = None
    fingerprint: str | None = None
    named: bool = True
    label: str = ""

    @property
    def tls(self) -> bool:
        """True when the connection is TLS (a fingerprint is pinned)."""
        return self.fingerprint is not None

    def describe(self) -> str:
        """The target as a person writes it, never with its token."""
        if self.label:
            return self.label
        if self.path is not None:
            return self.path
        host = f"[{self.host}]" if self.host and ":" in self.host else str(self.host)
        return f"{host}:{self.port}"

    def with_secrets(self, *, token: str | None = None,
                     fingerprint: str | None = None) -> Target:
        """A copy with ``token`` and/or ``fingerprint`` set (None keeps what it has)."""
        return replace(
            self,
            token=self.token if token is None else token,
            fingerprint=self.fingerprint if fingerprint is None else parse_fingerprint(
                fingerprint),
        )

    def uri(self) -> str:
        """The ``hallway://`` URI of a TCP target (with its token and fingerprint)."""
        if self.host is None or self.port is None:
            raise TargetError("a Unix socket has no hallway:// URI")
        host = f"[{self.host}]" if ":" in self.host else self.host
        query = []
        if self.token is not None:
            query.append("token=" + quote(self.token, safe=""))
        if self.fingerprint is not None:
            query.append("fp=sha256:" + self.fingerprint)
        return f"{SCHEME}://{host}:{self.port}" + ("?" + "&".join(query) if query else "")

    def __repr__(self) -> str:  # never show the token
        secret = "***" if self.token is not None else None
        return (f"Target(host={self.host!r}, port={self.port!r}, path={self.path!r}, "
                f"token={secret!r}, fingerprint={self.fingerprint!r}, named={self.named!r})")


SERVICE_TYPE = "_hallway._tcp.local."


@dataclass(frozen=True, slots=True)
class Candidate:
    """A daemon announced by mDNS: its instance name, address, port and TXT properties."""

    name: str
    host: str
    port: int
    properties: dict[str, str] = field(default_factory=dict)

    @property
    def tls(self) -> bool:
        """What the announcement claims (``tls=1``); only a pinned fingerprint proves it."""
        return self.properties.get("tls") == "1"

    @property
    def scanner(self) -> str | None:
        """The scanner id from the TXT record."""
        return self.properties.get("scanner")

    def target(self, *, token: str | None = None, fingerprint: str | None = None) -> Target:
        """A Target for ``hallway.client.connect``.

        With a token, the fingerprint is required: the token goes only to a server whose
        certificate matches it. Without a token (a daemon with ``auth=none``) the target is
        plain TCP unless a fingerprint is given."""
        if token is not None and fingerprint is None:
            raise TokenWithheld(
                f"{self.name} was found by mDNS: a token goes only to a server that proves the "
                "pinned certificate fingerprint given with it")
        return Target(host=self.host, port=self.port, token=token,
                      fingerprint=None if fingerprint is None else parse_fingerprint(fingerprint),
                      named=False, label=self.name)


def parse_uri(text: str) -> Target:
    """``hallway://HOST:PORT?token=SECRET&fp=sha256:HEX`` as a Target (port 7447 if absent)."""
    try:
        parts = urlsplit(text.strip())
        port = parts.port
    except ValueError as exc:
        raise TargetError(f"not a hallway URI: {exc}") from None
    if parts.scheme != SCHEME:
        raise TargetError(f"not a hallway URI: the scheme must be {SCHEME}://")
    if not parts.hostname:
        raise TargetError("hallway URI: no host")
    if parts.path not in ("", "/"):
        raise TargetError("hallway URI: unexpected path after HOST:PORT")
    query = parse_qs(parts.query, keep_blank_values=True)
    for key, values in query.items():
        if len(values) > 1:
            raise TargetError(f"hallway URI: {key} given {len(values)} times")
    token = query.get("token", [None])[0] or None
    fp = query.get("fp", [None])[0]
    return Target(host=parts.hostname, port=DEFAULT_PORT if port is None else port,
                  token=token, fingerprint=None if fp is None else parse_fingerprint(fp))


def parse_host_port(text: str) -> Target:
    """``HOST:PORT`` or ``[v6]:PORT`` as a TCP Target."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not port.isdigit() or not host.strip("[]") or not 0 < int(port) < 65536:
        raise TargetError(f"expected HOST:PORT, got {text!r}")
    return Target(host=host.strip("[]"), port=int(port))


def parse_target(text: str) -> Target:
    """A URI (``hallway://…``), a Unix socket path (anything with a ``/``), or ``HOST:PORT``."""
    value = text.strip()
    if value.startswith(f"{SCHEME}:"):
        return parse_uri(value)
    if "://" in value:
        raise TargetError(f"not a hallway URI: the scheme must be {SCHEME}://")
    if "/" in value:
        return Target(path=value)
    return parse_host_port(value)
