"""``hallway.client`` and the CLI against a real daemon serving TLS: the fingerprint that
``hallway tls show`` prints connects, subscribes and resumes across a restart; any other is
refused before a byte is sent; the demo's URI file carries the fingerprint."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import hallway.client as hc
from tests.client_env import CONTACTS, cycling_trace, logged_seqs, self_signed
from tests.daemon_env import ROOT, TOKEN, free_port, import_contacts, start_daemon, write_config

ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HALLWAY_TOKEN": "", "HALLWAY_URI": ""}


def hallway(*args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hallway", *args], capture_output=True,
                          text=True, env=ENV, timeout=timeout_s, check=False)


@pytest.fixture
def tls_venue(tmp_path: Path) -> tuple[Path, int]:
    import_contacts(tmp_path, CONTACTS)
    port = free_port()
    config = write_config(tmp_path, port=port,
                          trace=cycling_trace(tmp_path / "trace.jsonl", duration_s=240))
    text = config.read_text().replace("ping_interval_s = 2.0\n",
                                      "ping_interval_s = 2.0\ntls = true\n")
    config.write_text(text)
    return config, port


async def test_the_fingerprint_tls_show_prints_subscribes_and_resumes(
        tmp_path: Path, tls_venue: tuple[Path, int]) -> None:
    config, port = tls_venue
    daemon = start_daemon(tmp_path, config, port=port)
    try:
        await asyncio.to_thread(daemon.wait_for_notification, "READY=1", 30)
        shown = await asyncio.to_thread(hallway, "tls", "show", "--config", str(config))
        assert shown.returncode == 0, shown.stderr
        found = re.search(r"fingerprint: (sha256:[0-9a-f]{64})", shown.stdout)
        assert found is not None, shown.stdout
        fingerprint = found.group(1)
        uri = f"hallway://127.0.0.1:{port}?token={TOKEN}&fp={fingerprint}"
        got: list[hc.Message] = []
        states: list[hc.StateChange] = []
        restarted = False
        seen_before = 0
        async with hc.connect(uri, on_state=states.append, retry_max_s=1.0) as sub:
            async for message in sub:
                got.append(message)
                events = [m for m in got if isinstance(m, hc.Event)]
                if len(events) == 3 and not restarted:
                    restarted = True
                    daemon.stop(signal.SIGTERM)
                    daemon = start_daemon(tmp_path, config, port=port)
                    seen_before = len(events)
                if sub.reconnects >= 1 and len(events) >= seen_before + 3:
                    break
        assert isinstance(got[0], hc.Subscribed)
        seqs = [m.seq for m in got if isinstance(m, hc.Event)]
        assert seqs == [s for s in logged_seqs(tmp_path / "hallway.db")
                        if got[0].seq < s <= seqs[-1]]
        assert any(s.state is hc.State.RESUMING for s in states)
        # Another certificate's fingerprint: refused before anything is sent.
        _, _, other = self_signed(tmp_path, "other")
        with pytest.raises(hc.FingerprintMismatch):
            await hc.status(f"hallway://127.0.0.1:{port}?token={TOKEN}&fp=sha256:{other}")
        assert (await hc.status(uri)).scanner == "test-kiosk"
        # No fingerprint: plain TCP against the TLS port gets no hello, and no token.
        with pytest.raises(hc.Unreachable):
            await hc.status(f"127.0.0.1:{port}", token=TOKEN, timeout_s=3)
    finally:
        daemon.stop()


def test_tail_and_status_with_the_uri_file_of_demo_tls(tmp_path: Path) -> None:
    err_path = tmp_path / "demo.err"
    with err_path.open("w") as err:
        demo = subprocess.Popen(
            [sys.executable, "-m", "hallway", "demo", "--tls", "--port", "0",
             "--web-port", "0", "--quiet",
             "--duration", "60", "--unix", str(tmp_path / "demo.sock")],
            stdout=subprocess.DEVNULL, stderr=err, text=True, env=ENV)
    try:
        deadline = time.monotonic() + 30
        found = None
        while time.monotonic() < deadline and found is None:
            found = re.search(r"--uri-file (\S+)", err_path.read_text())
            time.sleep(0.2)
        assert found is not None, err_path.read_text()
        uri_file = Path(found.group(1))
        uri = uri_file.read_text().strip()
        assert "fp=sha256:" in uri
        assert uri in err_path.read_text()  # the same URI the demo prints on its own line
        assert oct(uri_file.stat().st_mode & 0o777) == oct(0o600)
        status = hallway("status", "--uri-file", str(uri_file), "--json")
        assert status.returncode == 0, status.stderr
        tail = hallway("tail", "--uri-file", str(uri_file), "--since", "0", "--count", "1",
                       "--json")
        assert tail.returncode == 0, tail.stderr
        assert '"seq": 1' in tail.stdout
    finally:
        demo.send_signal(signal.SIGINT)
        try:
            demo.wait(20)
        except subprocess.TimeoutExpired:
            demo.kill()
            demo.wait()
