"""Benchmarks of the Kubernetes mode.

``--part scale``: CPU and memory of the daemon with many pods and policies.
Starts ``egressd apiserver``, fills it with the EgressGatewayPolicy CRD,
``--policies`` policies (two egress IPs each, podSelector ``app=app-<k>``,
nodeSelector ``egress-gw=true``), ``--nodes`` Nodes (a quarter of them
gateways), 50 Namespaces and ``--pods`` running Pods spread over them, then
runs two ``egressd run --mode kubernetes --dataplane record`` daemons: a
gateway (candidate of every policy) and a worker (steering only). It reports
the time until the gateway holds its share of the egress IPs, CPU (utime +
stime from /proc) while idle and while ``--churn`` pods per second are
relabelled in and out of a policy, and the resident memory (VmRSS, VmHWM).

``--part selection``: the time from a pod becoming selected to its traffic
being SNATed, in the lab (Kubernetes mode, kernel data plane, needs root).
Labels ``tiefighter`` org=alliance and sends it HTTP requests to the outpost
every few milliseconds until the outpost sees an egress IP as the source;
then removes the label and waits until it sees the pod address again.

Run: ``python chaos/bench_kubernetes.py --part scale`` (about a minute) and
``python chaos/bench_kubernetes.py --part selection --rounds 20``.
"""

from __future__ import annotations

import argparse
import http.client
import ipaddress
import json
import os
import random
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
POLICY_PATH = "/apis/egressd.io/v1alpha1/egressgatewaypolicies"


class Api:
    """A keep-alive JSON connection to the lab API server."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def call(self, method: str, path: str, body: Any = None, ctype: str = "application/json") -> tuple[int, Any]:
        payload = None if body is None else json.dumps(body).encode()
        self.conn.request(method, path, body=payload, headers={"Content-Type": ctype} if payload else {})
        resp = self.conn.getresponse()
        raw = resp.read()
        return resp.status, json.loads(raw) if raw else None

    def ok(self, method: str, path: str, body: Any = None, ctype: str = "application/json") -> Any:
        status, answer = self.call(method, path, body, ctype)
        if status not in (200, 201):
            raise RuntimeError(f"{method} {path}: {status} {answer}")
        return answer


def proc_stats(pid: int) -> tuple[float, int, int]:
    """(CPU seconds, VmRSS kB, VmHWM kB) of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return cpu, int(status["VmRSS"].split()[0]), int(status["VmHWM"].split()[0])


def seed(api: Api, *, policies: int, nodes: int, pods: int) -> None:
    crd = yaml.safe_load((ROOT / "deploy" / "crd.yaml").read_text())
    api.ok("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)
    for name in ("egressd", *(f"ns-{i}" for i in range(50))):
        api.ok("POST", "/api/v1/namespaces", {"metadata": {"name": name}})
    gateways = max(2, nodes // 4)
    for i in range(nodes):
        labels = {"egress-gw": "true"} if i < gateways else {}
        api.ok(
            "POST",
            "/api/v1/nodes",
            {
                "metadata": {"name": f"node-{i}", "labels": labels},
                "status": {"addresses": [{"type": "InternalIP", "address": f"10.0.{i // 250}.{i % 250 + 1}"}]},
            },
        )
    for k in range(policies):
        api.ok(
            "POST",
            POLICY_PATH,
            {
                "apiVersion": "egressd.io/v1alpha1",
                "kind": "EgressGatewayPolicy",
                "metadata": {"name": f"policy-{k}"},
                "spec": {
                    "selectors": [{"podSelector": {"matchLabels": {"app": f"app-{k}"}}}],
                    "destinationCIDRs": [f"192.168.{k}.0/24"],
                    "egressGateway": {
                        "nodeSelector": {"matchLabels": {"egress-gw": "true"}},
                        "interface": "net0",
                        "egressIPs": [f"10.200.{k}.1", f"10.200.{k}.2"],
                    },
                },
            },
        )
    base = ipaddress.ip_address("10.128.0.0")
    for i in range(pods):
        ns, name = f"ns-{i % 50}", f"pod-{i}"
        path = f"/api/v1/namespaces/{ns}/pods"
        api.ok(
            "POST",
            path,
            {
                "metadata": {"name": name, "labels": {"app": f"app-{i % policies}", "tier": "web"}},
                "spec": {"nodeName": f"node-{i % nodes}", "containers": [{"name": "c", "image": "x"}]},
            },
        )
        ip = str(base + i)
        api.ok(
            "PATCH",
            f"{path}/{name}/status",
            {"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}},
            "application/merge-patch+json",
        )


def scale(args: argparse.Namespace) -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    tmp = Path(tempfile.mkdtemp(prefix="egressd-bench-k8s-"))
    procs: list[subprocess.Popen[bytes]] = []
    logs = []
    try:
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "egressd.cli.main", "apiserver", "--listen", f"127.0.0.1:{port}"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        api = None
        for _ in range(200):
            try:
                api = Api(port)
                api.call("GET", "/api/v1/namespaces")
                break
            except OSError:
                time.sleep(0.05)
        assert api is not None
        started = time.monotonic()
        seed(api, policies=args.policies, nodes=args.nodes, pods=args.pods)
        took = time.monotonic() - started
        print(f"seeded {args.policies} policies, {args.nodes} nodes, {args.pods} pods in {took:.1f}s")
        daemons = {}
        for role, node in (("gateway", "node-0"), ("worker", f"node-{args.nodes - 1}")):
            cfg = tmp / f"{role}.yaml"
            index = int(node.split("-")[1])
            cfg.write_text(
                json.dumps(
                    {
                        "node": {"name": node, "address": f"10.0.{index // 250}.{index % 250 + 1}"},
                        "mode": "kubernetes",
                        "kubernetes": {"access": "url", "url": url, "namespace": "egressd"},
                        "metrics": {"listen": ""},
                    }
                )
            )
            log = (tmp / f"{role}.log").open("wb")
            logs.append(log)
            daemons[role] = subprocess.Popen(
                [sys.executable, "-m", "egressd.cli.main", "run", "--config", str(cfg), "--dataplane", "record"],
                stdout=log,
                stderr=log,
            )
            procs.append(daemons[role])
        leases = "/apis/coordination.k8s.io/v1/namespaces/egressd/leases"
        started = time.monotonic()
        total = 2 * args.policies
        while True:
            items = api.ok("GET", leases)["items"]
            held = sum(1 for i in items if i["spec"].get("holderIdentity") == "node-0")
            if held == total:  # the only running gateway takes every IP (after the non-preferred delay)
                break
            if time.monotonic() - started > 120:
                print(f"the gateway holds {held}/{total} IPs after 120 s", file=sys.stderr)
                return 1
            time.sleep(0.2)
        print(f"gateway holds all {total} egress IPs {time.monotonic() - started:.1f}s after start")
        time.sleep(2.0)

        def window(seconds: float, churn: float) -> dict[str, tuple[float, int, int]]:
            before = {role: proc_stats(p.pid) for role, p in daemons.items()}
            t0 = time.monotonic()
            rng = random.Random(1)
            changes = 0
            while time.monotonic() - t0 < seconds:
                if churn > 0 and args.pods:
                    i = rng.randrange(args.pods)
                    ns, name = f"ns-{i % 50}", f"pod-{i}"
                    app = f"app-{rng.randrange(args.policies)}"
                    api.ok(
                        "PATCH",
                        f"/api/v1/namespaces/{ns}/pods/{name}",
                        {"metadata": {"labels": {"app": app}}},
                        "application/merge-patch+json",
                    )
                    changes += 1
                    time.sleep(max(0.0, t0 + changes / churn - time.monotonic()))
                else:
                    time.sleep(0.1)
            elapsed = time.monotonic() - t0
            out = {}
            for role, p in daemons.items():
                cpu1, rss, hwm = proc_stats(p.pid)
                out[role] = ((cpu1 - before[role][0]) / elapsed, rss, hwm)
            return out

        idle = window(args.seconds, 0.0)
        busy = window(args.seconds, args.churn)
        print(f"{'':10} {'CPU idle':>10} {'CPU churn':>10} {'RSS MiB':>8} {'peak MiB':>9}")
        for role in daemons:
            print(
                f"{role:10} {idle[role][0] * 100:9.1f}% {busy[role][0] * 100:9.1f}% "
                f"{busy[role][1] / 1024:8.1f} {busy[role][2] / 1024:9.1f}"
            )
        print(f"(churn: {args.churn:g} pod relabels per second; CPU in % of one core)")
        return 0
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        for log in logs:
            log.close()


def selection(args: argparse.Namespace) -> int:
    from egressd.lab.netlab import Lab  # noqa: PLC0415

    egress = {"172.18.0.42", "172.18.0.43"}
    lab = Lab(f"egb{secrets.token_hex(2)}-", tempfile.mkdtemp(prefix="egressd-bench-lab-"), mode="kubernetes")

    def seen() -> str | None:
        try:
            _, raw = lab.http("tiefighter", "http://172.18.0.7:8000/", timeout=0.05)
        except OSError:
            return None
        return str(json.loads(raw)["ip"])

    def until(predicate: Any, timeout: float) -> float:
        t0 = time.monotonic()
        while not predicate():
            if time.monotonic() - t0 > timeout:
                raise RuntimeError("timed out")
            time.sleep(0.002)
        return time.monotonic() - t0

    on: list[float] = []
    off: list[float] = []
    try:
        lab.up()
        until(lambda: all(r.holder for r in lab.leases()) and len(lab.leases()) == 2, 30)
        until(lambda: seen() == "10.244.1.3", 10)
        for _ in range(args.rounds):
            t0 = time.monotonic()
            lab.label_pod("tiefighter", {"org": "alliance"})
            until(lambda: seen() in egress, 10)
            on.append(time.monotonic() - t0)
            time.sleep(0.3)
            t0 = time.monotonic()
            lab.label_pod("tiefighter", {"org": "empire"})
            until(lambda: seen() == "10.244.1.3", 10)
            off.append(time.monotonic() - t0)
            time.sleep(0.3)
    finally:
        lab.down()
    for what, values in (("selected -> SNATed", on), ("unselected -> own address", off)):
        ms = sorted(v * 1000 for v in values)
        print(
            f"{what:28} p50 {statistics.median(ms):6.1f} ms  p90 {ms[int(0.9 * (len(ms) - 1))]:6.1f} ms  "
            f"max {ms[-1]:6.1f} ms  ({len(ms)} rounds)"
        )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["scale", "selection"], required=True)
    parser.add_argument("--policies", type=int, default=50)
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--pods", type=int, default=5000)
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each measuring window")
    parser.add_argument("--churn", type=float, default=20.0, help="pod relabels per second in the churn window")
    parser.add_argument("--rounds", type=int, default=10, help="selection: label/unlabel rounds")
    args = parser.parse_args()
    return scale(args) if args.part == "scale" else selection(args)


if __name__ == "__main__":
    sys.exit(main())
