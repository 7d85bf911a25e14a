"""Helpers for the mDNS tests: a pair of network namespaces joined by a veth pair, a private
avahi-daemon inside one, and two peer programs run as separate processes.

    python tests/netns_helper.py browse --iface IP --name NAME [--token T] [--events N]
        discovers NAME with python-zeroconf, prints the record, subscribes over TCP and prints
        what arrives, one JSON object a line ({"stage": ...}); with --watch it keeps reporting
        record updates and the removal (goodbye).
    python tests/netns_helper.py serve --db PATH --token T --name NAME --interface IFACE
        runs store + hub + server + announcer; prints {"stage": "ready", ...}; reads commands
        on stdin: "publish ID" publishes an arrival, "quit" (or end of input) shuts down.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SERVICE_TYPE = "_hallway._tcp.local."


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10, check=False)


def netns_unavailable() -> str | None:
    """Why namespace tests cannot run here, or None if they can."""
    if os.geteuid() != 0:
        return "needs root (ip netns)"
    if shutil.which("ip") is None:
        return "iproute2 (ip) is not installed"
    probe = f"hwprobe{os.getpid()}"
    made = _ip("netns", "add", probe)
    if made.returncode != 0:
        return f"ip netns add failed: {made.stderr.strip()}"
    _ip("netns", "del", probe)
    return None


def avahi_unavailable() -> str | None:
    """Why the avahi test cannot run here, or None if it can."""
    for tool in ("avahi-daemon", "avahi-browse", "dbus-daemon", "unshare", "mount"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return netns_unavailable()


class NetnsPair:
    """Two namespaces, ``a`` and ``b``, joined by veth ``<tag>a``/``<tag>b`` on 10.X.Y.0/24."""

    def __init__(self) -> None:
        pid = os.getpid() % 100_000
        self.tag = f"hw{pid}{int(time.time() * 1000) % 100}"
        self.a, self.b = f"{self.tag}-a", f"{self.tag}-b"
        self.if_a, self.if_b = f"{self.tag}a", f"{self.tag}b"
        net = f"10.{200 + pid % 50}.{pid % 250}"
        self.ip_a, self.ip_b = f"{net}.1", f"{net}.2"
        self.net = net

    def __enter__(self) -> NetnsPair:
        steps = [
            ("netns", "add", self.a), ("netns", "add", self.b),
            ("link", "add", self.if_a, "type", "veth", "peer", "name", self.if_b),
            ("link", "set", self.if_a, "netns", self.a),
            ("link", "set", self.if_b, "netns", self.b),
            ("-n", self.a, "addr", "add", f"{self.ip_a}/24", "dev", self.if_a),
            ("-n", self.b, "addr", "add", f"{self.ip_b}/24", "dev", self.if_b),
            ("-n", self.a, "link", "set", self.if_a, "up"),
            ("-n", self.b, "link", "set", self.if_b, "up"),
            ("-n", self.a, "link", "set", "lo", "up"),
            ("-n", self.b, "link", "set", "lo", "up"),
        ]
        for step in steps:
            result = _ip(*step)
            if result.returncode != 0:
                self.__exit__(None, None, None)
                raise RuntimeError(f"ip {' '.join(step)}: {result.stderr.strip()}")
        return self

    def __exit__(self, *exc: object) -> None:
        for ns in (self.a, self.b):
            _ip("netns", "del", ns)  # takes the veth pair with it

    def cmd(self, ns: str, argv: list[str]) -> list[str]:
        """``argv`` run inside namespace ``ns``."""
        return ["ip", "netns", "exec", ns, *argv]

    def add_address(self, ns: str, iface: str, address: str) -> None:
        result = _ip("-n", ns, "addr", "add", address, "dev", iface)
        if result.returncode != 0:
            raise RuntimeError(result.stderr.strip())


_BUS_CONF = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={path}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/><allow own="*"/>
    <allow send_type="method_call"/><allow send_type="signal"/>
    <allow send_type="method_return"/><allow send_type="error"/>
    <allow receive_type="method_call"/><allow receive_type="signal"/>
    <allow receive_type="method_return"/><allow receive_type="error"/>
  </policy>
</busconfig>
"""

_AVAHI_CONF = """[server]
host-name={host}
use-ipv4=yes
use-ipv6=no
allow-interfaces={iface}
enable-dbus=yes
[publish]
publish-hinfo=no
publish-workstation=no
"""


class PrivateAvahi:
    """avahi-daemon in namespace ``ns`` on a private system bus, with its own /run."""

    def __init__(self, pair: NetnsPair, ns: str, iface: str) -> None:
        self.pair, self.ns, self.iface = pair, ns, iface
        self.dir = Path(tempfile.mkdtemp(prefix="hwavahi-"))
        self.bus = self.dir / "bus"
        self.procs: list[subprocess.Popen[bytes]] = []
        self._log: Any = None

    def __enter__(self) -> PrivateAvahi:
        (self.dir / "bus.conf").write_text(_BUS_CONF.format(path=self.bus))
        (self.dir / "avahi.conf").write_text(_AVAHI_CONF.format(host=f"{self.pair.tag}av",
                                                                 iface=self.iface))
        (self.dir / "run").mkdir()
        try:
            self.procs.append(subprocess.Popen(
                ["dbus-daemon", f"--config-file={self.dir / 'bus.conf'}", "--nofork"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ))
            self._wait(self.bus.exists, "dbus-daemon")
            script = (f"mount --bind {self.dir / 'run'} /run && mkdir -p /run/avahi-daemon && "
                      "exec avahi-daemon --no-drop-root --no-chroot --no-rlimits "
                      f"-f {self.dir / 'avahi.conf'}")
            self._log = (self.dir / "avahi.log").open("wb")
            self.procs.append(subprocess.Popen(
                self.pair.cmd(self.ns, ["unshare", "--mount", "sh", "-c", script]),
                stdout=self._log, stderr=subprocess.STDOUT, env=self.env(),
            ))
            self._wait(lambda: b"Server startup complete" in self.log(), "avahi-daemon")
        except BaseException:
            self.__exit__()
            raise
        return self

    def _wait(self, ready: Any, what: str, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not ready():
            if time.monotonic() > deadline or any(p.poll() is not None for p in self.procs):
                raise RuntimeError(f"{what} did not start: {self.log().decode(errors='replace')}")
            time.sleep(0.05)

    def log(self) -> bytes:
        path = self.dir / "avahi.log"
        return path.read_bytes() if path.exists() else b""

    def env(self) -> dict[str, str]:
        return {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": f"unix:path={self.bus}"}

    def browse(self, service: str = "_hallway._tcp") -> list[dict[str, Any]]:
        """``avahi-browse -rpt``: the resolved records, with avahi's escapes decoded."""
        result = subprocess.run(
            self.pair.cmd(self.ns, ["avahi-browse", "-rpt", service]),
            capture_output=True, text=True, timeout=20, env=self.env(), check=False,
        )
        records = []
        for line in result.stdout.splitlines():
            fields = line.split(";")
            if fields[0] != "=" or len(fields) < 10:
                continue
            txt = dict(item.split("=", 1) for item in re.findall(r'"([^"]*)"', fields[9])
                       if "=" in item)
            records.append({"name": _unescape(fields[3]), "host": fields[6],
                            "address": fields[7], "port": int(fields[8]), "txt": txt})
        return records

    def __exit__(self, *exc: object) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if self._log is not None:
            self._log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def _unescape(text: str) -> str:
    """avahi-browse writes special characters as ``\\DDD`` (decimal)."""
    return re.sub(r"\\(\d{3})", lambda m: chr(int(m.group(1))), text)


# -- the peer programs ------------------------------------------------------------------------


def _out(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


async def _browse(args: argparse.Namespace) -> int:
    from zeroconf import IPVersion, ServiceStateChange, Zeroconf
    from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

    wanted = f"{args.name}.{SERVICE_TYPE}"
    changes: asyncio.Queue[str] = asyncio.Queue(maxsize=1000)

    def on_change(zeroconf: Zeroconf, service_type: str, name: str,
                  state_change: ServiceStateChange) -> None:
        if name == wanted:
            changes.put_nowait(state_change.name)

    started = time.monotonic()
    zc = AsyncZeroconf(interfaces=[args.iface], ip_version=IPVersion.V4Only)
    browser = AsyncServiceBrowser(zc.zeroconf, SERVICE_TYPE, handlers=[on_change])

    async def resolve() -> AsyncServiceInfo:
        info = AsyncServiceInfo(SERVICE_TYPE, wanted)
        if not await info.async_request(zc.zeroconf, 3000):
            raise RuntimeError("could not resolve the service")
        return info

    try:
        async with asyncio.timeout(args.timeout):
            while await changes.get() == "Removed":
                pass
            info = await resolve()
            txt = {k.decode(): (v or b"").decode() for k, v in info.properties.items()}
            addresses = info.parsed_addresses()
            _out(stage="found", after_s=round(time.monotonic() - started, 3), txt=txt,
                 addresses=addresses, port=info.port, server=info.server)
            if args.token is not None:
                reader, writer = await asyncio.open_connection(addresses[0], info.port)
                hello = json.loads(await reader.readline())
                writer.write((json.dumps({"type": "subscribe", "token": args.token}) + "\n")
                             .encode())
                await writer.drain()
                subscribed = json.loads(await reader.readline())
                _out(stage="subscribed", hello=hello, reply=subscribed)
                for _ in range(args.events):
                    _out(stage="event", event=json.loads(await reader.readline()))
                writer.close()
            while args.watch:
                change = await changes.get()
                if change == "Removed":
                    _out(stage="removed")
                    return 0
                with contextlib.suppress(RuntimeError):
                    info = await resolve()
                    _out(stage="updated", addresses=info.parsed_addresses(), port=info.port)
    except TimeoutError:
        _out(stage="timeout")
        return 1
    finally:
        await browser.async_cancel()
        await zc.async_close()
    return 0


async def _serve(args: argparse.Namespace) -> int:
    from hallway.announce import ZeroconfAnnouncer
    from hallway.config import LoggingConfig, MdnsConfig, ServerConfig
    from hallway.logs import configure_logging

    configure_logging(LoggingConfig(level="warning", format="json"), stream=sys.stderr)
    from hallway.hub import Hub
    from hallway.models import EventType, KeyKind, PresenceEvent
    from hallway.server import EventServer
    from hallway.store import SqliteStore

    store = await SqliteStore.open(args.db)
    hub = Hub(store, scanner="kiosk-ns", contact_lookup=lambda _id: None,
              retention_s=86400.0, retention_count=10_000)
    await hub.start()
    config = ServerConfig(tcp_host="0.0.0.0", tcp_port=0, unix_socket=None, tokens=(args.token,))
    server = EventServer(config, hub, scanner="kiosk-ns", version="test", tokens=[args.token])
    await server.start()
    assert server.tcp_port is not None
    announcer = ZeroconfAnnouncer(
        MdnsConfig(instance_name=args.name, interfaces=(args.interface,), venue="Hall 3"),
        scanner="kiosk-ns", port=server.tcp_port, auth="token", host="0.0.0.0",
        address_poll_s=args.poll,
    )
    try:
        await announcer.start()
        _out(stage="ready", port=server.tcp_port, name=announcer.name,
             addresses=announcer.addresses)
        loop = asyncio.get_running_loop()
        while True:
            line = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
            if not line or line == "quit":
                break
            command, _, contact = line.partition(" ")
            if command == "publish":
                hub.publish([PresenceEvent(EventType.ARRIVED, time.time(), contact, zone="near",
                                           distance_m=2.0, rssi=-60.0, via=KeyKind.HALLWAY_V1)])
            elif command == "name":
                _out(stage="name", name=announcer.name, addresses=announcer.addresses,
                     updates=announcer.updates)
    finally:
        await announcer.close()
        await server.close()
        await hub.close()
        await store.close()
    _out(stage="closed")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="role", required=True)
    browse = sub.add_parser("browse")
    browse.add_argument("--iface", required=True)
    browse.add_argument("--name", required=True)
    browse.add_argument("--token")
    browse.add_argument("--events", type=int, default=0)
    browse.add_argument("--watch", action="store_true")
    browse.add_argument("--timeout", type=float, default=20.0)
    serve = sub.add_parser("serve")
    serve.add_argument("--db", required=True)
    serve.add_argument("--token", required=True)
    serve.add_argument("--name", required=True)
    serve.add_argument("--interface", required=True)
    serve.add_argument("--poll", type=float, default=0.5)
    args = parser.parse_args()
    return asyncio.run(_browse(args) if args.role == "browse" else _serve(args))


if __name__ == "__main__":
    raise SystemExit(main())
