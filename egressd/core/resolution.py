"""The Kubernetes mode's cluster index resolved into egress groups.

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
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from egressd.core.addressing import any_overlap, canonical
from egressd.core.cluster_index import Cluster
from egressd.core.kube_objects import PodKey
from egressd.core.model import EgressGroup, IPAddress, IPNetwork
from egressd.core.policy import Policy, PolicySelector, problems_text
from egressd.core.selector import LabelSelector

# Outcome reasons (CamelCase, as in Kubernetes conditions).
READY = "Ready"
INVALID = "Invalid"
EGRESS_IP_CONFLICT = "EgressIPConflict"
NO_CANDIDATE = "NoCandidate"

_LISTED = 10
"""How many names a message lists before it says "and N more"."""


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
    # 1. Invalid policies are reported and not served.
    outcomes: dict[str, PolicyOutcome] = {
        name: PolicyOutcome(
            name, False, INVALID, problems_text(error.problems), generation=cluster.generations.get(name, 0)
        )
        for name, error in cluster.invalid.items()
    }
    # 1b and 2. Egress IPs that are in use, or claimed by an older policy.
    served = _claim_egress_ips(cluster, outcomes)
    # 3. Candidates: matching nodes with an address (and not cordoned, if asked).
    candidates = _candidates(cluster, served, exclude_cordoned=exclude_cordoned)
    # 4. Selection: set operations on the pod index, cached per selector.
    pod_sets = _PodSets(cluster)
    selections = [pod_sets.selected_by(policy) for policy in served]
    # 5. A pod with two policies whose destinations overlap stays with the older.
    dropped = _leave_overlaps_to_older(served, selections)

    # 6. Groups: the pods' addresses of the policy's families, as host networks.
    groups: list[EgressGroup] = []
    steered: dict[int, set[PodKey]] = {4: set(), 6: set()}
    for i, policy in enumerate(served):
        keep = selections[i]
        sources: dict[int, IPNetwork] = {}
        for family in sorted(policy.families):
            members = keep & cluster.family_pods(family)
            sources.update(cluster.pod_hosts(family, members))
            steered[family] |= members
        groups.append(policy.group([sources[k] for k in sorted(sources)], candidates[i]))
        outcomes[policy.name] = _served_outcome(
            policy, len(keep), candidates[i], dropped.get(i, {}), exclude_cordoned=exclude_cordoned
        )
    groups.sort(key=lambda g: g.name)
    pod_nodes: dict[IPAddress, str] = {}
    for family, members in steered.items():
        pod_nodes.update(cluster.pod_addresses(family, members))
    return Resolution(groups=tuple(groups), outcomes=outcomes, pod_nodes=pod_nodes)


def _claim_egress_ips(cluster: Cluster, outcomes: dict[str, PolicyOutcome]) -> list[Policy]:
    """The valid policies that are served, oldest first (steps 1b and 2); the
    others get their ``Invalid`` or ``EgressIPConflict`` outcome in ``outcomes``."""
    node_ips: dict[IPAddress, list[str]] = {}
    for node in cluster.nodes.values():
        for address in node.addresses:
            node_ips.setdefault(canonical(address), []).append(node.name)
    served: list[Policy] = []
    claimed: dict[IPAddress, str] = {}
    for policy in sorted(cluster.policies.values(), key=lambda p: p.age_order):
        # 1b. An egress IP must not be a node's or a pod's address.
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
            outcomes[policy.name] = _conflict_outcome(policy, clashes)
            continue
        claimed.update(dict.fromkeys(policy.egress_ips, policy.name))
        served.append(policy)
    return served


def _conflict_outcome(policy: Policy, clashes: Sequence[tuple[IPAddress, str]]) -> PolicyOutcome:
    """``EgressIPConflict`` for ``policy``, naming each (egress IP, older policy)."""
    if len(clashes) == 1:
        ((ip, other),) = clashes
        what = f"egress IP {ip} is already claimed by older policy {other}"
    else:
        listed = ", ".join(f"{ip} (by {other})" for ip, other in clashes)
        what = f"egress IPs {listed} are already claimed by older policies"
    return PolicyOutcome(
        policy.name,
        True,
        EGRESS_IP_CONFLICT,
        f"{what} (older: earlier creationTimestamp, then name first); this policy is not served",
        generation=policy.generation,
    )


def _candidates(cluster: Cluster, served: Sequence[Policy], *, exclude_cordoned: bool) -> list[tuple[str, ...]]:
    """Each served policy's candidate nodes, by name (step 3), computed once
    per nodeSelector."""
    nodes = sorted(cluster.nodes.values(), key=lambda n: n.name)
    eligible = [n for n in nodes if n.address is not None and not (exclude_cordoned and n.unschedulable)]
    by_node_selector: dict[LabelSelector, tuple[str, ...]] = {}
    candidates: list[tuple[str, ...]] = []
    for policy in served:
        selector = policy.node_selector
        if selector not in by_node_selector:
            by_node_selector[selector] = tuple(n.name for n in eligible if selector.matches(n.labels))
        candidates.append(by_node_selector[selector])
    return candidates


class _PodSets:
    """The pod sets of one resolution (step 4): the index's answers, cached per
    selector, since many policies share a namespace or label selector."""

    def __init__(self, cluster: Cluster) -> None:
        self._cluster = cluster
        self._everyone: set[PodKey] | None = None
        self._scopes: dict[LabelSelector, set[PodKey]] = {}
        self._label_sets: dict[LabelSelector, tuple[set[PodKey] | None, set[PodKey]]] = {}

    def selected_by(self, policy: Policy) -> set[PodKey]:
        """The pods any item of the policy's ``spec.selectors`` matches, with an
        address of the policy's family when it has one family only."""
        selected: set[PodKey] = set()
        for item in policy.selectors:
            selected |= self._matched_by(item)
        if len(policy.families) == 1:
            (family,) = policy.families
            selected &= self._cluster.family_pods(family)
        return selected

    def _matched_by(self, item: PolicySelector) -> set[PodKey]:
        """The pods one selector item matches (a set the caller must not change)."""
        scope: set[PodKey] | None = None
        if item.namespaces is not None:
            scope = self._in_namespaces(item.namespaces)
            if not scope:
                return scope
        matching: set[PodKey] | None = None
        excluded: set[PodKey] = set()
        if item.pods is not None:
            matching, excluded = self._labelled(item.pods)
        if matching is None:
            base = self._all() if scope is None else scope
        else:
            base = matching if scope is None else matching & scope
        return base - excluded if excluded else base

    def _all(self) -> set[PodKey]:
        if self._everyone is None:
            self._everyone = set(self._cluster.pods)
        return self._everyone

    def _in_namespaces(self, selector: LabelSelector) -> set[PodKey]:
        if selector not in self._scopes:
            self._scopes[selector] = self._cluster.namespace_pods(selector)
        return self._scopes[selector]

    def _labelled(self, selector: LabelSelector) -> tuple[set[PodKey] | None, set[PodKey]]:
        if selector not in self._label_sets:
            self._label_sets[selector] = self._cluster.label_sets(selector)
        return self._label_sets[selector]


def _leave_overlaps_to_older(
    served: Sequence[Policy], selections: list[set[PodKey]]
) -> dict[int, dict[str, list[str]]]:
    """Step 5: removes from each policy's selection the pods an older policy with
    overlapping destinations also selects. Returns, by index into ``served``,
    the pods each policy left to each older policy (``namespace/name``, sorted)."""
    dropped: dict[int, dict[str, list[str]]] = {}
    for i, policy in enumerate(served):  # oldest first
        keep = selections[i]
        for j in range(i):
            older = served[j]
            if keep.isdisjoint(selections[j]) or not any_overlap(older.destination_cidrs, policy.destination_cidrs):
                continue
            lost = keep & selections[j]
            keep = keep - lost
            dropped.setdefault(i, {})[older.name] = sorted(f"{ns}/{name}" for ns, name in lost)
        selections[i] = keep
    return dropped


def _owner_of(cluster: Cluster, node_ips: Mapping[IPAddress, list[str]], ip: IPAddress) -> str | None:
    """What ``ip`` is the address of (``node kind-worker3``, ``pod default/xwing``),
    or None."""
    key = canonical(ip)
    owners = [f"node {name}" for name in sorted(node_ips.get(key, ()))]
    owners += [f"pod {ns}/{name}" for ns, name in sorted(cluster.pods_with_address(key))]
    return name_list(owners) if owners else None


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
            f"{_count(selected, 'pod')} selected, {_count(len(candidates), 'candidate node')} ({name_list(candidates)})"
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
            f"{_count(len(pods), 'pod')} left to older policy {winner} whose destinationCIDRs overlap: "
            f"{name_list(pods)}"
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


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def name_list(names: Sequence[str]) -> str:
    """Names joined with commas, the first few only, then "and N more"."""
    shown = ", ".join(names[:_LISTED])
    return shown + (f" and {len(names) - _LISTED} more" if len(names) > _LISTED else "")
