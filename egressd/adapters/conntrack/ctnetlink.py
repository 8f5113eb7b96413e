"""ctnetlink messages for :mod:`egressd.adapters.conntrack.table`: conntrack entries
to and from the kernel's netlink bytes.

pyroute2 describes these messages (``nfct_msg`` and its nested attribute
tables; the attribute numbers below are read from them, so they cannot drift
apart) and sends single requests with them, but two things are missing for
replicating SNATed flows:

* **NAT on create.** ``Conntrack.entry("add", ...)`` has no notion of a NAT
  mapping, and the kernel ignores the NAT status bits in ``CTA_STATUS`` (they
  are in ``IPS_UNCHANGEABLE_MASK``). A created entry is source-NATed only
  when the request carries ``CTA_NAT_SRC`` (egress IP and port, min = max)
  *and* the reply tuple is the plain inverse of the original: the kernel then
  computes the NATed reply tuple and sets ``IPS_SRC_NAT``. Given the NATed
  reply tuple itself, it finds nothing to change, leaves ``IPS_SRC_NAT``
  unset, and the entry does not translate (measured; ``docs/conntrack.md``).
  ``CTA_STATUS`` must carry ``IPS_CONFIRMED``, which the kernel sets before
  applying it (otherwise ``EBUSY``).
* **Speed.** Building one create request with pyroute2's nla classes costs
  about 1 ms of CPU (measured: 999 us per message), 10 s for 10,000 entries;
  decoding a kernel message through them takes about twice as long as
  :func:`parse` (62 against 29 us, measured on a busy machine). Here a create
  request is one ``struct.pack`` of a layout compiled once (about 10 us with
  the values prepared), and a batch of them goes to the kernel in one
  ``send``, acknowledged per message, so every entry gets its own error.

Layout: ``nlmsghdr`` (native endian) | ``nfgenmsg`` (family, version 0,
res_id) | attributes (``nlattr`` header native endian, payload big-endian
except addresses, padded to 4 bytes; nested ones flagged ``NLA_F_NESTED`` as
the kernel does in its own dumps).
"""

from __future__ import annotations

import ipaddress
import operator
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pyroute2.netlink import (
    NLA_F_NESTED,
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_EXCL,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
)
from pyroute2.netlink.nfnetlink import NFNL_SUBSYS_CTNETLINK
from pyroute2.netlink.nfnetlink.nfctsocket import (
    IP_CT_TCP_FLAG_BE_LIBERAL,
    IPCTNL_MSG_CT_DELETE,
    IPCTNL_MSG_CT_GET,
    IPCTNL_MSG_CT_NEW,
    nfct_msg,
)

from egressd.core.conntrack_entries import (
    PROTOCOLS,
    TCP,
    Entry,
    FlowTuple,
    Removal,
    Status,
    TcpInfo,
    TcpState,
)
from egressd.core.errors import DataPlaneError


def _numbers(table: Any) -> dict[str, int]:
    """Attribute name -> number, from a pyroute2 nla class (its ``nla_map`` is in number order)."""
    return {name: number for number, (name, _kind) in enumerate(table.nla_map)}


CTA = _numbers(nfct_msg)
TUPLE = _numbers(nfct_msg.cta_tuple)
IP = _numbers(nfct_msg.cta_tuple.cta_ip)
PROTO = _numbers(nfct_msg.cta_tuple.cta_proto)
PROTOINFO = _numbers(nfct_msg.cta_protoinfo)
TCPINFO = _numbers(nfct_msg.cta_protoinfo.cta_protoinfo_tcp)
NAT = _numbers(nfct_msg.cta_nat)
PROTONAT = _numbers(nfct_msg.cta_nat.cta_protonat)

MSG_NEW = NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_NEW
MSG_DELETE = NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_DELETE
MSG_GET = NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_GET

_NLMSGHDR = struct.Struct("=IHHII")
_NFGENMSG = struct.Struct("=BBH")
_NLATTR = struct.Struct("=HH")
_ERRNO = struct.Struct("=i")
_TYPE_MASK = ~NLA_F_NESTED & 0xFFFF

SETTABLE_STATUS = int(Status.SEEN_REPLY | Status.ASSURED)
"""Status bits a create request sets (the kernel keeps the NAT bits to
itself, and only ever sets these two)."""
_CONFIRMED = int(Status.CONFIRMED)
_SRC_NAT = int(Status.SRC_NAT)
_TCP_STATES = {int(state): state for state in TcpState}
"""The states by number: a dict lookup, where calling the enum costs more than the rest of a parse."""


# --- encoding ---------------------------------------------------------------------------------


def _attr(kind: int, payload: bytes) -> bytes:
    size = _NLATTR.size + len(payload)
    return _NLATTR.pack(size, kind) + payload + b"\0" * (-size % 4)


def _nested(kind: int, *attrs: bytes) -> bytes:
    return _attr(kind | NLA_F_NESTED, b"".join(attrs))


def _be16(v: int) -> bytes:
    return struct.pack("!H", v)


def _be32(v: int) -> bytes:
    return struct.pack("!I", v)


def _tuple(kind: int, proto: int, t: FlowTuple) -> bytes:
    v6 = t.src.version == 6
    ip = _nested(
        TUPLE["CTA_TUPLE_IP"],
        _attr(IP["CTA_IP_V6_SRC" if v6 else "CTA_IP_V4_SRC"], t.src.packed),
        _attr(IP["CTA_IP_V6_DST" if v6 else "CTA_IP_V4_DST"], t.dst.packed),
    )
    ports = _nested(
        TUPLE["CTA_TUPLE_PROTO"],
        _attr(PROTO["CTA_PROTO_NUM"], bytes([proto])),
        _attr(PROTO["CTA_PROTO_SRC_PORT"], _be16(t.sport)),
        _attr(PROTO["CTA_PROTO_DST_PORT"], _be16(t.dport)),
    )
    return _nested(kind, ip, ports)


def _message(kind: int, flags: int, seq: int, family: int, attrs: bytes) -> bytes:
    body = _NFGENMSG.pack(family, 0, 0) + attrs
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), kind, flags, seq, 0) + body


def _family(t: FlowTuple) -> int:
    return socket.AF_INET6 if t.src.version == 6 else socket.AF_INET


@dataclass(frozen=True)
class _Leaf:
    """An attribute holding one value (packed with ``fmt``), taken from slot ``slot``."""

    kind: int
    fmt: str
    slot: int


@dataclass(frozen=True)
class _Nest:
    kind: int
    children: tuple[_Leaf | _Nest, ...]


def _attr_size(node: _Leaf | _Nest) -> int:
    """Bytes of ``node`` with its header and padding."""
    if isinstance(node, _Leaf):
        size = _NLATTR.size + struct.calcsize("=" + node.fmt)
        return size + -size % 4
    return _NLATTR.size + sum(_attr_size(c) for c in node.children)


class _Template:
    """One request layout compiled into a single :class:`struct.Struct`: the
    headers are constants, the values come from slots. Packing a create
    request is then one ``pack`` call (about 3 us) instead of a few dozen."""

    def __init__(self, kind: int, flags: int, family: int, nodes: tuple[_Leaf | _Nest, ...], slots: int) -> None:
        size = _NLMSGHDR.size + _NFGENMSG.size + sum(_attr_size(n) for n in nodes)
        fmt = ["=IHHII", "BBH"]
        # each argument of the Struct: a constant, or -1 - slot for a value
        self._plan: list[int] = [size, kind, flags, -1, 0, family, 0, 0]
        for node in nodes:
            self._walk(node, fmt)
        self._struct = struct.Struct("".join(fmt))
        assert self._struct.size == size, (self._struct.size, size)
        used = {-1 - a for a in self._plan if isinstance(a, int) and a < 0}
        assert used == set(range(slots)), used
        consts = [a for a in self._plan if a >= 0]
        self._consts = tuple(consts)
        # pack(values) reads its arguments from values + constants in one C call
        picks, k = [], 0
        for a in self._plan:
            if a < 0:
                picks.append(-1 - a)
            else:
                picks.append(slots + k)
                k += 1
        self._pick = operator.itemgetter(*picks)

    def _walk(self, node: _Leaf | _Nest, fmt: list[str]) -> None:
        if isinstance(node, _Nest):
            fmt.append("HH")
            self._plan += [_attr_size(node), node.kind | NLA_F_NESTED]
            for child in node.children:
                self._walk(child, fmt)
            return
        value_size = struct.calcsize("=" + node.fmt)
        pad = -(_NLATTR.size + value_size) % 4
        fmt.append(f"HH{node.fmt}{pad}x" if pad else f"HH{node.fmt}")
        self._plan += [_NLATTR.size + value_size, node.kind, -1 - node.slot]

    def pack(self, values: tuple[Any, ...]) -> bytes:
        return self._struct.pack(*self._pick(values + self._consts))


def _tuple_spec(kind: int, v6: bool, first: int) -> _Nest:
    """A tuple whose source, destination, protocol, ports are slots ``first`` .. ``first + 4``."""
    ip = "16s" if v6 else "4s"
    return _Nest(
        kind,
        (
            _Nest(
                TUPLE["CTA_TUPLE_IP"],
                (
                    _Leaf(IP["CTA_IP_V6_SRC" if v6 else "CTA_IP_V4_SRC"], ip, first),
                    _Leaf(IP["CTA_IP_V6_DST" if v6 else "CTA_IP_V4_DST"], ip, first + 1),
                ),
            ),
            _Nest(
                TUPLE["CTA_TUPLE_PROTO"],
                (
                    _Leaf(PROTO["CTA_PROTO_NUM"], "B", first + 2),
                    _Leaf(PROTO["CTA_PROTO_SRC_PORT"], "2s", first + 3),
                    _Leaf(PROTO["CTA_PROTO_DST_PORT"], "2s", first + 4),
                ),
            ),
        ),
    )


def _create_template(v6: bool, tcp: bool) -> _Template:
    """Slots: 0 seq; 1-5 original tuple; 6-10 reply tuple; 11 egress IP;
    12 mapped port; 13 status; 14 timeout; 15 mark; TCP: 16 state,
    17/18 window scales, 19/20 flags (with their mask)."""
    ip = "16s" if v6 else "4s"
    nodes: list[_Leaf | _Nest] = [
        _tuple_spec(CTA["CTA_TUPLE_ORIG"], v6, 1),
        _tuple_spec(CTA["CTA_TUPLE_REPLY"], v6, 6),
        _Nest(
            CTA["CTA_NAT_SRC"],
            (
                _Leaf(NAT["CTA_NAT_V6_MINIP" if v6 else "CTA_NAT_V4_MINIP"], ip, 11),
                _Leaf(NAT["CTA_NAT_V6_MAXIP" if v6 else "CTA_NAT_V4_MAXIP"], ip, 11),
                _Nest(
                    NAT["CTA_NAT_PROTO"],
                    (
                        _Leaf(PROTONAT["CTA_PROTONAT_PORT_MIN"], "2s", 12),
                        _Leaf(PROTONAT["CTA_PROTONAT_PORT_MAX"], "2s", 12),
                    ),
                ),
            ),
        ),
        _Leaf(CTA["CTA_STATUS"], "4s", 13),
        _Leaf(CTA["CTA_TIMEOUT"], "4s", 14),
        _Leaf(CTA["CTA_MARK"], "4s", 15),
    ]
    if tcp:
        nodes.append(
            _Nest(
                CTA["CTA_PROTOINFO"],
                (
                    _Nest(
                        PROTOINFO["CTA_PROTOINFO_TCP"],
                        (
                            _Leaf(TCPINFO["CTA_PROTOINFO_TCP_STATE"], "B", 16),
                            _Leaf(TCPINFO["CTA_PROTOINFO_TCP_WSCALE_ORIGINAL"], "B", 17),
                            _Leaf(TCPINFO["CTA_PROTOINFO_TCP_WSCALE_REPLY"], "B", 18),
                            _Leaf(TCPINFO["CTA_PROTOINFO_TCP_FLAGS_ORIGINAL"], "2s", 19),
                            _Leaf(TCPINFO["CTA_PROTOINFO_TCP_FLAGS_REPLY"], "2s", 20),
                        ),
                    ),
                ),
            )
        )
    flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
    family = socket.AF_INET6 if v6 else socket.AF_INET
    return _Template(MSG_NEW, flags, family, tuple(nodes), 21 if tcp else 16)


_CREATE = {(v6, tcp): _create_template(v6, tcp) for v6 in (False, True) for tcp in (False, True)}


def create_request(entry: Entry, seq: int, *, liberal: bool) -> bytes:
    """A request creating ``entry`` (``NLM_F_CREATE | NLM_F_EXCL``: an entry for
    the same original tuple already there is ``EEXIST``). ``liberal`` adds
    ``IP_CT_TCP_FLAG_BE_LIBERAL`` to both directions of a TCP entry.

    The reply tuple sent is the plain inverse of the original, and the NAT
    mapping goes in ``CTA_NAT_SRC``: the kernel derives the translated reply
    tuple from them and marks the entry ``IPS_SRC_NAT`` (see the module's
    docstring)."""
    o = entry.original
    src, dst = o.src.packed, o.dst.packed
    sport, dport = o.sport.to_bytes(2, "big"), o.dport.to_bytes(2, "big")
    status = (entry.status & SETTABLE_STATUS) | _CONFIRMED
    values: tuple[Any, ...] = (
        seq,
        src, dst, entry.proto, sport, dport,
        dst, src, entry.proto, dport, sport,
        entry.egress_ip.packed, entry.mapped_port.to_bytes(2, "big"),
        status.to_bytes(4, "big"), entry.timeout.to_bytes(4, "big"), entry.mark.to_bytes(4, "big"),
    )  # fmt: skip
    if entry.tcp is not None:
        t, extra = entry.tcp, IP_CT_TCP_FLAG_BE_LIBERAL if liberal else 0
        values += (
            int(t.state), t.wscale_original, t.wscale_reply,
            bytes((t.flags_original | extra, 0xFF)), bytes((t.flags_reply | extra, 0xFF)),
        )  # fmt: skip
    return _CREATE[(o.src.version == 6, entry.tcp is not None)].pack(values)


def delete_request(removal: Removal, seq: int) -> bytes:
    """A request deleting the entry of ``removal``'s original tuple."""
    attrs = _tuple(CTA["CTA_TUPLE_ORIG"], removal.proto, removal.original)
    return _message(MSG_DELETE, NLM_F_REQUEST | NLM_F_ACK, seq, _family(removal.original), attrs)


def dump_request(seq: int, mark: int, mask: int) -> bytes:
    """A dump of the entries of both families whose ``mark & mask == mark``."""
    attrs = _attr(CTA["CTA_MARK"], _be32(mark)) + _attr(CTA["CTA_MARK_MASK"], _be32(mask))
    return _message(MSG_GET, NLM_F_REQUEST | NLM_F_DUMP, seq, socket.AF_UNSPEC, attrs)


# --- decoding ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class NetlinkMessage:
    kind: int
    flags: int
    seq: int
    body: bytes
    """What follows the ``nlmsghdr``."""

    @property
    def done(self) -> bool:
        return bool(self.kind == NLMSG_DONE)

    @property
    def error(self) -> int | None:
        """For an ``NLMSG_ERROR`` (an ack when 0): the errno, positive; else None."""
        if self.kind != NLMSG_ERROR:
            return None
        return -int(_ERRNO.unpack_from(self.body)[0])


class Malformed(DataPlaneError):
    """Bytes from the kernel that do not parse as ctnetlink."""


def messages(data: bytes) -> Iterator[NetlinkMessage]:
    """The netlink messages in one buffer read from the socket."""
    at = 0
    while at + _NLMSGHDR.size <= len(data):
        size, kind, flags, seq, _pid = _NLMSGHDR.unpack_from(data, at)
        if size < _NLMSGHDR.size or at + size > len(data):
            raise Malformed(f"netlink message of {size} bytes at {at} in a buffer of {len(data)}")
        yield NetlinkMessage(kind, flags, seq, data[at + _NLMSGHDR.size : at + size])
        at += (size + 3) & ~3


def acks(data: bytes) -> Iterator[tuple[int, int]]:
    """(sequence number, errno) of every acknowledgement in one buffer (0: done)."""
    at, end = 0, len(data)
    while at + _NLMSGHDR.size + _ERRNO.size <= end:
        size, kind, _flags, seq, _pid = _NLMSGHDR.unpack_from(data, at)
        if size < _NLMSGHDR.size:
            raise Malformed(f"netlink message of {size} bytes at {at}")
        if kind == NLMSG_ERROR:
            yield seq, -int(_ERRNO.unpack_from(data, at + _NLMSGHDR.size)[0])
        at += (size + 3) & ~3


def _attrs(data: bytes) -> dict[int, bytes]:
    """Type (nested flag cleared) -> payload of the attributes in ``data``; the
    hot loop of a dump (about 25 attributes per entry), hence the locals."""
    out: dict[int, bytes] = {}
    at, end, unpack = 0, len(data), _NLATTR.unpack_from
    while at + 4 <= end:
        size, kind = unpack(data, at)
        stop = at + size
        if size < 4 or stop > end:
            raise Malformed(f"attribute of {size} bytes at {at} in {end}")
        out[kind & _TYPE_MASK] = data[at + 4 : stop]
        at = (stop + 3) & ~3
    return out


def _u16(data: bytes) -> int:
    return int(struct.unpack("!H", data)[0])


def _u32(data: bytes) -> int:
    return int(struct.unpack("!I", data)[0])


def _parse_tuple(data: bytes) -> tuple[int, FlowTuple]:
    t = _attrs(data)
    ip, proto = _attrs(t[TUPLE["CTA_TUPLE_IP"]]), _attrs(t[TUPLE["CTA_TUPLE_PROTO"]])
    v6 = IP["CTA_IP_V6_SRC"] in ip
    src = ipaddress.ip_address(ip[IP["CTA_IP_V6_SRC" if v6 else "CTA_IP_V4_SRC"]])
    dst = ipaddress.ip_address(ip[IP["CTA_IP_V6_DST" if v6 else "CTA_IP_V4_DST"]])
    number = proto[PROTO["CTA_PROTO_NUM"]][0]
    if number not in PROTOCOLS:
        return number, FlowTuple(src, dst, 0, 0)
    sport, dport = _u16(proto[PROTO["CTA_PROTO_SRC_PORT"]]), _u16(proto[PROTO["CTA_PROTO_DST_PORT"]])
    return number, FlowTuple(src, dst, sport, dport)


def _parse_tcp(data: bytes | None) -> TcpInfo | None:
    if data is None:
        return None
    info = _attrs(_attrs(data).get(PROTOINFO["CTA_PROTOINFO_TCP"], b""))
    raw = info.get(TCPINFO["CTA_PROTOINFO_TCP_STATE"])
    state = _TCP_STATES.get(raw[0]) if raw else None
    if state is None:
        return None

    def byte(name: str) -> int:
        value = info.get(TCPINFO[name])
        return value[0] if value else 0

    return TcpInfo(
        state,
        byte("CTA_PROTOINFO_TCP_WSCALE_ORIGINAL"),
        byte("CTA_PROTOINFO_TCP_WSCALE_REPLY"),
        byte("CTA_PROTOINFO_TCP_FLAGS_ORIGINAL"),
        byte("CTA_PROTOINFO_TCP_FLAGS_REPLY"),
    )


def parse(message: NetlinkMessage) -> tuple[Entry | Removal | None, int]:
    """A conntrack message (dump answer or event) and its mark: an entry, or,
    for a ``DELETE`` (destroy event), the removal of its flow; None for flows
    that are not replicated (neither TCP nor UDP, or not source-NATed)."""
    try:
        a = _attrs(message.body[_NFGENMSG.size :])
        mark = _u32(a.get(CTA["CTA_MARK"], b"\0\0\0\0"))
        proto, original = _parse_tuple(a[CTA["CTA_TUPLE_ORIG"]])
        if proto not in PROTOCOLS:
            return None, mark
        if message.kind == MSG_DELETE:
            return Removal(proto, original), mark
        _, reply = _parse_tuple(a[CTA["CTA_TUPLE_REPLY"]])
        status = _u32(a[CTA["CTA_STATUS"]])
        if not status & _SRC_NAT:
            return None, mark
        entry = Entry(
            proto=proto,
            original=original,
            reply=reply,
            status=status,
            timeout=_u32(a.get(CTA["CTA_TIMEOUT"], b"\0\0\0\0")),
            mark=mark,
            tcp=_parse_tcp(a.get(CTA["CTA_PROTOINFO"])) if proto == TCP else None,
        )
        return entry, mark
    except (KeyError, IndexError, ValueError, struct.error) as exc:
        raise Malformed(f"conntrack message {message.kind:#x}: {exc!r}") from exc
