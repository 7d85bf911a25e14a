"""The operator's path through the CLI (issue 21): one way to find the config and the token,
permission errors that name the group, rooms in tail's readable lines, tail by mDNS carrying
on past a daemon that refuses it, clear messages for unknown and revoked contact ids."""

from __future__ import annotations

import asyncio
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from zeroconf import IPVersion
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from hallway.commands.tail import format_message
from tests.client_env import FakeConnection, FakeHallway, event_line

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "operator-test-token-0123456789abcdef"
SERVICE = "_hallway._tcp.local."


def hallway(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
            stdin: str | None = None, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items()
            if k not in ("HALLWAY_CONFIG", "HALLWAY_TOKEN", "HALLWAY_URI")}
    return subprocess.run([sys.executable, "-m", "hallway", *args], capture_output=True,
                          text=True, timeout=timeout_s, check=False, cwd=cwd, input=stdin,
                          env={**base, "PYTHONPATH": str(ROOT / "src"), **(env or {})})


# -- the config every command finds ----------------------------------------------------------


def test_contacts_commands_use_the_configs_database_not_the_working_directory(
        tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    config = tmp_path / "config.toml"
    config.write_text(f'[storage]\ndatabase = "{state / "hallway.db"}"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"HALLWAY_CONFIG": str(config)}
    imported = hallway("contacts", "import", "-", env=env, cwd=elsewhere,
                       stdin='{"id": "c-1", "name": "Ada Lovelace"}\n')
    assert imported.returncode == 0, imported.stderr
    assert (state / "hallway.db").exists()
    assert not (elsewhere / "hallway.db").exists()
    listed = hallway("contacts", "list", env=env, cwd=elsewhere)
    assert listed.returncode == 0, listed.stderr
    assert "Ada Lovelace" in listed.stdout
    # --config wins over $HALLWAY_CONFIG.
    other = tmp_path / "other.toml"
    other.write_text(f'[storage]\ndatabase = "{tmp_path / "other.db"}"\n')
    assert hallway("contacts", "list", "--config", str(other), env=env,
                   cwd=elsewhere).returncode != 0  # other.db does not exist


def test_unknown_and_revoked_ids_are_explained(tmp_path: Path) -> None:
    db = str(tmp_path / "h.db")
    assert hallway("contacts", "import", "-", "--db", db,
                   stdin='{"id": "c-1", "name": "Ada"}\n').returncode == 0
    unknown = hallway("contacts", "revoke", "c-0059", "--db", db)
    assert unknown.returncode == 1
    assert "no contact 'c-0059'" in unknown.stderr
    assert "contacts list" in unknown.stderr
    assert hallway("contacts", "revoke", "c-1", "--db", db).returncode == 0
    for action in (["revoke", "c-1"], ["show", "c-1"], ["enroll", "c-1", "--no-qr"]):
        again = hallway("contacts", *action, "--db", db)
        assert again.returncode == 1, action
        assert "'c-1' was revoked" in again.stderr, again.stderr
        assert "--readmit" in again.stderr


def _nobody() -> str | None:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        return None
    try:
        pwd.getpwnam("nobody")
    except KeyError:
        return None
    return "nobody"


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A folder other users can reach (pytest's own are root's alone)."""
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="hallway-op-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_permission_errors_name_the_group_to_join(open_dir: Path) -> None:
    user = _nobody()
    if user is None:
        pytest.skip("needs root and setpriv to run as another user")
    tmp_path = open_dir
    config = tmp_path / "config.toml"
    config.write_text(f'[storage]\ndatabase = "{tmp_path / "state" / "hallway.db"}"\n')
    config.chmod(0o640)  # root:root here; group hallway when installed
    argv = ["setpriv", "--reuid", user, "--regid", "nogroup", "--clear-groups",
            sys.executable, "-m", "hallway"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HALLWAY_CONFIG": str(config)}
    for args in (["contacts", "list"], ["status"], ["tail"]):
        result = subprocess.run([*argv, *args], capture_output=True, text=True, timeout=60,
                                check=False, env=env)
        assert result.returncode == 78, (args, result.stderr)
        assert "permission denied" in result.stderr, result.stderr
        assert "usermod -aG hallway" in result.stderr, result.stderr
    # A socket of the service's group: tail says so at once instead of retrying.
    sock_path = tmp_path / "h.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(sock_path))
    sock_path.chmod(0o660)
    listener.listen()
    try:
        result = subprocess.run([*argv, "tail", "--unix", str(sock_path)], capture_output=True,
                                text=True, timeout=60, check=False,
                                env={**env, "HALLWAY_CONFIG": "", "HALLWAY_TOKEN": "t" * 20})
    finally:
        listener.close()
    assert result.returncode == 1, result.stderr
    assert "permission denied" in result.stderr
    assert "usermod -aG hallway" in result.stderr
    # A readable config but the service user's database: run it as that user.
    config.chmod(0o644)
    state = tmp_path / "state"
    state.mkdir()
    assert hallway("contacts", "import", "-", env={"HALLWAY_CONFIG": str(config)},
                   stdin='{"id": "c-1", "name": "Ada"}\n').returncode == 0
    (state / "hallway.db").chmod(0o600)
    result = subprocess.run([*argv, "contacts", "list"], capture_output=True, text=True,
                            timeout=60, check=False, env=env)
    assert result.returncode == 1
    assert "permission denied" in result.stderr
    assert "sudo hallway contacts list" in result.stderr  # root owns it here


# -- tail ------------------------------------------------------------------------------------


def test_readable_lines_show_rooms() -> None:
    contact = {"id": "c-1", "name": "Ada Lovelace"}
    now = time.time()
    arrived = format_message({"type": "arrived", "seq": 3, "ts": now, "scanner": "venue",
                              "contact": contact, "zone": "near", "distance_m": 2.5,
                              "via": "hallway-v1", "room": "Hall 3"}, now=now)
    assert arrived is not None
    assert "in Hall 3, near 2.5 m" in arrived
    moved = format_message({"type": "moved", "seq": 4, "ts": now, "scanner": "venue",
                            "contact": contact, "zone": "near", "distance_m": 3.1,
                            "room": "Hall 3", "previous_room": "Foyer"}, now=now)
    assert moved is not None
    assert "moved" in moved
    assert "Foyer -> in Hall 3" in moved
    departed = format_message({"type": "departed", "seq": 5, "ts": now, "scanner": "venue",
                               "contact": contact, "dwell_s": 75, "reason": "timeout",
                               "room": "Hall 3"}, now=now)
    assert departed is not None
    assert "left Hall 3 after 1m15s" in departed
    present = format_message({"type": "subscribed", "seq": 5, "present": [
        {"contact": contact, "zone": "far", "distance_m": 6.0, "since": now - 5,
         "room": "Foyer"}]}, now=now)
    assert present is not None
    assert "in Foyer, far 6.0 m" in present
    # A scanner's own events have no room and read as before.
    plain = format_message({"type": "arrived", "seq": 1, "ts": now, "scanner": "kiosk",
                            "contact": contact, "zone": "near", "distance_m": 2.0,
                            "via": "address"}, now=now)
    assert plain is not None
    assert " in " not in plain.split("arrived", 1)[1]


async def _run_tail(*args: str, env: dict[str, str], timeout_s: float = 40
                    ) -> tuple[int, str, str]:
    base = {k: v for k, v in os.environ.items()
            if k not in ("HALLWAY_CONFIG", "HALLWAY_TOKEN", "HALLWAY_URI")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hallway", "tail", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**base, "PYTHONPATH": str(ROOT / "src"), **env})
    try:
        async with asyncio.timeout(timeout_s):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
        raise AssertionError(f"tail did not finish:\n{err.decode()}") from None
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


async def _wants_token(conn: FakeConnection) -> None:
    await conn.send({"type": "hello", "protocol": 1, "server": "hallway/fake",
                     "scanner": "locked", "auth": "token"})
    request = await conn.read()
    if not request or request.get("token") != TOKEN:
        await conn.send({"type": "error", "code": "unauthorized", "message": "bad token"})
        return
    await conn.send({"type": "subscribed", "seq": 0, "present": []})
    await conn.send(event_line(1, {"id": "c-1", "name": "Ada Lovelace"}))
    await conn.send(event_line(2, {"id": "c-2", "name": "Grace Hopper"}, "departed"))


async def _open_door(conn: FakeConnection) -> None:
    await conn.send({"type": "hello", "protocol": 1, "server": "hallway/fake",
                     "scanner": "open", "auth": "none"})
    await conn.read()
    await conn.send({"type": "subscribed", "seq": 0, "present": []})
    await asyncio.sleep(1.0)  # after the other daemon's refusal
    await conn.send(event_line(1, {"id": "c-3", "name": "Katherine Johnson"}))
    await conn.send(event_line(2, {"id": "c-4", "name": "Dorothy Vaughan"}))


async def test_tail_without_flags_follows_the_configs_daemon_with_its_token(
        tmp_path: Path) -> None:
    fake = FakeHallway(_wants_token)
    await fake.start()
    try:
        token_file = tmp_path / "token"
        token_file.write_text(TOKEN + "\n")
        config = tmp_path / "config.toml"
        config.write_text(f'[server]\ntcp_host = "127.0.0.1"\ntcp_port = {fake.port}\n'
                          f'unix_socket = ""\ntoken_file = "{token_file}"\n')
        code, out, err = await _run_tail("--count", "2", env={"HALLWAY_CONFIG": str(config)})
        assert code == 0, err
        assert "arrived" in out
        assert "Ada Lovelace" in out
        assert TOKEN.encode() in fake.received
    finally:
        await fake.close()


class _Announced:
    def __init__(self, fake: FakeHallway, name: str, zc: AsyncZeroconf,
                 info: AsyncServiceInfo) -> None:
        self.fake, self.name, self.zc, self.info = fake, name, zc, info


async def _announce(fake: FakeHallway, prefix: str, scanner: str) -> _Announced:
    await fake.start()
    name = f"{prefix} {os.getpid()}-{secrets.token_hex(3)}"
    zc = AsyncZeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
    info = AsyncServiceInfo(
        SERVICE, f"{name}.{SERVICE}", addresses=[socket.inet_aton("127.0.0.1")],
        port=fake.port, properties={"txtvers": "1", "protovers": "1", "scanner": scanner,
                                    "auth": "token" if scanner == "locked" else "none",
                                    "tls": "0"},
        server=f"{prefix.replace(' ', '-')}.local.")
    await zc.async_register_service(info)
    return _Announced(fake, name, zc, info)


@pytest.fixture
async def two_daemons() -> AsyncIterator[list[_Announced]]:
    announced = [await _announce(FakeHallway(_wants_token), "op locked", "locked"),
                 await _announce(FakeHallway(_open_door), "op open", "open")]
    yield announced
    for ann in announced:
        await ann.zc.async_unregister_service(ann.info)
        await ann.zc.async_close()
        await ann.fake.close()


async def test_tail_by_mdns_reports_a_refusal_and_carries_on(
        two_daemons: list[_Announced]) -> None:
    # Named, so that tail leaves alone the daemons other tests announce on loopback meanwhile.
    code, out, err = await _run_tail("--mdns-interface", "127.0.0.1", "--browse", "10",
                                     "--name", two_daemons[0].name, "--name", two_daemons[1].name,
                                     "--count", "2", env={})
    assert code == 0, err
    assert "(found by mDNS) wants a token" in err  # the locked one, reported
    assert "Katherine Johnson" in out
    assert "Dorothy Vaughan" in out
    assert b"token" not in two_daemons[0].fake.received


# -- doctor ----------------------------------------------------------------------------------


def _doctor(config: Path, *extra: str) -> dict[str, dict[str, str]]:
    import json

    result = hallway("doctor", "--json", "--config", str(config), *extra,
                     env={"DBUS_SYSTEM_BUS_ADDRESS": "unix:path=/nonexistent/bus"})
    report = json.loads(result.stdout)
    return {"_role": report["role"], **{c["name"]: c for c in report["checks"]}}


def test_doctors_fix_line_works_as_printed(tmp_path: Path) -> None:
    import json

    db = tmp_path / "hallway.db"
    config = tmp_path / "config.toml"
    config.write_text(f'[scanner]\nsource = "simulator"\n[storage]\ndatabase = "{db}"\n'
                      '[server]\nunix_socket = ""\ntcp_port = 0\n[mdns]\nenabled = false\n')
    env = {"HALLWAY_CONFIG": str(config)}
    assert hallway("contacts", "import", "-", env=env,
                   stdin='{"id": "c-1", "name": "Ada"}\n').returncode == 0
    assert hallway("contacts", "revoke", "c-1", env=env).returncode == 0
    found = _doctor(config)
    assert found["database"]["status"] == "warn"
    fix = found["database"]["fix"]
    command = fix.split("`")[1]
    (tmp_path / "contacts.jsonl").write_text(json.dumps({"id": "c-2", "name": "Grace"}) + "\n")
    ran = subprocess.run(["bash", "-c", command], cwd=tmp_path, capture_output=True, text=True,
                         timeout=60, check=False,
                         env={**os.environ, "PATH": f"{Path(sys.executable).parent}:"
                              f"{os.environ.get('PATH', '')}"})
    assert ran.returncode == 0, (command, ran.stderr)
    assert _doctor(config)["database"]["status"] == "ok"


def test_doctor_knows_the_venue_role(tmp_path: Path) -> None:
    config = tmp_path / "venue.toml"
    config.write_text(f'[scanner]\nname = "venue"\n[storage]\ndatabase = "{tmp_path / "v.db"}"\n'
                      '[server]\nunix_socket = ""\ntcp_port = 0\n[mdns]\nenabled = false\n'
                      '[mqtt]\nenabled = true\nvenue = "expo"\n'
                      '[venue]\nrooms = { "kiosk-a" = "Hall A" }\n')
    found = _doctor(config)
    assert found["_role"] == "venue"
    assert found["bluetooth"]["status"] == "skip"
    for name in ("dbus", "bluez", "adapter", "powered", "rfkill", "permission"):
        assert name not in found
    assert "contacts import" not in (found["database"].get("fix") or "")
    assert "hallway-venue" in (found["database"].get("fix") or "")  # its own unit
    # The same config checked as a scanner gets the radio checks back.
    assert "dbus" in _doctor(config, "--role", "scanner")


# -- trying it without Bluetooth -------------------------------------------------------------


def test_simulated_contacts_never_collide_across_seeds_and_import_in_one_command(
        tmp_path: Path) -> None:
    import json

    from hallway.config import load_config
    from hallway.simulator import scenario_contacts

    first = {c.id for c in scenario_contacts("corridor", seed=7)}
    assert first.isdisjoint(c.id for c in scenario_contacts("corridor", seed=8))
    assert first.isdisjoint(c.id for c in scenario_contacts("booth", seed=7))
    db = tmp_path / "h.db"
    config = tmp_path / "config.toml"
    config.write_text(f'[scanner]\nsource = "simulator"\nscenario = "corridor"\nseed = 7\n'
                      f'[storage]\ndatabase = "{db}"\n')
    env = {"HALLWAY_CONFIG": str(config)}
    for seed in ("7", "8"):  # two runs into one store: two sets of people
        done = hallway("simulate", "--scenario", "corridor", "--seed", seed, "--import",
                       env=env)
        assert done.returncode == 0, done.stderr
    listed = hallway("contacts", "list", env=env).stdout.splitlines()
    ids = {line.split("\t")[0] for line in listed}
    assert len(ids) == 2 * len(first)
    assert first <= ids

    # The venue: three rooms, a trace per scanner, one contacts file, configs that load.
    out = tmp_path / "venue"
    made = hallway("simulate", "--scenario", "venue", "--out", str(out), "--duration", "120",
                   "--broker", "127.0.0.1:18883", "--venue-port", "17447")
    assert made.returncode == 0, made.stderr
    rooms = json.loads((out / "rooms.json").read_text())["rooms"]
    assert rooms == {"room-1": "Room 1", "room-2": "Room 2", "room-3": "Room 3"}
    for scanner in rooms:
        assert (out / f"trace-{scanner}.jsonl").stat().st_size > 0
        loaded = load_config(out / f"{scanner}.toml")
        assert loaded.scanner.source == "replay"
        assert (loaded.mqtt.port, loaded.mqtt.cert_file) == (
            18883, str(out / "tls" / f"{scanner}.pem"))
    venue = load_config(out / "venue.toml")
    assert venue.venue.rooms == rooms
    assert venue.server.tcp_port == 17447
    ids = [json.loads(line)["id"] for line in (out / "contacts.jsonl").read_text().splitlines()]
    assert ids[0] == "venue-1-0001"


def test_the_simulated_source_brings_its_contacts_when_configured(tmp_path: Path) -> None:
    import signal

    db = tmp_path / "h.db"
    config = tmp_path / "config.toml"
    config.write_text(
        '[scanner]\nsource = "simulator"\nscenario = "meetup"\nseed = 3\n'
        f'simulator_contacts = true\n[storage]\ndatabase = "{db}"\n'
        '[server]\nunix_socket = ""\ntcp_host = "127.0.0.1"\ntcp_port = 0\n'
        '[mdns]\nenabled = false\n')
    env = {"HALLWAY_CONFIG": str(config)}
    # One of them was revoked before: it stays revoked.
    assert hallway("contacts", "import", "-", env=env,
                   stdin='{"id": "meetup-3-0002", "name": "Gone"}\n').returncode == 0
    assert hallway("contacts", "revoke", "meetup-3-0002", env=env).returncode == 0
    base = {k: v for k, v in os.environ.items() if k != "HALLWAY_CONFIG"}
    daemon = subprocess.Popen([sys.executable, "-m", "hallway", "run"],
                              env={**base, **env, "PYTHONPATH": str(ROOT / "src")},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and daemon.poll() is None:
            listed = hallway("contacts", "list", env=env).stdout
            if "meetup-3-0001" in listed:
                time.sleep(2.0)  # let it finish starting before it is stopped
                break
            time.sleep(0.5)
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, err = daemon.communicate(timeout=30)
    assert daemon.returncode == 0, err
    ids = {line.split("\t")[0] for line in hallway("contacts", "list", env=env
                                                    ).stdout.splitlines()}
    assert "meetup-3-0001" in ids
    assert "meetup-3-0002" not in ids
    assert "simulator_contacts_imported" in err
