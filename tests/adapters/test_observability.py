"""Metrics move with a takeover; health and readiness fail for the right reasons.

The tests that only read metrics run on the virtual-time loop (the
``virtual_time`` marker, tests/adapters/conftest.py). Those that ask the HTTP
server stay on a real loop: their requests go through real sockets, and a
virtual clock would jump to the next timer (a daemon's, or the client's own
timeout) whenever the reply is not in the socket yet."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
import subprocess
import sys
from collections.abc import AsyncIterator

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from egressd.adapters.mqtt import MqttEvents
from egressd.adapters.observability import ObservabilityServer, PrometheusMetrics, status_for
from egressd.cli.main import conntrack_counters, daemon_gauges, mesh_counters, mqtt_counters, right_gauges
from egressd.core.mesh_messages import Heartbeat, Listen, Serving, encode
from egressd.core.mqtt_settings import MqttSettings
from egressd.core.states import State
from tests.fakes import FakeLeaseStore, FakeMeshNetwork
from tests.runtime.support import KEY as MESH_KEY
from tests.runtime.support import TIMING, ObjectLeaseStore, poisoned, settle, stop_all
from tests.runtime.test_conntrack_replication import IPS as CT_IPS
from tests.runtime.test_conntrack_replication import Node as CtNode
from tests.runtime.test_conntrack_replication import flow
from tests.runtime.test_daemon import IP, Node
from tests.runtime.test_mesh import IPS as MESH_IPS
from tests.runtime.test_mesh import Node as MeshNode
from tests.virtual_time import until


def samples(metrics: PrometheusMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(metrics: PrometheusMetrics, name: str, **labels: str) -> float:
    """The sample's value; a missing sample fails (it does not read as 0)."""
    key = (name, tuple(sorted(labels.items())))
    found = samples(metrics)
    assert key in found, f"no sample {name}{labels}"
    return found[key]


class Observed(Node):
    def __init__(self, name: str, store: FakeLeaseStore) -> None:
        super().__init__(name, store)
        self.metrics = PrometheusMetrics()
        self.daemon.metrics = self.metrics
        daemon_gauges(self.daemon, self.metrics)
        self.server = ObservabilityServer(self.metrics, health=self.daemon.health, ready=self.daemon.readiness)


@pytest.fixture
async def pair() -> AsyncIterator[tuple[FakeLeaseStore, list[Observed]]]:
    store = FakeLeaseStore()
    nodes = [Observed("gw-a", store), Observed("gw-b", store)]
    for node in nodes:
        await node.server.start("127.0.0.1", 0)
        node.start()
    try:
        yield store, nodes
    finally:
        for node in nodes:
            if node.task is not None and not node.task.done():
                node.task.cancel()
                await asyncio.gather(node.task, return_exceptions=True)
            await node.server.stop()


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return resp.status, await resp.text()


@pytest.mark.virtual_time
async def test_every_metric_moves_in_a_takeover(pair: tuple[FakeLeaseStore, list[Observed]]) -> None:
    store, nodes = pair
    await until(lambda: any(n.serving for n in nodes), 2.0)
    owner = next(n for n in nodes if n.serving)
    m = owner.metrics
    ip = str(IP)
    assert value(m, "egressd_egress_ip_owned", ip=ip) == 1
    assert (
        sum(
            v
            for (name, labels), v in samples(m).items()
            if name == "egressd_ownership_transitions_total" and ("event", "acquired") in labels
        )
        == 1
    )
    for phase in ("address", "snat", "garp"):
        assert value(m, "egressd_takeover_phase_seconds_count", phase=phase) == 1
    await asyncio.sleep(3 * TIMING.retry_period)
    assert value(m, "egressd_lease_write_seconds_count") >= 2
    assert 0 <= value(m, "egressd_lease_renew_age_seconds", ip=ip) < TIMING.renew_deadline
    owner.daemon.report_conflict(IP, "02:00:00:00:00:99")
    assert value(m, "egressd_arp_conflicts_total", ip=ip) == 1
    owner.plane.addresses.clear()
    await owner.daemon.repair_drift()
    assert value(m, "egressd_drift_repairs_total", ip=ip, what="address-missing") == 1
    store.fail()
    await until(lambda: not owner.serving, 2.0)
    assert value(m, "egressd_lease_write_failures_total", error="ApiUnavailable") >= 1
    assert value(m, "egressd_api_errors_total", kind="ApiUnavailable") >= 1
    assert value(m, "egressd_egress_ip_owned", ip=ip) == 0
    assert value(m, "egressd_ownership_transitions_total", ip=ip, event="stepped-down", reason="renew-deadline") == 1
    store.fail(False)
    await until(lambda: any(n.serving for n in nodes), 3.0)
    serving = next(n for n in nodes if n.serving)  # whichever node won after the outage
    assert value(serving.metrics, "egressd_egress_ip_owned", ip=ip) == 1


async def test_readiness_needs_the_reconcile_and_the_api(pair: tuple[FakeLeaseStore, list[Observed]]) -> None:
    store, nodes = pair
    node = nodes[0]
    await until(node.daemon.reconciled.is_set, 2.0)
    assert await get(node.server.url + "/readyz") == (200, "ready\n")
    store.pause()
    status, text = await get(node.server.url + "/readyz")
    assert status == 503 and "Kubernetes API not reachable" in text
    store.resume()


async def test_health_fails_when_a_task_died(pair: tuple[FakeLeaseStore, list[Observed]]) -> None:
    _, nodes = pair
    node = nodes[0]
    await until(node.daemon.reconciled.is_set, 2.0)
    assert await get(node.server.url + "/healthz") == (200, "healthy\n")

    async def broken() -> None:
        raise RuntimeError("boom")

    node.daemon.supervisor.spawn("probe", broken())
    await asyncio.sleep(0.05)
    status, text = await get(node.server.url + "/healthz")
    assert status == 503 and "task probe died: RuntimeError('boom')" in text


async def test_health_fails_when_an_owner_should_have_stepped_down(
    pair: tuple[FakeLeaseStore, list[Observed]],
) -> None:
    store, nodes = pair
    await until(lambda: any(n.serving for n in nodes), 2.0)
    owner = next(n for n in nodes if n.serving)
    await owner.daemon.supervisor.cancel("node-fence")  # a wedged fence
    await owner.daemon.supervisor.cancel(f"member:{IP}")  # and a wedged member loop
    store.pause()
    await asyncio.sleep(TIMING.renew_deadline + 0.6)
    assert owner.daemon.members[IP].sm.state is State.OWNER
    status, text = await get(owner.server.url + "/healthz")
    assert status == 503
    assert "should have stepped down" in text and "task node-fence is not running" in text
    store.resume()


def test_a_gauge_per_policy_has_a_policy_label() -> None:
    metrics = PrometheusMetrics()
    values = {"outpost": 2.0}
    metrics.gauge_per_label("egressd_policy_selected_pods", "pods", "policy", lambda: values)
    assert 'egressd_policy_selected_pods{policy="outpost"} 2.0' in metrics.render().decode()
    values["outpost"] = 3.0
    assert 'egressd_policy_selected_pods{policy="outpost"} 3.0' in metrics.render().decode()


def test_mqtt_messages_are_counted_by_outcome() -> None:
    metrics = PrometheusMetrics()
    sink = MqttEvents(MqttSettings(host="127.0.0.1", cluster="lab"), "node-a")
    mqtt_counters(sink, metrics)
    sink.published, sink.dropped, sink.coalesced = 3, 1, 2
    lines = [line for line in metrics.render().decode().splitlines() if line.startswith("egressd_mqtt_messages")]
    assert sorted(lines) == [
        'egressd_mqtt_messages_total{outcome="coalesced"} 2.0',
        'egressd_mqtt_messages_total{outcome="dropped"} 1.0',
        'egressd_mqtt_messages_total{outcome="published"} 3.0',
    ]


# --- /status: the incarnation token only on loopback ----------------------------------------

REPORT = {"node": "gw-a", "incarnation": "3f9c2b0d11aa4e57", "healthy": True, "members": []}


@pytest.mark.parametrize("peer", ["127.0.0.1", "127.0.1.1", "::1", "::ffff:127.0.0.1"])
def test_status_keeps_the_incarnation_for_a_client_on_loopback(peer: str) -> None:
    assert status_for(peer, REPORT) == REPORT


@pytest.mark.parametrize("peer", ["192.0.2.2", "10.0.0.5", "fd00::2", "::ffff:10.0.0.5", "fe80::1%eth0", "", None])
def test_status_leaves_the_incarnation_out_for_any_other_client(peer: str | None) -> None:
    served = status_for(peer, REPORT)
    assert "incarnation" not in served
    assert served == {k: v for k, v in REPORT.items() if k != "incarnation"}


def local_non_loopback_address() -> str | None:
    """An address of this host that is not loopback (the source of a route out), if any."""
    for target in ("198.51.100.1", "192.0.2.1", "10.255.255.1"):  # no packet is sent: connect picks a source
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.connect((target, 9))
            except OSError:
                continue
            address = str(s.getsockname()[0])
        if not ipaddress.ip_address(address).is_loopback and address != "0.0.0.0":
            return address
    return None


@pytest.mark.parametrize("where", ["loopback", "node-address"])
async def test_status_over_http_shows_the_incarnation_only_on_loopback(where: str) -> None:
    host = "127.0.0.1" if where == "loopback" else local_non_loopback_address()
    if host is None:
        pytest.skip("this host has no address besides loopback")
    server = ObservabilityServer(
        PrometheusMetrics(), health=lambda: (True, []), ready=lambda: (True, []), status=lambda: dict(REPORT)
    )
    await server.start(host, 0)
    try:
        status, text = await get(server.url + "/status")
    finally:
        await server.stop()
    assert status == 200
    body = json.loads(text)
    assert body["node"] == "gw-a"
    assert ("incarnation" in body) == (where == "loopback")


@pytest.mark.virtual_time
async def test_an_unreadable_lease_shows_in_a_gauge_until_it_is_gone() -> None:
    store = ObjectLeaseStore()
    node = Observed("gw-a", store)
    node.start()
    try:
        await until(lambda: node.serving, 2.0)
        bad = poisoned("172.18.0.99")
        name = bad["metadata"]["name"]
        store.put_object(bad)
        await until(lambda: ("egressd_unreadable_leases", (("lease", name),)) in samples(node.metrics), 2.0)
        assert value(node.metrics, "egressd_unreadable_leases", lease=name) == 1
        store.remove_object(name)
        await until(lambda: ("egressd_unreadable_leases", (("lease", name),)) not in samples(node.metrics), 2.0)
        assert node.serving
    finally:
        assert node.task is not None
        node.task.cancel()
        await asyncio.gather(node.task, return_exceptions=True)


@pytest.mark.virtual_time
async def test_a_task_started_again_is_counted() -> None:
    store = FakeLeaseStore()
    node = Observed("gw-a", store)
    node.start()
    ends = 0

    async def flaky() -> None:
        nonlocal ends
        if ends < 2:
            ends += 1
            raise RuntimeError("flaky task")
        await asyncio.Event().wait()

    try:
        await until(lambda: node.serving, 2.0)
        node.daemon.supervisor.spawn("flaky", flaky)
        await until(lambda: ("egressd_task_restarts_total", (("task", "flaky"),)) in samples(node.metrics), 2.0)
        await until(lambda: value(node.metrics, "egressd_task_restarts_total", task="flaky") == 2, 5.0)
        assert node.serving
    finally:
        assert node.task is not None
        node.task.cancel()
        await asyncio.gather(node.task, return_exceptions=True)


_IMPORT_PROBE = """
import asyncio, sys, threading
from egressd.adapters.observability import ObservabilityServer, PrometheusMetrics
assert "aiohttp.web" not in sys.modules, "loaded before start()"
importers = []
class Spy:
    def find_spec(self, name, path=None, target=None):
        if name == "aiohttp.web":
            importers.append(threading.current_thread() is threading.main_thread())
        return None
sys.meta_path.insert(0, Spy())
async def main():
    server = ObservabilityServer(PrometheusMetrics(), health=lambda: (True, []), ready=lambda: (True, []))
    await server.start("127.0.0.1", 0)
    await server.stop()
asyncio.run(main())
print("on-the-loop" if any(importers) else ("in-a-thread" if importers else "not-imported"))
"""


def test_the_endpoints_load_their_http_stack_off_the_event_loop() -> None:
    """aiohttp loads for a third of a second (more while scapy loads beside it);
    on the loop, that stalled the first renews of a starting daemon past its
    renew deadline, and it stepped down from the IPs it had just taken."""
    probe = [sys.executable, "-c", _IMPORT_PROBE]
    done = subprocess.run(probe, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "in-a-thread"


@pytest.mark.virtual_time
async def test_the_mesh_and_the_serving_right_show_in_the_metrics() -> None:
    store, net = FakeLeaseStore(), FakeMeshNetwork()
    nodes = [MeshNode("gw-a", store, net), MeshNode("gw-b", store, net)]
    registries = []
    for node in nodes:
        m = PrometheusMetrics()
        node.daemon.metrics = m
        daemon_gauges(node.daemon, m)
        right_gauges(node.daemon, m)
        assert node.daemon.mesh is not None
        mesh_counters(node.daemon.mesh, m)
        registries.append(m)
    try:
        await settle(nodes, MESH_IPS)
        await asyncio.sleep(5 * TIMING.retry_period)
        for node, m, other in zip(nodes, registries, ("gw-b", "gw-a"), strict=True):
            for ip in MESH_IPS:
                if node.serves(ip):
                    assert value(m, "egressd_serving_right", ip=str(ip), right="api") == 1
                    assert value(m, "egressd_serving_right", ip=str(ip), right="peer") == 0
                else:  # an IP not served here has no sample
                    assert not [k for k in samples(m) if k[0] == "egressd_serving_right" and ("ip", str(ip)) in k[1]]
            assert value(m, "egressd_peer_right") == 0
            assert value(m, "egressd_peer_right_seconds_total") == 0
            sent = node.daemon.mesh.per_peer.heartbeats_to[other]  # type: ignore[union-attr]
            assert sent > 0 and value(m, "egressd_mesh_heartbeats_sent_total", peer=other) == sent
            assert value(m, "egressd_mesh_promises_given_total", peer=other) > 0
            taken = value(m, "egressd_mesh_promises_received_total", peer=other)
            assert taken > 0
            assert value(m, "egressd_mesh_rtt_seconds_count", peer=other) == taken
            assert 0 <= value(m, "egressd_mesh_rtt_last_seconds", peer=other) < 0.0005  # the fake network is instant
            assert value(m, "egressd_mesh_rtt_seconds_bucket", peer=other, le="0.0005") == taken
        net.inject(b"hello, gateway" * 4, ("10.0.0.66", 7946), "10.0.0.2")
        stranger = Heartbeat("gw-c", "inc", 1, "1" * 32, api_ok=True)
        net.inject(encode(stranger, MESH_KEY), ("10.0.0.66", 7946), "10.0.0.2")
        await asyncio.sleep(0.01)
        assert value(registries[1], "egressd_mesh_datagrams_rejected_total", reason="unsigned") == 1
        assert value(registries[1], "egressd_mesh_datagrams_rejected_total", reason="unknown-peer") == 1
        assert value(registries[1], "egressd_mesh_listeners") == 0
        net.inject(encode(Listen("wk-9", "inc", 1), MESH_KEY), ("10.0.0.66", 7946), "10.0.0.2")
        news = Serving("gw-a", "inc", 10**6, ((str(MESH_IPS[0]), 1),))
        net.inject(encode(news, MESH_KEY), ("10.0.0.1", 7946), "10.0.0.2")
        await asyncio.sleep(0.01)
        assert value(registries[1], "egressd_mesh_listeners") == 1
        assert value(registries[1], "egressd_mesh_news_total", result="not-steered") == 1  # gw-b steers nothing
        store.pause()
        await asyncio.sleep(TIMING.lease_duration + 1.0)
        seconds = []
        for node, m in zip(nodes, registries, strict=True):
            held = str(next(ip for ip in MESH_IPS if node.serves(ip)))
            assert value(m, "egressd_serving_right", ip=held, right="peer") == 1
            assert value(m, "egressd_serving_right", ip=held, right="api") == 0
            assert value(m, "egressd_peer_right") == 1
            # from the end of the API right (the last renew, sent before the pause, plus the renew deadline)
            seconds.append(value(m, "egressd_peer_right_seconds_total"))
            assert 1.0 < seconds[-1] <= TIMING.lease_duration + 1.0 + 0.01 + TIMING.retry_period - TIMING.renew_deadline
        store.resume()
        await asyncio.sleep(2 * TIMING.retry_period)
        for m, before in zip(registries, seconds, strict=True):
            assert value(m, "egressd_peer_right") == 0
            after = value(m, "egressd_peer_right_seconds_total")
            assert before <= after < before + 2 * TIMING.retry_period  # counted until the API right came back
            await asyncio.sleep(0.5)
            assert value(m, "egressd_peer_right_seconds_total") == after  # and no more
    finally:
        store.resume()
        await stop_all(nodes)


@pytest.mark.virtual_time
async def test_the_conntrack_stream_shows_in_the_metrics() -> None:
    store, net = FakeLeaseStore(), FakeMeshNetwork()
    nodes = [CtNode("gw-a", store, net), CtNode("gw-b", store, net)]
    registries = []
    for node in nodes:
        m = PrometheusMetrics()
        assert node.daemon.replication is not None
        conntrack_counters(node.daemon.replication, m)
        registries.append(m)
    try:
        await settle(nodes, CT_IPS)
        await asyncio.sleep(4 * TIMING.retry_period)
        ip = CT_IPS[0]
        i = next(i for i, n in enumerate(nodes) if n.serves(ip))
        owner, other = nodes[i], nodes[1 - i]
        for port in (1, 2, 3):
            owner.table.flow_new(flow(port, ip))
        await asyncio.sleep(0.2)
        assert value(registries[i], "egressd_conntrack_entries_sent_total", peer=other.name) == 3
        assert value(registries[1 - i], "egressd_conntrack_entries_received_total", peer=owner.name) == 3
        assert value(registries[1 - i], "egressd_conntrack_entries_held", peer=owner.name) == 3
        assert value(registries[i], "egressd_conntrack_resyncs_total") >= 1
        assert value(registries[1 - i], "egressd_conntrack_installed_total") == 0
    finally:
        await stop_all(nodes)
