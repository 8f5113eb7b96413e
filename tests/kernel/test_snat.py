"""NftablesSnat against a real kernel: SNAT observed by an outside server.

cl (10.98.0.10 selected, 10.98.0.11 not) -- lan0 gw net0 -- switch -- net0 srv
                                            10.99.0.2 (+ .42 egress IP)    10.99.0.100, .101 (excluded)

Tests with two egress IPs add 10.99.0.43 to gw and more client addresses to cl.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from egressd.adapters.nftables import NftablesSnat
from egressd.core import nft
from egressd.core.assignment import sources_for
from egressd.core.errors import DataPlaneError
from egressd.core.model import EgressGroup, IPAddress, IPNetwork
from tests.kernel.netns import GatewayNet as Net
from tests.kernel.netns import Lab, gateway_topology, ns_exec, probe, sh

pytestmark = pytest.mark.kernel

EGRESS = ipaddress.ip_address("10.99.0.42")
SELECTED, UNSELECTED = "10.98.0.10", "10.98.0.11"
SERVER, EXCLUDED = "10.99.0.100", "10.99.0.101"

GROUP = EgressGroup(
    name="web-a",
    egress_ips=(EGRESS,),
    interface="net0",
    candidates=("gw",),
    source_cidrs=(ipaddress.ip_network(f"{SELECTED}/32"),),
    destination_cidrs=(ipaddress.ip_network("10.99.0.0/24"),),
    excluded_cidrs=(ipaddress.ip_network(f"{EXCLUDED}/32"),),
)

FOREIGN = """
table ip foreign {
    set keep { type ipv4_addr; elements = { 192.0.2.1 } }
    chain post { type nat hook postrouting priority srcnat - 5; policy accept; ip daddr @keep masquerade; }
}
"""


@pytest.fixture
def net(lab: Lab) -> Iterator[Net]:
    with gateway_topology(lab, egress=str(EGRESS), clients=(SELECTED, UNSELECTED), servers=(SERVER, EXCLUDED)) as n:
        yield n


@pytest.fixture
async def snat(net: Net) -> AsyncIterator[NftablesSnat]:
    s = NftablesSnat(netns=net.gw)
    yield s
    await s.clear()


def seen(net: Net, src: str, dst: str = SERVER) -> str:
    return probe(net.cl, src, dst)


def tables(ns: str) -> str:
    return ns_exec(ns, "nft", "list", "tables")


async def test_snat_only_selected_sources_to_selected_destinations(net: Net, snat: NftablesSnat) -> None:
    await snat.stage([GROUP])
    assert seen(net, SELECTED) == "timeout"  # staged, not active: fail closed, never out un-NATed
    assert seen(net, UNSELECTED) == UNSELECTED
    await snat.activate(EGRESS, "web-a")
    assert await snat.active() == {EGRESS}
    assert seen(net, SELECTED) == str(EGRESS)
    assert seen(net, UNSELECTED) == UNSELECTED
    assert seen(net, SELECTED, EXCLUDED) == SELECTED
    await snat.deactivate(EGRESS)
    assert await snat.active() == set()
    assert seen(net, SELECTED) == "timeout"
    await snat.clear()
    assert seen(net, SELECTED) == SELECTED  # without egressd's table the node routes as before


async def test_other_tables_are_untouched_and_clear_leaves_nothing(net: Net, snat: NftablesSnat) -> None:
    ns_exec(net.gw, "nft", "-f", "-", input_text=FOREIGN)
    before = ns_exec(net.gw, "nft", "list", "table", "ip", "foreign")
    await snat.stage([GROUP])
    await snat.activate(EGRESS, "web-a")
    await snat.stage([GROUP])  # re-staging keeps the active rule
    assert await snat.active() == {EGRESS}
    await snat.deactivate(EGRESS)
    await snat.deactivate(EGRESS)  # idempotent
    await snat.clear()
    await snat.clear()  # idempotent
    assert "egressd" not in tables(net.gw)
    assert ns_exec(net.gw, "nft", "list", "table", "ip", "foreign") == before


async def test_a_restarted_adapter_finds_and_keeps_active_snat(net: Net, snat: NftablesSnat) -> None:
    await snat.stage([GROUP])
    await snat.activate(EGRESS, "web-a")
    restarted = NftablesSnat(netns=net.gw)
    assert await restarted.active() == {EGRESS}
    await restarted.stage([GROUP])
    assert seen(net, SELECTED) == str(EGRESS)
    await restarted.deactivate(EGRESS)
    assert await snat.active() == set()


async def test_a_failed_transaction_changes_nothing(net: Net, snat: NftablesSnat) -> None:
    await snat.stage([GROUP])
    await snat.activate(EGRESS, "web-a")
    with pytest.raises(DataPlaneError, match="not staged"):
        await snat.activate(ipaddress.ip_address("10.99.0.43"), "nosuchgroup")
    # the kernel half: a transaction whose last line fails leaves the first lines undone
    broken = "flush chain inet egressd g_web_a_v4\nadd rule inet egressd g_web_a_v4 snat ip to nonsense\n"
    proc = subprocess.run(
        ["ip", "netns", "exec", net.gw, "nft", "-f", "-"], input=broken, text=True, capture_output=True, check=False
    )
    assert proc.returncode != 0
    assert await snat.active() == {EGRESS}
    assert seen(net, SELECTED) == str(EGRESS)


async def test_sub_second_fence_stops_serving_when_not_refreshed(net: Net) -> None:
    snat = NftablesSnat(netns=net.gw, fence_ttl=0.4)

    async def refresher() -> None:  # what the daemon does after every successful renew
        while True:
            await snat.refresh_fence([EGRESS])
            await asyncio.sleep(0.1)

    try:
        await snat.stage([GROUP])
        await snat.activate(EGRESS, "web-a")
        assert EGRESS in await snat.fence()
        await asyncio.sleep(0.5)
        assert await snat.fence() == {}
        assert await snat.active() == {EGRESS}  # the rule is still there, the fence holds it off
        assert await asyncio.to_thread(seen, net, SELECTED) == "timeout"  # SNATed packets dropped on the way out
        await asyncio.to_thread(ns_exec, net.srv, "ip", "neigh", "flush", "all")
        arp = await asyncio.to_thread(ns_exec, net.srv, "ping", "-c1", "-W0.3", str(EGRESS), check=False)
        assert "1 received" not in arp  # no ARP reply for the fenced IP
        task = asyncio.create_task(refresher())
        try:
            # the failed resolution above would delay the server's next one by a second: start afresh
            await asyncio.to_thread(ns_exec, net.srv, "ip", "neigh", "flush", "all")
            await asyncio.sleep(0.05)
            assert await asyncio.to_thread(seen, net, SELECTED) == str(EGRESS)
            ping = await asyncio.to_thread(ns_exec, net.srv, "ping", "-c1", "-W1", str(EGRESS), check=False)
            assert "1 received" in ping
        finally:
            task.cancel()
    finally:
        await snat.clear()
    assert "egressd" not in tables(net.gw)


async def test_primed_snat_fails_closed_until_its_activation_arms_the_fence(net: Net) -> None:
    snat = NftablesSnat(netns=net.gw, fence_ttl=2.0)
    try:
        await snat.stage([GROUP])
        assert await snat.prime(EGRESS, "web-a")
        assert await snat.active() == {EGRESS}  # the rule is in place ...
        assert await snat.fence() == {}  # ... its fence is not armed
        assert await asyncio.to_thread(seen, net, SELECTED) == "timeout"  # nothing leaves with the egress IP
        chain = ["nft", "-a", "list", "chain", "inet", "egressd", "g_web_a_v4"]
        before = ns_exec(net.gw, *chain)
        await snat.activate(EGRESS, "web-a")
        assert EGRESS in await snat.fence()
        assert ns_exec(net.gw, *chain) == before  # the activation armed the fence, no rule was written
        assert await asyncio.to_thread(seen, net, SELECTED) == str(EGRESS)
        await snat.deactivate(EGRESS)
        assert await snat.active() == set() and await snat.fence() == {}
        # primed and taken back before any activation
        assert await snat.prime(EGRESS, "web-a")
        await snat.deactivate(EGRESS)
        assert await snat.active() == set()
        await snat.activate(EGRESS, "web-a")  # a full activation again: rule and fence
        assert await snat.active() == {EGRESS} and EGRESS in await snat.fence()
        assert not await snat.prime(EGRESS, "web-a")  # active already: nothing to prime
    finally:
        await snat.clear()


async def test_without_the_fence_nothing_is_primed(net: Net, snat: NftablesSnat) -> None:
    await snat.stage([GROUP])
    assert not await snat.prime(EGRESS, "web-a")  # the rule would NAT at once
    assert await snat.active() == set()
    assert seen(net, SELECTED) == "timeout"


# -- two egress IPs: each source leaves with its own ---------------------------------

EGRESS2 = ipaddress.ip_address("10.99.0.43")
TWO = dataclasses.replace(GROUP, egress_ips=(EGRESS, EGRESS2), source_cidrs=())


def host(address: str) -> IPNetwork:
    return ipaddress.ip_network(f"{address}/32")


def ip_of(source: str, group: EgressGroup = TWO) -> IPAddress:
    """The egress IP ``sources_for`` gives ``source`` (a CIDR) in ``group``."""
    one = dataclasses.replace(group, source_cidrs=(ipaddress.ip_network(source),))
    return next(ip for ip in group.egress_ips if sources_for(one, ip))


def client_for(ip: IPAddress, *, exclude: tuple[str, ...] = ()) -> str:
    """A client address in 10.98.0.20-.99 whose source uses ``ip``."""
    for i in range(20, 100):
        address = f"10.98.0.{i}"
        if address not in exclude and ip_of(f"{address}/32") == ip:
            return address
    raise AssertionError(f"no client address uses {ip}")


def add_clients(net: Net, *addresses: str) -> None:
    for a in addresses:
        sh("ip", "-n", net.cl, "addr", "add", f"{a}/24", "dev", "eth0")


def table_handle(ns: str) -> int:
    """The kernel's handle of egressd's table: a rewrite (delete and create) changes it."""
    listing = json.loads(ns_exec(ns, "nft", "-j", "list", "table", nft.FAMILY, nft.TABLE))
    return int(next(item["table"]["handle"] for item in listing["nftables"] if "table" in item))


def guard_drops(ns: str) -> int:
    """Packets the fail-closed chain dropped so far."""
    listing = json.loads(ns_exec(ns, "nft", "-j", "list", "chain", nft.FAMILY, nft.TABLE, "unnatted"))
    return sum(
        expr["counter"]["packets"]
        for item in listing["nftables"]
        if "rule" in item
        for expr in item["rule"]["expr"]
        if "counter" in expr
    )


FLOW = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
s.settimeout(0.5)
s.sendto(b"who am i", (sys.argv[3], 9000))
try:
    print(s.recvfrom(2048)[0].decode())
except TimeoutError:
    print("timeout")
"""


def flow(net: Net, src: str, port: int) -> str:
    """Like :func:`seen`, from a fixed source port: every call is the same flow
    (one conntrack entry, NATed once, when it began)."""
    return ns_exec(net.cl, sys.executable, "-c", FLOW, src, str(port), SERVER).strip()


@pytest.fixture
def two(net: Net) -> Net:
    sh("ip", "-n", net.gw, "addr", "add", f"{EGRESS2}/32", "dev", "net0")
    return net


async def test_each_source_leaves_with_its_own_ip_and_only_with_it(two: Net, snat: NftablesSnat) -> None:
    a, b = client_for(EGRESS), client_for(EGRESS2)
    add_clients(two, a, b)
    group = dataclasses.replace(TWO, source_cidrs=(host(a), host(b)))
    await snat.stage([group])
    await snat.activate(EGRESS, "web-a")
    await snat.activate(EGRESS2, "web-a")
    assert await snat.active() == {EGRESS, EGRESS2}
    for _ in range(3):  # new flows each time: the choice is by source, not by flow
        assert seen(two, a) == str(EGRESS)
        assert seen(two, b) == str(EGRESS2)
    assert seen(two, UNSELECTED) == UNSELECTED

    # only EGRESS owned here: b's traffic is dropped, neither NATed to EGRESS nor leaked as b
    await snat.deactivate(EGRESS2)
    drops = guard_drops(two.gw)
    assert seen(two, a) == str(EGRESS)
    assert seen(two, b) == "timeout"
    assert guard_drops(two.gw) > drops  # dropped by the fail-closed chain, after NAT left it alone

    # and the other way round
    await snat.deactivate(EGRESS)
    await snat.activate(EGRESS2, "web-a")
    assert seen(two, a) == "timeout"
    assert seen(two, b) == str(EGRESS2)


async def test_all_egress_ips_are_deactivated_in_one_transaction(two: Net) -> None:
    snat = NftablesSnat(netns=two.gw, fence_ttl=5.0)
    a, b = client_for(EGRESS), client_for(EGRESS2)
    add_clients(two, a, b)
    await snat.stage([dataclasses.replace(TWO, source_cidrs=(host(a), host(b)))])
    await snat.activate(EGRESS, "web-a")
    await snat.activate(EGRESS2, "web-a")
    assert set(await snat.fence()) == {EGRESS, EGRESS2}
    await snat.deactivate_all([EGRESS, EGRESS2])
    assert await snat.active() == set()
    assert await snat.fence() == {}
    assert seen(two, a) == "timeout" and seen(two, b) == "timeout"  # dropped, not leaked
    await snat.deactivate_all([EGRESS, EGRESS2])  # idempotent
    await snat.activate(EGRESS2, "web-a")
    assert seen(two, b) == str(EGRESS2)


async def test_activations_asked_together_are_written_together(two: Net) -> None:
    """Activations asked while the table is busy wait for it and are then
    written as one transaction (rules) and one fence batch: a gateway taking
    many IPs at once does not rewrite its chain once per IP."""
    snat = NftablesSnat(netns=two.gw, fence_ttl=5.0)
    a, b = client_for(EGRESS), client_for(EGRESS2)
    add_clients(two, a, b)
    await snat.stage([dataclasses.replace(TWO, source_cidrs=(host(a), host(b)))])
    before = snat._changes
    await asyncio.gather(snat.activate(EGRESS, "web-a"), snat.activate(EGRESS2, "web-a"))
    assert snat._changes - before <= 2  # the first alone (or with the second), the second's batch
    await snat.deactivate_all([EGRESS, EGRESS2])
    async with snat._lock:  # the table busy: both wait, then go together
        waiting = [asyncio.create_task(snat.activate(ip, "web-a")) for ip in (EGRESS, EGRESS2)]
        await asyncio.sleep(0.05)
        before = snat._changes
    await asyncio.gather(*waiting)
    assert snat._changes - before == 1
    assert await snat.active() == {EGRESS, EGRESS2}
    assert set(await snat.fence()) == {EGRESS, EGRESS2}
    assert seen(two, a) == str(EGRESS) and seen(two, b) == str(EGRESS2)
    await snat.clear()


async def test_an_activation_that_cannot_be_written_fails_alone(two: Net) -> None:
    snat = NftablesSnat(netns=two.gw, fence_ttl=5.0)
    a = client_for(EGRESS)
    add_clients(two, a)
    await snat.stage([dataclasses.replace(GROUP, source_cidrs=(host(a),))])  # EGRESS2 not staged
    async with snat._lock:
        good = asyncio.create_task(snat.activate(EGRESS, "web-a"))
        bad = asyncio.create_task(snat.activate(EGRESS2, "web-a"))
        await asyncio.sleep(0.05)
    await good
    with pytest.raises(DataPlaneError, match="not an egress IP of group 'web-a'"):
        await bad
    assert await snat.active() == {EGRESS}
    assert seen(two, a) == str(EGRESS)
    await snat.clear()


async def test_sources_are_added_and_removed_without_rewriting_the_table(two: Net, snat: NftablesSnat) -> None:
    a, b = client_for(EGRESS), client_for(EGRESS2)
    add_clients(two, a, b)
    await snat.stage([dataclasses.replace(TWO, source_cidrs=(host(a),))])
    await snat.activate(EGRESS, "web-a")
    await snat.activate(EGRESS2, "web-a")
    handle = table_handle(two.gw)
    assert flow(two, a, 40001) == str(EGRESS)
    assert seen(two, b) == b  # not selected yet

    await snat.stage([dataclasses.replace(TWO, source_cidrs=(host(b),))])  # b comes, a goes
    assert table_handle(two.gw) == handle  # elements changed in place
    assert await snat.active() == {EGRESS, EGRESS2}
    assert seen(two, b) == str(EGRESS2)
    assert seen(two, a) == a  # a new flow of a is not selected any more
    assert flow(two, a, 40001) == str(EGRESS)  # the flow that began before keeps its NAT

    await snat.stage([dataclasses.replace(TWO, source_cidrs=(host(b),))])  # nothing changed
    assert table_handle(two.gw) == handle

    # anything but sources changing rewrites the table, keeping the active rule
    await snat.stage([dataclasses.replace(TWO, source_cidrs=(host(b),), excluded_cidrs=())])
    assert table_handle(two.gw) != handle
    assert await snat.active() == {EGRESS, EGRESS2}
    assert seen(two, b) == str(EGRESS2)


async def test_overlapping_sources_change_in_place(two: Net, snat: NftablesSnat) -> None:
    """A /24 and a /32 inside it that uses the other IP: adding and removing
    either is a delta the kernel accepts, and the most specific source decides."""
    wide = "10.98.0.0/24"
    inner = client_for(EGRESS2 if ip_of(wide) == EGRESS else EGRESS)
    other = client_for(ip_of(wide), exclude=(inner,))
    add_clients(two, inner, other)
    both = dataclasses.replace(TWO, source_cidrs=(ipaddress.ip_network(wide), host(inner)))
    await snat.stage([both])
    await snat.activate(EGRESS, "web-a")
    await snat.activate(EGRESS2, "web-a")
    handle = table_handle(two.gw)
    assert seen(two, inner) == str(ip_of(f"{inner}/32"))
    assert seen(two, other) == str(ip_of(wide))

    steps: list[tuple[tuple[str, ...], dict[str, str]]] = [
        ((wide,), {inner: str(ip_of(wide)), other: str(ip_of(wide))}),  # the /32 goes
        ((wide, f"{inner}/32"), {inner: str(ip_of(f"{inner}/32")), other: str(ip_of(wide))}),  # and comes back
        ((f"{inner}/32",), {inner: str(ip_of(f"{inner}/32")), other: other}),  # the /24 goes
        ((f"{inner}/32", wide), {inner: str(ip_of(f"{inner}/32")), other: str(ip_of(wide))}),  # and comes back
        ((), {inner: inner, other: other}),
        ((wide,), {inner: str(ip_of(wide)), other: str(ip_of(wide))}),
    ]
    for sources, expected in steps:
        await snat.stage([dataclasses.replace(TWO, source_cidrs=tuple(ipaddress.ip_network(s) for s in sources))])
        assert table_handle(two.gw) == handle, sources  # a failed delta would have rewritten the table
        assert {src: seen(two, src) for src in expected} == expected, sources


async def test_a_table_removed_behind_the_adapters_back_is_rewritten(two: Net, snat: NftablesSnat) -> None:
    group = dataclasses.replace(GROUP, source_cidrs=(host(SELECTED),))
    await snat.stage([group])
    await snat.activate(EGRESS, "web-a")
    ns_exec(two.gw, "nft", "delete", "table", nft.FAMILY, nft.TABLE)
    assert await snat.active() == set()  # what the daemon's drift repair sees before it stages again
    await snat.stage([group])  # the same groups: still a rewrite
    assert await snat.active() == {EGRESS}
    assert seen(two, SELECTED) == str(EGRESS)
    # a delta that meets a table changed behind the adapter's back falls back to a rewrite
    ns_exec(two.gw, "nft", "flush", "set", nft.FAMILY, nft.TABLE, nft.set_name("web-a", "src", 4))
    await snat.stage([dataclasses.replace(group, source_cidrs=(host(UNSELECTED),))])
    assert await snat.active() == {EGRESS}
    assert seen(two, UNSELECTED) == str(EGRESS)


async def test_the_fence_list_is_staged_again_only_when_the_egress_ips_change(two: Net) -> None:
    snat = NftablesSnat(netns=two.gw, fence_ttl=5.0)

    def fence_rules() -> list[int]:
        out = ns_exec(two.gw, "nft", "-j", "list", "chain", nft.FAMILY, nft.FENCE_TABLE, "postrouting")
        return [item["rule"]["handle"] for item in json.loads(out)["nftables"] if "rule" in item]

    try:
        await snat.stage([dataclasses.replace(GROUP, source_cidrs=(host(SELECTED),))])
        first = fence_rules()
        await snat.stage([dataclasses.replace(GROUP, source_cidrs=(host(UNSELECTED),))])  # a delta
        await snat.stage([dataclasses.replace(GROUP, source_cidrs=(host(UNSELECTED),), excluded_cidrs=())])
        assert fence_rules() == first  # a rewrite with the same IPs leaves the fence alone
        await snat.stage([dataclasses.replace(TWO, source_cidrs=(host(UNSELECTED),))])
        assert fence_rules() != first
        listing = ns_exec(two.gw, "nft", "list", "set", nft.FAMILY, nft.FENCE_TABLE, "egress4")
        assert str(EGRESS2) in listing
    finally:
        await snat.clear()


# -- a big stage, and one source more -----------------------------------------------

MANY = 5000


async def test_five_thousand_sources_and_a_delta_of_one(
    two: Net, snat: NftablesSnat, caplog: pytest.LogCaptureFixture
) -> None:
    base = int(ipaddress.IPv4Address("10.64.0.0"))
    # every other address, so the sets hold MANY separate elements
    pods = tuple(ipaddress.ip_network(ipaddress.IPv4Address(base + 2 * i)) for i in range(MANY))
    group = dataclasses.replace(TWO, source_cidrs=pods)
    started = time.monotonic()
    await snat.stage([group])
    staged = time.monotonic() - started
    await snat.activate(EGRESS, "web-a")
    await snat.activate(EGRESS2, "web-a")
    handle = table_handle(two.gw)

    started = time.monotonic()
    with caplog.at_level(logging.DEBUG, logger="egressd.adapters.nftables"):
        await snat.stage([dataclasses.replace(group, source_cidrs=(*pods, host(SELECTED)))])
    delta = time.monotonic() - started
    assert table_handle(two.gw) == handle
    assert "2 element(s) added and 0 deleted in 2 source set(s)" in caplog.text  # the union set and one IP's
    assert seen(two, SELECTED) == str(ip_of(f"{SELECTED}/32"))
    union = ns_exec(two.gw, "nft", "list", "set", nft.FAMILY, nft.TABLE, nft.set_name("web-a", "src", 4))
    assert union.count(",") + 1 == MANY + 1
    print(f"\nstage of {MANY} sources (2 egress IPs): {staged:.3f} s; delta of 1 source on top: {delta:.3f} s")


@pytest.mark.parametrize("update", [True, False], ids=["add-with-expires", "add-delete-add"])
async def test_fence_refresh_rearms_an_armed_element_and_recreates_an_expired_one(net: Net, update: bool) -> None:
    snat = NftablesSnat(netns=net.gw, fence_ttl=0.6)
    await snat.stage([GROUP])
    await snat.activate(EGRESS, "web-a")
    snat._fence_update = update  # either form, whatever the kernel supports
    await asyncio.sleep(0.4)
    await snat.refresh_fence([EGRESS])
    await asyncio.sleep(0.35)  # past the first arming's end
    assert EGRESS in await snat.fence()
    await asyncio.sleep(0.4)
    assert await snat.fence() == {}
    await snat.refresh_fence([EGRESS])
    assert EGRESS in await snat.fence()


async def test_a_fence_refresh_the_kernel_refuses_is_an_error_and_changes_nothing(net: Net) -> None:
    snat = NftablesSnat(netns=net.gw, fence_ttl=5.0)
    await snat.stage([GROUP])
    await snat.activate(EGRESS, "web-a")
    await asyncio.sleep(1.1)
    ns_exec(net.gw, "nft", "delete", "table", "arp", nft.ARP_TABLE)
    with pytest.raises(DataPlaneError, match="fence refresh failed"):
        await snat.refresh_fence([EGRESS])
    assert (await snat.fence())[EGRESS] < 4.5  # the inet element was not re-armed either: one transaction


async def test_the_kernels_element_update_is_probed_once_and_leaves_no_probe_set(net: Net) -> None:
    snat = NftablesSnat(netns=net.gw, fence_ttl=0.6)
    await snat.stage([GROUP])
    await snat.activate(EGRESS, "web-a")
    await snat.refresh_fence([EGRESS])
    kernel = tuple(int(x) for x in os.uname().release.split(".")[:2])
    assert snat._fence_update is (kernel >= (6, 10))
    sets = ns_exec(net.gw, "nft", "list", "table", nft.FAMILY, nft.FENCE_TABLE)
    assert nft.PROBE_SET not in sets


async def test_fence_refresh_takes_a_ttl_up_to_the_fence_ttl(net: Net) -> None:
    snat = NftablesSnat(netns=net.gw, fence_ttl=0.6)
    await snat.stage([GROUP])
    await snat.activate(EGRESS, "web-a")
    await snat.refresh_fence([EGRESS], 0.15)  # under a peer right: shorter than fenceTtl
    await asyncio.sleep(0.3)
    assert await snat.fence() == {}
    await snat.refresh_fence([EGRESS], 30.0)  # never beyond fenceTtl
    await asyncio.sleep(0.3)
    assert EGRESS in await snat.fence()
    await asyncio.sleep(0.4)
    assert await snat.fence() == {}
    await snat.refresh_fence([EGRESS], 0.0004)  # less than a millisecond arms nothing
    assert await snat.fence() == {}


async def test_the_table_is_listed_again_only_after_a_transaction_not_of_the_adapter(
    net: Net, monkeypatch: pytest.MonkeyPatch
) -> None:
    snat = NftablesSnat(netns=net.gw, fence_ttl=5.0)
    try:
        await snat.stage([GROUP])
        await snat.activate(EGRESS, "web-a")
        listed = 0
        list_table = snat._list

        async def counted() -> dict[str, object]:
            nonlocal listed
            listed += 1
            return await list_table()

        monkeypatch.setattr(snat, "_list", counted)
        assert await snat.active() == {EGRESS}
        assert await snat.active() == {EGRESS}
        await snat.refresh_fence([EGRESS])  # transactions of the adapter's own
        await snat.deactivate(EGRESS)
        assert await snat.active() == set()
        await snat.activate(EGRESS, "web-a")
        assert await snat.active() == {EGRESS}
        assert listed == 1
        ns_exec(net.gw, "nft", "add", "table", "ip", "someone_else")  # anyone's transaction
        assert await snat.active() == {EGRESS}
        assert listed == 2
        ns_exec(net.gw, "nft", "flush", "chain", nft.FAMILY, nft.TABLE, nft.group_chain("web-a", 4))
        assert await snat.active() == set()
        assert await snat.active() == set()  # a table that differs is listed every time
        assert listed == 4
    finally:
        await snat.clear()


async def test_a_disarm_that_fails_still_removes_the_rule_and_says_so(net: Net) -> None:
    snat = NftablesSnat(netns=net.gw, fence_ttl=5.0)
    try:
        await snat.stage([GROUP])
        await snat.activate(EGRESS, "web-a")
        assert set(await snat.fence()) == {EGRESS}  # armed by the activation
        ns_exec(net.gw, "nft", "delete", "table", "arp", nft.ARP_TABLE)
        with pytest.raises(DataPlaneError, match="disarm"):
            await snat.deactivate(EGRESS)
        assert await snat.active() == set()
        assert seen(net, SELECTED) == "timeout"
    finally:
        await snat.clear()
