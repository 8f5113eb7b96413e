"""Rendering of egressd's nftables transactions (pure, no kernel)."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from egressd.core import nft
from egressd.core.settings import EgressGroup, IPAddress

ip = ipaddress.ip_address
net = ipaddress.ip_network


def group(name: str = "web-a", ips: tuple[str, ...] = ("172.18.0.42",), **kw: Any) -> EgressGroup:
    return EgressGroup(
        name=name,
        egress_ips=tuple(ip(i) for i in ips),
        interface="net0",
        candidates=("n1",),
        source_cidrs=tuple(net(c) for c in kw.get("src", ("10.0.1.0/24",))),
        destination_cidrs=tuple(net(c) for c in kw.get("dst", ("172.18.0.0/16",))),
        excluded_cidrs=tuple(net(c) for c in kw.get("excl", ())),
    )


def test_names_are_identifiers_and_invertible() -> None:
    assert nft.ident("web-a") == "g_web_a"
    assert nft.set_name("web-a", "src", 4) == "g_web_a_src4"
    assert nft.group_chain("web-a", 6) == "g_web_a_v6"
    assert nft.group_from_ident("g_web_a_v6") == "web-a"
    assert nft.group_from_ident("postrouting") is None


def test_table_is_replaced_in_one_transaction_and_names_only_its_own_table() -> None:
    text = nft.render_table([group()])
    lines = text.splitlines()
    assert lines[:3] == ["table inet egressd", "delete table inet egressd", "table inet egressd {"]
    tables = {line.split("inet ")[1].split()[0] for line in lines if line.startswith(("table", "delete table"))}
    assert tables == {"egressd"}
    assert "type nat hook postrouting priority srcnat; policy accept;" in text
    rule = "ip saddr @g_web_a_src4 ip daddr @g_web_a_dst4 ip daddr != @g_web_a_excl4 jump g_web_a_v4"
    assert rule in text
    assert "snat" not in text  # nothing owned yet: staged only


def test_sets_are_collapsed_sorted_and_omit_empty_elements() -> None:
    g = group(src=("10.0.1.7/32", "10.0.1.0/24", "10.0.3.0/24", "10.0.2.0/24", "10.9.9.9/32"), excl=())
    text = nft.render_table([g])
    assert "elements = { 10.0.1.0/24, 10.0.2.0/23, 10.9.9.9 }" in text
    excl_block = text.split("set g_web_a_excl4 {")[1].split("}")[0]
    assert "elements" not in excl_block
    assert "flags interval" in excl_block


def test_families_follow_the_egress_ips() -> None:
    g = group(ips=("fd00::42",), src=("fd01::/64",), dst=("fd02::/48",), excl=("fd02::5/128",))
    text = nft.render_table([g])
    assert "ip6 saddr @g_web_a_src6 ip6 daddr @g_web_a_dst6 ip6 daddr != @g_web_a_excl6 jump g_web_a_v6" in text
    assert "type ipv6_addr" in text
    assert "elements = { fd02::5 }" in text
    assert "_v4" not in text


def test_owned_ip_gets_its_snat_rule_in_the_group_chain() -> None:
    text = nft.render_table(
        [group(), group("db", ("172.18.0.43",), src=("10.0.2.0/24",))], {ip("172.18.0.42"): "web-a"}
    )
    chain = text.split("chain g_web_a_v4 {")[1].split("}")[0]
    assert chain.strip() == "snat ip to 172.18.0.42"
    assert text.split("chain g_db_v4 {")[1].split("}")[0].strip() == ""


def test_activation_touches_one_chain_only() -> None:
    text = nft.render_group_chain("web-a", 4, [ip("172.18.0.42")])
    assert text == "flush chain inet egressd g_web_a_v4\nadd rule inet egressd g_web_a_v4 snat ip to 172.18.0.42\n"
    assert nft.render_group_chain("web-a", 4, []) == "flush chain inet egressd g_web_a_v4\n"


def test_several_owned_ips_split_sources_by_a_fixed_hash_in_address_order() -> None:
    ips: list[IPAddress] = [ip("172.18.0.44"), ip("172.18.0.42"), ip("172.18.0.43")]
    assert nft.snat_rules("web-a", 4, ips) == [
        "jhash ip saddr mod 3 seed 0x0 == 0 snat ip to 172.18.0.42",
        "jhash ip saddr mod 3 seed 0x0 == 1 snat ip to 172.18.0.43",
        "jhash ip saddr mod 3 seed 0x0 == 2 snat ip to 172.18.0.44",
    ]
    assert nft.snat_rules("web-a", 6, [ip("fd00::1")]) == ["snat ip6 to fd00::1"]


def test_delete_creates_before_deleting_so_absence_is_no_error() -> None:
    assert nft.render_delete(fence=False) == "table inet egressd\ndelete table inet egressd\n"
    assert "delete table arp egressd_arp" in nft.render_delete()


def test_fence_stage_never_flushes_the_timeout_sets() -> None:
    text = nft.render_fence_stage([ip("172.18.0.42"), ip("fd00::42")])
    assert "flush set inet egressd_fence owned" not in text
    assert "flush set arp egressd_arp owned" not in text
    assert "add rule inet egressd_fence postrouting ip saddr @egress4 ip saddr != @owned4 drop" in text
    assert "add rule arp egressd_arp output arp saddr ip @egress arp saddr ip != @owned drop" in text
    assert "add element arp egressd_arp egress { 172.18.0.42 }" in text
    assert "add element inet egressd_fence egress6 { fd00::42 }" in text


def test_fence_refresh_resets_the_timeout_portably() -> None:
    text = nft.render_fence_refresh([ip("172.18.0.42")], 800)
    assert text.splitlines() == [
        "add element inet egressd_fence owned4 { 172.18.0.42 timeout 800ms }",
        "delete element inet egressd_fence owned4 { 172.18.0.42 }",
        "add element inet egressd_fence owned4 { 172.18.0.42 timeout 800ms }",
        "add element arp egressd_arp owned { 172.18.0.42 timeout 800ms }",
        "delete element arp egressd_arp owned { 172.18.0.42 }",
        "add element arp egressd_arp owned { 172.18.0.42 timeout 800ms }",
    ]
    assert "arp" not in nft.render_fence_refresh([ip("fd00::42")], 800)
    with pytest.raises(ValueError, match="at least 1 ms"):
        nft.render_fence_refresh([ip("172.18.0.42")], 0)


def test_parse_active_reads_snat_addresses_of_group_chains_only() -> None:
    listing = {
        "nftables": [
            {"metainfo": {"version": "1.0.6"}},
            {"rule": {"table": "egressd", "chain": "postrouting", "expr": [{"jump": {"target": "g_web_a_v4"}}]}},
            {
                "rule": {
                    "table": "egressd",
                    "chain": "g_web_a_v4",
                    "expr": [{"snat": {"family": "ip", "addr": "172.18.0.42"}}],
                }
            },
            {
                "rule": {
                    "table": "egressd",
                    "chain": "g_db_v6",
                    "expr": [{"snat": {"family": "ip6", "addr": "fd00::1"}}],
                }
            },
            {"rule": {"table": "other", "chain": "g_x_v4", "expr": [{"snat": {"family": "ip", "addr": "1.2.3.4"}}]}},
        ]
    }
    assert nft.parse_active(listing) == {ip("172.18.0.42"): "web-a", ip("fd00::1"): "db"}
    assert nft.parse_active({}) == {}


def test_parse_fence_reads_remaining_time() -> None:
    listing = {
        "nftables": [
            {"set": {"name": "owned4", "elem": [{"elem": {"val": "172.18.0.42", "timeout": 800, "expires": 0.5}}]}}
        ]
    }
    assert nft.parse_fence(listing) == {ip("172.18.0.42"): 0.5}
