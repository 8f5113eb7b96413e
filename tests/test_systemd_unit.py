"""The systemd unit passes ``systemd-analyze verify`` without a single warning,
and keeps the properties the design relies on."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).parents[1] / "systemd" / "egressd.service"


def unit() -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return parser


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_unit_verifies_without_warnings(tmp_path: Path) -> None:
    egressd = Path(sys.executable).parent / "egressd"
    text = UNIT.read_text().replace("/usr/local/bin/egressd", str(egressd))
    copy = tmp_path / "egressd.service"
    copy.write_text(text)
    out = subprocess.run(
        ["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, check=False, timeout=60
    )
    ours = [line for line in (out.stdout + out.stderr).splitlines() if "egressd" in line]
    assert out.returncode == 0 and not ours, out.stdout + out.stderr


def test_unit_keeps_capabilities_minimal_and_restarts_fast() -> None:
    service = unit()["Service"]
    assert set(service["CapabilityBoundingSet"].split()) == {"CAP_NET_ADMIN", "CAP_NET_RAW"}
    assert set(service["AmbientCapabilities"].split()) == {"CAP_NET_ADMIN", "CAP_NET_RAW"}
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert service["Restart"] == "always"
    assert service["RestartSec"].endswith("ms") and int(service["RestartSec"][:-2]) <= 500
    assert "PrivateNetwork" not in service
    assert "--config /etc/egressd/egressd.yaml" in service["ExecStart"]


def test_cleanup_runs_only_on_a_real_stop() -> None:
    stop_post = unit()["Service"]["ExecStopPost"]
    assert '"$SERVICE_RESULT" = success' in stop_post and "egressd cleanup" in stop_post


def lines(key: str) -> list[str]:
    """Every value of a key that may repeat (configparser keeps only the last)."""
    return [line.split("=", 1)[1].strip() for line in UNIT.read_text().splitlines() if line.startswith(f"{key}=")]


def test_the_system_call_filter_drops_privileged_and_resource_calls() -> None:
    assert lines("SystemCallFilter") == ["@system-service", "~@privileged @resources"]
    service = unit()["Service"]
    assert service["SystemCallErrorNumber"] == "EPERM"
    assert service["SystemCallArchitectures"] == "native"


def test_proc_shows_processes_only() -> None:
    service = unit()["Service"]
    assert service["ProcSubset"] == "pid"
    assert service["ProtectProc"] == "invisible"


def test_a_bad_config_is_not_restarted_ten_times_a_second(tmp_path: Path) -> None:
    """systemd restarts a failed ExecStartPre like a crash, whatever
    RestartPreventExitStatus says: so no check may sit there. The config is
    checked by ExecStart itself, whose exit code 2 stops the restarts."""
    service = unit()["Service"]
    assert "ExecStartPre" not in service
    bad = tmp_path / "egressd.yaml"
    bad.write_text("node: {name: Not_A_Name}\ngroups: 7\n")
    argv = service["ExecStart"].replace("/etc/egressd/egressd.yaml", str(bad)).split()
    argv[0:1] = [sys.executable, "-m", "egressd.cli.main"]
    out = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
    assert str(out.returncode) in service["RestartPreventExitStatus"].split(), out.stderr
