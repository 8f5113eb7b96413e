"""The analysis of the long-lived connections on made-up reports: who was reset, when, by which
end, the stalls, the port changes, the split by kind, age and faulted gateway, the summary text."""

from __future__ import annotations

from typing import Any

import pytest

from egressd.drill import survival
from egressd.drill.report import report_json

FAULT = 100.0
IP = "172.18.0.42"


def _kept(
    id_: str,
    *,
    opened: float | None = 99.0,
    end: str | None = None,
    ended: float | None = None,
    last_rx: float | None = 101.0,
    stall: float = 0.02,
    stall_end: float | None = 99.5,
    stall_open: bool = False,
) -> dict[str, Any]:
    kind = id_.split("-")[1]
    return {
        "id": id_,
        "kind": kind,
        "opened": opened,
        "local": "10.244.1.2:40000",
        "seen": f"{IP}:40000",
        "end": end,
        "ended": ended,
        "lines": 10,
        "first_rx": 99.1,
        "last_rx": last_rx,
        "stall": stall,
        "stall_end": stall_end,
        "stall_open": stall_open,
    }


def _served(id_: str, end: str | None = "bye", ended: float = 102.0, source: str = f"{IP}:40000") -> dict[str, Any]:
    return {"id": id_, "kind": id_.split("-")[1], "source": source, "accepted": 99.0, "end": end, "ended": ended}


def _udp(id_: str, *, last_rx: float = 101.0, stall: float = 0.03) -> dict[str, Any]:
    return {
        "id": id_,
        "kind": "udp",
        "opened": 98.0,
        "sources": [[f"{IP}:41000", 98.0]],
        "more_sources": 0,
        "end": None,
        "last_rx": last_rx,
        "stall": stall,
        "stall_end": 100.2,
        "stall_open": False,
    }


def _flows(
    kept: list[dict[str, Any]], served: list[dict[str, Any]], udp: Any = (), server_udp: Any = None
) -> list[survival.Flow]:
    keepers = [{"role": "keeper", "connections": kept, "udp": list(udp), "loop_lag": 0.004}]
    server = {"role": "server", "connections": served, "udp": server_udp or {}, "loop_lag": 0.002}
    return survival.flows(keepers, server, fault=FAULT, ips={IP})


def test_a_server_first_connection_reset_at_the_server_is_reset_though_the_pod_saw_nothing() -> None:
    (f,) = _flows(
        [_kept("xwing-sf-0", last_rx=100.01, stall=2.0, stall_end=None, stall_open=True)],
        [_served("xwing-sf-0", end="reset", ended=100.2)],
    )
    assert f.reset and not f.survived
    assert f.reset_ms == pytest.approx(200.0)
    assert f.end == "server: reset"
    assert f.stall_open
    assert f.port_changed is None  # nothing came after the fault: not known


def test_the_earliest_end_of_either_side_is_the_reset() -> None:
    (f,) = _flows(
        [_kept("xwing-cf-0", end="reset", ended=100.5)],
        [_served("xwing-cf-0", end="eof", ended=100.3)],
    )
    assert f.reset_ms == pytest.approx(300.0)
    assert f.end == "server: eof"


def test_a_clean_bye_is_not_a_reset_and_lines_after_the_fault_prove_the_port_kept() -> None:
    (f,) = _flows([_kept("xwing-cf-0", stall=0.23, stall_end=100.2)], [_served("xwing-cf-0")])
    assert not f.reset and not f.stuck
    assert f.survived and f.to_json()["survived"]
    assert f.port_changed is False
    assert f.stall_ms == 230.0
    assert f.stall_to_ms == pytest.approx(200.0)


def test_silent_since_the_fault_without_a_reset_is_stuck() -> None:
    (f,) = _flows([_kept("xwing-cf-0", last_rx=99.9, stall=2.1, stall_end=None, stall_open=True)], [])
    assert f.stuck and not f.reset and not f.survived
    assert f.source == f"{IP}:40000"  # the server never reported it: the pod's view


def test_age_at_the_fault_against_the_sync_interval() -> None:
    old, young = _flows(
        [_kept("xwing-cf-0", opened=99.9), _kept("xwing-sf-0", opened=99.95)],
        [_served("xwing-cf-0"), _served("xwing-sf-0")],
    )
    assert old.age_ms == pytest.approx(100.0)
    assert old.old is True
    assert young.age_ms == pytest.approx(50.0)
    assert young.old is False


def test_a_connection_that_never_opened_is_counted_apart() -> None:
    (f,) = _flows([_kept("xwing-sf-0", opened=None, end="open: TimeoutError()")], [])
    assert not f.opened and not f.reset
    summary = survival.summarize([f.to_json()])
    assert summary["failed_to_open"] == 1
    assert summary["connections"] == 0


def test_a_udp_flow_whose_mapping_changed() -> None:
    moved = {"xwing-udp-0": {"count": 50, "sources": [[f"{IP}:41000", 98.0], [f"{IP}:1024", 100.5]]}}
    (f,) = _flows([], [], udp=[_udp("xwing-udp-0")], server_udp=moved)
    assert f.port_changed is True
    assert f.faulted


def test_a_udp_flow_back_to_an_earlier_mapping_changed_too() -> None:
    back = {"xwing-udp-0": {"count": 50, "sources": [[f"{IP}:41000", 98.0]], "more_sources": 1}}
    (f,) = _flows([], [], udp=[_udp("xwing-udp-0")], server_udp=back)
    assert f.port_changed is True


def test_a_udp_flow_with_one_mapping_kept_it() -> None:
    same = {"xwing-udp-0": {"count": 50, "sources": [[f"{IP}:41000", 98.0]], "more_sources": 0}}
    (f,) = _flows([], [], udp=[_udp("xwing-udp-0")], server_udp=same)
    assert f.port_changed is False
    assert not f.stuck


def test_connections_of_the_other_ip_did_not_cross_the_fault() -> None:
    (f,) = _flows([_kept("ywing-cf-0")], [_served("ywing-cf-0", source="172.18.0.43:38000")])
    assert not f.faulted


def _round() -> dict[str, Any]:
    kept = [
        _kept("xwing-sf-0", opened=99.0, last_rx=100.0, stall=2.0, stall_end=None, stall_open=True),
        _kept("xwing-sf-1", opened=99.95, last_rx=100.0, stall=2.0, stall_end=None, stall_open=True),
        _kept("xwing-cf-0", opened=99.0, stall=0.05),
        _kept("xwing-cf-1", opened=99.0, stall=0.25),
        _kept("ywing-sf-0", opened=99.0, stall=0.03),
    ]
    served = [
        _served("xwing-sf-0", end="reset", ended=100.2),
        _served("xwing-sf-1", end="reset", ended=100.2),
        _served("xwing-cf-0"),
        _served("xwing-cf-1"),
        _served("ywing-sf-0", source="172.18.0.43:38000"),
    ]
    flows = _flows(kept, served, udp=[_udp("xwing-udp-0", stall=0.07)])
    return survival.round_json(flows, lags={"keepers": 4.0, "server": 2.0})


def test_summary_splits_resets_by_kind_age_and_faulted_gateway() -> None:
    s = _round()["summary"]
    assert s["connections"] == 5
    assert s["reset"] == 2
    assert s["survived"] == 3
    assert s["reset_by_kind"] == {"sf": {"reset": 2, "of": 3}, "cf": {"reset": 0, "of": 2}}
    assert s["reset_old"] == {"reset": 1, "of": 4}
    assert s["reset_young"] == {"reset": 1, "of": 1}
    assert s["reset_faulted"] == {"reset": 2, "of": 4}
    assert s["udp_flows"] == 1
    assert s["port_changes"] == {"tcp": 0, "udp": 0}
    assert s["loop_lag_ms"] == {"keepers": 4.0, "server": 2.0}


def test_stalls_count_only_the_connections_that_came_through() -> None:
    s = _round()["summary"]
    # survivors' stalls: 30, 50, 250 ms; the reset ones (2000 ms, open) are not in them
    assert s["stall_ms"] == {"p50": 50.0, "p99": pytest.approx(246.0), "max": 250.0}
    assert s["udp_stall_ms"]["max"] == 70.0


def test_a_different_sync_interval_moves_connections_between_old_and_young() -> None:
    flows = _round()["flows"]
    assert survival.summarize(flows, sync=0.01)["reset_young"] == {"reset": 0, "of": 0}
    assert survival.summarize(flows, sync=2.0)["reset_old"] == {"reset": 0, "of": 0}


def test_the_summary_over_rounds_adds_the_rounds_up() -> None:
    rounds: list[dict[str, Any]] = [
        {"round": 1, "connections": _round()},
        {"round": 2, "connections": _round()},
        {"round": 3},
    ]
    s = survival.over_rounds(rounds)
    assert s is not None
    assert (s["reset"], s["connections"]) == (4, 10)
    assert s["reset_by_kind"]["sf"] == {"reset": 4, "of": 6}
    assert s["loop_lag_ms"] == {"keepers": 4.0, "server": 2.0}
    assert survival.over_rounds([{"round": 1}]) is None


def test_the_text_names_the_figures() -> None:
    text = survival.line(_round()["summary"])
    assert "connections reset 2/5, 2/4 through the faulted gateway" in text
    assert "server-first 2/3, client-first 0/2" in text
    assert "older than 100 ms 1/4, younger 1/1" in text
    assert "stall p50/p99/max 50/246/250 ms" in text
    assert "port changes 0" in text


def test_the_report_carries_the_connections_summary_only_when_kept() -> None:
    assert "connections" not in report_json("kill", {}, [])["summary"]
