"""The lab on the real control plane: ``--apiserver kube``.

kube-apiserver and etcd (built by ``scripts/build-kube``) run in the lab's
control-plane namespace under the lab's supervisor, with a certificate
authority of the lab's own; the daemons act with tokens of the DaemonSet's
ServiceAccount and exactly deploy/rbac.yaml, never as admin. These tests need
the built programs only, not the session's control plane: the demo in the
Kubernetes mode (policy, its status, Events, a relabel, a SIGKILL failover),
then, on a lab of their own in the static mode, one ``graceful`` and one
``api-outage`` round of ``egressd drill`` (the outage pauses kube-apiserver
itself for 5 s). Every lab has a unique prefix and is removed even when a test
fails.
"""

from __future__ import annotations

import argparse
import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from egressd.cli import drill as drill_cli
from egressd.lab.demo import demo
from egressd.lab.kubecontrol import KubeBinaries
from egressd.lab.netlab import Lab, lab_processes
from egressd.lab.netns import LabError, netns_list

real_server = pytest.mark.kube_apiserver


def _gone(lab: Lab) -> None:
    assert not any(ns.startswith(lab.prefix) for ns in netns_list())
    assert lab_processes(lab.prefix) == []
    assert not lab.kube_dir.exists(), "lab down leaves the control plane's PKI, etcd data and tokens"


@pytest.mark.kernel
@real_server
def test_demo_on_kube_apiserver(tmp_path: Path) -> None:
    prefix = f"egk{secrets.token_hex(2)}-"
    lines: list[str] = []
    try:
        code = demo(prefix, tmp_path / "state", out=lines.append, mode="kubernetes", apiserver="kube")
    finally:
        Lab(prefix, tmp_path / "state").down()
    text = "\n".join(lines)
    assert code == 0, text
    assert "kube-apiserver and etcd" in text
    assert "tiefighter is selected now" in text and "policy status: 172.18.0.42 on kind-worker" in text
    assert "the traffic moved from" in text and "UNEXPECTED" not in text
    _gone(Lab(prefix, tmp_path / "state", apiserver="kube"))


@pytest.fixture(scope="module")
def kube_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    lab = Lab(f"egk{secrets.token_hex(2)}-", tmp_path_factory.mktemp("kube-lab"), apiserver="kube")
    try:
        lab.up()
        yield lab
    finally:
        lab.down()
        _gone(lab)


def _kubectl(lab: Lab, kubeconfig: Path, *args: str) -> str:
    """kubectl from the control plane's namespace (the only place the lab's API server is reached)."""
    kubectl = str(KubeBinaries.find().kubectl)
    done = lab.exec(
        lab.scenario.api_node,
        [kubectl, f"--kubeconfig={kubeconfig}", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    return str(done.stdout)


@pytest.mark.kernel
@real_server
def test_the_daemons_act_with_the_serviceaccount_token(kube_lab: Lab) -> None:
    node = kube_lab.scenario.gateways[0].name
    config = yaml.safe_load(kube_lab.config_file(node).read_text())
    assert config["kubernetes"] == {
        "namespace": "egressd",
        "access": "kubeconfig",
        "kubeconfig": str(kube_lab.kubeconfig_file(node)),
    }
    user = yaml.safe_load(kube_lab.kubeconfig_file(node).read_text())["users"][0]["user"]
    assert set(user) == {"token"}, "a daemon's kubeconfig holds a token, no client certificate"
    review = json.loads(_kubectl(kube_lab, kube_lab.kubeconfig_file(node), "auth", "whoami", "-o", "json"))
    assert review["status"]["userInfo"]["username"] == "system:serviceaccount:egressd:egressd"
    # deploy/rbac.yaml and nothing more: no Secrets, no writes to Nodes
    can_i = kube_lab.kubeconfig_file(node)
    assert _kubectl(kube_lab, can_i, "auth", "can-i", "update", "leases", "-n", "egressd").strip() == "yes"
    denied = kube_lab.exec(
        kube_lab.scenario.api_node,
        [str(KubeBinaries.find().kubectl), f"--kubeconfig={can_i}", "auth", "can-i", "list", "secrets", "-A"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert denied.stdout.strip() == "no"
    # the API server the drills pause is kube-apiserver itself
    pid = kube_lab.pid("apiserver")
    assert pid is not None and Path(f"/proc/{pid}/comm").read_text().strip() == "kube-apiserver"
    deadline = time.monotonic() + 20.0
    while (held := {r.egress_ip for r in kube_lab.leases() if r.holder}) != set(kube_lab.scenario.egress_ips):
        assert time.monotonic() < deadline, f"leases held after 20 s: {held}"
        time.sleep(0.1)


def _drill(lab: Lab, tmp_path: Path, scenario: str, *argv: str) -> tuple[int, dict[str, Any]]:
    parser = argparse.ArgumentParser(prog="egressd")
    drill_cli.add_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / f"{scenario}.json"
    common = ["drill", "--state-dir", str(lab.state.path), "--settle-timeout", "30", "--rounds", "1"]
    args = parser.parse_args([*common, "--scenario", scenario, "--json", str(out), *argv])
    code = drill_cli.run(args)
    report: dict[str, Any] = json.loads(out.read_text())
    return code, report


@pytest.mark.kernel
@real_server
def test_graceful_round_on_kube_apiserver(kube_lab: Lab, tmp_path: Path) -> None:
    code, report = _drill(kube_lab, tmp_path, "graceful")
    assert report["apiserver"] == "kube"
    (r,) = report["rounds"]
    assert r["dual_owner_ms"] == 0 and r["double_answers"] == 0, r["timeline"]["dual_owner"]
    assert r["settled"] and code == 0, r
    assert r["timeline"]["lease"], "the lease poller saw no change"
    # a handoff, not a takeover after the lease expired (2.5 s)
    assert r["gap_ms"] is not None and 0 < r["gap_ms"] < 1000, r["timeline"]["gaps"]


@pytest.mark.kernel
@real_server
def test_api_outage_round_pauses_kube_apiserver(kube_lab: Lab, tmp_path: Path) -> None:
    code, report = _drill(kube_lab, tmp_path, "api-outage", "--outage-seconds", "5")
    (r,) = report["rounds"]
    assert report["outageSeconds"] == 5
    assert r["dual_owner_ms"] == 0 and r["double_answers"] == 0, r["timeline"]["dual_owner"]
    assert r["settled"] and code == 0, r
    assert r["recovered"], r["timeline"]["gaps"]
    assert kube_lab.status()["processes"]["apiserver"]["state"] == "running", "kube-apiserver left frozen"
    assert all(ip["holder"] for ip in kube_lab.status()["egressIPs"])


@pytest.mark.kernel
def test_without_the_built_programs_up_says_how_to_build_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EGRESSD_KUBE_BIN", str(tmp_path / "empty"))
    lab = Lab(f"egk{secrets.token_hex(2)}-", tmp_path / "state", apiserver="kube")
    with pytest.raises(LabError, match=r"kube-apiserver, etcd, kubectl not built in .*scripts/build-kube"):
        lab.up()
    assert not any(ns.startswith(lab.prefix) for ns in netns_list())
    assert not lab.state.path.exists(), "checked before anything is built"


def test_an_unknown_api_server_is_refused() -> None:
    with pytest.raises(LabError, match="apiserver must be one of embedded, kube, got 'k8s'"):
        Lab("egk-", "/nonexistent", apiserver="k8s")
