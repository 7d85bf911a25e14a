"""The C IRK scan (hallway._irkscan) against cryptography and bluetooth-data-tools, and IrkCache
on every backend this build offers (aes-ni, portable C, pure Python) giving the same answers."""

from __future__ import annotations

import pickle
import random

import pytest
from bluetooth_data_tools import get_cipher_for_irk, resolve_private_address
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from hallway.identity.irk import (
    DEFAULT_TRIALS_PER_S,
    IrkCache,
    available_backends,
    choose_backend,
)

try:
    from hallway import _irkscan
except ImportError:  # not built: the KeySet tests skip, IrkCache's run on pure Python
    _irkscan = None  # type: ignore[assignment]

needs_c = pytest.mark.skipif(_irkscan is None, reason="the C extension is not built here")
HARDWARE = _irkscan is not None and bool(_irkscan.HARDWARE_AES)
SCANS = [False, True] if HARDWARE else [True]
SCAN_IDS = ["aes-ni", "portable"] if HARDWARE else ["portable"]


def aes(key: bytes, block: bytes) -> bytes:
    return Cipher(algorithms.AES(key), modes.ECB()).encryptor().update(block)


def ah(key: bytes, prand: bytes) -> bytes:
    return aes(key, bytes(13) + prand)[13:]


def first_match(keys: list[bytes], prand: bytes, want: bytes, start: int = 0,
                stop: int | None = None) -> int:
    stop = len(keys) if stop is None else stop
    return next((i for i in range(start, stop) if ah(keys[i], prand) == want), -1)


def address_of(prand: bytes, hash3: bytes) -> str:
    return ":".join(f"{b:02X}" for b in prand + hash3)


@pytest.fixture(params=SCANS, ids=SCAN_IDS)
def portable(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


def test_backends_offered_here() -> None:
    offered = available_backends()
    assert offered[-1] == "python"
    assert ("aes-ni" in offered) == HARDWARE
    assert ("portable" in offered) == (_irkscan is not None)
    assert choose_backend("auto") == offered[0]
    assert choose_backend("python") == "python"
    assert set(DEFAULT_TRIALS_PER_S) == {"aes-ni", "portable", "python"}


@needs_c
@pytest.mark.parametrize("count", [0, 1, 7, 8, 9, 15, 16, 17, 100])
def test_find_agrees_with_cryptography(portable: bool, count: int) -> None:
    """Every size around the 8-key groups of the AES-NI scan, keys hit at every index."""
    rng = random.Random(count)
    keys = [rng.randbytes(16) for _ in range(count)]
    scan = _irkscan.KeySet(portable=portable)
    for n, key in enumerate(keys):
        assert scan.add(key) == n
    assert len(scan) == count
    for which in range(count):
        prand = bytes([0x40 | rng.randrange(64)]) + rng.randbytes(2)
        want = ah(keys[which], prand)
        assert scan.find(prand, want) == first_match(keys, prand, want)
    for _ in range(50):  # strangers' addresses: random hashes
        prand, want = rng.randbytes(3), rng.randbytes(3)
        assert scan.find(prand, want) == first_match(keys, prand, want)


@needs_c
def test_find_random_keys_against_cryptography(portable: bool) -> None:
    rng = random.Random(7)
    scan = _irkscan.KeySet(portable=portable)
    keys: list[bytes] = []
    for _ in range(300):
        keys.append(rng.randbytes(16))
        scan.add(keys[-1])
    for _ in range(500):
        prand = rng.randbytes(3)
        which = rng.randrange(len(keys))
        want = ah(keys[which], prand)
        assert scan.find(prand, want) == first_match(keys, prand, want)


@needs_c
def test_find_agrees_with_bluetooth_data_tools(portable: bool) -> None:
    """The independent oracle: the address resolves under exactly the keys it says."""
    rng = random.Random(11)
    keys = [rng.randbytes(16) for _ in range(40)]
    scan = _irkscan.KeySet(portable=portable)
    for key in keys:
        scan.add(key)
    ciphers = [get_cipher_for_irk(key) for key in keys]
    for n in range(200):
        prand = bytes([0x40 | rng.randrange(64)]) + rng.randbytes(2)
        want = ah(keys[n % len(keys)], prand) if n % 2 else rng.randbytes(3)
        address = address_of(prand, want)
        oracle = [i for i, c in enumerate(ciphers) if resolve_private_address(c, address)]
        found = scan.find(prand, want)
        assert found == (oracle[0] if oracle else -1)


@needs_c
def test_find_range_is_bounded(portable: bool) -> None:
    rng = random.Random(3)
    keys = [rng.randbytes(16) for _ in range(40)]
    scan = _irkscan.KeySet(portable=portable)
    for key in keys:
        scan.add(key)
    prand = b"\x41\x02\x03"
    want = ah(keys[21], prand)
    assert scan.find(prand, want, 0, 21) == -1
    assert scan.find(prand, want, 0, 22) == 21
    assert scan.find(prand, want, 21, 22) == 21
    assert scan.find(prand, want, 22) == -1
    assert scan.find(prand, want, start=5, stop=10_000) == 21  # stop past the end: the end
    assert scan.find(prand, want, -4, 40) == 21
    assert scan.find(prand, want, 30, 10) == -1  # empty range
    # split into steps of 8, as a bounded caller would: the same answer
    found = next((f for s in range(0, 40, 8) if (f := scan.find(prand, want, s, s + 8)) >= 0), -1)
    assert found == 21


@needs_c
def test_remove_moves_the_last_key_into_the_hole(portable: bool) -> None:
    rng = random.Random(5)
    keys = [rng.randbytes(16) for _ in range(20)]
    scan = _irkscan.KeySet(portable=portable)
    for key in keys:
        scan.add(key)
    mirror = list(keys)
    for index in (3, 0, 17, 7, 7):  # 17: the last key after two removals
        scan.remove(index)
        last = mirror.pop()
        if index < len(mirror):
            mirror[index] = last
        assert len(scan) == len(mirror)
        for i, key in enumerate(mirror):
            prand = rng.randbytes(3)
            want = ah(key, prand)
            assert scan.find(prand, want) == first_match(mirror, prand, want)
            assert first_match(mirror, prand, want) <= i
        gone = ah(keys[3], b"\x40\x00\x01")
        assert scan.find(b"\x40\x00\x01", gone) == first_match(mirror, b"\x40\x00\x01", gone)
    while len(scan):
        scan.remove(0)
    assert scan.find(b"\x40\x00\x01", ah(keys[1], b"\x40\x00\x01")) == -1
    with pytest.raises(IndexError):
        scan.remove(0)


@needs_c
def test_clear_and_reuse(portable: bool) -> None:
    scan = _irkscan.KeySet(portable=portable)
    keys = [bytes([n]) * 16 for n in range(100)]  # grows past the first allocation (64 keys)
    for key in keys:
        scan.add(key)
    assert scan.nbytes >= 100 * 176
    scan.clear()
    assert len(scan) == 0
    assert scan.nbytes == 0
    assert scan.find(b"\x40\x00\x00", ah(keys[0], b"\x40\x00\x00")) == -1
    assert scan.add(keys[9]) == 0
    assert scan.find(b"\x40\x00\x00", ah(keys[9], b"\x40\x00\x00")) == 0
    scan.reserve(1000)  # a bulk load's one allocation; the key held survives it
    assert scan.nbytes == 1000 * 176
    scan.reserve(10)
    assert scan.nbytes == 1000 * 176
    assert scan.find(b"\x40\x00\x00", ah(keys[9], b"\x40\x00\x00")) == 0
    # A little more than there is room for grows by a quarter, not to the exact count: pages
    # of a cold start and single enrollments must not copy the whole buffer every time.
    scan.reserve(1001)
    assert scan.nbytes == 1250 * 176
    scan.reserve(1249)
    assert scan.nbytes == 1250 * 176
    scan.reserve(5000)
    assert scan.nbytes == 5000 * 176
    assert scan.find(b"\x40\x00\x00", ah(keys[9], b"\x40\x00\x00")) == 0


@needs_c
def test_match_agrees_with_cryptography(portable: bool) -> None:
    rng = random.Random(9)
    keys = [rng.randbytes(16) for _ in range(3)]
    scan = _irkscan.KeySet(portable=portable)
    for key in keys:
        scan.add(key)
    for count in (0, 1, 3, 4, 5, 257):
        blocks = b"".join(rng.randbytes(16) for _ in range(count))
        hashes = b"".join(
            aes(keys[1], blocks[16 * n : 16 * n + 16])[13:] if n % 3 == 0 else rng.randbytes(3)
            for n in range(count))
        expected = [n for n in range(count)
                    if aes(keys[1], blocks[16 * n : 16 * n + 16])[13:] == hashes[3 * n : 3 * n + 3]]
        assert scan.match(1, blocks, hashes) == expected
        assert scan.match(1, bytearray(blocks), bytearray(hashes)) == expected  # in place
        assert expected == list(range(0, count, 3))


@needs_c
def test_bad_arguments_never_show_the_key(portable: bool) -> None:
    secret = bytes(range(0xA0, 0xB0))
    scan = _irkscan.KeySet(portable=portable)
    scan.add(secret)
    text = [secret.hex(), secret.hex().upper(), repr(secret)]
    errors: list[BaseException] = []
    for call in (
        lambda: scan.add(secret + b"\x00"),
        lambda: scan.add(secret[:15]),
        lambda: scan.find(secret[:4], b"abc"),
        lambda: scan.find(b"abc", secret[:2]),
        lambda: scan.match(0, secret[:15], b"abc"),
        lambda: scan.match(1, secret, b"abc"),
        lambda: scan.remove(5),
        lambda: scan.add("not bytes"),
    ):
        with pytest.raises((ValueError, IndexError, TypeError)) as caught:
            call()
        errors.append(caught.value)
    for error in errors:
        assert not any(t in str(error) for t in text), error
    shown = repr(scan)
    assert "1 keys" in shown
    assert not any(t in shown for t in text)
    with pytest.raises(TypeError):
        pickle.dumps(scan)
    assert not hasattr(scan, "__dict__")
    with pytest.raises(TypeError):
        memoryview(scan)  # type: ignore[arg-type]


# -- IrkCache on every backend ------------------------------------------------------------------


@pytest.mark.parametrize("backend", available_backends())
def test_cache_backends_give_the_same_answers(backend: str) -> None:
    """A random run of adds, replacements, removals and lookups, checked against a plain
    Python model of which contact's IRK resolves each address."""
    rng = random.Random(21)
    cache = IrkCache(max_entries=64, ttl_s=1e9, backend=backend)
    assert cache.backend == backend
    model: dict[str, list[bytes]] = {}
    for step in range(400):
        op = rng.random()
        if op < 0.25:
            cid = f"c{rng.randrange(30)}"
            irks = [rng.randbytes(16) for _ in range(rng.randrange(0, 3))]
            cache.set_irks(cid, irks)
            if irks:
                model[cid] = irks
            else:
                model.pop(cid, None)
        elif op < 0.35 and model:
            cid = rng.choice(sorted(model))
            cache.remove(cid)
            del model[cid]
        elif op < 0.37:
            cache.clear()
            model.clear()
        else:
            prand = bytes([0x40 | rng.randrange(64)]) + rng.randbytes(2)
            owner = rng.choice(sorted(model)) if model and rng.random() < 0.7 else None
            want = ah(rng.choice(model[owner]), prand) if owner else rng.randbytes(3)
            found = cache.resolve(address_of(prand, want), float(step))
            owners = {cid for cid, irks in model.items() if any(ah(k, prand) == want for k in irks)}
            assert (found.contact_id if found else None) in (owners or {None})
        assert cache.key_count == sum(len(irks) for irks in model.values())


@pytest.mark.parametrize("backend", available_backends())
def test_cache_recheck_after_a_contact_listed_twice(backend: str) -> None:
    """add_many with a contact twice keeps its second keys; cached 'no one' answers are
    re-checked against the keys still held only."""
    rng = random.Random(2)
    first, second = rng.randbytes(16), rng.randbytes(16)
    cache = IrkCache(max_entries=100, ttl_s=1e9, backend=backend)
    cache.set_irks("other", [rng.randbytes(16)])
    a1 = address_of(b"\x40\x01\x02", ah(first, b"\x40\x01\x02"))
    a2 = address_of(b"\x40\x01\x03", ah(second, b"\x40\x01\x03"))
    assert cache.resolve(a1, 0.0) is None
    assert cache.resolve(a2, 0.0) is None
    cache.add_many([("c", [first]), ("c", [second])])
    assert cache.key_count == 2
    assert cache.known_stranger(a1)  # the replaced key's address stays "no one"
    found = cache.resolve(a2, 1.0)
    assert found is not None
    assert found.contact_id == "c"
    assert found.index >= 0
    cache.remove("c")
    assert found.index == -1
    assert cache.resolve(a2, 2.0) is None


def test_cache_backends_agree_on_a_recheck() -> None:
    """The C re-check (match over the ring in place) and the Python one find the same."""
    rng = random.Random(4)
    new_keys = [rng.randbytes(16) for _ in range(5)]
    addresses = []
    for n in range(300):
        prand = bytes([0x40 | rng.randrange(64)]) + rng.randbytes(2)
        want = ah(new_keys[n % 5], prand) if n % 4 == 0 else rng.randbytes(3)
        addresses.append(address_of(prand, want))
    answers = {}
    for backend in available_backends():
        cache = IrkCache(max_entries=1000, ttl_s=1e9, backend=backend)
        cache.set_irks("old", [rng.randbytes(16)])
        for address in addresses:
            cache.resolve(address, 0.0)
        cache.add_many([(f"n{i}", [key]) for i, key in enumerate(new_keys)])
        answers[backend] = [
            None if (k := cache.resolve(a, 1.0)) is None else k.contact_id for a in addresses]
        assert cache.misses == len(addresses)  # the second pass came from the cache
    expected = [f"n{n % 5}" if n % 4 == 0 else None for n in range(300)]
    for backend, got in answers.items():
        assert got == expected, backend


def test_cache_rejects_a_bad_irk_without_showing_it() -> None:
    for backend in available_backends():
        cache = IrkCache(max_entries=16, ttl_s=60.0, backend=backend)
        cache.set_irks("c", [bytes(16)])
        bad = bytes(range(0xC0, 0xD1))  # 17 bytes
        with pytest.raises(ValueError, match="16 bytes") as caught:
            cache.set_irks("d", [bad])
        assert bad.hex() not in str(caught.value)
        assert cache.key_count == 1
        with pytest.raises(ValueError, match="16 bytes"):  # a bulk load changes nothing
            cache.add_many([("e", [bytes(range(16))]), ("c", [bad[:15]])])
        assert cache.key_count == 1
        assert "IrkKey(contact_id='c', index=0)" in repr(cache.resolve(
            address_of(b"\x40\x00\x01", ah(bytes(16), b"\x40\x00\x01")), 0.0))


def test_unknown_backend_is_refused() -> None:
    with pytest.raises(ValueError, match="not available"):
        IrkCache(max_entries=16, ttl_s=60.0, backend="gpu")


def test_resolver_budget_follows_the_backend() -> None:
    from hallway.config import IdentityConfig
    from hallway.identity.resolver import Resolver

    auto = Resolver(IdentityConfig())
    assert auto.irk_backend == available_backends()[0]
    assert auto.stats()["irk_trials_per_s"] == DEFAULT_TRIALS_PER_S[auto.irk_backend]
    python = Resolver(IdentityConfig(irk_backend="python"))
    assert python.irk_backend == "python"
    assert python.stats()["irk_trials_per_s"] == 250_000
    unlimited = Resolver(IdentityConfig(irk_trials_per_s=0))
    assert unlimited.stats()["irk_trials_per_s"] == 0
    fixed = Resolver(IdentityConfig(irk_trials_per_s=1234, irk_backend="python"))
    assert fixed.stats()["irk_trials_per_s"] == 1234


def test_doctor_names_the_backend() -> None:
    from hallway.config import Config, IdentityConfig
    from hallway.doctor import Status, check_irk_scan

    config = Config()
    here = check_irk_scan(config)
    assert here.status is (Status.OK if _irkscan is not None else Status.WARN)
    assert here.detail.startswith(available_backends()[0])
    assert check_irk_scan(config, ("aes-ni", "portable", "python")).detail.startswith("aes-ni")
    portable = check_irk_scan(config, ("portable", "python"))
    assert portable.status is Status.OK
    assert portable.detail.startswith("portable")
    missing = check_irk_scan(config, ("python",))
    assert missing.status is Status.WARN
    assert "not built" in missing.detail
    assert "python3-dev" in (missing.fix or "")
    chosen = config.model_copy(update={"identity": IdentityConfig(irk_backend="python")})
    assert check_irk_scan(chosen, ("aes-ni", "portable", "python")).status is Status.OK


@needs_c
def test_portable_scan_rechecks_less_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The portable scan's re-check limit is its own (it is about 10 times slower a block)."""
    from hallway.identity import irk as irk_module

    monkeypatch.setattr(irk_module, "PORTABLE_RECHECK_LIMIT", 10)
    rng = random.Random(8)
    newcomer = rng.randbytes(16)
    prand = b"\x40\x01\x02"
    address = address_of(prand, ah(newcomer, prand))
    kept = {}
    for backend in available_backends():
        cache = IrkCache(max_entries=100, ttl_s=1800.0, backend=backend)
        cache.set_irks("x", [rng.randbytes(16)])
        cache.resolve(address, 1.0)
        for n in range(20):
            cache.resolve(address_of(bytes([0x41, 0, n]), rng.randbytes(3)), 1.0)
        cache.add_many([("new", [newcomer])])
        kept[backend] = len(cache)
        key = cache.resolve(address, 2.0)  # re-checked, or tried afresh: either way, found
        assert key is not None
        assert key.contact_id == "new"
    assert kept["portable"] == 0  # 21 blocks > 10: the "no one" answers were dropped
    assert kept["python"] == 21
    if "aes-ni" in kept:
        assert kept["aes-ni"] == 21
