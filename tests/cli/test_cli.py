"""The command line as a user meets it: exit codes, one-line errors, status."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from egressd import __version__
from egressd.apiserver.server import LabApiServer

EXAMPLE = Path(__file__).parents[2] / "config" / "egressd.yaml"


def egressd(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "egressd.cli.main", *argv], capture_output=True, text=True, timeout=timeout, check=False
    )


def test_version() -> None:
    out = egressd("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"egressd {__version__}"


def test_no_command_is_a_usage_error() -> None:
    assert egressd().returncode == 2


def test_check_config_accepts_the_example() -> None:
    out = egressd("check-config", str(EXAMPLE))
    assert out.returncode == 0, out.stderr
    assert "ok (node kind-worker3, 1 group(s), gateway candidate)" in out.stdout


def test_check_config_lists_every_problem_without_a_traceback(tmp_path: Path) -> None:
    data = yaml.safe_load(EXAMPLE.read_text())
    data["groups"][0]["egressIPs"] = ["172.18.0.42", "172.18.0.420"]
    data["groups"][0]["destinationCIDRs"] = ["172.18.0.1/16"]
    data["timing"]["leaseDuration"] = "1s"
    data["bogus"] = True
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    out = egressd("check-config", str(bad))
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    for field in ("groups[0].egressIPs[1]", "groups[0].destinationCIDRs[0]", "timing.leaseDuration", "bogus"):
        assert field in out.stderr, field
    assert "did you mean 172.18.0.0/16?" in out.stderr


def test_unreadable_and_malformed_files_are_one_line_errors(tmp_path: Path) -> None:
    missing = egressd("check-config", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "cannot read" in missing.stderr and "Traceback" not in missing.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("node:\n  name: [unclosed\n")
    out = egressd("check-config", str(broken))
    assert out.returncode == 2 and "not valid YAML at line" in out.stderr


def test_run_refuses_an_invalid_config_before_doing_anything(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("node: {}\n")
    out = egressd("run", "--config", str(bad), "--dataplane", "record")
    assert out.returncode == 2 and "node.name: is required" in out.stderr


def put_lease(url: str, ip: str, holder: str | None, transitions: int) -> None:
    import urllib.request  # noqa: PLC0415

    body = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": "egressd-" + ip.replace(".", "-"),
            "labels": {"app.kubernetes.io/managed-by": "egressd"},
            "annotations": {"egressd.io/egress-ip": ip},
        },
        "spec": {
            "holderIdentity": holder,
            "leaseDurationSeconds": 3,
            "leaseTransitions": transitions,
            "renewTime": "2026-11-24T14:00:00.000000Z",
        },
    }
    req = urllib.request.Request(
        f"{url}/apis/coordination.k8s.io/v1/namespaces/egressd/leases",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    urllib.request.urlopen(req, timeout=5).close()


def test_status_shows_holders_epochs_and_this_nodes_role(api_server: LabApiServer, tmp_path: Path) -> None:
    put_lease(api_server.url, "172.18.0.42", "kind-worker3", 4)
    put_lease(api_server.url, "172.18.0.43", "kind-worker4", 1)
    data = yaml.safe_load(EXAMPLE.read_text())
    data["kubernetes"]["url"] = api_server.url
    cfg = tmp_path / "node.yaml"
    cfg.write_text(yaml.safe_dump(data))
    table = egressd("status", "--config", str(cfg), "--no-kernel")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == [
        "EGRESS",
        "IP",
        "GROUP",
        "HOLDER",
        "EPOCH",
        "RENEWED",
        "THIS",
        "NODE",
        "RIGHT",
        "KERNEL",
        "LAST",
        "TRANSITION",
    ]
    assert lines[1].split()[:4] == ["172.18.0.42", "outpost", "kind-worker3", "4"] and " owner " in lines[1]
    assert lines[2].split()[:4] == ["172.18.0.43", "outpost", "kind-worker4", "1"] and " candidate " in lines[2]
    assert "daemon: not reachable" in table.stdout
    as_json = json.loads(egressd("status", "--config", str(cfg), "--json", "--no-kernel").stdout)
    assert [(r["egressIP"], r["holder"], r["role"]) for r in as_json["leases"]] == [
        ("172.18.0.42", "kind-worker3", "owner"),
        ("172.18.0.43", "kind-worker4", "candidate"),
    ]


def test_status_with_an_unreachable_api_is_a_one_line_error(tmp_path: Path) -> None:
    data = yaml.safe_load(EXAMPLE.read_text())
    data["kubernetes"]["url"] = "http://127.0.0.1:9"
    cfg = tmp_path / "node.yaml"
    cfg.write_text(yaml.safe_dump(data))
    out = egressd("status", "--config", str(cfg), "--no-kernel")
    assert out.returncode == 1
    assert "Traceback" not in out.stderr and out.stderr.count("\n") == 1


def test_handoff_refuses_an_unknown_ip_and_a_non_candidate() -> None:
    out = egressd("handoff", "10.1.1.1", "--to", "kind-worker4", "--config", str(EXAMPLE))
    assert out.returncode == 1 and "10.1.1.1 is not an egress IP of this config" in out.stderr
    out = egressd("handoff", "172.18.0.42", "--to", "kind-worker", "--config", str(EXAMPLE))
    assert out.returncode == 1 and "--to kind-worker: not a candidate of group outpost" in out.stderr
    out = egressd("handoff", "not-an-ip", "--to", "kind-worker4", "--config", str(EXAMPLE))
    assert out.returncode == 2 and "not an IP address" in out.stderr


@pytest.mark.parametrize("incarnation", [None, "3f9c2b0d11aa4e57"], ids=["node-address", "loopback"])
def test_status_prints_the_daemon_with_or_without_its_incarnation(
    incarnation: str | None, capsys: pytest.CaptureFixture[str]
) -> None:
    """A daemon's /status on the node address leaves the incarnation out; the table still prints."""
    from egressd.cli.ops import _print_table  # noqa: PLC0415

    daemon = {"node": "kind-worker3", "healthy": True, "problems": []}
    if incarnation:
        daemon["incarnation"] = incarnation
    _print_table({"node": "kind-worker3", "daemon": daemon, "kernelReadable": True, "leases": []})
    out = capsys.readouterr().out
    expected = f"daemon: incarnation {incarnation}, healthy" if incarnation else "daemon: healthy"
    assert expected in out.splitlines()


def test_status_shows_the_right_each_ip_is_served_on(capsys: pytest.CaptureFixture[str]) -> None:
    """The daemon's view of each member: an owner's right (api or peer), '-' for the others."""
    from egressd.cli.ops import _print_table  # noqa: PLC0415

    def row(ip: str, holder: str, role: str, right: str | None) -> dict[str, object]:
        member = {"egressIP": ip, "state": "owner" if right else "standby", "right": right}
        return {
            "egressIP": ip, "group": "outpost", "holder": holder, "holderAddress": None, "epoch": 3,
            "renewedSecondsAgo": None, "role": role, "daemon": member,
        }  # fmt: skip

    daemon = {
        "node": "gw-a",
        "healthy": True,
        "problems": [],
        "right": {"source": "peer", "reason": "peer", "secondsLeft": 0.71},
        "peerRightSeconds": 12.25,
        "mesh": {
            "heartbeatsSent": 40,
            "promisesGiven": 38,
            "promisesReceived": 39,
            "promisesHeld": {"gw-b": 1.5},
            "promisedTo": {"gw-b": 1.9},
            "rejected": {"bad-signature": 2},
        },
    }
    leases = [row("172.18.0.42", "gw-a", "owner", "peer"), row("172.18.0.43", "gw-b", "candidate", None)]
    _print_table({"node": "gw-a", "daemon": daemon, "kernelReadable": False, "leases": leases})
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[7:9] == ["NODE", "RIGHT"]
    assert lines[1].split()[5:7] == ["owner", "peer"]
    assert lines[2].split()[5:7] == ["candidate", "-"]
    assert "right: peer (peer, 0.71s left); 12.2s on peer rights since start" in lines
    assert "mesh: 40 heartbeat(s) sent, 39 promise(s) taken, 38 given; promises held: gw-b 1.50s" in lines
    assert "mesh: datagrams rejected: bad-signature 2" in lines
