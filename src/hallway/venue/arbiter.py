"""Room choice across scanners: per contact, the one room it is in, with hysteresis.

Theory of operation
-------------------
Every scanner of the venue reports, per contact it holds present, a reading: its smoothed
distance estimate (with zone, RSSI and the identity kind). A reading lives from the scanner's
``arrived`` (or first presence message) to its ``departed`` (or cleared presence). The arbiter
turns each distance into a level on the path-loss model, ``-10 n log10(d)`` dB, and a room's
score is the best level among its scanners (several scanners may share a room name).

A contact is in at most one room:

* not in the venue, and some room scores: it **arrives** in the best room at once (each
  scanner's own tracker already confirmed the arrival);
* in room R, and another room beats R by more than ``switch_margin_db``, continuously, for
  ``switch_confirm_s`` weighted by how clearly: each second counts ``advantage / margin``
  seconds, so a challenger just over the margin needs the whole confirmation time and one that
  is three times as far ahead (someone who walked into the next room) a third of it. A
  challenger that falls back under the margin, or is overtaken by another, starts again from
  nothing. Going back to the room the contact left less than ``return_window_s`` ago needs
  ``return_margin_db`` more: a quick A -> B -> A without having been in B is the flap to
  avoid, while a first move stays quick. So someone in a doorway, where two scanners read
  about the same, stays where they were;
* in room R, and no scanner of R holds a reading any more while another room does: the best
  other room takes over after ``switch_confirm_s`` (unweighted), unless R picks it up again
  meanwhile (a phone that paused is often dropped by one scanner before the others);
* no room scores: after ``depart_grace_s`` without one it **departs** the venue (a scanner that
  picks it up within the grace makes it a move instead);
* the zone of the room's best reading changed: a ``zone`` event.

A scanner whose status went offline keeps its readings for ``offline_grace_s`` (it may be a
short network break; its publisher resumes in order), then they stop counting until it is back.
Readings are ordered by their own ``ts``: a reading older than the scanner's latest one or
than its departure is ignored, so redelivered or reordered messages change nothing.

Pure: every method takes ``now``; nothing here reads a clock or does I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hallway.config import VenueConfig
from hallway.models import Contact, DepartReason, EventType, KeyKind, PresenceEvent, PresentInfo

_MIN_DISTANCE_M = 0.1
_KINDS = {kind.value: kind for kind in KeyKind}


@dataclass(frozen=True, slots=True)
class Reading:
    """What one scanner currently says about one contact."""

    scanner: str
    distance_m: float
    zone: str | None
    rssi: float | None
    via: KeyKind | None
    ts: float


@dataclass(slots=True)
class _Person:
    contact: dict[str, Any]
    readings: dict[str, Reading] = field(default_factory=dict)
    gone_ts: dict[str, float] = field(default_factory=dict)
    room: str | None = None
    since: float = 0.0
    zone: str | None = None
    last: Reading | None = None  # the room's best reading when last decided
    challenger: str | None = None
    challenger_at: float = 0.0  # when the challenger's progress was last brought up to date
    challenger_weight: float = 0.0  # how fast its progress grows (advantage / margin)
    progress_s: float = 0.0  # weighted seconds the challenger has been clearly better
    empty_since: float | None = None
    last_reason: DepartReason | None = None
    left_room: str | None = None  # the room it last moved out of ...
    left_at: float = -math.inf  # ... and when


@dataclass(frozen=True, slots=True)
class _Score:
    level_db: float
    reading: Reading


class Arbiter:
    """Per-contact room decisions from per-scanner readings (see the module docstring)."""

    def __init__(self, config: VenueConfig, *, path_loss_exponent: float) -> None:
        self._config = config
        self._ten_n = 10.0 * path_loss_exponent
        # dB added to a scanner's levels: its receive offset as the venue fitted it
        # (``hallway.venue.offsets``), against the one its own tracker used.
        self.corrections: Mapping[str, float] = {}
        self._people: dict[str, _Person] = {}
        self._offline_since: dict[str, float] = {}
        self.counts: dict[str, int] = {"stale_readings": 0, "arrived": 0, "moved": 0,
                                       "departed": 0, "zone": 0}

    # -- inputs -------------------------------------------------------------------------------

    def seen(
        self,
        scanner: str,
        contact: Mapping[str, Any],
        *,
        ts: float,
        distance_m: float,
        now: float,
        zone: str | None = None,
        rssi: float | None = None,
        via: str | None = None,
    ) -> list[PresenceEvent]:
        """A scanner holds ``contact`` present at ``distance_m`` (as of ``ts``)."""
        cid = str(contact["id"])
        person = self._people.get(cid)
        if person is None:
            person = self._people[cid] = _Person(contact=dict(contact))
        old = person.readings.get(scanner)
        if ts < person.gone_ts.get(scanner, -math.inf) or (old is not None and ts < old.ts):
            self.counts["stale_readings"] += 1
            return []
        person.contact = dict(contact)
        person.readings[scanner] = Reading(
            scanner, max(float(distance_m), _MIN_DISTANCE_M), zone, rssi,
            _KINDS.get(via or ""), ts,
        )
        return self._decide(cid, person, now)

    def lost(
        self,
        scanner: str,
        contact_id: str,
        *,
        now: float,
        ts: float | None = None,
        reason: DepartReason | None = None,
    ) -> list[PresenceEvent]:
        """A scanner no longer holds the contact (``ts`` None: as of now, unconditionally)."""
        person = self._people.get(contact_id)
        if person is None:
            return []
        old = person.readings.get(scanner)
        if ts is not None:
            if old is not None and old.ts > ts:
                self.counts["stale_readings"] += 1
                return []
            person.gone_ts[scanner] = max(ts, person.gone_ts.get(scanner, -math.inf))
        if old is None:
            return []
        del person.readings[scanner]
        if reason is not None:
            person.last_reason = reason
        return self._decide(contact_id, person, now)

    def scanner_status(self, scanner: str, *, online: bool, now: float) -> list[PresenceEvent]:
        """A scanner's status changed (its retained ``online`` / ``offline``)."""
        if online:
            self._offline_since.pop(scanner, None)
        else:
            self._offline_since.setdefault(scanner, now)
        return self.tick(now)

    def tick(self, now: float) -> list[PresenceEvent]:
        """Apply the passage of time: confirmations, departure grace, offline scanners."""
        events: list[PresenceEvent] = []
        for cid in sorted(self._people):
            events.extend(self._decide(cid, self._people[cid], now))
        return events

    def forget(self, contact_id: str, *, now: float) -> list[PresenceEvent]:
        """Drop a contact now (revoked): a present one departs with reason ``revoked``."""
        person = self._people.get(contact_id)
        if person is None:
            return []
        person.readings.clear()
        events = self._depart(contact_id, person, now, DepartReason.REVOKED)
        self._people.pop(contact_id, None)
        return events

    def shutdown(self, now: float) -> list[PresenceEvent]:
        """Every present contact departs with reason ``shutdown``."""
        events: list[PresenceEvent] = []
        for cid in sorted(self._people):
            events.extend(self._depart(cid, self._people[cid], now, DepartReason.SHUTDOWN))
        self._people.clear()
        return events

    # -- queries ------------------------------------------------------------------------------

    def room_name(self, scanner: str) -> str:
        """The room a scanner covers (``venue.rooms``, else the scanner's own name)."""
        return self._config.rooms.get(scanner, scanner)

    def room_of(self, contact_id: str) -> str | None:
        """The contact's current room, or None when not in the venue."""
        person = self._people.get(contact_id)
        return None if person is None else person.room

    def present(self) -> list[PresentInfo]:
        """Every contact in the venue with its room and the room's best reading."""
        result = []
        for cid in sorted(self._people):
            person = self._people[cid]
            if person.room is None or person.last is None:
                continue
            reading = person.last
            result.append(PresentInfo(
                contact_id=cid, zone=person.zone or "far", distance_m=reading.distance_m,
                rssi=reading.rssi if reading.rssi is not None else -127.0, since=person.since,
                via=reading.via or KeyKind.ADDRESS, room=person.room,
            ))
        return result

    def contact(self, contact_id: str) -> Contact | None:
        """The contact's public fields as last reported by a scanner."""
        person = self._people.get(contact_id)
        if person is None:
            return None
        data = person.contact
        handles = data.get("handles")
        tags = data.get("tags")
        knows = data.get("knows")
        return Contact(
            id=contact_id,
            name=str(data.get("name") or contact_id),
            org=data.get("org") if isinstance(data.get("org"), str) else None,
            title=data.get("title") if isinstance(data.get("title"), str) else None,
            handles={str(k): str(v) for k, v in handles.items()}
            if isinstance(handles, Mapping) else {},
            tags=tuple(str(t) for t in tags) if isinstance(tags, list) else (),
            display=data.get("display") is True,
            knows=frozenset(str(k) for k in knows) if isinstance(knows, list) else frozenset(),
        )

    @property
    def offline_scanners(self) -> list[str]:
        """Scanners whose status is ``offline``."""
        return sorted(self._offline_since)

    # -- the decision -------------------------------------------------------------------------

    def _usable(self, scanner: str, now: float) -> bool:
        since = self._offline_since.get(scanner)
        return since is None or now - since < self._config.offline_grace_s

    def _scores(self, person: _Person, now: float) -> dict[str, _Score]:
        scores: dict[str, _Score] = {}
        for scanner, reading in person.readings.items():
            if not self._usable(scanner, now):
                continue
            level = (-self._ten_n * math.log10(reading.distance_m)
                     + self.corrections.get(scanner, 0.0))
            room = self.room_name(scanner)
            best = scores.get(room)
            if best is None or level > best.level_db:
                scores[room] = _Score(level, reading)
        return scores

    def _decide(self, cid: str, person: _Person, now: float) -> list[PresenceEvent]:
        config = self._config
        scores = self._scores(person, now)
        if not scores:
            person.challenger = None
            if person.room is None:
                if not person.readings:
                    self._people.pop(cid, None)
                return []
            if person.empty_since is None:
                person.empty_since = now
            if now - person.empty_since < config.depart_grace_s:
                return []
            reason = person.last_reason or DepartReason.TIMEOUT
            events = self._depart(cid, person, now, reason)
            if not person.readings:
                self._people.pop(cid, None)
            return events
        person.empty_since = None
        if person.room is None:
            best = max(scores, key=lambda room: (scores[room].level_db, room))
            return self._arrive(cid, person, best, scores[best].reading, now)
        if person.room not in scores:
            # The room's scanners lost the contact (often a phone pausing): the best other room
            # takes over after the plain confirmation time, unless the room picks it up again.
            top = max(scores, key=lambda room: (scores[room].level_db, room))
            return self._challenge(cid, person, top, scores[top].reading, weight=1.0, now=now)
        current = scores[person.room]
        recent = now - person.left_at < config.return_window_s

        def margin(room: str) -> float:
            # Going back to the room just left needs more: that is what a flap looks like.
            extra = config.return_margin_db if recent and room == person.left_room else 0.0
            return config.switch_margin_db + extra

        rivals = {room: score for room, score in scores.items()
                  if room != person.room
                  and score.level_db - current.level_db > margin(room)}
        if rivals:
            top = max(rivals, key=lambda room: (rivals[room].level_db, room))
            advantage = rivals[top].level_db - current.level_db
            needed = margin(top)
            weight = advantage / needed if needed > 0 else 1.0
            events = self._challenge(cid, person, top, rivals[top].reading, weight=weight,
                                     now=now)
            if events:
                return events
        else:
            person.challenger = None
        person.last = current.reading
        zone = current.reading.zone
        if zone is not None and zone != person.zone:
            previous, person.zone = person.zone, zone
            self.counts["zone"] += 1
            return [self._event(EventType.ZONE, cid, person, now, previous_zone=previous)]
        return []

    def _challenge(self, cid: str, person: _Person, top: str, reading: Reading, *,
                   weight: float, now: float) -> list[PresenceEvent]:
        """Advance ``top``'s claim on the contact at ``weight``; move once it is confirmed."""
        if person.challenger != top:
            person.challenger, person.progress_s = top, 0.0
        else:
            person.progress_s += max(0.0, now - person.challenger_at) * person.challenger_weight
        person.challenger_at, person.challenger_weight = now, weight
        if person.progress_s >= self._config.switch_confirm_s:
            return self._move(cid, person, top, reading, now)
        return []

    def _arrive(self, cid: str, person: _Person, room: str, reading: Reading, now: float
                ) -> list[PresenceEvent]:
        person.room, person.since, person.last = room, now, reading
        person.zone = reading.zone or "far"
        person.challenger = None
        person.last_reason = None
        self.counts["arrived"] += 1
        return [self._event(EventType.ARRIVED, cid, person, now)]

    def _move(self, cid: str, person: _Person, room: str, reading: Reading, now: float
              ) -> list[PresenceEvent]:
        previous = person.room
        person.left_room, person.left_at = previous, now
        person.room, person.last = room, reading
        person.zone = reading.zone or person.zone or "far"
        person.challenger = None
        self.counts["moved"] += 1
        return [self._event(EventType.MOVED, cid, person, now, previous_room=previous)]

    def _depart(self, cid: str, person: _Person, now: float, reason: DepartReason
                ) -> list[PresenceEvent]:
        if person.room is None:
            return []
        event = self._event(EventType.DEPARTED, cid, person, now, reason=reason,
                            dwell_s=max(0.0, now - person.since))
        person.room = person.last = person.zone = None
        person.challenger = person.empty_since = None
        self.counts["departed"] += 1
        return [event]

    def _event(
        self,
        kind: EventType,
        cid: str,
        person: _Person,
        now: float,
        *,
        previous_zone: str | None = None,
        previous_room: str | None = None,
        reason: DepartReason | None = None,
        dwell_s: float | None = None,
    ) -> PresenceEvent:
        reading = person.last
        return PresenceEvent(
            type=kind,
            ts=now,
            contact_id=cid,
            zone=person.zone,
            distance_m=None if reading is None else reading.distance_m,
            rssi=None if reading is None else reading.rssi,
            via=None if reading is None else reading.via,
            previous_zone=previous_zone,
            dwell_s=dwell_s,
            reason=reason,
            room=person.room,
            previous_room=previous_room,
        )
