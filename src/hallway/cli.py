"""The command line: the only place that touches argv, signals' exit codes and process exit.

Each subcommand lives in ``hallway.commands.<name>`` with ``register(subparsers, common)``
adding its parser (``set_defaults(func=...)``) and a ``run(args) -> int``. Heavy imports stay
inside ``run`` so ``hallway --help`` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from hallway import __version__
from hallway.errors import ConfigError, HallwayError

EX_CONFIG = 78
EX_SOFTWARE = 70

COMMAND_MODULES = (
    "contacts",
    "check_config",
    "resolve",
    "replay",
    "simulate",
    "run",
    "demo",
    "tail",
    "status",
    "calibrate",
    "doctor",
    "venue",
    "tokens",
    "tls",
)


def build_parser() -> argparse.ArgumentParser:
    """The full argparse tree."""
    parser = argparse.ArgumentParser(
        prog="hallway",
        description="Which of your opted-in contacts are in the room, from Bluetooth LE.",
    )
    parser.add_argument("--version", action="version", version=f"hallway {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config", metavar="FILE", help="TOML config file (default: built-in defaults, "
        "or $HALLWAY_CONFIG)"
    )
    common.add_argument("--db", metavar="PATH", help="database file (overrides storage.database)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"hallway.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"hallway.commands.{name}":
                raise
            continue
        module.register(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hallway`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        print(f"hallway: invalid configuration ({len(exc.problems)} problem(s)):", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EX_CONFIG
    except HallwayError as exc:
        print(f"hallway: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    return code
