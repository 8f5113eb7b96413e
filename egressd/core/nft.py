"""nftables rulesets for SNAT to the egress IPs, rendered as text (no I/O).

Everything egressd does in nftables lives in its own tables; every function
here returns the text of ONE ``nft -f -`` transaction, which the kernel applies
atomically or not at all. Other tables are never named.

Layout (``inet`` family: one table serves IPv4 and IPv6 NAT; kernel >= 5.2 and
nft >= 0.9.1 support NAT in ``inet``, so a second ``ip6`` table is not needed)::

    table inet egressd
      set g_<group>_src4 / _dst4 / _excl4     interval sets, per group and family;
      set g_<group>_src6 / _dst6 / _excl6     src: every source of the group
      set g_<group>_s_<ip>                    interval set per egress IP: the sources
                                              that use that IP (assignment.sources_for)
      chain postrouting   type nat hook postrouting priority srcnat
        ip saddr @g_web_src4 ip daddr @g_web_dst4 ip daddr != @g_web_excl4 jump g_web_v4
      chain g_web_v4      one rule per egress IP of the group this node owns now
        ip saddr @g_web_s_172_18_0_42 snat ip to 172.18.0.42
      chain unnatted      type filter hook postrouting priority srcnat + 5
        ip saddr @g_web_src4 ip daddr @g_web_dst4 ip daddr != @g_web_excl4 counter drop

The ``unnatted`` chain makes the gateway fail closed: selected traffic that
leaves postrouting's NAT un-NATed is dropped, never forwarded with the pod's
own address.

**Which source uses which IP.** A source leaves with the egress IP that
:func:`egressd.core.assignment.sources_for` gives it (rendezvous hashing of the
source CIDR and the group's IPs of its family), on every gateway, whatever
the gateway owns: the steering nodes send it to that IP's owner, and a pod
keeps its IP as long as the group's IPs stay the same. A gateway NATs a source
only to that IP; if the IP is not owned here (a takeover still under way,
steering not yet moved), the source matches no rule of the group chain and the
``unnatted`` chain drops it. It is never NATed to another IP of the group.
When source CIDRs overlap, the most specific one decides (longest prefix): the
per-IP sets partition the union set, so an address is in exactly one of them.

**Names.** ``g_`` and the group name with ``-`` written as ``_`` (group names
are Kubernetes object names, ``[a-z0-9.-]``; nft accepts ``.`` in names), so
names map back to groups one-to-one; an egress IP in a set name has its ``.``
or ``:`` written as ``_`` (:func:`ip_ident`). nft accepts at most 255
characters; a group name that would need more raises ValueError.

**Elements.** Sets have ``flags interval`` and no ``auto-merge``; every set
holds the canonical form of its addresses (the fewest CIDRs that cover them,
as :func:`ipaddress.collapse_addresses` gives, sorted, a /32 or /128 as a bare
address), so what the kernel holds is exactly what :func:`source_sets`
computes. A change of sources is then the difference of two canonical lists
(:func:`diff_source_sets`): every ``delete element`` names an element that exists,
and every ``add element`` overlaps nothing that stays (nft rejects overlapping
elements in an interval set without auto-merge; with auto-merge the kernel
would hold merged ranges that no longer match the elements a later delete
names). Deletes precede adds within a set, so a /24 may replace two /25s in
one transaction.

Staging (:func:`render_table`) writes the whole table, sets included, with the
``table X; delete table X; table X {...}`` idiom: the first line makes the
delete valid when the table does not exist yet, and the three lines are one
transaction. Activation (:func:`render_group_chain`) only flushes and refills
one small group chain, so the takeover path does not re-send the sets. When
only sources change (same groups, egress IPs, destinations and exclusions,
:func:`same_layout`), :func:`render_set_deltas` of :func:`diff_source_sets` changes
the elements of the affected sets in place: no chain, rule or conntrack entry is touched.

Optional sub-second fence (:func:`render_fence_stage`): a timeout set of the IPs
the daemon has recently confirmed it owns; packets leaving with an egress IP as
source and ARP frames with an egress IP as sender are dropped unless the IP is
in that set. Its elements carry a timeout in milliseconds that the daemon
refreshes after every successful renew; a frozen daemon stops serving the IP
when the element times out, long before the address lifetime (whole seconds)
runs out. The fence lives in tables of its own (``inet egressd_fence`` and
``arp egressd_arp``) so that re-staging the SNAT table never resets it.

**Conntrack mark** (:class:`CtMark`, ``docs/conntrack.md`` section 1): with
one, every SNAT rule also sets egressd's bits of the flow's conntrack mark,
``ct mark set ct mark and ~MASK or VALUE``, in the same rule as the ``snat``
(a NAT chain sees only a flow's first packet, so the mark is written once,
when the entry is made, and other software's bits of the mark are kept).
The conntrack stream follows exactly the entries that carry it.

**Connection guard** (:func:`render_guard_stage`, table ``inet egressd_guard``):
for a grace period after a takeover (an element with a timeout in the
``guard4``/``guard6`` set), a packet to the egress IP that matches no
conntrack entry (``ct state new,invalid``: a mid-stream segment of a flow
whose entry is not installed yet) is dropped in prerouting, before the local
stack would answer it with a reset; the server retransmits, and by then the
entry is there. Its counter is the number of packets the guard dropped.
"""

from __future__ import annotations

import bisect
import ipaddress
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from egressd.core.assignment import Owners, source_owners
from egressd.core.model import EgressGroup, IPAddress, IPNetwork

FAMILY = "inet"
TABLE = "egressd"
FENCE_TABLE = "egressd_fence"
ARP_TABLE = "egressd_arp"
GUARD_TABLE = "egressd_guard"
GUARD_CHAIN = "prerouting"

#: Longest name nft accepts for a table, chain or set (NFT_NAME_MAXLEN is 256
#: bytes with the terminating NUL; 256 characters fail with ERANGE).
MAX_NAME = 255

#: Priority of the fail-closed chain, relative to srcnat: after the NAT chains
#: (srcnat), before the fence (srcnat + 10).
GUARD_OFFSET = 5

_GROUP_NAME = re.compile(r"[a-z0-9.-]+")


def ident(group: str) -> str:
    """The nft identifier part for a group name.

    Group names are Kubernetes object names (DNS subdomains, ``[a-z0-9.-]``),
    which cannot contain ``_``: mapping ``-`` to ``_`` and keeping ``.`` (nft
    accepts it in names) is one-to-one. The ``g_`` prefix keeps identifiers
    starting with a letter. Raises ValueError for any other name.
    """
    if not _GROUP_NAME.fullmatch(group):
        raise ValueError(f"group name {group!r} must consist of a-z, 0-9, '.' and '-'")
    return "g_" + group.replace("-", "_")


def group_from_ident(name: str) -> str | None:
    """Inverse of :func:`ident` for a group chain name ``g_<x>_v4``/``_v6``."""
    if not name.startswith("g_") or not name.endswith(("_v4", "_v6")):
        return None
    group = name[2:-3].replace("_", "-")
    return group if _GROUP_NAME.fullmatch(group) else None


def _checked(name: str, group: str) -> str:
    if len(name) > MAX_NAME:
        raise ValueError(
            f"group name {group!r} is too long for nftables: the name {name[:32]}... would have "
            f"{len(name)} characters, nft accepts at most {MAX_NAME}"
        )
    return name


def set_name(group: str, kind: str, version: int) -> str:
    """``kind`` is ``src``, ``dst`` or ``excl``."""
    return _checked(f"{ident(group)}_{kind}{version}", group)


def ip_ident(ip: IPAddress) -> str:
    """An egress IP as a name part: ``172_18_0_42``; IPv6 as its eight groups
    in hex without leading zeros, ``fd00_0_0_0_0_0_0_42`` (never compressed,
    so the form does not depend on how Python prints the address)."""
    if ip.version == 4:
        return str(ip).replace(".", "_")
    value = int(ip)
    return "_".join(f"{(value >> (112 - 16 * i)) & 0xFFFF:x}" for i in range(8))


def ip_set_name(group: str, ip: IPAddress) -> str:
    """The set of the group's sources that use ``ip``. The IP part holds only
    hex digits and ``_`` (never ``s``), so the last ``_s_`` separates it from
    the group part: names of different groups or IPs never collide, nor
    with the ``src``/``dst``/``excl`` sets (whose suffixes are not hex)."""
    return _checked(f"{ident(group)}_s_{ip_ident(ip)}", group)


def group_chain(group: str, version: int) -> str:
    return _checked(f"{ident(group)}_v{version}", group)


def _proto(version: int) -> str:
    return "ip" if version == 4 else "ip6"


def _addr_type(version: int) -> str:
    return "ipv4_addr" if version == 4 else "ipv6_addr"


Span = tuple[int, int]
"""First and last address of a range, as integers."""


def _bits(version: int) -> int:
    return 32 if version == 4 else 128


def _merge(spans: Iterable[Span]) -> list[Span]:
    """Sorted ranges, overlapping and adjacent ones joined."""
    out: list[Span] = []
    for first, last in sorted(spans):
        if out and first <= out[-1][1] + 1:
            if last > out[-1][1]:
                out[-1] = (out[-1][0], last)
        else:
            out.append((first, last))
    return out


def _spans(nets: Iterable[IPNetwork], version: int) -> list[Span]:
    """The addresses of ``nets`` of one family as merged ranges."""
    return _merge((int(n.network_address), int(n.broadcast_address)) for n in nets if n.version == version)


def _cidrs(spans: Iterable[Span], version: int) -> Iterator[tuple[int, int]]:
    """The fewest CIDRs (address, prefix length) that cover ``spans`` exactly,
    in address order: the form :func:`ipaddress.collapse_addresses` gives, at a
    fraction of its cost for thousands of sources."""
    bits = _bits(version)
    for first, last in spans:
        address = first
        while address <= last:
            aligned = (address & -address).bit_length() - 1 if address else bits
            size = min(aligned, (last - address + 1).bit_length() - 1)
            yield address, bits - size
            address += 1 << size


def _element(address: int, prefixlen: int, version: int) -> str:
    """A set element: ``10.0.0.0/24``, a /32 or /128 as a bare address."""
    text = str(ipaddress.IPv4Address(address) if version == 4 else ipaddress.IPv6Address(address))
    return text if prefixlen == _bits(version) else f"{text}/{prefixlen}"


def _format(spans: Iterable[Span], version: int) -> list[str]:
    return [_element(a, p, version) for a, p in _cidrs(spans, version)]


def _elements(nets: Iterable[IPNetwork], version: int) -> list[str]:
    """Sorted, collapsed elements of one family (a /32 or /128 as a bare address)."""
    return _format(_spans(nets, version), version)


def _set_block(name: str, version: int, elements: Sequence[str]) -> list[str]:
    lines = [f"\tset {name} {{", f"\t\ttype {_addr_type(version)}", "\t\tflags interval"]
    if elements:
        lines.append("\t\telements = { " + ", ".join(elements) + " }")
    lines.append("\t}")
    return lines


def families(group: EgressGroup) -> list[int]:
    """IP versions for which the group has egress IPs."""
    return sorted({ip.version for ip in group.egress_ips})


def _egress_ips(group: EgressGroup, version: int) -> list[IPAddress]:
    return sorted({ip for ip in group.egress_ips if ip.version == version}, key=int)


def _minus(span: Span, holes: Sequence[Span]) -> list[Span]:
    """``span`` without ``holes`` (merged ranges inside it)."""
    out: list[Span] = []
    cursor, end = span
    for first, last in holes:
        if first > cursor:
            out.append((cursor, first - 1))
        cursor = max(cursor, last + 1)
    if cursor <= end:
        out.append((cursor, end))
    return out


def _split(group: EgressGroup, version: int, owners: Owners | None = None) -> dict[IPAddress, list[Span]]:
    """The group's addresses of one family partitioned between its egress IPs,
    as merged ranges.

    Each source CIDR goes to its :func:`~egressd.core.assignment.sources_for` IP; where CIDRs of
    different IPs overlap, the most specific one wins, so every address is in
    exactly one part."""
    owners = owners if owners is not None else source_owners(group)
    ips = _egress_ips(group, version)
    owner: dict[Span, IPAddress] = {
        (int(src.network_address), int(src.broadcast_address)): ip
        for src, ip in owners.items()
        if src.version == version
    }
    # widest first among equal starts, so what a CIDR contains follows it
    spans = sorted(owner, key=lambda s: (s[0], -s[1]))
    starts = [first for first, _ in spans]
    parts: dict[IPAddress, list[Span]] = {ip: [] for ip in ips}
    for i, span in enumerate(spans):
        mine = owner[span]
        end = bisect.bisect_right(starts, span[1], lo=i + 1)
        holes = [s for s in spans[i + 1 : end] if owner[s] != mine]
        parts[mine] += _minus(span, _merge(holes)) if holes else [span]
    return {ip: _merge(p) for ip, p in parts.items()}


def source_sets(group: EgressGroup, version: int, owners: Owners | None = None) -> dict[str, list[str]]:
    """Name and canonical elements of every source set of one family: the
    union set, then one set per egress IP. ``owners``: the group's
    :func:`~egressd.core.assignment.source_owners`, if the caller has them."""
    out = {set_name(group.name, "src", version): _elements(group.source_cidrs, version)}
    for ip, spans in _split(group, version, owners).items():
        out[ip_set_name(group.name, ip)] = _format(spans, version)
    return out


def group_source_sets(group: EgressGroup, owners: Owners | None = None) -> dict[str, tuple[str, ...]]:
    """:func:`source_sets` of every family of the group."""
    owners = owners if owners is not None else source_owners(group)
    return {name: tuple(e) for v in families(group) for name, e in source_sets(group, v, owners).items()}


@dataclass(frozen=True)
class CtMark:
    """egressd's bits of the conntrack mark: a flow is egressd's when
    ``ct mark & mask == value``."""

    value: int
    mask: int

    def __post_init__(self) -> None:
        if not 0 < self.mask <= 0xFFFFFFFF:
            raise ValueError(f"conntrack mark mask {self.mask:#x} must be 1 to 0xffffffff")
        if not 0 <= self.value <= 0xFFFFFFFF or self.value & ~self.mask:
            raise ValueError(f"conntrack mark {self.value:#x} has bits outside its mask {self.mask:#x}")

    def statement(self) -> str:
        """The nft statement that sets these bits and keeps the others."""
        return f"ct mark set ct mark and {~self.mask & 0xFFFFFFFF:#010x} or {self.value:#010x}"


def snat_rules(group: str, version: int, ips: Iterable[IPAddress], mark: CtMark | None = None) -> list[str]:
    """Rule bodies of a group chain for the owned ``ips`` of that family: each
    IP NATs its own sources only; with ``mark``, the same rule marks the flow
    (one rule: a newline would end it, and a rule split in two would mark and
    NAT everything)."""
    own = sorted({ip for ip in ips if ip.version == version}, key=int)
    proto = _proto(version)
    marking = f"{mark.statement()} " if mark is not None else ""
    return [f"{proto} saddr @{ip_set_name(group, ip)} {marking}snat {proto} to {ip}" for ip in own]


def render_table(
    groups: Sequence[EgressGroup],
    owned: Mapping[IPAddress, str] | None = None,
    *,
    sets: Mapping[str, Mapping[str, Sequence[str]]] | None = None,
    mark: CtMark | None = None,
) -> str:
    """The whole SNAT table as one transaction that replaces it atomically.

    ``owned`` maps egress IPs this node owns now to their group name; their
    SNAT rules are included so that re-staging never drops active SNAT. An
    owned IP that is no longer an egress IP of its group gets no rule (its
    set is gone). ``sets``: the :func:`group_source_sets` of the groups by
    group name, when the caller has them already (computed here otherwise).
    """
    owned = owned or {}
    sets = sets if sets is not None else {g.name: group_source_sets(g) for g in groups}
    lines = [f"table {FAMILY} {TABLE}", f"delete table {FAMILY} {TABLE}", f"table {FAMILY} {TABLE} {{"]
    jumps: list[str] = []
    guards: list[str] = []
    chains: list[str] = []
    for g in sorted(groups, key=lambda g: g.name):
        for v in families(g):
            proto = _proto(v)
            src, dst, excl = (set_name(g.name, k, v) for k in ("src", "dst", "excl"))
            names = [set_name(g.name, "src", v), *(ip_set_name(g.name, ip) for ip in _egress_ips(g, v))]
            for name in names:
                lines += _set_block(name, v, sets[g.name][name])
            lines += _set_block(dst, v, _elements(g.destination_cidrs, v))
            lines += _set_block(excl, v, _elements(g.excluded_cidrs, v))
            chain = group_chain(g.name, v)
            selected = f"{proto} saddr @{src} {proto} daddr @{dst} {proto} daddr != @{excl}"
            jumps.append(f"\t\t{selected} jump {chain}")
            guards.append(f"\t\t{selected} counter drop")
            ips = [ip for ip, name in owned.items() if name == g.name and ip in g.egress_ips]
            body = [f"\t\t{r}" for r in snat_rules(g.name, v, ips, mark)]
            chains += [f"\tchain {chain} {{", *body, "\t}"]
    lines += chains
    lines += ["\tchain postrouting {", "\t\ttype nat hook postrouting priority srcnat; policy accept;", *jumps, "\t}"]
    # Fail closed: after source NAT, a packet that still carries a selected source
    # to a selected destination was not NATed (this node does not own the source's
    # IP right now, e.g. while steering still points here during a takeover).
    # It is dropped rather than sent out with the pod's own address.
    guard_hook = f"type filter hook postrouting priority srcnat + {GUARD_OFFSET}; policy accept;"
    lines += ["\tchain unnatted {", f"\t\t{guard_hook}", *guards, "\t}"]
    lines.append("}")
    return "\n".join(lines) + "\n"


def render_group_chain(group: str, version: int, ips: Iterable[IPAddress], mark: CtMark | None = None) -> str:
    """Replace the SNAT rules of one group chain (the takeover fast path):
    one rule per owned IP of the family, NATing that IP's sources."""
    chain = group_chain(group, version)
    lines = [f"flush chain {FAMILY} {TABLE} {chain}"]
    lines += [f"add rule {FAMILY} {TABLE} {chain} {r}" for r in snat_rules(group, version, ips, mark)]
    return "\n".join(lines) + "\n"


# -- source updates -------------------------------------------------------------


def _layout(group: EgressGroup) -> tuple[frozenset[IPAddress], tuple[tuple[str, ...], ...]]:
    """What a group contributes to the table besides its sources."""
    nets = tuple(
        tuple(_elements(cidrs, v)) for v in (4, 6) for cidrs in (group.destination_cidrs, group.excluded_cidrs)
    )
    return frozenset(group.egress_ips), nets


def same_layout(old: Sequence[EgressGroup], new: Sequence[EgressGroup]) -> bool:
    """True when ``old`` and ``new`` differ at most in their sources: the same
    groups with the same egress IPs (hence families), destinations and
    exclusions, so the same sets and rules exist and only elements differ."""
    before = {g.name: _layout(g) for g in old}
    after = {g.name: _layout(g) for g in new}
    return len(before) == len(old) and len(after) == len(new) and before == after


@dataclass(frozen=True)
class SetDelta:
    """Elements to delete from and add to one source set."""

    name: str
    deleted: tuple[str, ...]
    added: tuple[str, ...]


def diff_source_sets(old: Mapping[str, Sequence[str]], new: Mapping[str, Sequence[str]]) -> tuple[SetDelta, ...]:
    """The element changes from ``old`` to ``new`` (set name -> canonical
    elements, as :func:`group_source_sets` gives; the same names on both sides),
    sets in name order, sets without change left out."""
    if old.keys() != new.keys():
        raise ValueError("the source sets differ in their names: the table must be rewritten")
    out: list[SetDelta] = []
    for name in sorted(new):
        had, has = old[name], new[name]
        had_set, has_set = set(had), set(has)
        deleted = tuple(e for e in had if e not in has_set)
        added = tuple(e for e in has if e not in had_set)
        if deleted or added:
            out.append(SetDelta(name, deleted, added))
    return tuple(out)


def render_set_deltas(deltas: Iterable[SetDelta]) -> str:
    """One transaction that applies ``deltas``; deletes come before adds in
    each set (a new element may cover one that goes). "" when there is nothing
    to change."""
    lines: list[str] = []
    for d in deltas:
        if d.deleted:
            lines.append(f"delete element {FAMILY} {TABLE} {d.name} {{ {', '.join(d.deleted)} }}")
        if d.added:
            lines.append(f"add element {FAMILY} {TABLE} {d.name} {{ {', '.join(d.added)} }}")
    return "\n".join(lines) + "\n" if lines else ""


# -- removal and the fence ------------------------------------------------------


def render_delete(*, fence: bool = True) -> str:
    """Remove egressd's tables (no error if absent: each is created first)."""
    tables = [(FAMILY, TABLE)]
    if fence:
        tables += [(FAMILY, FENCE_TABLE), ("arp", ARP_TABLE), (FAMILY, GUARD_TABLE)]
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


def fence_sets(ip: IPAddress) -> list[tuple[str, str, str]]:
    """The (family, table, set) of the fence elements of ``ip``."""
    if ip.version == 4:
        return [(FAMILY, FENCE_TABLE, "owned4"), ("arp", ARP_TABLE, "owned")]
    return [(FAMILY, FENCE_TABLE, "owned6")]


def render_fence_refresh(ips: Iterable[IPAddress], ttl_ms: int, *, update: bool = False) -> str:
    """(Re)arm the fence of ``ips`` for ``ttl_ms`` milliseconds from now.

    ``add`` (a no-op if present), ``delete``, ``add`` with the new timeout: the
    kernel resets an existing element's expiry on ``add`` only since 6.10, and
    then only when the command gives the expiry (or a different timeout); this
    form works on every kernel, in one transaction. ``update``: the kernel
    is known to do so (:func:`render_fence_probe`), and a single ``add`` with
    ``expires`` re-arms: a third of the work, and no ``delete`` (for which nft
    first reads the elements of every interval set, the SNAT table's source
    sets included).

    Each step names all the IPs of a set at once: one command (one netlink
    message) per set and step, not per IP; nft parses and evaluates every
    command on its own, so a command per IP cost a thousand owned IPs about
    50 ms of CPU per renew.
    """
    if ttl_ms < 1:
        raise ValueError(f"fence ttl must be at least 1 ms, got {ttl_ms}")
    per_set: dict[tuple[str, str, str], list[str]] = {}
    for ip in sorted(set(ips), key=lambda ip: (ip.version, int(ip))):
        for fence_set in fence_sets(ip):
            per_set.setdefault(fence_set, []).append(str(ip))
    lines: list[str] = []
    for (family, table, name), members in per_set.items():
        if update:
            armed = ", ".join(f"{m} timeout {ttl_ms}ms expires {ttl_ms}ms" for m in members)
            lines.append(f"add element {family} {table} {name} {{ {armed} }}")
            continue
        armed = ", ".join(f"{m} timeout {ttl_ms}ms" for m in members)
        lines += [
            f"add element {family} {table} {name} {{ {armed} }}",
            f"delete element {family} {table} {name} {{ {', '.join(members)} }}",
            f"add element {family} {table} {name} {{ {armed} }}",
        ]
    return "\n".join(lines) + "\n"


PROBE_SET = "probe"
"""A scratch set in the fence table, only for :func:`render_fence_probe`."""
_PROBE_ELEMENT = "192.0.2.1"  # TEST-NET-1; the set is referenced by no rule


def render_fence_probe(step: int) -> str:
    """Whether ``add`` with ``expires`` re-arms an existing element (kernel
    6.10 and later), in three steps: 0 creates the probe set with an element
    that expires in an hour, 1 re-adds it to expire in ten seconds, then the
    adapter lists the set (:func:`probe_updated`), and 2 deletes the set."""
    where = f"{FAMILY} {FENCE_TABLE} {PROBE_SET}"
    if step == 0:
        return (
            f"add set {where} {{ type ipv4_addr; flags timeout; }}\n"
            f"flush set {where}\n"
            f"add element {where} {{ {_PROBE_ELEMENT} timeout 1h }}\n"
        )
    if step == 1:
        return f"add element {where} {{ {_PROBE_ELEMENT} timeout 1h expires 10s }}\n"
    return f"delete set {where}\n"


def probe_updated(listing: Mapping[str, Any]) -> bool:
    """From ``nft -j list set`` of the probe set after step 1: whether the
    element now expires within a minute (the kernel updated it) rather than
    in about an hour. (The JSON listing gives whole seconds.)"""
    remaining = parse_fence(listing).get(ipaddress.ip_address(_PROBE_ELEMENT))
    return remaining is not None and remaining < 60


def render_fence_remove(ips: Iterable[IPAddress]) -> str:
    """Disarm the fence of ``ips`` at once (no error if already expired)."""
    lines: list[str] = []
    for ip in sorted(set(ips), key=lambda ip: (ip.version, int(ip))):
        for family, table, name in fence_sets(ip):
            lines += [
                f"add element {family} {table} {name} {{ {ip} timeout 1s }}",
                f"delete element {family} {table} {name} {{ {ip} }}",
            ]
    return "\n".join(lines) + "\n"


def parse_active(listing: Mapping[str, Any]) -> dict[IPAddress, str]:
    """Egress IPs with a SNAT rule, mapped to their group, from ``nft -j list table``.

    A rule counts if it is in a group chain and NATs to an address: today's
    ``ip saddr @g_<group>_s_<ip> snat ip to <ip>``, and also a rule of an earlier
    layout (without the match), so that a restarted daemon of a newer version
    keeps the SNAT that an older one left active and re-stages it."""
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


# -- the connection guard -----------------------------------------------------


def render_guard_stage() -> str:
    """Create the guard table if absent: its timeout sets are declared (a
    no-op if they exist), never flushed, so re-staging does not end a grace
    period that runs; the chain is rewritten.

    Priority ``mangle`` (-150): after conntrack (-200) has looked the packet
    up, before the NAT and the local stack. ``ct state new,invalid``: a
    segment of a flow the kernel has no entry for is picked up as ``new``
    (or is ``invalid``); an installed entry's packets are ``established``."""
    return (
        "\n".join(
            [
                f"add table {FAMILY} {GUARD_TABLE}",
                f"add set {FAMILY} {GUARD_TABLE} guard4 {{ type ipv4_addr; flags timeout; }}",
                f"add set {FAMILY} {GUARD_TABLE} guard6 {{ type ipv6_addr; flags timeout; }}",
                f"add chain {FAMILY} {GUARD_TABLE} {GUARD_CHAIN} {{ type filter hook prerouting priority mangle; "
                "policy accept; }",
                f"flush chain {FAMILY} {GUARD_TABLE} {GUARD_CHAIN}",
                f"add rule {FAMILY} {GUARD_TABLE} {GUARD_CHAIN} ip daddr @guard4 ct state new,invalid counter drop",
                f"add rule {FAMILY} {GUARD_TABLE} {GUARD_CHAIN} ip6 daddr @guard6 ct state new,invalid counter drop",
            ]
        )
        + "\n"
    )


def render_guard_arm(ips: Iterable[IPAddress], ms: int) -> str:
    """Guard ``ips`` for ``ms`` milliseconds from now (re-arming restarts
    the period: ``add``, ``delete``, ``add``, as the fence)."""
    if ms < 1:
        raise ValueError(f"guard grace must be at least 1 ms, got {ms}")
    lines: list[str] = []
    for ip in sorted(set(ips), key=lambda ip: (ip.version, int(ip))):
        name = "guard4" if ip.version == 4 else "guard6"
        lines += [
            f"add element {FAMILY} {GUARD_TABLE} {name} {{ {ip} timeout {ms}ms }}",
            f"delete element {FAMILY} {GUARD_TABLE} {name} {{ {ip} }}",
            f"add element {FAMILY} {GUARD_TABLE} {name} {{ {ip} timeout {ms}ms }}",
        ]
    return "\n".join(lines) + "\n"


def parse_counted_drops(listing: Mapping[str, Any]) -> int:
    """Packets counted by the rules of an ``nft -j list chain`` listing."""
    total = 0
    for item in listing.get("nftables", []):
        rule = item.get("rule") if isinstance(item, dict) else None
        if not isinstance(rule, dict):
            continue
        for expr in rule.get("expr", []):
            counter = expr.get("counter") if isinstance(expr, dict) else None
            if isinstance(counter, dict) and isinstance(counter.get("packets"), int):
                total += counter["packets"]
    return total
