"""Which egress IP each source of a group uses (pure).

A group with several egress IPs splits its sources between the IPs of the
source's address family by rendezvous hashing: source ``S`` uses the IP with
the highest ``sha256(f"{S}|{ip}")``. The choice is the same on every node and
after restarts; adding or removing an IP moves only the sources of that IP.
With one IP, every source uses it.

Both halves of the data path follow this one split: the steering nodes route a
source to the owner of its IP (:mod:`egressd.core.steering`), and the gateways
keep one source set per egress IP and NAT a source only to its own IP
(:mod:`egressd.core.nft`). So a pod always leaves with the same egress IP,
whichever gateway owns it; a source that reaches a gateway not owning its IP
is dropped there, never NATed to another IP.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import replace

from egressd.core.model import EgressGroup, IPAddress, IPNetwork

Owners = Mapping[IPNetwork, IPAddress]
"""Source CIDR -> the egress IP it uses (:func:`source_owners`)."""


def _weight(source: IPNetwork, ip: IPAddress) -> bytes:
    return hashlib.sha256(f"{source}|{ip}".encode()).digest()


def sources_for(group: EgressGroup, ip: IPAddress) -> tuple[IPNetwork, ...]:
    """The group's sources that use ``ip`` (rendezvous hashing among the
    group's IPs of the same family), in the group's order."""
    peers = [x for x in group.egress_ips if x.version == ip.version]
    if ip not in peers:
        return ()
    return tuple(
        src
        for src in group.source_cidrs
        if src.version == ip.version and max(peers, key=lambda x: _weight(src, x)) == ip
    )


def source_owners(group: EgressGroup, known: Owners | None = None) -> dict[IPNetwork, IPAddress]:
    """Each source of the group -> the egress IP :func:`sources_for` gives it
    (sources of a family without egress IPs are left out).

    A source's IP depends only on the source and the group's egress IPs, so
    ``known``, the answer for an earlier version of the group with the same
    egress IPs, is reused and only new sources are hashed."""
    known = known or {}
    out: dict[IPNetwork, IPAddress] = {}
    missing: dict[IPNetwork, None] = {}
    for src in group.source_cidrs:
        ip = known.get(src)
        if ip is None:
            missing[src] = None
        else:
            out[src] = ip
    if missing:
        new = replace(group, source_cidrs=tuple(missing))
        for ip in dict.fromkeys(group.egress_ips):
            out.update(dict.fromkeys(sources_for(new, ip), ip))
    return out
