"""What the pages are sent, computed from events and contacts (pure: no I/O, no clock).

``KioskView`` keeps one kiosk stream's state: the people present who agreed to be shown
(``display``), and for everyone else only a count per group. Nothing that identifies a person
who is not shown (not even the id) leaves it. Groups: ``close`` (zones immediate and near,
"close by") and ``room`` (zone far, "in the room"). When a shown person reaches the
immediate zone the message carries a greeting: who they know that is shown here now, and who
shown here shares a tag or their organisation.

``timeline`` turns the logged events of the last hours into per-minute series for the
dashboard's chart; ``problems`` names what is wrong with a scanner from its status figures.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from hallway.models import Contact

CLOSE_ZONES = frozenset({"immediate", "near"})
ZONES = ("immediate", "near", "far")
MAX_GREET = 6
"""People named per line of a greeting."""


def group_of(zone: str | None) -> str:
    """The kiosk group of a zone: ``close`` (close by) or ``room`` (in the room)."""
    return "close" if zone in CLOSE_ZONES else "room"


def shown(contact: Contact | None) -> bool:
    """True if the contact agreed to be shown by name on public screens."""
    return contact is not None and contact.display


def knows_of(contact: Contact) -> frozenset[str]:
    """The ids ``contact`` knows."""
    return contact.knows


PROFILE_URLS = {"linkedin": "https://www.linkedin.com/in/{}", "twitter": "https://x.com/{}",
                "x": "https://x.com/{}"}


def profile_links(handles: Mapping[str, str]) -> list[dict[str, str]]:
    """The handles a person shares as profile links (LinkedIn, X; any https URL as given)."""
    links = []
    for service, raw in handles.items():
        handle = raw.strip().lstrip("@")
        if handle.startswith("https://"):
            links.append({"service": service, "url": handle})
        elif service.lower() in PROFILE_URLS and handle and "/" not in handle:
            links.append({"service": service,
                          "url": PROFILE_URLS[service.lower()].format(handle)})
    return links


def person(contact: Contact, *, zone: str, since: float) -> dict[str, Any]:
    """A shown person as the kiosk draws them."""
    data: dict[str, Any] = {"id": contact.id, "name": contact.name, "zone": zone,
                            "since": round(since, 3)}
    links = profile_links(contact.handles)
    if links:
        data["links"] = links
    if contact.org:
        data["org"] = contact.org
    if contact.title:
        data["title"] = contact.title
    if contact.tags:
        data["tags"] = list(contact.tags)
    return data


class KioskView:
    """One kiosk stream's state: shown people by id, the others only counted per group."""

    def __init__(self, lookup: Callable[[str], Contact | None]) -> None:
        self._lookup = lookup
        self._shown: dict[str, dict[str, Any]] = {}
        self._hidden: dict[str, str] = {}  # id -> group; ids never leave this object

    def hidden_counts(self) -> dict[str, int]:
        """How many present people are not shown, per group."""
        counts = {"close": 0, "room": 0}
        for group in self._hidden.values():
            counts[group] += 1
        return counts

    def reset(self, present: Iterable[Mapping[str, Any]]) -> None:
        """Start from a snapshot's ``present`` entries (SPEC §6 shape)."""
        self._shown.clear()
        self._hidden.clear()
        for entry in present:
            contact_id = str(entry["contact"]["id"])
            zone = str(entry.get("zone") or "far")
            contact = self._lookup(contact_id)
            if contact is not None and shown(contact):
                self._shown[contact_id] = person(contact, zone=zone,
                                                 since=float(entry.get("since") or 0.0))
            else:
                self._hidden[contact_id] = group_of(zone)

    def snapshot(self, *, seq: int, history: Sequence[Mapping[str, Any]], resync: bool,
                 ) -> dict[str, Any]:
        """The first message of a stream: the state at ``seq`` and the missed feed items."""
        people = sorted(self._shown.values(), key=lambda p: (p["since"], p["id"]))
        return {"type": "snapshot", "seq": seq, "people": people,
                "hidden": self.hidden_counts(), "resync": resync,
                "history": [self.feed_item(event) for event in history]}

    def feed_item(self, event: Mapping[str, Any]) -> dict[str, Any]:
        """A missed event as a feed line: a name only for someone shown now."""
        contact_id = str(event["contact"]["id"])
        item: dict[str, Any] = {"seq": event["seq"], "ts": event["ts"], "type": event["type"]}
        contact = self._lookup(contact_id)
        if contact is not None and shown(contact):
            item["id"], item["name"] = contact_id, contact.name
        else:
            item["hidden"] = True
        return item

    def apply(self, event: Mapping[str, Any]) -> dict[str, Any]:
        """A live event -> the message for the page (every event gives one, carrying its seq)."""
        seq, ts, kind = event["seq"], event["ts"], event["type"]
        contact_id = str(event["contact"]["id"])
        zone = str(event.get("zone") or "far")
        contact = self._lookup(contact_id)
        visible = contact is not None and shown(contact)
        base = {"seq": seq, "ts": ts}
        if kind == "departed":
            gone = self._shown.pop(contact_id, None)
            if gone is not None:
                gone_message = {**base, "type": "departed", "id": contact_id,
                           "reason": event.get("reason")}
                if event.get("reason") != "revoked":  # revoked: the page forgets the name
                    gone_message["name"] = gone["name"]
                return gone_message
            self._hidden.pop(contact_id, None)
            return {**base, "type": "hidden", "change": "departed",
                    "hidden": self.hidden_counts()}
        if kind not in ("arrived", "zone", "moved"):
            return {**base, "type": "other"}
        if visible and contact is not None:
            self._hidden.pop(contact_id, None)
            old = self._shown.get(contact_id)
            since = float(ts) if old is None else float(old["since"])
            entry = person(contact, zone=zone, since=since)
            self._shown[contact_id] = entry
            message: dict[str, Any] = {**base, "type": "arrived" if old is None else "zone",
                                       "person": entry, "hidden": self.hidden_counts()}
            if zone == "immediate" and (old is None or old["zone"] != "immediate"):
                message["greet"] = self.greeting(contact)
            return message
        if contact_id in self._shown:  # no longer to be shown (display withdrawn, revoked)
            del self._shown[contact_id]
            self._hidden[contact_id] = group_of(zone)
            return {**base, "type": "hide", "id": contact_id, "hidden": self.hidden_counts()}
        change = "arrived" if contact_id not in self._hidden else "zone"
        self._hidden[contact_id] = group_of(zone)
        return {**base, "type": "hidden", "change": change if kind != "moved" else "zone",
                "hidden": self.hidden_counts()}

    def greeting(self, contact: Contact) -> dict[str, Any]:
        """Who ``contact`` knows among the shown people here, and who shares a tag or the org."""
        mine = knows_of(contact)
        knows: list[str] = []
        by_tag: dict[str, list[str]] = {tag: [] for tag in contact.tags}
        same_org: list[str] = []
        for other_id in self._shown:
            if other_id == contact.id:
                continue
            other = self._lookup(other_id)
            if other is None or not shown(other):
                continue
            if other_id in mine or contact.id in knows_of(other):
                knows.append(other_id)
            for tag in other.tags:
                if tag in by_tag and len(by_tag[tag]) < MAX_GREET:
                    by_tag[tag].append(other_id)
            if contact.org and other.org == contact.org:
                same_org.append(other_id)
        return {"id": contact.id, "knows": knows[:MAX_GREET],
                "tags": {tag: ids for tag, ids in by_tag.items() if ids},
                "org": same_org[:MAX_GREET]}


# -- the dashboard's chart ----------------------------------------------------------------------


def _start_state(events: Sequence[Mapping[str, Any]], present: Sequence[Mapping[str, Any]],
                 ) -> dict[str, tuple[str, str | None]]:
    """Who was present when the window opened: contact id -> (zone, room)."""
    state: dict[str, tuple[str, str | None]] = {}
    first: dict[str, Mapping[str, Any]] = {}
    for event in events:
        first.setdefault(str(event["contact"]["id"]), event)
    for contact_id, event in first.items():
        kind = event["type"]
        if kind == "arrived":
            continue
        if kind == "zone":
            zone = event.get("previous_zone") or event.get("zone")
        else:
            zone = event.get("zone")
        room = event.get("previous_room") if kind == "moved" else event.get("room")
        state[contact_id] = (str(zone or "far"), None if room is None else str(room))
    for entry in present:
        contact_id = str(entry["contact"]["id"])
        if contact_id not in first:
            room = entry.get("room")
            state[contact_id] = (str(entry.get("zone") or "far"),
                                 None if room is None else str(room))
    return state


def timeline(events: Sequence[Mapping[str, Any]], present: Sequence[Mapping[str, Any]], *,
             start: float, end: float, bucket_s: float = 60.0) -> dict[str, Any]:
    """Per-bucket series over [start, end): present by zone and by room at each bucket's end,
    and arrivals and departures within it. ``events`` are those with ``ts >= start`` in
    ``seq`` order; ``present`` is the present set after the last of them."""
    count = max(1, int((end - start) // bucket_s) + 1)
    state = _start_state(events, present)
    zones: dict[str, list[int]] = {zone: [0] * count for zone in ZONES}
    rooms: dict[str, list[int]] = {}
    arrivals = [0] * count
    departures = [0] * count
    index = 0

    def record(upto: int) -> None:
        nonlocal index
        while index < min(upto, count):
            for zone, room in state.values():
                zones.setdefault(zone, [0] * count)[index] += 1
                if room is not None:
                    rooms.setdefault(room, [0] * count)[index] += 1
            index += 1

    for event in events:
        at = int((float(event["ts"]) - start) // bucket_s)
        record(at)
        bucket = min(max(at, 0), count - 1)
        contact_id = str(event["contact"]["id"])
        kind = event["type"]
        room = event.get("room")
        if kind == "departed":
            departures[bucket] += 1
            state.pop(contact_id, None)
        elif kind in ("arrived", "zone", "moved"):
            if kind == "arrived":
                arrivals[bucket] += 1
            old = state.get(contact_id)
            state[contact_id] = (str(event.get("zone") or (old[0] if old else "far")),
                                 None if room is None else str(room))
    record(count)
    return {"start": start, "bucket_s": bucket_s, "zones": zones, "rooms": rooms,
            "arrivals": arrivals, "departures": departures}


# -- scanner health -----------------------------------------------------------------------------


def problems(status: Mapping[str, Any]) -> list[str]:
    """What is wrong with a scanner (or the venue service), in words, from its status."""
    found: list[str] = []
    if status.get("role") == "venue":
        if not status.get("broker_connected", True):
            found.append("the MQTT broker cannot be reached: no scanner's events come in")
        for name in status.get("scanners_offline", ()):
            found.append(f"scanner {name} is offline (its last will was published)")
        return found
    state = status.get("source_state")
    error = status.get("last_error")
    if state == "backoff":
        found.append("the radio is not scanning: waiting to retry after a failure")
    elif state == "failed":
        found.append("the radio cannot scan with this configuration")
    elif state in ("starting", "stopped"):
        found.append(f"the radio is {state}, not scanning yet")
    elif state == "scanning" and not status.get("advertisements_per_s") and (
        float(status.get("uptime_s") or 0) > 30
    ):
        found.append("scanning, but nothing is heard: is the adapter in range of anyone?")
    if status.get("dropped"):
        found.append(f"{status['dropped']} advertisements were dropped: the pipeline fell "
                     "behind the radio")
    if float(status.get("loop_lag_ms") or 0) > 500:
        found.append(f"the daemon is overloaded: its loop lags {status['loop_lag_ms']} ms")
    if error:
        found.append(f"last error: {error}")
    return found
