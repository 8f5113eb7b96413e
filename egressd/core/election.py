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
* **Hold-off.** A node whose takeover failed (its data plane refused) or that
  found its identity claimed by another process takes nothing for a while
  (:func:`hold_off`), in whatever state it is, so a healthy standby serves
  instead of the node flapping between acquire and release.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum

from egressd.core.lease import LeaseRecord
from egressd.core.model import Timing


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
    DELETE = "delete"
    """The IP is no longer configured: delete its claim (see :func:`retire`)."""


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
    hold_off_until: float | None = None
    """Monotonic time before which we take nothing (see :func:`hold_off`)."""
    hold_off_reason: str = ""
    """Why we hold off (``dataplane-failed``, ``identity-clash``)."""


HOLD_OFF_GROWTH_CAP = 16
"""A hold-off after failed takeovers grows up to this many lease durations
(40 s with the default 2.5 s): long enough that a node whose data plane keeps
failing costs the API a write every 40 s at most, short enough that it serves
again soon after it is mended."""

CLASH_HOLD_OFF = 4
"""Lease durations a node stays fenced after an identity clash."""


def hold_off(reason: str, failures: int, timing: Timing) -> float:
    """Seconds to take nothing after ``failures`` (1, 2, ...) failed takeovers
    in a row (``reason`` ``dataplane-failed``), or after an identity clash.

    After a failed takeover the node released the IP, ideally to the next
    candidate; holding off a lease duration lets that candidate (or, after
    the non-preferred delay, any other) take it first. Doubling with every
    failure in a row stops a broken node from taking the IP back again and
    again when nobody else can serve it either."""
    if reason == "identity-clash":
        return CLASH_HOLD_OFF * timing.lease_duration
    return timing.lease_duration * min(2.0 ** max(0, failures - 1), HOLD_OFF_GROWTH_CAP)


UNREADABLE_RECHECK = 4
"""Retry periods to wait before deciding again about a lease we cannot read:
nothing is decided on it, the daemon fence ends a tenure whose renews fail,
and the watch's news of a corrected lease wakes the loop sooner."""


def next_look(decision: Decision | None, *, owner: bool, timing: Timing) -> float:
    """Seconds to wait for news at most before deciding again, after acting
    on ``decision`` (None: the lease could not be read, nothing was decided);
    ``owner``: whether we hold the IP after the action.

    1. An unreadable lease: :data:`UNREADABLE_RECHECK` retry periods.
    2. After a write (acquire, renew, handoff; won, lost or failed), or while
       we hold the IP: the retry period, when the next renew is due; a lost
       race refreshed the view, whose news wakes the loop at once.
    3. Otherwise the decision's own recheck; a decision that waits for news
       only still looks again after a lease duration, so a missed watch event
       costs at most that."""
    if decision is None:
        return timing.retry_period * UNREADABLE_RECHECK
    if decision.action in (Action.ACQUIRE, Action.RENEW, Action.HANDOFF) or owner:
        return timing.retry_period
    return decision.recheck if decision.recheck is not None else timing.lease_duration


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
    decision = _decide(record, observation, now, me, timing)
    # 5. A hold-off forbids taking the IP, whatever the state; everything else
    #    (renewing, stepping down, releasing) goes on as decided.
    if decision.action is Action.ACQUIRE and me.hold_off_until is not None and now < me.hold_off_until:
        return Decision(
            Action.STANDBY,
            "hold-off",
            recheck=me.hold_off_until - now,
            detail=f"after {me.hold_off_reason or 'a failure'}, for {me.hold_off_until - now:.3f}s more "
            f"(would acquire: {decision.reason})",
        )
    return decision


def _decide(record: LeaseRecord | None, observation: Observation, now: float, me: Me, timing: Timing) -> Decision:
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
        # A successor that is not a candidate of this IP could never take it:
        # handing off to it would leave the IP unowned, so the request is ignored.
        successor = record.preferred_holder if record.preferred_holder != me.identity else None
        if not holding:
            if successor and successor in me.candidates:
                # 3d. We withdrew for a handoff but the release did not land: release again.
                return Decision(Action.HANDOFF, "handoff-release-retry", detail=f"preferredHolder={successor}")
            # 3e. We wrote it, then stepped down; nobody took it since. Take it back.
            return Decision(Action.ACQUIRE, "reacquire-own-lease")
        if successor and successor not in me.candidates:
            # 3f. A move to a node that is not a candidate: ignored, we keep serving.
            return Decision(
                Action.RENEW,
                "handoff-target-not-candidate",
                recheck=timing.retry_period,
                detail=f"preferredHolder={successor} is not a candidate of {me.egress_ip} "
                f"(candidates: {', '.join(me.candidates)}); ignoring the handoff request",
            )
        if successor:
            # 3g. An operator asked for a move.
            return Decision(Action.HANDOFF, "handoff-requested", detail=f"preferredHolder={successor}")
        # 3h. Fast path of the leader: renew.
        return Decision(Action.RENEW, "renew", recheck=timing.retry_period)

    # 4. Someone else holds it.
    if holding:
        return Decision(Action.STEP_DOWN, "lost-lease", detail=f"lease now held by {record.holder}")
    return _wait_for_expiry(record, age, me, timing, holder_desc=str(record.holder))


def retire(record: LeaseRecord | None, observation: Observation, now: float, me: Me, timing: Timing) -> Decision:
    """Whether to delete the claim of an IP that no egress group lists any
    more (policy deleted, IP removed from the config), ``me`` having withdrawn
    from it. The delete carries the record's resourceVersion as a
    precondition, so whatever is decided here cannot destroy a claim written
    since (a concurrent acquire): the API refuses, and the claim stays.

    1. Nothing to delete when it is gone already.
    2. A free claim: delete, unless a handoff to a named node is still within
       its grace (a daemon that still lists the IP may be taking it).
    3. A claim naming this process whose release did not land: we were the
       last holder, and we no longer serve it.
    4. A claim another node (or another process of ours) holds: its holder
       deletes it when it withdraws; unless it has expired by our own
       observation (its holder is gone, as for a takeover)."""
    if record is None:
        return Decision(Action.STANDBY, "already-gone")
    age = now - observation.observed_at
    if record.free:
        if record.preferred_holder and age < timing.handoff_grace:
            return Decision(
                Action.STANDBY,
                "handoff-pending",
                recheck=timing.handoff_grace - age,
                detail=f"released to {record.preferred_holder}",
            )
        return Decision(Action.DELETE, "free")
    if record.holder == me.identity and record.incarnation == me.incarnation and me.last_renew is None:
        return Decision(Action.DELETE, "last-held-by-us")
    if age >= record.lease_duration:
        return Decision(Action.DELETE, "expired", detail=f"held by {record.holder}, silent for {age:.3f}s")
    return Decision(
        Action.STANDBY,
        "held-by-other",
        recheck=record.lease_duration - age,
        detail=f"held by {record.holder}, who deletes it when it withdraws",
    )


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
