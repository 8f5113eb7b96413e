"""What only the embedded API server's watches have: a bounded history and a
bounded queue per watcher. The watch semantics it shares with a
kube-apiserver are in test_conformance.py, run against both."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
from kubernetes import client
from kubernetes.client import ApiClient, ApiException

from egressd.apiserver.server import LabApiServer

NS = "default"
LEASES = f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases"


def _leases(api: ApiClient) -> Any:
    return client.CoordinationV1Api(api)



def _lease(name: str, **labels: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": labels}, "spec": {"holderIdentity": "a"}}


def test_history_ring_is_bounded(api: ApiClient, lab: LabApiServer) -> None:
    leases = _leases(api)
    first = leases.create_namespaced_lease(NS, _lease("a"))
    for i in range(lab.settings.history_size + 1):
        leases.patch_namespaced_lease("a", NS, {"spec": {"leaseTransitions": i}})
    with pytest.raises(ApiException) as caught:
        leases.list_namespaced_lease(NS, resource_version=first.metadata.resource_version,
                                     resource_version_match="Exact")
    assert caught.value.status == 410


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


