"""The Kubernetes mode's cluster index and its resolution into egress groups."""

from __future__ import annotations

import copy
import ipaddress
import random
import time
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from egressd.core.assignment import sources_for
from egressd.core.cluster_index import Cluster
from egressd.core.kube_objects import NodeInfo, PodInfo, parse_namespace, parse_node, parse_pod
from egressd.core.lease import LeaseRecord
from egressd.core.model import EgressGroup, IPAddress
from egressd.core.policy import parse_policy
from egressd.core.policy_status import policy_status
from egressd.core.resolution import PolicyOutcome, Resolution, resolve

ip = ipaddress.ip_address
net = ipaddress.ip_network

IP42, IP43 = ip("172.18.0.42"), ip("172.18.0.43")
ALLIANCE = {"podSelector": {"matchLabels": {"org": "alliance"}}}
GATEWAYS = {"matchLabels": {"egress-gw": "true"}}


# --- objects as the API server returns them ------------------------------------------


def pod(
    name: str,
    labels: dict[str, str] | None = None,
    *,
    ns: str = "default",
    ip: str | None = "10.244.1.5",
    node: str = "kind-worker",
) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": "Pending"}
    if ip is not None:
        status = {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"namespace": ns, "name": name, "labels": dict(labels or {}), "resourceVersion": "1"},
        "spec": {"nodeName": node, "containers": [{"name": "app", "image": "quay.io/cilium/json-mock"}]},
        "status": status,
    }


def node(name: str, labels: dict[str, str] | None = None, *, ip: str | None = None) -> dict[str, Any]:
    addresses = [{"type": "Hostname", "address": name}]
    if ip is not None:
        addresses.append({"type": "InternalIP", "address": ip})
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": dict(labels or {})},
        "spec": {},
        "status": {"addresses": addresses, "conditions": [{"type": "Ready", "status": "True"}]},
    }


def namespace(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": dict(labels or {})}}


def policy(
    name: str = "outpost",
    *,
    created: str = "2026-11-24T10:00:00Z",
    ips: tuple[str, ...] = ("172.18.0.42", "172.18.0.43"),
    dst: tuple[str, ...] = ("172.18.0.0/16",),
    selectors: list[dict[str, Any]] | None = None,
    node_selector: dict[str, Any] | None = None,
    generation: int = 1,
    rv: str = "1",
) -> dict[str, Any]:
    return {
        "apiVersion": "egressd.io/v1alpha1",
        "kind": "EgressGatewayPolicy",
        "metadata": {
            "name": name,
            "uid": f"uid-{name}",
            "generation": generation,
            "creationTimestamp": created,
            "resourceVersion": rv,
        },
        "spec": {
            "selectors": selectors if selectors is not None else [ALLIANCE],
            "destinationCIDRs": list(dst),
            "egressGateway": {
                "nodeSelector": node_selector if node_selector is not None else GATEWAYS,
                "interface": "net0",
                "egressIPs": list(ips),
            },
        },
    }


def walkthrough() -> Cluster:
    """The reference scenario: four workers, two of them gateways; xwing and
    ywing (org=alliance) and tiefighter (org=empire) in the default namespace."""
    c = Cluster()
    c.replace(
        "nodes",
        [
            node("kind-control-plane", ip="172.18.0.2"),
            node("kind-worker", ip="172.18.0.3"),
            node("kind-worker2", ip="172.18.0.4"),
            node("kind-worker3", {"egress-gw": "true"}, ip="172.18.0.5"),
            node("kind-worker4", {"egress-gw": "true"}, ip="172.18.0.6"),
        ],
    )
    c.replace("namespaces", [namespace("default"), namespace("kube-system")])
    c.replace(
        "pods",
        [
            pod("xwing", {"org": "alliance", "class": "xwing"}, ip="10.244.1.5", node="kind-worker"),
            pod("ywing", {"org": "alliance", "class": "ywing"}, ip="10.244.2.7", node="kind-worker2"),
            pod("tiefighter", {"org": "empire", "class": "tiefighter"}, ip="10.244.1.9", node="kind-worker"),
        ],
    )
    c.replace("policies", [policy()])
    return c


def sources(resolution: Resolution, name: str = "outpost") -> set[str]:
    (group,) = [g for g in resolution.groups if g.name == name]
    return {str(s) for s in group.source_cidrs}


def with_labels(obj: dict[str, Any], labels: dict[str, str]) -> dict[str, Any]:
    out = copy.deepcopy(obj)
    out["metadata"]["labels"] = labels
    return out


# --- parsing of pods, nodes, namespaces -------------------------------------------------


def test_parse_pod() -> None:
    info = parse_pod(pod("xwing", {"org": "alliance"}, ip="10.244.1.5", node="kind-worker"))
    assert info == PodInfo("default", "xwing", "kind-worker", (ip("10.244.1.5"),), {"org": "alliance"})
    assert info.key == ("default", "xwing")


def test_parse_pod_takes_pod_ips_and_falls_back_to_pod_ip() -> None:
    dual = pod("xwing")
    dual["status"]["podIPs"] = [{"ip": "10.244.1.5"}, {"ip": "fd00:10:244:1::5"}]
    info = parse_pod(dual)
    assert info is not None
    assert info.ips == (ip("10.244.1.5"), ip("fd00:10:244:1::5"))
    only_pod_ip = pod("xwing", ip="10.244.1.6")
    del only_pod_ip["status"]["podIPs"]
    info = parse_pod(only_pod_ip)
    assert info is not None
    assert info.ips == (ip("10.244.1.6"),)


def cannot_send(variant: str) -> dict[str, Any]:
    obj = pod("xwing", {"org": "alliance"})
    if variant == "no address yet":
        obj["status"] = {"phase": "Pending"}
    elif variant == "empty podIPs, no podIP":
        obj["status"] = {"phase": "Running", "podIPs": []}
    elif variant == "succeeded":
        obj["status"]["phase"] = "Succeeded"
    elif variant == "failed":
        obj["status"]["phase"] = "Failed"
    elif variant == "terminating":
        obj["metadata"]["deletionTimestamp"] = "2026-11-24T10:05:00Z"
    elif variant == "host network":
        obj["spec"]["hostNetwork"] = True
    elif variant == "garbage address":
        obj["status"] = {"phase": "Running", "podIP": "not-an-ip"}
    return obj


VARIANTS = ["no address yet", "empty podIPs, no podIP", "succeeded", "failed", "terminating", "host network"]


@pytest.mark.parametrize("variant", [*VARIANTS, "garbage address"])
def test_pods_that_cannot_send_are_not_kept(variant: str) -> None:
    assert parse_pod(pod("xwing", {"org": "alliance"})) is not None
    assert parse_pod(cannot_send(variant)) is None


def test_parse_node() -> None:
    obj = node("kind-worker3", {"egress-gw": "true"}, ip="172.18.0.5")
    obj["status"]["addresses"].append({"type": "InternalIP", "address": "fd00:18::5"})
    obj["spec"]["unschedulable"] = True
    obj["status"]["addresses"].append({"type": "ExternalIP", "address": "203.0.113.5"})
    obj["status"]["addresses"].append({"type": "InternalDNS", "address": "10.9.9.9"})
    obj["status"]["addresses"].append({"type": "ExternalIP", "address": "not an address"})
    assert parse_node(obj) == NodeInfo(
        "kind-worker3",
        {"egress-gw": "true"},
        ip("172.18.0.5"),
        True,
        (ip("172.18.0.5"), ip("fd00:18::5"), ip("203.0.113.5")),
    )
    assert parse_node(node("kind-worker")) == NodeInfo("kind-worker", {}, None, False)


def test_parse_namespace_adds_the_name_label() -> None:
    assert parse_namespace(namespace("rebels", {"team": "a"})) == (
        "rebels",
        {"team": "a", "kubernetes.io/metadata.name": "rebels"},
    )
    kept = namespace("rebels", {"kubernetes.io/metadata.name": "rebels"})
    assert parse_namespace(kept) == ("rebels", {"kubernetes.io/metadata.name": "rebels"})


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
            fresh.replace("pods", [*_walkthrough_pods(), *current.values()])
            assert resolve(c) == resolve(fresh)
    fresh = walkthrough()
    fresh.replace("pods", [*_walkthrough_pods(), *current.values()])
    assert resolve(c) == resolve(fresh)
    assert c._by_label == fresh._by_label


def _walkthrough_pods() -> list[dict[str, Any]]:
    return [
        pod("xwing", {"org": "alliance", "class": "xwing"}, ip="10.244.1.5", node="kind-worker"),
        pod("ywing", {"org": "alliance", "class": "ywing"}, ip="10.244.2.7", node="kind-worker2"),
        pod("tiefighter", {"org": "empire", "class": "tiefighter"}, ip="10.244.1.9", node="kind-worker"),
    ]


# --- apply and replace report relevant changes only ---------------------------------------


def test_irrelevant_pod_changes_are_not_changes() -> None:
    c = walkthrough()
    obj = pod("xwing", {"org": "alliance", "class": "xwing"}, ip="10.244.1.5", node="kind-worker")
    obj["metadata"]["annotations"] = {"kubectl.kubernetes.io/restartedAt": "now"}
    obj["metadata"]["resourceVersion"] = "99"
    obj["status"]["conditions"] = [{"type": "Ready", "status": "False"}]
    obj["status"]["containerStatuses"] = [{"name": "app", "restartCount": 3}]
    assert not c.apply("pods", "MODIFIED", obj)
    assert c.apply("pods", "MODIFIED", with_labels(obj, {"org": "alliance"}))
    moved = copy.deepcopy(obj)
    moved["status"]["podIPs"] = [{"ip": "10.244.1.6"}]
    assert c.apply("pods", "MODIFIED", moved)


def test_irrelevant_node_and_namespace_changes_are_not_changes() -> None:
    c = walkthrough()
    heartbeat = node("kind-worker3", {"egress-gw": "true"}, ip="172.18.0.5")
    heartbeat["status"]["conditions"] = [{"type": "Ready", "status": "True", "lastHeartbeatTime": "later"}]
    heartbeat["metadata"]["annotations"] = {"node.alpha.kubernetes.io/ttl": "0"}
    assert not c.apply("nodes", "MODIFIED", heartbeat)
    assert c.apply("nodes", "MODIFIED", with_labels(heartbeat, {"egress-gw": "true", "zone": "a"}))
    ns = namespace("default")
    ns["metadata"]["annotations"] = {"owner": "me"}
    assert not c.apply("namespaces", "MODIFIED", ns)
    assert c.apply("namespaces", "MODIFIED", namespace("default", {"team": "rebels"}))
    assert not c.apply("nodes", "DELETED", node("kind-worker9"))
    assert not c.apply("namespaces", "DELETED", namespace("nowhere"))


def test_a_status_write_is_not_a_change_but_is_recorded() -> None:
    c = walkthrough()
    obj = policy(rv="18")
    obj["status"] = {"observedGeneration": 1, "selectedPods": 2}
    assert not c.apply("policies", "MODIFIED", obj)
    assert c.resource_versions["outpost"] == "18"
    assert c.policies["outpost"].resource_version == "18"
    assert c.statuses["outpost"] == {"observedGeneration": 1, "selectedPods": 2}
    assert c.apply("policies", "MODIFIED", policy(rv="19", generation=2, dst=("172.18.0.0/24",)))
    assert c.generations["outpost"] == 2
    assert c.apply("policies", "DELETED", policy())
    assert "outpost" not in c.resource_versions
    assert "outpost" not in c.statuses
    assert not c.apply("policies", "DELETED", policy())


def test_an_invalid_policy_rewritten_with_the_same_problems_is_not_a_change() -> None:
    c = walkthrough()
    bad = policy("broken", ips=("127.0.0.1",))
    assert c.apply("policies", "ADDED", bad)
    bad["metadata"]["resourceVersion"] = "5"
    bad["status"] = {"conditions": []}
    assert not c.apply("policies", "MODIFIED", bad)
    assert c.resource_versions["broken"] == "5"
    bad["spec"]["egressGateway"]["interface"] = "x" * 20
    assert c.apply("policies", "MODIFIED", bad)


def test_replace_reports_whether_anything_changed() -> None:
    c = walkthrough()
    assert not c.replace("pods", _walkthrough_pods())
    assert not c.replace(
        "nodes",
        [
            node("kind-control-plane", ip="172.18.0.2"),
            node("kind-worker", ip="172.18.0.3"),
            node("kind-worker2", ip="172.18.0.4"),
            node("kind-worker3", {"egress-gw": "true"}, ip="172.18.0.5"),
            node("kind-worker4", {"egress-gw": "true"}, ip="172.18.0.6"),
        ],
    )
    assert not c.replace("namespaces", [namespace("default"), namespace("kube-system")])
    assert not c.replace("policies", [policy(rv="40")])
    assert c.resource_versions["outpost"] == "40"
    assert c.replace("pods", _walkthrough_pods()[:2])
    assert sources(resolve(c)) == {"10.244.1.5/32", "10.244.2.7/32"}
    assert c.replace("pods", [])
    assert sources(resolve(c)) == set()
    assert c._by_label == {}
    assert c.replace("namespaces", [namespace("default")])
    assert c.replace("policies", [])
    assert resolve(c) == Resolution()


def test_unknown_resources_and_event_types_are_refused() -> None:
    c = Cluster()
    with pytest.raises(ValueError, match="resource"):
        c.apply("leases", "ADDED", {})
    with pytest.raises(ValueError, match="event type"):
        c.apply("pods", "BOOKMARK", {})
    with pytest.raises(ValueError, match="resource"):
        c.replace("services", [])


def test_objects_without_a_name_are_ignored() -> None:
    c = Cluster()
    assert not c.apply("policies", "ADDED", {"metadata": {}})
    assert not c.apply("nodes", "ADDED", {"metadata": {}})
    assert not c.apply("namespaces", "ADDED", {})
    assert not c.apply("pods", "ADDED", {"metadata": {"name": "x"}})
    assert resolve(c) == Resolution()


# --- policy status ---------------------------------------------------------------------


T_ACQUIRED = datetime(2026, 11, 24, 10, 1, 2, 345678, tzinfo=UTC)
NOW1, NOW2 = "2026-11-24T10:05:00Z", "2026-11-24T10:09:00Z"


def lease(
    ip_text: str, holder: str | None, transitions: int = 0, acquired: datetime | None = T_ACQUIRED
) -> LeaseRecord:
    return LeaseRecord(
        name=f"egressd-{ip_text.replace('.', '-')}",
        egress_ip=ip_text,
        holder=holder,
        lease_duration=2.5,
        transitions=transitions,
        resource_version="7",
        acquire_time=acquired if holder else None,
    )


def status_of(
    c: Cluster,
    leases: Mapping[IPAddress, LeaseRecord | None],
    previous: Mapping[str, Any] | None = None,
    now: str = NOW1,
    name: str = "outpost",
    **kw: Any,
) -> dict[str, Any]:
    r = resolve(c)
    return policy_status(c.policies.get(name), r.outcomes[name], leases, previous, now, **kw)


def conditions(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def test_status_of_a_ready_policy() -> None:
    c = walkthrough()
    status = status_of(
        c,
        {
            IP42: replace(lease("172.18.0.42", "kind-worker3", 4), transition_reason="renew-deadline"),
            IP43: lease("172.18.0.43", "kind-worker4", 1),
        },
    )
    assert status == {
        "observedGeneration": 1,
        "selectedPods": 2,
        "egressIPs": [
            {
                "egressIP": "172.18.0.42",
                "node": "kind-worker3",
                "epoch": 4,
                "lastTransitionTime": "2026-11-24T10:01:02.345678Z",
                "reason": "renew-deadline",
            },
            {
                "egressIP": "172.18.0.43",
                "node": "kind-worker4",
                "epoch": 1,
                "lastTransitionTime": "2026-11-24T10:01:02.345678Z",
                "reason": "",
            },
        ],
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "Ready",
                "message": "every egress IP has an owner: 172.18.0.42 on kind-worker3, 172.18.0.43 on kind-worker4",
                "lastTransitionTime": NOW1,
                "observedGeneration": 1,
            },
            {
                "type": "Degraded",
                "status": "False",
                "reason": "AsExpected",
                "message": "2 pods selected, 2 candidate nodes (kind-worker3, kind-worker4)",
                "lastTransitionTime": NOW1,
                "observedGeneration": 1,
            },
        ],
    }


def test_status_egress_ips_without_owner() -> None:
    c = walkthrough()
    status = status_of(c, {IP42: lease("172.18.0.42", "kind-worker3", 2), IP43: lease("172.18.0.43", None, 5)})
    assert status["egressIPs"][1] == {"egressIP": "172.18.0.43", "node": "", "epoch": 5, "reason": ""}
    assert conditions(status) == {"Ready": ("False", "NotOwned"), "Degraded": ("True", "NotOwned")}
    ready = status["conditions"][0]
    assert ready["message"] == "no node owns 172.18.0.43"
    absent = status_of(c, {IP42: lease("172.18.0.42", "kind-worker3", 2)})
    assert absent["egressIPs"][1] == {"egressIP": "172.18.0.43", "node": "", "epoch": 0, "reason": ""}
    assert conditions(absent)["Ready"] == ("False", "NotOwned")
    assert "172.18.0.42" not in absent["conditions"][0]["message"]
    none = status_of(c, {IP42: None, IP43: None})
    assert none["conditions"][0]["message"] == "no node owns 172.18.0.42, 172.18.0.43"


def test_status_without_candidate() -> None:
    c = walkthrough()
    c.replace("policies", [policy(node_selector={"matchLabels": {"egress-gw": "yes"}})])
    status = status_of(c, {})
    assert conditions(status) == {"Ready": ("False", "NoCandidate"), "Degraded": ("True", "NoCandidate")}
    assert "egress-gw=yes" in status["conditions"][0]["message"]
    assert "no node owns 172.18.0.42, 172.18.0.43" in status["conditions"][1]["message"]
    assert [e["node"] for e in status["egressIPs"]] == ["", ""]


def test_status_of_an_invalid_policy() -> None:
    c = walkthrough()
    c.apply("policies", "ADDED", policy("broken", ips=("127.0.0.1",), generation=6))
    status = status_of(c, {}, name="broken")
    assert status["observedGeneration"] == 6
    assert status["selectedPods"] == 0
    assert status["egressIPs"] == []
    assert conditions(status) == {"Ready": ("False", "Invalid"), "Degraded": ("False", "AsExpected")}
    assert "spec.egressGateway.egressIPs[0]" in status["conditions"][0]["message"]
    assert status["conditions"][0]["observedGeneration"] == 6


def test_status_of_a_conflicting_policy() -> None:
    c = walkthrough()
    c.apply(
        "policies",
        "ADDED",
        policy("younger", created="2026-11-25T00:00:00Z", ips=("172.18.0.43",), dst=("192.0.2.0/24",)),
    )
    held = {IP42: lease("172.18.0.42", "kind-worker3"), IP43: lease("172.18.0.43", "kind-worker4")}
    status = status_of(c, held, name="younger")
    assert conditions(status) == {"Ready": ("False", "EgressIPConflict"), "Degraded": ("False", "AsExpected")}
    assert "172.18.0.43 is already claimed by older policy outpost" in status["conditions"][0]["message"]
    assert status["egressIPs"] == []  # the owner of .43 serves outpost, not this policy
    assert status["selectedPods"] == 0


def test_status_with_overlapping_selection() -> None:
    c = walkthrough()
    c.apply(
        "policies",
        "ADDED",
        policy(
            "wing",
            created="2026-11-25T00:00:00Z",
            ips=("172.18.0.50",),
            selectors=[{"podSelector": {"matchLabels": {"class": "ywing"}}}],
        ),
    )
    status = status_of(c, {ip("172.18.0.50"): lease("172.18.0.50", "kind-worker4")}, name="wing")
    assert conditions(status) == {"Ready": ("True", "Ready"), "Degraded": ("True", "OverlappingSelection")}
    assert "default/ywing" in status["conditions"][1]["message"]
    assert "outpost" in status["conditions"][1]["message"]
    status = status_of(c, {}, name="wing")
    assert conditions(status) == {"Ready": ("False", "NotOwned"), "Degraded": ("True", "NotOwned")}
    assert "default/ywing" in status["conditions"][1]["message"]
    assert "no node owns 172.18.0.50" in status["conditions"][1]["message"]


def test_status_is_deterministic_and_keeps_transition_times() -> None:
    c = walkthrough()
    owned = {IP42: lease("172.18.0.42", "kind-worker3"), IP43: lease("172.18.0.43", "kind-worker4")}
    first = status_of(c, owned, None, NOW1)
    assert first == status_of(c, owned, None, NOW1)
    # written, read back, computed again later by another node: identical
    again = status_of(c, owned, copy.deepcopy(first), NOW2)
    assert again == first
    # an owner moves: Ready stays True, so its time is kept though its message changes
    moved = {**owned, IP43: lease("172.18.0.43", "kind-worker3", 1)}
    after_move = status_of(c, moved, first, NOW2)
    assert after_move["conditions"][0]["lastTransitionTime"] == NOW1
    assert after_move["conditions"][0]["message"] != first["conditions"][0]["message"]
    # an owner is lost: Ready and Degraded flip and take the new time
    lost = status_of(c, {**owned, IP43: lease("172.18.0.43", None, 1)}, after_move, NOW2)
    assert [(x["status"], x["lastTransitionTime"]) for x in lost["conditions"]] == [("False", NOW2), ("True", NOW2)]
    # stays lost with another reason: times kept
    later = status_of(c, {**owned, IP43: None}, lost, "2026-11-24T11:00:00Z")
    assert [x["lastTransitionTime"] for x in later["conditions"]] == [NOW2, NOW2]


def test_status_ignores_malformed_previous_conditions() -> None:
    c = walkthrough()
    owned = {IP42: lease("172.18.0.42", "kind-worker3"), IP43: lease("172.18.0.43", "kind-worker4")}
    previous = {
        "conditions": [
            "junk",
            {"type": "Ready", "status": "True"},
            {"type": "Degraded", "status": "False", "lastTransitionTime": "t0"},
        ]
    }
    status = status_of(c, owned, previous, NOW2)
    assert [x["lastTransitionTime"] for x in status["conditions"]] == [NOW2, "t0"]


@pytest.mark.parametrize(
    "previous",
    [{"conditions": 1}, {"conditions": "Ready"}, {"conditions": [{"type": ["Ready"], "status": "True"}]}],
    ids=["a-number", "a-string", "an-unhashable-type"],
)
def test_status_survives_a_stored_status_of_any_shape(previous: dict[str, Any]) -> None:
    c = walkthrough()
    owned = {IP42: lease("172.18.0.42", "kind-worker3"), IP43: lease("172.18.0.43", "kind-worker4")}
    status = status_of(c, owned, previous, NOW2)
    assert [x["lastTransitionTime"] for x in status["conditions"]] == [NOW2, NOW2]


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
