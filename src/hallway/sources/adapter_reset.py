"""Resetting a Bluetooth controller below BlueZ: an rfkill soft-block cycle, else a USB reset.

The third step of the bleak source's recovery ladder (after rebuilding the scanner and
power-cycling the adapter through BlueZ). Both act on the kernel's device, found through
sysfs (``/sys/class/bluetooth/<hciN>``):

- **rfkill**: write a change event for the controller's rfkill switch to ``/dev/rfkill``
  (soft block, a pause, unblock), as ``rfkill block/unblock`` does. It needs write access to
  ``/dev/rfkill`` (root, or a udev rule giving a group access) and, under systemd, the
  device allowed (``DeviceAllow=/dev/rfkill rw``, no ``PrivateDevices=``).
- **USB reset**: ``ioctl(USBDEVFS_RESET)`` on the controller's ``/dev/bus/usb/BBB/DDD`` node,
  as ``usbreset`` does, for USB dongles without an rfkill switch. It needs write access to that
  node (root, or a udev rule for the dongle) and the device allowed under systemd.

Where neither is possible the reason is returned for the status line, so the operator knows
what the unit is missing; nothing here raises past ``ResetUnavailable``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import struct
from pathlib import Path

_RFKILL_EVENT = struct.Struct("<IBBBB")  # idx, type, op, soft, hard (linux/rfkill.h)
_RFKILL_OP_CHANGE = 2
_USBDEVFS_RESET = 0x5514  # _IO('U', 20)
_BLOCK_S = 1.0  # how long the radio stays soft-blocked


class ResetUnavailable(Exception):
    """No reset is possible here; the message says why (for status, doctor and the log)."""


def _denied(path: Path, exc: OSError, needs: str) -> ResetUnavailable:
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return ResetUnavailable(f"not permitted: cannot write {path} ({needs})")
    return ResetUnavailable(f"cannot open {path}: {exc.strerror or exc}")


def _rfkill_index(device: Path) -> int | None:
    for switch in sorted(device.glob("rfkill*")):
        with contextlib.suppress(OSError, ValueError):
            return int((switch / "index").read_text().strip())
    return None


def _usb_node(device: Path, dev: Path) -> Path | None:
    """The ``/dev/bus/usb`` node of the USB device the controller hangs off, if any."""
    try:
        here = (device / "device").resolve(strict=True)
    except OSError:
        return None
    for node in (here, *here.parents):
        busnum, devnum = node / "busnum", node / "devnum"
        if busnum.is_file() and devnum.is_file():
            try:
                bus, num = int(busnum.read_text()), int(devnum.read_text())
            except (OSError, ValueError):
                return None
            return dev / "bus" / "usb" / f"{bus:03d}" / f"{num:03d}"
        if node == Path("/") or node.name == "devices":
            break
    return None


def reset_method(adapter: str, *, sysfs: Path = Path("/sys"), dev: Path = Path("/dev")
                 ) -> str:
    """Which reset this process could do for ``adapter`` (looked at, nothing written), e.g.
    ``"rfkill 0 via /dev/rfkill"``; raises ``ResetUnavailable`` with the reason otherwise."""
    device = sysfs / "class" / "bluetooth" / adapter
    if not device.exists():
        raise ResetUnavailable(f"no {device}: the adapter is not a kernel device on this host")
    reasons = []
    index = _rfkill_index(device)
    if index is not None:
        path = dev / "rfkill"
        if os.access(path, os.W_OK):
            return f"rfkill {index} via {path}"
        reasons.append(f"not permitted: cannot write {path} (root or a udev rule, and "
                       "DeviceAllow=/dev/rfkill rw)")
    node = _usb_node(device, dev)
    if node is not None:
        if os.access(node, os.W_OK):
            return f"USB reset via {node}"
        reasons.append(f"not permitted: cannot write {node} (root or a udev rule for the "
                       "dongle, and DeviceAllow for it)")
    if not reasons:
        reasons.append(f"{adapter} has neither an rfkill switch nor a USB parent")
    raise ResetUnavailable("; ".join(reasons))


async def reset_adapter(adapter: str, *, sysfs: Path = Path("/sys"),
                        dev: Path = Path("/dev")) -> str:
    """Reset ``adapter`` (``hci0``) below BlueZ; return what was done. Raises
    ``ResetUnavailable`` (with the reason) when no method is present or permitted."""
    device = sysfs / "class" / "bluetooth" / adapter
    if not device.exists():
        raise ResetUnavailable(f"no {device}: the adapter is not a kernel device on this host")
    reasons: list[str] = []
    index = _rfkill_index(device)
    if index is not None:
        path = dev / "rfkill"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            reasons.append(str(_denied(path, exc, "root or a udev rule, and "
                                                  "DeviceAllow=/dev/rfkill rw")))
        else:
            try:
                os.write(fd, _RFKILL_EVENT.pack(index, 0, _RFKILL_OP_CHANGE, 1, 0))
                await asyncio.sleep(_BLOCK_S)
                os.write(fd, _RFKILL_EVENT.pack(index, 0, _RFKILL_OP_CHANGE, 0, 0))
            except OSError as exc:
                reasons.append(f"rfkill write failed: {exc.strerror or exc}")
            else:
                return f"rfkill {index} soft-blocked and unblocked"
            finally:
                os.close(fd)
    node = _usb_node(device, dev)
    if node is not None:
        try:
            fd = os.open(node, os.O_WRONLY)
        except OSError as exc:
            reasons.append(str(_denied(node, exc, "root or a udev rule for the dongle, and "
                                                  "DeviceAllow for it")))
        else:
            try:
                fcntl.ioctl(fd, _USBDEVFS_RESET, 0)
            except OSError as exc:
                reasons.append(f"USB reset failed: {exc.strerror or exc}")
            else:
                return f"USB device {node.parent.name}/{node.name} reset"
            finally:
                os.close(fd)
    if not reasons:
        reasons.append(f"{adapter} has neither an rfkill switch nor a USB parent")
    raise ResetUnavailable("; ".join(reasons))
