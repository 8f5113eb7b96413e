"""Static mode at start: egress IPs against the addresses the node's
interfaces already have (their subnets' network and broadcast addresses, and
the addresses themselves)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from egressd.cli.main import egress_ips_on_interfaces, load_settings

EXAMPLE = Path(__file__).parents[2] / "config" / "egressd.yaml"


def on_net0(*addresses: str) -> dict[str, list[ipaddress.IPv4Interface | ipaddress.IPv6Interface]]:
    return {"net0": [ipaddress.ip_interface(a) for a in addresses]}


def test_egress_ips_clear_of_the_interfaces_subnets_pass() -> None:
    settings = load_settings(str(EXAMPLE))
    assert egress_ips_on_interfaces(settings, on_net0("172.18.0.5/16", "fd00:18::5/64")) == []
    assert egress_ips_on_interfaces(settings, {}) == []


@pytest.mark.parametrize(
    ("egress_ip", "address", "message"),
    [
        ("172.18.0.43", "172.18.0.43/24", "172.18.0.43 is already an address of this node on net0"),
        ("172.18.0.43", "172.18.0.41/30", "172.18.0.43 is the broadcast address of 172.18.0.40/30 on net0"),
        ("172.18.0.44", "172.18.0.45/30", "172.18.0.44 is the network address of 172.18.0.44/30 on net0"),
    ],
)
def test_an_egress_ip_on_the_edge_of_the_interfaces_subnet_is_refused(
    tmp_path: Path, egress_ip: str, address: str, message: str
) -> None:
    config = tmp_path / "egressd.yaml"
    config.write_text(EXAMPLE.read_text().replace("- 172.18.0.43", f"- {egress_ip}"))
    problems = egress_ips_on_interfaces(load_settings(str(config)), on_net0(address))
    assert [(p.field, p.message.split(";")[0]) for p in problems] == [("groups[0].egressIPs[1]", message)]


def test_only_groups_this_node_may_serve_are_checked(tmp_path: Path) -> None:
    config = tmp_path / "egressd.yaml"
    config.write_text(EXAMPLE.read_text().replace("name: kind-worker3", "name: kind-worker"))
    settings = load_settings(str(config))
    assert egress_ips_on_interfaces(settings, on_net0("172.18.0.43/24")) == []
