"""The lab in network namespaces: topology, API objects, supervision, drills' handles, teardown.

One lab serves the module (``up`` takes seconds); the daemons use the record
data plane, so nothing steers the pods and the outpost sees their pod
addresses. The tests that tear a lab down build their own.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from egressd.cli import lab as lab_cli
from egressd.cli.main import load_settings
from egressd.core.errors import ConfigError
from egressd.lab.netlab import Lab, lab_processes
from egressd.lab.netns import LabError, netns_list
from egressd.lab.outpost import decode_echo, encode_probe, monotonic
from egressd.lab.scenario import REFERENCE
from tests.lab.reference import read_log

pytestmark = pytest.mark.kernel

OUTPOST = "http://172.18.0.7:8000/"


def _prefix() -> str:
    return f"egt{secrets.token_hex(2)}-"


@pytest.fixture(scope="module")
def netlab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    lab = Lab(_prefix(), tmp_path_factory.mktemp("lab-state"), dataplane="record")
    try:
        lab.up()
        yield lab
    finally:
        lab.down()


def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="egressd")
    lab_cli.add_parser(parser.add_subparsers(dest="command"))
    return lab_cli.run(parser.parse_args(["lab", *argv]))


def _gone(pids: list[int]) -> bool:
    """No pid of ``pids`` runs (a zombie waiting for init to reap it counts as gone)."""

    def running(pid: int) -> bool:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        return stat.rpartition(")")[2].split()[0] != "Z"

    return not any(running(p) for p in pids)


def _wait(predicate: Any, timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_namespaces_and_links(netlab: Lab) -> None:
    assert set(netlab.namespaces) <= netns_list()
    assert len(netlab.namespaces) == 1 + len(REFERENCE.nodes) + 1 + len(REFERENCE.pods)
    # nothing of the lab in the root namespace
    root_links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    assert "lxc-xwing" not in root_links
    assert "w3-net0" not in root_links
    ports = netlab.exec("switch", ["ip", "-o", "link", "show", "master", "kind"], capture_output=True, text=True).stdout
    assert {"cp-eth0", "w1-eth0", "w2-eth0", "w3-eth0", "w3-net0", "w4-eth0", "w4-net0", "op-eth0"} == {
        line.split(":")[1].strip().split("@")[0] for line in ports.splitlines()
    }
    net0 = netlab.exec(
        "kind-worker3", ["ip", "-4", "-o", "addr", "show", "dev", "net0"], capture_output=True, text=True
    )
    assert net0.returncode == 0
    assert net0.stdout == ""  # no address until egressd adds an egress IP
    sysctl = netlab.exec(
        "kind-worker3",
        ["sysctl", "-n", "net.ipv4.ip_forward", "net.ipv4.conf.net0.arp_ignore", "net.ipv4.conf.net0.arp_announce"],
        capture_output=True,
        text=True,
    )
    assert sysctl.stdout.split() == ["1", "1", "2"]
    route = netlab.exec("outpost", ["ip", "route", "get", "10.244.2.2"], capture_output=True, text=True).stdout
    assert "via 172.18.0.4 dev eth0" in route


def test_unsteered_pods_reach_the_outpost_with_their_pod_address(netlab: Lab) -> None:
    start = monotonic()
    status, body = netlab.http("xwing", OUTPOST)
    assert (status, json.loads(body)) == (403, {"ip": "10.244.1.2", "allowed": False})
    curl = netlab.exec("tiefighter", ["curl", "-s", "--max-time", "2", OUTPOST], capture_output=True, text=True)
    assert curl.returncode == 0
    assert json.loads(curl.stdout) == {"ip": "10.244.1.3", "allowed": False}
    records = _wait(
        lambda: [r for r in read_log(netlab.outpost_log) if r["kind"] == "http" and r["t"] >= start][:2] or None,
        what="the outpost log",
    )
    assert [r["src"] for r in records][:1] == ["10.244.1.2"]
    assert all(r["status"] == 403 for r in records)


def test_udp_probe_from_a_pod_is_echoed(netlab: Lab) -> None:
    with netlab.socket("ywing", socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        s.sendto(encode_probe("ywing", 1, monotonic()), ("172.18.0.7", 9000))
        probe, seen = decode_echo(s.recv(512))
    assert probe is not None
    assert (probe.prober, probe.seq, seen) == ("ywing", 1, "10.244.2.2")


def test_api_server_holds_the_scenario(netlab: Lab) -> None:
    status, nodes = netlab.api("GET", "/api/v1/nodes")
    assert status == 200
    by_name = {n["metadata"]["name"]: n for n in nodes["items"]}
    assert set(by_name) == {n.name for n in REFERENCE.nodes}
    for name in ("kind-worker3", "kind-worker4"):
        assert by_name[name]["metadata"]["labels"]["egress-gw"] == "true"
        assert {"key": "egress-gw", "effect": "NoSchedule"} in by_name[name]["spec"]["taints"]
    assert "egress-gw" not in by_name["kind-worker"]["metadata"]["labels"]
    assert {"type": "InternalIP", "address": "172.18.0.5"} in by_name["kind-worker3"]["status"]["addresses"]
    status, pods = netlab.api("GET", "/api/v1/namespaces/default/pods?labelSelector=org%3Dalliance")
    assert status == 200
    assert {(p["metadata"]["name"], p["spec"]["nodeName"], p["status"]["podIP"]) for p in pods["items"]} == {
        ("xwing", "kind-worker", "10.244.1.2"),
        ("ywing", "kind-worker2", "10.244.2.2"),
    }
    status, _ = netlab.api("GET", "/api/v1/namespaces/egressd")
    assert status == 200


def test_daemons_run_in_their_nodes_with_the_generated_config(netlab: Lab) -> None:
    for node in REFERENCE.nodes:
        pid = netlab.pid(node.name)
        assert pid is not None, node.name
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert b"run" in cmdline
        assert b"record" in cmdline
        assert pid in _netns_pids(netlab, node.name)
        settings = load_settings(str(netlab.config_file(node.name)))
        assert settings.node.name == node.name
        assert settings.kubernetes.url == "http://172.18.0.2:6443"
        assert [str(c) for c in settings.groups[0].source_cidrs] == ["10.244.1.2/32", "10.244.2.2/32"]


def _netns_pids(netlab: Lab, host: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", netlab.netns(host)], capture_output=True, text=True, check=True)
    return [int(p) for p in out.stdout.split()]


def test_a_killed_daemon_is_restarted(netlab: Lab) -> None:
    old = netlab.kill("kind-worker", signal.SIGKILL, restart=True)
    new = netlab.wait_pid("kind-worker", other_than=old, timeout=5)
    assert new != old
    events = [json.loads(line) for line in netlab.state.events_file.read_text().splitlines()]
    assert any(e["event"] == "exit" and e["pid"] == old for e in events)
    assert any(e["event"] == "start" and e["pid"] == new for e in events)


def test_a_held_daemon_stays_down_until_released(netlab: Lab) -> None:
    old = netlab.kill("kind-worker2", signal.SIGTERM, restart=False)
    _wait(lambda: _gone([old]), what="the daemon to exit")
    time.sleep(0.4)  # four restart delays
    assert netlab.pid("kind-worker2") is None
    node = next(n for n in netlab.status()["nodes"] if n["name"] == "kind-worker2")
    assert (node["state"], node["held"]) == ("held", True)
    netlab.release("kind-worker2")
    assert netlab.wait_pid("kind-worker2", timeout=5) != old


def test_status_shows_nodes_and_lease_owners(netlab: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    def held() -> dict[str, Any] | None:
        st = netlab.status()
        return st if all(ip["holder"] for ip in st["egressIPs"]) else None

    st = _wait(held, what="both leases to be held")
    assert {ip["ip"]: ip["holder"] for ip in st["egressIPs"]}.keys() == {"172.18.0.42", "172.18.0.43"}
    assert {ip["holder"] for ip in st["egressIPs"]} <= {"kind-worker3", "kind-worker4"}
    assert all(n["netns"] for n in st["nodes"])
    assert _cli("status", "--state-dir", str(netlab.state.path), "--json") == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["prefix"] == netlab.prefix
    assert _cli("status", "--state-dir", str(netlab.state.path)) == 0
    table = capsys.readouterr().out
    assert "kind-worker3" in table
    assert "172.18.0.42" in table


def test_exec_passes_the_exit_code_through(netlab: Lab) -> None:
    assert _cli("exec", "--state-dir", str(netlab.state.path), "xwing", "--", "sh", "-c", "exit 3") == 3
    assert _cli("exec", "--state-dir", str(netlab.state.path), "nosuchhost", "--", "true") == 1


def test_link_down_cuts_a_node_off(netlab: Lab) -> None:
    ping = ["ping", "-c", "1", "-W", "1", "172.18.0.6"]
    assert netlab.exec("kind-worker", ping, capture_output=True).returncode == 0
    netlab.link("kind-worker4", up=False)
    try:
        assert netlab.exec("kind-worker", ping, capture_output=True).returncode != 0
    finally:
        netlab.link("kind-worker4", up=True)
    _wait(lambda: netlab.exec("kind-worker", ping, capture_output=True).returncode == 0, what="the link to come back")


def test_block_api_partitions_one_node(netlab: Lab) -> None:
    def reaches_api(host: str) -> bool:
        try:
            return netlab.http(host, "http://172.18.0.2:6443/healthz", timeout=0.5)[0] == 200
        except OSError:
            return False

    netlab.block_api("kind-worker", blocked=True)
    try:
        assert not reaches_api("kind-worker")
        assert reaches_api("kind-worker2")
    finally:
        netlab.block_api("kind-worker", blocked=False)
    assert reaches_api("kind-worker")


def test_api_pause_stops_answers_for_everyone(netlab: Lab) -> None:
    netlab.api_pause(paused=True)
    try:
        with pytest.raises(TimeoutError):
            netlab.api("GET", "/healthz", timeout=0.5)
        assert netlab.status()["apiError"]
    finally:
        netlab.api_pause(paused=False)
    assert netlab.api("GET", "/healthz")[0] == 200


def test_up_refuses_a_second_lab_in_the_same_state_dir(netlab: Lab) -> None:
    with pytest.raises(LabError, match="describes a lab"):
        Lab(_prefix(), netlab.state.path).up()
    assert set(netlab.namespaces) <= netns_list()


def test_down_removes_everything(netlab: Lab) -> None:
    """Last of the module's lab tests: the fixture's own down then finds nothing."""
    pids = [p for p in (netlab.pid(n) for n in (*(n.name for n in REFERENCE.nodes), "apiserver", "outpost")) if p]
    pids.append(netlab.supervisor_pid() or 0)
    assert len(pids) == len(REFERENCE.nodes) + 3
    # a drill left the API frozen and a node cut off: down still stops everything in order, quickly
    netlab.api_pause(paused=True)
    netlab.link("kind-worker3", up=False)
    start = time.monotonic()
    netlab.down()
    assert time.monotonic() - start < 8
    assert not set(netlab.namespaces) & netns_list()
    assert _gone(pids)
    assert lab_processes(netlab.prefix) == []
    assert not netlab.state.state_file.exists()
    assert netlab.down() == []  # idempotent


def test_down_after_a_crash_of_the_lab(tmp_path: Path) -> None:
    """Supervisor killed, state file gone: down still finds namespaces and processes."""
    crashed = Lab(_prefix(), tmp_path / "state", dataplane="record")
    try:
        crashed.up()
        pids = [p for p in (crashed.pid(n.name) for n in REFERENCE.nodes) if p]
        supervisor = crashed.supervisor_pid()
        assert supervisor is not None
        os.kill(supervisor, signal.SIGKILL)
        _wait(lambda: _gone([supervisor]), what="the supervisor to die")
        crashed.state.state_file.unlink()
        # a stray process that carries no tag, in a node namespace
        stray = crashed.popen("kind-worker", ["sleep", "60"], env={"PATH": os.environ["PATH"]})
        assert _cli("down", "--state-dir", str(crashed.state.path), "--prefix", crashed.prefix) == 0
        stray.wait(timeout=5)
        assert not set(crashed.namespaces) & netns_list()
        assert _gone(pids)
        assert lab_processes(crashed.prefix) == []
    finally:
        crashed.down()


def test_down_of_a_half_built_lab(tmp_path: Path) -> None:
    half = Lab(_prefix(), tmp_path / "state")
    try:
        for host in ("switch", "kind-worker", "xwing"):
            subprocess.run(["ip", "netns", "add", half.netns(host)], check=True)
        sleeper = subprocess.Popen(["ip", "netns", "exec", half.netns("xwing"), "sleep", "60"])
        _wait(lambda: sleeper.pid in _netns_pids(half, "xwing"), what="the sleeper")
        removed = half.down()
        assert sleeper.wait(timeout=5) == -signal.SIGKILL
        assert sum(r.startswith("namespace ") for r in removed) == 3
        assert not set(half.namespaces) & netns_list()
    finally:
        half.down()


def test_a_failed_up_removes_what_it_built(tmp_path: Path) -> None:
    bad = dataclasses.replace(REFERENCE, timing={"leaseDuration": "1s"})  # violates (T1)
    lab = Lab(_prefix(), tmp_path / "state", scenario=bad)
    try:
        with pytest.raises(ConfigError, match="T1"):
            lab.up()
        assert not set(lab.namespaces) & netns_list()
        assert lab_processes(lab.prefix) == []
    finally:
        lab.down()
