"""The compact contact book: what it gives back, when keys count as changed, what removal leaves."""

from __future__ import annotations

from hallway.config import Config
from hallway.events import event_json
from hallway.identity import crypto
from hallway.identity.book import ContactBook
from hallway.models import (
    Advertisement,
    Contact,
    ContactKey,
    EventType,
    KeyKind,
    PresenceEvent,
    Sighting,
)
from hallway.pipeline import Pipeline

K = "75c734c6dd1a782de7a965da5eb93125"


def full(**changes: object) -> Contact:
    fields: dict[str, object] = {
        "id": "c-0001", "name": "Ada Lovelace ✓", "org": "Analytical", "title": "Countess",
        "handles": {"github": "ada", "email": "ada@example.org"}, "tags": ("speaker", "vip"),
        "granted_at": 1.0, "expires_at": 2e9, "calibration_db": -3.5, "display": True,
        "knows": frozenset({"c-0002", "c-0003"}),
        "keys": (ContactKey(KeyKind.HALLWAY_V1, K),),
    }
    fields.update(changes)
    return Contact(**fields)  # type: ignore[arg-type]


def test_events_built_from_the_book_carry_every_public_field() -> None:
    book = ContactBook()
    original = full()
    book.put(original)
    held = book.get("c-0001")
    assert held is not None
    event = PresenceEvent(EventType.ARRIVED, 100.0, "c-0001", zone="near", distance_m=1.5,
                          rssi=-60.0, via=KeyKind.HALLWAY_V1)
    assert event_json(event, seq=1, scanner="s", contact=held) == event_json(
        event, seq=1, scanner="s", contact=original)
    assert held.expires_at == 2e9
    assert held.calibration_db == -3.5
    assert held.keys == ()  # keys live in the key tables only
    plain = Contact("c-0002", "Bob")
    book.put(plain)
    again = book.get("c-0002")
    assert again is not None
    assert event_json(event, seq=2, scanner="s", contact=again) == event_json(
        event, seq=2, scanner="s", contact=plain)


def test_put_says_whether_the_keys_changed() -> None:
    book = ContactBook()
    assert book.put(full())
    assert not book.put(full(name="Ada King", tags=()))  # details only
    got = book.get("c-0001")
    assert got is not None
    assert got.name == "Ada King"
    assert got.tags == ()
    assert book.put(full(keys=(ContactKey(KeyKind.HALLWAY_V1, "00" * 16),)))
    assert book.put(full(keys=()))
    assert not book.put(full(keys=()))


def test_consent_and_calibration_follow_updates_and_removal() -> None:
    book = ContactBook()
    book.put(full(expires_at=50.0))
    assert book.active("c-0001", 49.0)
    assert not book.active("c-0001", 50.0)
    book.put(full(expires_at=None, calibration_db=0.0))
    assert book.active("c-0001", 1e12)
    assert book.expires_at("c-0001") is None
    assert book.calibration_db("c-0001") == 0.0
    got = book.get("c-0001")
    assert got is not None
    assert got.expires_at is None
    assert book.pop("c-0001")
    assert book.get("c-0001") is None
    assert not book.active("c-0001", 0.0)
    assert len(book) == 0
    assert "c-0001" not in book
    assert not book.pop("c-0001")


def test_pipeline_renamed_contact_keeps_resolving_and_events_say_the_new_name() -> None:
    pipeline = Pipeline(Config())
    ts = 2642976 * 600 + 30.0
    pipeline.load_contacts([full(expires_at=None)], now=ts)
    aes = pipeline.stats()["aes_ops"]
    pipeline.upsert_contact(full(expires_at=None, name="Ada King"), now=ts)
    assert pipeline.stats()["aes_ops"] == aes  # same keys: the RPI table was left alone
    contact = pipeline.contact("c-0001")
    assert contact is not None
    assert contact.name == "Ada King"
    rpi = crypto.rpi_for_interval(crypto.derive_rpik(bytes.fromhex(K)), 2642976)

    adv = Advertisement(ts, "5A:11:22:33:44:55", "random",
                        manufacturer_data={0xFFFF: b"HW\x01" + rpi})
    assert pipeline._resolver.resolve(adv) is not None
    events = pipeline.remove_contact("c-0001", now=ts)
    assert [e.type for e in events] == [EventType.REVOKED]
    assert pipeline.contact("c-0001") is None
    assert pipeline._resolver.resolve(adv) is None
    assert pipeline.stats()["contacts"] == 0
    assert pipeline.sighted(Sighting(ts, "c-0001", KeyKind.HALLWAY_V1, -60, None, "s")) == []
