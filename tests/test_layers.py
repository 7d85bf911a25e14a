"""The pure core imports no I/O library: checked in a fresh interpreter per module."""

from __future__ import annotations

import subprocess
import sys

import pytest

CORE = [
    "hallway.models",
    "hallway.keys",
    "hallway.events",
    "hallway.trace",
    "hallway.parsing",
    "hallway.identity",
    "hallway.proximity",
    "hallway.pipeline",
    "hallway.network",
    "hallway.codec",
    "hallway.filters",
    "hallway.session",
    "hallway.web.views",
]
FORBIDDEN = ["asyncio", "bleak", "aiosqlite", "zeroconf", "structlog", "dbus_fast", "sqlite3"]


@pytest.mark.parametrize("module", CORE)
def test_core_module_imports_no_io(module: str) -> None:
    code = (
        "import importlib, pkgutil, sys\n"
        f"m = importlib.import_module({module!r})\n"
        "if hasattr(m, '__path__'):\n"
        "    for info in pkgutil.walk_packages(m.__path__, m.__name__ + '.'):\n"
        "        importlib.import_module(info.name)\n"
        f"bad = [name for name in {FORBIDDEN!r} if name in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "", f"{module} pulls in {result.stdout.strip()}"
