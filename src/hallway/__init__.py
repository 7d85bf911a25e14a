"""hallway: which of your opted-in contacts are in the room, from Bluetooth LE advertisements."""

__version__ = "0.1.0"
