"""Gratuitous ARP / unsolicited NA with scapy, on a schedule, and a listener
that reports other MACs claiming an IP we own.

* Frames are built by scapy and sent through one ``conf.L2socket`` per
  interface, opened on first use and reused (opening it is the expensive part
  of the first frame; see docs/kernel-fences.md for the measured cost).
* Sockets are opened and frames sent in ONE dedicated thread (a single-worker
  executor), so the event loop never blocks. With ``netns`` that thread enters
  the named network namespace first (``setns`` changes only the calling
  thread's namespace); sockets opened there stay bound to that namespace. This
  lets tests drive an interface of another namespace from the root process;
  the daemon itself runs inside its namespace and leaves ``netns`` None.
* ``start`` sends frame 0 before it returns (it is on the takeover path) and
  schedules the rest of :class:`egressd.core.garp.GarpSchedule` as a named task
  ``garp:<ip>``; ``stop`` cancels it. On an interface not opened yet, frame 0
  goes from that task too: the takeover never waits for scapy to load.
* While an IPv4 address is owned, a raw ``AF_PACKET`` socket bound to ARP on
  its interface is read by the event loop (``add_reader``; frames are parsed
  with ``struct``, a few microseconds each). A frame whose sender IP is ours
  and whose sender MAC is not is reported through ``on_conflict(ip, mac)``, at
  most once per second per (ip, mac). IPv6 conflicts are not watched.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import struct
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from pyroute2.netns import setns

from egressd.core.errors import DataPlaneError
from egressd.core.garp import GarpSchedule
from egressd.core.model import IPAddress

# scapy is imported on first use (opening an interface), not with this module:
# it costs ~0.4 s, and a restarted daemon must re-arm its fences before that.

log = logging.getLogger(__name__)

ConflictCallback = Callable[[IPAddress, str], None]

_ETH_P_ARP = 0x0806
_PACKET_OUTGOING = 4
_ALL_NODES_MAC = "33:33:00:00:00:01"
_CONFLICT_REPORT_INTERVAL = 1.0
_FRAMES_KEPT = 4096
"""Announcement frames kept built (one per egress IP and interface MAC)."""


@dataclass
class _Interface:
    name: str
    sender: Any
    mac: str
    listener: socket.socket | None = None
    owned: set[IPAddress] = field(default_factory=set)


def arp_announcement(ip: ipaddress.IPv4Address, mac: str, form: str) -> bytes:
    """The gratuitous ARP frame announcing ``ip`` at ``mac`` (42 bytes, packed
    here: scapy takes about a millisecond per frame). ``form`` "request": target
    MAC zero (an RFC 5227 announcement); "reply": target MAC the sender's own,
    which Linux requires to treat a reply as gratuitous (and bypass its
    neighbour locktime). Both go to the broadcast address."""
    hw = bytes.fromhex(mac.replace(":", ""))
    if len(hw) != 6:
        raise ValueError(f"not a MAC address: {mac!r}")
    op = 1 if form == "request" else 2
    target = bytes(6) if op == 1 else hw
    return (
        b"\xff" * 6 + hw + struct.pack("!H", 0x0806)  # Ethernet: broadcast, from us, ARP
        + struct.pack("!HHBBH", 1, 0x0800, 6, 4, op)  # Ethernet/IPv4, 6- and 4-byte addresses
        + hw + ip.packed + target + ip.packed
    )  # fmt: skip


class ScapyAnnouncer:
    """:class:`egressd.ports.Announcer` with scapy."""

    def __init__(
        self,
        *,
        schedule: GarpSchedule | None = None,
        on_conflict: ConflictCallback | None = None,
        netns: str | None = None,
        guard: Callable[[IPAddress], bool] | None = None,
    ) -> None:
        """``guard(ip)`` is asked before every frame and must say whether the IP
        may still be announced (owned, last renew within the renew deadline): a
        daemon frozen during its burst must not send the burst's late frames
        when it thaws, before its fence withdraws."""
        self._schedule = schedule or GarpSchedule()
        self._on_conflict = on_conflict
        self._guard = guard
        self._netns = netns
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="egressd-garp", initializer=self._enter_netns
        )
        self._closer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="egressd-arp-close")
        """Closes ARP listeners: closing a bound ``AF_PACKET`` socket waits for
        an RCU grace period (8-20 ms measured here), which must block neither
        the event loop (a withdrawal, a release) nor the frames' thread."""
        self._frames: dict[tuple[IPAddress, str, str], bytes] = {}
        self._interfaces: dict[str, _Interface] = {}
        self._tasks: dict[IPAddress, asyncio.Task[None]] = {}
        self._where: dict[IPAddress, str] = {}
        self._sent: dict[IPAddress, int] = {}
        self._reported: dict[tuple[IPAddress, str], float] = {}

    # -- the port ---------------------------------------------------------

    async def start(self, ip: IPAddress, interface: str) -> None:
        """Send the first frame now, then the burst and refresh in a task.

        On an interface not opened yet (a takeover right after the daemon
        started, before :meth:`prepare`), opening it loads scapy, which takes
        0.4 to 1 s: longer than a renew deadline. The takeover does not wait
        for that: the first frame goes from the task, as soon as it can."""
        await self.stop(ip)
        started = time.monotonic()
        self._where[ip] = interface
        iface = self._interfaces.get(interface)
        if iface is None:
            self._tasks[ip] = asyncio.create_task(self._open_then_repeat(ip, interface, started), name=f"garp:{ip}")
            return
        await self._first(ip, iface, started)
        self._tasks[ip] = asyncio.create_task(self._repeat(ip, iface), name=f"garp:{ip}")

    async def _first(self, ip: IPAddress, iface: _Interface, started: float) -> None:
        await self._send(ip, iface)
        log.info(
            "announced %s on %s (%s, first frame after %.1f ms)",
            ip,
            iface.name,
            iface.mac,
            (time.monotonic() - started) * 1000,
        )
        iface.owned.add(ip)

    async def _open_then_repeat(self, ip: IPAddress, interface: str, started: float) -> None:
        try:
            iface = await self._interface(interface)
            await self._first(ip, iface, started)
        except DataPlaneError as exc:
            log.error("cannot announce %s on %s: %s", ip, interface, exc)
            return
        await self._repeat(ip, iface)

    async def stop(self, ip: IPAddress) -> None:
        """Stop announcing ``ip`` and watching for conflicts on it."""
        task = self._tasks.pop(ip, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        interface = self._where.pop(ip, None)
        iface = self._interfaces.get(interface) if interface is not None else None
        if iface is None:
            return  # never announced, or stopped while its interface was being opened
        iface.owned.discard(ip)
        if not any(a.version == 4 for a in iface.owned):
            self._unlisten(iface)

    # -- beyond the port --------------------------------------------------

    async def prepare(self, interface: str) -> None:
        """Open the interface's socket ahead of a takeover (staging): the first
        frame on a fresh interface costs ~25-30 ms more than later ones."""
        await self._interface(interface)

    def sent(self, ip: IPAddress) -> int:
        """Frames sent for ``ip`` since this announcer was created (for metrics)."""
        return self._sent.get(ip, 0)

    async def close(self) -> None:
        """Stop everything and close the sockets."""
        for ip in list(self._tasks):
            await self.stop(ip)
        for iface in self._interfaces.values():
            self._unlisten(iface)
        interfaces = list(self._interfaces.values())
        self._interfaces.clear()
        loop = asyncio.get_running_loop()
        for iface in interfaces:
            await loop.run_in_executor(self._executor, iface.sender.close)
        self._executor.shutdown(wait=True)
        await loop.run_in_executor(self._closer, lambda: None)  # the listeners handed over are closed
        self._closer.shutdown(wait=True)

    # -- internals --------------------------------------------------------

    def _enter_netns(self) -> None:
        if self._netns is not None:
            setns(self._netns, flags=0)

    async def _repeat(self, ip: IPAddress, iface: _Interface) -> None:
        if ip.version == 4:
            try:
                await self._listen(iface)  # off the takeover path: start() has returned
            except DataPlaneError as exc:
                log.warning("cannot watch for conflicts on %s for %s: %s", iface.name, ip, exc)
        for delay in self._schedule.delays():
            await asyncio.sleep(delay)
            try:
                await self._send(ip, iface)
            except DataPlaneError as exc:
                log.warning("announcement of %s on %s failed, will retry on schedule: %s", ip, iface.name, exc)

    async def _interface(self, name: str) -> _Interface:
        iface = self._interfaces.get(name)
        if iface is None:
            loop = asyncio.get_running_loop()
            sender, mac = await loop.run_in_executor(self._executor, self._open, name)
            iface = self._interfaces[name] = _Interface(name=name, sender=sender, mac=mac)
        return iface

    def _open(self, name: str) -> tuple[Any, str]:
        try:
            import scapy.layers.l2  # noqa: PLC0415, F401 — see the module imports; loads scapy's arch layer
            from scapy.config import conf  # noqa: PLC0415

            sender = conf.L2socket(iface=name)
            mac = ":".join(f"{b:02x}" for b in sender.ins.getsockname()[4][:6])
        except OSError as exc:
            raise DataPlaneError(f"cannot open a layer-2 socket on {name}: {exc}") from exc
        return sender, mac

    def _frame(self, ip: IPAddress, mac: str) -> bytes:
        """The announcement of ``ip`` from ``mac``, built once: building it with
        scapy costs about a millisecond of the takeover path each time."""
        key = (ip, mac, self._schedule.form)
        frame = self._frames.get(key)
        if frame is None:
            if len(self._frames) >= _FRAMES_KEPT:
                self._frames.clear()
            frame = self._frames[key] = self._build_frame(ip, mac)
        return frame

    def _build_frame(self, ip: IPAddress, mac: str) -> bytes:
        if isinstance(ip, ipaddress.IPv4Address):
            return arp_announcement(ip, mac, self._schedule.form)
        from scapy.layers.inet6 import ICMPv6ND_NA, ICMPv6NDOptDstLLAddr, IPv6  # noqa: PLC0415
        from scapy.layers.l2 import Ether  # noqa: PLC0415

        na = ICMPv6ND_NA(tgt=str(ip), R=0, S=0, O=1) / ICMPv6NDOptDstLLAddr(lladdr=mac)
        return bytes(Ether(src=mac, dst=_ALL_NODES_MAC) / IPv6(src=str(ip), dst="ff02::1", hlim=255) / na)

    async def _send(self, ip: IPAddress, iface: _Interface) -> None:
        if self._guard is not None and not self._guard(ip):
            log.info("not announcing %s on %s: no longer within its renew deadline", ip, iface.name)
            return
        frame = self._frame(ip, iface.mac)
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, iface.sender.send, frame)
        except OSError as exc:
            raise DataPlaneError(f"sending announcement of {ip} on {iface.name} failed: {exc}") from exc
        self._sent[ip] = self._sent.get(ip, 0) + 1

    async def _listen(self, iface: _Interface) -> None:
        if iface.listener is not None or self._on_conflict is None:
            return
        loop = asyncio.get_running_loop()
        listener = await loop.run_in_executor(self._executor, self._open_listener, iface.name)
        if _has_listener(iface):  # another start() got there first
            self._closer.submit(listener.close)
            return
        iface.listener = listener
        asyncio.get_running_loop().add_reader(listener.fileno(), self._readable, iface)

    def _open_listener(self, name: str) -> socket.socket:
        # protocol 0 at creation, ARP at bind: a socket created with a protocol is hooked on every
        # interface at once, and re-binding it waits for an RCU grace period (tens of ms)
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            sock.bind((name, _ETH_P_ARP))
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise DataPlaneError(f"cannot listen for ARP on {name}: {exc}") from exc
        return sock

    def _unlisten(self, iface: _Interface) -> None:
        """Stop reading the interface's ARP listener now; its close goes to the
        closer thread (see ``_closer``)."""
        listener = iface.listener
        if listener is None:
            return
        iface.listener = None
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(listener.fileno())
        try:
            self._closer.submit(listener.close)
        except RuntimeError:  # closed announcer: nothing else runs, close here
            listener.close()

    def _readable(self, iface: _Interface) -> None:
        sock = iface.listener
        if sock is None:
            return
        for _ in range(64):  # bounded: never starve the loop under an ARP storm
            try:
                data, addr = sock.recvfrom(2048)
            except BlockingIOError:
                return
            except OSError as exc:
                log.warning("ARP listener on %s failed: %s", iface.name, exc)
                self._unlisten(iface)
                return
            if addr[2] == _PACKET_OUTGOING:
                continue
            claim = parse_arp_claim(data)
            if claim is None:
                continue
            ip, mac = claim
            if ip in iface.owned and mac != iface.mac:
                self._conflict(ip, mac, iface)

    def _conflict(self, ip: IPAddress, mac: str, iface: _Interface) -> None:
        now = time.monotonic()
        last = self._reported.get((ip, mac))
        if last is not None and now - last < _CONFLICT_REPORT_INTERVAL:
            return
        self._reported[(ip, mac)] = now
        log.warning("conflict: %s on %s is claimed by %s (we are %s)", ip, iface.name, mac, iface.mac)
        if self._on_conflict is not None:
            try:
                self._on_conflict(ip, mac)
            except Exception:
                log.exception("conflict callback failed for %s from %s", ip, mac)


def _has_listener(iface: _Interface) -> bool:
    return iface.listener is not None


_ARP = struct.Struct("!HHBBH6s4s6s4s")


def parse_arp_claim(frame: bytes) -> tuple[IPAddress, str] | None:
    """(sender IP, sender MAC) of an Ethernet/IPv4 ARP frame, None otherwise.

    A probe (sender IP 0.0.0.0) claims nothing and gives None."""
    if len(frame) < 14 + _ARP.size or frame[12:14] != b"\x08\x06":
        return None
    htype, ptype, hlen, plen, _op, sha, spa, _tha, _tpa = _ARP.unpack_from(frame, 14)
    if htype != 1 or ptype != 0x0800 or hlen != 6 or plen != 4 or spa == b"\0\0\0\0":
        return None
    return ipaddress.IPv4Address(spa), ":".join(f"{b:02x}" for b in sha)
