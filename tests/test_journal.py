"""The safety check over recording journals: a node serves from its claim
until its address is released, or until its SNAT is off when that follows."""

from __future__ import annotations

from typing import Any

from tests.journal import intervals, overlaps


def op(t: float, node: str, kind: str, **fields: Any) -> dict[str, Any]:
    return {"t": t, "node": node, "op": kind, "ip": "172.18.0.42", **fields}


def test_a_node_serves_until_its_snat_is_off_after_its_address() -> None:
    withdrawn = [op(0.0, "a", "claim", lifetime=10), op(1.0, "a", "release"), op(1.5, "a", "snat-off")]
    (span,) = intervals(withdrawn, until=5.0)
    assert (span.start, span.end) == (0.0, 1.5)
    taken_early = [*withdrawn, op(1.2, "b", "claim", lifetime=10)]
    assert overlaps(intervals(taken_early, until=5.0)), "b claimed before a's SNAT was off"
    taken_after = [*withdrawn, op(1.6, "b", "claim", lifetime=10)]
    assert not overlaps(intervals(taken_after, until=5.0))


def test_a_snat_off_with_no_release_before_it_changes_nothing() -> None:
    ops = [op(0.0, "a", "claim", lifetime=1), op(3.0, "a", "snat-off"), op(2.0, "b", "claim", lifetime=10)]
    assert not overlaps(intervals(ops, until=5.0))  # a's address expired at 1.0 (the kernel fence)
