"""Timing profiles of the lab and the drill: read, overridden by flags, checked like a daemon's
config (naming the field) before anything starts, and written into every daemon's config."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import yaml

from egressd.cli import drill as drill_cli
from egressd.cli import lab as lab_cli
from egressd.core.config import parse_settings
from egressd.lab.netlab import Lab
from egressd.lab.netns import LabError
from egressd.lab.timing import FLAGS, resolve_timing

FAST = Path(__file__).resolve().parents[2] / "config" / "timing-fast.yaml"


def test_the_fast_profile_passes_every_inequality_and_is_faster_than_the_defaults() -> None:
    timing = resolve_timing(FAST)
    parsed = parse_settings({"node": {"name": "n", "address": "192.0.2.1"}, "timing": timing}).timing
    assert parsed.lease_duration <= 0.5
    assert parsed.fence_ttl > 0  # (T1) rests on the nftables fence, measured to 6 ms
    assert parsed.check() == []


def test_flags_override_single_keys_of_the_file(tmp_path: Path) -> None:
    timing = resolve_timing(FAST, {"leaseDuration": 0.6, "renewDeadline": None})
    assert timing["leaseDuration"] == 0.6
    assert timing["renewDeadline"] == "150ms"
    assert resolve_timing(None, {"leaseDuration": 3.0}) == {"leaseDuration": 3.0}
    assert resolve_timing(None, {}) == {}


def test_a_bad_profile_is_refused_naming_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("timing:\n  leaseDuration: 0.3\n  retryPeriod: 50ms\n  renewDeadline: 150ms\n  apiTimeout: 100ms\n")
    with pytest.raises(LabError, match=r"timing\.leaseDuration: \(T1\)"):
        resolve_timing(bad)
    with pytest.raises(LabError, match=r"timing\.apiTimeout: \(T3\)"):
        resolve_timing(FAST, {"apiTimeout": 0.2})
    bad.write_text("timing:\n  leaseDuraton: 3\n")
    with pytest.raises(LabError, match=r"timing\.leaseDuraton: unknown key.*leaseDuration"):
        resolve_timing(bad)
    bad.write_text("node: {name: x}\ntiming: {}\n")
    with pytest.raises(LabError, match="only 'timing:' belongs"):
        resolve_timing(bad)
    bad.write_text("leaseDuration: 3\n")
    with pytest.raises(LabError, match="timing:' section"):
        resolve_timing(bad)
    with pytest.raises(LabError, match="No such file"):
        resolve_timing(tmp_path / "missing.yaml")
    with pytest.raises(LabError, match=r"timing\.retryPeriod: must be seconds"):
        resolve_timing(None, {"retryPeriod": "soon"})


def test_every_timing_key_has_a_flag() -> None:
    assert FLAGS["leaseDuration"] == "--lease-duration"
    assert FLAGS["fenceTtl"] == "--fence-ttl"
    parser = argparse.ArgumentParser(prog="egressd")
    lab_cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["lab", "up", "--timing", str(FAST), "--lease-duration", "0.6", "--retry-period", "40ms"])
    timing = lab_cli.timing_from_args(args)
    assert timing["leaseDuration"] == 0.6 and timing["retryPeriod"] == "40ms"


def test_the_lab_writes_the_profile_into_every_daemon_config_and_keeps_it(tmp_path: Path) -> None:
    timing = resolve_timing(FAST)
    lab = Lab("hx-", tmp_path, timing=timing)
    for node in lab.scenario.nodes:
        config = lab.daemon_config(node.name)
        assert config["timing"] == timing
        assert parse_settings(config).timing.lease_duration == 0.4
        # the mesh is on, its promises no longer than the fast profile's lease (M1)
        assert config["mesh"] == {"keyFile": str(lab.mesh_key_file), "promiseDuration": 0.4}
    lab.state.path.mkdir(parents=True, exist_ok=True)
    lab._write_state("up")
    assert Lab.attach(tmp_path).scenario.timing == timing
    assert "timing" not in Lab("hx-", tmp_path / "other").daemon_config("kind-worker3")


def _refuses_before_starting(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    started: list[str] = []
    monkeypatch.setattr(Lab, "up", lambda self, **_: started.append("up"))
    monkeypatch.setattr(Lab, "_check_free", lambda self: started.append("check"))
    return started


def test_lab_up_refuses_a_bad_profile_before_anything_starts(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    started = _refuses_before_starting(monkeypatch)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"timing": {"leaseDuration": 1.0}}))
    parser = argparse.ArgumentParser(prog="egressd")
    lab_cli.add_parser(parser.add_subparsers(dest="command"))
    state = tmp_path / "state"
    code = lab_cli.run(parser.parse_args(["lab", "up", "--state-dir", str(state), "--timing", str(bad)]))
    assert code == 1
    assert "timing.leaseDuration: (T1)" in capsys.readouterr().err
    assert started == [] and not state.exists()


def test_drill_refuses_a_bad_profile_before_anything_starts(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    started = _refuses_before_starting(monkeypatch)
    parser = argparse.ArgumentParser(prog="egressd")
    drill_cli.add_parser(parser.add_subparsers(dest="command"))
    state = tmp_path / "state"
    base = ["drill", "--scenario", "link-cut", "--state-dir", str(state)]
    code = drill_cli.run(parser.parse_args([*base, "--timing", str(FAST), "--renew-deadline", "0.05"]))
    assert code == 1
    assert "timing.renewDeadline: (T2)" in capsys.readouterr().err
    code = drill_cli.run(parser.parse_args([*base, "--scenario", "double-fault", "--outage", "2", "--kill-after", "3"]))
    assert code == 2
    assert "kill-after" in capsys.readouterr().err
    assert started == [] and not state.exists()
