"""NftablesSnat's conntrack mark and connection guard against a real kernel.

cl 10.98.0.10 -- lan0 gw net0 -- switch -- net0 srv
                      10.99.0.2 (+ .42 egress IP)   10.99.0.100

* the SNAT rule marks the flows it translates: the conntrack adapter dumps
  them by egressd's mark, with the egress IP as their mapping;
* while the guard of the egress IP is armed, a TCP segment to it that
  matches no conntrack entry is dropped (the sender's connect times out),
  counted; once the grace period is over the gateway's own stack answers it
  again (a reset: the connection is refused at once).
"""

from __future__ import annotations

import ipaddress
import secrets
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest

from egressd.adapters.conntrack import KernelConntrack
from egressd.adapters.nftables import NftablesSnat
from egressd.core import nft
from egressd.core.model import EgressGroup
from egressd.lab.netns import Namespaces
from tests.kernel.netns import Lab, ns_exec, probe, sh, start_echo_server

pytestmark = pytest.mark.kernel

EGRESS = ipaddress.ip_address("10.99.0.42")
POD, SERVER = "10.98.0.10", "10.99.0.100"
MARK = nft.CtMark(0x00E90000, 0x00FF0000)
GROUP = EgressGroup(
    name="web-a",
    egress_ips=(EGRESS,),
    interface="net0",
    candidates=("gw",),
    source_cidrs=(ipaddress.ip_network(f"{POD}/32"),),
    destination_cidrs=(ipaddress.ip_network("10.99.0.0/24"),),
)

CONNECT = """
import socket, sys, time
s = socket.socket()
s.settimeout(float(sys.argv[2]))
started = time.monotonic()
try:
    s.connect((sys.argv[1], 5555))
    print("connected")
except ConnectionRefusedError:
    print("refused")
except TimeoutError:
    print("timeout")
"""


@dataclass
class Net:
    gw: str
    cl: str
    srv: str


@pytest.fixture
def net() -> Iterator[Net]:
    lab = Lab(net=Namespaces(f"egcr-{secrets.token_hex(3)}-"))
    try:
        gw = lab.attach("gw", ["10.99.0.2/24", f"{EGRESS}/32"])
        srv = lab.attach("srv", [f"{SERVER}/24"])
        cl = lab.ns("cl")
        lab.wire(gw.ns, "lan0", cl, "eth0")
        sh("ip", "-n", gw.ns, "addr", "add", "10.98.0.1/24", "dev", "lan0")
        sh("ip", "-n", cl, "addr", "add", f"{POD}/24", "dev", "eth0")
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
    finally:
        lab.close()


@pytest.fixture
async def snat(net: Net) -> AsyncIterator[NftablesSnat]:
    s = NftablesSnat(netns=net.gw, mark=MARK, guard=True)
    yield s
    await s.clear()


def connect(net: Net, timeout: float = 1.0) -> str:
    return ns_exec(net.srv, sys.executable, "-c", CONNECT, str(EGRESS), str(timeout)).strip()


async def test_the_snat_rule_marks_the_flows_it_translates(net: Net, snat: NftablesSnat) -> None:
    await snat.stage([GROUP])
    await snat.activate(EGRESS, "web-a")
    assert probe(net.cl, POD, SERVER) == str(EGRESS)
    # a restarted daemon rewrites the table with the rules it found: still marking
    await NftablesSnat(netns=net.gw, mark=MARK, guard=True).stage([GROUP])
    assert probe(net.cl, POD, SERVER) == str(EGRESS)
    table = KernelConntrack(mark=MARK.value, mask=MARK.mask, netns=net.gw)
    try:
        flows = await table.dump()
    finally:
        await table.close()
    assert [(str(f.original.src), f.egress_ip) for f in flows] == [(POD, EGRESS)] * 2
    assert all(f.mark & MARK.mask == MARK.value for f in flows)


async def test_the_guard_drops_untracked_inbound_for_its_grace_then_lets_the_stack_answer(
    net: Net, snat: NftablesSnat
) -> None:
    await snat.stage([GROUP])
    assert connect(net) == "refused"  # no guard: the gateway's stack answers with a reset
    await snat.arm_guard([EGRESS], 1.5)
    started = time.monotonic()
    assert connect(net, timeout=0.5) == "timeout"  # dropped, not reset
    assert await snat.guard_drops() >= 1
    time.sleep(max(0.0, started + 1.6 - time.monotonic()))
    assert connect(net) == "refused"  # the grace is over
