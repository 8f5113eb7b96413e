"""The first thing a daemon does after a crash and restart: keep the egress
addresses its predecessor left, before anything slow.

A restarted process adopts what its kernel still serves (the start-up
reconcile, then a claim written under its own node lease's right), but only
after loading the Kubernetes client and a few API calls: about a second after
the kill in the lab. The addresses' lifetime (1 s, refreshed by the
predecessor after every renew) can run out meanwhile, and while an address is
gone nobody answers ARP for its IP: a server re-confirming its neighbour entry
then stalls. :func:`keep_addresses` re-arms their lifetimes first, where
:func:`egressd.core.rights.keep_address_at_start` allows it (the nftables
fence on and the IP's element still armed); it takes the address and
nftables adapters only, so the command line can run it before importing the
rest. Nothing is added and no fence is touched.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from egressd.core import rights
from egressd.core.errors import DataPlaneError

if TYPE_CHECKING:  # the ports module loads the protocols' message types: not needed this early
    from egressd.core.model import IPAddress, Timing
    from egressd.ports import Addresses, Snat

log = logging.getLogger(__name__)


async def keep_addresses(addresses: Addresses, snat: Snat, timing: Timing) -> list[tuple[IPAddress, str]]:
    """Re-arm the lifetime of every egressd address present whose IP's fence
    element is still armed; returns those re-armed. A kernel that cannot be
    read or written is logged and keeps nothing: the adoption that follows
    does not depend on this."""
    try:
        present = sorted(await addresses.owned(), key=lambda a: (a[0].version, int(a[0]), a[1]))
        fenced = await snat.fence() if present else {}
    except DataPlaneError as exc:
        log.warning("start: cannot read the addresses or the fence left by a previous process: %s", exc)
        return []
    kept: list[tuple[IPAddress, str]] = []
    lifetime = 0
    for ip, interface in present:
        verdict = rights.keep_address_at_start(timing, fence_armed=ip in fenced)
        if not verdict:
            log.info("ip=%s start: address on %s left as it is until adoption (%s)", ip, interface, verdict.reason)
            continue
        kept.append((ip, interface))
        lifetime = verdict.lifetime
    if not kept:
        return kept
    try:
        await addresses.refresh(kept, lifetime)
    except DataPlaneError as exc:
        log.warning("start: re-arming the address lifetimes failed: %s", exc)
        return []
    for ip, interface in kept:
        log.info(
            "ip=%s start: re-armed the address lifetime on %s to %d s before adoption (its fence element "
            "is armed, about %g s left, and left as it is)",
            ip,
            interface,
            lifetime,
            fenced[ip],
        )
    return kept
