"""The election decision for one egress IP: pure, clock injected.

:func:`decide` looks at the lease as last read, *when we observed it* on our
own monotonic clock, and our own tenure, and returns what to do with a reason.
It follows client-go's ``tryAcquireOrRenew``:

* A standby never trusts the ``renewTime`` written by another node (clocks
  differ); a lease expires ``leaseDuration`` after *we* first saw its current
  resourceVersion.
* Writes are optimistic (resourceVersion); a conflict is a lost race, handled
  by the caller re-reading, not an error.
* ``leaseTransitions`` counts holder changes and is the ownership epoch.

Beyond client-go:

* **Spread.** Each IP has a preferred candidate by rendezvous hashing of
  (IP, node). Others wait ``non_preferred_delay`` longer before taking a free
  or expired lease. When a lease expired, its silent holder is left out of the
  ranking: it is presumed dead, so its successor does not wait for it.
* **Handoff.** A lease released with ``preferredHolder`` set is left to that
  node for ``handoff_grace``; after that the others take it by preference,
  without the named node, as if it had just been freed. A holder that sees
  ``preferredHolder`` naming another node hands off (withdraws first, then
  releases).
* **Identity clash.** Each daemon process writes a random incarnation token.
  A lease showing our node name with another token while we hold it means a
  second daemon claims our identity: we fence ourselves.
* **Adoption.** After a crash and quick restart the lease still names us
  with the previous process's token. If our kernel still serves the IP (the
  start-up reconcile found the address), the new process adopts the tenure at
  once so traffic is not interrupted; otherwise it waits like any standby.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum

from egressd.core.lease import LeaseRecord
from egressd.core.settings import Timing


class Action(Enum):
    ACQUIRE = "acquire"
    """Write ourselves as holder (create the lease or take it over)."""
    RENEW = "renew"
    """We hold it: write a fresh renewTime."""
    STANDBY = "standby"
    """Do nothing now; look again after ``Decision.recheck`` or on a watch event."""
    STEP_DOWN = "step-down"
    """We hold it in our own view but may not any more: withdraw the data plane."""
    HANDOFF = "handoff"
    """Release to the requested successor: withdraw first, then write the lease free."""
    FENCE = "fence"
    """Identity clash: withdraw and stay out for a while."""


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str
    """Short, stable, kebab-case; used in logs, events and metric labels."""
    recheck: float | None = None
    """Seconds after which to decide again even without news (None: on news only)."""
    detail: str = ""
    """Human-readable context for logs."""


@dataclass(frozen=True)
class Observation:
    """When we first saw the current version of the lease (our monotonic clock)."""

    resource_version: str | None
    """None when the lease did not exist."""
    observed_at: float


@dataclass(frozen=True)
class Me:
    """This daemon, as far as one IP is concerned."""

    identity: str
    incarnation: str
    egress_ip: str
    candidates: tuple[str, ...]
    """All candidate nodes of the IP, including us."""
    last_renew: float | None = None
    """Monotonic time at which our last successful acquire/renew was *sent*;
    None when we do not hold the IP (no tenure)."""
    serving_locally: bool = False
    """The kernel still serves this IP from a previous process of this node."""
    preference: tuple[str, ...] = ()
    """The candidates from most to least preferred for this IP (see
    :func:`spread_rank`); empty: by :func:`rendezvous_rank` of the IP alone."""


def rendezvous_rank(ip: str, candidates: Iterable[str]) -> list[str]:
    """Candidates from most to least preferred for ``ip`` (highest random weight).

    Stable across nodes and restarts; removing one candidate moves only the
    IPs it was preferred for."""

    def weight(node: str) -> bytes:
        return hashlib.sha256(f"{ip}|{node}".encode()).digest()

    return sorted(set(candidates), key=weight, reverse=True)


def spread_rank(ip: str, group_ips: Iterable[str], candidates: Iterable[str]) -> list[str]:
    """Candidates from most to least preferred for ``ip``, one of a group's IPs,
    so that the group's IPs spread evenly over its candidates.

    The group's IPs are taken in a fixed order; each prefers, among the
    candidates with the fewest IPs preferring them so far, the one its
    rendezvous ranking puts first; the rest follow in rendezvous order. Pure
    rendezvous hashing puts two IPs on one of two nodes half of the time;
    this never does, and every node computes the same from the same group."""
    nodes = sorted(set(candidates))
    if not nodes:
        return []
    load = dict.fromkeys(nodes, 0)
    ordered = sorted(set(group_ips) | {ip}, key=lambda x: hashlib.sha256(x.encode()).digest())
    for other in ordered:
        ranking = rendezvous_rank(other, nodes)
        first = min(ranking, key=lambda c: (load[c], ranking.index(c)))
        if other == ip:
            return [first, *(c for c in ranking if c != first)]
        load[first] += 1
    raise AssertionError("unreachable")  # pragma: no cover


def decide(
    record: LeaseRecord | None,
    observation: Observation,
    now: float,
    me: Me,
    timing: Timing,
) -> Decision:
    """What to do about one egress IP now. Pure: same inputs, same answer."""
    age = now - observation.observed_at
    holding = me.last_renew is not None

    # 1. The daemon fence comes first: whatever the record says, a tenure whose
    #    last successful renew is older than the renew deadline must end.
    if holding and me.last_renew is not None and now - me.last_renew > timing.renew_deadline:
        return Decision(
            Action.STEP_DOWN,
            "renew-deadline",
            detail=f"last renew {now - me.last_renew:.3f}s ago > renewDeadline {timing.renew_deadline:g}s",
        )

    # 1b. A node that is not a candidate of this IP never takes it, whatever the
    #     record says (named successor, our name from an earlier process, ...).
    if not holding and me.identity not in me.candidates:
        return Decision(Action.STANDBY, "not-a-candidate")

    # 2. No lease yet, or released: take it if it is ours to take.
    if record is None or record.free:
        if holding:
            return Decision(
                Action.STEP_DOWN, "lease-released-by-other", detail="lease shows no holder while we held it"
            )
        return _take_free(record, age, me, timing)

    # 3. The lease names our node.
    if record.holder == me.identity:
        if record.incarnation != me.incarnation:
            if holding:
                # 3a. Another process writes our name: two daemons claim one identity.
                return Decision(
                    Action.FENCE,
                    "identity-clash",
                    detail=f"lease names {me.identity} with incarnation {record.incarnation!r}, "
                    f"ours is {me.incarnation!r}",
                )
            if me.serving_locally:
                # 3b. Our previous process held it and our kernel still serves it.
                return Decision(Action.ACQUIRE, "adopt-previous-incarnation")
            # 3c. Unknown writer of our name and nothing local: wait it out like any holder.
            return _wait_for_expiry(record, age, me, timing, holder_desc=f"{me.identity} (other incarnation)")
        if not holding:
            if record.preferred_holder and record.preferred_holder != me.identity:
                # 3d. We withdrew for a handoff but the release did not land: release again.
                return Decision(
                    Action.HANDOFF, "handoff-release-retry", detail=f"preferredHolder={record.preferred_holder}"
                )
            # 3e. We wrote it, then stepped down; nobody took it since. Take it back.
            return Decision(Action.ACQUIRE, "reacquire-own-lease")
        if record.preferred_holder and record.preferred_holder != me.identity:
            # 3f. An operator asked for a move.
            return Decision(Action.HANDOFF, "handoff-requested", detail=f"preferredHolder={record.preferred_holder}")
        # 3g. Fast path of the leader: renew.
        return Decision(Action.RENEW, "renew", recheck=timing.retry_period)

    # 4. Someone else holds it.
    if holding:
        return Decision(Action.STEP_DOWN, "lost-lease", detail=f"lease now held by {record.holder}")
    return _wait_for_expiry(record, age, me, timing, holder_desc=str(record.holder))


def _take_free(record: LeaseRecord | None, age: float, me: Me, timing: Timing) -> Decision:
    preferred = record.preferred_holder if record else None
    if preferred == me.identity:
        return Decision(Action.ACQUIRE, "handoff-target")
    if preferred and preferred in me.candidates:
        if age < timing.handoff_grace:
            return Decision(
                Action.STANDBY,
                "handoff-pending",
                recheck=timing.handoff_grace - age,
                detail=f"released to {preferred}",
            )
        # The named successor did not come: presumed dead like an expired holder,
        # it leaves the ranking, and the others' wait starts when the grace ends.
        return _by_preference(age - timing.handoff_grace, me, timing, exclude=(preferred,), reason="free")
    return _by_preference(age, me, timing, exclude=(), reason="free")


def _wait_for_expiry(record: LeaseRecord, age: float, me: Me, timing: Timing, holder_desc: str) -> Decision:
    remaining = record.lease_duration - age
    if remaining > 0:
        return Decision(Action.STANDBY, "held-by-other", recheck=remaining, detail=f"held by {holder_desc}")
    holder = (record.holder,) if record.holder and record.holder != me.identity else ()
    return _by_preference(age - record.lease_duration, me, timing, exclude=holder, reason="expired")


def _by_preference(waited: float, me: Me, timing: Timing, exclude: Sequence[str], reason: str) -> Decision:
    if me.identity not in me.candidates:
        return Decision(Action.STANDBY, "not-a-candidate")
    order = me.preference or rendezvous_rank(me.egress_ip, me.candidates)
    ranking = [c for c in order if c not in exclude and c in me.candidates]
    if ranking[0] == me.identity:
        return Decision(Action.ACQUIRE, reason)
    if waited >= timing.non_preferred_delay:
        return Decision(Action.ACQUIRE, f"{reason}-after-delay", detail=f"preferred {ranking[0]} did not take it")
    return Decision(
        Action.STANDBY,
        "not-preferred",
        recheck=timing.non_preferred_delay - waited,
        detail=f"preferred candidate is {ranking[0]}",
    )
