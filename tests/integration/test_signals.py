"""Stop signals on a real ``egressd run`` process: SIGTERM and SIGHUP, during
start-up or while serving, end it gracefully (exit 0, IPs handed over),
never by the signal's default action."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from egressd.apiserver.server import LabApiServer

pytestmark = pytest.mark.integration

IP = "172.18.0.42"


def holder(url: str) -> Any:
    with urllib.request.urlopen(f"{url}/apis/coordination.k8s.io/v1/namespaces/egressd/leases", timeout=2) as resp:
        items = json.load(resp)["items"]
    return items[0]["spec"].get("holderIdentity", "") if items else None


def start(tmp: Path, url: str) -> subprocess.Popen[str]:
    cfg = tmp / "egressd.yaml"
    cfg.write_text(
        json.dumps(
            {
                "node": {"name": "gw-a", "address": "10.0.0.1"},
                "kubernetes": {"access": "url", "url": url, "namespace": "egressd"},
                "metrics": {"listen": ""},
                "groups": [
                    {
                        "name": "outpost",
                        "egressIPs": [IP],
                        "interface": "net0",
                        "candidates": ["gw-a", "gw-b"],
                        "sourceCIDRs": ["10.244.1.0/24"],
                        "destinationCIDRs": ["172.18.0.0/16"],
                    }
                ],
            }
        )
    )
    command = ["run", "--config", str(cfg), "--dataplane", "record", "--log-level", "debug"]
    return subprocess.Popen(
        [sys.executable, "-m", "egressd.cli.main", *command],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )


def read_until(proc: subprocess.Popen[str], text: str, timeout: float = 20.0) -> str:
    assert proc.stderr is not None
    seen = ""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        line = proc.stderr.readline()
        if not line:
            break
        seen += line
        if text in line:
            return seen
    raise AssertionError(f"{text!r} not logged; got:\n{seen}")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_a_stop_signal_during_start_up_ends_the_daemon_cleanly(
    sig: signal.Signals, tmp_path: Path, api_server: LabApiServer
) -> None:
    proc = start(tmp_path, api_server.url)
    try:
        # the first line egressd logs; loading the config, the client and the loop comes after
        read_until(proc, "stop signals (SIGTERM, SIGINT, SIGHUP) held")
        proc.send_signal(sig)
        _, rest = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0, rest
    assert f"stop requested: {sig.name} (received during start-up)" in rest
    assert "egressd stopped" in rest
    assert holder(api_server.url) is None, "nothing was acquired after the stop"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_a_stop_signal_while_serving_hands_the_ip_over(
    sig: signal.Signals, tmp_path: Path, api_server: LabApiServer
) -> None:
    proc = start(tmp_path, api_server.url)
    try:
        read_until(proc, "acquired the lease")
        assert holder(api_server.url) == "gw-a"
        proc.send_signal(sig)
        _, rest = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0, rest
    assert f"stop requested: {sig.name}" in rest
    assert "released the lease (shutdown; successor gw-b)" in rest
    assert holder(api_server.url) == "", "released to the next candidate"
