"""``hallway status``: ask a running daemon for its figures over its Unix or TCP socket.

After the server's hello it sends ``{"type": "status", "token": ...}`` and prints the
``{"type": "status", ...}`` reply. Exit codes: 0 answered, 1 refused (bad token, error reply),
69 (EX_UNAVAILABLE) nothing answered.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from hallway.commands._client import ENV_TOKEN, add_target_options, clean, resolve

EX_UNAVAILABLE = 69

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
    add_target_options(parser)
    parser.add_argument("--json", action="store_true", help="print the reply as JSON")
    parser.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS",
                        help="give up after this long (default 5)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the daemon's status; see the module docstring for exit codes."""
    import asyncio

    import hallway.client as hc

    where, _ = resolve(args, prog="status")
    if where is None:
        print("hallway status: the config enables neither socket", file=sys.stderr)
        return EX_UNAVAILABLE
    label = where.describe()
    try:
        status = asyncio.run(hc.status(where, timeout_s=args.timeout))
    except hc.Unreachable as exc:
        print(f"hallway status: cannot reach hallway at {exc}", file=sys.stderr)
        if isinstance(exc.__cause__, PermissionError):
            print("  (the socket is for the service's group: run as a member of it, or root)",
                  file=sys.stderr)
        return EX_UNAVAILABLE
    except hc.Refused as exc:
        print(f"hallway status: {label} refused: {exc}", file=sys.stderr)
        if exc.code == "unauthorized":
            print(f"  pass --token-file (or ${ENV_TOKEN}); the generated token is in the state "
                  "directory, /var/lib/hallway/token, readable by the service's group",
                  file=sys.stderr)
        return 1
    except (hc.ClientError, hc.TargetError) as exc:
        print(clean(f"hallway status: {label}: {exc}"), file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(dict(status.raw), indent=2))
        return 0
    _print_human(status, label)
    return 0


def _duration(seconds: float) -> str:
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{hours}h {minutes:02d}m {secs:02d}s" if hours or days else f"{minutes}m {secs:02d}s"
    return f"{days}d {text}" if days else text


def _print_human(status: Any, where: str) -> None:
    reply = status.raw
    print(clean(f"{status.server} at {where} (scanner {status.scanner!r})"))
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
        print(clean(f"  {label:<{width}}  {text}"))
