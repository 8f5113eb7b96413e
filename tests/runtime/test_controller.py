"""The Kubernetes mode with fakes at the ports: policies, nodes, namespaces and
pods in a FakeCluster, leases in a FakeLeaseStore, the recording data plane.

Two gateways (gw-a, gw-b, labelled egress-gw=true) and a worker with pods; on
the virtual-time loop (tests/runtime/conftest.py) with a VirtualClock.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from ipaddress import ip_address, ip_interface, ip_network
from typing import Any

from egressd.adapters.recording import RecordingDataPlane
from egressd.core.assignment import sources_for
from egressd.core.errors import LostRace
from egressd.core.model import IPAddress, KubeSettings, NodeSettings, Settings
from egressd.core.ownership_events import OwnershipEvent
from egressd.ports import ClusterEvent
from egressd.runtime.controller import Controller
from egressd.runtime.daemon import Daemon
from egressd.runtime.member import DataPlane
from egressd.runtime.sinks import FanoutEvents, LogEvents
from tests.fakes import FakeCluster, FakeLeaseStore
from tests.runtime.support import TIMING, RunsDaemon, assert_no_two_owners
from tests.virtual_time import VirtualClock, until

IP1, IP2 = ip_address("172.18.0.42"), ip_address("172.18.0.43")
ADDRESSES = {"gw-a": "10.0.0.1", "gw-b": "10.0.0.2", "gw-c": "10.0.0.3", "worker": "10.0.0.9"}
GATEWAY = {"egress-gw": "true"}


def node_object(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **(labels or {})}},
        "status": {"addresses": [{"type": "InternalIP", "address": ADDRESSES[name]}]},
    }


def pod_object(
    name: str, ip: str, labels: dict[str, str], *, node: str = "worker", ns: str = "default"
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"nodeName": node},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
    }


def policy_object(
    name: str = "outpost", ips: tuple[str, ...] = ("172.18.0.42", "172.18.0.43"), **spec: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "selectors": [{"podSelector": {"matchLabels": {"org": "alliance"}}}],
        "destinationCIDRs": ["172.18.0.0/16"],
        "egressGateway": {"nodeSelector": {"matchLabels": GATEWAY}, "interface": "net0", "egressIPs": list(ips)},
    }
    body.update(spec)
    return {
        "apiVersion": "egressd.io/v1alpha1",
        "kind": "EgressGatewayPolicy",
        "metadata": {"name": name},
        "spec": body,
    }


class Recorder:
    def __init__(self) -> None:
        self.events: list[OwnershipEvent] = []

    def emit(self, event: OwnershipEvent) -> None:
        self.events.append(event)


class NoInterface(RecordingDataPlane):
    async def has_interface(self, interface: str) -> bool:
        return False


class Node(RunsDaemon):
    def __init__(
        self, name: str, store: FakeLeaseStore, source: FakeCluster, *, plane: RecordingDataPlane | None = None
    ) -> None:
        settings = Settings(
            node=NodeSettings(name=name, address=ip_address(ADDRESSES[name])),
            mode="kubernetes",
            timing=TIMING,
            kubernetes=KubeSettings(exclude_cordoned=True),
        )
        self.plane = plane or RecordingDataPlane(name)
        self.events = Recorder()
        fanout = FanoutEvents([LogEvents(), self.events])
        self.daemon = Daemon(
            settings,
            store=store,
            dataplane=DataPlane(self.plane, self.plane, self.plane),
            steering=self.plane,
            clock=VirtualClock(),
            events=fanout,
            repair_interval=3600,
        )
        self.controller = Controller(settings, source, self.daemon, clock=VirtualClock(), status_debounce=0.02)
        self.controller.attach()
        fanout.sinks.append(self.controller)
        self.task: asyncio.Task[int] | None = None

    def serving(self, ip: IPAddress) -> bool:
        return ip in self.plane.snat

    def sources(self) -> set[str]:
        return {str(s) for g in self.plane.staged_groups for s in g.source_cidrs}


@asynccontextmanager
async def lab(
    *names: str, planes: dict[str, RecordingDataPlane] | None = None, source: FakeCluster | None = None
) -> AsyncIterator[tuple[FakeCluster, dict[str, Node]]]:
    source = source or FakeCluster()
    for name in ("gw-a", "gw-b"):
        source.put("nodes", node_object(name, GATEWAY))
    source.put("nodes", node_object("worker"))
    source.put("namespaces", {"metadata": {"name": "default", "labels": {"kubernetes.io/metadata.name": "default"}}})
    source.put("pods", pod_object("xwing", "10.244.1.2", {"org": "alliance", "class": "xwing"}))
    source.put("pods", pod_object("tiefighter", "10.244.1.3", {"org": "empire", "class": "tiefighter"}))
    source.put("policies", policy_object())
    store = FakeLeaseStore()
    nodes = {n: Node(n, store, source, plane=(planes or {}).get(n)) for n in names}
    for node in nodes.values():
        node.start()
    try:
        yield source, nodes
    finally:
        for node in nodes.values():
            if node.task is not None and not node.task.done():
                node.task.cancel()
                await asyncio.gather(node.task, return_exceptions=True)


def assert_safe(nodes: dict[str, Node]) -> None:
    assert_no_two_owners(n.plane for n in nodes.values())


def owners(nodes: dict[str, Node], ip: IPAddress) -> list[str]:
    return [name for name, n in nodes.items() if n.serving(ip)]


async def test_two_ips_spread_over_two_gateways() -> None:
    async with lab("gw-a", "gw-b", "worker") as (_, nodes):
        await until(lambda: len(owners(nodes, IP1)) == 1 and len(owners(nodes, IP2)) == 1)
        await asyncio.sleep(0.3)
        assert owners(nodes, IP1) != owners(nodes, IP2), "both IPs on one gateway"
        assert nodes["worker"].daemon.members == {}
        assert_safe(nodes)


async def test_selection_follows_pod_labels_on_gateways_and_workers() -> None:
    async with lab("gw-a", "worker") as (source, nodes):
        gw, worker = nodes["gw-a"], nodes["worker"]
        await until(lambda: gw.sources() == {"10.244.1.2/32"})
        await until(lambda: bool(worker.daemon.steerer and worker.plane.steering.get(IP1)))
        source.relabel("pods", "tiefighter", {"org": "alliance"}, namespace="default")
        await until(lambda: gw.sources() == {"10.244.1.2/32", "10.244.1.3/32"})
        steered = (
            {str(s) for g in worker.daemon.steerer.groups for s in g.source_cidrs} if worker.daemon.steerer else set()
        )
        assert steered == {"10.244.1.2/32", "10.244.1.3/32"}
        source.delete("pods", "xwing", namespace="default")
        await until(lambda: gw.sources() == {"10.244.1.3/32"})
        source.relabel("pods", "tiefighter", {"org": None}, namespace="default")
        await until(lambda: gw.sources() == set())


async def test_namespace_selector_follows_namespace_labels() -> None:
    selectors = [
        {"podSelector": {"matchLabels": {"org": "alliance"}}, "namespaceSelector": {"matchLabels": {"team": "rebels"}}}
    ]
    async with lab("gw-a") as (source, nodes):
        source.put("policies", policy_object(selectors=selectors))
        gw = nodes["gw-a"]
        await until(lambda: gw.controller.resolution is not None and gw.sources() == set())
        source.relabel("namespaces", "default", {"team": "rebels"})
        await until(lambda: gw.sources() == {"10.244.1.2/32"})
        source.relabel("namespaces", "default", {"team": None})
        await until(lambda: gw.sources() == set())


async def test_each_pod_keeps_one_egress_ip() -> None:
    async with lab("gw-a") as (source, nodes):
        for i in range(20):
            source.put("pods", pod_object(f"p{i}", f"10.244.1.{10 + i}", {"org": "alliance"}))
        gw = nodes["gw-a"]
        await until(lambda: len(gw.sources()) == 21)
        (group,) = gw.plane.staged_groups
        split = {ip: set(sources_for(group, ip)) for ip in group.egress_ips}
        assert split[IP1] and split[IP2], "the pods are not spread over both IPs"
        assert not split[IP1] & split[IP2]
        source.delete("pods", "p3", namespace="default")
        await until(lambda: len(gw.sources()) == 20)
        (after,) = gw.plane.staged_groups
        for ip in group.egress_ips:
            assert set(sources_for(after, ip)) == split[ip] - {ip_network("10.244.1.13/32")}


async def test_a_gateway_losing_its_label_hands_off() -> None:
    async with lab("gw-a", "gw-b") as (source, nodes):
        await until(lambda: len(owners(nodes, IP1)) == 1 and len(owners(nodes, IP2)) == 1)
        leaving = owners(nodes, IP1)[0]
        staying = "gw-b" if leaving == "gw-a" else "gw-a"
        source.relabel("nodes", leaving, {"egress-gw": None})
        await until(lambda: owners(nodes, IP1) == [staying] and owners(nodes, IP2) == [staying])
        await until(lambda: nodes[leaving].daemon.members == {})
        released = [e for e in nodes[leaving].events.events if e.kind == "released"]
        assert released and all(e.reason == "not-candidate" for e in released)
        assert_safe(nodes)
        source.relabel("nodes", leaving, GATEWAY)  # back: a candidate again, no preemption
        await until(lambda: len(nodes[leaving].daemon.members) == 2)
        await asyncio.sleep(0.3)
        assert owners(nodes, IP1) == [staying]


async def test_status_shows_owners_and_conditions() -> None:
    async with lab("gw-a", "gw-b") as (source, nodes):
        await until(lambda: len(owners(nodes, IP1)) == 1 and len(owners(nodes, IP2)) == 1)

        def status() -> dict[str, Any]:
            return dict(source.get("policies", "outpost").get("status") or {})

        def ready() -> bool:
            conditions = {c["type"]: c["status"] for c in status().get("conditions", [])}
            return conditions.get("Ready") == "True" and conditions.get("Degraded") == "False"

        await until(ready)
        entries = {e["egressIP"]: e for e in status()["egressIPs"]}
        assert entries["172.18.0.42"]["node"] == owners(nodes, IP1)[0]
        assert entries["172.18.0.43"]["node"] == owners(nodes, IP2)[0]
        assert status()["selectedPods"] == 1
        writes = source.status_writes
        await asyncio.sleep(0.5)
        assert source.status_writes == writes, "an unchanged status was written again"
        for name in ("gw-a", "gw-b"):
            source.relabel("nodes", name, {"egress-gw": None})

        def degraded() -> bool:
            conditions = {c["type"]: c for c in status().get("conditions", [])}
            return bool(conditions.get("Degraded", {}).get("status") == "True")

        await until(degraded)
        conditions = {c["type"]: c for c in status()["conditions"]}
        assert conditions["Degraded"]["reason"] == "NoCandidate"
        assert conditions["Ready"]["status"] == "False"


async def test_events_on_policy_and_node() -> None:
    async with lab("gw-a", "gw-b") as (source, nodes):
        await until(lambda: len(owners(nodes, IP1)) == 1)
        owner = owners(nodes, IP1)[0]
        await until(lambda: "EgressIPAcquired" in source.reasons("Node", owner))
        assert "EgressIPAcquired" in source.reasons("EgressGatewayPolicy", "outpost")
        event = next(e for e in source.events if e["involvedObject"]["kind"] == "EgressGatewayPolicy")
        assert event["metadata"]["namespace"] == "default" and event["source"]["component"] == "egressd"
        assert event["involvedObject"]["uid"] == "uid-outpost"
        await nodes[owner].stop()
        await until(lambda: "EgressIPReleased" in source.reasons("Node", owner))


async def test_a_conflicting_policy_is_reported_and_the_first_keeps_working() -> None:
    async with lab("gw-a") as (source, nodes):
        gw = nodes["gw-a"]
        await until(lambda: gw.serving(IP1) and gw.serving(IP2))
        source.put("policies", policy_object("copycat", ips=("172.18.0.43", "172.18.0.44")))
        await until(lambda: "EgressIPConflict" in source.reasons("EgressGatewayPolicy", "copycat"))

        def copycat_ready() -> dict[str, Any]:
            conditions = source.get("policies", "copycat").get("status", {}).get("conditions", [])
            found: dict[str, Any] = {c["type"]: c for c in conditions}.get("Ready", {})
            return found

        await until(lambda: copycat_ready().get("reason") == "EgressIPConflict")
        assert "outpost" in copycat_ready()["message"]
        assert gw.serving(IP1) and gw.serving(IP2)
        assert ip_address("172.18.0.44") not in gw.daemon.members


async def test_a_node_without_the_interface_does_not_serve() -> None:
    async with lab("gw-a", "gw-b", planes={"gw-a": NoInterface("gw-a")}) as (source, nodes):
        await until(lambda: owners(nodes, IP1) == ["gw-b"] and owners(nodes, IP2) == ["gw-b"])
        await until(lambda: "InterfaceMissing" in source.reasons("Node", "gw-a"))
        assert nodes["gw-a"].daemon.members == {}
        assert "InterfaceMissing" in source.reasons("EgressGatewayPolicy", "outpost")


async def test_a_node_where_an_egress_ip_is_the_broadcast_address_of_its_subnet_does_not_serve() -> None:
    plane = RecordingDataPlane("gw-a")
    plane.on_link["net0"] = [ip_interface("172.18.0.40/30")]  # 172.18.0.43 is its broadcast address
    async with lab("gw-a", "gw-b", planes={"gw-a": plane}) as (source, nodes):
        await until(lambda: owners(nodes, IP1) == ["gw-b"] and owners(nodes, IP2) == ["gw-b"])
        await until(lambda: "EgressIPOnLink" in source.reasons("Node", "gw-a"))
        assert nodes["gw-a"].daemon.members == {}
        assert "EgressIPOnLink" in source.reasons("EgressGatewayPolicy", "outpost")
        assert "broadcast address of 172.18.0.40/30" in nodes["gw-a"].controller.unservable["outpost"]
        plane.on_link["net0"] = [ip_interface("172.18.0.5/16")]
        source.put("pods", pod_object("ywing", "10.244.2.2", {"org": "alliance", "class": "ywing"}))
        await until(lambda: "outpost" not in nodes["gw-a"].controller.unservable)


async def test_policy_deleted_releases_its_ips() -> None:
    async with lab("gw-a") as (source, nodes):
        gw = nodes["gw-a"]
        await until(lambda: gw.serving(IP1))
        source.delete("policies", "outpost")
        await until(lambda: not gw.serving(IP1) and not gw.serving(IP2))
        await until(lambda: gw.daemon.members == {})
        await until(lambda: gw.plane.staged_groups == ())


class SilentCluster(FakeCluster):
    """An API server that accepts the watch but never answers the list."""

    async def watch(self) -> AsyncIterator[ClusterEvent]:
        await asyncio.Event().wait()
        yield ClusterEvent("pods", "RELISTED")


async def test_daemon_waits_for_the_first_resolution() -> None:
    source = SilentCluster()
    store = FakeLeaseStore()
    node = Node("gw-a", store, source)
    node.start()
    try:
        await asyncio.sleep(0.2)
        ok, problems = node.daemon.readiness()
        assert not ok
        assert "not yet listed: policies, nodes, namespaces, pods" in problems
        assert "initial reconcile not done" in problems
        assert node.daemon.members == {} and node.plane.ops == []
    finally:
        await node.stop()


async def test_a_cordoned_gateway_hands_off_when_so_configured() -> None:
    async with lab("gw-a", "gw-b") as (source, nodes):
        await until(lambda: len(owners(nodes, IP1)) == 1)
        leaving = owners(nodes, IP1)[0]
        staying = "gw-b" if leaving == "gw-a" else "gw-a"
        cordoned = source.get("nodes", leaving)
        cordoned["spec"] = {"unschedulable": True}
        source.put("nodes", cordoned)
        await until(lambda: owners(nodes, IP1) == [staying] and owners(nodes, IP2) == [staying])
        await until(lambda: nodes[leaving].daemon.members == {})
        assert_safe(nodes)


async def test_status_report_and_metrics_show_the_policies() -> None:
    async with lab("gw-a", "worker") as (source, nodes):
        gw = nodes["gw-a"]
        await until(lambda: gw.controller.selected_pods() == {"outpost": 1.0})
        assert gw.controller.served() == {"outpost": 1.0}
        report = gw.daemon.status_report()["policies"]["outpost"]
        assert report == {
            "reason": "Ready",
            "message": report["message"],
            "selectedPods": 1,
            "candidates": ["gw-a", "gw-b"],
            "notServedHere": None,
        }
        source.put("policies", policy_object("copycat", ips=("172.18.0.42",)))
        await until(lambda: gw.controller.served().get("copycat") == 0.0)


async def test_node_events_name_the_node_with_its_uid() -> None:
    """``kubectl describe node`` shows only Events whose involvedObject carries the Node's uid."""
    async with lab("gw-a", "gw-b") as (source, nodes):
        await until(lambda: len(owners(nodes, IP1)) == 1)
        owner = owners(nodes, IP1)[0]
        await until(lambda: "EgressIPAcquired" in source.reasons("Node", owner))
        event = next(e for e in source.events if e["involvedObject"]["kind"] == "Node")
        assert event["involvedObject"] == {"apiVersion": "v1", "kind": "Node", "name": owner, "uid": f"uid-{owner}"}


class NodesWithoutUid(FakeCluster):
    """Nodes whose uid this daemon does not know (not seen yet, or unreadable)."""

    def put(self, resource: str, obj: dict[str, Any]) -> dict[str, Any]:
        if resource == "nodes":
            obj = {**obj, "metadata": {**obj["metadata"], "uid": ""}}
        return super().put(resource, obj)


async def test_node_events_without_the_nodes_uid_carry_its_name_as_the_uid() -> None:
    """``kubectl describe node`` finds a node's Events by its uid or by its
    name in the uid field (the kubelet's); without either it shows none."""
    async with lab("gw-a", "gw-b", source=NodesWithoutUid()) as (source, nodes):
        await until(lambda: len(owners(nodes, IP1)) == 1)
        owner = owners(nodes, IP1)[0]
        await until(lambda: "EgressIPAcquired" in source.reasons("Node", owner))
        event = next(e for e in source.events if e["involvedObject"]["kind"] == "Node")
        assert event["involvedObject"] == {"apiVersion": "v1", "kind": "Node", "name": owner, "uid": owner}


async def test_a_broken_policy_is_one_warning_per_cluster() -> None:
    """Every node sees an invalid policy at once; the cluster gets one Warning
    about it, not one per node (and it names the policy's uid)."""
    async with lab("gw-a", "gw-b", "worker") as (source, nodes):
        await until(lambda: all(n.controller.resolved.is_set() for n in nodes.values()))
        source.put("policies", policy_object("broken", ips=("not-an-ip",)))
        await until(
            lambda: all(
                n.controller.policies_report().get("broken", {}).get("reason") == "Invalid" for n in nodes.values()
            )
        )
        await asyncio.sleep(0.1)  # let every node's Event request finish
        warnings = [e for e in source.events if e["involvedObject"]["name"] == "broken"]
        assert [e["reason"] for e in warnings] == ["Invalid"]
        assert warnings[0]["involvedObject"]["uid"] == "uid-broken"
        # an edit that breaks it differently is news: one more Event
        source.put("policies", policy_object("broken", ips=("not-an-ip-either",)))
        await until(lambda: len([e for e in source.events if e["involvedObject"]["name"] == "broken"]) == 2)
        await asyncio.sleep(0.1)
        assert len([e for e in source.events if e["involvedObject"]["name"] == "broken"]) == 2


class ConflictingCluster(FakeCluster):
    """Every status write loses a race: a storm of 409s."""

    async def write_policy_status(
        self, name: str, status: Mapping[str, Any], resource_version: str, *, deadline: float
    ) -> Mapping[str, Any]:
        self.status_writes += 1
        raise LostRace(f"policy {name}: the object has been modified")


async def test_a_storm_of_409s_on_the_status_is_not_answered_with_a_write_per_debounce() -> None:
    """A 409 means a newer policy is on its way through the watch: the status
    loop waits for it (or a second), it does not write again after each 20 ms debounce."""
    async with lab("gw-a", source=ConflictingCluster()) as (source, nodes):
        await until(lambda: nodes["gw-a"].serving(IP1) and nodes["gw-a"].serving(IP2))
        await until(lambda: source.status_writes >= 1)
        before = source.status_writes
        await asyncio.sleep(0.5)  # 25 debounce periods
        assert source.status_writes - before <= 1
