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
  but written in batches into a raw rtnetlink socket of its own. pyroute2
  costs about a millisecond of CPU per request (a thousand owned IPs, four
  renews a second: four cores). What is left is kept small
  (``chaos/bench_rearm.py``; the kernel's own share is in
  docs/kernel-fences.md, "What a refresh costs"):

  - each address's message is encoded once and kept (per address, interface
    index and lifetime, with a sequence number of its own) while the address
    is refreshed; a refresh only looks the messages up and joins them;
  - the messages ask for no acknowledgement: the kernel answers a request
    without ``NLM_F_ACK`` only when it fails. Each batch ends with an
    ``NLMSG_NOOP`` that asks for one. The kernel handles a write's messages
    one after the other and answers each failure as it meets it, so when the
    NOOP's acknowledgement arrives, every failure of the batch is already in
    the socket, read in the same pass: one read per batch instead of one per
    address (``NETLINK_CAP_ACK``: an error does not echo the request back);
  - the interface's index comes from one ``RTM_GETLINK`` per interface and
    refresh on the same socket.

  The kernel handles every message of a batch on its own, so one that fails
  (the interface went away) leaves the others refreshed; the failures are
  reported together, and none of them can make an address live longer than
  the lifetime asked for.
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

from egressd.adapters import netlink
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
_DUMP_READ = 1 << 16
"""Bytes of one read of a dump (the kernel fills a read up to its size)."""
_NLMSG_ERROR = 2
_NLMSG_DONE = 3
_RTM_NEWLINK, _RTM_GETLINK, _RTM_NEWADDR, _RTM_GETADDR = 16, 18, 20, 22
_NLM_F_MULTI, _NLM_F_DUMP = 0x02, 0x300
_NLM_F_REQUEST = 0x01
_NLM_F_ACK = 0x04
_NLM_F_REPLACE_ACK = 0x505
"""NLM_F_REQUEST | NLM_F_ACK | NLM_F_REPLACE | NLM_F_CREATE: what ``addr("replace")`` sends."""
_NLM_F_REPLACE_QUIET = _NLM_F_REPLACE_ACK & ~_NLM_F_ACK
"""The same without NLM_F_ACK: the kernel answers only a failure (what :meth:`KernelAddresses.refresh` sends)."""
_IFA_ADDRESS, _IFA_LOCAL, _IFA_LABEL, _IFA_CACHEINFO, _IFA_FLAGS, _IFA_PROTO = 1, 2, 3, 6, 8, 11
_IFLA_IFNAME = 3
_HEADER = netlink.HEADER
_IFINFO = struct.Struct("=BxHiII")
"""ifinfomsg: family, type, index, flags, change."""
BATCH = 256
"""Messages per write in :meth:`KernelAddresses.refresh`: about 20 KB; the
kernel's answers to them (an error for each that fails, 36 bytes, and the
closing acknowledgement) wait in the socket's receive buffer before they are
read; both far below the kernel's default buffers."""
_SEQ_MAX = 0x7FFFFFFF
_ACK_TIMEOUT = 2.0
"""Seconds to wait for the kernel's acknowledgements of one batch (it answers in microseconds)."""
_ENOENT = 2
_EADDRNOTAVAIL = 99
_ENODEV = 19


def _label(interface: str) -> str | None:
    label = interface + LABEL_SUFFIX
    return label if len(label) <= 15 else None


_attr = netlink.attr


def encode_claim(
    seq: int, index: int, ip: IPAddress, *, lifetime: int, proto: int, label: str | None, ack: bool = True
) -> bytes:
    """The ``RTM_NEWADDR`` message ``claim`` has pyroute2 send (the same
    attributes in the same order; tests compare them byte for byte), with
    sequence number ``seq`` and port id 0; without ``NLM_F_ACK`` when not
    ``ack`` (the kernel then answers only a failure)."""
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
    flags = _NLM_F_REPLACE_ACK if ack else _NLM_F_REPLACE_QUIET
    return _HEADER.pack(_HEADER.size + len(body), _RTM_NEWADDR, flags, seq, 0) + body


encode_barrier = netlink.encode_barrier


def encode_link_request(seq: int, interface: str) -> bytes:
    """``RTM_GETLINK`` of the link called ``interface``."""
    body = _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + _attr(_IFLA_IFNAME, interface.encode() + b"\0")
    return _HEADER.pack(_HEADER.size + len(body), _RTM_GETLINK, _NLM_F_REQUEST, seq, 0) + body


def encode_link_by_index(seq: int, index: int) -> bytes:
    """``RTM_GETLINK`` of the link numbered ``index``."""
    body = _IFINFO.pack(socket.AF_UNSPEC, 0, index, 0, 0)
    return _HEADER.pack(_HEADER.size + len(body), _RTM_GETLINK, _NLM_F_REQUEST, seq, 0) + body


def read_link_index(data: bytes, seq: int) -> int | None:
    """The link index in the ``RTM_NEWLINK`` answering ``seq`` in a read from
    the socket; None when there is none."""
    link = read_link(data, seq)
    return link[0] if link is not None else None


def read_link(data: bytes, seq: int) -> tuple[int, str | None] | None:
    """The link index and name (``IFLA_IFNAME``; None without one) in the
    ``RTM_NEWLINK`` answering ``seq`` in a read from the socket; None when
    there is none. A malformed length ends the read (nothing loops on it)."""
    offset = 0
    while offset + _HEADER.size <= len(data):
        length, kind, _flags, got, _port = _HEADER.unpack_from(data, offset)
        if length < _HEADER.size:
            break
        end = min(offset + length, len(data))
        if kind == _RTM_NEWLINK and got == seq and offset + _HEADER.size + _IFINFO.size <= end:
            index = int(_IFINFO.unpack_from(data, offset + _HEADER.size)[2])
            return index, _link_name(data, offset + _HEADER.size + _IFINFO.size, end)
        offset += (length + 3) & ~3
    return None


def _link_name(data: bytes, at: int, end: int) -> str | None:
    """``IFLA_IFNAME`` among the attributes between ``at`` and ``end``."""
    while at + 4 <= end:
        length, kind = struct.unpack_from("=HH", data, at)
        if length < 4 or at + length > end:
            break
        if kind & 0x7FFF == _IFLA_IFNAME:
            return data[at + 4 : at + length].split(b"\0", 1)[0].decode(errors="replace")
        at += (length + 3) & ~3
    return None


read_acks = netlink.read_acks


def encode_address_dump(seq: int) -> bytes:
    """``RTM_GETADDR`` of every address of every family (a dump)."""
    body = struct.pack("=BBBBI", socket.AF_UNSPEC, 0, 0, 0, 0)
    return _HEADER.pack(_HEADER.size + len(body), _RTM_GETADDR, _NLM_F_REQUEST | _NLM_F_DUMP, seq, 0) + body


_IFADDR = struct.Struct("=BBBBI")


def read_address_dump(data: bytes, seq: int, proto: int) -> tuple[list[tuple[IPAddress, int]], bool, int]:
    """From one read of a dump answering ``seq``: the addresses marked with
    ``proto`` (address, interface index), whether the dump ended, and the
    errno it ended with (0: none). Messages of other sequences are skipped;
    a malformed length ends the read (nothing loops on it)."""
    found: list[tuple[IPAddress, int]] = []
    offset = 0
    while offset + _HEADER.size <= len(data):
        length, kind, _flags, got, _port = _HEADER.unpack_from(data, offset)
        if length < _HEADER.size or offset + length > len(data):
            break
        if got == seq:
            if kind == _NLMSG_DONE:
                return found, True, 0
            if kind == _NLMSG_ERROR and length >= _HEADER.size + 4:
                (error,) = struct.unpack_from("=i", data, offset + _HEADER.size)
                return found, True, -error
            if kind == _RTM_NEWADDR and length >= _HEADER.size + _IFADDR.size:
                address = _marked_address(data, offset + _HEADER.size, offset + length, proto)
                if address is not None:
                    found.append(address)
        offset += (length + 3) & ~3
    return found, False, 0


def _marked_address(data: bytes, start: int, end: int, proto: int) -> tuple[IPAddress, int] | None:
    """The address of one ``RTM_NEWADDR`` body if it carries ``IFA_PROTO`` = ``proto``."""
    family, _prefix, _flags, _scope, index = _IFADDR.unpack_from(data, start)
    size = 4 if family == socket.AF_INET else 16 if family == socket.AF_INET6 else 0
    attrs: dict[int, bytes] = {}
    at = start + _IFADDR.size
    while at + 4 <= end:
        length, kind = struct.unpack_from("=HH", data, at)
        if length < 4 or at + length > end:
            break
        attrs[kind & 0x7FFF] = data[at + 4 : at + length]
        at += (length + 3) & ~3
    mark = attrs.get(_IFA_PROTO)
    raw = attrs.get(_IFA_LOCAL) or attrs.get(_IFA_ADDRESS)
    if not size or mark is None or len(mark) < 1 or mark[0] != proto or raw is None or len(raw) != size:
        return None
    return ipaddress.ip_address(raw), index


_Key = tuple[IPAddress, str, int, int]
"""Address, interface, interface index, lifetime: what a refresh message encodes."""
_Batch = tuple[list[bytes], dict[int, IPAddress]]
"""Messages written together, and the address of each sequence number among them."""
_Batches = tuple[tuple[tuple[IPAddress, str], ...], int, dict[str, int | str], list[_Batch], list[str]]
"""A refresh: its addresses, lifetime and interface indexes (or why there
is none); its batches, each with the sequence numbers of its messages; the
addresses left out, with why."""


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
        """Last sequence number used on the raw socket."""
        self._messages: dict[_Key, tuple[int, bytes]] = {}
        """The ``RTM_NEWADDR`` of each address of the last refresh, with its
        sequence number: encoded once while the address stays (see the module
        docstring)."""
        self._last: _Batches | None = None
        """The last refresh's addresses, lifetime and interface indexes, and
        the batches it wrote: at rest a gateway refreshes the same addresses
        after every renew, and then sends them again as they are."""

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
        if self._ipr is not None or self._raw is not None:
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
            self._raw = netlink.open_socket(self._netns, _ACK_TIMEOUT)
        return self._raw

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _refresh(self, addresses: list[tuple[IPAddress, str]], lifetime: int) -> None:
        if self._seq + 2 * len(addresses) + 16 > _SEQ_MAX:
            # sequence numbers start again: none kept may equal a new one
            self._seq = 0
            self._messages.clear()
            self._last = None
        # interface -> its index, or why it has none; looked up at every refresh
        # (a link recreated under the same name has a new index)
        indexes = {interface: self._link_index(interface) for interface in dict.fromkeys(i for _, i in addresses)}
        listed = tuple(addresses)
        last = self._last
        if last is None or last[1] != lifetime or last[2] != indexes or last[0] != listed:
            last = self._last = (listed, lifetime, indexes, *self._encode(addresses, lifetime, indexes))
        failed = list(last[4])
        for batch, pending in last[3]:
            failed += self._send_batch(batch, pending)
        if failed:
            shown = "; ".join(failed[:5]) + (f"; and {len(failed) - 5} more" if len(failed) > 5 else "")
            raise DataPlaneError(f"refresh of {len(failed)} of {len(addresses)} address(es) failed: {shown}")

    def _encode(
        self, addresses: list[tuple[IPAddress, str]], lifetime: int, indexes: dict[str, int | str]
    ) -> tuple[list[_Batch], list[str]]:
        """The batches of a refresh, from the messages kept where the address,
        interface index and lifetime stayed; and the addresses left out."""
        failed: list[str] = []
        kept: dict[_Key, tuple[int, bytes]] = {}
        batches: list[_Batch] = []
        batch: list[bytes] = []
        pending: dict[int, IPAddress] = {}
        for ip, interface in addresses:
            index = indexes[interface]
            if isinstance(index, str):
                failed.append(f"{ip}: {index}")
                continue
            key = (ip, interface, index, lifetime)
            message = self._messages.get(key)
            if message is None:
                seq = self._next_seq()
                label = _label(interface) if ip.version == 4 else None
                encoded = encode_claim(seq, index, ip, lifetime=lifetime, proto=self._proto, label=label, ack=False)
                message = (seq, encoded)
            kept[key] = message
            pending[message[0]] = ip
            batch.append(message[1])
            if len(batch) == BATCH:
                batches.append((batch, pending))
                batch, pending = [], {}
        if batch:
            batches.append((batch, pending))
        self._messages = kept  # those of the addresses refreshed now, no others
        return batches, failed

    def _link_name(self, sock: socket.socket, index: int) -> str:
        """The name of the link numbered ``index`` ("?" when it has none, or
        is gone); OSError from the socket."""
        seq = self._next_seq()
        sock.send(encode_link_by_index(seq, index))
        while True:
            data = sock.recv(65536)
            if any(got == seq for got, _error in read_acks(data)):
                return "?"  # an error: the link went meanwhile
            link = read_link(data, seq)
            if link is not None:
                return link[1] or "?"

    def _link_index(self, interface: str) -> int | str:
        """The index of ``interface`` (one ``RTM_GETLINK`` on the raw socket), or why there is none."""
        seq = self._next_seq()
        try:
            sock = self._raw_sock()
            sock.send(encode_link_request(seq, interface))
            while True:
                data = sock.recv(65536)
                for got, error in read_acks(data):
                    if got == seq:
                        if error == _ENODEV:
                            return f"interface {interface} does not exist"
                        return f"interface {interface}: lookup failed: {os.strerror(error)}"
                index = read_link_index(data, seq)
                if index is not None:
                    return index
        except DataPlaneError as exc:
            return str(exc)
        except OSError as exc:  # a timeout too: the socket goes, and its late answers with it
            self._drop_raw()
            return f"interface {interface}: lookup failed: {exc}"

    def _send_batch(self, messages: list[bytes], pending: dict[int, IPAddress]) -> list[str]:
        """Write one batch, closed by a barrier, and read the kernel's answers
        up to the barrier's acknowledgement; what failed. ``pending``: the
        batch's sequence numbers (kept as it is: a refresh may send the batch again)."""
        barrier = self._next_seq()
        try:
            answers = netlink.send_acknowledged(self._raw_sock(), messages, barrier)
        except DataPlaneError as exc:
            return [f"{ip}: {exc}" for ip in pending.values()]
        except OSError as exc:  # a timeout too: the socket goes, and its late answers with it
            self._drop_raw()
            return [f"{ip}: {exc}" for ip in pending.values()]
        return [f"{ip}: {os.strerror(answers[seq])}" for seq, ip in pending.items() if answers.get(seq)]

    def _drop_raw(self) -> None:
        if self._raw is not None:
            self._raw.close()
            self._raw = None

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
        """One ``RTM_NEWADDR`` (replace) on the raw socket, closed by a barrier:
        the takeover's own step, so it skips pyroute2's encoding and decoding
        (1 to 3 ms of CPU here, against a few hundred microseconds)."""
        index = self._link_index(interface)
        if isinstance(index, str):
            raise DataPlaneError(f"claim {ip} on {interface}: {index}")
        seq = self._next_seq()
        label = _label(interface) if ip.version == 4 else None
        message = encode_claim(seq, index, ip, lifetime=lifetime, proto=self._proto, label=label, ack=False)
        failed = self._send_batch([message], {seq: ip})
        if failed:
            raise DataPlaneError(f"claim {ip} on {interface} (lifetime {lifetime}s) failed: {failed[0]}")

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
        """egressd's addresses: a dump on the raw socket, read with ``struct``
        (pyroute2 decoded every address of the node into dictionaries: 82 ms of
        CPU for 1,000 addresses, which the drift repair paid every 2 s); the
        name of each interface they are on by one ``RTM_GETLINK`` of its index
        on the same socket (pyroute2 decoded every link of the node, with its
        statistics, at every listing)."""
        seq = self._next_seq()
        found: list[tuple[IPAddress, int]] = []
        try:
            sock = self._raw_sock()
            sock.send(encode_address_dump(seq))
            while True:
                part, done, error = read_address_dump(sock.recv(_DUMP_READ), seq, self._proto)
                found += part
                if done:
                    break
            if error:
                raise DataPlaneError(f"listing addresses failed: {os.strerror(error)}")
            names = {index: self._link_name(sock, index) for index in {index for _, index in found}}
        except NetlinkError as exc:
            raise DataPlaneError(f"listing addresses failed: {exc}") from exc
        except OSError as exc:  # a timeout too: the socket goes, and its late answers with it
            self._drop_raw()
            raise DataPlaneError(f"listing addresses failed: {exc}") from exc
        return [(ip, names.get(index, "?")) for ip, index in found]
