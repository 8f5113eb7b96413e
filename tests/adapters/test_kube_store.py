"""KubeLeaseStore (official kubernetes client) against the lab API server."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime

import pytest

from egressd.adapters import kube
from egressd.adapters.clock import SystemClock
from egressd.adapters.kube import KubeLeaseStore, api_client
from egressd.core.errors import ApiTimeout, ApiUnavailable, LostRace
from egressd.core.lease import LeaseRecord, held_by, lease_name
from egressd.core.settings import KubeSettings
from egressd.lab.apiserver import LabApiServer, LabSettings
from egressd.ports import LeaseEvent

NS = "egressd"
CLOCK = SystemClock()


@pytest.fixture
def lab() -> Iterator[LabApiServer]:
    server = LabApiServer(LabSettings(bookmark_interval=0.2, history_size=20, auto_create_namespaces=True))
    server.start_in_thread()
    try:
        yield server
    finally:
        server.resume()
        server.clear_fault()
        server.stop_in_thread()


@pytest.fixture
async def store(lab: LabApiServer) -> AsyncIterator[KubeLeaseStore]:
    s = KubeLeaseStore(api_client(KubeSettings(access="url", url=lab.url)), NS, clock=CLOCK, api_timeout=0.5)
    try:
        yield s
    finally:
        await s.close()


def deadline(seconds: float = 1.0) -> float:
    return CLOCK.monotonic() + seconds


def fresh(holder: str, base: LeaseRecord | None = None, ip: str = "172.18.0.42") -> LeaseRecord:
    return held_by(
        base,
        name=lease_name(ip),
        egress_ip=ip,
        holder=holder,
        holder_address="10.0.0.3",
        incarnation="inc-" + holder,
        lease_duration=2.5,
        now=datetime(2026, 11, 24, 14, 0, 0, 0, tzinfo=UTC),
    )


async def test_create_get_update_and_lost_race(store: KubeLeaseStore) -> None:
    assert await store.get(lease_name("172.18.0.42"), deadline=deadline()) is None
    created = await store.create(fresh("kind-worker3"), deadline=deadline())
    assert created.holder == "kind-worker3" and created.resource_version
    assert created.holder_address == "10.0.0.3" and created.lease_duration == 2.5
    with pytest.raises(LostRace):
        await store.create(fresh("kind-worker4"), deadline=deadline())
    taken = await store.update(fresh("kind-worker4", created), deadline=deadline())
    assert taken.transitions == created.transitions + 1
    with pytest.raises(LostRace):
        await store.update(fresh("kind-worker3", created), deadline=deadline())  # stale resourceVersion
    got = await store.get(created.name, deadline=deadline())
    assert got == taken


async def test_microtime_with_zero_microseconds_is_written_with_six_digits(
    store: KubeLeaseStore, lab: LabApiServer
) -> None:
    created = await store.create(fresh("kind-worker3"), deadline=deadline())
    url = f"{lab.url}/apis/coordination.k8s.io/v1/namespaces/{NS}/leases/{created.name}"
    with urllib.request.urlopen(url, timeout=5) as resp:
        raw = json.load(resp)
    assert raw["spec"]["renewTime"] == "2026-11-24T14:00:00.000000Z"


async def test_release_clears_holder_and_names_successor(store: KubeLeaseStore) -> None:
    created = await store.create(fresh("kind-worker3"), deadline=deadline())
    freed = await store.release(created, successor="kind-worker4", deadline=deadline())
    assert freed.free and freed.preferred_holder == "kind-worker4"
    assert freed.transitions == created.transitions


async def test_delete_is_conditional_on_the_resource_version(store: KubeLeaseStore) -> None:
    created = await store.create(fresh("kind-worker3"), deadline=deadline())
    freed = await store.release(created, successor=None, deadline=deadline())
    with pytest.raises(LostRace):
        await store.delete(created, deadline=deadline())  # written since: not deleted
    assert await store.get(created.name, deadline=deadline()) == freed
    assert await store.delete(freed, deadline=deadline()) is True
    assert await store.get(created.name, deadline=deadline()) is None
    assert await store.delete(freed, deadline=deadline()) is False  # 404: already gone


async def test_paused_server_times_out_within_the_deadline(store: KubeLeaseStore, lab: LabApiServer) -> None:
    await store.create(fresh("kind-worker3"), deadline=deadline())
    lab.pause()
    started = time.monotonic()
    with pytest.raises(ApiTimeout):
        await store.get(lease_name("172.18.0.42"), deadline=deadline(0.3))
    assert time.monotonic() - started < 0.45


async def test_unavailable_server_is_retried_until_the_deadline(store: KubeLeaseStore, lab: LabApiServer) -> None:
    lab.fail_with(503)
    started = time.monotonic()
    with pytest.raises(ApiUnavailable):
        await store.get(lease_name("172.18.0.42"), deadline=deadline(0.4))
    elapsed = time.monotonic() - started
    assert 0.2 < elapsed < 0.6, elapsed
    lab.clear_fault()
    assert await store.get(lease_name("172.18.0.42"), deadline=deadline()) is None


async def next_event(events: AsyncIterator[LeaseEvent], kind: str) -> LeaseEvent:
    async with asyncio.timeout(5):
        async for event in events:
            if event.kind == kind:
                return event
    raise AssertionError("watch ended")


async def test_watch_syncs_then_streams_changes(store: KubeLeaseStore) -> None:
    first = await store.create(fresh("kind-worker3"), deadline=deadline())
    events = store.watch()
    sync = await next_event(events, "sync")
    assert [r.name for r in sync.records] == [first.name]
    second = await store.update(fresh("kind-worker4", first), deadline=deadline())
    change = await next_event(events, "upsert")
    assert change.record is not None and change.record.resource_version == second.resource_version
    await events.aclose()  # type: ignore[attr-defined]


async def test_a_watch_thread_that_dies_ends_the_watch_with_its_error(
    store: KubeLeaseStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error the watch loop does not handle must not leave a silent, frozen
    watch: the stream raises it, so its supervised task ends and is restarted."""
    first = await store.create(fresh("kind-worker3"), deadline=deadline())
    events = store.watch()
    await next_event(events, "sync")

    def poisoned(event: dict[str, object]) -> LeaseEvent:
        raise OverflowError("int too large to convert to float")

    monkeypatch.setattr(kube, "_to_lease_event", poisoned)
    await store.update(fresh("kind-worker4", first), deadline=deadline())
    with pytest.raises(OverflowError):
        async with asyncio.timeout(5):
            await events.__anext__()
    await events.aclose()  # type: ignore[attr-defined]


async def test_watch_resyncs_after_410(store: KubeLeaseStore, lab: LabApiServer) -> None:
    record = await store.create(fresh("kind-worker3"), deadline=deadline())
    events = store.watch()
    await next_event(events, "sync")
    lab.pause()  # the open watch stalls; writes queue behind it
    lab.resume()
    for i in range(30):  # push more changes than the history keeps, then compact
        record = await store.update(fresh(f"node-{i}", record), deadline=deadline())
    lab.compact()
    # whichever way the watch catches up (events or a 410 then a fresh list), it ends at the last write
    async with asyncio.timeout(10):
        async for event in events:
            recs = list(event.records) if event.kind == "sync" else [event.record] if event.record else []
            if any(r.resource_version == record.resource_version for r in recs):
                break
    await events.aclose()  # type: ignore[attr-defined]


async def test_malformed_lease_is_reported_as_invalid(store: KubeLeaseStore, lab: LabApiServer) -> None:
    events = store.watch()
    await next_event(events, "sync")
    body = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": "egressd-172-18-0-43",
            "labels": {"app.kubernetes.io/managed-by": "egressd"},
            "annotations": {"egressd.io/egress-ip": "not-an-ip"},
        },
        "spec": {"holderIdentity": "someone", "leaseDurationSeconds": 3},
    }
    req = urllib.request.Request(
        f"{lab.url}/apis/coordination.k8s.io/v1/namespaces/{NS}/leases",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=5):
        pass
    event = await next_event(events, "invalid")
    assert "egress-ip" in event.problem and "not-an-ip" in event.problem
    await events.aclose()  # type: ignore[attr-defined]


async def test_nodes_matching_a_label_selector(lab: LabApiServer) -> None:
    from egressd.adapters.kube import nodes_matching  # noqa: PLC0415

    for name, labels in (
        ("kind-worker3", {"egress-gw": "true"}),
        ("kind-worker", {}),
        ("kind-worker4", {"egress-gw": "true"}),
    ):
        body = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}}
        req = urllib.request.Request(
            f"{lab.url}/api/v1/nodes",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        urllib.request.urlopen(req, timeout=5).close()
    api = api_client(KubeSettings(access="url", url=lab.url))
    try:
        assert await nodes_matching(api, {"egress-gw": "true"}, request_timeout=2) == ["kind-worker3", "kind-worker4"]
    finally:
        api.close()  # type: ignore[no-untyped-call]


async def test_an_idle_watch_reconnects_quietly_and_keeps_delivering(
    lab: LabApiServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A silent stream is reconnected after watch_idle (a dead connection after a partition
    looks the same); changes made afterwards still arrive, and no warning is logged."""
    store = KubeLeaseStore(
        api_client(KubeSettings(access="url", url=lab.url)), NS, clock=CLOCK, api_timeout=0.5, watch_idle=0.3
    )
    try:
        events = store.watch()
        await next_event(events, "sync")
        await asyncio.sleep(1.0)  # three idle periods
        created = await store.create(fresh("kind-worker3"), deadline=deadline())
        change = await next_event(events, "upsert")
        assert change.record is not None and change.record.resource_version == created.resource_version
        assert store.connected()
        assert not [r for r in caplog.records if r.levelname == "WARNING" and "watch" in r.getMessage()]
        await events.aclose()  # type: ignore[attr-defined]
    finally:
        await store.close()


@pytest.fixture
def quiet_lab() -> Iterator[LabApiServer]:
    """A lab server without frequent bookmarks: an open watch stays silent unless something changes."""
    server = LabApiServer(LabSettings(bookmark_interval=60.0, auto_create_namespaces=True))
    server.start_in_thread()
    try:
        yield server
    finally:
        server.clear_fault()
        server.stop_in_thread()


async def test_connected_recovers_through_the_watch_alone(quiet_lab: LabApiServer) -> None:
    """A standby makes no calls: after an API failure its readiness must come back
    when the watch works again (here: an event written by another client), not
    wait for a call of its own."""
    lab = quiet_lab
    store = KubeLeaseStore(
        api_client(KubeSettings(access="url", url=lab.url)), NS, clock=CLOCK, api_timeout=0.5, watch_idle=30
    )
    other = KubeLeaseStore(api_client(KubeSettings(access="url", url=lab.url)), NS, clock=CLOCK, api_timeout=0.5)
    try:
        events = store.watch()
        await next_event(events, "sync")
        async with asyncio.timeout(3):  # the watch request follows the sync's list
            while not store.connected():
                await asyncio.sleep(0.02)
        lab.fail_with(503)
        with pytest.raises(ApiUnavailable):
            await store.get(lease_name("172.18.0.42"), deadline=deadline(0.2))
        assert not store.connected()
        lab.clear_fault()
        await other.create(fresh("kind-worker4"), deadline=deadline())
        async with asyncio.timeout(3):
            while not store.connected():
                await asyncio.sleep(0.05)
        await events.aclose()  # type: ignore[attr-defined]
    finally:
        await store.close()
        await other.close()
