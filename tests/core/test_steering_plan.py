"""Planning of steering rules and routes, and their diff (pure, no kernel)."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from egressd.core import steering as st
from egressd.core.assignment import sources_for
from egressd.core.model import EgressGroup

ip = ipaddress.ip_address
net = ipaddress.ip_network

LAYOUT = st.Layout()
A, B = ip("172.18.0.2"), ip("172.18.0.3")


def group(name: str = "alliance", ips: tuple[str, ...] = ("172.18.0.42",), **kw: Any) -> EgressGroup:
    return EgressGroup(
        name=name,
        egress_ips=tuple(ip(i) for i in ips),
        interface="net0",
        candidates=("gw1",),
        source_cidrs=tuple(net(c) for c in kw.get("src", ("10.244.1.0/24",))),
        destination_cidrs=tuple(net(c) for c in kw.get("dst", ("172.18.0.0/16",))),
        excluded_cidrs=tuple(net(c) for c in kw.get("excl", ("172.18.0.101/32",))),
    )


def test_layout_ranges_and_validation() -> None:
    assert (LAYOUT.table(0), LAYOUT.exclusion_priority(0), LAYOUT.steering_priority(0)) == (7100, 7100, 7150)
    assert (LAYOUT.table(49), LAYOUT.exclusion_priority(49), LAYOUT.steering_priority(49)) == (7149, 7149, 7199)
    assert LAYOUT.slot_of_table(7149) == 49
    assert LAYOUT.slot_of_table(7150) is None
    assert LAYOUT.slot_of_table(7099) is None
    assert LAYOUT.slot_of_priority(7160) == 10
    assert LAYOUT.slot_of_priority(7110) == 10
    assert LAYOUT.slot_of_priority(7200) is None
    assert LAYOUT.slot_of_priority(32766) is None
    with pytest.raises(ValueError, match="tables"):
        st.Layout(table_base=250, slots=10)
    with pytest.raises(ValueError, match="tables"):
        st.Layout(table_base=0)
    with pytest.raises(ValueError, match="priorities"):
        st.Layout(priority_base=32700)
    with pytest.raises(ValueError, match="slots"):
        st.Layout(slots=0)
    assert st.Layout(table_base=1000, priority_base=32765 - 19, slots=10).steering_priority(9) == 32765


def test_plan_for_one_ip_orders_exclusions_before_steering() -> None:
    g = group()
    p = st.plan_ip(g, ip("172.18.0.42"), A, 3, LAYOUT)
    assert p.rules == {
        st.Rule(7103, net("10.244.1.0/24"), net("172.18.0.101/32"), st.MAIN_TABLE),
        st.Rule(7153, net("10.244.1.0/24"), net("172.18.0.0/16"), 7103),
    }
    assert p.routes == {
        st.Route(7103, net("172.18.0.0/16"), st.ROUTE_METRIC, A),
        st.Route(7103, net("172.18.0.101/32"), st.ROUTE_METRIC, None),
        st.Route(7103, net("172.18.0.42/32"), st.ANCHOR_METRIC, A),
    }
    assert p.anchors(LAYOUT) == {ip("172.18.0.42"): 3}
    assert [str(r) for r in sorted(p.routes, key=lambda r: r.order)] == [
        "172.18.0.0/16 via 172.18.0.2 table 7103 metric 1024",
        "172.18.0.42/32 via 172.18.0.2 table 7103 metric 59881",
        "throw 172.18.0.101/32 table 7103 metric 1024",
    ]
    assert [str(r) for r in sorted(p.rules, key=lambda r: r.order)] == [
        "7103: from 10.244.1.0/24 to 172.18.0.101/32 lookup main",
        "7153: from 10.244.1.0/24 to 172.18.0.0/16 lookup 7103",
    ]


def test_no_via_or_nothing_to_steer_plans_nothing() -> None:
    g = group()
    assert st.plan_ip(g, ip("172.18.0.42"), None, 0, LAYOUT) == st.Plan()
    assert not st.plan_ip(g, ip("172.18.0.99"), A, 0, LAYOUT), "not an IP of the group"
    assert not st.plan_ip(group(src=()), ip("172.18.0.42"), A, 0, LAYOUT)
    with pytest.raises(ValueError, match="family"):
        st.plan_ip(g, ip("172.18.0.42"), ip("fd00::2"), 0, LAYOUT)


def test_onlink_interface_is_carried_by_every_route() -> None:
    p = st.plan_ip(group(), ip("172.18.0.42"), A, 0, LAYOUT, interface="net0")
    assert {r.interface for r in p.routes if not r.throw} == {"net0"}
    assert all("dev net0 onlink" in str(r) for r in p.routes if not r.throw)


def test_sources_split_per_family() -> None:
    g = group(
        ips=("172.18.0.42", "fd00::42"),
        src=("10.244.1.0/24", "fd10::/64"),
        dst=("172.18.0.0/16", "fd20::/64"),
        excl=(),
    )
    assert sources_for(g, ip("172.18.0.42")) == (net("10.244.1.0/24"),)
    assert sources_for(g, ip("fd00::42")) == (net("fd10::/64"),)
    p6 = st.plan_ip(g, ip("fd00::42"), ip("fd00::2"), 1, LAYOUT)
    assert {r.dst for r in p6.routes} == {net("fd20::/64"), net("fd00::42/128")}
    assert p6.rules == {st.Rule(7151, net("fd10::/64"), net("fd20::/64"), 7101)}


def test_slot_assignment_probes_linearly_from_the_hash() -> None:
    small = st.Layout(slots=4)
    x = ip("172.18.0.42")
    home = st.preferred_slot(x, small)
    assert st.assign_slot(x, {}, small) == home
    assert st.assign_slot(x, {x: 2}, small) == 2, "an IP keeps its slot"
    others = {ip("10.0.0.1"): home}
    assert st.assign_slot(x, others, small) == (home + 1) % 4
    full = {ip(f"10.0.0.{i}"): i for i in range(4)}
    assert st.assign_slot(x, full, small) is None


def test_whole_node_plan() -> None:
    g1 = group()
    g2 = group("empire", ips=("172.18.0.43",), src=("10.244.2.0/24",), dst=("192.0.2.0/24",), excl=())
    vias = {ip("172.18.0.42"): A, ip("172.18.0.43"): None}
    p, slots = st.plan([g1, g2], vias, LAYOUT)
    assert list(slots) == [ip("172.18.0.42")]
    assert len(p.rules) == 2
    p2, slots2 = st.plan([g1, g2], {**vias, ip("172.18.0.43"): B}, LAYOUT, taken=slots)
    assert slots2[ip("172.18.0.42")] == slots[ip("172.18.0.42")]
    assert len(slots2) == 2
    assert len(p2.rules) == 3
    assert p2 == st.plan_ip(g1, ip("172.18.0.42"), A, slots2[ip("172.18.0.42")], LAYOUT) | st.plan_ip(
        g2, ip("172.18.0.43"), B, slots2[ip("172.18.0.43")], LAYOUT
    )
    with pytest.raises(ValueError, match="no free steering slot"):
        st.plan([g1, g2], {ip("172.18.0.42"): A, ip("172.18.0.43"): B}, st.Layout(slots=1))


def test_diff_of_equal_plans_is_empty() -> None:
    p = st.plan_ip(group(), ip("172.18.0.42"), A, 0, LAYOUT)
    assert st.diff(p, p) == ()
    assert st.describe(()) == "nothing to do"


def test_diff_builds_routes_first_then_exclusions_then_steering() -> None:
    p = st.plan_ip(group(), ip("172.18.0.42"), A, 0, LAYOUT)
    ops = st.diff(p, st.Plan())
    assert [op.verb for op in ops] == ["replace", "replace", "replace", "add", "add"]
    assert [kind(op) for op in ops] == ["anchor", "route", "throw", "excl", "steer"]
    assert st.describe(ops) == "replace 3 routes, add 2 rules"


def test_owner_change_is_route_replaces_only() -> None:
    x = ip("172.18.0.42")
    old = st.plan_ip(group(dst=("172.18.0.0/16", "192.0.2.0/24")), x, A, 0, LAYOUT)
    new = st.plan_ip(group(dst=("172.18.0.0/16", "192.0.2.0/24")), x, B, 0, LAYOUT)
    ops = st.diff(new, old)
    assert [op.verb for op in ops] == ["replace"] * 3
    assert all(isinstance(op.target, st.Route) and op.target.via == B for op in ops)


def kind(op: st.Op) -> str:
    t = op.target
    if isinstance(t, st.Rule):
        return "excl" if t.exclusion else "steer"
    return "anchor" if t.anchor else "throw" if t.throw else "route"


def test_removal_tears_down_in_reverse_order() -> None:
    p = st.plan_ip(group(), ip("172.18.0.42"), A, 0, LAYOUT)
    ops = st.removal(p)
    assert [op.verb for op in ops] == ["delete"] * 5
    assert [kind(op) for op in ops] == ["steer", "excl", "throw", "route", "anchor"]


def test_diff_follows_group_changes_and_removes_only_stale_objects() -> None:
    x = ip("172.18.0.42")
    old = st.plan_ip(group(dst=("172.18.0.0/16", "192.0.2.0/24")), x, A, 0, LAYOUT)
    new = st.plan_ip(group(dst=("172.18.0.0/16",), excl=()), x, A, 0, LAYOUT)
    ops = st.diff(new, old)
    assert [str(op) for op in ops] == [
        "delete rule 7150: from 10.244.1.0/24 to 192.0.2.0/24 lookup 7100",
        "delete rule 7100: from 10.244.1.0/24 to 172.18.0.101/32 lookup main",
        "delete route 192.0.2.0/24 via 172.18.0.2 table 7100 metric 1024",
        "delete route throw 172.18.0.101/32 table 7100 metric 1024",
    ]


def test_diff_keeps_route_identity_by_table_destination_and_metric() -> None:
    x = ip("172.18.0.42")
    desired = st.plan_ip(group(), x, B, 0, LAYOUT)
    present = st.plan_ip(group(), x, A, 0, LAYOUT) | st.Plan(
        routes=frozenset({st.Route(7100, net("10.9.0.0/16"), st.ROUTE_METRIC, A)})
    )
    ops = st.diff(desired, present)
    deleted = [op.target for op in ops if op.verb == "delete"]
    assert deleted == [st.Route(7100, net("10.9.0.0/16"), st.ROUTE_METRIC, A)], "replaced routes are not deleted"


def test_anchor_needs_a_host_prefix_and_the_anchor_metric() -> None:
    assert st.Route(7100, net("1.2.3.4/32"), st.ANCHOR_METRIC, A).anchor
    assert not st.Route(7100, net("1.2.3.4/32"), st.ROUTE_METRIC, A).anchor
    assert not st.Route(7100, net("1.2.3.0/24"), st.ANCHOR_METRIC, A).anchor
    # a /32 destination CIDR equal to the egress IP does not confuse the anchors
    x = ip("172.18.0.42")
    p = st.plan_ip(group(dst=("172.18.0.42/32", "172.18.0.0/24"), excl=()), x, A, 7, LAYOUT)
    assert len(p.routes) == 3
    assert p.anchors(LAYOUT) == {x: 7}
