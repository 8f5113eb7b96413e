"""Raw HTTP behaviour of the lab API server: exact bodies, discovery, fault plumbing."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from egressd.apiserver.server import LabApiServer, LabSettings, parse_listen

NS = "default"
LEASES = f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases"
CRD_FILE = Path(__file__).resolve().parents[2] / "deploy" / "crd.yaml"


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


async def test_unknown_resource_is_404_with_the_real_body(http: aiohttp.ClientSession) -> None:
    """A resource the server's own group version lacks is a Status; a path no
    API serves (an unknown group, a custom resource without its CRD) is Go's
    plain-text ``404 page not found``, as a real kube-apiserver answers."""
    status, body = await _call(http, "GET", "/api/v1/things")
    assert status == 404
    assert body == {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": "the server could not find the requested resource",
                    "reason": "NotFound", "details": {}, "code": 404}
    for path in ("/apis/nope.io/v1/things", "/apis/nope.io/v1", "/apis/nope.io", "/api/v2/pods", "/nope"):
        async with http.get(path) as response:
            assert response.status == 404, path
            assert response.headers["Content-Type"] == "text/plain; charset=utf-8", path
            assert await response.text() == "404 page not found\n", path


async def test_a_deleted_crds_resources_are_404_page_not_found(http: aiohttp.ClientSession) -> None:
    crd = yaml.safe_load(CRD_FILE.read_text())
    path = "/apis/egressd.io/v1alpha1/egressgatewaypolicies"
    status, _ = await _call(http, "POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)
    assert status == 201
    status, body = await _call(http, "GET", path)
    assert status == 200 and body["items"] == []
    crds = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
    status, _ = await _call(http, "DELETE", f"{crds}/{crd['metadata']['name']}")
    assert status == 200
    for url in (path, f"{path}?watch=true", f"{path}/outpost"):
        async with http.get(url) as response:
            assert response.status == 404, url
            assert await response.text() == "404 page not found\n", url


async def test_method_not_allowed(http: aiohttp.ClientSession) -> None:
    status, body = await _call(http, "POST", f"{LEASES}/x", _lease("x"))
    assert status == 405
    assert body["reason"] == "MethodNotAllowed"
    status, _ = await _call(http, "POST", "/api/v1/pods", {"metadata": {"name": "p"}})
    assert status == 405


async def test_malformed_json_is_400(http: aiohttp.ClientSession) -> None:
    status, body = await _call(http, "POST", LEASES, "{not json")
    assert status == 400
    assert body["reason"] == "BadRequest"
    assert body["code"] == 400
    assert "details" not in body


async def test_name_mismatch_is_400(http: aiohttp.ClientSession) -> None:
    await _call(http, "POST", LEASES, _lease("a"))
    status, body = await _call(http, "PUT", f"{LEASES}/a", _lease("b"))
    assert status == 400
    assert body["message"] == "the name of the object (b) does not match the name on the URL (a)"


async def test_namespace_mismatch_is_400(http: aiohttp.ClientSession) -> None:
    lease = _lease("a")
    lease["metadata"]["namespace"] = "other"
    status, body = await _call(http, "POST", LEASES, lease)
    assert status == 400
    assert "namespace of the provided object does not match" in body["message"]


async def test_put_creates_a_missing_lease_but_not_a_missing_node(
        http: aiohttp.ClientSession) -> None:
    status, body = await _call(http, "PUT", f"{LEASES}/new", _lease("new"))
    assert status == 201
    assert body["metadata"]["resourceVersion"]
    status, body = await _call(http, "PUT", "/api/v1/nodes/n1", {"metadata": {"name": "n1"}})
    assert status == 404
    assert body["details"] == {"name": "n1", "kind": "nodes"}


async def test_unconditional_update_allowed_for_nodes(http: aiohttp.ClientSession) -> None:
    await _call(http, "POST", "/api/v1/nodes", {"metadata": {"name": "n1"}})
    status, body = await _call(http, "PUT", "/api/v1/nodes/n1",
                               {"metadata": {"name": "n1", "labels": {"x": "y"}}})
    assert status == 200
    assert body["metadata"]["labels"] == {"x": "y"}


async def test_noop_update_keeps_resource_version(http: aiohttp.ClientSession) -> None:
    _, created = await _call(http, "POST", LEASES, _lease("a"))
    status, same = await _call(http, "PUT", f"{LEASES}/a", created)
    assert status == 200
    assert same["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]


async def test_json_patch_and_strategic_merge(http: aiohttp.ClientSession) -> None:
    _, created = await _call(http, "POST", LEASES, _lease("a"))
    ops = [{"op": "test", "path": "/spec/holderIdentity", "value": "a"},
           {"op": "replace", "path": "/spec/holderIdentity", "value": "b"},
           {"op": "add", "path": "/metadata/labels", "value": {"k": "v"}}]
    status, body = await _call(http, "PATCH", f"{LEASES}/a", ops, "application/json-patch+json")
    assert status == 200, body
    assert body["spec"]["holderIdentity"] == "b"
    status, body = await _call(http, "PATCH", f"{LEASES}/a", ops, "application/json-patch+json")
    assert status == 422  # the test op fails now
    status, body = await _call(http, "PATCH", f"{LEASES}/a", {"spec": {"leaseTransitions": 2}},
                               "application/strategic-merge-patch+json")
    assert status == 200
    assert body["spec"] == {"holderIdentity": "b", "leaseTransitions": 2}
    assert int(body["metadata"]["resourceVersion"]) > int(created["metadata"]["resourceVersion"])


async def test_lease_type_errors_are_400_and_range_errors_422(
        http: aiohttp.ClientSession) -> None:
    lease = _lease("a")
    lease["spec"]["leaseDurationSeconds"] = "15"
    status, body = await _call(http, "POST", LEASES, lease)
    assert status == 400
    assert body["message"] == (
        'Lease in version "v1" cannot be handled as a Lease: json: cannot unmarshal string into '
        "Go struct field LeaseSpec.spec.leaseDurationSeconds of type int32")
    lease["spec"]["leaseDurationSeconds"] = 15
    lease["spec"]["leaseTransitions"] = -1
    status, body = await _call(http, "POST", LEASES, lease)
    assert status == 422
    assert body["details"]["causes"][0]["field"] == "spec.leaseTransitions"
    lease["spec"]["leaseTransitions"] = 0
    lease["spec"]["renewTime"] = "yesterday"
    status, body = await _call(http, "POST", LEASES, lease)
    assert status == 400


async def test_delete_precondition_conflict(http: aiohttp.ClientSession) -> None:
    await _call(http, "POST", LEASES, _lease("a"))
    status, body = await _call(http, "DELETE", f"{LEASES}/a",
                               {"preconditions": {"resourceVersion": "1"}})
    assert status == 409
    assert body["message"].startswith(
        'Operation cannot be fulfilled on leases.coordination.k8s.io "a": Precondition failed')
    status, _ = await _call(http, "DELETE", f"{LEASES}/a")
    assert status == 200
    status, body = await _call(http, "DELETE", f"{LEASES}/a")
    assert status == 404


async def test_deletecollection(http: aiohttp.ClientSession) -> None:
    for name in ("a", "b"):
        await _call(http, "POST", LEASES, _lease(name))
    status, body = await _call(http, "DELETE", LEASES)
    assert status == 200
    assert body["kind"] == "LeaseList"
    assert len(body["items"]) == 2
    _, listed = await _call(http, "GET", LEASES)
    assert listed["items"] == []


async def test_list_shape(http: aiohttp.ClientSession) -> None:
    await _call(http, "POST", LEASES, _lease("a"))
    status, body = await _call(http, "GET", "/apis/coordination.k8s.io/v1/leases")
    assert status == 200
    assert body["kind"] == "LeaseList"
    assert body["apiVersion"] == "coordination.k8s.io/v1"
    assert body["metadata"]["resourceVersion"].isdigit()
    assert "kind" not in body["items"][0]  # built-in list items carry no type meta


async def test_discovery_and_health(http: aiohttp.ClientSession) -> None:
    for path in ("/healthz", "/readyz", "/livez"):
        status, text = await _call(http, "GET", path)
        assert (status, text) == (200, "ok")
    _, version = await _call(http, "GET", "/version")
    assert version["major"] == "1"
    _, api = await _call(http, "GET", "/api")
    assert api["kind"] == "APIVersions"
    assert api["versions"] == ["v1"]
    _, core = await _call(http, "GET", "/api/v1")
    names = {r["name"] for r in core["resources"]}
    assert {"pods", "pods/status", "nodes", "namespaces", "events"} <= names
    _, groups = await _call(http, "GET", "/apis")
    assert {g["name"] for g in groups["groups"]} >= {"coordination.k8s.io",
                                                      "apiextensions.k8s.io"}
    _, coordination = await _call(http, "GET", "/apis/coordination.k8s.io/v1")
    assert coordination["groupVersion"] == "coordination.k8s.io/v1"
    assert coordination["resources"][0]["kind"] == "Lease"


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
