"""The hallway-v1 token table: every known RPI of the accepted intervals, one lookup away.

Theory of operation. For each hallway-v1 key we keep its RPIK (16 bytes, derived once). The
table maps ``RPI -> (key, interval)`` for a small set of *tracked* intervals. An RPI seen at
clock interval ``i`` is accepted when its entry's interval lies in ``i-back .. i+ahead``
(SPEC §3: ``i-2 .. i+1``), so finding a contact costs one bucket search and one comparison,
never a pass over the keys.

A build (the first keys, or a jump in time) fills exactly the window. Rolling forward is
incremental: ``maintain(i)`` precomputes the next interval, ``i+ahead+1``, so that when the clock
crosses the boundary the new window is already complete, and drops intervals that fell out of
``i-back .. i+ahead+1``, a slice at a time, each slice bounded by a work-time budget. A new key
is inserted at once for every tracked interval (a few AES blocks); a removed key is deleted at
once from every tracked interval and every interval still being dropped.

``lookup`` never depends on ``maintain`` having run: when the window of its interval is not
complete it builds what is missing synchronously (one cipher context and one AES call per key
for all missing intervals), which is what a replay jumping hours ahead needs.

Layout, chosen for memory and the event loop's sake (measured on CPython 3.11):

- The one logical table is 65,536 buckets chosen by the RPI's first two bytes (uniformly
  random). A bucket is one ``bytes`` of 22-byte entries: the RPI's other 14 bytes, the key's
  slot (uint32 LE) and the interval mod 2**32 (uint32 LE). A lookup is one list index and one
  ``bytes.find`` in a bucket of a few entries (checked to start on an entry boundary): the
  whole RPI is compared, so there are no false hits. An entry costs 22 bytes, not the 49-byte
  ``bytes`` key, the int value and the dict slot of a dict entry (about 130 bytes): 250,000
  entries (50,000 keys x 5 intervals) take about 8 MB instead of about 35 MB. Inserting or
  deleting rewrites one small bucket; no step ever resizes the whole table (a dict of 500k
  entries stalled an insert for 35-200 ms while it resized).
- Per-key data sits in slot-indexed flat storage: the owner's id in a list and the key and
  RPIK (32 bytes) in one ``bytearray``. Slots are reused: a removed key's entries are deleted
  from every interval that may hold them (tracked or being dropped) and its 32 bytes zeroed
  before its slot goes back on the free list, so no entry can ever name a slot's next owner.
- Nothing per entry or per key is an object the cyclic garbage collector tracks, so 100k keys
  add no collector pauses (per-key objects and tuples did: a full collection took 50-100 ms).
- Building an interval costs one AES-ECB context per key (about 5 µs; the block itself is
  0.2 µs). Contexts are not kept per key: they weigh about 1 KB each, the RPIK 16 bytes.
- Dropping an interval walks the buckets a slice at a time, rewriting those that hold its
  entries.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass

from hallway.identity.crypto import derive_aemk, derive_rpik, ecb_encryptor, rpi_padded_data

_SLICE = 32
"""Keys built between two looks at the work-time budget (about 0.2 ms)."""
_DROP_SLICE = 512
"""Buckets rewritten between two looks at the budget while dropping an interval."""
_MASK = 0xFFFFFFFF
_BUCKETS = 1 << 16
_ENTRY = 22  # RPI bytes 2..15, slot uint32 LE, interval mod 2**32 uint32 LE
_TAIL = 14
_SECRET = 32  # K || RPIK per slot
_PACK = struct.Struct("<II")
_U32 = struct.Struct("<I")


def _find(bucket: bytes, tail: bytes) -> int:
    """The offset of the entry whose RPI tail is ``tail``, or -1."""
    pos = bucket.find(tail)
    while pos > 0 and pos % _ENTRY:
        pos = bucket.find(tail, pos + 1)
    return pos


@dataclass(slots=True)
class _Build:
    interval: int
    end: int  # slots below this (live at the start) are built; later ones are added directly
    pos: int = 0


@dataclass(slots=True)
class _Drop:
    interval: int
    bucket: int = 0


class TokenTable:
    """RPI -> key for the tracked intervals; see the module docstring for how it rolls."""

    def __init__(self, *, skew_back: int = 2, skew_ahead: int = 1) -> None:
        self._back = skew_back
        self._ahead = skew_ahead
        self._buckets: list[bytes] = [b""] * _BUCKETS
        self._entries = 0
        # keys by slot: owner (None: free), K || RPIK, and the AEMK once derived
        self._owner: list[str | None] = []
        self._secret = bytearray()
        self._aemk_of: dict[int, bytes] = {}
        self._free: list[int] = []
        self._live = 0
        self._keys: dict[str, int | tuple[int, ...]] = {}  # contact -> its slot(s)
        self._tracked: set[int] = set()  # intervals complete or being built
        self._complete: set[int] = set()
        self._building: dict[int, _Build] = {}
        self._dropping: list[_Drop] = []
        self._ready: int | None = None
        self.aes_ops = 0
        self.sync_builds = 0

    # -- contents ----------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._entries

    @property
    def key_count(self) -> int:
        """Number of live hallway-v1 keys."""
        return self._live

    def contact_of(self, slot: int) -> str:
        """The contact owning a live key slot (as returned by ``lookup``)."""
        owner = self._owner[slot]
        if owner is None:
            raise KeyError(slot)
        return owner

    def aemk_of(self, slot: int) -> bytes:
        """The AEM key of a live key slot, derived on first use (only EN frames need it)."""
        aemk = self._aemk_of.get(slot)
        if aemk is None:
            start = slot * _SECRET
            aemk = self._aemk_of[slot] = derive_aemk(bytes(self._secret[start:start + 16]))
        return aemk

    def set_keys(self, contact_id: str, keys: Iterable[bytes], *, now_interval: int) -> None:
        """Replace a contact's hallway-v1 keys; the table reflects it on return."""
        self.add_many([(contact_id, list(keys))], now_interval=now_interval)

    def add_many(self, items: Iterable[tuple[str, list[bytes]]], *, now_interval: int) -> None:
        """``set_keys`` for many contacts: one cipher context and one AES call per key."""
        blocks = b""
        count = 0
        plan: list[tuple[int, int, int]] = []  # (offset in AES output, end, interval mod 2**32)
        put = self._put
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
            slots: list[int] = []
            for key in keys:
                slot = self._claim(contact_id, key)
                slots.append(slot)
                out = ecb_encryptor(self._rpik(slot)).update(blocks)
                for start, end, low in plan:
                    put(out[start:end], slot, low)
            self.aes_ops += count * len(slots)
            self._keys[contact_id] = slots[0] if len(slots) == 1 else tuple(slots)

    def remove(self, contact_id: str) -> None:
        """Forget a contact's keys; none of its RPIs resolves after return, and nothing of them
        stays in the table (entries deleted, key bytes zeroed)."""
        slots = self._keys.pop(contact_id, None)
        if slots is None:
            return
        # every interval that may hold entries: tracked ones and those still being dropped
        intervals = sorted(self._tracked | {drop.interval for drop in self._dropping})
        secret = self._secret
        for slot in (slots,) if isinstance(slots, int) else slots:
            if intervals:
                for rpi, low in zip(self._rpis_of(self._rpik(slot), intervals), intervals,
                                    strict=True):
                    self._delete(rpi, slot, low & _MASK)
            start = slot * _SECRET
            secret[start:start + _SECRET] = bytes(_SECRET)
            self._owner[slot] = None
            self._aemk_of.pop(slot, None)
            self._free.append(slot)
            self._live -= 1

    def clear(self) -> None:
        """Forget every key and interval."""
        self._owner = []
        self._secret = bytearray()
        self._aemk_of.clear()
        self._free = []
        self._live = 0
        self._keys.clear()
        self._reset_intervals()

    # -- lookup ------------------------------------------------------------------------------

    def lookup(self, rpi: bytes, interval: int) -> int | None:
        """The key slot whose RPI of an interval in ``interval-back .. interval+ahead`` is
        ``rpi``, or None; ``contact_of(slot)`` names its contact."""
        if interval != self._ready:
            self.ensure(interval)
        if len(rpi) != 16:
            return None
        bucket = self._buckets[rpi[0] << 8 | rpi[1]]
        if not bucket:
            return None
        pos = _find(bucket, rpi[2:])
        if pos < 0:
            return None
        slot, low = _PACK.unpack_from(bucket, pos + _TAIL)
        # i - rpi_interval must lie in -ahead .. back, computed mod 2**32 like the RPI itself
        distance = (interval - low) & _MASK
        if (distance <= self._back or distance >= _MASK + 1 - self._ahead) and (
            self._owner[slot] is not None
        ):
            return int(slot)
        return None

    def ensure(self, interval: int) -> None:
        """Make the window of ``interval`` complete now, building what is missing at once."""
        if not self._live:
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
        if self._live:
            keep = range(interval - self._back, interval + self._ahead + 2)
            for i in [i for i in self._tracked if i not in keep]:
                self._begin_drop(i)
            for i in keep:
                if i not in self._tracked:
                    self._track(i)
                    self._building[i] = _Build(i, len(self._owner))
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

    def _claim(self, contact_id: str, key: bytes) -> int:
        """A slot for a new key (a freed one first), holding its K and RPIK."""
        material = key + derive_rpik(key)
        if self._free:
            slot = self._free.pop()
            start = slot * _SECRET
            self._secret[start:start + _SECRET] = material
            self._owner[slot] = contact_id
        else:
            slot = len(self._owner)
            self._secret += material
            self._owner.append(contact_id)
        self._live += 1
        return slot

    def _rpik(self, slot: int) -> bytes:
        start = slot * _SECRET + 16
        return bytes(self._secret[start:start + 16])

    def _put(self, rpi: bytes, slot: int, low: int) -> None:
        """Insert (or overwrite) the entry of ``rpi``."""
        index = rpi[0] << 8 | rpi[1]
        bucket = self._buckets[index]
        tail = rpi[2:]
        pos = _find(bucket, tail) if bucket else -1
        entry = tail + _PACK.pack(slot, low)
        if pos < 0:
            self._buckets[index] = bucket + entry
            self._entries += 1
        else:
            self._buckets[index] = bucket[:pos] + entry + bucket[pos + _ENTRY:]

    def _delete(self, rpi: bytes, slot: int, low: int) -> None:
        """Delete the entry of ``rpi`` if it is ``slot``'s for interval ``low``."""
        index = rpi[0] << 8 | rpi[1]
        bucket = self._buckets[index]
        if not bucket:
            return
        pos = _find(bucket, rpi[2:])
        if pos >= 0 and _PACK.unpack_from(bucket, pos + _TAIL) == (slot, low):
            self._buckets[index] = bucket[:pos] + bucket[pos + _ENTRY:]
            self._entries -= 1

    def _track(self, interval: int) -> None:
        """Start tracking an interval; a pending drop of it would delete its new entries."""
        self._tracked.add(interval)
        self._dropping = [d for d in self._dropping if d.interval != interval]

    def _start_tracking(self, interval: int) -> None:
        for i in range(interval - self._back, interval + self._ahead + 1):
            self._track(i)
            self._complete.add(i)

    def _reset_intervals(self) -> None:
        self._buckets = [b""] * _BUCKETS
        self._entries = 0
        self._tracked.clear()
        self._complete.clear()
        self._building.clear()
        self._dropping.clear()
        self._ready = None

    def _rpis_of(self, rpik: bytes, intervals: list[int]) -> list[bytes]:
        out = ecb_encryptor(rpik).update(b"".join(rpi_padded_data(i) for i in intervals))
        self.aes_ops += len(intervals)
        return [out[n : n + 16] for n in range(0, 16 * len(intervals), 16)]

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
        put = self._put
        live = [slot for slot, owner in enumerate(self._owner) if owner is not None]
        for slot in live:
            out = ecb_encryptor(self._rpik(slot)).update(blocks)
            for start, end, low in plan:
                put(out[start:end], slot, low)
        self.aes_ops += count * len(live)

    def _build_step(self, interval: int, deadline: float) -> None:
        build = self._building[interval]
        block = rpi_padded_data(interval)
        low = interval & _MASK
        owner = self._owner
        put = self._put
        while build.pos < build.end:
            end = min(build.pos + _SLICE, build.end)
            for slot in range(build.pos, end):
                if owner[slot] is not None:
                    put(ecb_encryptor(self._rpik(slot)).update(block), slot, low)
                    self.aes_ops += 1
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
        """Delete a dropped interval's entries, a slice of buckets at a time."""
        drop = self._dropping[0]
        low = _U32.pack(drop.interval & _MASK)
        buckets = self._buckets
        while drop.bucket < _BUCKETS:
            stop = min(drop.bucket + _DROP_SLICE, _BUCKETS)
            for index in range(drop.bucket, stop):
                bucket = buckets[index]
                if low not in bucket:
                    continue  # (a cheap test: may also match across fields, then we look)
                kept = [bucket[p : p + _ENTRY] for p in range(0, len(bucket), _ENTRY)
                        if bucket[p + _TAIL + 4 : p + _ENTRY] != low]
                if len(kept) * _ENTRY != len(bucket):
                    self._entries -= len(bucket) // _ENTRY - len(kept)
                    buckets[index] = b"".join(kept)
            drop.bucket = stop
            if deadline is not None and time.perf_counter() >= deadline:
                return
        self._dropping.pop(0)
