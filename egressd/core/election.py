"""The election decision for one egress IP: pure, clock injected.

:func:`decide` looks at the lease as last read, *when we observed it* on our
own monotonic clock, and our own tenure, and returns what to do with a reason.
It follows client-go's ``tryAcquireOrRenew``:

* A standby never trusts the ``renewTime`` written by another node (clocks
  differ); a holder is presumed gone ``leaseDuration`` after *we* last saw its
  liveness change.

Liveness is per gateway, not per IP (DESIGN.md, "Safety"): the claim of an IP
is written on acquire, handoff, release and adoption only, never renewed; the
holder's right to serve is its **node lease**, renewed every ``retryPeriod``
(:mod:`egressd.core.node_lease`), and the rules of serving rights and takeover
are :mod:`egressd.core.rights`':

* The holder serves while it has a serving right (``rights.serving_right``:
  without the mesh, the API right only: its last successful node-lease renew
  was sent less than ``renewDeadline`` ago). A claim is acquired only with
  that right in hand, so the acquiring write never starts a tenure that a
  standby timing the node lease could already consider over.
* A standby takes a claim over when ``rights.may_take_over`` allows it: the
  holder's node lease has not changed for ``leaseDuration`` by our own
  observation (the claim's own last change counts too: waiting for the later
  of the two is never less safe). A holder without a node lease (a daemon of
  an earlier version during an upgrade, whose claims are renewed) is timed by
  its claim's changes as before. A holder whose node lease cannot be read is
  never taken over from: its liveness is unknown.
* Without the mesh nobody promises and nobody serves on peer rights, so the
  promise and peer-set waits of ``may_take_over`` are zero: a restarted
  process need not wait for promises its predecessor cannot have given.
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
from dataclasses import dataclass, replace
from enum import Enum

from egressd.core import rights, transfer
from egressd.core.lease import LeaseRecord
from egressd.core.model import Timing

MESH_OFF = rights.MeshTiming(promise_duration=0.0, max_hold=0.0)
"""The promise timings while the mesh is off: no promises, hence no wait for
them after a restart (``may_take_over``'s restart wait) and no peer rights."""


class Action(Enum):
    ACQUIRE = "acquire"
    """Write ourselves as holder (create the lease or take it over)."""
    ASSUME = "assume"
    """Serve on a claim the old owner wrote naming us, a transfer we accepted
    (:mod:`egressd.core.transfer`): no write of our own."""
    HOLD = "hold"
    """We hold it and may serve: nothing to write (liveness is the node lease)."""
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
    holder_seen_at: float | None = None
    """When we last saw the holder's node lease change (our monotonic clock);
    None when the holder has no node lease (then the claim's own changes time it)."""
    holder_lease_duration: float | None = None
    """The lease duration the holder's node lease declares."""
    holder_unknown: str = ""
    """Why the holder's liveness cannot be known (its node lease is unreadable):
    then nothing it holds is taken over."""
    holder_stamped_by: float | None = None
    """The heartbeat bound of the holder's node-lease version we see (our
    monotonic clock): when we took a datagram of the holder's process sent
    after that version was stamped (``rights.stamped_by``); None: none."""


@dataclass(frozen=True)
class Me:
    """This daemon, as far as one IP is concerned."""

    identity: str
    incarnation: str
    egress_ip: str
    candidates: tuple[str, ...]
    """All candidate nodes of the IP, including us."""
    last_renew: float | None = None
    """When we hold the IP: the monotonic time at which our last successful
    node-lease renew was *sent* (the serving right's source); None when we do
    not hold the IP (no tenure)."""
    node_renew: float | None = None
    """The monotonic send time of our last successful node-lease renew,
    held or not (None: none yet). Nothing is acquired without a right from it."""
    started_at: float = 0.0
    """Monotonic time this process started (a restarted process times its
    predecessor's claims from it)."""
    serving_locally: bool = False
    """The kernel still serves this IP from a previous process of this node."""
    preference: tuple[str, ...] = ()
    """The candidates from most to least preferred for this IP (see
    :func:`spread_rank`); empty: by :func:`rendezvous_rank` of the IP alone."""
    hold_off_until: float | None = None
    """Monotonic time before which we take nothing (see :func:`hold_off`)."""
    hold_off_reason: str = ""
    """Why we hold off (``dataplane-failed``, ``identity-clash``)."""
    serving_until: float | None = None
    """When we hold the IP: the end of our serving right as the runtime
    reckons it (the API right, or a peer right from the mesh's promises:
    ``rights.serving_right``); None: the API right of ``last_renew``."""
    mesh: rights.MeshTiming = MESH_OFF
    """The promises' timings (``MESH_OFF``: no mesh, nobody promises)."""
    promised_until: float | None = None
    """The end (our clock) of the latest promise we gave the IP's holder."""
    accepted: transfer.Accepted | None = None
    """The transfer of this IP's claim we accepted last, if any."""
    in_holder_peer_set: bool = True
    """We are in the peer set the IP's holder last published (True when its
    node lease shows none: a holder without the mesh rests on no promise)."""


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


HOLD_LOOK = 4
"""Lease durations an owner with nothing to do waits for news before it looks
again. Nothing it holds changes without news: its claim changes by the watch
(which lists again after any failure, and a list is news of every claim that
differs), its right ends by the daemon fence, which does not wait for the
members. The look is a net, not a duty, and a gateway pays it per owned IP
(a thousand owned IPs at one lease duration were 400 decisions a second)."""


WAITS_ON_HOLDER = frozenset({"held-by-other", "promised", "restart-promise-wait", "outside-peer-set"})
"""Reasons of a standby waiting for the holder of a claim to lapse
(:func:`holder_lapsed`): whether it may take over turns with time and the
holder's liveness alone, never before :func:`holder_lapse_at`."""


def next_look(decision: Decision | None, *, owner: bool, timing: Timing, parked: bool = False) -> float:
    """Seconds to wait for news at most before deciding again, after acting
    on ``decision`` (None: the lease could not be read, nothing was decided);
    ``owner``: whether we hold the IP after the action.

    1. An unreadable lease: :data:`UNREADABLE_RECHECK` retry periods.
    2. While holding with nothing to do: :data:`HOLD_LOOK` lease durations
       (news of the claim wakes the loop sooner; the daemon fence acts
       without it).
    3. After a write (acquire, handoff; won, lost or failed), or while we
       hold the IP otherwise: the retry period; a lost race refreshed the
       view, whose news wakes the loop at once.
    4. A standby waiting for the holder to lapse (:data:`WAITS_ON_HOLDER`)
       that is ``parked``: one timer per holder node wakes it when the holder
       may have lapsed (:func:`holder_lapse_at`), so its own look is a net of
       :data:`HOLD_LOOK` lease durations, as an owner's.
    5. Otherwise the decision's own recheck; a decision that waits for news
       only still looks again after a lease duration, so a missed watch event
       costs at most that."""
    if decision is None:
        return timing.retry_period * UNREADABLE_RECHECK
    if parked and decision.action is Action.STANDBY and decision.reason in WAITS_ON_HOLDER and not owner:
        return max(timing.lease_duration * HOLD_LOOK, decision.recheck or 0.0)
    if decision.action is Action.HOLD:
        # nothing to write while holding; the daemon's fence ends the tenure
        # when the node lease's right lapses, and news wakes the loop
        return timing.lease_duration * HOLD_LOOK
    if decision.action in (Action.ACQUIRE, Action.HANDOFF) or owner:
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
    taking = decision.action in (Action.ACQUIRE, Action.ASSUME)
    # 6. Nothing is acquired without the API right of our node lease: a claim
    #    written without it could start a tenure standbys already time out.
    if taking and not api_right(me.node_renew, now, timing):
        return Decision(
            Action.STANDBY,
            "no-node-lease-right",
            recheck=timing.retry_period,
            detail=f"our node lease was not renewed within renewDeadline {timing.renew_deadline:g}s "
            f"(would acquire: {decision.reason})",
        )
    # 5. A hold-off forbids taking the IP, whatever the state; everything else
    #    (renewing, stepping down, releasing) goes on as decided.
    if taking and me.hold_off_until is not None and now < me.hold_off_until:
        return Decision(
            Action.STANDBY,
            "hold-off",
            recheck=me.hold_off_until - now,
            detail=f"after {me.hold_off_reason or 'a failure'}, for {me.hold_off_until - now:.3f}s more "
            f"(would acquire: {decision.reason})",
        )
    return decision


def api_right(renew_sent: float | None, now: float, timing: Timing) -> rights.Right:
    """The serving right of a node-lease renew sent at ``renew_sent``: without
    the mesh there are no peers to promise, so it is the API right or none."""
    holding = rights.Holding(last_renew_sent=renew_sent, last_api_write=renew_sent, required_peers=frozenset())
    return rights.serving_right(holding, now, timing, MESH_OFF)


def _serving(me: Me, now: float, timing: Timing) -> bool:
    """Whether our right to serve (API or peer) still runs."""
    if me.serving_until is not None:
        return now < me.serving_until
    return bool(api_right(me.last_renew, now, timing))


def _decide(record: LeaseRecord | None, observation: Observation, now: float, me: Me, timing: Timing) -> Decision:
    age = now - observation.observed_at
    holding = me.last_renew is not None

    # 1. The daemon fence comes first: whatever the record says, a tenure
    #    without a serving right (the node lease's last successful renew is
    #    older than the renew deadline) must end.
    if holding and me.last_renew is not None and not _serving(me, now, timing):
        right = api_right(me.last_renew, now, timing)
        return Decision(
            Action.STEP_DOWN,
            "renew-deadline",
            detail=f"last node-lease renew {now - me.last_renew:.3f}s ago > renewDeadline "
            f"{timing.renew_deadline:g}s ({right.reason}) and no peer right",
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
            # 3c. A claim of our previous process (or of another writer of our
            #     name) and nothing local. Standbys cannot take it: our node
            #     lease, renewed by this process, keeps changing. So this
            #     process settles it, once the previous one is surely silent:
            #     a leaseDuration after we started and after the claim's last
            #     change (the longer of its declared duration and ours). A
            #     previous process still alive renews our node lease
            #     with its own token meanwhile, which fences us (identity clash).
            remaining = previous_incarnation_wait(record, observation, now, me, timing)
            if remaining > 0:
                return Decision(
                    Action.STANDBY,
                    "previous-incarnation",
                    recheck=remaining,
                    detail=f"held by {me.identity} incarnation {record.incarnation!r}; ours is {me.incarnation!r}",
                )
            return Decision(Action.ACQUIRE, "reacquire-after-restart")
        # A successor that is not a candidate of this IP could never take it:
        # handing off to it would leave the IP unowned, so the request is ignored.
        successor = record.preferred_holder if record.preferred_holder != me.identity else None
        if not holding:
            if successor and successor in me.candidates:
                # 3d. We withdrew for a handoff but the release did not land: release again.
                return Decision(Action.HANDOFF, "handoff-release-retry", detail=f"preferredHolder={successor}")
            if transfer.may_assume(me.accepted, record, now, timing):
                # 3e'. The old owner transferred it to us as we accepted, moments ago.
                return Decision(Action.ASSUME, "transferred", detail=f"epoch {record.transitions}")
            # 3e. We wrote it, then stepped down (or it was transferred to us
            #     and we saw it late); nobody took it since. Take it back.
            return Decision(Action.ACQUIRE, "reacquire-own-lease")
        if successor and successor not in me.candidates:
            # 3f. A move to a node that is not a candidate: ignored, we keep serving.
            return Decision(
                Action.HOLD,
                "handoff-target-not-candidate",
                detail=f"preferredHolder={successor} is not a candidate of {me.egress_ip} "
                f"(candidates: {', '.join(me.candidates)}); ignoring the handoff request",
            )
        if successor:
            # 3g. An operator asked for a move.
            return Decision(Action.HANDOFF, "handoff-requested", detail=f"preferredHolder={successor}")
        # 3h. We hold it and may serve: nothing to write.
        return Decision(Action.HOLD, "holding")

    # 4. Someone else holds it.
    if holding:
        return Decision(Action.STEP_DOWN, "lost-lease", detail=f"lease now held by {record.holder}")
    return _wait_for_expiry(record, observation, now, me, timing, holder_desc=str(record.holder))


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
    if record.holder == me.identity:
        # our previous process's: silent once 3c of decide would settle it
        remaining = previous_incarnation_wait(record, observation, now, me, timing)
        if remaining <= 0:
            return Decision(Action.DELETE, "expired", detail=f"held by our previous process, silent for {age:.3f}s")
        return Decision(
            Action.STANDBY,
            "previous-incarnation",
            recheck=remaining,
            detail=f"held by {me.identity} incarnation {record.incarnation!r}",
        )
    takeover = holder_lapsed(record, observation, now, me, timing)
    if takeover:
        return Decision(Action.DELETE, "expired", detail=f"held by {record.holder}, silent for {age:.3f}s")
    return Decision(
        Action.STANDBY,
        "held-by-other",
        recheck=max(0.0, takeover.not_before - now) if takeover.not_before != float("inf") else None,
        detail=f"held by {record.holder}, who deletes it when it withdraws ({takeover.reason})",
    )


def previous_incarnation_wait(
    record: LeaseRecord, observation: Observation, now: float, me: Me, timing: Timing
) -> float:
    """Seconds until a claim naming our node with another process's token is
    surely silent: a lease duration (the longer of its declared one and ours)
    after we started and after the claim's last change. Our node lease cannot
    time it (this process renews it); a previous process still alive renews
    the node lease with its own token meanwhile, which fences us instead."""
    since = max(observation.observed_at, me.started_at)
    return since + max(timing.lease_duration, record.lease_duration) - now


def holder_lapsed(record: LeaseRecord, observation: Observation, now: float, me: Me, timing: Timing) -> rights.Takeover:
    """Whether the holder of ``record`` has lapsed by our own observation
    (``rights.may_take_over``), and if not, until when to wait.

    1. A holder whose node lease is unreadable: never (``not_before`` infinite).
    2. A holder with a node lease: the later of its node lease's and the
       claim's last change we saw, plus the longer of its declared lease
       duration and ours; the node lease's change may be counted from its
       heartbeat bound instead, when that is earlier (``Standby.lease_stamped_by``).
    3. A holder without a node lease (an earlier version): the claim's last
       change, plus its declared duration, as before node leases."""
    return _holder_takeover(observation, record.lease_duration, now, me, timing)


def _holder_takeover(
    observation: Observation, claim_duration: float, now: float, me: Me, timing: Timing
) -> rights.Takeover:
    """:func:`holder_lapsed` of a claim declaring ``claim_duration``."""
    if observation.holder_unknown:
        return rights.Takeover(rights.TakeoverVerdict.WAIT, "holder-liveness-unknown", float("inf"))
    if observation.holder_seen_at is None:
        changed, duration = observation.observed_at, claim_duration
    else:
        changed = max(observation.holder_seen_at, observation.observed_at)
        duration = observation.holder_lease_duration or claim_duration
    # may_take_over waits our own leaseDuration from the change; shifting the
    # change makes it wait the holder's declared duration instead: exactly
    # (a claim renewed by an earlier version, as before node leases), or the
    # longer of the two (a node lease: the holder's safety rests on its T1)
    stamped = None
    if observation.holder_seen_at is None:
        shifted = changed + duration - timing.lease_duration
    else:
        shifted = changed + max(0.0, duration - timing.lease_duration)
        if observation.holder_stamped_by is not None:
            stamped = max(observation.holder_stamped_by, observation.observed_at)
            stamped += max(0.0, duration - timing.lease_duration)
    standby = rights.Standby(
        promised_until=me.promised_until,
        lease_changed_at=shifted,
        in_peer_set=me.in_holder_peer_set,
        started_at=me.started_at,
        lease_stamped_by=stamped,
    )
    return rights.may_take_over(standby, now, timing, me.mesh)


def holder_lapse_at(observation: Observation, me: Me, timing: Timing) -> float:
    """The earliest time (our clock) at which a claim held by the holder that
    ``observation`` describes may be taken over, whatever the claim: the
    ``not_before`` of :func:`holder_lapsed` with the claim's own last change
    left out (``observation.observed_at`` is not read). The claim's change
    only ever makes the wait longer, so no claim of that holder is taken over
    before this time (with the same inputs); a time in the past when the
    holder has lapsed by then, inf when its liveness cannot be known.

    One timer per holder node at this time wakes the standbys of all its
    claims (``egressd.runtime.lapses``) instead of each one timing the
    holder on its own: a standby's wait slides with every renew of the
    holder's node lease, four times a second."""
    if observation.holder_unknown:
        return float("inf")
    if observation.holder_seen_at is None or observation.holder_lease_duration is None:
        raise ValueError("holder_lapse_at: the holder's node lease must have been seen (holder_seen_at)")
    holder = replace(observation, observed_at=float("-inf"))
    return _holder_takeover(holder, observation.holder_lease_duration, float("-inf"), me, timing).not_before


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


def _wait_for_expiry(
    record: LeaseRecord, observation: Observation, now: float, me: Me, timing: Timing, *, holder_desc: str
) -> Decision:
    takeover = holder_lapsed(record, observation, now, me, timing)
    if not takeover:
        recheck = takeover.not_before - now if takeover.not_before != float("inf") else None
        return Decision(
            Action.STANDBY,
            "held-by-other" if takeover.reason == "holder-alive" else takeover.reason,
            recheck=recheck,
            detail=f"held by {holder_desc}" + (f": {observation.holder_unknown}" if observation.holder_unknown else ""),
        )
    lapsed_at = _lapsed_at(record, observation, me, timing)
    holder = (record.holder,) if record.holder and record.holder != me.identity else ()
    decision = _by_preference(now - lapsed_at, me, timing, exclude=holder, reason="expired")
    if takeover.reason == "holder-lapsed-by-heartbeat" and observation.holder_seen_at is not None:
        # the heartbeat bound shortened the wait: say by how much, for the logs
        early = observation.holder_seen_at - (observation.holder_stamped_by or observation.holder_seen_at)
        why = (
            f"{holder_desc}'s node lease version was stamped before a datagram of its process "
            f"we took {early:.3f}s before we saw that version (holder-lapsed-by-heartbeat)"
        )
        decision = replace(decision, detail=f"{decision.detail}; {why}" if decision.detail else why)
    return decision


def _lapsed_at(record: LeaseRecord, observation: Observation, me: Me, timing: Timing) -> float:
    """When the holder lapsed by our observation (the wait for the preferred
    candidate starts then); the caller checked that it has."""
    takeover = holder_lapsed(record, observation, float("-inf"), me, timing)
    return takeover.not_before


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
