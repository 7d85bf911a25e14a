"""systemd/hallway-venue.service, checked by systemd's own tools like the scanner's unit."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "systemd" / "hallway-venue.service"
NAME = "hallway-venue.service"
MAX_EXPOSURE = 2.0

analyze = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(analyze is None, reason="systemd-analyze is not installed")


def settings(text: str) -> dict[tuple[str, str], str]:
    """(section, key) -> the last value assigned."""
    found: dict[tuple[str, str], str] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        found[(section, key.strip())] = value.strip()
    return found


def verify(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    assert analyze is not None
    units = next((c for c in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system"))
                  if (c / "multi-user.target").exists()), None)
    if units is None:
        pytest.skip("this machine has no systemd unit directory to verify against")
    root = tmp_path / "root"
    shutil.copytree(units, root / "usr/lib/systemd/system", symlinks=True)
    binary = root / settings(text)[("Service", "ExecStart")].split()[0].lstrip("/")
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\nexit 0\n")
    binary.chmod(0o755)
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "etc/systemd/system" / NAME).write_text(text)
    return subprocess.run([analyze, "verify", f"--root={root}", NAME], capture_output=True,
                          text=True, timeout=60, check=False)


@needs_analyze
def test_verify_reports_nothing_and_catches_a_typo(tmp_path: Path) -> None:
    good = verify(tmp_path / "good", UNIT.read_text())
    assert good.stderr == ""
    assert good.returncode == 0
    bad = verify(tmp_path / "bad", UNIT.read_text().replace("ProtectHome=", "ProtectHom="))
    assert "ProtectHom" in bad.stderr


@needs_analyze
def test_security_exposure_is_at_most_two() -> None:
    assert analyze is not None
    result = subprocess.run([analyze, "security", "--offline=true", "--no-pager", str(UNIT)],
                            capture_output=True, text=True, timeout=60, check=False)
    match = re.search(r"Overall exposure level for hallway-venue\.service: (\d+\.\d)",
                      result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE


def test_unit_runs_the_venue_service_without_bluetooth() -> None:
    found = settings(UNIT.read_text())
    assert found[("Service", "Type")] == "notify"
    assert " venue --config " in found[("Service", "ExecStart")]
    assert found[("Service", "StateDirectory")] == "hallway-venue"
    assert ("Service", "SupplementaryGroups") not in found
    assert found[("Service", "CapabilityBoundingSet")] == ""
    assert ("Service", "PrivateNetwork") not in found  # the broker and mDNS are on the network
