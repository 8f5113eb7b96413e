"""The election decision of one egress IP, on a fake clock.

``decide`` is pure: time is the ``now`` argument (our monotonic clock) and the
moment we first saw the current version of the lease (``Observation``). The
tests move a :class:`FakeClock` by hand; nothing sleeps.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import random
from collections import Counter
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from egressd.core import rights
from egressd.core.election import (
    HOLD_OFF_GROWTH_CAP,
    WAITS_ON_HOLDER,
    Action,
    Decision,
    Me,
    Observation,
    api_right,
    decide,
    hold_off,
    holder_lapse_at,
    next_look,
    rendezvous_rank,
    retire,
)
from egressd.core.lease import LeaseRecord, held_by, released
from egressd.core.model import Timing
from egressd.core.rights import Source

TIMING = Timing()
IP = "172.18.0.42"
NAME = "egressd-172-18-0-42"
PAIR = ("kind-worker3", "kind-worker4")
PREFERRED, SECOND = rendezvous_rank(IP, PAIR)
WALL = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


@dataclass
class FakeClock:
    """A monotonic clock that moves only when told to."""

    now: float = 1000.0

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


def lease(
    holder: str | None,
    *,
    incarnation: str | None = "inc-holder",
    rv: str = "7",
    duration: float = TIMING.lease_duration,
    preferred: str | None = None,
    renew_time: datetime | None = WALL,
) -> LeaseRecord:
    return LeaseRecord(
        name=NAME,
        egress_ip=IP,
        holder=holder,
        lease_duration=duration,
        transitions=3,
        resource_version=rv,
        acquire_time=WALL if holder else None,
        renew_time=renew_time,
        preferred_holder=preferred,
        holder_address="172.18.0.9" if holder else None,
        incarnation=incarnation if holder else None,
    )


def member(
    identity: str,
    *,
    candidates: tuple[str, ...] = PAIR,
    incarnation: str = "inc-me",
    last_renew: float | None = None,
    node_renew: float | None = math.inf,
    serving_locally: bool = False,
    ip: str = IP,
    started_at: float = 0.0,
) -> Me:
    """``node_renew``: our node lease's last renew; by default it holds the
    API right forever (the tests of that right pass a time), and while we
    hold the IP it is ``last_renew``."""
    return Me(
        identity=identity,
        incarnation=incarnation,
        egress_ip=ip,
        candidates=candidates,
        last_renew=last_renew,
        node_renew=last_renew if last_renew is not None else node_renew,
        serving_locally=serving_locally,
        started_at=started_at,
    )


def seen(record: LeaseRecord | None, at: float) -> Observation:
    return Observation(resource_version=record.resource_version if record else None, observed_at=at)


def assert_decision(d: Decision, action: Action, reason: str) -> None:
    assert (d.action, d.reason) == (action, reason), d


def ranking_of_three() -> tuple[str, str, str]:
    first, second, third = rendezvous_rank(IP, ("kind-worker3", "kind-worker4", "kind-worker5"))
    return first, second, third


# --- free lease ------------------------------------------------------------------


def test_absent_lease_is_acquired_at_once_by_the_preferred_candidate() -> None:
    clock = FakeClock()
    d = decide(None, seen(None, clock.now), clock.now, member(PREFERRED), TIMING)
    assert_decision(d, Action.ACQUIRE, "free")


@pytest.mark.parametrize("holder", [None, ""])
def test_lease_without_holder_is_free_and_acquired_by_the_preferred_candidate(holder: str | None) -> None:
    record = replace(lease(None), holder=holder)
    assert record.free
    d = decide(record, seen(record, 1000.0), 1000.0, member(PREFERRED), TIMING)
    assert_decision(d, Action.ACQUIRE, "free")


@pytest.mark.parametrize("record", [None, lease(None)], ids=["absent", "free"])
def test_non_preferred_candidate_waits_the_extra_delay_then_acquires(record: LeaseRecord | None) -> None:
    clock = FakeClock()
    observed = seen(record, clock.now)
    me = member(SECOND)

    d = decide(record, observed, clock.now, me, TIMING)
    assert_decision(d, Action.STANDBY, "not-preferred")
    assert d.recheck == pytest.approx(TIMING.non_preferred_delay)
    assert PREFERRED in d.detail

    clock.advance(0.3)
    d = decide(record, observed, clock.now, me, TIMING)
    assert_decision(d, Action.STANDBY, "not-preferred")
    assert d.recheck == pytest.approx(TIMING.non_preferred_delay - 0.3)

    clock.advance(0.2)  # exactly non_preferred_delay after the observation
    assert_decision(decide(record, observed, clock.now, me, TIMING), Action.ACQUIRE, "free-after-delay")


# --- holding -----------------------------------------------------------------------


def test_holder_holds_without_writing() -> None:
    clock = FakeClock()
    me = member(PREFERRED, last_renew=clock.now)
    record = lease(PREFERRED, incarnation=me.incarnation)
    observed = seen(record, clock.now)
    clock.advance(TIMING.retry_period)
    d = decide(record, observed, clock.now, me, TIMING)
    assert_decision(d, Action.HOLD, "holding")
    assert d.recheck is None  # nothing to write: the daemon fence ends the tenure, news wakes the loop


def test_holder_renews_long_after_it_first_observed_its_own_lease() -> None:
    """Our own lease does not expire for us: only the renew deadline ends a tenure."""
    clock = FakeClock()
    record = lease(PREFERRED, incarnation="inc-me")
    observed = seen(record, clock.now)
    clock.advance(10 * TIMING.lease_duration)
    me = member(PREFERRED, last_renew=clock.now - 0.5)
    assert_decision(decide(record, observed, clock.now, me, TIMING), Action.HOLD, "holding")


def test_holder_steps_down_after_someone_else_wrote_the_lease() -> None:
    """A lost race itself is the store's business (409); what decide sees
    afterwards is a record naming someone else, and we must let go at once."""
    clock = FakeClock()
    me = member(PREFERRED, last_renew=clock.now)
    theirs = lease(SECOND, rv="8")
    d = decide(theirs, seen(theirs, clock.now), clock.now, me, TIMING)
    assert_decision(d, Action.STEP_DOWN, "lost-lease")
    assert SECOND in d.detail


@pytest.mark.parametrize("record", [None, lease(None)], ids=["deleted", "released"])
def test_holder_steps_down_when_the_lease_shows_no_holder(record: LeaseRecord | None) -> None:
    clock = FakeClock()
    me = member(PREFERRED, last_renew=clock.now)
    assert_decision(
        decide(record, seen(record, clock.now), clock.now, me, TIMING), Action.STEP_DOWN, "lease-released-by-other"
    )


def test_holder_that_stepped_down_takes_its_untouched_lease_back() -> None:
    me = member(SECOND)
    record = lease(SECOND, incarnation=me.incarnation)
    assert_decision(decide(record, seen(record, 1000.0), 1000.0, me, TIMING), Action.ACQUIRE, "reacquire-own-lease")


# --- the daemon fence ------------------------------------------------------------


def test_renew_deadline_boundary_steps_down_at_the_deadline() -> None:
    """The serving right (rights.serving_right) lasts while the last node-lease
    renew was sent *less* than renewDeadline ago."""
    last = 100.0 - TIMING.renew_deadline
    clock = FakeClock(now=99.999)
    me = member(PREFERRED, last_renew=last)
    record = lease(PREFERRED, incarnation=me.incarnation)
    observed = seen(record, last)

    # just under renew_deadline since the last successful renew: still ours
    assert_decision(decide(record, observed, clock.now, me, TIMING), Action.HOLD, "holding")

    clock.now = 100.0
    d = decide(record, observed, clock.now, me, TIMING)
    assert_decision(d, Action.STEP_DOWN, "renew-deadline")
    assert "renewDeadline" in d.detail


@pytest.mark.parametrize(
    "record",
    [None, lease(None), lease("kind-worker3", incarnation="inc-me"), lease("someone-else")],
    ids=["absent", "free", "ours", "theirs"],
)
def test_renew_deadline_comes_first_whatever_the_record_says(record: LeaseRecord | None) -> None:
    me = member("kind-worker3", last_renew=0.0)
    d = decide(record, seen(record, 5.0), 5.0, me, TIMING)
    assert_decision(d, Action.STEP_DOWN, "renew-deadline")


# --- expiry is measured on our own clock -------------------------------------------


@pytest.mark.parametrize(
    "renew_time",
    [None, datetime(1970, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC)],
    ids=["none", "1970", "2100"],
)
def test_expiry_is_timed_from_our_observation_never_from_renew_time(renew_time: datetime | None) -> None:
    clock = FakeClock()
    record = lease(PREFERRED, renew_time=renew_time)
    observed = seen(record, clock.now)
    me = member(SECOND)

    clock.advance(1.0)
    d = decide(record, observed, clock.now, me, TIMING)
    assert_decision(d, Action.STANDBY, "held-by-other")
    assert d.recheck == pytest.approx(TIMING.lease_duration - 1.0)

    clock.advance(TIMING.lease_duration - 1.0)
    assert_decision(decide(record, observed, clock.now, me, TIMING), Action.ACQUIRE, "expired")


def test_renew_time_does_not_change_any_decision() -> None:
    rng = random.Random(11)
    times = (None, datetime(1970, 1, 1, tzinfo=UTC), WALL, datetime(2100, 1, 1, tzinfo=UTC))
    for _ in range(200):
        holder = rng.choice((None, PREFERRED, SECOND, "kind-worker9"))
        base = lease(holder, incarnation=rng.choice(("inc-me", "inc-other")))
        me = member(rng.choice(PAIR), last_renew=rng.choice((None, 1000.0)), serving_locally=rng.random() < 0.5)
        now = 1000.0 + rng.uniform(0, 3 * TIMING.lease_duration)
        decisions = {decide(replace(base, renew_time=t), seen(base, 1000.0), now, me, TIMING) for t in times}
        assert len(decisions) == 1, decisions


def test_standby_rechecks_when_the_lease_would_expire_and_acquires_after() -> None:
    clock = FakeClock()
    record = lease(SECOND)  # held by the other node; we are its rendezvous-preferred successor anyway
    observed = seen(record, clock.now)
    me = member(PREFERRED)

    d = decide(record, observed, clock.now, me, TIMING)
    assert_decision(d, Action.STANDBY, "held-by-other")
    assert d.recheck == pytest.approx(TIMING.lease_duration)
    assert SECOND in d.detail

    clock.advance(d.recheck or 0.0)
    assert_decision(decide(record, observed, clock.now, me, TIMING), Action.ACQUIRE, "expired")


def test_expiry_uses_the_duration_written_in_the_record() -> None:
    """As in client-go, the holder's own lease duration counts, not ours."""
    record = lease(PREFERRED, duration=5.0)
    me = member(SECOND)
    d = decide(record, seen(record, 0.0), 3.0, me, TIMING)
    assert_decision(d, Action.STANDBY, "held-by-other")
    assert d.recheck == pytest.approx(2.0)


def test_a_new_version_of_the_lease_restarts_the_expiry_wait() -> None:
    clock = FakeClock()
    me = member(SECOND)
    first = lease(PREFERRED, rv="7")
    clock.advance(2.0)
    renewed = lease(PREFERRED, rv="8")
    observed = seen(renewed, clock.now)  # the watch told us of rv 8 now
    clock.advance(2.0)
    assert first.resource_version != renewed.resource_version
    d = decide(renewed, observed, clock.now, me, TIMING)
    assert_decision(d, Action.STANDBY, "held-by-other")
    assert d.recheck == pytest.approx(TIMING.lease_duration - 2.0)


def test_expired_holder_is_left_out_of_the_ranking_so_its_successor_does_not_wait() -> None:
    clock = FakeClock()
    record = lease(PREFERRED)  # the preferred node held it and went silent
    observed = seen(record, clock.now)
    clock.advance(TIMING.lease_duration)
    # Among the two candidates the successor is not preferred, but the holder is presumed dead.
    d = decide(record, observed, clock.now, member(SECOND), TIMING)
    assert_decision(d, Action.ACQUIRE, "expired")


def test_with_three_candidates_the_second_choice_after_the_dead_holder_waits_the_delay() -> None:
    first, second, third = ranking_of_three()
    three = (first, second, third)
    clock = FakeClock()
    record = lease(first)
    observed = seen(record, clock.now)
    clock.advance(TIMING.lease_duration)

    assert_decision(
        decide(record, observed, clock.now, member(second, candidates=three), TIMING), Action.ACQUIRE, "expired"
    )
    d = decide(record, observed, clock.now, member(third, candidates=three), TIMING)
    assert_decision(d, Action.STANDBY, "not-preferred")
    assert d.recheck == pytest.approx(TIMING.non_preferred_delay)

    clock.advance(TIMING.non_preferred_delay)
    assert_decision(
        decide(record, observed, clock.now, member(third, candidates=three), TIMING),
        Action.ACQUIRE,
        "expired-after-delay",
    )


# --- release and handoff -----------------------------------------------------------


def test_release_lets_the_preferred_candidate_take_over_at_once() -> None:
    clock = FakeClock()
    held = lease(SECOND)
    free = released(held, successor=None, now=WALL)
    free = replace(free, resource_version="8")
    assert free.free
    d = decide(free, seen(free, clock.now), clock.now, member(PREFERRED), TIMING)
    assert_decision(d, Action.ACQUIRE, "free")


def test_holder_hands_off_when_another_node_is_requested() -> None:
    me = member(PREFERRED, last_renew=1000.0)
    record = lease(PREFERRED, incarnation=me.incarnation, preferred=SECOND)
    d = decide(record, seen(record, 1000.0), 1000.1, me, TIMING)
    assert_decision(d, Action.HANDOFF, "handoff-requested")
    assert SECOND in d.detail


def test_a_handoff_release_that_did_not_land_is_retried_not_reacquired() -> None:
    """We withdrew for a handoff (no tenure any more) but the write that frees
    the lease failed: the lease still names us and the successor."""
    me = member(PREFERRED)
    record = lease(PREFERRED, incarnation=me.incarnation, preferred=SECOND)
    d = decide(record, seen(record, 1000.0), 1000.1, me, TIMING)
    assert_decision(d, Action.HANDOFF, "handoff-release-retry")
    assert SECOND in d.detail


def test_a_handoff_to_a_node_that_is_not_a_candidate_is_ignored() -> None:
    """Handing off to a node that can never take the IP would leave it unowned."""
    me = member(PREFERRED, last_renew=1000.0)
    record = lease(PREFERRED, incarnation=me.incarnation, preferred="kind-worker9")
    d = decide(record, seen(record, 1000.0), 1000.1, me, TIMING)
    assert_decision(d, Action.HOLD, "handoff-target-not-candidate")
    assert "kind-worker9 is not a candidate" in d.detail
    # after a step-down, our own lease with that request is simply taken back
    d = decide(record, seen(record, 1000.0), 1000.1, replace(me, last_renew=None), TIMING)
    assert_decision(d, Action.ACQUIRE, "reacquire-own-lease")


def test_holder_named_as_preferred_holder_just_renews() -> None:
    me = member(PREFERRED, last_renew=1000.0)
    record = lease(PREFERRED, incarnation=me.incarnation, preferred=PREFERRED)
    assert_decision(decide(record, seen(record, 1000.0), 1000.1, me, TIMING), Action.HOLD, "holding")


def test_named_successor_acquires_a_released_lease_at_once() -> None:
    record = lease(None, preferred=SECOND)  # SECOND is not rendezvous-preferred, it is named
    d = decide(record, seen(record, 1000.0), 1000.0, member(SECOND), TIMING)
    assert_decision(d, Action.ACQUIRE, "handoff-target")


def test_others_leave_a_released_lease_to_the_named_successor_for_the_grace() -> None:
    clock = FakeClock()
    record = lease(None, preferred=SECOND)
    observed = seen(record, clock.now)
    me = member(PREFERRED)  # rendezvous-preferred, but the operator named SECOND

    d = decide(record, observed, clock.now, me, TIMING)
    assert_decision(d, Action.STANDBY, "handoff-pending")
    assert d.recheck == pytest.approx(TIMING.handoff_grace)

    clock.advance(TIMING.handoff_grace - 0.01)
    d = decide(record, observed, clock.now, me, TIMING)
    assert_decision(d, Action.STANDBY, "handoff-pending")
    assert d.recheck == pytest.approx(0.01)

    clock.advance(0.01)
    assert_decision(decide(record, observed, clock.now, me, TIMING), Action.ACQUIRE, "free")


def test_after_the_grace_the_remaining_candidates_still_go_by_preference() -> None:
    """The named successor did not come: it is presumed dead, and of the others
    the rendezvous-preferred one takes the IP while the rest wait the extra
    delay, as for any free lease."""
    first, second, third = ranking_of_three()
    three = (first, second, third)
    clock = FakeClock()
    record = lease(None, preferred=first)
    observed = seen(record, clock.now)
    clock.advance(TIMING.handoff_grace)

    assert_decision(
        decide(record, observed, clock.now, member(second, candidates=three), TIMING), Action.ACQUIRE, "free"
    )
    d = decide(record, observed, clock.now, member(third, candidates=three), TIMING)
    assert_decision(d, Action.STANDBY, "not-preferred")
    assert d.recheck == pytest.approx(TIMING.non_preferred_delay)

    clock.advance(TIMING.non_preferred_delay)
    assert_decision(
        decide(record, observed, clock.now, member(third, candidates=three), TIMING), Action.ACQUIRE, "free-after-delay"
    )


def test_successor_named_outside_the_candidates_does_not_hold_the_lease_back() -> None:
    record = lease(None, preferred="kind-worker9")
    assert_decision(decide(record, seen(record, 1000.0), 1000.0, member(PREFERRED), TIMING), Action.ACQUIRE, "free")


def test_taking_a_lease_after_the_handoff_grace_does_not_hand_it_off_again() -> None:
    """The request for a successor that never came must not survive the next
    holder's acquisition, or that holder would hand the IP off at once and the
    IP would go round the release/grace cycle forever."""
    clock = FakeClock()
    free = lease(None, preferred="kind-worker5")
    three = (*PAIR, "kind-worker5")
    me = member(PREFERRED, candidates=three)
    clock.advance(TIMING.handoff_grace + TIMING.non_preferred_delay)
    assert decide(free, seen(free, 1000.0), clock.now, me, TIMING).action is Action.ACQUIRE

    mine = held_by(
        free,
        name=NAME,
        egress_ip=IP,
        holder=me.identity,
        holder_address="172.18.0.5",
        incarnation=me.incarnation,
        lease_duration=TIMING.lease_duration,
        now=WALL,
    )
    mine = replace(mine, resource_version="9")
    me = replace(me, last_renew=clock.now)
    clock.advance(TIMING.retry_period)
    assert_decision(decide(mine, seen(mine, clock.now), clock.now, me, TIMING), Action.HOLD, "holding")


# --- identity clash and adoption -------------------------------------------------


def test_lease_with_our_name_and_another_incarnation_while_we_hold_fences_us() -> None:
    me = member(PREFERRED, last_renew=1000.0)
    record = lease(PREFERRED, incarnation="inc-impostor")
    d = decide(record, seen(record, 1000.0), 1000.1, me, TIMING)
    assert_decision(d, Action.FENCE, "identity-clash")
    assert "inc-impostor" in d.detail


def test_restarted_daemon_still_serving_adopts_its_previous_tenure_at_once() -> None:
    me = member(PREFERRED, serving_locally=True)
    record = lease(PREFERRED, incarnation="inc-before-restart")
    d = decide(record, seen(record, 1000.0), 1000.0, me, TIMING)
    assert_decision(d, Action.ACQUIRE, "adopt-previous-incarnation")


def test_lease_with_our_name_from_another_process_is_waited_out_when_not_serving() -> None:
    clock = FakeClock()
    me = member(PREFERRED)
    record = lease(PREFERRED, incarnation="inc-unknown")
    observed = seen(record, clock.now)
    d = decide(record, observed, clock.now, me, TIMING)
    assert_decision(d, Action.STANDBY, "previous-incarnation")
    assert "'inc-unknown'" in d.detail
    assert d.recheck == pytest.approx(TIMING.lease_duration)

    # standbys cannot time it out (our node lease keeps changing): we settle it
    clock.advance(TIMING.lease_duration)
    assert_decision(decide(record, observed, clock.now, me, TIMING), Action.ACQUIRE, "reacquire-after-restart")


def test_a_restarted_process_waits_a_lease_duration_from_its_start() -> None:
    record = lease(PREFERRED, incarnation="inc-unknown")
    me = member(PREFERRED, started_at=1000.0)
    d = decide(record, seen(record, 0.0), 1002.0, me, TIMING)
    assert_decision(d, Action.STANDBY, "previous-incarnation")
    assert d.recheck == pytest.approx(1000.0 + TIMING.lease_duration - 1002.0)
    d = decide(record, seen(record, 0.0), 1000.0 + TIMING.lease_duration, me, TIMING)
    assert_decision(d, Action.ACQUIRE, "reacquire-after-restart")


# --- not a candidate ---------------------------------------------------------------


NON_CANDIDATE_CASES: dict[str, tuple[LeaseRecord | None, bool]] = {
    "absent": (None, False),
    "free": (lease(None), False),
    "expired": (lease(PREFERRED), False),
    "named-successor": (lease(None, preferred="kind-worker1"), False),
    "previous-incarnation-serving": (lease("kind-worker1", incarnation="inc-old"), True),
    "own-untouched-lease": (lease("kind-worker1", incarnation="inc-me"), False),
}


@pytest.mark.parametrize("case", list(NON_CANDIDATE_CASES))
def test_a_node_that_is_not_a_candidate_never_acquires(case: str) -> None:
    record, serving_locally = NON_CANDIDATE_CASES[case]
    me = member("kind-worker1", serving_locally=serving_locally)
    assert "kind-worker1" not in me.candidates
    for age in (0.0, TIMING.lease_duration, 10 * TIMING.lease_duration):
        d = decide(record, seen(record, 1000.0), 1000.0 + age, me, TIMING)
        assert d.action is not Action.ACQUIRE, (age, d)


# --- rendezvous ranking ------------------------------------------------------------


def ips(count: int) -> list[str]:
    base = ipaddress.ip_address("10.20.0.0")
    return [str(base + i) for i in range(count)]


def test_rendezvous_rank_is_deterministic_and_independent_of_input_order() -> None:
    nodes = ["kind-worker3", "kind-worker4", "kind-worker5"]
    for ip in ips(50):
        ranking = rendezvous_rank(ip, nodes)
        assert sorted(ranking) == sorted(nodes)
        assert rendezvous_rank(ip, reversed(nodes)) == ranking
        assert rendezvous_rank(ip, [*nodes, nodes[0]]) == ranking  # duplicates collapse


def test_rendezvous_rank_has_pinned_values() -> None:
    """Nodes compute the ranking independently, so it must not depend on the
    process (hash randomisation) or platform: SHA-256 of ``"<ip>|<node>"``,
    highest first. The reference scenario spreads its two IPs over both gateways."""
    assert rendezvous_rank("172.18.0.42", PAIR) == ["kind-worker3", "kind-worker4"]
    assert rendezvous_rank("172.18.0.43", PAIR) == ["kind-worker4", "kind-worker3"]
    for ip in ips(20):
        expected = sorted(PAIR, key=lambda n: hashlib.sha256(f"{ip}|{n}".encode()).digest(), reverse=True)
        assert rendezvous_rank(ip, PAIR) == expected


@pytest.mark.parametrize(
    ("nodes", "low", "high"),
    [(("kind-worker3", "kind-worker4"), 430, 570), (("kind-worker3", "kind-worker4", "kind-worker5"), 270, 400)],
    ids=["2-nodes", "3-nodes"],
)
def test_rendezvous_rank_spreads_ips_over_the_candidates(nodes: tuple[str, ...], low: int, high: int) -> None:
    firsts = Counter(rendezvous_rank(ip, nodes)[0] for ip in ips(1000))
    assert set(firsts) == set(nodes)
    for node in nodes:
        assert low <= firsts[node] <= high, firsts


def test_removing_a_candidate_moves_only_the_ips_it_was_preferred_for() -> None:
    nodes = ("kind-worker3", "kind-worker4", "kind-worker5")
    gone = "kind-worker4"
    rest = tuple(n for n in nodes if n != gone)
    moved = 0
    for ip in ips(1000):
        before = rendezvous_rank(ip, nodes)
        after = rendezvous_rank(ip, rest)
        assert after == [n for n in before if n != gone]
        if before[0] == gone:
            moved += 1
        else:
            assert after[0] == before[0]
    assert moved > 0


# --- the safety property -----------------------------------------------------------


class Simulation:
    """One member's view of one lease, driven by random events on a fake clock.

    Other writers replace the lease at random; our own decisions are carried
    out as the member loop would, with writes that succeed."""

    def __init__(self, rng: random.Random, me: Me, timing: Timing) -> None:
        self.rng = rng
        self.me = me
        self.timing = timing
        self.clock = FakeClock()
        self.record: LeaseRecord | None = None
        self.observed = seen(None, self.clock.now)
        self.version = 0

    def write(self, new: LeaseRecord | None) -> None:
        self.version += 1
        self.record = None if new is None else replace(new, resource_version=str(self.version))
        self.observed = seen(self.record, self.clock.now)

    def random_event(self) -> None:
        rng, timing = self.rng, self.timing
        step = rng.random()
        if step < 0.35:
            self.clock.advance(rng.choice((0.0, rng.uniform(0, 0.5), rng.uniform(0, 3 * timing.lease_duration))))
        elif step < 0.55:
            self.write(
                lease(
                    rng.choice((*self.me.candidates, "kind-worker9", None, self.me.identity)),
                    incarnation=rng.choice(("inc-a", "inc-b", self.me.incarnation)),
                    duration=rng.choice((timing.lease_duration, 1.0, 5.0)),
                    preferred=rng.choice((None, None, *self.me.candidates)),
                    renew_time=rng.choice((None, WALL, datetime(1970, 1, 1, tzinfo=UTC))),
                )
            )
        elif step < 0.6:
            self.write(None)

    def carry_out(self, d: Decision) -> None:
        if d.action is Action.HOLD:
            # the node lease is renewed meanwhile (unless the clock jumped past it)
            self.me = replace(self.me, last_renew=self.clock.now, node_renew=self.clock.now)
        elif d.action is Action.ACQUIRE:
            self.write(
                held_by(
                    self.record,
                    name=NAME,
                    egress_ip=IP,
                    holder=self.me.identity,
                    holder_address="172.18.0.5",
                    incarnation=self.me.incarnation,
                    lease_duration=self.timing.lease_duration,
                    now=WALL,
                )
            )
            self.me = replace(self.me, last_renew=self.clock.now, node_renew=self.clock.now, serving_locally=False)
        elif d.action in (Action.STEP_DOWN, Action.FENCE):
            self.me = replace(self.me, last_renew=None, serving_locally=False)
        elif d.action is Action.HANDOFF:
            assert self.record is not None
            self.me = replace(self.me, last_renew=None, serving_locally=False)
            self.write(released(self.record, successor=self.record.preferred_holder, now=WALL))


def _unexpired_foreign_hold(record: LeaseRecord | None, observed: Observation, now: float, me: Me) -> bool:
    """The lease is held by someone other than this process and, by our own
    observation, has not expired. (A lease with our node name but another
    incarnation counts as foreign unless the kernel shows we still serve it.)"""
    if record is None or record.free:
        return False
    ours = record.holder == me.identity and (record.incarnation == me.incarnation or me.serving_locally)
    return not ours and now - observed.observed_at < record.lease_duration


def test_decide_never_acquires_a_lease_another_holder_has_not_let_expire() -> None:
    """The safety property of the election, over random event sequences."""
    rng = random.Random(20250101)
    nodes = ("kind-worker3", "kind-worker4", "kind-worker5")
    timings = (TIMING, replace(TIMING, non_preferred_delay=0.0), replace(TIMING, handoff_grace=0.0))
    acquisitions = 0
    for _ in range(300):
        me = member(rng.choice((*nodes, "kind-worker1")), candidates=nodes, serving_locally=rng.random() < 0.2)
        sim = Simulation(rng, me, rng.choice(timings))
        for _ in range(60):
            sim.random_event()
            now, record, observed, me = sim.clock.now, sim.record, sim.observed, sim.me
            d = decide(record, observed, now, me, sim.timing)
            assert d == decide(record, observed, now, me, sim.timing)  # pure
            if _unexpired_foreign_hold(record, observed, now, me):
                assert d.action is not Action.ACQUIRE, (record, observed, now, me, d)
            if me.identity not in me.candidates:
                assert d.action is not Action.ACQUIRE, (record, me, d)
            if me.last_renew is not None and now - me.last_renew > sim.timing.renew_deadline:
                assert d.action is Action.STEP_DOWN, d
            if d.recheck is not None:
                assert d.recheck > 0, d
            acquisitions += d.action is Action.ACQUIRE
            sim.carry_out(d)
    assert acquisitions > 250  # the random walk really exercises the acquiring paths


# --- hold-off ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        (None, "free"),
        (lease(None), "free"),
        (lease(PREFERRED, incarnation="inc-me"), "reacquire-own-lease"),
        (lease(SECOND, preferred=PREFERRED), "expired"),
    ],
)
def test_a_hold_off_stops_every_acquire_until_it_ends(record: LeaseRecord | None, reason: str) -> None:
    clock = FakeClock()
    observed = seen(record, clock.now)
    clock.advance(TIMING.lease_duration + 0.1)  # past any expiry
    me = replace(member(PREFERRED), hold_off_until=clock.now + 2.0, hold_off_reason="dataplane-failed")
    d = decide(record, observed, clock.now, me, TIMING)
    assert_decision(d, Action.STANDBY, "hold-off")
    assert d.recheck == pytest.approx(2.0)
    assert "dataplane-failed" in d.detail and reason in d.detail
    clock.advance(2.0)
    assert_decision(decide(record, observed, clock.now, me, TIMING), Action.ACQUIRE, reason)


def test_a_hold_off_does_not_stop_a_holder_renewing() -> None:
    me = replace(member(PREFERRED, last_renew=1000.0), hold_off_until=1010.0)
    record = lease(PREFERRED, incarnation=me.incarnation)
    assert_decision(decide(record, seen(record, 1000.0), 1000.1, me, TIMING), Action.HOLD, "holding")


def test_the_hold_off_after_failed_takeovers_grows_and_is_capped() -> None:
    ld = TIMING.lease_duration
    got = [hold_off("dataplane-failed", n, TIMING) for n in range(1, 9)]
    assert got == [ld, 2 * ld, 4 * ld, 8 * ld, 16 * ld, 16 * ld, 16 * ld, 16 * ld]
    assert HOLD_OFF_GROWTH_CAP == 16
    assert hold_off("identity-clash", 1, TIMING) == 4 * ld


# --- claims of IPs no longer configured ---------------------------------------------------


def test_retire_deletes_a_free_claim_but_not_one_handed_to_a_node_still_within_the_grace() -> None:
    me = member(PREFERRED, candidates=())
    assert_decision(retire(lease(None), seen(lease(None), 1000.0), 1000.0, me, TIMING), Action.DELETE, "free")
    handed = lease(None, preferred=SECOND)
    d = retire(handed, seen(handed, 1000.0), 1000.1, me, TIMING)
    assert_decision(d, Action.STANDBY, "handoff-pending")
    later = 1000.0 + TIMING.handoff_grace
    assert_decision(retire(handed, seen(handed, 1000.0), later, me, TIMING), Action.DELETE, "free")


def test_retire_leaves_a_live_holders_claim_to_it_until_it_expires() -> None:
    me = member(PREFERRED, candidates=())
    held = lease(SECOND)
    d = retire(held, seen(held, 1000.0), 1000.1, me, TIMING)
    assert_decision(d, Action.STANDBY, "held-by-other")
    assert d.recheck == pytest.approx(TIMING.lease_duration - 0.1)
    expired = 1000.0 + TIMING.lease_duration
    assert_decision(retire(held, seen(held, 1000.0), expired, me, TIMING), Action.DELETE, "expired")


def test_retire_deletes_our_own_unreleased_claim_but_not_another_process_of_our_name() -> None:
    me = member(PREFERRED, candidates=())
    ours = lease(PREFERRED, incarnation=me.incarnation)
    assert_decision(retire(ours, seen(ours, 1000.0), 1000.0, me, TIMING), Action.DELETE, "last-held-by-us")
    twin = lease(PREFERRED, incarnation="inc-other")
    assert_decision(retire(twin, seen(twin, 1000.0), 1000.0, me, TIMING), Action.STANDBY, "previous-incarnation")
    assert_decision(retire(None, seen(None, 1000.0), 1000.0, me, TIMING), Action.STANDBY, "already-gone")


# --- when to look again -----------------------------------------------------------------


def test_next_look_after_a_write_or_while_owner_is_the_retry_period() -> None:
    assert next_look(Decision(Action.HOLD, "holding"), owner=True, timing=TIMING) == 4 * TIMING.lease_duration
    for action in (Action.ACQUIRE, Action.HANDOFF):
        assert next_look(Decision(action, "x", recheck=9.0), owner=False, timing=TIMING) == TIMING.retry_period
    assert next_look(Decision(Action.STANDBY, "x", recheck=9.0), owner=True, timing=TIMING) == TIMING.retry_period


def test_next_look_otherwise_follows_the_decision_or_a_lease_duration_or_waits_out_an_unreadable_lease() -> None:
    assert next_look(Decision(Action.STANDBY, "held-by-other", recheck=0.7), owner=False, timing=TIMING) == 0.7
    assert next_look(Decision(Action.STEP_DOWN, "lost-lease"), owner=False, timing=TIMING) == TIMING.lease_duration
    assert next_look(None, owner=False, timing=TIMING) == pytest.approx(4 * TIMING.retry_period)


# --- node leases: the holder's liveness ----------------------------------------------------


def with_node_lease(
    record: LeaseRecord, claim_seen: float, node_seen: float, duration: float | None = None
) -> Observation:
    return Observation(
        resource_version=record.resource_version,
        observed_at=claim_seen,
        holder_seen_at=node_seen,
        holder_lease_duration=duration if duration is not None else TIMING.lease_duration,
    )


def test_a_holder_whose_node_lease_renews_is_not_taken_over_however_old_its_claim() -> None:
    me = member(PREFERRED)
    record = lease(SECOND)
    observed = with_node_lease(record, claim_seen=0.0, node_seen=1000.0)
    d = decide(record, observed, 1000.0 + TIMING.lease_duration - 0.001, me, TIMING)
    assert_decision(d, Action.STANDBY, "held-by-other")
    assert d.recheck == pytest.approx(0.001)
    d = decide(record, observed, 1000.0 + TIMING.lease_duration, me, TIMING)
    assert_decision(d, Action.ACQUIRE, "expired")


def test_a_holder_declaring_a_longer_lease_duration_is_waited_for_that_long() -> None:
    me = member(PREFERRED)
    record = lease(SECOND)
    observed = with_node_lease(record, claim_seen=0.0, node_seen=1000.0, duration=TIMING.lease_duration + 2)
    assert_decision(
        decide(record, observed, 1000.0 + TIMING.lease_duration + 1, me, TIMING), Action.STANDBY, "held-by-other"
    )
    assert_decision(decide(record, observed, 1000.0 + TIMING.lease_duration + 2, me, TIMING), Action.ACQUIRE, "expired")


def test_the_heartbeat_bound_times_the_holder_from_a_receipt_before_our_sight_of_its_renew() -> None:
    """A paused API server's late commit of a dead holder's renew: we took a
    datagram the holder sent after stamping it, at 970, before we saw it at 1000."""
    me = member(PREFERRED)
    record = lease(SECOND)
    observed = replace(with_node_lease(record, claim_seen=0.0, node_seen=1000.0), holder_stamped_by=970.0)
    assert_decision(
        decide(record, observed, 970.0 + TIMING.lease_duration - 0.1, me, TIMING), Action.STANDBY, "held-by-other"
    )
    d = decide(record, observed, 1000.0, me, TIMING)
    assert_decision(d, Action.ACQUIRE, "expired")
    assert "holder-lapsed-by-heartbeat" in d.detail and "30.000s before we saw" in d.detail
    # the claim's own later change still counts, and a longer declared lease duration too
    fresh_claim = replace(observed, observed_at=990.0)
    assert_decision(
        decide(record, fresh_claim, 990.0 + TIMING.lease_duration - 0.1, me, TIMING), Action.STANDBY, "held-by-other"
    )
    longer = replace(observed, holder_lease_duration=TIMING.lease_duration + 5)
    assert_decision(
        decide(record, longer, 970.0 + TIMING.lease_duration + 4.9, me, TIMING), Action.STANDBY, "held-by-other"
    )
    assert_decision(decide(record, longer, 970.0 + TIMING.lease_duration + 5, me, TIMING), Action.ACQUIRE, "expired")


def test_a_holder_without_a_node_lease_is_timed_by_its_claim_whatever_the_bound() -> None:
    me = member(PREFERRED)
    record = lease(SECOND)
    observed = replace(seen(record, 1000.0), holder_stamped_by=900.0)
    assert_decision(
        decide(record, observed, 1000.0 + TIMING.lease_duration - 0.1, me, TIMING), Action.STANDBY, "held-by-other"
    )


def test_a_fresh_claim_counts_even_when_the_node_lease_is_older() -> None:
    """The later of the two changes times the holder (never less safe)."""
    me = member(PREFERRED)
    record = lease(SECOND)
    observed = with_node_lease(record, claim_seen=1000.0, node_seen=900.0)
    assert_decision(
        decide(record, observed, 1000.0 + TIMING.lease_duration - 0.1, me, TIMING), Action.STANDBY, "held-by-other"
    )


def test_a_holder_whose_node_lease_is_unreadable_is_never_taken_over() -> None:
    me = member(PREFERRED)
    record = lease(SECOND)
    observed = Observation(record.resource_version, 0.0, holder_unknown="egressd-node-x: spec.holderIdentity: ...")
    d = decide(record, observed, 1e6, me, TIMING)
    assert_decision(d, Action.STANDBY, "holder-liveness-unknown")
    assert d.recheck is None
    assert_decision(retire(record, observed, 1e6, me, TIMING), Action.STANDBY, "held-by-other")


def test_nothing_is_acquired_without_a_node_lease_right() -> None:
    me = member(PREFERRED, node_renew=1000.0)
    assert_decision(
        decide(None, seen(None, 1000.0), 1000.0 + TIMING.renew_deadline - 0.01, me, TIMING), Action.ACQUIRE, "free"
    )
    d = decide(None, seen(None, 1000.0), 1000.0 + TIMING.renew_deadline, me, TIMING)
    assert_decision(d, Action.STANDBY, "no-node-lease-right")
    assert d.recheck == TIMING.retry_period
    assert_decision(
        decide(None, seen(None, 0.0), 0.0, member(PREFERRED, node_renew=None), TIMING),
        Action.STANDBY,
        "no-node-lease-right",
    )


@pytest.mark.parametrize("sent", [None, 0.0, 999.0, 999.5, 1000.0])
def test_without_the_mesh_the_serving_right_is_the_api_right_or_none(sent: float | None) -> None:
    right = api_right(sent, 1000.0, TIMING)
    expected = sent is not None and 1000.0 - sent < TIMING.renew_deadline
    assert right.source is (Source.API if expected else Source.NONE), right
    if expected:
        assert sent is not None and right.until == sent + TIMING.renew_deadline


# --- one timer per holder: the holder's lapse time ---------------------------------------


times = st.floats(min_value=0.0, max_value=100.0, allow_nan=False)


@given(
    claim_seen=times,
    node_seen=times,
    stamped=st.none() | times,
    duration=st.floats(min_value=0.5, max_value=20.0),
    promised=st.none() | times,
    in_peer_set=st.booleans(),
    started_at=times,
    mesh=st.sampled_from((rights.MeshTiming(promise_duration=0.0, max_hold=0.0), rights.MeshTiming())),
    now=st.floats(min_value=0.0, max_value=200.0),
)
def test_no_claim_of_a_holder_is_taken_over_before_the_holders_lapse_time(
    claim_seen: float,
    node_seen: float,
    stamped: float | None,
    duration: float,
    promised: float | None,
    in_peer_set: bool,
    started_at: float,
    mesh: rights.MeshTiming,
    now: float,
) -> None:
    """The holder's lapse time is a lower bound of every claim's own wait: a
    timer at that time never wakes a standby later than its own recheck would."""
    me = replace(
        member(PREFERRED, started_at=started_at),
        promised_until=promised,
        in_holder_peer_set=in_peer_set,
        mesh=mesh,
    )
    record = lease(SECOND)
    observed = replace(
        with_node_lease(record, claim_seen=claim_seen, node_seen=node_seen, duration=duration),
        holder_stamped_by=stamped,
    )
    lapse = holder_lapse_at(observed, me, TIMING)
    d = decide(record, observed, now, me, TIMING)
    if now < lapse:
        assert d.action is Action.STANDBY and d.reason in WAITS_ON_HOLDER, (lapse, d)
        assert d.recheck is not None and now + d.recheck >= lapse - 1e-9, (lapse, d)
    if claim_seen <= min(node_seen, stamped if stamped is not None else node_seen) and now >= lapse:
        # the claim older than the holder's liveness: its own wait is exactly the holder's
        assert d.action is Action.ACQUIRE, (lapse, d)


def test_the_holders_lapse_time_is_its_node_lease_plus_a_lease_duration_or_never_when_unreadable() -> None:
    record = lease(SECOND)
    observed = with_node_lease(record, claim_seen=1010.0, node_seen=1000.0)
    assert holder_lapse_at(observed, member(PREFERRED), TIMING) == 1000.0 + TIMING.lease_duration
    assert holder_lapse_at(replace(observed, holder_stamped_by=990.0), member(PREFERRED), TIMING) == pytest.approx(
        990.0 + TIMING.lease_duration
    )
    assert holder_lapse_at(replace(observed, holder_unknown="bad"), member(PREFERRED), TIMING) == math.inf
    with pytest.raises(ValueError, match="holder_seen_at"):
        holder_lapse_at(seen(record, 1000.0), member(PREFERRED), TIMING)


def test_a_parked_standby_waiting_for_its_holder_looks_again_rarely() -> None:
    waiting = Decision(Action.STANDBY, "held-by-other", recheck=0.7)
    assert next_look(waiting, owner=False, timing=TIMING, parked=True) == 4 * TIMING.lease_duration
    assert next_look(waiting, owner=False, timing=TIMING, parked=False) == 0.7
    # only a wait for the holder is parked: the others keep their recheck
    other = Decision(Action.STANDBY, "not-preferred", recheck=0.7)
    assert next_look(other, owner=False, timing=TIMING, parked=True) == 0.7
