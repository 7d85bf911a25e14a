"""systemd/hallway.service and its sysusers file, checked by systemd's own tools.

``systemd-analyze verify`` runs against a throwaway root holding this machine's unit files, the
unit and an executable at the unit's ExecStart path (verify insists the binary exists); any
output on stderr fails, because verify exits 0 on some errors. ``systemd-analyze security
--offline=true`` scores the unit's hardening; the exposure must stay at or below 2.0.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "systemd" / "hallway.service"
SYSUSERS = REPO / "systemd" / "hallway.sysusers.conf"
MAX_EXPOSURE = 2.0

analyze = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(analyze is None, reason="systemd-analyze is not installed")


def unit_settings(text: str) -> dict[tuple[str, str], list[str]]:
    """(section, key) -> every value assigned, in order (keys may repeat in unit files)."""
    settings: dict[tuple[str, str], list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        settings.setdefault((section, key.strip()), []).append(value.strip())
    return settings


def system_unit_dir() -> Path:
    for candidate in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")):
        if (candidate / "multi-user.target").exists():
            return candidate
    pytest.skip("this machine has no systemd unit directory to verify against")


def verify_root(tmp_path: Path, unit_text: str) -> Path:
    """A root with the system's units, the unit under test, and its ExecStart binary."""
    root = tmp_path / "root"
    shutil.copytree(system_unit_dir(), root / "usr/lib/systemd/system", symlinks=True)
    exec_start = unit_settings(unit_text)[("Service", "ExecStart")][-1].split()[0]
    binary = root / exec_start.lstrip("/")
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\nexit 0\n")
    binary.chmod(0o755)
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "etc/systemd/system/hallway.service").write_text(unit_text)
    return root


def run_verify(root: Path) -> subprocess.CompletedProcess[str]:
    assert analyze is not None
    return subprocess.run([analyze, "verify", f"--root={root}", "hallway.service"],
                          capture_output=True, text=True, timeout=60, check=False)


@needs_analyze
def test_verify_reports_nothing(tmp_path: Path) -> None:
    result = run_verify(verify_root(tmp_path, UNIT.read_text()))
    assert result.stderr == ""
    assert result.returncode == 0


@needs_analyze
def test_verify_catches_a_broken_copy(tmp_path: Path) -> None:
    """The check above can fail: a misspelt setting and a bad value are reported."""
    broken = UNIT.read_text().replace("ProtectSystem=strict", "ProtectSytem=strict")
    broken = broken.replace("Restart=on-failure", "Restart=sometimes")
    result = run_verify(verify_root(tmp_path, broken))
    assert "ProtectSytem" in result.stderr
    assert "sometimes" in result.stderr


@needs_analyze
def test_security_exposure_is_at_most_two() -> None:
    assert analyze is not None
    result = subprocess.run(
        [analyze, "security", "--offline=true", "--no-pager", str(UNIT)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    match = re.search(r"Overall exposure level for hallway\.service: (\d+\.\d)", result.stdout)
    assert match, result.stdout + result.stderr
    exposure = float(match.group(1))
    print(f"systemd-analyze security --offline=true: exposure {exposure}")
    assert exposure <= MAX_EXPOSURE, "\n".join(
        line for line in result.stdout.splitlines() if line.startswith("✗"))
    assert result.returncode == 0


def test_unit_states_the_service_contract() -> None:
    settings = unit_settings(UNIT.read_text())

    def one(section: str, key: str) -> str:
        values = settings.get((section, key))
        assert values, f"[{section}] {key}= is missing"
        return values[-1]

    assert one("Service", "Type") == "notify"
    assert float(one("Service", "WatchdogSec")) >= 10
    assert one("Service", "Restart") == "on-failure"
    assert int(one("Unit", "StartLimitBurst")) >= 1
    assert int(one("Unit", "StartLimitIntervalSec")) > 0
    assert one("Service", "User") == "hallway"
    assert "bluetooth" in one("Service", "SupplementaryGroups").split()
    assert one("Service", "StateDirectory") == "hallway"
    assert one("Service", "RuntimeDirectory") == "hallway"
    assert one("Service", "ConfigurationDirectory") == "hallway"
    assert one("Service", "RuntimeDirectoryMode") == "0750"  # the group reaches the socket
    assert set(one("Service", "RestrictAddressFamilies").split()) == {
        "AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"}
    assert one("Service", "ProtectSystem") == "strict"
    assert one("Service", "PrivateDevices") == "yes"
    assert one("Service", "CapabilityBoundingSet") == ""
    assert one("Service", "NoNewPrivileges") == "yes"
    assert "@system-service" in settings[("Service", "SystemCallFilter")]
    assert ("Service", "PrivateNetwork") not in settings  # mDNS needs the real network
    assert "--config /etc/hallway/config.toml" in one("Service", "ExecStart")


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None,
                    reason="systemd-sysusers is not installed")
def test_sysusers_creates_a_system_user_in_group_bluetooth(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    with SYSUSERS.open() as conf:
        result = subprocess.run(["systemd-sysusers", f"--root={tmp_path}", "-"], stdin=conf,
                                capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    passwd = {line.split(":")[0]: line.split(":")
              for line in (tmp_path / "etc/passwd").read_text().splitlines()}
    groups = {line.split(":")[0]: line.split(":")
              for line in (tmp_path / "etc/group").read_text().splitlines()}
    user = passwd["hallway"]
    assert int(user[2]) < 1000  # a system user
    assert user[5] == "/var/lib/hallway"
    assert user[6].endswith("nologin")
    assert groups["hallway"][2] == user[3]  # its own primary group: the socket's group
    assert "hallway" in groups["bluetooth"][3].split(",")
