"""Advertisement sources: the radio (bleak/BlueZ), a trace file, or a simulated venue.

All of them follow ``AdvertisementSource`` and feed a bounded ``Handoff``; ``make_source``
builds the one named by ``scanner.source``. Heavy imports (bleak, dbus-fast) happen only when
the bleak source is built.
"""

from __future__ import annotations

import os

from hallway.config import Config
from hallway.errors import SourceError
from hallway.sources.base import AdvertisementSource, Handoff, SourceState

__all__ = ["AdvertisementSource", "Handoff", "SourceState", "make_source"]


def make_source(config: Config) -> AdvertisementSource:
    """The source ``config.scanner.source`` names; SourceError if it cannot be built."""
    scanner = config.scanner
    if scanner.source == "bleak":
        from pathlib import Path  # noqa: PLC0415

        from hallway.sources.bleak import BleakSource  # noqa: PLC0415 - bleak only when used

        # Test hooks: where the recovery ladder's reset looks for sysfs and /dev (a bench or
        # test points them at a stand-in tree; see hallway.sources.adapter_reset).
        return BleakSource(scanner, company_id=config.identity.hallway_company_id,
                           sysfs=Path(os.environ.get("HALLWAY_TEST_SYSFS", "/sys")),
                           dev=Path(os.environ.get("HALLWAY_TEST_DEV", "/dev")))
    if scanner.source == "replay":
        from hallway.sources.replay import ReplaySource  # noqa: PLC0415

        if not scanner.trace:
            raise SourceError("scanner.source = 'replay' needs scanner.trace (a trace file)")
        return ReplaySource(scanner.trace, name=f"replay:{scanner.name}")
    from hallway.sources.simulated import SimulatedSource  # noqa: PLC0415

    return SimulatedSource(scanner.scenario, seed=scanner.seed, name=f"simulator:{scanner.name}")
