"""Every parser maps arbitrary input to a value or its typed error, never
another exception: the config (parse_settings, expand_env, parse_mqtt,
Timing), EgressGatewayPolicy objects (parse_policy), and the Node, Pod and
Namespace objects of the Kubernetes mode, through the index, the resolution
and the policy status.

Inputs are arbitrary nested data whose keys are mostly the real schema's and
whose scalars are mostly the kinds that break parsers (huge and non-finite
numbers, odd strings, addresses that must not float), both as whole
documents and as mutations of valid ones, so the deep validation paths are
reached too.
"""

from __future__ import annotations

import copy
import ipaddress
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from egressd.core.cluster_index import Cluster
from egressd.core.config import expand_env, parse_settings
from egressd.core.errors import ConfigError, Problem
from egressd.core.kube_objects import RESOURCES, NodeInfo, PodInfo, parse_namespace, parse_node, parse_pod
from egressd.core.lease import LeaseRecord
from egressd.core.model import Settings, Timing
from egressd.core.mqtt_settings import MqttSettings, parse_mqtt
from egressd.core.policy import Policy, parse_policy
from egressd.core.policy_status import policy_status
from egressd.core.resolution import resolve

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "egressd.yaml"
BOUNDED = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])

KEYS = [
    # config
    "node", "name", "address", "mode", "kubernetes", "namespace", "access", "kubeconfig", "url", "tokenFile",
    "caFile", "excludeCordoned", "timing", "leaseDuration", "renewDeadline", "retryPeriod", "addressLifetime",
    "kernelSlack", "fenceTtl", "fenceSlack", "safetyMargin", "apiTimeout", "nonPreferredDelay", "handoffGrace",
    "groups", "egressIPs", "interface", "candidates", "nodeSelector", "matchLabels", "matchExpressions", "key",
    "operator", "values", "sourceCIDRs", "destinationCIDRs", "excludedCIDRs", "metrics", "listen", "mqtt", "host",
    "port", "cluster", "topicPrefix", "clientId", "username", "passwordFile", "password", "tls", "certFile",
    "keyFile", "insecureSkipVerify", "allowInsecurePassword", "keepalive", "qos", "queueSize", "timeout",
    # Kubernetes objects
    "apiVersion", "kind", "metadata", "labels", "uid", "generation", "creationTimestamp", "resourceVersion",
    "deletionTimestamp", "spec", "status", "selectors", "podSelector", "namespaceSelector", "egressGateway",
    "addresses", "type", "unschedulable", "podIP", "podIPs", "ip", "phase", "hostNetwork", "nodeName",
    "conditions", "lastTransitionTime", "observedGeneration",
]  # fmt: skip

PLAUSIBLE = [
    "172.18.0.42", "172.18.0.5", "10.244.1.5", "::ffff:172.18.0.42", "fd00::42", "0.0.0.0", "255.255.255.255",
    "169.254.1.1", "224.0.0.1", "100.64.0.1", "172.18.0.0/16", "172.18.0.0/33", "10.244.1.7/24", "fd00::/64",
    "250ms", "2.5s", "1m", "1:30", "1e309", "-1s", "net0", "..", "net;0", "é" * 9, "In", "NotIn", "Exists",
    "DoesNotExist", "InternalIP", "ExternalIP", "Running", "Succeeded", "true", "yes", "kind-worker3", "egress-gw",
    "${NODE_NAME}", "${UNSET}", "static", "kubernetes", "url", "kubeconfig", "in-cluster", "http://10.0.0.1:6443",
    "127.0.0.1:9464", "[::1]:9464", "2026-11-24T10:00:00Z", "", "\x00", "x" * 1000,
]  # fmt: skip

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([2**31, 2**32, 2**63, 10**400, -(10**400)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(PLAUSIBLE),
)
keys = st.one_of(st.sampled_from(KEYS), st.sampled_from(KEYS), st.text(max_size=8), st.integers(), st.none())
values = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(keys, children, max_size=5)),
    max_leaves=25,
)
mappings = st.dictionaries(keys, values, max_size=6)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _paths(value, (*prefix, i))
    return found


@st.composite
def mutated(draw: st.DrawFn, base: dict[str, Any]) -> dict[str, Any]:
    """``base`` with one to four values replaced, deleted or added."""
    data = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 4))):
        paths = [p for p in _paths(data) if p]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent: Any = data
        for key in path[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "delete":
            del parent[path[-1]]
        elif action == "add" and isinstance(parent, dict):
            parent[draw(keys)] = draw(values)
        else:
            parent[path[-1]] = draw(values)
    return data


EXAMPLE_CONFIG: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
EXAMPLE_CONFIG["mqtt"] = {"host": "broker", "username": "egressd", "passwordFile": "/p", "tls": {"caFile": "/ca"}}
POLICY: dict[str, Any] = {
    "apiVersion": "egressd.io/v1alpha1",
    "kind": "EgressGatewayPolicy",
    "metadata": {"name": "outpost", "generation": 3, "creationTimestamp": "2026-11-24T10:00:00Z", "uid": "u"},
    "spec": {
        "selectors": [
            {
                "podSelector": {
                    "matchLabels": {"org": "alliance"},
                    "matchExpressions": [{"key": "class", "operator": "In", "values": ["xwing"]}],
                },
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "default"}},
            }
        ],
        "destinationCIDRs": ["172.18.0.0/16"],
        "excludedCIDRs": ["172.18.0.0/30"],
        "egressGateway": {
            "nodeSelector": {"matchLabels": {"egress-gw": "true"}},
            "interface": "net0",
            "egressIPs": ["172.18.0.42", "172.18.0.43"],
        },
    },
    "status": {"conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-11-24T10:00:00Z"}]},
}
NODE: dict[str, Any] = {
    "metadata": {"name": "kind-worker3", "labels": {"egress-gw": "true"}},
    "spec": {"unschedulable": False},
    "status": {"addresses": [{"type": "InternalIP", "address": "172.18.0.5"}, {"type": "ExternalIP", "address": "x"}]},
}
POD: dict[str, Any] = {
    "metadata": {"namespace": "default", "name": "xwing", "labels": {"org": "alliance", "class": "xwing"}},
    "spec": {"nodeName": "kind-worker", "hostNetwork": False},
    "status": {"phase": "Running", "podIP": "10.244.1.5", "podIPs": [{"ip": "10.244.1.5"}, {"ip": "fd00::5"}]},
}
NAMESPACE: dict[str, Any] = {"metadata": {"name": "default", "labels": {"team": "rebels"}}}


def _problems_are_located(error: ConfigError) -> None:
    assert error.problems, "a ConfigError lists at least one problem"
    assert all(isinstance(p, Problem) and p.message for p in error.problems)
    assert len(str(error)) <= len(error.problems) * 700 + 100  # clipped, whatever the input


# --- the config ---------------------------------------------------------------------


@BOUNDED
@given(values)
def test_parse_settings_on_arbitrary_data(data: Any) -> None:
    try:
        assert isinstance(parse_settings(data), Settings)
    except ConfigError as exc:
        _problems_are_located(exc)


@BOUNDED
@given(mutated(EXAMPLE_CONFIG))
def test_parse_settings_on_mutated_configs(data: dict[str, Any]) -> None:
    try:
        assert isinstance(parse_settings(data), Settings)
    except ConfigError as exc:
        _problems_are_located(exc)


@BOUNDED
@given(values, st.dictionaries(st.sampled_from(["NODE_NAME", "NODE_IP", "X"]), st.text(max_size=10)))
def test_expand_env_on_arbitrary_data(data: Any, env: dict[str, str]) -> None:
    expanded, problems = expand_env(data, env)
    assert all(isinstance(p, Problem) for p in problems)
    if not problems:
        try:
            parse_settings(expanded)
        except ConfigError as exc:
            _problems_are_located(exc)


@BOUNDED
@given(st.one_of(values, mutated(EXAMPLE_CONFIG["mqtt"])))
def test_parse_mqtt_on_arbitrary_data(data: Any) -> None:
    parsed, problems = parse_mqtt(data)
    assert (parsed is None) or (isinstance(parsed, MqttSettings) and problems == [])
    assert all(isinstance(p, Problem) for p in problems)


timing_values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(0.001, 400),
    st.integers(-5, 2**33),
    st.sampled_from([0, 0.0001, 0.01, 0.05, 0.25, 0.8, 1, 1.5, 2.5, 300, 1e12]),
)


@BOUNDED
@given(
    st.fixed_dictionaries(
        {},
        optional={
            name: (st.integers(-5, 2**33) if name == "address_lifetime" else timing_values)
            for name in (
                "lease_duration",
                "renew_deadline",
                "retry_period",
                "address_lifetime",
                "kernel_slack",
                "fence_ttl",
                "fence_slack",
                "safety_margin",
                "api_timeout",
                "non_preferred_delay",
                "handoff_grace",
            )
        },
    )
)
def test_timing_constructor_on_arbitrary_numbers(fields: dict[str, Any]) -> None:
    try:
        timing = Timing(**fields)
    except ConfigError as exc:
        _problems_are_located(exc)
        assert all(p.field.startswith("timing.") for p in exc.problems)
    else:
        assert all(p.message.startswith(("(T1)", "(T2)", "(T3)")) for p in timing.check())


# --- Kubernetes objects ----------------------------------------------------------------


@BOUNDED
@given(st.one_of(mappings, mutated(POLICY)))
def test_parse_policy_on_arbitrary_objects(obj: dict[Any, Any]) -> None:
    try:
        assert isinstance(parse_policy(obj), Policy)
    except ConfigError as exc:
        _problems_are_located(exc)


@BOUNDED
@given(st.one_of(mappings, mutated(NODE)), st.one_of(mappings, mutated(POD)), st.one_of(mappings, mutated(NAMESPACE)))
def test_node_pod_and_namespace_parsers_on_arbitrary_objects(
    node: dict[Any, Any], pod: dict[Any, Any], namespace: dict[Any, Any]
) -> None:
    parsed_node = parse_node(node)
    assert isinstance(parsed_node, NodeInfo) and isinstance(parsed_node.name, str)
    assert all(isinstance(ip, ipaddress.IPv4Address | ipaddress.IPv6Address) for ip in parsed_node.addresses)
    parsed_pod = parse_pod(pod)
    assert parsed_pod is None or (isinstance(parsed_pod, PodInfo) and parsed_pod.ips)
    name, labels = parse_namespace(namespace)
    assert isinstance(name, str) and all(isinstance(v, str) for v in labels.values())


objects = {
    "policies": st.one_of(mutated(POLICY), mappings),
    "nodes": st.one_of(mutated(NODE), mappings),
    "pods": st.one_of(mutated(POD), mappings),
    "namespaces": st.one_of(mutated(NAMESPACE), mappings),
}
events = st.sampled_from(RESOURCES).flatmap(
    lambda resource: st.tuples(
        st.just(resource), st.sampled_from(["ADDED", "MODIFIED", "DELETED", "RELIST"]), objects[resource]
    )
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(events, min_size=1, max_size=12), st.one_of(values, mutated(POLICY["status"])))
def test_the_index_resolution_and_status_on_arbitrary_objects(
    stream: list[tuple[str, str, dict[Any, Any]]], previous: Any
) -> None:
    cluster = Cluster()
    for resource, event, obj in stream:
        if event == "RELIST":
            assert isinstance(cluster.replace(resource, [obj]), bool)
        else:
            assert isinstance(cluster.apply(resource, event, obj), bool)
    for exclude_cordoned in (False, True):
        resolution = resolve(cluster, exclude_cordoned=exclude_cordoned)
        for name, outcome in resolution.outcomes.items():
            policy = cluster.policies.get(name)
            leases = {
                ip: LeaseRecord(name="l", egress_ip=str(ip), holder="kind-worker3", lease_duration=2.5, transitions=1,
                                resource_version="1")
                for ip in (policy.egress_ips if policy else ())
            }  # fmt: skip
            stored = previous if isinstance(previous, Mapping) else None
            status = policy_status(policy, outcome, leases, stored, "2026-12-04T00:00:00Z")
            assert {c["type"] for c in status["conditions"]} == {"Ready", "Degraded"}
