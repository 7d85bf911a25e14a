"""Subcommands of the ``hallway`` CLI; each module has ``register`` and ``run``."""
