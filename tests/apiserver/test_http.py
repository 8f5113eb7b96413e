"""What only the embedded API server has: fault plumbing (pause, injected
errors) and its settings. What it shares with a kube-apiserver is in
test_conformance.py, run against both."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from egressd.apiserver.server import LabApiServer, LabSettings, parse_listen

NS = "default"
LEASES = f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases"


async def _call(http: aiohttp.ClientSession, method: str, path: str, body: Any = None,
                content_type: str = "application/json") -> tuple[int, Any]:
    data = body if isinstance(body, (str, bytes)) else (
        None if body is None else json.dumps(body))
    async with http.request(method, path, data=data,
                            headers={"Content-Type": content_type}) as response:
        text = await response.text()
        return response.status, json.loads(text) if text.startswith(("{", "[")) else text


def _lease(name: str) -> dict[str, Any]:
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": name}, "spec": {"holderIdentity": "a"}}


async def test_pause_and_resume(http: aiohttp.ClientSession, alab: LabApiServer) -> None:
    alab.pause()
    pending = asyncio.ensure_future(_call(http, "GET", LEASES))
    await asyncio.sleep(0.2)
    assert not pending.done()
    alab.resume()
    status, _ = await asyncio.wait_for(pending, 5)
    assert status == 200


async def test_fail_with(http: aiohttp.ClientSession, alab: LabApiServer) -> None:
    alab.fail_with(503)
    status, body = await _call(http, "GET", LEASES)
    assert status == 503
    assert body["reason"] == "ServiceUnavailable"
    alab.clear_fault()
    status, _ = await _call(http, "GET", LEASES)
    assert status == 200


async def test_auto_create_namespaces_setting() -> None:
    async with LabApiServer(LabSettings(auto_create_namespaces=True,
                                        create_default_namespace=False)) as server, \
            aiohttp.ClientSession(base_url=server.url) as http:
        status, _ = await _call(http, "GET", "/api/v1/namespaces/default")
        assert status == 404
        path = "/apis/coordination.k8s.io/v1/namespaces/team/leases"
        status, _ = await _call(http, "POST", path, _lease("a"))
        assert status == 201
        status, ns = await _call(http, "GET", "/api/v1/namespaces/team")
        assert status == 200
        assert ns["status"]["phase"] == "Active"


def test_parse_listen() -> None:
    assert parse_listen("127.0.0.1:6443") == ("127.0.0.1", 6443)
    assert parse_listen("[::1]:0") == ("::1", 0)
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_listen("localhost")
