"""``hallway tail`` as a process: a fake mDNS announcer never gets the token, TLS pinning from
the command line, URIs and token sources, terminal escapes stripped, rate limits waited out."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from zeroconf import IPVersion
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from tests.client_env import (
    FakeConnection,
    FakeHallway,
    event_line,
    self_signed,
    server_tls_context,
)

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "tail-test-token-0123456789abcdef"
SERVICE = "_hallway._tcp.local."
HOSTILE = "Eve\x1b]0;owned\x07\x1b[2J\x9b31m\r\x00 Mallory"


async def _script(conn: FakeConnection, *, name: str = "Ada Lovelace") -> None:
    await conn.send({"type": "hello", "protocol": 1, "server": "hallway/fake",
                     "scanner": "fake", "auth": "token"})
    request = await conn.read()
    if not request or request.get("token") != TOKEN:
        await conn.send({"type": "error", "code": "unauthorized", "message": "bad token"})
        return
    await conn.send({"type": "subscribed", "seq": 0, "present": [
        {"contact": {"id": "c-9", "name": name}, "zone": "near", "distance_m": 2.0,
         "rssi": -60.0, "since": 1.0, "via": "address"}]})
    await conn.send(event_line(1, {"id": "c-1", "name": name, "org": name}))
    await conn.send(event_line(2, {"id": "c-2", "name": "Grace", "tags": [name]}, "departed"))


async def tail(*args: str, env: dict[str, str] | None = None,
               timeout_s: float = 40) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hallway", "tail", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src"), **(env or {})})
    try:
        async with asyncio.timeout(timeout_s):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
        raise AssertionError(f"tail did not finish:\n{err.decode()}") from None
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


def _no_token_env() -> dict[str, str]:
    return {"HALLWAY_TOKEN": "", "HALLWAY_URI": ""}


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    return path


class Announced:
    """A FakeHallway announced as ``_hallway._tcp`` on loopback under a unique name."""

    def __init__(self, fake: FakeHallway, name: str, zc: AsyncZeroconf,
                 info: AsyncServiceInfo) -> None:
        self.fake, self.name, self.zc, self.info = fake, name, zc, info


async def _announce(fake: FakeHallway, *, tls: bool) -> Announced:
    await fake.start()
    name = f"fake {os.getpid()}-{secrets.token_hex(3)}"
    zc = AsyncZeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
    info = AsyncServiceInfo(
        SERVICE, f"{name}.{SERVICE}", addresses=[socket.inet_aton("127.0.0.1")],
        port=fake.port, properties={"txtvers": "1", "protovers": "1", "scanner": "fake",
                                    "auth": "token", "tls": "1" if tls else "0"},
        server="fake-hallway.local.")
    await zc.async_register_service(info)
    return Announced(fake, name, zc, info)


@pytest.fixture
async def announced_plain() -> AsyncIterator[Announced]:
    ann = await _announce(FakeHallway(_script), tls=False)
    yield ann
    await ann.zc.async_unregister_service(ann.info)
    await ann.zc.async_close()
    await ann.fake.close()


async def test_a_fake_announcer_never_receives_the_token(
        announced_plain: Announced, token_file: Path, tmp_path: Path) -> None:
    # Every way of giving tail a token: none of them reaches a daemon found by mDNS.
    for how, env in ((["--token-file", str(token_file)], _no_token_env()),
                     ([], {"HALLWAY_TOKEN": TOKEN, "HALLWAY_URI": ""}),
                     (["--token", TOKEN], _no_token_env())):
        code, out, err = await tail("--mdns-interface", "127.0.0.1", "--name",
                                    announced_plain.name, "--browse", "10", *how, env=env)
        assert code == 1, err
        assert "found by mDNS" in err
        assert "--fingerprint" in err
        assert out == ""
    # Each tail read the fake's hello, sent after the fake counted its connection: the count
    # is complete. (No other test browses loopback without naming its own daemons.)
    connections = announced_plain.fake.connections
    assert connections >= 3
    # With a fingerprint, a daemon announcing plain TCP cannot prove it: not even contacted.
    _, _, pinned = self_signed(tmp_path)
    code, _, err = await tail("--mdns-interface", "127.0.0.1", "--name", announced_plain.name,
                              "--browse", "10", "--token-file", str(token_file),
                              "--fingerprint", f"sha256:{pinned}", env=_no_token_env())
    assert code == 1
    assert "does not serve TLS" in err
    assert announced_plain.fake.connections == connections
    assert TOKEN.encode() not in announced_plain.fake.received
    assert b"token" not in announced_plain.fake.received


async def test_a_tls_announcer_must_prove_the_pinned_fingerprint(
        tmp_path: Path, token_file: Path) -> None:
    cert, key, real = self_signed(tmp_path, "real")
    impostor_cert, impostor_key, _ = self_signed(tmp_path, "impostor")
    impostor = await _announce(FakeHallway(_script, tls=server_tls_context(impostor_cert,
                                                                          impostor_key)),
                               tls=True)
    genuine = await _announce(FakeHallway(_script, tls=server_tls_context(cert, key)), tls=True)
    try:
        code, out, err = await tail("--mdns-interface", "127.0.0.1", "--name", impostor.name,
                                    "--browse", "10", "--token-file", str(token_file),
                                    "--fingerprint", f"sha256:{real}", env=_no_token_env())
        assert code == 1
        assert "does not match the pinned fingerprint" in err
        assert impostor.fake.received == b""
        # Without the fingerprint a TLS daemon is not followed, and tail says what is missing.
        code, out, err = await tail("--mdns-interface", "127.0.0.1", "--name", genuine.name,
                                    "--browse", "10", "--token-file", str(token_file),
                                    env=_no_token_env())
        assert code == 1
        assert "serves TLS: pass --fingerprint" in err
        assert genuine.fake.connections == 0
        code, out, err = await tail("--mdns-interface", "127.0.0.1", "--name", genuine.name,
                                    "--browse", "10", "--token-file", str(token_file),
                                    "--fingerprint", f"sha256:{real}", "--json", "--count", "2",
                                    env=_no_token_env())
        assert code == 0, err
        assert [json.loads(line)["type"] for line in out.splitlines()] == [
            "subscribed", "arrived", "departed"]
        assert TOKEN.encode() in genuine.fake.received
    finally:
        for ann in (impostor, genuine):
            await ann.zc.async_unregister_service(ann.info)
            await ann.zc.async_close()
            await ann.fake.close()


async def test_uri_sources_and_a_certificate_that_does_not_match(tmp_path: Path) -> None:
    cert, key, fingerprint = self_signed(tmp_path)
    _, _, other = self_signed(tmp_path, "other")
    fake = FakeHallway(_script, tls=server_tls_context(cert, key))
    await fake.start()
    try:
        uri = f"hallway://127.0.0.1:{fake.port}?token={TOKEN}&fp=sha256:{fingerprint}"
        uri_file = tmp_path / "hallway.uri"
        uri_file.write_text(f"# from the operator\n{uri}\n")
        code, out, err = await tail("--uri-file", str(uri_file), "--json", "--count", "2",
                                    env=_no_token_env())
        assert code == 0, err
        assert "warning" not in err
        assert len(out.splitlines()) == 3
        code, out, err = await tail("--json", "--count", "2", env={"HALLWAY_URI": uri})
        assert code == 0, err
        assert len(out.splitlines()) == 3
        code, out, err = await tail("--uri", uri, "--json", "--count", "2")
        assert code == 0, err
        assert "visible to other users" in err
        received = len(fake.received)
        wrong = f"hallway://127.0.0.1:{fake.port}?token={TOKEN}&fp=sha256:{other}"
        code, out, err = await tail("--json", "--count", "2", env={"HALLWAY_URI": wrong})
        assert code == 1
        assert "does not match the pinned fingerprint" in err
        assert f"sha256:{other}" in err
        assert f"sha256:{fingerprint}" in err
        assert TOKEN not in err
        assert len(fake.received) == received  # nothing more reached the server
    finally:
        await fake.close()


async def test_token_sources_and_the_warning(token_file: Path) -> None:
    fake = FakeHallway(_script)
    await fake.start()
    try:
        where = f"127.0.0.1:{fake.port}"
        code, _, err = await tail("--connect", where, "--token-file", str(token_file), "--count",
                                  "2", env=_no_token_env())
        assert code == 0, err
        assert "warning" not in err
        code, _, err = await tail("--connect", where, "--count", "2",
                                  env={"HALLWAY_TOKEN": TOKEN})
        assert code == 0, err
        assert "warning" not in err
        code, _, err = await tail("--connect", where, "--token", TOKEN, "--count", "2",
                                  env=_no_token_env())
        assert code == 0, err
        assert "--token is visible to other users" in err
        code, _, err = await tail("--connect", where, "--token", "wrong-token-0000000",
                                  "--count", "2", env=_no_token_env())
        assert code == 1
        assert "refused us: unauthorized" in err
    finally:
        await fake.close()


async def test_control_characters_never_reach_the_terminal(token_file: Path) -> None:
    async def hostile(conn: FakeConnection) -> None:
        await _script(conn, name=HOSTILE)

    fake = FakeHallway(hostile)
    await fake.start()
    try:
        for mode in ([], ["--json"]):
            code, out, err = await tail("--connect", f"127.0.0.1:{fake.port}", "--token-file",
                                        str(token_file), "--count", "2", *mode,
                                        env=_no_token_env())
            assert code == 0, err
            assert "Mallory" in out
            for bad in ("\x1b", "\x07", "\x9b", "\r", "\x00"):
                assert bad not in out, (mode, bad)
                assert bad not in err, (mode, bad)
    finally:
        await fake.close()


async def test_rate_limited_is_waited_out_and_said(token_file: Path) -> None:
    attempts = 0

    async def script(conn: FakeConnection) -> None:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            await conn.send({"type": "error", "code": "rate_limited", "message": "slow down",
                             "retry_after_s": 1.0})
            return
        await _script(conn)

    fake = FakeHallway(script)
    await fake.start()
    try:
        code, out, err = await tail("--connect", f"127.0.0.1:{fake.port}", "--token-file",
                                    str(token_file), "--count", "2", env=_no_token_env())
    finally:
        await fake.close()
    assert code == 0, err
    assert "rate limited; retrying in" in err
    assert attempts == 2
    assert "arrived" in out


async def test_knows_of_and_filters_are_passed_through(token_file: Path) -> None:
    requests: list[dict[str, object]] = []

    async def script(conn: FakeConnection) -> None:
        await conn.send({"type": "hello", "protocol": 1, "server": "hallway/fake",
                         "scanner": "fake", "auth": "token"})
        request = await conn.read()
        assert request is not None
        requests.append(request)
        await conn.send({"type": "subscribed", "seq": 5, "present": []})
        await conn.send(event_line(6, {"id": "c-2", "name": "Grace"}))

    fake = FakeHallway(script)
    await fake.start()
    try:
        code, _, err = await tail("--connect", f"127.0.0.1:{fake.port}", "--token-file",
                                  str(token_file), "--knows-of", "c-1", "--contact", "c-2",
                                  "--tag", "speaker", "--since", "3", "--count", "1",
                                  env=_no_token_env())
    finally:
        await fake.close()
    assert code == 0, err
    assert requests == [{"type": "subscribe", "token": TOKEN, "contacts": ["c-2"],
                         "tags": ["speaker"], "knows_of": "c-1", "since_seq": 3}]


async def test_status_refuses_a_certificate_that_does_not_match(tmp_path: Path) -> None:
    cert, key, fingerprint = self_signed(tmp_path)
    _, _, other = self_signed(tmp_path, "other")

    async def status_script(conn: FakeConnection) -> None:
        await conn.send({"type": "hello", "protocol": 1, "server": "hallway/fake",
                         "scanner": "fake", "auth": "token"})
        request = await conn.read()
        if request and request.get("token") == TOKEN:
            await conn.send({"type": "status", "uptime_s": 5.0, "scanner": "fake"})

    fake = FakeHallway(status_script, tls=server_tls_context(cert, key))
    await fake.start()
    try:
        for fp, expect in ((fingerprint, 0), (other, 1)):
            uri_file = tmp_path / "uri"
            uri_file.write_text(f"hallway://127.0.0.1:{fake.port}?token={TOKEN}&fp=sha256:{fp}")
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "hallway", "status", "--uri-file", str(uri_file), "--json",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                env={**os.environ, "PYTHONPATH": str(ROOT / "src"), **_no_token_env()})
            out, err = await proc.communicate()
            assert proc.returncode == expect, err.decode()
            if expect == 0:
                assert json.loads(out)["uptime_s"] == 5.0
            else:
                assert b"does not match the pinned fingerprint" in err
    finally:
        await fake.close()
    assert fake.connections == 2


def test_the_config_token_goes_only_to_local_sockets(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse

    from hallway.commands._client import resolve

    monkeypatch.delenv("HALLWAY_TOKEN", raising=False)
    monkeypatch.delenv("HALLWAY_URI", raising=False)
    config = tmp_path / "hallway.toml"
    config.write_text(f'[server]\ntokens = ["{TOKEN}"]\nunix_socket = "{tmp_path / "h.sock"}"\n'
                      f'[storage]\ndatabase = "{tmp_path / "hallway.db"}"\n')

    def args(**given: object) -> argparse.Namespace:
        base: dict[str, object] = {"uri": None, "uri_file": None, "unix": None,
                                   "connect": None, "token": None, "token_file": None,
                                   "fingerprint": None, "config": str(config)}
        return argparse.Namespace(**{**base, **given})

    tokens = {
        where: resolve(args(**{key: where}), prog="test")[0]
        for key, where in (("connect", "127.0.0.1:7447"), ("connect", "[::1]:7447"),
                           ("unix", str(tmp_path / "x.sock")), ("connect", "10.1.2.3:7447"),
                           ("connect", "kiosk.example:7447"))
    }
    assert {where: t.token if t else None for where, t in tokens.items()} == {
        "127.0.0.1:7447": TOKEN, "[::1]:7447": TOKEN, str(tmp_path / "x.sock"): TOKEN,
        "10.1.2.3:7447": None, "kiosk.example:7447": None}
    # The config's own socket when nothing is named.
    own, _ = resolve(args(), prog="test")
    assert own is not None
    assert own.token == TOKEN
    assert (own.host, own.port) == ("127.0.0.1", 7447)
