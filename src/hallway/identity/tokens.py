"""The hallway-v1 token table: every known RPI of the accepted intervals, one lookup away.

Theory of operation. For each hallway-v1 key we keep its RPIK (16 bytes, derived once). The
table maps ``RPI -> (key, interval)`` for a small set of *tracked* intervals. An RPI seen at
clock interval ``i`` is accepted when its entry's interval lies in ``i-back .. i+ahead``
(SPEC §3: ``i-2 .. i+1``), so finding a contact costs one hash lookup and one comparison, never
a pass over the keys.

A build (the first keys, or a jump in time) fills exactly the window. Rolling forward is
incremental: ``maintain(i)`` precomputes the next interval, ``i+ahead+1``, so that when the clock
crosses the boundary the new window is already complete, and drops intervals that fell out of
``i-back .. i+ahead+1``, a slice at a time, each slice bounded by a work-time budget. A new key
is inserted at once for every tracked interval (a few AES blocks); a removed key is deleted at
once from every tracked interval.

``lookup`` never depends on ``maintain`` having run: when the window of its interval is not
complete it builds what is missing synchronously (one cipher context and one AES call per key
for all missing intervals), which is what a replay jumping hours ahead needs.

Layout, chosen for the event loop's sake (measured on CPython 3.11):

- The one logical table is split into 256 dicts by the RPI's first byte, which is uniformly
  random. A lookup is still a single dict lookup, but no single dict grows past a few thousand
  entries at 100k contacts: CPython resizes a dict in one O(n) step, and a 500k-entry table
  stalled an insert for 35-200 ms while rolling; a shard's resize is a fraction of a ms.
- Each value is one int, ``slot << 32 | (interval mod 2**32)`` (an RPI only encodes the interval
  mod 2**32 anyway), where ``slot`` numbers the key (never reused). Per-key data sits in dicts of
  plain ints, bytes and strings. None of these is tracked by the cyclic garbage collector, so
  100k keys and half a million entries add no collector pauses (per-key objects and tuples
  did: a full collection took 50-100 ms).
- Building an interval costs one AES-ECB context per key (about 5 µs; the block itself is
  0.2 µs). Contexts are not kept per key: they weigh about 1 KB each, the RPIK 16 bytes.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from hallway.identity.crypto import derive_aemk, derive_rpik, ecb_encryptor, rpi_padded_data

_SLICE = 32
"""Keys built between two looks at the work-time budget (about 0.2 ms)."""
_MASK = 0xFFFFFFFF
_SHIFT = 32
_SHARDS = 256


@dataclass(slots=True)
class _Build:
    interval: int
    slots: list[int]
    pos: int = 0


@dataclass(slots=True)
class _Drop:
    interval: int
    shard: int = 0


class TokenTable:
    """RPI -> key for the tracked intervals; see the module docstring for how it rolls."""

    def __init__(self, *, skew_back: int = 2, skew_ahead: int = 1) -> None:
        self._back = skew_back
        self._ahead = skew_ahead
        self._shards: list[dict[bytes, int]] = [{} for _ in range(_SHARDS)]
        # live keys by slot (slots are never reused): owner, RPIK, K, and AEMK once derived
        self._contact_of: dict[int, str] = {}
        self._rpik_of: dict[int, bytes] = {}
        self._key_of: dict[int, bytes] = {}
        self._aemk_of: dict[int, bytes] = {}
        self._next_slot = 0
        self._keys: dict[str, tuple[int, ...]] = {}  # contact -> its slots
        self._flat: list[int] = []  # every slot added, in order; removed ones not in _rpik_of
        self._dead = 0
        self._tracked: set[int] = set()  # intervals complete or being built
        self._complete: set[int] = set()
        self._building: dict[int, _Build] = {}
        self._dropping: list[_Drop] = []
        self._ready: int | None = None
        self.aes_ops = 0
        self.sync_builds = 0

    # -- contents ----------------------------------------------------------------------------

    def __len__(self) -> int:
        return sum(len(shard) for shard in self._shards)

    @property
    def key_count(self) -> int:
        """Number of live hallway-v1 keys."""
        return len(self._rpik_of)

    def contact_of(self, slot: int) -> str:
        """The contact owning a live key slot (as returned by ``lookup``)."""
        return self._contact_of[slot]

    def aemk_of(self, slot: int) -> bytes:
        """The AEM key of a live key slot, derived on first use (only EN frames need it)."""
        aemk = self._aemk_of.get(slot)
        if aemk is None:
            aemk = self._aemk_of[slot] = derive_aemk(self._key_of[slot])
        return aemk

    def set_keys(self, contact_id: str, keys: Iterable[bytes], *, now_interval: int) -> None:
        """Replace a contact's hallway-v1 keys; the table reflects it on return."""
        self.add_many([(contact_id, list(keys))], now_interval=now_interval)

    def add_many(self, items: Iterable[tuple[str, list[bytes]]], *, now_interval: int) -> None:
        """``set_keys`` for many contacts: one cipher context and one AES call per key."""
        blocks = b""
        count = 0
        plan: list[tuple[int, int, int]] = []  # (offset in AES output, end, interval mod 2**32)
        shards = self._shards
        contact_of = self._contact_of
        rpik_of = self._rpik_of
        key_of = self._key_of
        for contact_id, keys in items:
            if contact_id in self._keys:
                self.remove(contact_id)
            if not keys:
                continue
            if not self._tracked:
                self._start_tracking(now_interval)
            if not blocks:
                first = min(self._tracked)
                count = max(self._tracked) - first + 1
                blocks = b"".join(rpi_padded_data(first + n) for n in range(count))
                plan = [
                    (16 * n, 16 * n + 16, (first + n) & _MASK)
                    for n in range(count)
                    if first + n in self._tracked
                ]
            first_slot = self._next_slot
            for key in keys:
                slot = self._next_slot
                self._next_slot = slot + 1
                rpik = derive_rpik(key)
                contact_of[slot] = contact_id
                rpik_of[slot] = rpik
                key_of[slot] = key
                out = ecb_encryptor(rpik).update(blocks)
                tag = slot << _SHIFT
                for start, end, low in plan:
                    rpi = out[start:end]
                    shards[rpi[0]][rpi] = tag | low
            new_slots = tuple(range(first_slot, self._next_slot))
            self.aes_ops += count * len(new_slots)
            self._keys[contact_id] = new_slots
            self._flat.extend(new_slots)

    def remove(self, contact_id: str) -> None:
        """Forget a contact's keys; none of its RPIs resolves after return."""
        slots = self._keys.pop(contact_id, None)
        if not slots:
            return
        shards = self._shards
        rpiks = [self._rpik_of.pop(slot) for slot in slots]
        for slot in slots:
            del self._contact_of[slot]
            del self._key_of[slot]
            self._aemk_of.pop(slot, None)
        self._dead += len(slots)
        if self._dead > 1024 and 2 * self._dead > len(self._flat):
            # builders in progress keep iterating the old list, which is harmless
            self._flat = [slot for slot in self._flat if slot in self._rpik_of]
            self._dead = 0
        if not self._tracked:
            return
        first = min(self._tracked)
        count = max(self._tracked) - first + 1
        for slot, rpik in zip(slots, rpiks, strict=True):
            for rpi in self._rpis_of(rpik, first, count):
                shard = shards[rpi[0]]
                value = shard.get(rpi)
                if value is not None and value >> _SHIFT == slot:
                    del shard[rpi]

    def clear(self) -> None:
        """Forget every key and interval."""
        self._contact_of.clear()
        self._rpik_of.clear()
        self._key_of.clear()
        self._aemk_of.clear()
        self._keys.clear()
        self._flat = []
        self._dead = 0
        self._reset_intervals()

    # -- lookup ------------------------------------------------------------------------------

    def lookup(self, rpi: bytes, interval: int) -> int | None:
        """The key slot whose RPI of an interval in ``interval-back .. interval+ahead`` is
        ``rpi``, or None; ``contact_of(slot)`` names its contact."""
        if interval != self._ready:
            self.ensure(interval)
        value = self._shards[rpi[0]].get(rpi) if rpi else None
        if value is None:
            return None
        # i - rpi_interval must lie in -ahead .. back, computed mod 2**32 like the RPI itself
        distance = (interval - value) & _MASK
        if distance <= self._back or distance >= _MASK + 1 - self._ahead:
            slot = value >> _SHIFT
            if slot in self._rpik_of:
                return slot
        return None

    def ensure(self, interval: int) -> None:
        """Make the window of ``interval`` complete now, building what is missing at once."""
        if not self._rpik_of:
            self._ready = interval
            return
        window = range(interval - self._back, interval + self._ahead + 1)
        missing = [i for i in window if i not in self._complete]
        if missing:
            self.sync_builds += 1
            if not any(i in self._tracked for i in window):
                # nothing overlaps (a jump in time): start over around the new clock
                self._reset_intervals()
                self._start_tracking(interval)
                self._fill(sorted(self._tracked))
            else:
                for i in missing:
                    self._track(i)
                self._fill(missing)
                self._complete.update(missing)
                for i in missing:
                    self._building.pop(i, None)
            # bound memory when nobody calls maintain (a replay): drop far intervals now
            if len(self._tracked) > self._back + self._ahead + 4:
                keep = range(interval - self._back, interval + self._ahead + 2)
                for i in [i for i in self._tracked if i not in keep]:
                    self._begin_drop(i)
                while self._dropping:
                    self._drop_step(None)
        self._ready = interval

    # -- rolling -----------------------------------------------------------------------------

    def maintain(self, interval: int, *, budget_s: float) -> bool:
        """One bounded slice of rolling work for clock ``interval``; True if more remains.

        ``budget_s`` bounds the work time of the slice (measured with ``perf_counter``; it
        changes only how work is split, never what the table holds).
        """
        deadline = time.perf_counter() + budget_s
        if self._rpik_of:
            keep = range(interval - self._back, interval + self._ahead + 2)
            for i in [i for i in self._tracked if i not in keep]:
                self._begin_drop(i)
            for i in keep:
                if i not in self._tracked:
                    self._track(i)
                    self._building[i] = _Build(i, self._flat)
        while True:
            if self._dropping:
                self._drop_step(deadline)
            elif self._building:
                self._build_step(min(self._building), deadline)
            if not self._dropping and not self._building:
                return False
            if time.perf_counter() >= deadline:
                return True

    # -- internals ---------------------------------------------------------------------------

    def _track(self, interval: int) -> None:
        """Start tracking an interval; a pending drop of it would delete its new entries."""
        self._tracked.add(interval)
        self._dropping = [d for d in self._dropping if d.interval != interval]

    def _start_tracking(self, interval: int) -> None:
        for i in range(interval - self._back, interval + self._ahead + 1):
            self._track(i)
            self._complete.add(i)

    def _reset_intervals(self) -> None:
        self._shards = [{} for _ in range(_SHARDS)]
        self._tracked.clear()
        self._complete.clear()
        self._building.clear()
        self._dropping.clear()
        self._ready = None

    def _rpis_of(self, rpik: bytes, first: int, count: int) -> list[bytes]:
        out = ecb_encryptor(rpik).update(
            b"".join(rpi_padded_data(first + n) for n in range(count))
        )
        self.aes_ops += count
        return [out[n : n + 16] for n in range(0, 16 * count, 16)]

    def _fill(self, intervals: list[int]) -> None:
        """Insert every live key's RPI of ``intervals``, one AES call per key."""
        first = min(intervals)
        count = max(intervals) - first + 1
        blocks = b"".join(rpi_padded_data(first + n) for n in range(count))
        plan = [
            (16 * n, 16 * n + 16, (first + n) & _MASK)
            for n in range(count)
            if first + n in intervals
        ]
        shards = self._shards
        rpik_of = self._rpik_of
        live = [slot for slot in self._flat if slot in rpik_of]
        for slot in live:
            out = ecb_encryptor(rpik_of[slot]).update(blocks)
            tag = slot << _SHIFT
            for start, end, low in plan:
                rpi = out[start:end]
                shards[rpi[0]][rpi] = tag | low
        self.aes_ops += count * len(live)

    def _build_step(self, interval: int, deadline: float) -> None:
        build = self._building[interval]
        block = rpi_padded_data(interval)
        low = interval & _MASK
        shards = self._shards
        slots = build.slots
        rpik_of = self._rpik_of
        while build.pos < len(slots):
            end = min(build.pos + _SLICE, len(slots))
            for slot in slots[build.pos : end]:
                rpik = rpik_of.get(slot)
                if rpik is not None:
                    rpi = ecb_encryptor(rpik).update(block)
                    shards[rpi[0]][rpi] = slot << _SHIFT | low
            self.aes_ops += end - build.pos
            build.pos = end
            if time.perf_counter() >= deadline:
                return
        del self._building[interval]
        self._complete.add(interval)

    def _begin_drop(self, interval: int) -> None:
        self._tracked.discard(interval)
        self._complete.discard(interval)
        self._building.pop(interval, None)
        ready = self._ready
        if ready is not None and ready - self._back <= interval <= ready + self._ahead:
            self._ready = None
        self._dropping.append(_Drop(interval))

    def _drop_step(self, deadline: float | None) -> None:
        """Delete a dropped interval's entries, one shard (a few thousand entries) at a time."""
        drop = self._dropping[0]
        low = drop.interval & _MASK
        shards = self._shards
        while drop.shard < _SHARDS:
            shard = shards[drop.shard]
            for rpi in [rpi for rpi, value in shard.items() if value & _MASK == low]:
                del shard[rpi]
            drop.shard += 1
            if deadline is not None and time.perf_counter() >= deadline:
                return
        self._dropping.pop(0)
