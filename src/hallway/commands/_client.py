"""What the socket clients (``status``, ``calibrate``, ``tail``) share: where the local daemon
listens, its token, and one request/reply exchange."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from hallway.commands._common import state_dir
from hallway.config import Config

ENV_TOKEN = "HALLWAY_TOKEN"  # noqa: S105 - the name of a variable, not a secret

Target = tuple[str, Any]  # ("unix", path) or ("tcp", (host, port))


def split_host_port(text: str, *, prog: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) from ``--connect``; SystemExit naming ``prog``."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise SystemExit(f"hallway {prog}: --connect wants HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def add_target_options(parser: argparse.ArgumentParser) -> None:
    """--unix / --connect / --token, as ``target`` and ``token`` read them."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--unix", metavar="PATH", help="the daemon's Unix socket")
    where.add_argument("--connect", metavar="HOST:PORT", help="the daemon's TCP address")
    parser.add_argument("--token", help=f"subscriber token (default: ${ENV_TOKEN} or config)")


def target(args: argparse.Namespace, config: Config | None, *, prog: str) -> Target | None:
    """The socket named by --unix/--connect, else the config's Unix socket (where it exists)
    or its TCP address; None when the config enables neither."""
    if args.unix:
        return ("unix", args.unix)
    if args.connect:
        return ("tcp", split_host_port(args.connect, prog=prog))
    assert config is not None
    server = config.server
    if server.unix_socket and Path(server.unix_socket).exists():
        return ("unix", server.unix_socket)
    if server.tcp_enabled:
        host = "127.0.0.1" if server.tcp_host in ("0.0.0.0", "") else server.tcp_host
        host = "::1" if host == "::" else host
        return ("tcp", (host, server.tcp_port))
    if server.unix_socket:
        return ("unix", server.unix_socket)
    return None


def describe(where: Target) -> str:
    """A target as a person writes it."""
    return str(where[1]) if where[0] == "unix" else "{}:{}".format(*where[1])


def token(args: argparse.Namespace, config: Config | None) -> str | None:
    """--token, else $HALLWAY_TOKEN, else the config's first token (or the generated one)."""
    given: str | None = args.token or os.environ.get(ENV_TOKEN)
    if given is not None or config is None:
        return given
    return config_token(config)


def config_token(config: Config) -> str | None:
    """The config's first token, or the one the daemon generated in its state directory."""
    from hallway.errors import ConfigError
    from hallway.server import load_tokens

    try:
        tokens = load_tokens(config.server, state_dir=state_dir(config), create=False)
    except (ConfigError, OSError):
        return None
    return tokens[0] if tokens else None


async def ask(where: Target, request: dict[str, Any], secret: str | None, *,
              answers: tuple[str, ...], timeout_s: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """Connect, read hello, send ``request`` (with the token), return (hello, the first reply
    whose type is in ``answers`` or ``error``); ValueError on anything that is not hallway."""
    import asyncio
    import contextlib

    async with asyncio.timeout(timeout_s):
        if where[0] == "unix":
            reader, writer = await asyncio.open_unix_connection(where[1])
        else:
            reader, writer = await asyncio.open_connection(*where[1])
        try:
            hello = read_json(await reader.readline())
            if hello.get("type") != "hello":
                raise ValueError("this is not a hallway socket (no hello)")
            if secret is not None:
                request = {**request, "token": secret}
            writer.write(json.dumps(request).encode() + b"\n")
            await writer.drain()
            while True:
                reply = read_json(await reader.readline())
                if reply.get("type") in answers or reply.get("type") == "error":
                    return hello, reply
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


def read_json(line: bytes) -> dict[str, Any]:
    """One server line as a JSON object; ValueError saying what is wrong with it."""
    if not line:
        raise ValueError("the connection closed without an answer")
    try:
        value = json.loads(line)
    except ValueError:
        raise ValueError("the answer is not JSON") from None
    if not isinstance(value, dict):
        raise ValueError("the answer is not a JSON object")
    return value
