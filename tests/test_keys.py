"""Key input forms and their canonical text (SPEC §1)."""

from __future__ import annotations

import pytest

from hallway.errors import KeyFormatError
from hallway.keys import key_from_json, key_to_json, parse_irk
from hallway.models import ContactKey, KeyKind

SPEC_IRK = "ec0234a357c8ad05341010a60a397d9b"


@pytest.mark.parametrize(
    "obj",
    [
        {"kind": "irk", "irk": SPEC_IRK},
        {"kind": "irk", "irk": "irk:" + SPEC_IRK},
        {"kind": "irk", "irk": "0x" + SPEC_IRK.upper()},
        {"kind": "irk", "irk": bytes.fromhex(SPEC_IRK)[::-1].hex(), "order": "lsb"},
        {"kind": "irk", "irk": "m305CqYQEDQFrchXozQC7A=="},
    ],
)
def test_every_irk_form_is_stored_msb_first(obj: dict[str, str]) -> None:
    assert key_from_json(obj) == ContactKey(KeyKind.IRK, SPEC_IRK)


def test_bad_irk_message_never_contains_the_key() -> None:
    secret = SPEC_IRK[:-1]
    with pytest.raises(KeyFormatError) as info:
        parse_irk(secret)
    assert secret not in str(info.value)
    assert "31" in str(info.value)


@pytest.mark.parametrize(
    ("obj", "value"),
    [
        ({"kind": "hallway-v1", "key": "75C734C6DD1A782DE7A965DA5EB93125"},
         "75c734c6dd1a782de7a965da5eb93125"),
        ({"kind": "ibeacon", "uuid": "426C7565-4368-6172-6D42-6561636F6E73", "major": 3838,
          "minor": 4949}, "426c7565-4368-6172-6d42-6561636f6e73/3838/4949"),
        ({"kind": "eddystone-uid", "namespace": "12345678901234678901", "instance": "000000000001"},
         "12345678901234678901/000000000001"),
        ({"kind": "address", "address": "c4:7c:8d:6a:12:34"}, "C4:7C:8D:6A:12:34"),
    ],
)
def test_canonical_forms_round_trip(obj: dict[str, object], value: str) -> None:
    key = key_from_json(obj)
    assert key.value == value
    assert key_from_json(key_to_json(key)) == key


@pytest.mark.parametrize(
    "obj",
    [
        {"kind": "telepathy", "key": "00"},
        {"kind": "hallway-v1", "key": "abc"},
        {"kind": "ibeacon", "uuid": "not-a-uuid", "major": 1, "minor": 2},
        {"kind": "ibeacon", "uuid": "426c7565-4368-6172-6d42-6561636f6e73", "major": 70000,
         "minor": 2},
        {"kind": "eddystone-uid", "namespace": "1234", "instance": "000000000001"},
        {"kind": "address", "address": "C4:7C:8D:6A:12"},
        {"kind": "irk", "irk": SPEC_IRK, "order": "middle"},
        {"kind": "irk", "irk": SPEC_IRK, "extra": 1},
    ],
)
def test_invalid_keys_are_rejected(obj: dict[str, object]) -> None:
    with pytest.raises(KeyFormatError):
        key_from_json(obj)
