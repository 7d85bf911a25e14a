"""What the socket clients (``tail``, ``status``, ``calibrate``) share: which daemon, which
token, and printing what a server sent without letting it drive the terminal.

Where: ``--uri``/``--uri-file``/``$HALLWAY_URI`` (``hallway://HOST:PORT?token=…&fp=sha256:…``),
``--unix PATH``, ``--connect HOST:PORT``, else the config's own sockets. The token:
``--token-file``, ``$HALLWAY_TOKEN``, the URI's, or ``--token`` (which warns: other users see
command lines in ``ps``). The config's token (or the one the daemon generated) goes only to the
config's own sockets, or to a loopback address or Unix socket named on the command line: never
to another host, and never to a daemon that was only found by mDNS.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

from hallway.client import Target, TargetError, parse_fingerprint, parse_target, parse_uri
from hallway.commands._common import state_dir
from hallway.config import Config, is_loopback_host

ENV_TOKEN = "HALLWAY_TOKEN"  # noqa: S105 - the name of a variable, not a secret
ENV_URI = "HALLWAY_URI"

_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def clean(text: str) -> str:
    """``text`` without C0/C1 control characters (tabs and newlines kept), so nothing a server
    sends can move the cursor, retitle the terminal or clear the screen."""
    return _CONTROL.sub("", text)


def add_target_options(parser: argparse.ArgumentParser) -> None:
    """--uri/--uri-file/--unix/--connect, --token-file/--token, --fingerprint."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--uri", metavar="URI",
                       help="hallway://HOST:PORT?token=…&fp=sha256:… (prefer --uri-file or "
                       f"${ENV_URI}: a token on the command line shows in ps)")
    where.add_argument("--uri-file", metavar="FILE", help="a file holding the hallway:// URI")
    where.add_argument("--unix", metavar="PATH", help="the daemon's Unix socket")
    where.add_argument("--connect", metavar="HOST:PORT", help="the daemon's TCP address")
    parser.add_argument("--token-file", metavar="FILE", help="a file holding the token")
    parser.add_argument("--token", help=f"the token (shows in ps: prefer --token-file or "
                        f"${ENV_TOKEN})")
    parser.add_argument("--fingerprint", metavar="sha256:HEX",
                        help="the daemon's TLS certificate fingerprint to pin (implies TLS)")


def _fail(prog: str, message: str) -> SystemExit:
    return SystemExit(f"hallway {prog}: {message}")


def _read_secret_file(path: str, prog: str, what: str) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise _fail(prog, f"cannot read {what} {path}: {exc.strerror or exc}") from None
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            return line
    raise _fail(prog, f"{path} holds no {what}")


def named_target(args: argparse.Namespace, *, prog: str) -> Target | None:
    """The daemon named on the command line or in ``$HALLWAY_URI`` (None: none named)."""
    try:
        if args.uri:
            target = parse_uri(args.uri)
            if target.token is not None:
                print(f"hallway {prog}: warning: the token in --uri is visible to other users "
                      f"(ps); use --uri-file or ${ENV_URI}", file=sys.stderr)
        elif args.uri_file:
            target = parse_uri(_read_secret_file(args.uri_file, prog, "URI"))
        elif args.unix:
            target = Target(path=args.unix)
        elif args.connect:
            target = parse_target(args.connect)
            if target.path is not None or target.fingerprint is not None:
                raise TargetError(f"--connect wants HOST:PORT, got {args.connect!r}")
        elif os.environ.get(ENV_URI):
            target = parse_uri(os.environ[ENV_URI])
        else:
            return None
        if args.fingerprint:
            target = target.with_secrets(fingerprint=parse_fingerprint(args.fingerprint))
    except TargetError as exc:
        raise _fail(prog, str(exc)) from None
    if target.path is not None and target.fingerprint is not None:
        raise _fail(prog, "a Unix socket has no certificate to pin")
    return target


def given_token(args: argparse.Namespace, *, prog: str) -> str | None:
    """The token from --token-file, $HALLWAY_TOKEN or --token (warning about the last)."""
    if args.token_file:
        return _read_secret_file(args.token_file, prog, "token")
    if os.environ.get(ENV_TOKEN):
        return os.environ[ENV_TOKEN]
    if args.token:
        print(f"hallway {prog}: warning: --token is visible to other users (ps); use "
              f"--token-file or ${ENV_TOKEN}", file=sys.stderr)
        return str(args.token)
    return None


def config_target(config: Config) -> Target | None:
    """The config's Unix socket (where it exists) or its TCP address; None with neither."""
    server = config.server
    if server.unix_socket and Path(server.unix_socket).exists():
        return Target(path=server.unix_socket)
    if server.tcp_enabled:
        host = "127.0.0.1" if server.tcp_host in ("0.0.0.0", "") else server.tcp_host
        host = "::1" if host == "::" else host
        return Target(host=host, port=server.tcp_port)
    if server.unix_socket:
        return Target(path=server.unix_socket)
    return None


def is_local(target: Target) -> bool:
    """A Unix socket or a loopback address: where the config's token may go."""
    return target.path is not None or (target.host is not None and is_loopback_host(target.host))


def config_token(config: Config) -> str | None:
    """The config's first token, or the one the daemon generated in its state directory."""
    from hallway.errors import ConfigError
    from hallway.server import load_tokens

    try:
        tokens = load_tokens(config.server, state_dir=state_dir(config), create=False)
    except (ConfigError, OSError):
        return None
    return tokens[0] if tokens else None


def resolve(args: argparse.Namespace, *, prog: str,
            config: Config | None = None) -> tuple[Target | None, Config | None]:
    """The daemon to ask, with its token: named, else the config's own (loading the config
    only where needed). Returns (None, config) when the config enables neither socket."""
    from hallway.config import find_config_path, load_config

    target = named_target(args, prog=prog)
    token = given_token(args, prog=prog)
    if target is None or (token is None and target.token is None and is_local(target)):
        if config is None:
            config = load_config(find_config_path(args.config))
        if target is None:
            target = config_target(config)
            if target is None:
                return None, config
        token = token or config_token(config)
    if token is not None:
        target = target.with_secrets(token=token)
    return target, config
