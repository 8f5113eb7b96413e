"""Chaos drills: the pure analysis on synthetic events, one real round of every scenario, the demo.

The analysis tests need nothing. The drill tests share one lab for the module
(a unique prefix, a temporary state dir, removed even when a test fails) and
run ``egressd drill`` one round per scenario, ``api-outage`` with a 5 s pause;
they assert the safety invariant (no time with two owners) and that the gap
ends, with generous bounds only. The demo builds and removes its own lab.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import secrets
import socket
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from egressd.cli import drill as drill_cli
from egressd.lab.demo import demo
from egressd.lab.drill import (
    SCENARIOS,
    Claim,
    arp_request,
    bpf_program,
    double_answers,
    dual_owner_intervals,
    outage_gap,
    parse_frame,
    percentile,
    summarize,
    union_length,
)
from egressd.lab.netlab import Lab, lab_processes, netns_list

# --- the analysis ----------------------------------------------------------------------------


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


def test_arp_request_parses_back() -> None:
    mac = bytes.fromhex("02e9d0000001")
    frame = arp_request(mac, "172.18.255.254", "172.18.0.42")
    assert len(frame) == 60
    parsed = parse_frame(frame)
    assert parsed is not None
    assert (parsed.kind, parsed.op, parsed.src_mac) == ("arp", 1, "02:e9:d0:00:00:01")
    assert (parsed.sender_ip, parsed.target_ip) == ("172.18.255.254", "172.18.0.42")


def test_probe_frames_parse_with_prober_and_sequence() -> None:
    payload = b"xwing.1 42 123.456000"
    udp = struct.pack("!HHHH", 40000, 9000, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, socket.inet_aton("172.18.0.42"),
                     socket.inet_aton("172.18.0.7"))  # fmt: skip
    eth = bytes.fromhex("aabbccddeeff") + bytes.fromhex("020000000005") + b"\x08\x00"
    parsed = parse_frame(eth + ip + udp)
    assert parsed is not None
    assert (parsed.kind, parsed.src_mac, parsed.sender_ip) == ("probe", "02:00:00:00:00:05", "172.18.0.42")
    assert (parsed.prober, parsed.seq) == ("xwing.1", 42)
    assert parse_frame(eth + ip + struct.pack("!HHHH", 40000, 53, 8, 0)) is None


def test_bpf_program_jumps_stay_inside_it() -> None:
    prog = bpf_program(["172.18.0.42", "172.18.0.43"])
    for i, (code, jt, jf, _) in enumerate(prog):
        if code == 0x15:
            assert i + 1 + jt < len(prog)
            assert i + 1 + jf < len(prog)
    assert prog[-1] == (0x06, 0, 0, 256)
    assert prog[-2] == (0x06, 0, 0, 0)


# --- real drills -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def netlab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.skip("the lab needs root (network namespaces)")
    lab = Lab(f"egd{secrets.token_hex(2)}-", tmp_path_factory.mktemp("drill-state"))
    try:
        lab.up()
        yield lab
    finally:
        lab.down()


def _drill(lab: Lab, *argv: str) -> int:
    parser = argparse.ArgumentParser(prog="egressd")
    drill_cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["drill", "--state-dir", str(lab.state.path), "--settle-timeout", "30", *argv])
    return drill_cli.run(args)


#: Scenarios whose outage must end within the round (generous bound).
ENDING = {"graceful", "kill", "link-cut", "freeze", "api-partition"}


@pytest.mark.kernel
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_one_round_never_has_two_owners(netlab: Lab, scenario: str, tmp_path: Path) -> None:
    out = tmp_path / f"{scenario}.json"
    extra = ["--outage-seconds", "5"] if scenario == "api-outage" else []
    plot = ["--plot", str(tmp_path / "round.png")] if scenario == "graceful" else []
    code = _drill(netlab, "--scenario", scenario, "--rounds", "1", "--json", str(out), *extra, *plot)
    report = json.loads(out.read_text())
    assert report["scenario"] == scenario
    assert report["timings"]["leaseDuration"] == 2.5
    (r,) = report["rounds"]
    assert {"gap_ms", "dual_owner_ms", "lost_probes", "timeline"} <= set(r)
    assert r["dual_owner_ms"] == 0, r["timeline"]["dual_owner"]
    assert r["double_answers"] == 0
    assert report["summary"]["dual_owner_ms"] == 0
    assert r["settled"], r
    assert code == 0
    assert r["probes_sent"] > 500
    if scenario in ENDING:
        assert r["timeline"]["lease"], "the lease poller saw no change"
        assert r["gap_ms"] is not None and 0 < r["gap_ms"] < 15_000, r["timeline"]["gaps"]
        assert r["carriers"], r
    if plot:
        png = (tmp_path / "round.png").read_bytes()
        assert png.startswith(b"\x89PNG")


@pytest.mark.kernel
def test_drill_leaves_the_lab_as_it_found_it(netlab: Lab) -> None:
    status = netlab.status()
    assert all(n["state"] == "running" and not n["held"] for n in status["nodes"])
    assert all(ip["holder"] for ip in status["egressIPs"])
    assert netlab.exec("kind-worker3", ["nft", "list", "table", "inet", "lab_partition"]).returncode != 0


# --- the demo --------------------------------------------------------------------------------


@pytest.mark.kernel
@pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root (network namespaces)")
@pytest.mark.parametrize("mode", ["static", "kubernetes"])
def test_demo_runs_end_to_end_and_removes_its_lab(tmp_path: Path, mode: str) -> None:
    prefix = f"egm{secrets.token_hex(2)}-"
    lines: list[str] = []
    try:
        code = demo(prefix, tmp_path / "state", out=lines.append, mode=mode)
    finally:
        Lab(prefix, tmp_path / "state").down()
    text = "\n".join(lines)
    assert code == 0, text
    assert '"allowed": true' in text
    assert "403" in text and "10.244.1.3" in text
    assert "the traffic moved from" in text
    assert "UNEXPECTED" not in text
    if mode == "kubernetes":
        assert "tiefighter is selected now" in text and "policy status: 172.18.0.42 on kind-worker" in text
    assert not any(ns.startswith(prefix) for ns in netns_list())
    assert lab_processes(prefix) == []
