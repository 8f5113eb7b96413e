"""deploy/ on a real kube-apiserver: ``kubectl apply -k deploy/`` as an
administrator would run it, first as a server-side dry run, then for real;
the CRD becomes Established and the server enforces its schema.

The test removes everything it applied, also when it fails, so that other
tests that apply deploy/ to the same control plane start from nothing. A
deleted namespace stays Terminating here (no namespace controller): once its
objects are gone, the test does the controller's last step itself, the
``finalize`` subresource with no finalizers left, and the namespace goes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from egressd.lab.kubecontrol import ControlPlane, KubeApi

pytestmark = pytest.mark.kube_apiserver

ROOT = Path(__file__).parents[1]
DEPLOY = ROOT / "deploy"
POLICY_FILE = ROOT / "config" / "policy-outpost.yaml"
NAMESPACE = "egressd"
CRD = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/egressgatewaypolicies.egressd.io"
POLICIES = "/apis/egressd.io/v1alpha1/egressgatewaypolicies"
#: What deploy/ puts into its namespace, by collection path.
NAMESPACED = (
    "/api/v1/namespaces/egressd/serviceaccounts",
    "/api/v1/namespaces/egressd/configmaps",
    "/apis/rbac.authorization.k8s.io/v1/namespaces/egressd/roles",
    "/apis/rbac.authorization.k8s.io/v1/namespaces/egressd/rolebindings",
    "/apis/apps/v1/namespaces/egressd/daemonsets",
)


def _until(what: str, check: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f} s: {what}")
        time.sleep(0.1)
    return value


def _status(api: KubeApi, path: str) -> int:
    return api.request("GET", path)[0]


def _documents() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    return [
        doc for name in kustomization["resources"] for doc in yaml.safe_load_all((DEPLOY / name).read_text()) if doc
    ]


def _remove_deploy(control_plane: ControlPlane) -> None:
    """Delete what deploy/ made; finalize its namespace once it is empty."""
    control_plane.kubectl("delete", "-k", str(DEPLOY), "--ignore-not-found", "--wait=false")
    api = control_plane.api()

    def emptied() -> bool:
        return all(not (body or {}).get("items") for _, body in (api.request("GET", p) for p in NAMESPACED))

    _until(f"namespace {NAMESPACE} is empty", emptied)
    status, namespace = api.request("GET", f"/api/v1/namespaces/{NAMESPACE}")
    if status == 200:
        namespace["spec"]["finalizers"] = []
        status, body = api.request("PUT", f"/api/v1/namespaces/{NAMESPACE}/finalize", namespace)
        assert status == 200, body
    _until(f"namespace {NAMESPACE} is gone", lambda: _status(api, f"/api/v1/namespaces/{NAMESPACE}") == 404)
    _until("the CRD is gone", lambda: _status(api, CRD) == 404)


@pytest.fixture
def cluster(kube_control_plane: ControlPlane) -> Iterator[ControlPlane]:
    """The session's control plane without deploy/'s objects; they are removed afterwards."""
    api = kube_control_plane.api()
    left = [path for path in (f"/api/v1/namespaces/{NAMESPACE}", CRD) if _status(api, path) != 404]
    assert not left, f"deploy/'s objects are already there (another test left them): {left}"
    try:
        yield kube_control_plane
    finally:
        _remove_deploy(kube_control_plane)


def _policy(name: str, **change: Any) -> str:
    policy = yaml.safe_load(POLICY_FILE.read_text())
    policy["metadata"]["name"] = name
    for key, value in change.items():
        target, leaf = policy["spec"], key
        if "." in key:
            outer, leaf = key.split(".", 1)
            target = target[outer]
        target[leaf] = value
    return yaml.safe_dump(policy)


def test_deploy_applies_cleanly_and_the_crd_enforces_its_schema(cluster: ControlPlane) -> None:
    api = cluster.api()
    namespaced = [d for d in _documents() if d["metadata"].get("namespace") == NAMESPACE]

    # 1. A server-side dry run stores nothing, not even the namespace, so on a
    #    cluster without it every object that belongs in it is refused.
    dry = cluster.kubectl("apply", "--dry-run=server", "-k", str(DEPLOY))
    assert dry.returncode == 1
    refusal = f'Error from server (NotFound): error when creating "{DEPLOY}": namespaces "{NAMESPACE}" not found'
    assert dry.stderr.splitlines() == [refusal] * len(namespaced)
    assert _status(api, f"/api/v1/namespaces/{NAMESPACE}") == 404
    assert _status(api, CRD) == 404

    # 2. With the namespace there, the dry run of everything is clean and still stores nothing.
    made = cluster.kubectl("apply", "-f", str(DEPLOY / "namespace.yaml"))
    assert (made.returncode, made.stderr) == (0, ""), made.stderr
    dry = cluster.kubectl("apply", "--dry-run=server", "-k", str(DEPLOY))
    assert (dry.returncode, dry.stderr) == (0, ""), dry.stderr
    assert len(dry.stdout.splitlines()) == len(_documents())
    assert all(line.endswith("(server dry run)") for line in dry.stdout.splitlines()), dry.stdout
    assert _status(api, CRD) == 404

    # 3. For real: no error, no warning.
    applied = cluster.kubectl("apply", "-k", str(DEPLOY))
    assert (applied.returncode, applied.stderr) == (0, ""), applied.stderr
    assert len(applied.stdout.splitlines()) == len(_documents())

    def established() -> bool:
        status, crd = api.request("GET", CRD)
        conditions = {c["type"]: c["status"] for c in (crd or {}).get("status", {}).get("conditions", [])}
        return status == 200 and conditions.get("Established") == "True" and _status(api, POLICIES) == 200

    _until("the CRD is Established and its resource served", established)

    # 3b. The DaemonSet as stored: the mesh's UDP port and the optional Secret
    #     with the key, mounted read-only (no Secret is applied: the mesh is
    #     off until an administrator creates it).
    status, ds = api.request("GET", f"/apis/apps/v1/namespaces/{NAMESPACE}/daemonsets/egressd")
    assert status == 200, ds
    pod = ds["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert {"name": "mesh", "containerPort": 7946, "protocol": "UDP"} in container["ports"]
    (volume,) = [v for v in pod["volumes"] if "secret" in v]
    assert volume["secret"] == {"secretName": "egressd-mesh", "optional": True, "defaultMode": 0o400}
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    assert mount["readOnly"] is True and mount["mountPath"] == "/etc/egressd-mesh"
    assert _status(api, f"/api/v1/namespaces/{NAMESPACE}/secrets/egressd-mesh") == 404

    # 4. The example policy is taken as it is; broken ones are refused by the server.
    good = cluster.kubectl("apply", "-f", "-", input_text=_policy("outpost"))
    assert (good.returncode, good.stderr) == (0, ""), good.stderr
    status, stored = api.request("GET", f"{POLICIES}/outpost")
    assert status == 200
    assert stored["spec"] == yaml.safe_load(POLICY_FILE.read_text())["spec"]

    broken = {
        "bad-ip": (_policy("bad-ip", **{"egressGateway.egressIPs": ["172.18.0.300"]}),
                   'spec.egressGateway.egressIPs[0] in body must be of type ipv4: "172.18.0.300"'),
        "bad-cidr": (_policy("bad-cidr", destinationCIDRs=["172.18.0/16"]),
                     'spec.destinationCIDRs[0] in body must be of type cidr: "172.18.0/16"'),
        # kubectl asks for fieldValidation=Strict: an unknown field is an error, not pruned
        "bad-field": (_policy("bad-field", egressGatway={}),
                      'strict decoding error: unknown field "spec.egressGatway"'),
    }  # fmt: skip
    for name, (manifest, message) in broken.items():
        refused = cluster.kubectl("apply", "-f", "-", input_text=manifest)
        assert refused.returncode == 1, name
        assert message in refused.stderr, refused.stderr
        assert _status(api, f"{POLICIES}/{name}") == 404, name
