"""The pure middle of the daemon: advertisement -> resolver -> tracker -> presence decisions.

Used alike by ``hallway replay`` (on a virtual clock that follows the trace) and by the daemon
(on the wall clock). No I/O and no clock: contacts, advertisements and ``now`` come in, tracker
events go out; turning them into SPEC §5 objects with a ``seq`` is the caller's job.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence

from hallway.config import Config
from hallway.identity.book import ContactBook
from hallway.identity.resolver import Resolver
from hallway.models import (
    CHECKIN,
    Advertisement,
    Contact,
    DepartReason,
    EventType,
    KeyKind,
    PresenceEvent,
    PresentInfo,
    Sighting,
)
from hallway.parsing.checkin import CheckinFrame, Refusal
from hallway.proximity.references import badge_contacts
from hallway.proximity.tracker import Tracker

_UNKNOWN_RSSI = -127
MAINTAIN_BUDGET_S = 0.002
"""Work time per tick for the hallway-v1 table's rolling precompute. Rolling one interval
forward for 50,000 keys is about 0.3 s of work, and it has the whole 600 s interval to finish
(at 2 ms a second, about 1.2 s); 5 ms left too little of the 10 ms a callback may take for the
tracker's own tick at a busy venue."""


class Pipeline:
    """Resolver and tracker wired together, with the active contact list they share."""

    def __init__(self, config: Config, *, resolving: bool = True) -> None:
        """``resolving=False``: the advertisements are resolved elsewhere (replay's reader
        process) and come in through ``sighted``; the resolver stays empty."""
        self._config = config
        self._resolving = resolving
        # The active contacts, compact (``hallway.identity.book``): the resolver writes it as
        # contacts change; without resolving, the pipeline does.
        self._book = ContactBook()
        self._resolver = Resolver(config.identity, book=self._book)
        # Whether an advertisement's raw fields could be a contact's (``Resolver.screen``): a
        # source may skip a stranger before building its record; ``feed`` would drop it anyway.
        self.screen = self._resolver.screen
        self.tracker = Tracker(config.proximity, checkin_hold_s=config.checkin.hold_s)
        # Reference beacons named by badge: resolved as contacts of their own, never stored
        # (in the book while resolving, as the resolver keeps it; never forgotten or counted).
        self._badges = badge_contacts(config.proximity.reference)
        self._badge_ids = frozenset(b.id for b in self._badges)
        # A badge reference's key -> its reference id; and the ones an imported contact holds
        # too (the contact wins: its sightings are the contact's; the reference says so).
        self._badge_keys = {(k.kind, k.value): b.id for b in self._badges for k in b.keys}
        self._taken: dict[str, str] = {}  # reference id -> contact id holding its key
        if resolving and self._badges:
            self._resolver.set_contacts(self._badges, now=0.0)
        self._expiries: list[tuple[float, str]] = []
        self._forgotten: list[str] = []
        self._hold: str | None = None
        self._held = 0
        self._advertisements = 0
        self._matched = 0
        self._no_rssi = 0
        self._events = 0
        self._checkins = 0
        # How the latest ``feed`` matched (None: it did not): the pump's trial lane learns
        # which resolvable addresses are contacts' from it.
        self.last_via: KeyKind | None = None

    # -- contacts ------------------------------------------------------------------------------

    def load_contacts(self, contacts: Sequence[Contact], *, now: float) -> list[PresenceEvent]:
        """Replace the contact list; a loaded contact no longer in it (or inactive) is removed
        as by ``remove_contact`` (a present one departs with reason ``revoked``; a tombstone)."""
        active = {c.id: c for c in contacts if c.active(now)}
        events: list[PresenceEvent] = []
        for contact_id in sorted(set(self._book) - active.keys() - self._badge_ids):
            events.extend(self._forget(contact_id, now))
        if self._resolving:
            self._resolver.set_contacts([*self._badges, *active.values()], now=now)
        else:
            for contact in active.values():
                self._book.put(contact)
        if self._badge_keys:
            self._check_badges(active.values())
        self._expiries = [(c.expires_at, c.id) for c in active.values() if c.expires_at is not None]
        heapq.heapify(self._expiries)
        self._events += len(events)
        return events

    def upsert_contact(self, contact: Contact, *, now: float) -> list[PresenceEvent]:
        """Add or change one contact (work proportional to its keys). One that is revoked or
        whose consent has ended is removed instead (see ``remove_contact``)."""
        if not contact.active(now):
            revoked = contact.revoked_at is not None
            return self.remove_contact(contact.id, now=now, tombstone=revoked)
        if self._resolving:
            self._resolver.upsert_contact(contact, now=now)
        else:
            self._book.put(contact)
        if self._badge_keys:
            self._check_badges([contact])
        if contact.expires_at is not None:
            heapq.heappush(self._expiries, (contact.expires_at, contact.id))
        return []

    def upsert_contacts(self, contacts: Sequence[Contact], *, now: float) -> list[PresenceEvent]:
        """``upsert_contact`` for a page of contacts (a cold start reads them a page at a time)."""
        events: list[PresenceEvent] = []
        active: list[Contact] = []
        for contact in contacts:
            if contact.active(now):
                active.append(contact)
            else:
                revoked = contact.revoked_at is not None
                events.extend(self.remove_contact(contact.id, now=now, tombstone=revoked))
        if self._resolving:
            self._resolver.upsert_many(active, now=now)
        else:
            for contact in active:
                self._book.put(contact)
        for contact in active:
            if contact.expires_at is not None:
                heapq.heappush(self._expiries, (contact.expires_at, contact.id))
        if self._badge_keys:
            self._check_badges(active)
        return events

    def remove_contact(
        self, contact_id: str, *, now: float, tombstone: bool = False
    ) -> list[PresenceEvent]:
        """Revoke one contact: nothing of it resolves after return; if present it departs with
        reason ``revoked``; a ``revoked`` tombstone follows when it was loaded (or when
        ``tombstone``: a revocation this pipeline had not seen the contact of)."""
        if contact_id not in self._book and not tombstone:
            return []
        events = self._forget(contact_id, now)
        self._events += len(events)
        return events

    def take_forgotten(self) -> list[str]:
        """Ids removed (revoked or expired) since the last call: their logged events and
        queued copies are the caller's to forget."""
        forgotten, self._forgotten = self._forgotten, []
        return forgotten

    def _check_badges(self, contacts: Iterable[Contact]) -> None:
        """Note badge references whose key an imported contact holds too (and, for a contact
        that changed, those it no longer holds)."""
        for contact in contacts:
            held = {self._badge_keys[(k.kind, k.value)] for k in contact.keys
                    if (k.kind, k.value) in self._badge_keys}
            for ref_id, owner in list(self._taken.items()):
                if owner == contact.id and ref_id not in held:
                    self._release_badge(ref_id)
            for ref_id in held:
                self._taken[ref_id] = contact.id
        self.tracker.references_taken(dict(self._taken))

    def _release_badge(self, ref_id: str) -> None:
        """The contact that held a badge reference's key no longer does: the badge resolves
        to the reference again."""
        del self._taken[ref_id]
        if self._resolving:
            badge = next(b for b in self._badges if b.id == ref_id)
            self._resolver.remove_contact(ref_id)
            self._resolver.upsert_contact(badge, now=0.0)

    def _forget(self, contact_id: str, now: float) -> list[PresenceEvent]:
        if self._resolving:
            self._resolver.remove_contact(contact_id)
        else:
            self._book.pop(contact_id)
        if self._taken:
            for ref_id in [r for r, owner in self._taken.items() if owner == contact_id]:
                self._release_badge(ref_id)
            self.tracker.references_taken(dict(self._taken))
        self._forgotten.append(contact_id)
        events = self.tracker.remove(contact_id, now=now, reason=DepartReason.REVOKED)
        events.append(PresenceEvent(EventType.REVOKED, now, contact_id))
        return events

    def hold(self, reason: str | None) -> None:
        """Stop resolving (``reason``: why, e.g. consent cannot be confirmed) or resume (None).
        While held every advertisement is counted and dropped; nothing is resolved."""
        self._hold = reason

    @property
    def hold_reason(self) -> str | None:
        """Why resolving is held, or None."""
        return self._hold

    @property
    def irk_keys(self) -> int:
        """IRKs enrolled (0: no advertisement can cost an IRK trial)."""
        return self._resolver.irk_keys

    def contact(self, contact_id: str) -> Contact | None:
        """An active contact by id (None once revoked or expired): its public fields, consent
        expiry and calibration, rebuilt from the compact book (no keys, grant time or match
        hashes: see ``hallway.identity.book``)."""
        return None if contact_id in self._badge_ids else self._book.get(contact_id)

    # -- the stream ----------------------------------------------------------------------------

    def feed(self, adv: Advertisement) -> list[PresenceEvent]:
        """One advertisement in; the tracker's decisions it caused out (usually none)."""
        self._advertisements += 1
        self.tracker.heard(adv.ts)
        if self._hold is not None:
            self._held += 1
            return []
        match = self._resolver.resolve(adv)
        if match is None:
            self.last_via = None
            return []
        self.last_via = match.via
        return self.sighted(
            Sighting(adv.ts, match.contact_id, match.via, adv.rssi, match.measured_power,
                     adv.scanner)
        )

    def checkin(self, frame: CheckinFrame, *, ts: float, scanner: str, power_dbm: int
                ) -> Refusal | list[PresenceEvent]:
        """One check-in (SPEC §3.1) at ``ts``, resolved by one lookup in the RPI table: the
        decisions it caused, or why it is refused. ``power_dbm`` is the scanner's 1 m power.
        One without ``heard_rssi`` is accepted and counted (``no_rssi``), nothing more.
        While resolving is held (consent cannot be confirmed) it is counted and dropped."""
        if self._hold is not None:
            self._held += 1
            return []
        match = self._resolver.resolve_checkin(frame.rpi, ts)
        if match is None:
            return Refusal.UNKNOWN_RPI
        self._checkins += 1
        rssi = _UNKNOWN_RSSI if frame.heard_rssi is None else frame.heard_rssi
        return self.sighted(Sighting(ts, match.contact_id, match.via, rssi,
                                     power_dbm, scanner, CHECKIN))

    def sighted(self, sighting: Sighting) -> list[PresenceEvent]:
        """An advertisement already resolved (to ``sighting``) in; the decisions it caused out."""
        self._matched += 1
        if sighting.rssi <= _UNKNOWN_RSSI:
            self._no_rssi += 1
            return []
        events = self.tracker.observe(
            sighting, calibration_db=self._book.calibration_db(sighting.contact_id)
        )
        if events:
            self._events += len(events)
        return events

    def tick(self, now: float) -> list[PresenceEvent]:
        """Clock upkeep at ``now`` (about once a second): consent expiry, silences, caches."""
        events: list[PresenceEvent] = []
        expiries = self._expiries
        while expiries and expiries[0][0] <= now:
            expires_at, contact_id = heapq.heappop(expiries)
            if contact_id not in self._book or self._book.expires_at(contact_id) != expires_at:
                continue
            events.extend(self._forget(contact_id, now))
        self._resolver.maintain(now, budget_s=MAINTAIN_BUDGET_S)
        events.extend(self.tracker.tick(now))
        self._events += len(events)
        return events

    def shutdown(self, now: float) -> list[PresenceEvent]:
        """Depart everyone present with reason ``shutdown`` (the source ended or we stop)."""
        events = self.tracker.shutdown(now)
        self._events += len(events)
        return events

    def present(self) -> list[PresentInfo]:
        """The present contacts (see ``Tracker.present``)."""
        return self.tracker.present()

    @property
    def irk_backend(self) -> str:
        """How the resolver tries new resolvable addresses (see ``Resolver.irk_backend``)."""
        return self._resolver.irk_backend

    def stats(self) -> dict[str, int]:
        """Counters: the resolver's, plus what reached the tracker and what it decided."""
        out = dict(self._resolver.stats())
        out.update(
            advertisements=self._advertisements,
            matched=self._matched,
            no_rssi=self._no_rssi,
            held=self._held,
            events=self._events,
            checkins=self._checkins,
            contacts=len(self._book) - sum(1 for b in self._badge_ids if b in self._book),
            present=self.tracker.present_count(),
        )
        return out
