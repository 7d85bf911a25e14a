"""docs/venue.md's quick-start, run as written: every fenced block after a ``<!-- quickstart -->``
marker, in order, with bash (``set -euo pipefail``), in a folder of its own and on free ports.

It makes the certificates with openssl, starts a real Mosquitto with the documented standalone
configuration, three ``hallway run`` scanners replaying the simulated rooms and ``hallway
venue``; then checks what the page promises: rooms in ``hallway tail``'s readable lines,
``hallway doctor`` passing on both roles, Home Assistant discovery on the broker, and after the
clean-up no contact's name left on the broker (neither retained nor in its persistence file).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "venue.md"


def quickstart_blocks(markdown: str, marker: str = "<!-- quickstart -->") -> list[str]:
    """The bodies of the fenced blocks right after each ``marker``, in order."""
    blocks = []
    for match in re.finditer(re.escape(marker) + r"\n```[a-z]*\n(.*?)^```", markdown,
                             re.M | re.S):
        blocks.append(match.group(1))
    return blocks


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_pages_blocks_are_found() -> None:
    blocks = quickstart_blocks(DOC.read_text())
    assert len(blocks) == 7
    assert "hallway simulate --scenario venue" in blocks[1]
    assert "openssl req -x509" in blocks[2]
    assert "--remove-retained" in blocks[6]


class Demo:
    """The quick-start's folder and environment; everything it started is stopped by PID."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder / "demo"
        self.env = {
            **{k: v for k, v in os.environ.items()
               if k not in ("HALLWAY_CONFIG", "HALLWAY_TOKEN", "HALLWAY_URI")},
            "HOME": str(folder),
            "DEMO": str(self.folder),
            "BROKER_PORT": str(free_port()),
            "VENUE_PORT": str(free_port()),
            "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
            "DBUS_SYSTEM_BUS_ADDRESS": f"unix:path={folder}/no-bus",
        }

    def bash(self, script: str, *, timeout_s: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", "-c", "set -euo pipefail\n" + script], env=self.env,
                              cwd=self.folder.parent, capture_output=True, text=True,
                              timeout=timeout_s, check=False)

    def pids(self) -> list[int]:
        found = []
        for path in (self.folder / "pids", self.folder / "broker" / "mosquitto.pid"):
            with contextlib.suppress(OSError, ValueError):
                found += [int(p) for p in path.read_text().split()]
        return found

    def stop(self) -> None:
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for pid in self.pids():
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.1)
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def sub(self, user: str, *topics: str, wait_s: int = 3) -> list[tuple[str, str]]:
        """Retained messages on ``topics`` as ``user`` (its client certificate)."""
        tls = self.folder / "tls"
        argv = ["mosquitto_sub", "-h", "127.0.0.1", "-p", self.env["BROKER_PORT"],
                "--cafile", str(tls / "ca.pem"), "--cert", str(tls / f"{user}.pem"),
                "--key", str(tls / f"{user}.key"), "--retained-only", "-v",
                "-W", str(wait_s), "-F", "%t\t%p"]
        for topic in topics:
            argv += ["-t", topic]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=wait_s + 10,
                                check=False)
        pairs = [line.split("\t", 1) for line in result.stdout.splitlines() if "\t" in line]
        return [(topic, payload) for topic, payload in pairs]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z"):
            return False
    return True


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Demo]:
    for tool in ("/usr/sbin/mosquitto", "mosquitto_sub", "mosquitto_pub", "openssl"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (Debian: mosquitto, mosquitto-clients)")
    made = Demo(tmp_path)
    try:
        yield made
    finally:
        made.stop()


def test_the_venue_quickstart_runs_as_written(demo: Demo) -> None:
    blocks = quickstart_blocks(DOC.read_text())
    started = time.monotonic()
    setup = demo.bash("\n".join(blocks[:5]), timeout_s=120)
    assert setup.returncode == 0, setup.stdout + setup.stderr
    assert len(demo.pids()) == 5  # three scanners, the venue, the broker
    names = {json.loads(line)["name"]
             for line in (demo.folder / "contacts.jsonl").read_text().splitlines()}

    watch = demo.bash(blocks[5], timeout_s=150)
    logs = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-1500:]}"
                     for p in sorted(demo.folder.glob("*.log")))
    assert watch.returncode == 0, watch.stdout + watch.stderr + logs
    print(watch.stdout)
    events = [line for line in watch.stdout.splitlines()
              if re.search(r"\s(arrived|moved|zone|departed)\s", line)]
    assert len(events) >= 5, watch.stdout
    assert all(re.search(r"(in|left) Room [123]", line) for line in events), events
    assert "role scanner" in watch.stdout
    assert "role venue" in watch.stdout
    assert watch.stdout.count("all checks passed") == 2, watch.stdout
    # Home Assistant discovery: a device tracker per contact seen, named after them.
    discovery = demo.sub("cleanup", "homeassistant/#")
    trackers = [json.loads(p) for t, p in discovery
                if t.startswith("homeassistant/device_tracker/")]
    assert trackers, discovery
    assert {t["device"]["name"] for t in trackers} <= names
    before = demo.sub("cleanup", "hallway/#", "homeassistant/#")
    assert any(name in payload for _, payload in before for name in names)

    cleanup = demo.bash(blocks[6], timeout_s=60)
    assert cleanup.returncode == 0, cleanup.stdout + cleanup.stderr
    deadline = time.monotonic() + 15
    while any(_alive(pid) for pid in demo.pids()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in demo.pids())
    # No name on the broker: not in its persistence file, nor retained after a restart.
    stored = (demo.folder / "broker" / "mosquitto.db").read_bytes()
    assert not [name for name in names if name.encode() in stored]
    restart = demo.bash('/usr/sbin/mosquitto -c "$DEMO/broker/mosquitto.conf" -d', timeout_s=30)
    assert restart.returncode == 0, restart.stderr
    time.sleep(0.5)
    left = demo.sub("cleanup", "hallway/#", "homeassistant/#")
    assert not [(t, p) for t, p in left if any(name in p for name in names)], left
    print(f"quick-start ran in {time.monotonic() - started:.0f} s; "
          f"{len(before)} retained messages before the clean-up, {len(left)} after")


def test_the_standalone_broker_configuration_runs(demo: Demo) -> None:
    """The production file of "A broker of its own", moved into a folder (paths, the bind
    address, the ports, the user it runs as), with the access list of the page plus the
    clean-up user it tells to append, and certificates made by the quick-start's openssl
    block: nobody anonymous; a scanner with its certificate writes only below its name; the
    cleanup user clears a retained message; the password listener takes a password."""
    from tests.support.mosquitto import fenced_block_after

    markdown = DOC.read_text()
    blocks = quickstart_blocks(markdown)
    made = demo.bash(blocks[1].split("hallway simulate")[0] + blocks[2], timeout_s=60)
    assert made.returncode == 0, made.stderr
    folder = demo.folder / "standalone"
    folder.mkdir()
    tls = demo.folder / "tls"
    plain, secure = free_port(), int(demo.env["BROKER_PORT"])
    conf = fenced_block_after(markdown, "<!-- mosquitto-standalone -->")
    acl = fenced_block_after(markdown, "<!-- mosquitto-acl -->")
    cleanup = markdown.split("## After the event: clearing the broker", 1)[1]
    acl += fenced_block_after(cleanup, "these lines to `/etc/mosquitto/hallway/acl`")
    for old, new in (("/etc/mosquitto/hallway/ca.pem", str(tls / "ca.pem")),
                     ("/etc/mosquitto/hallway/server.pem", str(tls / "server.pem")),
                     ("/etc/mosquitto/hallway/server.key", str(tls / "server.key")),
                     ("/etc/mosquitto/hallway/", f"{folder}/"),
                     ("/var/lib/mosquitto/", f"{folder}/"),
                     ("/var/log/mosquitto/", f"{folder}/"),
                     ("/run/mosquitto/", f"{folder}/"),
                     ("listener 1883 127.0.0.1", f"listener {plain} 127.0.0.1"),
                     ("listener 8883 192.0.2.10", f"listener {secure} 127.0.0.1"),
                     ("user mosquitto", f"user {os.environ.get('USER') or 'root'}")):
        assert old in conf, old
        conf = conf.replace(old, new)
    if os.geteuid() == 0:
        conf = conf.replace(f"user {os.environ.get('USER') or 'root'}", "user root")
    (folder / "acl").write_text(acl)
    (folder / "passwd").touch()
    subprocess.run(["mosquitto_passwd", "-b", str(folder / "passwd"), "reader",
                    "reader-password-123"], check=True, capture_output=True, timeout=30)
    (folder / "mosquitto.conf").write_text(conf)
    started = demo.bash(f'mosquitto -c "{folder}/mosquitto.conf" -d', timeout_s=30)
    assert started.returncode == 0, started.stderr
    pid_file = folder / "mosquitto.pid"
    deadline = time.monotonic() + 10
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        time.sleep(0.5)
        base = ["-h", "127.0.0.1", "-p", str(secure), "--cafile", str(tls / "ca.pem")]

        def pub(user: str, topic: str, payload: str) -> int:
            return subprocess.run(
                ["mosquitto_pub", *base, "--cert", str(tls / f"{user}.pem"),
                 "--key", str(tls / f"{user}.key"), "-t", topic, "-m", payload, "-r",
                 "-q", "1"], capture_output=True, timeout=20, check=False).returncode

        anonymous = subprocess.run(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(plain),
                                    "-t", "#", "-W", "2"], capture_output=True, text=True,
                                   timeout=20, check=False)
        assert anonymous.returncode != 0
        assert "not authorised" in (anonymous.stderr + anonymous.stdout).lower() or \
            "refused" in (anonymous.stderr + anonymous.stdout).lower(), anonymous.stderr
        assert pub("room-1", "hallway/expo/scanners/room-1/status", "online") == 0
        assert pub("room-1", "hallway/expo/scanners/room-2/status", "forged") == 0  # dropped
        seen = dict(demo.sub("cleanup", "hallway/#"))
        assert seen == {"hallway/expo/scanners/room-1/status": "online"}, seen
        password = subprocess.run(
            ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(plain), "-u", "reader", "-P",
             "reader-password-123", "-t", "hallway/+/status", "-W", "1"],
            capture_output=True, text=True, timeout=20, check=False)
        assert "not authorised" not in password.stderr.lower(), password.stderr
        subprocess.run(["mosquitto_sub", *base, "--cert", str(tls / "cleanup.pem"),
                        "--key", str(tls / "cleanup.key"), "-t", "hallway/#",
                        "--retained-only", "--remove-retained", "-W", "2"],
                       capture_output=True, timeout=20, check=False)
        assert demo.sub("cleanup", "hallway/#") == []
    finally:
        with contextlib.suppress(OSError, ValueError, ProcessLookupError):
            os.kill(int(pid_file.read_text().split()[0]), signal.SIGTERM)
