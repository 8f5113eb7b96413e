"""The static mode on a real kube-apiserver with exactly the RBAC systemd/README.md documents.

A ServiceAccount of a namespace of the test's own gets, there, a Role with
the verbs the README lists on ``coordination.k8s.io`` ``leases``, and a
ClusterRole with ``list`` on ``nodes`` (the group selects its candidates by
``nodeSelector``), nothing else. Two ``egressd run`` processes (static mode,
recording data plane) use a kubeconfig holding that ServiceAccount's token
and the CA. Election, graceful handoff, SIGKILL takeover and the retirement
of the claim of an IP removed from the config must work without a single
call refused.
"""

from __future__ import annotations

import json
import re
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from egressd.core.model import Timing
from egressd.lab.kubecontrol import ControlPlane, KubeApi
from tests.integration.kube_support import delete, holders, leases, refused_calls, start_daemon, stop_daemon, wait
from tests.journal import intervals, overlaps, read_journals

pytestmark = [pytest.mark.integration, pytest.mark.kube_apiserver]

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "systemd" / "README.md"
T = Timing()
RBAC = "/apis/rbac.authorization.k8s.io/v1"


def readme_lease_verbs() -> list[str]:
    """The verbs the README's RBAC paragraph lists for leases: the back-quoted
    words of the sentence that names ``leases``, before the parenthesis on nodes."""
    text = " ".join(README.read_text(encoding="utf-8").split())
    sentence = next(s for s in text.split(". ") if "`leases`" in s and "identity needs" in s)
    leases_part = sentence.split("`leases`")[0]
    verbs: list[str] = re.findall(r"`([a-z]+)`", leases_part)
    assert verbs, f"no verbs found in: {sentence}"
    return verbs


def readme_node_verbs() -> list[str]:
    text = " ".join(README.read_text(encoding="utf-8").split())
    found = re.search(r"\(?and ((?:`[a-z]+`(?:,? (?:and )?)?)+) on `nodes`", text)
    assert found, "the README names no verbs on nodes"
    return re.findall(r"`([a-z]+)`", found.group(1))


@dataclass
class Static:
    api: KubeApi
    tmp: Path
    kubeconfig: Path
    namespace: str
    suffix: str
    nodes: tuple[str, str]
    ips: tuple[str, str]
    daemons: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def write_config(self, node: str, ips: tuple[str, ...]) -> Path:
        path = self.tmp / f"{node}.yaml"
        path.write_text(
            json.dumps(
                {
                    "node": {"name": node, "address": f"10.0.1.{self.nodes.index(node) + 3}"},
                    "kubernetes": {
                        "access": "kubeconfig",
                        "kubeconfig": str(self.kubeconfig),
                        "namespace": self.namespace,
                    },
                    "metrics": {"listen": ""},
                    "groups": [
                        {
                            "name": "outpost",
                            "egressIPs": list(ips),
                            "interface": "net0",
                            "nodeSelector": {"matchLabels": {f"egressd.io/static-{self.suffix}": "true"}},
                            "sourceCIDRs": ["10.244.1.0/24"],
                            "destinationCIDRs": ["172.18.0.0/16"],
                        }
                    ],
                }
            ),
            encoding="utf-8",
        )
        return path

    def start(self, node: str) -> None:
        self.daemons[node] = start_daemon(self.tmp / f"{node}.yaml", self.journal(node), self.log(node))

    def stop(self, node: str, sig: int = signal.SIGTERM) -> None:
        proc = self.daemons.pop(node, None)
        if proc is not None:
            stop_daemon(proc, sig)

    def journal(self, node: str) -> Path:
        return self.tmp / f"{node}.journal"

    def log(self, node: str) -> Path:
        return self.tmp / f"{node}.log"

    def leases(self) -> list[dict[str, Any]]:
        return leases(self.api, self.namespace)

    def holders(self) -> dict[str, str | None]:
        return holders(self.api, self.namespace, self.ips)

    def owned(self) -> dict[str, str | None] | None:
        for node, proc in self.daemons.items():
            assert proc.poll() is None, f"{node} exited with {proc.returncode}; see {self.log(node)}"
        holders = self.holders()
        return holders if all(h in self.nodes for h in holders.values()) else None

    def check(self) -> None:
        refused = refused_calls(self.log(n) for n in self.nodes)
        assert not refused, "calls the README's RBAC does not allow:\n" + "\n".join(refused)
        ops = read_journals(self.journal(n) for n in self.nodes)
        bad = overlaps(intervals(ops, until=time.monotonic()))
        assert not bad, f"two nodes served one IP at once: {bad}"


@pytest.fixture
def static(kube_control_plane: ControlPlane, tmp_path: Path) -> Iterator[Static]:
    cp = kube_control_plane
    api = cp.api()
    suffix = secrets.token_hex(3)
    namespace = f"egressd-static-{suffix}"
    octet = int(suffix[:2], 16)
    role_name = f"egressd-static-{suffix}"
    api.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    s = Static(
        api=api, tmp=tmp_path, kubeconfig=tmp_path / "kubeconfig", namespace=namespace, suffix=suffix,
        nodes=(f"static-a-{suffix}", f"static-b-{suffix}"), ips=(f"198.19.{octet}.42", f"198.19.{octet}.43"),
    )  # fmt: skip
    subject = [{"kind": "ServiceAccount", "name": "egressd", "namespace": namespace}]
    try:
        api.apply(
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "egressd", "namespace": namespace}}
        )
        api.apply(
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": {"name": "egressd", "namespace": namespace},
                "rules": [
                    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": readme_lease_verbs()}
                ],
            }
        )
        api.apply(
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": "egressd", "namespace": namespace},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "egressd"},
                "subjects": subject,
            }
        )
        api.apply(
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {"name": role_name},
                "rules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": readme_node_verbs()}],
            }
        )
        api.apply(
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": role_name},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role_name},
                "subjects": subject,
            }
        )
        for node in s.nodes:
            labels = {f"egressd.io/static-{suffix}": "true"}
            api.apply({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node, "labels": labels}})
        with cp.as_token(namespace, "egressd") as (_, token_kubeconfig):
            s.kubeconfig.write_bytes(token_kubeconfig.read_bytes())
            s.kubeconfig.chmod(0o600)
        for node in s.nodes:
            s.write_config(node, s.ips)
            s.start(node)
        yield s
    finally:
        for node in list(s.daemons):
            s.stop(node)
        for node in s.nodes:
            delete(api, f"/api/v1/nodes/{node}")
        delete(api, f"{RBAC}/clusterrolebindings/{role_name}")
        delete(api, f"{RBAC}/clusterroles/{role_name}")
        api.delete_namespace(namespace)


def test_static_mode_with_the_readme_rbac(static: Static) -> None:
    s = static
    owners = wait("both IPs owned", s.owned, 20)
    assert set(owners.values()) == set(s.nodes), f"the two IPs are spread over the two nodes: {owners}"

    # graceful handoff: SIGTERM hands the owner's IP to the other node at once
    ip = s.ips[0]
    owner = owners[ip]
    assert owner is not None
    other = next(n for n in s.nodes if n != owner)
    started = time.monotonic()
    s.stop(owner, signal.SIGTERM)
    wait(f"{ip} handed to {other}", lambda: s.holders()[ip] == other, 5, 0.005)
    assert time.monotonic() - started < 2.0
    restarted_at = s.log(owner).stat().st_size
    s.start(owner)

    # SIGKILL: the restarted node takes the IP over within leaseDuration + 2 retryPeriods
    def standing_by() -> bool:
        with s.log(owner).open("rb") as fh:
            fh.seek(restarted_at)
            return f"ip={ip} node={owner} epoch=" in fh.read().decode(errors="replace")

    wait(f"{owner} back and standing by for {ip}", standing_by, 10)
    killed = time.monotonic()
    s.stop(other, signal.SIGKILL)
    wait(f"{ip} taken over by {owner}", lambda: s.holders()[ip] == owner, 10, 0.005)
    gap = time.monotonic() - killed
    bound = T.lease_duration + 2 * T.retry_period
    assert gap <= bound + 0.3, f"takeover took {gap:.3f}s (bound {bound:.2f}s)"
    s.start(other)

    # an IP removed from the config: its claim is deleted (restarted with the new config)
    kept, removed = s.ips
    for node in s.nodes:
        s.write_config(node, (kept,))
    for node in s.nodes:
        s.stop(node)
    for node in s.nodes:
        s.start(node)
    wait(
        f"the claim of {removed} deleted",
        lambda: (
            not any((i["metadata"].get("annotations") or {}).get("egressd.io/egress-ip") == removed for i in s.leases())
        ),
        15,
        0.05,
    )
    wait(f"{kept} owned", lambda: s.holders()[kept] in s.nodes, 15)
    s.check()
