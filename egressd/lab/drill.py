"""Chaos drills against the lab: fault the owner of an egress IP, measure the outage and look for two owners.

``egressd drill --scenario NAME --rounds N`` (:mod:`egressd.cli.drill`) runs
:class:`Drill` against the lab of :mod:`egressd.lab.netlab`. Every round faults
the gateway that owns the egress IP of the pod ``xwing`` (the *target*), waits
until the lab has settled again, and measures what the outside saw.

Scenarios (:data:`SCENARIOS`):

* ``graceful``      SIGTERM the target; the supervisor starts it again (``Restart=always``).
* ``kill``          SIGKILL the target, held down until the IP has moved and traffic flows again.
* ``kill-restart``  SIGKILL the target, started again after the supervisor's 100 ms.
* ``freeze``        SIGSTOP the target for ``leaseDuration + 2 s``, then SIGCONT.
* ``link-cut``      the target's cables pulled (node loss) until the IP has moved, then plugged back.
* ``api-partition`` the target cannot reach the API server (data plane intact) until the IP has
  moved, then the partition is lifted.
* ``api-outage``    the API server frozen for everyone for ``outage_seconds`` (30 s), then thawed.
  Today egressd steps down when it cannot renew, so this measures an outage of
  about the pause; the point is that no two nodes serve an IP.

Instruments, all on CLOCK_MONOTONIC (one clock for every process of the machine):

* **Probers** (:class:`Prober`): from a socket opened in a pod's namespace
  (``xwing`` and ``ywing``), UDP datagrams to the outpost's probe port every
  :data:`PROBE_INTERVAL` on an absolute schedule, with prober id, sequence
  number and send time; the outpost records each arrival with the source
  address it saw and echoes it. :class:`OutpostTail` reads those records back.
* **Watcher** (:class:`Watcher`): a packet socket on the lab's bridge (in the
  switch namespace, bridge in promiscuous mode, classic BPF filter) that sends
  an ARP request for every egress IP every :data:`ARP_INTERVAL` from a made-up
  MAC and the unused address :data:`WATCHER_IP`, and records, with the kernel's
  receive timestamp, every ARP frame whose sender address is an egress IP
  (answers and gratuitous ARP) and every probe datagram whose source address is
  an egress IP, with its source MAC: which gateway SNATed it. MACs map to nodes
  by the lab's ``eth0``/``net0`` addresses (:func:`node_macs`).
* **Lease poller** (:class:`LeasePoller`): the leases on the API server every
  :data:`LEASE_POLL` (holder and epoch changes).

Per round (:class:`RoundResult`):

``gap_ms``
    For each prober, its *good* arrivals at the outpost (source address one of
    the allowed egress IPs) in time order; the longest interval between two
    consecutive good arrivals among those that end after the fault (the first of
    them starts at the last good arrival before the fault). The round's gap is the
    largest over probers (the prober whose IP was not faulted shows the probe
    interval). ``None`` when good traffic did not come back before the round ended.
``lost_probes``
    Probes sent in the round that the prober got no echo of and that the
    outpost did not record either (with any source address).
``dual_owner_ms``
    A *claim* is a frame on the bridge by which a node serves an egress IP: an
    ARP frame whose sender protocol address is the IP (an answer to the
    watcher's request or a gratuitous ARP; the node is the one whose MAC is the
    sender hardware address), or a probe datagram whose source address is the
    IP (the node whose MAC sent it). Each claim at time ``t`` makes its node an
    *active server* of the IP over ``[t, t + window)``, ``window`` =
    :data:`DUAL_WINDOW` (the ARP request interval, so a node that keeps serving
    is active without interruption). ``dual_owner_ms`` is the total length of
    the union, over IPs, of the times at which two or more different nodes are
    active servers of one IP. A clean move from node A to node B adds nothing
    unless B's first claim comes less than ``window`` after A's last one, which
    a move through the API cannot do (two API writes and a netlink and nftables
    transaction lie between them). The sharpest form, one ARP request answered
    by two nodes, is counted separately as ``double_answers``.

The pure analysis (:func:`outage_gap`, :func:`dual_owner_intervals`,
:func:`double_answers`, :func:`percentile`, :func:`summarize`) takes plain event
lists, so it is tested without namespaces.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import http.client
import ipaddress
import itertools
import json
import math
import os
import re
import signal
import socket
import struct
import subprocess
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from egressd.core.assignment import sources_for
from egressd.core.config import parse_settings
from egressd.core.model import Timing
from egressd.lab.netlab import SWITCH, Lab, LabError
from egressd.lab.outpost import decode_echo, encode_probe, monotonic
from egressd.lab.scenario import BRIDGE, OUTPOST_UDP_PORT

PROBE_INTERVAL = 0.005
"""Seconds between two probes of one prober (200 per second)."""

ARP_INTERVAL = 0.01
"""Seconds between two ARP requests of the watcher for one egress IP."""

DUAL_WINDOW = ARP_INTERVAL
"""How long one claim keeps its node an active server of the IP (see the module doc)."""

LEASE_POLL = 0.02
"""Seconds between two reads of the leases."""

WATCHER_MAC = bytes.fromhex("02e9d0000001")
"""Source MAC of the watcher's ARP requests: locally administered, used by nothing in the lab."""

WATCHER_IP = "172.18.255.254"
"""Source address of the watcher's ARP requests: inside the lab's node network, used by nobody."""

SETTLED_PROBES = 2.0
"""Seconds of good probes (every prober) that make the lab settled."""

PROBE_PODS = ("xwing", "ywing")
"""The pods that probe; the target of every round is the owner of the first one's egress IP."""

SCENARIOS = ("graceful", "kill", "kill-restart", "freeze", "link-cut", "api-partition", "api-outage")

_ETH_P_ALL = 0x0003
_ETH_P_ARP = 0x0806
_ETH_P_IP = 0x0800
_SOL_PACKET = 263
_PACKET_ADD_MEMBERSHIP = 1
_PACKET_MR_PROMISC = 1
_PACKET_OUTGOING = 4
_SO_ATTACH_FILTER = 26
_SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)


class DrillError(LabError):
    """A drill could not run (the lab did not settle, an instrument failed)."""


# --- events (what the instruments record) --------------------------------------------------


@dataclass(frozen=True)
class Sent:
    prober: str
    seq: int
    t: float


@dataclass(frozen=True)
class Arrival:
    """A probe as the outpost recorded it."""

    prober: str
    seq: int
    t: float
    src: str


@dataclass(frozen=True)
class Claim:
    """A frame on the bridge by which ``node`` serves ``ip`` (see the module doc)."""

    t: float
    ip: str
    node: str
    kind: str
    """``answer`` (ARP reply to the watcher), ``garp`` (gratuitous ARP), ``arp`` (other ARP
    with the IP as sender) or ``probe`` (a probe datagram with the IP as source)."""
    prober: str | None = None
    seq: int | None = None


@dataclass(frozen=True)
class LeaseChange:
    t: float
    ip: str
    holder: str | None
    epoch: int | None


@dataclass(frozen=True)
class DualInterval:
    start: float
    end: float
    ip: str
    nodes: tuple[str, ...]

    @property
    def length(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class Gap:
    start: float | None
    """The good arrival that opens the longest hole (None: no good arrival before the fault)."""
    end: float | None
    """The good arrival that closes it (None: good traffic did not come back)."""

    @property
    def seconds(self) -> float | None:
        if self.start is None or self.end is None:
            return None
        return self.end - self.start


# --- pure analysis ---------------------------------------------------------------------------


def outage_gap(good: Sequence[float], fault: float) -> Gap:
    """The longest interval between consecutive good arrival times (sorted) that ends after
    ``fault``, starting from the last good arrival at or before ``fault``."""
    before = [t for t in good if t <= fault]
    after = sorted(t for t in good if t > fault)
    start = before[-1] if before else None
    if not after:
        return Gap(start, None)
    chain = [*([start] if start is not None else []), *after]
    if len(chain) == 1:
        return Gap(None, chain[0])
    best = max(range(1, len(chain)), key=lambda i: chain[i] - chain[i - 1])
    return Gap(chain[best - 1], chain[best])


def _merge(intervals: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    merged: list[tuple[float, float]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def dual_owner_intervals(claims: Iterable[Claim], window: float = DUAL_WINDOW) -> list[DualInterval]:
    """Per IP, the maximal intervals during which two or more nodes are active servers
    (a claim at ``t`` makes its node active over ``[t, t + window)``), in time order."""
    active: dict[str, dict[str, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    for c in claims:
        active[c.ip][c.node].append((c.t, c.t + window))
    out: list[DualInterval] = []
    for ip, per_node in active.items():
        edges: list[tuple[float, int, str]] = []
        for node, spans in per_node.items():
            for start, end in _merge(spans):
                edges += [(start, 1, node), (end, -1, node)]
        edges.sort(key=lambda e: (e[0], e[1]))  # ends before starts at the same instant: [t, t+w) is half-open
        serving: set[str] = set()
        seen: set[str] = set()
        opened: float | None = None
        for t, step, node in edges:
            if step > 0:
                serving.add(node)
            else:
                serving.discard(node)
            if len(serving) >= 2:
                seen |= serving
                if opened is None:
                    opened = t
            elif opened is not None:
                if t > opened:
                    out.append(DualInterval(opened, t, ip, tuple(sorted(seen))))
                opened, seen = None, set()
    return sorted(out, key=lambda d: (d.start, d.ip))


def union_length(intervals: Iterable[DualInterval]) -> float:
    """Total time covered by ``intervals`` (overlaps between IPs counted once)."""
    return sum(end - start for start, end in _merge((d.start, d.end) for d in intervals))


def double_answers(
    requests: Mapping[str, Sequence[float]], claims: Iterable[Claim]
) -> list[tuple[float, str, set[str]]]:
    """ARP requests of the watcher answered by two or more nodes: (request time, IP, nodes).
    An answer belongs to the latest request for its IP sent before it."""
    import bisect  # noqa: PLC0415 - only here

    answered: dict[tuple[str, float], set[str]] = defaultdict(set)
    for c in claims:
        if c.kind != "answer":
            continue
        times = requests.get(c.ip, ())
        i = bisect.bisect_right(times, c.t) - 1
        if i >= 0:
            answered[(c.ip, times[i])].add(c.node)
    return sorted((t, ip, nodes) for (ip, t), nodes in answered.items() if len(nodes) >= 2)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100) with linear interpolation between closest ranks
    (numpy's default); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = q / 100 * (len(ordered) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(rounds: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """p50/p99/max of ``gap_ms`` (an unrecovered round counts as an infinite gap), total
    ``dual_owner_ms`` and ``lost_probes``."""
    gaps = [math.inf if r.get("gap_ms") is None else float(r["gap_ms"]) for r in rounds]

    def finite(v: float | None) -> float | None:
        return None if v is None or math.isinf(v) else round(v, 1)

    return {
        "rounds": len(rounds),
        "gap_ms": {
            "p50": finite(percentile(gaps, 50)),
            "p99": finite(percentile(gaps, 99)),
            "max": finite(max(gaps) if gaps else None),
        },
        "unrecovered_rounds": sum(1 for g in gaps if math.isinf(g)),
        "dual_owner_ms": round(sum(float(r.get("dual_owner_ms") or 0.0) for r in rounds), 1),
        "double_answers": sum(int(r.get("double_answers") or 0) for r in rounds),
        "lost_probes": sum(int(r.get("lost_probes") or 0) for r in rounds),
        "probes_sent": sum(int(r.get("probes_sent") or 0) for r in rounds),
    }


# --- frames ----------------------------------------------------------------------------------


def arp_request(sender_mac: bytes, sender_ip: str, target_ip: str) -> bytes:
    """A broadcast ARP request (Ethernet II), padded to the 60-byte minimum."""
    frame = b"\xff" * 6 + sender_mac + struct.pack("!H", _ETH_P_ARP)
    frame += struct.pack("!HHBBH", 1, _ETH_P_IP, 6, 4, 1)
    frame += sender_mac + socket.inet_aton(sender_ip) + b"\x00" * 6 + socket.inet_aton(target_ip)
    return frame.ljust(60, b"\x00")


@dataclass(frozen=True)
class Frame:
    """What the watcher keeps of a captured frame."""

    kind: str
    """``arp`` or ``probe``."""
    src_mac: str
    sender_ip: str
    """ARP: sender protocol address; probe: IPv4 source address."""
    op: int = 0
    target_ip: str = ""
    prober: str | None = None
    seq: int | None = None


def _mac(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def parse_frame(frame: bytes, probe_port: int = OUTPOST_UDP_PORT) -> Frame | None:
    """An ARP frame or a UDP probe datagram to ``probe_port``; None for anything else."""
    if len(frame) < 14:
        return None
    (ethertype,) = struct.unpack_from("!H", frame, 12)
    if ethertype == _ETH_P_ARP and len(frame) >= 42:
        (op,) = struct.unpack_from("!H", frame, 20)
        return Frame(
            "arp",
            _mac(frame[22:28]),
            socket.inet_ntoa(frame[28:32]),
            op=op,
            target_ip=socket.inet_ntoa(frame[38:42]),
        )
    if ethertype != _ETH_P_IP or len(frame) < 34 or frame[23] != socket.IPPROTO_UDP:
        return None
    ihl = (frame[14] & 0x0F) * 4
    udp = 14 + ihl
    if len(frame) < udp + 8:
        return None
    (dport,) = struct.unpack_from("!H", frame, udp + 2)
    if dport != probe_port:
        return None
    payload = frame[udp + 8 :].split()
    prober: str | None = None
    seq: int | None = None
    if len(payload) >= 2:
        with contextlib.suppress(UnicodeDecodeError, ValueError):
            prober, seq = payload[0].decode(), int(payload[1])
    return Frame("probe", _mac(frame[6:12]), socket.inet_ntoa(frame[26:30]), prober=prober, seq=seq)


def bpf_program(sources: Sequence[str]) -> list[tuple[int, int, int, int]]:
    """Classic BPF: accept ARP, and IPv4 UDP whose source is one of ``sources``; drop the rest."""
    ld_h, ld_b, ld_w, jeq, ret = 0x28, 0x30, 0x20, 0x15, 0x06
    n = len(sources)
    # 0 ldh [12]; 1 jeq ARP; 2 jeq IP; 3 ldb [23]; 4 jeq UDP; 5 ld [26]; 6..6+n-1 jeq src; drop; accept
    drop = 6 + n
    accept = drop + 1
    prog = [
        (ld_h, 0, 0, 12),
        (jeq, accept - 2, 0, _ETH_P_ARP),
        (jeq, 0, drop - 3, _ETH_P_IP),
        (ld_b, 0, 0, 23),
        (jeq, 0, drop - 5, socket.IPPROTO_UDP),
        (ld_w, 0, 0, 26),
    ]
    for i, src in enumerate(sources):
        at = 6 + i
        prog.append((jeq, accept - at - 1, 0, int(ipaddress.IPv4Address(src))))
    prog += [(ret, 0, 0, 0), (ret, 0, 0, 256)]
    return prog


# --- instruments -----------------------------------------------------------------------------


class _Worker:
    """A daemon thread running ``self._loop`` until :meth:`stop`."""

    name = "worker"

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.error: BaseException | None = None

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        def guarded() -> None:
            try:
                target()
            except BaseException as exc:  # reported by the drill, not lost in a thread
                if not self._stop.is_set():
                    self.error = exc

        thread = threading.Thread(target=guarded, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=2.0)

    def check(self) -> None:
        if self.error is not None:
            raise DrillError(f"{self.name}: {self.error!r}") from self.error


class Prober(_Worker):
    """UDP probes from a pod's namespace to the outpost, on an absolute schedule."""

    def __init__(self, lab: Lab, pod: str, *, interval: float = PROBE_INTERVAL, tag: str = "") -> None:
        super().__init__()
        self.pod = pod
        self.id = f"{pod}.{tag or os.getpid()}"
        self.name = f"prober {self.id}"
        self.interval = interval
        out = lab.scenario.outpost
        self._sock = lab.socket(pod, socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.connect((out.address, out.udp_port))
        self._sock.settimeout(0.2)
        self.sent: list[Sent] = []
        self.echoed: dict[int, tuple[float, str]] = {}
        """seq -> (receipt time, the source address the outpost saw)."""

    def start(self) -> Prober:
        self._spawn(self._send, f"{self.id}-send")
        self._spawn(self._receive, f"{self.id}-recv")
        return self

    def stop(self) -> None:
        super().stop()
        self._sock.close()

    def _send(self) -> None:
        seq = 0
        due = monotonic()
        while not self._stop.is_set():
            now = monotonic()
            if now < due:
                time.sleep(due - now)
                continue
            t = monotonic()
            with contextlib.suppress(OSError):  # no route during a fault: the probe is lost, not an error
                self._sock.send(encode_probe(self.id, seq, t))
            self.sent.append(Sent(self.id, seq, t))
            seq += 1
            due += self.interval
            if due < t - 1.0:  # the process was stopped or starved: do not burst to catch up
                due = t

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._sock.recv(2048)
            except (TimeoutError, ConnectionRefusedError):
                continue
            except OSError:
                if self._stop.is_set():
                    return
                continue
            probe, source = decode_echo(data)
            if probe is not None and probe.prober == self.id:
                self.echoed[probe.seq] = (monotonic(), source)


class OutpostTail:
    """The outpost's probe records of our probers, read incrementally from its log."""

    def __init__(self, path: Path, probers: Iterable[str]) -> None:
        self._path = path
        self._probers = set(probers)
        try:
            self._offset = path.stat().st_size
        except OSError:
            self._offset = 0
        self._partial = b""
        self.arrivals: list[Arrival] = []

    def read(self) -> list[Arrival]:
        """Read what was appended since the last call; every arrival so far."""
        try:
            with self._path.open("rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except OSError:
            return self.arrivals
        self._offset += len(chunk)
        data = self._partial + chunk
        lines = data.split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            if b'"udp"' not in line:
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("kind") == "udp" and rec.get("prober") in self._probers:
                self.arrivals.append(Arrival(rec["prober"], int(rec["seq"]), float(rec["t"]), str(rec["src"])))
        return self.arrivals


class Watcher(_Worker):
    """ARP requests for the egress IPs on the bridge, and capture of ARP and probe frames."""

    name = "watcher"

    def __init__(self, lab: Lab, macs: Mapping[str, str], *, interval: float = ARP_INTERVAL) -> None:
        super().__init__()
        self.ips = lab.scenario.egress_ips
        self.macs = dict(macs)
        self.interval = interval
        self.requests: dict[str, list[float]] = {ip: [] for ip in self.ips}
        self.claims: list[Claim] = []
        self.unknown_macs: set[str] = set()
        self._sock = lab.socket(SWITCH, socket.AF_PACKET, socket.SOCK_RAW)
        try:
            self._sock.bind((BRIDGE, _ETH_P_ALL))
            ifindex = _ifindex(lab, SWITCH, BRIDGE)
            mreq = struct.pack("iHH8s", ifindex, _PACKET_MR_PROMISC, 0, b"")
            self._sock.setsockopt(_SOL_PACKET, _PACKET_ADD_MEMBERSHIP, mreq)
            prog = bpf_program(self.ips)
            self._bpf = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *ins) for ins in prog))
            fprog = struct.pack("HL", len(prog), ctypes.addressof(self._bpf))
            self._sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, fprog)
            self._sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
            self._sock.settimeout(0.2)
        except OSError as exc:
            self._sock.close()
            raise DrillError(f"watcher on bridge {BRIDGE}: {exc}") from exc
        self._frames = {ip: arp_request(WATCHER_MAC, WATCHER_IP, ip) for ip in self.ips}

    def start(self) -> Watcher:
        self._spawn(self._ask, "watcher-arp")
        self._spawn(self._capture, "watcher-capture")
        return self

    def stop(self) -> None:
        super().stop()
        self._sock.close()

    def _ask(self) -> None:
        due = monotonic()
        while not self._stop.is_set():
            now = monotonic()
            if now < due:
                time.sleep(due - now)
                continue
            for ip, frame in self._frames.items():
                t = monotonic()
                with contextlib.suppress(OSError):
                    self._sock.send(frame)
                self.requests[ip].append(t)
            due += self.interval
            if due < now - 1.0:
                due = now

    def _capture(self) -> None:
        space = socket.CMSG_SPACE(16)
        while not self._stop.is_set():
            try:
                data, ancdata, _, addr = self._sock.recvmsg(256, space)
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                raise
            if addr[2] == _PACKET_OUTGOING:
                continue
            t = _receive_time(ancdata)
            frame = parse_frame(data)
            if frame is None or frame.sender_ip not in self.requests:
                continue
            node = self.macs.get(frame.src_mac)
            if node is None:
                self.unknown_macs.add(frame.src_mac)
                node = frame.src_mac
            if frame.kind == "arp":
                if frame.op == 2 and frame.target_ip == WATCHER_IP:
                    kind = "answer"
                elif frame.target_ip == frame.sender_ip:
                    kind = "garp"
                else:
                    kind = "arp"
                self.claims.append(Claim(t, frame.sender_ip, node, kind))
            else:
                self.claims.append(Claim(t, frame.sender_ip, node, "probe", frame.prober, frame.seq))


def _receive_time(ancdata: Sequence[tuple[int, int, bytes]]) -> float:
    """The kernel's receive timestamp (CLOCK_REALTIME) moved to CLOCK_MONOTONIC; now if absent."""
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS and len(data) >= 16:
            sec, nsec = struct.unpack_from("qq", data)
            offset = monotonic() - time.clock_gettime(time.CLOCK_REALTIME)
            return float(sec + nsec / 1e9 + offset)
    return monotonic()


def _ifindex(lab: Lab, host: str, ifname: str) -> int:
    out = subprocess.run(
        ["ip", "-n", lab.netns(host), "-j", "link", "show", "dev", ifname],
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        return int(json.loads(out.stdout)[0]["ifindex"])
    except (ValueError, LookupError, TypeError) as exc:
        raise DrillError(f"no interface {ifname} in {lab.netns(host)}: {out.stderr.strip()}") from exc


def node_macs(lab: Lab) -> dict[str, str]:
    """MAC address -> node, for the ``eth0`` and ``net0`` of every node."""
    macs: dict[str, str] = {}
    for node in lab.scenario.nodes:
        out = subprocess.run(
            ["ip", "-n", lab.netns(node.name), "-j", "link", "show"], capture_output=True, text=True, check=False
        )
        with contextlib.suppress(ValueError):
            for link in json.loads(out.stdout or "[]"):
                if link.get("ifname") in ("eth0", "net0") and link.get("address"):
                    macs[str(link["address"]).lower()] = node.name
    return macs


class LeasePoller(_Worker):
    """The holder and epoch of every egress IP's lease, read every :data:`LEASE_POLL`."""

    name = "lease poller"

    def __init__(self, lab: Lab, *, interval: float = LEASE_POLL) -> None:
        super().__init__()
        self._lab = lab
        self.interval = interval
        self.changes: list[LeaseChange] = []
        self.current: dict[str, tuple[str | None, int | None]] = {}
        self.last_ok: float | None = None

    def start(self) -> LeasePoller:
        self._spawn(self._poll, "lease-poller")
        return self

    def _poll(self) -> None:
        while not self._stop.is_set():
            t0 = monotonic()
            try:
                records = self._lab.leases(timeout=0.3)
            except (OSError, LabError, http.client.HTTPException):
                records = None
            if records is not None:
                self.last_ok = monotonic()
                seen = {r.egress_ip: ((r.holder or None), r.transitions) for r in records}
                for ip in self._lab.scenario.egress_ips:
                    state = seen.get(ip, (None, None))
                    if self.current.get(ip) != state:
                        self.current[ip] = state
                        self.changes.append(LeaseChange(t0, ip, state[0], state[1]))
            self._stop.wait(max(0.0, self.interval - (monotonic() - t0)))

    def holder(self, ip: str) -> str | None:
        return self.current.get(ip, (None, None))[0]


# --- rounds ----------------------------------------------------------------------------------


@dataclass
class RoundResult:
    """One round: the JSON part (:meth:`to_json`) and the raw events (for the plot)."""

    scenario: str
    index: int
    target: str
    ip: str
    fault: float
    fault_action: str
    recover: float | None
    recover_action: str | None
    start: float
    end: float
    settled: bool
    gap: Gap
    gaps: dict[str, Gap]
    lost: int
    sent: int
    unsnat: int
    duals: list[DualInterval]
    doubles: list[tuple[float, str, set[str]]]
    sent_events: list[Sent] = field(repr=False)
    arrivals: list[Arrival] = field(repr=False)
    claims: list[Claim] = field(repr=False)
    leases: list[LeaseChange] = field(repr=False)
    allowed: frozenset[str] = frozenset()

    @property
    def gap_ms(self) -> float | None:
        seconds = self.gap.seconds
        return None if seconds is None else seconds * 1000

    @property
    def dual_owner_ms(self) -> float:
        return union_length(self.duals) * 1000

    def rel(self, t: float | None) -> float | None:
        """Milliseconds after the fault."""
        return None if t is None else round((t - self.fault) * 1000, 1)

    def carriers(self) -> dict[str, dict[str, str | None]]:
        """Per prober, the gateway that carried its probes last before the fault and last in the round."""
        out: dict[str, dict[str, str | None]] = {}
        for prober in sorted({s.prober for s in self.sent_events}):
            frames = [c for c in self.claims if c.kind == "probe" and c.prober == prober]
            before = [c.node for c in frames if c.t <= self.fault]
            after = [c.node for c in frames if c.t > self.fault]
            out[prober] = {"before": before[-1] if before else None, "after": after[-1] if after else None}
        return out

    def timeline(self) -> dict[str, Any]:
        arp: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
        traffic: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
        for c in self.claims:
            table = traffic if c.kind == "probe" else arp
            entry = table[c.ip].setdefault(c.node, {"first_ms": self.rel(c.t), "last_ms": None, "frames": 0})
            entry["last_ms"] = self.rel(c.t)
            entry["frames"] += 1
        return {
            "fault_ms": 0.0,
            "fault": self.fault_action,
            "recover_ms": self.rel(self.recover),
            "recover": self.recover_action,
            "end_ms": self.rel(self.end),
            "lease": [{"t_ms": self.rel(c.t), "ip": c.ip, "holder": c.holder, "epoch": c.epoch} for c in self.leases],
            "arp": {ip: dict(sorted(nodes.items())) for ip, nodes in sorted(arp.items())},
            "traffic": {ip: dict(sorted(nodes.items())) for ip, nodes in sorted(traffic.items())},
            "gaps": {
                p: {"from_ms": self.rel(g.start), "to_ms": self.rel(g.end), "gap_ms": _ms(g.seconds)}
                for p, g in sorted(self.gaps.items())
            },
            "dual_owner": [
                {"from_ms": self.rel(d.start), "to_ms": self.rel(d.end), "ip": d.ip, "nodes": list(d.nodes)}
                for d in self.duals
            ],
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "round": self.index,
            "target": self.target,
            "ip": self.ip,
            "gap_ms": _ms(self.gap.seconds),
            "recovered": self.gap.end is not None,
            "dual_owner_ms": round(self.dual_owner_ms, 1),
            "double_answers": len(self.doubles),
            "lost_probes": self.lost,
            "probes_sent": self.sent,
            "unsnat_probes": self.unsnat,
            "settled": self.settled,
            "carriers": self.carriers(),
            "timeline": self.timeline(),
        }

    def progress(self, rounds: int) -> str:
        gap = "no recovery" if self.gap_ms is None else f"{self.gap_ms:7.1f} ms"
        moves = ", ".join(
            f"{p.split('.')[0]} {c['before'] or '-'} -> {c['after'] or '-'}" for p, c in self.carriers().items()
        )
        return (
            f"{self.scenario} round {self.index}/{rounds}: target {self.target} ({self.ip})  gap {gap}  "
            f"dual-owner {self.dual_owner_ms:.1f} ms  lost {self.lost}  [{moves}]"
            + ("" if self.settled else "  (did not settle)")
        )


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def analyse_round(
    *,
    scenario: str,
    index: int,
    target: str,
    ip: str,
    fault: float,
    fault_action: str,
    recover: float | None,
    recover_action: str | None,
    start: float,
    end: float,
    settled: bool,
    sent: Sequence[Sent],
    echoed: Mapping[str, Mapping[int, tuple[float, str]]],
    arrivals: Sequence[Arrival],
    claims: Sequence[Claim],
    requests: Mapping[str, Sequence[float]],
    leases: Sequence[LeaseChange],
    allowed: Iterable[str],
    window: float = DUAL_WINDOW,
    grace: float = 0.5,
) -> RoundResult:
    """The measures of one round from the events of ``[start, end]``. Probes sent in the last
    ``grace`` seconds are not judged lost (their echo may still be on its way)."""
    ok = frozenset(allowed)
    sent_r = [s for s in sent if start <= s.t <= end]
    arr_r = [a for a in arrivals if start <= a.t <= end + grace]
    claims_r = [c for c in claims if start <= c.t <= end]
    leases_r = [c for c in leases if start <= c.t <= end]
    recorded = {(a.prober, a.seq) for a in arrivals}
    lost = sum(
        1
        for s in sent_r
        if s.t <= end - grace and s.seq not in echoed.get(s.prober, {}) and (s.prober, s.seq) not in recorded
    )
    gaps: dict[str, Gap] = {}
    for prober in sorted({s.prober for s in sent_r}):
        good = sorted(a.t for a in arr_r if a.prober == prober and a.src in ok and a.t <= end)
        gaps[prober] = outage_gap(good, fault)
    worst = max(
        gaps.values(),
        key=lambda g: math.inf if g.seconds is None else g.seconds,
        default=Gap(None, None),
    )
    duals = dual_owner_intervals(claims_r, window)
    reqs = {ip_: [t for t in ts if start - 1.0 <= t <= end] for ip_, ts in requests.items()}
    return RoundResult(
        scenario=scenario,
        index=index,
        target=target,
        ip=ip,
        fault=fault,
        fault_action=fault_action,
        recover=recover,
        recover_action=recover_action,
        start=start,
        end=end,
        settled=settled,
        gap=worst,
        gaps=gaps,
        lost=lost,
        sent=len(sent_r),
        unsnat=sum(1 for a in arr_r if a.src not in ok),
        duals=duals,
        doubles=double_answers(reqs, claims_r),
        sent_events=sent_r,
        arrivals=arr_r,
        claims=claims_r,
        leases=leases_r,
        allowed=ok,
    )


# --- the drill -------------------------------------------------------------------------------


def lab_timing(lab: Lab) -> dict[str, Any]:
    """The daemons' timing settings, camelCase, from a gateway's generated config."""
    gateway = lab.scenario.gateways[0].name
    path = lab.config_file(gateway)
    try:
        timing = parse_settings(yaml.safe_load(path.read_text(encoding="utf-8")), source=str(path)).timing
    except (OSError, yaml.YAMLError):
        timing = Timing()
    return {_camel(k): v for k, v in dataclasses.asdict(timing).items()}


def _camel(name: str) -> str:
    return re.sub(r"_([a-z])", lambda m: m.group(1).upper(), name)


def egress_ip_of(lab: Lab, pod: str) -> str:
    """The egress IP the pod's traffic uses (the steering's rendezvous split)."""
    settings = parse_settings(lab.scenario.daemon_config(lab.scenario.pod(pod).node))
    address = ipaddress.ip_address(lab.scenario.pod(pod).ip)
    for group in settings.groups:
        for ip in group.egress_ips:
            if any(address in net for net in sources_for(group, ip)):
                return str(ip)
    raise DrillError(f"pod {pod} is in no egress group")


class Drill:
    """Instruments on a running lab, and the rounds of one scenario.

    ``with Drill(lab) as d: d.run("kill", rounds=20, report=print)``; the
    instruments run from ``__enter__`` to ``__exit__``."""

    def __init__(
        self,
        lab: Lab,
        *,
        probers: Sequence[str] = PROBE_PODS,
        settle_timeout: float = 60.0,
        outage_seconds: float = 30.0,
    ) -> None:
        self.lab = lab
        self.pods = tuple(probers)
        self.settle_timeout = settle_timeout
        self.outage_seconds = outage_seconds
        self.timing = lab_timing(lab)
        self.allowed = frozenset(lab.scenario.outpost.allowed)
        self.probers: list[Prober] = []
        self.watcher: Watcher | None = None
        self.leases: LeasePoller | None = None
        self.tail: OutpostTail | None = None

    # --- instruments ---

    def __enter__(self) -> Drill:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        tag = f"{os.getpid()}{int(monotonic() * 1000) % 100000}"
        self.probers = [Prober(self.lab, pod, tag=tag) for pod in self.pods]
        self.tail = OutpostTail(self.lab.outpost_log, [p.id for p in self.probers])
        self.watcher = Watcher(self.lab, node_macs(self.lab)).start()
        self.leases = LeasePoller(self.lab).start()
        for p in self.probers:
            p.start()

    def stop(self) -> None:
        workers: list[_Worker] = [*self.probers]
        if self.watcher is not None:
            workers.append(self.watcher)
        if self.leases is not None:
            workers.append(self.leases)
        for w in workers:
            w.stop()

    def _check(self) -> None:
        for w in (*self.probers, self.watcher, self.leases):
            if w is not None:
                w.check()

    # --- state ---

    def holders(self) -> dict[str, str | None]:
        assert self.leases is not None
        return {ip: self.leases.holder(ip) for ip in self.lab.scenario.egress_ips}

    def good_for(self, seconds: float, now: float) -> bool:
        """Every prober's probes arrived with a good source for the last ``seconds``, without a hole."""
        assert self.tail is not None
        arrivals = self.tail.read()
        for p in self.probers:
            recent = [a for a in arrivals if a.prober == p.id and a.t >= now - seconds - 0.2]
            if not recent or recent[0].t > now - seconds or now - recent[-1].t > 0.3:
                return False
            if any(a.src not in self.allowed for a in recent):
                return False
            times = [a.t for a in recent]
            if max((b - a for a, b in itertools.pairwise(times)), default=0.0) > 0.1:
                return False
        return True

    def node_healthy(self, node: str) -> bool:
        pid = self.lab.pid(node)
        if pid is None or self.lab.is_held(node):
            return False
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{pid}/stat").read_text()
            if stat.rpartition(")")[2].split()[0] == "T":
                return False
        try:
            status, _ = self.lab.http(node, "http://127.0.0.1:9464/readyz", timeout=0.5)
        except (OSError, LabError, http.client.HTTPException):
            return False
        return status == 200

    def wait(self, predicate: Callable[[], bool], timeout: float, *, poll: float = 0.1, at_least: float = 0.0) -> bool:
        """Wait until ``predicate`` holds (no earlier than ``at_least`` seconds); False on timeout."""
        start = monotonic()
        deadline = start + timeout
        while True:
            self._check()
            now = monotonic()
            if now - start >= at_least and predicate():
                return True
            if now >= deadline:
                return False
            time.sleep(poll)

    def settled(self, node: str | None, *, away_from: str | None = None, replaced: int | None = None) -> bool:
        """Both IPs owned (by someone other than ``away_from``), ``node`` healthy (and, with
        ``replaced``, running as a process other than that pid), good probes."""
        holders = self.holders()
        if any(h is None or h == away_from for h in holders.values()):
            return False
        if node is not None and not self.node_healthy(node):
            return False
        if node is not None and replaced is not None and self.lab.pid(node) == replaced:
            return False  # a daemon that ignored its signal: the fault did not happen
        return self.good_for(SETTLED_PROBES, monotonic())

    # --- rounds ---

    def target(self) -> tuple[str, str]:
        """The owner of the first prober's egress IP, and that IP."""
        ip = egress_ip_of(self.lab, self.pods[0])
        holder = self.holders().get(ip)
        if holder is None:
            raise DrillError(f"{ip} has no owner")
        return holder, ip

    def round(self, scenario: str, index: int) -> RoundResult:
        if scenario not in SCENARIOS:
            raise DrillError(f"unknown scenario {scenario!r} (known: {', '.join(SCENARIOS)})")
        if not self.wait(lambda: self.settled(None), self.settle_timeout):
            raise DrillError(f"the lab did not settle before round {index} (leases {self.holders()})")
        lab = self.lab
        target, ip = self.target()
        lease = float(self.timing.get("leaseDuration", 2.5))
        start = monotonic() - 1.0
        node_to_check: str | None = target
        settled = True
        before = lab.pid(target)
        # The fault starts when the signal is sent, or when the ip/nft command that makes it returns.
        fault = monotonic()
        if scenario == "graceful":
            lab.kill(target, signal.SIGTERM, restart=True)
            action = f"SIGTERM {target} (restarted by the supervisor)"
        elif scenario == "kill-restart":
            lab.kill(target, signal.SIGKILL, restart=True)
            action = f"SIGKILL {target} (restarted by the supervisor)"
        elif scenario == "kill":
            lab.kill(target, signal.SIGKILL, restart=False)
            action = f"SIGKILL {target} (held down)"
        elif scenario == "freeze":
            lab.kill(target, signal.SIGSTOP, restart=True)
            action = f"SIGSTOP {target} for {lease + 2:g} s"
        elif scenario == "link-cut":
            lab.link(target, up=False)
            fault, action = monotonic(), f"links of {target} down"
        elif scenario == "api-partition":
            lab.block_api(target, blocked=True)
            fault, action = monotonic(), f"{target} cut off from the API server"
        else:
            lab.api_pause(paused=True)
            action = f"API server paused for {self.outage_seconds:g} s"
            node_to_check = None
        try:
            if scenario == "freeze":
                time.sleep(lease + 2.0)
            elif scenario == "api-outage":
                time.sleep(self.outage_seconds)
            elif scenario in ("kill", "link-cut", "api-partition"):
                # the rest of the round: until the IP has moved and traffic flows again
                settled = self.wait(lambda: self.settled(None, away_from=target), self.settle_timeout, at_least=lease)
        finally:  # also on Ctrl-C or an error: the lab is left as it was found
            recover_action = self._recover(scenario, target)
            recover = monotonic() if recover_action else None
        replaced = before if scenario in ("graceful", "kill-restart", "kill") else None
        settled = (
            self.wait(lambda: self.settled(node_to_check, replaced=replaced), self.settle_timeout, at_least=0.5)
            and settled
        )
        end = monotonic()
        time.sleep(0.3)  # the outpost writes its log every 50 ms; echoes in flight
        assert self.tail is not None and self.watcher is not None and self.leases is not None
        arrivals = list(self.tail.read())
        return analyse_round(
            scenario=scenario,
            index=index,
            target=target,
            ip=ip,
            fault=fault,
            fault_action=action,
            recover=recover,
            recover_action=recover_action,
            start=start,
            end=end,
            settled=settled,
            sent=[s for p in self.probers for s in list(p.sent)],
            echoed={p.id: dict(p.echoed) for p in self.probers},
            arrivals=arrivals,
            claims=list(self.watcher.claims),
            requests={ip_: list(ts) for ip_, ts in self.watcher.requests.items()},
            leases=list(self.leases.changes),
            allowed=self.allowed,
        )

    def _recover(self, scenario: str, target: str) -> str | None:
        """Undo the fault of ``scenario``; what was done (None: nothing to undo)."""
        lab = self.lab
        if scenario == "freeze":
            lab.kill(target, signal.SIGCONT, restart=True)
            return f"SIGCONT {target}"
        if scenario == "api-outage":
            lab.api_pause(paused=False)
            return "API server resumed"
        if scenario == "kill":
            lab.release(target)
            return f"{target} released (started again)"
        if scenario == "link-cut":
            lab.link(target, up=True)
            return f"links of {target} up"
        if scenario == "api-partition":
            lab.block_api(target, blocked=False)
            return f"{target} reaches the API server again"
        return None

    def run(self, scenario: str, rounds: int, report: Callable[[str], None] | None = None) -> list[RoundResult]:
        results = []
        for i in range(1, rounds + 1):
            result = self.round(scenario, i)
            results.append(result)
            if report is not None:
                report(result.progress(rounds))
        return results


def report_json(
    scenario: str, timing: Mapping[str, Any], results: Sequence[RoundResult], **extra: Any
) -> dict[str, Any]:
    rounds = [r.to_json() for r in results]
    return {"scenario": scenario, "timings": dict(timing), **extra, "rounds": rounds, "summary": summarize(rounds)}


def worst_round(results: Sequence[RoundResult]) -> RoundResult | None:
    """The round with the largest dual-owner time, else the largest gap (no recovery first)."""
    if not results:
        return None
    return max(results, key=lambda r: (r.dual_owner_ms, math.inf if r.gap_ms is None else r.gap_ms))


def plot_round(result: RoundResult, path: str | Path, *, title: str | None = None) -> None:
    """The round's timeline as a PNG: a lane per gateway with the probes it carried (a tick per
    frame, a colour per prober) and its ARP answers, the outpost's good arrivals, the fault,
    the recovery, the takeover and the lease holder changes."""
    import matplotlib  # noqa: PLC0415 - only with --plot

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    from matplotlib.lines import Line2D  # noqa: PLC0415

    def rel(t: float) -> float:
        return t - result.fault

    gateways = sorted({c.node for c in result.claims} | {result.target})
    probers = sorted({s.prober for s in result.sent_events})
    colours = ["tab:blue", "tab:orange", "tab:green", "tab:purple"]
    colour = {p: colours[i % len(colours)] for i, p in enumerate(probers)}
    lanes = [*gateways, "outpost (good)"]
    n = max(1, len(probers))

    def sub(y: float, i: int) -> float:
        """A sub-lane per prober, top to bottom, above the ARP marks."""
        return y + 0.35 - (i + 0.5) * 0.6 / n

    fig, ax = plt.subplots(figsize=(13, 2.2 + 0.9 * len(lanes)))
    for y, gw in enumerate(gateways):
        for i, p in enumerate(probers):
            ts = [rel(c.t) for c in result.claims if c.node == gw and c.kind == "probe" and c.prober == p]
            if ts:
                ax.eventplot(ts, lineoffsets=sub(y, i), linelengths=0.5 / n, colors=colour[p], linewidths=0.6)
        answers = [rel(c.t) for c in result.claims if c.node == gw and c.kind in ("answer", "arp")]
        garps = [rel(c.t) for c in result.claims if c.node == gw and c.kind == "garp"]
        if answers:
            ax.plot(answers, [y - 0.3] * len(answers), "|", color="0.45", markersize=5)
        if garps:
            ax.plot(garps, [y - 0.3] * len(garps), "v", color="black", markersize=5)
    y_out = len(gateways)
    for i, p in enumerate(probers):
        ts = [rel(a.t) for a in result.arrivals if a.prober == p and a.src in result.allowed]
        if ts:
            ax.eventplot(ts, lineoffsets=sub(y_out, i), linelengths=0.5 / n, colors=colour[p], linewidths=0.6)
    for p, g in result.gaps.items():
        if g.start is not None and g.end is not None and g.seconds and g.seconds > 0.05:
            ax.axvspan(rel(g.start), rel(g.end), color=colour[p], alpha=0.12)
            ax.annotate(
                f"gap {g.seconds * 1000:.0f} ms",
                (rel(g.start) + g.seconds / 2, y_out + 0.45),
                ha="center",
                fontsize=8,
                color=colour[p],
            )
    ax.axvline(0, color="red", linewidth=1.5)
    ax.annotate(
        result.fault_action, (0, len(lanes) - 0.4), color="red", fontsize=8, xytext=(3, 0), textcoords="offset points"
    )
    if result.recover is not None:
        ax.axvline(rel(result.recover), color="green", linewidth=1.2, linestyle="--")
        ax.annotate(
            result.recover_action or "recovered",
            (rel(result.recover), len(lanes) - 0.65),
            color="green",
            fontsize=8,
            xytext=(3, 0),
            textcoords="offset points",
        )
    labels: list[tuple[float, list[str]]] = []  # lease changes within 100 ms share one label
    for c in result.leases:
        x = rel(c.t)
        ax.axvline(x, color="0.6", linewidth=0.8, linestyle=":")
        text = f".{c.ip.rsplit('.', 1)[-1]} {c.holder or 'free'} e{c.epoch}"
        if labels and x - labels[-1][0] < 0.1:
            labels[-1][1].append(text)
        else:
            labels.append((x, [text]))
    for x, texts in labels:
        ax.annotate("\n".join(texts), (x, -0.85), rotation=90, fontsize=6.5, color="0.3", va="bottom", ha="right")
    for d in result.duals:
        ax.axvspan(rel(d.start), rel(d.end), color="red", alpha=0.35)
    takeover = [c for c in result.claims if c.kind == "probe" and c.node != result.target and c.t > result.fault]
    if takeover:
        first = min(takeover, key=lambda c: c.t)
        ax.plot([rel(first.t)], [gateways.index(first.node) + 0.45], "*", color="red", markersize=10)
    ax.set_yticks(range(len(lanes)), lanes)
    ax.set_ylim(-0.9, len(lanes) - 0.2)
    ax.set_xlim(rel(result.start), rel(result.end))
    ax.set_xlabel("seconds after the fault")
    handles = [Line2D([], [], color=colour[p], label=f"probes {p.split('.')[0]}") for p in probers]
    handles += [
        Line2D([], [], color="0.45", marker="|", linestyle="", label="ARP answer"),
        Line2D([], [], color="black", marker="v", linestyle="", label="gratuitous ARP"),
        Line2D([], [], color="red", marker="*", linestyle="", label="takeover (first probe via new gateway)"),
        Line2D([], [], color="0.6", linestyle=":", label="lease change (IP: holder, epoch)"),
    ]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    gap = "no recovery" if result.gap_ms is None else f"{result.gap_ms:.0f} ms"
    ax.set_title(
        title
        or f"{result.scenario} round {result.index}: gap {gap}, dual-owner {result.dual_owner_ms:.1f} ms, "
        f"lost {result.lost}"
    )
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(str(path), dpi=110)
    plt.close(fig)
