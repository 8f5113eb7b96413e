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
import sys
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from egressd.adapters.conntrack import KernelConntrack
from egressd.adapters.nftables import NftablesSnat
from egressd.core import nft
from egressd.core.model import EgressGroup
from tests.kernel.netns import GatewayNet as Net
from tests.kernel.netns import Lab, gateway_topology, ns_exec, probe

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


@pytest.fixture
def net(lab: Lab) -> Iterator[Net]:
    with gateway_topology(lab, egress=str(EGRESS), clients=(POD,), servers=(SERVER,)) as n:
        yield n


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
