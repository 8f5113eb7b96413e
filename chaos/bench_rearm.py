"""Benchmark: the cost of re-arming the address lifetimes of N owned IPs after one node-lease renew.

    python chaos/bench_rearm.py --ips 1000 --rounds 20 [--family 6] [--refresh-only] [--fence]

A gateway re-arms the kernel fences of every IP it owns after each node-lease renew (four times a
second by default): one nftables transaction for the fence elements, and each address's
``valid_lft``. This measures the address part on a real kernel, in a network namespace of its own
(``egb-<hex>-rearm``, one veth pair, removed at the end), two ways:

* ``claim`` per IP (``KernelAddresses.claim``, one pyroute2 request each: how egressd re-armed
  them before);
* ``refresh`` of all of them (``KernelAddresses.refresh``: batched RTM_NEWADDR messages on a raw
  rtnetlink socket).

It prints, per way, the wall time and the CPU time of this process per re-arm (median over
``--rounds``), split into user (Python: encoding, reading answers) and system (the kernel's
work inside the process's syscalls), and the share of one core that re-arming four times a
second would take. ``--family 6`` uses IPv6 addresses; ``--refresh-only`` skips the slow
per-IP way. ``--fence`` measures the other kernel fence instead: ``NftablesSnat.refresh_fence``
of the N IPs, staged as one group (its SNAT table has a source set per IP, as a gateway's has)
with the default ``fenceTtl``. ``--activate`` measures taking IPs over and giving them up instead:
``NftablesSnat.activate`` of each of the N IPs of that group one after the other (the SNAT rule
and its fence element, as a takeover writes them), then ``--rounds`` deactivations each followed by
the activation of the same IP, as a gateway that lost and took back one IP of N.
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
from egressd.adapters.nftables import NftablesSnat
from egressd.core.model import EgressGroup, IPAddress, Timing
from egressd.lab.netns import Namespaces

IFNAME = "r0"
RENEWS_PER_SECOND = 4  # retryPeriod 0.25 s


def cpu() -> tuple[float, float]:
    """User and system CPU seconds of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


async def measure(rounds: int, rearm: Callable[[], Awaitable[None]]) -> tuple[float, float, float, float]:
    """Median wall and CPU seconds of one re-arm; mean user and system seconds of one (the
    kernel accounts the split in ticks, so only the mean over many rounds means anything)."""
    walls: list[float] = []
    cpus: list[float] = []
    user = system = 0.0
    for _ in range(rounds):
        (u0, s0), t0 = cpu(), time.perf_counter()
        await rearm()
        walls.append(time.perf_counter() - t0)
        u1, s1 = cpu()
        cpus.append(u1 + s1 - u0 - s0)
        user += u1 - u0
        system += s1 - s0
    return statistics.median(walls), statistics.median(cpus), user / rounds, system / rounds


async def run(ns: str, ips: list[IPAddress], rounds: int, *, per_ip: bool) -> None:
    addresses = KernelAddresses(netns=ns)
    try:
        await addresses.refresh([(ip, IFNAME) for ip in ips], 30)  # all present, as on a gateway that owns them

        async def one_by_one() -> None:
            for ip in ips:
                await addresses.claim(ip, IFNAME, 30)

        async def batched() -> None:
            await addresses.refresh([(ip, IFNAME) for ip in ips], 30)

        ways = [("claim per IP", one_by_one)] if per_ip else []
        for name, rearm in [*ways, ("refresh (batched)", batched)]:
            wall, used, user, system = await measure(rounds, rearm)
            share = used * RENEWS_PER_SECOND * 100
            print(
                f"{name}: {len(ips)} IPv{ips[0].version}  wall {wall * 1000:.1f} ms  CPU {used * 1000:.1f} ms per "
                f"re-arm (mean user {user * 1000:.1f} + system {system * 1000:.1f})  "
                f"({share:.1f} % of one core at {RENEWS_PER_SECOND} renews/s)",
                flush=True,
            )
    finally:
        await addresses.close()


def bench_group(ips: list[IPAddress]) -> EgressGroup:
    """The one group of the nftables runs, with all the IPs."""
    return EgressGroup(
        name="bench",
        egress_ips=tuple(ips),
        interface=IFNAME,
        candidates=("a", "b"),
        source_cidrs=(ipaddress.ip_network("10.244.0.0/16"),),
        destination_cidrs=(ipaddress.ip_network("192.0.2.0/24"),),
    )


async def run_fence(ns: str, ips: list[IPAddress], rounds: int) -> None:
    ttl = Timing().fence_ttl
    group = bench_group(ips)
    snat = NftablesSnat(netns=ns, fence_ttl=ttl)
    await snat.stage([group])
    await snat.refresh_fence(ips, ttl)  # every element present, as on a gateway that owns them

    async def rearm() -> None:
        await snat.refresh_fence(ips, ttl)

    wall, used, user, system = await measure(rounds, rearm)
    print(
        f"fence refresh: {len(ips)} IPv{ips[0].version}  wall {wall * 1000:.1f} ms  CPU {used * 1000:.1f} ms per "
        f"re-arm (mean user {user * 1000:.1f} + system {system * 1000:.1f})  "
        f"({used * RENEWS_PER_SECOND * 100:.1f} % of one core at {RENEWS_PER_SECOND} renews/s)",
        flush=True,
    )


async def run_activate(ns: str, ips: list[IPAddress], rounds: int) -> None:
    ttl = Timing().fence_ttl
    group = bench_group(ips)
    snat = NftablesSnat(netns=ns, fence_ttl=ttl)
    await snat.stage([group])
    await snat.refresh_fence(ips[:1], ttl)  # the kernel's element update probed, as a running gateway has
    (u0, s0), t0 = cpu(), time.perf_counter()
    for ip in ips:
        await snat.activate(ip, "bench")
    (u1, s1), t1 = cpu(), time.perf_counter()
    print(
        f"activate all: {len(ips)} IPv{ips[0].version}  wall {t1 - t0:.2f} s  CPU {u1 + s1 - u0 - s0:.2f} s "
        f"(user {u1 - u0:.2f} + system {s1 - s0:.2f}; the nft thread's included)",
        flush=True,
    )
    at = iter(ips[:: max(1, len(ips) // rounds)] * rounds)

    async def again() -> None:
        ip = next(at)
        await snat.deactivate(ip)
        await snat.activate(ip, "bench")

    wall, used, user, system = await measure(rounds, again)
    print(
        f"deactivate + activate of one IP of {len(ips)}: wall {wall * 1000:.1f} ms  CPU {used * 1000:.1f} ms "
        f"(mean user {user * 1000:.1f} + system {system * 1000:.1f})",
        flush=True,
    )
    await snat.clear()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--ips", type=int, default=1000, help="owned IPs (default 1000)")
    parser.add_argument("--rounds", type=int, default=20, help="re-arms measured per way (default 20)")
    parser.add_argument("--family", type=int, choices=(4, 6), default=4, help="IPv4 or IPv6 addresses (default 4)")
    parser.add_argument("--refresh-only", action="store_true", help="measure the batched refresh only")
    parser.add_argument("--fence", action="store_true", help="measure the nftables fence refresh instead")
    parser.add_argument("--activate", action="store_true", help="measure activations and deactivations instead")
    args = parser.parse_args()
    if not 1 <= args.ips <= 60_000 or not 1 <= args.rounds <= 1000:
        parser.error("--ips 1..60000, --rounds 1..1000")
    first = ipaddress.ip_address("10.200.0.1" if args.family == 4 else "fd00:200::1")
    ips: list[IPAddress] = [first + i for i in range(args.ips)]
    with Namespaces(prefix=f"egb-{secrets.token_hex(3)}-") as spaces:
        ns = spaces.add("rearm")
        spaces.wire(ns, IFNAME, ns, "r1")
        if args.activate:
            asyncio.run(run_activate(ns, ips, args.rounds))
        elif args.fence:
            asyncio.run(run_fence(ns, ips, args.rounds))
        else:
            asyncio.run(run(ns, ips, args.rounds, per_ip=not args.refresh_only))


if __name__ == "__main__":
    main()
