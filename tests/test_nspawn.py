"""The real unit under a real systemd: systemd-nspawn boots this machine's /usr in a container.

The container gets the repository's ``systemd/hallway.service`` and sysusers file, this checkout
and its virtual environment read-only (the venv also at /opt/hallway, the unit's ExecStart
path), a config with the simulator source, and a test drop-in that only shortens the watchdog
and restart delay, allows the debug wedge, imports the simulator's contacts before start, and
(when this Python lives under /root or /home, which ProtectHome= hides) binds the interpreter
back in. Everything else is the unit as shipped.

The host reads the container's files through /proc/<its PID 1>/root and runs commands in it
with nsenter. A subscriber runs inside the container as a dynamic user that is only a member
of the service's group, so it proves the socket's mode as well.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import hallway

pytestmark = [pytest.mark.system, pytest.mark.slow, pytest.mark.timeout(180)]

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "systemd" / "hallway.service"
SYSUSERS = REPO / "systemd" / "hallway.sysusers.conf"
WATCHDOG_S = 3
PROBE_DIR = "/srv/probe"

# Runs inside the container as a dynamic user in group "hallway": subscribes on the Unix
# socket, writes everything it hears, and after losing the connection waits for a "release"
# file before it resumes with since_seq (so events happen while it is away).
PROBE = r'''
import json, os, socket, sys, time

sock_path, token_path, folder = sys.argv[1:4]
deadline = time.monotonic() + float(sys.argv[4])
stop, release = os.path.join(folder, "stop"), os.path.join(folder, "release")
last_seq, connections = None, 0
with open(os.path.join(folder, "heard.jsonl"), "a", encoding="utf-8") as out:
    def note(obj):
        out.write(json.dumps(obj) + "\n")
        out.flush()
    while time.monotonic() < deadline and not os.path.exists(stop):
        if connections and not os.path.exists(release):
            time.sleep(0.05)
            continue
        try:
            token = open(token_path, encoding="utf-8").read().split()[0]
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            conn.settimeout(0.5)
            conn.connect(sock_path)
        except OSError as exc:
            note({"probe": "connect_failed", "error": type(exc).__name__})
            time.sleep(0.2)
            continue
        connections += 1
        request = {"type": "subscribe", "token": token}
        if last_seq is not None:
            request["since_seq"] = last_seq
        note({"probe": "connected", "since_seq": last_seq, "uid": os.getuid(),
              "groups": os.getgroups()})
        buffer = b""
        try:
            conn.sendall(json.dumps(request).encode() + b"\n")
            while time.monotonic() < deadline and not os.path.exists(stop):
                try:
                    chunk = conn.recv(65536)
                except TimeoutError:
                    continue
                if not chunk:
                    break
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    message = json.loads(line)
                    if message.get("type") not in ("hello", "subscribed", "ping", "error",
                                                   "resync"):
                        last_seq = message["seq"]
                    note(message)
        except OSError as exc:
            note({"probe": "disconnected", "error": type(exc).__name__})
        finally:
            conn.close()
        note({"probe": "closed", "last_seq": last_seq})
'''

CONFIG = """\
[scanner]
name = "nspawn-kiosk"
source = "simulator"
# The corridor with seed 7 has contacts within earshot after about 5 s.
scenario = "corridor"
seed = 7

[proximity]
# Everyone heard counts as present, so arrivals come within seconds of the start.
presence_radius_m = 200.0

[storage]
database = "/var/lib/hallway/hallway.db"

[server]
tcp_host = "127.0.0.1"
tcp_port = 7447
unix_socket = "/run/hallway/hallway.sock"
unix_socket_mode = "0660"

[mdns]
enabled = true
interfaces = ["127.0.0.1"]

[logging]
format = "json"
"""


def wait_for(what: str, probe: Callable[[], Any], *, timeout_s: float, step_s: float = 0.1
             ) -> Any:
    """Poll until ``probe()`` is truthy; fail naming ``what``."""
    limit = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > limit:
            pytest.fail(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(step_s)


def outermost(paths: list[Path]) -> list[Path]:
    """Drop paths inside others of the list."""
    unique = sorted({p.resolve() for p in paths}, key=lambda p: len(p.parts))
    kept: list[Path] = []
    for path in unique:
        if not any(path.is_relative_to(k) for k in kept):
            kept.append(path)
    return kept


def code_paths() -> list[Path]:
    """What the container needs of this machine's Python: the venv, the package, the interpreter."""
    return outermost([Path(sys.prefix), Path(hallway.__file__).resolve().parents[1],
                      Path(sys.base_prefix)])


def sandbox_properties() -> list[str]:
    """Unit settings that let a sandboxed service see ``code_paths()``.

    ProtectHome= hides /root, /home and /run/user, PrivateTmp= (and DynamicUser=) replace /tmp
    and /var/tmp; a checkout or interpreter there is bound back in, read-only. Empty when the
    code lives elsewhere, as it does when installed.
    """
    homes = ("/root", "/home", "/run/user")
    hidden = [p for p in code_paths()
              if any(p.is_relative_to(top) for top in (*homes, "/tmp", "/var/tmp"))]
    properties = []
    if any(p.is_relative_to(top) for p in hidden for top in homes):
        properties.append("ProtectHome=tmpfs")
    if hidden:
        properties.append("BindReadOnlyPaths=" + " ".join(map(str, hidden)))
    return properties


class Container:
    """One booted systemd-nspawn container; commands run in it with nsenter."""

    def __init__(self, argv: list[str], log: Path) -> None:
        self.argv = argv
        self.log_path = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.leader: int | None = None

    def boot(self, *, timeout_s: float = 30.0) -> None:
        """Start nspawn, find the container's PID 1, wait for the boot to finish."""
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT)
        limit = time.monotonic() + timeout_s
        while self.leader is None:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                pytest.skip(f"systemd-nspawn cannot boot a container here: {tail.strip()}")
            self.leader = self._find_leader(self.proc.pid)
            if time.monotonic() > limit:
                pytest.fail("systemd-nspawn started but no container init appeared")
            time.sleep(0.05)
        while True:  # "offline" or no bus until systemd listens on its private socket
            result = self.run("systemctl", "is-system-running", "--wait", check=False,
                              timeout_s=timeout_s)
            state = result.stdout.strip()
            if state not in ("offline", "") or time.monotonic() > limit:
                break
            time.sleep(0.1)
        log = self.log_path.read_text(errors="replace")[-3000:]
        assert state in ("running", "degraded"), f"{state} {result.stderr}\n{log}"

    @staticmethod
    def _find_leader(pid: int) -> int | None:
        """The descendant of ``pid`` that is PID 1 in its own PID namespace."""
        pending = [pid]
        while pending:
            current = pending.pop()
            try:
                status = Path(f"/proc/{current}/status").read_text()
                children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("NSpid:") and current != pid:
                    ids = line.split()[1:]
                    if len(ids) > 1 and ids[-1] == "1":
                        return current
            pending.extend(int(c) for c in children)
        return None

    def run(self, *argv: str, check: bool = True, timeout_s: float = 30.0
            ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the container (as root)."""
        assert self.leader is not None
        result = subprocess.run(
            ["nsenter", "-t", str(self.leader), "-m", "-u", "-i", "-n", "-p", "--", *argv],
            capture_output=True, text=True, timeout=timeout_s, check=False)
        if check and result.returncode != 0:
            pytest.fail(f"{' '.join(argv)} failed ({result.returncode}): "
                        f"{result.stdout}{result.stderr}")
        return result

    def path(self, inside: str) -> Path:
        """A path in the container, seen from the host."""
        return Path(f"/proc/{self.leader}/root") / inside.lstrip("/")

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.run("systemctl", "show", unit, "-p", ",".join(props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, unit: str) -> str:
        return self.run("journalctl", "-u", unit, "--no-pager", "-o", "cat", check=False).stdout

    def stop(self) -> None:
        """Power off; kill by PID whatever lingers."""
        if self.proc is None:
            return
        if self.leader is not None and self.proc.poll() is None:
            self.run("systemctl", "poweroff", "--no-block", check=False, timeout_s=10)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            if self.leader is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.leader, 9)  # PID 1 of the namespace: takes everything with it
            self.proc.kill()
            self.proc.wait(timeout=10)


def preflight() -> str | None:
    """Why a container cannot be booted here, or None."""
    if sys.platform != "linux":
        return "systemd-nspawn needs Linux"
    if os.geteuid() != 0:
        return "systemd-nspawn needs root"
    for tool in ("systemd-nspawn", "nsenter", "systemctl"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian: systemd-container, util-linux)"
    if not Path("/usr/lib/systemd/systemd").exists() and not Path("/lib/systemd/systemd").exists():
        return "no systemd binary in /usr to boot"
    return None


@pytest.fixture
def container(tmp_path: Path) -> Iterator[Container]:
    reason = preflight()
    if reason:
        print(f"skipping: {reason}")
        pytest.skip(reason)
    tmp_path.chmod(0o755)
    etc = tmp_path / "etc-hallway"
    etc.mkdir(mode=0o755)
    etc.chmod(0o755)
    (etc / "config.toml").write_text(CONFIG)
    simulate = subprocess.run(
        [sys.executable, "-m", "hallway", "simulate", "--scenario", "corridor", "--seed", "7",
         "--duration", "1", "--start", str(int(time.time())), "--out", str(tmp_path / "sim")],
        capture_output=True, text=True, timeout=60, check=False)
    assert simulate.returncode == 0, simulate.stderr
    shutil.copy(tmp_path / "sim" / "contacts.jsonl", etc / "contacts.jsonl")
    for file in etc.iterdir():
        file.chmod(0o644)
    probe = tmp_path / "probe"
    probe.mkdir()
    probe.chmod(0o777)
    (probe / "probe.py").write_text(PROBE)
    (probe / "probe.py").chmod(0o644)

    venv = Path(sys.prefix)
    dropin = tmp_path / "dropin"
    dropin.mkdir(mode=0o755)
    lines = [
        "[Service]",
        f"WatchdogSec={WATCHDOG_S}",
        "RestartSec=1",
        "Environment=HALLWAY_DEBUG_WEDGE=1",
        "ExecStartPre=/opt/hallway/bin/hallway contacts import /etc/hallway/contacts.jsonl "
        "--config /etc/hallway/config.toml",
    ]
    lines += sandbox_properties()
    (dropin / "test.conf").write_text("\n".join(lines) + "\n")
    (dropin / "test.conf").chmod(0o644)
    # The empty /etc makes this a first boot, when systemd enables units by preset (Debian's:
    # everything); the test starts hallway itself, to watch it get ready.
    preset = tmp_path / "hallway-test.preset"
    preset.write_text("disable hallway.service\n")
    preset.chmod(0o644)

    argv = ["systemd-nspawn", "-D", "/", "--volatile=yes", "--register=no", "--keep-unit",
            "--private-network", "--console=pipe", "-b",
            f"--bind-ro={UNIT}:/etc/systemd/system/hallway.service",
            f"--bind-ro={dropin}:/etc/systemd/system/hallway.service.d",
            f"--bind-ro={SYSUSERS}:/etc/sysusers.d/hallway.conf",
            f"--bind-ro={preset}:/etc/systemd/system-preset/00-hallway-test.preset",
            f"--bind-ro={etc}:/etc/hallway",
            f"--bind-ro={venv}:/opt/hallway",
            f"--bind={probe}:{PROBE_DIR}"]
    argv += [f"--bind-ro={p}" for p in code_paths()]
    box = Container(argv, tmp_path / "nspawn.log")
    try:
        box.boot()
        yield box
    finally:
        box.stop()


def heard(folder: Path) -> list[dict[str, Any]]:
    path = folder / "heard.jsonl"
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    return [json.loads(line) for line in lines if line.endswith("}")]


def events_of(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in lines if "seq" in m and m.get("type") not in (
        "subscribed", "ping", "hello")]


def status_from_host(box: Container) -> dict[str, Any]:
    token = box.path("/var/lib/hallway/token").read_text().split()[0]
    result = subprocess.run(
        [sys.executable, "-m", "hallway", "status", "--unix",
         str(box.path("/run/hallway/hallway.sock")), f"--token={token}", "--json"],
        capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    reply: dict[str, Any] = json.loads(result.stdout)
    return reply


def test_unit_runs_under_systemd_and_survives_a_wedge(container: Container, tmp_path: Path
                                                      ) -> None:
    box = container
    probe_dir = tmp_path / "probe"
    python = f"/opt/hallway/bin/{Path(sys.executable).name}"
    sandbox = ["-p", "DynamicUser=yes"]
    for setting in sandbox_properties():
        sandbox += ["-p", setting]

    # The account comes from the sysusers file, processed at boot.
    passwd = box.run("getent", "passwd", "hallway").stdout.split(":")
    uid, gid = int(passwd[2]), int(passwd[3])
    assert "hallway" in box.run("id", "-nG", "hallway").stdout.split()
    assert "bluetooth" in box.run("id", "-nG", "hallway").stdout.split()

    # 1. active (running) only after READY=1: until then the unit is activating although its
    # main process runs.
    box.run("systemctl", "start", "--no-block", "hallway.service")
    seen: list[tuple[str, str, bool]] = []

    def state() -> bool:
        props = box.show("hallway.service", "ActiveState", "SubState", "MainPID")
        entry = (props["ActiveState"], props["SubState"], props["MainPID"] != "0")
        if not seen or seen[-1] != entry:
            seen.append(entry)
        if props["ActiveState"] == "failed" or props["SubState"] == "auto-restart":
            pytest.fail(f"hallway failed to start ({props['SubState']}):\n"
                        + box.journal("hallway.service")[-4000:])
        return props["ActiveState"] == "active"

    wait_for("hallway.service to become active", state, timeout_s=60, step_s=0.02)
    assert ("activating", "start", True) in seen, seen
    assert seen.index(("activating", "start", True)) < seen.index(("active", "running", True))
    props = box.show("hallway.service", "StatusText", "ExecMainStartTimestampMonotonic",
                     "ActiveEnterTimestampMonotonic", "NotifyAccess", "WatchdogUSec")
    assert "adv/s" in props["StatusText"]  # sent with READY=1
    started = int(props["ExecMainStartTimestampMonotonic"])
    active = int(props["ActiveEnterTimestampMonotonic"])
    print(f"main process started -> READY=1 after {(active - started) / 1e6:.2f} s; "
          f"states seen: {seen}")
    assert active > started
    assert props["WatchdogUSec"] == f"{WATCHDOG_S}s"

    # 2. The directories and the socket.
    state_dir = box.path("/var/lib/hallway").stat()
    assert (state_dir.st_uid, state_dir.st_gid) == (uid, gid)
    assert state_dir.st_mode & 0o7777 == 0o750
    token = box.path("/var/lib/hallway/token").stat()
    assert (token.st_uid, token.st_mode & 0o777) == (uid, 0o640)
    database = box.path("/var/lib/hallway/hallway.db").stat()
    assert (database.st_uid, database.st_mode & 0o077) == (uid, 0)  # UMask=0077
    runtime = box.path("/run/hallway").stat()
    assert (runtime.st_uid, runtime.st_gid, runtime.st_mode & 0o7777) == (uid, gid, 0o750)
    sock = box.path("/run/hallway/hallway.sock").stat()
    assert (sock.st_uid, sock.st_gid, sock.st_mode & 0o777) == (uid, gid, 0o660)

    # A local user outside the group cannot connect; one in the group can.
    check = ("import socket; s = socket.socket(socket.AF_UNIX); "
             "s.connect('/run/hallway/hallway.sock'); print(s.recv(200).decode())")
    outsider = box.run("systemd-run", "--wait", "--pipe", "--quiet", *sandbox, python, "-c",
                       check, check=False)
    assert outsider.returncode != 0
    assert "PermissionError" in outsider.stderr
    member = box.run("systemd-run", "--wait", "--pipe", "--quiet", *sandbox,
                     "-p", "SupplementaryGroups=hallway", python, "-c", check, check=False)
    assert member.returncode == 0, member.stderr
    assert json.loads(member.stdout)["type"] == "hello"

    # 3. A subscriber inside receives events.
    box.run("systemd-run", "--unit=hallway-probe", "--quiet", *sandbox,
            "-p", "SupplementaryGroups=hallway", "-p", f"ReadWritePaths={PROBE_DIR}",
            python, f"{PROBE_DIR}/probe.py", "/run/hallway/hallway.sock",
            "/var/lib/hallway/token", PROBE_DIR, "120")
    first = wait_for("the subscriber's first event", lambda: events_of(heard(probe_dir)),
                     timeout_s=30)
    hello = next(m for m in heard(probe_dir) if m.get("type") == "hello")
    assert hello["auth"] == "token"
    connected = next(m for m in heard(probe_dir) if m.get("probe") == "connected")
    assert gid in connected["groups"]
    # The first event is an arrival, or (on a loaded machine, where people arrived before the
    # probe subscribed) about someone the subscription already listed as present.
    subscribed_first = next(m for m in heard(probe_dir) if m.get("type") == "subscribed")
    already = {p["contact"]["id"] for p in subscribed_first["present"]}
    assert first[0]["type"] == "arrived" or first[0]["contact"]["id"] in already, (
        first[0], already)

    # hallway status, from the host over the container's Unix socket and inside over TCP.
    status = status_from_host(box)
    assert status["source_state"] == "scanning"
    assert status["subscribers"] >= 1
    assert status["last_error"] is None, status["last_error"]  # mDNS worked under the sandbox
    for key in ("uptime_s", "advertisements_per_s", "matched_per_s", "malformed", "dropped",
                "present"):
        assert key in status
    token_text = box.path("/var/lib/hallway/token").read_text().split()[0]
    inside = box.run(python, "-m", "hallway", "status", "--connect", "127.0.0.1:7447",
                     f"--token={token_text}")
    assert "uptime" in inside.stdout
    assert "subscribers" in inside.stdout

    # 4. Wedge it: the watchdog kills it (SIGABRT) and systemd restarts it.
    before = box.show("hallway.service", "MainPID", "NRestarts")
    assert before["NRestarts"] == "0"
    box.run("systemctl", "kill", "--signal=SIGUSR2", "hallway.service")
    wedged_at = time.monotonic()

    def restarted() -> bool:
        now = box.show("hallway.service", "MainPID", "NRestarts", "ActiveState")
        return (now["NRestarts"] == "1" and now["ActiveState"] == "active"
                and now["MainPID"] not in ("0", before["MainPID"]))

    wait_for("the watchdog restart", restarted, timeout_s=WATCHDOG_S + 30, step_s=0.1)
    print(f"wedged -> killed and active again after {time.monotonic() - wedged_at:.1f} s")
    journal = box.journal("hallway.service")
    assert "Watchdog timeout" in journal, journal[-3000:]
    assert "SIGABRT" in journal

    # 5. The subscriber lost its connection; events happen while it is away; it resumes.
    wait_for("the subscriber to notice", lambda: any(
        m.get("probe") == "closed" for m in heard(probe_dir)), timeout_s=15)
    missed_up_to = int(wait_for(
        "events while the subscriber is away",
        lambda: (s := status_from_host(box)["last_seq"]) > events_of(heard(probe_dir))[-1]["seq"]
        and s, timeout_s=40, step_s=0.5))
    (probe_dir / "release").touch()
    wait_for("the resumed subscriber to catch up",
             lambda: events_of(heard(probe_dir))[-1]["seq"] >= missed_up_to, timeout_s=30)
    (probe_dir / "stop").touch()

    lines = heard(probe_dir)
    connects = [m for m in lines if m.get("probe") == "connected"]
    assert len(connects) == 2
    assert connects[1]["since_seq"] == max(e["seq"] for e in events_of(
        lines[:lines.index(connects[1])]))
    events = events_of(lines)
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(set(seqs)), "events repeated or out of order"
    subscribed = next(m for m in lines if m.get("type") == "subscribed")
    assert seqs == list(range(subscribed["seq"] + 1, seqs[-1] + 1)), "an event was lost"
    # ... and they are exactly the daemon's logged events, as it logged them.
    # (read inside: SQLite resolves /proc/<pid>/root back to the host's root)
    query = ("import json, sqlite3, sys; db = sqlite3.connect("
             "'file:/var/lib/hallway/hallway.db?mode=ro', uri=True); print(json.dumps(db.execute("
             "'SELECT seq, payload FROM events WHERE seq > ? AND seq <= ?', "
             "(int(sys.argv[1]), int(sys.argv[2]))).fetchall()))")
    rows = json.loads(box.run(python, "-c", query, str(subscribed["seq"]), str(seqs[-1])).stdout)
    logged = dict(rows)
    assert sorted(logged) == seqs
    for event in events:
        assert json.loads(logged[event["seq"]]) == event
    print("events:", [(e["seq"], e["type"], e.get("contact", {}).get("id")) for e in events])
    print(f"subscriber heard seq {seqs[0]}..{seqs[-1]}, resumed with since_seq "
          f"{connects[1]['since_seq']}, missed events replayed up to {missed_up_to}")


# -- docs/install.md, as written ---------------------------------------------------------------

INSTALL_DOC = REPO / "docs" / "install.md"
SRC = "/srv/hallway-src"

# The container has no sudo: the docs' "sudo CMD" runs CMD as root (the script's user), and
# "sudo -u USER CMD" runs it as USER and the user's groups with setpriv, stdin and all (runuser
# needs a PAM session, which nsenter does not give).
SUDO_SHIM = r'''
sudo() {
    local user=""
    while [ $# -gt 0 ]; do
        case "$1" in
            -u) user="$2"; shift 2 ;;
            -E|-H) shift ;;
            *) break ;;
        esac
    done
    if [ -n "$user" ]; then
        setpriv --reuid "$user" --regid "$(id -gn "$user")" --init-groups -- "$@"
    else
        "$@"
    fi
}
'''


def install_blocks() -> list[str]:
    """The fenced blocks after each ``<!-- install-test -->`` marker of docs/install.md."""
    import re

    text = INSTALL_DOC.read_text()
    return [m.group(1) for m in re.finditer(r"<!-- install-test -->\n```[a-z]*\n(.*?)^```", text,
                                            re.M | re.S)]


def test_install_doc_blocks_are_found() -> None:
    blocks = install_blocks()
    assert len(blocks) == 7
    assert "ln -sf /opt/hallway/bin/hallway" in blocks[0]
    assert "systemctl enable --now hallway" in blocks[4]
    assert "simulate --scenario meetup --import" in blocks[5]
    assert "userdel hallway" in blocks[6]


@pytest.fixture
def bare_container(tmp_path: Path) -> Iterator[Container]:
    """A booted container with nothing of hallway installed: the repository read-only at
    /srv/hallway-src, this Python where it lives (read-only), /usr/local/bin writable."""
    reason = preflight()
    if reason:
        pytest.skip(reason)
    tmp_path.chmod(0o755)
    argv = ["systemd-nspawn", "-D", "/", "--volatile=yes", "--register=no", "--keep-unit",
            "--private-network", "--console=pipe", "-b", "--tmpfs=/usr/local/bin",
            f"--bind-ro={REPO}:{SRC}"]
    argv += [f"--bind-ro={p}" for p in code_paths()]
    box = Container(argv, tmp_path / "nspawn.log")
    try:
        box.boot()
        yield box
    finally:
        box.stop()


def test_the_install_doc_installs_runs_and_uninstalls(bare_container: Container) -> None:
    box = bare_container
    started = time.monotonic()
    # What the docs' pip steps would make (the container has no network to reach an index):
    # /opt/hallway/bin/hallway, here this checkout's environment. And where this Python lives
    # under /root or /home, the test's drop-in lets the sandboxed service see it (as in the
    # test above); the docs' own steps do the rest.
    venv_hallway = Path(sys.prefix) / "bin" / "hallway"
    box.run("mkdir", "-p", "/opt/hallway/bin")
    box.run("ln", "-s", str(venv_hallway), "/opt/hallway/bin/hallway")
    box.run("chmod", "0755", "/root")
    properties = sandbox_properties()
    if properties:
        box.run("mkdir", "-p", "/etc/systemd/system/hallway.service.d")
        box.run("sh", "-c", "printf '%s\\n' \"$@\" > /etc/systemd/system/hallway.service.d/"
                "test.conf", "sh", "[Service]", *properties)
    blocks = install_blocks()
    script = SUDO_SHIM + "set -euo pipefail\ncd " + SRC + "\n" + "\n".join(blocks[:5])
    installed = box.run("bash", "-c", script, check=False, timeout_s=120)
    assert installed.returncode == 0, (installed.stdout[-3000:] + installed.stderr[-3000:]
                                       + box.journal("hallway.service")[-3000:])

    # Installed and running, nobody enrolled: doctor (no --config) warns and prints a fix that
    # works as printed, run from a folder holding the contacts file.
    report = json.loads(box.run("hallway", "doctor", "--json", check=False).stdout)
    assert report["config"] == "/etc/hallway/config.toml"
    assert report["role"] == "scanner"
    database = next(c for c in report["checks"] if c["name"] == "database")
    assert database["status"] == "warn", database
    fix = database["fix"].split("`")[1]
    assert fix == "sudo -u hallway hallway contacts import - < contacts.jsonl", fix
    box.run("mkdir", "-p", "/srv/admin")
    box.run("sh", "-c", "echo '{\"id\": \"guest-0001\", \"name\": \"Guest One\"}' "
            "> /srv/admin/contacts.jsonl")
    fixed = box.run("bash", "-c", SUDO_SHIM + "set -euo pipefail\ncd /srv/admin\n" + fix,
                    check=False)
    assert fixed.returncode == 0, fixed.stderr
    report = json.loads(box.run("hallway", "doctor", "--json", check=False).stdout)
    assert next(c for c in report["checks"] if c["name"] == "database")["status"] == "ok"

    tried = box.run("bash", "-c", SUDO_SHIM + "set -euo pipefail\ncd " + SRC + "\n" + blocks[5],
                    check=False, timeout_s=120)
    print(tried.stdout[-3000:])
    assert tried.returncode == 0, (tried.stdout[-3000:] + tried.stderr[-3000:]
                                   + box.journal("hallway.service")[-3000:])
    installed = tried
    # The service ran from the installed unit and config, and tail (no flags) saw arrivals.
    arrivals = [line for line in installed.stdout.splitlines() if "  arrived  " in line]
    assert arrivals, installed.stdout
    assert all("kiosk-a" in line for line in arrivals)
    assert "meetup-1-" not in installed.stdout  # tail shows names, not ids
    assert box.show("hallway.service", "ActiveState")["ActiveState"] == "active"
    listed = box.run("setpriv", "--reuid", "hallway", "--regid", "hallway", "--init-groups",
                     "--", "hallway", "contacts", "list").stdout
    assert "meetup-1-0001" in listed  # the service's database, found by the command itself

    removed = box.run("bash", "-c", SUDO_SHIM + "set -euo pipefail\n" + blocks[6], check=False,
                      timeout_s=60)
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert box.run("getent", "passwd", "hallway", check=False).returncode != 0
    assert not box.path("/var/lib/hallway").exists()
    assert not box.path("/etc/hallway").exists()
    assert not box.path("/etc/systemd/system/hallway.service").exists()
    gone = box.show("hallway.service", "LoadState")["LoadState"]
    assert gone == "not-found", gone
    print(f"installed, ran, uninstalled in {time.monotonic() - started:.0f} s")
