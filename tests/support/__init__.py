"""Test doubles for hallway's tests and benchmarks (not shipped in the wheel): a fake BlueZ on a
private D-Bus (``fakebluez``), private mosquitto brokers (``mosquitto``) and a venue of
scanner daemons around a broker (``venue_rig``)."""
