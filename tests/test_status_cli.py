"""``hallway status`` (and doctor's socket checks) against a real daemon on the simulator."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(90)


def hallway(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hallway", *args], capture_output=True,
                          text=True, timeout=60, check=False, env=env)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """``hallway run`` on the simulator with a Unix socket and TCP; yields (config, port)."""
    port = free_port()
    config = tmp_path / "config.toml"
    config.write_text(
        '[scanner]\nname = "status-test"\nsource = "simulator"\nscenario = "corridor"\n'
        f'[storage]\ndatabase = "hallway.db"\n'
        f'[server]\nunix_socket = "hallway.sock"\ntcp_port = {port}\n'
        '[mdns]\nenabled = false\n[logging]\nformat = "json"\n')
    with (tmp_path / "run.log").open("w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "hallway", "run", "--config", str(config)],
                                stdout=subprocess.DEVNULL, stderr=log)
    try:
        limit = time.monotonic() + 30
        while not (tmp_path / "hallway.sock").exists():
            assert proc.poll() is None, (tmp_path / "run.log").read_text()
            assert time.monotonic() < limit, "the daemon did not come up"
            time.sleep(0.05)
        yield config, port
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def test_status_over_the_unix_socket_with_the_generated_token(daemon: tuple[Path, int]) -> None:
    config, _ = daemon
    result = hallway("status", "--config", str(config))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("hallway/")
    assert f"at {config.parent / 'hallway.sock'}" in lines[0]
    assert "'status-test'" in lines[0]
    for label in ("uptime", "source", "advertisements/s", "matched/s", "malformed", "dropped",
                  "present", "subscribers", "last error"):
        assert any(line.strip().startswith(label + " ") for line in lines[1:]), label
    assert any(line.split()[:3] == ["source", "simulator:", "scanning"] for line in lines)


def test_status_over_tcp_as_json(daemon: tuple[Path, int]) -> None:
    config, port = daemon
    token = (config.parent / "token").read_text().split()[0]
    result = hallway("status", "--connect", f"127.0.0.1:{port}", f"--token={token}", "--json")
    assert result.returncode == 0, result.stderr
    reply = json.loads(result.stdout)
    assert reply["type"] == "status"
    assert reply["scanner"] == "status-test"
    assert reply["source_state"] == "scanning"
    for key in ("uptime_s", "advertisements_per_s", "matched_per_s", "malformed", "dropped",
                "present", "subscribers", "last_error"):
        assert key in reply
    # What the tracker knows of its receiver and the venue's calibration (no references here).
    proximity = reply["proximity"]
    assert set(proximity["receiver"]) >= {"listening_share", "lossy", "reception_rule"}
    assert proximity["calibration"]["state"] == "no references"
    assert proximity["calibration"]["path_loss_exponent"] == 2.0
    env = {**os.environ, "HALLWAY_TOKEN": token}
    again = hallway("status", "--connect", f"127.0.0.1:{port}", "--json", env=env)
    assert json.loads(again.stdout)["uptime_s"] >= reply["uptime_s"]


def test_wrong_token_is_refused_with_a_hint(daemon: tuple[Path, int]) -> None:
    _, port = daemon
    result = hallway("status", "--connect", f"127.0.0.1:{port}", "--token", "x" * 20)
    assert result.returncode == 1
    assert "refused: unauthorized" in result.stderr
    assert "--token" in result.stderr
    assert result.stdout == ""


def test_nothing_listening_exits_69(tmp_path: Path) -> None:
    result = hallway("status", "--unix", str(tmp_path / "nothing.sock"))
    assert result.returncode == 69
    assert "cannot reach hallway at" in result.stderr
    result = hallway("status", "--connect", f"127.0.0.1:{free_port()}", "--token", "t" * 20)
    assert result.returncode == 69


def test_not_a_hallway_socket(tmp_path: Path) -> None:
    path = tmp_path / "other.sock"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))
        server.listen()
        proc = subprocess.Popen([sys.executable, "-m", "hallway", "status", "--unix", str(path)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        conn, _ = server.accept()
        conn.sendall(b"SSH-2.0-OpenSSH\n")
        _, err = proc.communicate(timeout=30)
        conn.close()
    assert proc.returncode == 1
    assert "not JSON" in err


def test_doctor_sees_the_running_daemon(daemon: tuple[Path, int]) -> None:
    config, port = daemon
    result = hallway("doctor", "--config", str(config), "--json")
    by_name = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    assert by_name["unix_socket"]["status"] == "ok"
    assert "is listening" in by_name["unix_socket"]["detail"]
    assert by_name["tcp_socket"]["status"] == "ok"
    assert by_name["tcp_socket"]["detail"].startswith(f"127.0.0.1:{port}: hallway/")
    assert by_name["database"]["status"] in ("ok", "warn")
