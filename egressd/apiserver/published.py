"""The OpenAPI v3 documents the embedded API server publishes: what kubectl reads.

``kubectl apply`` (and ``create``, ``replace``) validates what it sends:
first it reads ``/openapi/v3`` (an index of one document per group version)
and the document of the object's group version, and if that document says
the PATCH of the object's kind takes the ``fieldValidation`` query parameter
it leaves the validation to the server (``fieldValidation=Strict``), which
the embedded server does for custom resources. Without the documents kubectl
fails with ``failed to download openapi``.

So each document holds, per kind of its group version, the PATCH operation
of one object (with its ``x-kubernetes-group-version-kind`` and query
parameters) and a schema carrying the same extension: the CRD's
``openAPIV3Schema`` for a custom resource, an object that keeps any field for
a built-in kind. That is far less than the real server's documents (no other
operations, no built-in schemas, no references), and enough for kubectl.
``/openapi/v2`` is not served: kubectl asks for it only as protobuf, when no
v3 document describes a kind, and when it computes the strategic merge patch
of a built-in kind, where it does without.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

from egressd.apiserver.errors import JsonObject
from egressd.apiserver.kinds import ResourceKind

_PATCH_PARAMETERS = ("dryRun", "fieldManager", "fieldValidation", "force", "pretty")


def group_version_path(group: str, version: str) -> str:
    """``api/v1`` or ``apis/<group>/<version>``: the key of the index and the document's URL path."""
    return f"apis/{group}/{version}" if group else f"api/{version}"


def _gvk(kind: ResourceKind, version: str) -> JsonObject:
    return {"group": kind.group, "version": version, "kind": kind.kind}


def _schema_name(kind: ResourceKind, version: str) -> str:
    """``io.egressd.v1alpha1.EgressGatewayPolicy``: the group reversed, as the real server names CRD schemas."""
    group = ".".join(reversed(kind.group.split("."))) if kind.group else "core"
    return f"{group}.{version}.{kind.kind}"


def _patch_operation(kind: ResourceKind, version: str) -> JsonObject:
    parameters = [{"name": name, "in": "query", "schema": {"type": "string"}} for name in _PATCH_PARAMETERS]
    return {
        "operationId": f"patch{kind.kind}",
        "x-kubernetes-action": "patch",
        "x-kubernetes-group-version-kind": _gvk(kind, version),
        "parameters": parameters,
        "responses": {"200": {"description": "OK"}},
    }


def _schema(kind: ResourceKind, version: str) -> JsonObject:
    own = kind.schema(version) if kind.custom else None
    schema: JsonObject = dict(own) if own else {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    schema["x-kubernetes-group-version-kind"] = [_gvk(kind, version)]
    return schema


def document(kinds: Iterable[ResourceKind], group: str, version: str, server_version: str) -> JsonObject:
    """The document of one group version (its kinds already chosen by the caller)."""
    paths: JsonObject = {}
    schemas: JsonObject = {}
    prefix = "/" + group_version_path(group, version)
    for kind in kinds:
        namespace = "/namespaces/{namespace}" if kind.namespaced else ""
        paths[f"{prefix}{namespace}/{kind.plural}/{{name}}"] = {"patch": _patch_operation(kind, version)}
        schemas[_schema_name(kind, version)] = _schema(kind, version)
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": server_version},
        "paths": paths,
        "components": {"schemas": schemas},
    }


def content_hash(doc: Any) -> str:
    """The ``hash`` query parameter of a document's URL: it changes when the document does."""
    return hashlib.sha512(json.dumps(doc, sort_keys=True).encode()).hexdigest().upper()


def index(documents: dict[str, JsonObject]) -> JsonObject:
    """``/openapi/v3``: each group version path with the URL of its document."""
    return {
        "paths": {
            path: {"serverRelativeURL": f"/openapi/v3/{path}?hash={content_hash(doc)}"}
            for path, doc in sorted(documents.items())
        }
    }
