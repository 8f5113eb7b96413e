"""Takeover latency of a real ``egressd run --dataplane kernel`` daemon, phase by phase.

    python chaos/bench_takeover.py [--rounds 60] [--warmup 1] [--json FILE] [--keep-logs DIR]

Needs root. Everything runs in network namespaces created for the run
(``ebt-<hex>-<role>``) on a bridge in a switch namespace, joined by veth pairs;
nothing is added to the root namespace and everything is removed at the end,
also on failure or Ctrl-C:

* ``cp``   10.97.0.2/24: ``egressd apiserver --listen 10.97.0.2:6443``;
* ``gw``   10.97.0.5/24 on ``net0``: ``egressd run --config gw.yaml`` (default
  timings; one group, egress IP 10.97.0.42 on ``net0``, candidates ``gw`` and
  ``ghost``, the latter never runs);
* ``peer`` 10.97.0.9/24: captures ARP frames on the bridge.

Each round steals the lease (a PUT naming ``ghost`` as holder, so the daemon
steps down with ``lost-lease`` and withdraws), waits until the address is gone,
then writes the lease free with the annotation ``egressd.io/preferred-holder:
gw`` (the *trigger*); the daemon, woken by its watch, takes it at once
(``handoff-target``). Times, all on CLOCK_MONOTONIC (one clock for every
process on the machine):

* trigger: just before this script sends the PUT that frees the lease;
* lease acquired: receipt of the watch event (a chunked ``?watch=true`` stream
  on the API server) that shows ``holderIdentity: gw``;
* address present: receipt of the ``RTM_NEWADDR`` of 10.97.0.42 by a netlink
  socket bound in the gw namespace (pyroute2, a thread blocked in ``get()``);
* SNAT active: receipt of the ``add rule inet egressd ... snat ip to
  10.97.0.42`` line of ``ip netns exec gw nft -a monitor rules``, read through a
  pipe. A raw nfnetlink socket bound to the nftables multicast group in the gw
  namespace stamps the same ``NFT_MSG_NEWRULE`` without the pipe and the
  ``nft`` process in between; the difference between the two is reported as the
  monitor's pipe latency;
* first gratuitous ARP: the kernel receive timestamp (``SO_TIMESTAMPNS``,
  CLOCK_REALTIME, converted to CLOCK_MONOTONIC with an offset read at receipt)
  of the first ARP frame with sender 10.97.0.42 and the gw MAC on an
  ``AF_PACKET`` socket in the peer namespace. The lag from that timestamp to
  the frame's receipt by the capturing thread is reported too.

Every round must see lease -> address -> SNAT -> GARP in that order (SNAT at
the earlier of its two receipts; the order by the monitor line alone is shown
too); rounds out of order are counted, rounds without all four events within
``--timeout`` are skipped and reported. Random pauses after each withdrawal and
each takeover spread the trigger over the daemon's renew cycle. p50 is the
median, p99 the nearest rank (with 60 rounds, the second largest).

Diagnostics below the table split the phases further: the daemon's own
``egressd_takeover_phase_seconds`` (scraped from its metrics endpoint before and
after each round), the time from the SNAT rule's arrival in the kernel to the
daemon's return from ``Snat.activate``, and receipt lags of the recorders.
``--snat-backend nft-command`` runs a variant of the daemon that applies its
nftables transactions with one ``nft`` process each (``chaos/_bench_nftcmd_daemon.py``,
the adapter's fallback) for comparison with the shipped in-process libnftables;
see "Takeover latency" in docs/kernel-fences.md for the figures and why.

Measured on this machine (kernel 6.18, 2 busy cores, nftables 1.0.6), 60 rounds,
p50 / p99 / max in ms::

                                     nft-command               libnftables (now shipped)
    trigger -> lease acquired          3.6 /  7.3 /  8.4        4.4 /  7.5 /  7.5
    lease -> address present           2.6 /  5.7 / 39.0        3.0 /  5.3 /  5.7
    lease -> SNAT active               7.1 / 13.1 / 43.6        4.7 /  8.2 /  9.7
    lease -> first GARP on the wire   23.4 / 50.0 / 57.8        5.9 / 10.2 / 10.8

Most of the shipped daemon's SNAT -> GARP gap (15 ms p50) is the ``nft``
process blocking in ``close()`` of its nfnetlink socket after the commit (it
waits for nf_tables' transaction-destroy work, i.e. an RCU grace period).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import ipaddress
import json
import os
import platform
import random
import re
import secrets
import shlex
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Generic, TypeVar

from pyroute2 import IPRoute
from pyroute2.netlink.rtnl import RTMGRP_IPV4_IFADDR
from pyroute2.netns import setns

import egressd
from egressd.core.lease import ANN_PREFERRED_HOLDER, lease_name, object_from_record, record_from_object, released
from egressd.core.model import Timing
from egressd.lab.netns import Namespaces, link_mac

CP_ADDR, GW_ADDR, PEER_ADDR = "10.97.0.2", "10.97.0.5", "10.97.0.9"
EGRESS_IP = "10.97.0.42"
GHOST_ADDR = "10.97.0.77"
API_PORT = 6443
NAMESPACE = "egressd"
LEASE = lease_name(EGRESS_IP)
LEASES_PATH = f"/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases"
VENV_BIN = Path(sys.executable).parent

T = TypeVar("T")


def sh(*argv: str, check: bool = True, timeout: float = 20) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


# --- namespaces ---------------------------------------------------------------------------


def enter(ns: str) -> None:
    """Move the calling thread (only it) into ``ns``; sockets it opens stay there."""
    setns(ns, flags=0)


# --- event recorders ----------------------------------------------------------------------


class Timeline(Generic[T]):
    """Events stamped on CLOCK_MONOTONIC, appended by one thread, awaited by another."""

    def __init__(self) -> None:
        self._events: list[tuple[float, T]] = []
        self._cond = threading.Condition()

    def add(self, at: float, item: T) -> None:
        with self._cond:
            self._events.append((at, item))
            self._cond.notify_all()

    def first(self, match: Callable[[float, T], bool], timeout: float) -> tuple[float, T] | None:
        """The earliest event that matches, waiting up to ``timeout`` for it."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for at, item in self._events[seen:]:
                    if match(at, item):
                        return at, item
                seen = len(self._events)
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)


@dataclass(frozen=True)
class LeaseSeen:
    kind: str
    holder: str | None
    rv: int
    preferred: str | None
    renew_time: datetime | None
    transitions: int


class LeaseWatch(threading.Thread):
    """A chunked ``?watch=true`` stream of the leases, read line by line in the cp namespace."""

    def __init__(self, ns: str) -> None:
        super().__init__(name="bench-lease-watch", daemon=True)
        self.ns = ns
        self.events: Timeline[LeaseSeen] = Timeline()
        self.ready = threading.Event()
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self._conn: http.client.HTTPConnection | None = None

    def run(self) -> None:
        enter(self.ns)
        rv = ""
        while not self.stop.is_set():
            try:
                rv = self._stream(rv)
            except Exception as exc:
                if self.stop.is_set():
                    return
                self.error = exc
                time.sleep(0.05)

    def _stream(self, rv: str) -> str:
        """Follow one watch from ``rv`` (all current objects first when empty) until it ends;
        returns the last resourceVersion seen, to resume from."""
        conn = self._conn = http.client.HTTPConnection(CP_ADDR, API_PORT, timeout=None)
        query = "watch=true&allowWatchBookmarks=false&timeoutSeconds=1800"
        conn.request("GET", f"{LEASES_PATH}?{query}" + (f"&resourceVersion={rv}" if rv else ""))
        resp = conn.getresponse()
        if resp.status != 200:
            raise RuntimeError(f"watch answered {resp.status}: {resp.read()[:300]!r}")
        self.ready.set()
        while line := resp.readline():
            at = time.monotonic()
            event = json.loads(line)
            obj = event.get("object") or {}
            if event.get("type") not in ("ADDED", "MODIFIED", "DELETED"):
                continue
            rv = obj["metadata"]["resourceVersion"]
            if obj["metadata"]["name"] != LEASE:
                continue
            rec = record_from_object(obj)
            seen = LeaseSeen(event["type"], rec.holder, int(rv), rec.preferred_holder, rec.renew_time, rec.transitions)
            self.events.add(at, seen)
        return rv

    def close(self) -> None:
        self.stop.set()
        if self._conn is not None and self._conn.sock is not None:
            with contextlib.suppress(OSError):
                self._conn.sock.shutdown(socket.SHUT_RDWR)


@dataclass(frozen=True)
class AddrSeen:
    event: str  # "new" or "del"


class AddressMonitor(threading.Thread):
    """RTM_NEWADDR/RTM_DELADDR of the egress IP in the gw namespace, stamped on receipt."""

    def __init__(self, ns: str) -> None:
        super().__init__(name="bench-address-monitor", daemon=True)
        self.ns = ns
        self.events: Timeline[AddrSeen] = Timeline()
        self.ready = threading.Event()
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.mon: Any = None

    def run(self) -> None:
        try:
            # created in this thread: pyroute2's synchronous API serves the thread that made it
            self.mon = IPRoute(netns=self.ns)
            self.mon.bind(groups=RTMGRP_IPV4_IFADDR)
        except Exception as exc:
            self.error = exc
            return
        finally:
            self.ready.set()
        while not self.stop.is_set():
            try:
                messages = self.mon.get()
            except Exception as exc:
                if not self.stop.is_set():
                    self.error = exc
                return
            at = time.monotonic()
            for msg in messages:
                kind = msg.get("event")
                if kind in ("RTM_NEWADDR", "RTM_DELADDR") and EGRESS_IP in (
                    msg.get("IFA_LOCAL"),
                    msg.get("IFA_ADDRESS"),
                ):
                    self.events.add(at, AddrSeen("new" if kind == "RTM_NEWADDR" else "del"))

    def close(self) -> None:
        self.stop.set()
        if self.mon is not None:
            with contextlib.suppress(Exception):
                self.mon.close()


@dataclass(frozen=True)
class RuleSeen:
    event: str  # "add" or "del"
    handle: int


_ADD_SNAT = re.compile(r"^add rule inet egressd (\S+) .*snat ip to " + re.escape(EGRESS_IP) + r"\b.*# handle (\d+)")
_DEL_RULE = re.compile(r"^delete rule inet egressd (\S+) handle (\d+)")


class RuleMonitor(threading.Thread):
    """``nft -a monitor rules`` in the gw namespace, each line stamped when this thread reads it."""

    def __init__(self, ns: str) -> None:
        super().__init__(name="bench-nft-monitor", daemon=True)
        self.events: Timeline[RuleSeen] = Timeline()
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, "nft", "-a", "monitor", "rules"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )
        self._snat_handles: set[int] = set()

    def run(self) -> None:
        out: IO[bytes] | None = self.proc.stdout
        assert out is not None
        for raw in iter(out.readline, b""):
            at = time.monotonic()
            line = raw.decode(errors="replace").strip()
            if m := _ADD_SNAT.match(line):
                self._snat_handles.add(int(m.group(2)))
                self.events.add(at, RuleSeen("add", int(m.group(2))))
            elif (m := _DEL_RULE.match(line)) and int(m.group(2)) in self._snat_handles:
                self._snat_handles.discard(int(m.group(2)))
                self.events.add(at, RuleSeen("del", int(m.group(2))))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(2)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


NETLINK_NETFILTER = 12
NFNLGRP_NFTABLES = 7
NFT_MSG_NEWRULE = (10 << 8) | 6  # NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWRULE
NFTA_RULE_TABLE = 1
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1


class NftNetlink(threading.Thread):
    """NFT_MSG_NEWRULE for table ``egressd`` on a raw nfnetlink socket in the gw namespace:
    the same events as ``nft monitor``, without the pipe, to measure the monitor's lag."""

    def __init__(self, ns: str) -> None:
        super().__init__(name="bench-nft-netlink", daemon=True)
        self.ns = ns
        self.events: Timeline[str] = Timeline()
        self.ready = threading.Event()
        self.stop = threading.Event()
        self.sock: socket.socket | None = None

    def run(self) -> None:
        enter(self.ns)
        sock = self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.bind((0, 0))
        sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, NFNLGRP_NFTABLES)
        sock.settimeout(0.2)
        self.ready.set()
        while not self.stop.is_set():
            try:
                data = sock.recv(1 << 16)
            except TimeoutError:
                continue
            except OSError:
                if self.stop.is_set():
                    return
                continue  # ENOBUFS: events were lost; the monitor still has them
            at = time.monotonic()
            for msg_type, payload in _netlink_messages(data):
                if msg_type == NFT_MSG_NEWRULE and _nft_table(payload) == "egressd":
                    self.events.add(at, "newrule")

    def close(self) -> None:
        self.stop.set()


def _netlink_messages(data: bytes) -> Iterator[tuple[int, bytes]]:
    offset = 0
    while offset + 16 <= len(data):
        length, msg_type, _flags, _seq, _pid = struct.unpack_from("=IHHII", data, offset)
        if length < 16:
            return
        yield msg_type, data[offset + 16 : offset + length]
        offset += (length + 3) & ~3


def _nft_table(payload: bytes) -> str | None:
    """NFTA_RULE_TABLE of an nftables rule message (after the 4-byte nfgenmsg)."""
    offset = 4
    while offset + 4 <= len(payload):
        length, kind = struct.unpack_from("=HH", payload, offset)
        if length < 4:
            return None
        if kind & 0x3FFF == NFTA_RULE_TABLE:
            return payload[offset + 4 : offset + length].rstrip(b"\0").decode(errors="replace")
        offset += (length + 3) & ~3
    return None


@dataclass(frozen=True)
class ArpSeen:
    op: int
    sender_mac: str
    received: float
    """CLOCK_MONOTONIC when the capturing thread got the frame."""


ETH_P_ARP = 0x0806
SO_TIMESTAMPNS = 35


class ArpCapture(threading.Thread):
    """ARP frames claiming the egress IP, on an AF_PACKET socket in the peer namespace,
    timed by the kernel's receive timestamp."""

    def __init__(self, ns: str, ifname: str) -> None:
        super().__init__(name="bench-arp-capture", daemon=True)
        self.ns, self.ifname = ns, ifname
        self.events: Timeline[ArpSeen] = Timeline()
        self.ready = threading.Event()
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            enter(self.ns)
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            sock.bind((self.ifname, ETH_P_ARP))
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            sock.settimeout(0.2)
        except OSError as exc:
            self.error = exc
            self.ready.set()
            return
        egress = ipaddress.IPv4Address(EGRESS_IP).packed
        self.ready.set()
        with sock:
            while not self.stop.is_set():
                try:
                    data, anc, _flags, _addr = sock.recvmsg(2048, 64)
                except TimeoutError:
                    continue
                received = time.monotonic()
                offset = time.time() - received  # realtime - monotonic, read at once
                if len(data) < 42 or data[12:14] != b"\x08\x06" or data[28:32] != egress:
                    continue
                stamp = received
                for level, kind, value in anc:
                    if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(value) >= 16:
                        sec, nsec = struct.unpack_from("=qq", value)
                        stamp = sec + nsec / 1e9 - offset
                op = struct.unpack_from("!H", data, 20)[0]
                mac = ":".join(f"{b:02x}" for b in data[22:28])
                self.events.add(stamp, ArpSeen(op, mac, received))


# --- the API server -----------------------------------------------------------------------


class Api:
    """Blocking HTTP to the lab API server from one thread inside the cp namespace."""

    def __init__(self, ns: str) -> None:
        self._pool = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="bench-api", initializer=enter, initargs=(ns,)
        )
        self._conn: http.client.HTTPConnection | None = None

    def call(self, method: str, path: str, body: Any = None, timeout: float = 5.0) -> tuple[int, Any, float]:
        """(status, parsed body, CLOCK_MONOTONIC just before the request was sent)."""
        return self._pool.submit(self._call, method, path, body, timeout).result(timeout + 1)

    def _call(self, method: str, path: str, body: Any, timeout: float) -> tuple[int, Any, float]:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        for attempt in (1, 2):  # a kept-alive connection the server closed: once more on a new one
            if self._conn is None:
                self._conn = http.client.HTTPConnection(CP_ADDR, API_PORT, timeout=timeout)
            try:
                sent = time.monotonic()
                self._conn.request(method, path, body=data, headers=headers)
                resp = self._conn.getresponse()
                raw = resp.read()
            except (OSError, http.client.HTTPException):
                self._conn.close()
                self._conn = None
                if attempt == 2:
                    raise
                continue
            return resp.status, json.loads(raw) if raw else None, sent
        raise AssertionError("unreachable")

    def get_lease(self) -> dict[str, Any]:
        status, obj, _ = self.call("GET", f"{LEASES_PATH}/{LEASE}")
        if status != 200:
            raise RuntimeError(f"GET lease: {status} {obj}")
        return dict(obj)

    def put_lease(self, obj: dict[str, Any]) -> tuple[int, dict[str, Any], float]:
        status, body, sent = self.call("PUT", f"{LEASES_PATH}/{LEASE}", obj)
        return status, dict(body or {}), sent

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._pool.submit(self._conn.close).result(2)
        self._pool.shutdown(wait=False, cancel_futures=True)


def wait_http(api: Api, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            status, _, _ = api.call("GET", "/version", timeout=1.0)
            if status == 200:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the lab API server did not answer within {timeout} s")
        time.sleep(0.05)


class DaemonMetrics:
    """The daemon's own takeover phases from its metrics endpoint (127.0.0.1:9464 in the gw
    namespace): ``egressd_takeover_phase_seconds`` is observed once per takeover and phase, from
    the send of the winning lease write to the end of the phase, so the growth of its sum over
    one round is that round's value."""

    PHASES = ("address", "snat", "garp")

    def __init__(self, ns: str) -> None:
        self._pool = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="bench-metrics", initializer=enter, initargs=(ns,)
        )

    def read(self) -> dict[str, tuple[float, int]]:
        """phase -> (sum, count); empty if the endpoint does not answer."""
        try:
            text = self._pool.submit(self._scrape).result(5)
        except Exception:
            return {}
        sums = dict(re.findall(r'egressd_takeover_phase_seconds_sum\{phase="(\w+)"\} (\S+)', text))
        counts = dict(re.findall(r'egressd_takeover_phase_seconds_count\{phase="(\w+)"\} (\S+)', text))
        return {p: (float(sums[p]), round(float(counts.get(p, 0)))) for p in sums}

    def delta(self, before: dict[str, tuple[float, int]], timeout: float = 2.0) -> dict[str, float]:
        """Each phase's value of the one takeover since ``before`` (waits until all are observed)."""
        deadline = time.monotonic() + timeout
        while True:
            now = self.read()
            grown = {p: now[p][1] - before.get(p, (0.0, 0))[1] for p in self.PHASES if p in now}
            if len(grown) == len(self.PHASES) and all(g == 1 for g in grown.values()):
                return {p: now[p][0] - before.get(p, (0.0, 0))[0] for p in self.PHASES}
            if any(g > 1 for g in grown.values()) or time.monotonic() > deadline:
                return {}
            time.sleep(0.01)

    @staticmethod
    def _scrape() -> str:
        with urllib.request.urlopen("http://127.0.0.1:9464/metrics", timeout=2) as resp:
            return str(resp.read().decode())

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


# --- one round ----------------------------------------------------------------------------


@dataclass
class Round:
    index: int
    trigger_to_lease: float
    lease_to_address: float
    lease_to_snat: float
    lease_to_garp: float
    steal_to_withdrawn: float
    trigger_to_write_started: float | None
    """From the trigger to the daemon's acquire write as dated by its ``renewTime``
    (wall clock when the daemon built the record)."""
    snat_monitor_lag: float | None
    """``nft monitor`` line receipt minus raw nfnetlink receipt of the same rule."""
    garp_receipt_lag: float
    lease_to_snat_netlink: float | None
    daemon_phases: dict[str, float]
    """The daemon's own view: lease write sent -> address / snat / garp phase done."""
    snat_return_lag: float | None
    """From the SNAT rule's NFT_MSG_NEWRULE (raw nfnetlink) to the daemon's return from
    ``Snat.activate``, dated as write sent (renewTime) + the daemon's snat phase."""
    in_order: bool
    """lease <= address <= SNAT <= GARP, SNAT at the earlier of its two receipts (monitor line,
    raw nfnetlink): a receipt can only be late, so the earlier one is the closer to the kernel."""
    in_order_by_monitor: bool
    """The same with the SNAT time of the ``nft monitor`` line alone."""


@dataclass
class Rig:
    api: Api
    watch: LeaseWatch
    addresses: AddressMonitor
    rules: RuleMonitor
    nfnl: NftNetlink
    arp: ArpCapture
    metrics: DaemonMetrics
    gw_mac: str


class RoundFailed(Exception):
    pass


def lease_epoch_offset() -> float:
    """CLOCK_REALTIME - CLOCK_MONOTONIC now, to date wall-clock stamps on the monotonic clock."""
    return time.time() - time.monotonic()


def steal(rig: Rig) -> tuple[float, int]:
    """Write the lease to ``ghost``: the daemon steps down (lost-lease) and withdraws."""
    for _ in range(5):
        rec = record_from_object(rig.api.get_lease())
        if rec.holder != "gw":
            raise RoundFailed(f"lease held by {rec.holder!r} before the steal, not gw")
        now = datetime.now(UTC)
        ghost = replace(
            rec,
            holder="ghost",
            holder_address=GHOST_ADDR,
            incarnation="bench-ghost",
            transitions=rec.transitions + 1,
            acquire_time=now,
            renew_time=now,
            preferred_holder=None,
        )
        status, body, sent = rig.api.put_lease(object_from_record(ghost, NAMESPACE))
        if status == 200:
            return sent, int(body["metadata"]["resourceVersion"])
        if status != 409:  # 409: a renew of the daemon came first; read again
            raise RoundFailed(f"steal: PUT answered {status}: {body}")
    raise RoundFailed("steal: five conflicts in a row")


def free_for_gw(rig: Rig) -> tuple[float, int]:
    """The trigger: write the lease free, naming gw as the preferred holder (a handoff to gw)."""
    rec = record_from_object(rig.api.get_lease())
    if rec.holder != "ghost":
        raise RoundFailed(f"lease held by {rec.holder!r} before the trigger, not ghost")
    free = released(rec, successor="gw", now=datetime.now(UTC))
    obj = object_from_record(free, NAMESPACE)
    assert obj["metadata"]["annotations"][ANN_PREFERRED_HOLDER] == "gw"
    status, body, sent = rig.api.put_lease(obj)
    if status != 200:
        raise RoundFailed(f"trigger: PUT answered {status}: {body}")
    return sent, int(body["metadata"]["resourceVersion"])


def run_round(rig: Rig, index: int, timeout: float, pause: tuple[float, float]) -> Round:
    before = rig.metrics.read()
    stolen_at, stolen_rv = steal(rig)
    gone = rig.addresses.events.first(lambda at, e: at >= stolen_at and e.event == "del", timeout)
    snat_gone = rig.rules.events.first(lambda at, e: at >= stolen_at and e.event == "del", timeout)
    if gone is None or snat_gone is None:
        raise RoundFailed(f"the daemon did not withdraw within {timeout} s of the steal (rv {stolen_rv})")
    withdrawn = max(gone[0], snat_gone[0])
    time.sleep(random.uniform(*pause))

    trigger, trigger_rv = free_for_gw(rig)
    lease = rig.watch.events.first(lambda _at, e: e.rv > trigger_rv and e.holder == "gw", timeout)
    address = rig.addresses.events.first(lambda at, e: at >= trigger and e.event == "new", timeout)
    snat = rig.rules.events.first(lambda at, e: at >= trigger and e.event == "add", timeout)
    garp = rig.arp.events.first(lambda at, e: at >= trigger and e.sender_mac == rig.gw_mac, timeout)
    missing = [n for n, v in (("lease", lease), ("address", address), ("snat", snat), ("garp", garp)) if v is None]
    if missing or lease is None or address is None or snat is None or garp is None:
        raise RoundFailed(f"no {', '.join(missing)} within {timeout} s of the trigger")
    nl = rig.nfnl.events.first(lambda at, _e: at >= trigger, 0.2)
    written = lease[1].renew_time
    write_started = written.timestamp() - lease_epoch_offset() if written is not None else None
    t_lease, t_addr, t_snat, t_garp = lease[0], address[0], snat[0], garp[0]
    phases = rig.metrics.delta(before)
    snat_returned = None if write_started is None or "snat" not in phases else write_started + phases["snat"]
    return Round(
        index=index,
        trigger_to_lease=t_lease - trigger,
        lease_to_address=t_addr - t_lease,
        lease_to_snat=t_snat - t_lease,
        lease_to_garp=t_garp - t_lease,
        steal_to_withdrawn=withdrawn - stolen_at,
        trigger_to_write_started=None if write_started is None else write_started - trigger,
        snat_monitor_lag=None if nl is None else t_snat - nl[0],
        garp_receipt_lag=garp[1].received - t_garp,
        lease_to_snat_netlink=None if nl is None else nl[0] - t_lease,
        daemon_phases=phases,
        snat_return_lag=None if nl is None or snat_returned is None else snat_returned - nl[0],
        in_order=t_lease <= t_addr <= (t_snat if nl is None else min(t_snat, nl[0])) <= t_garp,
        in_order_by_monitor=t_lease <= t_addr <= t_snat <= t_garp,
    )


# --- set-up, run, report ------------------------------------------------------------------


def gw_config(path: Path) -> Path:
    path.write_text(
        json.dumps(
            {
                "node": {"name": "gw", "address": GW_ADDR},
                "kubernetes": {"access": "url", "url": f"http://{CP_ADDR}:{API_PORT}", "namespace": NAMESPACE},
                "groups": [
                    {
                        "name": "bench",
                        "egressIPs": [EGRESS_IP],
                        "interface": "net0",
                        "candidates": ["gw", "ghost"],
                        "sourceCIDRs": ["10.244.1.0/24"],
                        "destinationCIDRs": ["10.97.0.0/24"],
                    }
                ],
            },
            indent=2,
        )
        + "\n"
    )
    return path


def egressd_argv(*args: str) -> list[str]:
    return [str(VENV_BIN / "egressd"), *args]


def stop_process(proc: subprocess.Popen[bytes] | None, grace: float) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def row(label: str, values: list[float]) -> str:
    if not values:
        return f"  {label:<40} (no data)"
    ms = [v * 1000 for v in values]
    return (
        f"  {label:<40} {statistics.median(ms):8.1f} {quantile(ms, 0.99):8.1f} {max(ms):8.1f}"
        f" {min(ms):8.1f}   n={len(ms)}"
    )


def tool_version(*argv: str) -> str:
    try:
        return sh(*argv).strip().splitlines()[0]
    except (RuntimeError, OSError, IndexError):
        return "?"


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=60, help="takeovers to time (default 60)")
    parser.add_argument("--warmup", type=int, default=1, help="takeovers before the timed ones, not counted")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per phase before a round is skipped")
    parser.add_argument("--json", type=Path, help="write parameters, rounds and summary here")
    parser.add_argument("--keep-logs", type=Path, help="copy the daemon's and the API server's logs here")
    parser.add_argument("--seed", type=int, default=None, help="seed of the random pauses")
    parser.add_argument(
        "--snat-backend",
        choices=["libnftables", "nft-command"],
        default="libnftables",
        help="libnftables: the daemon as shipped (transactions in process); nft-command: a variant with one "
        "nft process per transaction (chaos/_bench_nftcmd_daemon.py), for comparison",
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_takeover: needs root (network namespaces)", file=sys.stderr)
        return 2
    rng_seed = args.seed if args.seed is not None else secrets.randbits(32)
    random.seed(rng_seed)
    sys.setswitchinterval(0.0005)  # the recorder threads wake promptly even when another holds the GIL

    owner = os.getpid()

    def on_term(_signum: int, _frame: object) -> None:
        if os.getpid() != owner:  # a helper pyroute2 forked to open a socket in a namespace
            os._exit(143)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    pause_after_withdraw = (0.05, 0.3)
    pause_after_takeover = (0.2, 0.6)
    timing = Timing()
    params: dict[str, Any] = {
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "rounds": args.rounds,
        "warmup": args.warmup,
        "timeout_s": args.timeout,
        "seed": rng_seed,
        "snat_backend": args.snat_backend,
        "pause_after_withdraw_s": pause_after_withdraw,
        "pause_after_takeover_s": pause_after_takeover,
        "timing": {
            "leaseDuration": timing.lease_duration,
            "renewDeadline": timing.renew_deadline,
            "retryPeriod": timing.retry_period,
            "addressLifetime": timing.address_lifetime,
            "fenceTtl": timing.fence_ttl,
        },
        "egress_ip": EGRESS_IP,
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "egressd": egressd.__version__,
        "nft": tool_version("nft", "--version"),
    }
    lab = Namespaces(f"ebt-{secrets.token_hex(3)}-")
    tmp = Path(tempfile.mkdtemp(prefix="bench-takeover-"))
    procs: dict[str, subprocess.Popen[bytes]] = {}
    closers: list[Callable[[], None]] = []
    rounds: list[Round] = []
    warm: list[Round] = []
    failures: list[str] = []
    try:
        switch = lab.switch("sw")
        cp = lab.attach("cp", switch, [f"{CP_ADDR}/24"])
        gw = lab.attach("gw", switch, [f"{GW_ADDR}/24"])
        peer = lab.attach("peer", switch, [f"{PEER_ADDR}/24"])
        params["namespaces"] = {"cp": cp, "gw": gw, "peer": peer, "switch": switch}
        gw_mac = link_mac(gw, "net0")
        cfg = gw_config(tmp / "gw.yaml")
        print(sh(*egressd_argv("check-config", str(cfg))).strip())

        with (tmp / "apiserver.log").open("wb") as log:
            procs["apiserver"] = subprocess.Popen(
                ["ip", "netns", "exec", cp, *egressd_argv("apiserver", "--listen", f"{CP_ADDR}:{API_PORT}")],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
            )
        api = Api(cp)
        closers.append(api.close)
        wait_http(api, 15.0)
        status, body, _ = api.call(
            "POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
        )
        if status not in (200, 201, 409):
            raise RuntimeError(f"creating namespace {NAMESPACE}: {status} {body}")

        watch = LeaseWatch(cp)
        addresses = AddressMonitor(gw)
        rules = RuleMonitor(gw)
        nfnl = NftNetlink(gw)
        arp = ArpCapture(peer, "net0")
        for thread, closer in (
            (watch, watch.close),
            (addresses, addresses.close),
            (rules, rules.close),
            (nfnl, nfnl.close),
            (arp, arp.stop.set),
        ):
            closers.append(closer)
            thread.start()
        for name, ready in (
            ("watch", watch.ready),
            ("address", addresses.ready),
            ("netlink", nfnl.ready),
            ("arp", arp.ready),
        ):
            if not ready.wait(10):
                raise RuntimeError(f"the {name} recorder did not start")
        for name, error in (("address monitor", addresses.error), ("ARP capture", arp.error)):
            if error is not None:
                raise RuntimeError(f"{name}: {error}")
        time.sleep(0.3)  # let nft monitor subscribe before anything happens in the gw namespace
        metrics = DaemonMetrics(gw)
        closers.append(metrics.close)
        rig = Rig(api, watch, addresses, rules, nfnl, arp, metrics, gw_mac)

        started = time.monotonic()
        with (tmp / "gw.log").open("wb") as log:
            run_argv = ["run", "--config", str(cfg), "--dataplane", "kernel"]
            if args.snat_backend == "nft-command":
                daemon = [sys.executable, str(Path(__file__).with_name("_bench_nftcmd_daemon.py")), *run_argv]
            else:
                daemon = egressd_argv(*run_argv)
            procs["gw"] = subprocess.Popen(
                ["ip", "netns", "exec", gw, *daemon],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
            )
        for what, got in (
            ("lease", lambda: watch.events.first(lambda _a, e: e.holder == "gw", 20)),
            ("address", lambda: addresses.events.first(lambda _a, e: e.event == "new", 20)),
            ("snat", lambda: rules.events.first(lambda _a, e: e.event == "add", 20)),
            ("garp", lambda: arp.events.first(lambda _a, e: e.sender_mac == gw_mac, 20)),
        ):
            if got() is None:
                raise RuntimeError(f"the daemon did not take the IP at start ({what} missing); see {tmp}/gw.log")
        print(f"daemon serving {EGRESS_IP} {time.monotonic() - started:.2f} s after start; namespaces {lab.prefix}-*")

        total = args.warmup + args.rounds
        for i in range(total):
            time.sleep(random.uniform(*pause_after_takeover))
            try:
                r = run_round(rig, i, args.timeout, pause_after_withdraw)
            except RoundFailed as exc:
                failures.append(f"round {i}: {exc}")
                print(f"  round {i}: FAILED: {exc}", file=sys.stderr)
                # back to a known state: wait for the daemon to hold the lease again
                watch.events.first(lambda at, e: at > time.monotonic() - 1 and e.holder == "gw", 2 * args.timeout)
                continue
            (warm if i < args.warmup else rounds).append(r)
            if procs["gw"].poll() is not None:
                raise RuntimeError(f"the daemon exited ({procs['gw'].returncode}); see {tmp}/gw.log")
    except KeyboardInterrupt:
        print("interrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        stop_process(procs.get("gw"), 6.0)
        stop_process(procs.get("apiserver"), 3.0)
        for closer in reversed(closers):
            with contextlib.suppress(Exception):
                closer()
        lab.close()
        if args.keep_logs:
            args.keep_logs.mkdir(parents=True, exist_ok=True)
            for name in ("gw.log", "apiserver.log", "gw.yaml"):
                with contextlib.suppress(OSError):
                    (args.keep_logs / name).write_bytes((tmp / name).read_bytes())
        for child in tmp.iterdir():
            child.unlink()
        tmp.rmdir()

    report(params, rounds, warm, failures, args.json)
    return 0 if rounds and not failures else 1


def report(
    params: dict[str, Any],
    rounds: list[Round],
    warm: list[Round],
    failures: list[str],
    json_path: Path | None,
) -> None:
    out_of_order = [r.index for r in rounds if not r.in_order]
    monitor_order = [r.index for r in rounds if not r.in_order_by_monitor]
    print()
    print("parameters:")
    for key, value in params.items():
        print(f"  {key}: {value}")
    print()
    print(f"rounds timed: {len(rounds)}  skipped (failed): {len(failures)}  out of order: {len(out_of_order)}")
    for failure in failures:
        print(f"  {failure}")
    print()
    print(f"  {'ms':<40} {'p50':>8} {'p99':>8} {'max':>8} {'min':>8}")
    print(row("trigger -> lease acquired", [r.trigger_to_lease for r in rounds]))
    print(row("lease -> address present", [r.lease_to_address for r in rounds]))
    print(row("lease -> SNAT active", [r.lease_to_snat for r in rounds]))
    print(row("lease -> first GARP on the wire", [r.lease_to_garp for r in rounds]))
    print()
    print("diagnostics:")

    def opt(values: list[float | None]) -> list[float]:
        return [v for v in values if v is not None]

    def phase(name: str) -> list[float]:
        return [r.daemon_phases[name] for r in rounds if name in r.daemon_phases]

    print(row("trigger -> acquire write (renewTime)", opt([r.trigger_to_write_started for r in rounds])))
    print(row("lease -> SNAT (raw nfnetlink)", opt([r.lease_to_snat_netlink for r in rounds])))
    print(row("nft monitor pipe lag", opt([r.snat_monitor_lag for r in rounds])))
    print(row("SNAT active -> first GARP", [r.lease_to_garp - r.lease_to_snat for r in rounds]))
    print(row("daemon: write -> address claimed", phase("address")))
    print(row("daemon: write -> Snat.activate returned", phase("snat")))
    print(row("daemon: write -> first GARP sent", phase("garp")))
    print(row("SNAT in kernel -> activate returned", opt([r.snat_return_lag for r in rounds])))
    print(row("GARP kernel stamp -> capture thread", [r.garp_receipt_lag for r in rounds]))
    print(row("steal -> withdrawn (address, SNAT)", [r.steal_to_withdrawn for r in rounds]))
    if out_of_order:
        print(f"  out of order: rounds {out_of_order}")
    if monitor_order != out_of_order:
        print(f"  out of order by the nft monitor line alone (its pipe lag): rounds {monitor_order}")
    if json_path is not None:
        json_path.write_text(
            json.dumps(
                {
                    "parameters": params,
                    "rounds": [asdict(r) for r in rounds],
                    "warmup": [asdict(r) for r in warm],
                    "failures": failures,
                    "out_of_order": out_of_order,
                    "out_of_order_by_monitor": monitor_order,
                },
                indent=2,
            )
            + "\n"
        )


if __name__ == "__main__":
    sys.exit(main())
