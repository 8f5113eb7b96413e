"""The EgressGatewayPolicy CRD of deploy/crd.yaml in the lab API server, through
the official client: good policies in, bad ones out with the real server's
422 bodies, unknown fields pruned (or rejected when asked), status validated
on its own subresource."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client import ApiClient, ApiException

ROOT = Path(__file__).parents[2]
CRD: dict[str, Any] = yaml.safe_load((ROOT / "deploy" / "crd.yaml").read_text())
POLICY: dict[str, Any] = yaml.safe_load((ROOT / "config" / "policy-outpost.yaml").read_text())
ARGS = ("egressd.io", "v1alpha1", "egressgatewaypolicies")
INVALID = 'EgressGatewayPolicy.egressd.io "outpost" is invalid: '


def _untyped(api: object) -> Any:
    return api


@pytest.fixture
def policies(api: ApiClient) -> Iterator[Any]:
    """CustomObjectsApi against a lab server that holds the CRD."""
    _untyped(client.ApiextensionsV1Api(api)).create_custom_resource_definition(CRD)
    yield _untyped(client.CustomObjectsApi(api))


def _status(exc: ApiException) -> dict[str, Any]:
    assert exc.body is not None
    body = json.loads(exc.body)
    assert isinstance(body, dict)
    return body


def _policy(change: Callable[[dict[str, Any]], object] | None = None) -> dict[str, Any]:
    policy = copy.deepcopy(POLICY)
    if change is not None:
        change(policy)
    return policy


def _gateway(policy: dict[str, Any]) -> dict[str, Any]:
    gateway = policy["spec"]["egressGateway"]
    assert isinstance(gateway, dict)
    return gateway


def _rejected(call: Callable[[], object], code: int = 422) -> dict[str, Any]:
    with pytest.raises(ApiException) as caught:
        call()
    assert caught.value.status == code, caught.value.body
    return _status(caught.value)


def test_the_outpost_policy_is_accepted_and_reads_back_the_same(policies: Any) -> None:
    created = policies.create_cluster_custom_object(*ARGS, POLICY)
    assert created["spec"] == POLICY["spec"]
    assert created["metadata"]["generation"] == 1
    read = policies.get_cluster_custom_object(*ARGS, "outpost")
    assert {k: read[k] for k in ("apiVersion", "kind", "spec")} == {
        k: POLICY[k] for k in ("apiVersion", "kind", "spec")
    }
    assert read["metadata"]["name"] == "outpost"
    listed = policies.list_cluster_custom_object(*ARGS)
    assert [item["spec"] for item in listed["items"]] == [POLICY["spec"]]


def _ip(policy: dict[str, Any]) -> None:
    _gateway(policy)["egressIPs"][0] = "1.2.3"


def _cidr(policy: dict[str, Any]) -> None:
    policy["spec"]["destinationCIDRs"] = ["172.18.0.0/33"]


def _no_interface(policy: dict[str, Any]) -> None:
    del _gateway(policy)["interface"]


def _operator(policy: dict[str, Any]) -> None:
    policy["spec"]["selectors"][0]["podSelector"]["matchExpressions"] = [{"key": "org", "operator": "Maybe"}]


def _no_selectors(policy: dict[str, Any]) -> None:
    policy["spec"]["selectors"] = []


def _empty_selector(policy: dict[str, Any]) -> None:
    policy["spec"]["selectors"] = [{}]


def _slash(policy: dict[str, Any]) -> None:
    _gateway(policy)["interface"] = "net/0"


def _long_name(policy: dict[str, Any]) -> None:
    _gateway(policy)["interface"] = "an-interface-name"


def _twice(policy: dict[str, Any]) -> None:
    _gateway(policy)["egressIPs"] = ["172.18.0.42", "172.18.0.42"]


def _seventeen(policy: dict[str, Any]) -> None:
    _gateway(policy)["egressIPs"] = [f"10.0.0.{i}" for i in range(1, 18)]


def _number(policy: dict[str, Any]) -> None:
    _gateway(policy)["interface"] = 5


def _no_spec(policy: dict[str, Any]) -> None:
    del policy["spec"]


BAD_POLICIES = [
    pytest.param(
        _ip,
        [
            '<nil>: Invalid value: "": "spec.egressGateway.egressIPs[0]" must validate at least one schema (anyOf)',
            'spec.egressGateway.egressIPs[0]: Invalid value: "1.2.3": '
            'spec.egressGateway.egressIPs[0] in body must be of type ipv4: "1.2.3"',
        ],
        id="malformed-egress-ip",
    ),
    pytest.param(
        _cidr,
        [
            'spec.destinationCIDRs[0]: Invalid value: "172.18.0.0/33": '
            'spec.destinationCIDRs[0] in body must be of type cidr: "172.18.0.0/33"'
        ],
        id="malformed-cidr",
    ),
    pytest.param(_no_interface, ["spec.egressGateway.interface: Required value"], id="missing-interface"),
    pytest.param(
        _operator,
        [
            "spec.selectors[0].podSelector.matchExpressions[0].operator: Unsupported value: "
            '"Maybe": supported values: "In", "NotIn", "Exists", "DoesNotExist"'
        ],
        id="unknown-operator",
    ),
    pytest.param(
        _no_selectors,
        ["spec.selectors: Invalid value: 0: spec.selectors in body should have at least 1 items"],
        id="empty-selectors",
    ),
    pytest.param(
        _empty_selector,
        ["spec.selectors[0]: Invalid value: 0: spec.selectors[0] in body should have at least 1 properties"],
        id="selector-without-selectors",
    ),
    pytest.param(
        _slash,
        [
            'spec.egressGateway.interface: Invalid value: "net/0": '
            "spec.egressGateway.interface in body should match '^[^/:\\s]+$'"
        ],
        id="interface-with-slash",
    ),
    pytest.param(
        _long_name, ["spec.egressGateway.interface: Too long: may not be more than 15 bytes"], id="interface-too-long"
    ),
    pytest.param(
        _twice, ['spec.egressGateway.egressIPs[1]: Duplicate value: "172.18.0.42"'], id="duplicate-egress-ips"
    ),
    pytest.param(
        _seventeen, ["spec.egressGateway.egressIPs: Too many: 17: must have at most 16 items"], id="too-many-egress-ips"
    ),
    pytest.param(
        _number,
        [
            'spec.egressGateway.interface: Invalid value: "integer": '
            'spec.egressGateway.interface in body must be of type string: "integer"'
        ],
        id="interface-not-a-string",
    ),
    pytest.param(_no_spec, ["spec: Required value"], id="missing-spec"),
]


@pytest.mark.parametrize(("change", "expected"), BAD_POLICIES)
def test_a_bad_policy_is_rejected_with_the_real_servers_422(
    policies: Any, change: Callable[[dict[str, Any]], None], expected: list[str]
) -> None:
    body = _rejected(lambda: policies.create_cluster_custom_object(*ARGS, _policy(change)))
    joined = expected[0] if len(expected) == 1 else "[" + ", ".join(expected) + "]"
    assert body["message"] == INVALID + joined
    assert body["reason"] == "Invalid" and body["code"] == 422 and body["status"] == "Failure"
    details = body["details"]
    assert (details["name"], details["group"], details["kind"]) == ("outpost", "egressd.io", "EgressGatewayPolicy")
    assert [f"{c['field']}: {c['message']}" for c in details["causes"]] == expected
    assert policies.list_cluster_custom_object(*ARGS)["items"] == []


def test_causes_carry_the_field_error_types(policies: Any) -> None:
    def several(policy: dict[str, Any]) -> None:
        _ip(policy)
        _operator(policy)
        _twice(policy)
        _long_name(policy)
        _seventeen(policy)
        del _gateway(policy)["nodeSelector"]

    causes = _rejected(lambda: policies.create_cluster_custom_object(*ARGS, _policy(several)))["details"]["causes"]
    assert {(c["field"], c["reason"]) for c in causes} == {
        ("spec.selectors[0].podSelector.matchExpressions[0].operator", "FieldValueNotSupported"),
        ("spec.egressGateway.interface", "FieldValueTooLong"),
        ("spec.egressGateway.egressIPs", "FieldValueTooMany"),
        ("spec.egressGateway.nodeSelector", "FieldValueRequired"),
    }


def test_updates_and_patches_are_validated_too(policies: Any) -> None:
    created = policies.create_cluster_custom_object(*ARGS, POLICY)
    replaced = _policy(_cidr)
    replaced["metadata"]["resourceVersion"] = created["metadata"]["resourceVersion"]
    body = _rejected(lambda: policies.replace_cluster_custom_object(*ARGS, "outpost", replaced))
    assert body["details"]["causes"][0]["field"] == "spec.destinationCIDRs[0]"

    merge = {"spec": {"egressGateway": {"interface": "net:0"}}}
    body = _rejected(lambda: policies.patch_cluster_custom_object(*ARGS, "outpost", merge))
    assert body["details"]["causes"][0]["field"] == "spec.egressGateway.interface"

    json_patch = [{"op": "add", "path": "/spec/egressGateway/egressIPs/-", "value": "172.18.0.43"}]
    body = _rejected(
        lambda: policies.patch_cluster_custom_object(
            *ARGS, "outpost", json_patch, _content_type="application/json-patch+json"
        )
    )
    assert body["message"] == INVALID + 'spec.egressGateway.egressIPs[2]: Duplicate value: "172.18.0.43"'

    assert policies.get_cluster_custom_object(*ARGS, "outpost") == created  # nothing was written
    fine = policies.patch_cluster_custom_object(*ARGS, "outpost", {"spec": {"excludedCIDRs": None}})
    assert "excludedCIDRs" not in fine["spec"] and fine["metadata"]["generation"] == 2


def test_a_stale_update_is_still_a_conflict(policies: Any) -> None:
    first = policies.create_cluster_custom_object(*ARGS, POLICY)
    policies.patch_cluster_custom_object(*ARGS, "outpost", {"spec": {"excludedCIDRs": ["172.18.0.0/29"]}})
    stale = _policy()
    stale["metadata"]["resourceVersion"] = first["metadata"]["resourceVersion"]
    body = _rejected(lambda: policies.replace_cluster_custom_object(*ARGS, "outpost", stale), 409)
    assert body["reason"] == "Conflict"
    _slash(stale)  # an invalid body with a stale resourceVersion: the conflict is found first
    body = _rejected(lambda: policies.replace_cluster_custom_object(*ARGS, "outpost", stale), 409)
    assert body["message"] == (
        'Operation cannot be fulfilled on egressgatewaypolicies.egressd.io "outpost": the object has been '
        "modified; please apply your changes to the latest version and try again"
    )


def _with_unknown_fields() -> dict[str, Any]:
    policy = _policy()
    policy["spec"]["excludedCIDR"] = ["172.18.0.0/30"]  # misspelt
    policy["spec"]["selectors"][0]["podSelector"]["matchLabel"] = {"org": "empire"}
    return policy


def test_unknown_fields_are_pruned_with_a_warning(policies: Any) -> None:
    created, code, headers = policies.create_cluster_custom_object_with_http_info(*ARGS, _with_unknown_fields())
    assert code == 201
    assert created["spec"] == POLICY["spec"]
    assert policies.get_cluster_custom_object(*ARGS, "outpost")["spec"] == POLICY["spec"]
    assert headers.getlist("Warning") == [
        '299 - "unknown field \\"spec.excludedCIDR\\""',
        '299 - "unknown field \\"spec.selectors[0].podSelector.matchLabel\\""',
    ]


def test_ignore_prunes_without_a_warning(policies: Any) -> None:
    created, _, headers = policies.create_cluster_custom_object_with_http_info(
        *ARGS, _with_unknown_fields(), field_validation="Ignore"
    )
    assert created["spec"] == POLICY["spec"]
    assert "Warning" not in headers


def test_strict_field_validation_rejects_unknown_fields(policies: Any) -> None:
    body = _rejected(
        lambda: policies.create_cluster_custom_object(*ARGS, _with_unknown_fields(), field_validation="Strict"), 400
    )
    assert body["reason"] == "BadRequest"
    assert body["message"] == (
        'EgressGatewayPolicy in version "v1alpha1" cannot be handled as a EgressGatewayPolicy: strict decoding '
        'error: unknown field "spec.excludedCIDR", unknown field "spec.selectors[0].podSelector.matchLabel"'
    )
    created = policies.create_cluster_custom_object(*ARGS, POLICY, field_validation="Strict")
    assert created["spec"] == POLICY["spec"]

    replaced = _with_unknown_fields()
    replaced["metadata"]["resourceVersion"] = created["metadata"]["resourceVersion"]
    body = _rejected(
        lambda: policies.replace_cluster_custom_object(*ARGS, "outpost", replaced, field_validation="Strict"), 400
    )
    assert "strict decoding error" in body["message"]

    patch = {"spec": {"egressGateway": {"interfaces": "net1"}}}
    body = _rejected(
        lambda: policies.patch_cluster_custom_object(*ARGS, "outpost", patch, field_validation="Strict"), 422
    )
    assert body["message"].startswith(' "" is invalid: patch: Invalid value: "{')
    assert body["message"].endswith('}": strict decoding error: unknown field "spec.egressGateway.interfaces"')
    assert body["details"]["causes"][0]["field"] == "patch"
    assert policies.get_cluster_custom_object(*ARGS, "outpost") == created


def test_an_unknown_field_validation_mode_is_422(policies: Any) -> None:
    body = _rejected(lambda: policies.create_cluster_custom_object(*ARGS, POLICY, field_validation="Lax"))
    assert body["message"] == (
        'CreateOptions.meta.k8s.io "" is invalid: fieldValidation: Unsupported value: "Lax": '
        'supported values: "", "Ignore", "Strict", "Warn"'
    )


STATUS: dict[str, Any] = {
    "observedGeneration": 1,
    "selectedPods": 2,
    "egressIPs": [
        {
            "egressIP": "172.18.0.42",
            "node": "kind-worker3",
            "epoch": 4,
            "lastTransitionTime": "2026-11-24T10:00:00.123456Z",
            "reason": "Expired",
        },
        {"egressIP": "172.18.0.43", "node": "", "epoch": 0, "reason": ""},
    ],
    "conditions": [
        {
            "type": "Ready",
            "status": "False",
            "reason": "NotOwned",
            "message": "no node owns 172.18.0.43",
            "lastTransitionTime": "2026-11-24T10:00:00.123456Z",
            "observedGeneration": 1,
        },
        {
            "type": "Degraded",
            "status": "True",
            "reason": "NotOwned",
            "message": "",
            "lastTransitionTime": "2026-11-24T10:00:00.123456Z",
            "observedGeneration": 1,
        },
    ],
}


def test_status_is_dropped_on_create_before_validation(policies: Any) -> None:
    policy = _policy()
    policy["status"] = {"observedGeneration": -1, "egressIPs": [{"egressIP": "1.2.3"}]}
    created = policies.create_cluster_custom_object(*ARGS, policy)
    assert "status" not in created


def test_status_writes_are_validated_against_the_status_schema(policies: Any) -> None:
    created = policies.create_cluster_custom_object(*ARGS, POLICY)
    body = copy.deepcopy(created)
    body["status"] = STATUS
    body["spec"] = {"egressGateway": {"interface": "net/0"}}  # ignored by /status, not validated
    written = policies.replace_cluster_custom_object_status(*ARGS, "outpost", body)
    assert written["status"] == STATUS
    assert written["spec"] == POLICY["spec"]
    assert written["metadata"]["generation"] == 1

    bad = {
        "status": {
            "egressIPs": [{"egressIP": "172.18.0.42", "node": "kind-worker3", "epoch": -1}],
            "conditions": [{**STATUS["conditions"][0], "status": "Maybe"}, STATUS["conditions"][0]],
        }
    }
    answer = _rejected(lambda: policies.patch_cluster_custom_object_status(*ARGS, "outpost", bad))
    assert [f"{c['field']}: {c['message']}" for c in answer["details"]["causes"]] == [
        "status.egressIPs[0].epoch: Invalid value: -1: egressIPs[0].epoch in body should be greater than or equal to 0",
        'status.conditions[0].status: Unsupported value: "Maybe": supported values: "True", "False", "Unknown"',
        'status.conditions[1]: Duplicate value: map[string]interface {}{"type":"Ready"}',
    ]
    assert policies.get_cluster_custom_object(*ARGS, "outpost")["status"] == STATUS

    pruned = policies.patch_cluster_custom_object_status(*ARGS, "outpost", {"status": {"owners": {"a": "b"}}})
    assert pruned["status"] == STATUS


def _gateway_schema(crd: dict[str, Any]) -> dict[str, Any]:
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    gateway = schema["properties"]["egressGateway"]["properties"]
    assert isinstance(gateway, dict)
    return gateway


def test_a_tightened_schema_keeps_unchanged_values(api: ApiClient) -> None:
    """Ratcheting: after the CRD forbids stored values, updates that keep them pass."""
    looser = copy.deepcopy(CRD)
    del _gateway_schema(looser)["egressIPs"]["x-kubernetes-list-type"]
    crds = _untyped(client.ApiextensionsV1Api(api))
    created = crds.create_custom_resource_definition(looser)
    policies = _untyped(client.CustomObjectsApi(api))
    policies.create_cluster_custom_object(*ARGS, _policy(_twice))

    tighter = copy.deepcopy(CRD)
    tighter["metadata"]["resourceVersion"] = created.metadata.resource_version
    _gateway_schema(tighter)["interface"]["maxLength"] = 3
    crds.replace_custom_resource_definition(CRD["metadata"]["name"], tighter)

    kept = policies.patch_cluster_custom_object(*ARGS, "outpost", {"spec": {"excludedCIDRs": ["172.18.0.0/29"]}})
    assert _gateway(kept)["interface"] == "net0"
    assert _gateway(kept)["egressIPs"] == ["172.18.0.42", "172.18.0.42"]
    body = _rejected(
        lambda: policies.patch_cluster_custom_object(
            *ARGS, "outpost", {"spec": {"egressGateway": {"interface": "eth1"}}}
        )
    )
    assert body["message"] == INVALID + "spec.egressGateway.interface: Too long: may not be more than 3 bytes"


def test_a_crd_whose_schema_is_not_structural_is_rejected(api: ApiClient) -> None:
    crd = copy.deepcopy(CRD)
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    del schema["properties"]["spec"]["type"]
    schema["properties"]["status"]["anyOf"] = [{"type": "object"}]
    crds = _untyped(client.ApiextensionsV1Api(api))
    body = _rejected(lambda: crds.create_custom_resource_definition(crd))
    where = "spec.versions[0].schema.openAPIV3Schema.properties"
    assert [f"{c['field']}: {c['message']}" for c in body["details"]["causes"]] == [
        f"{where}[spec].type: Required value: must not be empty for specified object fields",
        f"{where}[status].anyOf[0].type: Forbidden: must be empty to be structural",
    ]
    assert body["message"].startswith(
        'CustomResourceDefinition.apiextensions.k8s.io "egressgatewaypolicies.egressd.io"'
    )
    del crd["spec"]["versions"][0]["schema"]
    body = _rejected(lambda: crds.create_custom_resource_definition(crd))
    assert body["details"]["causes"] == [
        {
            "reason": "FieldValueRequired",
            "message": "Required value: schemas are required",
            "field": "spec.versions[0].schema.openAPIV3Schema",
        }
    ]
    assert crds.list_custom_resource_definition().items == []
