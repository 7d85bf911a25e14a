"""Finding daemons by mDNS (``_hallway._tcp``): candidates only, never trusted with a token.

Anyone on the network can announce ``_hallway._tcp``. So a discovered daemon is a
``Candidate``: where something claims to be, and what its TXT record says. To subscribe to
one, an app gives the token *and* the certificate fingerprint it was handed with the token
(``Candidate.target(token=..., fingerprint=...)``); the TLS handshake must prove that
certificate before the token is sent. A candidate whose TXT says ``tls=0`` cannot prove
anything: name the host yourself if you trust it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Sequence

from hallway.client._target import SERVICE_TYPE, Candidate


async def discover(*, browse_s: float = 3.0, interfaces: Sequence[str] = (),
                   name: str | None = None, names: Collection[str] = ()) -> list[Candidate]:
    """The daemons announced by mDNS within ``browse_s`` (IPv4), sorted by name.

    ``interfaces``: local addresses to browse on (default all). ``name`` (or several,
    ``names``): return only the instances with these names, and stop browsing as soon as all
    of them have been seen."""
    # zeroconf is imported only by apps that browse (it costs ~0.1 s at import).
    from zeroconf import IPVersion, ServiceStateChange, Zeroconf  # noqa: PLC0415
    from zeroconf.asyncio import (  # noqa: PLC0415
        AsyncServiceBrowser,
        AsyncServiceInfo,
        AsyncZeroconf,
    )

    found: dict[str, None] = {}
    seen = asyncio.Event()
    wanted = {f"{one}.{SERVICE_TYPE}" for one in ([] if name is None else [name]) + [*names]}

    def on_change(zeroconf: Zeroconf, service_type: str, name: str,
                  state_change: ServiceStateChange) -> None:
        if state_change is not ServiceStateChange.Removed:
            found[name] = None
            if wanted and wanted <= found.keys():
                seen.set()

    if interfaces:
        zc = AsyncZeroconf(interfaces=list(interfaces), ip_version=IPVersion.V4Only)
    else:
        zc = AsyncZeroconf(ip_version=IPVersion.V4Only)
    candidates: list[Candidate] = []
    try:
        browser = AsyncServiceBrowser(zc.zeroconf, SERVICE_TYPE, handlers=[on_change])
        try:
            if wanted:
                try:
                    async with asyncio.timeout(browse_s):
                        await seen.wait()
                except TimeoutError:
                    pass
            else:
                await asyncio.sleep(browse_s)
        finally:
            await browser.async_cancel()
        for full in sorted(found):
            if wanted and full not in wanted:
                continue
            info = AsyncServiceInfo(SERVICE_TYPE, full)
            if not await info.async_request(zc.zeroconf, 3000) or info.port is None:
                continue
            addresses = info.parsed_addresses(IPVersion.V4Only) or info.parsed_addresses()
            if not addresses:
                continue
            properties = {
                key.decode(errors="replace"): (value or b"").decode(errors="replace")
                for key, value in info.properties.items()
            }
            candidates.append(Candidate(name=full[: -len(SERVICE_TYPE) - 1], host=addresses[0],
                                        port=info.port, properties=properties))
    finally:
        await zc.async_close()
    return candidates
