"""What the daemon says about itself: liveness (``/healthz``), readiness
(``/readyz``), its status (``/status``, ``egressd status``), the renew ages of
the IPs it owns, and ARP conflicts its announcer heard.

Each is a function of the members, the supervisor and the clock reading it
is given; :class:`~egressd.runtime.daemon.Daemon` serves them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from egressd.core.model import IPAddress, Timing
from egressd.core.ownership_events import OwnershipEvent
from egressd.core.rights import Right, Source
from egressd.core.states import State
from egressd.ports import EventSink, Metrics
from egressd.runtime.member import Member
from egressd.runtime.steerer import Steerer
from egressd.runtime.supervisor import Supervisor

log = logging.getLogger(__name__)

OVERDUE_SLACK = 0.5
"""Seconds past the renew deadline an owner that has not stepped down fails
liveness: the fence withdraws at the deadline, this allows for its wake-up."""


def _by_ip(members: Mapping[IPAddress, Member]) -> list[tuple[IPAddress, Member]]:
    return sorted(members.items(), key=lambda kv: str(kv[0]))


def liveness(
    members: Mapping[IPAddress, Member], supervisor: Supervisor, now: float, timing: Timing, *, started: bool
) -> tuple[bool, list[str]]:
    """Fails when the daemon should have stepped down but has not, or when a
    supervised task ended unexpectedly and is down or keeps dying (once the
    members were ``started``). A restart is the cure for both."""
    problems = supervisor.problems()
    overdue = timing.renew_deadline + OVERDUE_SLACK
    for ip, member in _by_ip(members):
        if member.sm.state is State.OWNER and member.last_renew is not None and now - member.last_renew > overdue:
            problems.append(
                f"{ip}: still owner {now - member.last_renew:.1f}s after its last renew (should have stepped down)"
            )
    if started and not supervisor.stop_requested.is_set():
        missing = {"lease-watch"} | {f"member:{ip}" for ip in members}
        if members:
            missing |= {"node-lease", "node-fence", "fence-rearm"}
        missing -= set(supervisor.running())
        missing -= set(supervisor.states)  # ended unexpectedly: listed by the supervisor
        problems += [f"task {name} is not running" for name in sorted(missing)]
    return not problems, problems


def readiness(
    *, reconciled: bool, connected: bool, checks: Iterable[Callable[[], list[str]]]
) -> tuple[bool, list[str]]:
    """The initial reconcile is done, the API is reachable, and every further
    check (the controller's) passes."""
    problems = []
    if not reconciled:
        problems.append("initial reconcile not done")
    if not connected:
        problems.append("Kubernetes API not reachable")
    for check in checks:
        problems += check()
    return not problems, problems


def members_report(members: Mapping[IPAddress, Member], now: float, right: Right | None = None) -> list[dict[str, Any]]:
    """Each member's state, epoch, last transition and decision, for the
    status; for an owner, the right it serves on now (``api``, ``peer``, or
    ``none`` while it steps down), from the node's ``right``."""
    report = []
    for ip, m in _by_ip(members):
        d = m.last_decision
        owner = m.sm.state is State.OWNER
        report.append(
            {
                "egressIP": str(ip),
                "group": m.group.name,
                "state": m.sm.state.value,
                "epoch": m.epoch,
                "lastTransition": m.last_transition or None,
                "lastDecision": {"action": d.action.value, "reason": d.reason, "detail": d.detail} if d else None,
                "lastRenewAgeSeconds": round(now - m.last_renew, 3) if m.last_renew is not None else None,
                "right": right.source.value if owner and right is not None else None,
            }
        )
    return report


def serving_rights(members: Mapping[IPAddress, Member], right: Right) -> dict[tuple[str, ...], float]:
    """(egress IP, right) -> 1 for the right each owned IP is served on now,
    0 for the other; nothing for an IP not owned, or owned without a right
    (it is being withdrawn)."""
    if not right:
        return {}
    rights_: dict[tuple[str, ...], float] = {}
    for ip, m in members.items():
        if m.sm.state is State.OWNER:
            for source in (Source.API, Source.PEER):
                rights_[(str(ip), source.value)] = 1.0 if right.source is source else 0.0
    return rights_


def steering_report(steerer: Steerer | None) -> dict[str, str | None]:
    """Egress IP -> the node this node steers it to (None: not steered)."""
    if steerer is None:
        return {}
    return {str(ip): str(via) if via else None for ip, via in steerer.current.items()}


def renew_ages(members: Mapping[IPAddress, Member], now: float) -> dict[str, float]:
    """Seconds since the last successful renew of each IP this node owns."""
    return {
        str(ip): now - m.last_renew
        for ip, m in members.items()
        if m.sm.state is State.OWNER and m.last_renew is not None
    }


def report_conflict(
    ip: IPAddress, mac: str, *, node: str, epoch: int, at: float, metrics: Metrics, events: EventSink
) -> None:
    """Another MAC claims an IP we serve: logged, counted and emitted."""
    log.warning("ip=%s node=%s epoch=%d ARP conflict: %s also claims this IP", ip, node, epoch, mac)
    metrics.conflict(str(ip))
    events.emit(
        OwnershipEvent(
            kind="conflict",
            egress_ip=str(ip),
            node=node,
            epoch=epoch,
            reason="arp-conflict",
            detail=f"claimed by {mac}",
            at=at,
        )
    )
