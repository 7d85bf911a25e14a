"""Test doubles that ship with hallway (used by its tests, benchmarks and ``hallway doctor``)."""
