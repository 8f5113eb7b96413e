"""EgressGatewayPolicy validation: the walkthrough's policy parses; each bad
input gives a problem naming its field."""

from __future__ import annotations

import copy
import ipaddress
from typing import Any

import pytest

from egressd.core.errors import ConfigError, Problem
from egressd.core.policy import NAME_MAX, Policy, PolicySelector, parse_policy
from egressd.core.selector import Expression, LabelSelector

ip = ipaddress.ip_address
net = ipaddress.ip_network


def walkthrough() -> dict[str, Any]:
    """The policy of the reference walkthrough, as the API server returns it."""
    return {
        "apiVersion": "egressd.io/v1alpha1",
        "kind": "EgressGatewayPolicy",
        "metadata": {
            "name": "outpost",
            "uid": "0d6e9a8e-1111-4c3b-9f6e-2a0e5e0b7c11",
            "generation": 3,
            "creationTimestamp": "2026-11-24T10:00:00Z",
            "resourceVersion": "17",
        },
        "spec": {
            "selectors": [
                {
                    "podSelector": {
                        "matchLabels": {"org": "alliance"},
                        "matchExpressions": [{"key": "class", "operator": "In", "values": ["xwing", "ywing"]}],
                    }
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
        "status": {"observedGeneration": 2},
    }


def changed(path: str, value: Any) -> dict[str, Any]:
    """The walkthrough policy with one value set (``spec.egressGateway.egressIPs``,
    list items by index); ``...`` deletes the key."""
    obj = walkthrough()
    *parents, last = path.split(".")
    node: Any = obj
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if isinstance(node, list):
        node[int(last)] = value
    elif value is ...:
        del node[last]
    else:
        node[last] = value
    return obj


def problems_of(obj: dict[str, Any]) -> list[Problem]:
    with pytest.raises(ConfigError) as info:
        parse_policy(obj)
    return list(info.value.problems)


def only_problem(obj: dict[str, Any], field: str) -> str:
    problems = problems_of(obj)
    assert [p.field for p in problems] == [field], problems
    return problems[0].message


def test_the_walkthrough_policy_parses() -> None:
    policy = parse_policy(walkthrough())
    assert policy == Policy(
        name="outpost",
        uid="0d6e9a8e-1111-4c3b-9f6e-2a0e5e0b7c11",
        generation=3,
        created="2026-11-24T10:00:00Z",
        resource_version="17",
        selectors=(
            PolicySelector(
                pods=LabelSelector({"org": "alliance"}, (Expression("class", "In", ("xwing", "ywing")),)),
                namespaces=None,
            ),
        ),
        destination_cidrs=(net("172.18.0.0/16"),),
        excluded_cidrs=(net("172.18.0.0/30"),),
        node_selector=LabelSelector({"egress-gw": "true"}),
        interface="net0",
        egress_ips=(ip("172.18.0.42"), ip("172.18.0.43")),
    )
    assert policy.age_order == ("2026-11-24T10:00:00Z", "outpost")
    assert policy.families == {4}
    assert str(policy.selectors[0]) == "pods {org=alliance,class in (xwing,ywing)} in any namespace"


def test_optional_parts_may_be_absent() -> None:
    obj = walkthrough()
    obj["metadata"] = {"name": "outpost"}
    del obj["spec"]["excludedCIDRs"]
    obj["spec"]["selectors"] = [{"namespaceSelector": {"matchLabels": {"team": "rebels"}}}]
    obj["spec"]["egressGateway"]["nodeSelector"] = {}
    policy = parse_policy(obj)
    assert (policy.uid, policy.generation, policy.created, policy.resource_version) == ("", 0, "", "")
    assert policy.excluded_cidrs == ()
    assert policy.selectors == (PolicySelector(None, LabelSelector({"team": "rebels"})),)
    assert policy.node_selector.empty


def test_dual_stack_policy() -> None:
    obj = walkthrough()
    obj["spec"]["destinationCIDRs"] = ["172.18.0.0/16", "fd00:18::/64"]
    obj["spec"]["egressGateway"]["egressIPs"] = ["172.18.0.42", "fd00:18::42"]
    assert parse_policy(obj).families == {4, 6}


def test_group_of_a_policy() -> None:
    policy = parse_policy(walkthrough())
    group = policy.group([net("10.244.1.5/32")], ["kind-worker3", "kind-worker4"])
    assert group.name == "outpost"
    assert group.egress_ips == policy.egress_ips
    assert group.interface == "net0"
    assert group.candidates == ("kind-worker3", "kind-worker4")
    assert group.node_selector == {}
    assert group.source_cidrs == (net("10.244.1.5/32"),)
    assert group.destination_cidrs == (net("172.18.0.0/16"),)
    assert group.excluded_cidrs == (net("172.18.0.0/30"),)


def test_error_names_the_policy_and_lists_every_problem() -> None:
    obj = walkthrough()
    obj["spec"]["egressGateway"]["egressIPs"] = ["172.18.0.42", "not-an-ip", "127.0.0.1"]
    obj["spec"]["egressGateway"]["interface"] = "a-very-long-interface-name"
    obj["spec"]["selectors"][0]["podSelector"]["matchExpressions"][0]["operator"] = "Within"
    with pytest.raises(ConfigError) as info:
        parse_policy(obj)
    assert info.value.source == "EgressGatewayPolicy outpost"
    assert [p.field for p in info.value.problems] == [
        "spec.selectors[0].podSelector.matchExpressions[0].operator",
        "spec.egressGateway.interface",
        "spec.egressGateway.egressIPs[1]",
        "spec.egressGateway.egressIPs[2]",
    ]
    assert str(info.value).startswith("EgressGatewayPolicy outpost: 4 problem(s)")


@pytest.mark.parametrize(
    ("path", "value", "field", "fragment"),
    [
        # metadata
        ("metadata.name", ..., "metadata.name", "is required"),
        ("metadata.name", "Outpost", "metadata.name", "DNS subdomain"),
        ("metadata.name", "out_post", "metadata.name", "DNS subdomain"),
        ("metadata.name", "a" * (NAME_MAX + 1), "metadata.name", f"at most {NAME_MAX}"),
        ("metadata.generation", "3", "metadata.generation", "integer"),
        # spec
        ("spec", ..., "spec", "is required"),
        ("spec", ["selectors"], "spec", "must be a mapping"),
        ("spec.excludedCIDR", ["172.18.0.0/30"], "spec.excludedCIDR", "known keys: selectors, destinationCIDRs"),
        ("spec.egressGateways", {}, "spec.egressGateways", "unknown key"),
        # selectors
        ("spec.selectors", ..., "spec.selectors", "is required"),
        ("spec.selectors", [], "spec.selectors", "must not be empty"),
        ("spec.selectors", {"podSelector": {}}, "spec.selectors", "must be a list"),
        ("spec.selectors.0", {}, "spec.selectors[0]", "needs podSelector, namespaceSelector or both"),
        ("spec.selectors.0", "org=alliance", "spec.selectors[0]", "must be a mapping"),
        ("spec.selectors.0.nodeSelector", {}, "spec.selectors[0].nodeSelector", "unknown key"),
        (
            "spec.selectors.0.podSelector.matchExpressions.0.operator",
            "Any",
            "spec.selectors[0].podSelector.matchExpressions[0].operator",
            "supported values",
        ),
        (
            "spec.selectors.0.namespaceSelector",
            {"matchLabels": {"team": True}},
            "spec.selectors[0].namespaceSelector.matchLabels.team",
            "quote",
        ),
        # destinations
        ("spec.destinationCIDRs", ..., "spec.destinationCIDRs", "is required"),
        ("spec.destinationCIDRs", [], "spec.destinationCIDRs", "must not be empty"),
        ("spec.destinationCIDRs", ["172.18.0.1/16"], "spec.destinationCIDRs[0]", "did you mean 172.18.0.0/16"),
        ("spec.destinationCIDRs", ["outpost"], "spec.destinationCIDRs[0]", "is not a CIDR"),
        (
            "spec.destinationCIDRs",
            ["172.18.0.0/16", "172.18.5.0/24"],
            "spec.destinationCIDRs[1]",
            "overlaps destinationCIDRs[0]",
        ),
        ("spec.destinationCIDRs", ["fd00::/64", "172.18.0.0/16"], "spec.destinationCIDRs[0]", "IPv6"),
        ("spec.excludedCIDRs", ["10.0.0.0/8"], "spec.excludedCIDRs[0]", "not inside any of destinationCIDRs"),
        ("spec.excludedCIDRs", ["172.18.0.0/16"], "spec.destinationCIDRs[0]", "entirely excluded"),
        ("spec.excludedCIDRs", "172.18.0.0/30", "spec.excludedCIDRs", "must be a list"),
        # gateway
        ("spec.egressGateway", ..., "spec.egressGateway", "is required"),
        ("spec.egressGateway.nodeSelector", ..., "spec.egressGateway.nodeSelector", "is required"),
        (
            "spec.egressGateway.nodeSelector",
            {"matchLabels": {"egress-gw": True}},
            "spec.egressGateway.nodeSelector.matchLabels.egress-gw",
            "quote",
        ),
        ("spec.egressGateway.interface", ..., "spec.egressGateway.interface", "is required"),
        ("spec.egressGateway.interface", "net0:1", "spec.egressGateway.interface", "not a valid interface name"),
        ("spec.egressGateway.interface", "x" * 16, "spec.egressGateway.interface", "Linux allows at most 15"),
        ("spec.egressGateway.interface", 7, "spec.egressGateway.interface", "non-empty string"),
        ("spec.egressGateway.egressIP", "172.18.0.42", "spec.egressGateway.egressIP", "unknown key"),
        ("spec.egressGateway.egressIPs", ..., "spec.egressGateway.egressIPs", "is required"),
        ("spec.egressGateway.egressIPs", [], "spec.egressGateway.egressIPs", "must not be empty"),
        ("spec.egressGateway.egressIPs.1", "172.18.0.42", "spec.egressGateway.egressIPs[1]", "listed twice"),
        ("spec.egressGateway.egressIPs.1", "172.18.0.0/16", "spec.egressGateway.egressIPs[1]", "not an IP address"),
        ("spec.egressGateway.egressIPs.1", 42, "spec.egressGateway.egressIPs[1]", "not an IP address"),
        ("spec.egressGateway.egressIPs.1", "0.0.0.0", "spec.egressGateway.egressIPs[1]", "cannot be an egress IP"),
        ("spec.egressGateway.egressIPs.1", "127.0.0.5", "spec.egressGateway.egressIPs[1]", "loopback"),
        ("spec.egressGateway.egressIPs.1", "224.0.0.18", "spec.egressGateway.egressIPs[1]", "multicast"),
        ("spec.egressGateway.egressIPs.1", "::", "spec.egressGateway.egressIPs[1]", "cannot be an egress IP"),
    ],
)
def test_bad_input_names_its_field(path: str, value: Any, field: str, fragment: str) -> None:
    message = only_problem(changed(path, value), field)
    assert fragment in message


def test_a_name_of_the_longest_length_is_fine() -> None:
    assert parse_policy(changed("metadata.name", "a" * NAME_MAX)).name == "a" * NAME_MAX
    assert parse_policy(changed("metadata.name", "outpost.rebels-1")).name == "outpost.rebels-1"


def test_network_checks_run_once_the_fields_parse() -> None:
    """Cross-field rules would be guesses on half-parsed fields; the field problems come first."""
    obj = walkthrough()
    obj["spec"]["destinationCIDRs"] = ["10.0.0.0/8", "bad"]
    assert [p.field for p in problems_of(obj)] == ["spec.destinationCIDRs[1]"]
    obj["spec"]["destinationCIDRs"] = ["10.0.0.0/8"]
    assert [p.field for p in problems_of(obj)] == ["spec.excludedCIDRs[0]"]


def test_a_malformed_cidr_and_a_duplicate_egress_ip_are_reported_together() -> None:
    obj = changed("spec.egressGateway.egressIPs.1", "172.18.0.42")
    obj["spec"]["excludedCIDRs"] = ["172.18.0.0/33"]
    assert [p.field for p in problems_of(obj)] == ["spec.excludedCIDRs[0]", "spec.egressGateway.egressIPs[1]"]


def test_parsing_does_not_modify_the_object() -> None:
    obj = walkthrough()
    before = copy.deepcopy(obj)
    parse_policy(obj)
    assert obj == before
