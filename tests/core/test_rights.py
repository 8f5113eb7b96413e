"""Serving rights, promises and takeover (egressd/core/rights.py), rule by rule."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from egressd.core.model import Timing
from egressd.core.rights import (
    Holding,
    MeshTiming,
    Source,
    Standby,
    check,
    fence_ttl,
    may_take_over,
    peer_set,
    promise_end,
    promise_until,
    required_peers,
    serving_right,
    stamped_by,
)

T = Timing()
M = MeshTiming(promise_duration=2.0, drift=0.01, margin=0.05, max_hold=300.0, rtt_bound=0.1)
PEERS = frozenset({"b", "c"})


def holding(**kw: object) -> Holding:
    base: dict[str, object] = {"last_renew_sent": None, "last_api_write": 0.0, "required_peers": PEERS}
    base.update(kw)
    return Holding(**base)  # type: ignore[arg-type]


def test_the_api_right_lasts_the_renew_deadline_from_the_renews_send_time() -> None:
    h = holding(last_renew_sent=10.0)
    assert serving_right(h, 10.0 + T.renew_deadline - 0.001, T, M).source is Source.API
    gone = serving_right(h, 10.0 + T.renew_deadline, T, M)
    assert not gone
    assert gone.reason == "no-promise-from-b"


def test_the_peer_right_needs_every_required_peer_and_ends_with_the_first_promise() -> None:
    h = holding(promises={"b": 5.0, "c": 6.0})
    right = serving_right(h, 6.0, T, M)
    assert right.source is Source.PEER
    assert right.until == pytest.approx(promise_end(5.0, M)) == pytest.approx(5.0 + 2.0 * 0.99 - 0.05)
    assert serving_right(h, right.until, T, M).reason == "promise-expired-b"
    assert serving_right(holding(promises={"b": 5.0}), 6.0, T, M).reason == "no-promise-from-c"


def test_the_peer_right_ends_max_hold_after_the_last_api_write() -> None:
    h = holding(last_api_write=0.0, promises={"b": 299.5, "c": 299.5})
    assert serving_right(h, 299.9, T, M).until == pytest.approx(300.0)
    assert serving_right(h, 300.0, T, M).reason == "max-hold"


def test_a_lone_candidate_has_no_peer_right() -> None:
    h = holding(required_peers=frozenset(), last_renew_sent=0.0)
    assert serving_right(h, T.renew_deadline + 1, T, M).reason == "no-api-right-and-no-peers"


def test_the_api_right_is_named_when_both_hold_and_until_is_the_later_end() -> None:
    h = holding(last_renew_sent=10.0, promises={"b": 10.0, "c": 10.0})
    right = serving_right(h, 10.1, T, M)
    assert right.source is Source.API
    assert right.until == pytest.approx(max(10.0 + T.renew_deadline, promise_end(10.0, M)))


def test_the_fence_under_a_peer_right_ends_before_the_promise() -> None:
    h = holding(promises={"b": 10.0, "c": 10.0})
    right = serving_right(h, 11.5, T, M)
    ttl = fence_ttl(right, 11.5, T, M)
    assert 11.5 + ttl == pytest.approx(right.until - M.rtt_bound - T.fence_slack)
    assert fence_ttl(serving_right(holding(last_renew_sent=0.0), 0.1, T, M), 0.1, T, M) == T.fence_ttl
    assert fence_ttl(serving_right(holding(), 0.0, T, M), 0.0, T, M) == 0.0


@given(st.floats(0, 1000), st.floats(0, 10), st.floats(0, 10))
def test_a_peer_fence_never_outlasts_the_promise(sent: float, later: float, extra: float) -> None:
    h = holding(last_api_write=sent, promises={"b": sent, "c": sent + extra})
    now = sent + later
    right = serving_right(h, now, T, M)
    if right.source is Source.PEER:
        assert now + fence_ttl(right, now, T, M) <= promise_end(sent, M) + 1e-9


def standby(**kw: object) -> Standby:
    base: dict[str, object] = {
        "promised_until": None,
        "lease_changed_at": 0.0,
        "in_peer_set": True,
        "started_at": -100.0,
    }
    base.update(kw)
    return Standby(**base)  # type: ignore[arg-type]


def test_a_takeover_waits_for_the_holders_lease_to_stand_still() -> None:
    assert may_take_over(standby(), T.lease_duration - 0.01, T, M).reason == "holder-alive"
    assert may_take_over(standby(), T.lease_duration, T, M)


def test_a_takeover_waits_for_our_own_promise() -> None:
    late = T.lease_duration + 1
    verdict = may_take_over(standby(promised_until=late), T.lease_duration, T, M)
    assert (verdict.reason, verdict.not_before) == ("promised", late)


def test_outside_the_published_peer_set_a_takeover_waits_max_hold_more() -> None:
    verdict = may_take_over(standby(in_peer_set=False), T.lease_duration, T, M)
    assert verdict.reason == "outside-peer-set"
    assert verdict.not_before == T.lease_duration + M.max_hold


def test_a_restarted_process_waits_out_its_predecessors_promises_and_counts_silence_from_its_start() -> None:
    started = 50.0
    verdict = may_take_over(standby(started_at=started, lease_changed_at=None), started + 0.1, T, M)
    assert verdict.reason == "holder-alive"  # never seen: silence counts from our start
    assert verdict.not_before == started + T.lease_duration
    short = Timing(lease_duration=1.5, renew_deadline=0.4, fence_ttl=0.5, safety_margin=0.05)
    verdict = may_take_over(standby(started_at=started, lease_changed_at=0.0), started + 0.1, short, M)
    assert verdict.reason == "restart-promise-wait"


def test_the_heartbeat_bound_counts_the_holders_lease_from_an_earlier_receipt() -> None:
    seen, heard = 30.0, 29.0  # the renew seen at 30, a datagram sent after its stamp taken at 29
    assert may_take_over(standby(lease_changed_at=seen), heard + T.lease_duration - 0.01, T, M).reason == (
        "holder-alive"
    )
    verdict = may_take_over(standby(lease_changed_at=seen, lease_stamped_by=heard), heard + T.lease_duration, T, M)
    assert (bool(verdict), verdict.reason) == (True, "holder-lapsed-by-heartbeat")
    # no earlier than the observation: it changes nothing
    later = standby(lease_changed_at=seen, lease_stamped_by=seen + 1)
    assert may_take_over(later, seen + T.lease_duration - 0.01, T, M).not_before == seen + T.lease_duration
    assert may_take_over(later, seen + T.lease_duration, T, M).reason == "holder-lapsed"


def test_the_heartbeat_bound_leaves_the_other_waits_as_they_are() -> None:
    seen, heard = 30.0, 10.0
    promised = may_take_over(standby(lease_changed_at=seen, lease_stamped_by=heard, promised_until=40.0), 35.0, T, M)
    assert (promised.reason, promised.not_before) == ("promised", 40.0)
    outside = may_take_over(standby(lease_changed_at=seen, lease_stamped_by=heard, in_peer_set=False), 35.0, T, M)
    assert (outside.reason, outside.not_before) == ("outside-peer-set", heard + T.lease_duration + M.max_hold)
    restarted = may_take_over(standby(lease_changed_at=seen, lease_stamped_by=heard, started_at=34.0), 35.0, T, M)
    assert (restarted.reason, restarted.not_before) == ("restart-promise-wait", 34.0 + M.promise_duration)


def test_the_bound_is_the_earliest_receipt_of_a_larger_sequence() -> None:
    seqs, times = [3, 5, 9], [1.0, 2.0, 3.0]
    assert stamped_by(seqs, times, 2) == 1.0
    assert stamped_by(seqs, times, 3) == 2.0  # the datagram numbered as the renew went out before it
    assert stamped_by(seqs, times, 4) == 2.0
    assert stamped_by(seqs, times, 9) is None
    assert stamped_by([], [], 0) is None


@given(st.lists(st.integers(0, 50), unique=True), st.integers(0, 60))
def test_the_bound_never_comes_from_a_sequence_at_or_below_the_renews(received: list[int], seq: int) -> None:
    seqs = sorted(received)
    times = [float(i) for i in range(len(seqs))]
    bound = stamped_by(seqs, times, seq)
    above = [t for s, t in zip(seqs, times, strict=True) if s > seq]
    assert bound == (min(above) if above else None)


def test_promises_only_grow() -> None:
    assert promise_until(10.0, None, M) == 12.0
    assert promise_until(10.0, 15.0, M) == 15.0
    assert promise_until(14.0, 15.0, M) == 16.0


def test_check_names_each_broken_inequality() -> None:
    assert check(T, M) == []
    problems = check(T, MeshTiming(promise_duration=3.0, drift=0.6, margin=3.0, max_hold=1.0))
    assert [p[:4] for p in problems] == ["(M1)", "(M2)", "(M3)", "(M4)"]


def test_the_peer_set_is_the_other_candidates_of_our_groups() -> None:
    groups = [("a", "b"), ("b", "c"), ("a", "d", "a")]
    assert peer_set("a", groups) == {"b", "d"}
    assert peer_set("c", groups) == {"b"}
    assert peer_set("e", groups) == frozenset()


def test_required_peers_are_those_of_the_served_groups() -> None:
    assert required_peers("a", [("a", "b")], current={"b", "c"}, published={"b", "c"}) == {"b"}
    assert required_peers("a", [], current={"b"}, published={"b", "c"}) == frozenset()  # serving nothing


def test_required_peers_keep_those_published_but_no_longer_current() -> None:
    """c left our groups; our node lease still names it, so it may take over
    without the further maxHold until we publish again: we need its promise."""
    assert required_peers("a", [("a", "b")], current={"b"}, published={"b", "c"}) == {"b", "c"}
    assert required_peers("a", [("a", "b")], current={"b"}, published={"b"}) == {"b"}
    assert required_peers("a", [("a", "b")], current={"b"}, published={"a", "b"}) == {"b"}
