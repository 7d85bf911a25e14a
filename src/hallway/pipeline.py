"""The pure middle of the daemon: advertisement -> resolver -> tracker -> presence decisions.

Used alike by ``hallway replay`` (on a virtual clock that follows the trace) and by the daemon
(on the wall clock). No I/O and no clock: contacts, advertisements and ``now`` come in, tracker
events go out; turning them into SPEC §5 objects with a ``seq`` is the caller's job.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

from hallway.config import Config
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
from hallway.proximity.tracker import Tracker

_UNKNOWN_RSSI = -127


class Pipeline:
    """Resolver and tracker wired together, with the active contact list they share."""

    def __init__(self, config: Config, *, resolving: bool = True) -> None:
        """``resolving=False``: the advertisements are resolved elsewhere (replay's reader
        process) and come in through ``sighted``; the resolver stays empty."""
        self._config = config
        self._resolving = resolving
        self._resolver = Resolver(config.identity)
        # Whether an advertisement's raw fields could be a contact's (``Resolver.screen``): a
        # source may skip a stranger before building its record; ``feed`` would drop it anyway.
        self.screen = self._resolver.screen
        self.tracker = Tracker(config.proximity, checkin_hold_s=config.checkin.hold_s)
        self._contacts: dict[str, Contact] = {}
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
        for contact_id in sorted(self._contacts.keys() - active.keys()):
            events.extend(self._forget(contact_id, now))
        if self._resolving:
            self._resolver.set_contacts(active.values(), now=now)
        self._contacts = active
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
        self._contacts[contact.id] = contact
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
        for contact in active:
            self._contacts[contact.id] = contact
            if contact.expires_at is not None:
                heapq.heappush(self._expiries, (contact.expires_at, contact.id))
        return events

    def remove_contact(
        self, contact_id: str, *, now: float, tombstone: bool = False
    ) -> list[PresenceEvent]:
        """Revoke one contact: nothing of it resolves after return; if present it departs with
        reason ``revoked``; a ``revoked`` tombstone follows when it was loaded (or when
        ``tombstone``: a revocation this pipeline had not seen the contact of)."""
        if contact_id not in self._contacts and not tombstone:
            return []
        events = self._forget(contact_id, now)
        self._events += len(events)
        return events

    def take_forgotten(self) -> list[str]:
        """Ids removed (revoked or expired) since the last call: their logged events and
        queued copies are the caller's to forget."""
        forgotten, self._forgotten = self._forgotten, []
        return forgotten

    def _forget(self, contact_id: str, now: float) -> list[PresenceEvent]:
        self._contacts.pop(contact_id, None)
        if self._resolving:
            self._resolver.remove_contact(contact_id)
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
        """An active contact by id (None once revoked or expired)."""
        return self._contacts.get(contact_id)

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
        contact = self._contacts.get(sighting.contact_id)
        events = self.tracker.observe(
            sighting, calibration_db=0.0 if contact is None else contact.calibration_db
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
            contact = self._contacts.get(contact_id)
            if contact is None or contact.expires_at != expires_at:
                continue
            events.extend(self._forget(contact_id, now))
        self._resolver.maintain(now)
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
            contacts=len(self._contacts),
            present=len(self.tracker.present()),
        )
        return out
