"""The scenarios' fault, hold and undo on a recording lab and a fake clock: what each does, in which
order, for how long, and that the undo runs also when the round is interrupted."""

from __future__ import annotations

import signal
from typing import Any

import pytest

from egressd.drill.analysis import Arrival, Sent, analyse_round, summarize
from egressd.drill.faults import FAULTS, SCENARIOS, Holds, Played, play
from egressd.lab.netlab import Lab
from egressd.lab.netns import LabError

LEASE = 2.5


class RecordingLab:
    """The lab methods the faults use; each call is recorded with the fake clock's time."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.calls: list[tuple[float, str, tuple[Any, ...]]] = []

    def _record(self, name: str, *args: Any) -> None:
        self.calls.append((round(self.clock.now, 3), name, args))

    def kill(self, node: str, sig: int, *, restart: bool) -> int:
        self._record("kill", node, sig, restart)
        return 1

    def release(self, node: str) -> None:
        self._record("release", node)

    def link(self, node: str, up: bool) -> None:
        self._record("link", node, up)

    def block_api(self, node: str, blocked: bool) -> None:
        self._record("block_api", node, blocked)

    def api_pause(self, paused: bool) -> None:
        self._record("api_pause", paused)

    def partition_gateways(self, partitioned: bool) -> None:
        self._record("partition_gateways", partitioned)

    def isolate(self, node: str, isolated: bool) -> None:
        self._record("isolate", node, isolated)

    def names(self) -> list[str]:
        return [name for _, name, _ in self.calls]


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.now += seconds


def _play(
    scenario: str, holds: Holds | None = None, *, moves_after: float = 1.7, fail_wait: bool = False
) -> tuple[Played, RecordingLab, list[float]]:
    clock = FakeClock()
    lab = RecordingLab(clock)
    waits: list[float] = []

    def wait_moved(at_least: float) -> bool:
        waits.append(at_least)
        if fail_wait:
            raise KeyboardInterrupt
        clock.sleep(max(at_least, moves_after))
        return True

    played = play(
        scenario,
        lab,  # type: ignore[arg-type]  # the methods the faults call
        "kind-worker3",
        holds=holds or Holds(),
        lease=LEASE,
        clock=clock,
        sleep=clock.sleep,
        wait_moved=wait_moved,
    )
    return played, lab, waits


def test_every_scenario_names_its_hold_and_formats_its_actions() -> None:
    holds = Holds()
    for name in SCENARIOS:
        f = FAULTS[name]
        texts = holds.texts("kind-worker3", LEASE)
        assert f.fault_action.format(**texts)
        assert f.recover_action.format(**texts) or f.recover is None
        assert (f.then is None) == (not f.then_action)
        assert (f.release is None) == (not f.release_action)
    assert {"peer-partition", "isolate", "double-fault"} <= set(SCENARIOS)


def test_peer_partition_cuts_every_gateway_apart_for_the_partition_hold() -> None:
    played, lab, waits = _play("peer-partition", Holds(partition=4.0))
    assert lab.calls == [(100.0, "partition_gateways", (True,)), (104.0, "partition_gateways", (False,))]
    assert waits == []  # held for a fixed time: nothing is expected to move
    assert played.fault == 100.0 and played.recover == 104.0
    assert played.fault_action == "gateways cut off from each other for 4 s"
    assert played.recover_action == "gateways reach each other again"


def test_isolate_is_held_until_the_ip_moved_and_at_least_the_minimum_hold() -> None:
    played, lab, waits = _play("isolate")
    assert waits == [LEASE]  # default minimum: leaseDuration
    assert lab.calls == [(100.0, "isolate", ("kind-worker3", True)), (102.5, "isolate", ("kind-worker3", False))]
    assert played.moved
    assert "data path intact" in played.fault_action
    _, _, waits = _play("isolate", Holds(moved_min=4.0))
    assert waits == [4.0]


def test_double_fault_pauses_the_api_kills_the_owner_thaws_the_api_then_releases_it() -> None:
    played, lab, waits = _play("double-fault", Holds(outage=10.0, kill_after=1.0), moves_after=2.6)
    assert lab.calls == [
        (100.0, "api_pause", (True,)),
        (101.0, "kill", ("kind-worker3", signal.SIGKILL, False)),  # held down: not restarted
        (110.0, "api_pause", (False,)),  # the outage counts from the pause, not from the kill
        (112.6, "release", ("kind-worker3",)),  # only once the IP has moved
    ]
    assert waits == [0.0]
    assert played.recover == 110.0 and played.recover_action == "API server resumed"
    assert [a for _, a in played.steps] == [
        "SIGKILL kind-worker3 (held down) 1 s into the outage",
        "kind-worker3 released (started again) after the IP moved",
    ]
    assert FAULTS["double-fault"].restart  # the round settles once the owner runs as a new process


def test_an_interrupted_double_fault_still_thaws_the_api_and_releases_the_owner() -> None:
    with pytest.raises(KeyboardInterrupt):
        _play("double-fault", Holds(outage=3.0), fail_wait=True)
    clock = FakeClock()
    lab = RecordingLab(clock)

    def boom(_: float) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        play(
            "double-fault",
            lab,  # type: ignore[arg-type]
            "kind-worker3",
            holds=Holds(outage=3.0),
            lease=LEASE,
            clock=clock,
            sleep=boom,  # Ctrl-C before the kill
            wait_moved=lambda _: True,
        )
    assert lab.names() == ["api_pause", "api_pause", "release"]
    assert lab.calls[1][2] == (False,)


def test_api_outage_takes_its_duration_from_the_holds() -> None:
    played, lab, _ = _play("api-outage", Holds(outage=300.0))
    assert lab.calls == [(100.0, "api_pause", (True,)), (400.0, "api_pause", (False,))]
    assert played.fault_action == "API server paused for 300 s"
    assert Holds().outage == 30.0


def test_baseline_does_nothing_for_the_quiet_hold() -> None:
    clock = FakeClock()
    lab = RecordingLab(clock)
    played = play(
        "baseline",
        lab,  # type: ignore[arg-type]  # the methods the faults call
        "kind-worker3",
        holds=Holds(quiet=30.0),
        lease=LEASE,
        clock=clock,
        sleep=clock.sleep,
        wait_moved=lambda _: pytest.fail("a baseline waits for nothing to move"),
    )
    assert lab.calls == []
    assert clock.now == 130.0  # watched for the quiet hold
    assert played.fault == 100.0 and played.recover is None
    assert played.fault_action == "nothing done for 30 s (baseline)"
    assert Holds().quiet == 10.0
    assert any(p.startswith("quiet:") for p in Holds(quiet=-1.0).problems())


def test_freeze_hold_defaults_to_lease_duration_plus_two_and_can_be_set() -> None:
    _, lab, _ = _play("freeze")
    assert [t for t, _, _ in lab.calls] == [100.0, 104.5]
    _, lab, _ = _play("freeze", Holds(freeze=1.0))
    assert [t for t, _, _ in lab.calls] == [100.0, 101.0]


def test_holds_out_of_bounds_are_named() -> None:
    assert Holds().problems() == []
    problems = Holds(outage=5.0, kill_after=5.0, partition=-1.0).problems()
    assert any(p.startswith("partition:") for p in problems)
    assert any(p.startswith("kill-after:") for p in problems)


def test_served_after_recover_counts_from_the_undo_to_the_end_of_the_gap() -> None:
    sent = [Sent("p", i, 0.005 * i) for i in range(4000)]
    # good arrivals until 1.0, nothing until 12.5, good again after
    arrivals = [Arrival("p", s.seq, s.t + 0.001, "172.18.0.42") for s in sent if s.t <= 1.0 or s.t >= 12.5]
    common: dict[str, Any] = {
        "scenario": "double-fault",
        "index": 1,
        "target": "kind-worker3",
        "ip": "172.18.0.42",
        "fault": 1.0,
        "fault_action": "API server paused",
        "recover_action": "API server resumed",
        "start": 0.0,
        "end": 19.9,
        "settled": True,
        "sent": sent,
        "echoed": {},
        "arrivals": arrivals,
        "claims": [],
        "requests": {},
        "leases": [],
        "allowed": ["172.18.0.42"],
        "steps": [(2.0, "SIGKILL kind-worker3")],
    }
    r = analyse_round(recover=10.0, **common)
    assert r.served_after_recover_ms == pytest.approx(2501.0, abs=0.2)
    js = r.to_json()
    assert js["served_after_recover_ms"] == r.served_after_recover_ms
    assert js["timeline"]["steps"] == [{"t_ms": 1000.0, "action": "SIGKILL kind-worker3"}]
    assert "served 2501 ms after the undo" in r.progress(1)
    # served again before the undo: negative (a takeover while the fault lasted)
    assert analyse_round(recover=14.0, **common).served_after_recover_ms == pytest.approx(-1499.0, abs=0.2)
    assert analyse_round(recover=None, **common).served_after_recover_ms is None
    summary = summarize([js, {**js, "served_after_recover_ms": 3000.0}])
    assert summary["served_after_recover_ms"]["max"] == 3000.0


def test_peer_rules_drop_the_other_gateways_only(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    rules: list[tuple[list[str], str | None]] = []

    def run_cmd(argv: list[str], *, input_text: str | None = None, check: bool = True) -> str:
        rules.append((argv, input_text))
        return ""

    monkeypatch.setattr("egressd.lab.netlab.run_cmd", run_cmd)
    lab = Lab("hx-", tmp_path)
    lab.block_peers("kind-worker3", blocked=True)
    (argv, text), *_ = rules
    assert argv[:4] == ["ip", "netns", "exec", "hx-kind-worker3"]
    assert text is not None and "172.18.0.6" in text  # kind-worker4
    assert "172.18.0.5" not in text and lab.scenario.api_address not in text and "172.18.0.7" not in text
    rules.clear()
    lab.partition_gateways(partitioned=True)
    assert [a[3] for a, _ in rules] == ["hx-kind-worker3", "hx-kind-worker4"]
    rules.clear()
    lab.isolate("kind-worker4", isolated=True)
    texts = [t or "" for _, t in rules]
    assert any("lab_partition" in t and "6443" in t for t in texts)
    assert any("lab_peers" in t and "172.18.0.5" in t for t in texts)
    with pytest.raises(LabError, match="no peers"):
        lab.block_peers("kind-worker3", blocked=True, peers=[])
