"""Time to apply a group with many source addresses to the SNAT sets, and the
takeover fast path, in a network namespace of its own.

    python chaos/bench_snat_sets.py [--sources 10000] [--repeat 3]

Each ``stage`` is ONE ``nft -f -`` transaction that replaces egressd's table
with every set; ``activate`` only rewrites one group chain. Measured on this
machine (kernel 6.18, nftables 1.0.6, 2 cores), 10,000 /32 sources::

    stage (10000 sources, one transaction): best 0.279 s, worst 0.286 s
    activate (one rule): best 0.005 s, worst 0.007 s
    deactivate (one rule): best 0.009 s, worst 0.021 s
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import secrets
import subprocess
import time

from egressd.adapters.nftables import NftablesSnat
from egressd.core.settings import EgressGroup


def group(sources: int) -> EgressGroup:
    base = int(ipaddress.IPv4Address("10.64.0.0"))
    # every other address, so the sets really hold `sources` separate elements
    srcs = tuple(ipaddress.ip_network(ipaddress.IPv4Address(base + 2 * i)) for i in range(sources))
    return EgressGroup(
        name="bench",
        egress_ips=(ipaddress.ip_address("10.99.8.42"),),
        interface="net0",
        candidates=("me",),
        source_cidrs=srcs,
        destination_cidrs=(ipaddress.ip_network("0.0.0.0/0"),),
        excluded_cidrs=(ipaddress.ip_network("10.0.0.0/8"),),
    )


async def bench(ns: str, sources: int, repeat: int) -> None:
    snat = NftablesSnat(netns=ns)
    g = group(sources)
    timings: dict[str, list[float]] = {"stage": [], "activate": [], "deactivate": []}
    try:
        for _ in range(repeat):
            t = time.monotonic()
            await snat.stage([g])
            timings["stage"].append(time.monotonic() - t)
            t = time.monotonic()
            await snat.activate(g.egress_ips[0], g.name)
            timings["activate"].append(time.monotonic() - t)
            t = time.monotonic()
            await snat.deactivate(g.egress_ips[0])
            timings["deactivate"].append(time.monotonic() - t)
        proc = await asyncio.to_thread(
            subprocess.run,
            ["ip", "netns", "exec", ns, "nft", "list", "set", "inet", "egressd", "g_bench_src4"],
            capture_output=True,
            text=True,
            check=True,
        )
        count = proc.stdout.count(",") + 1
        print(f"set g_bench_src4 holds {count} elements")
        print(
            f"stage ({sources} sources, one transaction): best {min(timings['stage']):.3f} s, "
            f"worst {max(timings['stage']):.3f} s"
        )
        for what in ("activate", "deactivate"):
            print(f"{what} (one rule): best {min(timings[what]):.3f} s, worst {max(timings[what]):.3f} s")
    finally:
        await snat.clear()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sources", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    ns = f"egb-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        asyncio.run(bench(ns, args.sources, args.repeat))
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


if __name__ == "__main__":
    main()
