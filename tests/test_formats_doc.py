"""docs/formats.md states facts a phone-app developer builds on: its beacon test vectors and its
examples are recomputed here with hallway's own code, so the page cannot drift from it."""

from __future__ import annotations

import json
import re
from pathlib import Path

from hallway.identity import crypto
from hallway.parsing.frames import parse_en_service_data, parse_hallway_mfr
from hallway.trace import parse_trace_line

DOC = (Path(__file__).resolve().parent.parent / "docs" / "formats.md").read_text()


def _vectors() -> dict[str, str]:
    section = DOC.split("### Test vectors", 1)[1].split("###", 1)[0]
    rows = re.findall(r"^\| (.+?) \| (.+?) \|$", section, flags=re.MULTILINE)
    return {item: value.replace("`", "").replace(" ", "") for item, value in rows[1:]}


def test_the_beacon_vectors_in_the_docs_hold() -> None:
    v = _vectors()
    key = bytes.fromhex(v["K"])
    rpik, aemk = crypto.derive_rpik(key), crypto.derive_aemk(key)
    assert rpik.hex() == v["RPIK"]
    assert aemk.hex() == v["AEMK"]
    interval = crypto.interval_number(1585785600)
    assert str(interval) == v["i for ts 1585785600"]
    assert crypto.rpi_padded_data(interval).hex() == v["padded data for i = 2642976"]
    rpis = {int(name.rsplit(" ", 1)[1]): value for name, value in v.items()
            if name.startswith("RPI, i = ")}
    assert len(rpis) == 5
    for i, rpi in rpis.items():
        assert crypto.rpi_for_interval(rpik, i).hex() == rpi
    rpi = bytes.fromhex(rpis[2642976])
    aem = crypto.aem_crypt(aemk, rpi, bytes.fromhex("40080000"))
    assert aem.hex() == v["AEM of metadata `40080000`, i = 2642976"]


def test_the_carrier_examples_in_the_docs_parse_to_the_rpi() -> None:
    v = _vectors()
    rpi = v["RPI, i = 2642976"]
    raw = bytes.fromhex(next(value for name, value in v.items()
                             if name.startswith("Exposure Notification advertisement")))
    service_data = raw[7:]  # after the flags and the 16-bit service list
    assert service_data[1:4] == bytes.fromhex("166ffd")  # service data, UUID 0xfd6f
    frame = parse_en_service_data(service_data[4:])
    assert frame.rpi.hex() == rpi  # type: ignore[union-attr]
    assert frame.aem.hex() == v["AEM of metadata `40080000`, i = 2642976"]  # type: ignore[union-attr]
    payload = bytes.fromhex(next(value for name, value in v.items()
                                 if name.startswith("manufacturer data payload")))
    mfr = parse_hallway_mfr(payload)
    assert mfr.rpi.hex() == rpi  # type: ignore[union-attr]
    assert mfr.measured_power == -59  # type: ignore[union-attr]


def test_the_trace_example_in_the_docs_is_a_valid_trace_line() -> None:
    section = DOC.split("## Trace file", 1)[1]
    example = section.split("```json", 1)[1].split("```", 1)[0]
    adv = parse_trace_line(json.dumps(json.loads(example)))
    assert adv.address_type == "random"
    assert adv.manufacturer_data[76].hex().startswith("0215")


def test_the_docs_link_only_inside_the_repository() -> None:
    """A clone is complete: every relative link of README.md and docs/ names a file in it."""
    root = Path(__file__).resolve().parent.parent
    pages = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+:", target):  # https:, mailto: ...
                continue
            path = (page.parent / target.split("#", 1)[0]).resolve()
            if not path.is_relative_to(root) or not path.exists():
                broken.append(f"{page.name}: {target}")
    assert broken == []
    # docs/protocol.md is being rewritten in its owner's branch; the rest must not even mention
    # the outside file.
    assert [p.name for p in pages if p.name != "protocol.md" and "shared/" in p.read_text()] == []
