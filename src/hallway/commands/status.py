"""``hallway status``: ask a running daemon for its figures over its Unix or TCP socket.

After the server's hello it sends ``{"type": "status", "token": ...}`` and prints the
``{"type": "status", ...}`` reply. Exit codes: 0 answered, 1 refused (bad token, error reply),
69 (EX_UNAVAILABLE) nothing answered.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

EX_UNAVAILABLE = 69
ENV_TOKEN = "HALLWAY_TOKEN"  # noqa: S105 - the name of a variable, not a secret

# The figures in the order a person reads them: key -> label.
_LABELS = (
    ("uptime_s", "uptime"),
    ("source_state", "source"),
    ("advertisements_per_s", "advertisements/s"),
    ("matched_per_s", "matched/s"),
    ("advertisements", "advertisements"),
    ("matched", "matched"),
    ("malformed", "malformed"),
    ("dropped", "dropped"),
    ("present", "present"),
    ("subscribers", "subscribers"),
    ("connections", "connections"),
    ("last_seq", "last seq"),
    ("loop_lag_ms", "loop lag (ms)"),
    ("last_error", "last error"),
)
_HEADER_KEYS = {"type", "version", "scanner", "source"}


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``status``."""
    parser = sub.add_parser(
        "status", parents=[common],
        help="show a running daemon's figures (uptime, rates, drops, present, subscribers)",
        description="Ask a running hallway for its figures. Without --unix/--connect it uses "
        "the config's Unix socket (or its TCP address); without --token, $HALLWAY_TOKEN or "
        "the config's token (or the generated one in the state directory).",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--unix", metavar="PATH", help="the daemon's Unix socket")
    where.add_argument("--connect", metavar="HOST:PORT", help="the daemon's TCP address")
    parser.add_argument("--token", help=f"subscriber token (default: ${ENV_TOKEN} or config)")
    parser.add_argument("--json", action="store_true", help="print the reply as JSON")
    parser.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS",
                        help="give up after this long (default 5)")
    parser.set_defaults(func=run)


def _split_host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise SystemExit(f"hallway status: --connect wants HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def _config_token(config: Any) -> str | None:
    from hallway.errors import ConfigError
    from hallway.server import load_tokens

    state = os.environ.get("STATE_DIRECTORY")
    state_dir = (Path(state.split(":")[0]) if state
                 else Path(config.storage.database).resolve().parent)
    try:
        tokens = load_tokens(config.server, state_dir=state_dir, create=False)
    except ConfigError:
        return None
    return tokens[0] if tokens else None


def run(args: argparse.Namespace) -> int:
    """Print the daemon's status; see the module docstring for exit codes."""
    import asyncio

    from hallway.config import find_config_path, load_config

    config = None
    if not (args.unix or args.connect) or not (args.token or os.environ.get(ENV_TOKEN)):
        config = load_config(find_config_path(args.config))
    if args.unix:
        target: tuple[str, Any] = ("unix", args.unix)
    elif args.connect:
        target = ("tcp", _split_host_port(args.connect))
    else:
        assert config is not None
        server = config.server
        if server.unix_socket and Path(server.unix_socket).exists():
            target = ("unix", server.unix_socket)
        elif server.tcp_enabled:
            host = "127.0.0.1" if server.tcp_host in ("0.0.0.0", "") else server.tcp_host
            host = "::1" if host == "::" else host
            target = ("tcp", (host, server.tcp_port))
        elif server.unix_socket:
            target = ("unix", server.unix_socket)
        else:
            print("hallway status: the config enables neither socket", file=sys.stderr)
            return EX_UNAVAILABLE
    token = args.token or os.environ.get(ENV_TOKEN)
    if token is None and config is not None:
        token = _config_token(config)
    where = target[1] if target[0] == "unix" else "{}:{}".format(*target[1])
    try:
        hello, reply = asyncio.run(_ask(target, token, args.timeout))
    except (OSError, TimeoutError) as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        print(f"hallway status: cannot reach hallway at {where}: {reason}", file=sys.stderr)
        if isinstance(exc, PermissionError):
            print("  (the socket is for the service's group: run as a member of it, or root)",
                  file=sys.stderr)
        return EX_UNAVAILABLE
    except ValueError as exc:
        print(f"hallway status: {where}: {exc}", file=sys.stderr)
        return 1
    if reply.get("type") == "error":
        print(f"hallway status: {where} refused: {reply.get('code')}: {reply.get('message')}",
              file=sys.stderr)
        if reply.get("code") == "unauthorized":
            print(f"  pass --token (or ${ENV_TOKEN}); the generated token is in the state "
                  "directory, /var/lib/hallway/token, readable by the service's group",
                  file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(reply, indent=2))
        return 0
    _print_human(hello, reply, where)
    return 0


async def _ask(target: tuple[str, Any], token: str | None, timeout_s: float
               ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Connect, read hello, send the status request, return (hello, reply)."""
    import asyncio
    import contextlib

    async with asyncio.timeout(timeout_s):
        if target[0] == "unix":
            reader, writer = await asyncio.open_unix_connection(target[1])
        else:
            reader, writer = await asyncio.open_connection(*target[1])
        try:
            hello = _read_json(await reader.readline())
            if hello.get("type") != "hello":
                raise ValueError("this is not a hallway socket (no hello)")
            request: dict[str, Any] = {"type": "status"}
            if token is not None:
                request["token"] = token
            writer.write(json.dumps(request).encode() + b"\n")
            await writer.drain()
            while True:
                reply = _read_json(await reader.readline())
                if reply.get("type") in ("status", "error"):
                    return hello, reply
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


def _read_json(line: bytes) -> dict[str, Any]:
    if not line:
        raise ValueError("the connection closed without an answer")
    try:
        value = json.loads(line)
    except ValueError:
        raise ValueError("the answer is not JSON") from None
    if not isinstance(value, dict):
        raise ValueError("the answer is not a JSON object")
    return value


def _duration(seconds: float) -> str:
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{hours}h {minutes:02d}m {secs:02d}s" if hours or days else f"{minutes}m {secs:02d}s"
    return f"{days}d {text}" if days else text


def _print_human(hello: dict[str, Any], reply: dict[str, Any], where: str) -> None:
    server = (reply.get("version") and f"hallway/{reply['version']}") or hello.get("server")
    scanner = reply.get("scanner", hello.get("scanner"))
    print(f"{server} at {where} (scanner {scanner!r})")
    rows: list[tuple[str, str]] = []
    for key, label in _LABELS:
        if key not in reply:
            continue
        value = reply[key]
        if key == "uptime_s" and isinstance(value, int | float):
            text = _duration(value)
        elif key == "source_state" and reply.get("source"):
            text = f"{reply['source']}: {value}"
        elif value is None:
            text = "-"
        else:
            text = str(value)
        rows.append((label, text))
    known = {key for key, _ in _LABELS} | _HEADER_KEYS
    rows.extend((key, json.dumps(value) if isinstance(value, dict | list) else str(value))
                for key, value in reply.items() if key not in known)
    width = max((len(label) for label, _ in rows), default=0)
    for label, text in rows:
        print(f"  {label:<{width}}  {text}")
