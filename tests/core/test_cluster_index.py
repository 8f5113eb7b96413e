"""The cluster index: apply and replace report relevant changes only."""

from __future__ import annotations

import copy

import pytest

from egressd.core.cluster_index import Cluster
from egressd.core.resolution import Resolution, resolve
from tests.core.cluster_builders import (
    namespace,
    node,
    pod,
    policy,
    sources,
    walkthrough,
    walkthrough_nodes,
    walkthrough_pods,
    with_labels,
)

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
    assert not c.replace("pods", walkthrough_pods())
    assert not c.replace("nodes", walkthrough_nodes())
    assert not c.replace("namespaces", [namespace("default"), namespace("kube-system")])
    assert not c.replace("policies", [policy(rv="40")])
    assert c.resource_versions["outpost"] == "40"
    assert c.replace("pods", walkthrough_pods()[:2])
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
