"""The reset step below BlueZ, on a stand-in sysfs and /dev: which method is chosen, which
device node a USB dongle's reset goes to, and what the status line says when it cannot."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from hallway.sources.adapter_reset import ResetUnavailable, reset_adapter, reset_method


def _usb_dongle(root: Path, *, bus: int, devnum: int) -> tuple[Path, Path]:
    """hci0 on a USB interface of device ``bus``-``devnum`` (as the kernel lays it out)."""
    sysfs, dev = root / "sys", root / "dev"
    usb_device = sysfs / "devices" / "pci0000:00" / f"usb{bus}" / f"{bus}-1"
    interface = usb_device / f"{bus}-1:1.0"
    interface.mkdir(parents=True)
    (usb_device / "busnum").write_text(f"{bus}\n")
    (usb_device / "devnum").write_text(f"{devnum}\n")
    hci = sysfs / "class" / "bluetooth" / "hci0"
    hci.mkdir(parents=True)
    (hci / "device").symlink_to(interface)
    node = dev / "bus" / "usb" / f"{bus:03d}" / f"{devnum:03d}"
    node.parent.mkdir(parents=True)
    node.write_bytes(b"")  # a plain file: the reset ioctl is refused, as on no real dongle
    return sysfs, dev


async def test_a_usb_dongle_without_rfkill_is_reset_through_its_bus_node(tmp_path: Path) -> None:
    sysfs, dev = _usb_dongle(tmp_path, bus=3, devnum=7)
    node = dev / "bus" / "usb" / "003" / "007"
    assert reset_method("hci0", sysfs=sysfs, dev=dev) == f"USB reset via {node}"
    # The ioctl reaches the node the sysfs walk found; a plain file refuses it, and the
    # reason names what failed instead of raising anything else.
    with pytest.raises(ResetUnavailable, match="USB reset failed"):
        await reset_adapter("hci0", sysfs=sysfs, dev=dev)


async def test_rfkill_comes_first_and_writes_a_block_then_an_unblock(tmp_path: Path) -> None:
    sysfs, dev = _usb_dongle(tmp_path, bus=1, devnum=2)
    switch = sysfs / "class" / "bluetooth" / "hci0" / "rfkill4"
    switch.mkdir()
    (switch / "index").write_text("4\n")
    (dev / "rfkill").write_bytes(b"")
    assert reset_method("hci0", sysfs=sysfs, dev=dev) == f"rfkill 4 via {dev / 'rfkill'}"
    assert await reset_adapter("hci0", sysfs=sysfs, dev=dev) == \
        "rfkill 4 soft-blocked and unblocked"
    events = (dev / "rfkill").read_bytes()
    layout = struct.Struct("<IBBBB")  # idx, type, op, soft, hard
    assert [layout.unpack_from(events, k * layout.size) for k in range(2)] == [
        (4, 0, 2, 1, 0), (4, 0, 2, 0, 0)]


async def test_no_kernel_device_or_no_way_to_reset_says_why(tmp_path: Path) -> None:
    with pytest.raises(ResetUnavailable, match="not a kernel device"):
        reset_method("hci0", sysfs=tmp_path / "sys", dev=tmp_path / "dev")
    hci = tmp_path / "sys" / "class" / "bluetooth" / "hci0"
    hci.mkdir(parents=True)
    with pytest.raises(ResetUnavailable, match="neither an rfkill switch nor a USB parent"):
        await reset_adapter("hci0", sysfs=tmp_path / "sys", dev=tmp_path / "dev")
