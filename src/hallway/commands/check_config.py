"""``hallway check-config [FILE]``: validate a config and print the effective values."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from hallway.config import ENV_CONFIG, load_config


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``check-config``."""
    parser = sub.add_parser(
        "check-config", help="validate a config file and print the effective config"
    )
    parser.add_argument("file", nargs="?", help="config file (default: $HALLWAY_CONFIG)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the effective config (secrets masked); errors exit 78 via the CLI."""
    path = args.file or os.environ.get(ENV_CONFIG)
    config = load_config(path)
    print(json.dumps(config.masked(), indent=2))
    print(f"{path or 'built-in defaults'}: OK")
    return 0
