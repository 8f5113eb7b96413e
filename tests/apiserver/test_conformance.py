"""What a kube-apiserver does, run unchanged against the embedded server and
the real one (``server`` is parametrized: ``embedded``, ``kube``).

Each test keeps to its own namespace (``server.namespace``) and names its
cluster-wide objects with ``server.name(...)``; where the two servers differ
on purpose, the test says what each does (``if server.kube``) and
``docs/apiserver-differences.md`` says why the difference is kept.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, watch
from kubernetes.client import ApiException

from tests.apiserver.servers import Server

UTC = dt.UTC
NOT_FOUND_TEXT = "404 page not found\n"
CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"


def _leases(server: Server) -> str:
    return f"/apis/coordination.k8s.io/v1/namespaces/{server.namespace}/leases"


def _lease(name: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": name, "labels": labels}, "spec": {"holderIdentity": "a"}}


def _status(exc: ApiException) -> dict[str, Any]:
    assert exc.body is not None
    body = json.loads(exc.body)
    assert isinstance(body, dict)
    return body


def _untyped(api: object) -> Any:
    """The client's Optional-everywhere models as Any: these tests check the wire."""
    return api


def _watch() -> Any:
    factory: Any = watch.Watch
    return factory()


def _crd(server: Server, *, scope: str = "Cluster") -> dict[str, Any]:
    """A CRD of the test's own group (the real server is shared by the whole run)."""
    group = f"t{server.suffix}.conformance.egressd.io"
    return {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": f"widgets.{group}"},
        "spec": {
            "group": group, "scope": scope,
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wdg"]},
            "versions": [{
                "name": "v1alpha1", "served": True, "storage": True,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
                "subresources": {"status": {}},
            }],
        },
    }  # fmt: skip


def _install_crd(server: Server, crd: dict[str, Any]) -> dict[str, Any]:
    """Create the CRD (removed at the end) and wait until it is Established and served."""
    server.remove_later(f"{CRDS}/{crd['metadata']['name']}")
    created = server.ok("POST", CRDS, crd)
    group, version = crd["spec"]["group"], crd["spec"]["versions"][0]["name"]

    def established() -> dict[str, Any] | None:
        got = server.ok("GET", f"{CRDS}/{crd['metadata']['name']}")
        conditions = {c["type"]: c["status"] for c in (got.get("status") or {}).get("conditions") or []}
        # discovery first, then the storage: until then the real server answers 404, then 429
        served = server.request("GET", f"/apis/{group}/{version}").status == 200
        plural = crd["spec"]["names"]["plural"]
        ready = served and server.request("GET", f"/apis/{group}/{version}/{plural}").status == 200
        return got if conditions.get("Established") == "True" and ready else None

    server.eventually("the CRD is Established and its resource served", established)
    return created


# ------------------------------------------------------------------ status codes and bodies


def test_unknown_resource_is_a_status_and_an_unknown_path_plain_text(server: Server) -> None:
    """A resource the server's own group version lacks is a Status; a path no
    API serves is Go's plain-text ``404 page not found``."""
    status = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
              "message": "the server could not find the requested resource",
              "reason": "NotFound", "details": {}, "code": 404}
    # the core API's handler answers below /api/ for any version
    for path in ("/api/v1/things", "/api/v2", "/api/v2/pods"):
        reply = server.request("GET", path)
        assert (reply.status, reply.body) == (404, status), path
    for path in ("/apis/nope.io/v1/things", "/apis/nope.io/v1", "/apis/nope.io", "/nope", "/api2"):
        reply = server.request("GET", path)
        assert reply.status == 404, path
        assert reply.headers["content-type"] == "text/plain; charset=utf-8", path
        assert reply.text == NOT_FOUND_TEXT, path


def test_method_not_allowed(server: Server) -> None:
    reply = server.request("POST", f"{_leases(server)}/x", _lease("x"))
    assert reply.status == 405
    assert reply.json()["reason"] == "MethodNotAllowed"
    assert server.request("POST", "/api/v1/pods", {"metadata": {"name": "p"}}).status == 405


def test_malformed_json_is_400(server: Server) -> None:
    reply = server.request("POST", _leases(server), "{not json")
    assert reply.status == 400
    body = reply.json()
    assert body["reason"] == "BadRequest"
    assert body["code"] == 400
    assert "details" not in body


def test_name_and_namespace_mismatch_are_400(server: Server) -> None:
    server.ok("POST", _leases(server), _lease("a"))
    reply = server.request("PUT", f"{_leases(server)}/a", _lease("b"))
    assert reply.status == 400
    assert reply.json()["message"] == "the name of the object (b) does not match the name on the URL (a)"
    lease = _lease("c")
    lease["metadata"]["namespace"] = "other"
    reply = server.request("POST", _leases(server), lease)
    assert reply.status == 400
    assert "namespace of the provided object does not match" in reply.json()["message"]


def test_put_creates_a_missing_lease_but_not_a_missing_node(server: Server) -> None:
    reply = server.request("PUT", f"{_leases(server)}/new", _lease("new"))
    assert reply.status == 201
    assert reply.json()["metadata"]["resourceVersion"]
    node = server.name("absent")
    reply = server.request("PUT", f"/api/v1/nodes/{node}", {"metadata": {"name": node}})
    assert reply.status == 404
    assert reply.json()["details"] == {"name": node, "kind": "nodes"}


def test_unconditional_update_allowed_for_nodes(server: Server) -> None:
    node = server.name("n")
    server.remove_later(f"/api/v1/nodes/{node}")
    server.ok("POST", "/api/v1/nodes", {"metadata": {"name": node}})
    body = server.ok("PUT", f"/api/v1/nodes/{node}", {"metadata": {"name": node, "labels": {"x": "y"}}})
    assert body["metadata"]["labels"] == {"x": "y"}


def test_noop_update_keeps_resource_version(server: Server) -> None:
    created = server.ok("POST", _leases(server), _lease("a"))
    same = server.ok("PUT", f"{_leases(server)}/a", created)
    assert same["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]


def test_json_patch_and_strategic_merge(server: Server) -> None:
    leases = _leases(server)
    created = server.ok("POST", leases, _lease("a"))
    ops = [{"op": "test", "path": "/spec/holderIdentity", "value": "a"},
           {"op": "replace", "path": "/spec/holderIdentity", "value": "b"},
           {"op": "add", "path": "/metadata/labels", "value": {"k": "v"}}]
    body = server.ok("PATCH", f"{leases}/a", ops, content_type="application/json-patch+json")
    assert body["spec"]["holderIdentity"] == "b"
    reply = server.request("PATCH", f"{leases}/a", ops, content_type="application/json-patch+json")
    assert reply.status == 422  # the test op fails now
    body = server.ok("PATCH", f"{leases}/a", {"spec": {"leaseTransitions": 2}},
                     content_type="application/strategic-merge-patch+json")
    assert body["spec"] == {"holderIdentity": "b", "leaseTransitions": 2}
    assert int(body["metadata"]["resourceVersion"]) > int(created["metadata"]["resourceVersion"])


def test_lease_type_errors_are_400_and_range_errors_422(server: Server) -> None:
    lease = _lease("a")
    lease["spec"]["leaseDurationSeconds"] = "15"
    reply = server.request("POST", _leases(server), lease)
    assert reply.status == 400
    assert reply.json()["message"] == (
        'Lease in version "v1" cannot be handled as a Lease: json: cannot unmarshal string into '
        "Go struct field LeaseSpec.spec.leaseDurationSeconds of type int32")
    lease["spec"]["leaseDurationSeconds"] = 15
    lease["spec"]["leaseTransitions"] = -1
    reply = server.request("POST", _leases(server), lease)
    assert reply.status == 422
    assert reply.json()["details"]["causes"][0]["field"] == "spec.leaseTransitions"
    lease["spec"]["leaseTransitions"] = 0
    lease["spec"]["renewTime"] = "yesterday"
    assert server.request("POST", _leases(server), lease).status == 400


def test_delete_precondition_conflict(server: Server) -> None:
    leases = _leases(server)
    server.ok("POST", leases, _lease("a"))
    created = server.ok("GET", f"{leases}/a")
    reply = server.request("DELETE", f"{leases}/a", {"preconditions": {"resourceVersion": "1"}})
    assert reply.status == 409
    assert reply.json() == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "reason": "Conflict",
        "message": 'Operation cannot be fulfilled on Lease.coordination.k8s.io "a": the ResourceVersion in '
                   f"the precondition (1) does not match the ResourceVersion in record "
                   f"({created['metadata']['resourceVersion']}). The object might have been modified",
        "details": {"name": "a", "group": "coordination.k8s.io", "kind": "Lease"}, "code": 409}
    reply = server.request("DELETE", f"{leases}/a", {"preconditions": {"uid": "nope"}})
    assert reply.status == 409
    assert reply.json()["message"] == (
        'Operation cannot be fulfilled on Lease.coordination.k8s.io "a": the UID in the precondition (nope) '
        f"does not match the UID in record ({created['metadata']['uid']}). The object might have been "
        "deleted and then recreated")
    assert server.request("DELETE", f"{leases}/a").status == 200
    assert server.request("DELETE", f"{leases}/a").status == 404


def test_deletecollection(server: Server) -> None:
    leases = _leases(server)
    for name in ("a", "b"):
        server.ok("POST", leases, _lease(name))
    body = server.ok("DELETE", leases)
    assert body["kind"] == "LeaseList"
    assert len(body["items"]) == 2
    assert server.ok("GET", leases)["items"] == []


def test_list_shape(server: Server) -> None:
    server.ok("POST", _leases(server), _lease("a"))
    body = server.ok("GET", _leases(server))
    assert body["kind"] == "LeaseList"
    assert body["apiVersion"] == "coordination.k8s.io/v1"
    assert body["metadata"]["resourceVersion"].isdigit()
    assert "kind" not in body["items"][0]  # built-in list items carry no type meta


def test_discovery_and_health(server: Server) -> None:
    for path in ("/healthz", "/readyz", "/livez"):
        reply = server.request("GET", path, accept="*/*")
        assert (reply.status, reply.text) == (200, "ok"), path
    assert server.ok("GET", "/version")["major"] == "1"
    api = server.ok("GET", "/api")
    assert api["kind"] == "APIVersions"
    assert api["versions"] == ["v1"]
    names = {r["name"] for r in server.ok("GET", "/api/v1")["resources"]}
    assert {"pods", "pods/status", "nodes", "namespaces", "events"} <= names
    groups = server.ok("GET", "/apis")
    assert groups["kind"] == "APIGroupList"
    assert {g["name"] for g in groups["groups"]} >= {"coordination.k8s.io", "apiextensions.k8s.io"}
    coordination = server.ok("GET", "/apis/coordination.k8s.io/v1")
    assert coordination["groupVersion"] == "coordination.k8s.io/v1"
    assert [r["kind"] for r in coordination["resources"] if r["name"] == "leases"] == ["Lease"]


# ------------------------------------------------------------------ through the official client


def _client_lease(name: str, holder: str = "node-a", **labels: str) -> Any:
    when = dt.datetime(2026, 11, 24, 14, 22, 0, 123456, tzinfo=UTC)
    return client.V1Lease(
        metadata=client.V1ObjectMeta(name=name, labels=labels or None),
        spec=client.V1LeaseSpec(holder_identity=holder, lease_duration_seconds=15,
                                lease_transitions=0, acquire_time=when, renew_time=when),
    )


def test_lease_create_get_list_update_patch_delete(server: Server) -> None:
    ns = server.namespace
    with server.client() as api:
        leases = _untyped(client.CoordinationV1Api(api))
        created = leases.create_namespaced_lease(ns, _client_lease("ip-1", app="egressd"))
        assert created.metadata.namespace == ns
        assert created.metadata.uid
        assert created.metadata.creation_timestamp is not None
        rv1 = int(created.metadata.resource_version)
        got = leases.read_namespaced_lease("ip-1", ns)
        assert got.spec.holder_identity == "node-a"
        listed = leases.list_namespaced_lease(ns)
        assert [item.metadata.name for item in listed.items] == ["ip-1"]
        assert int(listed.metadata.resource_version) >= rv1

        got.spec.holder_identity = "node-b"
        got.spec.lease_transitions = 1
        updated = leases.replace_namespaced_lease("ip-1", ns, got)
        assert updated.spec.holder_identity == "node-b"
        assert int(updated.metadata.resource_version) > rv1
        assert updated.metadata.uid == created.metadata.uid

        patched = leases.patch_namespaced_lease("ip-1", ns, {"spec": {"holderIdentity": None}})
        assert patched.spec.holder_identity is None
        assert patched.spec.lease_transitions == 1

        # this client version hands DELETE answers back as plain dicts
        deleted = leases.delete_namespaced_lease("ip-1", ns)
        assert deleted == {
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
            "details": {"name": "ip-1", "group": "coordination.k8s.io", "kind": "leases",
                        "uid": created.metadata.uid}}
        assert leases.list_namespaced_lease(ns).items == []


def test_stale_update_is_409_with_the_real_status(server: Server) -> None:
    ns = server.namespace
    with server.client() as api:
        leases = _untyped(client.CoordinationV1Api(api))
        first = leases.create_namespaced_lease(ns, _client_lease("ip-2"))
        leases.patch_namespaced_lease("ip-2", ns, {"spec": {"holderIdentity": "node-b"}})
        first.spec.holder_identity = "node-c"
        with pytest.raises(ApiException) as caught:
            leases.replace_namespaced_lease("ip-2", ns, first)
    assert caught.value.status == 409
    assert _status(caught.value) == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": 'Operation cannot be fulfilled on leases.coordination.k8s.io "ip-2": the '
                   "object has been modified; please apply your changes to the latest version "
                   "and try again",
        "reason": "Conflict",
        "details": {"name": "ip-2", "group": "coordination.k8s.io", "kind": "leases"},
        "code": 409,
    }


def test_merge_patch_with_stale_resource_version_is_409(server: Server) -> None:
    ns = server.namespace
    with server.client() as api:
        leases = _untyped(client.CoordinationV1Api(api))
        first = leases.create_namespaced_lease(ns, _client_lease("ip-3"))
        leases.patch_namespaced_lease("ip-3", ns, {"spec": {"holderIdentity": "node-b"}})
        with pytest.raises(ApiException) as caught:
            leases.patch_namespaced_lease("ip-3", ns, {
                "metadata": {"resourceVersion": first.metadata.resource_version},
                "spec": {"holderIdentity": "node-c"}})
    assert caught.value.status == 409
    assert _status(caught.value)["reason"] == "Conflict"


def test_update_without_resource_version_is_422(server: Server) -> None:
    ns = server.namespace
    with server.client() as api:
        leases = _untyped(client.CoordinationV1Api(api))
        lease = leases.create_namespaced_lease(ns, _client_lease("ip-4"))
        lease.metadata.resource_version = None
        with pytest.raises(ApiException) as caught:
            leases.replace_namespaced_lease("ip-4", ns, lease)
    assert caught.value.status == 422
    body = _status(caught.value)
    assert body["reason"] == "Invalid"
    assert body["message"] == (
        'leases.coordination.k8s.io "ip-4" is invalid: metadata.resourceVersion: Invalid '
        "value: 0: must be specified for an update")
    assert body["details"]["causes"] == [{
        "reason": "FieldValueInvalid", "field": "metadata.resourceVersion",
        "message": "Invalid value: 0: must be specified for an update"}]


def test_lease_validation_names_the_field(server: Server) -> None:
    lease = _client_lease("ip-5")
    lease.spec.lease_duration_seconds = 0
    with server.client() as api, pytest.raises(ApiException) as caught:
        _untyped(client.CoordinationV1Api(api)).create_namespaced_lease(server.namespace, lease)
    assert caught.value.status == 422
    body = _status(caught.value)
    assert body["message"] == ('Lease.coordination.k8s.io "ip-5" is invalid: '
                               "spec.leaseDurationSeconds: Invalid value: 0: must be greater than 0")
    assert body["details"]["kind"] == "Lease"
    assert body["details"]["causes"][0]["field"] == "spec.leaseDurationSeconds"


def test_get_missing_is_404_with_the_real_status(server: Server) -> None:
    node = server.name("nope")
    with server.client() as api:
        with pytest.raises(ApiException) as caught:
            _untyped(client.CoordinationV1Api(api)).read_namespaced_lease("nope", server.namespace)
        assert caught.value.status == 404
        assert _status(caught.value) == {
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": 'leases.coordination.k8s.io "nope" not found', "reason": "NotFound",
            "details": {"name": "nope", "group": "coordination.k8s.io", "kind": "leases"},
            "code": 404,
        }
        with pytest.raises(ApiException) as caught:
            _untyped(client.CoreV1Api(api)).read_node(node)
    assert _status(caught.value)["details"] == {"name": node, "kind": "nodes"}


def test_create_twice_is_409_already_exists(server: Server) -> None:
    with server.client() as api:
        leases = _untyped(client.CoordinationV1Api(api))
        leases.create_namespaced_lease(server.namespace, _client_lease("ip-6"))
        with pytest.raises(ApiException) as caught:
            leases.create_namespaced_lease(server.namespace, _client_lease("ip-6"))
    assert caught.value.status == 409
    body = _status(caught.value)
    assert body["reason"] == "AlreadyExists"
    assert body["message"] == 'leases.coordination.k8s.io "ip-6" already exists'


def test_generate_name(server: Server) -> None:
    lease = client.V1Lease(metadata=client.V1ObjectMeta(generate_name="egress-"))
    with server.client() as api:
        created = _untyped(client.CoordinationV1Api(api)).create_namespaced_lease(server.namespace, lease)
    assert created.metadata.name.startswith("egress-")
    assert len(created.metadata.name) == len("egress-") + 5


def test_missing_namespace_is_404(server: Server) -> None:
    elsewhere = server.name("elsewhere")
    with server.client() as api, pytest.raises(ApiException) as caught:
        _untyped(client.CoordinationV1Api(api)).create_namespaced_lease(elsewhere, _client_lease("ip-7"))
    assert caught.value.status == 404
    assert _status(caught.value)["message"] == f'namespaces "{elsewhere}" not found'


def test_microtime_round_trip_has_six_digits_and_z(server: Server) -> None:
    ns = server.namespace
    lease = _client_lease("ip-8")
    lease.spec.renew_time = dt.datetime(2026, 11, 24, 16, 22, 0, 120000, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    with server.client() as api:
        leases = _untyped(client.CoordinationV1Api(api))
        leases.create_namespaced_lease(ns, lease)
        raw = server.ok("GET", f"{_leases(server)}/ip-8")
        assert raw["spec"]["renewTime"] == "2026-11-24T14:22:00.120000Z"
        assert raw["spec"]["acquireTime"] == "2026-11-24T14:22:00.123456Z"
        assert raw["metadata"]["creationTimestamp"].endswith("Z")
        assert len(raw["metadata"]["creationTimestamp"]) == len("2026-11-24T14:22:00Z")
        back = leases.read_namespaced_lease("ip-8", ns)
    assert back.spec.renew_time == dt.datetime(2026, 11, 24, 14, 22, 0, 120000, tzinfo=UTC)


def test_microtime_without_six_digits_is_rejected_like_go(server: Server) -> None:
    # isoformat() drops the fraction when microseconds are 0; Go's RFC3339Micro
    # parser then fails, and the server answers 400.
    lease = _client_lease("ip-9")
    lease.spec.renew_time = dt.datetime(2026, 11, 24, 14, 22, 0, tzinfo=UTC)
    with server.client() as api, pytest.raises(ApiException) as caught:
        _untyped(client.CoordinationV1Api(api)).create_namespaced_lease(server.namespace, lease)
    assert caught.value.status == 400
    assert "cannot be handled as a Lease: parsing time" in _status(caught.value)["message"]


def test_label_and_field_selectors(server: Server) -> None:
    ns = server.namespace
    with server.client() as api:
        leases = _untyped(client.CoordinationV1Api(api))
        leases.create_namespaced_lease(ns, _client_lease("a", tier="gw", zone="x"))
        leases.create_namespaced_lease(ns, _client_lease("b", tier="gw", zone="y"))
        leases.create_namespaced_lease(ns, _client_lease("c", tier="web"))

        def names(**kwargs: str) -> list[str]:
            return [i.metadata.name for i in leases.list_namespaced_lease(ns, **kwargs).items]

        assert names(label_selector="tier=gw") == ["a", "b"]
        assert names(label_selector="tier==gw,zone!=x") == ["b"]
        assert names(label_selector="zone in (x, y)") == ["a", "b"]
        assert names(label_selector="zone notin (x)") == ["b", "c"]
        assert names(label_selector="zone") == ["a", "b"]
        assert names(label_selector="!zone") == ["c"]
        assert names(field_selector="metadata.name=b") == ["b"]
        assert names(field_selector=f"metadata.name!=b,metadata.namespace=={ns}") == ["a", "c"]
        with pytest.raises(ApiException) as caught:
            leases.list_namespaced_lease(ns, field_selector="spec.holderIdentity=x")
    assert caught.value.status == 400
    assert _status(caught.value)["message"] == (
        '"spec.holderIdentity" is not a known field selector: only "metadata.name", "metadata.namespace"')


def test_pagination_with_continue(server: Server) -> None:
    ns = server.namespace
    with server.client() as api:
        leases = _untyped(client.CoordinationV1Api(api))
        for i in range(5):
            leases.create_namespaced_lease(ns, _client_lease(f"p{i}"))
        first = leases.list_namespaced_lease(ns, limit=2)
        assert [i.metadata.name for i in first.items] == ["p0", "p1"]
        assert first.metadata.remaining_item_count == 3
        leases.create_namespaced_lease(ns, _client_lease("p5"))  # after the snapshot: not in this list
        second = leases.list_namespaced_lease(ns, limit=2, _continue=first.metadata._continue)
        third = leases.list_namespaced_lease(ns, limit=2, _continue=second.metadata._continue)
    assert [i.metadata.name for i in second.items + third.items] == ["p2", "p3", "p4"]
    assert not third.metadata._continue
    assert third.metadata.resource_version == first.metadata.resource_version


def test_nodes_pods_namespaces_and_cluster_wide_lists(server: Server) -> None:
    node, team = server.name("gw"), server.name("team")
    server.remove_later(f"/api/v1/nodes/{node}")
    server.remove_later(f"/api/v1/namespaces/{team}")
    with server.client() as api:
        core = _untyped(client.CoreV1Api(api))
        core.create_node(client.V1Node(metadata=client.V1ObjectMeta(name=node, labels={"egress-gw": node})))
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=team)))
        spec = client.V1PodSpec(node_name=node, containers=[client.V1Container(name="c", image="i")])
        pod = core.create_namespaced_pod(team, client.V1Pod(
            metadata=client.V1ObjectMeta(name="xwing", labels={"org": "alliance"}), spec=spec))
        assert pod.status.phase == "Pending"  # status is reset on create

        pod.status = client.V1PodStatus(phase="Running", pod_ip="10.0.1.5")
        running = core.replace_namespaced_pod_status("xwing", team, pod)
        assert running.status.pod_ip == "10.0.1.5"
        # the main resource ignores status changes
        running.status.pod_ip = "10.9.9.9"
        running.metadata.labels["extra"] = "1"
        again = core.replace_namespaced_pod("xwing", team, running)
        assert again.status.pod_ip == "10.0.1.5"
        assert again.metadata.labels["extra"] == "1"

        on_gw = core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={node}")
        assert [p.metadata.name for p in on_gw.items] == ["xwing"]
        others = core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName!={node},metadata.namespace={team}")
        assert others.items == []
        assert [n.metadata.name for n in core.list_node(label_selector=f"egress-gw={node}").items] == [node]
        ns = core.read_namespace(team)
        assert ns.status.phase == "Active"
        assert ns.metadata.labels == {"kubernetes.io/metadata.name": team}

        deleted = core.delete_namespaced_pod("xwing", team, grace_period_seconds=0)
        assert deleted.metadata.name == "xwing"  # pods answer DELETE with the object
        with pytest.raises(ApiException) as caught:
            core.read_namespaced_pod("xwing", team)
        assert caught.value.status == 404
        assert core.delete_node(node)["status"] == "Success"
        core.delete_namespace(team)
        if server.kube:  # no namespace controller empties and removes it
            assert core.read_namespace(team).status.phase == "Terminating"
        else:
            with pytest.raises(ApiException):
                core.read_namespace(team)


def test_a_pod_on_a_node_is_deleted_gracefully(server: Server) -> None:
    node = server.name("gw")
    pods = f"/api/v1/namespaces/{server.namespace}/pods"
    pod = {"metadata": {"name": "bound"}, "spec": {"nodeName": node, "containers": [{"name": "c", "image": "i"}]}}
    server.ok("POST", pods, pod)
    deleted = server.ok("DELETE", f"{pods}/bound")
    assert deleted["metadata"]["name"] == "bound"
    reply = server.request("GET", f"{pods}/bound")
    if server.kube:  # the kubelet would confirm the end; there is none
        assert reply.status == 200
        assert reply.json()["metadata"]["deletionGracePeriodSeconds"] == 30
        assert reply.json()["metadata"]["deletionTimestamp"]
        server.ok("DELETE", f"{pods}/bound", query={"gracePeriodSeconds": "0"})
        reply = server.request("GET", f"{pods}/bound")
    assert reply.status == 404


def test_events_create_and_list(server: Server) -> None:
    ns = server.namespace
    with server.client() as api:
        core = _untyped(client.CoreV1Api(api))
        event = client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name="egressd-"),
            involved_object=client.V1ObjectReference(kind="Lease", name="ip-1", namespace=ns),
            reason="Acquired", message="node-a owns 172.18.0.42", type="Normal",
            first_timestamp=dt.datetime(2026, 1, 1, 0, 0, 0, 500000, tzinfo=UTC))
        created = core.create_namespaced_event(ns, event)
        assert created.first_timestamp == dt.datetime(2026, 1, 1, tzinfo=UTC)
        found = core.list_namespaced_event(ns, field_selector="involvedObject.name=ip-1")
        assert [e.reason for e in found.items] == ["Acquired"]
        new_api = _untyped(client.EventsV1Api(api))
        new_api.create_namespaced_event(ns, client.EventsV1Event(
            metadata=client.V1ObjectMeta(name="e1"), reason="Acquired", action="Acquire", type="Normal",
            regarding=client.V1ObjectReference(kind="Lease", name="ip-1", namespace=ns),
            event_time=dt.datetime(2026, 1, 1, 0, 0, 0, 1, tzinfo=UTC),
            reporting_controller="egressd.io/egressd", reporting_instance="node-a"))
        assert new_api.read_namespaced_event("e1", ns).event_time.microsecond == 1


def test_an_event_about_a_node_belongs_in_default(server: Server) -> None:
    """A cluster-scoped object's Events live in ``default``: elsewhere they are 422."""
    node = server.name("gw")
    core_event: dict[str, Any] = {"metadata": {"name": "about-node"}, "reason": "R", "message": "m", "type": "Normal",
                  "involvedObject": {"kind": "Node", "name": node, "apiVersion": "v1"}}
    reply = server.request("POST", f"/api/v1/namespaces/{server.namespace}/events", core_event)
    assert reply.status == 422
    message = 'Invalid value: "": does not match event.namespace'
    assert reply.json()["message"] == f'Event "about-node" is invalid: involvedObject.namespace: {message}'
    assert reply.json()["details"]["causes"] == [
        {"reason": "FieldValueInvalid", "message": message, "field": "involvedObject.namespace"}]
    new_event = {"metadata": {"name": "about-node"}, "reason": "R", "action": "A", "type": "Normal",
                 "regarding": {"kind": "Node", "name": node},
                 "eventTime": "2026-01-01T00:00:00.000001Z", "reportingController": "egressd.io/egressd",
                 "reportingInstance": "i"}
    reply = server.request("POST", f"/apis/events.k8s.io/v1/namespaces/{server.namespace}/events", new_event)
    assert reply.status == 422
    assert reply.json()["details"]["causes"][0]["field"] == "involvedObject.namespace"
    events = "/api/v1/namespaces/default/events"
    core_event["metadata"]["name"] = server.name("about-node")
    server.remove_later(f"{events}/{core_event['metadata']['name']}")
    server.ok("POST", events, core_event)


def test_dry_run_stores_nothing(server: Server) -> None:
    leases = _leases(server)
    created = server.ok("POST", leases, _lease("dry"), query={"dryRun": "All"})
    assert created["metadata"]["name"] == "dry"
    assert server.request("GET", f"{leases}/dry").status == 404
    server.ok("POST", leases, _lease("wet"))
    patched = server.ok("PATCH", f"{leases}/wet", {"spec": {"holderIdentity": "b"}},
                        content_type="application/merge-patch+json", query={"dryRun": "All"})
    assert patched["spec"]["holderIdentity"] == "b"
    assert server.ok("GET", f"{leases}/wet")["spec"]["holderIdentity"] == "a"
    server.ok("DELETE", f"{leases}/wet", query={"dryRun": "All"})
    assert server.ok("GET", f"{leases}/wet")["spec"]["holderIdentity"] == "a"
    reply = server.request("POST", leases, _lease("x"), query={"dryRun": "Some"})
    assert reply.status == 422
    assert reply.json()["message"] == (
        'CreateOptions.meta.k8s.io "" is invalid: dryRun: Unsupported value: ["Some"]: supported values: "All"')


def test_lease_fields_of_a_disabled_feature_are_dropped(server: Server) -> None:
    """``spec.preferredHolder`` and ``spec.strategy`` belong to the
    CoordinatedLeaderElection feature, off by default: the server drops them."""
    lease = _lease("gated")
    lease["spec"].update(preferredHolder="b", strategy="OldestEmulationVersion")
    created = server.ok("POST", _leases(server), lease)
    assert created["spec"] == {"holderIdentity": "a"}


# ------------------------------------------------------------------ custom resources


def test_crd_and_custom_objects_with_status(server: Server) -> None:
    crd = _crd(server)
    group, plural = crd["spec"]["group"], "widgets"
    created_crd = _install_crd(server, crd)
    assert created_crd["metadata"]["name"] == crd["metadata"]["name"]
    policy = {"apiVersion": f"{group}/v1alpha1", "kind": "Widget", "metadata": {"name": "outpost"},
              "spec": {"destinationCIDRs": ["172.18.0.0/16"]}, "status": {"ignored": True}}
    with server.client() as api:
        custom = _untyped(client.CustomObjectsApi(api))
        args = (group, "v1alpha1", plural)
        created = custom.create_cluster_custom_object(*args, policy)
        server.remove_later(f"/apis/{group}/v1alpha1/{plural}/outpost")
        assert "status" not in created  # dropped on create with a status subresource
        assert created["metadata"]["generation"] == 1

        with_status = custom.patch_cluster_custom_object_status(
            *args, "outpost", {"status": {"owners": {"172.18.0.42": "gw-1"}}})
        assert with_status["status"] == {"owners": {"172.18.0.42": "gw-1"}}
        assert with_status["metadata"]["generation"] == 1

        # main resource ignores status, bumps generation on spec change
        body = dict(with_status, spec={"destinationCIDRs": ["10.0.0.0/8"]}, status={"x": 1})
        replaced = custom.replace_cluster_custom_object(*args, "outpost", body)
        assert replaced["status"] == {"owners": {"172.18.0.42": "gw-1"}}
        assert replaced["metadata"]["generation"] == 2

        # /status ignores everything but status
        replaced["spec"] = {"destinationCIDRs": []}
        replaced["status"] = {"owners": {}}
        status_only = custom.replace_cluster_custom_object_status(*args, "outpost", replaced)
        assert status_only["spec"] == {"destinationCIDRs": ["10.0.0.0/8"]}
        assert status_only["status"] == {"owners": {}}

        listed = custom.list_cluster_custom_object(*args)
        assert listed["kind"] == "WidgetList"
        assert [i["metadata"]["name"] for i in listed["items"]] == ["outpost"]
        stale = dict(created, spec={"destinationCIDRs": []})
        with pytest.raises(ApiException) as caught:
            custom.replace_cluster_custom_object(*args, "outpost", stale)
        assert caught.value.status == 409
        assert _status(caught.value)["details"] == {"name": "outpost", "group": group, "kind": plural}

        discovery = server.ok("GET", f"/apis/{group}/v1alpha1")
        assert {r["name"] for r in discovery["resources"]} == {plural, f"{plural}/status"}

        assert custom.delete_cluster_custom_object(*args, "outpost")["status"] == "Success"


def test_a_deleted_crds_resources_are_404_page_not_found(server: Server) -> None:
    crd = _crd(server)
    group = crd["spec"]["group"]
    path = f"/apis/{group}/v1alpha1/widgets"
    _install_crd(server, crd)
    assert server.ok("GET", path)["items"] == []
    server.ok("DELETE", f"{CRDS}/{crd['metadata']['name']}")

    def gone() -> bool:
        return all(server.request("GET", url).status == 404 for url in (path, f"{path}/outpost"))

    server.eventually("the deleted CRD's resources are not served", gone)
    for url in (path, f"{path}?watch=true", f"{path}/outpost"):
        reply = server.request("GET", url)
        assert reply.status == 404, url
        assert reply.text == NOT_FOUND_TEXT, url


def test_deleting_a_crd_ends_its_watches_after_deleting_its_objects(server: Server) -> None:
    """What egressd sees when its CRD goes: a DELETED event for every object,
    then the end of the watch, long before its timeout."""
    crd = _crd(server)
    path = f"/apis/{crd['spec']['group']}/v1alpha1/widgets"
    _install_crd(server, crd)
    created = [server.ok("POST", path, {"apiVersion": f"{crd['spec']['group']}/v1alpha1", "kind": "Widget",
                                        "metadata": {"name": name}}) for name in ("w1", "w2")]  # fmt: skip
    since = created[-1]["metadata"]["resourceVersion"]
    started = time.monotonic()
    with server.watching(path, resourceVersion=since, timeoutSeconds="30") as events:
        server.ok("DELETE", f"{CRDS}/{crd['metadata']['name']}")
        seen = events()
    assert sorted((e["type"], e["object"]["metadata"]["name"]) for e in seen) == [("DELETED", "w1"), ("DELETED", "w2")]
    assert time.monotonic() - started < 20, "the watch ran on to its timeout"


def test_namespaced_custom_objects(server: Server) -> None:
    crd = _crd(server, scope="Namespaced")
    group = crd["spec"]["group"]
    _install_crd(server, crd)
    policy = {"apiVersion": f"{group}/v1alpha1", "kind": "Widget", "metadata": {"name": "outpost"},
              "spec": {"destinationCIDRs": ["172.18.0.0/16"]}}
    with server.client() as api:
        custom = _untyped(client.CustomObjectsApi(api))
        args = (group, "v1alpha1", server.namespace, "widgets")
        custom.create_namespaced_custom_object(*args, policy)
        patched = custom.patch_namespaced_custom_object(*args, "outpost", {"spec": {"x": 1}})
        assert patched["spec"] == {"destinationCIDRs": ["172.18.0.0/16"], "x": 1}
        assert patched["metadata"]["namespace"] == server.namespace
        everywhere = custom.list_custom_object_for_all_namespaces(group, "v1alpha1", "widgets")
        assert len(everywhere["items"]) == 1
        custom.delete_namespaced_custom_object(*args, "outpost")


# ------------------------------------------------------------------ watch


def test_client_watch_sees_added_modified_deleted_in_order(server: Server) -> None:
    ns = server.namespace
    with server.client() as api:
        leases = _untyped(client.CoordinationV1Api(api))
        start = leases.list_namespaced_lease(ns).metadata.resource_version
        leases.create_namespaced_lease(ns, _lease("ip-1"))
        leases.patch_namespaced_lease("ip-1", ns, {"spec": {"holderIdentity": "b"}})
        leases.delete_namespaced_lease("ip-1", ns)
        seen = [(e["type"], e["object"].metadata.name, e["object"].spec.holder_identity)
                for e in _watch().stream(leases.list_namespaced_lease, ns, resource_version=start,
                                         timeout_seconds=1)]
    assert seen == [("ADDED", "ip-1", "a"), ("MODIFIED", "ip-1", "b"), ("DELETED", "ip-1", "b")]


def test_watch_without_rv_lists_current_state_then_goes_live(server: Server) -> None:
    ns = server.namespace
    with server.client() as api:
        leases = _untyped(client.CoordinationV1Api(api))
        leases.create_namespaced_lease(ns, _lease("old"))
        w = _watch()
        seen: list[tuple[str, str]] = []
        stream = w.stream(leases.list_namespaced_lease, ns, timeout_seconds=5)
        writer = threading.Thread(target=lambda: leases.create_namespaced_lease(ns, _lease("new")))
        for event in stream:
            seen.append((event["type"], event["object"].metadata.name))
            if len(seen) == 1:
                writer.start()  # the watch is open: "new" arrives live
            if len(seen) == 2:
                w.stop()
        writer.join()
    assert seen == [("ADDED", "old"), ("ADDED", "new")]


def test_resume_from_resource_version_replays_only_later_events(server: Server) -> None:
    ns = server.namespace
    with server.client() as api:
        leases = _untyped(client.CoordinationV1Api(api))
        first = leases.create_namespaced_lease(ns, _lease("a"))
        leases.create_namespaced_lease(ns, _lease("b"))
        events = list(_watch().stream(leases.list_namespaced_lease, ns, timeout_seconds=1,
                                      resource_version=first.metadata.resource_version))
    assert [(e["type"], e["object"].metadata.name) for e in events] == [("ADDED", "b")]


def test_exact_list_at_an_old_resource_version(server: Server) -> None:
    ns = server.namespace
    with server.client() as api:
        leases = _untyped(client.CoordinationV1Api(api))
        first = leases.create_namespaced_lease(ns, _lease("a"))
        leases.patch_namespaced_lease("a", ns, {"spec": {"holderIdentity": "z"}})
        leases.create_namespaced_lease(ns, _lease("b"))
        then = leases.list_namespaced_lease(ns, resource_version=first.metadata.resource_version,
                                            resource_version_match="Exact")
    assert [(i.metadata.name, i.spec.holder_identity) for i in then.items] == [("a", "a")]
    assert then.metadata.resource_version == first.metadata.resource_version


def test_client_watch_with_label_selector(server: Server) -> None:
    ns = server.namespace
    with server.client() as api:
        leases = _untyped(client.CoordinationV1Api(api))
        start = leases.list_namespaced_lease(ns).metadata.resource_version
        leases.create_namespaced_lease(ns, _lease("in", app="egressd"))
        leases.create_namespaced_lease(ns, _lease("out", app="other"))
        events = list(_watch().stream(leases.list_namespaced_lease, ns, timeout_seconds=1,
                                      resource_version=start, label_selector="app=egressd"))
    assert [e["object"].metadata.name for e in events] == ["in"]


def test_cluster_wide_pod_watch_with_node_field_selector(server: Server) -> None:
    ns, node = server.namespace, server.name("gw")
    spec = {"containers": [{"name": "c", "image": "i"}]}
    with server.client() as api:
        core = _untyped(client.CoreV1Api(api))
        start = core.list_pod_for_all_namespaces(limit=1).metadata.resource_version
        core.create_namespaced_pod(ns, {"metadata": {"name": "p1"}, "spec": {**spec, "nodeName": node}})
        core.create_namespaced_pod(ns, {"metadata": {"name": "p2"}, "spec": {**spec, "nodeName": f"{node}-2"}})
        events = list(_watch().stream(core.list_pod_for_all_namespaces, timeout_seconds=1,
                                      resource_version=start, field_selector=f"spec.nodeName={node}"))
        for name in ("p1", "p2"):
            core.delete_namespaced_pod(name, ns, grace_period_seconds=0)
    assert [e["object"].metadata.name for e in events] == ["p1"]


def test_raw_watch_framing_and_timeout(server: Server) -> None:
    server.ok("POST", _leases(server), _lease("a"))
    started = time.monotonic()
    reply = server.request("GET", _leases(server), query={"watch": "1", "timeoutSeconds": "1"})
    elapsed = time.monotonic() - started
    assert reply.status == 200
    assert reply.headers["content-type"].startswith("application/json")
    assert reply.headers["transfer-encoding"] == "chunked"
    assert 0.9 < elapsed < 3
    events = [json.loads(line) for line in reply.text.splitlines()]
    assert reply.text.endswith("\n")
    assert [e["type"] for e in events] == ["ADDED"]
    assert events[0]["object"]["kind"] == "Lease"
    assert events[0]["object"]["apiVersion"] == "coordination.k8s.io/v1"


def test_raw_bookmarks(server: Server) -> None:
    """Bookmarks come only when asked for. The embedded server sends them at
    its interval (0.2 s here); the real one at most about once a minute and
    sometimes about 2 s before the watch ends, so a short watch may get none."""
    created = server.ok("POST", _leases(server), _lease("a"))
    rv = created["metadata"]["resourceVersion"]
    events = server.watch(_leases(server), allowWatchBookmarks="true", timeoutSeconds="3", resourceVersion=rv)
    if server.kube and not events:
        return
    assert events
    assert {e["type"] for e in events} == {"BOOKMARK"}
    bookmark = events[0]["object"]
    assert bookmark["kind"] == "Lease"
    assert bookmark["apiVersion"] == "coordination.k8s.io/v1"
    assert int(bookmark["metadata"]["resourceVersion"]) >= int(rv)
    assert set(bookmark["metadata"]) == {"resourceVersion"}
    assert bookmark.get("spec", {}) == {}  # the real one sends the empty struct
    without = server.watch(_leases(server), timeoutSeconds="3", resourceVersion=rv)
    assert without == []


def test_raw_expired_watch_is_an_error_event_then_end(server: Server) -> None:
    if server.kube:
        pytest.skip("the real server answers 410 only once its watch cache evicted the version "
                    "(minutes of writes); see docs/apiserver-differences.md")
    assert server.lab is not None
    server.ok("POST", _leases(server), _lease("a"))
    server.lab.compact()
    events = server.watch(_leases(server), resourceVersion="1", timeoutSeconds="1")
    floor = server.lab.store.resource_version
    assert events == [{"type": "ERROR", "object": {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": f"too old resource version: 1 ({floor + 1})", "reason": "Expired", "code": 410}}]


def test_selector_enter_and_leave_become_added_and_deleted(server: Server) -> None:
    leases = _leases(server)
    created = server.ok("POST", leases, _lease("a", app="other"))
    merge = "application/merge-patch+json"
    server.ok("PATCH", f"{leases}/a", {"metadata": {"labels": {"app": "egressd"}}}, content_type=merge)
    server.ok("PATCH", f"{leases}/a", {"spec": {"holderIdentity": "b"}}, content_type=merge)
    server.ok("PATCH", f"{leases}/a", {"metadata": {"labels": {"app": "other"}}}, content_type=merge)
    events = server.watch(leases, timeoutSeconds="1", labelSelector="app=egressd",
                          resourceVersion=created["metadata"]["resourceVersion"])
    assert [e["type"] for e in events] == ["ADDED", "MODIFIED", "DELETED"]
    last = events[-1]["object"]
    assert last["metadata"]["labels"] == {"app": "egressd"}  # the content before it left
    assert int(last["metadata"]["resourceVersion"]) > int(events[1]["object"]["metadata"]["resourceVersion"])


def test_watch_single_object_via_name_and_deprecated_watch_path(server: Server) -> None:
    leases = _leases(server)
    created = server.ok("POST", leases, _lease("a"))
    server.ok("POST", leases, _lease("b"))
    rv = int(created["metadata"]["resourceVersion"]) - 1
    path = f"/apis/coordination.k8s.io/v1/watch/namespaces/{server.namespace}/leases/a"
    reply = server.request("GET", path, query={"timeoutSeconds": "1", "resourceVersion": str(rv)})
    assert reply.status == 200
    events = [json.loads(line) for line in reply.text.splitlines()]
    assert [e["object"]["metadata"]["name"] for e in events] == ["a"]



def test_a_list_at_any_version_ignores_limit(server: Server) -> None:
    """``resourceVersion=0`` lets the server answer from its cache, which has no pages."""
    for name in ("a", "b", "c"):
        server.ok("POST", _leases(server), _lease(name))
    paged = server.ok("GET", _leases(server), query={"limit": "2"})
    assert len(paged["items"]) == 2 and paged["metadata"]["continue"]
    cached = server.ok("GET", _leases(server), query={"limit": "2", "resourceVersion": "0"})
    assert [i["metadata"]["name"] for i in cached["items"]] == ["a", "b", "c"]
    assert "continue" not in cached["metadata"]


# ------------------------------------------------------------------ the policy CRD's schema

POLICY_CRD = Path(__file__).resolve().parents[2] / "deploy" / "crd.yaml"
POLICY_FILE = Path(__file__).resolve().parents[2] / "config" / "policy-outpost.yaml"


def _policy_crd(server: Server) -> tuple[str, dict[str, Any]]:
    """deploy/'s CRD in a group of the test's own; the policies' collection path."""
    crd = yaml.safe_load(POLICY_CRD.read_text())
    group = f"t{server.suffix}.conformance.egressd.io"
    crd["metadata"]["name"] = f"{crd['spec']['names']['plural']}.{group}"
    crd["spec"]["group"] = group
    _install_crd(server, crd)
    return f"/apis/{group}/v1alpha1/{crd['spec']['names']['plural']}", crd


def _example_policy(server: Server, name: str) -> dict[str, Any]:
    policy: dict[str, Any] = yaml.safe_load(POLICY_FILE.read_text())
    policy["apiVersion"] = f"t{server.suffix}.conformance.egressd.io/v1alpha1"
    policy["metadata"]["name"] = name
    return policy


def test_the_policy_crd_refuses_a_broken_policy_with_the_same_causes(server: Server) -> None:
    """The same causes, in some order: the real server walks the schema's
    properties in Go map order, which changes from request to request."""
    policies, crd = _policy_crd(server)
    group = crd["spec"]["group"]
    policy = _example_policy(server, "broken")
    gateway = policy["spec"]["egressGateway"]
    gateway["egressIPs"] = ["172.18.0.42", "172.18.0.300", "172.18.0.42"]
    gateway["interface"] = "net0:1"
    policy["spec"]["excludedCIDRs"] = ["172.18.0.0/30", "172.18.0/30"]
    reply = server.request("POST", policies, policy)
    assert reply.status == 422
    body = reply.json()
    assert body["message"].startswith(f'EgressGatewayPolicy.{group} "broken" is invalid: [')
    assert body["details"]["kind"] == "EgressGatewayPolicy"
    causes = body["details"]["causes"]
    assert sorted((c["field"], c["reason"], c["message"]) for c in causes) == sorted([
        ("<nil>", "FieldValueInvalid",
         'Invalid value: "": "spec.egressGateway.egressIPs[1]" must validate at least one schema (anyOf)'),
        ("spec.egressGateway.egressIPs[1]", "FieldValueTypeInvalid",
         'Invalid value: "172.18.0.300": spec.egressGateway.egressIPs[1] in body must be of type ipv4: '
         '"172.18.0.300"'),
        ("spec.egressGateway.egressIPs[2]", "FieldValueDuplicate", 'Duplicate value: "172.18.0.42"'),
        ("spec.egressGateway.interface", "FieldValueInvalid",
         "Invalid value: \"net0:1\": spec.egressGateway.interface in body should match '^[^/:\\s]+$'"),
        ("spec.excludedCIDRs[1]", "FieldValueTypeInvalid",
         'Invalid value: "172.18.0/30": spec.excludedCIDRs[1] in body must be of type cidr: "172.18.0/30"'),
    ])  # fmt: skip
    assert causes[-1]["field"] == "spec.egressGateway.egressIPs[2]"  # list checks come after the schema's
    gateway["egressIPs"] = ["172.18.0.42"]
    gateway["interface"] = "x" * 16
    policy["spec"]["excludedCIDRs"] = []
    reply = server.request("POST", policies, policy)
    assert reply.status == 422
    assert reply.json()["details"]["causes"] == [{
        "reason": "FieldValueTooLong", "message": "Too long: may not be more than 15 bytes",
        "field": "spec.egressGateway.interface"}]


def test_unknown_fields_of_a_policy_are_dropped_with_a_warning_or_refused(server: Server) -> None:
    policies, _ = _policy_crd(server)
    policy = _example_policy(server, "typo")
    policy["spec"]["egressGatway"] = {}
    reply = server.request("POST", policies, policy, query={"fieldValidation": "Strict"})
    assert reply.status == 400
    assert reply.json()["message"] == (
        'EgressGatewayPolicy in version "v1alpha1" cannot be handled as a EgressGatewayPolicy: '
        'strict decoding error: unknown field "spec.egressGatway"')
    created = server.ok("POST", policies, policy)
    assert "egressGatway" not in created["spec"]
    reply = server.request("GET", f"{policies}/typo")
    assert reply.json()["spec"] == _example_policy(server, "typo")["spec"]
    warned = server.request("PUT", f"{policies}/typo", {**policy, "metadata": created["metadata"]})
    assert warned.status == 200
    assert warned.headers["warning"] == '299 - "unknown field \\"spec.egressGatway\\""'
    reply = server.request("GET", policies, query={"fieldSelector": "spec.interface=net0"})
    assert reply.status == 400
    assert reply.json()["message"] == "field label not supported: spec.interface"


# ------------------------------------------------------------------ kept differences


def test_unknown_fields_of_built_in_kinds(server: Server) -> None:
    """The real server drops a built-in kind's unknown fields (and warns, or
    refuses them with Strict); the embedded one knows no full schema of the
    built-in kinds and keeps them."""
    lease = _lease("strict")
    lease["spec"]["holderIdentty"] = "b"
    strict = server.request("POST", _leases(server), lease, query={"fieldValidation": "Strict"})
    lease["metadata"]["name"] = "warned"
    created = server.request("POST", _leases(server), lease)
    assert created.status == 201
    if server.kube:
        assert strict.status == 400
        assert strict.json()["message"] == ('Lease in version "v1" cannot be handled as a Lease: strict decoding '
                                            'error: unknown field "spec.holderIdentty"')
        assert created.headers["warning"] == '299 - "unknown field \\"spec.holderIdentty\\""'
        assert created.json()["spec"] == {"holderIdentity": "a"}
    else:
        assert strict.status == 201
        assert created.json()["spec"] == {"holderIdentity": "a", "holderIdentty": "b"}


def _patch_operations(doc: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    """The PATCH operations of one kind in an OpenAPI v3 document."""
    operations = [item.get("patch") or {} for item in doc["paths"].values()]
    return [op for op in operations if (op.get("x-kubernetes-group-version-kind") or {}).get("kind") == kind]


def test_openapi_v3_says_what_kubectl_needs(server: Server) -> None:
    """kubectl reads ``/openapi/v3`` and the document of an object's group
    version: when its PATCH takes ``fieldValidation``, kubectl leaves the
    validation to the server and ``kubectl apply`` works."""
    crd = _crd(server)
    group = crd["spec"]["group"]
    _install_crd(server, crd)

    def indexed() -> dict[str, Any] | None:
        paths = server.ok("GET", "/openapi/v3")["paths"]
        return paths if f"apis/{group}/v1alpha1" in paths else None

    paths = server.eventually("the CRD's group version is in the OpenAPI index", indexed)
    assert {"api/v1", "apis/coordination.k8s.io/v1", "apis/apiextensions.k8s.io/v1"} <= set(paths)
    for gv, kind in (("apis/coordination.k8s.io/v1", "Lease"), (f"apis/{group}/v1alpha1", "Widget")):
        url = paths[gv]["serverRelativeURL"]
        assert url.startswith(f"/openapi/v3/{gv}?hash=")
        doc = server.ok("GET", url)
        assert doc["openapi"].startswith("3.0")
        patches = _patch_operations(doc, kind)  # the real one also lists the status subresource's
        assert patches
        for patch in patches:
            query = {p.get("name") for p in patch["parameters"] if p.get("in") == "query"}
            assert "fieldValidation" in query
        gvks = [s.get("x-kubernetes-group-version-kind") for s in doc["components"]["schemas"].values()]
        assert [{"group": group if kind == "Widget" else "coordination.k8s.io", "version": gv.rsplit("/", 1)[1],
                 "kind": kind}] in gvks
    assert server.request("GET", "/openapi/v3/apis/nope.io/v1").status == 404


def test_openapi_v2_and_table_output(server: Server) -> None:
    """``/openapi/v2`` (kubectl reads it only as protobuf, and does without
    it for the kinds the v3 documents describe) and the Table form of lists
    (``kubectl get``): the real server has them, the embedded one not."""
    server.ok("POST", _leases(server), _lease("a"))
    v2 = server.request("GET", "/openapi/v2")
    as_table = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
    table = server.request("GET", _leases(server), accept=as_table)
    assert table.status == 200
    if server.kube:
        assert v2.status == 200 and v2.json()["swagger"] == "2.0"
        assert table.json()["kind"] == "Table"
        assert [c["name"] for c in table.json()["columnDefinitions"]][:2] == ["Name", "Holder"]
        assert [r["cells"][:2] for r in table.json()["rows"]] == [["a", "a"]]
    else:
        assert (v2.status, v2.text) == (404, NOT_FOUND_TEXT)
        assert table.json()["kind"] == "LeaseList"


def test_list_and_watch_options_are_checked(server: Server) -> None:
    leases = _leases(server)
    server.ok("POST", leases, _lease("a"))
    assert len(server.ok("GET", leases, query={"limit": "-1"})["items"]) == 1  # a negative limit is none
    reply = server.request("GET", leases, query={"limit": "x"})
    assert (reply.status, reply.json()["message"]) == (400, 'strconv.ParseInt: parsing "x": invalid syntax')
    reply = server.request("GET", leases, query={"watch": "1", "timeoutSeconds": "x"})
    assert (reply.status, reply.json()["message"]) == (400, 'strconv.ParseInt: parsing "x": invalid syntax')
    reply = server.request("GET", leases, query={"resourceVersion": "abc"})
    assert reply.status == 400
    assert reply.json()["message"] == ('invalid resource version: resourceVersion: Invalid value: "abc": '
                                       'strconv.ParseUint: parsing "abc": invalid syntax')
    reply = server.request("GET", leases, query={"watch": "1", "resourceVersion": "abc", "timeoutSeconds": "1"})
    assert reply.status == 500  # sic: the real server's watch path has no better answer
    assert reply.json() == {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "code": 500,
                            "message": 'resourceVersion: Invalid value: "abc": strconv.ParseUint: parsing "abc": '
                                       "invalid syntax"}
    reply = server.request("GET", leases, query={"resourceVersionMatch": "Exact"})
    assert reply.status == 422
    assert reply.json()["message"] == ('ListOptions.meta.k8s.io "" is invalid: resourceVersionMatch: Forbidden: '
                                       "resourceVersionMatch is forbidden unless resourceVersion is provided")
    current = int(server.ok("GET", leases)["metadata"]["resourceVersion"])
    reply = server.request("GET", leases, query={"resourceVersion": str(current + 10**9)})
    assert reply.status == 504
    body = reply.json()
    assert body["reason"] == "Timeout"
    assert body["message"].startswith(f"Timeout: Too large resource version: {current + 10**9}, current: ")
    cause = {"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}
    assert body["details"] == {"causes": [cause], "retryAfterSeconds": 1}


QUALIFIED_NAME = ("must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an "
                  "alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation "
                  "is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')")
SUBDOMAIN = ("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and "
             "must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is "
             "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')")


@pytest.mark.parametrize(("key", "problems"), [
    ("a/b/c", [f"a valid label key {QUALIFIED_NAME} with an optional DNS subdomain prefix and '/' "
               "(e.g. 'example.com/MyName')"]),
    ("/b", ["prefix part must be non-empty"]),
    ("Exa_mple.com/b", [f"prefix part {SUBDOMAIN}"]),
    ("a/", ["name part must be non-empty", f"name part {QUALIFIED_NAME}"]),
    ("-a", [f"name part {QUALIFIED_NAME}"]),
    ("x/" + "a" * 64, ["name part must be no more than 63 bytes"]),
    ("a" * 254 + "/b", ["prefix part must be no more than 253 bytes"]),
], ids=["two-slashes", "empty-prefix", "bad-prefix", "empty-name", "bad-name", "long-name", "long-prefix"])  # fmt: skip
def test_label_keys_are_qualified_names(server: Server, key: str, problems: list[str]) -> None:
    lease = _lease("labelled")
    lease["metadata"]["labels"] = {key: "x"}
    reply = server.request("POST", _leases(server), lease)
    assert reply.status == 422
    causes = reply.json()["details"]["causes"]
    assert causes == [{"reason": "FieldValueInvalid", "message": f'Invalid value: "{key}": {p}',
                       "field": "metadata.labels"} for p in problems]
    lease["metadata"]["labels"] = {"example.com/MyName": "a" * 64}
    reply = server.request("POST", _leases(server), lease)
    assert reply.status == 422
    long_value = "a" * 64
    message = reply.json()["details"]["causes"][0]["message"]
    assert message == f'Invalid value: "{long_value}": must be no more than 63 bytes'
