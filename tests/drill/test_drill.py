"""Chaos drills: one real round of every scenario through ``egressd drill``.

The tests share one lab for the module (a unique prefix, a temporary state
dir, removed even when a test fails) and run ``egressd drill`` one round per
scenario, ``api-outage`` and ``double-fault`` with a 5 s pause, ``peer-partition`` with a 3 s
partition (so one round of peer-partition and isolate each); they assert the safety invariant (no
time with two owners) and that the gap ends, with generous bounds only. The
pure analysis is in ``test_analysis.py``, the frames in ``test_frames.py``, the
demo in ``tests/lab/test_demo.py``.
"""

from __future__ import annotations

import argparse
import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from egressd.cli import drill as drill_cli
from egressd.drill.faults import SCENARIOS
from egressd.lab.netlab import Lab


@pytest.fixture(scope="module")
def netlab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
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
ENDING = {"graceful", "kill", "link-cut", "freeze", "isolate", "double-fault"}

#: Short holds, so that a round takes seconds.
HOLDS = {
    "api-outage": ["--outage", "5"],
    "double-fault": ["--outage", "5"],
    "peer-partition": ["--partition", "3"],
    "api-partition": ["--partition", "3"],
    "baseline": ["--quiet", "3"],
}


@pytest.mark.kernel
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_one_round_never_has_two_owners(netlab: Lab, scenario: str, tmp_path: Path) -> None:
    out = tmp_path / f"{scenario}.json"
    extra = HOLDS.get(scenario, [])
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
    if scenario in ("peer-partition", "api-partition", "baseline"):
        # the API right (peer-partition) or the peers' promises (api-partition) keep the IP served
        assert r["gap_ms"] is not None and r["gap_ms"] < 1000, r["timeline"]["gaps"]
        assert all(c["before"] == c["after"] for c in r["carriers"].values()), r["carriers"]
    if scenario == "double-fault":
        steps = [s["action"] for s in r["timeline"]["steps"]]
        assert steps[0].startswith("SIGKILL") and steps[-1].endswith("after the IP moved"), steps
        assert r["served_after_recover_ms"] is not None and r["served_after_recover_ms"] < 15_000
    if plot:
        png = (tmp_path / "round.png").read_bytes()
        assert png.startswith(b"\x89PNG")


@pytest.mark.kernel
def test_drill_leaves_the_lab_as_it_found_it(netlab: Lab) -> None:
    status = netlab.status()
    assert all(n["state"] == "running" and not n["held"] for n in status["nodes"])
    assert all(ip["holder"] for ip in status["egressIPs"])
    for gateway in ("kind-worker3", "kind-worker4"):
        for table in ("lab_partition", "lab_peers"):
            assert netlab.exec(gateway, ["nft", "list", "table", "inet", table], capture_output=True).returncode != 0
