"""Subscriptions that survive disconnects, and the one-shot ``present``/``status`` requests.

Theory of operation. A subscription remembers one number, ``last_seq``: the ``seq`` of the
last event handed to the caller (at first, the ``seq`` of ``subscribed``: the present set is
as of it). Whenever a connection ends (the daemon restarted, the network dropped, a line was
cut short, the daemon said ``lagged``) the client connects again and subscribes with
``since_seq = last_seq``; the daemon replays what came after it from its durable log. An
event whose ``seq`` is not above ``last_seq`` is never handed out twice. If the daemon no
longer holds every event after ``last_seq`` it says ``resync``: the caller gets a ``Resync``
with the present set, and ``last_seq`` moves to its ``seq``. So from the caller's side every
event arrives once, in strictly increasing ``seq``, and a gap is always announced.

Errors that retrying cannot fix (a wrong token, a scope that forbids the request, a
certificate that is not the pinned one) end the subscription with an exception. Everything
else is retried: at once after ``lagged``, after ``retry_after_s`` for ``rate_limited``, and
otherwise with exponential backoff up to ``retry_max_s``.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from hallway.client._errors import (
    ProtocolError,
    RateLimited,
    Refused,
    TokenRequired,
    TokenWithheld,
    Unreachable,
)
from hallway.client._messages import (
    Message,
    Ping,
    Present,
    Resync,
    Status,
    Subscribed,
    is_event,
    parse_event,
    present_list,
)
from hallway.client._stream import DEFAULT_BUFFER_BYTES, ConnectionCut, Stream
from hallway.client._target import Target

#: Error codes after which retrying the same request cannot succeed.
FATAL_CODES = frozenset({"unauthorized", "forbidden", "bad_request", "too_large"})
RETRY_FIRST_S = 0.5


class State(enum.Enum):
    """What a subscription is doing, for an app to show."""

    CONNECTING = "connecting"
    """Opening its first connection."""
    CONNECTED = "connected"
    """Subscribed and receiving events."""
    RESUMING = "resuming"
    """Reconnecting after a drop, to continue after ``last_seq``."""
    BACKING_OFF = "backing_off"
    """Waiting before the next attempt (``retry_in_s``)."""
    CLOSED = "closed"
    """Closed by the caller or ended by an error."""


@dataclass(frozen=True, slots=True)
class StateChange:
    """A change of ``Subscription.state``: the new state, why, and when the next attempt is."""

    state: State
    reason: str | None = None
    retry_in_s: float | None = None


class _Retry(Exception):
    """This connection is over; try again after ``delay_s`` (None: the usual backoff)."""

    def __init__(self, reason: str, delay_s: float | None = None, *, at_once: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.delay_s = delay_s
        self.at_once = at_once


def _retry_after(message: dict[str, Any]) -> float:
    value = message.get("retry_after_s")
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < 86400:
        return float(value)
    return 1.0


def _error(message: dict[str, Any], where: str) -> Exception:
    """The exception for an ``error`` message: Refused (fatal) or _Retry."""
    code = str(message.get("code"))
    text = str(message.get("message") or "")
    if code in FATAL_CODES:
        return Refused(code, text)
    if code == "rate_limited":
        delay = _retry_after(message)
        return _Retry(f"{where}: rate limited; retrying in {delay:g} s", delay)
    if code == "lagged":
        return _Retry(f"{where}: fell behind (lagged); resuming", at_once=True)
    return _Retry(f"{where}: error {code}: {text}")


async def _greet(stream: Stream, target: Target, timeout_s: float,
                 request: dict[str, Any]) -> dict[str, Any]:
    """Read ``hello``, send ``request`` with the token where the daemon asks for one; the hello.

    A token is only ever sent to a target that was named (not merely discovered) or whose
    certificate matched the pinned fingerprint (the stream checked it before this)."""
    try:
        hello = await stream.read(timeout_s)
    except TimeoutError:
        hint = "" if target.tls or target.path is not None else (
            "; if the daemon serves TLS, give its certificate fingerprint (fp= in the URI)")
        raise _Retry(f"{stream.where}: no hello within {timeout_s:g} s{hint}") from None
    if hello is None:
        raise _Retry(f"{stream.where}: closed before hello")
    if hello.get("type") == "error":
        raise _error(hello, stream.where)
    if hello.get("type") != "hello":
        raise ProtocolError(f"{stream.where} is not a hallway event socket (no hello)")
    if hello.get("auth") != "none":
        if target.token is None:
            raise TokenRequired(f"{stream.where} wants a token")
        if not target.named and not target.tls:
            raise TokenWithheld(f"{stream.where} was found by mDNS and has not proved a pinned "
                                "fingerprint; its token is withheld")
        request = {**request, "token": target.token}
    await stream.send(request)
    return hello


def _check_discovered(target: Target) -> None:
    if target.token is not None and not target.named and not target.tls:
        raise TokenWithheld(
            f"{target.describe()} was found by mDNS: connect with its certificate's pinned "
            "fingerprint (TLS), or name the host yourself")


class Subscription:
    """A resumable subscription: ``async for message in sub`` yields Event, Subscribed,
    Resync (and Ping with ``pings=True``). Make one with ``hallway.client.connect``."""

    def __init__(
        self,
        target: Target,
        *,
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
        buffer_bytes: int = DEFAULT_BUFFER_BYTES,
    ) -> None:
        _check_discovered(target)
        self.target = target
        self._request: dict[str, Any] = {"type": "subscribe"}
        if contacts is not None:
            self._request["contacts"] = list(contacts)
        if tags is not None:
            self._request["tags"] = list(tags)
        if knows_of is not None:
            self._request["knows_of"] = knows_of
        self._last_seq = since_seq
        self._pings = pings
        self._on_state = on_state
        self._retry_max_s = retry_max_s
        self._timeout_s = timeout_s
        self._idle_timeout_s = idle_timeout_s
        self._give_up_after_s = give_up_after_s
        self._buffer_bytes = buffer_bytes
        self._stream: Stream | None = None
        self._pending: collections.deque[Message] = collections.deque()
        self._delay = RETRY_FIRST_S
        self._subscribed = False
        self._closed = False
        self._failing_since: float | None = None
        self._state = State.CONNECTING
        self.hello: dict[str, Any] | None = None
        """The last ``hello`` the daemon sent (server version, scanner, auth)."""
        self.reconnects = 0
        """How many times the subscription connected again after its first connection."""

    # -- what an app can look at -----------------------------------------------------------

    @property
    def state(self) -> State:
        """What the subscription is doing now."""
        return self._state

    @property
    def last_seq(self) -> int | None:
        """The ``seq`` the subscription would resume after (None before the first subscribe)."""
        return self._last_seq

    def _set_state(self, state: State, reason: str | None = None,
                   retry_in_s: float | None = None) -> None:
        self._state = state
        if self._on_state is not None:
            self._on_state(StateChange(state, reason, retry_in_s))

    # -- lifecycle --------------------------------------------------------------------------

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection; iteration ends."""
        if self._closed:
            return
        self._closed = True
        await self._drop()
        self._set_state(State.CLOSED)

    async def _drop(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            await stream.close()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Message:
        while True:
            if self._pending:
                return self._pending.popleft()
            if self._closed:
                raise StopAsyncIteration
            try:
                if self._stream is None:
                    await self._establish()
                    continue
                message = await self._next_message(self._stream)
            except _Retry as retry:
                await self._drop()
                await self._wait(retry)
                continue
            except BaseException:
                await self.close()
                raise
            if message is not None:
                return message

    # -- the work ---------------------------------------------------------------------------

    async def _next_message(self, stream: Stream) -> Message | None:
        try:
            data = await stream.read(self._idle_timeout_s)
        except TimeoutError:
            raise _Retry(f"{stream.where}: silent for {self._idle_timeout_s} s") from None
        except (OSError, ConnectionCut) as exc:
            raise _Retry(f"{stream.where}: connection lost ({exc})") from None
        if data is None:
            raise _Retry(f"{stream.where}: the daemon closed the connection")
        return self._handle(data, stream.where)

    def _handle(self, data: dict[str, Any], where: str) -> Message | None:
        kind = data.get("type")
        if is_event(data):
            event = parse_event(data)
            if self._last_seq is not None and event.seq <= self._last_seq:
                return None  # seen already (a replay overlapping what arrived before a drop)
            self._last_seq = event.seq
            return event
        if kind == "error":
            raise _error(data, where)
        if kind == "resync":
            seq = data.get("seq")
            if not isinstance(seq, int):
                raise ProtocolError(f"{where}: resync without seq")
            since = data.get("since_seq")
            self._last_seq = seq
            return Resync(seq=seq, since_seq=since if isinstance(since, int) else None,
                          present=present_list(data.get("present")), raw=data)
        if kind == "ping" and self._pings:
            seq = data.get("seq")
            ts = data.get("ts")
            return Ping(seq=seq if isinstance(seq, int) else None,
                        ts=float(ts) if isinstance(ts, int | float) else None, raw=data)
        return None  # other control messages, and types this version does not know

    async def _establish(self) -> None:
        """One attempt to connect and subscribe (raises _Retry or a fatal error)."""
        resuming = self._subscribed
        self._set_state(State.RESUMING if resuming else State.CONNECTING)
        try:
            stream = await Stream.open(self.target, timeout_s=self._timeout_s,
                                       buffer_bytes=self._buffer_bytes)
        except (OSError, TimeoutError) as exc:
            reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
            raise _Retry(f"{self.target.describe()}: cannot connect ({reason})") from None
        try:
            request = dict(self._request)
            if self._last_seq is not None:
                request["since_seq"] = self._last_seq
            self.hello = await _greet(stream, self.target, self._timeout_s, request)
            while True:
                reply = await stream.read(self._timeout_s)
                if reply is None:
                    raise _Retry(f"{stream.where}: closed before subscribed")
                kind = reply.get("type")
                if kind == "error":
                    raise _error(reply, stream.where)
                if kind == "subscribed":
                    break
        except (OSError, ConnectionCut, TimeoutError) as exc:
            await stream.close()
            raise _Retry(f"{stream.where}: connection lost while subscribing ({exc})") from None
        except BaseException:
            await stream.close()
            raise
        seq = reply.get("seq")
        if not isinstance(seq, int):
            await stream.close()
            raise ProtocolError(f"{stream.where}: subscribed without seq")
        self._stream = stream
        self._delay = RETRY_FIRST_S
        self._failing_since = None
        if resuming:
            self.reconnects += 1
        else:
            self._subscribed = True
            if self._last_seq is None:
                self._last_seq = seq
            scanner = reply.get("scanner", self.hello.get("scanner"))
            self._pending.append(Subscribed(
                seq=seq, present=present_list(reply.get("present", [])),
                scanner=scanner if isinstance(scanner, str) else None, raw=reply))
        self._set_state(State.CONNECTED)

    async def _wait(self, retry: _Retry) -> None:
        if retry.at_once:
            self._set_state(State.RESUMING, retry.reason)
            return
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
        if (self._give_up_after_s is not None
                and now - self._failing_since >= self._give_up_after_s):
            self._set_state(State.CLOSED, retry.reason)
            self._closed = True
            raise Unreachable(retry.reason)
        delay = self._delay * random.uniform(0.8, 1.2)
        if retry.delay_s is not None:
            delay = max(delay, retry.delay_s)
        self._delay = min(self._delay * 2, self._retry_max_s)
        self._set_state(State.BACKING_OFF, retry.reason, round(delay, 3))
        await asyncio.sleep(delay)


# -- one-shot requests ------------------------------------------------------------------------


async def request_once(target: Target, request: dict[str, Any], *, answer: str,
                       timeout_s: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """Send one request and return (hello, the reply of type ``answer``).

    ``rate_limited`` is waited out while ``timeout_s`` allows (then RateLimited); a fatal
    error raises Refused; no answer in time raises Unreachable."""
    _check_discovered(target)
    deadline = time.monotonic() + timeout_s
    limited: _Retry | None = None
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            if limited is not None:
                raise RateLimited(limited.reason, limited.delay_s or 0.0)
            raise Unreachable(f"{target.describe()}: no answer within {timeout_s:g} s")
        try:
            stream = await Stream.open(target, timeout_s=left)
        except TimeoutError:
            raise Unreachable(f"{target.describe()}: no answer within {timeout_s:g} s") from None
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise Unreachable(f"{target.describe()}: cannot connect ({reason})") from exc
        try:
            hello = await _greet(stream, target, left, request)
            while True:
                reply = await stream.read(max(deadline - time.monotonic(), 0.001))
                if reply is None:
                    raise ProtocolError(f"{stream.where}: closed without an answer")
                if reply.get("type") == "error":
                    raise _error(reply, stream.where)
                if reply.get("type") == answer:
                    return hello, reply
        except _Retry as retry:
            if retry.delay_s is None:
                raise Unreachable(retry.reason) from None
            limited = retry
            await stream.close()
            await asyncio.sleep(min(retry.delay_s, max(deadline - time.monotonic(), 0.0)))
        except TimeoutError:
            raise Unreachable(f"{target.describe()}: no answer within {timeout_s:g} s") from None
        except ConnectionCut as exc:
            raise Unreachable(str(exc)) from None
        except OSError as exc:
            raise Unreachable(f"{stream.where}: connection lost ({exc})") from exc
        finally:
            await stream.close()


async def fetch_present(target: Target, *, contacts: Sequence[str] | None = None,
                        tags: Sequence[str] | None = None, knows_of: str | None = None,
                        timeout_s: float = 10.0) -> tuple[Present, ...]:
    """The daemon's live estimate of every present contact (filters as for a subscription)."""
    request: dict[str, Any] = {"type": "present"}
    if contacts is not None:
        request["contacts"] = list(contacts)
    if tags is not None:
        request["tags"] = list(tags)
    if knows_of is not None:
        request["knows_of"] = knows_of
    _, reply = await request_once(target, request, answer="present", timeout_s=timeout_s)
    return present_list(reply.get("present"))


async def fetch_status(target: Target, *, timeout_s: float = 10.0) -> Status:
    """The daemon's operational figures (no contact data)."""
    hello, reply = await request_once(target, {"type": "status"}, answer="status",
                                      timeout_s=timeout_s)
    return Status.from_json(reply, hello)
