"""Rendering of egressd's nftables transactions (pure, no kernel)."""

from __future__ import annotations

import ipaddress
import random
from dataclasses import replace
from typing import Any

import pytest

from egressd.core import nft
from egressd.core.assignment import sources_for
from egressd.core.model import EgressGroup, IPAddress

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


def split_sources(g: EgressGroup, version: int) -> dict[IPAddress, list[ipaddress.IPv4Network | ipaddress.IPv6Network]]:
    """The per-IP source sets of one family, as networks: the group's addresses split between its IPs."""
    sets = nft.source_sets(g, version)
    return {
        a: [ipaddress.ip_network(e) for e in sets[nft.ip_set_name(g.name, a)]]
        for a in g.egress_ips
        if nft.ip_set_name(g.name, a) in sets
    }


def set_deltas(old: list[EgressGroup], new: list[EgressGroup]) -> list[nft.SetDelta]:
    """What the SNAT adapter applies when only sources change (:func:`nft.same_layout`):
    the difference of the source sets of every group whose sources changed."""
    before = {g.name: g for g in old}
    return [
        d
        for g in new
        if before[g.name].source_cidrs != g.source_cidrs
        for d in nft.diff_source_sets(nft.group_source_sets(before[g.name]), nft.group_source_sets(g))
    ]


def source_delta(old: list[EgressGroup], new: list[EgressGroup]) -> str:
    """The transaction of :func:`set_deltas`."""
    return nft.render_set_deltas(set_deltas(old, new))


def test_names_are_identifiers_and_invertible() -> None:
    assert nft.ident("web-a") == "g_web_a"
    assert nft.set_name("web-a", "src", 4) == "g_web_a_src4"
    assert nft.group_chain("web-a", 6) == "g_web_a_v6"
    assert nft.group_from_ident("g_web_a_v6") == "web-a"
    assert nft.group_from_ident("postrouting") is None
    assert nft.ip_set_name("web-a", ip("172.18.0.42")) == "g_web_a_s_172_18_0_42"
    assert nft.ip_set_name("web-a", ip("fd00::42")) == "g_web_a_s_fd00_0_0_0_0_0_0_42"


def test_names_with_dots_are_one_to_one() -> None:
    names = ["web.a", "web-a", "web.a-b", "web-a.b", "a.b.c", "a-b-c", "1.2.3.4", "a--b", "a..b"]
    chains = [nft.group_chain(n, 4) for n in names]
    assert nft.group_chain("web.a-b", 4) == "g_web.a_b_v4"
    assert len(set(chains)) == len(names)
    assert [nft.group_from_ident(c) for c in chains] == names
    ip_sets = {nft.ip_set_name(n, ip(a)) for n in names for a in ("10.0.0.1", "10.0.0.2", "fd00::1")}
    kind_sets = {nft.set_name(n, k, v) for n in names for k in ("src", "dst", "excl") for v in (4, 6)}
    assert len(ip_sets) == 3 * len(names)
    assert len(kind_sets) == 6 * len(names)
    assert not ip_sets & kind_sets


@pytest.mark.parametrize("name", ["Web", "web_a", "web a", "", "wéb"])
def test_names_outside_dns_characters_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="must consist of"):
        nft.ident(name)
    if "_" not in name:  # (g_web_a_v4 is the chain of web-a)
        assert nft.group_from_ident(f"g_{name}_v4") is None


def test_names_longer_than_nft_accepts_are_refused() -> None:
    longest = "a" * (nft.MAX_NAME - len("g__s_") - len("fd00_0_0_0_0_0_0_42"))
    assert len(nft.ip_set_name(longest, ip("fd00::42"))) == nft.MAX_NAME
    too_long = longest + "b"
    assert len(nft.ip_set_name(too_long, ip("10.0.0.1"))) < nft.MAX_NAME  # IPv4 names are shorter
    with pytest.raises(ValueError, match="at most 255"):
        nft.ip_set_name(too_long, ip("fd00::42"))
    with pytest.raises(ValueError, match="too long"):
        nft.render_table([group(too_long, ("fd00::42",), src=("fd01::/64",), dst=("fd02::/48",))])
    subdomain = ".".join(["a" * 63] * 4)[:253]  # the longest Kubernetes object name
    with pytest.raises(ValueError, match="too long"):
        nft.group_chain(subdomain, 4)


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
    assert elements_of(text, "g_web_a_src4") == ["10.0.1.0/24", "10.0.2.0/23", "10.9.9.9"]
    # one IP: its set has every source
    assert elements_of(text, "g_web_a_s_172_18_0_42") == ["10.0.1.0/24", "10.0.2.0/23", "10.9.9.9"]
    excl_block = text.split("set g_web_a_excl4 {")[1].split("}")[0]
    assert "elements" not in excl_block
    assert "flags interval" in excl_block
    assert "auto-merge" not in text  # elements stay exactly as written, so deltas can name them


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
    assert chain.strip() == "ip saddr @g_web_a_s_172_18_0_42 snat ip to 172.18.0.42"
    assert text.split("chain g_db_v4 {")[1].split("}")[0].strip() == ""


def test_an_owned_ip_that_left_its_group_gets_no_rule() -> None:
    text = nft.render_table([group()], {ip("172.18.0.42"): "web-a", ip("172.18.0.49"): "web-a"})
    chain = text.split("chain g_web_a_v4 {")[1].split("}")[0]
    assert chain.strip() == "ip saddr @g_web_a_s_172_18_0_42 snat ip to 172.18.0.42"
    assert "172_18_0_49" not in text


def test_activation_touches_one_chain_only() -> None:
    text = nft.render_group_chain("web-a", 4, [ip("172.18.0.42")])
    assert text == (
        "flush chain inet egressd g_web_a_v4\n"
        "add rule inet egressd g_web_a_v4 ip saddr @g_web_a_s_172_18_0_42 snat ip to 172.18.0.42\n"
    )
    assert nft.render_group_chain("web-a", 4, []) == "flush chain inet egressd g_web_a_v4\n"


def test_each_owned_ip_nats_only_its_own_sources() -> None:
    ips: list[IPAddress] = [ip("172.18.0.44"), ip("172.18.0.42"), ip("172.18.0.43"), ip("fd00::1")]
    assert nft.snat_rules("web-a", 4, ips) == [
        "ip saddr @g_web_a_s_172_18_0_42 snat ip to 172.18.0.42",
        "ip saddr @g_web_a_s_172_18_0_43 snat ip to 172.18.0.43",
        "ip saddr @g_web_a_s_172_18_0_44 snat ip to 172.18.0.44",
    ]
    assert nft.snat_rules("web-a", 6, ips) == ["ip6 saddr @g_web_a_s_fd00_0_0_0_0_0_0_1 snat ip6 to fd00::1"]


# -- one set per egress IP ---------------------------------------------------------

THREE = ("172.18.0.42", "172.18.0.43", "172.18.0.44")
PODS = tuple(f"10.0.{i // 200}.{i % 200 + 1}/32" for i in range(600))


def elements_of(text: str, name: str) -> list[str]:
    block = text.split(f"set {name} {{\n")[1].split("\n\t}", maxsplit=1)[0]
    if "elements = {" not in block:
        return []
    return [e.strip() for e in block.split("elements = { ")[1].removesuffix(" }").split(",")]


def addresses(elements: list[str]) -> set[IPAddress]:
    return {a for e in elements for a in net(e)}


def test_every_source_is_in_the_set_of_exactly_its_sources_for_ip() -> None:
    g = group(ips=THREE, src=PODS)
    text = nft.render_table([g])
    per_ip = {a: addresses(elements_of(text, nft.ip_set_name("web-a", ip(a)))) for a in THREE}
    for a in THREE:
        expected = {n.network_address for n in sources_for(g, ip(a))}
        assert per_ip[a] == expected
        assert len(expected) > 100  # the hash spreads: no IP is left without sources
    assert sum(len(v) for v in per_ip.values()) == len(PODS)
    assert addresses(elements_of(text, "g_web_a_src4")) == {net(p).network_address for p in PODS}


def test_sources_follow_their_ip_not_what_the_node_owns() -> None:
    g = group(ips=THREE, src=PODS)
    everything = nft.render_table([g], {ip(a): "web-a" for a in THREE})
    one = nft.render_table([g], {ip("172.18.0.43"): "web-a"})
    nothing = nft.render_table([g])
    for a in THREE:
        name = nft.ip_set_name("web-a", ip(a))
        assert elements_of(everything, name) == elements_of(one, name) == elements_of(nothing, name)


def test_a_node_owning_one_of_several_ips_nats_only_that_ips_sources() -> None:
    g = group(ips=THREE, src=PODS)
    text = nft.render_table([g], {ip("172.18.0.43"): "web-a"})
    chain = text.split("chain g_web_a_v4 {")[1].split("}")[0].strip().splitlines()
    assert [r.strip() for r in chain] == ["ip saddr @g_web_a_s_172_18_0_43 snat ip to 172.18.0.43"]
    mine = addresses(elements_of(text, "g_web_a_s_172_18_0_43"))
    others = addresses(elements_of(text, "g_web_a_s_172_18_0_42") + elements_of(text, "g_web_a_s_172_18_0_44"))
    assert mine == {n.network_address for n in sources_for(g, ip("172.18.0.43"))}
    assert others and not mine & others
    # the others' sources stay selected (jump and guard): dropped un-NATed, never leaked
    assert others <= addresses(elements_of(text, "g_web_a_src4"))
    guard = text.split("chain unnatted {")[1].split("}")[0]
    assert "ip saddr @g_web_a_src4 ip daddr @g_web_a_dst4 ip daddr != @g_web_a_excl4 counter drop" in guard


def pick(candidates: list[str], g: EgressGroup, want: str) -> str:
    """The first candidate source that ``sources_for`` gives to ``want`` in ``g``."""
    for c in candidates:
        if net(c) in sources_for(replace(g, source_cidrs=(net(c),)), ip(want)):
            return c
    raise AssertionError(f"no candidate for {want}")


def test_overlapping_sources_the_most_specific_decides() -> None:
    two = group(ips=("172.18.0.42", "172.18.0.43"), src=())
    a, b = ip("172.18.0.42"), ip("172.18.0.43")
    wide = pick([f"10.0.{i}.0/24" for i in range(50)], two, "172.18.0.42")
    base = wide.rsplit(".", 1)[0]
    host = pick([f"{base}.{i}/32" for i in range(1, 250)], two, "172.18.0.43")
    g = replace(two, source_cidrs=(net(wide), net(host)))
    parts = split_sources(g, 4)
    assert parts[b] == [net(host)]
    assert {x for n in parts[a] for x in n} == set(net(wide)) - {net(host).network_address}
    assert parts[a] == sorted(parts[a], key=lambda n: int(n.network_address))
    # the host's address is in exactly one per-IP set, and the union set has the /24 once
    text = nft.render_table([g])
    assert elements_of(text, "g_web_a_src4") == [wide]
    assert host.removesuffix("/32") not in elements_of(text, "g_web_a_s_172_18_0_42")
    assert elements_of(text, "g_web_a_s_172_18_0_43") == [host.removesuffix("/32")]
    # a host of the wide CIDR's own IP inside it changes nothing
    same = pick([f"{base}.{i}/32" for i in range(1, 250)], two, "172.18.0.42")
    assert split_sources(replace(g, source_cidrs=(*g.source_cidrs, net(same))), 4) == parts
    # nested three deep: a /28 of b inside the /24 of a, a host of a inside the /28
    inner = pick([f"{base}.{i * 16}/28" for i in range(16)], two, "172.18.0.43")
    first = net(inner).network_address
    host_a = pick([f"{first + i}/32" for i in range(16)], two, "172.18.0.42")
    nested = split_sources(replace(two, source_cidrs=(net(wide), net(inner), net(host_a))), 4)
    in_b = {x for n in nested[b] for x in n}
    assert in_b == set(net(inner)) - {net(host_a).network_address}
    assert {x for n in nested[a] for x in n} == set(net(wide)) - in_b


def test_split_matches_the_longest_prefix_address_by_address() -> None:
    """Random nested sources in a /23: every address of a source is in the part
    of the IP of its most specific source, and in no other part."""
    rnd = random.Random(42)
    base = int(ipaddress.IPv4Address("10.7.0.0"))
    for _ in range(40):
        sources = set()
        for _ in range(rnd.randint(1, 25)):
            prefix = rnd.randint(23, 32)
            offset = rnd.randrange(512) >> (32 - prefix) << (32 - prefix)
            sources.add(ipaddress.IPv4Network((base + offset, prefix)))
        g = group(ips=THREE, src=tuple(str(n) for n in sources))
        parts = {a: {x for n in nets for x in n} for a, nets in split_sources(g, 4).items()}
        owner = {n: next(a for a in g.egress_ips if n in sources_for(g, a)) for n in sources}
        for x in {x for n in sources for x in n}:
            innermost = max((n for n in sources if x in n), key=lambda n: n.prefixlen)
            assert [a for a, xs in parts.items() if x in xs] == [owner[innermost]]
        assert sum(len(xs) for xs in parts.values()) == len({x for n in sources for x in n})


# -- source updates --------------------------------------------------------------


def own_set(g: EgressGroup, source: str) -> str:
    """The per-IP set that holds ``source`` of ``g``."""
    return next(nft.ip_set_name(g.name, a) for a in g.egress_ips if net(source) in sources_for(g, a))


def test_delta_adds_and_deletes_only_what_changed() -> None:
    old = group(ips=THREE, src=PODS[:10])
    new = group(ips=THREE, src=(*PODS[1:10], PODS[20]))
    deltas = set_deltas([old], [new])
    added = {e for d in deltas for e in d.added}
    deleted = {e for d in deltas for e in d.deleted}
    gone, came = net(PODS[0]).network_address, net(PODS[20]).network_address
    assert gone in addresses(sorted(deleted)) and gone not in addresses(sorted(added))
    assert came in addresses(sorted(added))

    # the sets touched: the union set and those of the two sources' own IPs
    assert {d.name for d in deltas} == {"g_web_a_src4", own_set(old, PODS[0]), own_set(new, PODS[20])}
    text = source_delta([old], [new])
    verbs = {line.split(" inet egressd ")[0] for line in text.splitlines()}
    assert verbs == {"add element", "delete element"}


def test_applying_a_delta_gives_what_a_full_stage_would() -> None:
    """Every set after the delta equals the set a fresh table would hold."""
    changes = [
        (PODS[:50], PODS[5:60]),
        (("10.0.0.0/24", "10.0.0.5/32"), ("10.0.0.0/24",)),
        (("10.0.0.0/24",), ("10.0.0.0/24", "10.0.0.5/32")),
        (("10.0.0.0/25", "10.0.0.128/25"), ("10.0.0.0/25",)),
        (("10.0.0.4/32", "10.0.0.5/32", "10.0.0.6/32"), ("10.0.0.5/32",)),
        (("10.0.0.5/32",), ("10.0.0.4/32", "10.0.0.5/32", "10.0.0.6/32", "10.0.0.7/32")),
        (PODS[:30], ()),
        ((), PODS[:30]),
    ]
    for before, after in changes:
        old, new = group(ips=THREE, src=before), group(ips=THREE, src=after)
        sets = {name: list(e) for v in (4,) for name, e in nft.source_sets(old, v).items()}
        for d in set_deltas([old], [new]):
            assert set(d.deleted) <= set(sets[d.name])  # only elements that exist are deleted
            kept = [e for e in sets[d.name] if e not in d.deleted]
            assert not addresses(kept) & addresses(list(d.added))  # no add overlaps what stays
            sets[d.name] = kept + list(d.added)
        assert {k: sorted(v) for k, v in sets.items()} == {k: sorted(v) for k, v in nft.source_sets(new, 4).items()}, (
            before,
            after,
        )


def test_delta_deletes_before_it_adds_in_each_set() -> None:
    old = group(src=("10.0.0.0/25",))
    new = group(src=("10.0.0.0/25", "10.0.0.128/25"))
    assert source_delta([old], [new]).splitlines() == [
        "delete element inet egressd g_web_a_s_172_18_0_42 { 10.0.0.0/25 }",
        "add element inet egressd g_web_a_s_172_18_0_42 { 10.0.0.0/24 }",
        "delete element inet egressd g_web_a_src4 { 10.0.0.0/25 }",
        "add element inet egressd g_web_a_src4 { 10.0.0.0/24 }",
    ]


def test_no_change_renders_nothing() -> None:
    g = group(ips=THREE, src=PODS[:20])
    assert source_delta([g], [g]) == ""
    reordered = replace(g, source_cidrs=tuple(reversed(g.source_cidrs)))
    assert source_delta([g], [reordered]) == ""
    covered = replace(g, source_cidrs=(*g.source_cidrs, g.source_cidrs[0]))  # a duplicate
    assert source_delta([g], [covered]) == ""
    other = group("db", ("172.18.0.50",), src=("10.1.0.0/24",))
    assert source_delta([g, other], [other, g]) == ""  # order of groups does not matter


def test_anything_but_sources_changing_needs_a_rewrite() -> None:
    g = group(ips=THREE, src=PODS[:20], excl=("172.18.0.1/32",))
    changed: list[list[EgressGroup]] = [
        [replace(g, egress_ips=(ip("172.18.0.42"), ip("172.18.0.43")))],
        [replace(g, egress_ips=(*g.egress_ips, ip("fd00::42")))],
        [replace(g, destination_cidrs=(net("172.19.0.0/16"),))],
        [replace(g, excluded_cidrs=())],
        [replace(g, name="web-b")],
        [g, group("db", ("172.18.0.50",))],
        [],
    ]
    for groups in changed:
        assert not nft.same_layout([g], groups)
    same: list[list[EgressGroup]] = [
        [replace(g, source_cidrs=())],
        [replace(g, egress_ips=tuple(reversed(g.egress_ips)))],
        [replace(g, destination_cidrs=(net("172.18.0.0/17"), net("172.18.128.0/17")))],  # same addresses
        [replace(g, interface="net1", candidates=("n2",))],  # not in the table
    ]
    for groups in same:
        assert nft.same_layout([g], groups)


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


def test_fence_refresh_names_all_the_ips_of_a_set_in_one_command_per_step() -> None:
    text = nft.render_fence_refresh([ip("172.18.0.43"), ip("fd00::42"), ip("172.18.0.42")], 800)
    assert text.splitlines() == [
        "add element inet egressd_fence owned4 { 172.18.0.42 timeout 800ms, 172.18.0.43 timeout 800ms }",
        "delete element inet egressd_fence owned4 { 172.18.0.42, 172.18.0.43 }",
        "add element inet egressd_fence owned4 { 172.18.0.42 timeout 800ms, 172.18.0.43 timeout 800ms }",
        "add element arp egressd_arp owned { 172.18.0.42 timeout 800ms, 172.18.0.43 timeout 800ms }",
        "delete element arp egressd_arp owned { 172.18.0.42, 172.18.0.43 }",
        "add element arp egressd_arp owned { 172.18.0.42 timeout 800ms, 172.18.0.43 timeout 800ms }",
        "add element inet egressd_fence owned6 { fd00::42 timeout 800ms }",
        "delete element inet egressd_fence owned6 { fd00::42 }",
        "add element inet egressd_fence owned6 { fd00::42 timeout 800ms }",
    ]


def test_fence_refresh_with_the_kernels_update_is_one_add_with_expires_per_set() -> None:
    text = nft.render_fence_refresh([ip("172.18.0.42"), ip("fd00::42")], 800, update=True)
    assert text.splitlines() == [
        "add element inet egressd_fence owned4 { 172.18.0.42 timeout 800ms expires 800ms }",
        "add element arp egressd_arp owned { 172.18.0.42 timeout 800ms expires 800ms }",
        "add element inet egressd_fence owned6 { fd00::42 timeout 800ms expires 800ms }",
    ]


def probe_listing(expires: int | None) -> dict[str, Any]:
    elem: list[Any] = [] if expires is None else [{"elem": {"val": "192.0.2.1", "timeout": 3600, "expires": expires}}]
    return {"nftables": [{"metainfo": {}}, {"set": {"name": nft.PROBE_SET, "elem": elem}}]}


def test_the_probe_tells_an_updated_element_from_one_left_alone() -> None:
    assert nft.probe_updated(probe_listing(9))
    assert nft.probe_updated(probe_listing(0))  # whole seconds: 10 s already partly gone, rounded down
    assert not nft.probe_updated(probe_listing(3599))
    assert not nft.probe_updated(probe_listing(None))
    assert "expires 10s" in nft.render_fence_probe(1) and "timeout 1h }" in nft.render_fence_probe(0)
    assert nft.render_fence_probe(2) == f"delete set inet egressd_fence {nft.PROBE_SET}\n"


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


def snat_rule(chain: str, proto: str, addr: str, *, table: str = "egressd", match: bool = True) -> dict[str, Any]:
    """A rule as ``nft -j list table`` shows it; ``match=False``: a rule of the earlier layout."""
    saddr = {"payload": {"protocol": proto, "field": "saddr"}}
    expr: list[dict[str, Any]] = [{"snat": {"family": proto, "addr": addr}}]
    if match:
        set_ref = "@" + nft.ip_set_name(nft.group_from_ident(chain) or "x", ip(addr))
        expr.insert(0, {"match": {"op": "==", "left": saddr, "right": set_ref}})
    return {"rule": {"family": "inet", "table": table, "chain": chain, "handle": 9, "expr": expr}}


def test_parse_active_reads_snat_addresses_of_group_chains_only() -> None:
    listing = {
        "nftables": [
            {"metainfo": {"version": "1.0.6"}},
            {"rule": {"table": "egressd", "chain": "postrouting", "expr": [{"jump": {"target": "g_web_a_v4"}}]}},
            snat_rule("g_web_a_v4", "ip", "172.18.0.42"),
            snat_rule("g_web_a_v4", "ip", "172.18.0.43"),
            snat_rule("g_db.x_v6", "ip6", "fd00::1"),
            snat_rule("g_old_v4", "ip", "172.18.0.50", match=False),  # left by an earlier version: kept
            snat_rule("g_x_v4", "ip", "1.2.3.4", table="other"),
        ]
    }
    assert nft.parse_active(listing) == {
        ip("172.18.0.42"): "web-a",
        ip("172.18.0.43"): "web-a",
        ip("fd00::1"): "db.x",
        ip("172.18.0.50"): "old",
    }
    assert nft.parse_active({}) == {}


def test_parse_fence_reads_remaining_time() -> None:
    listing = {
        "nftables": [
            {"set": {"name": "owned4", "elem": [{"elem": {"val": "172.18.0.42", "timeout": 800, "expires": 0.5}}]}}
        ]
    }
    assert nft.parse_fence(listing) == {ip("172.18.0.42"): 0.5}


# -- the conntrack mark and the guard -------------------------------------------

MARK = nft.CtMark(0x00E90000, 0x00FF0000)


def test_the_mark_is_set_in_the_snat_rule_itself_keeping_other_bits() -> None:
    g = group()
    owned = {ip("172.18.0.42"): "web-a"}
    rule = "ip saddr @g_web_a_s_172_18_0_42 ct mark set ct mark and 0xff00ffff or 0x00e90000 snat ip to 172.18.0.42"
    assert f"\t\t{rule}\n" in nft.render_table([g], owned, mark=MARK)
    chain = nft.render_group_chain("web-a", 4, [ip("172.18.0.42")], MARK)
    assert chain.splitlines()[1] == f"add rule inet egressd g_web_a_v4 {rule}"
    assert "ct mark" not in nft.render_table([g], owned)  # no mark asked: none set


def test_a_marked_snat_rule_is_still_read_back_as_active() -> None:
    expr = [{"mangle": {"key": {"ct": {"key": "mark"}}, "value": 1}}, {"snat": {"family": "ip", "addr": "172.18.0.42"}}]
    listing = {"nftables": [{"rule": {"table": "egressd", "chain": "g_web_a_v4", "expr": expr}}]}
    assert nft.parse_active(listing) == {ip("172.18.0.42"): "web-a"}


@pytest.mark.parametrize(("value", "mask"), [(0x1, 0x0), (0x100, 0xFF), (-1, 0xFF), (0x1, 0x1_0000_0000)])
def test_a_mark_outside_its_mask_is_refused(value: int, mask: int) -> None:
    with pytest.raises(ValueError, match="mark"):
        nft.CtMark(value, mask)


def test_guard_drops_untracked_inbound_to_guarded_ips_only() -> None:
    text = nft.render_guard_stage()
    assert "type filter hook prerouting priority mangle" in text
    assert "add rule inet egressd_guard prerouting ip daddr @guard4 ct state new,invalid counter drop" in text
    assert "add rule inet egressd_guard prerouting ip6 daddr @guard6 ct state new,invalid counter drop" in text
    assert "flush set" not in text  # re-staging never ends a grace period that runs
    assert nft.render_guard_arm([ip("fd00::42"), ip("172.18.0.42")], 3000).splitlines() == [
        "add element inet egressd_guard guard4 { 172.18.0.42 timeout 3000ms }",
        "delete element inet egressd_guard guard4 { 172.18.0.42 }",
        "add element inet egressd_guard guard4 { 172.18.0.42 timeout 3000ms }",
        "add element inet egressd_guard guard6 { fd00::42 timeout 3000ms }",
        "delete element inet egressd_guard guard6 { fd00::42 }",
        "add element inet egressd_guard guard6 { fd00::42 timeout 3000ms }",
    ]
    with pytest.raises(ValueError, match="at least 1 ms"):
        nft.render_guard_arm([ip("172.18.0.42")], 0)
    assert "delete table inet egressd_guard" in nft.render_delete()


def test_guard_drops_are_the_sum_of_the_chains_counters() -> None:
    def rule(packets: int) -> dict[str, Any]:
        return {"rule": {"chain": "prerouting", "expr": [{"counter": {"packets": packets, "bytes": 60 * packets}}]}}

    assert nft.parse_counted_drops({"nftables": [{"metainfo": {}}, rule(3), rule(4)]}) == 7
    assert nft.parse_counted_drops({}) == 0
