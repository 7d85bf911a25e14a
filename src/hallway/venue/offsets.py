"""Per-scanner receive offsets in the venue service, from the scanners' reference figures.

Every scanner with reference beacons publishes, retained on ``<scanner>/calibration``
(``hallway.mqtt.calibration_payload``), the iBeacon it advertises itself (``[scanner.beacon]``)
and its level of each badge reference it hears, the badge named by a digest of its key
(``reference_digest``): the venue matches the digest of each scanner's beacon against them.
A reference badge that is another scanner's beacon makes a pair: the receiver heard the
transmitter at the distance its config names.
``ScannerOffsets`` keeps the latest message per scanner and solves all pairs together
(``hallway.proximity.scanners.solve``): each scanner's receive offset, bounded, with a
confidence, and the pairs left out named: those the receiving scanner itself no longer trusts
(its calibrator's state for that reference: ``moved``, ``silent`` ...; see
``hallway.proximity.calibration``) and, with four or more scanners, a pair lying far off the
others' fit (with three, six readings leave too little slack to single one out: a scanner
that moved is caught by the others' calibrators, whose reference to it jumps).

Where ``venue.positions`` places both scanners of a pair, the distance between the positions is
used (a scanner's own ``distance_m`` differing by more than 20 % is reported:
``distance_mismatch``); otherwise the receiving scanner's.

The venue applies them to each scanner's distances before it compares rooms: a scanner turns a
level into a distance with the offset its own tracker uses (``receive_offset_db`` in its
message), so the venue moves that scanner's levels by ``used - fitted``, and only once the
fit's confidence reaches ``MIN_CONFIDENCE`` (else 0: no worse than without references). A
scanner's message stays until it sends another or clears it (retained, like its presence).

Pure: no clock or I/O.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from hallway.proximity.scanners import PairReading, Solution, reference_digest, solve

MIN_CONFIDENCE = 0.5
_PAIR_STATES = ("ok",)


class ScannerOffsets:
    """The scanners' calibration messages in; per-scanner corrections and status out."""

    def __init__(self, *, exponent: float,
                 positions: Mapping[str, tuple[float, float]] | None = None) -> None:
        """``positions``: where the scanners stand (``venue.positions``); a pair of scanners
        with both known is taken at the distance between them."""
        self._exponent = exponent
        self._positions = dict(positions or {})
        self._messages: dict[str, dict[str, Any]] = {}
        self._solution = Solution({}, {})
        self._corrections: dict[str, float] = {}
        self._mismatch: dict[str, str] = {}
        self.malformed = 0

    def receive(self, scanner: str, payload: bytes) -> bool:
        """One scanner's retained message (empty: it has none now); True if it was read."""
        if not payload:
            self._messages.pop(scanner, None)
            self._refit()
            return True
        try:
            message = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            self.malformed += 1
            return False
        if not isinstance(message, dict) or not isinstance(message.get("references", []), list):
            self.malformed += 1
            return False
        self._messages[scanner] = message
        self._refit()
        return True

    def correction_db(self, scanner: str) -> float:
        """How much to add to this scanner's levels (dB; 0 while not confident)."""
        return self._corrections.get(scanner, 0.0)

    @property
    def corrections(self) -> Mapping[str, float]:
        """Every scanner's correction (dB)."""
        return self._corrections

    def status(self) -> dict[str, Any]:
        """Per scanner: the fitted offset, its confidence, the offset its tracker uses and the
        correction applied; the pairs left out and why."""
        out: dict[str, Any] = {}
        for name, fit in sorted(self._solution.offsets.items()):
            used = self._used(name)
            out[name] = {
                "receive_offset_db": round(fit.offset_db, 2),
                "standard_error_db": round(fit.standard_error_db, 2),
                "confidence": round(fit.confidence, 2),
                "pairs": fit.readings,
                "scanner_uses_db": None if used is None else round(used, 2),
                "correction_db": round(self._corrections.get(name, 0.0), 2),
            }
        return {
            "scanners": out,
            "left_out": {f"{rx} hears {tx}": why
                         for (rx, tx), why in sorted(self._solution.left_out.items())},
            "no_beacon": sorted(n for n, m in self._messages.items()
                                if not isinstance(m.get("beacon"), str)),
            "distance_mismatch": dict(sorted(self._mismatch.items())),
        }

    def _used(self, scanner: str) -> float | None:
        entry = self._messages.get(scanner)
        value = None if entry is None else entry.get("receive_offset_db")
        return float(value) if isinstance(value, int | float) else None

    def _refit(self) -> None:
        fresh = self._messages
        beacons = {reference_digest(f"ibeacon:{m['beacon']}"): n for n, m in fresh.items()
                   if isinstance(m.get("beacon"), str)}
        readings = []
        skipped: dict[tuple[str, str], str] = {}
        mismatch: dict[str, str] = {}
        for receiver, message in fresh.items():
            for ref in message.get("references", []):
                if not isinstance(ref, dict):
                    continue
                transmitter = beacons.get(str(ref.get("ref", "")))
                level, distance = ref.get("level_db"), ref.get("distance_m")
                if transmitter is not None and transmitter != receiver \
                        and ref.get("state") not in _PAIR_STATES:
                    skipped[(receiver, transmitter)] = f"the receiver says: {ref.get('state')}"
                    continue
                if (transmitter is None or transmitter == receiver
                        or not isinstance(level, int | float)
                        or not isinstance(distance, int | float) or distance <= 0):
                    continue
                a, b = self._positions.get(receiver), self._positions.get(transmitter)
                if a is not None and b is not None:
                    known = math.dist(a, b)
                    if known > 0 and abs(float(distance) - known) > 0.2 * known:
                        mismatch[f"{receiver} hears {transmitter}"] = (
                            f"its config says {float(distance):g} m, the venue's positions "
                            f"{known:.1f} m; the positions are used")
                    distance = known or float(distance)
                readings.append(PairReading(receiver, transmitter, float(distance),
                                            float(level)))
        self._mismatch = mismatch
        solution = solve(readings, exponent=self._exponent)
        self._solution = Solution(solution.offsets, {**skipped, **solution.left_out})
        corrections = {}
        for name, fit in self._solution.offsets.items():
            used = self._used(name)
            if used is not None and fit.confidence >= MIN_CONFIDENCE:
                corrections[name] = used - fit.offset_db
        self._corrections = corrections
