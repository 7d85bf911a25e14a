"""The identity resolver: SPEC vectors in every carrier, consent, revocation, rolling, caches."""

from __future__ import annotations

import math
import random
import uuid

import pytest
from bluetooth_data_tools import get_cipher_for_irk, resolve_private_address
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hallway.config import IdentityConfig
from hallway.identity import crypto
from hallway.identity import irk as irk_module
from hallway.identity.irk import IrkCache
from hallway.identity.resolver import Resolver
from hallway.models import Advertisement, Contact, ContactKey, KeyKind, Match
from hallway.parsing.frames import BLUETOOTH_BASE_SUFFIX, EDDYSTONE_SERVICE_UUID, EN_SERVICE_UUID

K = "75c734c6dd1a782de7a965da5eb93125"
RPIK = crypto.derive_rpik(bytes.fromhex(K))
IRK = "ec0234a357c8ad05341010a60a397d9b"
IBEACON_KEY = "426c7565-4368-6172-6d42-6561636f6e73/3838/4949"
IBEACON = bytes.fromhex("0215426c7565436861726d426561636f6e730efe1355c5")
EDDYSTONE_KEY = "12345678901234678901/000000000001"
EDDYSTONE = bytes.fromhex("00e3123456789012346789010000000000010000")
BADGE = "C4:7C:8D:6A:12:34"
I0 = 2642976
TS = I0 * 600 + 30.0  # inside the vectors' interval
STRANGER = "5A:11:22:33:44:55"


def ada(**changes: object) -> Contact:
    fields: dict[str, object] = {
        "id": "c-0001",
        "name": "Ada",
        "keys": (
            ContactKey(KeyKind.HALLWAY_V1, K),
            ContactKey(KeyKind.IRK, IRK),
            ContactKey(KeyKind.IBEACON, IBEACON_KEY),
            ContactKey(KeyKind.EDDYSTONE_UID, EDDYSTONE_KEY),
            ContactKey(KeyKind.ADDRESS, BADGE),
        ),
    }
    fields.update(changes)
    return Contact(**fields)  # type: ignore[arg-type]


def make_resolver(*contacts: Contact, now: float = TS, **config: object) -> Resolver:
    resolver = Resolver(IdentityConfig(**config))  # type: ignore[arg-type]
    resolver.set_contacts(contacts, now=now)
    return resolver


def mfr_adv(rpi: bytes, ts: float = TS, *, power: bytes = b"") -> Advertisement:
    return Advertisement(
        ts, STRANGER, "random", manufacturer_data={0xFFFF: b"HW\x01" + rpi + power}
    )


def every_kind(ts: float = TS) -> dict[str, Advertisement]:
    rpi = crypto.rpi_for_interval(RPIK, crypto.interval_number(ts))
    aem = crypto.aem_crypt(crypto.derive_aemk(bytes.fromhex(K)), rpi, bytes.fromhex("40080000"))
    return {
        "mfr": mfr_adv(rpi, ts, power=b"\xc5"),
        "uuid": Advertisement(ts, STRANGER, "random", service_uuids=(str(uuid.UUID(bytes=rpi)),)),
        "en": Advertisement(ts, STRANGER, "random", service_data={EN_SERVICE_UUID: rpi + aem}),
        "irk": Advertisement(ts, "70:81:94:0D:FB:AA", "random"),
        "ibeacon": Advertisement(ts, STRANGER, "random", manufacturer_data={76: IBEACON}),
        "eddystone": Advertisement(
            ts, STRANGER, "random", service_data={EDDYSTONE_SERVICE_UUID: EDDYSTONE}
        ),
        "address": Advertisement(ts, BADGE, "public"),
    }


def test_spec_vectors_resolve_in_every_kind_and_carrier() -> None:
    resolver = make_resolver(ada())
    advs = every_kind()
    assert advs["mfr"].manufacturer_data[0xFFFF][3:19].hex() == "8be6cd371c5c891604bfbe49df845096"
    assert advs["en"].service_data[EN_SERVICE_UUID][16:].hex() == "72033874"
    expected = {
        "mfr": Match("c-0001", KeyKind.HALLWAY_V1, -59),
        "uuid": Match("c-0001", KeyKind.HALLWAY_V1, None),
        "en": Match("c-0001", KeyKind.HALLWAY_V1, 8 - 41),  # AEM metadata tx power +8 dBm
        "irk": Match("c-0001", KeyKind.IRK, None),
        "ibeacon": Match("c-0001", KeyKind.IBEACON, -59),
        "eddystone": Match("c-0001", KeyKind.EDDYSTONE_UID, -70),
        "address": Match("c-0001", KeyKind.ADDRESS, None),
    }
    assert {name: resolver.resolve(adv) for name, adv in advs.items()} == expected
    stats = resolver.stats()
    assert stats["matched"] == 7
    assert stats["matched_hallway_v1"] == 3
    assert stats["matched_irk"] == stats["matched_ibeacon"] == 1
    assert stats["malformed"] == stats["internal_errors"] == 0


def test_irk_sample_negative_cases() -> None:
    resolver = make_resolver(ada())
    assert resolver.resolve(Advertisement(TS, "70:81:94:0D:FB:AB", "random")) is None
    assert resolver.resolve(Advertisement(TS, "70:81:94:0D:FB:AA", "public")) is None
    # the same prand and hash with the first byte's top bits 11: a static address, not an RPA
    assert resolver.resolve(Advertisement(TS, "F0:81:94:0D:FB:AA", "random")) is None
    reversed_key = ada(keys=(ContactKey(KeyKind.IRK, bytes.fromhex(IRK)[::-1].hex()),))
    resolver = make_resolver(reversed_key)
    assert resolver.resolve(Advertisement(TS, "70:81:94:0D:FB:AA", "random")) is None


def test_apple_frames_that_are_not_ibeacons_do_not_match() -> None:
    resolver = make_resolver(ada())
    nearby_info = bytes.fromhex("1005031c1a2b3c")
    adv = Advertisement(TS, STRANGER, "random", manufacturer_data={76: nearby_info})
    assert resolver.resolve(adv) is None
    assert resolver.stats()["malformed"] == 0


def test_other_company_id_and_non_static_address() -> None:
    resolver = make_resolver(ada(), hallway_company_id=0x0A0B)
    rpi = crypto.rpi_for_interval(RPIK, I0)
    assert resolver.resolve(mfr_adv(rpi)) is None
    adv = Advertisement(TS, STRANGER, "random", manufacturer_data={0x0A0B: b"HW\x01" + rpi})
    assert resolver.resolve(adv) == Match("c-0001", KeyKind.HALLWAY_V1, None)
    # a non-resolvable private address is never an address key's match
    resolver = make_resolver(ada(keys=(ContactKey(KeyKind.ADDRESS, "3A:00:00:00:00:01"),)))
    assert resolver.resolve(Advertisement(TS, "3A:00:00:00:00:01", "random")) is None
    assert resolver.resolve(Advertisement(TS, "3A:00:00:00:00:01", "public")) is not None


def test_malformed_frames_are_counted_not_raised() -> None:
    resolver = make_resolver(ada())
    bad = [
        Advertisement(TS, STRANGER, "random", manufacturer_data={0xFFFF: b"HW\x01\x00"}),
        Advertisement(TS, STRANGER, "random", manufacturer_data={76: IBEACON[:10]}),
        Advertisement(TS, STRANGER, "random", service_data={EN_SERVICE_UUID: b"\x01" * 19}),
        Advertisement(TS, STRANGER, "random", service_data={EDDYSTONE_SERVICE_UUID: b""}),
        Advertisement(TS, STRANGER, "random", service_uuids=("not-a-uuid",)),
        Advertisement(math.nan, STRANGER, "random"),
    ]
    for adv in bad:
        assert resolver.resolve(adv) is None
    stats = resolver.stats()
    assert stats["malformed"] == len(bad)
    assert stats["internal_errors"] == 0
    # a malformed frame next to a good one still resolves, and is still counted
    adv = Advertisement(
        TS, BADGE, "public", manufacturer_data={76: IBEACON[:10]}
    )
    assert resolver.resolve(adv) == Match("c-0001", KeyKind.ADDRESS, None)
    assert resolver.stats()["malformed"] == len(bad) + 1


def test_expired_consent_never_matches() -> None:
    resolver = make_resolver(ada(expires_at=TS + 60))
    assert all(resolver.resolve(adv) is not None for adv in every_kind(TS).values())
    assert all(resolver.resolve(adv) is None for adv in every_kind(TS + 60).values())
    assert resolver.stats()["inactive"] == 7


def test_revocation_is_immediate_for_every_kind() -> None:
    other = Contact("c-0002", "Bob", keys=(ContactKey(KeyKind.IRK, "00" * 16),))
    resolver = make_resolver(ada(), other)
    advs = every_kind()
    assert all(resolver.resolve(adv) is not None for adv in advs.values())
    assert resolver.stats()["irk_cache_entries"] == 1
    resolver.remove_contact("c-0001")
    assert all(resolver.resolve(adv) is None for adv in advs.values())
    stats = resolver.stats()
    assert stats["inactive"] == 0  # nothing of the contact is left to even find
    assert stats["contacts"] == 1
    assert stats["token_entries"] == 0
    # a contact revoked in the store comes back with revoked_at set: same effect
    resolver.upsert_contact(ada(), now=TS)
    assert resolver.resolve(advs["irk"]) is not None
    resolver.upsert_contact(ada(revoked_at=TS), now=TS)
    assert all(resolver.resolve(adv) is None for adv in advs.values())


def test_set_contacts_replaces_and_keeps_unchanged() -> None:
    resolver = make_resolver(ada())
    bob = Contact("c-0002", "Bob", keys=(ContactKey(KeyKind.ADDRESS, "00:11:22:33:44:55"),))
    resolver.set_contacts([bob], now=TS)
    assert all(resolver.resolve(adv) is None for adv in every_kind().values())
    assert resolver.resolve(Advertisement(TS, "00:11:22:33:44:55")) == Match(
        "c-0002", KeyKind.ADDRESS, None
    )
    aes_before = resolver.stats()["aes_ops"]
    renamed = Contact("c-0002", "Robert", keys=bob.keys, expires_at=TS + 1)
    resolver.set_contacts([renamed, ada()], now=TS)
    assert resolver.stats()["contacts"] == 2
    assert resolver.resolve(Advertisement(TS + 2, "00:11:22:33:44:55")) is None  # consent ended
    assert resolver.resolve(every_kind()["mfr"]) is not None
    assert resolver.stats()["aes_ops"] > aes_before


def test_upsert_changes_keys_at_once() -> None:
    resolver = make_resolver(ada())
    new_key = "00112233445566778899aabbccddeeff"
    resolver.upsert_contact(ada(keys=(ContactKey(KeyKind.HALLWAY_V1, new_key),)), now=TS)
    assert resolver.resolve(every_kind()["mfr"]) is None
    new_rpi = crypto.rpi_for_interval(crypto.derive_rpik(bytes.fromhex(new_key)), I0)
    assert resolver.resolve(mfr_adv(new_rpi)) == Match("c-0001", KeyKind.HALLWAY_V1, None)


def test_two_hallway_keys_on_one_contact() -> None:
    second = "00112233445566778899aabbccddeeff"
    resolver = make_resolver(
        ada(keys=(ContactKey(KeyKind.HALLWAY_V1, K), ContactKey(KeyKind.HALLWAY_V1, second)))
    )
    for key in (K, second):
        rpi = crypto.rpi_for_interval(crypto.derive_rpik(bytes.fromhex(key)), I0 + 1)
        assert resolver.resolve(mfr_adv(rpi)) is not None


def test_adding_an_irk_rechecks_cached_strangers() -> None:
    bob = Contact("c-0002", "Bob", keys=(ContactKey(KeyKind.IRK, "11" * 16),))
    resolver = make_resolver(bob)
    sample = Advertisement(TS, "70:81:94:0D:FB:AA", "random")
    assert resolver.resolve(sample) is None
    assert resolver.stats()["irk_cache_misses"] == 1
    resolver.upsert_contact(ada(), now=TS)
    assert resolver.resolve(sample) == Match("c-0001", KeyKind.IRK, None)
    stats = resolver.stats()
    assert stats["irk_cache_misses"] == 1  # answered from the re-checked cache
    assert stats["irk_cache_hits"] == 1


def test_irk_cache_is_bounded_in_size_and_age() -> None:
    resolver = make_resolver(ada(), irk_cache_size=16, irk_cache_ttl_s=60.0)
    for n in range(100):
        prand = bytes([0x40 | (n % 64), n, 7])
        address = crypto.make_rpa(b"\x01" * 16, prand)
        resolver.resolve(Advertisement(TS + n * 0.01, address, "random"))
    stats = resolver.stats()
    assert stats["irk_cache_entries"] == 16
    assert stats["irk_cache_misses"] == 100
    assert stats["aes_ops"] >= 100
    sample = Advertisement(TS + 10, "70:81:94:0D:FB:AA", "random")
    assert resolver.resolve(sample) is not None
    assert resolver.resolve(Advertisement(TS + 50, sample.address, "random")) is not None
    assert resolver.stats()["irk_cache_misses"] == 101
    assert resolver.resolve(Advertisement(TS + 71, sample.address, "random")) is not None
    assert resolver.stats()["irk_cache_misses"] == 102  # re-resolved after its life ended
    while resolver.maintain(TS + 500):
        pass
    assert resolver.stats()["irk_cache_entries"] == 0


@pytest.mark.parametrize("maintained", [True, False])
def test_skew_window_and_boundary(maintained: bool) -> None:
    """At clock interval i, RPIs of i-2..i+1 resolve and i-3, i+2 do not, across a boundary."""
    resolver = make_resolver(ada(), now=I0 * 600)

    def accepted(ts: float) -> list[int]:
        if maintained:
            while resolver.maintain(ts):
                pass
        return [
            offset
            for offset in range(-4, 4)
            if resolver.resolve(mfr_adv(crypto.rpi_for_interval(RPIK, I0 + offset), ts))
        ]

    assert accepted(I0 * 600) == [-2, -1, 0, 1]
    assert accepted(I0 * 600 + 599.999) == [-2, -1, 0, 1]
    assert accepted((I0 + 1) * 600) == [-1, 0, 1, 2]
    assert accepted((I0 + 2) * 600 + 10) == [0, 1, 2, 3]
    assert accepted(I0 * 600 + 1) == [-2, -1, 0, 1]  # the clock may go back (a new replay)


def test_rolling_precompute_in_slices_keeps_boundaries_free() -> None:
    keys = [f"{n:032x}" for n in range(1, 301)]
    contacts = [
        Contact(f"c-{n}", "x", keys=(ContactKey(KeyKind.HALLWAY_V1, key),))
        for n, key in enumerate(keys)
    ]
    resolver = make_resolver(*contacts, now=I0 * 600)
    assert resolver.stats()["token_entries"] == 4 * 300  # i-2 .. i+1
    while resolver.maintain(I0 * 600):
        pass
    assert resolver.stats()["token_entries"] == 5 * 300  # and the next one, precomputed
    rpiks = [crypto.derive_rpik(bytes.fromhex(k)) for k in keys]
    for step in range(1, 5):
        now = (I0 + step) * 600 + 1
        slices = 0
        while resolver.maintain(now, budget_s=1e-9):
            slices += 1
        assert slices >= 300 // 64  # the work was split
        builds = resolver.stats()["token_sync_builds"]
        # crossing into the next interval finds everything ready
        nxt = (I0 + step + 1) * 600
        for n in (0, 150, 299):
            rpi = crypto.rpi_for_interval(rpiks[n], I0 + step + 2)
            assert resolver.resolve(mfr_adv(rpi, nxt)) == Match(f"c-{n}", KeyKind.HALLWAY_V1)
        assert resolver.stats()["token_sync_builds"] == builds
        assert resolver.stats()["token_entries"] == 5 * 300


def test_contact_added_mid_roll_is_in_every_interval() -> None:
    contacts = [
        Contact(f"c-{n}", "x", keys=(ContactKey(KeyKind.HALLWAY_V1, f"{n:032x}"),))
        for n in range(1, 200)
    ]
    resolver = make_resolver(*contacts, now=I0 * 600)
    now = (I0 + 1) * 600
    assert resolver.maintain(now, budget_s=1e-9)  # a build of I0+3 has started, not finished
    resolver.upsert_contact(ada(), now=now)
    resolver.remove_contact("c-5")
    while resolver.maintain(now, budget_s=1e-9):
        pass
    ts = (I0 + 2) * 600
    assert resolver.resolve(mfr_adv(crypto.rpi_for_interval(RPIK, I0 + 3), ts)) is not None
    gone = crypto.derive_rpik(bytes.fromhex(f"{5:032x}"))
    assert resolver.resolve(mfr_adv(crypto.rpi_for_interval(gone, I0 + 3), ts)) is None
    assert resolver.stats()["token_entries"] == 5 * 199


def test_jump_ahead_without_maintain_rebuilds_and_stays_bounded() -> None:
    contacts = [
        Contact(f"c-{n}", "x", keys=(ContactKey(KeyKind.HALLWAY_V1, f"{n:032x}"),))
        for n in range(1, 51)
    ]
    resolver = make_resolver(ada(), *contacts)
    later = I0 + 6 * 24  # a day later
    for step in range(12):
        ts = (later + step) * 600 + 5
        rpi = crypto.rpi_for_interval(RPIK, later + step - 2)
        assert resolver.resolve(mfr_adv(rpi, ts)) is not None
        assert resolver.stats()["token_entries"] <= 7 * 51


@given(
    irks=st.lists(st.binary(min_size=16, max_size=16), min_size=1, max_size=4, unique=True),
    which=st.integers(min_value=-1, max_value=3),
    raw=st.binary(min_size=6, max_size=6),
)
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_irk_resolution_agrees_with_bluetooth_data_tools(
    irks: list[bytes], which: int, raw: bytes
) -> None:
    if 0 <= which < len(irks):
        prand = bytes([0x40 | (raw[0] & 0x3F)]) + raw[1:3]
        block = Cipher(algorithms.AES(irks[which]), modes.ECB()).encryptor().update(
            bytes(13) + prand
        )
        raw = prand + block[13:]
    address = ":".join(f"{b:02X}" for b in raw)
    expected = {
        f"c-{n}"
        for n, irk in enumerate(irks)
        if resolve_private_address(get_cipher_for_irk(irk), address)
    }
    resolver = make_resolver(
        *[
            Contact(f"c-{n}", "x", keys=(ContactKey(KeyKind.IRK, irk.hex()),))
            for n, irk in enumerate(irks)
        ]
    )
    match = resolver.resolve(Advertisement(TS, address, "random"))
    if expected:
        assert match is not None
        assert match.contact_id in expected
        assert match.via is KeyKind.IRK
    else:
        assert match is None
    if 0 <= which < len(irks):
        assert expected


_COMPANIES = st.one_of(st.sampled_from([0xFFFF, 76, 0]), st.integers(0, 0xFFFF))
_PAYLOADS = st.one_of(
    st.binary(max_size=40),
    st.binary(max_size=24).map(lambda b: b"HW\x01" + b),
    st.binary(max_size=24).map(lambda b: b"\x02\x15" + b),
)
_SERVICES = st.one_of(
    st.sampled_from([EN_SERVICE_UUID, EDDYSTONE_SERVICE_UUID]), st.text(max_size=40)
)
_SERVICE_PAYLOADS = st.one_of(
    st.binary(max_size=40),
    st.binary(min_size=20, max_size=20),
    st.binary(max_size=22).map(lambda b: b"\x00" + b),
)
_UUIDS = st.one_of(st.binary(min_size=16, max_size=16).map(lambda b: str(uuid.UUID(bytes=b))),
                   st.text(max_size=40),
                   st.text(max_size=10).map(lambda t: t + BLUETOOTH_BASE_SUFFIX))
_ADDRESSES = st.one_of(
    st.binary(min_size=6, max_size=6).map(lambda b: ":".join(f"{x:02X}" for x in b)),
    st.text(max_size=20),
)


_ADVERTISEMENTS = st.builds(
    Advertisement,
    ts=st.one_of(st.floats(), st.floats(min_value=TS - 3600, max_value=TS + 3600)),
    address=_ADDRESSES,
    address_type=st.one_of(st.sampled_from(["random", "public"]), st.text(max_size=8)),
    rssi=st.integers(-128, 20),
    tx_power=st.one_of(st.none(), st.integers(-128, 127)),
    manufacturer_data=st.dictionaries(_COMPANIES, _PAYLOADS, max_size=3),
    service_data=st.dictionaries(_SERVICES, _SERVICE_PAYLOADS, max_size=3),
    service_uuids=st.lists(_UUIDS, max_size=3).map(tuple),
)


@given(advs=st.lists(_ADVERTISEMENTS, min_size=1, max_size=5))
@settings(max_examples=300, deadline=None)
def test_random_bytes_in_every_field_never_raise(advs: list[Advertisement]) -> None:
    resolver = make_resolver(ada(), irk_cache_size=16)
    for adv in advs:
        result = resolver.resolve(adv)
        assert result is None or isinstance(result, Match)
        resolver.maintain(adv.ts if math.isfinite(adv.ts) else TS, budget_s=1e-4)
    stats = resolver.stats()
    assert stats["internal_errors"] == 0
    assert stats["advertisements"] == len(advs)


def rpa_of(rng_bytes: bytes, irk: bytes | None = None) -> str:
    prand = bytes([0x40 | (rng_bytes[0] & 0x3F)]) + rng_bytes[1:3]
    if irk is None:
        return ":".join(f"{b:02X}" for b in prand + rng_bytes[3:6])
    return crypto.make_rpa(irk, prand)


def test_irk_cache_recheck_finds_exactly_the_new_keys_addresses() -> None:
    rng = random.Random(5)
    cache = IrkCache(max_entries=1000, ttl_s=1800.0)
    cache.set_irks("other", [rng.randbytes(16)])
    newcomer = rng.randbytes(16)
    theirs = {rpa_of(rng.randbytes(6), newcomer) for _ in range(7)}
    strangers = {rpa_of(rng.randbytes(6)) for _ in range(600)}
    for address in sorted(theirs | strangers):
        assert cache.resolve(address, 10.0) is None
    misses = cache.misses
    cache.add_many([("new", [newcomer]), ("third", [rng.randbytes(16)])])
    for address in theirs:
        key = cache.resolve(address, 11.0)
        assert key is not None
        assert key.contact_id == "new"
    assert all(cache.resolve(address, 11.0) is None for address in strangers)
    assert cache.misses == misses  # every answer came from the re-checked cache
    cache.remove("new")
    assert len(cache) == len(strangers)
    assert all(cache.resolve(address, 12.0) is None for address in theirs)


def test_irk_cache_ring_keeps_the_newest_answers() -> None:
    rng = random.Random(6)
    cache = IrkCache(max_entries=16, ttl_s=1800.0)
    cache.set_irks("x", [rng.randbytes(16)])
    addresses = [rpa_of(rng.randbytes(6)) for _ in range(40)]
    for n, address in enumerate(addresses):
        cache.resolve(address, float(n))
    assert len(cache) == 16
    assert cache.evicted == 24
    hits = cache.hits
    for address in addresses[-16:]:
        cache.resolve(address, 50.0)
    assert cache.hits == hits + 16
    cache.resolve(addresses[0], 51.0)
    assert cache.hits == hits + 16  # long gone: a miss
    assert len(cache) == 16


def test_irk_cache_bulk_add_drops_no_one_answers_past_the_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = random.Random(7)
    cache = IrkCache(max_entries=100, ttl_s=1800.0)
    cache.set_irks("x", [rng.randbytes(16)])
    newcomer = rng.randbytes(16)
    address = rpa_of(rng.randbytes(6), newcomer)
    cache.resolve(address, 1.0)
    for _ in range(50):
        cache.resolve(rpa_of(rng.randbytes(6)), 1.0)
    monkeypatch.setattr(irk_module, "RECHECK_LIMIT", 10)
    cache.add_many([("new", [newcomer])])
    assert len(cache) == 0
    key = cache.resolve(address, 2.0)
    assert key is not None
    assert key.contact_id == "new"


def test_en_power_needs_a_known_metadata_version() -> None:
    resolver = make_resolver(ada())
    rpi = crypto.rpi_for_interval(RPIK, I0)
    aemk = crypto.derive_aemk(bytes.fromhex(K))
    for metadata, power in ((b"\x40\xf6\x00\x00", -10 - 41), (b"\x80\x08\x00\x00", None)):
        aem = crypto.aem_crypt(aemk, rpi, metadata)
        adv = Advertisement(TS, STRANGER, "random", service_data={EN_SERVICE_UUID: rpi + aem})
        assert resolver.resolve(adv) == Match("c-0001", KeyKind.HALLWAY_V1, power)


def test_identity_continues_across_rotations() -> None:
    """Rotating RPIs and addresses of one contact all resolve to the same contact id."""
    resolver = make_resolver(ada(), now=I0 * 600)
    rng = random.Random(9)
    seen: set[str] = set()
    addresses: set[str] = set()
    for step in range(8):
        ts = I0 * 600 + step * 450.0
        resolver.maintain(ts)
        rpi = crypto.rpi_for_interval(RPIK, crypto.interval_number(ts))
        address = rpa_of(rng.randbytes(6), bytes.fromhex(IRK))
        addresses.add(address)
        for adv in (mfr_adv(rpi, ts), Advertisement(ts, address, "random")):
            match = resolver.resolve(adv)
            assert match is not None
            seen.add(match.contact_id)
    assert seen == {"c-0001"}
    assert len(addresses) == 8


# -- the screen: strangers skipped before a record is built -----------------------------------

def screened(resolver: Resolver, adv: Advertisement) -> bool:
    """``Resolver.screen`` on the raw fields, as a source sees them (any case)."""
    return resolver.screen(adv.address.lower(), adv.address_type, adv.manufacturer_data,
                           {k.upper(): v for k, v in adv.service_data.items()},
                           [u.upper() for u in adv.service_uuids])


def test_screen_passes_every_kind_and_skips_strangers() -> None:
    resolver = make_resolver(ada())
    for kind, adv in every_kind().items():
        assert screened(resolver, adv), kind
    strangers = [
        Advertisement(TS, STRANGER, "random"),  # resolvable private, but only with IRKs loaded
        Advertisement(TS, "1A:11:22:33:44:55", "random"),  # non-resolvable
        Advertisement(TS, "C4:7C:8D:6A:99:99", "public"),  # not an address key
        Advertisement(TS, "1B:11:22:33:44:55", "random", manufacturer_data={76: b"\x10\x05\x01"}),
        Advertisement(TS, STRANGER, "public", manufacturer_data={0xFFFF: b"XY\x01"},
                      service_data={"0000180f-0000-1000-8000-00805f9b34fb": b"\x50"},
                      service_uuids=("0000fe9f-0000-1000-8000-00805f9b34fb",)),
    ]
    no_irks = make_resolver(ada(keys=(ContactKey(KeyKind.ADDRESS, BADGE),)))
    for adv in strangers:
        assert not screened(no_irks, adv), adv
    assert screened(resolver, strangers[0])  # IRKs loaded: every RPA must be tried
    resolver.set_contacts([], now=TS)  # revoked: its address is a stranger's at once
    assert not screened(resolver, every_kind()["address"])
    assert not screened(resolver, strangers[0])


_FINITE_ADVERTISEMENTS = st.one_of(
    _ADVERTISEMENTS.filter(lambda a: math.isfinite(a.ts)),
    st.sampled_from(sorted(every_kind().items())).map(lambda item: item[1]),
)


@given(adv=_FINITE_ADVERTISEMENTS, irks=st.booleans())
@settings(max_examples=500, deadline=None)
def test_screen_only_skips_what_resolve_would_pass_over(adv: Advertisement, irks: bool) -> None:
    """Whatever the screen rules out, resolve neither matches nor counts (a malformed frame
    is counted, so it must get through)."""
    contact = ada() if irks else ada(keys=tuple(k for k in ada().keys if k.kind != KeyKind.IRK))
    resolver = make_resolver(contact, irk_cache_size=16)
    passes = screened(resolver, adv)
    before = resolver.stats()
    match = resolver.resolve(adv)
    after = resolver.stats()
    if not passes:
        assert match is None
        del before["advertisements"], after["advertisements"]
        assert after == before


# -- the IRK trial budget ------------------------------------------------------------------------


def test_irk_budget_tries_at_once_while_it_lasts_then_defers() -> None:
    rng = random.Random(11)
    irks = [rng.randbytes(16) for _ in range(10)]
    cache = IrkCache(max_entries=1000, ttl_s=1800.0, trials_per_s=50)  # 5 addresses a second
    cache.add_many([(f"c{i}", [irk]) for i, irk in enumerate(irks)])
    strangers = [rpa_of(rng.randbytes(6)) for _ in range(20)]
    for address in strangers[:5]:
        assert cache.resolve(address, 100.2, -60) is None
    assert cache.misses == 5
    assert cache.deferred == 0
    assert cache.aes_ops == 50
    for address in strangers[5:]:
        assert cache.resolve(address, 100.5, -60) is None
    assert cache.deferred == 15
    assert cache.pending == 15
    assert cache.aes_ops == 50  # nothing tried past the budget
    # A contact's new address in the same second waits too: None now, not cached as "no one".
    mine = rpa_of(rng.randbytes(6), irks[3])
    assert cache.resolve(mine, 100.9, -40) is None
    assert len(cache) == 5
    # Next second: the strongest waiting (the contact's, -40 dBm) is granted first.
    key = cache.resolve(mine, 101.1, -41)
    assert key is not None
    assert key.contact_id == "c3"
    assert cache.aes_ops <= 50 + 10


def test_irk_budget_grants_the_strongest_pending_first() -> None:
    rng = random.Random(12)
    irk = rng.randbytes(16)
    cache = IrkCache(max_entries=1000, ttl_s=1800.0, trials_per_s=3)  # 3 addresses a second
    cache.set_irks("c", [irk])
    flood = [rpa_of(rng.randbytes(6)) for _ in range(200)]
    for n, address in enumerate(flood):
        cache.resolve(address, 10.0 + n / 400, -90 + n % 20)  # -90..-71 dBm
    mine = rpa_of(rng.randbytes(6), irk)
    assert cache.resolve(mine, 10.6, -55) is None
    # Second 11: three slots; the contact's is strongest, so it is among them.
    assert cache.resolve(flood[0], 11.0, -90) is None  # tried in second 10: a cached "no one"
    key = cache.resolve(mine, 11.3, -55)
    assert key is not None
    assert key.contact_id == "c"
    # Once answered it is a cache hit: no budget needed, never deferred again.
    deferred = cache.deferred
    for t in range(50):
        assert cache.resolve(mine, 11.5 + t / 100, -55) is key
    assert cache.deferred == deferred


def test_irk_budget_bounds_trials_per_second_under_any_flood() -> None:
    rng = random.Random(13)
    cache = IrkCache(max_entries=100_000, ttl_s=1800.0, trials_per_s=400)
    cache.add_many([(f"c{i}", [rng.randbytes(16)]) for i in range(40)])  # 10 addresses/s
    per_second: dict[int, int] = {}
    for n in range(20_000):  # 2,000 new addresses a second for 10 s, each heard twice
        now = 50.0 + n / 2000
        address = rpa_of(rng.randbytes(6))
        before = cache.aes_ops
        cache.resolve(address, now, rng.randint(-100, -30))
        cache.resolve(address, now + 0.0001, -100)
        per_second[int(now)] = per_second.get(int(now), 0) + cache.aes_ops - before
    assert max(per_second.values()) <= 400 + 40
    assert cache.pending <= irk_module.PENDING_MAX
    assert cache.deferred > 19_000


def test_resolver_budget_from_config_and_unlimited_with_zero() -> None:
    rng = random.Random(14)
    contacts = [
        Contact(id=f"p{i}", name=f"P{i}", keys=(ContactKey(KeyKind.IRK, rng.randbytes(16).hex()),))
        for i in range(20)
    ]
    for trials, expect_deferred in ((40, True), (0, False)):
        resolver = make_resolver(*contacts, irk_trials_per_s=trials)
        for _ in range(30):
            adv = Advertisement(ts=TS, address=rpa_of(rng.randbytes(6)), address_type="random",
                                rssi=-60)
            assert resolver.resolve(adv) is None
        assert (resolver.stats()["irk_deferred"] > 0) is expect_deferred


def test_screen_skips_a_resolvable_address_already_answered_no_one() -> None:
    resolver = make_resolver(ada())
    stranger = Advertisement(TS, STRANGER, "random", rssi=-60)
    mine = Advertisement(TS, crypto.make_rpa(bytes.fromhex(IRK), b"\x44\x55\x66"), "random")
    assert screened(resolver, stranger)
    assert screened(resolver, mine)
    assert resolver.resolve(stranger) is None
    match = resolver.resolve(mine)
    assert match is not None
    assert not screened(resolver, stranger)  # a known stranger's: skipped from now on
    assert screened(resolver, mine)  # a contact's cached answer still goes through


def test_irk_budget_grant_waits_for_a_slow_advertiser() -> None:
    """A phone heard only every second or so keeps its grant until it is heard again."""
    rng = random.Random(15)
    irk = rng.randbytes(16)
    cache = IrkCache(max_entries=10_000, ttl_s=1800.0, trials_per_s=5)
    cache.set_irks("c", [irk])
    mine = rpa_of(rng.randbytes(6), irk)
    for t in range(2):  # a flood keeps the budget spent every second
        for _ in range(50):
            cache.resolve(rpa_of(rng.randbytes(6)), 20.0 + t + rng.random(), -80)
        if t == 0:
            assert cache.resolve(mine, 20.5, -50) is None  # waiting
    key = cache.resolve(mine, 21.8, -50)  # heard again 1.3 s later: its grant held
    assert key is not None
    assert key.contact_id == "c"


def test_irk_budget_ranks_a_repeated_address_above_one_shot_spam() -> None:
    """BLE spam uses each address once; a phone repeats its address: heard twice, even weakly,
    it goes before any number of stronger one-shot addresses."""
    rng = random.Random(16)
    irk = rng.randbytes(16)
    cache = IrkCache(max_entries=10_000, ttl_s=1800.0, trials_per_s=2)
    cache.set_irks("c", [irk])
    mine = rpa_of(rng.randbytes(6), irk)
    for n in range(300):
        cache.resolve(rpa_of(rng.randbytes(6)), 40.0 + n / 400, -35)  # strong, once each
    assert cache.resolve(mine, 40.5, -88) is None
    assert cache.resolve(mine, 40.9, -90) is None  # heard twice now
    key = cache.resolve(mine, 41.4, -89)
    assert key is not None
    assert key.contact_id == "c"


def test_irk_budget_a_phone_heard_twice_ranks_repeated_even_after_a_flood() -> None:
    """A flood pushes the phone's first hearing out of the bounded pending; its second still
    ranks it as repeated, ahead of every one-shot spam address."""
    rng = random.Random(17)
    irk = rng.randbytes(16)
    cache = IrkCache(max_entries=100_000, ttl_s=1800.0, trials_per_s=1)
    cache.set_irks("c", [irk])
    mine = rpa_of(rng.randbytes(6), irk)
    cache.resolve(rpa_of(rng.randbytes(6)), 60.0, -40)  # the second's budget, spent
    assert cache.resolve(mine, 60.1, -60) is None
    for n in range(irk_module.PENDING_MAX * 3):  # strong one-shot spam, same second
        cache.resolve(rpa_of(rng.randbytes(6)), 60.2 + n / 100_000, -30)
    assert cache.pending_dropped > 0
    assert cache.resolve(mine, 60.9, -60) is None  # heard again: now ranked as repeated
    key = cache.resolve(mine, 61.5, -60)
    assert key is not None
    assert key.contact_id == "c"


def test_irk_budget_a_phone_resolves_at_its_second_hearing_under_one_shot_spam() -> None:
    """Grants go to repeated addresses only: one-shot spam holds none of the budget, so a
    phone heard again is tried at once (not at the next grant and the hearing after it)."""
    rng = random.Random(18)
    irk = rng.randbytes(16)
    cache = IrkCache(max_entries=100_000, ttl_s=1800.0, trials_per_s=5)
    cache.set_irks("c", [irk])
    mine = rpa_of(rng.randbytes(6), irk)
    for second in range(3):  # 200 strong one-shot spam addresses a second
        for n in range(200):
            cache.resolve(rpa_of(rng.randbytes(6)), 70.0 + second + n / 200, -30)
    assert cache.granted_total == 0  # never a grant to an address heard once
    assert cache.resolve(mine, 72.5, -70) is None  # first hearing: waits
    key = cache.resolve(mine, 73.2, -70)  # heard again in a new window: tried at once
    assert key is not None
    assert key.contact_id == "c"


def test_irk_budget_grants_hold_their_share_of_the_window() -> None:
    """Addresses heard again during a window are tried at once only with budget that the
    window's grants do not hold."""
    rng = random.Random(19)
    cache = IrkCache(max_entries=100_000, ttl_s=1800.0, trials_per_s=3)
    cache.set_irks("c", [rng.randbytes(16)])
    for n in range(3):  # the first three: first come, first tried; the budget is spent
        cache.resolve(rpa_of(rng.randbytes(6)), 80.0 + n / 100, -50)
    waiting = [rpa_of(rng.randbytes(6)) for _ in range(4)]
    for rssi, address in zip((-40, -41, -42, -90), waiting, strict=True):
        assert cache.resolve(address, 80.5, rssi) is None
        assert cache.resolve(address, 80.6, rssi) is None  # repeated, but nothing left
    assert cache.pending == 4
    ops = cache.aes_ops
    # Second 81: the three strongest are granted the whole budget; the weakest, heard again,
    # still waits, and each granted one is tried when it is heard.
    assert cache.resolve(waiting[3], 81.1, -90) is None
    assert cache.aes_ops == ops
    assert cache.granted_total == 3
    for address in waiting[:3]:
        assert cache.resolve(address, 81.2, -40) is None  # tried: a stranger's
    assert cache.aes_ops == ops + 3
    assert cache.resolve(waiting[3], 81.5, -90) is None
    assert cache.aes_ops == ops + 3
    # Second 82: it is granted (or tried at once), within that second's budget.
    assert cache.resolve(waiting[3], 82.1, -90) is None
    assert cache.aes_ops == ops + 4
    assert cache.known_stranger(waiting[3])


def test_a_reused_key_slot_never_answers_for_its_old_key() -> None:
    """A removed key's slot goes to the next key added: none of the old key's RPIs, in any
    interval (tracked, being built, being dropped), may then name the new contact."""
    others = [Contact(f"c-{n}", "x", keys=(ContactKey(KeyKind.HALLWAY_V1, f"{n:032x}"),))
              for n in range(1, 400)]
    resolver = make_resolver(ada(), *others, now=I0 * 600)
    while resolver.maintain(I0 * 600):
        pass
    later = (I0 + 2) * 600 + 1
    assert resolver.maintain(later, budget_s=1e-9)  # I0-2, I0-1 being dropped, I0+3 built
    resolver.remove_contact("c-0001")
    bob_key = "00112233445566778899aabbccddeeff"
    resolver.upsert_contact(
        Contact("c-0002", "Bob", keys=(ContactKey(KeyKind.HALLWAY_V1, bob_key),)), now=later)
    bob_rpik = crypto.derive_rpik(bytes.fromhex(bob_key))
    for clock in (I0 * 600 + 1, later):
        for offset in range(-3, 5):
            assert resolver.resolve(mfr_adv(crypto.rpi_for_interval(RPIK, I0 + offset),
                                            clock)) is None
    while resolver.maintain(later, budget_s=1e-9):
        pass
    for offset in range(-3, 5):
        assert resolver.resolve(mfr_adv(crypto.rpi_for_interval(RPIK, I0 + offset), later)) is None
    assert resolver.resolve(mfr_adv(crypto.rpi_for_interval(bob_rpik, I0 + 2), later)) == Match(
        "c-0002", KeyKind.HALLWAY_V1)
    assert resolver.stats()["token_entries"] == 5 * 400
    assert resolver.stats()["token_keys"] == 400
