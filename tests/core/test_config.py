"""Config parsing: a good config parses, a bad one lists every problem."""

from __future__ import annotations

import ipaddress
import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from egressd.core.config import ENV_DEPTH_MAX, expand_env, parse_settings
from egressd.core.errors import ConfigError, Problem
from egressd.core.model import EgressGroup, KubeSettings, NodeSettings, Settings, Timing

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "egressd.yaml"


def config() -> dict[str, Any]:
    """The reference scenario, as small as it can be (timing and kubernetes defaulted)."""
    return {
        "node": {"name": "kind-worker3", "address": "172.18.0.5"},
        "groups": [
            {
                "name": "outpost",
                "egressIPs": ["172.18.0.42", "172.18.0.43"],
                "interface": "net0",
                "candidates": ["kind-worker3", "kind-worker4"],
                "sourceCIDRs": ["10.244.1.0/24", "10.244.2.0/24"],
                "destinationCIDRs": ["172.18.0.0/16"],
                "excludedCIDRs": ["172.18.0.0/29"],
            }
        ],
    }


def second_group(**changes: Any) -> dict[str, Any]:
    group: dict[str, Any] = {
        "name": "partners",
        "egressIPs": ["172.18.0.44"],
        "interface": "net0",
        "candidates": ["kind-worker3"],
        "sourceCIDRs": ["10.244.3.0/24"],
        "destinationCIDRs": ["192.0.2.0/24"],
    }
    group.update(changes)
    return group


def problems_of(data: Any) -> list[Problem]:
    with pytest.raises(ConfigError) as info:
        parse_settings(data)
    return list(info.value.problems)


def fields_of(data: Any) -> set[str]:
    return {p.field for p in problems_of(data)}


def message_of(data: Any, field: str) -> str:
    """The single problem reported for ``field``."""
    matching = [p.message for p in problems_of(data) if p.field == field]
    assert len(matching) == 1, problems_of(data)
    return matching[0]


def changed(path: str, value: Any) -> dict[str, Any]:
    """The base config with one value set; ``path`` like ``groups.0.egressIPs``."""
    data = config()
    *parents, last = path.split(".")
    node: Any = data
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
    node[last] = value
    return data


# --- good configs ------------------------------------------------------------------


def test_valid_config_parses_with_defaults() -> None:
    settings = parse_settings(config())
    assert settings.node == NodeSettings(name="kind-worker3", address=ipaddress.IPv4Address("172.18.0.5"))
    assert settings.kubernetes == KubeSettings()
    assert settings.kubernetes.access == "in-cluster"
    assert settings.kubernetes.namespace == "egressd"
    assert settings.timing == Timing()
    assert settings.groups == (
        EgressGroup(
            name="outpost",
            egress_ips=(ipaddress.IPv4Address("172.18.0.42"), ipaddress.IPv4Address("172.18.0.43")),
            interface="net0",
            candidates=("kind-worker3", "kind-worker4"),
            source_cidrs=(ipaddress.IPv4Network("10.244.1.0/24"), ipaddress.IPv4Network("10.244.2.0/24")),
            destination_cidrs=(ipaddress.IPv4Network("172.18.0.0/16"),),
            excluded_cidrs=(ipaddress.IPv4Network("172.18.0.0/29"),),
        ),
    )
    assert settings.candidate_groups() == settings.groups


def test_steering_only_node_needs_no_address_and_no_groups_of_its_own() -> None:
    data = config()
    data["node"] = {"name": "kind-worker"}
    settings = parse_settings(data)
    assert settings.node.address is None
    assert settings.candidate_groups() == ()


def test_node_selector_instead_of_candidates() -> None:
    data = config()
    group = data["groups"][0]
    del group["candidates"]
    group["nodeSelector"] = {"matchLabels": {"egress-gw": "true"}}
    (parsed,) = parse_settings(data).groups
    assert parsed.node_selector == {"egress-gw": "true"}
    assert parsed.candidates == ()


def test_ipv6_group() -> None:
    data = config()
    data["groups"].append(
        second_group(
            name="outpost-v6",
            egressIPs=["fd00:18::42"],
            sourceCIDRs=["fd00:10:244:1::/64"],
            destinationCIDRs=["fd00:18::/64"],
            excludedCIDRs=["fd00:18::/125"],
        )
    )
    assert parse_settings(data).groups[1].egress_ips == (ipaddress.IPv6Address("fd00:18::42"),)


def test_the_example_config_parses() -> None:
    settings = parse_settings(yaml.safe_load(EXAMPLE.read_text()), source=str(EXAMPLE))
    assert settings.node.name == "kind-worker3"
    assert settings.node.address == ipaddress.ip_address("172.18.0.5")
    assert settings.kubernetes == KubeSettings(namespace="egressd", access="url", url="http://172.18.0.2:6443")
    assert settings.timing == Timing()  # the defaults, written out
    (group,) = settings.groups
    assert group.name == "outpost"
    assert [str(ip) for ip in group.egress_ips] == ["172.18.0.42", "172.18.0.43"]
    assert group.candidates == ("kind-worker3", "kind-worker4")
    assert settings.candidate_groups() == (group,)


def test_the_example_config_writes_out_every_timing_key() -> None:
    data = yaml.safe_load(EXAMPLE.read_text())
    assert set(data["timing"]) == {
        "leaseDuration",
        "renewDeadline",
        "retryPeriod",
        "addressLifetime",
        "kernelSlack",
        "fenceTtl",
        "fenceSlack",
        "safetyMargin",
        "apiTimeout",
        "nonPreferredDelay",
        "handoffGrace",
    }


# --- every problem at once ---------------------------------------------------------


def test_every_problem_is_reported_at_once() -> None:
    data: dict[str, Any] = {
        "node": {"name": "kind-worker3", "address": "172.18.0.500"},
        "kubernetes": {"namespace": "Egress_D"},
        "timing": {"retryPeriod": "fast", "lease_duration": "3s"},
        "group": [],
        "groups": [
            {
                "name": "outpost",
                "egressIPs": ["172.18.0.42", "172.18.0.x"],
                "interface": "net0/eth",
                "candidates": ["kind-worker3", "kind-worker3"],
                "sourceCIDRs": ["10.244.1.7/24"],
                "destinationCIDRs": ["172.18.0.0/33"],
                "excludedCIDRs": "172.18.0.0/29",
            }
        ],
    }
    problems = problems_of(data)
    fields = [p.field for p in problems]
    assert set(fields) >= {
        "node.address",
        "kubernetes.namespace",
        "timing.retryPeriod",
        "timing.lease_duration",
        "group",
        "groups[0].egressIPs[1]",
        "groups[0].interface",
        "groups[0].candidates[1]",
        "groups[0].sourceCIDRs[0]",
        "groups[0].destinationCIDRs[0]",
        "groups[0].excludedCIDRs",
    }
    assert len(fields) == len(problems) == 11
    with pytest.raises(ConfigError, match=r"^egressd\.yaml: 11 problem\(s\)\n  group: unknown key"):
        parse_settings(data, source="egressd.yaml")


def test_relations_between_fields_are_all_reported_together() -> None:
    data = config()
    data["node"] = {"name": "kind-worker3"}
    data["groups"][0]["egressIPs"] = ["172.18.0.42", "172.18.0.43", "172.18.0.42"]
    data["groups"][0]["destinationCIDRs"] = ["172.18.0.0/16", "172.18.1.0/24"]
    data["groups"].append(second_group(name="outpost", egressIPs=["172.18.0.43"], excludedCIDRs=["198.51.100.0/24"]))
    assert fields_of(data) == {
        "node.address",
        "groups[0].egressIPs[2]",
        "groups[0].destinationCIDRs[1]",
        "groups[1].name",
        "groups[1].egressIPs[0]",
        "groups[1].excludedCIDRs[0]",
    }


# --- single fields -----------------------------------------------------------------


@pytest.mark.parametrize("value", ["172.18.0.500", "172.18.0.42/32", "kind-worker3", 42, ""])
def test_malformed_ip(value: Any) -> None:
    assert "is not an IP address" in message_of(
        changed("groups.0.egressIPs", ["172.18.0.42", value]), "groups[0].egressIPs[1]"
    )


@pytest.mark.parametrize("value", ["172.18.0.0/33", "172.18.0.0/", "outpost", "172.18.0.0/255.0.255.0"])
def test_malformed_cidr(value: str) -> None:
    assert message_of(changed("groups.0.destinationCIDRs", [value]), "groups[0].destinationCIDRs[0]") == (
        f"is not a CIDR: {value!r}"
    )


def test_cidr_must_be_a_string() -> None:
    assert "must be a CIDR string" in message_of(changed("groups.0.sourceCIDRs", [10]), "groups[0].sourceCIDRs[0]")


@pytest.mark.parametrize(
    ("value", "fixed"), [("10.244.1.7/24", "10.244.1.0/24"), ("fd00:10:244:1::1/64", "fd00:10:244:1::/64")]
)
def test_host_bits_set_suggests_the_network(value: str, fixed: str) -> None:
    data = changed("groups.0.sourceCIDRs", [value])
    message = message_of(data, "groups[0].sourceCIDRs[0]")
    assert "host bits set" in message
    assert f"did you mean {fixed}?" in message


def test_egress_ip_listed_twice_in_one_group() -> None:
    data = changed("groups.0.egressIPs", ["172.18.0.42", "172.18.0.43", "172.18.0.42"])
    assert message_of(data, "groups[0].egressIPs[2]") == (
        "172.18.0.42 is listed twice (also at groups[0].egressIPs[0])"
    )


def test_egress_ip_listed_in_two_groups() -> None:
    data = config()
    data["groups"].append(second_group(egressIPs=["172.18.0.44", "172.18.0.43"]))
    assert "also at groups[0].egressIPs[1]" in message_of(data, "groups[1].egressIPs[1]")


def test_ipv6_egress_ip_written_two_ways_is_still_the_same_ip() -> None:
    data = config()
    data["groups"].append(
        second_group(egressIPs=["fd00::42", "FD00:0::42"], sourceCIDRs=["fd00:1::/64"], destinationCIDRs=["fd00::/64"])
    )
    assert "listed twice" in message_of(data, "groups[1].egressIPs[1]")


@pytest.mark.parametrize("ip", ["0.0.0.0", "224.0.0.1", "127.0.0.1"])
def test_unusable_egress_ip(ip: str) -> None:
    assert "cannot be an egress IP" in message_of(changed("groups.0.egressIPs", [ip]), "groups[0].egressIPs[0]")


@pytest.mark.parametrize(
    ("ip", "why"),
    [
        ("169.254.10.1", "link-local"),
        ("fe80::42", "link-local"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "broadcast"),
        ("100.64.0.42", "neither global nor private"),
        ("fec0::42", "site-local"),
        ("::ffff:172.18.0.50", "IPv4-mapped IPv6 address; write 172.18.0.50"),
    ],
)
def test_addresses_that_must_never_float(ip: str, why: str) -> None:
    message = message_of(changed("groups.0.egressIPs", ["172.18.0.42", ip]), "groups[0].egressIPs[1]")
    assert message.startswith(f"{ipaddress.ip_address(ip)} cannot be an egress IP: it is") and why in message


@pytest.mark.parametrize(
    ("ip", "why"),
    [
        ("172.18.255.255", "172.18.255.255 is the broadcast address of 172.18.0.0/16"),
        ("192.0.2.0", "192.0.2.0 is the network address of 192.0.2.0/24"),
    ],
)
def test_network_and_broadcast_addresses_of_a_configured_prefix(ip: str, why: str) -> None:
    data = changed("groups.0.destinationCIDRs", ["172.18.0.0/16", "192.0.2.0/24"])
    data["groups"][0]["egressIPs"] = ["172.18.0.42", ip]
    assert message_of(data, "groups[0].egressIPs[1]") == f"{why}; it cannot be an egress IP"


def test_an_ipv4_address_and_its_mapped_twin_are_duplicates() -> None:
    data = changed("groups.0.egressIPs", ["172.18.0.42", "::ffff:172.18.0.42"])
    messages = [p.message for p in problems_of(data) if p.field == "groups[0].egressIPs[1]"]
    assert (
        "::ffff:ac12:2a (the IPv4-mapped form of 172.18.0.42) is listed twice (also at groups[0].egressIPs[0])"
        in messages
    )


def test_the_nodes_own_address_is_not_an_egress_ip() -> None:
    data = changed("groups.0.egressIPs", ["172.18.0.42", "172.18.0.5"])
    assert message_of(data, "groups[0].egressIPs[1]").startswith("172.18.0.5 is this node's own address (node.address)")


def test_a_pod_address_is_not_an_egress_ip() -> None:
    data = changed("groups.0.egressIPs", ["10.244.2.9"])
    data["groups"][0]["destinationCIDRs"] = ["172.18.0.0/16"]
    assert message_of(data, "groups[0].egressIPs[0]") == (
        "10.244.2.9 is inside sourceCIDRs[1] 10.244.2.0/24, the addresses of the pods it would serve"
    )


@pytest.mark.parametrize("address", ["0.0.0.0", "127.0.0.2", "224.0.0.5", "::1", "169.254.0.9"])
def test_unusable_node_address(address: str) -> None:
    assert message_of(changed("node.address", address), "node.address").startswith(
        f"{address} cannot be a node address: it is"
    )


@pytest.mark.parametrize(
    ("name", "why"),
    [
        (".", "'.' and '..' are directory names"),
        ("..", "'.' and '..' are directory names"),
        ("net'0", 'contains "\'"'),
        ('net"0', "contains '\"'"),
        ("net;0", "contains ';'"),
        ("net 0", "contains ' '"),
        ("net\t0", "contains '\\t'"),
        ("net/0", "contains '/'"),
        ("net:0", "contains ':'"),
        ("éééééééé", "16 bytes in UTF-8; Linux allows at most 15"),
    ],
)
def test_interface_names_the_kernel_or_nftables_refuse(name: str, why: str) -> None:
    message = message_of(changed("groups.0.interface", name), "groups[0].interface")
    assert message.startswith("is not a valid interface name (") and why in message


def test_an_interface_name_of_15_bytes_is_fine() -> None:
    assert parse_settings(changed("groups.0.interface", "ééééééé0")).groups[0].interface == "ééééééé0"


def test_a_malformed_cidr_and_a_duplicate_egress_ip_are_reported_together() -> None:
    data = changed("groups.0.egressIPs", ["172.18.0.42", "172.18.0.42"])
    data["groups"][0]["sourceCIDRs"] = ["10.244.1.0/24", "10.244.2.0/33"]
    assert fields_of(data) == {"groups[0].egressIPs[1]", "groups[0].sourceCIDRs[1]"}


def test_relations_are_not_guessed_from_half_parsed_lists() -> None:
    # destinationCIDRs[0] does not parse: excludedCIDRs[0] is not "outside every destination"
    data = changed("groups.0.destinationCIDRs", ["172.18.0.0/33"])
    assert fields_of(data) == {"groups[0].destinationCIDRs[0]"}


def test_a_huge_bad_value_is_not_echoed_whole() -> None:
    huge = "x" * 100_000
    data = changed("groups.0.interface", huge)
    data["kubernetes"] = {huge: 1}
    problems = problems_of(data)
    assert all(len(p.message) < 500 and len(p.field) < 500 for p in problems)
    assert any("more characters)" in p.message for p in problems)
    assert len(str(ConfigError(problems))) < 2000


def test_overlapping_destinations_in_one_group() -> None:
    data = changed("groups.0.destinationCIDRs", ["172.18.0.0/16", "192.0.2.0/24", "172.18.5.0/24"])
    assert (
        message_of(data, "groups[0].destinationCIDRs[2]") == "172.18.5.0/24 overlaps destinationCIDRs[0] 172.18.0.0/16"
    )


def test_destination_entirely_excluded() -> None:
    data = changed("groups.0.destinationCIDRs", ["172.18.0.0/16", "192.0.2.0/28"])
    data["groups"][0]["excludedCIDRs"] = ["172.18.0.0/29", "192.0.2.0/24"]
    fields = fields_of(data)
    assert "groups[0].destinationCIDRs[1]" in fields
    message = message_of(data, "groups[0].destinationCIDRs[1]")
    assert "entirely excluded by excludedCIDRs[1] 192.0.2.0/24" in message
    assert "nothing would be steered" in message


def test_excluded_cidr_outside_the_destinations() -> None:
    data = changed("groups.0.excludedCIDRs", ["172.18.0.0/29", "10.96.0.0/12"])
    assert message_of(data, "groups[0].excludedCIDRs[1]") == "10.96.0.0/12 is not inside any of destinationCIDRs"


def test_excluded_cidr_of_the_other_family() -> None:
    data = changed("groups.0.excludedCIDRs", ["fd00::/64"])
    assert "is not inside any of destinationCIDRs" in message_of(data, "groups[0].excludedCIDRs[0]")


def test_networks_of_the_wrong_family_for_the_egress_ips() -> None:
    data = changed("groups.0.sourceCIDRs", ["10.244.1.0/24", "fd00:10:244:1::/64"])
    assert message_of(data, "groups[0].sourceCIDRs[1]") == "IPv6 but the group's egress IPs are not"


def test_groups_with_overlapping_sources_and_destinations() -> None:
    data = config()
    data["groups"].append(second_group(sourceCIDRs=["10.244.0.0/16"], destinationCIDRs=["172.18.200.0/24"]))
    message = message_of(data, "groups[1].destinationCIDRs")
    assert "overlaps groups[0] (outpost)" in message
    assert "two egress groups" in message


def test_groups_may_share_destinations_for_other_sources() -> None:
    data = config()
    data["groups"].append(second_group(sourceCIDRs=["10.244.3.0/24"], destinationCIDRs=["172.18.0.0/16"]))
    assert len(parse_settings(data).groups) == 2


def test_group_names_are_unique_dns_labels() -> None:
    data = config()
    data["groups"].append(second_group(name="outpost"))
    assert message_of(data, "groups[1].name") == "'outpost' is already the name of groups[0]"
    assert "must be a DNS label" in message_of(changed("groups.0.name", "Out_Post"), "groups[0].name")


@pytest.mark.parametrize("key", ["egressIPs", "interface", "sourceCIDRs", "destinationCIDRs", "name"])
def test_required_group_fields(key: str) -> None:
    data = config()
    del data["groups"][0][key]
    assert "is required" in message_of(data, f"groups[0].{key}")


def test_empty_egress_ip_list() -> None:
    assert message_of(changed("groups.0.egressIPs", []), "groups[0].egressIPs") == "must not be empty"


def test_list_fields_must_be_lists() -> None:
    assert message_of(changed("groups.0.egressIPs", "172.18.0.42"), "groups[0].egressIPs") == "must be a list, got str"


# --- unknown keys --------------------------------------------------------------------


def test_unknown_top_level_key() -> None:
    data = config()
    data["logging"] = {"level": "debug"}
    message = message_of(data, "logging")
    known = "node, mode, kubernetes, timing, groups, metrics, mqtt, mesh, conntrack"
    assert message.startswith(f"unknown key (known keys: {known})")


def test_unknown_timing_key_in_snake_case_gets_a_hint() -> None:
    data = changed("timing.lease_duration", "3s")
    assert message_of(data, "timing.lease_duration") == "unknown key (did you mean 'leaseDuration'?)"


@pytest.mark.parametrize(
    ("path", "field", "hint"),
    [
        ("groups.0.egressIps", "groups[0].egressIps", "egressIPs"),
        ("groups.0.destination_cidrs", "groups[0].destination_cidrs", "destinationCIDRs"),
        ("node.Address", "node.Address", "address"),
        ("kubernetes.token_file", "kubernetes.token_file", "tokenFile"),
    ],
)
def test_unknown_nested_keys_get_a_hint(path: str, field: str, hint: str) -> None:
    assert message_of(changed(path, "x"), field) == f"unknown key (did you mean {hint!r}?)"


def test_unknown_selector_key() -> None:
    data = config()
    group = data["groups"][0]
    del group["candidates"]
    group["nodeSelector"] = {"matchLabels": {"egress-gw": "true"}, "matchExpressions": []}
    assert "unknown key" in message_of(data, "groups[0].nodeSelector.matchExpressions")


# --- timing --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("250ms", 0.25), ("2.5s", 2.5), ("1m", 60.0), (" 3 s ", 3.0), ("4", 4.0), (4, 4.0), (4.5, 4.5)],
)
def test_durations_as_strings_and_numbers(value: Any, seconds: float) -> None:
    data = changed("timing.handoffGrace", value)
    assert parse_settings(data).timing.handoff_grace == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["2.5h", "-1s", "1.s", "fast", True, [1], math.inf, math.nan])
def test_bad_durations(value: Any) -> None:
    message = message_of(changed("timing.handoffGrace", value), "timing.handoffGrace")
    assert message.startswith(("must be seconds or a string like", "must be a duration", "must be finite"))


def test_timing_from_strings() -> None:
    data = changed(
        "timing",
        {
            "leaseDuration": "4s",
            "renewDeadline": "1500ms",
            "retryPeriod": 0.5,
            "apiTimeout": "0.75s",
            "addressLifetime": 2,
        },
    )
    timing = parse_settings(data).timing
    assert (timing.lease_duration, timing.renew_deadline, timing.retry_period, timing.api_timeout) == (
        4.0,
        1.5,
        0.5,
        0.75,
    )
    assert timing.handoff_grace == 4.0  # defaults to the lease duration


@pytest.mark.parametrize("value", [1.5, "1500ms", "0.5s"])
def test_address_lifetime_must_be_whole_seconds(value: Any) -> None:
    messages = [p.message for p in problems_of(changed("timing.addressLifetime", value))]
    assert any(m.startswith("must be whole seconds") for m in messages), messages


@pytest.mark.parametrize("value", [2, "2s", 2.0])
def test_address_lifetime_in_whole_seconds(value: Any) -> None:
    data = changed("timing", {"addressLifetime": value, "leaseDuration": "3.5s"})
    assert parse_settings(data).timing.address_lifetime == 2


def test_address_lifetime_below_the_kernel_minimum() -> None:
    assert "must be 1 to" in message_of(changed("timing.addressLifetime", 0), "timing.addressLifetime")


def test_t1_lease_must_outlast_the_daemon_and_nftables_fences() -> None:
    message = message_of(changed("timing.leaseDuration", "2.4s"), "timing.leaseDuration")
    assert message.startswith("(T1) leaseDuration > renewDeadline + kernel fence + safetyMargin fails")
    assert "2.4 <= 0.8 + (fenceTtl 1.5 + fenceSlack 0.05) + 0.1 = 2.45" in message


def test_t1_without_the_nftables_fence_counts_the_address_lifetime_and_slack() -> None:
    data = changed("timing.fenceTtl", 0)
    message = message_of(data, "timing.leaseDuration")
    assert "2.5 <= 0.8 + (addressLifetime 1 + kernelSlack 1.2 (fenceTtl is 0)) + 0.1 = 3.1" in message
    data["timing"]["leaseDuration"] = "3.4s"
    data["timing"]["handoffGrace"] = "3.4s"
    assert parse_settings(data).timing.fence_ttl == 0


def test_t1_counts_a_longer_fence_ttl() -> None:
    assert "(T1)" in message_of(changed("timing.fenceTtl", "1.6s"), "timing.leaseDuration")


def test_t2_renew_deadline_leaves_a_retry() -> None:
    data = changed("timing", {"renewDeadline": "600ms", "retryPeriod": "500ms", "apiTimeout": "300ms"})
    message = message_of(data, "timing.renewDeadline")
    assert message.startswith("(T2) renewDeadline > 1.2 * retryPeriod fails: 0.6 <= 0.6")


def test_t3_api_call_cannot_outlive_the_renew_deadline() -> None:
    message = message_of(changed("timing.apiTimeout", "1s"), "timing.apiTimeout")
    assert message.startswith("(T3) apiTimeout < renewDeadline fails: 1 >= 0.8")


def test_all_three_inequalities_at_once() -> None:
    data = changed("timing", {"leaseDuration": 1, "renewDeadline": 0.2, "retryPeriod": 1, "apiTimeout": 5})
    messages = sorted(p.message[:4] for p in problems_of(data))
    assert messages == ["(T1)", "(T2)", "(T3)"]


@pytest.mark.parametrize(
    ("timing", "field", "fragment"),
    [
        # the findings of the issue: each passed check-config before
        ({"leaseDuration": 1e12}, "leaseDuration", "must be 0.001 to 300 s (a standby waits this long"),
        ({"renewDeadline": 1e-9}, "renewDeadline", "must be 0.05 to 300 s (a renew must fit inside)"),
        ({"apiTimeout": 1e-6}, "apiTimeout", "must be 0.01 to 300 s (one API round trip must fit inside)"),
        ({"retryPeriod": "1ms"}, "retryPeriod", "must be 0.01 to 300 s (each attempt is an API request)"),
        ({"fenceTtl": 0.0001}, "fenceTtl", "must be 0 (off) or at least 1 ms (nftables timeouts are whole"),
        ({"fenceTtl": 0.2}, "fenceTtl", "must be at least retryPeriod (0.2 < 0.25)"),
        ({"fenceTtl": 1.2345}, "fenceTtl", "must be whole milliseconds"),
        ({"addressLifetime": 2**32}, "addressLifetime", "the kernel's valid_lft is 32 bits"),
        ({"addressLifetime": 2**32 - 1}, "addressLifetime", "means forever"),
        (
            {"fenceTtl": 0, "kernelSlack": 0, "leaseDuration": 5, "handoffGrace": 5},
            "kernelSlack",
            "must be 1 to 300 s (with the address fence alone",
        ),
        ({"fenceSlack": 0}, "fenceSlack", "must be 0.01 to 300 s (with the nftables fence on"),
        ({"handoffGrace": "10m"}, "handoffGrace", "must be 0 to 300 s"),
        ({"nonPreferredDelay": -0.1}, "nonPreferredDelay", "must be 0 to 300 s"),
        ({"safetyMargin": 1000}, "safetyMargin", "must be 0 to 300 s"),
        (
            {"renewDeadline": "1500ms", "leaseDuration": 4, "handoffGrace": 4},
            "addressLifetime",
            "must be longer than renewDeadline (1 <= 1.5)",
        ),
    ],
)
def test_every_timing_has_bounds_with_a_reason(timing: dict[str, Any], field: str, fragment: str) -> None:
    data = changed("timing", timing)
    assert fragment in message_of(data, f"timing.{field}")


def test_a_huge_integer_duration_is_a_problem_not_an_overflow() -> None:
    assert message_of(changed("timing.leaseDuration", 10**400), "timing.leaseDuration").startswith("must be finite")
    assert message_of(changed("timing.addressLifetime", "9" * 400), "timing.addressLifetime").startswith(
        "must be finite"
    )


def test_the_bounds_hold_at_their_edges() -> None:
    data = changed(
        "timing",
        {
            "leaseDuration": 300,
            "renewDeadline": 0.05,
            "retryPeriod": 0.01,
            "apiTimeout": 0.01,
            "fenceTtl": 0.01,
            "fenceSlack": 0.01,
            "handoffGrace": 300,
        },
    )
    timing = parse_settings(data).timing
    assert (timing.lease_duration, timing.retry_period, timing.fence_ttl) == (300, 0.01, 0.01)
    data = changed("timing", {"fenceTtl": 0, "kernelSlack": 1, "leaseDuration": 3.0, "handoffGrace": 3})
    assert parse_settings(data).timing.kernel_slack == 1


# --- node ------------------------------------------------------------------------------


def test_node_is_required() -> None:
    data = config()
    del data["node"]
    assert "is required" in message_of(data, "node")


def test_node_name_must_be_a_node_name() -> None:
    assert "DNS subdomain" in message_of(changed("node.name", "Kind_Worker3"), "node.name")


def test_candidate_needs_its_node_address() -> None:
    data = changed("node", {"name": "kind-worker4"})
    assert (
        message_of(data, "node.address") == "is required on a gateway candidate (this node is a candidate of groups[0])"
    )


def test_malformed_node_address() -> None:
    assert "is not an IP address" in message_of(changed("node.address", "kind-worker3.local"), "node.address")


# --- candidates or node selector -------------------------------------------------------


def test_group_needs_candidates_or_a_selector() -> None:
    data = config()
    del data["groups"][0]["candidates"]
    assert message_of(data, "groups[0]") == "needs exactly one of candidates (node names) or nodeSelector (labels)"


def test_group_cannot_have_both_candidates_and_a_selector() -> None:
    data = changed("groups.0.nodeSelector", {"matchLabels": {"egress-gw": "true"}})
    assert "exactly one of" in message_of(data, "groups[0]")


def test_candidate_listed_twice() -> None:
    data = changed("groups.0.candidates", ["kind-worker3", "kind-worker4", "kind-worker3"])
    assert message_of(data, "groups[0].candidates[2]") == "'kind-worker3' is listed twice"


def test_selector_label_value_must_be_a_string() -> None:
    data = config()
    del data["groups"][0]["candidates"]
    data["groups"][0]["nodeSelector"] = {"matchLabels": {"egress-gw": True}}
    message = message_of(data, "groups[0].nodeSelector.matchLabels.egress-gw")
    assert "quote 'true'" in message


def test_selector_label_key_must_be_valid() -> None:
    data = config()
    del data["groups"][0]["candidates"]
    data["groups"][0]["nodeSelector"] = {"matchLabels": {"egress gw": "true"}}
    assert "not a valid label key" in message_of(data, "groups[0].nodeSelector.matchLabels.egress gw")


@pytest.mark.parametrize("labels", [5, True, "egress-gw=true", ["egress-gw"]])
def test_selector_match_labels_must_be_a_mapping(labels: Any) -> None:
    data = config()
    del data["groups"][0]["candidates"]
    data["groups"][0]["nodeSelector"] = {"matchLabels": labels}
    assert "must be a mapping" in message_of(data, "groups[0].nodeSelector.matchLabels")


def test_empty_selector_is_reported_alongside_other_problems() -> None:
    data = changed("groups.0.nodeSelector", {"matchLabels": {}})
    data["groups"][0]["interface"] = "net0/eth"
    fields = fields_of(data)
    assert {"groups[0].interface", "groups[0].nodeSelector"} <= fields
    assert message_of(data, "groups[0].nodeSelector") == "matchLabels must not be empty"


# --- kubernetes access -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kube", "expected"),
    [
        ({}, KubeSettings()),
        ({"namespace": "kube-egress"}, KubeSettings(namespace="kube-egress")),
        ({"url": "http://172.18.0.2:6443"}, KubeSettings(access="url", url="http://172.18.0.2:6443")),
        (
            {"access": "url", "url": "https://api.example:6443", "tokenFile": "/run/token", "caFile": "/run/ca.crt"},
            KubeSettings(access="url", url="https://api.example:6443", token_file="/run/token", ca_file="/run/ca.crt"),
        ),
        (
            {"kubeconfig": "/etc/egressd/kubeconfig"},
            KubeSettings(access="kubeconfig", kubeconfig="/etc/egressd/kubeconfig"),
        ),
        ({"access": "in-cluster"}, KubeSettings()),
    ],
    ids=["default", "namespace", "url-inferred", "url-explicit", "kubeconfig-inferred", "in-cluster-explicit"],
)
def test_kubernetes_access_modes(kube: dict[str, Any], expected: KubeSettings) -> None:
    assert parse_settings(changed("kubernetes", kube)).kubernetes == expected


@pytest.mark.parametrize(
    ("kube", "field", "message"),
    [
        ({"access": "url"}, "kubernetes.url", "is required when access is url"),
        ({"access": "kubeconfig"}, "kubernetes.kubeconfig", "is required when access is kubeconfig"),
        ({"url": "172.18.0.2:6443"}, "kubernetes.url", "must be an http:// or https:// URL, got '172.18.0.2:6443'"),
        ({"access": "ssh"}, "kubernetes.access", "must be one of in-cluster, kubeconfig, url; got 'ssh'"),
        ({"access": "in-cluster", "url": "http://x:1"}, "kubernetes.url", "is set but access is in-cluster"),
        (
            {"access": "url", "url": "http://x:1", "kubeconfig": "/k"},
            "kubernetes.kubeconfig",
            "is set but access is url",
        ),
        ({"namespace": "Egress"}, "kubernetes.namespace", "must be a DNS label, got 'Egress'"),
    ],
)
def test_kubernetes_access_problems(kube: dict[str, Any], field: str, message: str) -> None:
    assert message_of(changed("kubernetes", kube), field) == message


# --- the document itself -----------------------------------------------------------------


@pytest.mark.parametrize("data", [[], "node: x", 3])
def test_document_must_be_a_mapping(data: Any) -> None:
    (problem,) = problems_of(data)
    assert problem.message.startswith("must be a mapping")


def test_empty_document() -> None:
    assert fields_of(None) == {"node"}


def test_settings_are_frozen() -> None:
    settings = parse_settings(config())
    with pytest.raises(AttributeError):
        settings.node = NodeSettings(name="other")  # type: ignore[misc]
    assert isinstance(settings, Settings)


def test_selected_candidates_replace_a_node_selector() -> None:
    data = changed("groups.0.candidates", None)
    data["groups"][0]["nodeSelector"] = {"matchLabels": {"egress-gw": "true"}}
    settings = parse_settings(data)
    assert settings.candidate_groups() == ()
    resolved = settings.with_selected_candidates({settings.groups[0].name: ["kind-worker4", settings.node.name]})
    assert resolved.groups[0].candidates == tuple(sorted(["kind-worker4", settings.node.name]))
    assert resolved.candidate_groups() == resolved.groups


def test_selected_candidate_without_an_address_is_a_config_error() -> None:
    data = changed("groups.0.candidates", None)
    data["groups"][0]["nodeSelector"] = {"matchLabels": {"egress-gw": "true"}}
    data["node"].pop("address", None)
    settings = parse_settings(data)
    with pytest.raises(ConfigError, match=r"node\.address"):
        settings.with_selected_candidates({settings.groups[0].name: [settings.node.name]})


@pytest.mark.parametrize(
    ("listen", "expected"),
    [("0.0.0.0:9464", ("0.0.0.0", 9464)), ("[::1]:9100", ("::1", 9100)), ("", None), (None, None)],
)
def test_metrics_listen(listen: str | None, expected: tuple[str, int] | None) -> None:
    data = changed("metrics", {"listen": listen})
    assert parse_settings(data).metrics.listen == expected


@pytest.mark.parametrize("listen", ["9464", "host:", "host:70000", ":9464", 9464])
def test_metrics_listen_rejects_bad_addresses(listen: object) -> None:
    with pytest.raises(ConfigError, match=r"metrics\.listen"):
        parse_settings(changed("metrics", {"listen": listen}))


def test_environment_references_are_expanded_and_missing_ones_named() -> None:
    from egressd.core.config import expand_env  # noqa: PLC0415

    data = {"node": {"name": "${NODE_NAME}", "address": "${NODE_IP}"}, "groups": [{"interface": "eth-${X}"}]}
    expanded, problems = expand_env(data, {"NODE_NAME": "kind-worker3", "NODE_IP": "172.18.0.5"})
    assert expanded["node"] == {"name": "kind-worker3", "address": "172.18.0.5"}
    assert problems == [Problem("groups[0].interface", "environment variable X is not set")]


def test_an_mqtt_section_is_parsed_and_its_problems_named() -> None:
    settings = parse_settings(changed("mqtt", {"host": "127.0.0.1", "port": 1884, "cluster": "lab"}))
    assert settings.mqtt is not None and settings.mqtt.port == 1884
    assert parse_settings(changed("mqtt", None)).mqtt is None
    with pytest.raises(ConfigError, match=r"mqtt\.qos"):
        parse_settings(changed("mqtt", {"host": "x", "qos": 3}))


# --- Kubernetes mode -----------------------------------------------------------------


def kubernetes_mode(**extra: Any) -> dict[str, Any]:
    data = config()
    del data["groups"]
    data["mode"] = "kubernetes"
    data.update(extra)
    return data


def test_kubernetes_mode_takes_its_groups_from_the_policies() -> None:
    settings = parse_settings(kubernetes_mode())
    assert settings.mode == "kubernetes" and settings.groups == ()
    assert settings.kubernetes.exclude_cordoned is False


def test_kubernetes_mode_rejects_static_groups() -> None:
    data = kubernetes_mode()
    data["groups"] = config()["groups"]
    assert "must be absent in mode kubernetes" in message_of(data, "groups")


def test_kubernetes_mode_needs_the_node_address() -> None:
    data = kubernetes_mode()
    del data["node"]["address"]
    assert "is required in mode kubernetes" in message_of(data, "node.address")


def test_unknown_mode_is_named() -> None:
    assert message_of(kubernetes_mode(mode="dynamic"), "mode") == "must be static or kubernetes, got 'dynamic'"


def test_exclude_cordoned_must_be_a_boolean() -> None:
    data = kubernetes_mode()
    data["kubernetes"] = {**data.get("kubernetes", {}), "excludeCordoned": "yes"}
    assert message_of(data, "kubernetes.excludeCordoned") == "must be true or false, got 'yes'"


# --- environment references ---------------------------------------------------------


def test_expand_env_bounds_its_walk() -> None:
    deep: Any = "${NODE_NAME}"
    for _ in range(5000):  # deeper than the interpreter's recursion limit
        deep = [deep]
    data, problems = expand_env({"node": deep}, {"NODE_NAME": "gw-a"})
    assert [str(p) for p in problems] == [f"node{'[0]' * (ENV_DEPTH_MAX - 1)}: nested deeper than 64 levels"]
    assert data["node"] is not deep  # what lies within the bound is still expanded
    shallow, none = expand_env({"node": {"name": "${NODE_NAME}"}}, {"NODE_NAME": "gw-a"})
    assert (shallow, none) == ({"node": {"name": "gw-a"}}, [])
