"""DNS-SD announcement of the TCP event socket (SPEC §7) through python-zeroconf.

The record is ``<instance>._hallway._tcp.local.`` with the TCP port in SRV, the host's real
addresses (never a wildcard) and the TXT keys of SPEC §7. If another responder already holds
the instance name, ours becomes ``Name-2`` (then ``-3``...); that name is kept for the rest of
the run, also when the record is re-announced. Each candidate name is first asked for with a
multicast (QM) question, because zeroconf's own probes are QU questions: a defender that
multicast its record recently answers them by unicast to port 5353, and when several responders
share that port on one host (two daemons, or a daemon beside its tests) the kernel hands the
answer to only one of them, often not the prober. A multicast answer reaches every one.
The SRV target host name is derived from the instance name (which probing made unique), not
from the machine: cloned machines share host names and machine ids, and merged address records
would send clients to the wrong host.
Addresses are polled: when they change, the sockets and the record are updated. ``close``
sends goodbye packets.

Which addresses: those of ``mdns.interfaces`` (interface names or IP literals), else every
non-loopback address of the host; narrowed to the TCP listener's own address when it listens
on one address. A host with nothing but loopback announces loopback (useful only locally).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import re
from collections.abc import Sequence
from typing import Any

import ifaddr
from zeroconf import (
    BadTypeInNameException,
    DNSQuestionType,
    IPVersion,
    NonUniqueNameException,
)
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from hallway.config import MdnsConfig
from hallway.errors import HallwayError
from hallway.logs import get_logger

log = get_logger(__name__)

SERVICE_TYPE = "_hallway._tcp.local."
MAX_LABEL_BYTES = 58
"""DNS labels hold 63 bytes; room is left for zeroconf's ``-N`` suffix on a name clash."""
REGISTER_TIMEOUT_S = 10.0
NAME_CHECK_MS = 1500
"""How long a candidate name's multicast question waits for a defender: an answer comes within
20-120 ms, but one second later when the defender multicast the record in the last second
(RFC 6762 §14), as it does right after its own registration."""
MAX_RENAMES = 30
GOODBYE_TIMEOUT_S = 3.0
WILDCARDS = frozenset({"", "0.0.0.0", "::", "*"})


def _truncate_label(text: str, limit: int = MAX_LABEL_BYTES) -> str:
    data = text.strip().encode()[:limit]
    return data.decode("utf-8", errors="ignore").strip() or "hallway"


def server_name(instance: str) -> str:
    """The SRV target for an instance: a readable label plus a hash of the full name."""
    label = re.sub(r"[^A-Za-z0-9-]+", "-", instance).strip("-")[:40] or "hallway"
    digest = hashlib.sha256(instance.encode()).hexdigest()[:8]
    return f"{label}-{digest}.local."


def _txt_value(key: str, value: str) -> str:
    """Keep ``key=value`` within one 255-byte TXT string."""
    room = 255 - len(key.encode()) - 1
    return value.encode()[:room].decode("utf-8", errors="ignore")


def host_addresses(
    interfaces: Sequence[str], *, bind_host: str | None
) -> tuple[list[str], list[str]]:
    """(IPv4 addresses for zeroconf's sockets, addresses to put in the record), sorted."""
    adapters = ifaddr.get_adapters()
    v4: set[str] = set()
    v6: set[str] = set()

    def add(ip: str) -> None:
        address = ipaddress.ip_address(ip.split("%", maxsplit=1)[0])
        if address.version == 4:
            v4.add(str(address))
        elif not address.is_link_local:
            v6.add(str(address))

    wanted = list(interfaces)
    for adapter in adapters:
        chosen = not wanted or adapter.nice_name in wanted or adapter.name in wanted
        for ip in adapter.ips:
            text = ip.ip if isinstance(ip.ip, str) else ip.ip[0]
            literal = text in wanted
            if not (chosen or literal):
                continue
            if not wanted and ipaddress.ip_address(text.split("%")[0]).is_loopback:
                continue
            add(text)
    for item in wanted:  # literals not (yet) on any adapter are still honoured
        with contextlib.suppress(ValueError):
            add(item)
    announced = sorted(v4) + sorted(v6)
    if bind_host is not None and bind_host not in WILDCARDS:
        with contextlib.suppress(ValueError):
            bound = str(ipaddress.ip_address(bind_host.strip("[]")))
            announced = [bound]
            if ipaddress.ip_address(bound).version == 4 and (bound not in v4 or not wanted):
                v4 = {bound}
    elif bind_host in {"0.0.0.0", ""}:
        announced = sorted(v4)
    if not announced:
        announced, v4 = ["127.0.0.1"], {"127.0.0.1"}
    return sorted(v4) or ["127.0.0.1"], announced


class ZeroconfAnnouncer:
    """Registers ``_hallway._tcp`` for the event socket and keeps the record current."""

    def __init__(
        self,
        config: MdnsConfig,
        *,
        scanner: str,
        port: int,
        auth: str,
        tls: bool = False,
        role: str | None = None,
        host: str | None = None,
        address_poll_s: float = 10.0,
    ) -> None:
        self._config = config
        self._port = port
        self._host = host
        self._poll_s = address_poll_s
        self._name = _truncate_label(config.instance_name or scanner)
        properties = {"txtvers": "1", "protovers": "1", "scanner": scanner, "auth": auth,
                      "tls": "1" if tls else "0"}
        if config.venue:
            properties["venue"] = config.venue
        if role:
            properties["role"] = role
        self._properties = {k: _txt_value(k, v) for k, v in properties.items()}
        self._zc: AsyncZeroconf | None = None
        self._info: AsyncServiceInfo | None = None
        self._interfaces: list[str] = []
        self._addresses: list[str] = []
        self._watcher: asyncio.Task[None] | None = None
        self._started = False
        self._closed = False
        self.updates = 0

    @property
    def name(self) -> str:
        """The instance name: as registered (possibly renamed on a clash) once started."""
        return self._name

    @property
    def addresses(self) -> list[str]:
        """The addresses in the record."""
        return list(self._addresses)

    def _make_info(self, name: str | None = None) -> AsyncServiceInfo:
        instance = self._name if name is None else name
        return AsyncServiceInfo(
            SERVICE_TYPE,
            f"{instance}.{SERVICE_TYPE}",
            port=self._port,
            properties=self._properties,
            server=server_name(instance),
            parsed_addresses=self._addresses,
        )

    async def start(self) -> None:
        """Open the mDNS sockets and register (probing for name clashes; about 1.5 s)."""
        if self._started:
            return
        self._started = True
        self._interfaces, self._addresses = host_addresses(
            self._config.interfaces, bind_host=self._host
        )
        await self._register()
        self._watcher = asyncio.create_task(self._watch(), name="hallway-mdns-addresses")

    async def _register(self) -> None:
        try:
            self._zc = AsyncZeroconf(interfaces=list(self._interfaces), ip_version=IPVersion.V4Only)
        except OSError as exc:
            raise HallwayError(f"mDNS: cannot open sockets: {exc.strerror or exc}") from None
        for number in range(1, MAX_RENAMES + 1):
            name = self._name if number == 1 else f"{self._name}-{number}"
            info = self._make_info(name)
            if await self._answered_elsewhere(name):
                log.debug("mdns_name_taken", name=name)
                continue
            try:
                async with asyncio.timeout(REGISTER_TIMEOUT_S):
                    await (await self._zc.async_register_service(info))
            except NonUniqueNameException:
                log.debug("mdns_name_taken", name=name)
                continue
            except BadTypeInNameException as exc:
                raise HallwayError(f"mDNS: cannot register {name!r}: {exc}") from None
            except TimeoutError:
                raise HallwayError("mDNS: registration timed out") from None
            break
        else:
            raise HallwayError(f"mDNS: {self._name!r} and {MAX_RENAMES - 1} variants are taken")
        self._info = info
        if name != self._name:
            log.warning("mdns_renamed", wanted=self._name, name=name)
            self._name = name
        log.info("mdns_registered", name=self._name, port=self._port, addresses=self._addresses)

    async def _answered_elsewhere(self, name: str) -> bool:
        """Whether another responder answers a multicast question for ``name``'s SRV."""
        zc = self._zc
        assert zc is not None
        probe = AsyncServiceInfo(SERVICE_TYPE, f"{name}.{SERVICE_TYPE}")
        await probe.async_request(zc.zeroconf, NAME_CHECK_MS, question_type=DNSQuestionType.QM)
        return probe.port is not None

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._poll_s)
            try:
                interfaces, addresses = host_addresses(
                    self._config.interfaces, bind_host=self._host
                )
            except (OSError, ValueError) as exc:
                log.debug("mdns_address_scan_failed", error=str(exc))
                continue
            if (interfaces, addresses) == (self._interfaces, self._addresses):
                continue
            log.info("mdns_addresses_changed", old=self._addresses, new=addresses)
            try:
                await self._update(interfaces, addresses)
            except (OSError, HallwayError) as exc:
                log.warning("mdns_update_failed", error=str(exc))

    async def _update(self, interfaces: list[str], addresses: list[str]) -> None:
        zc = self._zc
        assert zc is not None
        if interfaces != self._interfaces:
            update_interfaces: Any = getattr(zc, "async_update_interfaces", None)
            if update_interfaces is None:  # older python-zeroconf: start over under our name
                await zc.async_close()
                self._interfaces, self._addresses = interfaces, addresses
                await self._register()
                self.updates += 1
                return
            await update_interfaces(list(interfaces))
        self._interfaces, self._addresses = interfaces, addresses
        info = self._make_info()
        await (await zc.async_update_service(info))
        self._info = info
        self.updates += 1

    async def close(self) -> None:
        """Send goodbye packets and close the sockets (idempotent, bounded)."""
        if self._closed:
            return
        self._closed = True
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        zc, self._zc = self._zc, None
        if zc is None:
            return
        try:
            async with asyncio.timeout(GOODBYE_TIMEOUT_S):
                await zc.async_unregister_all_services()
        except TimeoutError:
            log.warning("mdns_goodbye_timed_out")
        finally:
            await zc.async_close()
        log.info("mdns_goodbye", name=self._name)
