"""``hallway venue``: one answer for a whole venue, from every scanner's MQTT topics."""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any

from hallway.commands import contacts
from hallway.commands._common import config_from_args, state_dir
from hallway.errors import ConfigError, Problem


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``venue``."""
    parser = sub.add_parser(
        "venue",
        help="run the venue service: room per contact across all scanners (needs [mqtt])",
        description="Subscribe to every scanner of the venue through the MQTT broker, decide "
        "per contact the room it is in, and serve the result on the SPEC §6 socket and MQTT.",
        parents=[common],
    )
    parser.set_defaults(func=run)
    # The venue registry: the venue's contacts, kept in the venue's database ([storage]) and
    # handed to every scanner with registry.enabled (docs/venue.md). The same commands and
    # checks as ``hallway contacts``.
    actions = parser.add_subparsers(dest="venue_action", metavar="ACTION")
    contacts.register(actions, common)


def run(args: argparse.Namespace) -> int:
    """Run until SIGTERM/SIGINT; exit 0 after an orderly shutdown."""
    from hallway.venue.service import VenueService

    config = config_from_args(args)
    if not config.mqtt.enabled:
        raise ConfigError([Problem(getattr(args, "config", None) or "<config>", "mqtt.enabled",
                                   "hallway venue needs the MQTT broker: set enabled = true")])
    state = state_dir(config)

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        return await VenueService(config, state_dir=state).run(stop)

    return asyncio.run(main())
