"""``hallway resolve`` on a generated trace with known answers, contacts in a real SQLite store."""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from hallway.identity import crypto
from hallway.models import Advertisement, Contact, ContactKey, KeyKind
from hallway.parsing.frames import EDDYSTONE_SERVICE_UUID, EN_SERVICE_UUID
from hallway.store import SqliteStore
from hallway.trace import advertisement_json

T0 = 1_790_000_100.0
DURATION_S = 50 * 60  # crosses five interval boundaries
SPEC_IBEACON = bytes.fromhex("0215426c7565436861726d426561636f6e730efe1355c5")
SPEC_EDDYSTONE = bytes.fromhex("00e3123456789012346789010000000000010000")


@dataclass
class World:
    """Contacts with their secrets, and the trace lines with the answer each must get."""

    rng: random.Random
    contacts: list[Contact] = field(default_factory=list)
    hallway: dict[str, bytes] = field(default_factory=dict)  # contact -> K
    irks: dict[str, bytes] = field(default_factory=dict)
    ibeacons: dict[str, tuple[bytes, int, int]] = field(default_factory=dict)
    eddystones: dict[str, tuple[bytes, bytes]] = field(default_factory=dict)
    addresses: dict[str, str] = field(default_factory=dict)
    expires: dict[str, float] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)
    answers: list[dict[str, object]] = field(default_factory=list)

    def add(self, contact_id: str, *keys: ContactKey, expires_at: float | None = None) -> None:
        self.contacts.append(Contact(contact_id, contact_id.upper(), keys=keys,
                                     expires_at=expires_at))
        if expires_at is not None:
            self.expires[contact_id] = expires_at

    def line(self, adv: Advertisement, contact: str | None, via: KeyKind | None) -> None:
        if contact is not None and self.expires.get(contact, float("inf")) <= adv.ts:
            contact = via = None
        self.lines.append(json.dumps(advertisement_json(adv)))
        number = len(self.lines)
        self.answers.append(
            {"line": number, "contact": contact, "via": None if via is None else via.value}
        )

    def bad_line(self, text: str) -> None:
        self.lines.append(text)
        self.answers.append({"line": len(self.lines), "error": None})  # reason checked apart


def random_rpa(rng: random.Random, irk: bytes | None = None) -> str:
    prand = bytes([0x40 | rng.randrange(64), rng.randrange(256), rng.randrange(256)])
    if irk is None:
        return ":".join(f"{b:02X}" for b in prand + rng.randbytes(3))
    return crypto.make_rpa(irk, prand)


def build_world(seed: int = 3) -> World:
    rng = random.Random(seed)
    world = World(rng)
    for n in range(6):
        world.hallway[f"hw-{n}"] = rng.randbytes(16)
        world.add(f"hw-{n}", ContactKey(KeyKind.HALLWAY_V1, world.hallway[f"hw-{n}"].hex()))
        world.irks[f"irk-{n}"] = rng.randbytes(16)
        world.add(f"irk-{n}", ContactKey(KeyKind.IRK, world.irks[f"irk-{n}"].hex()))
    for n in range(2):
        beacon = (rng.randbytes(16), rng.randrange(65536), rng.randrange(65536))
        world.ibeacons[f"ib-{n}"] = beacon
        text = f"{uuid.UUID(bytes=beacon[0])}/{beacon[1]}/{beacon[2]}"
        world.add(f"ib-{n}", ContactKey(KeyKind.IBEACON, text))
    world.eddystones["ed-0"] = (rng.randbytes(10), rng.randbytes(6))
    ns, inst = world.eddystones["ed-0"]
    world.add("ed-0", ContactKey(KeyKind.EDDYSTONE_UID, f"{ns.hex()}/{inst.hex()}"))
    world.addresses["ad-0"] = "00:1B:DC:0F:12:34"
    world.addresses["ad-1"] = "D1:22:33:44:55:66"
    for cid, address in world.addresses.items():
        world.add(cid, ContactKey(KeyKind.ADDRESS, address))
    # the SPEC contact with every kind, and one whose consent runs out mid-trace
    world.add(
        "c-0001",
        ContactKey(KeyKind.HALLWAY_V1, "75c734c6dd1a782de7a965da5eb93125"),
        ContactKey(KeyKind.IRK, "ec0234a357c8ad05341010a60a397d9b"),
        ContactKey(KeyKind.IBEACON, "426c7565-4368-6172-6d42-6561636f6e73/3838/4949"),
        ContactKey(KeyKind.EDDYSTONE_UID, "12345678901234678901/000000000001"),
        ContactKey(KeyKind.ADDRESS, "C4:7C:8D:6A:12:34"),
    )
    world.hallway["expiring"] = rng.randbytes(16)
    world.add("expiring", ContactKey(KeyKind.HALLWAY_V1, world.hallway["expiring"].hex()),
              expires_at=T0 + DURATION_S / 2)
    world.hallway["revoked"] = rng.randbytes(16)  # stored, then revoked: never resolves
    return world


def fill_trace(world: World, *, lines: int = 3000) -> None:
    rng = world.rng
    rpiks = {cid: crypto.derive_rpik(k) for cid, k in world.hallway.items()}
    aemks = {cid: crypto.derive_aemk(k) for cid, k in world.hallway.items()}
    spec_k = bytes.fromhex("75c734c6dd1a782de7a965da5eb93125")
    rpiks["c-0001"] = crypto.derive_rpik(spec_k)
    aemks["c-0001"] = crypto.derive_aemk(spec_k)
    spec_irk = bytes.fromhex("ec0234a357c8ad05341010a60a397d9b")
    irks = {**world.irks, "c-0001": spec_irk}
    revoked_k = world.hallway["revoked"]
    rpiks["revoked"] = crypto.derive_rpik(revoked_k)
    aemks["revoked"] = crypto.derive_aemk(revoked_k)
    rpas: dict[tuple[str, int], str] = {}

    def rpa_of(cid: str, ts: float) -> str:
        slot = (cid, int(ts // 900))  # rotates every 15 minutes
        if slot not in rpas:
            rpas[slot] = random_rpa(rng, irks[cid])
        return rpas[slot]

    ts = T0
    for _ in range(lines):
        ts += rng.uniform(0.0, 2.0 * DURATION_S / lines)
        roll = rng.random()
        address = random_rpa(rng)
        if roll < 0.80:
            stranger(world, ts, address)
            continue
        kind = rng.choice(["mfr", "uuid", "en", "irk", "ibeacon", "eddystone", "address"])
        if kind in ("mfr", "uuid", "en"):
            cid = rng.choice([*sorted(world.hallway), "c-0001"])
            skew = rng.choice([-3, -2, -1, 0, 0, 0, 1, 2])
            rpi = crypto.rpi_for_interval(rpiks[cid], crypto.interval_number(ts) + skew)
            expect = cid if -2 <= skew <= 1 and cid != "revoked" else None
            if kind == "mfr":
                power = bytes([rng.randrange(256)]) if rng.random() < 0.5 else b""
                adv = Advertisement(ts, address, "random",
                                    manufacturer_data={0xFFFF: b"HW\x01" + rpi + power})
            elif kind == "uuid":
                uuids = (str(uuid.UUID(bytes=rng.randbytes(16))), str(uuid.UUID(bytes=rpi)))
                adv = Advertisement(ts, address, "random", service_uuids=uuids)
            else:
                aem = crypto.aem_crypt(aemks[cid], rpi, bytes([0x40, rng.randrange(256), 0, 0]))
                adv = Advertisement(
                    ts, address, "random", service_data={EN_SERVICE_UUID: rpi + aem},
                    service_uuids=(EN_SERVICE_UUID,),
                )
            world.line(adv, expect, None if expect is None else KeyKind.HALLWAY_V1)
        elif kind == "irk":
            cid = rng.choice([*sorted(irks), "revoked"])
            if cid == "revoked":
                world.line(Advertisement(ts, random_rpa(rng, revoked_k), "random"), None, None)
            else:
                world.line(Advertisement(ts, rpa_of(cid, ts), "random"), cid, KeyKind.IRK)
        elif kind == "ibeacon":
            cid = rng.choice([*sorted(world.ibeacons), "c-0001"])
            if cid == "c-0001":
                payload = SPEC_IBEACON
            else:
                beacon_uuid, major, minor = world.ibeacons[cid]
                payload = (b"\x02\x15" + beacon_uuid + major.to_bytes(2, "big")
                           + minor.to_bytes(2, "big") + b"\xc5")
            adv = Advertisement(ts, address, "random", manufacturer_data={76: payload})
            world.line(adv, cid, KeyKind.IBEACON)
        elif kind == "eddystone":
            cid = rng.choice(["ed-0", "c-0001"])
            if cid == "c-0001":
                payload = SPEC_EDDYSTONE
            else:
                ns, inst = world.eddystones[cid]
                payload = b"\x00\xe3" + ns + inst
            adv = Advertisement(ts, address, "random",
                                service_data={EDDYSTONE_SERVICE_UUID: payload})
            world.line(adv, cid, KeyKind.EDDYSTONE_UID)
        else:
            cid = rng.choice([*sorted(world.addresses), "c-0001"])
            badge = "C4:7C:8D:6A:12:34" if cid == "c-0001" else world.addresses[cid]
            address_type = "public" if badge.startswith("00") else "random"
            world.line(Advertisement(ts, badge, address_type), cid, KeyKind.ADDRESS)
        if rng.random() < 0.02:
            world.bad_line(rng.choice(["{not json", '{"ts": "soon", "address": "x"}', "[]"]))


def stranger(world: World, ts: float, address: str) -> None:
    rng = world.rng
    pick = rng.randrange(7)
    if pick == 0:
        adv = Advertisement(ts, address, "random")
    elif pick == 1:  # Apple continuity (Nearby Info / Handoff): company 76, not an iBeacon
        frame = rng.choice([b"\x10\x05", b"\x0c\x0e", b"\x12\x19"])
        adv = Advertisement(ts, address, "random",
                            manufacturer_data={76: frame + rng.randbytes(frame[1])})
    elif pick == 2:  # someone else's Exposure Notification frame
        adv = Advertisement(ts, address, "random",
                            service_data={EN_SERVICE_UUID: rng.randbytes(20)})
    elif pick == 3:  # another app's UUIDs and someone else's 0xFFFF data
        adv = Advertisement(ts, address, "random",
                            service_uuids=(str(uuid.UUID(bytes=rng.randbytes(16))),),
                            manufacturer_data={0xFFFF: rng.randbytes(12)})
    elif pick == 4:  # a public address we do not know, an Eddystone URL beacon
        adv = Advertisement(ts, "00:1B:DC:" + ":".join(f"{rng.randrange(256):02X}"
                                                       for _ in range(3)), "public",
                            service_data={EDDYSTONE_SERVICE_UUID: b"\x10\xf8\x03hallway"})
    elif pick == 5:  # a truncated iBeacon and a truncated hallway-v1 frame
        adv = Advertisement(ts, address, "random",
                            manufacturer_data={76: SPEC_IBEACON[:12], 0xFFFF: b"HW\x01\x00"})
    else:  # a stranger's hallway-v1 frame (unknown key)
        adv = Advertisement(ts, address, "random",
                            manufacturer_data={0xFFFF: b"HW\x01" + rng.randbytes(17)})
    world.line(adv, None, None)


async def store_contacts(db: Path, world: World) -> None:
    store = await SqliteStore.open(db)
    async with store:
        for contact in world.contacts:
            await store.add_contact(contact)
        revoked = Contact("revoked", "Gone", keys=(
            ContactKey(KeyKind.HALLWAY_V1, world.hallway["revoked"].hex()),
        ))
        await store.add_contact(revoked)
        await store.revoke("revoked", now=T0 - 60)


def run_resolve(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "HALLWAY_CONFIG"}
    return subprocess.run(
        [sys.executable, "-m", "hallway", "resolve", *args],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )


def test_resolve_labels_every_line_of_a_mixed_trace(tmp_path: Path) -> None:
    world = build_world()
    fill_trace(world)
    db = tmp_path / "contacts.db"
    asyncio.run(store_contacts(db, world))
    trace = tmp_path / "trace.jsonl"
    trace.write_text("\n".join(world.lines) + "\n")
    out = tmp_path / "labels.jsonl"
    result = run_resolve(str(trace), "--db", str(db), "--out", str(out))
    assert result.returncode == 0, result.stderr
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(got) == len(world.answers)
    wrong = []
    for answer, label in zip(world.answers, got, strict=True):
        if "error" in answer:
            ok = set(label) == {"line", "error"} and isinstance(label["error"], str)
            ok = ok and label["line"] == answer["line"] and bool(label["error"])
        else:
            ok = label == answer
        if not ok:
            wrong.append((answer, label))
    assert wrong == []
    # the trace really mixes everything
    labels = [label.get("via") for label in got]
    for kind in KeyKind:
        assert labels.count(kind.value) >= 10, kind
    assert sum(1 for label in got if label.get("contact") is None and "error" not in label) > 2000
    assert any("error" in label for label in got)
    assert any(label.get("contact") == "expiring" for label in got)
    assert "matched" in result.stderr
    assert "malformed" in result.stderr


def test_resolve_to_stdout_and_errors(tmp_path: Path) -> None:
    world = build_world()
    db = tmp_path / "contacts.db"
    asyncio.run(store_contacts(db, world))
    adv = Advertisement(T0, "70:81:94:0D:FB:AA", "random")
    trace = tmp_path / "trace.jsonl"
    trace.write_text(json.dumps(advertisement_json(adv)) + "\n\n" + "nope\n")
    result = run_resolve(str(trace), "--db", str(db))
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines[0] == {"line": 1, "contact": "c-0001", "via": "irk"}
    assert lines[1]["line"] == 3
    assert lines[1]["error"] == "not valid JSON"
    missing = run_resolve(str(tmp_path / "absent.jsonl"), "--db", str(db))
    assert missing.returncode == 1
    assert "cannot read trace" in missing.stderr
    no_db = run_resolve(str(trace), "--db", str(tmp_path / "absent.db"))
    assert no_db.returncode != 0
    assert not (tmp_path / "absent.db").exists()
