"""The Kubernetes mode end to end on a real kube-apiserver, with the DaemonSet's token.

deploy/'s Namespace, CRD and RBAC are applied as admin (server-side apply);
Nodes, a Namespace, Pods (``status.podIP`` through ``pods/status``) and an
EgressGatewayPolicy too. Then three ``egressd run`` processes (two gateways
and a worker, the recording data plane) run with a kubeconfig that holds
only the CA and the token of deploy/'s ServiceAccount: every call they make
is authorized by exactly the RBAC of deploy/rbac.yaml. A call it does not
allow is a Forbidden in a daemon's log, which fails the module.

The tests run in order on one set of daemons (default timings) and leave
them as they found them: both IPs owned.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from egressd.core.model import Timing
from egressd.lab.kubecontrol import ControlPlane, KubeApi, object_path
from tests.integration.kube_support import delete, holders, leases, refused_calls, start_daemon, stop_daemon, wait
from tests.journal import intervals, overlaps, read_journals

pytestmark = [pytest.mark.integration, pytest.mark.kube_apiserver]

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
T = Timing()
CRD_NAME = "egressgatewaypolicies.egressd.io"
POLICIES = "/apis/egressd.io/v1alpha1/egressgatewaypolicies"


def deploy_objects(*files: str) -> list[dict[str, Any]]:
    """The objects of deploy/'s files, in order."""
    out: list[dict[str, Any]] = []
    for name in files:
        out += [doc for doc in yaml.safe_load_all((DEPLOY / name).read_text(encoding="utf-8")) if doc]
    return out


def daemon_namespace() -> str:
    """The namespace of deploy/'s ServiceAccount (where the leases live)."""
    sa = next(o for o in deploy_objects("rbac.yaml") if o["kind"] == "ServiceAccount")
    return str(sa["metadata"]["namespace"])


def crd_established(api: KubeApi) -> bool:
    status, body = api.request("GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{CRD_NAME}")
    if status != 200:
        return False
    conditions = {c["type"]: c["status"] for c in (body.get("status") or {}).get("conditions") or []}
    if conditions.get("Established") != "True":
        return False
    # the API serves the resource (discovery has caught up)
    return api.request("GET", POLICIES)[0] == 200


def apply_crd(api: KubeApi) -> None:
    for obj in deploy_objects("crd.yaml"):
        api.apply(obj)
    wait("the CRD Established and served", lambda: crd_established(api), 30, 0.1)


@dataclass
class Stack:
    """The cluster objects and the three daemons of the module."""

    cp: ControlPlane
    api: KubeApi
    tmp: Path
    kubeconfig: Path
    namespace: str
    suffix: str
    gateways: tuple[str, str]
    worker: str
    app_ns: str
    policy: str
    ips: tuple[str, str]
    daemons: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def nodes(self) -> tuple[str, ...]:
        return (*self.gateways, self.worker)

    def address(self, node: str) -> str:
        # only data: the recording data plane sends nothing, and without a
        # cluster key the mesh is off
        return f"10.0.0.{self.nodes.index(node) + 3}"

    def config(self, node: str) -> Path:
        path = self.tmp / f"{node}.yaml"
        if not path.exists():
            path.write_text(
                json.dumps(
                    {
                        "node": {"name": node, "address": self.address(node)},
                        "mode": "kubernetes",
                        "kubernetes": {
                            "access": "kubeconfig",
                            "kubeconfig": str(self.kubeconfig),
                            "namespace": self.namespace,
                        },
                        "metrics": {"listen": ""},
                    }
                ),
                encoding="utf-8",
            )
        return path

    def journal(self, node: str) -> Path:
        return self.tmp / f"{node}.journal"

    def log(self, node: str) -> Path:
        return self.tmp / f"{node}.log"

    def start(self, node: str) -> None:
        self.daemons[node] = start_daemon(self.config(node), self.journal(node), self.log(node))

    def stop(self, node: str, sig: int = signal.SIGTERM) -> None:
        proc = self.daemons.pop(node, None)
        if proc is not None:
            stop_daemon(proc, sig)

    def leases(self) -> list[dict[str, Any]]:
        return leases(self.api, self.namespace)

    def holders(self) -> dict[str, str | None]:
        return holders(self.api, self.namespace, self.ips)

    def owned(self) -> dict[str, str | None] | None:
        holders = self.holders()
        return holders if all(h in self.gateways for h in holders.values()) else None

    def ops(self) -> list[dict[str, Any]]:
        return read_journals(self.journal(n) for n in self.nodes)

    def policy_object(self) -> dict[str, Any] | None:
        status, body = self.api.request("GET", f"{POLICIES}/{self.policy}")
        return body if status == 200 else None

    def policy_body(self) -> dict[str, Any]:
        return {
            "apiVersion": "egressd.io/v1alpha1",
            "kind": "EgressGatewayPolicy",
            "metadata": {"name": self.policy},
            "spec": {
                "selectors": [
                    {
                        "podSelector": {"matchLabels": {"org": "alliance"}},
                        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": self.app_ns}},
                    }
                ],
                "destinationCIDRs": ["172.18.0.0/16"],
                "egressGateway": {
                    "nodeSelector": {"matchLabels": {f"egressd.io/gw-{self.suffix}": "true"}},
                    "interface": "net0",
                    "egressIPs": list(self.ips),
                },
            },
        }

    def create_pod(self, name: str, node: str, ip: str, labels: dict[str, str]) -> None:
        path = f"/api/v1/namespaces/{self.app_ns}/pods"
        body = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": self.app_ns, "labels": labels},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "registry.invalid/none"}]},
        }
        status, created = self.api.request("POST", path, body)
        assert status == 201, created
        patch = {"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}}
        status, patched = self.api.request(
            "PATCH", f"{path}/{name}/status", patch, content_type="application/merge-patch+json"
        )
        assert status == 200, patched

    def label_pod(self, name: str, labels: dict[str, str | None]) -> None:
        status, body = self.api.request(
            "PATCH",
            f"/api/v1/namespaces/{self.app_ns}/pods/{name}",
            {"metadata": {"labels": labels}},
            content_type="application/merge-patch+json",
        )
        assert status == 200, body

    def forbidden(self) -> list[str]:
        return refused_calls(self.log(n) for n in self.nodes)

    def assert_safe(self) -> None:
        bad = overlaps(intervals(self.ops(), until=time.monotonic()))
        assert not bad, f"two nodes served one IP at once: {bad}"


@contextlib.contextmanager
def deployed(api: KubeApi) -> Iterator[None]:
    """deploy/'s Namespace, RBAC and CRD applied as admin; afterwards the
    objects this made are deleted again (the Namespace with what is in it,
    as the namespace controller would), and a CRD that was there is there again."""
    objects = deploy_objects("namespace.yaml", "rbac.yaml", "crd.yaml")
    made = [o for o in objects if api.request("GET", object_path(o))[0] == 404]
    try:
        for obj in objects:
            if obj["kind"] != "CustomResourceDefinition":
                api.apply(obj)
        apply_crd(api)
        yield
    finally:
        for obj in reversed(made):
            if obj["kind"] == "Namespace":
                api.delete_namespace(obj["metadata"]["name"])
            else:
                delete(api, object_path(obj))
        if not any(o["kind"] == "CustomResourceDefinition" for o in made) and not crd_established(api):
            apply_crd(api)


@pytest.fixture(scope="module")
def stack(kube_control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    cp = kube_control_plane
    api = cp.api()
    suffix = secrets.token_hex(3)
    octet = int(suffix[:2], 16)
    namespace = daemon_namespace()
    tmp = tmp_path_factory.mktemp("kube-e2e")
    s = Stack(
        cp=cp, api=api, tmp=tmp, kubeconfig=tmp / "egressd.kubeconfig", namespace=namespace, suffix=suffix,
        gateways=(f"gw-a-{suffix}", f"gw-b-{suffix}"), worker=f"worker-{suffix}", app_ns=f"app-{suffix}",
        policy=f"outpost-{suffix}", ips=(f"198.18.{octet}.42", f"198.18.{octet}.43"),
    )  # fmt: skip
    with deployed(api):
        try:
            with cp.as_token(namespace, "egressd") as (_, token_kubeconfig):
                s.kubeconfig.write_bytes(token_kubeconfig.read_bytes())
                s.kubeconfig.chmod(0o600)
            doc = yaml.safe_load(s.kubeconfig.read_text(encoding="utf-8"))
            assert set(doc["users"][0]["user"]) == {"token"}, "the daemons' kubeconfig holds a token, nothing else"
            for node in s.nodes:
                labels = {f"egressd.io/gw-{suffix}": "true"} if node in s.gateways else {}
                api.apply(
                    {
                        "apiVersion": "v1",
                        "kind": "Node",
                        "metadata": {"name": node, "labels": labels},
                        "status": {"addresses": [{"type": "InternalIP", "address": s.address(node)}]},
                    }
                )
            api.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": s.app_ns}})
            s.create_pod("xwing", s.worker, "10.244.1.2", {"org": "alliance"})
            s.create_pod("tiefighter", s.worker, "10.244.1.3", {"org": "empire"})
            api.apply(s.policy_body())
            for node in s.nodes:
                s.start(node)
            yield s
        finally:
            for node in list(s.daemons):
                s.stop(node)
            delete(api, f"{POLICIES}/{s.policy}")
            api.delete_namespace(s.app_ns)
            for node in s.nodes:
                delete(api, f"/api/v1/nodes/{node}")
            for lease in s.leases():
                name = lease["metadata"]["name"]
                if (lease["metadata"].get("annotations") or {}).get("egressd.io/egress-ip") in s.ips:
                    delete(api, f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{name}")


@pytest.fixture
def running(stack: Stack) -> Iterator[Stack]:
    """The stack with both IPs owned before the test; after it, no Forbidden
    in the logs, never two owners, and every daemon still up."""

    def owned_while_up() -> dict[str, str | None] | None:
        for node, proc in stack.daemons.items():
            assert proc.poll() is None, f"{node} exited with {proc.returncode}; see {stack.log(node)}"
        return stack.owned()

    wait("both egress IPs owned by the gateways", owned_while_up, 20)
    yield stack
    assert not stack.forbidden(), "calls the RBAC does not allow:\n" + "\n".join(stack.forbidden())
    stack.assert_safe()
    for node, proc in stack.daemons.items():
        assert proc.poll() is None, f"{node} exited with {proc.returncode}; see {stack.log(node)}"


def describe(stack: Stack, *args: str) -> str:
    done = stack.cp.kubectl("describe", *args)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_leases_status_and_events_with_the_serviceaccount_token(running: Stack) -> None:
    s = running
    owners = wait("both IPs owned", s.owned, 10)
    claims = {i["metadata"]["name"]: i["spec"].get("holderIdentity") for i in s.leases()}
    assert {f"egressd-{ip.replace('.', '-')}": owners[ip] for ip in s.ips}.items() <= claims.items()

    def status_names_owners() -> dict[str, Any] | None:
        status = (s.policy_object() or {}).get("status") or {}
        named = {e.get("egressIP"): e.get("node") for e in status.get("egressIPs", [])}
        ready = {c["type"]: c["status"] for c in status.get("conditions", [])}.get("Ready")
        return status if named == s.holders() and ready == "True" else None

    status = wait("the policy's status names the owners", status_names_owners, 10)
    assert status["selectedPods"] == 1
    assert {e["egressIP"]: e["node"] for e in status["egressIPs"]} == owners

    owner = owners[s.ips[0]]
    assert owner is not None
    wait(
        f"an EgressIPAcquired Event in kubectl describe node {owner}",
        lambda: "EgressIPAcquired" in describe(s, "node", owner).split("Events:")[-1],
        10,
        0.2,
    )
    wait(
        "EgressIPAcquired Events in kubectl describe egressgatewaypolicy",
        lambda: "EgressIPAcquired" in describe(s, "egressgatewaypolicy", s.policy).split("Events:")[-1],
        10,
        0.2,
    )


def test_handoff_moves_an_ip(running: Stack) -> None:
    s = running
    ip = s.ips[0]
    owner = s.holders()[ip]
    other = next(g for g in s.gateways if g != owner)
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "egressd.cli.main", "handoff", ip, "--to", other, "--config", str(s.config(other))],
        capture_output=True, text=True, check=False, timeout=30,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    wait(f"{ip} held by {other}", lambda: s.holders()[ip] == other, 5)
    assert time.monotonic() - started < 5


def test_sigkilled_owner_is_replaced_within_the_bound(running: Stack) -> None:
    s = running
    ip = s.ips[0]
    victim = s.holders()[ip]
    assert victim is not None
    killed = time.monotonic()
    s.stop(victim, signal.SIGKILL)
    try:
        new = wait(f"{ip} taken over from {victim}", lambda: (h := s.holders()[ip]) != victim and h, 10, 0.005)
        gap = time.monotonic() - killed
        bound = T.lease_duration + 2 * T.retry_period
        assert new in s.gateways
        assert gap <= bound + 0.3, f"takeover took {gap:.3f}s (bound {bound:.2f}s)"
    finally:
        s.start(victim)


def steered_sources(s: Stack) -> set[str]:
    """The pod sources the worker steers now, by its journal (last route of each IP)."""
    last: dict[str, dict[str, Any]] = {}
    for op in read_journals([s.journal(s.worker)]):
        if op["op"] == "steer" and op["ip"] in s.ips:
            last[op["ip"]] = op
    return {src for op in last.values() if op["via"] for src in op["sources"]}


def test_relabel_starts_and_stops_steering_on_the_worker(running: Stack) -> None:
    s = running
    xwing, tiefighter = "10.244.1.2/32", "10.244.1.3/32"
    wait("the worker steers xwing", lambda: steered_sources(s) == {xwing}, 5)
    s.label_pod("tiefighter", {"org": "alliance"})
    try:
        wait("the worker steers tiefighter too", lambda: steered_sources(s) == {xwing, tiefighter}, 5)
    finally:
        s.label_pod("tiefighter", {"org": "empire"})
    wait("the worker stops steering tiefighter", lambda: steered_sources(s) == {xwing}, 5)
    s.label_pod("xwing", {"org": "empire"})
    try:
        wait("the worker steers nothing", lambda: not steered_sources(s) or None, 5)
    finally:
        s.label_pod("xwing", {"org": "alliance"})
    wait("the worker steers xwing again", lambda: steered_sources(s) == {xwing}, 5)


def claims(s: Stack) -> list[dict[str, Any]]:
    return [i for i in s.leases() if (i["metadata"].get("annotations") or {}).get("egressd.io/egress-ip") in s.ips]


def held_claims(s: Stack) -> list[str]:
    return [
        f"{i['metadata']['name']}={i['spec']['holderIdentity']}" for i in claims(s) if i["spec"].get("holderIdentity")
    ]


def test_policy_deletion_leaves_no_claim_with_a_holder(running: Stack) -> None:
    s = running
    delete(s.api, f"{POLICIES}/{s.policy}")
    try:
        wait("no claim of the policy's IPs with a holder", lambda: not held_claims(s) or None, 15, 0.1)
        time.sleep(1.0)  # and none comes back
        assert not held_claims(s)
    finally:
        s.api.apply(s.policy_body())
    wait("both IPs owned again", s.owned, 15)


def serviceaccount_requests(s: Stack) -> float:
    """How many requests kube-apiserver has dispatched for ServiceAccounts
    (its API Priority and Fairness counter, read as admin): the daemons' only,
    as nothing else here acts with a ServiceAccount's token. It counts the
    404s of a path no API serves too, which apiserver_request_total does not."""
    status, text = s.api.request("GET", "/metrics")
    assert status == 200
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in str(text).splitlines()
        if line.startswith("apiserver_flowcontrol_dispatched_requests_total{")
        and 'flow_schema="service-accounts"' in line
    )


def log_lines(s: Stack) -> int:
    return sum(len(s.log(n).read_text(errors="replace").splitlines()) for n in s.nodes if s.log(n).exists())


def test_crd_deletion_and_return(running: Stack) -> None:
    s = running
    delete(s.api, f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{CRD_NAME}")
    try:
        wait(
            "the CRD gone",
            lambda: (
                s.api.request("GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{CRD_NAME}")[0] == 404
            ),
            30,
            0.1,
        )
        # the policy went with its CRD: its claims are released, then deleted
        wait("the policy's claims deleted", lambda: not claims(s) or None, 15, 0.1)
        time.sleep(1.0)  # the last Events and deletes of that are out; now count
        requests, lines = serviceaccount_requests(s), log_lines(s)
        window = 4.0
        time.sleep(window)  # a rate over a fixed window: nothing to wait for
        rate = (serviceaccount_requests(s) - requests) / window
        line_rate = (log_lines(s) - lines) / window
        # no IP is owned (no lease writes); each daemon lists the policies every
        # crd_retry (10 s) and reconnects its silent lease watch every
        # leaseDuration: about 1.5 requests a second for the three (a loop: hundreds)
        assert rate < 3.0, f"{rate:.1f} requests per second from the daemons while the CRD is gone"
        assert line_rate < 3.0, f"{line_rate:.1f} log lines per second while the CRD is gone"
    finally:
        apply_crd(s.api)
    s.api.apply(s.policy_body())
    wait("both IPs owned again after the CRD and the policy returned", s.owned, 30, 0.1)
