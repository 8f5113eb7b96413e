"""Watch semantics of the lab API server: order, resume, 410, bookmarks, selectors."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import aiohttp
import pytest
from kubernetes import client, watch
from kubernetes.client import ApiClient, ApiException

from egressd.apiserver.server import LabApiServer

NS = "default"
LEASES = f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases"


def _leases(api: ApiClient) -> Any:
    return client.CoordinationV1Api(api)


def _watch() -> Any:
    """The client's Watch (untyped in the client) as Any."""
    factory: Any = watch.Watch
    return factory()


def _lease(name: str, **labels: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": labels}, "spec": {"holderIdentity": "a"}}


def test_client_watch_sees_added_modified_deleted_in_order(api: ApiClient) -> None:
    leases = _leases(api)
    start = leases.list_namespaced_lease(NS).metadata.resource_version
    leases.create_namespaced_lease(NS, _lease("ip-1"))
    leases.patch_namespaced_lease("ip-1", NS, {"spec": {"holderIdentity": "b"}})
    leases.delete_namespaced_lease("ip-1", NS)
    seen = [(e["type"], e["object"].metadata.name, e["object"].spec.holder_identity)
            for e in _watch().stream(leases.list_namespaced_lease, NS,
                                          resource_version=start, timeout_seconds=1)]
    assert seen == [("ADDED", "ip-1", "a"), ("MODIFIED", "ip-1", "b"), ("DELETED", "ip-1", "b")]


def test_watch_without_rv_lists_current_state_then_goes_live(api: ApiClient) -> None:
    leases = _leases(api)
    leases.create_namespaced_lease(NS, _lease("old"))
    w = _watch()
    seen: list[tuple[str, str]] = []

    def writer() -> None:
        time.sleep(0.2)
        leases.create_namespaced_lease(NS, _lease("new"))

    thread = threading.Thread(target=writer)
    thread.start()
    for event in w.stream(leases.list_namespaced_lease, NS, timeout_seconds=5):
        seen.append((event["type"], event["object"].metadata.name))
        if len(seen) == 2:
            w.stop()
    thread.join()
    assert seen == [("ADDED", "old"), ("ADDED", "new")]


def test_resume_from_resource_version_replays_only_later_events(api: ApiClient) -> None:
    leases = _leases(api)
    first = leases.create_namespaced_lease(NS, _lease("a"))
    leases.create_namespaced_lease(NS, _lease("b"))
    events = list(_watch().stream(leases.list_namespaced_lease, NS, timeout_seconds=1,
                                       resource_version=first.metadata.resource_version))
    assert [(e["type"], e["object"].metadata.name) for e in events] == [("ADDED", "b")]


def test_expired_resource_version_raises_410_in_the_client(api: ApiClient,
                                                          lab: LabApiServer) -> None:
    leases = _leases(api)
    first = leases.create_namespaced_lease(NS, _lease("a"))
    leases.create_namespaced_lease(NS, _lease("b"))
    lab.compact()
    with pytest.raises(ApiException) as caught:
        list(_watch().stream(leases.list_namespaced_lease, NS, timeout_seconds=1,
                                  resource_version=first.metadata.resource_version))
    assert caught.value.status == 410
    assert "Expired: too old resource version" in str(caught.value.reason)


def test_history_ring_is_bounded(api: ApiClient, lab: LabApiServer) -> None:
    leases = _leases(api)
    first = leases.create_namespaced_lease(NS, _lease("a"))
    for i in range(lab.settings.history_size + 1):
        leases.patch_namespaced_lease("a", NS, {"spec": {"leaseTransitions": i}})
    with pytest.raises(ApiException) as caught:
        leases.list_namespaced_lease(NS, resource_version=first.metadata.resource_version,
                                     resource_version_match="Exact")
    assert caught.value.status == 410


def test_exact_list_at_an_old_resource_version(api: ApiClient) -> None:
    leases = _leases(api)
    first = leases.create_namespaced_lease(NS, _lease("a"))
    leases.patch_namespaced_lease("a", NS, {"spec": {"holderIdentity": "z"}})
    leases.create_namespaced_lease(NS, _lease("b"))
    then = leases.list_namespaced_lease(NS, resource_version=first.metadata.resource_version,
                                        resource_version_match="Exact")
    assert [(i.metadata.name, i.spec.holder_identity) for i in then.items] == [("a", "a")]
    assert then.metadata.resource_version == first.metadata.resource_version


def test_client_watch_with_label_selector(api: ApiClient) -> None:
    leases = _leases(api)
    start = leases.list_namespaced_lease(NS).metadata.resource_version
    leases.create_namespaced_lease(NS, _lease("in", app="egressd"))
    leases.create_namespaced_lease(NS, _lease("out", app="other"))
    events = list(_watch().stream(leases.list_namespaced_lease, NS, timeout_seconds=1,
                                       resource_version=start, label_selector="app=egressd"))
    assert [e["object"].metadata.name for e in events] == ["in"]


def test_cluster_wide_pod_watch_with_node_field_selector(api: ApiClient) -> None:
    core: Any = client.CoreV1Api(api)
    start = core.list_pod_for_all_namespaces().metadata.resource_version
    spec = {"containers": [{"name": "c", "image": "i"}]}
    core.create_namespaced_pod(NS, {"metadata": {"name": "p1"},
                                    "spec": {**spec, "nodeName": "gw-1"}})
    core.create_namespaced_pod(NS, {"metadata": {"name": "p2"},
                                    "spec": {**spec, "nodeName": "gw-2"}})
    events = list(_watch().stream(core.list_pod_for_all_namespaces, timeout_seconds=1,
                                       resource_version=start,
                                       field_selector="spec.nodeName=gw-1"))
    assert [e["object"].metadata.name for e in events] == ["p1"]


# ---------------------------------------------------------------- raw HTTP


async def _lines(response: aiohttp.ClientResponse) -> list[dict[str, Any]]:
    events = []
    async for line in response.content:
        assert line.endswith(b"\n")
        events.append(json.loads(line))
    return events


async def _create(http: aiohttp.ClientSession, body: dict[str, Any]) -> dict[str, Any]:
    async with http.post(LEASES, json=body) as response:
        assert response.status == 201, await response.text()
        created = await response.json()
        assert isinstance(created, dict)
        return created


async def _patch(http: aiohttp.ClientSession, name: str, body: dict[str, Any]) -> None:
    async with http.patch(f"{LEASES}/{name}", data=json.dumps(body),
                          headers={"Content-Type": "application/merge-patch+json"}) as response:
        assert response.status == 200, await response.text()


async def test_raw_watch_framing_and_timeout(http: aiohttp.ClientSession) -> None:
    await _create(http, _lease("a"))
    started = asyncio.get_running_loop().time()
    async with http.get(LEASES, params={"watch": "1", "timeoutSeconds": "1"}) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("application/json")
        assert response.headers["Transfer-Encoding"] == "chunked"
        events = await _lines(response)
    assert 0.9 < asyncio.get_running_loop().time() - started < 3
    assert [e["type"] for e in events] == ["ADDED"]
    assert events[0]["object"]["kind"] == "Lease"
    assert events[0]["object"]["apiVersion"] == "coordination.k8s.io/v1"


async def test_raw_bookmarks(http: aiohttp.ClientSession, alab: LabApiServer) -> None:
    created = await _create(http, _lease("a"))
    params = {"watch": "true", "allowWatchBookmarks": "true", "timeoutSeconds": "1",
              "resourceVersion": created["metadata"]["resourceVersion"]}
    async with http.get(LEASES, params=params) as response:
        events = await _lines(response)
    assert events
    assert {e["type"] for e in events} == {"BOOKMARK"}
    assert events[0]["object"] == {
        "kind": "Lease", "apiVersion": "coordination.k8s.io/v1",
        "metadata": {"resourceVersion": str(alab.store.resource_version)}}


async def test_raw_expired_watch_is_an_error_event_then_end(http: aiohttp.ClientSession,
                                                           alab: LabApiServer) -> None:
    await _create(http, _lease("a"))
    alab.compact()
    async with http.get(LEASES, params={"watch": "1", "resourceVersion": "1"}) as response:
        assert response.status == 200
        events = await _lines(response)
    floor = alab.store.resource_version
    assert events == [{"type": "ERROR", "object": {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": f"too old resource version: 1 ({floor + 1})", "reason": "Expired",
        "code": 410}}]


async def test_selector_enter_and_leave_become_added_and_deleted(
        http: aiohttp.ClientSession) -> None:
    created = await _create(http, _lease("a", app="other"))
    params = {"watch": "1", "timeoutSeconds": "1", "labelSelector": "app=egressd",
              "resourceVersion": created["metadata"]["resourceVersion"]}
    await _patch(http, "a", {"metadata": {"labels": {"app": "egressd"}}})
    await _patch(http, "a", {"spec": {"holderIdentity": "b"}})
    await _patch(http, "a", {"metadata": {"labels": {"app": "other"}}})
    async with http.get(LEASES, params=params) as response:
        events = await _lines(response)
    assert [e["type"] for e in events] == ["ADDED", "MODIFIED", "DELETED"]
    last = events[-1]["object"]
    assert last["metadata"]["labels"] == {"app": "egressd"}  # the content before it left
    assert int(last["metadata"]["resourceVersion"]) > int(
        events[1]["object"]["metadata"]["resourceVersion"])


async def test_slow_watcher_is_closed_without_blocking_writers(
        http: aiohttp.ClientSession, alab: LabApiServer) -> None:
    await _create(http, _lease("a"))
    async with http.get(LEASES, params={"watch": "1"}) as response:
        assert response.status == 200
        await asyncio.sleep(0.05)
        assert alab.store.watcher_count == 1
        # Writes go straight to the store: the watch handler gets no chance to drain.
        kind = alab.store.resolve("coordination.k8s.io", "v1", "leases")
        assert kind is not None
        for i in range(alab.settings.watch_queue_size + 5):
            alab.store.patch(kind, NS, "a", {"spec": {"leaseTransitions": i}},
                             content_type="application/merge-patch+json", version="v1")
        assert alab.store.watcher_count == 1
        events = await asyncio.wait_for(_lines(response), 5)
    assert len(events) <= 1  # the slow watcher lost its queue and its stream ended
    assert alab.store.watcher_count == 0


async def test_watch_single_object_via_name_and_deprecated_watch_path(
        http: aiohttp.ClientSession) -> None:
    created = await _create(http, _lease("a"))
    await _create(http, _lease("b"))
    rv = int(created["metadata"]["resourceVersion"]) - 1
    path = f"/apis/coordination.k8s.io/v1/watch/namespaces/{NS}/leases/a"
    async with http.get(path, params={"timeoutSeconds": "1", "resourceVersion": str(rv)}) as r:
        events = await _lines(r)
    assert [e["object"]["metadata"]["name"] for e in events] == ["a"]
