"""The ownership protocol, checked in every reachable state of small
configurations (tests/model/protocol.py), and shown to catch planted bugs."""

from __future__ import annotations

import dataclasses

from egressd.core import rights
from egressd.core.model import Timing
from tests.model.protocol import Params, Rules, explore, main


def test_two_gateways_under_any_two_faults_never_both_serve() -> None:
    result = explore(Params(gateways=2, faults=2))
    assert result.violation is None, " -> ".join(result.violation)
    assert result.states > 100_000  # the whole space, not a shortcut through it


def test_three_gateways_under_any_one_fault_never_two_serve() -> None:
    result = explore(Params(gateways=3, faults=1))
    assert result.violation is None, " -> ".join(result.violation)
    assert result.states > 50_000


def _found(rules: Rules, faults: int = 2, **params: object) -> list[str]:
    result = explore(Params(gateways=2, faults=faults, rules=rules, **params))  # type: ignore[arg-type]
    assert result.violation is not None, f"the planted bug went unnoticed in {result.states} states"
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


def test_the_command_prints_the_state_count(capsys: object) -> None:
    assert main(["--gateways", "2", "--faults", "1"]) == 0
    out = capsys.readouterr().out  # type: ignore[attr-defined]
    assert "states" in out
    assert "never two owners" in out
