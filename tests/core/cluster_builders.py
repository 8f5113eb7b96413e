"""Kubernetes objects as the API server returns them, and the reference
scenario built from them, for the tests of the Kubernetes mode's core."""

from __future__ import annotations

import copy
import ipaddress
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from egressd.core.cluster_index import Cluster
from egressd.core.lease import LeaseRecord
from egressd.core.model import IPAddress
from egressd.core.policy_status import policy_status
from egressd.core.resolution import Resolution, resolve

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
    c.replace("nodes", walkthrough_nodes())
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


def walkthrough_nodes() -> list[dict[str, Any]]:
    """The walkthrough's Node objects: kind-worker3 and -4 are the gateways."""
    return [
        node("kind-control-plane", ip="172.18.0.2"),
        node("kind-worker", ip="172.18.0.3"),
        node("kind-worker2", ip="172.18.0.4"),
        node("kind-worker3", {"egress-gw": "true"}, ip="172.18.0.5"),
        node("kind-worker4", {"egress-gw": "true"}, ip="172.18.0.6"),
    ]


def walkthrough_pods() -> list[dict[str, Any]]:
    return [
        pod("xwing", {"org": "alliance", "class": "xwing"}, ip="10.244.1.5", node="kind-worker"),
        pod("ywing", {"org": "alliance", "class": "ywing"}, ip="10.244.2.7", node="kind-worker2"),
        pod("tiefighter", {"org": "empire", "class": "tiefighter"}, ip="10.244.1.9", node="kind-worker"),
    ]


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
