"""``hallway tail``: subscribe to daemons and print their events as they happen.

Built on ``hallway.client``. The daemon is named (``--uri``, ``--uri-file``, ``$HALLWAY_URI``,
``--connect HOST:PORT``, ``--unix PATH``) or found by mDNS (``_hallway._tcp``), where every
daemon found is followed at once, each line naming its scanner. A daemon found by mDNS is only
a candidate: it gets the token only over TLS after proving ``--fingerprint``; without one, tail
follows only daemons that ask for no token. Drops, restarts and ``lagged`` are resumed after
the last ``seq`` printed (nothing lost, nothing twice); when the daemon no longer holds what
was missed it says ``resync`` and the present set is printed again; ``rate_limited`` is waited
out. Everything printed is stripped of control characters. Exit codes: 0 done (``--count``
reached), 1 refused or nothing found, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import hallway.client as hc
from hallway.commands._client import (
    ENV_TOKEN,
    ENV_URI,
    add_target_options,
    clean,
    given_token,
    is_local,
    named_target,
    resolve,
)

RETRY_MAX_S = 30.0


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``tail``."""
    parser = sub.add_parser(
        "tail", parents=[common], help="print a daemon's presence events as they happen",
        description="Subscribe to a hallway daemon named by --uri/--uri-file/$HALLWAY_URI, "
        "--connect or --unix (or to those found by mDNS) and print its events: readable lines, "
        "or the raw JSON objects with --json. The token comes from --token-file, "
        f"${ENV_TOKEN}, the URI, or (for the local daemon only) the config. A daemon found by "
        "mDNS receives the token only after proving --fingerprint over TLS. With no daemon "
        "named, tail follows the daemon of the config (--config, $HALLWAY_CONFIG or "
        "/etc/hallway/config.toml) where there is one, else those found by mDNS.",
    )
    add_target_options(parser)
    parser.add_argument("--mdns", action="store_true",
                        help="look for daemons by mDNS even where a config names the local one")
    parser.add_argument("--name", action="append", default=[],
                        help="only the daemon announced under this mDNS name (repeatable)")
    parser.add_argument("--browse", type=float, default=3.0, metavar="SECONDS",
                        help="how long to look for daemons by mDNS (default 3)")
    parser.add_argument("--mdns-interface", action="append", default=[], metavar="IP",
                        help="browse on this local address only (repeatable; default: all)")
    parser.add_argument("--contact", action="append", metavar="ID",
                        help="only this contact (repeatable)")
    parser.add_argument("--tag", action="append", metavar="TAG",
                        help="only contacts with this tag (repeatable)")
    parser.add_argument("--knows-of", metavar="ID",
                        help="only the people this contact knows (where the token allows)")
    parser.add_argument("--since", type=int, metavar="SEQ",
                        help="first replay the events after this seq")
    parser.add_argument("--json", action="store_true", help="print the JSON objects, one a line")
    parser.add_argument("--pings", action="store_true", help="with --json, print pings too")
    parser.add_argument("--count", type=int, metavar="N", help="exit after N events")
    parser.set_defaults(func=run)


# -- formatting -------------------------------------------------------------------------------


def _clock(ts: Any) -> str:
    if not isinstance(ts, int | float):
        return "--:--:--"
    try:
        return time.strftime("%H:%M:%S", time.localtime(ts))
    except (OverflowError, OSError, ValueError):  # a hostile or broken server's ts
        return "--:--:--"


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, int | float) or not -1e12 < seconds < 1e12:
        return "?"
    total = int(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _who(contact: Any) -> str:
    if not isinstance(contact, dict):
        return "?"
    text = str(contact.get("name") or contact.get("id") or "?")
    if contact.get("org"):
        text += f" ({contact['org']})"
    tags = contact.get("tags")
    if isinstance(tags, list) and tags:
        text += " [" + ", ".join(str(t) for t in tags) + "]"
    return text


def _where(msg: dict[str, Any]) -> str:
    zone = msg.get("zone") or "?"
    distance = msg.get("distance_m")
    text = f"{zone} {distance:.1f} m" if isinstance(distance, int | float) else str(zone)
    room = msg.get("room")
    return f"in {room}, {text}" if room else text


def _present_lines(present: Any, *, now: float) -> list[str]:
    lines = []
    for entry in present if isinstance(present, list) else []:
        if not isinstance(entry, dict):
            continue
        since = entry.get("since")
        ago = _duration(now - since) if isinstance(since, int | float) else "?"
        lines.append(f"           present   {_who(entry.get('contact'))}  {_where(entry)}  "
                     f"for {ago}")
    return lines


def format_message(msg: dict[str, Any], *, now: float, scanner: str | None = None) -> str | None:
    """One server message as readable text (None for hellos and pings), without control
    characters."""
    text = _format(msg, now=now, scanner=scanner)
    return None if text is None else clean(text)


def _format(msg: dict[str, Any], *, now: float, scanner: str | None) -> str | None:
    kind = msg.get("type")
    source = str(msg.get("scanner") or scanner or "")
    notice = f"-- {source}: " if source else "-- "
    if kind in ("hello", "ping"):
        return None
    if kind in ("subscribed", "resync"):
        present = msg.get("present")
        present = present if isinstance(present, list) else []
        head = (f"{notice}subscribed at seq {msg.get('seq')}" if kind == "subscribed"
                else f"{notice}resync at seq {msg.get('seq')} (older events are gone)")
        return "\n".join([f"{head}; {len(present)} present", *_present_lines(present, now=now)])
    if kind == "error":
        return f"{notice}error {msg.get('code')}: {msg.get('message')}"
    if kind == "status":
        body = {k: v for k, v in msg.items() if k != "type"}
        return f"{notice}status {json.dumps(body, sort_keys=True)}"
    clock = _clock(msg.get("ts"))
    who = _who(msg.get("contact"))
    seq = f"#{msg.get('seq')}"
    if kind == "arrived":
        return f"{clock} {source}  arrived   {who}  {_where(msg)}  via {msg.get('via')}  {seq}"
    if kind == "zone":
        return (f"{clock} {source}  zone      {who}  {msg.get('previous_zone')} -> "
                f"{_where(msg)}  {seq}")
    if kind == "moved":
        return (f"{clock} {source}  moved     {who}  {msg.get('previous_room') or '?'} -> "
                f"{_where(msg)}  {seq}")
    if kind == "departed":
        left = f"left {msg['room']} " if msg.get("room") else ""
        return (f"{clock} {source}  departed  {who}  {left}after "
                f"{_duration(msg.get('dwell_s'))} ({msg.get('reason')})  {seq}")
    return f"{clock} {source}  {kind}  {who}  {seq}"


# -- following --------------------------------------------------------------------------------


class TailError(Exception):
    """A daemon refused us for good (bad token, wrong certificate); the message says why."""


class _Shared:
    def __init__(self, count: int | None) -> None:
        import asyncio

        self.remaining = count
        self.done = asyncio.Event()

    def count_event(self) -> None:
        if self.remaining is None:
            return
        self.remaining -= 1
        if self.remaining <= 0:
            self.done.set()


def _note(label: str, text: str) -> None:
    print(clean(f"-- {label}: {text}"), file=sys.stderr, flush=True)


def _forbidden(path: str) -> bool:
    """A socket that exists but that we may not connect to."""
    import os

    return os.path.exists(path) and not os.access(path, os.R_OK | os.W_OK)


class _Follower:
    """Follows one daemon through ``hallway.client``, printing what it yields."""

    def __init__(self, target: hc.Target, args: argparse.Namespace, shared: _Shared) -> None:
        self.target = target
        self.args = args
        self.shared = shared
        self.label = target.describe()
        self._last_state: hc.State | None = None

    def _emit(self, msg: dict[str, Any]) -> None:
        if self.args.json:
            print(clean(json.dumps(msg, ensure_ascii=False)), flush=True)
            return
        text = format_message(msg, now=time.time(), scanner=self.label)
        if text:
            print(text, flush=True)

    def _on_state(self, change: hc.StateChange) -> None:
        state = change.state
        if state is hc.State.BACKING_OFF:
            if self._last_state is not hc.State.BACKING_OFF or "rate limited" in (
                    change.reason or ""):
                _note(self.label, f"{change.reason}; retrying in {change.retry_in_s:g} s")
        elif state is hc.State.RESUMING and change.reason:
            _note(self.label, change.reason)
        elif state is hc.State.CONNECTED and self._last_state is not None and self._last_state \
                not in (hc.State.CONNECTING,):
            _note(self.label, "resumed")
        self._last_state = state

    async def run(self) -> None:
        import asyncio

        path = self.target.path
        if path is not None and await asyncio.to_thread(_forbidden, path):
            from hallway.config import GROUP_HINT

            # Retrying cannot fix a socket we may not use.
            raise TailError(f"{path}: permission denied. {GROUP_HINT}")
        try:
            async with hc.connect(self.target, contacts=self.args.contact, tags=self.args.tag,
                                  knows_of=self.args.knows_of, since_seq=self.args.since,
                                  pings=self.args.json and self.args.pings,
                                  on_state=self._on_state, retry_max_s=RETRY_MAX_S) as sub:
                async for message in sub:
                    self._emit(dict(message.raw))
                    if isinstance(message, hc.Event):
                        self.shared.count_event()
                        if self.shared.done.is_set():
                            return
        except hc.TokenRequired:
            if self.target.named:
                hint = ""
                if is_local(self.target):
                    from hallway.config import GROUP_HINT

                    hint = (". For the local service tail reads the config's token itself "
                            "(server.tokens or server.token_file, else the state directory's "
                            "token, /var/lib/hallway/token when installed), once the service "
                            f"has made it. {GROUP_HINT}")
                raise TailError(f"{self.label} wants a token: pass --token-file, set "
                                f"${ENV_TOKEN}, or use a URI (--uri-file, ${ENV_URI})"
                                f"{hint}") from None
            raise TailError(
                f"{self.label} (found by mDNS) wants a token; hallway gives a token only to a "
                "host you name (--connect, --uri-file) or to a daemon proving its certificate "
                "fingerprint (--fingerprint)") from None
        except hc.Refused as exc:
            raise TailError(f"{self.label} refused us: {exc}") from None
        except (hc.FingerprintMismatch, hc.ProtocolError) as exc:
            raise TailError(str(exc)) from None


def _configured_target(args: argparse.Namespace) -> hc.Target | None:
    """The daemon of the config file in use (``--config``, ``$HALLWAY_CONFIG`` or the
    installed one), with the config's token, or None without a config file or sockets."""
    from hallway.config import find_config_path

    if find_config_path(args.config) is None:
        return None
    target, _ = resolve(args, prog="tail")
    return target


def _discovered_targets(candidates: list[hc.Candidate], args: argparse.Namespace,
                        token: str | None) -> list[hc.Target]:
    """What tail may follow among the daemons found by mDNS, saying why it skips the others.

    With --fingerprint: those announcing TLS, each of which must prove the certificate before
    it gets the token. Without: those announcing plain TCP, followed without a token (a daemon
    that asks for one is told no)."""
    fingerprint = args.fingerprint
    targets = []
    for candidate in candidates:
        label = clean(candidate.name)
        if fingerprint is None and candidate.tls:
            print(f"hallway tail: {label} serves TLS: pass --fingerprint sha256:... (from "
                  "`hallway tls show` on its host) with the token", file=sys.stderr)
        elif fingerprint is not None and not candidate.tls:
            print(f"hallway tail: {label} does not serve TLS, so it cannot prove "
                  "--fingerprint; name it (--connect) if you trust it", file=sys.stderr)
        elif fingerprint is None:
            # No token goes to a daemon that cannot prove who it is; one asking for none is fine.
            targets.append(candidate.target())
        else:
            targets.append(candidate.target(token=token, fingerprint=fingerprint))
    return targets


async def _main(args: argparse.Namespace) -> int:
    import asyncio

    if args.count is not None and args.count < 1:
        print("hallway tail: --count must be at least 1", file=sys.stderr)
        return 2
    named = named_target(args, prog="tail")
    local = None
    if named is None and not (args.mdns or args.name or args.mdns_interface):
        local = _configured_target(args)
    if local is not None:
        targets = [local]
    elif named is not None:
        target, _ = resolve(args, prog="tail")
        assert target is not None
        targets = [target]
    else:
        try:
            fingerprint = None if args.fingerprint is None else hc.parse_fingerprint(
                args.fingerprint)
        except hc.TargetError as exc:
            print(f"hallway tail: {exc}", file=sys.stderr)
            return 2
        token = given_token(args, prog="tail")
        candidates = await hc.discover(interfaces=args.mdns_interface, browse_s=args.browse,
                                       names=args.name)
        if not candidates:
            what = ("named " + " or ".join(map(repr, args.name))) if args.name else "announced"
            print(f"hallway tail: no hallway daemon {what} by mDNS within {args.browse:g} s "
                  "(try --connect HOST:PORT, --unix PATH or --uri-file FILE)", file=sys.stderr)
            return 1
        args.fingerprint = fingerprint
        targets = _discovered_targets(candidates, args, token)
        if not targets:
            return 1
    shared = _Shared(args.count)
    followers = [_Follower(t, args, shared) for t in targets]
    tasks = [asyncio.create_task(f.run(), name=f"tail-{f.label}") for f in followers]
    done_waiter = asyncio.create_task(shared.done.wait(), name="tail-count")
    pending: set[asyncio.Task[Any]] = {*tasks, done_waiter}
    failures = []
    try:
        while pending:
            finished, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if done_waiter in finished:
                return 0
            for task in finished:
                error = task.exception()
                if isinstance(error, TailError):
                    failures.append(error)
                    print(clean(f"hallway tail: {error}"), file=sys.stderr)
                elif error is not None:
                    raise error
            if not pending - {done_waiter}:
                return 1 if failures else 0
        return 0
    finally:
        for task in [*tasks, done_waiter]:
            task.cancel()
        await asyncio.gather(*tasks, done_waiter, return_exceptions=True)


def run(args: argparse.Namespace) -> int:
    """Follow the daemons until interrupted or ``--count`` events were printed."""
    import asyncio

    return asyncio.run(_main(args))
