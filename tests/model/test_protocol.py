"""The ownership protocol, checked in every reachable state of small
configurations (tests/model/protocol.py), and shown to catch planted bugs.
The figures of each configuration are in tests/model/README.md; larger
explorations run with EGRESSD_MODEL_LARGE=1."""

from __future__ import annotations

import bisect
import dataclasses
import os
from collections.abc import Collection, Iterable

import pytest

from egressd.core import rights
from egressd.core.mesh_messages import Outstanding, Promise
from egressd.core.model import Timing
from tests.model.protocol import Params, Result, Rules, explore, grow_and_shrink, main, renew_seq

large = pytest.mark.skipif(not os.environ.get("EGRESSD_MODEL_LARGE"), reason="set EGRESSD_MODEL_LARGE=1 (minutes)")

COARSE = (20,)
"""One clock rate, two ticks to the renew deadline: the peer-set
configurations check who must promise, not fine timing (drift is checked by
the others)."""
ADD = grow_and_shrink(3, 1, 2, 0)[:2]
"""Node 2 joins the group of IP 0 (of nodes 0 and 1)."""
REMOVE = grow_and_shrink(3, 1, 2, 0)[1:]
"""Node 2 leaves the group of IP 0 (to nodes 0 and 1)."""


def _safe(params: Params, at_least: int) -> Result:
    result = explore(params)
    print(f"\n{params.gateways} gateways, {params.ips} IPs: {result.states} states in {result.seconds:.1f}s")
    assert result.violation is None, " -> ".join(result.violation)
    assert result.states > at_least  # the whole space, not a shortcut through it
    return result


def test_two_gateways_under_any_two_faults_never_both_serve() -> None:
    _safe(Params(gateways=2, faults=2), 30_000)


def test_three_gateways_under_any_one_fault_never_two_serve() -> None:
    _safe(Params(gateways=3, faults=1), 10_000)


def test_two_ips_with_a_handoff_under_any_one_fault_never_two_serve_either() -> None:
    _safe(Params(gateways=2, ips=2, faults=1, handoffs=1), 15_000)


def test_a_transfer_under_any_one_fault_never_makes_two_serve() -> None:
    """A holder hands the IP to a candidate that accepted its offer by a
    transfer; the successor may serve on it without the API."""
    _safe(Params(gateways=2, faults=1, transfers=1), 8_000)


def test_two_ips_with_a_transfer_under_any_one_fault_never_two_serve() -> None:
    _safe(Params(gateways=2, ips=2, faults=1, transfers=1), 20_000)


def test_late_promises_under_api_and_link_faults_never_make_two_serve() -> None:
    _safe(Params(gateways=2, faults=2, delay=2, kinds=frozenset({"api", "link"})), 10_000)


def test_a_candidate_joining_a_group_never_makes_two_serve() -> None:
    _safe(Params(gateways=3, faults=1, plan=ADD, kinds=frozenset({"api"}), rates=COARSE), 5_000)


def test_a_candidate_leaving_a_group_never_makes_two_serve_even_across_a_timed_out_renew() -> None:
    _safe(Params(gateways=3, faults=1, plan=REMOVE, kinds=frozenset({"api", "unsure"}), rates=COARSE), 15_000)


def test_the_double_fault_a_renew_held_by_the_api_server_then_the_owner_killed_never_makes_two_serve() -> None:
    """The API server holds the owner's renew (its API cut), the owner dies,
    the server commits the renew at any later tick: the standby takes over on
    the heartbeat bound when it heard the owner after that renew, and never
    while the owner (or its kernel) serves."""
    result = _safe(Params(gateways=2, faults=2, kinds=frozenset({"late", "kill"})), 30_000)
    assert result.by_heartbeat > 0  # the bound did shorten waits on the way


def test_freezes_and_cuts_never_make_two_serve_on_the_heartbeat_bound() -> None:
    """A holder silent for long (frozen, cut), then renewing: the receipts of
    its datagrams from before that renew must not count."""
    result = _safe(Params(gateways=2, faults=3, kinds=frozenset({"freeze", "link"})), 15_000)
    assert result.by_heartbeat > 0


@large
def test_large_two_ips_with_two_handoffs_under_any_two_faults() -> None:
    _safe(Params(gateways=2, ips=2, faults=2, handoffs=2), 100_000)


@large
def test_large_a_candidate_joining_then_leaving_under_api_faults() -> None:
    plan = grow_and_shrink(3, 1, 2, 0)
    _safe(Params(gateways=3, faults=1, plan=plan, kinds=frozenset({"api", "unsure"}), rates=COARSE), 40_000)


@large
def test_large_a_transfer_under_any_two_faults() -> None:
    _safe(Params(gateways=2, faults=2, transfers=1), 100_000)


@large
def test_large_three_gateways_with_a_transfer_under_any_one_fault() -> None:
    _safe(Params(gateways=3, faults=1, transfers=1), 60_000)


@large
def test_large_late_promises_under_any_two_faults() -> None:
    _safe(Params(gateways=2, faults=2, delay=1), 50_000)


# --- planted bugs ----------------------------------------------------------------------------


def _found(rules: Rules, faults: int = 2, **params: object) -> list[str]:
    """The trace to two owners the model finds with ``rules``. Bugs that do not
    involve the heartbeat bound are looked for without its receipts (no
    standby has one: the bound never shortens a wait), which is faster."""
    params.setdefault("gateways", 2)
    params.setdefault("receipts", rules.stamped_by is not rights.stamped_by or rules.renew_seq is not renew_seq)
    result: Result = explore(Params(faults=faults, rules=rules, **params))  # type: ignore[arg-type]
    assert result.violation is not None, f"the planted bug went unnoticed in {result.states} states"
    print(f"\nfound in {result.states} states, a trace of {len(result.violation) - 1} ticks:")
    print(" -> ".join(result.violation))
    return result.violation


def test_a_holder_that_ignores_clock_drift_is_caught() -> None:
    """Counting a promise as D of the holder's own time, not D*(1 - rho): a
    holder whose clock runs slow serves past the standby's promise."""

    def ignore_drift(h: rights.Holding, now: float, t: Timing, m: rights.MeshTiming) -> rights.Right:
        return rights.serving_right(h, now, t, dataclasses.replace(m, drift=0.0, margin=0.0))

    trace = _found(Rules(serving_right=ignore_drift))
    assert any(step.startswith("api-down") for step in trace)  # it serves on promises


def test_a_kernel_fence_longer_than_the_promise_is_caught() -> None:
    """Arming the election's full fence TTL under a peer right: a holder that
    freezes keeps serving after the standby's promise has run out."""

    def full_fence(right: rights.Right, now: float, t: Timing, m: rights.MeshTiming) -> float:
        return t.fence_ttl if right else 0.0

    trace = _found(Rules(fence_ttl=full_fence))
    assert any(step.startswith("freeze") for step in trace)


def test_a_restarted_standby_that_trusts_an_empty_memory_is_caught() -> None:
    """A restarted process that neither waits out its predecessor's promises
    nor counts the holder's silence from its own start takes over from a
    holder its predecessor promised."""

    def forgetful(s: rights.Standby, now: float, t: Timing, m: rights.MeshTiming) -> rights.Takeover:
        return rights.may_take_over(
            dataclasses.replace(s, started_at=float("-inf"), lease_changed_at=s.lease_changed_at or float("-inf")),
            now, t, m,
        )  # fmt: skip

    trace = _found(Rules(may_take_over=forgetful))
    assert any(step.startswith("kill") for step in trace)


def test_timings_that_break_t1_are_caught() -> None:
    """A renew deadline plus fence TTL longer than the lease duration (T1
    broken, which the Timing constructor refuses; built here field by field)."""
    good = Params().timing
    broken = object.__new__(Timing)
    for f in dataclasses.fields(Timing):
        object.__setattr__(broken, f.name, getattr(good, f.name))
    object.__setattr__(broken, "lease_duration", 60)
    trace = _found(Rules(), faults=1, timing=broken)
    assert any(step.startswith(("freeze", "lose", "api-down", "link-cut", "kill")) for step in trace)


def test_a_promise_counted_from_its_receipt_is_caught() -> None:
    """Counting a promise from when it arrived, not from the send time of the
    heartbeat it answers: a late promise makes the holder serve past it."""

    def at_receipt(outstanding: Outstanding, promise: Promise, me: str, now: float) -> float:
        outstanding.answer(promise, me)
        return now

    trace = _found(Rules(answered_at=at_receipt), delay=2, kinds=frozenset({"api", "link"}))
    assert any(step.startswith("link-cut") for step in trace)


def test_a_standby_outside_the_published_peer_set_that_does_not_wait_max_hold_is_caught() -> None:
    """A node that just joined the group, unknown to the holder (which serves on
    the promises of the peers it knows), takes the IP over after the lease
    duration alone."""

    def as_if_inside(s: rights.Standby, now: float, t: Timing, m: rights.MeshTiming) -> rights.Takeover:
        return rights.may_take_over(dataclasses.replace(s, in_peer_set=True), now, t, m)

    trace = _found(
        Rules(may_take_over=as_if_inside), faults=1, gateways=3, plan=ADD, rates=COARSE, kinds=frozenset({"api"})
    )
    assert any("learns groups 1" in step for step in trace)


def test_a_holder_that_needs_promises_of_its_current_peer_set_only_is_caught() -> None:
    """A holder that learnt a node left the group, and no longer asks it for a
    promise although its node lease (not renewed since: the API is cut) still
    names it: that node, not knowing yet, takes over after the lease duration."""

    def current_only(
        node: str, served: Iterable[Collection[str]], current: Collection[str], published: Collection[str]
    ) -> frozenset[str]:
        return rights.required_peers(node, served, current, ())

    rules = Rules(required_peers=current_only)
    trace = _found(rules, faults=1, gateways=3, plan=REMOVE, rates=COARSE, kinds=frozenset({"api"}))
    assert any("learns groups 1" in step for step in trace)


def test_a_holder_that_forgets_its_published_peer_set_after_a_timed_out_renew_is_caught() -> None:
    """What ``NodeLiveness`` does today: a renew that times out clears the record
    of the node lease, and with it the published peer set, although the write
    may or may not have landed. A holder that learnt a node left the group
    then needs only its current peers' promises, while the lease still names
    the one that left."""

    def forget(previous: frozenset[str], attempted: frozenset[str]) -> frozenset[str]:
        return frozenset()

    rules = Rules(published_after_unsure_renew=forget)
    trace = _found(rules, faults=1, gateways=3, plan=REMOVE, rates=COARSE, kinds=frozenset({"unsure"}))
    assert any("renew-lost" in step for step in trace)


def test_a_transfer_written_before_the_withdrawal_is_caught() -> None:
    """The old owner writes the claim naming the successor while it still
    serves: the successor serves on it at once."""
    trace = _found(Rules(transfer_withdraws=False), faults=0, transfers=1)
    assert any("transfer-" in step for step in trace)


def test_a_heartbeat_bound_from_the_datagram_numbered_as_the_renew_is_caught() -> None:
    """Counting a receipt of sequence ``>= c`` instead of ``> c``: the datagram
    numbered as the renew went out before it, maybe long before (the holder
    was frozen): a standby that heard it before the freeze takes over from a
    holder that renewed after the thaw."""

    def at_or_above(seqs: list[int], times: list[float], seq: int) -> float | None:
        at = bisect.bisect_left(seqs, seq)
        return times[at] if at < len(times) else None

    trace = _found(Rules(stamped_by=at_or_above), faults=3, kinds=frozenset({"freeze", "link"}))
    assert any(step.startswith("thaw") for step in trace)


def test_a_renew_carrying_a_sequence_read_before_the_last_heartbeats_is_caught() -> None:
    """The holder reads the sequence, heart-beats (an await between), then
    stamps the renew: a heartbeat sent before the stamp counts as after it."""

    def read_early(counter: int, previous: int | None) -> int:
        return previous if previous is not None else counter

    trace = _found(Rules(renew_seq=read_early), faults=3, kinds=frozenset({"freeze", "link"}))
    assert any(step.startswith("thaw") for step in trace)


def test_the_command_prints_the_state_count(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--gateways", "2", "--faults", "1"]) == 0
    out = capsys.readouterr().out
    assert "states" in out
    assert "never two owners" in out
