"""The identity resolver: advertisement -> (contact, kind, 1 m power) or nothing. Pure core.

For each advertisement the resolver looks, in order, at:

1. hallway-v1 in manufacturer data under the configured company id (``48 57 01 || RPI``),
2. iBeacon under Apple's company id 76 (only ``02 15`` frames),
3. Exposure Notification service data under 0xFD6F (``RPI || AEM``),
4. Eddystone-UID service data under 0xFEAA,
5. 128-bit service UUIDs as hallway-v1 RPIs,
6. the address: resolvable private addresses (random, top bits ``01``) against the IRKs through
   the answer cache; public and static random addresses (top bits ``11``) in the address keys.

The first match whose contact is active at ``adv.ts`` wins. Every step is a dict lookup except
an IRK cache miss (one AES block per IRK, once per address per cache life, within a trial
budget per second: see ``hallway.identity.irk``) and the AEM decryption of a matched EN frame
(one block). The clock is ``adv.ts``; nothing reads the time.

Measured power at 1 m (``Match.measured_power``), where the frame carries one: hallway-v1
manufacturer data's optional int8; iBeacon's measured power byte; Eddystone-UID's 0 m power
minus 41 dB; for EN frames the AEM metadata's transmit power (byte 1, dBm, when the metadata
version is 1.x) minus 41 dB, the same free-space 0 m -> 1 m step Eddystone uses. Service-UUID,
IRK and address matches carry none.

Counters (``stats``): advertisements seen, matches per kind, advertisements with a malformed
frame among those examined (examination stops at the first match), matches refused because the
contact was inactive, IRK cache hits/misses, AES block operations, and ``internal_errors`` (a
bug guard: ``resolve`` never raises; it should stay 0).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence

from hallway.config import IdentityConfig
from hallway.errors import KeyFormatError
from hallway.identity.book import ContactBook
from hallway.identity.crypto import aem_crypt, interval_number
from hallway.identity.irk import DEFAULT_TRIALS_PER_S, IrkCache, choose_backend
from hallway.identity.tokens import TokenTable
from hallway.keys import normalize_address, parse_hallway_key, parse_irk
from hallway.models import Advertisement, Contact, KeyKind, Match
from hallway.parsing.frames import (
    APPLE_COMPANY_ID,
    BLUETOOTH_BASE_SUFFIX,
    EDDYSTONE_SERVICE_UUID,
    EN_SERVICE_UUID,
    FREE_SPACE_LOSS_1M_DB,
    HALLWAY_V1_PREFIX,
    IBEACON_PREFIX,
    EddystoneUidFrame,
    EnFrame,
    HallwayFrame,
    IBeaconFrame,
    Malformed,
    ibeacon_id,
    int8,
    parse_eddystone,
    parse_en_service_data,
    parse_hallway_mfr,
    parse_ibeacon,
    uuid_rpi,
)

_RPA_FIRST = frozenset("4567")
IRK_BUDGET_WINDOW_S = 0.1
"""The IRK trial budget is spent per tenth of a second (a tenth of irk_trials_per_s each), so
a small computer's CPU quota does not meet the whole second's trials in one burst."""
_STATIC_FIRST = frozenset("CDEFcdef")
_FRAME_SERVICES = frozenset((EN_SERVICE_UUID, EDDYSTONE_SERVICE_UUID))


def _key16(value: str, parse: Callable[[str], bytes]) -> bytes:
    """16 key bytes from canonical hex (the store's form) quickly, else through ``parse``."""
    if len(value) == 32:
        try:
            raw = bytes.fromhex(value)
        except ValueError:
            raw = b""
        if len(raw) == 16:
            return raw
    return parse(value)


def _ibeacon_index(value: str) -> bytes:
    uuid_text, major, minor = value.split("/")
    return ibeacon_id(uuid.UUID(uuid_text).bytes, int(major), int(minor))


def _eddystone_index(value: str) -> bytes:
    namespace, instance = value.split("/")
    ns = bytes.fromhex(namespace)
    inst = bytes.fromhex(instance)
    if len(ns) != 10 or len(inst) != 6:
        raise ValueError("eddystone-uid key has the wrong length")
    return ns + inst


class Resolver:
    """Decides whose an advertisement is; see the module docstring. Not thread-safe."""

    def __init__(self, config: IdentityConfig, *, book: ContactBook | None = None) -> None:
        """``book``: where the active contacts are held (a pipeline shares its own); the
        resolver writes it as contacts are set, upserted and removed."""
        self._company_id = config.hallway_company_id
        self._tokens = TokenTable(
            skew_back=config.token_skew_back, skew_ahead=config.token_skew_ahead
        )
        backend = choose_backend(config.irk_backend)
        trials = config.irk_trials_per_s
        if trials is None:
            trials = DEFAULT_TRIALS_PER_S[backend]
        self.irk_trials_per_s = trials
        """The IRK trial budget in force (0: no limit)."""
        self._irks = IrkCache(max_entries=config.irk_cache_size, ttl_s=config.irk_cache_ttl_s,
                              trials_per_s=trials or None, window_s=IRK_BUDGET_WINDOW_S,
                              backend=backend)
        self._book = ContactBook() if book is None else book
        self._ibeacon: dict[bytes, str] = {}
        self._eddystone: dict[bytes, str] = {}
        self._address: dict[str, str] = {}
        # contact id -> its (iBeacon, Eddystone, address) index entries, for removal
        self._static_of: dict[str, tuple[list[bytes], list[bytes], list[str]]] = {}
        self._matched: dict[KeyKind, int] = dict.fromkeys(KeyKind, 0)
        self._seen = 0
        self._malformed = 0
        self._malformed_frames = 0
        self._inactive = 0
        self._aem_ops = 0
        self._bad_keys = 0
        self._internal_errors = 0

    # -- contacts ----------------------------------------------------------------------------

    @property
    def book(self) -> ContactBook:
        """The active contacts (shared with whoever passed it in)."""
        return self._book

    def set_contacts(self, contacts: Iterable[Contact], *, now: float) -> None:
        """Replace all contacts; unchanged ones keep their precomputed state."""
        new = {c.id: c for c in contacts}
        for contact_id in [cid for cid in self._book if cid not in new]:
            self.remove_contact(contact_id)
        self.upsert_many(new.values(), now=now)

    def upsert_many(self, contacts: Iterable[Contact], *, now: float) -> None:
        """``upsert_contact`` for a batch (one table pass for their hallway-v1 keys)."""
        token_batch: list[tuple[str, list[bytes]]] = []
        irk_batch: list[tuple[str, list[bytes]]] = []
        for contact in contacts:
            installed = self._upsert(contact)
            if installed is None:
                continue
            tokens, irks = installed
            if tokens:
                token_batch.append((contact.id, tokens))
            if irks:
                irk_batch.append((contact.id, irks))
        interval = interval_number(now)
        self._tokens.add_many(token_batch, now_interval=interval)
        self._irks.add_many(irk_batch)
        self._tokens.ensure(interval)

    def upsert_contact(self, contact: Contact, *, now: float) -> None:
        """Add or change one contact; its keys resolve (or stop resolving) on return."""
        installed = self._upsert(contact)
        if installed is None:
            return
        tokens, irks = installed
        if tokens:
            self._tokens.set_keys(contact.id, tokens, now_interval=interval_number(now))
        if irks:
            self._irks.set_irks(contact.id, irks)

    def remove_contact(self, contact_id: str) -> None:
        """Revoke: nothing of this contact resolves after return."""
        self._book.pop(contact_id)
        self._remove_keys(contact_id)

    def _remove_keys(self, contact_id: str) -> None:
        self._tokens.remove(contact_id)
        self._irks.remove(contact_id)
        statics = self._static_of.pop(contact_id, None)
        if statics is not None:
            beacons, eddystones, addresses = statics
            for beacon in beacons:
                if self._ibeacon.get(beacon) == contact_id:
                    del self._ibeacon[beacon]
            for eddystone in eddystones:
                if self._eddystone.get(eddystone) == contact_id:
                    del self._eddystone[eddystone]
            for address in addresses:
                if self._address.get(address) == contact_id:
                    del self._address[address]

    def _upsert(self, contact: Contact) -> tuple[list[bytes], list[bytes]] | None:
        """Hold ``contact`` in the book; if its keys are new or changed, (re)install its static
        keys and return its hallway-v1 keys and IRKs to add (None: nothing to add)."""
        if contact.revoked_at is not None:
            self.remove_contact(contact.id)
            return None
        if not self._book.put(contact):
            return None  # the same keys: the tables stay as they are
        self._remove_keys(contact.id)
        return self._install(contact)

    def _install(self, contact: Contact) -> tuple[list[bytes], list[bytes]]:
        """Install a contact's static keys; return its hallway-v1 keys and IRKs to add."""
        contact_id = contact.id
        tokens: list[bytes] = []
        irks: list[bytes] = []
        statics: tuple[list[bytes], list[bytes], list[str]] | None = None
        for key in contact.keys:
            kind = key.kind
            try:
                if kind is KeyKind.HALLWAY_V1:
                    tokens.append(_key16(key.value, parse_hallway_key))
                elif kind is KeyKind.IRK:
                    irks.append(_key16(key.value, parse_irk))
                else:
                    if statics is None:
                        statics = self._static_of[contact_id] = ([], [], [])
                    if kind is KeyKind.IBEACON:
                        beacon = _ibeacon_index(key.value)
                        self._ibeacon[beacon] = contact_id
                        statics[0].append(beacon)
                    elif kind is KeyKind.EDDYSTONE_UID:
                        eddystone = _eddystone_index(key.value)
                        self._eddystone[eddystone] = contact_id
                        statics[1].append(eddystone)
                    elif kind is KeyKind.ADDRESS:
                        address = normalize_address(key.value)
                        self._address[address] = contact_id
                        statics[2].append(address)
            except (KeyFormatError, ValueError, OverflowError):
                self._bad_keys += 1
        return tokens, irks

    # -- resolving ---------------------------------------------------------------------------

    @property
    def irk_keys(self) -> int:
        """IRKs held."""
        return self._irks.key_count

    def resolve(self, adv: Advertisement) -> Match | None:
        """Whose ``adv`` is, on the clock ``adv.ts``; None for strangers. Never raises."""
        self._seen += 1
        before = self._malformed_frames
        try:
            match = self._find(adv)
        except Exception:  # noqa: BLE001 - a bug guard: one bad advertisement must not stop the loop
            self._internal_errors += 1
            return None
        if self._malformed_frames != before:
            self._malformed += 1
        return match

    def resolve_checkin(self, rpi: bytes, ts: float) -> Match | None:
        """Whose check-in RPI (SPEC §3.1) ``rpi`` is at ``ts``: one table lookup, no key tried,
        whatever the bytes; None for an unknown RPI or an inactive contact. Never raises."""
        if len(rpi) != 16 or not math.isfinite(ts):
            return None
        slot = self._tokens.lookup(rpi, interval_number(ts))
        if slot is None:
            return None
        return self._hit(self._tokens.contact_of(slot), KeyKind.HALLWAY_V1, None, ts)

    def screen(
        self,
        address: str,
        address_type: str,
        manufacturer_data: Mapping[int, bytes],
        service_data: Mapping[str, bytes],
        service_uuids: Sequence[str],
    ) -> bool:
        """False only for an advertisement ``resolve`` would pass over without a match or a
        count: a look at the raw fields (membership tests, no parsing, no AES) that lets a
        source skip a stranger before building its record. True for anything the resolver
        examines: our frames (well formed or not), iBeacons, EN and Eddystone service data,
        non-base service UUIDs, resolvable private addresses while IRKs are loaded (except
        those whose cached answer is already "no one": known strangers, skipped without even
        the cache hit being counted), and addresses of address keys. Case-insensitive where
        ``Advertisement`` normalises case; the time is not looked at (``resolve`` checks
        consent at ``adv.ts``).
        """
        if manufacturer_data:
            payload = manufacturer_data.get(self._company_id)
            if payload is not None and payload[:3] == HALLWAY_V1_PREFIX:
                return True
            payload = manufacturer_data.get(APPLE_COMPANY_ID)
            if payload is not None and payload[:2] == IBEACON_PREFIX:
                return True
        if service_data:
            for key in service_data:
                if key.lower() in _FRAME_SERVICES:
                    return True
        for text in service_uuids:
            if not text.lower().endswith(BLUETOOTH_BASE_SUFFIX) or len(text) != 36:
                return True
        if address_type == "random":
            first = address[0] if address else ""  # an index is cheaper than a slice
            if first in _RPA_FIRST:
                # A resolvable address already answered "no one" is a known stranger's.
                irks = self._irks
                return irks.key_count > 0 and not irks.known_stranger(address.upper())
            if first not in _STATIC_FIRST:
                return False
        return address.upper() in self._address

    def _hit(self, contact_id: str, via: KeyKind, power: int | None, ts: float) -> Match | None:
        if not self._book.active(contact_id, ts):
            self._inactive += 1
            return None
        self._matched[via] += 1
        return Match(contact_id, via, power)

    def _find(self, adv: Advertisement) -> Match | None:
        ts = adv.ts
        if not math.isfinite(ts):
            self._malformed_frames += 1
            return None
        interval = interval_number(ts)
        tokens = self._tokens
        match: Match | None
        md = adv.manufacturer_data
        if md:
            payload = md.get(self._company_id)
            if payload is not None:
                frame = parse_hallway_mfr(payload)
                if type(frame) is HallwayFrame:
                    slot = tokens.lookup(frame.rpi, interval)
                    if slot is not None:
                        match = self._hit(
                            tokens.contact_of(slot), KeyKind.HALLWAY_V1, frame.measured_power, ts
                        )
                        if match is not None:
                            return match
                elif frame is not None:
                    self._malformed_frames += 1
            payload = md.get(APPLE_COMPANY_ID)
            if payload is not None:
                beacon = parse_ibeacon(payload)
                if type(beacon) is IBeaconFrame:
                    contact_id = self._ibeacon.get(beacon.beacon_id)
                    if contact_id is not None:
                        match = self._hit(contact_id, KeyKind.IBEACON, beacon.measured_power, ts)
                        if match is not None:
                            return match
                elif beacon is not None:
                    self._malformed_frames += 1
        sd = adv.service_data
        if sd:
            payload = sd.get(EN_SERVICE_UUID)
            if payload is not None:
                en = parse_en_service_data(payload)
                if type(en) is EnFrame:
                    slot = tokens.lookup(en.rpi, interval)
                    if slot is not None:
                        metadata = aem_crypt(tokens.aemk_of(slot), en.rpi, en.aem)
                        self._aem_ops += 1
                        power = (
                            int8(metadata[1]) - FREE_SPACE_LOSS_1M_DB
                            if metadata[0] >> 6 == 0b01
                            else None
                        )
                        match = self._hit(tokens.contact_of(slot), KeyKind.HALLWAY_V1, power, ts)
                        if match is not None:
                            return match
                else:
                    self._malformed_frames += 1
            payload = sd.get(EDDYSTONE_SERVICE_UUID)
            if payload is not None:
                eddystone = parse_eddystone(payload)
                if type(eddystone) is EddystoneUidFrame:
                    contact_id = self._eddystone.get(eddystone.namespace + eddystone.instance)
                    if contact_id is not None:
                        match = self._hit(
                            contact_id, KeyKind.EDDYSTONE_UID, eddystone.measured_power, ts
                        )
                        if match is not None:
                            return match
                elif type(eddystone) is Malformed:
                    self._malformed_frames += 1
        for text in adv.service_uuids:
            rpi = uuid_rpi(text)
            if type(rpi) is bytes:
                slot = tokens.lookup(rpi, interval)
                if slot is not None:
                    match = self._hit(tokens.contact_of(slot), KeyKind.HALLWAY_V1, None, ts)
                    if match is not None:
                        return match
            elif rpi is not None:
                self._malformed_frames += 1
        address = adv.address
        if adv.address_type == "random":
            first = address[:1]
            if first in _RPA_FIRST:
                if self._irks.key_count:
                    irk_key = self._irks.resolve(address, ts, adv.rssi)
                    if irk_key is not None:
                        return self._hit(irk_key.contact_id, KeyKind.IRK, None, ts)
                return None
            if first not in _STATIC_FIRST:
                return None
        contact_id = self._address.get(address)
        if contact_id is not None:
            return self._hit(contact_id, KeyKind.ADDRESS, None, ts)
        return None

    # -- upkeep ------------------------------------------------------------------------------

    def maintain(self, now: float, *, budget_s: float = 0.005) -> bool:
        """One bounded slice of the rolling precompute and cache upkeep; True if more remains."""
        if not math.isfinite(now):
            return False
        more_tokens = self._tokens.maintain(interval_number(now), budget_s=budget_s)
        more_irk = self._irks.sweep(now, max_items=1024)
        return more_tokens or more_irk

    @property
    def irk_backend(self) -> str:
        """How new resolvable addresses are tried: ``aes-ni``, ``portable`` or ``python``."""
        return self._irks.backend

    def stats(self) -> dict[str, int]:
        """Counters and sizes; the names are stable."""
        out = {
            "advertisements": self._seen,
            "matched": sum(self._matched.values()),
        }
        for kind, count in self._matched.items():
            out[f"matched_{kind.value.replace('-', '_')}"] = count
        out.update(
            malformed=self._malformed,
            malformed_frames=self._malformed_frames,
            inactive=self._inactive,
            irk_cache_hits=self._irks.hits,
            irk_cache_misses=self._irks.misses,
            irk_cache_entries=len(self._irks),
            irk_cache_evicted=self._irks.evicted,
            irk_deferred=self._irks.deferred,
            irk_pending=self._irks.pending,
            irk_pending_dropped=self._irks.pending_dropped,
            aes_ops=self._tokens.aes_ops + self._irks.aes_ops + self._aem_ops,
            token_entries=len(self._tokens),
            token_keys=self._tokens.key_count,
            token_sync_builds=self._tokens.sync_builds,
            irk_keys=self._irks.key_count,
            irk_trials_per_s=self.irk_trials_per_s,
            contacts=len(self._book),
            bad_keys=self._bad_keys,
            internal_errors=self._internal_errors,
        )
        return out
