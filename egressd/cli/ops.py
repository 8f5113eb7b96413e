"""Operator commands: ``status``, ``handoff`` and ``drain``.

``status`` puts three views side by side for each egress IP of the config:
the lease (holder, epoch, age of the last renew), this node's kernel (egress
address present, SNAT active, steering via which node) and the daemon's own
view (state, last transition and its reason, and for an IP it serves the
right it serves it on: ``api`` or ``peer``; read from its ``/status``
endpoint on ``metrics.listen``). Views that cannot be read are reported, not
fatal: the kernel needs root in the node's network namespace, the daemon may
be stopped.

``handoff IP --to NODE`` asks the owner to move an IP: it writes the
``egressd.io/preferred-holder`` annotation; the owner withdraws, then releases
the lease to NODE, which takes it at once. ``drain`` does that for every IP
this node holds, each to its next preferred candidate. Both wait until the
move is visible in the lease unless ``--no-wait``. The protocol is
:mod:`egressd.runtime.operations`; here the arguments meet the Kubernetes
lease store, and the outcome is printed.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from egressd.core.cluster_index import Cluster
from egressd.core.errors import EgressdError
from egressd.core.lease import LeaseRecord
from egressd.core.model import Settings
from egressd.core.resolution import resolve
from egressd.runtime import operations
from egressd.runtime.operations import Move

if TYPE_CHECKING:
    from egressd.adapters.kube.leases import KubeLeaseStore
    from egressd.ports import Clock


# --- status ---------------------------------------------------------------------


def _store(settings: Settings, clock: Clock) -> KubeLeaseStore:
    """A lease store for one operator command (generous timeouts: no fence depends on it)."""
    from egressd.adapters.kube.client import api_client  # noqa: PLC0415
    from egressd.adapters.kube.leases import KubeLeaseStore  # noqa: PLC0415

    return KubeLeaseStore(api_client(settings.kubernetes), settings.kubernetes.namespace, clock=clock, api_timeout=2.0)


def _daemon_view(settings: Settings) -> dict[str, Any] | None:
    if settings.metrics.listen is None:
        return None
    host, port = settings.metrics.listen
    host = "127.0.0.1" if host in ("0.0.0.0", "") else f"[{host}]" if ":" in host else host
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/status", timeout=2) as resp:
            data: dict[str, Any] = json.load(resp)
            return data
    except (OSError, urllib.error.URLError, ValueError):
        return None


async def _kernel_view() -> dict[str, Any] | None:
    from egressd.adapters.addresses import KernelAddresses  # noqa: PLC0415
    from egressd.adapters.nftables import NftablesSnat  # noqa: PLC0415
    from egressd.adapters.steering import PolicySteering  # noqa: PLC0415

    addresses, snat, steering = KernelAddresses(), NftablesSnat(), PolicySteering()
    try:
        owned = {str(ip) for ip, _ in await addresses.owned()}
        active = {str(ip) for ip in await snat.active()}
        plan = await steering.present()
        via = {str(r.dst.network_address): str(r.via) for r in plan.routes if r.anchor and r.via is not None}
        return {"addresses": sorted(owned), "snat": sorted(active), "steering": via}
    except (EgressdError, OSError):
        return None
    finally:
        await addresses.close()
        await steering.close()


async def with_policy_groups(settings: Settings) -> Settings:
    """In the Kubernetes mode, ``settings`` with the groups the policies, pods
    and nodes amount to now (listed once); the settings as they are otherwise."""
    if settings.mode != "kubernetes":
        return settings
    from egressd.adapters.clock import SystemClock  # noqa: PLC0415
    from egressd.adapters.kube.client import api_client  # noqa: PLC0415
    from egressd.adapters.kube.cluster import KubeCluster  # noqa: PLC0415

    source = KubeCluster(api_client(settings.kubernetes), clock=SystemClock())
    try:
        snapshot = await source.snapshot()
    finally:
        await source.close()
    index = Cluster()
    for resource, objects in snapshot.items():
        index.replace(resource, objects)
    resolution = resolve(index, exclude_cordoned=settings.kubernetes.exclude_cordoned)
    return replace(settings, groups=resolution.groups)


async def status(settings: Settings, *, as_json: bool, kernel: bool = True) -> int:
    from egressd.adapters.clock import SystemClock  # noqa: PLC0415

    settings = await with_policy_groups(settings)
    clock = SystemClock()
    store = _store(settings, clock)
    try:
        records = {r.egress_ip: r for r in await store.list_leases(deadline=clock.monotonic() + 5.0)}
    finally:
        await store.close()
    daemon = _daemon_view(settings)
    members = {m["egressIP"]: m for m in (daemon or {}).get("members", [])}
    kview = await _kernel_view() if kernel else None
    now = datetime.now(UTC)
    me = settings.node.name
    rows: list[dict[str, Any]] = []
    for group in settings.groups:
        for ip in group.egress_ips:
            r = records.get(str(ip))
            holder = r.holder if r else None
            role = "owner" if holder == me else "candidate" if me in group.candidates else "steering"
            age = (now - r.renew_time).total_seconds() if r and r.renew_time and holder else None
            row: dict[str, Any] = {
                "egressIP": str(ip),
                "group": group.name,
                "holder": holder,
                "holderAddress": r.holder_address if r else None,
                "epoch": r.transitions if r else None,
                "renewedSecondsAgo": round(age, 3) if age is not None else None,
                "role": role,
                "daemon": members.get(str(ip)),
            }
            if kview is not None:
                row["kernel"] = _kernel_row(str(ip), role, r, kview)
            rows.append(row)
    report = {
        "node": me,
        "daemon": {k: v for k, v in daemon.items() if k != "members"} if daemon else None,
        "kernelReadable": kview is not None,
        "leases": rows,
    }
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        _print_table(report)
    return 0


def _kernel_row(ip: str, role: str, record: LeaseRecord | None, k: dict[str, Any]) -> dict[str, Any]:
    address, snat, via = ip in k["addresses"], ip in k["snat"], k["steering"].get(ip)
    problems = []
    if role == "owner":
        if not address:
            problems.append("address missing")
        if not snat:
            problems.append("SNAT missing")
    else:
        if address:
            problems.append("address present but not owner")
        if snat:
            problems.append("SNAT active but not owner")
    if role == "steering":
        expected = record.holder_address if record and record.holder else None
        if via != expected:
            problems.append(f"steering via {via or 'nothing'}, lease says {expected or 'nobody'}")
    return {"address": address, "snat": snat, "steeringVia": via, "consistent": not problems, "problems": problems}


def _print_table(report: dict[str, Any]) -> None:
    header = ("EGRESS IP", "GROUP", "HOLDER", "EPOCH", "RENEWED", "THIS NODE", "RIGHT", "KERNEL", "LAST TRANSITION")
    table: list[tuple[str, ...]] = [header]
    for row in report["leases"]:
        kernel = row.get("kernel")
        if kernel is None:
            kcell = "?"
        else:
            parts = ["addr" if kernel["address"] else "", "snat" if kernel["snat"] else ""]
            if kernel["steeringVia"]:
                parts.append(f"via {kernel['steeringVia']}")
            kcell = ("+".join(p for p in parts if p) or "-") + ("" if kernel["consistent"] else " (MISMATCH)")
        member = row.get("daemon") or {}
        transition = member.get("lastTransition") or "-"
        table.append(
            (
                row["egressIP"],
                row["group"],
                row["holder"] or "<free>",
                "-" if row["epoch"] is None else str(row["epoch"]),
                "-" if row["renewedSecondsAgo"] is None else f"{row['renewedSecondsAgo']:.1f}s ago",
                row["role"],
                member.get("right") or "-",
                kcell,
                transition,
            )
        )
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    for line in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())
    daemon = report["daemon"]
    print()
    if daemon is None:
        print("daemon: not reachable on metrics.listen (stopped, or metrics turned off)")
    else:
        # the incarnation is served only on loopback (see adapters/observability.py)
        process = f"incarnation {daemon['incarnation']}, " if daemon.get("incarnation") else ""
        print(f"daemon: {process}{'healthy' if daemon['healthy'] else 'UNHEALTHY'}")
        for problem in daemon.get("problems", []):
            print(f"  - {problem}")
        _print_right_and_mesh(daemon)
    if not report["kernelReadable"]:
        print("kernel: not readable here (run as root in the node's network namespace)")
    for row in report["leases"]:
        for problem in (row.get("kernel") or {}).get("problems", []):
            print(f"kernel: {row['egressIP']}: {problem}")


def _print_right_and_mesh(daemon: dict[str, Any]) -> None:
    """The node's serving right and its mesh, as the daemon reports them."""
    mesh = daemon.get("mesh")
    if mesh:
        held = ", ".join(f"{peer} {left:.2f}s" for peer, left in sorted(mesh.get("promisesHeld", {}).items()))
        print(
            f"mesh: {mesh['heartbeatsSent']} heartbeat(s) sent, {mesh['promisesReceived']} promise(s) taken, "
            f"{mesh['promisesGiven']} given; promises held: {held or 'none'}"
        )
        rejected = ", ".join(f"{reason} {n}" for reason, n in sorted(mesh.get("rejected", {}).items()))
        if rejected:
            print(f"mesh: datagrams rejected: {rejected}")
    right = daemon.get("right")
    if right:
        left = "" if right.get("secondsLeft") is None else f", {right['secondsLeft']:.2f}s left"
        print(f"right: {right['source']} ({right['reason']}{left})", end="")
        print(f"; {daemon.get('peerRightSeconds', 0):.1f}s on peer rights since start")


# --- handoff and drain --------------------------------------------------------------


async def move(settings: Settings, moves: list[Move], *, wait: bool, limit: float = 15.0) -> int:
    """Request ``moves`` (:mod:`egressd.runtime.operations`) and, with ``wait``,
    wait for them; both bounded by ``limit`` seconds."""
    from egressd.adapters.clock import SystemClock  # noqa: PLC0415

    clock = SystemClock()
    store = _store(settings, clock)
    try:
        deadline = clock.monotonic() + limit
        for m in moves:
            record = await operations.request_move(store, clock, m, deadline=deadline)
            if record.holder == m.to:
                print(f"{m.ip}: already held by {m.to}")
                continue
            print(f"{m.ip}: asked {record.holder or 'nobody (free lease)'} to hand off to {m.to}")
        if wait:
            results = await operations.wait_for_moves(store, clock, moves, deadline=clock.monotonic() + limit)
            for m, seconds in zip(moves, results, strict=True):
                print(f"{m.ip}: held by {m.to} after {seconds * 1000:.0f} ms")
    finally:
        await store.close()
    return 0


async def drain_moves(settings: Settings) -> list[Move]:
    """Every IP this node holds, to its next preferred candidate."""
    from egressd.adapters.clock import SystemClock  # noqa: PLC0415

    settings = await with_policy_groups(settings)
    clock = SystemClock()
    store = _store(settings, clock)
    try:
        deadline = clock.monotonic() + 5.0
        return await operations.drain_moves(store, clock, settings.groups, settings.node.name, deadline=deadline)
    finally:
        await store.close()
