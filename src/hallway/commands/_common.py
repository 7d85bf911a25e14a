"""Helpers shared by subcommands: config and store from the common options."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from hallway.config import ENV_CONFIG, Config, load_config
from hallway.logs import configure_logging


def config_from_args(args: argparse.Namespace, *, setup_logging: bool = True) -> Config:
    """The config named by ``--config`` (or ``$HALLWAY_CONFIG``), with ``--db`` applied."""
    path = getattr(args, "config", None) or os.environ.get(ENV_CONFIG) or None
    config = load_config(path)
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
