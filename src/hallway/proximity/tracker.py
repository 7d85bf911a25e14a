"""The per-contact presence tracker: sightings and clock ticks in, SPEC §5 decisions out.

Theory of operation
-------------------
Each contact (not each address: phones rotate theirs) has a track. Every sighting's RSSI is
turned into a level relative to the device's 1 m power (the frame's measured power where it
carries one, else a per-kind default, plus the contact's calibration) and smoothed on two time
scales (``filter.LevelFilter``): a long average while the device keeps still, which is what
tells a seated person at 11 m from one at 13 m, and a short one that takes over as soon as a
move is evident. Beside them the track keeps the median of its levels over the last 15 s.
Distance follows from the log-distance model ``level = offset - 10·n·log10(d)`` with the
venue's exponent ``n`` and the receiver's offset (0, or fitted from reference beacons:
``calibration.Calibrator``).

Presence compares the levels with two radii a little apart: the arrive radius inside the
presence radius and the depart radius outside it (``presence_hysteresis_db``). A contact is
inside when the long average, the recent median, or the short average far past the radius
(``quick_margin_db``: someone walking in) says so; outside only when the long or the short
average says so *and* the recent median agrees (on a lossy receiver, below, a present contact's
strongest recent level must agree too). It arrives after it stayed inside for
``arrive_confirm_s`` and ``arrive_confirm_sightings`` sightings, and departs ``out_of_range``
after it stayed outside for ``depart_confirm_s`` and ``depart_confirm_sightings``; in between
nothing changes, so a person standing at the edge does not flap.

Silence is judged against the contact's own learned advertising interval (the lowest decile
of its recent gaps, carried across address rotations because the track is the contact's).
After a few intervals without a sighting the contact is silent-but-present. How long that may
last depends on how it went quiet: a contact that was still, inside the hold radius and heard
well until then (a locked phone on a seat) is held for ``quiet_hold_s`` and then departs with
``timeout``; one that was moving, falling, at the edge or already losing most of its packets
(someone walking out of reach) departs ``out_of_range`` after ``fade_timeout_s``. No contact
stays present longer than ``quiet_hold_s`` after its last sighting.

Far from the scanner, near the receiver's floor, only the strongest packets get through, so
the heard ones read as if the device were much nearer. The tracker counts the packets it
misses (the learned interval says how many to expect) into a reception share, and learns the
venue's base share (collisions) from strong devices; a device heard at well under the base
share has its levels capped at what the floor model gives for that share
(``reception_floor_dbm``, ``shadowing_db``). Only phones pause (``pausing_kinds``): a badge
that goes silent has left, however near it seemed.

The presence machine is the table ``TRANSITIONS`` of (state, input) -> (state, action); the
inputs come from ``observe`` (a sighting: where the level is) and ``_classify_silence`` (a
tick: how long and how it has been quiet). Zones run beside it: a zone changes only when the
distance is past an edge by ``zone_hysteresis_db`` for ``zone_confirm_s``.

Check-ins (SPEC §3.1: a phone that cannot advertise writes its identifier over GATT at least
every 30 s, with the level at which it hears the scanner) are sightings with ``carrier``
``checkin``. Their level is the phone's ``heard_rssi`` against the scanner's own 1 m power
(the sighting's ``measured_power``), the same path seen from the other end. A check-in is a
deliberate report, seldom more than one per 10 s, so two in a row inside the arrive radius
arrive (one alone when it is clearly inside: past it by ``quick_margin_db``) and two in a row
beyond the depart radius depart (one alone when far beyond); it teaches nothing about the
advertising interval or reception share. Its level is its own (the long average
would lag a walk by several check-ins), averaged with the previous check-in's when the two
agree within ``_CHECKIN_AGREE_DB``. Each check-in promises the next: until
``checkin_hold_s`` (or, if shorter, twice the phone's latest check-in gaps plus 5 s, but never
less than the 30 s the SPEC allows between check-ins plus 5 s) after it, the contact is
treated as heard, so a check-in-only phone never goes quiet between
check-ins; once that has passed with nothing heard since, it departs (``timeout``). A contact
seen both ways is one track, and its silences are judged as usual while it advertises.

What each rule assumes about the radio, and what happens when it does not hold
-----------------------------------------------------------------------------
The receiver's own pattern is learned from every advertisement heard, strangers' included
(``heard``; ``receiver.ReceiverMonitor`` keeps counters of arrival times only): the share of
time it listens and the length of its gaps between listening windows. A receiver that listens
less than ``_LISTENING_MIN`` of the time, or that too little was heard from to tell, is
*lossy*; ``status`` says which (``proximity.receiver``).

- Level -> distance assumes the log-distance model with the configured (or fitted) exponent
  and a 1 m power that is right for the device. A phone in a pocket, a low transmit power or
  a receiver with its own gain error read further than they are: all the tracker can do alone
  is to use the power the frame carries (the app's calibrated value for its model) ahead of
  the per-kind default; a contact's ``calibration_db`` (``hallway calibrate``) and reference
  beacons (receiver offset and exponent) correct the rest. Without them, such devices are
  missed near the radius; the tracker does not guess.
- The reception-share floor rule assumes that lost packets mean distance: a receiver that
  listens all the time, whose base share (from strong devices) is known. It is on only when
  the receiver is not lossy, the base share was learned from ``_BASE_MIN_UPDATES`` strong
  sightings and is at least ``_BASE_MIN``. Otherwise it is off (``reception_rule``) and a
  rarely heard device is judged by its levels alone; far devices may then read a little near.
- Confirmation assumes some sightings arrive within the confirmation time. It needs both the
  time and a count of sightings, so a receiver that hears one packet in twenty neither
  confirms on one sighting nor never confirms: it confirms as soon as the sightings are there.
- Silence rules assume the learned interval says when the next packet is due. On a lossy
  receiver a silence counts only after ``_QUIET_GAPS`` of the contact's typical gaps between
  sightings (before they are learned: of the receiver's gaps between windows), and the "heard
  well until then" test of a pause is judged against those gaps, not the interval. Where even
  that fails (a device heard once a minute), silences resolve by the longer fade timeout.
- After a silence (longer than the contact's quiet time, see above), a contact heard within
  the radius while its levels from before the silence say beyond is judged on its new levels:
  the filter starts afresh and the recent median restarts from the levels heard since. This
  assumes that a phone silent for that long may have moved (people walk about 1.4 m/s; a
  silence of 8 s is 11 m), so the old levels describe where it was, not where it is. Without
  it, a contact that walked away, went quiet and came back was judged by the far levels of its
  leaving: it departed while heard strongly and arrived again seconds later
  (``bench/flood.py --tracker-only``: every departure of that venue happened so). Where the
  assumption fails (a far phone whose first packet after a silence is a lucky strong one),
  that packet decides as for a phone heard for the first time: it still needs the
  confirmation's time and sightings to arrive. A contact that comes back weak keeps its old
  levels, as before.
- The filters assume samples are independent around a slowly moving level. Multipath fading
  makes single samples swing 20 dB: no single sample past the first ones moves the short
  average by more than half its distance, residuals are clipped, and the recent median and
  the long average both must agree before anyone departs on levels.
- Holding a present contact on its strongest level (lossy receivers, contacts never
  calibrated) assumes that what the tracker does not know about a phone's levels takes dB
  away from its line-of-sight level: a pocket or a body between phone and scanner, multipath
  fades, a low transmit power. The strongest of a few levels is then the least biased one,
  where the median of the two or three that a receiver listening in windows lets through lies
  well below the line. So on a lossy receiver such a contact departs on levels only once its
  strongest level over the last ``_STRONGEST_GAPS`` of its typical gaps between sightings
  (30-90 s) lies beyond the depart radius as well. The window never reaches back past the
  filter's last detected move: the strongest level must come from where the phone is now.
  Arrivals do not use it: the strongest level of someone passing beyond the radius would make
  them arrive. Where the assumption fails (the scatter is as often above the line as below it,
  as log-normal shadowing is), the strongest level reads nearer than the phone is: a contact
  that arrived on a lucky level while beyond the radius, or walked out without the filter
  seeing a move, stays present until its strongest level of a whole window lies beyond the
  depart radius, or until silence departs it. That shows as ghost time; in
  ``bench/accuracy.py``'s pocket-desk most of the added ghost time is such arrivals, held. A
  contact with a ``calibration_db`` was measured at 1 m as it is carried, so its levels
  scatter around its line, not below it: it is judged by its median as before (with the rule,
  pocket-desk with every phone calibrated fell from 82.7 to 74.2 %, ghost time of the
  simulator's symmetric shadowing). A calibration of exactly 0 dB reads as none. On a
  receiver that hears (nearly) everything the rule is off: there the 15 s median has enough
  levels, and the strongest of 30 s of them is the noise's upper tail (seed 7, the 90th
  percentile of 30 s held on every receiver: the booth's balanced accuracy fell from 92.0 to
  76.7 %, people held 40 s past the radius).
- Reference beacons assume they stay where the config says. One that goes silent, moves, or
  disagrees with the others is left out and named in ``status``; with none left the defaults
  apply, so calibration never does worse than not having references.
"""

from __future__ import annotations

import math
from collections import deque
from enum import Enum, IntEnum
from statistics import NormalDist

from hallway.config import ProximityConfig
from hallway.models import (
    CHECKIN,
    DepartReason,
    EventType,
    KeyKind,
    PresenceEvent,
    PresentInfo,
    Sighting,
)
from hallway.proximity.calibration import Calibrator, Reference
from hallway.proximity.distance import db_factor
from hallway.proximity.filter import LevelFilter
from hallway.proximity.receiver import ReceiverMonitor
from hallway.proximity.references import reference_id
from hallway.proximity.zones import Zone, ZoneMap


class State(IntEnum):
    """Presence states of one contact (ints: cheap to hash in the transition table)."""

    ABSENT = 1  # not present
    CANDIDATE = 2  # heard inside the arrive radius, not yet for long enough
    PRESENT = 3  # present and heard recently
    LEAVING = 4  # present, but beyond the depart radius, not yet for long enough
    SILENT = 5  # present, silent for longer than its learned interval allows


class Input(IntEnum):
    """What a sighting or a tick says about a contact."""

    INSIDE = 1  # level inside the arrive radius
    INSIDE_HELD = 2  # ... continuously for arrive_confirm_s
    BAND = 3  # between the arrive and the depart radius
    OUTSIDE = 4  # beyond the depart radius
    OUTSIDE_HELD = 5  # ... continuously for depart_confirm_s
    QUIET = 6  # unheard for a few learned intervals
    FADED = 7  # unheard past the fade timeout after a fading or edge level
    EXPIRED = 8  # unheard past the quiet hold after a steady, near level
    REMOVE = 9  # revoked or shut down: leave now, with the caller's reason


class Action(Enum):
    """What a transition emits."""

    NONE = "none"
    ARRIVE = "arrive"
    DEPART_OUT_OF_RANGE = "depart_out_of_range"
    DEPART_TIMEOUT = "depart_timeout"
    DEPART_GIVEN = "depart_given"


_S, _I, _A = State, Input, Action
_ABSENT_ROW = {
    _I.INSIDE: (_S.CANDIDATE, _A.NONE),
    _I.INSIDE_HELD: (_S.PRESENT, _A.ARRIVE),
    _I.BAND: (_S.ABSENT, _A.NONE),
    _I.OUTSIDE: (_S.ABSENT, _A.NONE),
    _I.OUTSIDE_HELD: (_S.ABSENT, _A.NONE),
    _I.QUIET: (_S.ABSENT, _A.NONE),
    _I.FADED: (_S.ABSENT, _A.NONE),
    _I.EXPIRED: (_S.ABSENT, _A.NONE),
    _I.REMOVE: (_S.ABSENT, _A.NONE),
}
_PRESENT_ROW = {
    _I.INSIDE: (_S.PRESENT, _A.NONE),
    _I.INSIDE_HELD: (_S.PRESENT, _A.NONE),
    _I.BAND: (_S.PRESENT, _A.NONE),
    _I.OUTSIDE: (_S.LEAVING, _A.NONE),
    _I.OUTSIDE_HELD: (_S.ABSENT, _A.DEPART_OUT_OF_RANGE),
    _I.QUIET: (_S.SILENT, _A.NONE),
    _I.FADED: (_S.ABSENT, _A.DEPART_OUT_OF_RANGE),
    _I.EXPIRED: (_S.ABSENT, _A.DEPART_TIMEOUT),
    _I.REMOVE: (_S.ABSENT, _A.DEPART_GIVEN),
}
TRANSITIONS: dict[tuple[State, Input], tuple[State, Action]] = {
    **{(_S.ABSENT, i): t for i, t in _ABSENT_ROW.items()},
    # A candidate is an absent contact on probation: anything but staying inside resets it.
    **{(_S.CANDIDATE, i): t for i, t in _ABSENT_ROW.items()},
    (_S.CANDIDATE, _I.INSIDE): (_S.CANDIDATE, _A.NONE),
    **{(_S.PRESENT, i): t for i, t in _PRESENT_ROW.items()},
    **{(_S.SILENT, i): t for i, t in _PRESENT_ROW.items()},
    (_S.SILENT, _I.QUIET): (_S.SILENT, _A.NONE),
    **{(_S.LEAVING, i): t for i, t in _PRESENT_ROW.items()},
    (_S.LEAVING, _I.OUTSIDE): (_S.LEAVING, _A.NONE),
    # Beyond the depart radius and then silent: it walked away and faded out.
    (_S.LEAVING, _I.QUIET): (_S.ABSENT, _A.DEPART_OUT_OF_RANGE),
    (_S.LEAVING, _I.EXPIRED): (_S.ABSENT, _A.DEPART_OUT_OF_RANGE),
}

PRESENT_STATES = frozenset({State.PRESENT, State.LEAVING, State.SILENT})

_GAP_RING = 32
_RECENT_MAX = 256
_HEALTH_WINDOW_S = 10.0
_HEALTHY_FRACTION = 0.35  # of the packets its interval promises: below, the signal is at the floor
_MAX_INTERVAL_S = 30.0
_MIN_GAP_S = 0.005
_RECEPTION_SLOTS = 30  # the reception share remembers about this many expected packets
_RECEPTION_WEIGHT = 1.0 / _RECEPTION_SLOTS
_MISSES_PER_GAP = 5  # a longer gap may be a pause, not lost packets: count this many at most
_BASE_WEIGHT = 1.0 / 2000  # per strong sighting, for the venue's base reception rate
_STRONG_ABOVE_FLOOR_DB = 15.0  # where nothing but collisions loses packets
_RECEPTION_EVIDENCE = 0.7  # below this share of its base rate, reception says "at the floor"
_INV_CDF = NormalDist().inv_cdf
_SETTLED_GAPS = 3  # gaps before the interval (and so the reception share) means anything
_CHECKIN_PERIOD_S = 30.0  # SPEC §3.1: a phone checks in at least this often while it hears us
_CHECKIN_SLACK_S = 5.0
_CHECKIN_PAIR_S = 60.0  # two check-ins further apart are not averaged
_CHECKIN_AGREE_DB = 8.0  # two check-ins within this agree (about twice their noise)
_LISTENING_MIN = 0.8  # a receiver listening less than this share of the time is lossy
_BASE_MIN = 0.5  # a base reception below this: the receiver loses too much to read shares
_BASE_MIN_UPDATES = 200  # strong sightings before the base reception is trusted
_MEDIAN_WINDOW_S = 15.0  # the recent median an arrival may also go by
_MEDIAN_MAX = 64  # levels kept for it
_FIT_EVERY_S = 10.0  # refit from the reference beacons this often
_QUIET_GAPS = 4.0  # on a lossy receiver, silent after this many typical gaps
# On a lossy receiver a present contact departs on levels only once its strongest level over
# this many of its typical gaps (within the bounds below) lies beyond the depart radius.
_STRONGEST_GAPS = 6.0
_STRONGEST_MIN_S = 30.0
_STRONGEST_MAX_S = 90.0


class _Track:
    """Everything the tracker knows about one contact."""

    __slots__ = (
        "arrived_ts",
        "calibration_db",
        "carrier",
        "checkin_gaps",
        "checkin_level",
        "checkin_level_ts",
        "checkin_ts",
        "checkin_until",
        "contact_id",
        "filter",
        "gap_count",
        "gaps",
        "inside_count",
        "inside_since",
        "interval_s",
        "last_ts",
        "level",
        "median",
        "outside_count",
        "outside_since",
        "power_dbm",
        "recent",
        "recent_level_ts",
        "recent_levels",
        "reception",
        "slots",
        "state",
        "typical_gap_s",
        "via",
        "zone",
        "zone_pending",
        "zone_pending_since",
    )

    def __init__(self, contact_id: str, rssi_filter: LevelFilter, interval_s: float) -> None:
        self.contact_id = contact_id
        self.state = State.ABSENT
        self.filter = rssi_filter
        self.level = 0.0  # smoothed RSSI relative to the 1 m power (dB, negative)
        self.median = -math.inf  # the median level of the last seconds (``_recent_median``)
        self.power_dbm = 0.0  # the 1 m power (with calibration) of the latest sighting
        self.calibration_db = 0.0
        self.via = KeyKind.ADDRESS
        self.last_ts = -math.inf
        self.inside_since: float | None = None
        self.outside_since: float | None = None
        self.arrived_ts = 0.0
        self.zone = Zone.FAR
        self.zone_pending: Zone | None = None
        self.zone_pending_since = 0.0
        self.gaps: list[float] = []
        self.gap_count = 0
        self.interval_s = interval_s
        self.typical_gap_s = interval_s  # the median gap between its sightings, learned
        self.inside_count = 0  # sightings in the current run inside the arrive radius
        self.outside_count = 0  # ... beyond the depart radius
        self.recent: deque[float] = deque(maxlen=_RECENT_MAX)  # times of the latest sightings
        # The latest levels and their times, in two deques of floats: a (time, level) tuple per
        # sighting would be a new object for the cyclic GC to walk (thousands a second in a
        # crowd: its young collections grew to 17,000 objects and 8 ms), a float is not one.
        self.recent_level_ts: deque[float] = deque(maxlen=_MEDIAN_MAX)
        self.recent_levels: deque[float] = deque(maxlen=_MEDIAN_MAX)
        self.reception = 1.0  # share of its expected packets heard lately (learned interval)
        self.slots = 0  # expected packets counted into ``reception``
        self.carrier: str | None = None  # of the latest sighting
        self.checkin_ts = -math.inf  # the latest check-in
        self.checkin_until = -math.inf  # treated as heard until then (the next one is due)
        self.checkin_gaps = (_CHECKIN_PERIOD_S, _CHECKIN_PERIOD_S)  # the latest two gaps
        self.checkin_level = 0.0
        self.checkin_level_ts = -math.inf


class Tracker:
    """Presence of contacts from their sightings; pure: every method takes the time."""

    def __init__(self, config: ProximityConfig, *, checkin_hold_s: float = 65.0) -> None:
        """``checkin_hold_s``: the longest a check-in keeps its contact heard (see above)."""
        self._config = config
        self._checkin_hold_s = checkin_hold_s
        self._set_radio(config.path_loss_exponent, config.receive_offset_db)
        self._calibrator = Calibrator(
            [Reference(reference_id(r), r.distance_m, r.key) for r in config.reference],
            exponent=config.path_loss_exponent, offset_db=config.receive_offset_db,
        )
        self._next_fit = -math.inf
        default_power = config.default_measured_power_dbm
        self._kind_power = {
            kind: float(config.measured_power_dbm.get(kind.value, default_power))
            for kind in KeyKind
        }
        self._pausing = frozenset(KeyKind(kind) for kind in config.pausing_kinds)
        self._floor_dbm = config.reception_floor_dbm
        self._shadowing_db = config.shadowing_db
        self._base_reception = 0.85  # share of packets heard from strong devices, learned
        self._base_updates = 0  # strong sightings behind it
        self._receiver = ReceiverMonitor()  # the receiver's listening pattern, from everyone
        self._stream_reported = False  # a caller reports every advertisement (``heard``)
        self._tracks: dict[str, _Track] = {}
        self._active: set[str] = set()  # contacts not ABSENT: the ones tick must look at

    # -- inputs --------------------------------------------------------------------------------

    def heard(self, ts: float) -> None:
        """Any advertisement heard at ``ts``, a stranger's too: only its time is kept, in the
        receiver's counters (``ReceiverMonitor``)."""
        self._stream_reported = True
        self._receiver.heard(ts)

    def heard_elsewhere(self, snapshot: tuple[float, ...]) -> None:
        """The receiver's counters kept by someone else (``ReceiverMonitor.snapshot``: a
        replay's reader process sees every advertisement, the tracker only the contacts')."""
        self._stream_reported = True
        self._receiver.load(snapshot)

    def observe(self, sighting: Sighting, *, calibration_db: float = 0.0) -> list[PresenceEvent]:
        """Take one sighting; return the events it causes (at most an arrival or a departure,
        and a zone change)."""
        config = self._config
        cid = sighting.contact_id
        if self._calibrator.is_reference(cid):
            # A reference beacon: the venue's instrument, not an attendee.
            power = sighting.measured_power
            base = self._kind_power[sighting.via] if power is None else power
            self._calibrator.observe(cid, sighting.ts, sighting.rssi - base - calibration_db)
            return []
        track = self._tracks.get(cid)
        if track is None:
            track = self._tracks[cid] = _Track(cid, self._new_filter(), config.initial_interval_s)
        ts = sighting.ts
        gap = ts - track.last_ts
        checkin = sighting.carrier == CHECKIN
        expected = checkin and ts <= track.checkin_until  # a check-in that was due
        if checkin:
            self._note_checkin(track, ts)
        elif gap > _MIN_GAP_S and track.last_ts > -math.inf:
            self._learn_gap(track, gap)
            self._count_reception(track, gap)
        after_silence = (gap > self._quiet_after(track) and gap > config.quiet_min_s
                         and not expected)
        if after_silence:
            # A silence breaks any run towards arriving or departing.
            track.inside_since = track.outside_since = None
            track.inside_count = track.outside_count = 0
        if calibration_db != track.calibration_db:
            # Recalibrated: what was learned stays, in the new reference (levels are RSSI minus
            # the calibrated power), so a corrected phone reads right at once.
            track.filter.shift(track.calibration_db - calibration_db)
            track.calibration_db = calibration_db
        power = sighting.measured_power
        if power is None:
            track.power_dbm = self._kind_power[sighting.via] + calibration_db
        else:
            track.power_dbm = power + calibration_db
        value = sighting.rssi - track.power_dbm
        if (after_silence and not checkin and value >= self._arrive_level
                and track.level < self._depart_level):
            # Back from a silence, heard within the radius while the levels from before it
            # say beyond: the phone has moved (see "After a silence" above); those levels go.
            track.filter = self._new_filter()
            track.recent_level_ts.clear()
            track.recent_levels.clear()
        level = track.filter.update(ts, value)
        fast = track.filter.fast
        ceiling = math.inf
        if checkin:
            # A check-in is already the phone's own average of what it heard, and the next is
            # seconds away: the long average would lag a walk by several check-ins. Two in a
            # row that agree are averaged (a still phone at the edge); one that differs by
            # more than the noise allows starts afresh (a walk).
            raw = value
            previous = track.checkin_level
            if (ts - track.checkin_level_ts <= _CHECKIN_PAIR_S
                    and abs(raw - previous) < _CHECKIN_AGREE_DB):
                raw = 0.5 * (raw + previous)
            track.checkin_level, track.checkin_level_ts = raw, ts
            level = fast = raw
        else:
            track.recent_level_ts.append(ts)
            track.recent_levels.append(value)
            if track.gap_count >= _SETTLED_GAPS:
                ceiling = self._reception_ceiling(track, level)
                level, fast = min(level, ceiling), min(fast, ceiling)
        track.level = level
        track.via = sighting.via
        track.carrier = sighting.carrier
        track.last_ts = max(track.last_ts, ts)
        track.recent.append(ts)

        # Confirmation takes both time and sightings: time alone would hand the decision to
        # one sighting wherever packets are rare (a receiver listening in windows).
        # Two levels make a median once the reception share may cap them; three before.
        least = 2 if track.gap_count >= _SETTLED_GAPS else 3
        median = track.median = (
            level if checkin else min(self._recent_median(track, ts, least), ceiling))
        if (
            level >= self._arrive_level
            or fast >= self._quick_arrive_level
            or median >= self._arrive_level
        ):
            track.outside_since = None
            track.outside_count = 0
            if track.inside_since is None:
                track.inside_since = ts
                track.inside_count = 0
            track.inside_count += 1
            held = (
                ts - track.inside_since >= config.arrive_confirm_s
                and track.inside_count >= config.arrive_confirm_sightings
            ) or (checkin and (ts > track.inside_since or fast >= self._quick_arrive_level))
            signal = Input.INSIDE_HELD if held else Input.INSIDE
        elif (
            (level < self._depart_level or fast < self._quick_depart_level)
            and median < self._depart_level
            and not self._held_by_strongest(track, ts, ceiling)
        ):
            track.inside_since = None
            track.inside_count = 0
            if track.outside_since is None:
                track.outside_since = ts
                track.outside_count = 0
            track.outside_count += 1
            held = (
                ts - track.outside_since >= config.depart_confirm_s
                and track.outside_count >= config.depart_confirm_sightings
            )
            if checkin and (ts > track.outside_since or fast < self._quick_depart_level):
                held = True  # a second check-in beyond the radius, or one far beyond
            signal = Input.OUTSIDE_HELD if held else Input.OUTSIDE
        else:
            track.inside_since = track.outside_since = None
            track.inside_count = track.outside_count = 0
            signal = Input.BAND

        before = track.state
        events = self._step(track, signal, ts)
        if track.state in PRESENT_STATES:
            self._active.add(cid)
            if before in PRESENT_STATES:
                self._update_zone(track, ts, events)
        elif track.state is State.CANDIDATE:
            self._active.add(cid)
        else:
            self._active.discard(cid)
        return events

    def tick(self, now: float) -> list[PresenceEvent]:
        """Apply silences up to ``now``: quiet, fade-outs and hold timeouts. Call about 1/s."""
        events: list[PresenceEvent] = []
        done: list[str] = []
        if now >= self._next_fit:
            self._recalibrate(now)
        for cid in self._active:
            track = self._tracks[cid]
            signal = self._classify_silence(track, now)
            if signal is None:
                continue
            events.extend(self._step(track, signal, now))
            if track.state is State.ABSENT:
                done.append(cid)
        for cid in done:
            self._active.discard(cid)
        return events

    def remove(self, contact_id: str, *, now: float, reason: DepartReason) -> list[PresenceEvent]:
        """Forget a contact (revoked, consent expired); a present one departs with ``reason``."""
        track = self._tracks.pop(contact_id, None)
        self._active.discard(contact_id)
        if track is None:
            return []
        return self._step(track, Input.REMOVE, now, reason=reason)

    def shutdown(self, now: float) -> list[PresenceEvent]:
        """Depart every present contact with reason ``shutdown``; what was learned is kept."""
        events: list[PresenceEvent] = []
        for cid in sorted(self._active):
            track = self._tracks[cid]
            events.extend(self._step(track, Input.REMOVE, now, reason=DepartReason.SHUTDOWN))
            track.inside_since = track.outside_since = None
            track.inside_count = track.outside_count = 0
        self._active.clear()
        return events

    # -- queries -------------------------------------------------------------------------------

    def present(self) -> list[PresentInfo]:
        """Every present contact with its current estimate, ordered by contact id."""
        result = []
        for cid in sorted(self._active):
            track = self._tracks[cid]
            if track.state in PRESENT_STATES:
                result.append(
                    PresentInfo(
                        contact_id=cid,
                        zone=track.zone.value,
                        distance_m=self._distance(track.level),
                        rssi=track.level + track.power_dbm,
                        since=track.arrived_ts,
                        via=track.via,
                        carrier=track.carrier,
                    )
                )
        return result

    def present_count(self) -> int:
        """How many contacts are present: ``len(present())`` without building the list (the
        status figures ask every few seconds, and a crowd makes the list hundreds long)."""
        tracks = self._tracks
        return sum(1 for cid in self._active if tracks[cid].state in PRESENT_STATES)

    def state(self, contact_id: str) -> State:
        """The presence state of a contact (ABSENT for one never seen)."""
        track = self._tracks.get(contact_id)
        return State.ABSENT if track is None else track.state

    def interval_s(self, contact_id: str) -> float | None:
        """The learned advertising interval of a contact, or None if never seen."""
        track = self._tracks.get(contact_id)
        return None if track is None else track.interval_s

    def last_heard(self, contact_id: str) -> float | None:
        """When the contact was last sighted, or None."""
        track = self._tracks.get(contact_id)
        return None if track is None else track.last_ts

    def receiver_status(self) -> dict[str, float | bool | str]:
        """What the tracker knows of the receiver, for ``hallway status`` (counters only)."""
        out: dict[str, float | bool | str] = dict(self._receiver.status())
        out["base_reception"] = round(self._base_reception, 3)
        out["reception_rule"] = "on" if self._reception_rule_on() else "off"
        out["lossy"] = self._lossy()
        return out

    def references_taken(self, taken: dict[str, str]) -> None:
        """Badge references whose key an imported contact holds (reference id -> contact id):
        their sightings are the contact's, and the reference says so (``Calibrator``)."""
        self._calibrator.taken = taken

    def calibration_status(self, now: float) -> dict[str, object]:
        """The venue's fitted path loss and the reference beacons' states (``Calibrator``)."""
        return self._calibrator.status(now)

    @property
    def longest_silence_s(self) -> float:
        """No contact stays present longer than this after its last sighting."""
        return self._config.quiet_hold_s

    # -- internals -----------------------------------------------------------------------------

    def _set_radio(self, exponent: float, offset_db: float) -> None:
        """The levels that stand for the radii, for this path-loss exponent and receiver
        offset (``level = offset - 10·n·log10(d)``)."""
        config = self._config
        self._exponent = exponent
        self._offset_db = offset_db
        self._ten_n = 10.0 * exponent
        radius_level = offset_db - self._ten_n * math.log10(config.presence_radius_m)
        self._arrive_level = radius_level + config.presence_hysteresis_db
        self._depart_level = radius_level - config.presence_hysteresis_db
        self._quick_arrive_level = self._arrive_level + config.quick_margin_db
        self._quick_depart_level = self._depart_level - config.quick_margin_db
        hold_radius = config.hold_radius_m or config.presence_radius_m
        self._hold_level = offset_db - self._ten_n * math.log10(hold_radius)
        self._zones = ZoneMap(
            immediate_m=config.immediate_m,
            near_m=config.near_m,
            hysteresis_factor=db_factor(config.zone_hysteresis_db, exponent=exponent),
        )

    def _recalibrate(self, now: float) -> None:
        """Refit from the reference beacons (every ``_FIT_EVERY_S``) and move the radii."""
        self._next_fit = now + _FIT_EVERY_S
        fit = self._calibrator.update(now)
        if (
            abs(fit.exponent - self._exponent) > 0.005
            or abs(fit.offset_db - self._offset_db) > 0.05
        ):
            self._set_radio(fit.exponent, fit.offset_db)

    def _new_filter(self) -> LevelFilter:
        config = self._config
        return LevelFilter(
            fast_time_constant_s=config.rssi_time_constant_s,
            slow_time_constant_s=config.settle_time_constant_s,
            motion_db=config.motion_threshold_db,
            evidence_db_s=config.motion_evidence_db_s,
            clip_min_db=config.outlier_clip_db,
        )

    def _distance(self, level: float) -> float:
        return float(10.0 ** ((self._offset_db - level) / self._ten_n))

    def _reception_ceiling(self, track: _Track, level: float) -> float:
        """The highest level the share of packets heard allows where it says the signal is at
        the receiver's floor (only the strongest packets get through there, so the heard ones
        read high); inf where it says nothing. Strong devices teach the venue's base share
        (collisions)."""
        floor = self._floor_dbm
        if level + track.power_dbm > floor + _STRONG_ABOVE_FLOOR_DB:
            self._base_reception += _BASE_WEIGHT * (track.reception - self._base_reception)
            self._base_updates += 1
            return math.inf
        if not self._reception_rule_on():
            return math.inf
        share = track.reception / self._base_reception
        if share >= _RECEPTION_EVIDENCE:
            return math.inf
        return floor + self._shadowing_db * _INV_CDF(max(share, 0.01)) - track.power_dbm

    @staticmethod
    def _recent_median(track: _Track, ts: float, least: int) -> float:
        """The median of the levels of the last ``_MEDIAN_WINDOW_S`` (at least ``least`` of
        them; -inf otherwise): what the long average has not caught up with yet after a walk-in."""
        since = ts - _MEDIAN_WINDOW_S
        values = [v for t, v in zip(track.recent_level_ts, track.recent_levels, strict=True)
                  if t > since]
        if len(values) < least:
            return -math.inf
        values.sort()
        return values[len(values) // 2]

    def _held_by_strongest(self, track: _Track, ts: float, ceiling: float) -> bool:
        """On a lossy receiver, whether a present contact that was never calibrated (its
        ``calibration_db`` is 0) has its strongest level lately still within the depart
        radius, so that its levels do not make it depart. Lately: the last
        ``_STRONGEST_GAPS`` of its typical gaps between sightings (at least
        ``_STRONGEST_MIN_S``, at most ``_STRONGEST_MAX_S``), and never before the filter's
        last detected move (the strongest level must come from where the phone is now)."""
        if track.state not in PRESENT_STATES or track.calibration_db or not self._lossy():
            return False
        window = min(max(_STRONGEST_MIN_S, _STRONGEST_GAPS * track.typical_gap_s),
                     _STRONGEST_MAX_S)
        since = max(ts - window, track.filter.last_move_ts)
        strongest = max((v for t, v in zip(track.recent_level_ts, track.recent_levels,
                                           strict=True) if t >= since), default=-math.inf)
        return min(strongest, ceiling) >= self._depart_level

    def _lossy(self) -> bool:
        """True when the receiver loses packets for reasons other than distance, or when it
        cannot be told: the stream is reported (``heard``) but the receiver listens in windows
        (``ReceiverMonitor.duty``), or too little of it was heard yet."""
        if not self._stream_reported:
            return False  # the caller reports no stream: the configured radio is assumed
        receiver = self._receiver
        return not receiver.confident or receiver.duty < _LISTENING_MIN

    def _reception_rule_on(self) -> bool:
        """Whether the reception share may say "at the floor": only on a receiver that listens
        all the time and hears strong devices well (their share is the base it is read
        against, learned from enough of them)."""
        if self._lossy():
            return False
        if self._stream_reported and self._base_updates < _BASE_MIN_UPDATES:
            return False
        return self._base_reception >= _BASE_MIN

    def _count_reception(self, track: _Track, gap: float) -> None:
        """The packets missed in ``gap`` and the one heard, into the reception share (a
        running mean over the first slots, then an exponential one)."""
        missed = min(max(round(gap / track.interval_s) - 1, 0), _MISSES_PER_GAP)
        if track.slots >= _RECEPTION_SLOTS:
            keep = (1.0 - _RECEPTION_WEIGHT) ** (missed + 1)
            track.reception = track.reception * keep + _RECEPTION_WEIGHT
            return
        reception = track.reception
        slots = track.slots
        for k in range(missed + 1):
            slots += 1
            weight = max(1.0 / slots, _RECEPTION_WEIGHT)
            reception += weight * ((1.0 if k == missed else 0.0) - reception)
        track.reception = reception
        track.slots = slots

    def _learn_gap(self, track: _Track, gap: float) -> None:
        gaps = track.gaps
        if len(gaps) < _GAP_RING:
            gaps.append(gap)
        else:
            gaps[track.gap_count % _GAP_RING] = gap
        track.gap_count += 1
        if track.gap_count >= 3 and track.gap_count % 4 in (0, 3):
            # The lowest decile: lost packets make gaps multiples of the interval, and
            # pauses make a few very long ones; the decile sees through both.
            ordered = sorted(gaps)
            track.interval_s = min(ordered[len(ordered) // 10], _MAX_INTERVAL_S)
            track.typical_gap_s = min(ordered[len(ordered) // 2], _MAX_INTERVAL_S)

    def _note_checkin(self, track: _Track, ts: float) -> None:
        """A check-in at ``ts``: learn the phone's check-in gap; hold it heard until the next
        one is overdue."""
        if ts <= track.checkin_until and ts - track.checkin_ts > _MIN_GAP_S:
            track.checkin_gaps = (track.checkin_gaps[1], ts - track.checkin_ts)
        track.checkin_ts = max(track.checkin_ts, ts)
        # The SPEC lets a phone check in as seldom as every 30 s, whatever it did before, so
        # the hold never ends sooner than that (plus slack); a phone that checks in more often
        # is held twice its latest gaps, up to checkin_hold_s.
        hold = min(self._checkin_hold_s,
                   max(2.0 * max(track.checkin_gaps), _CHECKIN_PERIOD_S) + _CHECKIN_SLACK_S)
        track.checkin_until = max(track.checkin_until, ts + hold)

    def _quiet_after(self, track: _Track) -> float:
        """How long a silence must last to mean anything: a few of its learned intervals; on
        a lossy receiver also a few of its typical gaps between sightings (before they are
        learned: of the receiver's gaps between listening windows), since there a silence of
        a few intervals is what the receiver does, not what the device does."""
        config = self._config
        quiet = max(config.quiet_min_s, config.quiet_after_intervals * track.interval_s)
        if self._lossy():
            if track.gap_count >= _SETTLED_GAPS:
                typical = track.typical_gap_s
            else:
                typical = max(track.interval_s, self._receiver.dead_gap_s)
            quiet = max(quiet, _QUIET_GAPS * typical)
        return quiet

    def _holds(self, track: _Track) -> bool:
        """True when the contact went quiet steady and near: a paused phone, not a walk-out."""
        if track.level < self._hold_level or track.via not in self._pausing:
            return False
        rssi_filter = track.filter
        config = self._config
        if (
            track.last_ts - rssi_filter.last_move_ts < config.steady_s
            or rssi_filter.down >= 0.2 * config.motion_evidence_db_s
            or rssi_filter.fast < rssi_filter.level - 1.5 * config.motion_threshold_db
        ):
            return False
        # Reception before the silence: a phone that paused was heard well until then; one
        # that faded out at the edge of reach was losing most of its packets already.
        window = _HEALTH_WINDOW_S
        if self._lossy():
            # Judged against what this receiver lets through: its typical gaps.
            window = max(window, 4.0 * track.typical_gap_s)
            expected = window / max(track.typical_gap_s, track.interval_s)
        else:
            expected = window / track.interval_s
        since = track.last_ts - window
        heard = sum(1 for ts in track.recent if ts > since)
        return heard >= _HEALTHY_FRACTION * expected

    def _classify_silence(self, track: _Track, now: float) -> Input | None:
        if now < track.checkin_until:
            return None  # the phone checked in and its next check-in is not overdue yet
        if track.checkin_ts >= track.last_ts:
            # Its latest sighting was a check-in and the next is overdue: nothing else is
            # coming (it advertises nothing we hear), so it has gone.
            if track.state is State.CANDIDATE or track.state is State.LEAVING:
                return Input.QUIET
            return Input.EXPIRED
        config = self._config
        silence = now - track.last_ts
        quiet_after = self._quiet_after(track)
        if silence < min(quiet_after, config.fade_timeout_s):
            return None
        if track.state is State.CANDIDATE or track.state is State.LEAVING:
            return Input.QUIET
        fade_after = min(
            max(config.fade_timeout_s, 2.0 * quiet_after), config.quiet_hold_s
        )
        if self._holds(track):
            return Input.EXPIRED if silence >= config.quiet_hold_s else Input.QUIET
        return Input.FADED if silence >= fade_after else Input.QUIET

    def _step(
        self, track: _Track, signal: Input, now: float, *, reason: DepartReason | None = None
    ) -> list[PresenceEvent]:
        state, action = TRANSITIONS[(track.state, signal)]
        track.state = state
        if action is Action.NONE:
            return []
        if action is Action.ARRIVE:
            distance = self._distance(track.level)
            track.zone = self._zones.zone_of(distance)
            track.zone_pending = None
            track.arrived_ts = now
            return [
                PresenceEvent(
                    type=EventType.ARRIVED,
                    ts=now,
                    contact_id=track.contact_id,
                    zone=track.zone.value,
                    distance_m=distance,
                    rssi=track.level + track.power_dbm,
                    via=track.via,
                    carrier=track.carrier,
                )
            ]
        if action is Action.DEPART_OUT_OF_RANGE:
            why = DepartReason.OUT_OF_RANGE
        elif action is Action.DEPART_TIMEOUT:
            why = DepartReason.TIMEOUT
        else:
            why = reason or DepartReason.SHUTDOWN
        return [
            PresenceEvent(
                type=EventType.DEPARTED,
                ts=now,
                contact_id=track.contact_id,
                zone=track.zone.value,
                distance_m=self._distance(track.level),
                rssi=track.level + track.power_dbm,
                via=track.via,
                dwell_s=max(0.0, now - track.arrived_ts),
                reason=why,
                carrier=track.carrier,
            )
        ]

    def _update_zone(self, track: _Track, ts: float, events: list[PresenceEvent]) -> None:
        distance = self._distance(track.level)
        candidate = self._zones.next_zone(track.zone, distance)
        if candidate is track.zone:
            track.zone_pending = None
            return
        if candidate is not track.zone_pending:
            track.zone_pending = candidate
            track.zone_pending_since = ts
        if ts - track.zone_pending_since >= self._config.zone_confirm_s:
            previous = track.zone
            track.zone = candidate
            track.zone_pending = None
            events.append(
                PresenceEvent(
                    type=EventType.ZONE,
                    ts=ts,
                    contact_id=track.contact_id,
                    zone=candidate.value,
                    distance_m=distance,
                    rssi=track.level + track.power_dbm,
                    via=track.via,
                    previous_zone=previous.value,
                    carrier=track.carrier,
                )
            )
