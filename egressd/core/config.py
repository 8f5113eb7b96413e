"""The config file of one egressd node, read into :class:`~egressd.core.model.Settings`.

The config file is YAML (loaded elsewhere); this module turns the loaded
mapping into frozen dataclasses or raises :class:`ConfigError` listing *every*
problem, each located by its dotted field path (``groups[0].egressIPs[1]``).

Keys are camelCase, like Kubernetes objects, and the group keys are the field
names of the ``EgressGatewayPolicy`` CRD (``egressIPs``, ``interface``,
``destinationCIDRs``, ``excludedCIDRs``) plus ``sourceCIDRs`` for the static
mode, so one vocabulary serves both.

Durations are seconds (a number) or a string with a unit: ``"250ms"``,
``"2.5s"``, ``"1m"``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from egressd.core import rights
from egressd.core.addressing import (
    any_overlap,
    canonical,
    egress_ip_problem,
    node_address_problem,
    subnet_edge_problem,
)
from egressd.core.conntrack_settings import parse_conntrack
from egressd.core.errors import ConfigError, Problem
from egressd.core.fields import Reader, check_networks, cidrs
from egressd.core.mesh_settings import parse_mesh
from egressd.core.model import (
    TIMING_KEYS,
    EgressGroup,
    IPAddress,
    KubeSettings,
    MetricsSettings,
    NodeSettings,
    Settings,
    Timing,
)
from egressd.core.mqtt_settings import parse_mqtt

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")

_TOP_KEYS = ("node", "mode", "kubernetes", "timing", "groups", "metrics", "mqtt", "mesh", "conntrack")
_NODE_KEYS = ("name", "address")
_KUBE_KEYS = ("namespace", "access", "kubeconfig", "url", "tokenFile", "caFile", "excludeCordoned")
_GROUP_KEYS = (
    "name",
    "egressIPs",
    "interface",
    "candidates",
    "nodeSelector",
    "sourceCIDRs",
    "destinationCIDRs",
    "excludedCIDRs",
)


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


ENV_DEPTH_MAX = 64
"""Deepest nesting :func:`expand_env` walks (egressd's schema needs 6); below
it a value is left as it is and reported, so no input can exhaust the stack."""


def expand_env(data: Any, env: Mapping[str, str], path: str = "") -> tuple[Any, list[Problem]]:
    """Replace ``${NAME}`` in every string of a loaded config by ``env[NAME]``.

    For a DaemonSet, one config serves every node: ``node: {name: ${NODE_NAME},
    address: ${NODE_IP}}`` with both set from the downward API. A reference to
    a variable that is not set is a problem naming the field; ``$${`` is not
    special (write no literal ``${`` in a config). Nesting deeper than
    :data:`ENV_DEPTH_MAX` is a problem too."""
    problems: list[Problem] = []

    def walk(value: Any, where: str, depth: int) -> Any:
        if isinstance(value, str):

            def sub(match: re.Match[str]) -> str:
                name = match.group(1)
                if name not in env:
                    problems.append(Problem(where or "config", f"environment variable {name} is not set"))
                    return match.group(0)
                return env[name]

            return _ENV_REF.sub(sub, value)
        if isinstance(value, Mapping | list) and depth >= ENV_DEPTH_MAX:
            problems.append(Problem(where or "config", f"nested deeper than {ENV_DEPTH_MAX} levels"))
            return value
        if isinstance(value, Mapping):
            return {k: walk(v, f"{where}.{k}" if where else str(k), depth + 1) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value)]
        return value

    return walk(data, path, 0), problems


def parse_settings(data: Any, source: str = "config") -> Settings:
    """Build :class:`Settings` from a loaded YAML document, or raise
    :class:`ConfigError` listing every problem."""
    r = Reader()
    top = r.mapping(data, "", _TOP_KEYS)
    if data is not None and not isinstance(data, Mapping):
        raise ConfigError(r.problems, source)

    node = _parse_node(r, top.get("node"))
    mode = top.get("mode", "static")
    if mode not in ("static", "kubernetes"):
        r.problem("mode", f"must be static or kubernetes, got {mode!r}")
        mode = "static"
    elif mode == "kubernetes":
        if top.get("groups"):
            r.problem("groups", "must be absent in mode kubernetes: the groups come from EgressGatewayPolicy objects")
        if node is not None and node.address is None:
            r.problem("node.address", "is required in mode kubernetes: any node may become a gateway candidate")
    kube = _parse_kube(r, top.get("kubernetes"))
    timing = _parse_timing(r, top.get("timing"))
    groups, egress_paths = _parse_groups(r, top.get("groups"))
    metrics = _parse_metrics(r, top.get("metrics"))
    mqtt, mqtt_problems = parse_mqtt(top.get("mqtt"))
    r.problems.extend(mqtt_problems)
    mesh, mesh_problems = parse_mesh(top.get("mesh"))
    r.problems.extend(mesh_problems)
    if mesh is not None and not any(p.field.startswith("timing") for p in r.problems):
        # the promises' inequalities (M1-M4), with the election's timings
        r.problems.extend(Problem("mesh", why) for why in rights.check(timing, mesh.timing))
    conntrack, conntrack_problems = parse_conntrack(top.get("conntrack"))
    r.problems.extend(conntrack_problems)
    _check_groups(r, groups, egress_paths, node)
    if r.problems:
        raise ConfigError(r.problems, source)
    assert node is not None
    return Settings(
        node=node, mode=mode, kubernetes=kube, timing=timing, groups=groups, metrics=metrics, mqtt=mqtt, mesh=mesh,
        conntrack=conntrack,
    )  # fmt: skip


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` -> (host, port); ValueError naming the problem."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        raise ValueError(f"must be HOST:PORT, got {value!r}")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"port must be 1-65535, got {port_text!r}")
    return host, int(port_text)


def _parse_metrics(r: Reader, value: Any) -> MetricsSettings:
    m = r.mapping(value, "metrics", ("listen",))
    if "listen" not in m:
        return MetricsSettings()
    listen = m["listen"]
    if listen is None or listen == "":
        return MetricsSettings(listen=None)
    if not isinstance(listen, str):
        r.problem("metrics.listen", f"must be HOST:PORT or empty, got {listen!r}")
        return MetricsSettings()
    try:
        return MetricsSettings(listen=parse_listen(listen))
    except ValueError as exc:
        r.problem("metrics.listen", str(exc))
        return MetricsSettings()


def _parse_node(r: Reader, value: Any) -> NodeSettings | None:
    if value is None:
        r.problem("node", "is required (node.name at least)")
        return None
    m = r.mapping(value, "node", _NODE_KEYS)
    name = r.string(m.get("name"), "node.name", required=True)
    if name is not None and not _DNS_SUBDOMAIN.match(name):
        r.problem("node.name", f"must be a DNS subdomain name like a Kubernetes node name, got {name!r}")
    address = r.ip(m["address"], "node.address") if m.get("address") is not None else None
    if address is not None and (why := node_address_problem(address)) is not None:
        r.problem("node.address", why)
        address = None
    return NodeSettings(name=name or "", address=address)


def _parse_kube(r: Reader, value: Any) -> KubeSettings:
    m = r.mapping(value, "kubernetes", _KUBE_KEYS)
    namespace = r.string(m.get("namespace"), "kubernetes.namespace") or "egressd"
    if not _DNS_LABEL.match(namespace):
        r.problem("kubernetes.namespace", f"must be a DNS label, got {namespace!r}")
    kubeconfig = r.string(m.get("kubeconfig"), "kubernetes.kubeconfig")
    url = r.string(m.get("url"), "kubernetes.url")
    default_access = "url" if url else "kubeconfig" if kubeconfig else "in-cluster"
    access = m.get("access", default_access)
    if access not in ("in-cluster", "kubeconfig", "url"):
        r.problem("kubernetes.access", f"must be one of in-cluster, kubeconfig, url; got {access!r}")
        access = default_access
    if access == "kubeconfig" and kubeconfig is None:
        r.problem("kubernetes.kubeconfig", "is required when access is kubeconfig")
    if access == "url":
        if url is None:
            r.problem("kubernetes.url", "is required when access is url")
        elif not re.match(r"^https?://[^/\s]+", url):
            r.problem("kubernetes.url", f"must be an http:// or https:// URL, got {url!r}")
    if access != "kubeconfig" and kubeconfig is not None:
        r.problem("kubernetes.kubeconfig", f"is set but access is {access}")
    if access != "url" and url is not None:
        r.problem("kubernetes.url", f"is set but access is {access}")
    exclude_cordoned = m.get("excludeCordoned", False)
    if not isinstance(exclude_cordoned, bool):
        r.problem("kubernetes.excludeCordoned", f"must be true or false, got {exclude_cordoned!r}")
        exclude_cordoned = False
    return KubeSettings(
        namespace=namespace,
        access=access,
        kubeconfig=kubeconfig,
        url=url,
        token_file=r.string(m.get("tokenFile"), "kubernetes.tokenFile"),
        ca_file=r.string(m.get("caFile"), "kubernetes.caFile"),
        exclude_cordoned=exclude_cordoned,
    )


def _parse_timing(r: Reader, value: Any) -> Timing:
    m = r.mapping(value, "timing", tuple(TIMING_KEYS.values()))
    d = Timing()
    lifetime_key = TIMING_KEYS["address_lifetime"]
    lifetime_raw = m.get(lifetime_key)
    lifetime = d.address_lifetime
    if lifetime_raw is not None:
        seconds = r.duration(lifetime_raw, f"timing.{lifetime_key}", float(d.address_lifetime))
        if seconds != int(seconds):
            r.problem(f"timing.{lifetime_key}", f"must be whole seconds (kernel granularity), got {seconds:g}")
        lifetime = int(seconds)
    values: dict[str, Any] = {"address_lifetime": lifetime}
    for name, key in TIMING_KEYS.items():
        if name != "address_lifetime":
            # handoffGrace defaults to the lease duration (read before it, in field order)
            default = values["lease_duration"] if name == "handoff_grace" else getattr(d, name)
            values[name] = r.duration(m.get(key), f"timing.{key}", default)
    try:
        timing = Timing(**values)
    except ConfigError as exc:  # out of a field's bounds: the inequalities would mean nothing
        r.problems.extend(exc.problems)
        return d
    r.problems.extend(timing.check())
    return timing


def _parse_groups(r: Reader, value: Any) -> tuple[tuple[EgressGroup, ...], list[list[tuple[str, IPAddress]]]]:
    """The groups, and for each the egress IPs that parsed with their field paths."""
    groups: list[EgressGroup] = []
    egress_paths: list[list[tuple[str, IPAddress]]] = []
    for path, item in r.items(value, "groups"):
        m = r.mapping(item, path, _GROUP_KEYS)
        name = r.string(m.get("name"), f"{path}.name", required=True) or ""
        if name and not _DNS_LABEL.match(name):
            r.problem(f"{path}.name", f"must be a DNS label (lower case, digits, '-'), got {name!r}")
        parsed = [
            (p, ip)
            for p, v in r.items(m.get("egressIPs"), f"{path}.egressIPs", required=True)
            if (ip := r.ip(v, p)) is not None
        ]
        egress_paths.append(parsed)
        ips = tuple(ip for _, ip in parsed)
        interface = r.interface(m.get("interface"), f"{path}.interface", required=True)
        candidates: list[str] = []
        for p, v in r.items(m.get("candidates"), f"{path}.candidates"):
            c = r.string(v, p)
            if c is not None:
                if c in candidates:
                    r.problem(p, f"{c!r} is listed twice")
                candidates.append(c)
        selector = _parse_selector(r, m.get("nodeSelector"), f"{path}.nodeSelector")
        if bool(candidates) == bool(selector):
            r.problem(path, "needs exactly one of candidates (node names) or nodeSelector (labels)")
        groups.append(
            EgressGroup(
                name=name,
                egress_ips=ips,
                interface=interface,
                candidates=tuple(candidates),
                node_selector=selector,
                source_cidrs=cidrs(r, m.get("sourceCIDRs"), f"{path}.sourceCIDRs", required=True),
                destination_cidrs=cidrs(r, m.get("destinationCIDRs"), f"{path}.destinationCIDRs", required=True),
                excluded_cidrs=cidrs(r, m.get("excludedCIDRs"), f"{path}.excludedCIDRs"),
            )
        )
    return tuple(groups), egress_paths


def _parse_selector(r: Reader, value: Any, path: str) -> dict[str, str]:
    if value is None:
        return {}
    reported = len(r.problems)
    m = r.mapping(value, path, ("matchLabels",))
    raw = m.get("matchLabels")
    labels = r.mapping(raw, f"{path}.matchLabels", list(raw) if isinstance(raw, Mapping) else ())
    out: dict[str, str] = {}
    for key, val in labels.items():
        p = f"{path}.matchLabels.{key}"
        if not isinstance(key, str) or not _LABEL_KEY.match(key):
            r.problem(p, "is not a valid label key")
        elif not isinstance(val, str) or not _LABEL_VALUE.match(val):
            r.problem(p, f"must be a label value string (quote 'true'), got {val!r}")
        else:
            out[key] = val
    if not out and len(r.problems) == reported:
        r.problem(path, "matchLabels must not be empty")
    return out


def _check_groups(
    r: Reader,
    groups: Sequence[EgressGroup],
    egress_paths: Sequence[Sequence[tuple[str, IPAddress]]],
    node: NodeSettings | None,
) -> None:
    """Rules that relate fields to each other, run on whatever parsed (a field
    that did not parse is already a problem and is left out here), so one run
    reports every problem."""
    seen_ips: dict[IPAddress, str] = {}
    seen_names: dict[str, int] = {}
    address_reported = any(p.field == "node.address" for p in r.problems)
    for gi, g in enumerate(groups):
        path = f"groups[{gi}]"
        if g.name and g.name in seen_names:
            r.problem(f"{path}.name", f"{g.name!r} is already the name of groups[{seen_names[g.name]}]")
        seen_names.setdefault(g.name, gi)
        check_networks(r, path, g)
        for where, ip in egress_paths[gi]:
            _check_egress_ip(r, where, ip=ip, seen=seen_ips, node=node, group=g)
        if node is not None and node.name in g.candidates and node.address is None and not address_reported:
            r.problem("node.address", f"is required on a gateway candidate (this node is a candidate of {path})")
            address_reported = True
    for gi, a in enumerate(groups):
        for gj in range(gi + 1, len(groups)):
            b = groups[gj]
            if any_overlap(a.source_cidrs, b.source_cidrs) and any_overlap(a.destination_cidrs, b.destination_cidrs):
                r.problem(
                    f"groups[{gj}].destinationCIDRs",
                    f"overlaps groups[{gi}] ({a.name}) for overlapping sourceCIDRs: the same flow would "
                    f"have two egress groups",
                )


def _check_egress_ip(
    r: Reader,
    where: str,
    *,
    ip: IPAddress,
    seen: dict[IPAddress, str],
    node: NodeSettings | None,
    group: EgressGroup,
) -> None:
    key = canonical(ip)
    if key in seen:
        twin = "" if key == ip else f" (the IPv4-mapped form of {key})"
        r.problem(where, f"{ip}{twin} is listed twice (also at {seen[key]})")
    else:
        seen[key] = where
    if (why := egress_ip_problem(ip)) is not None:
        r.problem(where, why)
    if node is not None and node.address is not None and canonical(node.address) == key:
        r.problem(where, f"{ip} is this node's own address (node.address); an egress IP must float, a node's must not")
    for i, net in enumerate(group.source_cidrs):
        if net.version == key.version and key in net:
            r.problem(where, f"{ip} is inside sourceCIDRs[{i}] {net}, the addresses of the pods it would serve")
    if (why := subnet_edge_problem(key, (*group.destination_cidrs, *group.excluded_cidrs))) is not None:
        r.problem(where, f"{why}; it cannot be an egress IP")
