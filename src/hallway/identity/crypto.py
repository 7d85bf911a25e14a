"""The cryptography behind hallway-v1 tokens and Bluetooth resolvable private addresses.

hallway-v1 (SPEC §3) is Exposure Notification's derivation with the enrollment key ``K`` in the
place of the Temporary Exposure Key::

    RPIK  = HKDF-SHA256(IKM=K, salt=none, info="EN-RPIK", L=16)
    AEMK  = HKDF-SHA256(IKM=K, salt=none, info="EN-AEMK", L=16)
    i     = floor(unix_seconds / 600)
    RPI_i = AES-128-ECB(RPIK, "EN-RPI" || 6 zero bytes || i as uint32 little-endian)
    AEM   = AES-128-CTR(AEMK, initial counter block = RPI_i) applied to the 4 metadata bytes

IRK resolution (Core spec Vol 3 Part H 2.2.2): a resolvable private address is
``prand (3 octets, top bits 01) || hash (3 octets)`` written most significant octet first, with
``hash = ah(IRK, prand)`` = the last 3 bytes of ``AES-128(IRK, 13 zero bytes || prand)``. Keys and
blocks here are in that same most-significant-first order.

AES comes from the ``cryptography`` package. Building a cipher context costs about 5 µs while
encrypting a block with an existing ECB context costs about 0.2 µs, so the one-shot helpers keep
a small bounded cache of ECB contexts per key, and callers that encrypt many blocks under one key
batch them into a single ``update`` call (:func:`rpis_for_intervals`). An ECB context holds no
state between whole blocks, so reusing one is safe.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Protocol

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

INTERVAL_S = 600
"""Length of one RPI interval in seconds (SPEC §3)."""

_RPI_PREFIX = b"EN-RPI" + bytes(6)
_AH_PAD = bytes(13)
_U32 = 1 << 32
_ECB = modes.ECB()  # stateless; sharing it saves building one per context  # noqa: S305


class BlockEncryptor(Protocol):
    """An AES-ECB encryption context: ``update`` maps whole 16-byte blocks to ciphertext."""

    def update(self, data: bytes, /) -> bytes:
        """Encrypt ``data`` (a multiple of 16 bytes)."""
        ...


def ecb_encryptor(key: bytes) -> BlockEncryptor:
    """A fresh AES-128-ECB encryption context for ``key`` (16 bytes)."""
    if len(key) != 16:
        raise ValueError("AES-128 key must be 16 bytes")
    return Cipher(algorithms.AES(key), _ECB).encryptor()


@lru_cache(maxsize=4096)
def _cached_ecb(key: bytes) -> BlockEncryptor:
    return ecb_encryptor(key)


def interval_number(ts: float) -> int:
    """The EN interval number ``floor(ts / 600)`` of a Unix time in seconds."""
    return int(ts // INTERVAL_S)


def _hkdf16(key: bytes, info: bytes) -> bytes:
    if len(key) != 16:
        raise ValueError("hallway-v1 key must be 16 bytes")
    return HKDF(algorithm=SHA256(), length=16, salt=None, info=info).derive(key)


def derive_rpik(key: bytes) -> bytes:
    """The Rolling Proximity Identifier Key of an enrollment key (HKDF info ``EN-RPIK``)."""
    return _hkdf16(key, b"EN-RPIK")


def derive_aemk(key: bytes) -> bytes:
    """The Associated Encrypted Metadata Key of an enrollment key (HKDF info ``EN-AEMK``)."""
    return _hkdf16(key, b"EN-AEMK")


def rpi_padded_data(interval: int) -> bytes:
    """The 16-byte block ``EN-RPI || 00*6 || interval (uint32 LE)`` that is encrypted."""
    return _RPI_PREFIX + (interval % _U32).to_bytes(4, "little")


def rpi_for_interval(rpik: bytes, interval: int) -> bytes:
    """The 16-byte RPI of ``interval`` under ``rpik``."""
    return _cached_ecb(rpik).update(rpi_padded_data(interval))


def rpis_for_intervals(rpik: bytes, first: int, count: int) -> list[bytes]:
    """RPIs of intervals ``first .. first+count-1`` with one cipher context and one AES call."""
    blocks = b"".join(rpi_padded_data(first + n) for n in range(count))
    out = ecb_encryptor(rpik).update(blocks)
    return [out[n : n + 16] for n in range(0, 16 * count, 16)]


def aem_crypt(aemk: bytes, rpi: bytes, data: bytes) -> bytes:
    """AES-128-CTR of ``data`` under ``aemk`` with the RPI as initial counter block (both ways)."""
    if len(aemk) != 16 or len(rpi) != 16:
        raise ValueError("AEMK and RPI must be 16 bytes each")
    if len(data) <= 16:
        # One counter block: CTR is the data XOR AES-ECB(AEMK, RPI), and the ECB context of
        # the key is cached (building a CTR context per frame costs several microseconds).
        keystream = _cached_ecb(aemk).update(rpi)
        return bytes(a ^ b for a, b in zip(data, keystream, strict=False))
    ctx = Cipher(algorithms.AES(aemk), modes.CTR(rpi)).encryptor()
    return ctx.update(data) + ctx.finalize()


def ah(irk: bytes, prand: bytes) -> bytes:
    """The 3-byte hash ``ah(IRK, prand)`` of the Core spec (all most significant byte first)."""
    if len(prand) != 3:
        raise ValueError("prand must be 3 bytes")
    return _cached_ecb(irk).update(_AH_PAD + prand)[13:]


def is_rpa(address: str) -> bool:
    """True if a random address's two top bits are ``01`` (a resolvable private address)."""
    return len(address) == 17 and address[0] in "4567"


def make_rpa(irk: bytes, prand: bytes) -> str:
    """The resolvable private address ``prand || ah(irk, prand)`` as ``AA:BB:CC:DD:EE:FF``."""
    if len(prand) != 3 or prand[0] >> 6 != 0b01:
        raise ValueError("prand must be 3 bytes whose two top bits are 01")
    raw = prand + ah(irk, prand)
    return ":".join(f"{b:02X}" for b in raw)
