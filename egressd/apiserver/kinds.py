"""Resource kinds the lab API server serves, as one table of data.

Each :class:`ResourceKind` row says how the real kube-apiserver's storage
strategy for that resource behaves (create-on-update, unconditional update,
what DELETE answers, status subresource, typed fields, field labels). The
server code is generic over this table; custom resources get a row built
from their CustomResourceDefinition (:func:`kind_from_crd`), with the
openAPIV3Schema of each version, which :mod:`egressd.apiserver.openapi` applies.

Also here: the wire formats of ``metav1.Time`` and ``metav1.MicroTime``, the
typed-field checks a real server does while decoding (400) and validating
(422), and the JSON merge patch (RFC 7386) and JSON patch (RFC 6902).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Literal

from egressd.apiserver.errors import ApiError, FieldError, JsonObject, bad_request, go_quote, go_value
from egressd.apiserver.openapi import structural_errors

FieldType = Literal["int32", "string", "microtime", "time"]
NameRule = Literal["subdomain", "label"]
CreateStatus = Literal["keep", "drop", "initial"]


@dataclass(frozen=True)
class TypedField:
    """A field the real server decodes into a Go type (and may range-check)."""

    path: str
    type: FieldType
    minimum: int | None = None
    minimum_message: str = ""


@dataclass(frozen=True)
class ResourceKind:
    """One served resource and the storage strategy the real server gives it."""

    group: str
    versions: tuple[str, ...]
    plural: str
    singular: str
    kind: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    status_subresource: bool = False
    create_on_update: bool = False  # PUT on a missing object creates it
    unconditional_update: bool = True  # PUT without metadata.resourceVersion is allowed
    delete_returns_object: bool = False  # else DELETE answers a Status "Success"
    tracks_generation: bool = False  # metadata.generation bumps on spec changes
    create_status: CreateStatus = "keep"
    initial_status: Mapping[str, Any] = field(default_factory=dict)
    initial_spec: Mapping[str, Any] = field(default_factory=dict)
    name_rule: NameRule = "subdomain"
    name_label: str = ""  # label set to the object's name (namespaces)
    typed_fields: tuple[TypedField, ...] = ()
    field_labels: tuple[str, ...] = ()  # beyond metadata.name / metadata.namespace
    #: Fields of a feature the real server has off by default: decoded (types
    #: checked), then dropped, as its strategy does for disabled feature gates.
    gated_fields: tuple[str, ...] = ()
    strategic_merge: bool = True  # built-ins accept strategic-merge-patch
    custom: bool = False
    #: Custom resources: the openAPIV3Schema of each served version (egressd.apiserver.openapi applies it).
    schemas: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str]:
        return (self.group, self.plural)

    def api_version(self, version: str | None = None) -> str:
        v = version or self.versions[0]
        return f"{self.group}/{v}" if self.group else v

    def schema(self, version: str) -> Mapping[str, Any] | None:
        """The openAPIV3Schema of ``version`` (None: no schema, nothing validated)."""
        return self.schemas.get(version)

    def status_schema(self, version: str) -> Mapping[str, Any] | None:
        """The part of the schema the status subresource validates against."""
        properties = (self.schema(version) or {}).get("properties") or {}
        status = properties.get("status")
        return status if isinstance(status, Mapping) else None

    @property
    def field_label_conversion(self) -> bool:
        """Whether an unknown field label reads ``field label not supported``:
        the kinds with a field label conversion of their own (core kinds,
        Events) and custom resources; the other built-ins (Leases, CRDs) give
        the generic message."""
        return bool(self.field_labels) or self.custom

    @property
    def selectable_fields(self) -> tuple[str, ...]:
        base: tuple[str, ...] = ("metadata.name",)
        if self.namespaced:
            base += ("metadata.namespace",)
        return base + self.field_labels


_LEASE_FIELDS = (
    TypedField("spec.holderIdentity", "string"),
    TypedField("spec.leaseDurationSeconds", "int32", 1, "must be greater than 0"),
    TypedField("spec.leaseTransitions", "int32", 0, "must be greater than or equal to 0"),
    TypedField("spec.acquireTime", "microtime"),
    TypedField("spec.renewTime", "microtime"),
    TypedField("spec.preferredHolder", "string"),
    TypedField("spec.strategy", "string"),
)
_EVENT_FIELDS = (
    TypedField("eventTime", "microtime"),
    TypedField("series.lastObservedTime", "microtime"),
    TypedField("firstTimestamp", "time"),
    TypedField("lastTimestamp", "time"),
    TypedField("deprecatedFirstTimestamp", "time"),
    TypedField("deprecatedLastTimestamp", "time"),
    TypedField("count", "int32"),
)

#: The built-in resources, one row each. CRDs add rows at run time.
BUILTIN_KINDS: tuple[ResourceKind, ...] = (
    ResourceKind(
        "",
        ("v1",),
        "namespaces",
        "namespace",
        "Namespace",
        namespaced=False,
        short_names=("ns",),
        status_subresource=True,
        delete_returns_object=True,
        create_status="initial",
        initial_status={"phase": "Active"},
        initial_spec={"finalizers": ["kubernetes"]},
        name_rule="label",
        name_label="kubernetes.io/metadata.name",
        field_labels=("status.phase",),
    ),
    ResourceKind(
        "",
        ("v1",),
        "nodes",
        "node",
        "Node",
        namespaced=False,
        short_names=("no",),
        status_subresource=True,
        field_labels=("spec.unschedulable",),
    ),
    ResourceKind(
        "",
        ("v1",),
        "pods",
        "pod",
        "Pod",
        namespaced=True,
        short_names=("po",),
        status_subresource=True,
        delete_returns_object=True,
        create_status="initial",
        initial_status={"phase": "Pending", "qosClass": "BestEffort"},
        field_labels=(
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ),
    ),
    ResourceKind(
        "",
        ("v1",),
        "events",
        "event",
        "Event",
        namespaced=True,
        short_names=("ev",),
        create_on_update=True,
        typed_fields=_EVENT_FIELDS,
        field_labels=(
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ),
    ),
    ResourceKind(
        "coordination.k8s.io",
        ("v1",),
        "leases",
        "lease",
        "Lease",
        namespaced=True,
        create_on_update=True,
        unconditional_update=False,
        typed_fields=_LEASE_FIELDS,
        # the CoordinatedLeaderElection feature (beta, off by default in 1.37)
        gated_fields=("spec.preferredHolder", "spec.strategy"),
    ),
    ResourceKind(
        "events.k8s.io",
        ("v1",),
        "events",
        "event",
        "Event",
        namespaced=True,
        short_names=("ev",),
        create_on_update=True,
        typed_fields=_EVENT_FIELDS,
        field_labels=(
            "reason",
            "type",
            "regarding.kind",
            "regarding.name",
            "regarding.namespace",
            "reportingController",
        ),
    ),
    ResourceKind(
        "apiextensions.k8s.io",
        ("v1",),
        "customresourcedefinitions",
        "customresourcedefinition",
        "CustomResourceDefinition",
        namespaced=False,
        short_names=("crd", "crds"),
        status_subresource=True,
        unconditional_update=False,
        delete_returns_object=True,
        tracks_generation=True,
        create_status="drop",
    ),
)


# --------------------------------------------------------------------------- CRDs


def validate_crd(obj: Mapping[str, Any]) -> list[FieldError]:
    """The structural checks the real server makes before registering a CRD."""
    errors: list[FieldError] = []
    spec = obj.get("spec")
    if not isinstance(spec, Mapping):
        return [FieldError("spec", "must be specified")]
    names = spec.get("names") if isinstance(spec.get("names"), Mapping) else {}
    assert isinstance(names, Mapping)
    group, plural, kind = spec.get("group"), names.get("plural"), names.get("kind")
    if not isinstance(group, str) or not group:
        errors.append(FieldError("spec.group", "", None))
    if not isinstance(plural, str) or not plural:
        errors.append(FieldError("spec.names.plural", "", None))
    if not isinstance(kind, str) or not kind:
        errors.append(FieldError("spec.names.kind", "", None))
    if spec.get("scope") not in ("Namespaced", "Cluster"):
        errors.append(
            FieldError("spec.scope", 'supported values: "Cluster", "Namespaced"', go_value(spec.get("scope", "")))
        )
    versions = spec.get("versions")
    if not isinstance(versions, list) or not versions:
        errors.append(FieldError("spec.versions", "must have exactly one version marked as storage version", None))
    elif sum(1 for v in versions if isinstance(v, Mapping) and v.get("storage")) != 1:
        errors.append(
            FieldError("spec.versions", "must have exactly one version marked as storage version", go_value(""))
        )
    if isinstance(versions, list):
        errors += _version_schema_errors(versions)
    name = (obj.get("metadata") or {}).get("name", "")
    if not errors and name != f"{plural}.{group}":
        errors.append(FieldError("metadata.name", 'must be spec.names.plural+"."+spec.group', go_value(name)))
    return errors


def _version_schema_errors(versions: Sequence[Any]) -> list[FieldError]:
    """apiextensions.k8s.io/v1 wants a structural openAPIV3Schema in every version."""
    errors: list[FieldError] = []
    for i, version in enumerate(versions):
        path = f"spec.versions[{i}].schema.openAPIV3Schema"
        schema = ((version.get("schema") or {}) if isinstance(version, Mapping) else {}).get("openAPIV3Schema")
        if schema is None:
            errors.append(FieldError(path, "schemas are required"))
        else:
            errors += structural_errors(schema, path)
    return errors


def kind_from_crd(crd: Mapping[str, Any]) -> ResourceKind:
    """The table row a (validated) CRD defines."""
    spec = crd["spec"]
    names = spec["names"]
    versions = spec["versions"]
    served = tuple(v["name"] for v in versions if v.get("served", True))
    storage = next(v for v in versions if v.get("storage"))
    has_status = any(
        isinstance(v.get("subresources"), Mapping) and "status" in v["subresources"]
        for v in versions
        if v.get("served", True)
    )
    # The storage version goes first: it is the apiVersion objects are stored with.
    ordered = (storage["name"], *[v for v in served if v != storage["name"]])
    return ResourceKind(
        spec["group"],
        ordered,
        names["plural"],
        names.get("singular") or names["kind"].lower(),
        names["kind"],
        namespaced=spec["scope"] == "Namespaced",
        short_names=tuple(names.get("shortNames") or ()),
        status_subresource=has_status,
        unconditional_update=False,
        tracks_generation=True,
        create_status="drop" if has_status else "keep",
        strategic_merge=False,
        custom=True,
        schemas={
            v["name"]: v["schema"]["openAPIV3Schema"]
            for v in versions
            if v.get("served", True) and isinstance((v.get("schema") or {}).get("openAPIV3Schema"), Mapping)
        },
    )


def crd_established_status(crd: Mapping[str, Any], now: str) -> JsonObject:
    """The status the real server's controllers converge a healthy CRD to."""
    spec = crd["spec"]
    conditions = [
        {
            "type": "NamesAccepted",
            "status": "True",
            "lastTransitionTime": now,
            "reason": "NoConflicts",
            "message": "no conflicts found",
        },
        {
            "type": "Established",
            "status": "True",
            "lastTransitionTime": now,
            "reason": "InitialNamesAccepted",
            "message": "the initial names have been accepted",
        },
    ]
    return {
        "conditions": conditions,
        "acceptedNames": copy.deepcopy(spec["names"]),
        "storedVersions": [v["name"] for v in spec["versions"] if v.get("storage")],
    }


# --------------------------------------------------------------------------- time

MICROTIME_LAYOUT = "2006-01-02T15:04:05.000000Z07:00"
_MICRO_RE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})\.(\d{6})(Z|[+-]\d{2}:\d{2})$")
_TIME_RE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:[.,](\d+))?(Z|[+-]\d{2}:\d{2})$")
_SECONDS_PREFIX = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}")


def _zone(text: str) -> timezone:
    if text == "Z":
        return UTC
    sign = -1 if text[0] == "-" else 1
    return timezone(sign * timedelta(hours=int(text[1:3]), minutes=int(text[4:6])))


def _to_datetime(match: re.Match[str], fraction: str | None) -> datetime:
    year, month, day, hour, minute, second = (int(match[i]) for i in range(1, 7))
    micros = int((fraction or "0")[:6].ljust(6, "0"))
    return datetime(year, month, day, hour, minute, second, micros, tzinfo=_zone(match[8]))


def format_microtime(value: datetime) -> str:
    """``2026-11-24T14:22:00.123456Z``: what the real server writes for MicroTime."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def format_time(value: datetime) -> str:
    """``2026-11-24T14:22:00Z``: what the real server writes for Time."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_microtime(text: str) -> datetime:
    """Parse as Go's ``time.Parse(RFC3339Micro)`` does: exactly six digits, a zone.

    Like the real server this rejects ``...:05Z`` and ``...:05.123Z``; a client that
    serialises with ``datetime.isoformat()`` must therefore never send a value
    whose microseconds are zero (isoformat then drops the fraction).
    """
    match = _MICRO_RE.match(text)
    if not match:
        prefix = _SECONDS_PREFIX.match(text)
        rest, elem = (text[prefix.end() :], ".000000") if prefix else (text, "2006")
        raise ValueError(f'parsing time "{text}" as "{MICROTIME_LAYOUT}": cannot parse "{rest}" as "{elem}"')
    return _to_datetime(match, match[7])


def parse_time(text: str) -> datetime:
    """Parse as Go's ``time.Parse(RFC3339)``: fraction optional (dropped on output)."""
    match = _TIME_RE.match(text)
    if not match:
        raise ValueError(f'parsing time "{text}" as "2006-01-02T15:04:05Z07:00": cannot parse "{text}" as "2006"')
    return _to_datetime(match, match[7])


def now_time() -> str:
    return format_time(datetime.now(UTC))


# --------------------------------------------------------------------------- typed fields


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return f"number {value}" if isinstance(value, float) else "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _go_struct(kind: ResourceKind, path: str) -> str:
    head = path.split(".", maxsplit=1)[0]
    if head in ("spec", "status") and "." in path:
        return f"{kind.kind}{head.capitalize()}.{path}"
    return f"{kind.kind}.{path}"


def _locate(obj: JsonObject, path: str) -> tuple[JsonObject, str] | None:
    parts = path.split(".")
    current: Any = obj
    for part in parts[:-1]:
        current = current.get(part) if isinstance(current, dict) else None
        if current is None:
            return None
    if not isinstance(current, dict) or parts[-1] not in current:
        return None
    return current, parts[-1]


def decode_error(kind: ResourceKind, version: str, message: str) -> ApiError:
    """400 for a body the real server's decoder rejects."""
    return bad_request(f'{kind.kind} in version "{version}" cannot be handled as a {kind.kind}: {message}')


def normalise(kind: ResourceKind, obj: JsonObject, version: str) -> list[FieldError]:
    """Decode-time checks and wire normalisation, in place; returns validation errors.

    Type mismatches and unparsable times raise 400 BadRequest at once (decoding
    fails on a real server); out-of-range values are returned, for the caller to
    raise as 422 Invalid after its own checks, in the real server's order.
    """
    _check_metadata_types(kind, obj, version)
    errors: list[FieldError] = []
    for typed in kind.typed_fields:
        found = _locate(obj, typed.path)
        if found is None:
            continue
        parent, leaf = found
        if parent[leaf] is None:
            del parent[leaf]
            continue
        parent[leaf] = _decoded(kind, typed, parent[leaf], version)
        if typed.type == "int32" and typed.minimum is not None and parent[leaf] < typed.minimum:
            errors.append(FieldError(typed.path, typed.minimum_message, str(parent[leaf])))
    for path in kind.gated_fields:
        if (gated := _locate(obj, path)) is not None:
            del gated[0][gated[1]]
    errors.extend(validate_metadata(kind, obj))
    return errors


def _check_metadata_types(kind: ResourceKind, obj: JsonObject, version: str) -> None:
    """400 unless ``metadata`` is an object and its labels and annotations map
    strings to strings."""
    metadata = obj.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise decode_error(
            kind,
            version,
            f"json: cannot unmarshal {_json_type(metadata)} into "
            f"Go struct field {kind.kind}.metadata of type v1.ObjectMeta",
        )
    for mapping in ("labels", "annotations"):
        values = (metadata or {}).get(mapping)
        if values is None:
            continue
        if not isinstance(values, dict) or not all(isinstance(v, str) for v in values.values()):
            raise decode_error(
                kind,
                version,
                f"json: cannot unmarshal {_json_type(values)} into "
                f"Go struct field ObjectMeta.metadata.{mapping} of type string",
            )


def _decoded(kind: ResourceKind, typed: TypedField, value: Any, version: str) -> Any:
    """``value`` (not None) of the field ``typed`` as the real server writes it
    back: an int32 as an integer, a time in its canonical form; 400 when it
    does not decode."""
    go_type = {"int32": "int32", "string": "string", "microtime": "v1.MicroTime", "time": "v1.Time"}[typed.type]
    if typed.type == "int32":
        ok = (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, float) and value.is_integer()
        )
        if not ok or not -(2**31) <= int(value) < 2**31:
            raise decode_error(
                kind,
                version,
                f"json: cannot unmarshal {_json_type(value)} "
                f"into Go struct field {_go_struct(kind, typed.path)} of type int32",
            )
        return int(value)
    if not isinstance(value, str):
        raise decode_error(
            kind,
            version,
            f"json: cannot unmarshal {_json_type(value)} into "
            f"Go struct field {_go_struct(kind, typed.path)} of type {go_type}",
        )
    try:
        if typed.type == "microtime":
            return format_microtime(parse_microtime(value))
        if typed.type == "time":
            return format_time(parse_time(value))
    except ValueError as exc:
        raise decode_error(kind, version, str(exc)) from exc
    return value


_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_SUBDOMAIN_MSG = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or "
    "'.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used "
    "for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)
_LABEL_MSG = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and "
    "must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex "
    "used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
)
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_QUALIFIED_NAME_MSG = (
    "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an "
    "alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation "
    "is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"
)
_LABEL_VALUE_MSG = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or "
    "'.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or "
    "'my_value',  or '12345', regex used for validation is "
    "'(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"
)


#: Where an Event about a cluster-scoped object (no involvedObject.namespace) may live.
_CLUSTER_EVENT_NAMESPACES = ("default",)
_NEW_CLUSTER_EVENT_NAMESPACES = ("default", "kube-system")


def validate_event(kind: ResourceKind, obj: Mapping[str, Any], namespace: str) -> list[FieldError]:
    """The real server's namespace rule for Events (and the type rule of
    events.k8s.io): an Event lives in its object's namespace; one about a
    cluster-scoped object (a Node) in ``default`` (also ``kube-system`` when
    it has an ``eventTime``). events.k8s.io's ``regarding`` is checked under
    its internal name ``involvedObject``."""
    if kind.kind != "Event" or kind.custom:
        return []
    new_api = kind.group == "events.k8s.io"
    involved = obj.get("regarding" if new_api else "involvedObject")
    involved_ns = str((involved or {}).get("namespace") or "") if isinstance(involved, Mapping) else ""
    errors: list[FieldError] = []
    if not obj.get("eventTime") and not new_api:
        fits = namespace in _CLUSTER_EVENT_NAMESPACES if not involved_ns else namespace == involved_ns
    else:
        fits = bool(involved_ns) or namespace in _NEW_CLUSTER_EVENT_NAMESPACES
    if not fits:
        errors.append(FieldError("involvedObject.namespace", "does not match event.namespace", go_quote(involved_ns)))
    if new_api and obj.get("type") not in ("Normal", "Warning"):
        errors.append(FieldError("type", f"has invalid value: {obj.get('type') or ''}", '""'))
    return errors


def validate_name(kind: ResourceKind, name: str) -> list[FieldError]:
    if kind.name_rule == "label":
        if len(name) > 63 or not _DNS_LABEL.match(name):
            return [FieldError("metadata.name", _LABEL_MSG, go_value(name))]
    elif len(name) > 253 or not _SUBDOMAIN.match(name):
        return [FieldError("metadata.name", _SUBDOMAIN_MSG, go_value(name))]
    return []


def _label_key_problems(key: str) -> list[str]:
    """apimachinery's check of a label key (a qualified name: ``[prefix/]name``)."""
    parts = key.split("/")
    if len(parts) > 2:
        return [f"a valid label key {_QUALIFIED_NAME_MSG} with an optional DNS subdomain prefix and '/' "
                "(e.g. 'example.com/MyName')"]  # fmt: skip
    problems: list[str] = []
    name = parts[-1]
    if len(parts) == 2:
        prefix = parts[0]
        if not prefix:
            problems.append("prefix part must be non-empty")
        else:
            if len(prefix) > 253:
                problems.append("prefix part must be no more than 253 bytes")
            if not _SUBDOMAIN.match(prefix):
                problems.append(f"prefix part {_SUBDOMAIN_MSG}")
    if not name:
        problems.append("name part must be non-empty")
    elif len(name) > 63:
        problems.append("name part must be no more than 63 bytes")
    if not _QUALIFIED_NAME.match(name):
        problems.append(f"name part {_QUALIFIED_NAME_MSG}")
    return problems


def validate_metadata(kind: ResourceKind, obj: Mapping[str, Any]) -> list[FieldError]:
    """The labels: each key a qualified name, each value a label value."""
    labels = (obj.get("metadata") or {}).get("labels") or {}
    errors: list[FieldError] = []
    for key, value in labels.items():
        errors += [FieldError("metadata.labels", problem, go_value(key)) for problem in _label_key_problems(key)]
        if len(value) > 63:
            errors.append(FieldError("metadata.labels", "must be no more than 63 bytes", go_value(value)))
        if not _LABEL_VALUE.match(value):
            errors.append(FieldError("metadata.labels", _LABEL_VALUE_MSG, go_value(value)))
    return errors


# --------------------------------------------------------------------------- patches


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


class JsonPatchError(ValueError):
    """A JSON patch (RFC 6902) that cannot be applied."""


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise JsonPatchError(f"invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _walk(doc: Any, parts: Sequence[str]) -> Any:
    for part in parts:
        if isinstance(doc, dict):
            if part not in doc:
                raise JsonPatchError(f"doc is missing path: /{'/'.join(parts)}")
            doc = doc[part]
        elif isinstance(doc, list):
            try:
                doc = doc[int(part)]
            except (ValueError, IndexError) as exc:
                raise JsonPatchError(f"doc is missing path: /{'/'.join(parts)}") from exc
        else:
            raise JsonPatchError(f"doc is missing path: /{'/'.join(parts)}")
    return doc


def _remove(doc: Any, parts: list[str]) -> Any:
    if not parts:
        raise JsonPatchError("cannot remove the whole document")
    parent = _walk(doc, parts[:-1])
    leaf = parts[-1]
    if isinstance(parent, dict):
        if leaf not in parent:
            raise JsonPatchError(f"unable to remove nonexistent key: {leaf}")
        return parent.pop(leaf)
    if isinstance(parent, list):
        try:
            return parent.pop(int(leaf))
        except (ValueError, IndexError) as exc:
            raise JsonPatchError(f"unable to remove index {leaf}") from exc
    raise JsonPatchError(f"cannot remove from a {type(parent).__name__}")


def _add(doc: Any, parts: list[str], value: Any, replace: bool) -> Any:
    if not parts:
        return copy.deepcopy(value)
    parent = _walk(doc, parts[:-1])
    leaf = parts[-1]
    if isinstance(parent, dict):
        if replace and leaf not in parent:
            raise JsonPatchError(f"replace operation does not apply: doc is missing key: {leaf}")
        parent[leaf] = copy.deepcopy(value)
    elif isinstance(parent, list):
        if leaf == "-" and not replace:
            parent.append(copy.deepcopy(value))
        else:
            try:
                index = int(leaf)
            except ValueError as exc:
                raise JsonPatchError(f"invalid array index {leaf!r}") from exc
            if replace:
                if not 0 <= index < len(parent):
                    raise JsonPatchError(f"replace operation does not apply: index {index}")
                parent[index] = copy.deepcopy(value)
            elif 0 <= index <= len(parent):
                parent.insert(index, copy.deepcopy(value))
            else:
                raise JsonPatchError(f"add operation does not apply: index {index}")
    else:
        raise JsonPatchError("add operation does not apply: parent is not a container")
    return doc


def json_patch(target: Any, operations: Any) -> Any:
    """RFC 6902 JSON patch: add, remove, replace, move, copy, test."""
    if not isinstance(operations, list):
        raise JsonPatchError("a JSON patch must be a list of operations")
    doc = copy.deepcopy(target)
    for op in operations:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise JsonPatchError("each operation needs 'op' and 'path'")
        parts = _pointer(op["path"])
        name = op["op"]
        if name == "add":
            doc = _add(doc, parts, op.get("value"), replace=False)
        elif name == "replace":
            doc = _add(doc, parts, op.get("value"), replace=True)
        elif name == "remove":
            _remove(doc, parts)
        elif name in ("move", "copy"):
            source = _pointer(op.get("from", ""))
            value = _remove(doc, source) if name == "move" else copy.deepcopy(_walk(doc, source))
            doc = _add(doc, parts, value, replace=False)
        elif name == "test":
            if _walk(doc, parts) != op.get("value"):
                raise JsonPatchError(f"testing value {op['path']} failed: test failed")
        else:
            raise JsonPatchError(f"Unexpected kind: {name}")
    return doc
