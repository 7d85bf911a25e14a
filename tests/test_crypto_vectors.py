"""SPEC §3/§4 test vectors for hallway.identity.crypto, checked against independent oracles."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given
from hypothesis import strategies as st

from hallway.identity import crypto

K = bytes.fromhex("75c734c6dd1a782de7a965da5eb93125")
RPIK = bytes.fromhex("185ad91db69ec7dd048960f1f3ba6175")
AEMK = bytes.fromhex("d57c46af7a1d83965b9bed8bd152936a")
RPIS = {
    2642976: "8be6cd371c5c891604bfbe49df845096",
    2642977: "3c9a1de5dd6b02afa7fded7b570b3e56",
    2642978: "243ffe9a3b08bded3094bac8630bb8ad",
    2643048: "c19a30c39c9c3a089bcadde1c6699447",
    2643119: "f431b62ecf443102ce4ed0407de54bd4",
}
IRK = bytes.fromhex("ec0234a357c8ad05341010a60a397d9b")


def test_key_derivation() -> None:
    assert crypto.derive_rpik(K) == RPIK
    assert crypto.derive_aemk(K) == AEMK


def test_interval_and_padded_data() -> None:
    assert crypto.interval_number(1585785600) == 2642976
    assert crypto.interval_number(1585785600 + 599.999) == 2642976
    assert crypto.interval_number(1585785600 - 0.001) == 2642975
    assert crypto.rpi_padded_data(2642976).hex() == "454e2d52504900000000000020542800"


@pytest.mark.parametrize(("interval", "rpi"), sorted(RPIS.items()))
def test_rpi_vectors(interval: int, rpi: str) -> None:
    assert crypto.rpi_for_interval(RPIK, interval).hex() == rpi


def test_batched_rpis_match_single() -> None:
    batch = crypto.rpis_for_intervals(RPIK, 2642976, 3)
    assert [r.hex() for r in batch] == [RPIS[2642976], RPIS[2642977], RPIS[2642978]]


def test_aem_and_its_decryption() -> None:
    rpi = bytes.fromhex(RPIS[2642976])
    aem = crypto.aem_crypt(AEMK, rpi, bytes.fromhex("40080000"))
    assert aem.hex() == "72033874"
    assert crypto.aem_crypt(AEMK, rpi, aem).hex() == "40080000"


def test_raw_ad_frame_carries_rpi_and_aem() -> None:
    raw = bytes.fromhex("02011a03036ffd17166ffd8be6cd371c5c891604bfbe49df84509672033874")
    # flags AD, 16-bit UUID list AD, then service data AD: len, 0x16, UUID fd6f LE, payload
    service_ad = raw[7:]
    assert service_ad[0] == len(service_ad) - 1
    assert service_ad[1:4] == bytes.fromhex("166ffd")
    assert service_ad[4:20].hex() == RPIS[2642976]
    assert service_ad[20:24].hex() == "72033874"


def test_ah_core_spec_sample() -> None:
    block = Cipher(algorithms.AES(IRK), modes.ECB()).encryptor().update(
        bytes(13) + bytes.fromhex("708194")
    )
    assert block.hex() == "159d5fb72ebe2311a48c1bdcc40dfbaa"
    assert crypto.ah(IRK, bytes.fromhex("708194")).hex() == "0dfbaa"
    assert crypto.make_rpa(IRK, bytes.fromhex("708194")) == "70:81:94:0D:FB:AA"
    assert crypto.ah(IRK[::-1], bytes.fromhex("708194")).hex() != "0dfbaa"


def test_make_rpa_rejects_non_rpa_prand() -> None:
    with pytest.raises(ValueError, match="top bits"):
        crypto.make_rpa(IRK, bytes.fromhex("c08194"))
    with pytest.raises(ValueError, match="top bits"):
        crypto.make_rpa(IRK, bytes.fromhex("7081"))


@given(key=st.binary(min_size=16, max_size=16), rpi=st.binary(min_size=16, max_size=16),
       data=st.binary(max_size=40))
def test_aem_crypt_is_an_involution_and_is_ctr(key: bytes, rpi: bytes, data: bytes) -> None:
    enc = crypto.aem_crypt(key, rpi, data)
    assert crypto.aem_crypt(key, rpi, enc) == data
    # CTR keystream's first block is ECB(counter block): check independently
    if data:
        stream = Cipher(algorithms.AES(key), modes.ECB()).encryptor().update(rpi)
        head = bytes(a ^ b for a, b in zip(data[:16], stream, strict=False))
        assert enc[:16] == head


@given(irk=st.binary(min_size=16, max_size=16), tail=st.binary(min_size=3, max_size=3))
def test_make_rpa_round_trips_through_ah(irk: bytes, tail: bytes) -> None:
    prand = bytes([0x40 | (tail[0] & 0x3F)]) + tail[1:]
    address = crypto.make_rpa(irk, prand)
    assert crypto.is_rpa(address)
    raw = bytes.fromhex(address.replace(":", ""))
    assert raw[:3] == prand
    assert crypto.ah(irk, raw[:3]) == raw[3:]
