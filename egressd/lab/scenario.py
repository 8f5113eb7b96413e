"""The reference scenario as data: Cilium's egress-gateway walkthrough.

One place for every name, address and label of the lab, so the topology
(:mod:`egressd.lab.netlab`), the generated daemon configs, the Kubernetes
objects the lab API server is seeded with, and the drills all agree::

                         bridge "kind" 172.18.0.0/16 (switch namespace)
      +--------------+-------------+--------------+---------------+------------+
   .2 eth0        .3 eth0       .4 eth0       .5 eth0 net0   .6 eth0 net0    .7 eth0
  kind-control-   kind-worker   kind-worker2  kind-worker3    kind-worker4   outpost
  plane (API)      |      |        |          (gateway)       (gateway)      :8000 http
  10.244.0.0/24   xwing tiefighter ywing      10.244.3.0/24   10.244.4.0/24  :9000 udp
                  .1.2  .1.3       .2.2

The egress IPs 172.18.0.42/.43 are not configured by the lab: egressd adds
them on ``net0`` of whichever gateway owns them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

NODE_NETWORK = ipaddress.IPv4Network("172.18.0.0/16")
"""The walkthrough's docker network ``kind``; exists only inside the lab."""

POD_NETWORK = ipaddress.IPv4Network("10.244.0.0/16")
"""kind's default pod network; every node gets a /24 of it."""

BRIDGE = "kind"
"""Name of the bridge in the switch namespace (the docker network's name)."""

API_PORT = 6443
OUTPOST_HTTP_PORT = 8000
OUTPOST_UDP_PORT = 9000
EGRESSD_NAMESPACE = "egressd"
"""Kubernetes namespace of the leases."""

GATEWAY_LABEL = ("egress-gw", "true")
GATEWAY_TAINT = {"key": "egress-gw", "effect": "NoSchedule"}


@dataclass(frozen=True)
class NodeSpec:
    """One Kubernetes node: a network namespace attached to the bridge."""

    name: str
    address: str
    """``eth0`` address on the node network (InternalIP)."""
    short: str
    """Short tag for the node's ports on the switch (interface names are at most 15 characters)."""
    pod_cidr: str
    gateway: bool = False
    """Gateways get ``net0``, a second port on the bridge without an address, for the egress IPs."""
    control_plane: bool = False

    @property
    def labels(self) -> dict[str, str]:
        labels = {
            "kubernetes.io/hostname": self.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
        }
        if self.control_plane:
            labels["node-role.kubernetes.io/control-plane"] = ""
        if self.gateway:
            labels[GATEWAY_LABEL[0]] = GATEWAY_LABEL[1]
        return labels

    @property
    def taints(self) -> list[dict[str, str]]:
        taints: list[dict[str, str]] = []
        if self.control_plane:
            taints.append({"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"})
        if self.gateway:
            taints.append(dict(GATEWAY_TAINT))
        return taints

    @property
    def pod_gateway(self) -> str:
        """The node-side address of its pod veths: the .1 of its pod CIDR."""
        return str(ipaddress.IPv4Network(self.pod_cidr).network_address + 1)


@dataclass(frozen=True)
class PodSpec:
    """One pod: a network namespace behind its node by a veth of its own."""

    name: str
    node: str
    ip: str
    labels: Mapping[str, str]
    namespace: str = "default"

    @property
    def host_ifname(self) -> str:
        """The node's end of the pod veth (Cilium names them lxc*)."""
        return f"lxc-{self.name}"[:15]


@dataclass(frozen=True)
class GroupSpec:
    """One egress group of the static config (the walkthrough's policy)."""

    name: str
    egress_ips: tuple[str, ...]
    interface: str
    candidates: tuple[str, ...]
    source_cidrs: tuple[str, ...]
    destination_cidrs: tuple[str, ...]
    excluded_cidrs: tuple[str, ...] = ()
    pod_selector: Mapping[str, str] = field(default_factory=dict)
    """Kubernetes mode: the policy's podSelector (matchLabels), which selects
    the pods whose addresses are ``source_cidrs`` in the static mode."""


@dataclass(frozen=True)
class OutpostSpec:
    """The server outside the cluster that answers only the egress IPs."""

    name: str
    address: str
    short: str
    allowed: tuple[str, ...]
    http_port: int = OUTPOST_HTTP_PORT
    udp_port: int = OUTPOST_UDP_PORT


@dataclass(frozen=True)
class Scenario:
    nodes: tuple[NodeSpec, ...]
    pods: tuple[PodSpec, ...]
    groups: tuple[GroupSpec, ...]
    outpost: OutpostSpec
    api_node: str
    """The node whose namespace runs the lab API server."""
    timing: Mapping[str, Any] = field(default_factory=dict)
    """camelCase ``timing`` keys for the daemon configs; empty means egressd's defaults."""

    def node(self, name: str) -> NodeSpec:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(f"no node {name!r} in the scenario")

    def pod(self, name: str) -> PodSpec:
        for p in self.pods:
            if p.name == name:
                return p
        raise KeyError(f"no pod {name!r} in the scenario")

    @property
    def api_address(self) -> str:
        return self.node(self.api_node).address

    @property
    def api_url(self) -> str:
        return f"http://{self.api_address}:{API_PORT}"

    @property
    def gateways(self) -> tuple[NodeSpec, ...]:
        return tuple(n for n in self.nodes if n.gateway)

    @property
    def egress_ips(self) -> tuple[str, ...]:
        return tuple(ip for g in self.groups for ip in g.egress_ips)

    def pods_of(self, node: str) -> tuple[PodSpec, ...]:
        return tuple(p for p in self.pods if p.node == node)

    def host_names(self) -> tuple[str, ...]:
        """Every host of the lab by role name: nodes, the outpost, pods."""
        return (*(n.name for n in self.nodes), self.outpost.name, *(p.name for p in self.pods))

    def daemon_config(self, node: str, mode: str = "static") -> dict[str, Any]:
        """The egressd config of ``node`` (camelCase, as in the YAML file): with
        the groups in ``static`` mode, without them in ``kubernetes`` mode (the
        daemons read :meth:`policy_object` from the API server then)."""
        spec = self.node(node)
        config: dict[str, Any] = {
            "node": {"name": spec.name, "address": spec.address},
            "kubernetes": {"namespace": EGRESSD_NAMESPACE, "access": "url", "url": self.api_url},
        }
        if mode == "kubernetes":
            config["mode"] = "kubernetes"
        if self.timing:
            config["timing"] = dict(self.timing)
        if mode == "kubernetes":
            return config
        config["groups"] = [
            {
                "name": g.name,
                "egressIPs": list(g.egress_ips),
                "interface": g.interface,
                "candidates": list(g.candidates),
                "sourceCIDRs": list(g.source_cidrs),
                "destinationCIDRs": list(g.destination_cidrs),
                "excludedCIDRs": list(g.excluded_cidrs),
            }
            for g in self.groups
        ]
        return config

    def policy_object(self, group: str) -> dict[str, Any]:
        """The ``EgressGatewayPolicy`` that says what the static group ``group`` says."""
        g = next(g for g in self.groups if g.name == group)
        spec: dict[str, Any] = {
            "selectors": [{"podSelector": {"matchLabels": dict(g.pod_selector)}}],
            "destinationCIDRs": list(g.destination_cidrs),
            "egressGateway": {
                "nodeSelector": {"matchLabels": {GATEWAY_LABEL[0]: GATEWAY_LABEL[1]}},
                "interface": g.interface,
                "egressIPs": list(g.egress_ips),
            },
        }
        if g.excluded_cidrs:
            spec["excludedCIDRs"] = list(g.excluded_cidrs)
        return {
            "apiVersion": "egressd.io/v1alpha1",
            "kind": "EgressGatewayPolicy",
            "metadata": {"name": g.name},
            "spec": spec,
        }

    def node_object(self, node: str) -> dict[str, Any]:
        """The Kubernetes Node object of ``node``."""
        spec = self.node(node)
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": spec.name, "labels": spec.labels},
            "spec": {"podCIDR": spec.pod_cidr, "podCIDRs": [spec.pod_cidr], "taints": spec.taints},
            "status": {
                "addresses": [
                    {"type": "InternalIP", "address": spec.address},
                    {"type": "Hostname", "address": spec.name},
                ],
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
            },
        }

    def pod_object(self, pod: str) -> dict[str, Any]:
        """The Kubernetes Pod object of ``pod`` (its status is written separately, as a kubelet would)."""
        spec = self.pod(pod)
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": spec.name, "namespace": spec.namespace, "labels": dict(spec.labels)},
            "spec": {
                "nodeName": spec.node,
                "containers": [{"name": spec.name, "image": "docker.io/tgraf/netperf"}],
            },
        }

    def pod_status(self, pod: str) -> dict[str, Any]:
        spec = self.pod(pod)
        return {
            "phase": "Running",
            "hostIP": self.node(spec.node).address,
            "hostIPs": [{"ip": self.node(spec.node).address}],
            "podIP": spec.ip,
            "podIPs": [{"ip": spec.ip}],
        }


def _node(name: str, last_octet: int, short: str, pod_subnet: int, **kw: Any) -> NodeSpec:
    return NodeSpec(
        name=name, address=f"172.18.0.{last_octet}", short=short, pod_cidr=f"10.244.{pod_subnet}.0/24", **kw
    )


REFERENCE = Scenario(
    nodes=(
        _node("kind-control-plane", 2, "cp", 0, control_plane=True),
        _node("kind-worker", 3, "w1", 1),
        _node("kind-worker2", 4, "w2", 2),
        _node("kind-worker3", 5, "w3", 3, gateway=True),
        _node("kind-worker4", 6, "w4", 4, gateway=True),
    ),
    pods=(
        PodSpec("xwing", "kind-worker", "10.244.1.2", {"org": "alliance", "class": "xwing"}),
        PodSpec("tiefighter", "kind-worker", "10.244.1.3", {"org": "empire", "class": "tiefighter"}),
        PodSpec("ywing", "kind-worker2", "10.244.2.2", {"org": "alliance", "class": "ywing"}),
    ),
    groups=(
        GroupSpec(
            name="outpost",
            egress_ips=("172.18.0.42", "172.18.0.43"),
            interface="net0",
            candidates=("kind-worker3", "kind-worker4"),
            # The selected pods (org=alliance): xwing and ywing, not tiefighter.
            source_cidrs=("10.244.1.2/32", "10.244.2.2/32"),
            destination_cidrs=(str(NODE_NETWORK),),
            # The bottom of the node network, around the control plane (illustrative).
            excluded_cidrs=("172.18.0.0/30",),
            pod_selector={"org": "alliance"},
        ),
    ),
    outpost=OutpostSpec(name="outpost", address="172.18.0.7", short="op", allowed=("172.18.0.42", "172.18.0.43")),
    api_node="kind-control-plane",
)
"""The walkthrough: four workers, kind-worker3/4 are the gateways, xwing and ywing are selected."""
