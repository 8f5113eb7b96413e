"""NftablesSnat against a real kernel: SNAT observed by an outside server.

cl (10.98.0.10 selected, 10.98.0.11 not) -- lan0 gw net0 -- switch -- net0 srv
                                            10.99.0.2 (+ .42 egress IP)    10.99.0.100, .101 (excluded)
"""

from __future__ import annotations

import asyncio
import ipaddress
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest

from egressd.adapters.nftables import NftablesSnat
from egressd.core.errors import DataPlaneError
from egressd.core.settings import EgressGroup
from tests.kernel.netns import Lab, ns_exec, probe, sh, start_echo_server

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


@dataclass
class Net:
    gw: str
    cl: str
    srv: str


@pytest.fixture
def net(lab: Lab) -> Iterator[Net]:
    gw = lab.attach("gw", ["10.99.0.2/24", f"{EGRESS}/32"])
    srv = lab.attach("srv", [f"{SERVER}/24", f"{EXCLUDED}/24"])
    cl = lab.ns("cl")
    lab.wire(gw.ns, "lan0", cl, "eth0")
    sh("ip", "-n", gw.ns, "addr", "add", "10.98.0.1/24", "dev", "lan0")
    for a in (SELECTED, UNSELECTED):
        sh("ip", "-n", cl, "addr", "add", f"{a}/24", "dev", "eth0")
    sh("ip", "-n", cl, "route", "add", "default", "via", "10.98.0.1")
    sh("ip", "-n", srv.ns, "route", "add", "10.98.0.0/24", "via", "10.99.0.2")
    ns_exec(gw.ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    server = start_echo_server(srv.ns)
    try:
        yield Net(gw=gw.ns, cl=cl, srv=srv.ns)
    finally:
        server.kill()
        server.wait()
        if server.stdout is not None:
            server.stdout.close()


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
