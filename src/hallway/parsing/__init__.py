"""Pure parsers: advertisement fields to beacon frames (hallway-v1, EN, iBeacon, Eddystone)."""
