"""Netlink messages packed with ``struct``: the framing every family shares
(header, attributes, acknowledgements), and the rtnetlink messages of a
takeover's and a steering switch's path, written on a socket of our own and
acknowledged through a barrier.

pyroute2 encodes and decodes every message in Python (0.4 to 3 ms of CPU per
request here, more when the interpreter is busy); these messages are packed
here instead, as pyroute2 would send them (the tests compare them byte for
byte). Used by :mod:`egressd.adapters.addresses`,
:mod:`egressd.adapters.steering` and, for the framing of its nfnetlink
batches, :mod:`egressd.adapters.nftables`.
"""

from __future__ import annotations

import os
import socket
import struct

from pyroute2.netns import setns

from egressd.core.errors import DataPlaneError

HEADER = struct.Struct("=IHHII")
"""nlmsghdr: length, type, flags, sequence, port id."""
NLMSG_NOOP, NLMSG_ERROR, NLMSG_DONE = 1, 2, 3
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = 0x01, 0x02, 0x04
NLM_F_REPLACE_ACK = 0x505
"""NLM_F_REQUEST | NLM_F_ACK | NLM_F_REPLACE | NLM_F_CREATE: what pyroute2's ``replace`` sends."""
_SOL_NETLINK = 270
_NETLINK_CAP_ACK = 10

_RTM_NEWROUTE = 24
_RTMSG = struct.Struct("=BBBBBBBBI")
"""rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags."""
_RTA_DST, _RTA_OIF, _RTA_GATEWAY, _RTA_PRIORITY, _RTA_TABLE = 1, 4, 5, 6, 15
_RT_TABLE_MAIN = 254
_RTN_UNICAST = 1
RTNH_F_ONLINK = 0x04


def attr(kind: int, payload: bytes) -> bytes:
    """One netlink attribute, padded to 4 bytes."""
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def encode_barrier(seq: int) -> bytes:
    """An ``NLMSG_NOOP`` asking for an acknowledgement: the kernel answers it
    after every message written before it in the same write."""
    return HEADER.pack(HEADER.size, NLMSG_NOOP, NLM_F_REQUEST | NLM_F_ACK, seq, 0)


def read_acks(data: bytes) -> list[tuple[int, int]]:
    """(sequence, errno) of each acknowledgement in a read from the socket
    (errno 0: done); other messages are skipped."""
    out: list[tuple[int, int]] = []
    offset = 0
    while offset + HEADER.size <= len(data):
        length, kind, _flags, seq, _port = HEADER.unpack_from(data, offset)
        if length < HEADER.size:
            break  # malformed: never loop on it
        if kind == NLMSG_ERROR and length >= HEADER.size + 4:
            (error,) = struct.unpack_from("=i", data, offset + HEADER.size)
            out.append((seq, -error))
        offset += (length + 3) & ~3
    return out


def encode_route_replace(
    seq: int,
    *,
    family: int,
    dst: bytes,
    dst_len: int,
    table: int,
    metric: int,
    gateway: bytes,
    proto: int,
    oif: int | None = None,
    onlink: bool = False,
) -> bytes:
    """``RTM_NEWROUTE`` (replace, acknowledged) of a unicast route via
    ``gateway``: the message pyroute2's ``route("replace", ...)`` sends for it
    (the table in ``RTA_TABLE``, and in the header below 255, else main there; a zero
    destination has no ``RTA_DST``)."""
    body = _RTMSG.pack(
        family,
        dst_len,
        0,
        0,
        table if table < 255 else _RT_TABLE_MAIN,
        proto,
        0,  # scope: universe
        _RTN_UNICAST,
        RTNH_F_ONLINK if onlink else 0,
    )
    if any(dst):
        body += attr(_RTA_DST, dst)  # none for the zero address (the kernel takes it as such)
    body += attr(_RTA_TABLE, struct.pack("=I", table))
    body += attr(_RTA_PRIORITY, struct.pack("=I", metric))
    body += attr(_RTA_GATEWAY, gateway)
    if oif is not None:
        body += attr(_RTA_OIF, struct.pack("=I", oif))
    return HEADER.pack(HEADER.size + len(body), _RTM_NEWROUTE, NLM_F_REPLACE_ACK, seq, 0) + body


def open_socket(netns: str | None, timeout: float) -> socket.socket:
    """A ``NETLINK_ROUTE`` socket in ``netns`` (None: ours), opened from the
    calling thread (which enters the namespace and comes back); errors come
    without the request echoed back."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY) if netns else -1
    try:
        if netns:
            setns(netns, flags=0)  # this thread only, and back below
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    except OSError as exc:
        raise DataPlaneError(f"cannot open rtnetlink (netns {netns or 'own'}): {exc}") from exc
    finally:
        if own >= 0:
            setns(own)
            os.close(own)
    sock.setsockopt(_SOL_NETLINK, _NETLINK_CAP_ACK, 1)
    sock.bind((0, 0))
    sock.settimeout(timeout)
    return sock


def send_acknowledged(sock: socket.socket, messages: list[bytes], barrier: int) -> dict[int, int]:
    """Write ``messages`` and a barrier numbered ``barrier`` in one write, and
    read the kernel's answers up to the barrier's: sequence -> errno of each
    answer (0: done). OSError from the socket (a timeout too)."""
    sock.send(b"".join(messages) + encode_barrier(barrier))
    answers: dict[int, int] = {}
    while barrier not in answers:
        for seq, error in read_acks(sock.recv(65536)):
            answers[seq] = error
    return answers
