"""``hallway tail``: subscribe to daemons and print their events as they happen.

Daemons are found by mDNS (``_hallway._tcp``), or named with ``--connect HOST:PORT`` or
``--unix PATH``. Every daemon found is followed at once, each line naming its scanner. A dropped
or ``lagged`` connection is resumed with ``since_seq`` (the last ``seq`` seen), so no event is
lost while the daemon still holds it; otherwise the daemon answers ``resync`` and the present
set is printed again. Exit codes: 0 done (``--count`` reached), 1 refused or nothing found,
2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hallway.commands._client import ENV_TOKEN, config_token, split_host_port

SERVICE_TYPE = "_hallway._tcp.local."
LINE_LIMIT = 1 << 22
RETRY_MAX_S = 30.0


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``tail``."""
    parser = sub.add_parser(
        "tail", parents=[common], help="print a daemon's presence events as they happen",
        description="Find hallway daemons by mDNS (or use --connect/--unix), subscribe with a "
        "token and print their events: readable lines, or the raw JSON objects with --json. "
        f"The token comes from --token, --token-file, ${ENV_TOKEN}, or the config.",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--connect", metavar="HOST:PORT", help="a daemon's TCP address")
    where.add_argument("--unix", metavar="PATH", help="a daemon's Unix socket")
    parser.add_argument("--name", help="only the daemon announced under this mDNS name")
    parser.add_argument("--browse", type=float, default=3.0, metavar="SECONDS",
                        help="how long to look for daemons by mDNS (default 3)")
    parser.add_argument("--mdns-interface", action="append", default=[], metavar="IP",
                        help="browse on this local address only (repeatable; default: all)")
    parser.add_argument("--token", help="subscriber token")
    parser.add_argument("--token-file", metavar="FILE", help="file holding the token")
    parser.add_argument("--contact", action="append", metavar="ID",
                        help="only this contact (repeatable)")
    parser.add_argument("--tag", action="append", metavar="TAG",
                        help="only contacts with this tag (repeatable)")
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
    return f"{zone} {distance:.1f} m" if isinstance(distance, int | float) else str(zone)


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
    """One server message as readable text (None for hellos and pings)."""
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
    if kind == "departed":
        return (f"{clock} {source}  departed  {who}  after {_duration(msg.get('dwell_s'))} "
                f"({msg.get('reason')})  {seq}")
    return f"{clock} {source}  {kind}  {who}  {seq}"


# -- targets ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """A daemon to follow: a TCP address or a Unix socket path."""

    label: str
    host: str | None = None
    port: int | None = None
    path: str | None = None

    async def open(self) -> tuple[Any, Any]:
        """Open a stream connection (reader, writer)."""
        import asyncio

        if self.path is not None:
            return await asyncio.open_unix_connection(self.path, limit=LINE_LIMIT)
        return await asyncio.open_connection(self.host, self.port, limit=LINE_LIMIT)


class TailError(Exception):
    """A daemon refused us for good (bad token, bad request); the message says why."""


async def discover(
    *, interfaces: list[str], browse_s: float, name: str | None = None
) -> list[Target]:
    """Daemons announced by mDNS within ``browse_s`` (stops early once ``name`` is seen)."""
    import asyncio

    from zeroconf import IPVersion, ServiceStateChange, Zeroconf
    from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

    found: dict[str, None] = {}
    seen = asyncio.Event()

    def on_change(
        zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        if state_change is not ServiceStateChange.Removed:
            found[name] = None
            if wanted is None or name == wanted:
                seen.set()

    wanted = None if name is None else f"{name}.{SERVICE_TYPE}"
    if interfaces:
        zc = AsyncZeroconf(interfaces=interfaces, ip_version=IPVersion.V4Only)
    else:
        zc = AsyncZeroconf(ip_version=IPVersion.V4Only)
    targets = []
    try:
        browser = AsyncServiceBrowser(zc.zeroconf, SERVICE_TYPE, handlers=[on_change])
        try:
            if wanted is not None:
                try:
                    async with asyncio.timeout(browse_s):
                        await seen.wait()
                except TimeoutError:
                    pass
            else:
                await asyncio.sleep(browse_s)
        finally:
            await browser.async_cancel()
        for full in sorted(found):
            if wanted is not None and full != wanted:
                continue
            info = AsyncServiceInfo(SERVICE_TYPE, full)
            if not await info.async_request(zc.zeroconf, 3000) or info.port is None:
                continue
            addresses = info.parsed_addresses(IPVersion.V4Only) or info.parsed_addresses()
            if addresses:
                label = full[: -len(SERVICE_TYPE) - 1]
                targets.append(Target(label=label, host=addresses[0], port=info.port))
    finally:
        await zc.async_close()
    return targets


def _token(args: argparse.Namespace) -> str | None:
    if args.token:
        return str(args.token)
    if args.token_file:
        try:
            lines = Path(args.token_file).read_text(encoding="utf-8").split()
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise SystemExit(f"hallway tail: cannot read {args.token_file}: {reason}") from None
        return lines[0] if lines else None
    if os.environ.get(ENV_TOKEN):
        return os.environ[ENV_TOKEN]
    from hallway.commands._common import config_from_args
    from hallway.errors import HallwayError

    try:
        config = config_from_args(args, setup_logging=False)
    except (HallwayError, OSError):
        return None
    return config_token(config)


# -- following --------------------------------------------------------------------------------


class _Follower:
    """Follows one daemon: subscribes, prints, resumes after drops with ``since_seq``."""

    def __init__(self, target: Target, args: argparse.Namespace, token: str | None,
                 shared: _Shared) -> None:
        self.target = target
        self.args = args
        self.token = token
        self.shared = shared
        self.since_seq: int | None = args.since

    def _emit(self, msg: dict[str, Any]) -> None:
        if self.args.json:
            if msg.get("type") == "ping" and not self.args.pings:
                return
            print(json.dumps(msg, ensure_ascii=False), flush=True)
            return
        text = format_message(msg, now=time.time(), scanner=self.target.label)
        if text:
            print(text, flush=True)

    async def run(self) -> None:
        import asyncio

        delay = 0.5
        complained = False
        while not self.shared.done.is_set():
            try:
                reader, writer = await asyncio.wait_for(self.target.open(), timeout=10)
            except (OSError, TimeoutError) as exc:
                if not complained:
                    print(f"-- {self.target.label}: cannot connect ({exc}); retrying",
                          file=sys.stderr, flush=True)
                    complained = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            complained = False
            try:
                resumed = await self._session(reader, writer)
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                print(f"-- {self.target.label}: connection lost ({exc})", file=sys.stderr,
                      flush=True)
                resumed = False
            finally:
                writer.close()
            if resumed:
                delay = 0.5
                continue
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)

    async def _session(self, reader: Any, writer: Any) -> bool:
        """One connection; True to reconnect at once (lagged), False to back off first."""
        import asyncio

        hello = json.loads(await asyncio.wait_for(reader.readline(), timeout=15) or b"null")
        if not isinstance(hello, dict) or hello.get("type") != "hello":
            raise TailError(f"{self.target.label} is not a hallway event socket")
        request: dict[str, Any] = {"type": "subscribe"}
        if hello.get("auth") == "token":
            if self.token is None:
                raise TailError(f"{self.target.label} wants a token: pass --token, --token-file "
                                f"or set ${ENV_TOKEN}")
            request["token"] = self.token
        if self.args.contact is not None:
            request["contacts"] = self.args.contact
        if self.args.tag is not None:
            request["tags"] = self.args.tag
        if self.since_seq is not None:
            request["since_seq"] = self.since_seq
        writer.write((json.dumps(request) + "\n").encode())
        await writer.drain()
        while line := await reader.readline():
            msg = json.loads(line)
            if not isinstance(msg, dict):
                continue
            kind = msg.get("type")
            if kind == "error":
                code = msg.get("code")
                if code == "lagged":
                    print(f"-- {self.target.label}: fell behind; resuming after seq "
                          f"{self.since_seq}", file=sys.stderr, flush=True)
                    return True
                if code in ("unauthorized", "bad_request", "too_large"):
                    raise TailError(f"{self.target.label} refused us: {code}: "
                                    f"{msg.get('message')}")
                self._emit(msg)
                return False
            self._track(msg)
            self._emit(msg)
            if "contact" in msg and "seq" in msg:
                self.shared.count_event()
                if self.shared.done.is_set():
                    return False
        print(f"-- {self.target.label}: connection closed; reconnecting", file=sys.stderr,
              flush=True)
        return False

    def _track(self, msg: dict[str, Any]) -> None:
        seq = msg.get("seq")
        if not isinstance(seq, int):
            return
        kind = msg.get("type")
        if kind in ("subscribed", "resync"):
            if self.since_seq is None or kind == "resync":
                self.since_seq = seq
        elif self.since_seq is None or seq > self.since_seq:
            # A ping's seq is safe too: every matching event up to it was sent before it.
            self.since_seq = seq


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


async def _main(args: argparse.Namespace) -> int:
    import asyncio

    if args.count is not None and args.count < 1:
        print("hallway tail: --count must be at least 1", file=sys.stderr)
        return 2
    if args.connect:
        host, port = split_host_port(args.connect, prog="tail")
        targets = [Target(label=args.connect, host=host, port=port)]
    elif args.unix:
        targets = [Target(label=args.unix, path=args.unix)]
    else:
        targets = await discover(interfaces=args.mdns_interface, browse_s=args.browse,
                                 name=args.name)
        if not targets:
            what = f"named {args.name!r}" if args.name else "announced"
            print(f"hallway tail: no hallway daemon {what} by mDNS within {args.browse:g} s "
                  "(try --connect HOST:PORT or --unix PATH)", file=sys.stderr)
            return 1
    token = _token(args)
    shared = _Shared(args.count)
    followers = [_Follower(t, args, token, shared) for t in targets]
    tasks = [asyncio.create_task(f.run(), name=f"tail-{f.target.label}") for f in followers]
    done_waiter = asyncio.create_task(shared.done.wait(), name="tail-count")
    try:
        finished, _ = await asyncio.wait([*tasks, done_waiter],
                                         return_when=asyncio.FIRST_COMPLETED)
        for task in finished:
            error = None if task is done_waiter else task.exception()
            if isinstance(error, TailError):
                print(f"hallway tail: {error}", file=sys.stderr)
                return 1
            if error is not None:
                raise error
        return 0
    finally:
        for task in [*tasks, done_waiter]:
            task.cancel()
        await asyncio.gather(*tasks, done_waiter, return_exceptions=True)


def run(args: argparse.Namespace) -> int:
    """Follow the daemons until interrupted or ``--count`` events were printed."""
    import asyncio

    return asyncio.run(_main(args))
