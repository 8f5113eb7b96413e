"""A successor's judgement of a wake: read the claim now, nothing to do, or drop and count."""

from __future__ import annotations

from dataclasses import replace

import pytest

from egressd.core.lease import LeaseRecord
from egressd.core.mesh_messages import Wake
from egressd.core.wake import WakeAction, judge_wake

CANDIDATES = ("gw-a", "gw-b")
WAKE = Wake("gw-a", "inc-1", 8, "172.18.0.42", 3, "41", "gw-b")
HELD = LeaseRecord(
    name="egressd-172-18-0-42",
    egress_ip="172.18.0.42",
    holder="gw-a",
    lease_duration=2.5,
    transitions=3,
    resource_version="40",
    incarnation="inc-1",
)


def test_a_wake_from_the_holder_to_us_is_read() -> None:
    verdict = judge_wake(WAKE, me="gw-b", candidates=CANDIDATES, known=HELD)
    assert (verdict.action, verdict.reason) == (WakeAction.READ, "read")
    # a view that never saw the claim reads it too
    assert judge_wake(WAKE, me="gw-b", candidates=CANDIDATES, known=None).action is WakeAction.READ
    # and so does one behind the wake (an epoch we have not seen yet), across the wrap too
    for behind, ahead in ((1, 3), (2**31 - 1, 0)):
        wake, known = replace(WAKE, epoch=ahead), replace(HELD, transitions=behind)
        assert judge_wake(wake, me="gw-b", candidates=CANDIDATES, known=known).action is WakeAction.READ


def test_a_wake_after_the_watch_brought_the_release_needs_no_read() -> None:
    released = replace(HELD, holder=None, preferred_holder="gw-b", resource_version="41")
    verdict = judge_wake(WAKE, me="gw-b", candidates=CANDIDATES, known=released)
    assert (verdict.action, verdict.reason) == (WakeAction.SEEN, "seen")
    # or after we took the claim on the watch's news: an older epoch, but nobody's fault
    taken = replace(HELD, holder="gw-b", transitions=4, resource_version="42")
    verdict = judge_wake(WAKE, me="gw-b", candidates=CANDIDATES, known=taken)
    assert (verdict.action, verdict.reason) == (WakeAction.SEEN, "held")


@pytest.mark.parametrize(
    ("wake", "candidates", "known", "reason"),
    [
        (replace(WAKE, to="gw-c"), CANDIDATES, HELD, "misdirected"),
        (WAKE, None, HELD, "not-candidate"),  # we are no candidate of the IP (or do not know it)
        (WAKE, ("gw-a", "gw-c"), HELD, "not-candidate"),
        (replace(WAKE, sender="gw-c"), CANDIDATES, HELD, "not-candidate"),  # the sender is none
        (replace(WAKE, epoch=2), CANDIDATES, HELD, "stale-epoch"),  # from an earlier handoff
        (replace(WAKE, epoch=2**31 - 1), CANDIDATES, replace(HELD, transitions=0), "stale-epoch"),  # the wrap
        (WAKE, CANDIDATES, replace(HELD, holder="gw-c", transitions=4, resource_version="42"), "stale-epoch"),
    ],
)
def test_wakes_not_worth_a_read_are_dropped_with_the_reason(
    wake: Wake, candidates: tuple[str, ...] | None, known: LeaseRecord | None, reason: str
) -> None:
    verdict = judge_wake(wake, me="gw-b", candidates=candidates, known=known)
    assert (verdict.action, verdict.reason) == (WakeAction.DROP, reason)
    assert verdict.detail
