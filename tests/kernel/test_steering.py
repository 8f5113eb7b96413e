"""PolicySteering against a real kernel: a worker steers a pod's traffic to the
owner of its egress IP, observed by an outside server.

    pod (10.244.1.10 selected,      eth0 -- pod0  wk  net0 172.18.0.10 --+
         10.244.2.10 not)                                                 |  switch (br0)
    gwa  net0 172.18.0.2  (forwards, masquerades 10.244/16) -------------+
    gwb  net0 172.18.0.3  (forwards, masquerades 10.244/16) -------------+
    srv  net0 172.18.0.100  ----------------------------------------------+
    ex   net0 172.18.0.101 (an excluded destination)  ---------------------+

The server's echo reply names the source address it saw: a gateway's address
means the datagram went through that gateway; the pod's address means it took
the worker's main route (the server routes 10.244/16 back via the worker).
"""

from __future__ import annotations

import ipaddress
import statistics
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest

from egressd.adapters.steering import STEERING_PROTO, PolicySteering
from egressd.core.errors import DataPlaneError
from egressd.core.model import EgressGroup
from egressd.core.steering import Plan
from tests.kernel.netns import Lab, ns_exec, probe, sh, start_echo_server

pytestmark = pytest.mark.kernel

EGRESS = ipaddress.ip_address("172.18.0.42")
GW_A, GW_B = ipaddress.ip_address("172.18.0.2"), ipaddress.ip_address("172.18.0.3")
WORKER = "172.18.0.10"
SELECTED, UNSELECTED = "10.244.1.10", "10.244.2.10"
SERVER, EXCLUDED = "172.18.0.100", "172.18.0.101"

GROUP = EgressGroup(
    name="alliance",
    egress_ips=(EGRESS,),
    interface="net0",
    candidates=("gwa", "gwb"),
    source_cidrs=(ipaddress.ip_network("10.244.1.0/24"),),
    destination_cidrs=(ipaddress.ip_network("172.18.0.0/16"),),
    excluded_cidrs=(ipaddress.ip_network(f"{EXCLUDED}/32"),),
)

GATEWAY_NAT = """
table ip lab {
    chain post {
        type nat hook postrouting priority srcnat; policy accept;
        ip saddr 10.244.0.0/16 oifname "net0" masquerade
    }
}
"""

DEFAULT_RULES = ("from all lookup local", "from all lookup main", "from all lookup default")


@dataclass
class Net:
    wk: str
    pod: str
    gwa: str
    gwb: str
    srv: str


def sysctl(ns: str, *settings: str) -> None:
    for s in settings:
        ns_exec(ns, "sysctl", "-qw", s)


@pytest.fixture
def net(lab: Lab) -> Iterator[Net]:
    wk = lab.attach("wk", [f"{WORKER}/16"])
    gwa = lab.attach("gwa", [f"{GW_A}/16"])
    gwb = lab.attach("gwb", [f"{GW_B}/16"])
    srv = lab.attach("srv", [f"{SERVER}/16"])
    # a host of its own: a server with two addresses would answer from its primary one
    ex = lab.attach("ex", [f"{EXCLUDED}/16"])
    pod = lab.ns("pod")
    lab.wire(wk.ns, "pod0", pod, "eth0")
    for a in ("10.244.1.1/24", "10.244.2.1/24"):
        sh("ip", "-n", wk.ns, "addr", "add", a, "dev", "pod0")
    for a in (f"{SELECTED}/24", f"{UNSELECTED}/24"):
        sh("ip", "-n", pod, "addr", "add", a, "dev", "eth0")
    sh("ip", "-n", pod, "route", "add", "default", "via", "10.244.1.1")
    sysctl(wk.ns, "net.ipv4.ip_forward=1")
    for gw in (gwa.ns, gwb.ns):
        # a gateway forwards out of the interface it received on; a redirect
        # would teach the worker to bypass it
        sysctl(gw, "net.ipv4.ip_forward=1", "net.ipv4.conf.all.send_redirects=0", "net.ipv4.conf.net0.send_redirects=0")
        sh("ip", "-n", gw, "route", "add", "10.244.0.0/16", "via", WORKER)
        ns_exec(gw, "nft", "-f", "-", input_text=GATEWAY_NAT)
    servers: list[subprocess.Popen[str]] = []
    try:
        for host in (srv.ns, ex.ns):
            sh("ip", "-n", host, "route", "add", "10.244.0.0/16", "via", WORKER)
            servers.append(start_echo_server(host))
        yield Net(wk=wk.ns, pod=pod, gwa=gwa.ns, gwb=gwb.ns, srv=srv.ns)
    finally:
        for server in servers:
            server.kill()
            server.wait()
            if server.stdout is not None:
                server.stdout.close()


@pytest.fixture
async def steering(net: Net) -> AsyncIterator[PolicySteering]:
    s = PolicySteering(netns=net.wk)
    try:
        yield s
    finally:
        await s.close()


def seen(net: Net, src: str, dst: str = SERVER) -> str:
    """The source address the server saw for a datagram from the pod."""
    return probe(net.pod, src, dst)


def path(net: Net, src: str, dst: str = SERVER) -> str:
    """The worker's route decision for a forwarded packet from the pod."""
    return sh("ip", "-n", net.wk, "route", "get", dst, "from", src, "iif", "pod0").strip()


def rules(ns: str) -> list[str]:
    return [line.split(":", 1)[1].strip() for line in sh("ip", "-n", ns, "rule").splitlines()]


async def test_steers_selected_source_to_the_owner_and_switches(net: Net, steering: PolicySteering) -> None:
    assert seen(net, SELECTED) == SELECTED, "before steering, the main route"
    await steering.route(GROUP, EGRESS, GW_A)
    assert seen(net, SELECTED) == str(GW_A)
    assert f"via {GW_A}" in path(net, SELECTED)

    started = time.perf_counter()
    await steering.route(GROUP, EGRESS, GW_B)
    took = time.perf_counter() - started
    assert f"via {GW_B}" in path(net, SELECTED)
    assert seen(net, SELECTED) == str(GW_B), "the first datagram after the switch"
    assert took < 0.1, f"changing the via took {took * 1000:.1f} ms"

    await steering.route(GROUP, EGRESS, None)
    assert seen(net, SELECTED) == SELECTED
    assert await steering.present() == Plan()


async def test_excluded_destinations_and_unselected_sources_keep_the_main_route(
    net: Net, steering: PolicySteering
) -> None:
    await steering.route(GROUP, EGRESS, GW_A)
    assert seen(net, SELECTED, EXCLUDED) == SELECTED
    assert seen(net, UNSELECTED) == UNSELECTED
    assert seen(net, SELECTED) == str(GW_A)


async def test_kernel_objects_are_marked_and_in_egressd_ranges(net: Net, steering: PolicySteering) -> None:
    await steering.route(GROUP, EGRESS, GW_A)
    slot = (await steering.slots())[EGRESS]
    table = 7100 + slot
    assert rules(net.wk) == [
        DEFAULT_RULES[0],
        f"from 10.244.1.0/24 to {EXCLUDED} lookup main proto {STEERING_PROTO}",
        f"from 10.244.1.0/24 to 172.18.0.0/16 lookup {table} proto {STEERING_PROTO}",
        *DEFAULT_RULES[1:],
    ]
    prios = [int(line.split(":")[0]) for line in sh("ip", "-n", net.wk, "rule").splitlines()]
    assert prios[1:3] == [7100 + slot, 7150 + slot]
    routes = sh("ip", "-n", net.wk, "route", "show", "table", str(table)).split("\n")
    assert sorted(r.strip() for r in routes if r) == [
        f"172.18.0.0/16 via {GW_A} dev net0 proto {STEERING_PROTO} metric 1024",
        f"{EGRESS} via {GW_A} dev net0 proto {STEERING_PROTO} metric 59881",
        f"throw {EXCLUDED} proto {STEERING_PROTO} metric 1024",
    ]


async def test_route_is_idempotent_and_survives_a_restart(net: Net, steering: PolicySteering) -> None:
    await steering.route(GROUP, EGRESS, GW_A)
    before = await steering.present()
    await steering.route(GROUP, EGRESS, GW_A)
    assert await steering.present() == before
    again = PolicySteering(netns=net.wk)
    try:
        assert await again.slots() == await steering.slots()
        await again.route(GROUP, EGRESS, GW_B)
        after = await again.present()
        assert after.rules == before.rules
        assert {r.via for r in after.routes} == {GW_B, None}, "None: the throw route of the excluded CIDR"
    finally:
        await again.close()


async def test_route_repairs_drift_and_follows_group_changes(net: Net, steering: PolicySteering) -> None:
    await steering.route(GROUP, EGRESS, GW_A)
    table = 7100 + (await steering.slots())[EGRESS]
    sh("ip", "-n", net.wk, "route", "del", "172.18.0.0/16", "table", str(table))
    assert seen(net, SELECTED) == SELECTED
    await steering.route(GROUP, EGRESS, GW_A)
    assert seen(net, SELECTED) == str(GW_A)

    wider = EgressGroup(
        name=GROUP.name,
        egress_ips=GROUP.egress_ips,
        interface="net0",
        candidates=GROUP.candidates,
        source_cidrs=(*GROUP.source_cidrs, ipaddress.ip_network("10.244.2.0/24")),
        destination_cidrs=GROUP.destination_cidrs,
        excluded_cidrs=(),
    )
    await steering.route(wider, EGRESS, GW_A)
    assert seen(net, UNSELECTED) == str(GW_A)
    assert seen(net, SELECTED, EXCLUDED) == str(GW_A), "no longer excluded"
    await steering.route(GROUP, EGRESS, GW_A)
    assert seen(net, UNSELECTED) == UNSELECTED
    assert seen(net, SELECTED, EXCLUDED) == SELECTED


async def test_flush_all_removes_only_egressd_objects(net: Net, steering: PolicySteering) -> None:
    # foreign state: a rule inside egressd's priority range without its mark,
    # a rule and a table elsewhere, and a route inside an egressd table
    sh("ip", "-n", net.wk, "rule", "add", "from", "10.9.0.0/16", "lookup", "7120", "pref", "7120")
    sh("ip", "-n", net.wk, "rule", "add", "from", "10.8.0.0/16", "lookup", "200", "pref", "500")
    sh("ip", "-n", net.wk, "route", "add", "192.0.2.0/24", "via", str(GW_B), "table", "200")
    sh("ip", "-n", net.wk, "route", "add", "blackhole", "198.51.100.0/24", "table", "7120")
    foreign_rules = rules(net.wk)
    other = EgressGroup(
        name="empire",
        egress_ips=(ipaddress.ip_address("172.18.0.43"),),
        interface="net0",
        candidates=("gwb",),
        source_cidrs=(ipaddress.ip_network("10.244.2.0/24"),),
        destination_cidrs=(ipaddress.ip_network("172.18.0.100/32"),),
    )
    await steering.route(GROUP, EGRESS, GW_A)
    await steering.route(other, other.egress_ips[0], GW_B)
    assert seen(net, UNSELECTED) == str(GW_B)
    assert len(await steering.slots()) == 2
    assert await steering.present() != Plan()

    removed = await steering.flush_all()
    assert len(removed.rules) == 3
    assert len(removed.routes) == 5, "2 destinations, 1 throw, 2 anchors"
    assert await steering.present() == Plan()
    assert rules(net.wk) == foreign_rules
    assert "192.0.2.0/24" in sh("ip", "-n", net.wk, "route", "show", "table", "200")
    assert "blackhole 198.51.100.0/24" in sh("ip", "-n", net.wk, "route", "show", "table", "7120")
    all_routes = sh("ip", "-n", net.wk, "route", "show", "table", "all")
    assert f"proto {STEERING_PROTO}" not in all_routes
    assert seen(net, SELECTED) == SELECTED


async def test_custom_ranges_and_bad_input(net: Net) -> None:
    s = PolicySteering(netns=net.wk, table_base=500, priority_base=900, slots=4)
    try:
        await s.route(GROUP, EGRESS, GW_A)
        slot = (await s.slots())[EGRESS]
        assert f"lookup {500 + slot}" in "\n".join(rules(net.wk))
        assert sh("ip", "-n", net.wk, "route", "show", "table", str(500 + slot))
        assert seen(net, SELECTED) == str(GW_A)
        with pytest.raises(DataPlaneError, match="family"):
            await s.route(GROUP, EGRESS, ipaddress.ip_address("fd00::1"))
        with pytest.raises(DataPlaneError, match="failed") as info:
            await s.route(GROUP, EGRESS, ipaddress.ip_address("10.77.0.1"))  # no connected network
        assert info.value.__cause__ is not None
        await s.flush_all()
    finally:
        await s.close()
    with pytest.raises(ValueError, match="priorities"):
        PolicySteering(priority_base=32700, slots=50)
    with pytest.raises(ValueError, match="tables"):
        PolicySteering(table_base=200, slots=60)


async def test_onlink_interface(net: Net) -> None:
    s = PolicySteering(netns=net.wk, interface="net0")
    try:
        await s.route(GROUP, EGRESS, GW_B)
        assert seen(net, SELECTED) == str(GW_B)
        assert "onlink" in sh("ip", "-n", net.wk, "route", "show", "table", "all", "proto", str(STEERING_PROTO))
        before = await s.present()
        await s.route(GROUP, EGRESS, GW_B)
        assert await s.present() == before
        assert {r.interface for r in before.routes if not r.throw} == {"net0"}
    finally:
        await s.flush_all()
        await s.close()


async def test_via_change_latency(net: Net, steering: PolicySteering) -> None:
    await steering.route(GROUP, EGRESS, GW_A)
    times: list[float] = []
    for i in range(100):
        via = GW_B if i % 2 == 0 else GW_A
        started = time.perf_counter()
        await steering.route(GROUP, EGRESS, via)
        times.append(time.perf_counter() - started)
    p50, worst = statistics.median(times), max(times)
    print(f"route() changing the via: p50 {p50 * 1000:.2f} ms, max {worst * 1000:.2f} ms over 100 calls")
    assert p50 < 0.025, "several times the measured p50 (docs/steering.md), room for a loaded machine"


def test_root_namespace_untouched() -> None:
    out = subprocess.run(["ip", "rule"], capture_output=True, text=True, check=True).stdout
    assert f"proto {STEERING_PROTO}" not in out


async def test_ipv6_group_is_steered_in_its_own_family(net: Net, steering: PolicySteering) -> None:
    sysctl(net.wk, "net.ipv6.conf.all.forwarding=1")
    sh("ip", "-n", net.wk, "addr", "add", "fd18::10/64", "dev", "net0", "nodad")
    sh("ip", "-n", net.wk, "addr", "add", "fd44:1::1/64", "dev", "pod0", "nodad")
    egress6 = ipaddress.ip_address("fd18::42")
    g6 = EgressGroup(
        name="alliance6",
        egress_ips=(egress6,),
        interface="net0",
        candidates=("gwa",),
        source_cidrs=(ipaddress.ip_network("fd44:1::/64"),),
        destination_cidrs=(ipaddress.ip_network("fd20::/48"),),
        excluded_cidrs=(ipaddress.ip_network("fd20::100/128"),),
    )

    def get6(dst: str) -> str:
        return sh("ip", "-n", net.wk, "-6", "route", "get", dst, "from", "fd44:1::5", "iif", "pod0", check=False)

    await steering.route(g6, egress6, ipaddress.ip_address("fd18::2"))
    assert "via fd18::2" in get6("fd20::5")
    # the main table has no route to it: the exclusion rule's lookup falls
    # through, and the throw route keeps the steering table from catching it
    assert "via" not in get6("fd20::100")
    await steering.route(g6, egress6, ipaddress.ip_address("fd18::3"))
    assert "via fd18::3" in get6("fd20::5")
    present = await steering.present()
    assert {r.version for r in present.rules} == {6}
    assert len(present.rules) == 2
    assert len(present.routes) == 3
    assert f"proto {STEERING_PROTO}" in sh("ip", "-n", net.wk, "-6", "rule")
    await steering.route(g6, egress6, None)
    assert await steering.present() == Plan()
    assert f"proto {STEERING_PROTO}" not in sh("ip", "-n", net.wk, "-6", "rule")
