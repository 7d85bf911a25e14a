"""``hallway calibrate --venue``: a site survey with reference beacons, written to the config.

The organiser places reference beacons (badges, or phones held still) at known distances from
the scanner and names each, as ``[[proximity.reference]]`` does: an imported contact's id, or
a badge's own key (``address``, ``ibeacon``, ``eddystone_uid``). On a terminal the survey asks
for them one by one; ``--answers FILE`` reads them from a TOML file of ``[[reference]]``
tables with the same keys (``distance_m`` each), for scripts and tests.

For each reference in turn it listens to the running daemon for ``--seconds``, through the
socket as ``hallway calibrate`` does: a reference the daemon tracks as a contact (a contact
id, or a badge imported as a contact) is read from its live distance estimate once a second
(``present``), turned back into a level with the exponent and offset the daemon uses (from
``status``); a reference the daemon already has in its config (a survey repeated) is read from
its own reference figures (``status`` ``proximity.calibration``). The levels are fitted as the
daemon's calibrator fits them (``hallway.proximity.calibration.fit_points``: exponent and
offset, bounded, blended with the configured ones by their confidence).

It refuses to write (exit 1) when a reference was not heard, when the references disagree (an
implausible exponent), or when the fit's confidence is below ``--min-confidence``: a bad
survey must not replace good defaults. Otherwise it writes, after a confirmation on a
terminal (``--yes`` skips it; ``--dry-run`` never writes), the ``[[proximity.reference]]``
entries (replacing the file's old ones) and the fitted ``path_loss_exponent`` and
``receive_offset_db`` into the ``--config`` file: the rest of the file is kept as it is, the
result is checked as a config before it replaces the old file, atomically (a temporary file in
the same folder, then a rename), with the old file's permissions.

Exit codes: 0 written (or fitted, with ``--dry-run``), 1 refused or nothing heard, 2 bad
answers, 69 no daemon answered, 78 a bad config.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import re
import statistics
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from hallway.client import Target
from hallway.config import Config, ReferenceConfig, parse_config
from hallway.errors import ConfigError
from hallway.models import Contact, KeyKind
from hallway.proximity.calibration import READING_SIGMA_DB, Fit, fit_points

EX_UNAVAILABLE = 69
EX_CONFIG = 78
_IDENTITIES = ("contact", "address", "ibeacon", "eddystone_uid")
_KINDS = {"address": KeyKind.ADDRESS, "ibeacon": KeyKind.IBEACON,
          "eddystone_uid": KeyKind.EDDYSTONE_UID}


@dataclass
class Heard:
    """What the survey heard of one reference."""

    reference: ReferenceConfig
    levels: list[float]
    how: str  # "present" or "status"
    error_db: float = READING_SIGMA_DB

    @property
    def level_db(self) -> float:
        return statistics.median(self.levels)


def add_options(parser: argparse.ArgumentParser) -> None:
    """The survey's options on ``hallway calibrate``."""
    parser.add_argument("--venue", action="store_true",
                        help="survey the venue's reference beacons and write them, with the "
                        "fitted path-loss exponent and receive offset, into --config")
    parser.add_argument("--answers", metavar="FILE",
                        help="with --venue: the references from a TOML file of [[reference]] "
                        "tables (contact, address, ibeacon or eddystone_uid; distance_m) "
                        "instead of asking")
    parser.add_argument("--min-confidence", type=float, default=0.5, metavar="C",
                        help="with --venue: refuse to write a fit less confident (0-1, "
                        "default 0.5)")
    parser.add_argument("--yes", action="store_true",
                        help="with --venue: write without asking")
    parser.add_argument("--dry-run", action="store_true",
                        help="with --venue: fit and report, never write")


def run(args: argparse.Namespace) -> int:
    """The survey; see the module docstring."""
    from hallway.commands._client import clean, resolve
    from hallway.config import find_config_path, load_config

    path = find_config_path(args.config)
    if path is None:
        print("hallway calibrate --venue: name the daemon's config file (--config): the "
              "survey writes into it", file=sys.stderr)
        return 2
    try:
        config = load_config(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EX_CONFIG
    if not 1 <= args.seconds <= 600 or not 0 <= args.min_confidence <= 1:
        print("hallway calibrate: --seconds must be 1-600 and --min-confidence 0-1",
              file=sys.stderr)
        return 2
    interactive = args.answers is None
    try:
        refs = read_answers(Path(args.answers)) if args.answers else ask_references()
    except ValueError as exc:
        print(f"hallway calibrate --venue: {exc}", file=sys.stderr)
        return 2
    if not refs:
        print("hallway calibrate --venue: no references named; nothing to do", file=sys.stderr)
        return 2
    where, _ = resolve(args, prog="calibrate", config=config)
    if where is None:
        print("hallway calibrate: the config enables neither socket", file=sys.stderr)
        return EX_UNAVAILABLE
    import hallway.client as hc

    try:
        contacts = asyncio.run(_contacts(config.storage.database))
    except Exception as exc:  # noqa: BLE001 - a missing or unreadable store: badges by contact fail
        print(f"hallway calibrate --venue: cannot read the contacts ({type(exc).__name__}); "
              "references are read only from the daemon's own reference figures",
              file=sys.stderr)
        contacts = []
    heard: list[Heard] = []
    try:
        status = asyncio.run(hc.status(where, timeout_s=10.0)).raw
        radio = _radio(status, config)
        for number, ref in enumerate(refs, start=1):
            label = describe(ref)
            if interactive:
                input(f"[{number}/{len(refs)}] put {label} at {ref.distance_m:g} m from the "
                      "scanner, keep it still, then press Enter ")
            print(f"listening for {label} at {ref.distance_m:g} m for {args.seconds:g} s ...",
                  file=sys.stderr)
            heard.append(asyncio.run(_listen(where, ref, contacts, seconds=args.seconds,
                                             radio=radio)))
    except hc.Unreachable as exc:
        print(clean(f"hallway calibrate: cannot reach hallway at {exc}"), file=sys.stderr)
        return EX_UNAVAILABLE
    except (hc.ClientError, hc.TargetError) as exc:
        print(clean(f"hallway calibrate: {where.describe()}: {exc}"), file=sys.stderr)
        return 1
    except EOFError:
        print("\nhallway calibrate --venue: stopped", file=sys.stderr)
        return 1
    return _report_and_write(args, Path(path), config, heard, interactive=interactive)


def _report_and_write(args: argparse.Namespace, path: Path, config: Config, heard: list[Heard],
                      *, interactive: bool) -> int:
    problems = []
    for item in heard:
        label = describe(item.reference)
        if not item.levels:
            problems.append(f"{label} was not heard ({_why_unheard(item)})")
            print(f"  {label} at {item.reference.distance_m:g} m: NOT HEARD")
        else:
            print(f"  {label} at {item.reference.distance_m:g} m: level "
                  f"{item.level_db:+.1f} dB (median of {len(item.levels)}, from {item.how})")
    points = [(h.reference.distance_m, h.level_db,
               _error(h)) for h in heard if h.levels]
    prox = config.proximity
    fit, raw, problem = fit_points(points, exponent=prox.path_loss_exponent,
                                   offset_db=prox.receive_offset_db)
    _print_fit(fit, raw, prox.path_loss_exponent, prox.receive_offset_db)
    if problem:
        problems.append(problem)
    elif heard and fit.confidence < args.min_confidence:
        problems.append(f"confidence {fit.confidence:.2f} is below {args.min_confidence:g} "
                        "(listen longer, or add a reference at another distance)")
    if problems:
        print("not written: " + "; ".join(problems), file=sys.stderr)
        return 1
    if args.dry_run:
        print("not written (--dry-run)")
        return 0
    if not args.yes:
        if not interactive or not sys.stdin.isatty():
            print("not written (add --yes to write without asking)")
            return 0
        if input(f"write this into {path}? [y/N] ").strip().lower() not in ("y", "yes"):
            print("not written")
            return 0
    try:
        write_survey(path, [h.reference for h in heard], exponent=fit.exponent,
                     offset_db=fit.offset_db)
    except (OSError, ConfigError) as exc:
        print(f"hallway calibrate --venue: not written: {exc}", file=sys.stderr)
        return 1
    print(f"written to {path}: {len(heard)} reference(s), path_loss_exponent "
          f"{round(fit.exponent, 2):g}, receive_offset_db {round(fit.offset_db, 1):g}; restart "
          "the daemon (or reload it) to use them")
    return 0


def _print_fit(fit: Fit, raw: tuple[float, float] | None, exponent: float, offset: float
               ) -> None:
    print(f"fit: {fit.state}; confidence {fit.confidence:.2f}")
    if raw is not None:
        print(f"  measured: path-loss exponent {raw[0]:.2f}, receive offset {raw[1]:+.1f} dB")
    print(f"  to use:   path-loss exponent {fit.exponent:.2f} (configured {exponent:g}), "
          f"receive offset {fit.offset_db:+.1f} dB (configured {offset:+g})")


def _error(heard: Heard) -> float:
    levels = heard.levels
    spread = statistics.pstdev(levels) if len(levels) > 1 else 3.0
    return math.hypot(spread / math.sqrt(len(levels)), heard.error_db)


def _why_unheard(heard: Heard) -> str:
    if heard.how == "unknown":
        return ("the daemon knows it neither as a contact nor as a configured reference: "
                "import the badge as a contact for the survey")
    if heard.how == "status":
        return "the daemon has it as a reference but has no level for it yet"
    return "not present: is it on, and within the presence radius?"


# -- the references ----------------------------------------------------------------------------

def describe(ref: ReferenceConfig) -> str:
    """``contact ID`` or the badge's ``KIND VALUE``."""
    kind, _, value = ref.key.partition(":")
    return f"{kind} {value}"


def read_answers(path: Path) -> list[ReferenceConfig]:
    """``[[reference]]`` tables from a TOML file (ValueError with the reason)."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"{path}: {exc}") from None
    tables = data.get("reference")
    unknown = sorted(set(data) - {"reference"})
    if unknown or not isinstance(tables, list):
        raise ValueError(f"{path}: expected only [[reference]] tables")
    refs = []
    for number, table in enumerate(tables, start=1):
        refs.append(_reference(table, f"{path}: reference {number}"))
    _distinct(refs)
    return refs


def ask_references() -> list[ReferenceConfig]:
    """Ask on the terminal, one reference at a time, until an empty answer."""
    print("Name each reference beacon: a contact id, or a badge as "
          "address=AA:BB:CC:DD:EE:FF, ibeacon=UUID/MAJOR/MINOR or "
          "eddystone_uid=NAMESPACE/INSTANCE. An empty line ends the list.")
    refs: list[ReferenceConfig] = []
    while True:
        try:
            name = input(f"reference {len(refs) + 1}: ").strip()
        except EOFError:
            break
        if not name:
            break
        distance = input("  its distance from the scanner (metres): ").strip()
        kind, sep, value = name.partition("=")
        table: dict[str, Any] = ({kind.strip(): value.strip()} if sep else {"contact": name})
        try:
            table["distance_m"] = float(distance)
            ref = _reference(table, "that reference")
            _distinct([*refs, ref])
        except ValueError as exc:
            print(f"  {exc}; again, please", file=sys.stderr)
            continue
        refs.append(ref)
    return refs


def _reference(table: Any, where: str) -> ReferenceConfig:
    if not isinstance(table, dict):
        raise ValueError(f"{where}: not a table")
    try:
        return ReferenceConfig.model_validate(table)
    except ValidationError as exc:
        reasons = "; ".join(
            (".".join(str(p) for p in e["loc"]) + ": " if e["loc"] else "")
            + ("unknown key" if e["type"] == "extra_forbidden" else e["msg"])
            for e in exc.errors())
        raise ValueError(f"{where}: {reasons}") from None


def _distinct(refs: list[ReferenceConfig]) -> None:
    seen = set()
    for ref in refs:
        if ref.key in seen:
            raise ValueError(f"{describe(ref)} is named twice")
        seen.add(ref.key)


# -- listening -----------------------------------------------------------------------------------

async def _contacts(database: str) -> list[Contact]:
    from hallway.store import SqliteStore

    store = await SqliteStore.open(database, create=False)
    try:
        return await store.list_contacts()
    finally:
        await store.close()


def _contact_of(ref: ReferenceConfig, contacts: list[Contact]) -> str | None:
    """The imported contact a reference is (by id, or the contact holding the badge's key)."""
    if ref.contact is not None:
        return ref.contact
    for field, kind in _KINDS.items():
        value = getattr(ref, field)
        if value is None:
            continue
        for contact in contacts:
            if any(k.kind is kind and k.value == value for k in contact.keys):
                return contact.id
    return None


def _radio(status: Any, config: Config) -> tuple[float, float]:
    """The exponent and offset the daemon uses now (its status), else the config's."""
    try:
        cal = status["proximity"]["calibration"]
        return float(cal["path_loss_exponent"]), float(cal["receive_offset_db"])
    except (KeyError, TypeError, ValueError):
        return config.proximity.path_loss_exponent, config.proximity.receive_offset_db


def _status_level(status: Any, ref: ReferenceConfig) -> float | None:
    """The daemon's own level of a reference it already has (a repeated survey), if any."""
    try:
        entries = status["proximity"]["calibration"]["references"]
    except (KeyError, TypeError):
        return None
    for entry in entries:
        key = (f"contact:{entry['contact']}" if "contact" in entry else entry.get("badge"))
        if key == ref.key and isinstance(entry.get("level_db"), int | float) \
                and entry.get("state") in ("ok", "learning"):
            return float(entry["level_db"])
    return None


async def _listen(where: Target, ref: ReferenceConfig, contacts: list[Contact], *,
                  seconds: float, radio: tuple[float, float]) -> Heard:
    """What the daemon says of ``ref`` for ``seconds``; ``radio``: the (exponent, offset) it
    turns levels into distances with."""
    exponent, offset = radio
    import hallway.client as hc

    status = (await hc.status(where, timeout_s=10.0)).raw
    if _status_level(status, ref) is not None:
        # Already a reference of the daemon: its own figures (the median of its last ten
        # minute medians) are better than anything a few seconds could give; read them once a
        # second for the time asked.
        levels: list[float] = []
        deadline = time.monotonic() + seconds
        while True:
            level = _status_level((await hc.status(where, timeout_s=10.0)).raw, ref)
            if level is not None:
                levels.append(level)
            if time.monotonic() + 1.0 > deadline:
                break
            await asyncio.sleep(1.0)
        return Heard(ref, levels, "status")
    contact_id = _contact_of(ref, contacts)
    if contact_id is None:
        return Heard(ref, [], "unknown")
    from hallway.commands.calibrate import _read_distances

    distances = await _read_distances(where, contact_id, seconds)
    levels = [offset - 10.0 * exponent * math.log10(d) for d in distances]
    return Heard(ref, levels, "present")


# -- writing the config --------------------------------------------------------------------------

_HEADER = re.compile(r"^\s*\[")
_REFERENCE_HEADER = re.compile(r"^\s*\[\[\s*proximity\s*\.\s*reference\s*\]\]\s*(#.*)?$")
_PROXIMITY_HEADER = re.compile(r"^\s*\[\s*proximity\s*\]\s*(#.*)?$")
_INLINE_REFERENCE = re.compile(r"^\s*reference\s*=")


def survey_text(text: str, refs: list[ReferenceConfig], *, exponent: float,
                offset_db: float) -> str:
    """``text`` with its references replaced by ``refs`` and the two fitted settings set
    (everything else kept line for line)."""
    lines = text.splitlines()
    out: list[str] = []
    section = ""
    skipping = False
    seen = {"path_loss_exponent": False, "receive_offset_db": False}
    values = {"path_loss_exponent": f"{round(exponent, 2):g}",
              "receive_offset_db": f"{round(offset_db, 1):.1f}"}
    proximity_at: int | None = None
    for line in lines:
        if _HEADER.match(line):
            skipping = bool(_REFERENCE_HEADER.match(line))
            if skipping:
                continue
            section = "proximity" if _PROXIMITY_HEADER.match(line) else line.strip()
            out.append(line)
            if section == "proximity":
                proximity_at = len(out)
            continue
        if skipping:
            continue
        if section == "proximity":
            key = line.split("=", 1)[0].strip() if "=" in line else ""
            if key in values and not line.lstrip().startswith("#"):
                out.append(f"{key} = {values[key]}")
                seen[key] = True
                continue
            if _INLINE_REFERENCE.match(line):
                raise ConfigError([])  # an inline reference list: see write_survey
        out.append(line)
    missing = [f"{k} = {values[k]}" for k, done in seen.items() if not done]
    if missing:
        if proximity_at is None:
            out += ["", "[proximity]"]
            proximity_at = len(out)
        out[proximity_at:proximity_at] = missing
    while out and not out[-1].strip():
        out.pop()
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    out += ["", f"# Reference beacons: hallway calibrate --venue, {stamp}."]
    for ref in refs:
        field = next(f for f in _IDENTITIES if getattr(ref, f) is not None)
        out += ["[[proximity.reference]]", f'{field} = "{getattr(ref, field)}"',
                f"distance_m = {ref.distance_m:g}"]
    return "\n".join(out) + "\n"


def write_survey(path: Path, refs: list[ReferenceConfig], *, exponent: float,
                 offset_db: float) -> None:
    """Write the survey into the config file at ``path``: checked, atomic, same permissions."""
    from hallway.errors import Problem

    text = path.read_text(encoding="utf-8")
    try:
        new = survey_text(text, refs, exponent=exponent, offset_db=offset_db)
    except ConfigError:
        raise ConfigError([Problem(str(path), "proximity.reference",
                                   "written inline (reference = [...]); turn it into "
                                   "[[proximity.reference]] tables to let the survey "
                                   "replace them")]) from None
    parse_config(new, file=str(path))  # never write what the daemon would refuse
    old = path.stat()
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(new)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, old.st_mode & 0o7777)
        with contextlib.suppress(OSError):  # keep the owner and group (e.g. root:hallway)
            os.chown(temporary, old.st_uid, old.st_gid)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
