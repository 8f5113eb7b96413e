"""The cluster as egressd sees it in the Kubernetes mode: an incremental index
of what the watches delivered.

:class:`Cluster` holds ``EgressGatewayPolicy`` objects (parsed, or the reasons
they are invalid), nodes, namespace labels and the pods that can send traffic.
It does no I/O; the runtime feeds it events (:meth:`Cluster.apply`) and
relists (:meth:`Cluster.replace`), and resolves again
(:func:`egressd.core.resolution.resolve`) when one of them reports an
egressd-relevant change. Resolution reads it through its public attributes and
methods only.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator, Mapping, Set
from dataclasses import replace
from typing import Any

from egressd.core.addressing import canonical
from egressd.core.errors import ConfigError
from egressd.core.kube_objects import (
    EVENT_TYPES,
    RESOURCES,
    NodeInfo,
    PodInfo,
    PodKey,
    as_mapping,
    parse_namespace,
    parse_node,
    parse_pod,
)
from egressd.core.model import IPAddress, IPNetwork
from egressd.core.policy import Policy, parse_policy, policy_name
from egressd.core.selector import LabelSelector


class Cluster:
    """Everything the watches delivered, indexed for
    :func:`~egressd.core.resolution.resolve`.

    Pods are also indexed by namespace, by label key and by (key, value), so
    resolving a selector starts from the few pods that can match it instead of
    testing every pod against every selector.
    """

    def __init__(self) -> None:
        self.policies: dict[str, Policy] = {}
        """Valid policies by name."""
        self.invalid: dict[str, ConfigError] = {}
        """Policies that failed validation, by name, with every problem."""
        self.generations: dict[str, int] = {}
        """``metadata.generation`` of every policy, valid or not."""
        self.resource_versions: dict[str, str] = {}
        """Latest ``metadata.resourceVersion`` of every policy, valid or not
        (the precondition of a status write)."""
        self.statuses: dict[str, Mapping[str, Any]] = {}
        """``.status`` of every policy as last seen (``{}`` if it has none)."""
        self.nodes: dict[str, NodeInfo] = {}
        self.namespaces: dict[str, dict[str, str]] = {}
        """Namespace labels by namespace name."""
        self.pods: dict[PodKey, PodInfo] = {}
        """Pods that can send traffic (see :func:`~egressd.core.kube_objects.parse_pod`)."""
        self._by_namespace: dict[str, set[PodKey]] = {}
        self._by_key: dict[str, set[PodKey]] = {}
        self._by_label: dict[tuple[str, str], set[PodKey]] = {}
        self._by_family: dict[int, set[PodKey]] = {4: set(), 6: set()}
        self._hosts: dict[int, dict[PodKey, tuple[int, IPNetwork]]] = {4: {}, 6: {}}
        """Per family: pod -> (sort key, host network of its address)."""
        self._addresses: dict[int, dict[PodKey, tuple[IPAddress, str]]] = {4: {}, 6: {}}
        """Per family: pod -> (its address, its node)."""
        self._pods_by_ip: dict[IPAddress, set[PodKey]] = {}
        """Every address of every pod (IPv4-mapped ones as IPv4) -> the pods
        that have it: an egress IP must not be one."""

    # -- events ---------------------------------------------------------------

    def apply(self, resource: str, event_type: str, obj: Mapping[str, Any]) -> bool:
        """Record one watch event; True when it changed something that can
        change the resolution (a pod's annotations or conditions, a node's
        heartbeat or a policy's status do not)."""
        if resource not in RESOURCES:
            raise ValueError(f"unknown resource {resource!r}, expected one of {', '.join(RESOURCES)}")
        if event_type not in EVENT_TYPES:
            raise ValueError(f"unknown event type {event_type!r}, expected one of {', '.join(EVENT_TYPES)}")
        deleted = event_type == "DELETED"
        if resource == "policies":
            return self._apply_policy(obj, deleted=deleted)
        if resource == "nodes":
            return self._apply_node(obj, deleted=deleted)
        if resource == "namespaces":
            return self._apply_namespace(obj, deleted=deleted)
        return self._apply_pod(obj, deleted=deleted)

    def replace(self, resource: str, objs: Iterable[Mapping[str, Any]]) -> bool:
        """Replace everything known of ``resource`` by a full list (after a
        reconnect or a resync); True when that changed anything relevant."""
        if resource not in RESOURCES:
            raise ValueError(f"unknown resource {resource!r}, expected one of {', '.join(RESOURCES)}")
        if resource == "policies":
            before = self._policy_state()
            for store in (self.policies, self.invalid, self.generations, self.resource_versions, self.statuses):
                store.clear()
            for obj in objs:
                self._apply_policy(obj, deleted=False)
            return self._policy_state() != before
        if resource == "nodes":
            nodes = {n.name: n for n in map(parse_node, objs) if n.name}
            changed = nodes != self.nodes
            self.nodes.clear()
            self.nodes.update(nodes)
            return changed
        if resource == "namespaces":
            namespaces = dict(parse_namespace(obj) for obj in objs)
            namespaces.pop("", None)
            changed = namespaces != self.namespaces
            self.namespaces.clear()
            self.namespaces.update(namespaces)
            return changed
        pods = {p.key: p for p in map(parse_pod, objs) if p is not None}
        if pods == self.pods:
            return False
        for key in list(self.pods):
            if key not in pods:
                self._remove_pod(key)
        for key, pod in pods.items():
            if self.pods.get(key) != pod:
                self._put_pod(pod)
        return True

    def _apply_policy(self, obj: Mapping[str, Any], *, deleted: bool) -> bool:
        name = policy_name(obj)
        if name is None:
            return False
        if deleted:
            existed = name in self.policies or name in self.invalid
            for store in (self.policies, self.invalid, self.generations, self.resource_versions, self.statuses):
                store.pop(name, None)
            return existed
        meta = as_mapping(obj.get("metadata"))
        version = meta.get("resourceVersion")
        self.resource_versions[name] = version if isinstance(version, str) else ""
        self.statuses[name] = as_mapping(obj.get("status"))
        generation = meta.get("generation")
        generation = generation if isinstance(generation, int) and not isinstance(generation, bool) else 0
        old_generation = self.generations.get(name)
        self.generations[name] = generation
        try:
            policy = parse_policy(obj)
        except ConfigError as exc:
            old_error = self.invalid.get(name)
            self.invalid[name] = exc
            was_valid = self.policies.pop(name, None) is not None
            return was_valid or old_error is None or old_error.problems != exc.problems or old_generation != generation
        self.invalid.pop(name, None)
        old = self.policies.get(name)
        self.policies[name] = policy
        return old is None or replace(old, resource_version=policy.resource_version) != policy

    def _policy_state(self) -> tuple[Any, ...]:
        """What of the policies matters to the resolution (not their
        resourceVersion or status)."""
        return (
            {n: replace(p, resource_version="") for n, p in self.policies.items()},
            {n: e.problems for n, e in self.invalid.items()},
            dict(self.generations),
        )

    def _apply_node(self, obj: Mapping[str, Any], *, deleted: bool) -> bool:
        node = parse_node(obj)
        if not node.name:
            return False
        if deleted:
            return self.nodes.pop(node.name, None) is not None
        old = self.nodes.get(node.name)
        self.nodes[node.name] = node
        return old != node

    def _apply_namespace(self, obj: Mapping[str, Any], *, deleted: bool) -> bool:
        name, labels = parse_namespace(obj)
        if not name:
            return False
        if deleted:
            return self.namespaces.pop(name, None) is not None
        old_labels = self.namespaces.get(name)
        self.namespaces[name] = labels
        return old_labels != labels

    def _apply_pod(self, obj: Mapping[str, Any], *, deleted: bool) -> bool:
        meta = as_mapping(obj.get("metadata"))
        key = (str(meta.get("namespace")), str(meta.get("name")))
        pod = None if deleted else parse_pod(obj)
        if pod is None:
            if key in self.pods:
                self._remove_pod(key)
                return True
            return False
        if self.pods.get(pod.key) == pod:
            return False
        self._put_pod(pod)
        return True

    def _put_pod(self, pod: PodInfo) -> None:
        key = pod.key
        if key in self.pods:
            self._remove_pod(key)
        self.pods[key] = pod
        self._by_namespace.setdefault(pod.namespace, set()).add(key)
        for label, value in pod.labels.items():
            self._by_key.setdefault(label, set()).add(key)
            self._by_label.setdefault((label, value), set()).add(key)
        for ip in pod.ips:
            self._pods_by_ip.setdefault(canonical(ip), set()).add(key)
        for ip in pod.ips:  # Kubernetes gives a pod at most one address per family
            if key not in self._hosts[ip.version]:
                self._hosts[ip.version][key] = (_order(ip), _host(ip))
                self._addresses[ip.version][key] = (ip, pod.node)
                self._by_family[ip.version].add(key)

    def _remove_pod(self, key: PodKey) -> None:
        pod = self.pods.pop(key)
        _discard(self._by_namespace, pod.namespace, key)
        for ip in pod.ips:
            _discard(self._pods_by_ip, canonical(ip), key)
        for label, value in pod.labels.items():
            _discard(self._by_key, label, key)
            _discard(self._by_label, (label, value), key)
        for family in (4, 6):
            self._hosts[family].pop(key, None)
            self._addresses[family].pop(key, None)
            self._by_family[family].discard(key)

    # -- selection ------------------------------------------------------------

    def label_sets(self, selector: LabelSelector) -> tuple[set[PodKey] | None, set[PodKey]]:
        """The pods (of any namespace) that meet the positive requirements of
        ``selector`` (matchLabels, In, Exists; None if it has none), and those
        its negative requirements exclude (NotIn, DoesNotExist). Set operations
        on the index, exact by the definitions of the operators: no pod's labels
        are tested one by one."""
        required: list[set[PodKey]] = [self._by_label.get(pair, set()) for pair in selector.match_labels.items()]
        excluded: set[PodKey] = set()
        for e in selector.match_expressions:
            if e.operator == "Exists":
                required.append(self._by_key.get(e.key, set()))
            elif e.operator == "DoesNotExist":
                excluded.update(self._by_key.get(e.key, ()))
            else:
                union: set[PodKey] = set()
                for value in e.values:
                    union.update(self._by_label.get((e.key, value), ()))
                if e.operator == "In":
                    required.append(union)
                else:
                    excluded.update(union)
        if not required:
            return None, excluded
        required.sort(key=len)
        matching = set(required[0])
        for more in required[1:]:
            matching.intersection_update(more)
        return matching, excluded

    def namespace_pods(self, selector: LabelSelector) -> set[PodKey]:
        """Pods of the namespaces whose labels match (an unknown namespace has no labels)."""
        pods: set[PodKey] = set()
        for namespace, members in self._by_namespace.items():
            if selector.matches(self.namespaces.get(namespace, {})):
                pods.update(members)
        return pods

    def family_pods(self, family: int) -> Set[PodKey]:
        """The pods with an address of IP version ``family`` (read only)."""
        return self._by_family[family]

    def pod_hosts(self, family: int, pods: Iterable[PodKey]) -> Iterator[tuple[int, IPNetwork]]:
        """For each of ``pods`` (all of :meth:`family_pods`), its address of
        ``family`` as (sort key: IPv4 before IPv6, then numeric; host network)."""
        return map(self._hosts[family].__getitem__, pods)

    def pod_addresses(self, family: int, pods: Iterable[PodKey]) -> Iterator[tuple[IPAddress, str]]:
        """For each of ``pods`` (all of :meth:`family_pods`), its address of
        ``family`` and the node it runs on."""
        return map(self._addresses[family].__getitem__, pods)

    def pods_with_address(self, ip: IPAddress) -> Set[PodKey]:
        """The pods that have ``ip`` (IPv4-mapped as IPv4: pass it
        :func:`~egressd.core.addressing.canonical`)."""
        return self._pods_by_ip.get(ip, frozenset())


def _discard(index: dict[Any, set[PodKey]], key: Any, pod: PodKey) -> None:
    members = index.get(key)
    if members is not None:
        members.discard(pod)
        if not members:
            del index[key]


def _order(ip: IPAddress) -> int:
    """Sort key of an address: IPv4 before IPv6, then numeric."""
    return ip.version << 128 | int(ip)


def _host(ip: IPAddress) -> IPNetwork:
    if ip.version == 4:
        return ipaddress.IPv4Network((int(ip), 32))
    return ipaddress.IPv6Network((int(ip), 128))
