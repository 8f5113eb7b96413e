"""Egress IPs as kernel addresses with a finite lifetime, over pyroute2.

* ``claim`` sends one ``RTM_NEWADDR`` with ``NLM_F_CREATE | NLM_F_REPLACE``:
  it adds the /32 (/128) or, if present, resets its ``valid_lft`` and
  ``preferred_lft`` to ``lifetime`` seconds. The kernel removes the address by
  itself when the daemon stops refreshing it (the kernel fence).
* egressd's addresses are marked with the address protocol attribute
  ``IFA_PROTO`` = :data:`ADDRESS_PROTO` (kernel >= 5.18; pyroute2 >= 0.7.3
  encodes it). It works for IPv4 and IPv6 alike and survives a daemon restart,
  so :meth:`owned` and :meth:`flush_all` recognise them. IPv4 addresses also get
  the label ``<interface>:egd``, because ``ip addr`` of iproute2 before 6.3
  (Debian bookworm ships 6.1) cannot show ``proto``, and operators should see
  which addresses are egressd's. The label is for people; the protocol is the
  mark (IPv6 has no labels).
* IPv6 addresses are added with ``nodad``: the IP is floating, its previous
  owner is fenced by design, and DAD would delay the takeover by a second or more.
* pyroute2 blocks: every call runs in a single-thread executor that owns the
  netlink socket (a pyroute2 socket is not safe for concurrent use; netlink
  answers in microseconds, so one thread is enough and keeps calls ordered).
* ``netns``: when given, the socket is opened in that named namespace
  (``IPRoute(netns=...)``); the daemon normally runs inside its namespace and
  leaves it None.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from egressd.core.errors import DataPlaneError
from egressd.core.model import IPAddress

log = logging.getLogger(__name__)

T = TypeVar("T")

#: ``IFA_PROTO`` value marking egressd's addresses. The kernel uses 0-3
#: (unspec, kernel_lo, kernel_ra, kernel_ll); userspace may use the rest.
ADDRESS_PROTO = 0xE9

#: Suffix of the IPv4 address label (``net0:egd``); labels must start with the
#: interface name and fit in 15 characters.
LABEL_SUFFIX = ":egd"

_IFA_F_NODAD = 0x02
_ENOENT = 2
_EADDRNOTAVAIL = 99
_ENODEV = 19


def _label(interface: str) -> str | None:
    label = interface + LABEL_SUFFIX
    return label if len(label) <= 15 else None


class KernelAddresses:
    """:class:`egressd.ports.Addresses` over rtnetlink (pyroute2)."""

    def __init__(self, *, netns: str | None = None, proto: int = ADDRESS_PROTO) -> None:
        self._netns = netns
        self._proto = proto
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="egressd-netlink")
        self._ipr: IPRoute | None = None

    # -- the port ---------------------------------------------------------

    async def claim(self, ip: IPAddress, interface: str, lifetime: int) -> None:
        """Add ``ip`` on ``interface`` with a finite lifetime, or refresh it."""
        if lifetime < 1:
            raise ValueError(f"lifetime must be at least 1 s, got {lifetime}")
        await self._call(self._claim, ip, interface, lifetime)

    async def release(self, ip: IPAddress, interface: str) -> None:
        """Remove ``ip`` from ``interface``; no error if it is already gone."""
        await self._call(self._release, ip, interface)

    async def owned(self) -> set[tuple[IPAddress, str]]:
        """egressd-marked addresses present now, as (ip, interface)."""
        return set(await self._call(self._owned))

    async def has_interface(self, interface: str) -> bool:
        """Whether a link called ``interface`` exists in this namespace."""
        return await self._call(self._has_interface, interface)

    async def interface_addresses(self, interface: str) -> list[ipaddress.IPv4Interface | ipaddress.IPv6Interface]:
        """The addresses (with their prefix) on ``interface`` that are not
        egressd's own, empty if there is no such link: the node's addresses
        there, whose subnets tell the network and broadcast addresses no egress
        IP may be."""
        return await self._call(self._interface_addresses, interface)

    # -- beyond the port --------------------------------------------------

    async def flush_all(self) -> set[tuple[IPAddress, str]]:
        """Remove every egressd-marked address (``egressd cleanup``); returns what it removed."""
        found = await self._call(self._owned)
        for ip, ifname in found:
            await self._call(self._release, ip, ifname)
        return set(found)

    async def close(self) -> None:
        if self._ipr is not None:
            await self._call(self._close)
        self._executor.shutdown(wait=True)

    # -- internals (run in the executor thread) ---------------------------

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    def _sock(self) -> IPRoute:
        if self._ipr is None:
            try:
                self._ipr = IPRoute(netns=self._netns) if self._netns else IPRoute()
            except (OSError, NetlinkError) as exc:
                raise DataPlaneError(f"cannot open rtnetlink (netns {self._netns or 'own'}): {exc}") from exc
        return self._ipr

    def _close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    def _has_interface(self, interface: str) -> bool:
        try:
            return bool(self._sock().link_lookup(ifname=interface))
        except NetlinkError as exc:
            raise DataPlaneError(f"interface {interface}: lookup failed: {exc}") from exc

    def _index(self, interface: str) -> int:
        try:
            found = self._sock().link_lookup(ifname=interface)
        except NetlinkError as exc:
            raise DataPlaneError(f"interface {interface}: lookup failed: {exc}") from exc
        if not found:
            raise DataPlaneError(f"interface {interface} does not exist")
        return int(found[0])

    def _claim(self, ip: IPAddress, interface: str, lifetime: int) -> None:
        index = self._index(interface)
        kwargs: dict[str, Any] = {
            "index": index,
            "address": str(ip),
            "prefixlen": ip.max_prefixlen,
            "valid_lft": lifetime,
            "preferred_lft": lifetime,
            "proto": self._proto,
        }
        if ip.version == 4:
            label = _label(interface)
            if label is not None:
                kwargs["label"] = label
        else:
            kwargs["flags"] = _IFA_F_NODAD
        try:
            self._sock().addr("replace", **kwargs)
        except NetlinkError as exc:
            raise DataPlaneError(f"claim {ip} on {interface} (lifetime {lifetime}s) failed: {exc}") from exc

    def _release(self, ip: IPAddress, interface: str) -> None:
        try:
            index = self._index(interface)
        except DataPlaneError:
            log.debug("release %s: interface %s is gone, so is the address", ip, interface)
            return
        try:
            self._sock().addr("del", index=index, address=str(ip), prefixlen=ip.max_prefixlen)
        except NetlinkError as exc:
            if exc.code in (_EADDRNOTAVAIL, _ENOENT, _ENODEV):
                return
            raise DataPlaneError(f"release {ip} on {interface} failed: {exc}") from exc
        log.info("released %s on %s", ip, interface)

    def _interface_addresses(self, interface: str) -> list[ipaddress.IPv4Interface | ipaddress.IPv6Interface]:
        try:
            sock = self._sock()
            found = sock.link_lookup(ifname=interface)
            if not found:
                return []
            out: list[ipaddress.IPv4Interface | ipaddress.IPv6Interface] = []
            for msg in sock.get_addr(index=int(found[0])):
                raw = msg.get("IFA_LOCAL") or msg.get("IFA_ADDRESS")
                if raw is None or msg.get("IFA_PROTO") == self._proto:
                    continue
                out.append(ipaddress.ip_interface(f"{raw}/{int(msg['prefixlen'])}"))
            return out
        except NetlinkError as exc:
            raise DataPlaneError(f"interface {interface}: listing addresses failed: {exc}") from exc

    def _owned(self) -> list[tuple[IPAddress, str]]:
        try:
            sock = self._sock()
            names = {int(link["index"]): str(link.get("IFLA_IFNAME")) for link in sock.get_links()}
            out: list[tuple[IPAddress, str]] = []
            for msg in sock.get_addr():
                if msg.get("IFA_PROTO") != self._proto:
                    continue
                raw = msg.get("IFA_LOCAL") or msg.get("IFA_ADDRESS")
                if raw is None:
                    continue
                out.append((ipaddress.ip_address(raw), names.get(int(msg["index"]), "?")))
            return out
        except NetlinkError as exc:
            raise DataPlaneError(f"listing addresses failed: {exc}") from exc
