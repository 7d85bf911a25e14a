"""Secret files are 0600 from creation whatever the umask (database and its WAL/SHM, contact
exports, enrollment QR codes); doctor names loose ones and the fix; any config parse failure is
exit 78 with a message."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hallway.doctor import DoctorOptions, Status, diagnose
from hallway.store import SqliteStore

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
CONTACT = {"id": "c-1", "name": "Ada", "keys": [
    {"kind": "hallway-v1", "key": "75c734c6dd1a782de7a965da5eb93125"},
    {"kind": "irk", "irk": "ec0234a357c8ad05341010a60a397d9b"}]}


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def hallway(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI in a child whose umask is 022 (the common default)."""
    return subprocess.run([sys.executable, "-m", "hallway", *args], capture_output=True,
                          text=True, env=ENV, cwd=cwd, timeout=60, check=False,
                          preexec_fn=lambda: os.umask(0o022))


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


async def test_the_database_and_its_wal_and_shm_are_private(tmp_path: Path,
                                                            umask_022: None) -> None:
    db = tmp_path / "hallway.db"
    store = await SqliteStore.open(db)
    try:
        modes = [mode(Path(f"{db}{suffix}")) for suffix in ("", "-wal", "-shm")]
        assert modes == [0o600, 0o600, 0o600]
    finally:
        await store.close()
    # And by the CLI, in a process of its own.
    source = tmp_path / "contacts.jsonl"
    source.write_text(json.dumps(CONTACT) + "\n")
    other = tmp_path / "other.db"
    result = hallway("contacts", "import", str(source), "--db", str(other))
    assert result.returncode == 0, result.stderr
    assert mode(other) == 0o600


def test_exports_and_qr_codes_are_private(tmp_path: Path) -> None:
    source = tmp_path / "contacts.jsonl"
    source.write_text(json.dumps(CONTACT) + "\n")
    db = tmp_path / "hallway.db"
    assert hallway("contacts", "import", str(source), "--db", str(db)).returncode == 0
    out = tmp_path / "export.jsonl"
    result = hallway("contacts", "export", "--out", str(out), "--db", str(db))
    assert result.returncode == 0, result.stderr
    assert mode(out) == 0o600
    assert "ec0234a357c8ad05341010a60a397d9b" in out.read_text()
    # An existing, world-readable file is tightened before the keys are written into it.
    out.chmod(0o644)
    assert hallway("contacts", "export", "--out", str(out), "--db", str(db)).returncode == 0
    assert mode(out) == 0o600
    png, svg = tmp_path / "qr.png", tmp_path / "qr.svg"
    result = hallway("contacts", "enroll", "c-1", "--no-qr", "--png", str(png), "--svg", str(svg),
                     "--db", str(db))
    assert result.returncode == 0, result.stderr
    assert [mode(png), mode(svg)] == [0o600, 0o600]
    assert png.read_bytes().startswith(b"\x89PNG")
    assert b"<svg" in svg.read_bytes()


def _write_config(tmp: Path) -> Path:
    config = tmp / "hallway.toml"
    config.write_text(f'[storage]\ndatabase = "{tmp / "hallway.db"}"\n'
                      f'[server]\nunix_socket = "{tmp / "h.sock"}"\ntcp_enabled = false\n'
                      f'tokens = ["doctor-test-token-0123456789"]\n'
                      f'[mdns]\nenabled = false\n[scanner]\nsource = "simulator"\n')
    return config


async def test_doctor_names_loose_secret_files_and_the_fix(tmp_path: Path) -> None:
    config = _write_config(tmp_path)
    db = tmp_path / "hallway.db"
    store = await SqliteStore.open(db)
    await store.close()
    options = DoctorOptions(config_path=str(config), rfkill_root=tmp_path / "no-rfkill",
                            timeout_s=2.0)
    found = {c.name: c for c in (await diagnose(options)).checks}
    assert found["secret_files"].status is Status.OK, found["secret_files"]
    db.chmod(0o644)
    found = {c.name: c for c in (await diagnose(options)).checks}
    check = found["secret_files"]
    assert check.status is Status.FAIL
    assert f"{db} is 0644" in check.detail
    assert check.fix is not None
    assert check.fix.split("; ")[0] == f"chmod 0600 {db}"
    db.chmod(0o640)
    check = {c.name: c for c in (await diagnose(options)).checks}["secret_files"]
    assert check.status is Status.WARN
    assert mode(db) == 0o640  # doctor only looks


@pytest.mark.parametrize("text", [
    "a = " + "[" * 100_000 + "]" * 100_000 + "\n",
    "[scanner]\nname = " + "[" * 5_000 + "]" * 5_000 + "\n",
])
def test_any_config_parse_failure_is_exit_78_with_a_message(tmp_path: Path, text: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(text)
    for command in (["check-config", str(config)], ["run", "--config", str(config)]):
        result = hallway(*command)
        assert result.returncode == 78, (command, result.stderr[-500:])
        assert str(config) in result.stderr
        assert "Traceback" not in result.stderr
