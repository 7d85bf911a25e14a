"""IRK resolution of resolvable private addresses, with a bounded answer cache.

Each new resolvable private address is tried against every IRK once (one AES block per IRK).
The answer — the key that resolved it, or "no one" — is remembered under the address.

Two ways to try the IRKs (``backend``), the same answers:

- the C extension ``hallway._irkscan`` (built with hallway where a C compiler is present):
  every IRK's expanded AES-128 key schedule in one contiguous buffer, 176 bytes a key, scanned
  in C, with AES-NI where the CPU has it (``aes-ni``: 4-5 ns a key here up to 50,000 keys, 8
  keys at a time; 10 ns at 100,000, whose 17.6 MB of schedules outgrow the CPU's caches) and a
  portable C AES elsewhere (``portable``: 55-65 ns a key; table lookups, whose timing depends
  on the key through the CPU cache, see docs/performance.md). About 350 bytes an IRK in all;
- pure Python (``python``): one ``cryptography`` ECB context per IRK (about 1 KB an IRK in all)
  and a Python loop, 0.33-0.5 µs a key here. Used when the extension is not built, or when
  ``identity.irk_backend = "python"``.

The IRKs sit in a dense array in both: key ``i`` of the scan is ``IrkKey.index == i``; removing
a key moves the last one into its index.

The answers live in a ring of ``max_entries`` slots, filled in the order they were computed; a
new answer takes the oldest slot, so strangers' rotating addresses cannot grow memory past the
ring, and the ring is all the memory the cache ever holds. An answer is also forgotten
``ttl_s`` after it was computed (phones rotate about every 15 minutes; the default 30 minutes
covers an address's whole use). A slot keeps the address's AES input block and hash next to
the answer, so that:

- adding an IRK re-checks every cached "no one" with a single call over the whole ring: in C,
  ``KeySet.match`` reads the ring's blocks and hashes in place; in Python, one AES call and a
  byte-wise comparison done on big integers; a few milliseconds for 100k cached addresses
  either way, instead of a Python loop over them. When a bulk load would cost more than
  ``RECHECK_LIMIT`` blocks, the "no one" answers are dropped instead and recomputed when next
  seen;
- removing an IRK drops every address it resolved, at once.

Trying a new address costs one AES block per IRK: with 30,000 IRKs about 0.12 ms here with
AES-NI (10 ms in pure Python), so a flood of strangers' fresh resolvable addresses could take
the whole CPU. With ``trials_per_s`` the trials are budgeted per window of the advertisements'
clock (``window_s``: a second, or a tenth of one in the resolver, so the trials do not come in
one burst): while the window's budget lasts, a new address is tried at once (the quiet case
costs no delay); past it, the address is only noted as pending, and ``resolve`` answers None
without caching anything. Pending addresses
heard more than once (a phone repeats its address for minutes; BLE spam uses each address once)
rank before those heard once, then by the strongest RSSI heard. When the next window begins,
the best ranked pending addresses heard more than once are granted its budget (as many as it
pays for), and each is tried the next time it is heard (within ``GRANT_TTL_S``); a pending
address heard again while its window has budget its grants do not hold is tried at once; the
rest wait for their turn or are forgotten. Over any stretch of time the trials average the
budget. So a contact's phone resolves at about its second advertisement (one advertising
interval after it is first heard), unless more new addresses than the budget pays for, each
also heard repeatedly (and more strongly), keep arriving; an address already answered (cache
hit) costs nothing and is never delayed. Pending addresses are bounded (``PENDING_MAX``; the
weakest go first).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from hallway.identity.crypto import BlockEncryptor, ecb_encryptor

try:
    from hallway import _irkscan
except ImportError:  # not built (no C compiler where hallway was installed): pure Python
    _irkscan = None  # type: ignore[assignment]

Backend = Literal["aes-ni", "portable", "python"]

DEFAULT_TRIALS_PER_S: dict[str, int] = {
    "aes-ni": 5_000_000,
    "portable": 1_000_000,
    "python": 250_000,
}
"""The trial budget when ``identity.irk_trials_per_s`` is not set, by backend. On this machine
(docs/performance.md) a full budget costs about 0.02 s of a core a second with AES-NI, 0.06 s
portable and 0.08 s in Python: 20 times the trials for a quarter of the CPU with AES-NI."""


def available_backends() -> tuple[Backend, ...]:
    """The backends this build and CPU offer, the fastest first."""
    if _irkscan is None:
        return ("python",)
    if _irkscan.HARDWARE_AES:
        return ("aes-ni", "portable", "python")
    return ("portable", "python")


def choose_backend(wanted: str = "auto") -> Backend:
    """``auto``: the fastest available; ``python``: pure Python; ``aes-ni``/``portable``: that
    one (ValueError when this build or CPU does not offer it)."""
    offered = available_backends()
    if wanted == "auto":
        return offered[0]
    if wanted not in offered:
        raise ValueError(f"IRK backend {wanted!r} is not available here (have: {offered})")
    return wanted

RECHECK_LIMIT = 2_000_000
"""Most AES blocks spent re-checking cached "no one" answers when IRKs are added (about 4 ms
with AES-NI here, 37 ms in Python, where OpenSSL encrypts the ring in one call)."""

PORTABLE_RECHECK_LIMIT = 200_000
"""The same for the portable C scan, about 50 ns a block: some 10 ms at most."""

PENDING_MAX = 2048
"""Most new addresses waiting for trial budget at once (the weakest are forgotten first)."""

ONCE_MAX = 65_536
"""Addresses remembered as heard once (oldest forgotten first), so that a phone's second
advertisement ranks it as repeated even after a flood pushed its first out of the pending."""

GRANT_TTL_S = 2.0
"""How long a granted address keeps its reserved trials waiting to be heard again (a phone
advertises at least every second or so; a spam address never comes back, and its grant must
not hold the budget for long)."""

_PAD = bytes(13)
_RPA_FIRST = frozenset("4567")


@dataclass(eq=False, slots=True)
class IrkKey:
    """One IRK of a contact: its contact and its index in the scan (-1 once removed); compared
    by identity. The key itself lives only in the scan."""

    contact_id: str
    index: int


def rpa_parts(address: str) -> tuple[bytes, bytes] | None:
    """``(prand, hash)`` of a resolvable private address text, or None if it is not one."""
    if len(address) != 17 or address[0] not in _RPA_FIRST or address[2::3] != ":::::":
        return None
    try:
        raw = bytes.fromhex(address.replace(":", ""))
    except ValueError:
        return None
    if len(raw) != 6:
        return None
    return raw[:3], raw[3:]


class IrkCache:
    """Resolves resolvable private addresses against IRKs; caches both kinds of answer."""

    def __init__(self, *, max_entries: int, ttl_s: float, trials_per_s: int | None = None,
                 window_s: float = 1.0, backend: str = "auto") -> None:
        self.backend: Backend = choose_backend(backend)
        # the C scan (None in pure Python, where _enc holds one ECB context per key instead)
        self._scan = (None if self.backend == "python" or _irkscan is None
                      else _irkscan.KeySet(portable=self.backend == "portable"))
        self._enc: list[BlockEncryptor] = []
        # every IRK, key i of the scan at index i (removal moves the last into the hole)
        self._list: list[IrkKey] = []
        self._cap = max_entries
        self._ttl = ttl_s
        # trials per window of window_s seconds (None: every new address is tried at once);
        # short windows spread the trials over the second instead of one burst at its start
        self._window_s = window_s
        self._budget = None if trials_per_s is None else max(1, int(trials_per_s * window_s))
        self._window: int | None = None  # the second (of the callers' clock) being spent
        self._spent = 0  # trials spent in that window
        self._fresh = 0  # grants made at that window's start, not yet used (budget reserved)
        # address -> its rank while waiting: 1000 if heard once, 2000 if more (a phone repeats
        # its address, BLE spam does not), plus the strongest RSSI heard + 500
        self._pending: dict[str, int] = {}
        self._granted: dict[str, int] = {}  # address -> the window its grant was made in
        self._once: dict[str, None] = {}  # heard once, insertion-ordered: the oldest first
        self.key_count = 0  # IRKs held (read for every random address: kept, not counted)
        self._by_contact: dict[str, tuple[IrkKey, ...]] = {}
        self._slot_of: dict[str, int] = {}  # address -> ring slot
        # the ring, grown up to _cap slots, then reused oldest first
        self._addr: list[str | None] = []
        self._answer: list[IrkKey | None] = []
        self._time: list[float] = []
        self._blocks = bytearray()  # 16 bytes a slot: 13 zero bytes || prand
        self._hashes = bytearray()  # 3 bytes a slot: the address's hash
        self._next = 0  # sequence number of the next answer; its slot is _next % _cap
        self._sweep_seq = 0  # answers before this sequence number were swept
        self._resolved: dict[IrkKey, set[str]] = {}
        self.hits = 0
        self.misses = 0
        self.aes_ops = 0
        self.evicted = 0
        self.deferred = 0  # resolve calls answered None for want of budget
        self.pending_dropped = 0  # pending addresses forgotten (weakest, past PENDING_MAX)
        self.granted_total = 0  # pending addresses granted a later second's budget

    def __len__(self) -> int:
        return len(self._slot_of)

    @property
    def pending(self) -> int:
        """New addresses waiting for trial budget."""
        return len(self._pending)

    def known_stranger(self, address: str) -> bool:
        """True if ``address`` has a cached "no one" answer (a look, counted nowhere)."""
        slot = self._slot_of.get(address)
        return slot is not None and self._answer[slot] is None

    def resolve(self, address: str, now: float, rssi: int = -127) -> IrkKey | None:
        """The key that resolves ``address`` (an RPA in ``AA:..`` form), or None; cached.

        With a trial budget, None may also mean "not tried yet" (see the module docstring);
        ``rssi`` ranks such an address among the others waiting.
        """
        slot = self._slot_of.get(address)
        if slot is not None:
            if now - self._time[slot] < self._ttl:
                self.hits += 1
                return self._answer[slot]
            self._forget(slot)
        parts = rpa_parts(address)
        if parts is None:
            self.misses += 1
            return None
        if self._budget is not None and not self._may_try(address, now, rssi):
            self.deferred += 1
            return None
        self.misses += 1
        prand, want = parts
        block = _PAD + prand
        found: IrkKey | None = None
        if self._scan is not None:
            index = self._scan.find(prand, want)
            if index >= 0:
                found = self._list[index]
            self.aes_ops += self.key_count if index < 0 else index + 1
        else:
            tried = 0
            for index, encryptor in enumerate(self._enc):
                tried += 1
                if encryptor.update(block).endswith(want):
                    found = self._list[index]
                    break
            self.aes_ops += tried
        self._store(address, found, now, block, want)
        return found

    def _may_try(self, address: str, now: float, rssi: int) -> bool:
        """Spend this second's budget on ``address``, or note it as pending; True to try."""
        assert self._budget is not None
        window = int(now / self._window_s) if math.isfinite(now) and abs(now) < 1e15 else 0
        if window != self._window:
            self._next_window(window)
        cost = max(1, self.key_count)
        when = self._granted.pop(address, None)
        if when is not None:
            self._pending.pop(address, None)
            if when == window:
                self._fresh -= 1
            self._spent += cost  # charged to this window: first come waits for the next
            return True
        if self._spent < self._budget and not self._pending:
            # Nobody stronger is waiting: first come, first tried while the budget lasts.
            self._spent += cost
            return True
        pending = self._pending
        old = pending.get(address)
        if ((old is not None or address in self._once)
                and self._spent + cost * (self._fresh + 1) <= self._budget):
            # Heard again (a device that repeats its address, not one-shot spam), and the
            # window has budget its grants do not hold: tried now, not at the next grant.
            pending.pop(address, None)
            self._spent += cost
            return True
        rank = max(0, min(rssi, 127) + 500)
        if old is not None:
            pending[address] = 2000 + max(old % 1000, rank)
        elif address in self._once:
            pending[address] = 2000 + rank  # heard before, though dropped from pending since
        else:
            pending[address] = 1000 + rank
            once = self._once
            once[address] = None
            if len(once) > ONCE_MAX:
                del once[next(iter(once))]
        if old is None and len(pending) > PENDING_MAX:
            keep = sorted(pending.items(), key=lambda item: item[1], reverse=True)
            keep = keep[: PENDING_MAX // 2]
            self.pending_dropped += len(pending) - len(keep)
            self._pending = dict(keep)
        return False

    def _next_window(self, window: int) -> None:
        """A new window: its budget goes to the best ranked repeated pending addresses first.

        Only addresses heard more than once are granted (one-shot spam would never come back
        to use a grant, and the budget it held would go unspent). A granted address may be
        tried when it is next heard (a phone may advertise only every second or so) until
        ``GRANT_TTL_S`` passes; its trials are charged to the window it is heard in, and the
        window's grants hold their share of its budget until then. What they leave is for
        pending addresses heard again during the window (tried at once, see ``_may_try``).
        Each window grants no more than its budget pays for, so over any stretch of time the
        trials average the budget; a window can exceed it only when earlier grants come back
        together.
        """
        assert self._budget is not None
        self._window = window
        self._spent = 0
        self._fresh = 0
        granted = self._granted
        if granted:
            horizon = window - GRANT_TTL_S / self._window_s
            for address in [a for a, when in granted.items() if when < horizon]:
                del granted[address]
        if self._pending:
            slots = max(1, self._budget // max(1, self.key_count))
            best = heapq.nlargest(slots, self._pending.items(), key=lambda item: item[1])
            best = [(address, rank) for address, rank in best if rank >= 2000]  # repeated
            for address, _rank in best:
                granted[address] = window
                del self._pending[address]
            self._fresh = len(best)
            self.granted_total += len(best)

    def set_irks(self, contact_id: str, irks: Iterable[bytes]) -> None:
        """Replace a contact's IRKs (16 bytes, most significant first); re-checks "no one"."""
        self.add_many([(contact_id, list(irks))])

    def add_many(self, items: Iterable[tuple[str, list[bytes]]]) -> None:
        """``set_irks`` for many contacts, re-checking the "no one" answers once for all."""
        added: list[IrkKey] = []
        items = list(items)
        if any(len(irk) != 16 for _, irks in items for irk in irks):
            raise ValueError("an IRK must be 16 bytes")  # never the key itself; nothing changed
        if self._scan is not None:  # one allocation for a bulk load, not a doubling series
            self._scan.reserve(len(self._list) + sum(len(irks) for _, irks in items))
        for contact_id, irks in items:
            self.remove(contact_id)
            new = tuple(IrkKey(contact_id, len(self._list) + n) for n in range(len(irks)))
            for irk in irks:
                if self._scan is not None:
                    self._scan.add(irk)
                else:
                    self._enc.append(ecb_encryptor(irk))
            self._list.extend(new)
            if new:
                self._by_contact[contact_id] = new
                self.key_count = len(self._list)
                added.extend(new)
        # a contact listed twice replaced its own first keys: only keys still held are checked
        added = [key for key in added if key.index >= 0]
        if added and self._slot_of:
            self._recheck(added)

    def remove(self, contact_id: str) -> None:
        """Drop a contact's IRKs and every cached address they resolved."""
        keys = self._by_contact.pop(contact_id, None)
        if not keys:
            return
        for key in keys:
            self._drop(key)
        self.key_count = len(self._list)
        for key in keys:
            for address in self._resolved.pop(key, set()):
                slot = self._slot_of.get(address)
                if slot is not None:
                    self._forget(slot)

    def clear(self) -> None:
        """Drop every IRK and every cached answer."""
        self._pending.clear()
        self._granted.clear()
        self._once.clear()
        for key in self._list:
            key.index = -1
        self._list = []
        self._enc = []
        if self._scan is not None:
            self._scan.clear()
        self.key_count = 0
        self._by_contact.clear()
        self._resolved.clear()
        for slot in list(self._slot_of.values()):
            self._forget(slot)

    def sweep(self, now: float, *, max_items: int = 4096) -> bool:
        """Forget up to ``max_items`` answers older than the TTL, oldest first; True if more
        may be due."""
        horizon = now - self._ttl
        seq = max(self._sweep_seq, self._next - len(self._addr))
        end = min(self._next, seq + max_items)
        while seq < end:
            slot = seq % self._cap
            if self._addr[slot] is not None:
                if self._time[slot] > horizon:
                    break
                self._forget(slot)
                self.evicted += 1
            seq += 1
        self._sweep_seq = seq
        return seq == end and end < self._next

    # -- internals ---------------------------------------------------------------------------

    def _drop(self, key: IrkKey) -> None:
        """Take ``key`` out of the scan: the last key moves into its index (in C and here)."""
        index = key.index
        if index < 0:
            return
        key.index = -1
        last = self._list.pop()
        if self._scan is not None:
            self._scan.remove(index)
            if last is not key:
                self._list[index] = last
                last.index = index
        else:
            encryptor = self._enc.pop()
            if last is not key:
                self._list[index] = last
                self._enc[index] = encryptor
                last.index = index

    def _store(
        self, address: str, answer: IrkKey | None, now: float, block: bytes, want: bytes
    ) -> None:
        seq = self._next
        self._next = seq + 1
        slot = seq % self._cap
        if slot == len(self._addr):
            self._addr.append(address)
            self._answer.append(answer)
            self._time.append(now)
            self._blocks += block
            self._hashes += want
        else:
            if self._addr[slot] is not None:
                self._forget(slot)
                self.evicted += 1
            self._addr[slot] = address
            self._answer[slot] = answer
            self._time[slot] = now
            self._blocks[16 * slot : 16 * slot + 16] = block
            self._hashes[3 * slot : 3 * slot + 3] = want
        self._slot_of[address] = slot
        if answer is not None:
            self._resolved.setdefault(answer, set()).add(address)

    def _forget(self, slot: int) -> None:
        address = self._addr[slot]
        if address is None:
            return
        del self._slot_of[address]
        answer = self._answer[slot]
        if answer is not None:
            addresses = self._resolved.get(answer)
            if addresses is not None:
                addresses.discard(address)
        self._addr[slot] = None
        self._answer[slot] = None

    def _recheck(self, new: list[IrkKey]) -> None:
        used = len(self._addr)
        limit = RECHECK_LIMIT
        if self.backend == "portable":
            limit = min(limit, PORTABLE_RECHECK_LIMIT)
        if used * len(new) > limit:
            for slot in range(used):
                if self._addr[slot] is not None and self._answer[slot] is None:
                    self._forget(slot)
            return
        scan = self._scan
        if scan is not None:
            # the scan reads the ring's blocks and hashes in place
            for key in new:
                self.aes_ops += used
                for slot in scan.match(key.index, self._blocks, self._hashes):
                    address = self._addr[slot]
                    if address is not None and self._answer[slot] is None:
                        self._answer[slot] = key
                        self._resolved.setdefault(key, set()).add(address)
            return
        encryptors = {key: self._enc[key.index] for key in new}
        blocks = bytes(self._blocks)
        hashes = bytes(self._hashes)
        first_bytes = int.from_bytes(hashes[0::3], "little")
        for key in new:
            out = encryptors[key].update(blocks)
            self.aes_ops += used
            # slots whose first hash byte matches (1 in 256 of the others), then the rest
            diff = (int.from_bytes(out[13::16], "little") ^ first_bytes).to_bytes(used, "little")
            slot = diff.find(0)
            while slot != -1:
                address = self._addr[slot]
                if (
                    address is not None
                    and self._answer[slot] is None
                    and out[16 * slot + 14 : 16 * slot + 16] == hashes[3 * slot + 1 : 3 * slot + 3]
                ):
                    self._answer[slot] = key
                    self._resolved.setdefault(key, set()).add(address)
                slot = diff.find(0, slot + 1)
