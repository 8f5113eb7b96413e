"""A daemon restarted after a crash keeps the addresses its predecessor left
before it loads the Kubernetes client and the rest of its adapters: they take
hundreds of milliseconds, and the addresses' lifetime (1 s) runs meanwhile."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

HEAVY = (
    "kubernetes",
    "egressd.adapters.kube.client",
    "prometheus_client",
    "scapy",
    "aiohttp",
    "egressd.runtime.daemon",
)
"""Not needed to keep the addresses; each costs tens to hundreds of ms."""

_START_PROBE = """
import json, sys
from ipaddress import ip_address
import egressd.adapters.addresses as addresses
import egressd.adapters.nftables as nftables

HEAVY = json.loads(sys.argv[2])
LEFT = ip_address("172.18.0.42")

class KernelLeftBehind:
    def __init__(self, **_):
        pass
    async def interface_addresses(self, interface):
        return []
    async def owned(self):
        return {(LEFT, "net0")}
    async def refresh(self, kept, lifetime):
        loaded = sorted(m for m in HEAVY if m in sys.modules)
        print(json.dumps({"refreshed": [str(ip) for ip, _ in kept], "lifetime": lifetime, "loaded": loaded}))
        raise SystemExit(0)
    async def close(self):
        pass

class FenceLeftBehind:
    def __init__(self, **_):
        pass
    async def fence(self):
        return {LEFT: 1.0}

addresses.KernelAddresses = KernelLeftBehind
nftables.NftablesSnat = FenceLeftBehind
from egressd.cli.main import main
main(["run", "--config", sys.argv[1]])
print(json.dumps({"refreshed": None}))
"""


def test_the_addresses_left_behind_are_kept_before_the_heavy_imports(tmp_path: Path) -> None:
    config = {
        "node": {"name": "gw-a", "address": "172.18.0.5"},
        "kubernetes": {"namespace": "egressd", "access": "url", "url": "http://127.0.0.1:9"},
        "groups": [
            {
                "name": "outpost",
                "egressIPs": ["172.18.0.42"],
                "interface": "net0",
                "candidates": ["gw-a", "gw-b"],
                "sourceCIDRs": ["10.244.1.2/32"],
                "destinationCIDRs": ["172.18.0.0/16"],
            }
        ],
    }
    path = tmp_path / "gw-a.yaml"
    path.write_text(yaml.safe_dump(config))
    probe = [sys.executable, "-c", _START_PROBE, str(path), json.dumps(HEAVY)]
    done = subprocess.run(probe, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found == {"refreshed": ["172.18.0.42"], "lifetime": 2, "loaded": []}, done.stderr
