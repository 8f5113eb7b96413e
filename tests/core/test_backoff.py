"""The backoff policy, the failure streak, Retry-After and the retry decision, on fixed draws."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from egressd.core.backoff import UNANSWERED_BACKOFF, WATCH_BACKOFF, Backoff, Repeats, Streak, retry_after, retry_wait

NOW = datetime(2026, 12, 4, 12, 0, 0, tzinfo=UTC)


def test_ceiling_doubles_up_to_the_cap() -> None:
    b = Backoff(initial=0.1, cap=1.0)
    assert [b.ceiling(n) for n in range(1, 7)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    assert b.ceiling(10**6) == 1.0  # no overflow however long the streak


def test_equal_jitter_keeps_half_the_ceiling_as_a_floor() -> None:
    b = Backoff(initial=0.4, cap=4.0)
    assert b.delay(2, 0.0) == pytest.approx(0.4)
    assert b.delay(2, 0.5) == pytest.approx(0.6)
    assert b.delay(2, 0.999999) == pytest.approx(0.8, abs=1e-5)


@pytest.mark.parametrize(
    ("initial", "cap", "factor"),
    [(0.0, 1.0, 2.0), (-1.0, 1.0, 2.0), (1.0, 0.5, 2.0), (0.1, float("inf"), 2.0), (0.1, 1.0, 0.5)],
)
def test_a_bad_policy_is_refused(initial: float, cap: float, factor: float) -> None:
    with pytest.raises(ValueError, match="backoff"):
        Backoff(initial=initial, cap=cap, factor=factor)


def test_a_streak_grows_reports_sparsely_and_ends_after_a_healthy_run() -> None:
    streak = Streak(Backoff(initial=0.1, cap=30.0), lambda: 0.0, healthy_after=10.0)
    steps = [streak.failed("ResourceExpired") for _ in range(9)]
    assert [s.delay for s in steps] == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8])
    assert [s.failures for s in steps if s.report] == [1, 2, 4, 8]  # the first, then powers of two
    assert streak.failed("ApiUnavailable").report  # a different problem is news
    assert streak.ran(9.9) == 0 and streak.failures == 10  # too short to count as healthy
    assert streak.ran(10.0) == 10 and streak.failures == 0
    assert streak.failed("ResourceExpired").delay == pytest.approx(0.05)  # starts small again
    assert streak.ran(60.0) == 1


def test_a_server_asking_for_longer_waits_longer_but_not_past_the_cap() -> None:
    streak = Streak(Backoff(initial=0.1, cap=30.0), lambda: 0.0)
    assert streak.failed("ApiUnavailable", retry_after=2.0).delay == 2.0
    assert streak.failed("ApiUnavailable", retry_after=3600.0).delay == 30.0
    assert streak.failed("ApiUnavailable", retry_after=0.0).delay == pytest.approx(0.2)


def test_a_failure_with_a_policy_of_its_own_waits_by_it_and_counts_in_the_streak() -> None:
    streak = Streak(WATCH_BACKOFF, lambda: 0.999999)
    steps = [streak.failed("ApiTimeout", backoff=UNANSWERED_BACKOFF) for _ in range(6)]
    assert [s.delay for s in steps] == pytest.approx([0.1, 0.4, 1.6, 2.0, 2.0, 2.0], abs=1e-5)
    assert streak.failures == 6
    assert streak.failed("ApiUnavailable").delay == pytest.approx(30.0, abs=1e-4)  # the streak's own, 7 in a row
    # a Retry-After is honoured up to the cap of the policy in use
    assert streak.failed("ApiTimeout", retry_after=10.0, backoff=UNANSWERED_BACKOFF).delay == 2.0


def test_the_watch_policy_keeps_a_storm_to_a_few_requests_a_minute() -> None:
    """At the cap, a refused watch (list + watch) is tried at most every cap/2 s."""
    assert WATCH_BACKOFF.delay(100, 0.0) >= 15.0
    assert WATCH_BACKOFF.delay(1, 0.999) <= 0.1


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("3", 3.0),
        (" 0 ", 0.0),
        ("120", 120.0),
        ("9" * 400, 1e9),
        ((NOW + timedelta(seconds=7)).strftime("%a, %d %b %Y %H:%M:%S GMT"), 7.0),
        ((NOW - timedelta(seconds=7)).strftime("%a, %d %b %Y %H:%M:%S GMT"), 0.0),
        ("-1", None),
        ("1.5", None),
        ("soon", None),
        ("", None),
        (None, None),
    ],
)
def test_retry_after_reads_seconds_and_http_dates(header: str | None, expected: float | None) -> None:
    assert retry_after(header, NOW) == expected


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_retry_after_never_raises(header: str) -> None:
    value = retry_after(header, NOW)
    assert value is None or value >= 0.0


def test_a_retry_after_past_the_deadline_gives_up_at_once() -> None:
    """A renew with 0.5 s left, told to come back in 1 s: the write would land
    after the renew deadline, so the call reports now instead of sleeping."""
    decision = retry_wait(0.1, 1.0, remaining=0.5, min_attempt=0.02)
    assert decision.delay is None and "1s" in decision.reason


def test_a_retry_after_within_the_deadline_is_waited_out() -> None:
    assert retry_wait(0.1, 0.3, remaining=0.5, min_attempt=0.02).delay == 0.3
    assert retry_wait(0.4, 0.3, remaining=0.5, min_attempt=0.02).delay == pytest.approx(0.4)


def test_backoff_never_sleeps_into_the_time_the_next_attempt_needs() -> None:
    assert retry_wait(1.0, None, remaining=0.5, min_attempt=0.02).delay == pytest.approx(0.48)
    assert retry_wait(0.1, None, remaining=0.03, min_attempt=0.02).delay is None


def test_repeats_report_the_first_a_new_problem_and_powers_of_two() -> None:
    r = Repeats()
    reported = [n for n in range(1, 101) if r.failed("ApiUnavailable")]
    assert reported == [1, 2, 4, 8, 16, 32, 64]
    assert r.failed("ApiTimeout"), "a different problem is news"
    assert not r.failed("ApiTimeout")  # 102: no power of two, same problem
    assert r.succeeded() == 102
    assert r.succeeded() == 0
    assert r.failed("ApiTimeout"), "after a success the next failure is the first again"
