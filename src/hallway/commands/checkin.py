"""``hallway checkin --key HEX``: the reference central, checking in like a phone app would.

Scans for a scanner advertising the check-in service, connects, writes the current RPI with
the level it heard the scanner at, disconnects, and repeats every ``--interval`` seconds (at
most 30). One JSON line per round on standard output: ``{"ts", "scanner", "heard_rssi",
"result"}`` (``result`` is ``ok``, ``not_found`` or the error the scanner answered). Exit 0
when every round was accepted, 1 otherwise. Linux with BlueZ (bleak); see docs/checkin.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from hallway.errors import KeyFormatError


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``checkin``."""
    parser = sub.add_parser(
        "checkin", help="check in with a nearby scanner over GATT, as a phone app would",
        parents=[common])
    parser.add_argument("--key", required=True, metavar="KEY",
                        help="the contact's hallway-v1 enrollment key (32 hex digits or base64url)")
    parser.add_argument("--adapter", metavar="hciN", help="Bluetooth adapter (default: BlueZ's)")
    parser.add_argument("--interval", type=float, default=10.0, metavar="SECONDS",
                        help="seconds between check-ins, at most 30 (default 10)")
    parser.add_argument("--count", type=int, metavar="N",
                        help="stop after N check-ins (default: until interrupted)")
    parser.add_argument("--tx-power", type=int, metavar="DBM",
                        help="this device's measured power at 1 m, sent with each check-in")
    parser.add_argument("--scan-timeout", type=float, default=10.0, metavar="SECONDS",
                        help="how long to look for a scanner each round (default 10)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the central; see the module docstring."""
    from hallway.checkin.central import RoundResult, run_central
    from hallway.keys import parse_hallway_key

    try:
        key = parse_hallway_key(args.key)
    except KeyFormatError as exc:
        print(f"hallway checkin: --key: {exc}", file=sys.stderr)
        return 2
    if not 0 < args.interval <= 30 or (args.count is not None and args.count < 1):
        print("hallway checkin: --interval must be in (0, 30] and --count at least 1",
              file=sys.stderr)
        return 2
    if args.tx_power is not None and not -128 <= args.tx_power <= 126:
        print("hallway checkin: --tx-power must be an int8 (-128..126)", file=sys.stderr)
        return 2

    def report(result: RoundResult) -> None:
        print(json.dumps({"ts": round(result.ts, 3), "scanner": result.scanner,
                          "heard_rssi": result.heard_rssi, "result": result.result}),
              flush=True)

    return asyncio.run(run_central(key, adapter=args.adapter, interval_s=args.interval,
                                   count=args.count, tx_power=args.tx_power, report=report,
                                   scan_timeout_s=args.scan_timeout))
