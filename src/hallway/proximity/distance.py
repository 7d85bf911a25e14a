"""The log-distance path-loss model: ``rssi = P(1 m) - 10·n·log10(d)``."""

from __future__ import annotations

import math


def distance_m(rssi_dbm: float, *, measured_power_dbm: float, exponent: float) -> float:
    """Distance (m) at which the model gives ``rssi_dbm`` for a device with that 1 m power."""
    return float(10.0 ** ((measured_power_dbm - rssi_dbm) / (10.0 * exponent)))


def rssi_at(distance: float, *, measured_power_dbm: float, exponent: float) -> float:
    """The model's RSSI (dBm) at ``distance`` metres; the inverse of ``distance_m``."""
    return measured_power_dbm - 10.0 * exponent * math.log10(max(distance, 1e-3))


def db_factor(db: float, *, exponent: float) -> float:
    """The distance ratio that a level difference of ``db`` decibels stands for."""
    return float(10.0 ** (db / (10.0 * exponent)))


def correction_db(calibration_db: float, *, true_m: float, read_m: float,
                  exponent: float) -> float:
    """The calibration that makes a contact read ``true_m`` where it read ``read_m`` with
    ``calibration_db`` (log-distance model with ``exponent``)."""
    return calibration_db + 10.0 * exponent * math.log10(true_m / read_m)
