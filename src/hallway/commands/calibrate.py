"""``hallway calibrate CONTACT --distance M``: measure one phone's offset against the running
daemon and (with ``--save``) store it as the contact's ``calibration_db``. (``hallway
calibrate --venue`` surveys the venue's reference beacons instead: ``hallway.commands.survey``.)

Phones and badges differ by several dB in what they send; the tracker reads a loud phone as
nearer than it is. Hold the contact's phone still at a known distance from the scanner (1 m
by default) and run this: once a second it asks the daemon for its live estimate of that
contact (a ``present`` request, docs/protocol.md), for ``--seconds``. From the median
reading and the venue's path-loss exponent (the config's, so pass the daemon's ``--config``)
it works out the correction: a reading of ``r`` metres at a true ``d`` metres means the
calibration moves by ``10·n·log10(d / r)`` dB. With ``--save`` it is stored in the contacts
database, and the running daemon applies it within its reload interval.

Exit codes: 0 measured, 1 no reading (the contact was never present), refused or no database,
65 unknown contact, 69 no daemon answered.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

from hallway.client import Target
from hallway.commands import survey
from hallway.commands._client import add_target_options, clean, resolve
from hallway.commands._common import config_from_args
from hallway.models import Contact
from hallway.proximity.distance import correction_db

EX_DATAERR = 65
EX_UNAVAILABLE = 69
_LIMIT_DB = 30.0  # what a contacts file accepts


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``calibrate``."""
    parser = sub.add_parser(
        "calibrate", parents=[common],
        help="measure a contact's phone at a known distance and set its calibration_db",
        description="Hold the contact's phone still at --distance metres from the scanner; "
        "this reads the running daemon's distance estimate once a second and works out the "
        "contact's calibration_db (stored with --save). Use the daemon's --config.",
    )
    parser.add_argument("contact", metavar="CONTACT", nargs="?",
                        help="contact id (not with --venue)")
    parser.add_argument("--distance", type=float, default=1.0, metavar="METRES",
                        help="the true distance from the scanner (default 1)")
    parser.add_argument("--seconds", type=float, default=20.0,
                        help="how long to read (default 20)")
    parser.add_argument("--save", action="store_true",
                        help="store the result as the contact's calibration_db")
    survey.add_options(parser)
    add_target_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Measure, print and optionally store; see the module docstring for exit codes."""
    import asyncio

    from hallway.errors import ContactNotFound, StoreError

    if args.venue:
        if args.contact is not None or args.save:
            print("hallway calibrate: --venue surveys reference beacons; it takes no CONTACT "
                  "or --save", file=sys.stderr)
            return 2
        return survey.run(args)
    if args.contact is None:
        print("hallway calibrate: name a CONTACT (or survey the venue with --venue)",
              file=sys.stderr)
        return 2
    if not 0.1 <= args.distance <= 100 or not 1 <= args.seconds <= 600:
        print("hallway calibrate: --distance must be 0.1-100 m and --seconds 1-600",
              file=sys.stderr)
        return 2
    config = config_from_args(args, setup_logging=False)
    try:
        contact = asyncio.run(_get_contact(config.storage.database, args.contact))
    except ContactNotFound:
        print(f"hallway calibrate: no contact {args.contact!r} in {config.storage.database}",
              file=sys.stderr)
        return EX_DATAERR
    except StoreError as exc:
        print(f"hallway calibrate: {exc}", file=sys.stderr)
        return 1
    import hallway.client as hc

    where, _ = resolve(args, prog="calibrate", config=config)
    if where is None:
        print("hallway calibrate: the config enables neither socket", file=sys.stderr)
        return EX_UNAVAILABLE
    label = where.describe()
    print(f"reading {contact.id} at {args.distance:g} m from {label} for {args.seconds:g} s; "
          "keep the phone still ...", file=sys.stderr)
    try:
        readings = asyncio.run(_read_distances(where, contact.id, args.seconds))
    except hc.Unreachable as exc:
        print(clean(f"hallway calibrate: cannot reach hallway at {exc}"), file=sys.stderr)
        return EX_UNAVAILABLE
    except hc.Refused as exc:
        print(clean(f"hallway calibrate: {label} refused: {exc}"), file=sys.stderr)
        return 1
    except (hc.ClientError, hc.TargetError) as exc:
        print(clean(f"hallway calibrate: {label}: {exc}"), file=sys.stderr)
        return 1
    if not readings:
        print(f"hallway calibrate: {contact.id} was not present during the {args.seconds:g} s; "
              "is the phone advertising and within reach?", file=sys.stderr)
        return 1
    read_m = statistics.median(readings)
    exponent = config.proximity.path_loss_exponent
    new = correction_db(contact.calibration_db, true_m=args.distance, read_m=read_m,
                        exponent=exponent)
    new = round(max(-_LIMIT_DB, min(_LIMIT_DB, new)), 1)
    print(f"{contact.id}: read {read_m:.2f} m at {args.distance:g} m (median of "
          f"{len(readings)}, path-loss exponent {exponent:g}); calibration_db "
          f"{contact.calibration_db:+.1f} -> {new:+.1f}")
    if args.save:
        asyncio.run(_save(config.storage.database, contact, new))
        print(f"saved; a running daemon applies it within "
              f"{config.storage.reload_interval_s:g} s")
    else:
        print("not saved (add --save to store it)")
    return 0


async def _get_contact(database: str, contact_id: str) -> Contact:
    from hallway.store import SqliteStore

    store = await SqliteStore.open(database, create=False)
    try:
        return await store.get_contact(contact_id)
    finally:
        await store.close()


async def _save(database: str, contact: Contact, calibration_db: float) -> None:
    import dataclasses

    from hallway.store import SqliteStore

    store = await SqliteStore.open(database, create=False)
    try:
        await store.import_contacts([dataclasses.replace(contact, calibration_db=calibration_db)])
    finally:
        await store.close()


async def _read_distances(where: Target, contact_id: str, seconds: float) -> list[float]:
    """The contact's distance from the daemon's live estimate (a ``present`` request), once a
    second."""
    import asyncio

    readings: list[float] = []
    deadline = time.monotonic() + seconds
    while True:
        started = time.monotonic()
        reading = await _snapshot_distance(where, contact_id)
        if reading is not None:
            readings.append(reading)
        if started + 1.0 >= deadline:
            return readings
        await asyncio.sleep(max(0.0, started + 1.0 - time.monotonic()))


async def _snapshot_distance(where: Target, contact_id: str) -> float | None:
    import hallway.client as hc

    for entry in await hc.present(where, contacts=[contact_id], timeout_s=5.0):
        if entry.contact.id == contact_id and entry.distance_m is not None \
                and entry.distance_m > 0:
            return entry.distance_m
    return None
