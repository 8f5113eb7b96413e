"""Time to stage many source addresses in the SNAT sets, to change one source,
and the takeover fast path, in a network namespace of its own.

    python chaos/bench_snat_sets.py [--sources 5000] [--groups 1] [--ips 2] [--repeat 3]

The sources are spread evenly over ``--groups`` groups of ``--ips`` egress IPs
each. A *rewrite* is one ``nft -f -`` transaction that replaces egressd's table
with every set (forced here by changing an exclusion, as a policy change
would); a *delta* adds or removes one source of one group, which ``stage``
applies as element changes of that group's sets; ``activate`` only rewrites
one group chain. Measured on this machine (kernel 6.18, nftables 1.0.6, 2 cores
shared with other work, so the worst figures are noisy), ``--repeat 5``::

    --sources 5000 --groups 1 --ips 2
    rewrite (5000 sources in 1 group(s)): best 0.282 s, worst 0.326 s
    delta (one source): best 0.077 s, worst 0.121 s
    activate (one rule): best 0.003 s, worst 0.006 s
    deactivate (one rule): best 0.000 s, worst 0.000 s

    --sources 5000 --groups 50 --ips 2
    rewrite (5000 sources in 50 group(s)): best 0.279 s, worst 0.405 s
    delta (one source): best 0.030 s, worst 0.046 s
    activate (one rule): best 0.004 s, worst 0.004 s
    deactivate (one rule): best 0.000 s, worst 0.001 s

About 20 ms of a delta is nft's own work on a table of this size (measured with
the one-element transaction alone, through libnftables); the rest is computing
the changed group's sets, in proportion to the group's number of sources.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import ipaddress
import secrets
import subprocess
import time

from egressd.adapters.nftables import NftablesSnat
from egressd.core import nft
from egressd.core.model import EgressGroup
from egressd.lab.netns import Namespaces


def groups(sources: int, count: int, ips: int) -> list[EgressGroup]:
    base = int(ipaddress.IPv4Address("10.64.0.0"))
    # every other address, so the sets really hold `sources` separate elements
    srcs = [ipaddress.ip_network(ipaddress.IPv4Address(base + 2 * i)) for i in range(sources)]
    return [
        EgressGroup(
            name=f"bench-{g}",
            egress_ips=tuple(
                ipaddress.IPv4Address(int(ipaddress.IPv4Address("10.99.8.0")) + g * ips + i) for i in range(ips)
            ),
            interface="net0",
            candidates=("me",),
            source_cidrs=tuple(srcs[g::count]),
            destination_cidrs=(ipaddress.ip_network("0.0.0.0/0"),),
            excluded_cidrs=(ipaddress.ip_network("10.0.0.0/8"),),
        )
        for g in range(count)
    ]


def excluding(gs: list[EgressGroup], cidr: str) -> list[EgressGroup]:
    return [dataclasses.replace(g, excluded_cidrs=(ipaddress.ip_network(cidr),)) for g in gs]


def one_more(gs: list[EgressGroup]) -> list[EgressGroup]:
    first = gs[0]
    return [
        dataclasses.replace(first, source_cidrs=(*first.source_cidrs, ipaddress.ip_network("10.98.0.10/32"))),
        *gs[1:],
    ]


async def bench(ns: str, sources: int, count: int, ips: int, repeat: int) -> None:
    snat = NftablesSnat(netns=ns)
    timings: dict[str, list[float]] = {"rewrite": [], "delta": [], "activate": [], "deactivate": []}
    try:
        current = excluding(groups(sources, count, ips), "10.0.0.0/8")
        await snat.stage(current)
        for round_ in range(repeat):
            current = excluding(current, "10.0.0.0/8" if round_ % 2 else "10.0.0.0/9")
            t = time.monotonic()
            await snat.stage(current)
            timings["rewrite"].append(time.monotonic() - t)
            for changed in (one_more(current), current):
                t = time.monotonic()
                await snat.stage(changed)
                timings["delta"].append(time.monotonic() - t)
            ip, name = current[0].egress_ips[0], current[0].name
            t = time.monotonic()
            await snat.activate(ip, name)
            timings["activate"].append(time.monotonic() - t)
            t = time.monotonic()
            await snat.deactivate(ip)
            timings["deactivate"].append(time.monotonic() - t)
        union = nft.set_name(current[0].name, "src", 4)
        proc = await asyncio.to_thread(
            subprocess.run,
            ["ip", "netns", "exec", ns, "nft", "list", "set", "inet", "egressd", union],
            capture_output=True,
            text=True,
            check=True,
        )
        print(f"set {union} holds {proc.stdout.count(',') + 1} elements")
        print(
            f"rewrite ({sources} sources in {count} group(s)): best {min(timings['rewrite']):.3f} s, "
            f"worst {max(timings['rewrite']):.3f} s"
        )
        print(f"delta (one source): best {min(timings['delta']):.3f} s, worst {max(timings['delta']):.3f} s")
        for what in ("activate", "deactivate"):
            print(f"{what} (one rule): best {min(timings[what]):.3f} s, worst {max(timings[what]):.3f} s")
    finally:
        await snat.clear()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sources", type=int, default=5000)
    parser.add_argument("--groups", type=int, default=1)
    parser.add_argument("--ips", type=int, default=2, help="egress IPs per group")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with Namespaces(prefix=f"egb-{secrets.token_hex(3)}-") as spaces:
        asyncio.run(bench(spaces.add("bench"), args.sources, args.groups, args.ips, args.repeat))


if __name__ == "__main__":
    main()
