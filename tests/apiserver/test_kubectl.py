"""kubectl against the embedded API server: plain ``kubectl apply`` works for
the kinds it serves, with the server validating (it publishes the OpenAPI v3
documents kubectl reads). Needs the kubectl that ``scripts/build-kube`` builds,
hence the ``kube_apiserver`` marker."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from egressd.apiserver.server import LabApiServer, LabSettings
from egressd.lab.kubecontrol import KubeBinaries

pytestmark = pytest.mark.kube_apiserver

ROOT = Path(__file__).resolve().parents[2]
CRD_FILE = ROOT / "deploy" / "crd.yaml"
POLICY_FILE = ROOT / "config" / "policy-outpost.yaml"


@pytest.fixture
def kubectl(tmp_path: Path) -> Iterator[tuple[LabApiServer, list[str]]]:
    """An embedded server and the kubectl command line that talks to it."""
    server = LabApiServer(LabSettings())
    server.start_in_thread()
    config = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "lab", "cluster": {"server": server.url}}],
        "users": [{"name": "lab", "user": {}}],
        "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": "lab"}}],
        "current-context": "lab",
    }  # fmt: skip
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    try:
        yield server, [str(KubeBinaries.find().kubectl), f"--kubeconfig={path}"]
    finally:
        server.stop_in_thread()


def _run(command: list[str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*command, *args], input=stdin, capture_output=True, text=True, check=False, timeout=60)


def test_kubectl_apply_creates_configures_and_is_refused_by_the_server(
    kubectl: tuple[LabApiServer, list[str]],
) -> None:
    server, command = kubectl
    crd = _run(command, "apply", "-f", str(CRD_FILE))
    assert (crd.returncode, crd.stderr) == (0, ""), crd.stderr
    assert crd.stdout == "customresourcedefinition.apiextensions.k8s.io/egressgatewaypolicies.egressd.io created\n"
    created = _run(command, "apply", "-f", str(POLICY_FILE))
    assert (created.returncode, created.stderr, created.stdout) == (
        0, "", "egressgatewaypolicy.egressd.io/outpost created\n"), created.stderr
    changed = POLICY_FILE.read_text().replace("interface: net0", "interface: net1")
    configured = _run(command, "apply", "-f", "-", stdin=changed)
    assert (configured.returncode, configured.stdout) == (0, "egressgatewaypolicy.egressd.io/outpost configured\n")
    kind = server.store.resolve("egressd.io", "v1alpha1", "egressgatewaypolicies")
    assert kind is not None
    assert server.store.get(kind, None, "outpost")["spec"]["egressGateway"]["interface"] == "net1"

    typo = changed.replace("name: outpost", "name: typo").replace("egressGateway:", "egressGatway:")
    refused = _run(command, "apply", "-f", "-", stdin=typo)
    assert refused.returncode == 1
    assert 'strict decoding error: unknown field "spec.egressGatway"' in refused.stderr
    lease = "apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata: {name: l1, namespace: default}\n"
    assert _run(command, "apply", "-f", "-", stdin=lease).returncode == 0
