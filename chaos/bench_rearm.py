"""Benchmark: the cost of re-arming the address lifetimes of N owned IPs after one node-lease renew.

    python chaos/bench_rearm.py --ips 1000 --rounds 20

A gateway re-arms the kernel fences of every IP it owns after each node-lease renew (four times a
second by default): one nftables transaction for the fence elements, and each address's
``valid_lft``. This measures the address part on a real kernel, in a network namespace of its own
(``egb-<hex>-rearm``, one veth pair, removed at the end), two ways:

* ``claim`` per IP (``KernelAddresses.claim``, one pyroute2 request each: how egressd re-armed
  them before);
* ``refresh`` of all of them (``KernelAddresses.refresh``: batched RTM_NEWADDR messages on a raw
  rtnetlink socket).

It prints, per way, the wall time and the CPU time of this process per re-arm (median over
``--rounds``), and the share of one core that re-arming four times a second would take.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import resource
import secrets
import statistics
import time
from collections.abc import Awaitable, Callable

from egressd.adapters.addresses import KernelAddresses
from egressd.core.model import IPAddress
from egressd.lab.netns import Namespaces

IFNAME = "r0"
RENEWS_PER_SECOND = 4  # retryPeriod 0.25 s


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def measure(rounds: int, rearm: Callable[[], Awaitable[None]]) -> tuple[float, float]:
    """Median wall and CPU seconds of one re-arm."""
    walls: list[float] = []
    cpus: list[float] = []
    for _ in range(rounds):
        c0, t0 = cpu(), time.perf_counter()
        await rearm()
        walls.append(time.perf_counter() - t0)
        cpus.append(cpu() - c0)
    return statistics.median(walls), statistics.median(cpus)


async def run(ns: str, ips: list[IPAddress], rounds: int) -> None:
    addresses = KernelAddresses(netns=ns)
    try:
        await addresses.refresh([(ip, IFNAME) for ip in ips], 30)  # all present, as on a gateway that owns them

        async def per_ip() -> None:
            for ip in ips:
                await addresses.claim(ip, IFNAME, 30)

        async def batched() -> None:
            await addresses.refresh([(ip, IFNAME) for ip in ips], 30)

        for name, rearm in (("claim per IP", per_ip), ("refresh (batched)", batched)):
            wall, used = await measure(rounds, rearm)
            share = used * RENEWS_PER_SECOND * 100
            print(
                f"{name}: {len(ips)} IPs  wall {wall * 1000:.1f} ms  CPU {used * 1000:.1f} ms per re-arm  "
                f"({share:.1f} % of one core at {RENEWS_PER_SECOND} renews/s)",
                flush=True,
            )
    finally:
        await addresses.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--ips", type=int, default=1000, help="owned IPs (default 1000)")
    parser.add_argument("--rounds", type=int, default=20, help="re-arms measured per way (default 20)")
    args = parser.parse_args()
    if not 1 <= args.ips <= 60_000 or not 1 <= args.rounds <= 1000:
        parser.error("--ips 1..60000, --rounds 1..1000")
    ips: list[IPAddress] = [ipaddress.ip_address("10.200.0.1") + i for i in range(args.ips)]
    with Namespaces(prefix=f"egb-{secrets.token_hex(3)}-") as spaces:
        ns = spaces.add("rearm")
        spaces.wire(ns, IFNAME, ns, "r1")
        asyncio.run(run(ns, ips, args.rounds))


if __name__ == "__main__":
    main()
