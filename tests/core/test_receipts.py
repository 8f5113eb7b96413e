"""A standby's memory of when it took each peer process's datagrams: what the
heartbeat bound reads, bounded in memory, never earlier than a real receipt."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from egressd.core.receipts import INCARNATIONS, HeartbeatReceipts


def test_the_first_receipt_above_a_sequence_is_found() -> None:
    r = HeartbeatReceipts(keep=100.0, step=0.1)
    for seq, at in ((4, 1.0), (5, 1.25), (7, 1.5)):
        r.took("gw-a", "p1", seq, at)
    assert r.sent_by("gw-a", "p1", 4) == 1.25
    assert r.sent_by("gw-a", "p1", 5) == 1.5
    assert r.sent_by("gw-a", "p1", 7) is None
    assert r.sent_by("gw-a", "p2", 0) is None  # another process of the node: nothing of it taken
    assert r.sent_by("gw-b", "p1", 0) is None


def test_a_datagram_not_above_the_last_is_left_out() -> None:
    r = HeartbeatReceipts(keep=100.0, step=0.1)
    r.took("gw-a", "p1", 9, 1.0)
    r.took("gw-a", "p1", 8, 2.0)  # a wake overtaken by a heartbeat
    assert r.sent_by("gw-a", "p1", 7) == 1.0
    assert r.size("gw-a", "p1") == 1


def test_memory_is_bounded_by_the_step_and_the_age() -> None:
    r = HeartbeatReceipts(keep=10.0, step=0.5)
    for i in range(10_000):
        r.took("gw-a", "p1", i + 1, i * 0.01)
    assert r.size("gw-a", "p1") <= 10.0 / 0.5 + 2
    # nothing older than keep: the earliest answer is within keep of the newest
    assert r.sent_by("gw-a", "p1", 0) is not None
    assert r.sent_by("gw-a", "p1", 0) >= 99.99 - 10.0 - 0.5  # type: ignore[operator]


def test_only_the_last_processes_of_a_node_are_kept() -> None:
    r = HeartbeatReceipts(keep=10.0, step=0.1)
    for n in range(INCARNATIONS + 1):
        r.took("gw-a", f"p{n}", 1, float(n))
    assert r.sent_by("gw-a", "p0", 0) is None
    assert r.sent_by("gw-a", f"p{INCARNATIONS}", 0) == float(INCARNATIONS)


@given(
    st.lists(st.tuples(st.integers(1, 40), st.floats(0.0, 0.3)), min_size=1, max_size=60),
    st.integers(0, 45),
    st.floats(0.01, 1.0),
)
def test_the_answer_is_a_real_receipt_of_a_larger_sequence_and_no_earlier_than_the_first(
    taken: list[tuple[int, float]], seq: int, step: float
) -> None:
    r = HeartbeatReceipts(keep=5.0, step=step)
    at, real = 0.0, []
    for s, dt in taken:
        at += dt
        r.took("gw-a", "p1", s, at)
        real.append((s, at))
    bound = r.sent_by("gw-a", "p1", seq)
    above = [t for s, t in real if s > seq]
    if bound is not None:
        assert bound in above  # a datagram numbered above seq was taken then: the stamp came before
        assert bound >= min(above)  # never earlier than the earliest such receipt
    newest = max(s for s, _ in real)
    if seq < newest and real[-1][0] == newest:
        assert bound is not None  # the newest receipt is always kept
