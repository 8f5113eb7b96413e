"""Steering on non-gateway nodes: policy routing over pyroute2.

The plan (tables, rules, the anchor route that names a table's egress IP, the
order of changes) is :mod:`egressd.core.steering`; this module reads the
kernel, applies the operations and nothing else.

* **Marks.** egressd's rules and routes carry the protocol number
  :data:`STEERING_PROTO` (``FRA_PROTOCOL`` on rules, kernel >= 4.17;
  ``rtm_protocol`` on routes), the same number as the address adapter's
  ``IFA_PROTO``. ``ip rule`` and ``ip route`` show it as ``proto 233``. A rule
  counts as egressd's only if its priority lies in the layout's range *and* it
  carries the mark (on a kernel too old to report ``FRA_PROTOCOL``, the range
  alone); a route only if it lies in one of the layout's tables and carries the
  mark. Nothing else is ever changed or removed.
* **One call converges one IP.** :meth:`PolicySteering.route` first writes the
  desired routes with ``replace`` (idempotent, and all that an owner change
  needs, so traffic moves before anything is read), then reads the slot's rules
  and routes back and applies the rest of :func:`~egressd.core.steering.diff`.
* **Nexthop.** Without ``interface`` the kernel resolves the owner's address
  through the main table, so it must be on a connected network of this node
  (the node network). With ``interface``, routes are ``dev <interface> onlink``:
  for node networks where addresses are /32 and neighbours are reached on-link.
* pyroute2 blocks: every call runs in one executor thread that owns the netlink
  socket, like the address adapter. The socket uses strict checking so dumps of
  one table are filtered by the kernel.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from egressd.adapters import netlink
from egressd.core.errors import DataPlaneError
from egressd.core.model import EgressGroup, IPAddress, IPNetwork
from egressd.core.steering import (
    ANCHOR_METRIC,
    ROUTE_METRIC,
    Layout,
    Op,
    Plan,
    Route,
    Rule,
    assign_slot,
    describe,
    diff,
    plan_ip,
    removal,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

#: ``FRA_PROTOCOL`` / ``rtm_protocol`` marking egressd's rules and routes
#: (unassigned in iproute2's rt_protos; the same number marks egressd's addresses).
STEERING_PROTO = 0xE9

SETTLE_DELAY = 0.01
"""Seconds a read-back waits after a switch of routes: the claims of a
gateway's IPs are written one after the other, and the next IP's switch
should not wait for this one's read-back (a few milliseconds of rtnetlink
dumps on the same thread)."""
_FAMILIES = {4: socket.AF_INET, 6: socket.AF_INET6}
_RTN_UNICAST = 1
_RTN_THROW = 9
_FR_ACT_TO_TBL = 1
_ENOENT = 2
_ESRCH = 3
_SEQ_MAX = 0x7FFFFFFF
_ACK_TIMEOUT = 2.0
"""Seconds to wait for the kernel's acknowledgements of a switch (it answers in microseconds)."""


@dataclass(frozen=True)
class _Staged:
    """What the first step of a route change leaves to the second."""

    slot: int
    desired: Plan
    fast: tuple[Op, ...]
    ctx: str


class PolicySteering:
    """:class:`egressd.ports.Steering` with policy routing (rules and tables)."""

    def __init__(
        self,
        *,
        netns: str | None = None,
        table_base: int = Layout.table_base,
        priority_base: int = Layout.priority_base,
        slots: int = Layout.slots,
        interface: str | None = None,
        proto: int = STEERING_PROTO,
    ) -> None:
        """``slots`` egress IPs at most: tables ``table_base ..+slots``, rule
        priorities ``priority_base ..+2*slots`` (ValueError if out of bounds)."""
        self.layout = Layout(table_base=table_base, priority_base=priority_base, slots=slots)
        self._netns = netns
        self._interface = interface
        self._proto = proto
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="egressd-steering")
        self._ipr: IPRoute | None = None
        self._raw: socket.socket | None = None
        """The raw socket of the switches (:meth:`_replace_routes`); only the executor thread uses it."""
        self._seq = 0
        self._slots: dict[IPAddress, int] | None = None
        """Egress IP -> slot; loaded from the anchors on first use, then kept
        here (only the executor thread touches it)."""
        self._vias: dict[IPAddress, IPAddress | None] = {}
        """The via of the last successful :meth:`route` per IP; a different
        via takes the fast path (routes written before the read-back)."""

    # -- the port ---------------------------------------------------------

    async def route(self, group: EgressGroup, ip: IPAddress, via: IPAddress | None) -> None:
        """Converge the kernel to the plan for ``ip``: steer the group's sources
        that use ``ip`` to its destinations via ``via``, or remove all of it.

        Two calls on the netlink thread: a new owner's routes first, then the
        read-back that converges the rest, :data:`SETTLE_DELAY` later when
        routes were switched. Routes of several IPs asked at once or moments
        apart (a gateway leaving with all its IPs) are then all switched
        before any read-back, instead of each IP waiting for the one before it."""
        staged = await self._call(self._switch, group, ip, via)
        if staged is not None:
            if staged.fast:
                # the routes via the new owner are in: the read-back can wait a
                # moment for the switches of IPs whose new owner arrives just
                # after (a gateway's claims are written one after the other)
                await asyncio.sleep(SETTLE_DELAY)
            await self._call(self._settle, ip, via, staged)

    # -- beyond the port --------------------------------------------------

    async def present(self) -> Plan:
        """egressd's rules and routes in the kernel now (both families)."""
        return await self._call(self._present)

    async def slots(self) -> dict[IPAddress, int]:
        """Egress IP -> slot, as the anchor routes record it."""
        return dict(await self._call(self._slot_map))

    async def flush_all(self) -> Plan:
        """Remove every egressd rule and route (``egressd cleanup``); returns what it removed."""
        return await self._call(self._flush_all)

    async def close(self) -> None:
        if self._ipr is not None or self._raw is not None:
            await self._call(self._close)
        self._executor.shutdown(wait=True)

    # -- internals (run in the executor thread) ---------------------------

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    def _sock(self) -> IPRoute:
        if self._ipr is None:
            try:
                kwargs: dict[str, Any] = {"strict_check": True, "ext_ack": True}
                self._ipr = IPRoute(netns=self._netns, **kwargs) if self._netns else IPRoute(**kwargs)
            except (OSError, NetlinkError) as exc:
                raise DataPlaneError(f"cannot open rtnetlink (netns {self._netns or 'own'}): {exc}") from exc
        return self._ipr

    def _close(self) -> None:
        if self._raw is not None:
            self._raw.close()
            self._raw = None
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    def _slot_map(self) -> dict[IPAddress, int]:
        if self._slots is None:
            self._slots = self._read(None).anchors(self.layout)
        return self._slots

    def _switch(self, group: EgressGroup, ip: IPAddress, via: IPAddress | None) -> _Staged | None:
        """1. A new owner: write the routes via it at once, before reading
        anything. None: nothing to converge (no steering, none wanted)."""
        slots = self._slot_map()
        ctx = f"group {group.name} egress IP {ip} via {via or '-'}"
        if via is not None and via.version != ip.version:
            raise DataPlaneError(f"{ctx}: the owner's address is not of the egress IP's family")
        if via is None and ip not in slots:
            self._vias.pop(ip, None)
            return None
        slot = assign_slot(ip, slots, self.layout)
        if slot is None:
            raise DataPlaneError(f"{ctx}: no free steering slot (all {self.layout.slots} in use)")
        desired = plan_ip(group, ip, via, slot, self.layout, interface=self._interface)
        fast: tuple[Op, ...] = ()
        if desired:
            slots[ip] = slot
            if self._vias.get(ip) != via:
                fast = diff(Plan(routes=frozenset(r for r in desired.routes if not r.throw)), Plan())
                self._replace_routes(fast, ctx)
        return _Staged(slot, desired, fast, ctx)

    def _settle(self, ip: IPAddress, via: IPAddress | None, staged: _Staged) -> None:
        """2. Read back what the slot holds and converge the rest (rules, stale routes, drift)."""
        slot, desired, fast, ctx = staged.slot, staged.desired, staged.fast, staged.ctx
        slots = self._slot_map()
        ops = diff(desired, self._read(slot, ip.version))
        self._apply(ops, ctx)
        if not desired:
            slots.pop(ip, None)
        changed = self._vias.get(ip) != via
        self._vias[ip] = via
        if changed or ops:
            log.info("steering %s: %s (table %d)", ctx, describe(fast + ops), self.layout.table(slot))

    def _flush_all(self) -> Plan:
        present = self._read(None)
        self._apply(removal(present), "cleanup")
        self._slots = {}
        self._vias.clear()
        if present:
            log.info("steering cleanup: removed %d rules and %d routes", len(present.rules), len(present.routes))
        return present

    def _present(self) -> Plan:
        return self._read(None)

    # -- reading ------------------------------------------------------------

    def _read(self, slot: int | None, version: int | None = None) -> Plan:
        """egressd's rules and routes, of one slot and family or of all."""
        rules: set[Rule] = set()
        routes: set[Route] = set()
        sock = self._sock()
        families = {v: f for v, f in _FAMILIES.items() if version is None or v == version}
        try:
            names: dict[int, str] = {}
            if self._interface is not None or slot is None:
                names = {int(link["index"]): str(link.get("IFLA_IFNAME")) for link in sock.get_links()}
            for v, family in families.items():
                for msg in sock.get_rules(family=family):
                    rule = self._parse_rule(msg, v)
                    if rule is not None and (slot is None or self.layout.slot_of_priority(rule.priority) == slot):
                        rules.add(rule)
                where: dict[str, Any] = {"family": family, "proto": self._proto}
                if slot is not None:
                    where["table"] = self.layout.table(slot)
                for msg in sock.get_routes(**where):
                    route = self._parse_route(msg, v, names)
                    if route is not None:
                        routes.add(route)
        except NetlinkError as exc:
            raise DataPlaneError(f"reading steering rules and routes failed: {exc}") from exc
        return Plan(frozenset(rules), frozenset(routes))

    def _parse_rule(self, msg: Any, version: int) -> Rule | None:
        priority = msg.get("FRA_PRIORITY")
        if priority is None or self.layout.slot_of_priority(int(priority)) is None:
            return None
        proto = msg.get("FRA_PROTOCOL")
        if proto is not None and int(proto) != self._proto:
            return None
        if msg["action"] != _FR_ACT_TO_TBL:
            return None
        table = msg.get("FRA_TABLE") or msg["table"]
        return Rule(
            priority=int(priority),
            src=_net(msg.get("FRA_SRC"), int(msg["src_len"]), version),
            dst=_net(msg.get("FRA_DST"), int(msg["dst_len"]), version),
            table=int(table),
        )

    def _parse_route(self, msg: Any, version: int, names: dict[int, str]) -> Route | None:
        table = int(msg.get("RTA_TABLE") or msg["table"])
        if self.layout.slot_of_table(table) is None or int(msg["proto"]) != self._proto:
            return None
        gateway = msg.get("RTA_GATEWAY")
        kind = int(msg["type"])
        if kind == _RTN_THROW:
            gateway = None
        elif gateway is None or kind != _RTN_UNICAST:
            return None
        onlink = bool(int(msg["flags"]) & netlink.RTNH_F_ONLINK)
        oif = msg.get("RTA_OIF")
        return Route(
            table=table,
            dst=_net(msg.get("RTA_DST"), int(msg["dst_len"]), version),
            metric=int(msg.get("RTA_PRIORITY") or 0),
            via=ipaddress.ip_address(gateway) if gateway is not None else None,
            interface=names.get(int(oif), "?") if onlink and oif is not None else None,
        )

    # -- writing ------------------------------------------------------------

    def _apply(self, ops: tuple[Op, ...], ctx: str) -> None:
        for op in ops:
            try:
                if isinstance(op.target, Rule):
                    self._rule(op.verb, op.target)
                else:
                    self._route_op(op.verb, op.target)
            except NetlinkError as exc:
                if op.verb == "delete" and exc.code in (_ENOENT, _ESRCH):
                    continue
                raise DataPlaneError(f"{ctx}: {op} failed: {exc}") from exc
            log.debug("%s: %s", ctx, op)

    def _replace_routes(self, ops: tuple[Op, ...], ctx: str) -> None:
        """The switch's routes (each a ``replace`` via the new owner) in one
        write on the raw socket (:mod:`egressd.adapters.netlink`), acknowledged
        through a barrier; anything else through :meth:`_apply`."""
        if not all(isinstance(op.target, Route) and op.target.via is not None for op in ops):
            self._apply(ops, ctx)
            return
        messages: dict[int, tuple[Op, bytes]] = {}
        for op in ops:
            route = op.target
            assert isinstance(route, Route) and route.via is not None
            seq = self._next_seq()
            oif = self._index(route.interface) if route.interface is not None else None
            messages[seq] = (op, netlink.encode_route_replace(
                seq,
                family=_FAMILIES[route.dst.version],
                dst=route.dst.network_address.packed,
                dst_len=route.dst.prefixlen,
                table=route.table,
                metric=route.metric,
                gateway=route.via.packed,
                proto=self._proto,
                oif=oif,
                onlink=oif is not None,
            ))  # fmt: skip
        barrier = self._next_seq()
        try:
            if self._raw is None:
                self._raw = netlink.open_socket(self._netns, _ACK_TIMEOUT)
            answers = netlink.send_acknowledged(self._raw, [m for _op, m in messages.values()], barrier)
        except OSError as exc:  # a timeout too: the socket goes, and its late answers with it
            if self._raw is not None:
                self._raw.close()
                self._raw = None
            raise DataPlaneError(f"{ctx}: writing {len(ops)} route(s) failed: {exc}") from exc
        for seq, (op, _message) in messages.items():
            error = answers.get(seq, 0)
            if error:
                cause = OSError(error, os.strerror(error))
                raise DataPlaneError(f"{ctx}: {op} failed: {os.strerror(error)}") from cause
            log.debug("%s: %s", ctx, op)

    def _next_seq(self) -> int:
        """The raw socket's next sequence number (from 1 again past the largest)."""
        self._seq = self._seq + 1 if self._seq < _SEQ_MAX else 1
        return self._seq

    def _rule(self, verb: str, rule: Rule) -> None:
        self._sock().rule(
            "add" if verb == "add" else "del",
            family=_FAMILIES[rule.version],
            priority=rule.priority,
            src=str(rule.src.network_address),
            src_len=rule.src.prefixlen,
            dst=str(rule.dst.network_address),
            dst_len=rule.dst.prefixlen,
            table=rule.table,
            action="to_tbl",
            protocol=self._proto,
        )

    def _route_op(self, verb: str, route: Route) -> None:
        kwargs: dict[str, Any] = {
            "family": _FAMILIES[route.dst.version],
            "dst": str(route.dst.network_address),
            "dst_len": route.dst.prefixlen,
            "table": route.table,
            "priority": route.metric,
            "proto": self._proto,
            "type": "throw" if route.via is None else "unicast",
        }
        if verb == "delete":
            self._sock().route("del", **kwargs)
            return
        if route.via is not None:
            kwargs["gateway"] = str(route.via)
        if route.interface is not None and route.via is not None:
            kwargs["oif"] = self._index(route.interface)
            kwargs["flags"] = netlink.RTNH_F_ONLINK
        self._sock().route("replace", **kwargs)

    def _index(self, interface: str) -> int:
        found = self._sock().link_lookup(ifname=interface)
        if not found:
            raise DataPlaneError(f"interface {interface} does not exist")
        return int(found[0])


def _net(raw: str | None, prefixlen: int, version: int) -> IPNetwork:
    if raw is None:
        return ipaddress.ip_network("0.0.0.0/0" if version == 4 else "::/0")
    return ipaddress.ip_network(f"{raw}/{prefixlen}")


__all__ = ["ANCHOR_METRIC", "ROUTE_METRIC", "STEERING_PROTO", "PolicySteering"]
