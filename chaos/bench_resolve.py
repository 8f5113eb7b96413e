"""How long the Kubernetes mode takes to resolve policies, pods and nodes into
egress groups, and how much memory its index holds.

    python chaos/bench_resolve.py [--pods 5000] [--policies 50] [--nodes 100] [--rounds 20]

A synthetic cluster: ``--pods`` pods spread over 50 namespaces (labels of a
Deployment: app, org, class, pod-template-hash), ``--nodes`` nodes of which one
in ten is a gateway, and ``--policies`` policies that mix the selector shapes
users write (matchLabels with a namespaceSelector, matchExpressions across all
namespaces, a whole namespace by label, NotIn, the namespace name), some with
overlapping destinations so that overlap resolution has work to do. Figures:

* ``relist``: :meth:`Cluster.replace` of every resource from plain objects;
* ``resolve``: :func:`resolve` on the filled index (min, median, max of
  ``--rounds``);
* ``apply``: one pod relabelled through :meth:`Cluster.apply`, then resolved;
* ``memory``: what the index and one resolution hold (tracemalloc).
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import time
import tracemalloc
from typing import Any

from egressd.core.cluster_index import Cluster
from egressd.core.resolution import resolve

NAMESPACES = 50
CLASSES = ("xwing", "ywing", "tiefighter", "awing", "bwing")


def namespaces() -> list[dict[str, Any]]:
    return [
        {"metadata": {"name": f"team-{i:02d}", "labels": {"team": f"team-{i:02d}", "tier": ("prod", "dev")[i % 2]}}}
        for i in range(NAMESPACES)
    ]


def pods(count: int, nodes: int, rng: random.Random) -> list[dict[str, Any]]:
    out = []
    for i in range(count):
        app = f"app-{i % 40:02d}"
        labels = {
            "app": app,
            "org": ("alliance", "empire")[i % 2],
            "class": CLASSES[i % len(CLASSES)],
            "pod-template-hash": f"{rng.getrandbits(32):08x}",
        }
        out.append(
            {
                "metadata": {"namespace": f"team-{i % NAMESPACES:02d}", "name": f"{app}-{i:05d}", "labels": labels},
                "spec": {"nodeName": f"node-{i % nodes:03d}"},
                "status": {
                    "phase": "Running",
                    "podIP": f"10.{64 + i // 65536}.{i // 256 % 256}.{i % 256}",
                    "podIPs": [{"ip": f"10.{64 + i // 65536}.{i // 256 % 256}.{i % 256}"}],
                },
            }
        )
    return out


def node_objects(count: int) -> list[dict[str, Any]]:
    return [
        {
            "metadata": {
                "name": f"node-{i:03d}",
                "labels": {"egress-gw": "true" if i % 10 == 0 else "false", "zone": "abc"[i % 3]},
            },
            "spec": {},
            "status": {"addresses": [{"type": "InternalIP", "address": f"172.18.{1 + i // 250}.{i % 250 + 2}"}]},
        }
        for i in range(count)
    ]


def policy_objects(count: int) -> list[dict[str, Any]]:
    out = []
    for i in range(count):
        shape = i % 5
        team = f"team-{i % NAMESPACES:02d}"
        selector: dict[str, Any]
        if shape == 0:
            selector = {
                "podSelector": {"matchLabels": {"app": f"app-{i % 40:02d}"}},
                "namespaceSelector": {"matchLabels": {"team": team}},
            }
        elif shape == 1:
            selector = {
                "podSelector": {
                    "matchLabels": {"org": "alliance"},
                    "matchExpressions": [{"key": "class", "operator": "In", "values": ["xwing", "ywing"]}],
                }
            }
        elif shape == 2:
            selector = {"namespaceSelector": {"matchLabels": {"tier": "prod", "team": team}}}
        elif shape == 3:
            selector = {
                "podSelector": {"matchExpressions": [{"key": "class", "operator": "NotIn", "values": ["tiefighter"]}]},
                "namespaceSelector": {
                    "matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": [team]}]
                },
            }
        else:
            selector = {"podSelector": {"matchLabels": {"class": "ywing"}}}
        # every fifth policy shares its destination with the policy of shape 1
        # before it, and selects some of its pods: overlaps to resolve
        destination = f"10.{200 + (i - 3 if shape == 4 else i) % 50}.0.0/16"
        out.append(
            {
                "metadata": {
                    "name": f"policy-{i:02d}",
                    "uid": f"uid-{i}",
                    "generation": 1,
                    "creationTimestamp": f"2026-11-24T10:{i // 60:02d}:{i % 60:02d}Z",
                    "resourceVersion": str(100 + i),
                },
                "spec": {
                    "selectors": [selector],
                    "destinationCIDRs": [destination],
                    "egressGateway": {
                        "nodeSelector": {"matchLabels": {"egress-gw": "true", "zone": "abc"[i % 3]}},
                        "interface": "net0",
                        "egressIPs": [f"172.31.{i}.1", f"172.31.{i}.2"],
                    },
                },
            }
        )
    return out


def fill(cluster: Cluster, objects: dict[str, list[dict[str, Any]]]) -> None:
    for resource in ("namespaces", "nodes", "pods", "policies"):
        cluster.replace(resource, objects[resource])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=5000)
    parser.add_argument("--policies", type=int, default=50)
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    rng = random.Random(7)
    objects = {
        "namespaces": namespaces(),
        "nodes": node_objects(args.nodes),
        "pods": pods(args.pods, args.nodes, rng),
        "policies": policy_objects(args.policies),
    }

    started = time.perf_counter()
    fill(Cluster(), objects)
    relist = time.perf_counter() - started

    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    cluster = Cluster()
    fill(cluster, objects)
    index_bytes = tracemalloc.get_traced_memory()[0] - base
    resolution = resolve(cluster)
    resolution_bytes = tracemalloc.get_traced_memory()[0] - base - index_bytes
    tracemalloc.stop()

    times = []
    for _ in range(args.rounds):
        started = time.perf_counter()
        resolution = resolve(cluster)
        times.append(time.perf_counter() - started)

    pod = objects["pods"][0]
    relabelled = {**pod, "metadata": {**pod["metadata"], "labels": {**pod["metadata"]["labels"], "class": "ywing"}}}
    started = time.perf_counter()
    cluster.apply("pods", "MODIFIED", relabelled)
    resolve(cluster)
    apply_then_resolve = time.perf_counter() - started

    sources = sum(len(g.source_cidrs) for g in resolution.groups)
    dropped = sum(len(o.dropped_pods) for o in resolution.outcomes.values())
    reasons: dict[str, int] = {}
    for outcome in resolution.outcomes.values():
        reasons[outcome.reason] = reasons.get(outcome.reason, 0) + 1
    print(
        f"{args.pods} pods, {args.policies} policies, {args.nodes} nodes: {len(resolution.groups)} groups, "
        f"{sources} sources, {len(resolution.pod_nodes)} selected pod IPs, {dropped} pods dropped for overlap, "
        f"outcomes {reasons}"
    )
    print(f"relist (replace of every resource) : {relist * 1000:.1f} ms")
    print(
        f"resolve                            : min {min(times) * 1000:.1f} ms  "
        f"median {statistics.median(times) * 1000:.1f} ms  max {max(times) * 1000:.1f} ms  ({args.rounds} rounds)"
    )
    print(f"apply (pod relabelled) + resolve   : {apply_then_resolve * 1000:.1f} ms")
    print(
        f"memory                             : index {index_bytes / 2**20:.1f} MiB, "
        f"one resolution {resolution_bytes / 2**20:.1f} MiB"
    )


if __name__ == "__main__":
    main()
