"""Policy routing on steering nodes, planned as values (no I/O).

A worker node sends the traffic of a group's sources to the group's
destinations, minus the excluded CIDRs, to the node that currently owns the
egress IP those sources use. The kernel objects, all inside egressd's own
ranges (:class:`Layout`)::

    table  T = table_base + slot          one per egress IP, holds
        <dst cidr> via <owner> metric 1024          one route per destination CIDR
        throw <excluded cidr> metric 1024           one per excluded CIDR
        <egress ip>/32 via <owner> metric 59881     the anchor: names the table's IP
    rule   priority_base + slot           from <src> to <excluded> lookup main
    rule   priority_base + slots + slot   from <src> to <dst> lookup T

Every exclusion rule (of any IP) precedes every steering rule, so an excluded
destination can never be caught by a steering rule, whatever the slots. A
``lookup main`` that finds no route falls through to the next rule, though (a
node without a route to the excluded CIDR, typical for IPv6 without a default
route); the ``throw`` routes cover that case: the steering lookup ends without
a result and rule processing goes on as if egressd were not there. The routes
and rules carry egressd's protocol number (see the adapter).

**Slots.** An egress IP gets a slot, and with it a table and two priorities.
The preferred slot is ``sha256(ip) mod slots``; if it is taken by another IP,
the next free one (linear probing, wrapping). Which IP holds which table is
recorded in the kernel by the *anchor route*, a host route to the egress IP
itself via the owner, with the distinctive metric :data:`ANCHOR_METRIC`; after a
restart the adapter reads the anchors back, so the mapping survives the
daemon. (The anchor is also correct routing: the owner holds the egress IP.)

**Source split.** The rules of an egress IP match the sources that use it,
as :mod:`egressd.core.assignment` decides (the same split the gateways' SNAT
uses), so a pod always leaves with the same egress IP, whichever gateway owns it.

**Diff.** :func:`diff` orders the operations so that the data path never sees
a half-built state: routes are written (replace) before any rule points at
them, exclusion rules are added before steering rules and removed after them,
and stale routes go last. Changing the owner of an IP changes routes only (one
replace per destination plus the anchor); the rules stay.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from egressd.core.assignment import sources_for
from egressd.core.model import EgressGroup, IPAddress, IPNetwork

#: ``main``: where excluded destinations are looked up.
MAIN_TABLE = 254

#: Metric of the destination routes (the kernel's default for IPv6, explicit
#: for IPv4 too so both families read back the same).
ROUTE_METRIC = 1024

#: Metric of the anchor route, which records which egress IP a table serves.
#: Any value other than :data:`ROUTE_METRIC` works; this one is easy to spot.
ANCHOR_METRIC = 0xE9E9

_RESERVED_TABLES = frozenset({0, 253, 254, 255})
_LAST_USER_PRIORITY = 32765
"""Priority 32766 is the kernel's ``lookup main`` rule; ours must come before it."""


@dataclass(frozen=True)
class Layout:
    """egressd's share of the routing tables and rule priorities.

    Nothing outside ``[table_base, table_base + slots)`` and
    ``[priority_base, priority_base + 2 * slots)`` is ever touched.
    """

    table_base: int = 7100
    """First routing table. 7100 is far from the kernel's tables (253-255) and
    from the small numbers other tools usually pick; configurable when not."""

    priority_base: int = 7100
    """First rule priority. Must be below 32766 (the default ``lookup main``)
    and should be above the rules of the CNI that must win over steering."""

    slots: int = 50
    """How many egress IPs this node can steer at once (one table and two
    priorities each)."""

    def __post_init__(self) -> None:
        if self.slots < 1:
            raise ValueError(f"slots must be at least 1, got {self.slots}")
        tables = range(self.table_base, self.table_base + self.slots)
        if tables.start < 1 or tables.stop - 1 > 0xFFFFFFFF or _RESERVED_TABLES.intersection(tables):
            raise ValueError(
                f"tables {tables.start}-{tables.stop - 1} must lie in 1-4294967295 "
                f"without 253-255 (default, main, local)"
            )
        last = self.priority_base + 2 * self.slots - 1
        if self.priority_base < 1 or last > _LAST_USER_PRIORITY:
            raise ValueError(f"priorities {self.priority_base}-{last} must lie in 1-{_LAST_USER_PRIORITY}")

    def table(self, slot: int) -> int:
        return self.table_base + slot

    def exclusion_priority(self, slot: int) -> int:
        return self.priority_base + slot

    def steering_priority(self, slot: int) -> int:
        return self.priority_base + self.slots + slot

    def slot_of_table(self, table: int) -> int | None:
        slot = table - self.table_base
        return slot if 0 <= slot < self.slots else None

    def slot_of_priority(self, priority: int) -> int | None:
        offset = priority - self.priority_base
        return offset % self.slots if 0 <= offset < 2 * self.slots else None


@dataclass(frozen=True)
class Rule:
    """``from src to dst lookup table`` at ``priority``."""

    priority: int
    src: IPNetwork
    dst: IPNetwork
    table: int

    @property
    def version(self) -> int:
        return self.src.version

    @property
    def exclusion(self) -> bool:
        return self.table == MAIN_TABLE

    @property
    def order(self) -> tuple[int, int, int, int, int, int]:
        """Sort key (networks of two families do not compare)."""
        return (
            self.priority,
            self.version,
            int(self.src.network_address),
            self.src.prefixlen,
            int(self.dst.network_address),
            self.dst.prefixlen,
        )

    def __str__(self) -> str:
        table = "main" if self.table == MAIN_TABLE else str(self.table)
        return f"{self.priority}: from {self.src} to {self.dst} lookup {table}"


@dataclass(frozen=True)
class Route:
    """``dst via via table table metric metric`` (``dev interface onlink`` if
    set), or ``throw dst`` when ``via`` is None."""

    table: int
    dst: IPNetwork
    metric: int
    via: IPAddress | None
    interface: str | None = None

    @property
    def key(self) -> tuple[int, IPNetwork, int]:
        """What the kernel identifies a route by; ``replace`` changes the rest."""
        return (self.table, self.dst, self.metric)

    @property
    def anchor(self) -> bool:
        return self.via is not None and self.metric == ANCHOR_METRIC and self.dst.prefixlen == self.dst.max_prefixlen

    @property
    def throw(self) -> bool:
        return self.via is None

    @property
    def order(self) -> tuple[int, int, int, int, int]:
        """Sort key (networks of two families do not compare)."""
        return (self.table, self.dst.version, int(self.dst.network_address), self.dst.prefixlen, self.metric)

    def __str__(self) -> str:
        if self.via is None:
            return f"throw {self.dst} table {self.table} metric {self.metric}"
        dev = f" dev {self.interface} onlink" if self.interface else ""
        return f"{self.dst} via {self.via}{dev} table {self.table} metric {self.metric}"


@dataclass(frozen=True)
class Plan:
    """Rules and routes, desired or present."""

    rules: frozenset[Rule] = frozenset()
    routes: frozenset[Route] = frozenset()

    def __or__(self, other: Plan) -> Plan:
        return Plan(self.rules | other.rules, self.routes | other.routes)

    def __bool__(self) -> bool:
        return bool(self.rules or self.routes)

    def anchors(self, layout: Layout) -> dict[IPAddress, int]:
        """Egress IP -> slot, as recorded by the anchor routes."""
        out: dict[IPAddress, int] = {}
        for route in sorted(self.routes, key=lambda r: r.order):
            slot = layout.slot_of_table(route.table)
            if route.anchor and slot is not None:
                out.setdefault(route.dst.network_address, slot)
        return out


Verb = Literal["replace", "add", "delete"]


@dataclass(frozen=True)
class Op:
    """One kernel change: ``replace``/``delete`` a route, ``add``/``delete`` a rule."""

    verb: Verb
    target: Rule | Route

    def __str__(self) -> str:
        kind = "rule" if isinstance(self.target, Rule) else "route"
        return f"{self.verb} {kind} {self.target}"


# -- which slot an IP gets ---------------------------------------------------


def preferred_slot(ip: IPAddress, layout: Layout) -> int:
    return int.from_bytes(hashlib.sha256(ip.packed).digest()[:8], "big") % layout.slots


def assign_slot(ip: IPAddress, taken: Mapping[IPAddress, int], layout: Layout) -> int | None:
    """``ip``'s slot: the one it has, else the first free one from its preferred
    slot on (wrapping); None when every slot is taken."""
    if ip in taken:
        return taken[ip]
    used = set(taken.values())
    start = preferred_slot(ip, layout)
    for step in range(layout.slots):
        slot = (start + step) % layout.slots
        if slot not in used:
            return slot
    return None


# -- desired state ---------------------------------------------------------


def plan_ip(
    group: EgressGroup,
    ip: IPAddress,
    via: IPAddress | None,
    slot: int,
    layout: Layout,
    *,
    interface: str | None = None,
) -> Plan:
    """Rules and routes that steer ``group``'s traffic for ``ip`` via ``via``
    in ``slot``; empty when ``via`` is None or no source or destination uses ``ip``."""
    if via is None:
        return Plan()
    if via.version != ip.version:
        raise ValueError(f"group {group.name}: egress IP {ip} cannot be reached via {via} (other address family)")
    sources = sources_for(group, ip)
    dests = tuple(d for d in group.destination_cidrs if d.version == ip.version)
    if not sources or not dests:
        return Plan()
    excluded = tuple(e for e in group.excluded_cidrs if e.version == ip.version)
    table = layout.table(slot)
    routes = {Route(table, d, ROUTE_METRIC, via, interface) for d in dests}
    routes |= {Route(table, e, ROUTE_METRIC, None) for e in excluded}
    routes.add(Route(table, ipaddress.ip_network(ip), ANCHOR_METRIC, via, interface))
    rules = {Rule(layout.exclusion_priority(slot), s, e, MAIN_TABLE) for s in sources for e in excluded}
    rules |= {Rule(layout.steering_priority(slot), s, d, table) for s in sources for d in dests}
    return Plan(frozenset(rules), frozenset(routes))


def plan(
    groups: Sequence[EgressGroup],
    vias: Mapping[IPAddress, IPAddress | None],
    layout: Layout,
    *,
    taken: Mapping[IPAddress, int] | None = None,
    interface: str | None = None,
) -> tuple[Plan, dict[IPAddress, int]]:
    """The whole node's desired state, and the slot of every steered IP.

    ``vias`` maps egress IPs to their owner's address (None or missing: no
    owner known, not steered). ``taken`` is the slots already in use (read from
    the anchors); IPs without one get slots in sorted order. Raises ValueError
    when the IPs do not fit in ``layout.slots``.
    """
    slots: dict[IPAddress, int] = {ip: s for ip, s in (taken or {}).items() if vias.get(ip) is not None}
    out = Plan()
    by_ip = {ip: g for g in groups for ip in g.egress_ips}
    for ip in sorted(by_ip, key=lambda x: (x.version, x)):
        via = vias.get(ip)
        if via is None:
            continue
        slot = assign_slot(ip, slots, layout)
        if slot is None:
            raise ValueError(f"no free steering slot for {ip}: all {layout.slots} are in use")
        part = plan_ip(by_ip[ip], ip, via, slot, layout, interface=interface)
        if part:
            slots[ip] = slot
            out = out | part
        else:
            slots.pop(ip, None)
    return out, slots


# -- desired vs present ------------------------------------------------------


def diff(desired: Plan, present: Plan) -> tuple[Op, ...]:
    """Operations that turn ``present`` into ``desired``, in a safe order:

    1. replace routes that are missing or differ (anchors first), so a table is
       complete, throw routes included, before a rule points at it, and an
       owner change is visible at once;
    2. add missing exclusion rules, then missing steering rules;
    3. delete stale steering rules, then stale exclusion rules;
    4. delete stale routes (anchors last, so an interrupted removal leaves the
       table still named).
    """
    ops: list[Op] = []
    wanted_keys = {r.key for r in desired.routes}
    ops += [Op("replace", r) for r in sorted(desired.routes - present.routes, key=_anchor_first)]
    missing = sorted(desired.rules - present.rules, key=lambda r: r.order)
    ops += [Op("add", r) for r in missing if r.exclusion]
    ops += [Op("add", r) for r in missing if not r.exclusion]
    stale = sorted(present.rules - desired.rules, key=lambda r: r.order)
    ops += [Op("delete", r) for r in stale if not r.exclusion]
    ops += [Op("delete", r) for r in stale if r.exclusion]
    gone = [r for r in present.routes if r.key not in wanted_keys]
    ops += [Op("delete", r) for r in sorted(gone, key=_anchor_first, reverse=True)]
    return tuple(ops)


def _anchor_first(route: Route) -> tuple[bool, tuple[int, int, int, int, int]]:
    return (not route.anchor, route.order)


def removal(present: Plan) -> tuple[Op, ...]:
    """Operations that remove everything in ``present`` (``egressd cleanup``)."""
    return diff(Plan(), present)


def describe(ops: Iterable[Op]) -> str:
    """A one-line summary for logs: ``replace 3 routes, add 2 rules``."""
    counts: dict[tuple[str, str], int] = {}
    for op in ops:
        kind = "rules" if isinstance(op.target, Rule) else "routes"
        counts[(op.verb, kind)] = counts.get((op.verb, kind), 0) + 1
    return ", ".join(f"{verb} {n} {kind}" for (verb, kind), n in counts.items()) or "nothing to do"


__all__ = [
    "ANCHOR_METRIC",
    "MAIN_TABLE",
    "ROUTE_METRIC",
    "Layout",
    "Op",
    "Plan",
    "Route",
    "Rule",
    "assign_slot",
    "describe",
    "diff",
    "plan",
    "plan_ip",
    "preferred_slot",
    "removal",
]
