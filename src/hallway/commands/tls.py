"""``hallway tls show``: the TCP socket's certificate fingerprint and the connection URI."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from hallway.commands._common import config_from_args, state_dir


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add the ``tls`` command tree."""
    parser = sub.add_parser("tls", help="the TCP socket's TLS certificate", parents=[common])
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = actions.add_parser(
        "show", parents=[common],
        help="print the certificate's SHA-256 fingerprint and the connection URI "
             "(makes the self-signed certificate if the daemon has not yet)")
    p.add_argument("--host", help="host name for the URI (default: tcp_host, or this "
                   "machine's name when it listens on every address)")
    p.add_argument("--with-token", action="store_true",
                   help="put the config's subscriber token in the URI (it is a secret: "
                   "hand it over as a file or QR code, not in a chat or a command line)")
    p.set_defaults(func=run_show)


def run_show(args: argparse.Namespace) -> int:
    """Print ``certificate``, ``fingerprint`` and ``uri`` lines."""
    from hallway.server import load_tokens
    from hallway.tls import advertised_host, certificate_fingerprint, connection_uri

    config = config_from_args(args)
    server = config.server
    if not server.tls:
        print("hallway: server.tls is off in this config; the TCP socket serves plain TCP",
              file=sys.stderr)
        return 1
    folder = state_dir(config)
    cert, fingerprint = certificate_fingerprint(server, folder)
    token = None
    if args.with_token:
        tokens = load_tokens(server, state_dir=folder, create=False)
        token = tokens[0] if tokens else None
    host = args.host or advertised_host(server)
    print(f"certificate: {cert}")
    print(f"fingerprint: {fingerprint}")
    print(f"uri: {connection_uri(host, server.tcp_port, token=token, fingerprint=fingerprint)}")
    return 0
