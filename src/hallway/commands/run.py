"""``hallway run``: the daemon (scan, resolve, track, publish)."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from hallway.commands._common import config_from_args, state_dir


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``run``."""
    parser = sub.add_parser(
        "run", help="run the daemon (under systemd: Type=notify)", parents=[common]
    )
    parser.add_argument(
        "--source", choices=("bleak", "simulator", "replay"),
        help="override scanner.source (e.g. 'simulator' on a machine without Bluetooth)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run until SIGTERM/SIGINT; exit 0 after an orderly shutdown."""
    from hallway.service import Service, install_signal_handlers

    config = config_from_args(args)
    if args.source:
        scanner = config.scanner.model_copy(update={"source": args.source})
        config = config.model_copy(update={"scanner": scanner})
    state = state_dir(config)

    async def main() -> int:
        stop = asyncio.Event()
        service = Service(config, state_dir=state)
        install_signal_handlers(service, stop)
        return await service.run(stop)

    return asyncio.run(main())
