"""Helpers shared by subcommands: config and store from the common options."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from hallway.config import Config, find_config_path, load_config
from hallway.logs import configure_logging


def config_from_args(args: argparse.Namespace, *, setup_logging: bool = True) -> Config:
    """The config every command uses: ``--config``, else ``$HALLWAY_CONFIG``, else the
    installed ``/etc/hallway/config.toml`` when it exists, else the built-in defaults; with
    ``--db`` applied."""
    config = load_config(find_config_path(getattr(args, "config", None)))
    db = getattr(args, "db", None)
    if db:
        storage = config.storage.model_copy(update={"database": str(Path(db))})
        config = config.model_copy(update={"storage": storage})
    if setup_logging:
        configure_logging(config.logging)
    return config


def state_dir(config: Config) -> Path:
    """The daemon's state directory: systemd's ``$STATE_DIRECTORY`` (its first entry), else
    the folder of the configured database."""
    env = os.environ.get("STATE_DIRECTORY")
    if env:
        return Path(env.split(":")[0])
    return Path(config.storage.database).resolve().parent
