"""Privacy audit: after a crowd of strangers, nothing identifying leaks anywhere we write.

A real daemon replays a crowd (thousands of strangers' devices of every kind the simulator
knows, and contacts of every identity kind) with logging at debug level. One contact, present at
the time, is revoked through the CLI while the daemon runs; the daemon is then restarted on a
second crowd in which that contact's devices keep advertising. Then the database (with its WAL),
the logs, the events and ``status`` are searched, with ``grep -F`` over every textual form, for
every stranger's address and broadcast payload, every key and IRK (hex both ways round, base64)
and every piece of the revoked contact's data. Positive controls show the search finds what is
there (active contacts' keys in the database, a planted address in a scratch file).

A second, smaller audit sends the crowd through the real bleak backend (fake BlueZ on a private
bus), where third-party debug logging could print addresses.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import shutil
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from hallway.identity.crypto import derive_aemk, derive_rpik
from hallway.models import Advertisement, Contact, ContactKey, KeyKind
from hallway.simulator.devices import (
    STRANGER_MIX,
    Device,
    DeviceKind,
    Transmitter,
    choose,
    make_contact,
    make_device,
)
from hallway.trace import advertisement_json
from tests.bluez_env import bluez_env, needs_dbus
from tests.reliability_env import (
    Subscriber,
    hallway,
    record,
    running_daemon,
    scaled,
    write_config,
    write_jsonl,
)

pytestmark = pytest.mark.timeout(scaled(240, 1800))

CONTACT_KINDS = (DeviceKind.HALLWAY_MFR, DeviceKind.HALLWAY_MFR_BARE, DeviceKind.HALLWAY_UUID,
                 DeviceKind.HALLWAY_EN, DeviceKind.IRK_PHONE, DeviceKind.IBEACON,
                 DeviceKind.EDDYSTONE, DeviceKind.ADDRESS_BADGE)
REVOKED_ID = "c-revoked"
REVOKED_KINDS = (DeviceKind.HALLWAY_MFR, DeviceKind.IRK_PHONE, DeviceKind.ADDRESS_BADGE,
                 DeviceKind.IBEACON)


# -- the crowd --------------------------------------------------------------------------------


@dataclass
class Crowd:
    """Who is in the venue and every identifying string each of them put on the air."""

    contacts: list[Contact]
    contact_devices: list[Device]
    revoked: Contact
    revoked_devices: list[Device]
    rng: random.Random
    stranger_addresses: set[str] = field(default_factory=set)
    stranger_payloads: set[str] = field(default_factory=set)
    stranger_secrets: set[bytes] = field(default_factory=set)
    contact_addresses: set[str] = field(default_factory=set)
    revoked_addresses: set[str] = field(default_factory=set)
    strangers: int = 0


def make_crowd(seed: int, *, start: float) -> Crowd:
    """Contacts of every identity kind (two each) and one contact to be revoked."""
    rng = random.Random(seed)
    devices = [make_device(rng, kind, f"{seed}:c{i}:{kind.value}")
               for i, kind in enumerate(CONTACT_KINDS * 2)]
    contacts = [make_contact(rng, i, device, granted_at=start - 86400, expires_at=start + 86400)
                for i, device in enumerate(devices)]
    revoked_devices = [make_device(rng, kind, f"{seed}:revoked:{kind.value}")
                       for kind in REVOKED_KINDS]
    keys = tuple(key for d in revoked_devices if (key := d.key()) is not None)
    revoked = Contact(id=REVOKED_ID, name="Rosalind Withdrawn-Consent",
                      org="Quillon Tessellate Works", title="Former Keynote Reviewer",
                      handles={"linkedin": "rosalind-withdrawn-q7x", "mastodon": "@rwq7x"},
                      tags=("withdrawn-q7x",), granted_at=start - 86400,
                      expires_at=start + 86400, keys=keys)
    return Crowd(contacts, devices, revoked, revoked_devices, rng)


def _stranger_payloads(adv: Advertisement) -> Iterable[str]:
    for payload in (*adv.manufacturer_data.values(), *adv.service_data.values()):
        if len(payload) >= 6:
            yield payload.hex()


def crowd_rows(crowd: Crowd, *, start: float, duration_s: float, strangers: int,
               with_contacts: bool = True) -> list[dict[str, Any]]:
    """A SPEC §2 trace: contacts (and the to-be-revoked one) near the scanner all along,
    ``strangers`` strangers each passing for a few seconds."""
    rng = crowd.rng
    ads: list[Advertisement] = []

    def emit(device: Device, begin: float, end: float, rssi: tuple[int, int]) -> list[
            Advertisement]:
        transmitter = Transmitter(device)
        step = max(device.interval_s, 0.25)
        t = begin + rng.uniform(0, step)
        out = []
        while t < end:
            out.append(transmitter.advertisement(round(t, 4), rng.randint(*rssi)))
            t += step
        return out

    if with_contacts:
        for device in crowd.contact_devices:
            for adv in emit(device, start, start + duration_s, (-58, -50)):
                crowd.contact_addresses.add(adv.address)
                ads.append(adv)
    for device in crowd.revoked_devices:
        for adv in emit(device, start, start + duration_s, (-56, -50)):
            crowd.revoked_addresses.add(adv.address)
            ads.append(adv)
    for number in range(strangers):
        kind = choose(rng, STRANGER_MIX)
        device = make_device(rng, kind, f"stranger:{start}:{number}")
        if device.secret:
            crowd.stranger_secrets.add(device.secret)
        if device.beacon_id:
            crowd.stranger_payloads.add(device.beacon_id.hex())
        stay = rng.uniform(2.0, 5.0)
        begin = start + rng.uniform(0, max(duration_s - stay, 0.1))
        for adv in emit(device, begin, begin + stay, (-95, -60)):
            crowd.stranger_addresses.add(adv.address)
            crowd.stranger_payloads.update(_stranger_payloads(adv))
            ads.append(adv)
    crowd.strangers += strangers
    ads.sort(key=lambda a: a.ts)
    return [advertisement_json(adv) for adv in ads]


def contact_line(contact: Contact) -> dict[str, Any]:
    """A SPEC §1 contacts-file object."""
    from hallway.contacts_io import contact_to_obj

    return contact_to_obj(contact)


# -- the search -------------------------------------------------------------------------------


def address_forms(address: str) -> list[str]:
    """Every way an address may be written: separators, none, byte-reversed."""
    octets = address.upper().split(":")
    forms = []
    for order in (octets, octets[::-1]):
        forms.extend([":".join(order), "_".join(order), "-".join(order), "".join(order)])
    return forms


def secret_forms(raw: bytes) -> tuple[list[str], list[str]]:
    """(hex forms, base64 forms) of 16 secret bytes, both byte orders."""
    hex_forms: list[str] = []
    b64_forms: list[str] = []
    for value in (raw, raw[::-1]):
        hex_forms.append(value.hex())
        b64_forms.append(base64.b64encode(value).decode())
        b64_forms.append(base64.urlsafe_b64encode(value).decode().rstrip("="))
    return hex_forms, b64_forms


def key_forms(key: ContactKey) -> tuple[list[str], list[str]]:
    """(case-insensitive forms, case-sensitive forms) of a contact key."""
    if key.kind in (KeyKind.HALLWAY_V1, KeyKind.IRK):
        raw = bytes.fromhex(key.value)
        hex_forms, b64_forms = secret_forms(raw)
        if key.kind is KeyKind.HALLWAY_V1:  # the keys derived from it are secret too
            for derived in (derive_rpik(raw), derive_aemk(raw)):
                more_hex, more_b64 = secret_forms(derived)
                hex_forms += more_hex
                b64_forms += more_b64
        return hex_forms, b64_forms
    if key.kind is KeyKind.ADDRESS:
        return address_forms(key.value), []
    if key.kind is KeyKind.IBEACON:
        uuid_text, major, minor = key.value.split("/")
        return [key.value, uuid_text.replace("-", "") + f"{int(major):04x}{int(minor):04x}"], []
    namespace, instance = key.value.split("/")
    return [key.value, namespace + instance], []


@dataclass
class Needles:
    """Strings that must not be found, by what they are (for the failure message)."""

    folded: dict[str, str] = field(default_factory=dict)  # upper-cased form -> what
    exact: dict[str, str] = field(default_factory=dict)

    def add(self, what: str, folded: Iterable[str] = (), exact: Iterable[str] = ()) -> None:
        for text in folded:
            self.folded.setdefault(text.upper(), what)
        for text in exact:
            self.exact.setdefault(text, what)

    def __len__(self) -> int:
        return len(self.folded) + len(self.exact)


def grep(needles: Needles, files: list[Path], scratch: Path) -> list[tuple[str, str, str]]:
    """``(file, found text, what it is)`` for every needle ``grep -F`` finds in ``files``."""
    hits: list[tuple[str, str, str]] = []
    for table, flags in ((needles.folded, ["-i"]), (needles.exact, [])):
        if not table:
            continue
        patterns = scratch / f"needles-{'folded' if flags else 'exact'}.txt"
        patterns.write_bytes(b"\n".join(text.encode() for text in table) + b"\n")
        for file in files:
            if not file.exists():
                continue
            # The C locale: byte-wise matching (fast with many patterns; our needles are ASCII).
            done = subprocess.run(["grep", "-a", "-o", "-F", *flags, "-f", str(patterns),
                                   str(file)], capture_output=True, check=False,
                                  env={**os.environ, "LC_ALL": "C"})
            assert done.returncode in (0, 1), done.stderr
            for found in done.stdout.decode("utf-8", "replace").splitlines():
                key = found.upper() if flags else found
                hits.append((file.name, found, table.get(key, "?")))
    return hits


def database_files(db: Path) -> list[Path]:
    """The database and its journal files."""
    return [db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm"),
            db.with_name(db.name + "-journal")]


# -- the audit through a replayed crowd -------------------------------------------------------


def test_crowd_leaves_no_trace(tmp_path: Path) -> None:
    strangers = scaled(3000, 20000)
    phase_a_s = float(scaled(14, 40))
    phase_b_s = float(scaled(6, 20))
    started = time.monotonic()
    now = time.time()
    crowd = make_crowd(7, start=now)
    trace_a = write_jsonl(tmp_path / "crowd-a.jsonl",
                          crowd_rows(crowd, start=now, duration_s=phase_a_s, strangers=strangers))
    contacts_file = write_jsonl(tmp_path / "contacts.jsonl",
                                [contact_line(c) for c in [*crowd.contacts, crowd.revoked]])
    config = write_config(tmp_path, trace=trace_a)
    hallway("contacts", "import", str(contacts_file), "--config", str(config))
    db = tmp_path / "hallway.db"

    # Phase A: the crowd; the revoked contact is present when revoked.
    with running_daemon(config, log_name="daemon-a.log") as daemon:
        sub = Subscriber(daemon.port)
        sub.wait_for(lambda m: m.get("type") == "arrived"
                     and m["contact"]["id"] == REVOKED_ID, timeout_s=20, what="revoked arriving")
        revoked_at = time.time()  # the CLI's own start-up counts: a user waits for it too
        hallway("contacts", "revoke", REVOKED_ID, "--config", str(config))
        departed_at, departed = sub.wait_for(
            lambda m: m.get("type") == "departed" and m["contact"]["id"] == REVOKED_ID,
            timeout_s=10, what="the revoked contact's departure")
        depart_latency_s = departed_at - revoked_at
        live_db = tmp_path / "live-copy"
        live_db.mkdir()
        for file in database_files(db):  # the store as a backup would copy it right now
            if file.exists():
                shutil.copy(file, live_db / file.name)
        assert departed["reason"] == "revoked"
        assert departed["contact"] == {"id": REVOKED_ID}
        deadline = time.monotonic() + phase_a_s + 30
        while daemon.status()["source_state"] != "stopped" and time.monotonic() < deadline:
            time.sleep(0.2)
        status_a = daemon.status()
        assert status_a["source_state"] == "stopped", status_a
        sub.close()
        assert daemon.stop() == 0
    after_revoke = [line for at, line in sub.lines if at >= departed_at]
    before_revoke = [line for at, line in sub.lines if at < departed_at]
    events_a = sub.events()
    assert sum(1 for e in events_a if e["contact"]["id"] == REVOKED_ID) == 2  # arrived, departed
    assert status_a["advertisements"] >= len(trace_a.read_text().splitlines()) * 0.95

    # Phase B: restarted; the revoked contact's devices still advertise.
    trace_b = write_jsonl(tmp_path / "crowd-b.jsonl",
                          crowd_rows(crowd, start=time.time(), duration_s=phase_b_s,
                                     strangers=strangers // 4))
    config = write_config(tmp_path, trace=trace_b)
    with running_daemon(config, log_name="daemon-b.log") as daemon:
        sub_b = Subscriber(daemon.port, since_seq=0)
        deadline = time.monotonic() + phase_b_s + 30
        while daemon.status()["source_state"] != "stopped" and time.monotonic() < deadline:
            time.sleep(0.2)
        status_b = daemon.status()
        sub_b.close()
        assert daemon.stop() == 0
    events_b = sub_b.events()
    assert not [e for e in events_b if e["contact"]["id"] == REVOKED_ID
                and not (e["type"] == "departed" and e["contact"] == {"id": REVOKED_ID})]
    live_b = [e for e in events_b if e["seq"] > sub_b.reply["seq"]]
    assert any(e["type"] == "arrived" for e in live_b), (sub_b.reply["seq"], events_b[-5:])
    assert REVOKED_ID not in hallway("contacts", "list", "--config", str(config)).stdout

    # The artifacts.
    events_file = tmp_path / "events-after-revoke.jsonl"
    events_file.write_bytes(b"\n".join([*after_revoke, *(line for _, line in sub_b.lines)]))
    early_file = tmp_path / "events-before-revoke.jsonl"
    early_file.write_bytes(b"\n".join(before_revoke))
    status_file = tmp_path / "status.json"
    status_file.write_text(json.dumps([status_a, status_b]))
    logs = [tmp_path / "daemon-a.log", tmp_path / "daemon-b.log"]
    db_files = [f for f in database_files(db) if f.exists()]
    assert any(json.loads(line).get("level") == "debug"
               for line in logs[0].read_text().splitlines() if line.startswith("{"))

    strangers_n = Needles()
    for address in crowd.stranger_addresses:
        strangers_n.add("stranger address", address_forms(address))
    strangers_n.add("stranger payload", crowd.stranger_payloads)
    for secret in crowd.stranger_secrets:
        hex_forms, b64_forms = secret_forms(secret)
        strangers_n.add("stranger key", hex_forms, b64_forms)
    revoked_n = Needles()
    revoked_n.add("revoked contact data", [crowd.revoked.name, crowd.revoked.org or "",
                                           crowd.revoked.title or "",
                                           *crowd.revoked.handles.values(),
                                           *crowd.revoked.tags])
    for key in crowd.revoked.keys:
        revoked_n.add(f"revoked {key.kind.value} key", *key_forms(key))
    for address in crowd.revoked_addresses:
        revoked_n.add("revoked contact's address", address_forms(address))
    keys_n = Needles()
    for contact in crowd.contacts:
        for key in contact.keys:
            keys_n.add(f"{key.kind.value} key", *key_forms(key))
    for address in crowd.contact_addresses:
        keys_n.add("contact's address", address_forms(address))

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    findings = {
        "database": grep(merge(strangers_n, revoked_n), db_files, scratch),
        "database while running": grep(revoked_n, sorted(live_db.iterdir()), scratch),
        "logs": grep(merge(strangers_n, revoked_n, keys_n), logs, scratch),
        "events": grep(merge(strangers_n, revoked_n, keys_n), [events_file], scratch),
        "status": grep(merge(strangers_n, revoked_n, keys_n), [status_file], scratch),
        "events before the revocation": grep(merge(strangers_n, keys_n), [early_file], scratch),
    }
    # Positive controls: the search finds what is there.
    in_db = grep(keys_n, db_files, scratch)
    active_keys = {key.value.upper() for c in crowd.contacts for key in c.keys}
    assert active_keys <= {found.upper() for _, found, _ in in_db}
    assert grep(revoked_n, [early_file], scratch), "the revoked contact was announced before"
    planted = scratch / "planted.log"
    sample = sorted(crowd.stranger_addresses)[0]
    planted.write_text(f'{{"event": "x", "who": "{sample.lower().replace(":", "_")}"}}\n')
    assert grep(strangers_n, [planted], scratch)

    record("privacy", strangers=crowd.strangers, stranger_addresses=len(crowd.stranger_addresses),
           needles=len(strangers_n) + len(revoked_n) + len(keys_n),
           advertisements=status_a["advertisements"] + status_b["advertisements"],
           events=len(events_a) + len(live_b),
           revoke_to_departed_s=round(depart_latency_s, 3),
           log_bytes=sum(f.stat().st_size for f in logs),
           db_bytes=sum(f.stat().st_size for f in db_files),
           findings=sum(len(v) for v in findings.values()),
           seconds=round(time.monotonic() - started, 1))
    assert depart_latency_s < 3.0
    assert not any(findings.values()), {k: v[:5] for k, v in findings.items() if v}


def merge(*parts: Needles) -> Needles:
    """One set of needles from several."""
    out = Needles()
    for part in parts:
        for text, what in part.folded.items():
            out.folded.setdefault(text, what)
        for text, what in part.exact.items():
            out.exact.setdefault(text, what)
    return out


# -- the same through bleak and a fake BlueZ --------------------------------------------------


@needs_dbus
@pytest.mark.system
async def test_radio_path_logs_no_addresses(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    now = time.time()
    crowd = make_crowd(11, start=now)
    rows = crowd_rows(crowd, start=now, duration_s=6.0, strangers=scaled(300, 2000))
    trace = write_jsonl(tmp_path / "radio-crowd.jsonl", rows)
    contacts_file = write_jsonl(tmp_path / "contacts.jsonl",
                                [contact_line(c) for c in crowd.contacts])
    # forget_strangers off: every advertisement, strangers' repeats too, goes all the way
    # through the radio path (and is counted), so all of it is searched for leaks.
    config = write_config(tmp_path, source="bleak",
                          scanner={"start_timeout_s": 2.0, "silence_restart_s": 30.0,
                                   "forget_strangers": False})
    hallway("contacts", "import", str(contacts_file), "--config", str(config))
    async with bluez_env(monkeypatch) as env:
        with running_daemon(config, log_name="daemon-radio.log") as daemon:
            sub = Subscriber(daemon.port)
            sent = await env.fake.command("play", path=str(trace), rate=1000, wait=True,
                                          timeout_s=120)
            await asyncio.sleep(1.0)
            status = daemon.status()
            sub.close()
            assert daemon.stop() == 0
    assert sent["sent"] == len(rows)
    assert status["advertisements"] >= len(rows) * 0.9, status
    assert sub.events(), "contacts were heard through the radio path"
    needles = Needles()
    for address in crowd.stranger_addresses | crowd.contact_addresses | crowd.revoked_addresses:
        needles.add("address", address_forms(address))
    needles.add("payload", crowd.stranger_payloads)
    for contact in crowd.contacts:
        for key in contact.keys:
            needles.add("key", *key_forms(key))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    log = tmp_path / "daemon-radio.log"
    found = grep(needles, [log], scratch)
    record("privacy-radio", advertisements=len(rows), log_bytes=log.stat().st_size,
           findings=len(found))
    assert not found, found[:5]


def test_grep_is_available() -> None:
    assert shutil.which("grep"), "the audit greps"
