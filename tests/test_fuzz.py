"""Fuzzing the parsers that take outside input: no input may raise out of them or hang.

Targets: the beacon frame parsers and the resolver behind them (bytes off the air), the trace
reader (SPEC §2 lines, and the caching ``TraceParser`` checked against the plain parser), the
contacts importer (JSON Lines and CSV, whole file or nothing), the config loader (TOML text and
files of any bytes), the socket protocol reader of a running daemon (any bytes a client sends)
and ``hallway tail``'s formatting of what a server sends. Each target is a check function and a
Hypothesis strategy in ``TARGETS``; the tests here run them with a bounded example count and a
per-example deadline, ``bench/fuzz_long.py`` runs them for longer.
"""

from __future__ import annotations

import base64
import json
import math
import socket
import string
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hallway.commands.tail import format_message
from hallway.config import Config, load_config, parse_config
from hallway.contacts_io import parse_contacts
from hallway.errors import ConfigError, ImportRejected
from hallway.identity.resolver import Resolver
from hallway.keys import key_from_json, key_to_json
from hallway.models import Advertisement, Contact, ContactKey, KeyKind, Match
from hallway.parsing.frames import (
    EddystoneOtherFrame,
    EddystoneUidFrame,
    EnFrame,
    HallwayFrame,
    IBeaconFrame,
    Malformed,
    address_bytes,
    parse_eddystone,
    parse_en_service_data,
    parse_hallway_mfr,
    parse_ibeacon,
    random_address_subtype,
    uuid_rpi,
)
from hallway.trace import TraceLineError, TraceParser, parse_trace_line, read_trace
from tests.reliability_env import (
    TOKEN,
    Daemon,
    LineClient,
    badge_address,
    badge_rows,
    hallway,
    record,
    start_daemon,
    write_config,
    write_jsonl,
)

pytestmark = pytest.mark.timeout(120)

# -- building blocks --------------------------------------------------------------------------

HEX = "0123456789abcdefABCDEF"
EN_UUID = "0000fd6f-0000-1000-8000-00805f9b34fb"
EDDYSTONE_UUID = "0000feaa-0000-1000-8000-00805f9b34fb"
SPEC_KEY = "75c734c6dd1a782de7a965da5eb93125"
SPEC_IRK = "ec0234a357c8ad05341010a60a397d9b"
SPEC_RPI = "8be6cd371c5c891604bfbe49df845096"
SPEC_TS = 1585785630.0

big_ints = st.integers(min_value=-(10**1000), max_value=10**1000)
digit_strings = st.one_of(
    st.text("0123456789", min_size=1, max_size=7),
    st.integers(4290, 4400).map(lambda n: "7" * n),  # past int()'s digit limit
)
hex_strings = st.text(HEX, max_size=48)
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), big_ints,
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=30), digit_strings,
    hex_strings,
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=8,
)


def _address_text(raw: bytes, sep: str = ":") -> str:
    return sep.join(f"{b:02X}" for b in raw)


addresses = st.one_of(
    st.binary(min_size=6, max_size=6).map(_address_text),
    st.binary(min_size=6, max_size=6).map(lambda raw: _address_text(raw).lower()),
    st.text(HEX + ":-_ ", max_size=20),
    st.text(max_size=20),
)
uuid_texts = st.one_of(
    st.uuids().map(str), st.just(EN_UUID), st.just(EDDYSTONE_UUID),
    st.just(str(uuid.UUID(SPEC_RPI))), st.text(HEX + "-", max_size=40), st.text(max_size=40),
)
mfr_payloads = st.one_of(
    st.binary(max_size=40),
    st.binary(max_size=24).map(lambda b: b"HW\x01" + b),
    st.binary(max_size=26).map(lambda b: b"\x02\x15" + b),
    st.just(bytes.fromhex("485701" + SPEC_RPI + "c5")),
)
svc_payloads = st.one_of(
    st.binary(max_size=40),
    st.binary(max_size=24).map(lambda b: b"\x00" + b),
    st.sampled_from([b"\x10", b"\x20", b"\x30"]).flatmap(lambda t: st.binary(max_size=20)
                                                          .map(lambda b: t + b)),
    st.just(bytes.fromhex(SPEC_RPI + "72033874")),
)
company_ids = st.one_of(st.sampled_from([0xFFFF, 76, 6, 0]), st.integers(0, 0xFFFF))
svc_keys = st.one_of(st.sampled_from([EN_UUID, EDDYSTONE_UUID]), uuid_texts)


def _valid_line(ts: float, address: str) -> dict[str, Any]:
    return {"ts": ts, "address": address, "address_type": "random", "rssi": -67,
            "tx_power": None, "local_name": None,
            "manufacturer_data": {"76": "0215426c7565436861726d426561636f6e730efe1355c5"},
            "service_data": {EDDYSTONE_UUID: "00e3123456789012346789010000000000010000"},
            "service_uuids": [EDDYSTONE_UUID], "scanner": "hci0"}


def _either(plausible: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(plausible, json_values)


trace_objects = st.fixed_dictionaries({}, optional={
    "ts": _either(st.one_of(st.floats(), big_ints, st.integers())),
    "address": _either(addresses),
    "address_type": _either(st.sampled_from(["public", "random", "Random", ""])),
    "rssi": _either(st.one_of(st.integers(-200, 100), st.floats(), big_ints)),
    "tx_power": _either(st.one_of(st.integers(-300, 300), big_ints)),
    "local_name": _either(st.text(max_size=30)),
    "manufacturer_data": _either(st.dictionaries(
        st.one_of(company_ids.map(str), digit_strings, st.text(max_size=6)),
        _either(mfr_payloads.map(bytes.hex)), max_size=3)),
    "service_data": _either(st.dictionaries(svc_keys, _either(svc_payloads.map(bytes.hex)),
                                            max_size=3)),
    "service_uuids": _either(st.lists(uuid_texts, max_size=3)),
    "scanner": _either(st.text(max_size=10)),
})


def _layout(obj: dict[str, Any], spaced: bool) -> str:
    """A JSON line; ``spaced`` puts ``ts`` first in the recorder's layout (TraceParser's path)."""
    if spaced and "ts" in obj:
        obj = {"ts": obj["ts"], **{k: v for k, v in obj.items() if k != "ts"}}
    return json.dumps(obj, separators=(", ", ": ") if spaced else (",", ":"))


trace_lines = st.one_of(
    st.builds(_layout, trace_objects, st.booleans()),
    st.text(max_size=200),
    st.builds(lambda obj, cut: _layout(obj, True)[:cut], trace_objects, st.integers(0, 200)),
    st.tuples(st.floats(1e9, 2e9), st.binary(min_size=6, max_size=6), st.integers(0, 400),
              st.characters()).map(
        lambda t: _mutate(_layout(_valid_line(t[0], _address_text(t[1])), True), t[2], t[3])),
)


def _mutate(text: str, at: int, char: str) -> str:
    at %= len(text) + 1
    return text[:at] + char + text[at + 1:]


# -- frame parsers and the resolver -----------------------------------------------------------


def check_frames(data: bytes) -> None:
    """Every frame parser returns its frame, Malformed or None on any bytes."""
    assert type(parse_hallway_mfr(data)) in (HallwayFrame, Malformed, type(None))
    assert type(parse_en_service_data(data)) in (EnFrame, Malformed)
    assert type(parse_ibeacon(data)) in (IBeaconFrame, Malformed, type(None))
    assert type(parse_eddystone(data)) in (EddystoneUidFrame, EddystoneOtherFrame, Malformed,
                                           type(None))
    text = data.decode("latin-1")
    rpi = uuid_rpi(text)
    assert rpi is None or type(rpi) is Malformed or (type(rpi) is bytes and len(rpi) == 16)
    raw = address_bytes(text)
    assert raw is None or len(raw) == 6
    assert random_address_subtype(text) in (None, "resolvable", "static", "non-resolvable")


def _contacts() -> list[Contact]:
    return [
        Contact(id="c-hw", name="Hallway", keys=(ContactKey(KeyKind.HALLWAY_V1, SPEC_KEY),)),
        Contact(id="c-irk", name="Irk", keys=(ContactKey(KeyKind.IRK, SPEC_IRK),)),
        Contact(id="c-ib", name="Beacon", keys=(ContactKey(
            KeyKind.IBEACON, "426c7565-4368-6172-6d42-6561636f6e73/3838/4949"),)),
        Contact(id="c-ed", name="Eddy", keys=(ContactKey(
            KeyKind.EDDYSTONE_UID, "12345678901234678901/000000000001"),)),
        Contact(id="c-ad", name="Badge", keys=(ContactKey(KeyKind.ADDRESS, "C4:7C:8D:6A:12:34"),),
                expires_at=SPEC_TS + 3600),
    ]


_RESOLVER = Resolver(Config().identity)
_RESOLVER.set_contacts(_contacts(), now=SPEC_TS)

advertisements = st.builds(
    Advertisement,
    ts=st.one_of(st.floats(SPEC_TS - 7200, SPEC_TS + 7200), st.floats(), st.integers(-2**40,
                                                                                     2**40)),
    address=st.one_of(addresses, st.sampled_from(["70:81:94:0D:FB:AA", "C4:7C:8D:6A:12:34"])),
    address_type=st.sampled_from(["public", "random", "other"]),
    rssi=st.integers(-128, 20),
    tx_power=st.none() | st.integers(-128, 127),
    local_name=st.none() | st.text(max_size=20),
    manufacturer_data=st.dictionaries(company_ids, mfr_payloads, max_size=3),
    service_data=st.dictionaries(svc_keys, svc_payloads, max_size=3),
    service_uuids=st.lists(uuid_texts, max_size=3).map(tuple),
    scanner=st.text(max_size=5),
)


def check_resolver(adv: Advertisement) -> None:
    """The resolver answers a Match or None and never trips its internal-error guard."""
    before = _RESOLVER.stats()["internal_errors"]
    result = _RESOLVER.resolve(adv)
    assert result is None or type(result) is Match
    assert _RESOLVER.stats()["internal_errors"] == before, adv


# -- the trace reader -------------------------------------------------------------------------


def _well_formed(adv: Advertisement) -> None:
    assert type(adv.ts) is float
    assert math.isfinite(adv.ts)
    assert len(adv.address) == 17
    assert adv.address == adv.address.upper()
    assert adv.address_type in ("public", "random")
    assert type(adv.rssi) is int
    assert -128 <= adv.rssi <= 20
    assert adv.tx_power is None or -128 <= adv.tx_power <= 127
    assert all(type(k) is int and 0 <= k <= 0xFFFF and type(v) is bytes
               for k, v in adv.manufacturer_data.items())
    assert all(type(k) is str and type(v) is bytes for k, v in adv.service_data.items())
    assert all(type(u) is str for u in adv.service_uuids)


def check_trace_line(line: str) -> None:
    """A line parses to a well-formed Advertisement or raises TraceLineError, as text and as
    bytes; nothing else escapes."""
    for form in (line, line.encode("utf-8", "surrogatepass")):
        try:
            adv = parse_trace_line(form)
        except TraceLineError:
            continue
        _well_formed(adv)


def _outcome(parse: Callable[[str], Advertisement], line: str) -> Advertisement | str:
    try:
        return parse(line)
    except TraceLineError as exc:
        return f"error: {exc}"


def check_trace_parser(lines: list[str]) -> None:
    """The caching TraceParser gives exactly what parse_trace_line gives, line by line, and
    read_trace numbers every non-blank line."""
    parser = TraceParser()
    for line in lines:
        assert _outcome(parser.parse, line) == _outcome(parse_trace_line, line), line
    numbered = list(read_trace(lines))
    assert [n for n, _ in numbered] == [i for i, ln in enumerate(lines, 1) if ln.strip()]


# -- the contacts importer --------------------------------------------------------------------

key_objects = st.one_of(
    st.fixed_dictionaries({"kind": st.just("hallway-v1"),
                           "key": st.one_of(hex_strings, st.binary(min_size=14, max_size=18)
                                            .map(lambda b: base64.urlsafe_b64encode(b).decode()
                                                 .rstrip("=")), st.text(max_size=40))}),
    st.fixed_dictionaries({"kind": st.just("irk"),
                           "irk": st.one_of(hex_strings, hex_strings.map(lambda h: "0x" + h),
                                            hex_strings.map(lambda h: "irk:" + h),
                                            st.binary(min_size=15, max_size=17)
                                            .map(lambda b: base64.b64encode(b).decode()),
                                            st.text(max_size=40))},
                          optional={"order": _either(st.sampled_from(["msb", "lsb", "x"]))}),
    st.fixed_dictionaries({"kind": st.just("ibeacon"), "uuid": _either(uuid_texts)},
                          optional={"major": _either(st.integers(-5, 70000)),
                                    "minor": _either(st.integers(-5, 70000))}),
    st.fixed_dictionaries({"kind": st.just("eddystone-uid"), "namespace": _either(hex_strings),
                           "instance": _either(hex_strings)}),
    st.fixed_dictionaries({"kind": st.just("address"), "address": _either(addresses)}),
    st.dictionaries(st.sampled_from(["kind", "key", "irk", "uuid", "x"]), json_values,
                    max_size=3),
)
times = st.one_of(st.datetimes().map(lambda d: d.isoformat() + "Z"), st.datetimes().map(str),
                  st.text(max_size=25), st.integers(), st.floats())
contact_objects = st.fixed_dictionaries({}, optional={
    "id": _either(st.text(min_size=1, max_size=70)),
    "name": _either(st.text(min_size=1, max_size=30)),
    "org": _either(st.text(max_size=30)),
    "title": _either(st.text(max_size=30)),
    "handles": _either(st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=3)),
    "tags": _either(st.lists(st.text(max_size=10), max_size=3)),
    "consent": _either(st.fixed_dictionaries({}, optional={"granted_at": times,
                                                           "expires_at": times})),
    "calibration_db": _either(st.floats()),
    "keys": _either(st.lists(key_objects, max_size=4)),
})
contacts_files = st.one_of(
    st.lists(st.one_of(contact_objects.map(json.dumps), st.text(max_size=60)), max_size=5)
    .map("\n".join).map(lambda text: ("jsonl", text)),
    st.text(max_size=300).map(lambda text: ("jsonl", text)),
    st.tuples(
        st.lists(st.sampled_from(["id", "name", "org", "title", "tags", "handles", "granted_at",
                                  "expires_at", "hallway_v1", "irk", "ibeacon", "eddystone_uid",
                                  "address", "extra"]), min_size=1, max_size=8, unique=True),
        st.lists(st.lists(st.text(string.printable, max_size=40), max_size=9), max_size=4),
    ).map(lambda t: ("csv", "\n".join([",".join(t[0]), *(",".join(
        json.dumps(c) if "," in c or '"' in c else c for c in row) for row in t[1])]))),
    st.text(max_size=300).map(lambda text: ("csv", text)),
)


def check_contacts(item: tuple[str, str]) -> None:
    """A contacts file is taken whole (canonical keys, unique ids) or rejected with numbered
    problems; no other exception escapes."""
    fmt, text = item
    try:
        contacts, lines = parse_contacts(text, fmt=fmt, file="fuzz")
    except ImportRejected as exc:
        rejected = exc
    else:
        rejected = None
    if rejected is not None:
        assert rejected.problems
        assert all(p.line is None or p.line >= 1 for p in rejected.problems)
        return
    assert len(contacts) == len(lines)
    assert len({c.id for c in contacts}) == len(contacts)
    for contact in contacts:
        assert 1 <= len(contact.id) <= 64
        assert contact.name
        for key in contact.keys:
            assert key_from_json(key_to_json(key)) == key


secrets_hex = st.text("0123456789abcdef", min_size=20, max_size=40)


def check_contacts_never_echo_keys(secret: str) -> None:
    """A rejected key's text never appears in the problems reported."""
    lines = [{"id": "c-1", "name": "A", "keys": [{"kind": kind, field: secret}]}
             for kind, field in (("hallway-v1", "key"), ("irk", "irk"), ("address", "address"),
                                 ("ibeacon", "uuid"), ("eddystone-uid", "namespace"))]
    for line in lines:
        text = json.dumps(line)
        try:
            parse_contacts(text, file="fuzz")
        except ImportRejected as exc:
            reasons = str(exc).upper()
        else:
            reasons = ""
        assert secret.upper() not in reasons


# -- the config loader ------------------------------------------------------------------------

_SECTIONS = {name: sorted(field.annotation.model_fields)  # type: ignore[union-attr]
             for name, field in Config.model_fields.items()}
toml_scalars = st.one_of(
    st.booleans(), st.integers(-(2**63), 2**63 - 1), st.floats(), st.text(max_size=20),
    st.sampled_from(["bleak", "replay", "simulator", "debug", "json", "token", "none",
                     "127.0.0.1", "0.0.0.0", "hci0", "0660"]),
)
toml_values = st.recursive(
    toml_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.text(string.ascii_letters, min_size=1, max_size=6), inner, max_size=2),
    max_leaves=5,
)
config_docs = st.dictionaries(
    st.one_of(st.sampled_from(sorted(_SECTIONS)), st.text(string.ascii_letters, min_size=1,
                                                          max_size=8)),
    st.sampled_from(sorted(_SECTIONS)).flatmap(lambda section: st.dictionaries(
        st.one_of(st.sampled_from(_SECTIONS[section]), st.text(string.ascii_lowercase + "_",
                                                               min_size=1, max_size=12)),
        toml_values, max_size=4)),
    max_size=4,
)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"


def _toml_doc(doc: dict[str, dict[str, Any]]) -> str:
    return "\n".join(f"[{section}]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in table.items())
                     for section, table in doc.items())


config_texts = st.one_of(
    config_docs.map(_toml_doc),
    st.text(max_size=200),
    st.builds(lambda doc, at, char: _mutate(_toml_doc(doc), at, char), config_docs,
              st.integers(0, 300), st.characters()),
)


def check_config_text(text: str) -> None:
    """Config text loads into a Config or raises ConfigError listing its problems."""
    try:
        config = parse_config(text, file="fuzz.toml", base=Path("/tmp"))
    except ConfigError as exc:
        problems = exc.problems
    else:
        problems = None
    if problems is not None:
        assert problems
        assert all(str(p).startswith("fuzz.toml") for p in problems)
        return
    assert isinstance(config, Config)
    masked = json.dumps(config.masked())
    for token in config.server.tokens:
        assert json.dumps(token)[1:-1] not in masked


def check_config_file(data: bytes) -> None:
    """A config file of any bytes loads or raises ConfigError."""
    with tempfile.TemporaryDirectory(prefix="hw-fuzz-") as folder:
        path = Path(folder) / "config.toml"
        path.write_bytes(data)
        try:
            load_config(path)
        except ConfigError as exc:
            problems = exc.problems
        else:
            problems = [None]
        assert problems


config_files = st.one_of(st.binary(max_size=200),
                         config_texts.map(lambda t: t.encode("utf-8", "surrogatepass")))


# -- what a server sends, as hallway tail shows it -------------------------------------------

server_messages = st.one_of(
    st.dictionaries(st.sampled_from(["type", "seq", "ts", "scanner", "contact", "zone",
                                     "distance_m", "present", "code", "message", "dwell_s",
                                     "since", "previous_zone", "via", "reason"]),
                    json_values, max_size=8),
    st.fixed_dictionaries({"type": st.sampled_from(["subscribed", "resync", "arrived", "zone",
                                                    "departed", "error", "status", "x"])},
                          optional={"present": json_values, "contact": json_values,
                                    "ts": json_values, "dwell_s": json_values,
                                    "seq": json_values, "since": json_values}),
)


def check_tail_format(msg: dict[str, Any]) -> None:
    """``hallway tail`` renders any JSON object a server might send, or skips it."""
    out = format_message(msg, now=SPEC_TS)
    assert out is None or isinstance(out, str)


# -- the registry used here and by bench/fuzz_long.py ----------------------------------------


@dataclass(frozen=True)
class Target:
    """One fuzz target: what it checks, from which inputs, how many examples in CI."""

    check: Callable[[Any], None]
    inputs: st.SearchStrategy[Any]
    ci_examples: int


TARGETS: dict[str, Target] = {
    "frames": Target(check_frames, st.binary(max_size=64), 400),
    "resolver": Target(check_resolver, advertisements, 400),
    "trace_line": Target(check_trace_line, trace_lines, 500),
    "trace_parser": Target(check_trace_parser, st.lists(trace_lines, max_size=6), 150),
    "contacts": Target(check_contacts, contacts_files, 300),
    "contacts_no_echo": Target(check_contacts_never_echo_keys, secrets_hex, 50),
    "config_text": Target(check_config_text, config_texts, 300),
    "config_file": Target(check_config_file, config_files, 60),
    "tail_format": Target(check_tail_format, server_messages, 300),
}


def _ci(name: str) -> Callable[[], None]:
    target = TARGETS[name]
    return settings(max_examples=target.ci_examples, deadline=2000,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])(
        given(target.inputs)(target.check))


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_fuzz_target(name: str) -> None:
    started = time.monotonic()
    _ci(name)()
    record("fuzz", target=name, examples=TARGETS[name].ci_examples,
           seconds=round(time.monotonic() - started, 2))


# -- the known-bad inputs each fix was for (kept as plain regressions) ------------------------


@pytest.mark.parametrize("line", [
    '{"ts": 1' + "0" * 400 + ', "address": "AA:BB:CC:DD:EE:FF"}',
    '{"ts": 1.0, "address": "AA:BB:CC:DD:EE:FF", "manufacturer_data": {"' + "1" * 5000
    + '": "00"}}',
    '{"ts": 1e300, "address": "AA:BB:CC:DD:EE:FF"}',
    '{"ts": -1.0, "address": "AA:BB:CC:DD:EE:FF"}',
])
def test_trace_regressions(line: str) -> None:
    with pytest.raises(TraceLineError):
        parse_trace_line(line)
    check_trace_parser([line, line])


@pytest.mark.parametrize(("ts", "rssi"), [
    ("1e300", "-60"), ("-5.0", "-60"), ("4294967296.5", "-60"), ("1585785630.5", "1" * 5000),
    ("1585785630.5", "-0"),
])
def test_trace_parser_cache_agrees_on_odd_numbers(ts: str, rssi: str) -> None:
    """A remembered line layout with an odd ts or rssi parses as the plain parser says."""
    rest = (', "address": "AA:BB:CC:DD:EE:FF", "address_type": "public", "rssi": {}, '
            '"tx_power": null, "scanner": "hci0"}}')
    good = '{"ts": 1585785630.25' + rest.format("-60")
    odd = '{"ts": ' + ts + rest.format(rssi)
    check_trace_parser([good, odd, good, odd])


# -- the socket protocol reader of a running daemon -------------------------------------------

MAX_LINE = 2048
ERROR_CODES = {"unauthorized", "bad_request", "too_large", "busy", "rate_limited", "forbidden"}
# "present" answers a present request (a valid token, no subscription needed); "revoked" is a
# tombstone.
REPLY_TYPES = {"hello", "error", "subscribed", "status", "ping", "arrived", "zone", "departed",
               "resync", "present", "revoked"}


@pytest.fixture(scope="module")
def fuzz_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    folder = tmp_path_factory.mktemp("fuzz-daemon")
    address = badge_address(1)
    start = time.time()
    trace = write_jsonl(folder / "trace.jsonl", badge_rows(address, start=start, duration_s=600))
    contacts = write_jsonl(folder / "contacts.jsonl", [
        {"id": "c-fuzz", "name": "Fuzz Target", "tags": ["t"],
         "keys": [{"kind": "address", "address": address}]}])
    config = write_config(folder, trace=trace,
                          server={"max_line_bytes": MAX_LINE, "auth_timeout_s": 3.0},
                          logging={"level": "info"})
    hallway("contacts", "import", str(contacts), "--config", str(config))
    daemon = start_daemon(config)
    try:
        daemon.wait_ready()
        yield daemon
    finally:
        daemon.stop()


messages = st.fixed_dictionaries(
    {"type": st.one_of(st.sampled_from(["subscribe", "status", "ping", "hello"]),
                       st.text(max_size=8), json_values)},
    optional={"token": st.one_of(st.just(TOKEN), st.text(max_size=40), json_values),
              "contacts": _either(st.lists(st.text(max_size=10), max_size=3)),
              "tags": _either(st.lists(st.text(max_size=10), max_size=3)),
              "since_seq": _either(st.integers(-5, 10**6))},
)
client_lines = st.one_of(
    messages.map(lambda m: json.dumps(m).encode()),
    st.binary(max_size=200).map(lambda b: b.replace(b"\n", b"")),
    st.text(max_size=100).map(lambda t: t.encode("utf-8", "surrogatepass").replace(b"\n", b"")),
    st.integers(MAX_LINE - 4, MAX_LINE * 3).map(lambda n: b"[" * n),
    st.sampled_from([b"", b" ", b"\r", b"{}", b"[]", b"null", b'{"type": 1}', b"\xff\xfe",
                     b'{"type": "subscribe"}']),
)
_peers = iter(f"127.9.{i // 250}.{i % 250 + 1}" for i in range(10**6))


@dataclass
class _Conversation:
    replies: list[dict[str, Any]]
    closed: bool


def converse(port: int, lines: list[bytes], *, newline_last: bool, timeout_s: float = 3.0
             ) -> _Conversation:
    """Send ``lines`` from a fresh loopback address, close our sending side, read the replies."""
    client = LineClient(port, source_ip=next(_peers), timeout_s=timeout_s)
    replies = [client.hello] if client.hello is not None else []
    try:
        payload = b"\n".join(lines) + (b"\n" if newline_last else b"")
        try:
            client.send_raw(payload)
            client.sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            line = client.read_line(left)
            if line is None:
                return _Conversation(replies, closed=True)
            reply = json.loads(line)
            replies.append(reply)
            if reply.get("type") == "subscribed":
                return _Conversation(replies, closed=False)
        return _Conversation(replies, closed=False)
    finally:
        client.close()


OUTCOMES: Counter[str] = Counter()


def check_conversation(port: int, lines: list[bytes], newline_last: bool) -> None:
    """The daemon answers any client bytes by the protocol, and nothing about contacts leaks
    without a valid subscribe."""
    conv = converse(port, lines, newline_last=newline_last)
    last = conv.replies[-1]
    OUTCOMES[str(last.get("code") or last.get("type"))] += 1
    hello = conv.replies[0]
    assert hello["type"] == "hello"
    assert hello["auth"] == "token"
    kinds = [r.get("type") for r in conv.replies]
    assert set(kinds) <= REPLY_TYPES, conv.replies
    errors = [r for r in conv.replies if r.get("type") == "error"]
    assert all(e.get("code") in ERROR_CODES for e in errors), errors
    assert len(errors) <= 1
    sent_token = any(TOKEN.encode() in line for line in lines)
    if not sent_token:
        assert not {"subscribed", "status", "arrived", "zone", "departed"} & set(kinds), kinds
    if errors:
        assert conv.closed, "an error must close the connection"
    if not conv.closed:
        assert "subscribed" in kinds, conv.replies


def test_fuzz_socket_protocol(fuzz_daemon: Daemon) -> None:
    port = fuzz_daemon.wait_listening()
    examples = 400
    started = time.monotonic()

    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.lists(client_lines, min_size=1, max_size=3), st.booleans())
    def run(lines: list[bytes], newline_last: bool) -> None:
        check_conversation(port, lines, newline_last)
        assert fuzz_daemon.alive()

    run()
    seconds = time.monotonic() - started
    status = fuzz_daemon.status()
    assert status["source_state"] == "scanning"
    failures = [e for e in fuzz_daemon.log_events()
                if e.get("level") in ("error", "critical") or e.get("event") == "connection_failed"]
    assert not failures, failures[:3]
    assert sum(OUTCOMES.values()) >= examples
    assert {"bad_request", "too_large", "unauthorized", "subscribed"} <= set(OUTCOMES), OUTCOMES
    record("fuzz", target="socket_protocol", examples=sum(OUTCOMES.values()),
           seconds=round(seconds, 2), outcomes=dict(OUTCOMES))
