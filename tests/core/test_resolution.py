"""The cluster index resolved into egress groups."""

from __future__ import annotations

import ipaddress
import random
import time
from typing import Any

import pytest

from egressd.core.assignment import sources_for
from egressd.core.cluster_index import Cluster
from egressd.core.kube_objects import PodInfo
from egressd.core.model import EgressGroup
from egressd.core.policy import parse_policy
from egressd.core.resolution import PolicyOutcome, resolve
from tests.core.cluster_builders import (
    IP42,
    IP43,
    VARIANTS,
    cannot_send,
    conditions,
    ip,
    namespace,
    net,
    node,
    pod,
    policy,
    sources,
    status_of,
    walkthrough,
    walkthrough_pods,
)

# --- the walkthrough -------------------------------------------------------------------


def test_walkthrough_resolves_to_one_group() -> None:
    r = resolve(walkthrough())
    assert r.groups == (
        EgressGroup(
            name="outpost",
            egress_ips=(IP42, IP43),
            interface="net0",
            candidates=("kind-worker3", "kind-worker4"),
            source_cidrs=(net("10.244.1.5/32"), net("10.244.2.7/32")),
            destination_cidrs=(net("172.18.0.0/16"),),
        ),
    )
    assert r.outcomes == {
        "outpost": PolicyOutcome(
            "outpost",
            True,
            "Ready",
            "2 pods selected, 2 candidate nodes (kind-worker3, kind-worker4)",
            selected_pods=2,
            candidates=("kind-worker3", "kind-worker4"),
            generation=1,
        )
    }
    assert r.pod_nodes == {ip("10.244.1.5"): "kind-worker", ip("10.244.2.7"): "kind-worker2"}


def test_local_groups_keep_only_the_nodes_pods() -> None:
    r = resolve(walkthrough())
    (worker,) = r.local_groups("kind-worker")
    assert worker.source_cidrs == (net("10.244.1.5/32"),)
    assert worker.egress_ips == r.groups[0].egress_ips
    assert worker.destination_cidrs == r.groups[0].destination_cidrs
    (worker2,) = r.local_groups("kind-worker2")
    assert worker2.source_cidrs == (net("10.244.2.7/32"),)
    (gateway,) = r.local_groups("kind-worker3")
    assert gateway.source_cidrs == ()


# --- selection follows labels and pods ---------------------------------------------------


def test_selection_follows_a_relabelled_pod() -> None:
    c = walkthrough()
    assert c.apply("pods", "MODIFIED", pod("xwing", {"org": "empire"}, ip="10.244.1.5"))
    assert sources(resolve(c)) == {"10.244.2.7/32"}
    assert c.apply("pods", "MODIFIED", pod("tiefighter", {"org": "alliance"}, ip="10.244.1.9"))
    assert sources(resolve(c)) == {"10.244.2.7/32", "10.244.1.9/32"}
    assert c.apply("pods", "MODIFIED", pod("xwing", {"org": "alliance"}, ip="10.244.1.5"))
    assert sources(resolve(c)) == {"10.244.1.5/32", "10.244.2.7/32", "10.244.1.9/32"}


def test_selection_follows_a_relabelled_namespace() -> None:
    c = walkthrough()
    c.replace(
        "policies",
        [policy(selectors=[{"podSelector": {}, "namespaceSelector": {"matchLabels": {"team": "rebels"}}}])],
    )
    assert sources(resolve(c)) == set()
    assert resolve(c).outcomes["outpost"].selected_pods == 0
    assert c.apply("namespaces", "MODIFIED", namespace("default", {"team": "rebels"}))
    assert sources(resolve(c)) == {"10.244.1.5/32", "10.244.2.7/32", "10.244.1.9/32"}
    assert c.apply("namespaces", "MODIFIED", namespace("default", {"team": "empire"}))
    assert sources(resolve(c)) == set()
    assert c.apply("namespaces", "MODIFIED", namespace("default", {"team": "rebels"}))
    assert c.apply("namespaces", "DELETED", namespace("default", {"team": "rebels"}))
    assert sources(resolve(c)) == set()


def test_namespace_name_label_selects_even_if_the_object_lacks_it() -> None:
    c = walkthrough()
    c.apply("pods", "ADDED", pod("awing", {"org": "alliance"}, ns="kube-system", ip="10.244.3.3"))
    by_name = {"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["default"]}]}
    c.replace("policies", [policy(selectors=[{"podSelector": {}, "namespaceSelector": by_name}])])
    assert sources(resolve(c)) == {"10.244.1.5/32", "10.244.2.7/32", "10.244.1.9/32"}


def test_pods_of_an_unknown_namespace_have_no_namespace_labels() -> None:
    c = walkthrough()
    c.apply("pods", "ADDED", pod("awing", {"org": "alliance"}, ns="hoth", ip="10.244.3.3"))
    cases = [
        ({"matchLabels": {"team": "rebels"}}, False),
        ({"matchLabels": {"kubernetes.io/metadata.name": "hoth"}}, False),  # not known yet, no labels at all
        ({"matchExpressions": [{"key": "team", "operator": "DoesNotExist"}]}, True),
        ({"matchExpressions": [{"key": "team", "operator": "NotIn", "values": ["empire"]}]}, True),
        ({}, True),
        (None, True),
    ]
    for ns_selector, selected in cases:
        item: dict[str, Any] = {"podSelector": {"matchLabels": {"org": "alliance"}}}
        if ns_selector is not None:
            item["namespaceSelector"] = ns_selector
        c.replace("policies", [policy(selectors=[item])])
        assert ("10.244.3.3/32" in sources(resolve(c))) is selected, ns_selector
    c.replace("policies", [policy(selectors=[{"namespaceSelector": {"matchLabels": {"planet": "ice"}}}])])
    assert sources(resolve(c)) == set()
    assert c.apply("namespaces", "ADDED", namespace("hoth", {"planet": "ice"}))
    assert sources(resolve(c)) == {"10.244.3.3/32"}


def test_selection_follows_deleted_pods() -> None:
    c = walkthrough()
    assert c.apply("pods", "DELETED", pod("xwing", {"org": "alliance"}))
    assert sources(resolve(c)) == {"10.244.2.7/32"}
    assert not c.apply("pods", "DELETED", pod("xwing", {"org": "alliance"}))
    assert c.apply("pods", "ADDED", pod("xwing", {"org": "alliance"}, ip="10.244.1.15"))
    assert sources(resolve(c)) == {"10.244.1.15/32", "10.244.2.7/32"}


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_pod_that_cannot_send_is_not_selected(variant: str) -> None:
    c = walkthrough()
    assert c.apply("pods", "MODIFIED", cannot_send(variant))
    assert sources(resolve(c)) == {"10.244.2.7/32"}
    assert ("default", "xwing") not in c.pods
    assert not c.apply("pods", "MODIFIED", cannot_send(variant))
    assert c.apply("pods", "ADDED", pod("xwing", {"org": "alliance"}))
    assert sources(resolve(c)) == {"10.244.1.5/32", "10.244.2.7/32"}


def test_any_selector_item_selects() -> None:
    c = walkthrough()
    c.replace(
        "policies",
        [
            policy(
                selectors=[
                    {"podSelector": {"matchLabels": {"class": "xwing"}}},
                    {
                        "podSelector": {
                            "matchExpressions": [{"key": "class", "operator": "In", "values": ["tiefighter"]}]
                        }
                    },
                ]
            )
        ],
    )
    assert sources(resolve(c)) == {"10.244.1.5/32", "10.244.1.9/32"}


@pytest.mark.parametrize(
    ("pod_selector", "expected"),
    [
        ({"matchLabels": {"org": "alliance", "class": "ywing"}}, {"ywing"}),
        (
            {"matchExpressions": [{"key": "class", "operator": "In", "values": ["xwing", "tiefighter"]}]},
            {"xwing", "tiefighter"},
        ),
        (
            {"matchExpressions": [{"key": "class", "operator": "NotIn", "values": ["xwing"]}]},
            {"ywing", "tiefighter", "probe"},
        ),
        ({"matchExpressions": [{"key": "class", "operator": "Exists"}]}, {"xwing", "ywing", "tiefighter"}),
        ({"matchExpressions": [{"key": "class", "operator": "DoesNotExist"}]}, {"probe"}),
        (
            {
                "matchLabels": {"org": "alliance"},
                "matchExpressions": [{"key": "class", "operator": "NotIn", "values": ["ywing"]}],
            },
            {"xwing"},
        ),
        ({"matchLabels": {"org": "nobody"}}, set()),
        ({}, {"xwing", "ywing", "tiefighter", "probe"}),
    ],
)
def test_selector_operators_on_the_index(pod_selector: dict[str, Any], expected: set[str]) -> None:
    """The index answers selectors by set operations; it must agree with the
    selector's own matching, for every operator."""
    c = walkthrough()
    c.apply("pods", "ADDED", pod("probe", {"app": "probe"}, ip="10.244.2.99"))
    c.replace("policies", [policy(selectors=[{"podSelector": pod_selector}])])
    names = {k[1] for k, p in c.pods.items() if str(_host(p)) in sources(resolve(c))}
    assert names == expected
    selector = parse_policy(policy(selectors=[{"podSelector": pod_selector}])).selectors[0].pods
    assert selector is not None
    assert {k[1] for k, p in c.pods.items() if selector.matches(p.labels)} == expected


def _host(p: PodInfo) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(p.ips[0])


def test_sources_are_of_the_egress_ip_families() -> None:
    c = walkthrough()
    dual = pod("xwing", {"org": "alliance"})
    dual["status"]["podIPs"] = [{"ip": "10.244.1.5"}, {"ip": "fd00:10:244:1::5"}]
    c.apply("pods", "MODIFIED", dual)
    c.apply("pods", "ADDED", pod("awing", {"org": "alliance"}, ip="fd00:10:244:2::8", node="kind-worker2"))
    r = resolve(c)
    assert sources(r) == {"10.244.1.5/32", "10.244.2.7/32"}
    assert r.outcomes["outpost"].selected_pods == 2  # awing has no IPv4 address
    c.replace("policies", [policy(ips=("172.18.0.42", "fd00:18::42"), dst=("172.18.0.0/16", "fd00:18::/64"))])
    r = resolve(c)
    assert r.groups[0].source_cidrs == (
        net("10.244.1.5/32"),
        net("10.244.2.7/32"),
        net("fd00:10:244:1::5/128"),
        net("fd00:10:244:2::8/128"),
    )
    assert r.outcomes["outpost"].selected_pods == 3
    assert r.pod_nodes[ip("fd00:10:244:1::5")] == "kind-worker"
    assert r.pod_nodes[ip("fd00:10:244:2::8")] == "kind-worker2"


def test_sources_of_two_families_never_collide() -> None:
    """10.0.0.5 and ::a00:5 are the same number; both are sources, IPv4 first."""
    c = walkthrough()
    c.replace(
        "pods",
        [
            pod("v4", {"org": "alliance"}, ip="10.0.0.5"),
            pod("v6", {"org": "alliance"}, ip="::a00:5"),
        ],
    )
    c.replace("policies", [policy(ips=("172.18.0.42", "fd00:18::42"), dst=("172.18.0.0/16", "fd00:18::/64"))])
    assert resolve(c).groups[0].source_cidrs == (net("10.0.0.5/32"), net("::a00:5/128"))


def test_spread_each_pod_uses_exactly_one_ip_and_keeps_it() -> None:
    c = walkthrough()
    for i in range(40):
        c.apply("pods", "ADDED", pod(f"squadron-{i}", {"org": "alliance"}, ip=f"10.244.4.{i + 10}"))
    group = resolve(c).groups[0]
    assert len(group.source_cidrs) == 42
    by_ip = {egress: set(sources_for(group, egress)) for egress in group.egress_ips}
    assert by_ip[IP42].isdisjoint(by_ip[IP43])
    assert by_ip[IP42] | by_ip[IP43] == set(group.source_cidrs)
    assert by_ip[IP42] and by_ip[IP43], "40 pods all on one IP: the split does not spread"
    # other pods come and go: the pods that stay keep their egress IP
    for i in range(0, 40, 3):
        c.apply("pods", "DELETED", pod(f"squadron-{i}"))
    for i in range(40, 60):
        c.apply("pods", "ADDED", pod(f"squadron-{i}", {"org": "alliance"}, ip=f"10.244.5.{i}"))
    after = resolve(c).groups[0]
    for egress in after.egress_ips:
        now = set(sources_for(after, egress))
        assert {s for s in by_ip[egress] if s in set(after.source_cidrs)} <= now
    # and steering nodes agree with the whole group on every pod's IP
    for node_name in ("kind-worker", "kind-worker2"):
        for local in resolve(c).local_groups(node_name):
            for egress in local.egress_ips:
                assert set(sources_for(local, egress)) <= set(sources_for(after, egress))


# --- candidates -------------------------------------------------------------------------


def test_candidates_follow_node_labels() -> None:
    c = walkthrough()
    assert c.apply("nodes", "MODIFIED", node("kind-worker2", {"egress-gw": "true"}, ip="172.18.0.4"))
    assert resolve(c).groups[0].candidates == ("kind-worker2", "kind-worker3", "kind-worker4")
    assert c.apply("nodes", "MODIFIED", node("kind-worker3", {"egress-gw": "false"}, ip="172.18.0.5"))
    assert resolve(c).groups[0].candidates == ("kind-worker2", "kind-worker4")
    assert c.apply("nodes", "DELETED", node("kind-worker4"))
    assert resolve(c).groups[0].candidates == ("kind-worker2",)


def test_a_node_without_internal_ip_is_no_candidate() -> None:
    c = walkthrough()
    assert c.apply("nodes", "MODIFIED", node("kind-worker3", {"egress-gw": "true"}))
    assert resolve(c).groups[0].candidates == ("kind-worker4",)


def test_cordoned_nodes_are_candidates_unless_excluded() -> None:
    c = walkthrough()
    cordoned = node("kind-worker3", {"egress-gw": "true"}, ip="172.18.0.5")
    cordoned["spec"]["unschedulable"] = True
    assert c.apply("nodes", "MODIFIED", cordoned)
    assert resolve(c).groups[0].candidates == ("kind-worker3", "kind-worker4")
    assert resolve(c, exclude_cordoned=True).groups[0].candidates == ("kind-worker4",)
    assert c.apply("nodes", "MODIFIED", node("kind-worker3", {"egress-gw": "true"}, ip="172.18.0.5"))
    assert resolve(c, exclude_cordoned=True).groups[0].candidates == ("kind-worker3", "kind-worker4")


def test_no_candidate_still_gives_a_group_without_candidates() -> None:
    c = walkthrough()
    c.replace("policies", [policy(node_selector={"matchLabels": {"egress-gw": "yes"}})])
    r = resolve(c)
    assert r.groups[0].candidates == ()
    assert sources(r) == {"10.244.1.5/32", "10.244.2.7/32"}
    outcome = r.outcomes["outpost"]
    assert (outcome.valid, outcome.reason, outcome.candidates) == (True, "NoCandidate", ())
    assert "egress-gw=yes" in outcome.message
    cordoned = node("kind-worker3", {"egress-gw": "yes"}, ip="172.18.0.5")
    cordoned["spec"]["unschedulable"] = True
    c.apply("nodes", "MODIFIED", cordoned)
    assert resolve(c).outcomes["outpost"].reason == "Ready"
    outcome = resolve(c, exclude_cordoned=True).outcomes["outpost"]
    assert outcome.reason == "NoCandidate"
    assert "cordoned" in outcome.message


# --- conflicts ----------------------------------------------------------------------------


def test_an_egress_ip_in_two_policies_stays_with_the_older() -> None:
    c = walkthrough()
    c.apply(
        "policies",
        "ADDED",
        policy("bounty", created="2026-11-24T09:00:00Z", ips=("172.18.0.43", "172.18.0.44"), dst=("192.0.2.0/24",)),
    )
    r = resolve(c)
    assert [g.name for g in r.groups] == ["bounty"]
    outcome = r.outcomes["outpost"]
    assert (outcome.valid, outcome.reason) == (True, "EgressIPConflict")
    assert "172.18.0.43" in outcome.message
    assert "bounty" in outcome.message
    assert "172.18.0.42" not in outcome.message
    assert r.outcomes["bounty"].reason == "Ready"
    assert sources(r, "bounty") == {"10.244.1.5/32", "10.244.2.7/32"}
    # the younger one is served again once the older lets the IP go
    assert c.apply("policies", "DELETED", policy("bounty"))
    r = resolve(c)
    assert [g.name for g in r.groups] == ["outpost"]
    assert set(r.outcomes) == {"outpost"}


def test_same_age_conflicts_go_to_the_first_name() -> None:
    c = walkthrough()
    c.apply("policies", "ADDED", policy("alpha", ips=("172.18.0.42",), dst=("192.0.2.0/24",)))
    c.apply("policies", "ADDED", policy("zulu", ips=("172.18.0.42",), dst=("198.51.100.0/24",)))
    r = resolve(c)
    assert [g.name for g in r.groups] == ["alpha"]
    assert r.outcomes["outpost"].reason == "EgressIPConflict"
    assert r.outcomes["zulu"].reason == "EgressIPConflict"
    assert "alpha" in r.outcomes["zulu"].message


def test_overlapping_selection_stays_with_the_older_policy() -> None:
    c = walkthrough()
    c.apply(
        "policies",
        "ADDED",
        policy(
            "wing",
            created="2026-11-24T11:00:00Z",
            ips=("172.18.0.50",),
            dst=("172.18.5.0/24",),
            selectors=[
                {
                    "podSelector": {
                        "matchExpressions": [{"key": "class", "operator": "In", "values": ["ywing", "tiefighter"]}]
                    }
                }
            ],
        ),
    )
    r = resolve(c)
    assert sources(r, "outpost") == {"10.244.1.5/32", "10.244.2.7/32"}
    assert sources(r, "wing") == {"10.244.1.9/32"}
    wing = r.outcomes["wing"]
    assert (wing.reason, wing.selected_pods, wing.dropped_pods) == ("Ready", 1, ("default/ywing",))
    assert "left to older policy outpost" in wing.message
    assert "default/ywing" in wing.message
    assert r.outcomes["outpost"].dropped_pods == ()
    # disjoint destinations: both policies keep the pod
    c.apply(
        "policies",
        "MODIFIED",
        policy(
            "wing",
            created="2026-11-24T11:00:00Z",
            ips=("172.18.0.50",),
            dst=("192.0.2.0/24",),
            selectors=[
                {
                    "podSelector": {
                        "matchExpressions": [{"key": "class", "operator": "In", "values": ["ywing", "tiefighter"]}]
                    }
                }
            ],
        ),
    )
    r = resolve(c)
    assert sources(r, "outpost") == {"10.244.1.5/32", "10.244.2.7/32"}
    assert sources(r, "wing") == {"10.244.2.7/32", "10.244.1.9/32"}
    assert r.outcomes["wing"].dropped_pods == ()


def test_overlap_drops_only_for_the_overlapping_older_policy() -> None:
    """outpost (oldest) and dock (disjoint from outpost) both keep ywing; the
    youngest, wing, overlaps only dock and loses ywing to it."""
    c = walkthrough()
    ywing = [{"podSelector": {"matchLabels": {"class": "ywing"}}}]
    c.apply(
        "policies",
        "ADDED",
        policy("dock", created="2026-11-24T10:30:00Z", ips=("172.18.0.51",), dst=("192.0.2.0/24",), selectors=ywing),
    )
    c.apply(
        "policies",
        "ADDED",
        policy("wing", created="2026-11-24T11:00:00Z", ips=("172.18.0.52",), dst=("192.0.2.128/25",), selectors=ywing),
    )
    r = resolve(c)
    assert sources(r, "outpost") == {"10.244.1.5/32", "10.244.2.7/32"}
    assert sources(r, "dock") == {"10.244.2.7/32"}
    assert sources(r, "wing") == set()
    assert r.outcomes["wing"].dropped_pods == ("default/ywing",)
    assert "dock" in r.outcomes["wing"].message


def test_an_invalid_policy_does_not_affect_the_others() -> None:
    c = walkthrough()
    bad = policy("broken", created="2026-11-24T08:00:00Z", ips=("172.18.0.42", "127.0.0.1"))
    assert c.apply("policies", "ADDED", bad)
    r = resolve(c)
    assert [g.name for g in r.groups] == ["outpost"]
    assert sources(r) == {"10.244.1.5/32", "10.244.2.7/32"}
    broken = r.outcomes["broken"]
    assert (broken.valid, broken.reason, broken.generation) == (False, "Invalid", 1)
    assert "spec.egressGateway.egressIPs[1]" in broken.message
    assert "broken" in c.invalid
    # fixed, it is older and takes 172.18.0.42 from outpost
    assert c.apply(
        "policies", "MODIFIED", policy("broken", created="2026-11-24T08:00:00Z", ips=("172.18.0.42",), generation=2)
    )
    r = resolve(c)
    assert "broken" not in c.invalid
    assert [g.name for g in r.groups] == ["broken"]
    assert r.outcomes["outpost"].reason == "EgressIPConflict"


@pytest.mark.parametrize(
    ("kind", "address"),
    [("InternalIP", "172.18.0.43"), ("ExternalIP", "172.18.0.43"), ("ExternalIP", "::ffff:172.18.0.43")],
)
def test_an_egress_ip_of_a_node_makes_the_policy_invalid(kind: str, address: str) -> None:
    c = walkthrough()
    worker = node("kind-worker2", ip="172.18.0.4")
    worker["status"]["addresses"].append({"type": kind, "address": address})
    assert c.apply("nodes", "MODIFIED", worker)
    r = resolve(c)
    assert r.groups == ()
    outcome = r.outcomes["outpost"]
    assert (outcome.valid, outcome.reason, outcome.served) == (False, "Invalid", False)
    assert outcome.message.startswith("egress IP 172.18.0.43 is the address of node kind-worker2;")
    status = status_of(c, {})
    assert conditions(status)["Ready"] == ("False", "Invalid")
    assert "egress IP 172.18.0.43 is the address of node kind-worker2" in status["conditions"][0]["message"]
    assert status["egressIPs"] == []
    # the node gives the address up: the policy is served again
    assert c.apply("nodes", "MODIFIED", node("kind-worker2", ip="172.18.0.4"))
    assert resolve(c).outcomes["outpost"].reason == "Ready"


def test_an_egress_ip_of_a_pod_makes_the_policy_invalid() -> None:
    c = walkthrough()
    assert c.apply("pods", "ADDED", pod("rogue", ns="kube-system", ip="172.18.0.42", node="kind-worker4"))
    r = resolve(c)
    assert [g.name for g in r.groups] == []
    outcome = r.outcomes["outpost"]
    assert outcome.reason == "Invalid"
    assert "egress IP 172.18.0.42 is the address of pod kube-system/rogue" in outcome.message
    assert c.apply("pods", "DELETED", pod("rogue", ns="kube-system", ip="172.18.0.42"))
    assert [g.name for g in resolve(c).groups] == ["outpost"]


def test_an_invalid_policy_claims_no_egress_ip() -> None:
    c = walkthrough()
    older = policy("older", created="2026-11-24T08:00:00Z", ips=("172.18.0.42", "172.18.0.6"))
    assert c.apply("policies", "ADDED", older)
    r = resolve(c)
    assert "172.18.0.6 is the address of node kind-worker4" in r.outcomes["older"].message
    assert r.outcomes["outpost"].reason == "Ready"  # 172.18.0.42 was not taken by the invalid one


def test_resolution_is_independent_of_event_order() -> None:
    objs = {
        "nodes": [node(f"n{i}", {"egress-gw": "true"} if i % 2 else {}, ip=f"172.18.1.{i}") for i in range(6)],
        "namespaces": [namespace("default"), namespace("rebels", {"team": "rebels"})],
        "pods": [
            pod(
                f"p{i}",
                {"org": ("alliance", "empire")[i % 2]},
                ns=("default", "rebels")[i % 3 == 0],
                ip=f"10.244.9.{i}",
                node=f"n{i % 6}",
            )
            for i in range(30)
        ],
        "policies": [
            policy(),
            policy(
                "rebels",
                created="2026-11-24T09:00:00Z",
                ips=("172.18.0.60",),
                selectors=[{"namespaceSelector": {"matchLabels": {"team": "rebels"}}}],
            ),
            policy("late", created="2026-11-24T12:00:00Z", ips=("172.18.0.42",)),
        ],
    }
    expected = None
    rng = random.Random(1)
    for _ in range(5):
        events = [(resource, obj) for resource, items in objs.items() for obj in items]
        rng.shuffle(events)
        c = Cluster()
        for resource, obj in events:
            c.apply(resource, "ADDED", obj)
        got = resolve(c)
        expected = expected or got
        assert got == expected


def test_incremental_index_matches_a_fresh_relist() -> None:
    """Random pod events through apply() leave the index as a relist of the
    final objects would build it."""
    rng = random.Random(3)
    labels = [{"org": "alliance"}, {"org": "empire"}, {"org": "alliance", "class": "xwing"}, {}]
    c = walkthrough()
    current: dict[str, dict[str, Any]] = {}
    for step in range(400):
        name = f"p{rng.randrange(30)}"
        if name in current and rng.random() < 0.3:
            c.apply("pods", "DELETED", current.pop(name))
            continue
        obj = pod(
            name,
            rng.choice(labels),
            ns=rng.choice(["default", "kube-system"])
            if name not in current
            else current[name]["metadata"]["namespace"],
            ip=f"10.244.7.{rng.randrange(200)}" if rng.random() < 0.9 else None,
        )
        c.apply("pods", "MODIFIED" if name in current else "ADDED", obj)
        current[name] = obj
        if step % 50 == 0:
            fresh = walkthrough()
            fresh.replace("pods", [*walkthrough_pods(), *current.values()])
            assert resolve(c) == resolve(fresh)
    fresh = walkthrough()
    fresh.replace("pods", [*walkthrough_pods(), *current.values()])
    assert resolve(c) == resolve(fresh)
    assert c._by_label == fresh._by_label


# --- speed ------------------------------------------------------------------------------


def big_cluster(pods: int = 5000, policies: int = 50, nodes: int = 100) -> Cluster:
    c = Cluster()
    c.replace(
        "nodes",
        [
            node(f"node-{i:03d}", {"egress-gw": str(i % 10 == 0).lower(), "zone": "abc"[i % 3]}, ip=f"172.18.1.{i + 2}")
            for i in range(nodes)
        ],
    )
    c.replace(
        "namespaces",
        [namespace(f"team-{i:02d}", {"team": f"team-{i:02d}", "tier": ("prod", "dev")[i % 2]}) for i in range(50)],
    )
    c.replace(
        "pods",
        [
            pod(
                f"app-{i:05d}",
                {
                    "app": f"app-{i % 40:02d}",
                    "org": ("alliance", "empire")[i % 2],
                    "class": ("xwing", "ywing", "tiefighter")[i % 3],
                    "pod-template-hash": f"{i * 7919 % 100000:05x}",
                },
                ns=f"team-{i % 50:02d}",
                ip=f"10.{64 + i // 65536}.{i // 256 % 256}.{i % 256}",
                node=f"node-{i % nodes:03d}",
            )
            for i in range(pods)
        ],
    )
    shapes: list[list[dict[str, Any]]] = []
    for i in range(policies):
        team = {"matchLabels": {"team": f"team-{i % 50:02d}"}}
        options: list[list[dict[str, Any]]] = [
            [{"podSelector": {"matchLabels": {"app": f"app-{i % 40:02d}"}}, "namespaceSelector": team}],
            [
                {
                    "podSelector": {
                        "matchLabels": {"org": "alliance"},
                        "matchExpressions": [{"key": "class", "operator": "In", "values": ["xwing", "ywing"]}],
                    }
                }
            ],
            [{"namespaceSelector": {"matchLabels": {"tier": "prod"}}}],
            [
                {
                    "podSelector": {
                        "matchExpressions": [{"key": "class", "operator": "NotIn", "values": ["tiefighter"]}]
                    },
                    "namespaceSelector": team,
                }
            ],
            [{"podSelector": {"matchLabels": {"class": "ywing"}}}],
        ]
        shapes.append(options[i % 5])
    c.replace(
        "policies",
        [
            policy(
                f"policy-{i:02d}",
                created=f"2026-11-24T10:{i // 60:02d}:{i % 60:02d}Z",
                ips=(f"172.31.{i}.1", f"172.31.{i}.2"),
                dst=(f"10.{200 + (i - 3 if i % 5 == 4 else i) % 50}.0.0/16",),
                selectors=shapes[i],
                node_selector={"matchLabels": {"egress-gw": "true", "zone": "abc"[i % 3]}},
            )
            for i in range(policies)
        ],
    )
    return c


def test_resolving_5000_pods_50_policies_100_nodes_is_fast() -> None:
    c = big_cluster()
    resolve(c)
    times = []
    for _ in range(5):
        started = time.perf_counter()
        r = resolve(c)
        times.append(time.perf_counter() - started)
    best = min(times)
    print(f"\nresolve: 5000 pods, 50 policies, 100 nodes: best {best * 1000:.1f} ms, worst {max(times) * 1000:.1f} ms")
    assert len(r.groups) == 50
    assert all(o.reason == "Ready" for o in r.outcomes.values())
    assert sum(len(o.dropped_pods) for o in r.outcomes.values()) > 0
    assert len(r.pod_nodes) > 1000
    assert best < 2.0
