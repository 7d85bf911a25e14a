"""Files that hold secrets (the database with every key and IRK, contact exports, enrollment
QR codes): created 0600 from the first byte, whatever the umask."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import IO, Any

PRIVATE_MODE = 0o600


def _open_fd(path: str | Path, flags: int) -> int:
    fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0), PRIVATE_MODE)
    try:
        os.fchmod(fd, PRIVATE_MODE)  # the umask may have taken bits, an old file had others
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_private(path: str | Path, mode: str = "w", **kwargs: Any) -> IO[Any]:
    """Open ``path`` for writing (truncated), mode 0600 before anything is written.

    ``mode`` is ``"w"`` or ``"wb"``; ``kwargs`` go to ``open`` (encoding, newline)."""
    if mode not in ("w", "wb"):
        raise ValueError(f"open_private writes only ('w' or 'wb'), not {mode!r}")
    fd = _open_fd(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    return os.fdopen(fd, mode, **kwargs)


def create_private(path: str | Path) -> bool:
    """Create ``path`` empty with mode 0600 if it does not exist; True if it was created."""
    try:
        fd = _open_fd(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    except FileExistsError:
        return False
    os.close(fd)
    return True


def loose_bits(path: str | Path) -> int | None:
    """The permission bits beyond owner read/write (0 for a private file); None if absent."""
    with contextlib.suppress(FileNotFoundError):
        return os.stat(path).st_mode & 0o777 & ~PRIVATE_MODE
    return None
