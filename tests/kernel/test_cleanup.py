"""``egressd cleanup`` removes every trace of egressd from a node, idempotently,
and leaves everything else alone."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from tests.kernel.netns import Lab, ns_exec, sh

pytestmark = pytest.mark.kernel

SETUP = textwrap.dedent(
    """
    import asyncio, ipaddress
    from egressd.adapters.addresses import KernelAddresses
    from egressd.adapters.nftables import NftablesSnat
    from egressd.adapters.steering import PolicySteering
    from egressd.core.model import EgressGroup

    ip = ipaddress.ip_address("10.99.0.42")
    group = EgressGroup(
        name="outpost", egress_ips=(ip,), interface="net0", candidates=("gw",),
        source_cidrs=(ipaddress.ip_network("10.98.0.0/24"),),
        destination_cidrs=(ipaddress.ip_network("10.99.0.0/24"),),
    )

    async def main():
        addresses, snat, steering = KernelAddresses(), NftablesSnat(fence_ttl=5.0), PolicySteering()
        await addresses.claim(ip, "net0", 30)
        await snat.stage([group])
        await snat.activate(ip, group.name)
        await steering.route(group, ip, ipaddress.ip_address("10.99.0.5"))
        await addresses.close()
        await steering.close()

    asyncio.run(main())
    """
)

STATE = textwrap.dedent(
    """
    import asyncio, json
    from egressd.adapters.addresses import KernelAddresses
    from egressd.adapters.steering import PolicySteering

    async def main():
        addresses, steering = KernelAddresses(), PolicySteering()
        plan = await steering.present()
        print(json.dumps({"addresses": sorted(str(ip) for ip, _ in await addresses.owned()),
                          "rules": len(plan.rules), "routes": len(plan.routes)}))
        await addresses.close()
        await steering.close()

    asyncio.run(main())
    """
)


FOREIGN = """
table ip foreign {
    chain c {
        type filter hook input priority 0;
    }
}
"""


def state(ns: str) -> dict[str, object]:
    out: dict[str, object] = json.loads(ns_exec(ns, sys.executable, "-c", STATE))
    out["tables"] = sorted(line for line in ns_exec(ns, "nft", "list", "tables").splitlines() if line.strip())
    return out


def test_cleanup_removes_everything_of_egressd_and_nothing_else(lab: Lab) -> None:
    host = lab.attach("node", ["10.99.0.2/24"])
    ns = host.ns
    ns_exec(ns, "nft", "-f", "-", input_text=FOREIGN)
    sh("ip", "-n", ns, "addr", "add", "10.99.0.77/32", "dev", "net0")  # an address egressd does not own
    sh("ip", "-n", ns, "rule", "add", "from", "10.50.0.0/16", "lookup", "100", "priority", "500")  # a foreign rule
    ns_exec(ns, sys.executable, "-c", SETUP)

    before = state(ns)
    assert before["addresses"] == ["10.99.0.42"]
    assert before["rules"] and before["routes"]
    tables = before["tables"]
    assert isinstance(tables, list) and any("egressd" in t for t in tables)

    first = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-m", "egressd.cli.main", "cleanup"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert first.returncode == 0, first.stderr
    assert "address 10.99.0.42 on net0" in first.stdout and "SNAT to 10.99.0.42" in first.stdout

    after = state(ns)
    assert after == {"addresses": [], "rules": 0, "routes": 0, "tables": ["table ip foreign"]}
    assert "10.99.0.77/32" in sh("ip", "-n", ns, "addr", "show", "dev", "net0")
    assert "from 10.50.0.0/16 lookup 100" in sh("ip", "-n", ns, "rule")

    second = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-m", "egressd.cli.main", "cleanup"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert second.returncode == 0, second.stderr
    assert "nothing of egressd was present" in second.stdout
