"""``hallway demo`` on this machine shows events within 10 s, and ``hallway tail`` reads them."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src")}


def test_demo_shows_events_and_tail_reads_them(tmp_path: Path) -> None:
    token = "demo-test-token-0123456789"
    err_path = tmp_path / "demo.err"
    with err_path.open("w") as err:
        demo = subprocess.Popen(
            [sys.executable, "-m", "hallway", "demo", "--port", "0",
             "--web-port", "0", "--token", token,
             "--duration", "40", "--unix", str(tmp_path / "demo.sock")],
            stdout=subprocess.PIPE, stderr=err, text=True, env=ENV,
        )
    try:
        started = time.monotonic()
        assert demo.stdout is not None
        first_event = None
        while time.monotonic() - started < 20:
            line = demo.stdout.readline()
            if not line:
                break
            if " arrived " in line:
                first_event = time.monotonic() - started
                break
        assert first_event is not None, err_path.read_text()
        # The demo prints its first event within 10 s of being ready (start-up included here).
        assert first_event < 15, first_event
        port = re.search(r"serving on 127\.0\.0\.1:(\d+)", err_path.read_text())
        assert port is not None
        # The printed command does not carry the secret (ps shows command lines): a URI file.
        assert token not in err_path.read_text()
        uri_file = re.search(r"hallway tail --uri-file (\S+)", err_path.read_text())
        assert uri_file is not None
        assert Path(uri_file.group(1)).stat().st_mode & 0o777 == 0o600
        assert Path(uri_file.group(1)).read_text().strip() == (
            f"hallway://127.0.0.1:{port.group(1)}?token={token}")
        tail = subprocess.run(
            [sys.executable, "-m", "hallway", "tail", "--connect", f"127.0.0.1:{port.group(1)}",
             "--token", token, "--json", "--since", "0", "--count", "1"],
            capture_output=True, text=True, env=ENV, timeout=30, check=False,
        )
        assert tail.returncode == 0, tail.stderr
        events = [json.loads(line) for line in tail.stdout.splitlines() if line.strip()]
        assert any(e.get("type") == "arrived" and e["seq"] == 1 for e in events), events
        readable = subprocess.run(
            [sys.executable, "-m", "hallway", "tail", "--unix", str(tmp_path / "demo.sock"),
             "--token", token, "--since", "0", "--count", "1"],
            capture_output=True, text=True, env=ENV, timeout=30, check=False,
        )
        assert readable.returncode == 0, readable.stderr
        assert "arrived" in readable.stdout
    finally:
        demo.send_signal(signal.SIGINT)
        try:
            demo.wait(20)
        except subprocess.TimeoutExpired:
            demo.kill()
            demo.wait()
        if demo.stdout is not None:
            demo.stdout.close()
    assert demo.returncode == 0, err_path.read_text()


def test_default_demo_shows_ten_events_in_its_first_minute(tmp_path: Path) -> None:
    """Without flags but the port: the viewer sees >= 10 events within 60 s of starting it
    (start-up included), of every kind, and is told at once what the venue is."""
    token = "demo-test-token-lively-0123456"
    sock = tmp_path / "demo.sock"
    err_path = tmp_path / "demo.err"
    started = time.time()
    with err_path.open("w") as err:
        demo = subprocess.Popen(
            [sys.executable, "-m", "hallway", "demo", "--port", "0",
             "--web-port", "0", "--token", token,
             "--unix", str(sock), "--quiet"],
            stdout=subprocess.DEVNULL, stderr=err, text=True, env=ENV,
        )
    try:
        deadline = time.monotonic() + 15.0  # the intro comes first (a loaded machine is slow)
        intro = err_path.read_text()
        while "in real time" not in intro and time.monotonic() < deadline:
            time.sleep(0.2)
            intro = err_path.read_text()
        assert "scenario 'meetup'" in intro, intro
        assert "40 enrolled contacts" in intro, intro
        assert "in real time: a contact walks in about every 8 s" in intro, intro
        time.sleep(max(0.0, started + 60.0 - time.time()))
        events = _logged_events(sock, token)
    finally:
        demo.send_signal(signal.SIGINT)
        try:
            demo.wait(20)
        except subprocess.TimeoutExpired:
            demo.kill()
            demo.wait()
    first_minute = [e for e in events if e["ts"] <= started + 60.0]
    kinds = {e["type"] for e in first_minute}
    print(f"\ndefault demo: {len(first_minute)} events in its first 60 s: "
          f"{sorted((k, sum(e['type'] == k for e in first_minute)) for k in kinds)}")
    assert len(first_minute) >= 10, first_minute
    assert {"arrived", "zone", "departed"} <= kinds, kinds
    assert demo.returncode == 0, err_path.read_text()


def _logged_events(sock: Path, token: str) -> list[dict[str, object]]:
    """Every event the daemon logged so far, read as an app would (subscribe since 0)."""
    import socket as socketlib

    events: list[dict[str, object]] = []
    with socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_STREAM) as conn:
        conn.settimeout(2.0)
        conn.connect(str(sock))
        reader = conn.makefile("rb")
        json.loads(reader.readline())  # hello
        conn.sendall((json.dumps({"type": "subscribe", "token": token, "since_seq": 0})
                      + "\n").encode())
        try:
            while line := reader.readline():
                message = json.loads(line)
                if message.get("type") in {"arrived", "zone", "departed"}:
                    events.append(message)
        except TimeoutError:
            pass  # the replay is over and nothing new came for 2 s
    return events
