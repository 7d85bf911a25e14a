"""Check-in over GATT (SPEC §3.1): the scanner as a peripheral, its guard and a reference
central. ``guard`` is pure; ``peripheral`` (dbus-fast) and ``central`` (bleak) are edges."""
