"""``hallway demo``: the whole daemon on a simulated venue, on loopback, watched live.

It first says what the viewer is looking at: the venue (by default ``meetup``, busy enough
to show arrivals, zone changes and departures every minute), how many contacts are enrolled,
and how fast people come and go (the simulation runs in real time).
A temporary store is filled with the simulated venue's contacts; the daemon serves TCP (and a
Unix socket) with a token and announces itself by mDNS on loopback (or ``--interface``). The
demo subscribes to itself like any app would and prints the events as they come, and it prints
the ``hallway tail`` command line for watching from another terminal.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from hallway.commands._common import config_from_args

DEFAULT_PORT = 7447
DEFAULT_SCENARIO = "meetup"
DEFAULT_WEB_PORT = 7448


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``demo``."""
    parser = sub.add_parser(
        "demo", help="run the daemon on a simulated venue and watch it", parents=[common]
    )
    parser.add_argument("--port", type=int, help=f"TCP port (default {DEFAULT_PORT}, or a free "
                        "one if that is taken)")
    parser.add_argument("--web-port", type=int, help=f"port of the web pages (default "
                        f"{DEFAULT_WEB_PORT}, or a free one if that is taken)")
    parser.add_argument("--token", help="subscriber token (default: a generated one)")
    parser.add_argument("--unix", metavar="PATH", help="Unix socket path (default: in a "
                        "temporary folder)")
    parser.add_argument("--interface", metavar="ADDR", default="127.0.0.1",
                        help="address to listen and announce on (default 127.0.0.1)")
    parser.add_argument("--scenario", default=DEFAULT_SCENARIO,
                        help=f"simulated venue (default {DEFAULT_SCENARIO})")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--duration", type=float, metavar="S",
                        help="stop after S seconds (default: run until Ctrl-C)")
    parser.add_argument("--quiet", action="store_true", help="do not print the events here")
    parser.add_argument("--tls", action="store_true",
                        help="serve TLS on the TCP socket and print the connection URI")
    parser.add_argument("--apps", metavar="DIR",
                        help="also serve this folder's pages at /apps/NAME (e.g. docs/examples)")
    parser.set_defaults(func=run)


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def run(args: argparse.Namespace) -> int:
    """Build a throwaway venue and run the daemon on it."""
    from hallway.config import (
        LoggingConfig,
        MdnsConfig,
        ScannerConfig,
        ServerConfig,
        StorageConfig,
        WebConfig,
    )
    from hallway.logs import configure_logging
    from hallway.service import Service, install_signal_handlers
    from hallway.simulator import scenario, scenario_contacts, scenario_names
    from hallway.store import SqliteStore

    if args.scenario not in scenario_names():
        print(f"hallway: unknown scenario {args.scenario!r}; choose from "
              f"{', '.join(scenario_names())}", file=sys.stderr)
        return 2
    if args.apps is not None and not Path(args.apps).is_dir():
        print(f"hallway: --apps {args.apps}: not a folder", file=sys.stderr)
        return 2
    base = config_from_args(args, setup_logging=False)
    if not args.config:
        # The demo prints events; keep the daemon's own log to warnings unless configured.
        base = base.model_copy(update={"logging": LoggingConfig(level="warning")})
    configure_logging(base.logging)
    token = args.token or secrets.token_hex(16)
    port = args.port
    if port is None:
        port = DEFAULT_PORT if _port_free(args.interface, DEFAULT_PORT) else 0
    web_port = args.web_port
    if web_port is None:
        web_port = DEFAULT_WEB_PORT if _port_free(args.interface, DEFAULT_WEB_PORT) else 0
    workdir = Path(tempfile.mkdtemp(prefix="hallway-demo-"))
    unix_path = args.unix or str(workdir / "hallway.sock")
    config = base.model_copy(update={
        "scanner": ScannerConfig(name="demo", source="simulator", scenario=args.scenario,
                                 seed=args.seed),
        "storage": StorageConfig(database=str(workdir / "hallway.db")),
        "server": ServerConfig(tcp_host=args.interface, tcp_port=port, unix_socket=unix_path,
                               unix_socket_mode="0600", tokens=(token,), tls=args.tls),
        "mdns": MdnsConfig(instance_name=f"hallway demo {args.scenario}",
                           interfaces=(args.interface,)),
        "web": WebConfig(enabled=True, host=args.interface, port=web_port,
                         title=f"Who is here · {args.scenario}",
                         apps_dir=None if args.apps is None else str(Path(args.apps).resolve())),
    })

    async def main() -> int:
        contacts = scenario_contacts(args.scenario, seed=args.seed)
        spec = scenario(args.scenario)
        print(f"hallway demo: scenario '{spec.name}', {spec.description}\n"
              f"  {len(contacts)} enrolled contacts (strangers' phones come and go too: "
              f"counted, never shown)\n"
              f"  in real time: {spec.pace}", file=sys.stderr, flush=True)
        async with await SqliteStore.open(config.storage.database) as store:
            await store.import_contacts(contacts)
        stop = asyncio.Event()
        watcher: list[asyncio.Task[None]] = []

        async def ready(service: Service) -> None:
            # First line: the kiosk page. The token is in the fragment, which the browser
            # keeps to itself; the page trades it for a session cookie.
            scheme = "https" if args.tls else "http"  # the pages use the socket's certificate
            print(f"kiosk: {scheme}://{args.interface}:{service.web_port}/kiosk#token={token}",
                  flush=True)
            if args.apps is not None:
                print(f"apps: {scheme}://{args.interface}:{service.web_port}/apps/NAME"
                      f"#token={token}", file=sys.stderr)
            print(f"hallway demo: simulated venue '{args.scenario}' with {len(contacts)} "
                  f"enrolled contacts, serving on {args.interface}:{service.tcp_port} and "
                  f"{unix_path}", file=sys.stderr)
            fingerprint = None
            if args.tls:
                from hallway.tls import certificate_fingerprint, connection_uri

                _, fingerprint = certificate_fingerprint(config.server, workdir)
                assert service.tcp_port is not None
                print("  connection URI (TLS; the token is this demo's):", file=sys.stderr)
                print(connection_uri(args.interface, service.tcp_port, token=token,
                                     fingerprint=fingerprint), file=sys.stderr)
            if service.announced_name:
                print(f"  announced by mDNS as '{service.announced_name}' "
                      f"(_hallway._tcp on {args.interface})", file=sys.stderr)
            # The token goes in a file of its own, not on a command line (ps shows those).
            uri_file = _write_uri_file(workdir, args.interface, service.tcp_port, token,
                                       fingerprint)
            print("  watch it from another terminal with:\n"
                  f"    hallway tail --uri-file {uri_file}", file=sys.stderr)
            if not args.quiet:
                watcher.append(asyncio.create_task(_watch(unix_path, token), name="demo-watch"))
            if args.duration is not None:
                asyncio.get_running_loop().call_later(args.duration, stop.set)

        service = Service(config, state_dir=workdir, on_ready=ready)
        install_signal_handlers(service, stop)
        try:
            return await service.run(stop)
        finally:
            for task in watcher:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    try:
        return asyncio.run(main())
    finally:
        for path in sorted(workdir.rglob("*"), reverse=True):
            with contextlib.suppress(OSError):
                path.unlink() if not path.is_dir() else path.rmdir()
        with contextlib.suppress(OSError):
            workdir.rmdir()


def _write_uri_file(workdir: Path, host: str, port: int | None, token: str,
                    fingerprint: str | None) -> Path:
    """The demo's connection URI (with the certificate's fingerprint under TLS) in a file only
    its owner can read (0600 from creation)."""
    from hallway.client import Target, parse_fingerprint

    pinned = None if fingerprint is None else parse_fingerprint(fingerprint)
    path = workdir / "hallway.uri"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(Target(host=host, port=port, token=token, fingerprint=pinned).uri() + "\n")
    return path


async def _watch(unix_path: str, token: str) -> None:
    """Subscribe over the Unix socket like any app and print readable event lines."""
    from hallway.commands.tail import format_message

    reader, writer = await asyncio.open_unix_connection(unix_path, limit=1 << 20)
    try:
        await reader.readline()  # hello
        writer.write((json.dumps({"type": "subscribe", "token": token}) + "\n").encode())
        await writer.drain()
        while line := await reader.readline():
            text = format_message(json.loads(line), now=time.time())
            if text:
                print(text, flush=True)
    finally:
        writer.close()
