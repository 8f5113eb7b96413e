"""nftables rulesets for SNAT to the egress IPs, rendered as text (no I/O).

Everything egressd does in nftables lives in its own tables; every function
here returns the text of ONE ``nft -f -`` transaction, which the kernel applies
atomically or not at all. Other tables are never named.

Layout (``inet`` family: one table serves IPv4 and IPv6 NAT; kernel >= 5.2 and
nft >= 0.9.1 support NAT in ``inet``, so a second ``ip6`` table is not needed)::

    table inet egressd
      set g_<group>_src4 / _dst4 / _excl4     interval sets (auto-merge), per group and family
      set g_<group>_src6 / _dst6 / _excl6
      chain postrouting   type nat hook postrouting priority srcnat
        ip saddr @g_web_src4 ip daddr @g_web_dst4 ip daddr != @g_web_excl4 jump g_web_v4
      chain g_web_v4      one rule per egress IP of the group this node owns now
        snat ip to 172.18.0.42
      chain unnatted      type filter hook postrouting priority srcnat + 5
        ip saddr @g_web_src4 ip daddr @g_web_dst4 ip daddr != @g_web_excl4 counter drop

The ``unnatted`` chain makes the gateway fail closed: selected traffic that
reaches it while it owns none of the group's IPs is dropped, never forwarded
with the pod's own address.

Staging (:func:`render_table`) writes the whole table, sets included, with the
``table X; delete table X; table X {...}`` idiom: the first line makes the
delete valid when the table does not exist yet, and the three lines are one
transaction. Activation (:func:`render_group_chain`) only flushes and refills
one small group chain, so the takeover path does not re-send the sets.

Several owned IPs of one group: the sources are split between the group's IPs
this node owns *now*, sorted, by ``jhash <saddr> mod N seed 0 == i``. The split
is deterministic for a given owned set (the same source always gets the same IP
on every node and after a restart); when the owned set changes, new connections
may map differently, established ones keep their conntrack NAT binding. Any
traffic that reaches the node for the group is SNATed to *some* owned IP of the
group, never left with the node address.

Optional sub-second fence (:func:`render_fence_stage`): a timeout set of the IPs
the daemon has recently confirmed it owns; packets leaving with an egress IP as
source and ARP frames with an egress IP as sender are dropped unless the IP is
in that set. Its elements carry a timeout in milliseconds that the daemon
refreshes after every successful renew; a frozen daemon stops serving the IP
when the element times out, long before the address lifetime (whole seconds)
runs out. The fence lives in tables of its own (``inet egressd_fence`` and
``arp egressd_arp``) so that re-staging the SNAT table never resets it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from egressd.core.settings import EgressGroup, IPAddress, IPNetwork

FAMILY = "inet"
TABLE = "egressd"
FENCE_TABLE = "egressd_fence"
ARP_TABLE = "egressd_arp"

#: Fixed seed of the source split: the split must not change across restarts.
HASH_SEED = 0

#: Priority of the fail-closed chain, relative to srcnat: after the NAT chains
#: (srcnat), before the fence (srcnat + 10).
GUARD_OFFSET = 5


def ident(group: str) -> str:
    """The nft identifier part for a group name. Group names are DNS labels
    (``[a-z0-9-]``), which cannot contain ``_``, so mapping ``-`` to ``_`` is
    one-to-one; the ``g_`` prefix keeps identifiers starting with a letter."""
    return "g_" + group.replace("-", "_")


def group_from_ident(name: str) -> str | None:
    """Inverse of :func:`ident` for a group chain name ``g_<x>_v4``/``_v6``."""
    if not name.startswith("g_") or not name.endswith(("_v4", "_v6")):
        return None
    return name[2:-3].replace("_", "-")


def set_name(group: str, kind: str, version: int) -> str:
    """``kind`` is ``src``, ``dst`` or ``excl``."""
    return f"{ident(group)}_{kind}{version}"


def group_chain(group: str, version: int) -> str:
    return f"{ident(group)}_v{version}"


def _proto(version: int) -> str:
    return "ip" if version == 4 else "ip6"


def _addr_type(version: int) -> str:
    return "ipv4_addr" if version == 4 else "ipv6_addr"


def _elements(nets: Iterable[IPNetwork], version: int) -> list[str]:
    """Sorted, collapsed elements of one family (a /32 or /128 as a bare address)."""
    same = sorted((n for n in nets if n.version == version), key=lambda n: (int(n.network_address), n.prefixlen))
    out: list[str] = []
    for net in ipaddress.collapse_addresses(same):  # type: ignore[type-var]
        out.append(str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net))
    return out


def _set_block(name: str, version: int, elements: Sequence[str], *, interval: bool = True) -> list[str]:
    lines = [f"\tset {name} {{", f"\t\ttype {_addr_type(version)}"]
    if interval:
        lines.append("\t\tflags interval")
        lines.append("\t\tauto-merge")
    if elements:
        lines.append("\t\telements = { " + ", ".join(elements) + " }")
    lines.append("\t}")
    return lines


def families(group: EgressGroup) -> list[int]:
    """IP versions for which the group has egress IPs."""
    return sorted({ip.version for ip in group.egress_ips})


def snat_rules(group: str, version: int, ips: Iterable[IPAddress]) -> list[str]:
    """Rule bodies of a group chain for the owned ``ips`` of that family."""
    own = sorted((ip for ip in ips if ip.version == version), key=int)
    proto = _proto(version)
    if len(own) == 1:
        return [f"snat {proto} to {own[0]}"]
    return [
        f"jhash {proto} saddr mod {len(own)} seed {HASH_SEED:#x} == {i} snat {proto} to {ip}"
        for i, ip in enumerate(own)
    ]


def render_table(groups: Sequence[EgressGroup], owned: Mapping[IPAddress, str] | None = None) -> str:
    """The whole SNAT table as one transaction that replaces it atomically.

    ``owned`` maps egress IPs this node owns now to their group name; their
    SNAT rules are included so that re-staging never drops active SNAT.
    """
    owned = owned or {}
    lines = [f"table {FAMILY} {TABLE}", f"delete table {FAMILY} {TABLE}", f"table {FAMILY} {TABLE} {{"]
    jumps: list[str] = []
    guards: list[str] = []
    chains: list[str] = []
    for g in sorted(groups, key=lambda g: g.name):
        for v in families(g):
            proto = _proto(v)
            src, dst, excl = (set_name(g.name, k, v) for k in ("src", "dst", "excl"))
            lines += _set_block(src, v, _elements(g.source_cidrs, v))
            lines += _set_block(dst, v, _elements(g.destination_cidrs, v))
            lines += _set_block(excl, v, _elements(g.excluded_cidrs, v))
            chain = group_chain(g.name, v)
            selected = f"{proto} saddr @{src} {proto} daddr @{dst} {proto} daddr != @{excl}"
            jumps.append(f"\t\t{selected} jump {chain}")
            guards.append(f"\t\t{selected} counter drop")
            ips = [ip for ip, name in owned.items() if name == g.name]
            body = [f"\t\t{r}" for r in snat_rules(g.name, v, ips)] if ips else []
            chains += [f"\tchain {chain} {{", *body, "\t}"]
    lines += chains
    lines += ["\tchain postrouting {", "\t\ttype nat hook postrouting priority srcnat; policy accept;", *jumps, "\t}"]
    # Fail closed: after source NAT, a packet that still carries a selected source
    # to a selected destination was not NATed (this node owns none of the group's
    # IPs right now, e.g. while steering still points here during a takeover).
    # It is dropped rather than sent out with the pod's own address.
    guard_hook = f"type filter hook postrouting priority srcnat + {GUARD_OFFSET}; policy accept;"
    lines += ["\tchain unnatted {", f"\t\t{guard_hook}", *guards, "\t}"]
    lines.append("}")
    return "\n".join(lines) + "\n"


def render_group_chain(group: str, version: int, ips: Iterable[IPAddress]) -> str:
    """Replace the SNAT rules of one group chain (the takeover fast path)."""
    chain = group_chain(group, version)
    lines = [f"flush chain {FAMILY} {TABLE} {chain}"]
    own = [ip for ip in ips if ip.version == version]
    if own:
        lines += [f"add rule {FAMILY} {TABLE} {chain} {r}" for r in snat_rules(group, version, own)]
    return "\n".join(lines) + "\n"


def render_delete(*, fence: bool = True) -> str:
    """Remove egressd's tables (no error if absent: each is created first)."""
    tables = [(FAMILY, TABLE)]
    if fence:
        tables += [(FAMILY, FENCE_TABLE), ("arp", ARP_TABLE)]
    lines: list[str] = []
    for family, name in tables:
        lines += [f"table {family} {name}", f"delete table {family} {name}"]
    return "\n".join(lines) + "\n"


def render_fence_stage(egress_ips: Iterable[IPAddress]) -> str:
    """Create the fence tables if absent and set the list of fenced egress IPs.

    The ``owned*`` timeout sets are declared (a no-op if they exist), never
    flushed here: re-staging must not extend nor cut a running fence.
    """
    ips = sorted(set(egress_ips), key=lambda ip: (ip.version, int(ip)))
    v4 = [str(ip) for ip in ips if ip.version == 4]
    v6 = [str(ip) for ip in ips if ip.version == 6]
    lines = [
        f"add table {FAMILY} {FENCE_TABLE}",
        f"add set {FAMILY} {FENCE_TABLE} egress4 {{ type ipv4_addr; }}",
        f"add set {FAMILY} {FENCE_TABLE} egress6 {{ type ipv6_addr; }}",
        f"add set {FAMILY} {FENCE_TABLE} owned4 {{ type ipv4_addr; flags timeout; }}",
        f"add set {FAMILY} {FENCE_TABLE} owned6 {{ type ipv6_addr; flags timeout; }}",
        f"add chain {FAMILY} {FENCE_TABLE} postrouting {{ type filter hook postrouting priority srcnat + 10; "
        "policy accept; }",
        f"flush chain {FAMILY} {FENCE_TABLE} postrouting",
        f"add rule {FAMILY} {FENCE_TABLE} postrouting ip saddr @egress4 ip saddr != @owned4 drop",
        f"add rule {FAMILY} {FENCE_TABLE} postrouting ip6 saddr @egress6 ip6 saddr != @owned6 drop",
        f"flush set {FAMILY} {FENCE_TABLE} egress4",
        f"flush set {FAMILY} {FENCE_TABLE} egress6",
        f"add table arp {ARP_TABLE}",
        f"add set arp {ARP_TABLE} egress {{ type ipv4_addr; }}",
        f"add set arp {ARP_TABLE} owned {{ type ipv4_addr; flags timeout; }}",
        f"add chain arp {ARP_TABLE} output {{ type filter hook output priority filter; policy accept; }}",
        f"flush chain arp {ARP_TABLE} output",
        f"add rule arp {ARP_TABLE} output arp saddr ip @egress arp saddr ip != @owned drop",
        f"flush set arp {ARP_TABLE} egress",
    ]
    if v4:
        lines.append(f"add element {FAMILY} {FENCE_TABLE} egress4 {{ {', '.join(v4)} }}")
        lines.append(f"add element arp {ARP_TABLE} egress {{ {', '.join(v4)} }}")
    if v6:
        lines.append(f"add element {FAMILY} {FENCE_TABLE} egress6 {{ {', '.join(v6)} }}")
    return "\n".join(lines) + "\n"


def _fence_sets(ip: IPAddress) -> list[tuple[str, str, str]]:
    if ip.version == 4:
        return [(FAMILY, FENCE_TABLE, "owned4"), ("arp", ARP_TABLE, "owned")]
    return [(FAMILY, FENCE_TABLE, "owned6")]


def render_fence_refresh(ips: Iterable[IPAddress], ttl_ms: int) -> str:
    """(Re)arm the fence of ``ips`` for ``ttl_ms`` milliseconds from now.

    ``add`` (a no-op if present), ``delete``, ``add`` with the new timeout: the
    kernel only resets an existing element's timeout on ``add`` since 6.10, and
    this form works on older kernels too, in one transaction.
    """
    if ttl_ms < 1:
        raise ValueError(f"fence ttl must be at least 1 ms, got {ttl_ms}")
    lines: list[str] = []
    for ip in sorted(set(ips), key=lambda ip: (ip.version, int(ip))):
        for family, table, name in _fence_sets(ip):
            lines += [
                f"add element {family} {table} {name} {{ {ip} timeout {ttl_ms}ms }}",
                f"delete element {family} {table} {name} {{ {ip} }}",
                f"add element {family} {table} {name} {{ {ip} timeout {ttl_ms}ms }}",
            ]
    return "\n".join(lines) + "\n"


def render_fence_remove(ips: Iterable[IPAddress]) -> str:
    """Disarm the fence of ``ips`` at once (no error if already expired)."""
    lines: list[str] = []
    for ip in sorted(set(ips), key=lambda ip: (ip.version, int(ip))):
        for family, table, name in _fence_sets(ip):
            lines += [
                f"add element {family} {table} {name} {{ {ip} timeout 1s }}",
                f"delete element {family} {table} {name} {{ {ip} }}",
            ]
    return "\n".join(lines) + "\n"


def parse_active(listing: Mapping[str, Any]) -> dict[IPAddress, str]:
    """Egress IPs with a SNAT rule, mapped to their group, from ``nft -j list table``."""
    out: dict[IPAddress, str] = {}
    for item in listing.get("nftables", []):
        rule = item.get("rule") if isinstance(item, dict) else None
        if not isinstance(rule, dict) or rule.get("table") != TABLE:
            continue
        group = group_from_ident(str(rule.get("chain", "")))
        if group is None:
            continue
        for expr in rule.get("expr", []):
            snat = expr.get("snat") if isinstance(expr, dict) else None
            if isinstance(snat, dict) and isinstance(snat.get("addr"), str):
                out[ipaddress.ip_address(snat["addr"])] = group
    return out


def parse_fence(listing: Mapping[str, Any]) -> dict[IPAddress, float]:
    """Fence elements and their remaining time (seconds) from ``nft -j list set``."""
    out: dict[IPAddress, float] = {}
    for item in listing.get("nftables", []):
        s = item.get("set") if isinstance(item, dict) else None
        if not isinstance(s, dict):
            continue
        for elem in s.get("elem", []):
            if isinstance(elem, dict) and isinstance(elem.get("elem"), dict):
                e = elem["elem"]
                out[ipaddress.ip_address(e["val"])] = float(e.get("expires", 0))
            elif isinstance(elem, str):
                out[ipaddress.ip_address(elem)] = 0.0
    return out
