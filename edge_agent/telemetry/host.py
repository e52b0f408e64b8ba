"""Host readings for the ``system`` record that not every platform has."""

import math
from collections.abc import Mapping, Sequence
from typing import Any

import psutil

# Readings outside what silicon survives (-55..150 °C) are broken sensors (e.g. 3276.7 or
# -273), not heat: they are skipped rather than reported as the device's temperature.
PLAUSIBLE_C = (-55.0, 150.0)


def hottest_c(sensors: Mapping[str, Sequence[Any]]) -> float | None:
    """The highest plausible ``current`` reading among psutil's temperature entries."""
    values = [
        float(entry.current)
        for entries in sensors.values()
        for entry in entries
        if isinstance(entry.current, int | float)
        and math.isfinite(entry.current)
        and PLAUSIBLE_C[0] <= entry.current <= PLAUSIBLE_C[1]
    ]
    return round(max(values), 1) if values else None


def max_temperature_c() -> float | None:
    """The hottest plausible sensor psutil reports, in degrees Celsius; None where the
    platform has no sensors API or no sensor answers (containers, most VMs, macOS)."""
    read = getattr(psutil, "sensors_temperatures", None)
    if read is None:
        return None
    try:
        return hottest_c(read())
    except (OSError, RuntimeError):  # unreadable sysfs entries must not cost the record
        return None


__all__ = ["PLAUSIBLE_C", "hottest_c", "max_temperature_c"]
