"""``hallway doctor``: check this machine for everything the daemon needs, each with a fix."""

from __future__ import annotations

import argparse
import json
from typing import Any

_MARK = {"ok": "ok", "warn": "WARN", "fail": "FAIL", "skip": "skip"}


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``doctor``."""
    parser = sub.add_parser(
        "doctor", parents=[common],
        help="check config, database, D-Bus/BlueZ, adapter, sockets, mDNS and clock",
        description="Check everything hallway needs on this machine; exit 0 only when no "
        "check fails. Without --config it checks $HALLWAY_CONFIG or /etc/hallway/config.toml.",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--user", metavar="NAME",
        help="judge file permissions for this user (default: 'hallway' when run as root "
        "and it exists, else you)",
    )
    parser.add_argument("--role", choices=("scanner", "venue"),
                        help="what this machine runs (default: venue when the config has "
                        "venue.rooms, else scanner); the venue needs no Bluetooth or contacts")
    parser.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS",
                        help="per D-Bus call and socket probe (default 5)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the checks; 0 when none failed, 1 otherwise."""
    import asyncio

    from hallway.doctor import DoctorOptions, diagnose

    options = DoctorOptions(config_path=args.config, db_override=args.db, user=args.user,
                            role=args.role, timeout_s=args.timeout)
    report = asyncio.run(diagnose(options))
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
        return 0 if report.ok else 1
    print(f"hallway doctor: config {report.config_path or '(built-in defaults)'}, "
          f"role {report.role}, permissions judged for {report.account}")
    width = max(len(c.title) for c in report.checks)
    for check in report.checks:
        print(f"  {_MARK[check.status.value]:<4}  {check.title:<{width}}  {check.detail}")
        if check.fix and check.status.value in ("fail", "warn"):
            print(f"        {'':<{width}}  fix: {check.fix}")
    failed = [c for c in report.checks if c.status.value == "fail"]
    if failed:
        print(f"{len(failed)} check(s) failed: {', '.join(c.name for c in failed)}")
        return 1
    print("all checks passed")
    return 0
