"""KubeLeaseStore (official kubernetes client) against the lab API server."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from egressd.adapters.clock import SystemClock
from egressd.adapters.kube import informer
from egressd.adapters.kube.client import api_client
from egressd.adapters.kube.informer import _decode_watch_line
from egressd.adapters.kube.leases import KubeLeaseStore, _records, _to_lease_event
from egressd.apiserver.server import LabApiServer, LabSettings
from egressd.core.errors import ApiError, ApiTimeout, ApiUnavailable, LostRace, MalformedLease, ResourceExpired
from egressd.core.lease import ANN_DURATION_MS, LeaseRecord, held_by, lease_name, object_from_record
from egressd.core.model import KubeSettings
from egressd.core.node_lease import LABEL_KIND, NodeLeaseRecord, node_lease_name, node_object_from_record
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

    def poisoned(line: bytes) -> dict[str, object]:
        raise OverflowError("int too large to convert to float")

    monkeypatch.setattr(informer, "_decode_watch_line", poisoned)
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


POISON = "9" * 400
"""A ``lease-duration-ms`` of 400 digits: it once raised OverflowError in the parser
and killed the lease-watch thread of every daemon."""


def poisoned_lease(ip: str = "172.18.0.43") -> dict[str, Any]:
    obj = object_from_record(fresh("someone", ip=ip), NS)
    obj["metadata"]["annotations"][ANN_DURATION_MS] = POISON
    return obj


def post_lease(lab: LabApiServer, body: dict[str, Any]) -> None:
    req = urllib.request.Request(
        f"{lab.url}/apis/coordination.k8s.io/v1/namespaces/{NS}/leases",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    urllib.request.urlopen(req, timeout=5).close()


def delete_lease(lab: LabApiServer, name: str) -> None:
    req = urllib.request.Request(
        f"{lab.url}/apis/coordination.k8s.io/v1/namespaces/{NS}/leases/{name}", method="DELETE"
    )
    urllib.request.urlopen(req, timeout=5).close()


async def test_a_poisoned_lease_neither_spoils_a_list_nor_stops_the_watch(
    store: KubeLeaseStore, lab: LabApiServer
) -> None:
    """One unreadable Lease is reported (sync problems, an invalid event, MalformedLease
    on get), the others are read, and the watch goes on delivering, the deletion included."""
    post_lease(lab, poisoned_lease())
    good = await store.create(fresh("kind-worker3"), deadline=deadline())
    assert [r.name for r in await store.list_leases(deadline=deadline())] == [good.name]
    with pytest.raises(
        MalformedLease, match=r"^egressd-172-18-0-43: metadata\.annotations\[egressd\.io/lease-duration-ms\]"
    ):
        await store.get(lease_name("172.18.0.43"), deadline=deadline())
    events = store.watch()
    sync = await next_event(events, "sync")
    assert [r.name for r in sync.records] == [good.name]
    assert [name for name, _ in sync.problems] == ["egressd-172-18-0-43"]
    assert "must be at most" in sync.problems[0][1]
    post_lease(lab, poisoned_lease("172.18.0.44"))
    invalid = await next_event(events, "invalid")
    assert invalid.name == "egressd-172-18-0-44" and "lease-duration-ms" in invalid.problem
    taken = await store.update(fresh("kind-worker4", good), deadline=deadline())
    change = await next_event(events, "upsert")
    assert change.record is not None and change.record.resource_version == taken.resource_version
    delete_lease(lab, "egressd-172-18-0-43")
    deleted = await next_event(events, "delete")
    assert deleted.name == "egressd-172-18-0-43"
    await events.aclose()  # type: ignore[attr-defined]


# --- decoding: any answer is a value or a ApiError --------------------------------------

json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(10**400), max_value=10**400),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=20),
        st.sampled_from(["ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR", POISON, "egressd-172-18-0-42"]),
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)),
    max_leaves=16,
)


@st.composite
def watch_lines(draw: st.DrawFn) -> bytes:
    """Lines of a watch stream: mostly events shaped like the API's with parts
    replaced by arbitrary JSON, sometimes arbitrary JSON or bytes."""
    choice = draw(st.integers(0, 9))
    if choice == 0:
        return draw(st.binary(max_size=40))
    if choice == 1:
        return json.dumps(draw(json_values)).encode()
    obj: Any = object_from_record(fresh("kind-worker3"), NS)
    obj["metadata"]["resourceVersion"] = "7"
    for path in draw(st.lists(st.sampled_from(["metadata", "metadata.name", "metadata.resourceVersion", "spec"]))):
        head, _, leaf = path.partition(".")
        if leaf and isinstance(obj.get(head), dict):
            obj[head][leaf] = draw(json_values)
        elif not leaf:
            obj[head] = draw(json_values)
    if draw(st.booleans()):
        obj = draw(json_values)
    event = {"type": draw(st.sampled_from(["ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR"]) | json_values)}
    event["object"] = obj
    return json.dumps(event).encode()


@given(watch_lines())
@settings(max_examples=400, deadline=None)
def test_any_watch_line_is_an_event_or_a_lease_error(line: bytes) -> None:
    try:
        decoded = _decode_watch_line(line)
    except ApiError:
        return
    assert isinstance(decoded, dict)
    assert isinstance(decoded.get("_rv", ""), str)
    if "type" in decoded:
        assert decoded["type"] in {"ADDED", "MODIFIED", "DELETED"} and isinstance(decoded["object"], dict)
        event = _to_lease_event(decoded)
        assert event.kind in {"upsert", "delete", "invalid"} and isinstance(event.name, str)
        assert (event.record is not None or event.node is not None) == (event.kind == "upsert")


@given(st.dictionaries(st.sampled_from(["items", "metadata", "kind"]), json_values | st.lists(json_values)))
@settings(max_examples=300, deadline=None)
def test_any_list_answer_is_records_and_problems_or_api_unavailable(obj: dict[str, Any]) -> None:
    try:
        records, nodes, rv, problems = _records(obj)
    except ApiUnavailable:
        return
    assert isinstance(rv, str)
    assert all(isinstance(r, LeaseRecord) for r in records)
    assert all(isinstance(n, NodeLeaseRecord) for n in nodes)
    assert all(isinstance(name, str) and problem for name, problem in problems)
    items = obj.get("items") or []
    assert len(records) + len(nodes) + len(problems) == len(items)


@pytest.mark.parametrize(
    "line",
    [
        b'{"type": "ADDED", "object": ["not", "an", "object"]}',
        b'{"type": "MODIFIED", "object": {"metadata": "x"}}',
        b'{"type": "ADDED", "object": {"metadata": {"name": 7, "resourceVersion": 8}}}',
        b'{"type": "SURPRISE", "object": {"metadata": {"resourceVersion": "9"}}}',
    ],
    ids=["object-not-a-map", "metadata-not-a-map", "name-and-rv-not-strings", "unknown-type"],
)
def test_a_misshapen_watch_event_is_skipped_or_reported_not_raised(line: bytes) -> None:
    decoded = _decode_watch_line(line)
    if "type" in decoded:
        event = _to_lease_event(decoded)
        assert event.kind == "invalid" and event.problem
    assert decoded.get("_rv", "9") == "9"  # an event without a usable resourceVersion keeps the last one


@pytest.mark.parametrize(
    ("line", "error"),
    [
        (b"[1, 2]", ApiUnavailable),
        (b"\xff\xfe", ApiUnavailable),
        (b"[" * 100_000 + b"]" * 100_000, ApiUnavailable),
        (b'{"type": "ERROR", "object": [410]}', ApiUnavailable),
        (b'{"type": "ERROR", "object": {"code": 410, "message": "too old"}}', ResourceExpired),
    ],
    ids=["array", "not-utf8", "nested-too-deep", "error-without-status", "error-410"],
)
def test_a_watch_line_that_is_no_event_is_a_lease_error(line: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        _decode_watch_line(line)


@pytest.mark.parametrize("items", ["abc", 5, {"a": 1}], ids=["str", "int", "map"])
def test_a_list_whose_items_are_not_a_list_is_api_unavailable(items: Any) -> None:
    with pytest.raises(ApiUnavailable, match="items is not a list"):
        _records({"items": items})


def test_a_list_with_a_poisoned_lease_keeps_the_others_and_names_the_bad_one() -> None:
    good = object_from_record(fresh("kind-worker3"), NS)
    good["metadata"]["resourceVersion"] = "5"
    bad = poisoned_lease()
    bad["metadata"]["resourceVersion"] = "6"
    records, nodes, rv, problems = _records({"metadata": {"resourceVersion": "6"}, "items": [bad, good, "junk"]})
    assert [r.name for r in records] == [good["metadata"]["name"]]
    assert nodes == []
    assert rv == "6"
    assert [name for name, _ in problems] == ["egressd-172-18-0-43", ""]
    assert "lease-duration-ms" in problems[0][1]


def test_node_leases_are_routed_apart_from_claims_by_name() -> None:
    """A node lease is never read as a (malformed) claim, and a claim written
    before node leases existed (no kind label) still reads as a claim."""
    claim = object_from_record(fresh("kind-worker3"), NS)
    claim["metadata"]["resourceVersion"] = "5"
    claim["metadata"]["labels"].pop(LABEL_KIND, None)
    node = node_object_from_record(
        NodeLeaseRecord(
            name=node_lease_name("kind-worker3"),
            node="kind-worker3",
            incarnation="inc-1",
            lease_duration=2.5,
            resource_version="7",
            address="172.18.0.5",
            peers=("kind-worker4",),
        ),
        NS,
    )
    records, nodes, rv, problems = _records({"metadata": {"resourceVersion": "7"}, "items": [claim, node]})
    assert rv == "7"
    assert [r.name for r in records] == [claim["metadata"]["name"]]
    assert [(n.node, n.incarnation, n.peers) for n in nodes] == [("kind-worker3", "inc-1", ("kind-worker4",))]
    assert problems == ()
    event = _to_lease_event({"type": "MODIFIED", "object": node})
    assert event.kind == "upsert" and event.record is None and event.node == nodes[0]
    broken = {**node, "spec": {**node["spec"], "holderIdentity": "kind-worker9"}}
    event = _to_lease_event({"type": "MODIFIED", "object": broken})
    assert event.kind == "invalid" and "holderIdentity" in event.problem


async def test_nodes_matching_a_label_selector(lab: LabApiServer) -> None:
    from egressd.adapters.kube.cluster import nodes_matching  # noqa: PLC0415

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


def node_lease(node: str = "kind-worker3", rv: str = "") -> NodeLeaseRecord:
    return NodeLeaseRecord(
        name=node_lease_name(node),
        node=node,
        incarnation="inc-1",
        lease_duration=2.5,
        resource_version=rv,
        address="172.18.0.5",
        peers=("kind-worker4",),
        renew_time=datetime(2026, 1, 1, tzinfo=UTC),
    )


def renewal(record: NodeLeaseRecord) -> NodeLeaseRecord:
    assert record.renew_time is not None
    return replace(record, renew_time=record.renew_time + timedelta(seconds=0.25))


async def test_node_leases_are_written_read_and_watched_apart_from_claims(store: KubeLeaseStore) -> None:
    claim = await store.create(fresh("kind-worker3"), deadline=deadline())
    created = await store.write_node_lease(node_lease(), deadline=deadline())
    assert created.resource_version and created.peers == ("kind-worker4",)
    events = store.watch()
    sync = await next_event(events, "sync")
    assert [r.name for r in sync.records] == [claim.name] and sync.problems == ()
    assert [n.name for n in sync.nodes] == [created.name]
    renewed = await store.write_node_lease(renewal(created), deadline=deadline())
    change = await next_event(events, "upsert")
    assert change.record is None and change.node == renewed
    with pytest.raises(LostRace):
        await store.write_node_lease(created, deadline=deadline())  # a stale resourceVersion
    assert await store.get_node_lease(created.name, deadline=deadline()) == renewed
    assert [r.name for r in await store.list_leases(deadline=deadline())] == [claim.name]
    await events.aclose()  # type: ignore[attr-defined]


@pytest.mark.kube_apiserver
async def test_the_daemonset_role_lets_a_node_renew_its_node_lease(kube_control_plane: Any) -> None:
    """On the real kube-apiserver, with the ServiceAccount token and the Role of
    deploy/rbac.yaml: create, renew, read back, and a 409 on a stale write."""
    ns = f"node-lease-{int(time.monotonic() * 1000) % 10**8}"
    api = kube_control_plane.api()
    api.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    api.apply({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "egressd", "namespace": ns}})
    rbac = [
        d
        for d in yaml.safe_load_all(Path("deploy/rbac.yaml").read_text())
        if d and d["kind"] in ("Role", "RoleBinding")
    ]
    for doc in rbac:
        doc["metadata"]["namespace"] = ns
        for subject in doc.get("subjects", []):
            subject["namespace"] = ns
        api.apply(doc)
    with kube_control_plane.as_token(ns, "egressd") as (_, kubeconfig):
        s = KubeLeaseStore(
            api_client(KubeSettings(access="kubeconfig", kubeconfig=str(kubeconfig), namespace=ns)),
            ns,
            clock=CLOCK,
            api_timeout=2.0,
        )
        try:
            created = await s.write_node_lease(node_lease(), deadline=deadline(5))
            # an update that changes nothing is no write at all for the API
            # server (same resourceVersion, no watch event): a renewal must
            # change the object, which its renewTime does
            same = await s.write_node_lease(created, deadline=deadline(5))
            assert same.resource_version == created.resource_version
            renewed = await s.write_node_lease(renewal(created), deadline=deadline(5))
            assert renewed.resource_version != created.resource_version
            with pytest.raises(LostRace):
                await s.write_node_lease(created, deadline=deadline(5))
            assert await s.get_node_lease(created.name, deadline=deadline(5)) == renewed
            assert await s.list_leases(deadline=deadline(5)) == []
        finally:
            await s.close()
            api.request("DELETE", f"/api/v1/namespaces/{ns}")
