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
* ``refresh`` re-arms the lifetimes of many addresses at once, after every
  node-lease renew: one ``RTM_NEWADDR`` per address, as ``claim`` sends it,
  but written in batches into a raw rtnetlink socket of its own and
  acknowledged together. pyroute2 costs about a millisecond of CPU per
  request (a thousand owned IPs, four renews a second: four cores), the
  kernel a few microseconds. The kernel handles every message of a batch on
  its own, so one that fails (the interface went away) leaves the others
  refreshed; the failures are reported together, and none of them can make
  an address live longer than the lifetime asked for.
* ``netns``: when given, the sockets are opened in that named namespace
  (``IPRoute(netns=...)``); the daemon normally runs inside its namespace and
  leaves it None.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
import struct
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netns import setns

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
_RTM_NEWADDR = 20
_NLMSG_ERROR = 2
_NLMSG_DONE = 3
_NLM_F_REPLACE_ACK = 0x505
"""NLM_F_REQUEST | NLM_F_ACK | NLM_F_REPLACE | NLM_F_CREATE: what ``addr("replace")`` sends."""
_IFA_ADDRESS, _IFA_LOCAL, _IFA_LABEL, _IFA_CACHEINFO, _IFA_FLAGS, _IFA_PROTO = 1, 2, 3, 6, 8, 11
_HEADER = struct.Struct("=IHHII")
"""nlmsghdr: length, type, flags, sequence, port id."""
BATCH = 256
"""Messages per write in :meth:`KernelAddresses.refresh`: about 20 KB, and as
many acknowledgements (36 bytes each) wait in the socket's receive buffer
before they are read; both far below the kernel's default buffers."""
_ACK_TIMEOUT = 2.0
"""Seconds to wait for the kernel's acknowledgements of one batch (it answers in microseconds)."""
_ENOENT = 2
_EADDRNOTAVAIL = 99
_ENODEV = 19


def _label(interface: str) -> str | None:
    label = interface + LABEL_SUFFIX
    return label if len(label) <= 15 else None


def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def encode_claim(seq: int, index: int, ip: IPAddress, *, lifetime: int, proto: int, label: str | None) -> bytes:
    """The ``RTM_NEWADDR`` message ``claim`` has pyroute2 send (the same
    attributes in the same order; tests compare them byte for byte), with
    sequence number ``seq`` and port id 0."""
    v4 = ip.version == 4
    body = struct.pack("=BBBBI", socket.AF_INET if v4 else socket.AF_INET6, ip.max_prefixlen, 0, 0, index)
    body += _attr(_IFA_ADDRESS, ip.packed)
    body += _attr(_IFA_CACHEINFO, struct.pack("=IIII", lifetime, lifetime, 0, 0))  # preferred, valid
    body += _attr(_IFA_PROTO, struct.pack("=B", proto))
    if v4:
        if label is not None:
            body += _attr(_IFA_LABEL, label.encode() + b"\0")
        body += _attr(_IFA_LOCAL, ip.packed)
    else:
        body += _attr(_IFA_FLAGS, struct.pack("=I", _IFA_F_NODAD))
    return _HEADER.pack(_HEADER.size + len(body), _RTM_NEWADDR, _NLM_F_REPLACE_ACK, seq, 0) + body


def read_acks(data: bytes) -> list[tuple[int, int]]:
    """(sequence, errno) of each acknowledgement in a read from the socket
    (errno 0: done); other messages are skipped."""
    out: list[tuple[int, int]] = []
    offset = 0
    while offset + _HEADER.size <= len(data):
        length, kind, _flags, seq, _port = _HEADER.unpack_from(data, offset)
        if length < _HEADER.size:
            break  # malformed: never loop on it
        if kind == _NLMSG_ERROR and length >= _HEADER.size + 4:
            (error,) = struct.unpack_from("=i", data, offset + _HEADER.size)
            out.append((seq, -error))
        offset += (length + 3) & ~3
    return out


class KernelAddresses:
    """:class:`egressd.ports.Addresses` over rtnetlink (pyroute2)."""

    def __init__(self, *, netns: str | None = None, proto: int = ADDRESS_PROTO) -> None:
        self._netns = netns
        self._proto = proto
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="egressd-netlink")
        self._ipr: IPRoute | None = None
        self._raw: socket.socket | None = None
        """The rtnetlink socket of :meth:`refresh` (executor thread only)."""
        self._seq = 0

    # -- the port ---------------------------------------------------------

    async def claim(self, ip: IPAddress, interface: str, lifetime: int) -> None:
        """Add ``ip`` on ``interface`` with a finite lifetime, or refresh it."""
        if lifetime < 1:
            raise ValueError(f"lifetime must be at least 1 s, got {lifetime}")
        await self._call(self._claim, ip, interface, lifetime)

    async def refresh(self, addresses: Sequence[tuple[IPAddress, str]], lifetime: int) -> None:
        """Reset the lifetime of every (ip, interface) to ``lifetime`` seconds
        (adding any that is missing), in batches (see the module docstring).
        Every address is tried; a :class:`DataPlaneError` names those that failed."""
        if lifetime < 1:
            raise ValueError(f"lifetime must be at least 1 s, got {lifetime}")
        if addresses:
            await self._call(self._refresh, list(addresses), lifetime)

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
        if self._raw is not None:
            self._raw.close()
            self._raw = None

    def _raw_sock(self) -> socket.socket:
        if self._raw is None:
            own = os.open("/proc/thread-self/ns/net", os.O_RDONLY) if self._netns else -1
            try:
                if self._netns:
                    setns(self._netns, flags=0)  # this thread only, and back below
                sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
            except OSError as exc:
                raise DataPlaneError(f"cannot open rtnetlink (netns {self._netns or 'own'}): {exc}") from exc
            finally:
                if own >= 0:
                    setns(own)
                    os.close(own)
            sock.bind((0, 0))
            sock.settimeout(_ACK_TIMEOUT)
            self._raw = sock
        return self._raw

    def _refresh(self, addresses: list[tuple[IPAddress, str]], lifetime: int) -> None:
        indexes: dict[str, int | str] = {}
        """Interface -> its index, or why it has none."""
        failed: list[str] = []
        pending: dict[int, IPAddress] = {}
        messages: list[bytes] = []
        for ip, interface in addresses:
            if interface not in indexes:
                try:
                    indexes[interface] = self._index(interface)
                except DataPlaneError as exc:
                    indexes[interface] = str(exc)
            index = indexes[interface]
            if isinstance(index, str):
                failed.append(f"{ip}: {index}")
                continue
            self._seq = self._seq % 0x7FFFFFFF + 1
            pending[self._seq] = ip
            label = _label(interface) if ip.version == 4 else None
            messages.append(encode_claim(self._seq, index, ip, lifetime=lifetime, proto=self._proto, label=label))
            if len(messages) == BATCH:
                failed += self._send_batch(messages, pending)
                messages = []
        if messages:
            failed += self._send_batch(messages, pending)
        if failed:
            shown = "; ".join(failed[:5]) + (f"; and {len(failed) - 5} more" if len(failed) > 5 else "")
            raise DataPlaneError(f"refresh of {len(failed)} of {len(addresses)} address(es) failed: {shown}")

    def _send_batch(self, messages: list[bytes], pending: dict[int, IPAddress]) -> list[str]:
        """Write one batch and read its acknowledgements; what failed.
        ``pending`` holds the batch's sequence numbers (emptied here)."""
        sock = self._raw_sock()
        failed: list[str] = []
        try:
            sock.send(b"".join(messages))
            while pending:
                for seq, error in read_acks(sock.recv(65536)):
                    ip = pending.pop(seq, None)
                    if ip is not None and error:
                        failed.append(f"{ip}: {os.strerror(error)}")
        except OSError as exc:  # a timeout too: the socket goes, and its late answers with it
            self._raw = None
            sock.close()
            failed += [f"{ip}: {exc}" for ip in pending.values()]
            pending.clear()
        return failed

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
