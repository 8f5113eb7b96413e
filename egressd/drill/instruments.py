"""The instruments of a drill: threads on a running lab, all on CLOCK_MONOTONIC (one clock for
every process of the machine).

* **Probers** (:class:`Prober`): from a socket opened in a pod's namespace
  (``xwing`` and ``ywing``), UDP datagrams to the outpost's probe port every
  :data:`PROBE_INTERVAL` on an absolute schedule, with prober id, sequence
  number and send time; the outpost records each arrival with the source
  address it saw and echoes it. :class:`OutpostTail` reads those records back.
* **Watcher** (:class:`Watcher`): a packet socket on the lab's bridge (in the
  switch namespace, bridge in promiscuous mode, classic BPF filter) that sends
  an ARP request for every egress IP every :data:`~egressd.drill.analysis.ARP_INTERVAL` from a made-up
  MAC and the unused address :data:`WATCHER_IP`, and records, with the kernel's
  receive timestamp, every ARP frame whose sender address is an egress IP
  (answers and gratuitous ARP) and every probe datagram whose source address is
  an egress IP, with its source MAC: which gateway SNATed it. MACs map to nodes
  by the lab's ``eth0``/``net0`` addresses (:func:`node_macs`).
* **Lease poller** (:class:`LeasePoller`): the leases on the API server every
  :data:`LEASE_POLL` (holder and epoch changes).

What they record are the events of :mod:`egressd.drill.analysis`.
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import json
import os
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from egressd.drill.analysis import ARP_INTERVAL, Arrival, Claim, LeaseChange, Sent
from egressd.drill.frames import arp_request, bpf_program, parse_frame
from egressd.lab.netlab import SWITCH, Lab
from egressd.lab.netns import LabError
from egressd.lab.outpost import decode_echo, encode_probe, kernel_receive_time, monotonic
from egressd.lab.scenario import BRIDGE

PROBE_INTERVAL = 0.005
"""Seconds between two probes of one prober (200 per second)."""

LEASE_POLL = 0.02
"""Seconds between two reads of the leases."""

TAIL_INTERVAL = 0.1
"""Seconds between two reads of the outpost's log (it writes every 50 ms)."""

SWITCH_INTERVAL = 0.001
"""The interpreter's thread switch interval in a drill (default 5 ms): a prober thread woken to
send waits at most this long for the interpreter lock held by another instrument's thread."""

WATCHER_MAC = bytes.fromhex("02e9d0000001")
"""Source MAC of the watcher's ARP requests: locally administered, used by nothing in the lab."""

WATCHER_IP = "172.18.255.254"
"""Source address of the watcher's ARP requests: inside the lab's node network, used by nobody."""

_ETH_P_ALL = 0x0003
_SOL_PACKET = 263
_PACKET_ADD_MEMBERSHIP = 1
_PACKET_MR_PROMISC = 1
_PACKET_OUTGOING = 4
_SO_ATTACH_FILTER = 26
_SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
"""Ask for receive timestamps (read by :func:`egressd.lab.outpost.kernel_receive_time`)."""


INSTRUMENT_PRIORITY = 1
"""The real-time priority (``SCHED_RR``, the lowest: above every ordinary process) of the
instruments' threads. A prober that is not scheduled sends nothing, and the pause shows as a
gap between two served probes although nothing went unserved: a daemon restarting takes a core
for most of a second, and 52 ms without a probe was seen so. The probers' threads share the
interpreter lock with the other instruments' threads, so those run at the same priority (a
prober waiting for the lock held by a descheduled ordinary thread would pause all the same).
They are light (a datagram per interval, the frames the filter lets through, a log read every
:data:`TAIL_INTERVAL`); processes they start do not inherit the policy."""


def realtime() -> None:
    """Run the calling thread at :data:`INSTRUMENT_PRIORITY` (on Linux a thread's own policy);
    where that is not allowed (not root), it keeps the ordinary policy."""
    with contextlib.suppress(OSError, AttributeError):
        policy = os.SCHED_RR | getattr(os, "SCHED_RESET_ON_FORK", 0)
        os.sched_setscheduler(0, policy, os.sched_param(INSTRUMENT_PRIORITY))


class DrillError(LabError):
    """A drill could not run (the lab did not settle, an instrument failed)."""


class Worker:
    """A daemon thread running ``self._loop`` until :meth:`stop`."""

    name = "worker"

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.error: BaseException | None = None

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        def guarded() -> None:
            realtime()
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


class Prober(Worker):
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


class OutpostTail(Worker):
    """The outpost's probe records of our probers, read incrementally from its log: every
    :data:`TAIL_INTERVAL` by its own thread once started, and on every :meth:`read`. Reading
    as the log grows keeps each parse small: parsing the records of a whole 30 s hold at once
    held the interpreter long enough to delay the probers' sends by 20-50 ms, a hole in the
    traffic the drill itself made."""

    name = "outpost tail"

    def __init__(self, path: Path, probers: Iterable[str]) -> None:
        super().__init__()
        self._path = path
        self._probers = set(probers)
        try:
            self._offset = path.stat().st_size
        except OSError:
            self._offset = 0
        self._partial = b""
        self._lock = threading.Lock()
        self.arrivals: list[Arrival] = []

    def start(self) -> OutpostTail:
        self._spawn(self._follow, "outpost-tail")
        return self

    def _follow(self) -> None:
        while not self._stop.wait(TAIL_INTERVAL):
            self.read()

    def read(self) -> list[Arrival]:
        """Read what was appended since the last read; every arrival so far."""
        with self._lock:
            self._read()
            return list(self.arrivals)

    def _read(self) -> None:
        try:
            with self._path.open("rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except OSError:
            return
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


class Watcher(Worker):
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
    """The kernel's receive timestamp moved to CLOCK_MONOTONIC; now if absent."""
    t = kernel_receive_time(ancdata)
    return monotonic() if t is None else t


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


class LeasePoller(Worker):
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
