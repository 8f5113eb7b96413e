"""Which addresses may float as egress IPs, which may be a node's address, and
which interface names the kernel and nftables accept.

One place for these rules, shared by the static config (:mod:`egressd.core.config`),
the ``EgressGatewayPolicy`` parser (:mod:`egressd.core.policy`) and the
Kubernetes-mode resolution (:mod:`egressd.core.resolution`). Each check returns
None or the reason the value is refused, so callers name the field.

An egress IP is added to a gateway's interface, answered for by ARP/NDP and
used as the SNAT source of other hosts' traffic. It must therefore be an
ordinary unicast address, global or private; an address that belongs to
something else (a node, a pod, a subnet's network or broadcast address) would
be stolen from its owner by whichever gateway announces it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

IFNAMSIZ = 16
"""Linux ``IFNAMSIZ``: an interface name is at most 15 bytes plus its NUL."""

_IFNAME_FORBIDDEN = frozenset("/:'\"`;\\")
"""The kernel refuses ``/`` and ``:`` (``dev_valid_name``); quotes, backquotes,
semicolons and backslashes are legal to the kernel but end or escape a token
in the nftables ruleset egressd renders, so egressd refuses them too."""


def canonical(ip: IPAddress) -> IPAddress:
    """The address two spellings of one host share: an IPv4-mapped IPv6
    address (``::ffff:172.18.0.42``) is its IPv4 address; others are themselves."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _special(ip: IPAddress) -> str | None:
    """Why ``ip`` is not an ordinary unicast host address (None if it is)."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return f"is an IPv4-mapped IPv6 address; write {ip.ipv4_mapped}"
    checks = (
        (ip.is_unspecified, "the unspecified address"),
        (ip.is_loopback, "a loopback address"),
        (ip.is_multicast, "a multicast address"),
        (ip.is_link_local, "a link-local address"),
        (
            isinstance(ip, ipaddress.IPv4Address) and ip == ipaddress.IPv4Address("255.255.255.255"),
            "the broadcast address",
        ),
        (ip.is_reserved, "a reserved address"),
        (isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local, "a deprecated site-local address"),
    )
    for hit, what in checks:
        if hit:
            return f"is {what}"
    return None


def egress_ip_problem(ip: IPAddress) -> str | None:
    """Why ``ip`` cannot be an egress IP, or None: it must be unicast and
    global or private (RFC 1918, ULA, documentation ranges...)."""
    special = _special(ip)
    if special is not None:
        return f"{ip} cannot be an egress IP: it {special}"
    if not (ip.is_global or ip.is_private):
        return (
            f"{ip} cannot be an egress IP: it is neither global nor private (e.g. shared address space 100.64.0.0/10)"
        )
    return None


def node_address_problem(ip: IPAddress) -> str | None:
    """Why ``ip`` cannot be a node's address on the node network, or None.
    Other nodes route selected traffic to it and peers reach the node there,
    so it must be a unicast address another host can reach."""
    special = _special(ip)
    if special is not None:
        return f"{ip} cannot be a node address: it {special}"
    return None


def any_overlap(a: Sequence[IPNetwork], b: Sequence[IPNetwork]) -> bool:
    """Whether a network of ``a`` overlaps one of ``b`` (of the same family)."""
    return any(x.version == y.version and x.overlaps(y) for x in a for y in b)


def subnet_edge_problem(ip: IPAddress, networks: Iterable[IPNetwork]) -> str | None:
    """Why ``ip`` is the network or broadcast address of one of ``networks``
    that contains it (IPv4 prefixes up to /30; IPv6 prefixes up to /126, whose
    all-zero host is the subnet-router anycast address), or None."""
    for net in networks:
        if net.version != ip.version or ip not in net:
            continue
        if isinstance(net, ipaddress.IPv4Network) and net.prefixlen <= 30:
            if ip == net.network_address:
                return f"{ip} is the network address of {net}"
            if ip == net.broadcast_address:
                return f"{ip} is the broadcast address of {net}"
        if isinstance(net, ipaddress.IPv6Network) and net.prefixlen <= 126 and ip == net.network_address:
            return f"{ip} is the subnet-router anycast address of {net}"
    return None


def interface_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a Linux interface name egressd works with (a
    short phrase for "is not a valid interface name (...)"), or None."""
    size = len(name.encode("utf-8", "surrogatepass"))
    if not name:
        return "empty"
    if size >= IFNAMSIZ:
        return f"{size} bytes in UTF-8; Linux allows at most {IFNAMSIZ - 1}"
    if name in (".", ".."):
        return "'.' and '..' are directory names to the kernel"
    bad = sorted({c for c in name if c in _IFNAME_FORBIDDEN or c.isspace() or not c.isprintable()})
    if bad:
        return "contains " + ", ".join(map(repr, bad)) + " (no '/', ':', quotes, ';', backslash or white space)"
    return None


OnLink = ipaddress.IPv4Interface | ipaddress.IPv6Interface


def on_link_problem(ip: IPAddress, interface: str, on_link: Iterable[OnLink]) -> str | None:
    """Why ``ip`` cannot float on ``interface``, given the addresses the node
    already has there (egressd's own left out), or None: it must be none of
    them, nor the network or broadcast address of their subnets."""
    addresses = list(on_link)
    if any(canonical(a.ip) == canonical(ip) for a in addresses):
        return f"{ip} is already an address of this node on {interface}"
    why = subnet_edge_problem(ip, [a.network for a in addresses])
    if why is not None:
        return f"{why} on {interface}; it cannot be an egress IP"
    return None
