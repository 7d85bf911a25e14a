"""Security on a real daemon: TLS with a pinned fingerprint, scoped and revocable tokens, the
wrong-token limiter with a good and a bad client on one address, and file modes."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import socket
import ssl
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from structlog.testing import capture_logs

from hallway.config import Config, ServerConfig, StorageConfig, load_config
from hallway.doctor import Commands, Status, _check_tls
from hallway.errors import ConfigError
from hallway.server import security
from hallway.tls import server_context
from tests.daemon_env import (
    ROOT,
    TOKEN,
    Daemon,
    beacon_rows,
    free_port,
    import_contacts,
    start_daemon,
    write_config,
    write_trace,
)

ADA = "C4:7C:8D:6A:12:34"
BOB = "C4:7C:8D:6A:56:78"
CONTACTS = [
    {"id": "c-ada", "name": "Ada Lovelace", "tags": ["speaker"],
     "keys": [{"kind": "address", "address": ADA}]},
    {"id": "c-bob", "name": "Bob Babbage", "tags": ["staff"],
     "keys": [{"kind": "address", "address": BOB}]},
]
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src")}


def hallway(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hallway", *args], capture_output=True,
                          text=True, env=ENV, timeout=60, check=False)


def _venue(tmp: Path, *, duration_s: float = 120.0) -> Path:
    start = time.time() + 0.5
    rows = beacon_rows(ADA, start=start, duration_s=duration_s)
    rows += beacon_rows(BOB, start=start, duration_s=duration_s, rssi=-60, every_s=0.3)
    trace = tmp / "trace.jsonl"
    write_trace(trace, rows)
    return trace


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[Any]:
    started: list[Daemon] = []

    def make(server_extra: str = "", mdns: str | None = None) -> tuple[Daemon, Path]:
        import_contacts(tmp_path, CONTACTS)
        port = free_port()
        config = write_config(tmp_path, port=port, trace=_venue(tmp_path))
        text = config.read_text().replace("ping_interval_s = 2.0\n",
                                          "ping_interval_s = 2.0\n" + server_extra)
        if mdns is not None:
            text = text.replace("[mdns]\nenabled = false\n", f"[mdns]\n{mdns}")
        config.write_text(text)
        daemon = start_daemon(tmp_path, config, port=port)
        started.append(daemon)
        daemon.wait_for_notification("READY=1", 30)
        return daemon, config

    yield make
    for daemon in started:
        daemon.stop()


class Line:
    """A blocking line client over an already connected (plain or TLS) socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    @classmethod
    def plain(cls, port: int) -> Line:
        return cls(socket.create_connection(("127.0.0.1", port), timeout=10))

    def send(self, obj: dict[str, Any]) -> None:
        self.sock.sendall((json.dumps(obj) + "\n").encode())

    def read(self, timeout_s: float = 10.0) -> dict[str, Any] | None:
        """The next line that is not a ping; None at end of stream (TimeoutError when
        ``timeout_s`` passes first)."""
        deadline = time.monotonic() + timeout_s
        while True:
            while b"\n" not in self.buffer:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                self.sock.settimeout(left)
                chunk = self.sock.recv(65536)
                if not chunk:
                    return None
                self.buffer += chunk
            raw, self.buffer = self.buffer.split(b"\n", 1)
            message: dict[str, Any] = json.loads(raw)
            if message.get("type") != "ping":
                return message

    def events(self, seconds: float) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                message = self.read(left)
            except (TimeoutError, OSError):
                break
            if message is None:
                break
            out.append(message)
        return out

    def close(self) -> None:
        self.sock.close()


class PinMismatch(Exception):
    pass


def pinned(port: int, fingerprint: str, **context: Any) -> Line:
    """A minimal pinning client: TLS without CA checks, then the DER's SHA-256 must match
    ``fingerprint`` before anything (a token) is sent."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    for key, value in context.items():
        setattr(ctx, key, value)
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock = ctx.wrap_socket(raw)
    der = sock.getpeercert(binary_form=True)
    assert der is not None
    if "sha256:" + hashlib.sha256(der).hexdigest() != fingerprint:
        sock.close()
        raise PinMismatch
    return Line(sock)


def tls_show(config: Path, *extra: str) -> dict[str, str]:
    result = hallway("tls", "show", "--config", str(config), *extra)
    assert result.returncode == 0, result.stderr
    return dict(line.split(": ", 1) for line in result.stdout.splitlines())


def test_tls_serves_the_pinned_certificate_and_refuses_other_clients(
    daemon_factory: Any, tmp_path: Path
) -> None:
    old = os.umask(0o022)
    try:
        daemon, config = daemon_factory("tls = true\n")
    finally:
        os.umask(old)
    shown = tls_show(config)
    fingerprint = shown["fingerprint"]
    assert fingerprint.startswith("sha256:")
    assert len(fingerprint) == len("sha256:") + 64
    assert shown["uri"] == f"hallway://127.0.0.1:{daemon.port}?fp={fingerprint}"
    assert TOKEN not in json.dumps(shown)
    with_token = tls_show(config, "--with-token")["uri"]
    assert with_token == f"hallway://127.0.0.1:{daemon.port}?token={TOKEN}&fp={fingerprint}"
    # The key is private whatever the umask; the certificate is the one served.
    key = tmp_path / "tls" / "key.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "tls").stat().st_mode) == 0o700

    client = pinned(daemon.port, fingerprint)
    hello = client.read()
    assert hello is not None
    assert hello["type"] == "hello"
    assert client.sock.version() in ("TLSv1.2", "TLSv1.3")  # type: ignore[attr-defined]
    client.send({"type": "subscribe", "token": TOKEN})
    subscribed = client.read() or {}
    assert subscribed["type"] == "subscribed"
    names = {p["contact"]["name"] for p in subscribed["present"]}
    names |= {e["contact"]["name"] for e in client.events(5) if "contact" in e}
    assert names == {"Ada Lovelace", "Bob Babbage"}
    client.close()

    # The wrong pin is found before a token is sent; the server saw no subscribe from it.
    with pytest.raises(PinMismatch):
        pinned(daemon.port, "sha256:" + "0" * 64)
    # TLS 1.2 is served too (1.3 by default above); the server's floor is 1.2.
    older = pinned(daemon.port, fingerprint, maximum_version=ssl.TLSVersion.TLSv1_2)
    assert older.sock.version() == "TLSv1.2"  # type: ignore[attr-defined]
    older.close()
    # A plain-text client never gets a hello (nor anything else in clear).
    plain = Line.plain(daemon.port)
    plain.send({"type": "subscribe", "token": TOKEN})
    plain.sock.settimeout(10)
    try:
        data = plain.sock.recv(65536)
    except (ConnectionError, TimeoutError):
        data = b""
    assert b"hello" not in data
    assert b"Ada" not in data
    plain.close()
    # The certificate stays across restarts (same fingerprint).
    daemon.stop()
    assert tls_show(config)["fingerprint"] == fingerprint


def _token(config: Path, name: str, *flags: str) -> str:
    result = hallway("tokens", "add", name, "--config", str(config), *flags)
    assert result.returncode == 0, result.stderr
    secret = result.stdout.strip()
    assert len(secret) >= 32
    assert secret not in result.stderr
    return secret


def _subscribe(port: int, token: str, **fields: Any) -> tuple[Line, dict[str, Any]]:
    client = Line.plain(port)
    assert (client.read() or {})["type"] == "hello"
    client.send({"type": "subscribe", "token": token, **fields})
    return client, client.read() or {}


def test_a_tls_daemon_announces_tls_by_mdns_and_serves_the_printed_certificate(
    daemon_factory: Any,
) -> None:
    """A running daemon with ``server.tls = true`` says ``tls=1`` in its mDNS TXT record (on
    loopback, read by python-zeroconf in another process), and the port it announces serves
    the certificate whose fingerprint ``hallway tls show`` prints."""
    name = f"hw tls {os.getpid()}-{secrets.token_hex(3)}"
    daemon, config = daemon_factory(
        "tls = true\n", mdns=f'enabled = true\ninterfaces = ["127.0.0.1"]\n'
                             f'instance_name = "{name}"\n')
    browse = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "netns_helper.py"), "browse", "--iface",
         "127.0.0.1", "--name", name], capture_output=True, text=True, env=ENV, timeout=60,
        check=False)
    assert browse.returncode == 0, browse.stderr
    found = json.loads(browse.stdout.splitlines()[0])
    assert found["stage"] == "found", found
    assert found["txt"]["tls"] == "1", found
    assert found["txt"]["auth"] == "token"
    assert found["port"] == daemon.port
    assert "127.0.0.1" in found["addresses"]
    fingerprint = tls_show(config)["fingerprint"]
    client = pinned(found["port"], fingerprint)  # raises PinMismatch if another is served
    hello = client.read()
    assert hello is not None
    assert hello["type"] == "hello"
    client.close()
    with pytest.raises(PinMismatch):  # (and the pin check does tell certificates apart)
        pinned(found["port"], "sha256:" + "f" * 64)


def test_scoped_tokens_see_only_their_scope_and_revocation_cuts_them(
    daemon_factory: Any,
) -> None:
    daemon, config = daemon_factory()
    speakers = _token(config, "speakers", "--tags", "speaker", "--no-present")
    listed = hallway("tokens", "list", "--config", str(config))
    assert listed.returncode == 0
    assert "speakers\ttags=speaker\tcontacts=all\thistory=all\tpresent=no" in listed.stdout
    assert speakers not in listed.stdout
    duplicate = hallway("tokens", "add", "speakers", "--config", str(config))
    assert duplicate.returncode == 1
    assert "exists" in duplicate.stderr
    time.sleep(1.5)  # the daemon reads the token table every second

    def ids(reply: dict[str, Any], client: Line) -> set[str]:
        """Contacts in the snapshot and in what follows for a second."""
        assert reply["type"] == "subscribed", reply
        seen = {p["contact"]["id"] for p in reply["present"]}
        return seen | {e["contact"]["id"] for e in client.events(1) if "contact" in e}

    scoped, subscribed = _subscribe(daemon.port, speakers)
    assert ids(subscribed, scoped) == {"c-ada"}
    asked_wider, reply = _subscribe(daemon.port, speakers, contacts=["c-bob", "c-ada"])
    assert ids(reply, asked_wider) == {"c-ada"}
    asked_outside, reply = _subscribe(daemon.port, speakers, tags=["staff"])
    assert ids(reply, asked_outside) == set()
    admin, reply = _subscribe(daemon.port, TOKEN)
    assert ids(reply, admin) == {"c-ada", "c-bob"}
    # present is outside this token's scope: forbidden, and the connection stays.
    scoped.send({"type": "present"})
    reply = scoped.read()
    assert reply is not None
    assert (reply["type"], reply["code"]) == ("error", "forbidden")
    scoped.send({"type": "status"})
    assert (scoped.read() or {})["type"] == "status"

    # Revocation ends its live connections within 2 s; the config token keeps working.
    revoked = hallway("tokens", "revoke", "speakers", "--config", str(config))
    assert revoked.returncode == 0, revoked.stderr
    started = time.monotonic()
    ending = scoped.events(4)
    assert ending, "nothing came after the revoke"
    assert ending[-1]["type"] == "error"
    assert ending[-1]["code"] == "unauthorized"
    assert scoped.read(2) is None
    assert time.monotonic() - started < 2.5
    again, refused = _subscribe(daemon.port, speakers)
    assert refused["code"] == "unauthorized"
    assert "speakers" not in hallway("tokens", "list", "--config", str(config)).stdout
    admin.send({"type": "present"})
    assert {p["contact"]["id"] for p in (admin.read() or {})["present"]} == {"c-ada", "c-bob"}
    for client in (scoped, asked_wider, asked_outside, admin, again):
        client.close()


def test_a_resume_older_than_the_tokens_history_gets_resync(daemon_factory: Any) -> None:
    daemon, config = daemon_factory()
    short = _token(config, "short-memory", "--history", "1")
    time.sleep(1.5)
    time.sleep(1.0)  # the arrivals (seq 1 and 2) are now older than 1 s on the trace's clock
    # The config token may replay them ...
    replaying, reply = _subscribe(daemon.port, TOKEN, since_seq=0)
    assert reply["type"] == "subscribed"
    assert reply["seq"] >= 2
    replayed = replaying.events(1)
    assert [e["seq"] for e in replayed[:2]] == [1, 2]
    assert {e["type"] for e in replayed[:2]} == {"arrived"}
    since = 0
    # ... the one with 1 s of history is told to resync instead.
    scoped, reply = _subscribe(daemon.port, short, since_seq=since)
    assert reply["type"] == "subscribed"
    resync = scoped.read()
    assert resync is not None
    assert resync["type"] == "resync"
    for client in (replaying, scoped):
        client.close()


def test_a_good_and_a_bad_client_on_one_address(daemon_factory: Any) -> None:
    daemon, _ = daemon_factory()
    codes = []
    retry = None
    for _ in range(15):
        bad = Line.plain(daemon.port)
        bad.read()
        bad.send({"type": "subscribe", "token": "not-the-token-0123456789"})
        reply = bad.read() or {}
        codes.append(reply.get("code"))
        retry = reply.get("retry_after_s", retry)
        bad.close()
    assert codes[:10] == ["unauthorized"] * 10
    assert "rate_limited" in codes[10:]
    assert isinstance(retry, float)
    assert 0 < retry <= 2.0
    # The good client, same address, right after: served at once.
    good, reply = _subscribe(daemon.port, TOKEN)
    assert reply["type"] == "subscribed"
    # A success does not wipe the bad client's record.
    bad = Line.plain(daemon.port)
    bad.read()
    bad.send({"type": "subscribe", "token": "not-the-token-0123456789"})
    assert (bad.read() or {}).get("code") == "rate_limited"
    seen = {p["contact"]["id"] for p in reply["present"]}
    seen |= {e["contact"]["id"] for e in good.events(5) if "contact" in e}
    assert seen == {"c-ada", "c-bob"}
    good.close()
    bad.close()
    log = daemon.log()
    assert "not-the-token" not in log
    assert TOKEN not in log


def test_plain_tcp_off_loopback_warns_or_is_refused(tmp_path: Path) -> None:
    config = Config(server=ServerConfig(tcp_host="0.0.0.0", tokens=(TOKEN,)),
                    storage=StorageConfig(database=str(tmp_path / "h.db")))
    assert config.server.plain_off_loopback
    with capture_logs() as logs:  # the event, whatever output another test configured
        secured = security(config, state_dir=tmp_path)
    assert secured.tls is None
    assert [e["log_level"] for e in logs if e["event"] == "tcp_without_tls"] == ["warning"]
    commands = Commands("hallway", "", "", "hallway")
    check = _check_tls(config, commands)
    assert check.status is Status.WARN
    assert "server.tls = true" in (check.fix or "")
    assert "hallway tls show" in (check.fix or "")
    assert _check_tls(Config(), commands).status is Status.OK  # loopback
    strict = tmp_path / "strict.toml"
    strict.write_text(f'[server]\ntcp_host = "0.0.0.0"\ntokens = ["{TOKEN}"]\n'
                      "require_tls_off_loopback = true\n")
    with pytest.raises(ConfigError) as caught:
        load_config(strict)
    assert "require_tls_off_loopback" in str(caught.value.problems[0])
    result = hallway("run", "--config", str(strict))
    assert result.returncode == 78
    assert "require_tls_off_loopback" in result.stderr
    ok = tmp_path / "ok.toml"
    ok.write_text(f'[server]\ntcp_host = "0.0.0.0"\ntokens = ["{TOKEN}"]\ntls = true\n'
                  "require_tls_off_loopback = true\n")
    strict_server = load_config(ok).server
    assert strict_server.tls
    context = server_context(strict_server, tmp_path)
    assert context is not None
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2


def test_demo_tls_prints_a_uri_that_connects(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "hallway", "demo", "--tls", "--port", "0",
         "--web-port", "0", "--quiet",
         "--duration", "20", "--unix", str(tmp_path / "demo.sock")],
        env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        uri = ""
        deadline = time.monotonic() + 30
        while not uri and time.monotonic() < deadline:
            line = proc.stderr.readline()
            assert line, "demo ended before printing its URI"
            if line.startswith("hallway://"):
                uri = line.strip()
        parsed = urlsplit(uri)
        query = parse_qs(parsed.query)
        assert parsed.hostname == "127.0.0.1"
        assert parsed.port is not None
        (fingerprint,) = query["fp"]
        (token,) = query["token"]
        client = pinned(parsed.port, fingerprint)
        assert (client.read() or {})["type"] == "hello"
        client.send({"type": "subscribe", "token": token})
        assert (client.read() or {})["type"] == "subscribed"
        client.close()
    finally:
        proc.terminate()
        proc.wait(20)
        if proc.stderr is not None:
            proc.stderr.close()


def test_tokens_cli_refuses_bad_input_and_keeps_only_a_digest(tmp_path: Path) -> None:
    config = tmp_path / "hallway.toml"
    config.write_text(f'[storage]\ndatabase = "{tmp_path / "h.db"}"\n')
    bad = [
        (["add", "-bad name"], "use 1-64 letters"),
        (["add", "config-2"], "kept for the config"),
        (["add", "app", "--fields", "display,secret_keys"], "unknown contact field"),
        (["add", "app", "--history", "-5"], "--history"),
        (["revoke", "nobody"], "no token named"),
    ]
    for args, message in bad:
        result = hallway("tokens", *args, "--config", str(config))
        assert result.returncode != 0, args
        assert message in result.stderr, (args, result.stderr)
    secret = _token(config, "kiosk", "--contacts", "c-1,c-2", "--history", "3600", "--fields",
                    "display")
    listed = hallway("tokens", "list", "--config", str(config)).stdout
    assert "kiosk\ttags=all\tcontacts=c-1,c-2\thistory=3600s\tpresent=yes\tfields=display" \
        in listed
    raw = (tmp_path / "h.db").read_bytes()
    for suffix in ("-wal", "-shm"):
        extra = tmp_path / f"h.db{suffix}"
        if extra.exists():
            raw += extra.read_bytes()
    assert secret.encode() not in raw
    assert hashlib.sha256(secret.encode()).digest() in raw
