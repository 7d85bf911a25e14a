"""Which of my contacts are here? A terminal app on hallway.client.

Run it against a daemon (``hallway demo`` prints the URI file to use):

    python who_is_here.py --uri-file /tmp/hallway-demo-XXXX/hallway.uri c-0001 c-0002 c-0003

It keeps one line up to date: who of the given contacts is present, and where. The URI may
also come from $HALLWAY_URI. Stop it with Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from pathlib import Path

import hallway.client as hc


def read_uri(args: argparse.Namespace) -> str:
    """The connection URI from --uri-file or $HALLWAY_URI (never from the command line: it
    holds the token, and other users can read command lines)."""
    if args.uri_file:
        return Path(args.uri_file).read_text(encoding="utf-8").strip()
    uri = os.environ.get("HALLWAY_URI")
    if not uri:
        sys.exit("who_is_here: pass --uri-file FILE or set HALLWAY_URI")
    return uri


def show(here: dict[str, str]) -> None:
    """Print who is here now, one line."""
    names = ", ".join(sorted(here.values())) or "nobody yet"
    print(f"here now: {names}", flush=True)


def on_state(change: hc.StateChange) -> None:
    """Tell the user when the connection drops and comes back."""
    if change.state is hc.State.BACKING_OFF:
        print(f"(lost the daemon: {change.reason}; trying again in {change.retry_in_s:.0f} s)",
              flush=True)
    elif change.state is hc.State.RESUMING and change.reason:
        print(f"(resuming: {change.reason})", flush=True)


def describe(contact: hc.Contact, zone: str | None) -> str:
    """A contact as the line shows it."""
    return f"{contact.name or contact.id} ({zone or '?'})"


async def main() -> None:
    parser = argparse.ArgumentParser(description="Which of my contacts are here?")
    parser.add_argument("--uri-file", help="file holding the hallway:// URI")
    parser.add_argument("contacts", nargs="+", metavar="CONTACT_ID",
                        help="the contact ids you care about")
    args = parser.parse_args()
    here: dict[str, str] = {}  # contact id -> "Name (zone)"
    async with hc.connect(read_uri(args), contacts=args.contacts, on_state=on_state) as sub:
        async for message in sub:
            match message:
                case hc.Subscribed(present=present) | hc.Resync(present=present):
                    # The whole present set: after a resync some events were missed for good.
                    here = {p.contact.id: describe(p.contact, p.zone) for p in present}
                case hc.Arrived(contact=contact, zone=zone) | hc.ZoneChanged(
                        contact=contact, zone=zone):
                    here[contact.id] = describe(contact, zone)
                case hc.Departed(contact=contact):
                    here.pop(contact.id, None)
                case _:
                    continue  # an event type this app does not know
            show(here)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
