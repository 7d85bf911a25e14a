"""systemd's notify protocol (sd_notify) over $NOTIFY_SOCKET, without libsystemd.

``SystemdNotifier.from_environment()`` is inert when the daemon is not run by systemd (no
NOTIFY_SOCKET), so callers need no special case. ``watchdog_interval_s`` is half of
``WATCHDOG_USEC`` (systemd's advice), or None when no watchdog is configured.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

from hallway.logs import get_logger

log = get_logger(__name__)


class SystemdNotifier:
    """Sends READY=1, WATCHDOG=1, STATUS=… and STOPPING=1 datagrams; failures are logged once."""

    def __init__(self, address: str | None, *, watchdog_usec: int | None = None) -> None:
        self._address = address
        self._sock: socket.socket | None = None
        self._warned = False
        self.watchdog_interval_s = None if not watchdog_usec else watchdog_usec / 2e6
        if address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.setblocking(False)

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None) -> SystemdNotifier:
        """From NOTIFY_SOCKET / WATCHDOG_USEC / WATCHDOG_PID, as systemd sets them."""
        env = os.environ if env is None else env
        usec_text = env.get("WATCHDOG_USEC")
        pid_text = env.get("WATCHDOG_PID")
        usec = int(usec_text) if usec_text and usec_text.isdigit() else None
        if pid_text and pid_text.isdigit() and int(pid_text) != os.getpid():
            usec = None
        return cls(env.get("NOTIFY_SOCKET") or None, watchdog_usec=usec)

    @property
    def enabled(self) -> bool:
        """True when a notify socket was given."""
        return self._sock is not None

    def send(self, **fields: str | int) -> bool:
        """Send ``KEY=value`` lines (``ready=1`` becomes ``READY=1``); False if not delivered."""
        if self._sock is None or self._address is None:
            return False
        payload = "\n".join(f"{key.upper()}={value}" for key, value in fields.items())
        address = self._address
        if address.startswith("@"):
            address = "\0" + address[1:]
        try:
            self._sock.sendto(payload.encode(), address)
        except OSError as exc:
            if not self._warned:
                log.warning("systemd_notify_failed", error=exc.strerror or str(exc))
                self._warned = True
            return False
        self._warned = False
        return True

    def close(self) -> None:
        """Close the socket (idempotent)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
