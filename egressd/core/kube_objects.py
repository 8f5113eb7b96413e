"""The Kubernetes objects egressd watches in the Kubernetes mode, read into
what egressd keeps of them.

Pods, nodes and namespaces are parsed defensively (objects are written by
anyone): a pod that cannot send traffic through a gateway parses to None, a
field of the wrong type counts as absent. ``EgressGatewayPolicy`` objects are
:mod:`egressd.core.policy`'s.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from egressd.core.model import IPAddress

Resource = Literal["policies", "nodes", "namespaces", "pods"]
RESOURCES: tuple[Resource, ...] = ("policies", "nodes", "namespaces", "pods")
EVENT_TYPES = ("ADDED", "MODIFIED", "DELETED")

PodKey = tuple[str, str]
"""(namespace, name)."""

NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
"""Set by the API server on every namespace; selectors may use it."""


@dataclass(frozen=True)
class PodInfo:
    """A pod that can send traffic: it has an address, runs, and is not on the
    host network."""

    namespace: str
    name: str
    node: str
    """``spec.nodeName``; the node that steers this pod's traffic."""
    ips: tuple[IPAddress, ...]
    labels: Mapping[str, str]

    @property
    def key(self) -> PodKey:
        return (self.namespace, self.name)


@dataclass(frozen=True)
class NodeInfo:
    """What a node contributes to candidacy."""

    name: str
    labels: Mapping[str, str]
    address: IPAddress | None
    """First ``InternalIP`` of ``status.addresses``; a node without one cannot
    be a gateway (steering nodes route to this address)."""
    unschedulable: bool = False
    """``spec.unschedulable`` (cordoned)."""
    addresses: tuple[IPAddress, ...] = ()
    """Every ``InternalIP`` and ``ExternalIP`` of ``status.addresses``: none of
    them may be an egress IP."""


def parse_pod(obj: Mapping[str, Any]) -> PodInfo | None:
    """The pod as egressd needs it, or None for a pod that cannot send traffic
    through a gateway: no address yet, finished (``Succeeded``/``Failed``),
    being deleted, or on the host network (it shares the node's address and
    cannot be told apart from the node)."""
    meta = as_mapping(obj.get("metadata"))
    spec = as_mapping(obj.get("spec"))
    status = as_mapping(obj.get("status"))
    namespace, name = meta.get("namespace"), meta.get("name")
    if not isinstance(namespace, str) or not isinstance(name, str) or not namespace or not name:
        return None
    if meta.get("deletionTimestamp") or spec.get("hostNetwork") is True:
        return None
    if status.get("phase") in ("Succeeded", "Failed"):
        return None
    raw: list[Any] = []
    pod_ips = status.get("podIPs")
    if isinstance(pod_ips, list):
        raw = [item.get("ip") for item in pod_ips if isinstance(item, Mapping)]
    if not raw and status.get("podIP"):
        raw = [status.get("podIP")]
    ips = tuple(dict.fromkeys(ip for text in raw if (ip := _ip(text)) is not None))
    if not ips:
        return None
    node = spec.get("nodeName")
    return PodInfo(
        namespace=namespace,
        name=name,
        node=node if isinstance(node, str) else "",
        ips=ips,
        labels=_labels(meta),
    )


def parse_node(obj: Mapping[str, Any]) -> NodeInfo:
    """The node's labels, first InternalIP and cordon flag (name ``""`` if the
    object has none)."""
    meta = as_mapping(obj.get("metadata"))
    spec = as_mapping(obj.get("spec"))
    status = as_mapping(obj.get("status"))
    address: IPAddress | None = None
    owned: list[IPAddress] = []
    addresses = status.get("addresses")
    for item in addresses if isinstance(addresses, list) else ():
        if not isinstance(item, Mapping) or item.get("type") not in ("InternalIP", "ExternalIP"):
            continue
        parsed = _ip(item.get("address"))
        if parsed is None:
            continue
        owned.append(parsed)
        if address is None and item.get("type") == "InternalIP":
            address = parsed
    name = meta.get("name")
    return NodeInfo(
        name=name if isinstance(name, str) else "",
        labels=_labels(meta),
        address=address,
        unschedulable=spec.get("unschedulable") is True,
        addresses=tuple(dict.fromkeys(owned)),
    )


def parse_namespace(obj: Mapping[str, Any]) -> tuple[str, dict[str, str]]:
    """(name, labels) of a namespace, with ``kubernetes.io/metadata.name`` set
    as the API server does (name ``""`` if the object has none)."""
    meta = as_mapping(obj.get("metadata"))
    name = meta.get("name")
    name = name if isinstance(name, str) else ""
    labels = _labels(meta)
    if name:
        labels.setdefault(NAMESPACE_NAME_LABEL, name)
    return name, labels


def as_mapping(value: Any) -> Mapping[str, Any]:
    """``value`` if it is a mapping, else an empty one: objects are written by
    anyone, so every nested field is read defensively."""
    return value if isinstance(value, Mapping) else {}


def _labels(meta: Mapping[str, Any]) -> dict[str, str]:
    labels = meta.get("labels")
    if not isinstance(labels, Mapping):
        return {}
    return {k: v for k, v in labels.items() if isinstance(k, str) and isinstance(v, str)}


def _ip(value: Any) -> IPAddress | None:
    if not isinstance(value, str):
        return None
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None
