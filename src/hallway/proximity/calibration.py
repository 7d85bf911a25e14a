"""A venue that calibrates itself: reference beacons at known distances fit the path loss.

The tracker turns a level (RSSI minus the device's 1 m power) into a distance with the
log-distance model ``level = offset - 10·n·log10(d)``: ``n`` the venue's path-loss exponent,
``offset`` the receiver's own gain error (0 for a receiver that reads a 1 m power as it is
calibrated). A site survey sets ``n`` once; a receiver's offset (a few dB, -6..0 for phones)
and a room that fills with people change what is right. Reference beacons (``[[proximity.
reference]]``: a contact id, or a badge's own key (``hallway.proximity.references``), and its
``distance_m`` from the scanner) measure both all the time. The defaults are the configured
exponent and receive offset (``proximity.receive_offset_db``, a survey's:
``hallway calibrate --venue`` fits them with ``fit_points``, as the calibrator does).

Each reference's level is kept as one median per minute (the minute's readings), and its
estimate is the median of its last ``WINDOW_MINUTES`` minute medians: robust against fading
and people walking between it and the scanner. From the references that are usable:

- two or more at distances at least ``MIN_SPREAD`` apart (in log10): a least-squares fit of
  ``offset`` and ``n``, with ``n`` bounded to ``EXPONENT_BOUNDS``;
- one (or all at about the same distance): ``offset`` alone, at the configured ``n``;
- none: the configured ``n`` and offset 0 (the defaults).

The fit moves the tracker only as far as its confidence goes: each figure used is the default
and the fit weighed by their precision (the default taken to be within ``PRIOR_EXPONENT_SD``
and ``PRIOR_OFFSET_SD_DB`` of the truth, the fit within its standard error, which counts each
reference's scatter and its own unknown power error ``READING_SIGMA_DB``). A thin or noisy fit
changes little and an absent one nothing; the reported confidence is the smaller weight.

What goes wrong is detected and said (``status``): a reference unheard for ``SILENT_S`` is
``silent`` and left out; one whose last ``MOVE_MINUTES`` minute medians all lie more than
``MOVE_DB`` on the same side of its earlier ones has ``moved``: its distance is no longer the
configured one, so it is left out until it reads as before (put back) or the config changes;
references that disagree (a fitted ``n`` outside ``PLAUSIBLE``, or with three or more, one
lying ``OUTLIER_DB`` off the others' fit) make the fit ``inconsistent``: with two, the
defaults stay; with more, the outlier is left out.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass

WINDOW_MINUTES = 10
MIN_MINUTES = 2  # minute medians before a reference is usable
MIN_PER_MINUTE = 3  # readings in a minute for its median to count
SILENT_S = 300.0
MOVE_DB = 6.0
MOVE_MINUTES = 3
MIN_SPREAD = 0.15  # log10 of the distance ratio between references (a factor of 1.4)
EXPONENT_BOUNDS = (1.4, 4.0)
PLAUSIBLE = (1.0, 5.5)  # a fitted exponent outside this: the references disagree
OFFSET_BOUNDS = (-20.0, 10.0)
OUTLIER_DB = 8.0
PRIOR_EXPONENT_SD = 0.5  # how far a venue's exponent may be from the configured one
PRIOR_OFFSET_SD_DB = 4.0  # ... a receiver's offset from 0 (phones: -6..0 dB)
READING_SIGMA_DB = 1.5  # a reference's own unknown power error, on top of its scatter


@dataclass(frozen=True, slots=True)
class Reference:
    """A reference beacon: the contact whose sightings it makes, and its distance; ``key`` is
    how the config names it (``contact:ID`` or a badge's ``KIND:VALUE``)."""

    contact_id: str
    distance_m: float
    key: str = ""


@dataclass(frozen=True, slots=True)
class Fit:
    """What the tracker uses: exponent and offset (already blended by confidence)."""

    exponent: float
    offset_db: float
    confidence: float
    state: str


class _RefState:
    __slots__ = ("baseline", "current", "last_ts", "minute", "minutes", "moved_ts", "reference")

    def __init__(self, reference: Reference) -> None:
        self.reference = reference
        self.minute: int | None = None
        self.current: list[float] = []
        self.minutes: deque[float] = deque(maxlen=30)
        self.last_ts = -math.inf
        self.moved_ts: float | None = None  # when it was found moved (None: in place)
        self.baseline = 0.0  # its level before it moved


class Calibrator:
    """Fits the venue's exponent and the receiver's offset from reference beacons."""

    def __init__(self, references: list[Reference], *, exponent: float,
                 offset_db: float = 0.0) -> None:
        """``exponent`` and ``offset_db``: the configured defaults (a survey's, or 2.0 and 0)."""
        self._default = exponent
        self._default_offset = offset_db
        self._refs = {r.contact_id: _RefState(r) for r in references}
        self._fit = Fit(exponent, offset_db, 0.0, "defaults" if references else "no references")
        self._fitted: tuple[float, float] | None = None  # the raw fit (n, offset)
        # Badge references whose key an imported contact holds: reference id -> contact id.
        self.taken: dict[str, str] = {}
        self._problem = ""

    def is_reference(self, contact_id: str) -> bool:
        """True for a reference beacon's contact (not an attendee: no presence events)."""
        return contact_id in self._refs

    @property
    def fit(self) -> Fit:
        """The exponent and offset to use now."""
        return self._fit

    def observe(self, contact_id: str, ts: float, level: float) -> None:
        """One reading of a reference: its RSSI minus its 1 m power (dB)."""
        ref = self._refs.get(contact_id)
        if ref is None:
            return
        minute = int(ts // 60.0)
        if ref.minute is not None and minute != ref.minute:
            self._close_minute(ref, ts)
        ref.minute = minute
        ref.current.append(level)
        ref.last_ts = max(ref.last_ts, ts)

    def update(self, now: float) -> Fit:
        """Close finished minutes and refit (call about once a second or less often)."""
        minute = int(now // 60.0)
        for ref in self._refs.values():
            if ref.minute is not None and minute != ref.minute:
                self._close_minute(ref, now)
                ref.minute = None
        self._fit = self._compute(now)
        return self._fit

    # -- internals -----------------------------------------------------------------------------

    def _close_minute(self, ref: _RefState, now: float) -> None:
        values = ref.current
        ref.current = []
        if len(values) < MIN_PER_MINUTE:
            return
        ref.minutes.append(statistics.median(values))
        minutes = list(ref.minutes)
        if len(minutes) >= MOVE_MINUTES + MIN_MINUTES:
            recent = minutes[-MOVE_MINUTES:]
            before = statistics.median(minutes[:-MOVE_MINUTES])
            if ref.moved_ts is None and (
                all(v > before + MOVE_DB for v in recent)
                or all(v < before - MOVE_DB for v in recent)
            ):
                # Its distance is no longer the configured one: left out until it reads as
                # it did before (put back), however long that takes.
                ref.minutes = deque(recent, maxlen=30)
                ref.moved_ts = now
                ref.baseline = before
        if ref.moved_ts is not None and len(ref.minutes) >= MOVE_MINUTES:
            recent_level = statistics.median(list(ref.minutes)[-MOVE_MINUTES:])
            if abs(recent_level - ref.baseline) <= MOVE_DB / 2:
                ref.moved_ts = None  # back where it was: what it read while away is dropped
                ref.minutes = deque(list(ref.minutes)[-MOVE_MINUTES:], maxlen=30)

    def _usable(self, now: float) -> list[tuple[Reference, float, float]]:
        """(reference, level estimate, its standard error) of the references to fit."""
        out = []
        for ref in self._refs.values():
            if (
                now - ref.last_ts > SILENT_S
                or len(ref.minutes) < MIN_MINUTES
                or ref.moved_ts is not None
            ):
                continue
            window = list(ref.minutes)[-WINDOW_MINUTES:]
            level = statistics.median(window)
            spread = statistics.pstdev(window) if len(window) > 1 else 3.0
            error = math.hypot(spread / math.sqrt(len(window)), READING_SIGMA_DB)
            out.append((ref.reference, level, error))
        return out

    def _compute(self, now: float) -> Fit:
        default, base = self._default, self._default_offset
        if not self._refs:
            return Fit(default, base, 0.0, "no references")
        usable = self._usable(now)
        self._problem = ""
        if len(usable) >= 3:
            usable = self._drop_outlier(usable)
        if not usable:
            return Fit(default, base, 0.0, "defaults: no reference heard well enough yet")
        points = [(r.distance_m, level, error) for r, level, error in usable]
        fit, self._fitted, problem = fit_points(points, exponent=default, offset_db=base)
        if problem:
            self._problem = problem
            return fit
        if self._problem and fit.state == "fitted":
            return Fit(fit.exponent, fit.offset_db, fit.confidence, f"fitted; {self._problem}")
        return fit

    def _drop_outlier(
        self, usable: list[tuple[Reference, float, float]]
    ) -> list[tuple[Reference, float, float]]:
        """With three or more, leave out the one lying furthest off the line the others fit
        (where they fit a plausible one), if it lies more than ``OUTLIER_DB`` off."""
        worst: tuple[float, int] | None = None
        for k in range(len(usable)):
            rest = usable[:k] + usable[k + 1 :]
            xs = [-10.0 * math.log10(max(r.distance_m, 0.1)) for r, _, _ in rest]
            mx = statistics.fmean(xs)
            ml = statistics.fmean(v for _, v, _ in rest)
            sxx = sum((x - mx) ** 2 for x in xs)
            n = self._default if sxx < 1e-9 else sum(
                (x - mx) * (v - ml) for x, (_, v, _) in zip(xs, rest, strict=True)
            ) / sxx
            if not PLAUSIBLE[0] <= n <= PLAUSIBLE[1]:
                continue  # the others disagree among themselves: not this one's fault
            ref, level, _ = usable[k]
            x = -10.0 * math.log10(max(ref.distance_m, 0.1))
            off = abs(level - (ml + n * (x - mx)))
            if worst is None or off > worst[0]:
                worst = (off, k)
        if worst is not None and worst[0] > OUTLIER_DB:
            ref = usable[worst[1]][0]
            name = ref.key if ref.key and not ref.key.startswith("contact:") else ref.contact_id
            self._problem = f"reference {name} lies {worst[0]:.0f} dB off, left out"
            return usable[: worst[1]] + usable[worst[1] + 1 :]
        return usable

    def status(self, now: float) -> dict[str, object]:
        """The fit and each reference's state, for ``hallway status``."""
        fit = self._fit
        refs = []
        usable = {r.contact_id for r, _, _ in self._usable(now)}
        for cid, ref in self._refs.items():
            owner = self.taken.get(cid)
            if owner is not None and now - ref.last_ts > SILENT_S:
                state = (f"taken: contact {owner} holds this badge's key, so its sightings are "
                         f"the contact's; name the reference by contact = \"{owner}\"")
            elif ref.last_ts == -math.inf:
                state = ("never heard (is the badge on, and within reach?)"
                         if ref.reference.key and not ref.reference.key.startswith("contact:")
                         else "never heard (is the contact imported and its badge on?)")
            elif now - ref.last_ts > SILENT_S:
                state = "silent"
            elif ref.moved_ts is not None:
                state = "moved: left out until it reads as before"
            elif cid in usable:
                state = "ok"
            else:
                state = "learning"
            entry: dict[str, object] = {"distance_m": ref.reference.distance_m, "state": state}
            key = ref.reference.key
            if key and not key.startswith("contact:"):
                entry["badge"] = key
            else:
                entry["contact"] = cid
            if ref.minutes:
                entry["level_db"] = round(statistics.median(list(ref.minutes)[-WINDOW_MINUTES:]), 1)
            refs.append(entry)
        out: dict[str, object] = {
            "state": fit.state,
            "path_loss_exponent": round(fit.exponent, 3),
            "receive_offset_db": round(fit.offset_db, 2),
            "confidence": round(fit.confidence, 2),
            "configured_exponent": self._default,
            "configured_offset_db": self._default_offset,
            "references": refs,
        }
        if self._fitted is not None:
            out["fitted_exponent"] = round(self._fitted[0], 3)
            out["fitted_offset_db"] = round(self._fitted[1], 2)
        return out


def fit_points(points: list[tuple[float, float, float]], *, exponent: float,
               offset_db: float = 0.0) -> tuple[Fit, tuple[float, float] | None, str]:
    """The fit of (distance m, level dB, its standard error dB) points against the defaults
    ``exponent`` and ``offset_db``: (what to use, the raw fit (n, offset) or None, the problem
    found or ""). Two or more points ``MIN_SPREAD`` apart fit both, bounded; fewer, the offset
    alone; an implausible exponent keeps the defaults (state ``inconsistent: ...``). Each
    figure used is the default and the fit weighed by their precision (see the module
    docstring). Used by the ``Calibrator`` and by ``hallway calibrate --venue``."""
    if not points:
        return (Fit(exponent, offset_db, 0.0, "defaults: no reference heard well enough yet"),
                None, "")
    xs = [-10.0 * math.log10(max(d, 0.1)) for d, _, _ in points]
    levels = [level for _, level, _ in points]
    errors = [e for _, _, e in points]
    if len(points) >= 2 and max(xs) - min(xs) >= 10.0 * MIN_SPREAD:
        weights = [1.0 / (e * e) for e in errors]
        total = sum(weights)
        mx = sum(w * x for w, x in zip(weights, xs, strict=True)) / total
        ml = sum(w * v for w, v in zip(weights, levels, strict=True)) / total
        sxx = sum(w * (x - mx) ** 2 for w, x in zip(weights, xs, strict=True))
        sxl = sum(w * (x - mx) * (v - ml) for w, x, v in zip(weights, xs, levels, strict=True))
        n = sxl / sxx
        if not PLAUSIBLE[0] <= n <= PLAUSIBLE[1]:
            problem = f"references disagree (they fit exponent {n:.2f})"
            return (Fit(exponent, offset_db, 0.0, f"inconsistent: {problem}; defaults kept"),
                    (n, ml - n * mx), problem)
        n = min(max(n, EXPONENT_BOUNDS[0]), EXPONENT_BOUNDS[1])
        offset = min(max(ml - n * mx, OFFSET_BOUNDS[0]), OFFSET_BOUNDS[1])
        se_n = 1.0 / math.sqrt(sxx)
        se_o = math.sqrt(1.0 / total + mx * mx / sxx)
        w_n = _weight(PRIOR_EXPONENT_SD, se_n)
        w_o = _weight(PRIOR_OFFSET_SD_DB, se_o)
        return (Fit(exponent + w_n * (n - exponent), offset_db + w_o * (offset - offset_db),
                    min(w_n, w_o), "fitted"), (n, offset), "")
    # One reference (or all at one distance): the offset only, at the configured n.
    offsets = [level - exponent * x for level, x in zip(levels, xs, strict=True)]
    offset = min(max(statistics.fmean(offsets), OFFSET_BOUNDS[0]), OFFSET_BOUNDS[1])
    se = math.sqrt(sum(e * e for e in errors)) / len(errors)
    confidence = _weight(PRIOR_OFFSET_SD_DB, se)
    return (Fit(exponent, offset_db + confidence * (offset - offset_db), confidence,
                "offset only"), (exponent, offset), "")


def _weight(prior_sd: float, standard_error: float) -> float:
    """The weight of a fit against the default: their precisions' share."""
    prior = prior_sd * prior_sd
    return prior / (prior + standard_error * standard_error)
