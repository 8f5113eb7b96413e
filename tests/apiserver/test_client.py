"""Conformance of the lab API server as seen by the official kubernetes client."""

from __future__ import annotations

import datetime as dt
import json
import urllib.request
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client import ApiClient, ApiException

from egressd.apiserver.server import LabApiServer

NS = "default"
UTC = dt.UTC


def _untyped(api: object) -> Any:
    """The client's Optional-everywhere models as Any: these tests check the wire."""
    return api


def _lease(name: str, holder: str = "node-a", **labels: str) -> Any:
    when = dt.datetime(2026, 11, 24, 14, 22, 0, 123456, tzinfo=UTC)
    return client.V1Lease(
        metadata=client.V1ObjectMeta(name=name, labels=labels or None),
        spec=client.V1LeaseSpec(holder_identity=holder, lease_duration_seconds=15,
                                lease_transitions=0, acquire_time=when, renew_time=when),
    )


def _status(exc: ApiException) -> dict[str, Any]:
    assert exc.body is not None
    body = json.loads(exc.body)
    assert isinstance(body, dict)
    return body


def _raw(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=5) as response:
        body = json.loads(response.read())
    assert isinstance(body, dict)
    return body


def test_lease_create_get_list_update_patch_delete(api: ApiClient) -> None:
    leases = _untyped(client.CoordinationV1Api(api))
    created = leases.create_namespaced_lease(NS, _lease("ip-1", app="egressd"))
    assert created.metadata.namespace == NS
    assert created.metadata.uid
    assert created.metadata.creation_timestamp is not None
    rv1 = int(created.metadata.resource_version)

    got = leases.read_namespaced_lease("ip-1", NS)
    assert got.spec.holder_identity == "node-a"

    listed = leases.list_namespaced_lease(NS)
    assert [item.metadata.name for item in listed.items] == ["ip-1"]
    assert int(listed.metadata.resource_version) >= rv1

    got.spec.holder_identity = "node-b"
    got.spec.lease_transitions = 1
    updated = leases.replace_namespaced_lease("ip-1", NS, got)
    assert updated.spec.holder_identity == "node-b"
    assert int(updated.metadata.resource_version) > rv1
    assert updated.metadata.uid == created.metadata.uid

    patched = leases.patch_namespaced_lease("ip-1", NS, {"spec": {"holderIdentity": None}})
    assert patched.spec.holder_identity is None
    assert patched.spec.lease_transitions == 1

    # this client version hands DELETE answers back as plain dicts
    deleted = leases.delete_namespaced_lease("ip-1", NS)
    assert deleted == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
        "details": {"name": "ip-1", "group": "coordination.k8s.io", "kind": "leases",
                    "uid": created.metadata.uid}}
    assert leases.list_namespaced_lease(NS).items == []


def test_stale_update_is_409_with_the_real_status(api: ApiClient) -> None:
    leases = _untyped(client.CoordinationV1Api(api))
    first = leases.create_namespaced_lease(NS, _lease("ip-2"))
    leases.patch_namespaced_lease("ip-2", NS, {"spec": {"holderIdentity": "node-b"}})
    first.spec.holder_identity = "node-c"
    with pytest.raises(ApiException) as caught:
        leases.replace_namespaced_lease("ip-2", NS, first)
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


def test_merge_patch_with_stale_resource_version_is_409(api: ApiClient) -> None:
    leases = _untyped(client.CoordinationV1Api(api))
    first = leases.create_namespaced_lease(NS, _lease("ip-3"))
    leases.patch_namespaced_lease("ip-3", NS, {"spec": {"holderIdentity": "node-b"}})
    with pytest.raises(ApiException) as caught:
        leases.patch_namespaced_lease("ip-3", NS, {
            "metadata": {"resourceVersion": first.metadata.resource_version},
            "spec": {"holderIdentity": "node-c"}})
    assert caught.value.status == 409
    assert _status(caught.value)["reason"] == "Conflict"


def test_update_without_resource_version_is_422(api: ApiClient) -> None:
    leases = _untyped(client.CoordinationV1Api(api))
    lease = leases.create_namespaced_lease(NS, _lease("ip-4"))
    lease.metadata.resource_version = None
    with pytest.raises(ApiException) as caught:
        leases.replace_namespaced_lease("ip-4", NS, lease)
    assert caught.value.status == 422
    body = _status(caught.value)
    assert body["reason"] == "Invalid"
    assert body["message"] == (
        'leases.coordination.k8s.io "ip-4" is invalid: metadata.resourceVersion: Invalid '
        "value: 0x0: must be specified for an update")
    assert body["details"]["causes"] == [{
        "reason": "FieldValueInvalid", "field": "metadata.resourceVersion",
        "message": "Invalid value: 0x0: must be specified for an update"}]


def test_lease_validation_names_the_field(api: ApiClient) -> None:
    leases = _untyped(client.CoordinationV1Api(api))
    lease = _lease("ip-5")
    lease.spec.lease_duration_seconds = 0
    with pytest.raises(ApiException) as caught:
        leases.create_namespaced_lease(NS, lease)
    assert caught.value.status == 422
    body = _status(caught.value)
    assert body["message"] == ('Lease.coordination.k8s.io "ip-5" is invalid: '
                               "spec.leaseDurationSeconds: Invalid value: 0: must be greater "
                               "than 0")
    assert body["details"]["kind"] == "Lease"
    assert body["details"]["causes"][0]["field"] == "spec.leaseDurationSeconds"


def test_get_missing_is_404_with_the_real_status(api: ApiClient) -> None:
    with pytest.raises(ApiException) as caught:
        _untyped(client.CoordinationV1Api(api)).read_namespaced_lease("nope", NS)
    assert caught.value.status == 404
    assert _status(caught.value) == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": 'leases.coordination.k8s.io "nope" not found', "reason": "NotFound",
        "details": {"name": "nope", "group": "coordination.k8s.io", "kind": "leases"},
        "code": 404,
    }
    with pytest.raises(ApiException) as caught:
        _untyped(client.CoreV1Api(api)).read_node("nope")
    assert _status(caught.value)["details"] == {"name": "nope", "kind": "nodes"}


def test_create_twice_is_409_already_exists(api: ApiClient) -> None:
    leases = _untyped(client.CoordinationV1Api(api))
    leases.create_namespaced_lease(NS, _lease("ip-6"))
    with pytest.raises(ApiException) as caught:
        leases.create_namespaced_lease(NS, _lease("ip-6"))
    assert caught.value.status == 409
    body = _status(caught.value)
    assert body["reason"] == "AlreadyExists"
    assert body["message"] == 'leases.coordination.k8s.io "ip-6" already exists'


def test_generate_name(api: ApiClient) -> None:
    lease = client.V1Lease(metadata=client.V1ObjectMeta(generate_name="egress-"))
    created = _untyped(client.CoordinationV1Api(api)).create_namespaced_lease(NS, lease)
    assert created.metadata.name.startswith("egress-")
    assert len(created.metadata.name) == len("egress-") + 5


def test_missing_namespace_is_404(api: ApiClient) -> None:
    with pytest.raises(ApiException) as caught:
        _untyped(client.CoordinationV1Api(api)).create_namespaced_lease("elsewhere", _lease("ip-7"))
    assert caught.value.status == 404
    assert _status(caught.value)["message"] == 'namespaces "elsewhere" not found'


def test_microtime_round_trip_has_six_digits_and_z(api: ApiClient, lab: LabApiServer) -> None:
    leases = _untyped(client.CoordinationV1Api(api))
    lease = _lease("ip-8")
    lease.spec.renew_time = dt.datetime(2026, 11, 24, 16, 22, 0, 120000,
                                        tzinfo=dt.timezone(dt.timedelta(hours=2)))
    leases.create_namespaced_lease(NS, lease)
    raw = _raw(f"{lab.url}/apis/coordination.k8s.io/v1/namespaces/{NS}/leases/ip-8")
    assert raw["spec"]["renewTime"] == "2026-11-24T14:22:00.120000Z"
    assert raw["spec"]["acquireTime"] == "2026-11-24T14:22:00.123456Z"
    assert raw["metadata"]["creationTimestamp"].endswith("Z")
    assert len(raw["metadata"]["creationTimestamp"]) == len("2026-11-24T14:22:00Z")
    back = leases.read_namespaced_lease("ip-8", NS)
    assert back.spec.renew_time == dt.datetime(2026, 11, 24, 14, 22, 0, 120000, tzinfo=UTC)


def test_microtime_without_six_digits_is_rejected_like_go(api: ApiClient) -> None:
    # isoformat() drops the fraction when microseconds are 0; Go's RFC3339Micro
    # parser then fails, and the real server answers 400.
    lease = _lease("ip-9")
    lease.spec.renew_time = dt.datetime(2026, 11, 24, 14, 22, 0, tzinfo=UTC)
    with pytest.raises(ApiException) as caught:
        _untyped(client.CoordinationV1Api(api)).create_namespaced_lease(NS, lease)
    assert caught.value.status == 400
    assert "cannot be handled as a Lease: parsing time" in _status(caught.value)["message"]


def test_label_and_field_selectors(api: ApiClient) -> None:
    leases = _untyped(client.CoordinationV1Api(api))
    leases.create_namespaced_lease(NS, _lease("a", tier="gw", zone="x"))
    leases.create_namespaced_lease(NS, _lease("b", tier="gw", zone="y"))
    leases.create_namespaced_lease(NS, _lease("c", tier="web"))

    def names(**kwargs: str) -> list[str]:
        return [i.metadata.name for i in leases.list_namespaced_lease(NS, **kwargs).items]

    assert names(label_selector="tier=gw") == ["a", "b"]
    assert names(label_selector="tier==gw,zone!=x") == ["b"]
    assert names(label_selector="zone in (x, y)") == ["a", "b"]
    assert names(label_selector="zone notin (x)") == ["b", "c"]
    assert names(label_selector="zone") == ["a", "b"]
    assert names(label_selector="!zone") == ["c"]
    assert names(field_selector="metadata.name=b") == ["b"]
    assert names(field_selector="metadata.name!=b,metadata.namespace==default") == ["a", "c"]
    with pytest.raises(ApiException) as caught:
        leases.list_namespaced_lease(NS, field_selector="spec.holderIdentity=x")
    assert caught.value.status == 400
    assert _status(caught.value)["message"] == "field label not supported: spec.holderIdentity"


def test_pagination_with_continue(api: ApiClient) -> None:
    leases = _untyped(client.CoordinationV1Api(api))
    for i in range(5):
        leases.create_namespaced_lease(NS, _lease(f"p{i}"))
    first = leases.list_namespaced_lease(NS, limit=2)
    assert [i.metadata.name for i in first.items] == ["p0", "p1"]
    assert first.metadata.remaining_item_count == 3
    leases.create_namespaced_lease(NS, _lease("p5"))  # after the snapshot: not in this list
    second = leases.list_namespaced_lease(NS, limit=2, _continue=first.metadata._continue)
    third = leases.list_namespaced_lease(NS, limit=2, _continue=second.metadata._continue)
    assert [i.metadata.name for i in second.items + third.items] == ["p2", "p3", "p4"]
    assert not third.metadata._continue
    assert third.metadata.resource_version == first.metadata.resource_version


def test_nodes_pods_namespaces_and_cluster_wide_lists(api: ApiClient) -> None:
    core = _untyped(client.CoreV1Api(api))
    core.create_node(client.V1Node(metadata=client.V1ObjectMeta(
        name="gw-1", labels={"egress-gw": "true"})))
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="team")))
    spec = client.V1PodSpec(node_name="gw-1", containers=[client.V1Container(name="c", image="i")])
    pod = core.create_namespaced_pod("team", client.V1Pod(
        metadata=client.V1ObjectMeta(name="xwing", labels={"org": "alliance"}), spec=spec))
    assert pod.status.phase == "Pending"  # status is reset on create, as for real pods

    pod.status = client.V1PodStatus(phase="Running", pod_ip="10.0.1.5")
    running = core.replace_namespaced_pod_status("xwing", "team", pod)
    assert running.status.pod_ip == "10.0.1.5"
    # the main resource ignores status changes
    running.status.pod_ip = "10.9.9.9"
    running.metadata.labels["extra"] = "1"
    again = core.replace_namespaced_pod("xwing", "team", running)
    assert again.status.pod_ip == "10.0.1.5"
    assert again.metadata.labels["extra"] == "1"

    on_gw = core.list_pod_for_all_namespaces(field_selector="spec.nodeName=gw-1")
    assert [p.metadata.name for p in on_gw.items] == ["xwing"]
    assert core.list_pod_for_all_namespaces(field_selector="spec.nodeName!=gw-1").items == []
    assert [n.metadata.name for n in core.list_node(label_selector="egress-gw=true").items] == [
        "gw-1"]
    team = core.read_namespace("team")
    assert team.status.phase == "Active"
    assert team.metadata.labels == {"kubernetes.io/metadata.name": "team"}

    deleted = core.delete_namespaced_pod("xwing", "team")
    assert deleted.metadata.name == "xwing"  # pods answer DELETE with the object
    assert core.delete_node("gw-1")["status"] == "Success"
    core.delete_namespace("team")
    with pytest.raises(ApiException):
        core.read_namespace("team")


def test_events_create_and_list(api: ApiClient) -> None:
    core = _untyped(client.CoreV1Api(api))
    event = client.CoreV1Event(
        metadata=client.V1ObjectMeta(generate_name="egressd-"),
        involved_object=client.V1ObjectReference(kind="Lease", name="ip-1", namespace=NS),
        reason="Acquired", message="node-a owns 172.18.0.42", type="Normal",
        first_timestamp=dt.datetime(2026, 1, 1, 0, 0, 0, 500000, tzinfo=UTC))
    created = core.create_namespaced_event(NS, event)
    assert created.first_timestamp == dt.datetime(2026, 1, 1, tzinfo=UTC)
    found = core.list_namespaced_event(NS, field_selector="involvedObject.name=ip-1")
    assert [e.reason for e in found.items] == ["Acquired"]
    new_api = _untyped(client.EventsV1Api(api))
    new_api.create_namespaced_event(NS, client.EventsV1Event(
        metadata=client.V1ObjectMeta(name="e1"), reason="Acquired", action="Acquire",
        event_time=dt.datetime(2026, 1, 1, 0, 0, 0, 1, tzinfo=UTC),
        reporting_controller="egressd.io/egressd", reporting_instance="node-a"))
    assert new_api.read_namespaced_event("e1", NS).event_time.microsecond == 1


CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "egressgatewaypolicies.egressd.io"},
    "spec": {
        "group": "egressd.io",
        "scope": "Cluster",
        "names": {"plural": "egressgatewaypolicies", "singular": "egressgatewaypolicy",
                  "kind": "EgressGatewayPolicy", "shortNames": ["egp"]},
        "versions": [{
            "name": "v1alpha1", "served": True, "storage": True,
            "schema": {"openAPIV3Schema": {"type": "object",
                                           "x-kubernetes-preserve-unknown-fields": True}},
            "subresources": {"status": {}},
        }],
    },
}
POLICY: dict[str, Any] = {
    "apiVersion": "egressd.io/v1alpha1", "kind": "EgressGatewayPolicy",
    "metadata": {"name": "outpost"},
    "spec": {"destinationCIDRs": ["172.18.0.0/16"]},
    "status": {"ignored": True},
}


def test_crd_and_custom_objects_with_status(api: ApiClient, lab: LabApiServer) -> None:
    crd = _untyped(client.ApiextensionsV1Api(api)).create_custom_resource_definition(CRD)
    conditions = {c.type: c.status for c in crd.status.conditions}
    assert conditions["Established"] == "True"
    custom = _untyped(client.CustomObjectsApi(api))
    args = ("egressd.io", "v1alpha1", "egressgatewaypolicies")
    created = custom.create_cluster_custom_object(*args, POLICY)
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
    assert listed["kind"] == "EgressGatewayPolicyList"
    assert [i["metadata"]["name"] for i in listed["items"]] == ["outpost"]
    stale = dict(created, spec={"destinationCIDRs": []})
    with pytest.raises(ApiException) as caught:
        custom.replace_cluster_custom_object(*args, "outpost", stale)
    assert caught.value.status == 409
    assert _status(caught.value)["details"] == {
        "name": "outpost", "group": "egressd.io", "kind": "egressgatewaypolicies"}

    discovery = _raw(f"{lab.url}/apis/egressd.io/v1alpha1")
    names = {r["name"] for r in discovery["resources"]}
    assert names == {"egressgatewaypolicies", "egressgatewaypolicies/status"}

    gone = custom.delete_cluster_custom_object(*args, "outpost")
    assert gone["status"] == "Success"
    _untyped(client.ApiextensionsV1Api(api)).delete_custom_resource_definition(CRD["metadata"]["name"])
    with pytest.raises(ApiException) as caught:
        custom.list_cluster_custom_object(*args)
    assert caught.value.status == 404


def test_namespaced_custom_objects(api: ApiClient) -> None:
    crd = json.loads(json.dumps(CRD))
    crd["spec"]["scope"] = "Namespaced"
    _untyped(client.ApiextensionsV1Api(api)).create_custom_resource_definition(crd)
    custom = _untyped(client.CustomObjectsApi(api))
    args = ("egressd.io", "v1alpha1", NS, "egressgatewaypolicies")
    custom.create_namespaced_custom_object(*args, POLICY)
    patched = custom.patch_namespaced_custom_object(*args, "outpost", {"spec": {"x": 1}})
    assert patched["spec"] == {"destinationCIDRs": ["172.18.0.0/16"], "x": 1}
    assert patched["metadata"]["namespace"] == NS
    everywhere = custom.list_custom_object_for_all_namespaces(
        "egressd.io", "v1alpha1", "egressgatewaypolicies")
    assert len(everywhere["items"]) == 1
