"""``EgressGatewayPolicy`` objects (``egressd.io/v1alpha1``, cluster-scoped),
validated into frozen :class:`Policy` values.

The shape follows ``CiliumEgressGatewayPolicy``::

    metadata: {name: outpost, generation: 3, creationTimestamp: ..., ...}
    spec:
      selectors:                       # at least one; a pod is selected when ANY item matches
      - podSelector: {matchLabels: {org: alliance}}      # absent: any pod
        namespaceSelector: {matchLabels: {...}}          # absent: any namespace
      destinationCIDRs: ["172.18.0.0/16"]
      excludedCIDRs: ["172.18.0.0/30"]                   # optional
      egressGateway:
        nodeSelector: {matchLabels: {egress-gw: "true"}}
        interface: net0
        egressIPs: ["172.18.0.42", "172.18.0.43"]

The network rules are those of a static config group (same reader, same
checks), so a policy and a group with the same fields are equally valid.
Unknown keys in ``spec`` are problems even though the CRD's schema prunes
them: the lab server and an outdated CRD may not, and a misspelt
``excludedCIDR`` must not silently steer more than intended.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from egressd.core.addressing import canonical, egress_ip_problem, subnet_edge_problem
from egressd.core.errors import ConfigError, Problem
from egressd.core.fields import Reader, check_networks, cidrs
from egressd.core.model import EgressGroup, IPAddress, IPNetwork
from egressd.core.selector import DNS_SUBDOMAIN, LabelSelector, parse_selector

GROUP = "egressd.io"
VERSION = "v1alpha1"
KIND = "EgressGatewayPolicy"
PLURAL = "egressgatewaypolicies"

NAME_MAX = 200
"""Longest policy name. egressd derives nftables object names from it; 200
leaves room for its prefixes and suffixes within nftables' 256-byte limit."""

_SPEC_KEYS = ("selectors", "destinationCIDRs", "excludedCIDRs", "egressGateway")
_SELECTOR_ITEM_KEYS = ("podSelector", "namespaceSelector")
_GATEWAY_KEYS = ("nodeSelector", "interface", "egressIPs")


@dataclass(frozen=True)
class PolicySelector:
    """One item of ``spec.selectors``. None means "any" (the field is absent);
    at least one of the two is set."""

    pods: LabelSelector | None = None
    namespaces: LabelSelector | None = None

    def __str__(self) -> str:
        pods = "any pod" if self.pods is None else f"pods {{{self.pods}}}"
        namespaces = "any namespace" if self.namespaces is None else f"namespaces {{{self.namespaces}}}"
        return f"{pods} in {namespaces}"


@dataclass(frozen=True)
class Policy:
    """A validated ``EgressGatewayPolicy``."""

    name: str
    uid: str
    generation: int
    """``metadata.generation``; the status reports it as ``observedGeneration``."""
    created: str
    """``metadata.creationTimestamp`` as written by the API server (RFC 3339,
    so string order is time order), ``""`` if absent. With the name it orders
    policies: the older one wins an egress IP or a pod both claim."""
    resource_version: str
    selectors: tuple[PolicySelector, ...]
    destination_cidrs: tuple[IPNetwork, ...]
    excluded_cidrs: tuple[IPNetwork, ...]
    node_selector: LabelSelector
    interface: str
    egress_ips: tuple[IPAddress, ...]

    @property
    def age_order(self) -> tuple[str, str]:
        """Sort key, oldest first: (creationTimestamp, name)."""
        return (self.created, self.name)

    @property
    def families(self) -> frozenset[int]:
        """IP versions of the egress IPs: the pod addresses this policy can serve."""
        return frozenset(ip.version for ip in self.egress_ips)

    def group(self, sources: Sequence[IPNetwork], candidates: Sequence[str]) -> EgressGroup:
        """The egress group this policy resolves to, given its selected pods'
        addresses and its candidate nodes (so ``node_selector`` stays empty)."""
        return EgressGroup(
            name=self.name,
            egress_ips=self.egress_ips,
            interface=self.interface,
            candidates=tuple(candidates),
            source_cidrs=tuple(sources),
            destination_cidrs=self.destination_cidrs,
            excluded_cidrs=self.excluded_cidrs,
        )


def policy_name(obj: Mapping[str, Any]) -> str | None:
    """``metadata.name`` of an object, or None if it has none."""
    meta = obj.get("metadata")
    name = meta.get("name") if isinstance(meta, Mapping) else None
    return name if isinstance(name, str) and name else None


def parse_policy(obj: Mapping[str, Any]) -> Policy:
    """Validate an ``EgressGatewayPolicy`` object, or raise :class:`ConfigError`
    (source ``EgressGatewayPolicy <name>``) listing every problem with its
    field path (``spec.egressGateway.egressIPs[1]``)."""
    r = Reader()
    meta = obj.get("metadata")
    meta = meta if isinstance(meta, Mapping) else {}
    name = _name(r, meta.get("name"))
    generation = meta.get("generation", 0)
    if not isinstance(generation, int) or isinstance(generation, bool):
        r.problem("metadata.generation", f"must be an integer, got {generation!r}")
        generation = 0

    if not isinstance(obj.get("spec"), Mapping):
        r.mapping(obj.get("spec"), "spec", _SPEC_KEYS)
        if obj.get("spec") is None:
            r.problem("spec", "is required")
        raise ConfigError(r.problems, f"{KIND} {name or '<unnamed>'}")
    spec = r.mapping(obj.get("spec"), "spec", _SPEC_KEYS)
    selectors = _selectors(r, spec.get("selectors"))
    destinations = cidrs(r, spec.get("destinationCIDRs"), "spec.destinationCIDRs", required=True)
    excluded = cidrs(r, spec.get("excludedCIDRs"), "spec.excludedCIDRs")

    node_selector, interface, egress_ips = _gateway(r, spec.get("egressGateway"), (*destinations, *excluded))

    # relations between fields, on whatever parsed: every problem in one report
    draft = EgressGroup(
        name=name,
        egress_ips=egress_ips,
        interface=interface,
        destination_cidrs=destinations,
        excluded_cidrs=excluded,
    )
    check_networks(r, "spec", draft)
    if r.problems:
        raise ConfigError(r.problems, f"{KIND} {name or '<unnamed>'}")
    assert node_selector is not None
    return Policy(
        name=name,
        uid=_text(meta.get("uid")),
        generation=generation,
        created=_text(meta.get("creationTimestamp")),
        resource_version=_text(meta.get("resourceVersion")),
        selectors=selectors,
        destination_cidrs=destinations,
        excluded_cidrs=excluded,
        node_selector=node_selector,
        interface=interface,
        egress_ips=egress_ips,
    )


def _name(r: Reader, name: Any) -> str:
    """``metadata.name``, a DNS subdomain (``""`` when absent)."""
    if not isinstance(name, str) or not name:
        r.problem("metadata.name", "is required")
        return ""
    if len(name) > NAME_MAX or not DNS_SUBDOMAIN.match(name):
        r.problem(
            "metadata.name",
            f"must be a DNS subdomain (lower case, digits, '-', '.') of at most {NAME_MAX} characters, got {name!r}",
        )
    return name


def _gateway(
    r: Reader, value: Any, networks: Sequence[IPNetwork]
) -> tuple[LabelSelector | None, str, tuple[IPAddress, ...]]:
    """``spec.egressGateway``: its node selector, interface and egress IPs (which
    must not be the edge of one of ``networks``, its destination and excluded CIDRs)."""
    gw_path = "spec.egressGateway"
    has_gateway = value is not None
    if not has_gateway:
        r.problem(gw_path, "is required (nodeSelector, interface, egressIPs)")
    gateway = r.mapping(value, gw_path, _GATEWAY_KEYS)
    node_selector, problems = parse_selector(gateway.get("nodeSelector"), f"{gw_path}.nodeSelector")
    r.problems.extend(problems)
    if has_gateway and gateway.get("nodeSelector") is None:
        r.problem(f"{gw_path}.nodeSelector", "is required ({} selects every node)")
    interface = r.interface(gateway.get("interface"), f"{gw_path}.interface", required=has_gateway)
    egress_ips = _egress_ips(r, gateway.get("egressIPs"), f"{gw_path}.egressIPs", networks, required=has_gateway)
    return node_selector, interface, egress_ips


def _selectors(r: Reader, value: Any) -> tuple[PolicySelector, ...]:
    out: list[PolicySelector] = []
    for path, item in r.items(value, "spec.selectors", required=True):
        if not isinstance(item, Mapping):
            r.problem(path, f"must be a mapping with podSelector and/or namespaceSelector, got {item!r}")
            continue
        m = r.mapping(item, path, _SELECTOR_ITEM_KEYS)
        pods, pod_problems = parse_selector(m.get("podSelector"), f"{path}.podSelector")
        namespaces, ns_problems = parse_selector(m.get("namespaceSelector"), f"{path}.namespaceSelector")
        r.problems.extend(pod_problems + ns_problems)
        if m.get("podSelector") is None and m.get("namespaceSelector") is None:
            r.problem(path, "needs podSelector, namespaceSelector or both (podSelector: {} selects every pod)")
        out.append(PolicySelector(pods, namespaces))
    return tuple(out)


def _egress_ips(
    r: Reader, value: Any, path: str, networks: Sequence[IPNetwork], *, required: bool
) -> tuple[IPAddress, ...]:
    seen: dict[IPAddress, str] = {}
    out: list[IPAddress] = []
    for where, item in r.items(value, path, required=required):
        ip = r.ip(item, where)
        if ip is None:
            continue
        key = canonical(ip)
        if key in seen:
            twin = "" if key == ip else f" (the IPv4-mapped form of {key})"
            r.problem(where, f"{ip}{twin} is listed twice (also at {seen[key]})")
            continue
        if (why := egress_ip_problem(ip)) is not None:
            r.problem(where, why)
        elif (why := subnet_edge_problem(ip, networks)) is not None:
            r.problem(where, f"{why}; it cannot be an egress IP")
        seen[key] = where
        out.append(ip)
    return tuple(out)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def problems_text(problems: Sequence[Problem]) -> str:
    """Problems on one line, for a condition message: ``field: message; ...``."""
    return "; ".join(str(p) for p in problems)
