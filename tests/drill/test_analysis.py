"""The pure analysis of a drill on synthetic events: gaps, dual ownership, double answers, summary."""

from __future__ import annotations

import math
from typing import Any

import pytest

from egressd.drill.analysis import (
    Arrival,
    Claim,
    Gap,
    Sent,
    double_answers,
    dual_anatomy,
    dual_owner_intervals,
    gap_anatomy,
    outage_gap,
    percentile,
    summarize,
    transit_times,
    union_length,
)


def test_gap_is_the_longest_hole_that_ends_after_the_fault() -> None:
    good = [0.0, 0.005, 0.010, 0.015, 1.5, 1.505, 1.6]
    gap = outage_gap(good, fault=0.012)
    assert (gap.start, gap.end) == (0.015, 1.5)
    assert gap.seconds == pytest.approx(1.485)


def test_gap_counts_from_the_last_good_probe_before_the_fault() -> None:
    gap = outage_gap([0.0, 0.005, 0.3, 0.305], fault=0.1)
    assert (gap.start, gap.end) == (0.005, 0.3)


def test_a_hole_before_the_fault_does_not_count() -> None:
    gap = outage_gap([0.0, 2.0, 2.005, 2.010, 2.015], fault=2.007)
    assert gap.seconds == pytest.approx(0.005)


def test_gap_without_recovery_has_no_end() -> None:
    gap = outage_gap([0.0, 0.005], fault=0.006)
    assert gap.end is None
    assert gap.seconds is None


def test_a_gap_with_no_probe_sent_inside_is_the_probers_own() -> None:
    # the prober sends every 5 ms, then stalls 30 ms between seq 2 and 3; every probe arrives
    sent = [Sent("p", 0, 0.0), Sent("p", 1, 0.005), Sent("p", 2, 0.010), Sent("p", 3, 0.040)]
    arrivals = [Arrival("p", s.seq, s.t + 0.001, "ip") for s in sent]
    bridge = [Claim(s.t + 0.0005, "ip", "a", "probe", "p", s.seq) for s in sent]
    anatomy = gap_anatomy(Gap(0.011, 0.041), "p", sent, arrivals, bridge)
    assert anatomy.probes_between == 0
    assert anatomy.send_gap == pytest.approx(0.030)
    assert anatomy.delay_before == pytest.approx(0.001) and anatomy.delay_after == pytest.approx(0.001)
    assert anatomy.bridge_before == pytest.approx(0.0005) and anatomy.bridge_after == pytest.approx(0.0005)


def test_a_gap_over_unserved_probes_counts_them() -> None:
    # probes 2..5 sent on time but never arrived: an interruption of service
    sent = [Sent("p", i, 0.005 * i) for i in range(8)]
    arrivals = [Arrival("p", s.seq, s.t + 0.002, "ip") for s in sent if s.seq not in (2, 3, 4, 5)]
    anatomy = gap_anatomy(Gap(0.007, 0.032), "p", sent, arrivals, [])
    assert anatomy.probes_between == 4
    assert anatomy.send_gap == pytest.approx(0.025)
    assert anatomy.bridge_after is None
    assert anatomy.to_json()["probes_between"] == 4


def test_a_gap_without_an_end_has_no_anatomy() -> None:
    sent = [Sent("p", 0, 0.0)]
    anatomy = gap_anatomy(Gap(0.001, None), "p", sent, [Arrival("p", 0, 0.001, "ip")], [])
    assert anatomy.probes_between is None and anatomy.send_gap is None
    assert anatomy.delay_before == pytest.approx(0.001)


def test_transit_counts_good_probes_once_from_send_to_record() -> None:
    sent = [Sent("p", i, 0.005 * i) for i in range(4)]
    arrivals = [
        Arrival("p", 0, 0.001, "ip"),
        Arrival("p", 1, 0.007, "ip"),
        Arrival("p", 1, 0.009, "ip"),  # recorded twice: the first record counts
        Arrival("p", 2, 0.030, "other"),  # not SNATed: not served
        Arrival("p", 3, 0.018, "ip"),
    ]
    assert transit_times(sent, arrivals, frozenset({"ip"})) == pytest.approx([0.001, 0.002, 0.003])
    summary = summarize([{"gap_ms": 5.0, "transit_ms": {"max": 3.0}}, {"gap_ms": 9.0, "transit_ms": {"max": 7.5}}])
    assert summary["transit_max_ms"] == 7.5
    assert summarize([{"gap_ms": 5.0}])["transit_max_ms"] is None


def _claims(ip: str, node: str, times: list[float], kind: str = "probe") -> list[Claim]:
    return [Claim(t, ip, node, kind) for t in times]


def test_a_clean_move_is_not_a_dual_owner() -> None:
    claims = _claims("ip", "a", [0.0, 0.005, 0.010]) + _claims("ip", "b", [0.5, 0.505])
    assert dual_owner_intervals(claims, window=0.01) == []


def test_a_move_exactly_one_window_later_is_not_a_dual_owner() -> None:
    claims = _claims("ip", "a", [0.0]) + _claims("ip", "b", [0.01])
    assert dual_owner_intervals(claims, window=0.01) == []


def test_interleaved_claims_are_a_dual_owner_interval() -> None:
    claims = _claims("ip", "a", [0.000, 0.005, 0.010, 0.015, 0.020]) + _claims("ip", "b", [0.012, 0.017])
    (d,) = dual_owner_intervals(claims, window=0.01)
    assert d.ip == "ip"
    assert d.nodes == ("a", "b")
    assert (d.start, d.end) == pytest.approx((0.012, 0.027))


def test_a_move_faster_than_the_window_counts_but_its_claims_did_not_interleave() -> None:
    claims = _claims("ip", "a", [0.000, 0.005, 0.0156]) + _claims("ip", "b", [0.0248, 0.030])
    (d,) = dual_owner_intervals(claims, window=0.01)
    assert d.length == pytest.approx(0.0008)
    assert dual_anatomy(d, claims, window=0.01) == {"interleaved": False, "separation_ms": 9.2}
    interleaved = claims + _claims("ip", "a", [0.026])  # a claims again after b's first claim
    d = dual_owner_intervals(interleaved, window=0.01)[-1]
    assert dual_anatomy(d, interleaved, window=0.01) == {"interleaved": True, "separation_ms": None}
    overlapping = _claims("ip", "a", [0.000, 0.005, 0.010, 0.015, 0.020]) + _claims("ip", "b", [0.012, 0.017])
    (d,) = dual_owner_intervals(overlapping, window=0.01)
    assert dual_anatomy(d, overlapping, window=0.01)["interleaved"]


def test_dual_owner_is_per_ip_and_the_total_counts_overlaps_once() -> None:
    claims = (
        _claims("x", "a", [0.0])
        + _claims("x", "b", [0.004])
        + _claims("y", "a", [0.002])
        + _claims("y", "b", [0.006])
        + _claims("z", "c", [0.0])  # one node alone: never dual
    )
    duals = dual_owner_intervals(claims, window=0.01)
    assert [(d.ip, round(d.length, 6)) for d in duals] == [("x", 0.006), ("y", 0.006)]
    assert union_length(duals) == pytest.approx(0.008)  # [0.004, 0.012)


def test_two_answers_to_one_arp_request() -> None:
    requests = {"ip": [0.0, 0.01, 0.02]}
    claims = [
        Claim(0.0011, "ip", "a", "answer"),
        Claim(0.0113, "ip", "a", "answer"),
        Claim(0.0114, "ip", "b", "answer"),
        Claim(0.0115, "ip", "b", "garp"),  # not an answer
        Claim(0.0213, "ip", "b", "answer"),
    ]
    assert double_answers(requests, claims) == [(0.01, "ip", {"a", "b"})]


def test_percentiles_interpolate_between_ranks() -> None:
    assert percentile([], 50) is None
    assert percentile([7.0], 99) == 7.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile(list(map(float, range(1, 101))), 99) == pytest.approx(99.01)


def test_summary_counts_an_unrecovered_round_as_infinite() -> None:
    rounds: list[dict[str, Any]] = [
        {"gap_ms": 10.0, "dual_owner_ms": 0.0, "lost_probes": 1, "probes_sent": 100},
        {"gap_ms": 30.0, "dual_owner_ms": 2.5, "lost_probes": 2, "probes_sent": 100},
        {"gap_ms": 20.0, "dual_owner_ms": 0.0, "lost_probes": 0, "probes_sent": 100},
    ]
    s = summarize(rounds)
    assert s["gap_ms"] == {"p50": 20.0, "p99": 29.8, "max": 30.0}
    assert (s["dual_owner_ms"], s["lost_probes"], s["probes_sent"]) == (2.5, 3, 300)
    s = summarize([*rounds, {"gap_ms": None}])
    assert s["gap_ms"]["max"] is None
    assert s["unrecovered_rounds"] == 1
    assert not math.isinf(s["gap_ms"]["p50"])
