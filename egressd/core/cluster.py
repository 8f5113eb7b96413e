"""The cluster as egressd sees it in the Kubernetes mode, and its resolution
into egress groups.

:class:`Cluster` is a plain index of what the watches delivered:
``EgressGatewayPolicy`` objects (parsed, or the reasons they are invalid),
nodes, namespace labels and the pods that can send traffic. It does no I/O;
the runtime feeds it events (:meth:`Cluster.apply`) and relists
(:meth:`Cluster.replace`), and resolves again when one of them reports an
egressd-relevant change.

:func:`resolve` turns the index into what the rest of egressd consumes, the
same on every node given the same inputs:

1. Invalid policies get the outcome ``Invalid`` and are not served; so does a
   valid policy with an egress IP that is the address of a Node (any
   InternalIP or ExternalIP) or of a Pod: a gateway would take that address
   from its owner. The reason names the IP and the object.
2. Policies claim their egress IPs oldest first, by (creationTimestamp, name).
   A policy with an egress IP an older one claimed gets ``EgressIPConflict``
   and is not served at all; the older one keeps its IPs.
3. Each served policy's candidates are the nodes its nodeSelector matches
   that have an InternalIP (and are not cordoned, with ``exclude_cordoned``).
   None: ``NoCandidate``, and the group is still emitted, with no candidates.
4. A pod is selected when any item of ``spec.selectors`` matches it (pod labels
   and namespace labels). A pod selected by two served policies whose
   destination CIDRs overlap stays with the older one only (the younger's
   outcome lists it as dropped); with disjoint destinations both keep it.
5. Each group's sources are its pods' addresses of its egress IPs' families,
   as host networks, sorted.

:func:`policy_status` then renders a policy's ``.status`` from its outcome and
the leases of its egress IPs, deterministically, so every node computes the
same object and writes only when it differs from the stored one.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from egressd.core.addressing import canonical
from egressd.core.errors import ConfigError
from egressd.core.lease import LeaseRecord, format_microtime
from egressd.core.model import EgressGroup, IPAddress, IPNetwork
from egressd.core.policy import Policy, parse_policy, policy_name, problems_text
from egressd.core.selector import LabelSelector

Resource = Literal["policies", "nodes", "namespaces", "pods"]
RESOURCES: tuple[Resource, ...] = ("policies", "nodes", "namespaces", "pods")
EVENT_TYPES = ("ADDED", "MODIFIED", "DELETED")

PodKey = tuple[str, str]
"""(namespace, name)."""

NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
"""Set by the API server on every namespace; selectors may use it."""

# Outcome and condition reasons (CamelCase, as in Kubernetes conditions).
READY = "Ready"
INVALID = "Invalid"
EGRESS_IP_CONFLICT = "EgressIPConflict"
NO_CANDIDATE = "NoCandidate"
NOT_OWNED = "NotOwned"
OVERLAPPING_SELECTION = "OverlappingSelection"
AS_EXPECTED = "AsExpected"

_LISTED = 10
"""How many names a message lists before it says "and N more"."""


# --- what egressd keeps of each object -----------------------------------------


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
    meta = _mapping(obj.get("metadata"))
    spec = _mapping(obj.get("spec"))
    status = _mapping(obj.get("status"))
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
    meta = _mapping(obj.get("metadata"))
    spec = _mapping(obj.get("spec"))
    status = _mapping(obj.get("status"))
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
    meta = _mapping(obj.get("metadata"))
    name = meta.get("name")
    name = name if isinstance(name, str) else ""
    labels = _labels(meta)
    if name:
        labels.setdefault(NAMESPACE_NAME_LABEL, name)
    return name, labels


def _mapping(value: Any) -> Mapping[str, Any]:
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


def _order(ip: IPAddress) -> int:
    """Sort key of an address: IPv4 before IPv6, then numeric."""
    return ip.version << 128 | int(ip)


def _host(ip: IPAddress) -> IPNetwork:
    if ip.version == 4:
        return ipaddress.IPv4Network((int(ip), 32))
    return ipaddress.IPv6Network((int(ip), 128))


# --- the index -------------------------------------------------------------------


class Cluster:
    """Everything the watches delivered, indexed for :func:`resolve`.

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
        """Pods that can send traffic (see :func:`parse_pod`)."""
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
            node = parse_node(obj)
            if not node.name:
                return False
            if deleted:
                return self.nodes.pop(node.name, None) is not None
            old = self.nodes.get(node.name)
            self.nodes[node.name] = node
            return old != node
        if resource == "namespaces":
            name, labels = parse_namespace(obj)
            if not name:
                return False
            if deleted:
                return self.namespaces.pop(name, None) is not None
            old_labels = self.namespaces.get(name)
            self.namespaces[name] = labels
            return old_labels != labels
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
        meta = _mapping(obj.get("metadata"))
        version = meta.get("resourceVersion")
        self.resource_versions[name] = version if isinstance(version, str) else ""
        self.statuses[name] = _mapping(obj.get("status"))
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

    def _apply_pod(self, obj: Mapping[str, Any], *, deleted: bool) -> bool:
        meta = _mapping(obj.get("metadata"))
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

    def _label_sets(self, selector: LabelSelector) -> tuple[set[PodKey] | None, set[PodKey]]:
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

    def _namespace_pods(self, selector: LabelSelector) -> set[PodKey]:
        """Pods of the namespaces whose labels match (an unknown namespace has no labels)."""
        pods: set[PodKey] = set()
        for namespace, members in self._by_namespace.items():
            if selector.matches(self.namespaces.get(namespace, {})):
                pods.update(members)
        return pods


def _discard(index: dict[Any, set[PodKey]], key: Any, pod: PodKey) -> None:
    members = index.get(key)
    if members is not None:
        members.discard(pod)
        if not members:
            del index[key]


# --- resolution -------------------------------------------------------------------


@dataclass(frozen=True)
class PolicyOutcome:
    """What became of one policy, for its status, events and logs."""

    name: str
    valid: bool
    reason: str
    """``Ready``, ``NoCandidate``, ``EgressIPConflict`` or ``Invalid``."""
    message: str
    selected_pods: int = 0
    """Pods this policy serves (selected, with an address of its egress IPs'
    families, not left to an older policy)."""
    candidates: tuple[str, ...] = ()
    dropped_pods: tuple[str, ...] = ()
    """``namespace/name`` of pods also selected by an older policy with
    overlapping destinations, which keeps them."""
    generation: int = 0
    """``metadata.generation`` of the policy (also when it is invalid), the
    status's ``observedGeneration``."""

    @property
    def served(self) -> bool:
        """Whether the policy has a group (its egress IPs are elected)."""
        return self.reason in (READY, NO_CANDIDATE)


@dataclass(frozen=True)
class Resolution:
    """The cluster resolved into egress groups."""

    groups: tuple[EgressGroup, ...] = ()
    """One per served policy, by name."""
    outcomes: dict[str, PolicyOutcome] = field(default_factory=dict)
    """Every policy seen, valid or not, by name."""
    pod_nodes: dict[IPAddress, str] = field(default_factory=dict)
    """Each selected pod address -> the node the pod runs on."""

    def local_groups(self, node: str) -> tuple[EgressGroup, ...]:
        """The groups with their sources restricted to the pods on ``node``
        (what that node steers). Every group is kept, with the same egress
        IPs, so each source picks the same IP as in the full group."""
        return tuple(
            replace(g, source_cidrs=tuple(s for s in g.source_cidrs if self.pod_nodes.get(s.network_address) == node))
            for g in self.groups
        )


def resolve(cluster: Cluster, *, exclude_cordoned: bool = False) -> Resolution:
    """The groups the cluster's policies, pods and nodes amount to (see the
    module docstring for the rules)."""
    outcomes: dict[str, PolicyOutcome] = {}

    # 1. Invalid policies are reported and not served.
    for name, error in cluster.invalid.items():
        outcomes[name] = PolicyOutcome(
            name, False, INVALID, problems_text(error.problems), generation=cluster.generations.get(name, 0)
        )

    # 1b. An egress IP must not be a node's or a pod's address.
    node_ips: dict[IPAddress, list[str]] = {}
    for node in cluster.nodes.values():
        for address in node.addresses:
            node_ips.setdefault(canonical(address), []).append(node.name)
    served: list[Policy] = []
    claimed: dict[IPAddress, str] = {}
    for policy in sorted(cluster.policies.values(), key=lambda p: p.age_order):
        in_use = [
            f"egress IP {ip} is the address of {owner}"
            for ip in policy.egress_ips
            if (owner := _owner_of(cluster, node_ips, ip)) is not None
        ]
        if in_use:
            outcomes[policy.name] = PolicyOutcome(
                policy.name,
                False,
                INVALID,
                "; ".join(in_use) + "; an egress IP must not belong to a node or a pod; this policy is not served",
                generation=policy.generation,
            )
            continue
        # 2. Egress IPs go to the oldest policy that lists them.
        clashes = [(ip, claimed[ip]) for ip in policy.egress_ips if ip in claimed]
        if clashes:
            if len(clashes) == 1:
                ((ip, other),) = clashes
                what = f"egress IP {ip} is already claimed by older policy {other}"
            else:
                listed = ", ".join(f"{ip} (by {other})" for ip, other in clashes)
                what = f"egress IPs {listed} are already claimed by older policies"
            outcomes[policy.name] = PolicyOutcome(
                policy.name,
                True,
                EGRESS_IP_CONFLICT,
                f"{what} (older: earlier creationTimestamp, then name first); this policy is not served",
                generation=policy.generation,
            )
            continue
        claimed.update(dict.fromkeys(policy.egress_ips, policy.name))
        served.append(policy)

    # 3. Candidates: matching nodes with an address (and not cordoned, if asked).
    nodes = sorted(cluster.nodes.values(), key=lambda n: n.name)
    eligible = [n for n in nodes if n.address is not None and not (exclude_cordoned and n.unschedulable)]
    by_node_selector: dict[LabelSelector, tuple[str, ...]] = {}
    candidates: list[tuple[str, ...]] = []
    for policy in served:
        selector = policy.node_selector
        if selector not in by_node_selector:
            by_node_selector[selector] = tuple(n.name for n in eligible if selector.matches(n.labels))
        candidates.append(by_node_selector[selector])

    # 4. Selection: set operations on the pod index, cached per selector.
    everyone: set[PodKey] | None = None
    scopes: dict[LabelSelector, set[PodKey]] = {}
    label_sets: dict[LabelSelector, tuple[set[PodKey] | None, set[PodKey]]] = {}
    selections: list[set[PodKey]] = []
    for policy in served:
        selected: set[PodKey] = set()
        for item in policy.selectors:
            scope: set[PodKey] | None = None
            if item.namespaces is not None:
                if item.namespaces not in scopes:
                    scopes[item.namespaces] = cluster._namespace_pods(item.namespaces)
                scope = scopes[item.namespaces]
                if not scope:
                    continue
            matching: set[PodKey] | None = None
            excluded: set[PodKey] = set()
            if item.pods is not None:
                if item.pods not in label_sets:
                    label_sets[item.pods] = cluster._label_sets(item.pods)
                matching, excluded = label_sets[item.pods]
            if matching is None:
                if scope is None:
                    everyone = set(cluster.pods) if everyone is None else everyone
                    scope = everyone
                base = scope
            else:
                base = matching if scope is None else matching & scope
            selected |= base - excluded if excluded else base
        if len(policy.families) == 1:
            (family,) = policy.families
            selected &= cluster._by_family[family]
        selections.append(selected)

    # 5. A pod with two policies whose destinations overlap stays with the older.
    dropped: dict[int, dict[str, list[str]]] = {}
    for i, policy in enumerate(served):  # oldest first
        keep = selections[i]
        for j in range(i):
            older = served[j]
            if keep.isdisjoint(selections[j]) or not _any_overlap(older.destination_cidrs, policy.destination_cidrs):
                continue
            lost = keep & selections[j]
            keep = keep - lost
            dropped.setdefault(i, {})[older.name] = sorted(f"{ns}/{name}" for ns, name in lost)
        selections[i] = keep

    # 6. Groups: the pods' addresses of the policy's families, as host networks.
    groups: list[EgressGroup] = []
    steered: dict[int, set[PodKey]] = {4: set(), 6: set()}
    for i, policy in enumerate(served):
        keep = selections[i]
        sources: dict[int, IPNetwork] = {}
        for family in sorted(policy.families):
            members = keep & cluster._by_family[family]
            sources.update(map(cluster._hosts[family].__getitem__, members))
            steered[family] |= members
        groups.append(policy.group([sources[k] for k in sorted(sources)], candidates[i]))
        outcomes[policy.name] = _served_outcome(
            policy, len(keep), candidates[i], dropped.get(i, {}), exclude_cordoned=exclude_cordoned
        )
    groups.sort(key=lambda g: g.name)
    pod_nodes: dict[IPAddress, str] = {}
    for family, members in steered.items():
        pod_nodes.update(map(cluster._addresses[family].__getitem__, members))
    return Resolution(groups=tuple(groups), outcomes=outcomes, pod_nodes=pod_nodes)


def _owner_of(cluster: Cluster, node_ips: Mapping[IPAddress, list[str]], ip: IPAddress) -> str | None:
    """What ``ip`` is the address of (``node kind-worker3``, ``pod default/xwing``),
    or None."""
    key = canonical(ip)
    owners = [f"node {name}" for name in sorted(node_ips.get(key, ()))]
    owners += [f"pod {ns}/{name}" for ns, name in sorted(cluster._pods_by_ip.get(key, ()))]
    return _list(owners) if owners else None


def _served_outcome(
    policy: Policy,
    selected: int,
    candidates: tuple[str, ...],
    dropped: Mapping[str, list[str]],
    *,
    exclude_cordoned: bool,
) -> PolicyOutcome:
    if candidates:
        reason = READY
        parts = [
            f"{_count(selected, 'pod')} selected, {_count(len(candidates), 'candidate node')} ({_list(candidates)})"
        ]
    else:
        reason = NO_CANDIDATE
        cordon = " (cordoned nodes excluded)" if exclude_cordoned else ""
        parts = [
            f"no node matches nodeSelector {{{policy.node_selector}}} and has an InternalIP address{cordon}; "
            f"{_count(selected, 'pod')} selected"
        ]
    for winner, pods in sorted(dropped.items()):
        parts.append(
            f"{_count(len(pods), 'pod')} left to older policy {winner} whose destinationCIDRs overlap: {_list(pods)}"
        )
    return PolicyOutcome(
        policy.name,
        True,
        reason,
        "; ".join(parts),
        selected_pods=selected,
        candidates=candidates,
        dropped_pods=tuple(sorted(p for pods in dropped.values() for p in pods)),
        generation=policy.generation,
    )


def _any_overlap(a: Sequence[IPNetwork], b: Sequence[IPNetwork]) -> bool:
    return any(x.version == y.version and x.overlaps(y) for x in a for y in b)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _list(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_LISTED])
    return shown + (f" and {len(names) - _LISTED} more" if len(names) > _LISTED else "")


# --- status ------------------------------------------------------------------------


def policy_status(
    policy: Policy | None,
    outcome: PolicyOutcome,
    leases: Mapping[IPAddress, LeaseRecord | None],
    previous: Mapping[str, Any] | None,
    now: str,
) -> dict[str, Any]:
    """The ``.status`` egressd writes for a policy.

    ``leases`` holds the lease of each egress IP (None or missing: no lease
    yet); its ``transition_reason`` says why the holder last changed.
    ``previous`` is the stored status: a condition whose status did not change
    keeps its ``lastTransitionTime``, so the same inputs give the same object
    and a node writes only when something changed. ``now`` is the
    RFC 3339 time stamped on conditions that did change. Only served policies
    list their egress IPs.
    """
    generation = policy.generation if policy is not None else outcome.generation
    entries: list[dict[str, Any]] = []
    owners: list[str] = []
    unowned: list[str] = []
    if policy is not None and outcome.served:
        for ip in policy.egress_ips:
            record = leases.get(ip)
            holder = record.holder if record is not None and record.holder else ""
            entry: dict[str, Any] = {
                "egressIP": str(ip),
                "node": holder,
                "epoch": record.transitions if record is not None else 0,
            }
            if record is not None and record.acquire_time is not None:
                entry["lastTransitionTime"] = format_microtime(record.acquire_time)
            entry["reason"] = (record.transition_reason if record is not None else None) or ""
            entries.append(entry)
            if holder:
                owners.append(f"{ip} on {holder}")
            else:
                unowned.append(str(ip))
    not_owned = f"no node owns {_list(unowned)}" if unowned else ""

    # Ready: served, and every egress IP has an owner.
    if not outcome.served:
        ready = ("False", outcome.reason, outcome.message)
    elif outcome.reason == NO_CANDIDATE:
        ready = ("False", NO_CANDIDATE, outcome.message)
    elif unowned:
        ready = ("False", NOT_OWNED, not_owned)
    else:
        ready = ("True", READY, f"every egress IP has an owner: {_list(owners)}")

    # Degraded: served, but something keeps it from serving everything it could.
    degraded_reasons: list[str] = []
    if outcome.served:
        if outcome.reason == NO_CANDIDATE:
            degraded_reasons.append(NO_CANDIDATE)
        if unowned:
            degraded_reasons.append(NOT_OWNED)
        if outcome.dropped_pods:
            degraded_reasons.append(OVERLAPPING_SELECTION)
    if degraded_reasons:
        parts = [outcome.message] if degraded_reasons != [NOT_OWNED] else []
        degraded = ("True", degraded_reasons[0], "; ".join([*parts, not_owned] if unowned else parts))
    elif outcome.served:
        degraded = ("False", AS_EXPECTED, outcome.message)
    else:
        degraded = ("False", AS_EXPECTED, "not served (see condition Ready)")

    stored = (previous or {}).get("conditions")  # written by anyone: read defensively
    before = {
        c["type"]: c
        for c in (stored if isinstance(stored, list) else ())
        if isinstance(c, Mapping) and isinstance(c.get("type"), str)
    }
    conditions = []
    for kind, (status, reason, message) in (("Ready", ready), ("Degraded", degraded)):
        old = before.get(kind)
        since = now
        if old is not None and old.get("status") == status and isinstance(old.get("lastTransitionTime"), str):
            since = old["lastTransitionTime"]
        conditions.append(
            {
                "type": kind,
                "status": status,
                "reason": reason,
                "message": message,
                "lastTransitionTime": since,
                "observedGeneration": generation,
            }
        )
    return {
        "observedGeneration": generation,
        "selectedPods": outcome.selected_pods,
        "egressIPs": entries,
        "conditions": conditions,
    }
