"""The split of a group's sources between its egress IPs (pure)."""

from __future__ import annotations

import ipaddress

from egressd.core.assignment import source_owners, sources_for
from egressd.core.model import EgressGroup

ip = ipaddress.ip_address
net = ipaddress.ip_network


def group(ips: tuple[str, ...] = ("172.18.0.42",), src: tuple[str, ...] = ("10.244.1.0/24",)) -> EgressGroup:
    return EgressGroup(
        name="alliance",
        egress_ips=tuple(ip(i) for i in ips),
        interface="net0",
        candidates=("gw1",),
        source_cidrs=tuple(net(c) for c in src),
        destination_cidrs=(net("172.18.0.0/16"),),
    )


def test_sources_split_by_rendezvous_hash_deterministically() -> None:
    srcs = tuple(f"10.244.{i}.0/24" for i in range(40))
    g = group(ips=("172.18.0.42", "172.18.0.43"), src=srcs)
    first = sources_for(g, ip("172.18.0.42"))
    second = sources_for(g, ip("172.18.0.43"))
    assert set(first) | set(second) == set(g.source_cidrs)
    assert not set(first) & set(second)
    assert 10 <= len(first) <= 30, "roughly even"
    assert sources_for(g, ip("172.18.0.42")) == first, "stable"
    # a third IP takes sources only from the others, never moves them between them
    g3 = group(ips=("172.18.0.42", "172.18.0.43", "172.18.0.44"), src=srcs)
    assert set(sources_for(g3, ip("172.18.0.42"))) <= set(first)
    assert set(sources_for(g3, ip("172.18.0.43"))) <= set(second)
    assert sources_for(g3, ip("172.18.0.44"))
    # one IP: all sources
    assert sources_for(group(src=srcs), ip("172.18.0.42")) == g.source_cidrs


def test_source_owners_agree_with_sources_for_and_reuse_what_is_known() -> None:
    srcs = tuple(f"10.244.{i}.0/24" for i in range(40))
    g = group(ips=("172.18.0.42", "172.18.0.43"), src=srcs)
    owners = source_owners(g)
    assert owners == {s: a for a in g.egress_ips for s in sources_for(g, a)}
    known = {net("10.244.0.0/24"): ip("172.18.0.99")}  # an answer given before is not hashed again
    assert source_owners(g, known)[net("10.244.0.0/24")] == ip("172.18.0.99")
