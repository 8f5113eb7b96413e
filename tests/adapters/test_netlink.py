"""The raw rtnetlink messages of a steering switch, against pyroute2's own encoding."""

from __future__ import annotations

import ipaddress
import socket
import struct

from hypothesis import given
from hypothesis import strategies as st

from egressd.adapters import netlink
from tests.adapters.ipbatch import pyroute2_sent

HEADER = struct.Struct("=IHHII")
PROTO = 0xE9


def pyroute2_replace(
    dst: ipaddress.IPv4Network | ipaddress.IPv6Network,
    table: int,
    metric: int,
    gateway: ipaddress.IPv4Address | ipaddress.IPv6Address,
    oif: int | None,
) -> bytes:
    """What ``PolicySteering`` had pyroute2 send for a route via ``gateway``, sequence and port id zeroed."""
    kwargs: dict[str, object] = {
        "family": socket.AF_INET if dst.version == 4 else socket.AF_INET6,
        "dst": str(dst.network_address),
        "dst_len": dst.prefixlen,
        "table": table,
        "priority": metric,
        "proto": PROTO,
        "type": "unicast",
        "gateway": str(gateway),
    }
    if oif is not None:
        kwargs |= {"oif": oif, "flags": netlink.RTNH_F_ONLINK}
    return pyroute2_sent(lambda batch: batch.route("replace", **kwargs))


v4 = st.builds(
    lambda a, p, g: (ipaddress.IPv4Network((a, p), strict=False), ipaddress.IPv4Address(g)),
    st.integers(0, 2**32 - 1),
    st.integers(1, 32),
    st.integers(1, 2**32 - 1),
)
v6 = st.builds(
    lambda a, p, g: (ipaddress.IPv6Network((a, p), strict=False), ipaddress.IPv6Address(g)),
    st.integers(0, 2**128 - 1),
    st.integers(1, 128),
    st.integers(1, 2**128 - 1),
)


@given(
    where=st.one_of(v4, v6),
    table=st.integers(1, 2**31 - 1),
    metric=st.integers(1, 2**32 - 1),  # steering metrics are never 0 (pyroute2 sends IPv6 its default then)
    oif=st.one_of(st.none(), st.integers(1, 2**31 - 1)),
)
def test_a_route_replace_is_what_pyroute2_sends(
    where: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ipaddress.IPv4Address | ipaddress.IPv6Address],
    table: int,
    metric: int,
    oif: int | None,
) -> None:
    dst, gateway = where
    ours = netlink.encode_route_replace(
        0,
        family=socket.AF_INET if dst.version == 4 else socket.AF_INET6,
        dst=dst.network_address.packed,
        dst_len=dst.prefixlen,
        table=table,
        metric=metric,
        gateway=gateway.packed,
        proto=PROTO,
        oif=oif,
        onlink=oif is not None,
    )
    assert ours == pyroute2_replace(dst, table, metric, gateway, oif)


def test_acknowledgements_are_read_by_sequence_and_other_messages_skipped() -> None:
    error = HEADER.pack(36, netlink.NLMSG_ERROR, 0, 7, 0) + struct.pack("=i", -101) + HEADER.pack(16, 24, 0, 7, 0)
    done = HEADER.pack(20, netlink.NLMSG_ERROR, 0, 8, 0) + struct.pack("=i", 0)
    other = HEADER.pack(16, 24, 0, 9, 0)
    assert netlink.read_acks(other + error + done) == [(7, 101), (8, 0)]
    assert netlink.read_acks(HEADER.pack(0, 2, 0, 1, 0)) == []  # a length below the header's: no endless loop
