"""``hallway.client``: subscribe to a hallway daemon's presence events from an asyncio app.

::

    import hallway.client

    async with hallway.client.connect("hallway://10.0.0.5:7447?token=…&fp=sha256:…") as sub:
        async for message in sub:
            match message:
                case hallway.client.Subscribed(present=present): ...  # who is here now
                case hallway.client.Arrived(contact=contact): ...
                case hallway.client.Departed(contact=contact, reason=reason): ...
                case hallway.client.Resync(present=present): ...      # events were missed

A subscription reconnects by itself (daemon restarts, dropped networks, ``lagged``) and resumes
after the last event it handed out, so every event arrives once and in increasing ``seq``;
when the daemon no longer holds what was missed, a ``Resync`` says so with who is present.
``Subscription.state`` (and ``on_state``) tells an app whether it is connected, resuming or
backing off. ``present()`` and ``status()`` are one-shot requests. ``discover()`` lists daemons
announced by mDNS; a discovered daemon receives a token only after proving the certificate
fingerprint that came with the token.

Targets: ``hallway://HOST:PORT?token=SECRET&fp=sha256:HEX`` (TLS with that certificate
pinned; without ``fp`` plain TCP), a Unix socket path, ``HOST:PORT``, or a ``Target``.

Compatibility: this module speaks protocol 1 (``protovers=1``). Within it, the daemon may add
keys and message types, and the client ignores what it does not know (an unknown event type
arrives as a plain ``Event``, every object keeps its JSON in ``raw``). Names exported here keep
their meaning across hallway releases that speak protocol 1; a daemon announcing another
protocol version is not assumed to be compatible.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from hallway.client._errors import (
    ClientError,
    FingerprintMismatch,
    ProtocolError,
    RateLimited,
    Refused,
    TokenRequired,
    TokenWithheld,
    Unreachable,
)
from hallway.client._messages import (
    Arrived,
    Contact,
    Departed,
    Event,
    Message,
    Moved,
    Ping,
    Present,
    Resync,
    Status,
    Subscribed,
    ZoneChanged,
)
from hallway.client._target import (
    DEFAULT_PORT,
    SERVICE_TYPE,
    Candidate,
    Target,
    TargetError,
    parse_fingerprint,
    parse_target,
    parse_uri,
)

if TYPE_CHECKING:
    from hallway.client._discover import discover
    from hallway.client._session import State, StateChange, Subscription
    from hallway.client._stream import certificate_fingerprint

# What needs asyncio or ssl is imported on first use, so that importing the module (as the
# command line does for --help) stays cheap.
_LAZY = {"discover": "_discover", "State": "_session", "StateChange": "_session",
         "Subscription": "_session", "certificate_fingerprint": "_stream"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'hallway.client' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"hallway.client.{module}"), name)
    globals()[name] = value
    return value


PROTOCOL_VERSION = 1
"""The protocol version this client speaks (the daemon's ``hello`` ``protocol``, TXT
``protovers``)."""

__all__ = [
    "DEFAULT_PORT",
    "PROTOCOL_VERSION",
    "SERVICE_TYPE",
    "Arrived",
    "Candidate",
    "ClientError",
    "Contact",
    "Departed",
    "Event",
    "FingerprintMismatch",
    "Message",
    "Moved",
    "Ping",
    "Present",
    "ProtocolError",
    "RateLimited",
    "Refused",
    "Resync",
    "State",
    "StateChange",
    "Status",
    "Subscribed",
    "Subscription",
    "Target",
    "TargetError",
    "TokenRequired",
    "TokenWithheld",
    "Unreachable",
    "ZoneChanged",
    "certificate_fingerprint",
    "connect",
    "discover",
    "parse_fingerprint",
    "parse_target",
    "parse_uri",
    "present",
    "resolve_target",
    "status",
]


def resolve_target(where: str | Target | Candidate, *, token: str | None = None,
                   fingerprint: str | None = None) -> Target:
    """A Target from a URI/path/``HOST:PORT`` string, a Target, or a discovered Candidate, with
    ``token``/``fingerprint`` overriding what it carries. TokenWithheld for a Candidate given a
    token without a fingerprint."""
    if isinstance(where, Candidate):
        return where.target(token=token, fingerprint=fingerprint)
    target = parse_target(where) if isinstance(where, str) else where
    return target.with_secrets(token=token, fingerprint=fingerprint)


def connect(
    where: str | Target | Candidate,
    *,
    token: str | None = None,
    fingerprint: str | None = None,
    contacts: Sequence[str] | None = None,
    tags: Sequence[str] | None = None,
    knows_of: str | None = None,
    since_seq: int | None = None,
    pings: bool = False,
    on_state: Callable[[StateChange], None] | None = None,
    retry_max_s: float = 30.0,
    timeout_s: float = 15.0,
    idle_timeout_s: float | None = None,
    give_up_after_s: float | None = None,
    buffer_bytes: int = 4 << 20,
) -> Subscription:
    """A resumable subscription to the daemon at ``where`` (use with ``async with``).

    ``contacts``/``tags`` filter (AND; an empty list matches nothing), ``knows_of`` asks for
    the people a contact knows, ``since_seq`` first replays the events after it.

    Iterating yields ``Subscribed`` once, then Event objects and any ``Resync``; with
    ``pings=True`` also ``Ping``. (With ``since_seq``, the present set of ``Subscribed`` is as
    of its own, later ``seq``; the replayed events come after it in the iteration.)

    It retries forever unless ``give_up_after_s`` is set (then Unreachable once attempts have
    failed that long). A vanished host is noticed by TCP keepalive within about a minute;
    ``idle_timeout_s`` (set it above the daemon's ping interval, 15 s by default) also counts
    that much silence as a lost connection. ``buffer_bytes`` bounds what is read ahead of the
    caller: a caller slower than the daemon is cut off (``lagged``) and resumed without loss.

    Raises Refused, FingerprintMismatch, TokenRequired, TokenWithheld or ProtocolError from
    iteration when retrying cannot help."""
    from hallway.client._session import Subscription  # noqa: PLC0415 - lazy (asyncio)

    return Subscription(
        resolve_target(where, token=token, fingerprint=fingerprint), contacts=contacts,
        tags=tags, knows_of=knows_of, since_seq=since_seq, pings=pings, on_state=on_state,
        retry_max_s=retry_max_s, timeout_s=timeout_s, idle_timeout_s=idle_timeout_s,
        give_up_after_s=give_up_after_s, buffer_bytes=buffer_bytes)


async def present(
    where: str | Target | Candidate,
    *,
    token: str | None = None,
    fingerprint: str | None = None,
    contacts: Sequence[str] | None = None,
    tags: Sequence[str] | None = None,
    knows_of: str | None = None,
    timeout_s: float = 10.0,
) -> tuple[Present, ...]:
    """The daemon's live estimate of who is present (filters as for ``connect``).

    Unreachable if nothing answers within ``timeout_s``; ``rate_limited`` is waited out
    within it (then RateLimited)."""
    from hallway.client._session import fetch_present  # noqa: PLC0415 - lazy (asyncio)

    return await fetch_present(resolve_target(where, token=token, fingerprint=fingerprint),
                               contacts=contacts, tags=tags, knows_of=knows_of,
                               timeout_s=timeout_s)


async def status(
    where: str | Target | Candidate,
    *,
    token: str | None = None,
    fingerprint: str | None = None,
    timeout_s: float = 10.0,
) -> Status:
    """The daemon's operational figures (uptime, rates, subscribers; no contact data)."""
    from hallway.client._session import fetch_status  # noqa: PLC0415 - lazy (asyncio)

    return await fetch_status(resolve_target(where, token=token, fingerprint=fingerprint),
                              timeout_s=timeout_s)
