"""Conntrack entries of the flows an owner SNATs, as they travel between
gateways: the entry, its validation, and a compact binary encoding that fits
mesh datagrams.

**The entry.** What a candidate needs to recreate an owner's flow in its own
kernel (``docs/conntrack.md`` says why each field matters): the protocol
(TCP or UDP), the original tuple (pod -> server, as the pod sent it), the
reply tuple (server -> egress IP and mapped port: the SNAT mapping), the
status bits, the TCP state with the window scales and flags of both
directions, the seconds left before the entry times out, and the mark. Only
source-NAT entries of the egress IPs travel: the reply tuple's source is the
original destination (no DNAT), its destination is the egress IP.

**Validation** (:func:`check_entry`) refuses, with a short reason that is a
metric label (:class:`EntryRejected`), entries whose fields are out of range
and entries whose egress IP the sender does not own: the caller passes
``owns``, a predicate over the egress IP (the reply destination), so a peer
cannot plant a mapping for an IP it does not serve.

**Encoding** (:func:`encode_batch`, :func:`decode_batch`). A batch of
records (an :class:`Entry` to create or update, a :class:`Removal` of a flow
that ended) is split into payloads of at most ``limit`` bytes, by default what
a mesh datagram leaves after its header and signature
(:data:`PAYLOAD_LIMIT`). Layout, big-endian::

    payload  = version (u8, 1) | count (u8) | record * count
    record   = flags (u8) | original tuple | [upsert part]
    flags    : bit 0 removal, bit 1 IPv6, bit 2 TCP (else UDP); others 0
    tuple    = src (4 or 16) | dst (4 or 16) | sport (u16) | dport (u16)
    upsert   = egress IP (4 or 16) | mapped port (u16) | status (u32)
               | timeout s (u32) | mark (u32) | [TCP: state (u8)
               | wscale original << 4 | wscale reply (u8)
               | flags original (u8) | flags reply (u8)]

The reply tuple is not sent whole: for a source-NAT entry it is
(original dst, egress IP, original dport, mapped port). An IPv4 TCP entry
takes 35 bytes, so a 1,164-byte payload carries 33 of them; a removal takes
13 bytes (IPv4) or 37 (IPv6). Decoding checks every length and field and
raises :class:`EntryRejected` (``malformed``) for anything else; it never
returns part of a payload.

Pure: no sockets, no clock.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import IntEnum, IntFlag

from egressd.core.mesh_messages import MAGIC, MAX_DATAGRAM, TAG_SIZE
from egressd.core.model import IPAddress

TCP = 6
UDP = 17
PROTOCOLS = {TCP: "tcp", UDP: "udp"}

VERSION = 1
PAYLOAD_LIMIT = MAX_DATAGRAM - len(MAGIC) - TAG_SIZE
"""Bytes of entries one mesh datagram carries: the datagram bound less the
mesh's magic and HMAC tag."""
MAX_RECORDS = 255
"""Records per payload (the count is one byte)."""

MAX_TIMEOUT = 5 * 24 * 3600
"""Seconds: the kernel's default for an established TCP entry
(``nf_conntrack_tcp_timeout_established``, 432,000 s); a longer timeout is
refused, a peer cannot pin an entry longer than the kernel would."""
MAX_WSCALE = 14
"""The largest TCP window scale (RFC 7323)."""


class Status(IntFlag):
    """Conntrack status bits (``enum ip_conntrack_status``, nf_conntrack_common.h)."""

    EXPECTED = 1 << 0
    SEEN_REPLY = 1 << 1
    ASSURED = 1 << 2
    CONFIRMED = 1 << 3
    SRC_NAT = 1 << 4
    DST_NAT = 1 << 5
    SEQ_ADJUST = 1 << 6
    SRC_NAT_DONE = 1 << 7
    DST_NAT_DONE = 1 << 8
    DYING = 1 << 9
    FIXED_TIMEOUT = 1 << 10
    TEMPLATE = 1 << 11
    UNTRACKED = 1 << 12
    HELPER = 1 << 13
    OFFLOAD = 1 << 14
    HW_OFFLOAD = 1 << 15


REFUSED_STATUS = (
    Status.EXPECTED | Status.DST_NAT | Status.SEQ_ADJUST | Status.DYING | Status.TEMPLATE | Status.UNTRACKED
    | Status.HELPER | Status.OFFLOAD | Status.HW_OFFLOAD
)  # fmt: skip
"""Bits an entry that travels may not carry: an expectation's child, DNAT,
sequence adjustment (a helper's; not replicated), a dying or template or
untracked entry, offloaded flows (the flowtable owns their state)."""


class TcpState(IntEnum):
    """``enum tcp_conntrack`` (nf_conntrack_tcp.h); the states an entry can be in."""

    SYN_SENT = 1
    SYN_RECV = 2
    ESTABLISHED = 3
    FIN_WAIT = 4
    CLOSE_WAIT = 5
    LAST_ACK = 6
    TIME_WAIT = 7
    CLOSE = 8
    SYN_SENT2 = 9


class EntryRejected(Exception):
    """An entry or payload that is not taken, with the reason (a metric label:
    short, fixed) and a detail for the log."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class FlowTuple:
    """One direction of a flow: addresses and ports as the kernel stores them."""

    src: IPAddress
    dst: IPAddress
    sport: int
    dport: int

    def __str__(self) -> str:
        return f"{_hostport(self.src, self.sport)}->{_hostport(self.dst, self.dport)}"


@dataclass(frozen=True)
class TcpInfo:
    """The TCP part of an entry (``CTA_PROTOINFO_TCP``): the state, and per
    direction the window scale and the ``IP_CT_TCP_FLAG_*`` bits (window
    scaling, SACK, be-liberal...). The window scales matter: without them the
    new owner's window tracking misjudges the first segments and marks them
    invalid."""

    state: TcpState
    wscale_original: int = 0
    wscale_reply: int = 0
    flags_original: int = 0
    flags_reply: int = 0


@dataclass(frozen=True)
class Entry:
    """A conntrack entry of a source-NATed flow."""

    proto: int
    original: FlowTuple
    reply: FlowTuple
    status: int
    timeout: int
    """Seconds left before the entry expires, when it was read."""
    mark: int
    tcp: TcpInfo | None = None

    @property
    def key(self) -> Removal:
        """What identifies the flow (its original tuple), as the removal of it."""
        return Removal(self.proto, self.original)

    @property
    def egress_ip(self) -> IPAddress:
        return self.reply.dst

    @property
    def mapped_port(self) -> int:
        return self.reply.dport

    def __str__(self) -> str:
        via = _hostport(self.egress_ip, self.mapped_port)
        return f"{PROTOCOLS.get(self.proto, self.proto)} {self.original} via {via}"


@dataclass(frozen=True)
class Removal:
    """A flow that ended (the kernel destroyed its entry): its protocol and original tuple."""

    proto: int
    original: FlowTuple

    def __str__(self) -> str:
        return f"{PROTOCOLS.get(self.proto, self.proto)} {self.original} gone"


Record = Entry | Removal


def snat_reply(original: FlowTuple, egress_ip: IPAddress, mapped_port: int) -> FlowTuple:
    """The reply tuple of ``original`` source-NATed to ``egress_ip``:``mapped_port``."""
    return FlowTuple(original.dst, egress_ip, original.dport, mapped_port)


def _hostport(ip: IPAddress, port: int) -> str:
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


# --- validation -------------------------------------------------------------------------------


def _check_tuple(t: FlowTuple, name: str) -> None:
    if t.src.version != t.dst.version:
        raise EntryRejected("malformed", f"{name}: {t.src} and {t.dst} are of different families")
    for port, which in ((t.sport, "sport"), (t.dport, "dport")):
        if not 1 <= port <= 0xFFFF:
            raise EntryRejected("malformed", f"{name}.{which} {port} is not a port (1-65535)")


def _check_tcp(entry: Entry) -> None:
    tcp = entry.tcp
    if entry.proto == UDP:
        if tcp is not None:
            raise EntryRejected("malformed", "a UDP entry has no TCP state")
        return
    if tcp is None:
        raise EntryRejected("malformed", "a TCP entry needs its TCP state")
    if tcp.state not in TcpState.__members__.values():
        raise EntryRejected("malformed", f"TCP state {tcp.state} is not one of 1-9")
    for value, which in ((tcp.wscale_original, "original"), (tcp.wscale_reply, "reply")):
        if not 0 <= value <= MAX_WSCALE:
            raise EntryRejected("malformed", f"window scale {which} {value} is not in 0-{MAX_WSCALE}")
    for value, which in ((tcp.flags_original, "original"), (tcp.flags_reply, "reply")):
        if not 0 <= value <= 0xFF:
            raise EntryRejected("malformed", f"TCP flags {which} {value} are not one byte")


def check_entry(entry: Entry, owns: Callable[[IPAddress], bool]) -> Entry:
    """``entry`` if a candidate may install it, else :class:`EntryRejected`:
    ``malformed`` (a field out of range, not source NAT, a refused status bit)
    or ``not-owned`` (``owns`` says the sender does not own its egress IP)."""
    # 1. the protocol and both tuples
    if entry.proto not in PROTOCOLS:
        raise EntryRejected("malformed", f"protocol {entry.proto} is neither TCP (6) nor UDP (17)")
    _check_tuple(entry.original, "original")
    _check_tuple(entry.reply, "reply")
    if entry.original.src.version != entry.reply.src.version:
        raise EntryRejected("malformed", "the original and reply tuples are of different families")
    # 2. source NAT only: the reply comes from where the original went
    if (entry.reply.src, entry.reply.sport) != (entry.original.dst, entry.original.dport):
        raise EntryRejected("malformed", f"not a source-NAT entry: reply {entry.reply} to original {entry.original}")
    # 3. status, timeout, mark
    if not 0 <= entry.status <= 0xFFFFFFFF:
        raise EntryRejected("malformed", f"status {entry.status} is not 32 bits")
    if not entry.status & Status.SRC_NAT:
        raise EntryRejected("malformed", f"status {entry.status:#x} lacks SRC_NAT")
    if entry.status & REFUSED_STATUS:
        raise EntryRejected("malformed", f"status {Status(entry.status & REFUSED_STATUS)!r} may not be replicated")
    if not 1 <= entry.timeout <= MAX_TIMEOUT:
        raise EntryRejected("malformed", f"timeout {entry.timeout} s is not in 1-{MAX_TIMEOUT}")
    if not 0 <= entry.mark <= 0xFFFFFFFF:
        raise EntryRejected("malformed", f"mark {entry.mark} is not 32 bits")
    # 4. the TCP part
    _check_tcp(entry)
    # 5. the egress IP is the sender's
    if not owns(entry.egress_ip):
        raise EntryRejected("not-owned", f"{entry}: the sender does not own {entry.egress_ip}")
    return entry


def check_removal(removal: Removal) -> Removal:
    if removal.proto not in PROTOCOLS:
        raise EntryRejected("malformed", f"protocol {removal.proto} is neither TCP (6) nor UDP (17)")
    _check_tuple(removal.original, "original")
    return removal


def sort_out(
    records: Iterable[Record], owns: Callable[[IPAddress], bool]
) -> tuple[list[Record], list[tuple[Record, EntryRejected]]]:
    """The records a candidate takes, and those it refuses with the reason.
    A removal is always taken (it can only remove what was installed)."""
    taken: list[Record] = []
    refused: list[tuple[Record, EntryRejected]] = []
    for record in records:
        try:
            taken.append(check_entry(record, owns) if isinstance(record, Entry) else check_removal(record))
        except EntryRejected as exc:
            refused.append((record, exc))
    return taken, refused


# --- encoding ---------------------------------------------------------------------------------

_F_REMOVAL = 0x01
_F_V6 = 0x02
_F_TCP = 0x04
_F_KNOWN = _F_REMOVAL | _F_V6 | _F_TCP

_HEAD = struct.Struct("!BB")
_PORTS = struct.Struct("!HH")
_UPSERT = struct.Struct("!HIII")  # mapped port, status, timeout, mark
_TCP = struct.Struct("!BBBB")  # state, wscales, flags original, flags reply


def _ip_bytes(ip: IPAddress) -> bytes:
    return ip.packed


def encode_record(record: Record) -> bytes:
    """One record's bytes (raises ValueError for an entry :func:`check_entry`
    would refuse as malformed: only source-NAT entries have this form)."""
    proto, original = record.proto, record.original
    if proto not in PROTOCOLS:
        raise ValueError(f"protocol {proto} cannot be encoded")
    flags = (_F_V6 if original.src.version == 6 else 0) | (_F_TCP if proto == TCP else 0)
    head = _ip_bytes(original.src) + _ip_bytes(original.dst) + _PORTS.pack(original.sport, original.dport)
    if isinstance(record, Removal):
        return bytes([flags | _F_REMOVAL]) + head
    try:
        check_entry(record, lambda _ip: True)
    except EntryRejected as exc:
        raise ValueError(f"{record} cannot be encoded: {exc}") from exc
    body = _ip_bytes(record.egress_ip) + _UPSERT.pack(record.mapped_port, record.status, record.timeout, record.mark)
    if record.tcp is not None:
        t = record.tcp
        body += _TCP.pack(t.state, t.wscale_original << 4 | t.wscale_reply, t.flags_original, t.flags_reply)
    return bytes([flags]) + head + body


def encode_batch(records: Iterable[Record], limit: int = PAYLOAD_LIMIT) -> list[bytes]:
    """``records`` in order, packed into as few payloads of at most ``limit``
    bytes as they fill one after the other (an empty batch gives no payload)."""
    if limit < _HEAD.size + 2 * (1 + 2 * 16 + _PORTS.size + 16 + _UPSERT.size + _TCP.size):
        raise ValueError(f"a payload limit of {limit} bytes is too small for two records")
    payloads: list[bytes] = []
    chunk: list[bytes] = []
    size = _HEAD.size
    for record in records:
        raw = encode_record(record)
        if chunk and (size + len(raw) > limit or len(chunk) == MAX_RECORDS):
            payloads.append(_HEAD.pack(VERSION, len(chunk)) + b"".join(chunk))
            chunk, size = [], _HEAD.size
        chunk.append(raw)
        size += len(raw)
    if chunk:
        payloads.append(_HEAD.pack(VERSION, len(chunk)) + b"".join(chunk))
    return payloads


class _Reader:
    def __init__(self, data: bytes) -> None:
        self._data = data
        self._at = 0

    def take(self, n: int) -> bytes:
        if self._at + n > len(self._data):
            raise EntryRejected("malformed", f"payload ends at byte {len(self._data)}, {n} more expected")
        out = self._data[self._at : self._at + n]
        self._at += n
        return out

    def unpack(self, fmt: struct.Struct) -> tuple[int, ...]:
        return fmt.unpack(self.take(fmt.size))

    def ip(self, v6: bool) -> IPAddress:
        return ipaddress.ip_address(self.take(16 if v6 else 4))

    @property
    def left(self) -> int:
        return len(self._data) - self._at


def _decode_record(r: _Reader) -> Record:
    (flags,) = r.take(1)
    if flags & ~_F_KNOWN:
        raise EntryRejected("malformed", f"record flags {flags:#x} have unknown bits")
    v6, proto = bool(flags & _F_V6), TCP if flags & _F_TCP else UDP
    src, dst = r.ip(v6), r.ip(v6)
    sport, dport = r.unpack(_PORTS)
    original = FlowTuple(src, dst, sport, dport)
    if flags & _F_REMOVAL:
        return check_removal(Removal(proto, original))
    egress = r.ip(v6)
    mapped, status, timeout, mark = r.unpack(_UPSERT)
    tcp = None
    if proto == TCP:
        state, wscales, flags_o, flags_r = r.unpack(_TCP)
        if state not in TcpState.__members__.values():
            raise EntryRejected("malformed", f"TCP state {state} is not one of 1-9")
        tcp = TcpInfo(TcpState(state), wscales >> 4, wscales & 0x0F, flags_o, flags_r)
    entry = Entry(proto, original, snat_reply(original, egress, mapped), status, timeout, mark, tcp)
    return check_entry(entry, lambda _ip: True)


def decode_batch(payload: bytes) -> list[Record]:
    """The records of one payload, or :class:`EntryRejected` (``malformed``);
    ownership is the caller's check (:func:`sort_out`)."""
    r = _Reader(payload)
    version, count = r.unpack(_HEAD)
    if version != VERSION:
        raise EntryRejected("malformed", f"payload version {version}, expected {VERSION}")
    if count == 0:
        raise EntryRejected("malformed", "a payload with no records")
    records = [_decode_record(r) for _ in range(count)]
    if r.left:
        raise EntryRejected("malformed", f"{r.left} bytes after the last of {count} records")
    return records


def decode_all(payloads: Sequence[bytes]) -> Iterator[Record]:
    """The records of several payloads, in order (each payload checked whole first)."""
    for payload in payloads:
        yield from decode_batch(payload)
