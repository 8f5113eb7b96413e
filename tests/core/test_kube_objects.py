"""Pods, nodes and namespaces as egressd reads them."""

from __future__ import annotations

import pytest

from egressd.core.kube_objects import NodeInfo, PodInfo, parse_namespace, parse_node, parse_pod
from tests.core.cluster_builders import (
    VARIANTS,
    cannot_send,
    ip,
    namespace,
    node,
    pod,
)

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
