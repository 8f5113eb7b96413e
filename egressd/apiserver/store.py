"""In-memory object store of the lab API server: objects, resourceVersions, watches.

Rules the store keeps (the ones clients of a real kube-apiserver rely on):

* ONE resourceVersion counter for all resources; every write takes the next
  value, so RVs are comparable across kinds and a list's RV is the counter.
* Stored objects are never mutated; a write stores a new dict. Watch events
  and history entries can therefore share them.
* Every write appends to a bounded history ring (``history_size`` entries).
  A watch or an exact list at an RV older than the ring answers 410 Expired.
* Watchers never block writers: each has a bounded queue; a watcher whose
  queue is full is closed (a real server also drops slow watchers).

All methods run on the server's event loop thread; none of them awaits.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import copy
import json
import logging
import random
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from egressd.apiserver import errors as apierrors
from egressd.apiserver import openapi
from egressd.apiserver.errors import ApiError, FieldError, JsonObject, bad_request, go_quote, go_value
from egressd.apiserver.kinds import (
    BUILTIN_KINDS,
    JsonPatchError,
    ResourceKind,
    crd_established_status,
    decode_error,
    json_patch,
    kind_from_crd,
    merge_patch,
    normalise,
    now_time,
    validate_crd,
    validate_event,
    validate_name,
)
from egressd.apiserver.selectors import Selection

logger = logging.getLogger(__name__)

ObjKey = tuple[str, str]  # (namespace or "", name)
KindKey = tuple[str, str]  # (group, plural)

NAMESPACES: KindKey = ("", "namespaces")
CRDS: KindKey = ("apiextensions.k8s.io", "customresourcedefinitions")

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"
_NAME_CHARS = "bcdfghjklmnpqrstvwxz2456789"
SLOW_WATCHER = "watcher too slow: queue full"
_CONTINUE_TOO_OLD = (
    "The provided continue parameter is too old to display a consistent list result. You can "
    "start a new list without the continue parameter."
)


@dataclass(frozen=True)
class HistoryEntry:
    """One write: the object after it (for DELETED: the last state, new RV) and before."""

    rv: int
    kind: KindKey
    type: str  # ADDED | MODIFIED | DELETED
    key: ObjKey
    obj: JsonObject
    prev: JsonObject | None


@dataclass
class WriteOptions:
    """What a create, update or patch request asks beyond its body, and the warnings it gets back."""

    #: ``Strict``: unknown fields of a custom resource fail the request; ``Warn``
    #: (the default, also ""): they are dropped with a warning; ``Ignore``: dropped.
    field_validation: str = ""
    #: ``dryRun=All``: the write is checked and answered but not stored.
    dry_run: bool = False
    #: Texts for the answer's ``Warning: 299 - "..."`` headers.
    warnings: list[str] = field(default_factory=list)


@dataclass
class ListResult:
    items: list[JsonObject]
    resource_version: int
    continue_token: str | None = None
    remaining: int | None = None


def _with_status(kind: ResourceKind, old: JsonObject, new: JsonObject, subresource: str) -> JsonObject:
    """The object an update writes: a write to ``status`` changes the status
    only; with a status subresource, a write to the object keeps the old one."""
    if subresource == "status":
        result = copy.deepcopy(old)
        if "status" in new:
            result["status"] = new["status"]
        else:
            result.pop("status", None)
        return result
    if kind.status_subresource:
        if "status" in old:
            new["status"] = copy.deepcopy(old["status"])
        else:
            new.pop("status", None)
    return new


def _keep_system_metadata(kind: ResourceKind, result: JsonObject, old: JsonObject) -> JsonObject:
    """Sets the fields of ``result``'s metadata that only the server writes as
    they are in ``old`` (and the name label), drops null ones; returns the metadata."""
    meta: JsonObject = result.setdefault("metadata", {})
    old_meta = _meta(old)
    for system in (
        "uid",
        "creationTimestamp",
        "namespace",
        "name",
        "generation",
        "deletionTimestamp",
        "resourceVersion",
    ):
        if system in old_meta:
            meta[system] = old_meta[system]
        else:
            meta.pop(system, None)
    if kind.name_label:
        meta["labels"] = {**(meta.get("labels") or {}), kind.name_label: meta["name"]}
    for name in [k for k, v in meta.items() if v is None]:
        del meta[name]
    return meta


def _meta(obj: Mapping[str, Any]) -> JsonObject:
    metadata = obj.get("metadata")
    return metadata if isinstance(metadata, dict) else {}


def _with_rv(obj: JsonObject, rv: int) -> JsonObject:
    out = dict(obj)
    out["metadata"] = {**_meta(obj), "resourceVersion": str(rv)}
    return out


class Watcher:
    """One watch stream's filter and bounded queue of ``{"type", "object"}`` events."""

    def __init__(
        self,
        kind: ResourceKind,
        namespace: str | None,
        selection: Selection,
        capacity: int,
    ) -> None:
        self.kind = kind
        self.namespace = namespace
        self.selection = selection
        self.capacity = capacity
        self.closed = False
        self.close_reason = ""
        self._events: deque[JsonObject] = deque()
        self._wake = asyncio.Event()

    def translate(self, entry: HistoryEntry) -> JsonObject | None:
        """The event this watcher sees for a write, if any (selector enter/leave rules)."""
        if entry.kind != self.kind.key:
            return None
        if self.namespace is not None and entry.key[0] != self.namespace:
            return None
        if entry.type == "DELETED":
            return {"type": "DELETED", "object": entry.obj} if self.selection.matches(entry.obj) else None
        now_in = self.selection.matches(entry.obj)
        was_in = entry.prev is not None and self.selection.matches(entry.prev)
        if now_in:
            kind = "MODIFIED" if entry.type == "MODIFIED" and was_in else "ADDED"
            return {"type": kind, "object": entry.obj}
        if was_in and entry.prev is not None:
            # Leaving the selection: the previous content with the event's RV.
            return {"type": "DELETED", "object": _with_rv(entry.prev, entry.rv)}
        return None

    def preload(self, event: JsonObject) -> None:
        """Queue an initial or replayed event (not counted against the live bound)."""
        self._events.append(event)
        self.capacity += 1
        self._wake.set()

    def offer(self, entry: HistoryEntry) -> None:
        event = self.translate(entry)
        if event is None or self.closed:
            return
        if len(self._events) >= self.capacity:
            self.close(SLOW_WATCHER)
            return
        self._events.append(event)
        self._wake.set()

    def close(self, reason: str) -> None:
        if not self.closed:
            self.closed = True
            self.close_reason = reason
            self._wake.set()

    async def next(self, max_wait: float) -> JsonObject | None:
        """The next event, or None: on timeout, or once closed (see ``closed``).

        A watcher closed for being too slow drops what it still holds, so its
        stream ends at once; otherwise queued events are still delivered.
        """
        if not self._events and not self.closed:
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), max_wait)
            except TimeoutError:
                return None
        if self.overflowed or not self._events:
            return None
        return self._events.popleft()

    @property
    def overflowed(self) -> bool:
        return self.close_reason == SLOW_WATCHER


class Store:
    """Objects of every served kind, one RV counter, a history ring and the watchers."""

    def __init__(
        self,
        *,
        history_size: int = 1000,
        watch_queue_size: int = 1000,
        auto_create_default_namespace: bool = True,
        auto_create_namespaces: bool = False,
    ) -> None:
        self.history_size = history_size
        self.watch_queue_size = watch_queue_size
        self.auto_create_namespaces = auto_create_namespaces
        self._rv = 0
        self._floor = 0  # every write with rv > floor is in the history
        self._history: deque[HistoryEntry] = deque()
        self._watchers: set[Watcher] = set()
        self._kinds: dict[KindKey, ResourceKind] = {k.key: k for k in BUILTIN_KINDS}
        self._objects: dict[KindKey, dict[ObjKey, JsonObject]] = {k: {} for k in self._kinds}
        if auto_create_default_namespace:
            self._ensure_namespace("default")

    # ------------------------------------------------------------------ kinds

    @property
    def resource_version(self) -> int:
        return self._rv

    def kinds(self) -> list[ResourceKind]:
        return list(self._kinds.values())

    def resolve(self, group: str, version: str, plural: str) -> ResourceKind | None:
        kind = self._kinds.get((group, plural))
        return kind if kind is not None and version in kind.versions else None

    # ------------------------------------------------------------------ history

    def _write(
        self, kind: ResourceKind, type_: str, key: ObjKey, obj: JsonObject | None, prev: JsonObject | None
    ) -> JsonObject:
        """Store ``obj`` (None = delete) under the next RV, record and fan out."""
        self._rv += 1
        rv = self._rv
        bucket = self._objects[kind.key]
        if obj is None:
            assert prev is not None
            stored = _with_rv(prev, rv)
            bucket.pop(key, None)
        else:
            stored = _with_rv(obj, rv)
            bucket[key] = stored
        entry = HistoryEntry(rv, kind.key, type_, key, stored, prev)
        self._history.append(entry)
        while len(self._history) > self.history_size:
            self._floor = self._history.popleft().rv
        for watcher in list(self._watchers):
            watcher.offer(entry)
        logger.debug(
            "write rv=%d type=%s resource=%s key=%s/%s", rv, type_, apierrors.qualified(*kind.key), key[0], key[1]
        )
        return stored

    def compact(self) -> None:
        """Forget all history (test plumbing): older RVs now answer 410."""
        self._history.clear()
        self._floor = self._rv
        logger.info("history compacted rv=%d", self._rv)

    def _state_at(self, kind: ResourceKind, rv: int) -> dict[ObjKey, JsonObject]:
        """The objects of ``kind`` as they were at ``rv`` (needs rv >= floor)."""
        state = dict(self._objects[kind.key])
        for entry in reversed(self._history):
            if entry.rv <= rv:
                break
            if entry.kind != kind.key:
                continue
            if entry.type == "ADDED":
                state.pop(entry.key, None)
            elif entry.prev is not None:
                state[entry.key] = entry.prev
        return state

    # ------------------------------------------------------------------ namespaces

    def _ensure_namespace(self, name: str) -> None:
        ns_kind = self._kinds[NAMESPACES]
        if ("", name) in self._objects[NAMESPACES]:
            return
        obj: JsonObject = {"kind": "Namespace", "apiVersion": "v1", "metadata": {"name": name}}
        self._fill_new(ns_kind, obj, "")
        self._write(ns_kind, "ADDED", ("", name), obj, None)

    def _check_namespace(self, kind: ResourceKind, namespace: str) -> None:
        if not kind.namespaced:
            return
        if ("", namespace) in self._objects[NAMESPACES]:
            return
        if self.auto_create_namespaces:
            self._ensure_namespace(namespace)
            return
        raise apierrors.not_found("", "namespaces", namespace)

    # ------------------------------------------------------------------ reads

    def _key(self, kind: ResourceKind, namespace: str | None, name: str) -> ObjKey:
        return ((namespace or "") if kind.namespaced else "", name)

    def get(self, kind: ResourceKind, namespace: str | None, name: str) -> JsonObject:
        obj = self._objects[kind.key].get(self._key(kind, namespace, name))
        if obj is None:
            raise apierrors.not_found(kind.group, kind.plural, name)
        return obj

    def list_objects(
        self,
        kind: ResourceKind,
        namespace: str | None,
        selection: Selection,
        *,
        limit: int = 0,
        continue_token: str = "",
        resource_version: str = "",
        resource_version_match: str = "",
    ) -> ListResult:
        start: ObjKey | None = None
        if resource_version_match and not resource_version:
            why = "resourceVersionMatch is forbidden unless resourceVersion is provided"
            problem = FieldError("resourceVersionMatch", why, None, "FieldValueForbidden")
            raise apierrors.invalid("meta.k8s.io", "ListOptions", "", [problem])
        if continue_token:
            if resource_version not in ("", "0"):
                raise bad_request("specifying resource version is not allowed when using continue")
            list_rv, start = _decode_continue(continue_token)
            if list_rv < self._floor:
                raise apierrors.expired(_CONTINUE_TOO_OLD)
            state = self._state_at(kind, list_rv)
        elif resource_version and resource_version_match == "Exact":
            list_rv = _parse_rv(resource_version)
            if list_rv > self._rv:
                raise apierrors.too_large_resource_version(list_rv, self._rv)
            if list_rv < self._floor:
                raise apierrors.expired("The resourceVersion for the provided list is too old.")
            state = self._state_at(kind, list_rv)
        else:
            if resource_version:
                requested = _parse_rv(resource_version)
                if requested > self._rv:
                    raise apierrors.too_large_resource_version(requested, self._rv)
            list_rv, state = self._rv, self._objects[kind.key]
        keys = sorted(
            key
            for key, obj in state.items()
            if (namespace is None or key[0] == namespace) and selection.matches(obj) and (start is None or key > start)
        )
        result = ListResult([state[k] for k in keys], list_rv)
        # resourceVersion=0 ("any version") is served from the real server's watch cache, which ignores limit
        if resource_version == "0" and not continue_token:
            limit = 0
        if limit > 0 and len(keys) > limit:
            result.items = result.items[:limit]
            result.continue_token = _encode_continue(list_rv, keys[limit - 1])
            result.remaining = len(keys) - limit
        return result

    # ------------------------------------------------------------------ writes

    def _fill_new(self, kind: ResourceKind, obj: JsonObject, namespace: str) -> None:
        meta = obj.setdefault("metadata", {})
        for system in (
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
            "managedFields",
        ):
            meta.pop(system, None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_time()
        if kind.namespaced:
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        if kind.tracks_generation:
            meta["generation"] = 1
        if kind.name_label:
            meta["labels"] = {**(meta.get("labels") or {}), kind.name_label: meta["name"]}
        for key in [k for k, v in meta.items() if v is None]:
            del meta[key]
        if kind.create_status == "drop":
            obj.pop("status", None)
        elif kind.create_status == "initial":
            obj["status"] = copy.deepcopy(dict(kind.initial_status))
        if kind.initial_spec:
            obj["spec"] = {**copy.deepcopy(dict(kind.initial_spec)), **(obj.get("spec") or {})}
        if kind.key == CRDS:
            obj["status"] = crd_established_status(obj, meta["creationTimestamp"])

    def _check_type(self, kind: ResourceKind, body: JsonObject, version: str) -> None:
        """apiVersion/kind in a body must name this resource (filled in when absent)."""
        api_version = body.get("apiVersion")
        if api_version is not None and api_version not in {kind.api_version(v) for v in kind.versions}:
            raise bad_request(
                f"the API version in the data ({api_version}) does not match the expected API "
                f"version ({kind.api_version(version)})"
            )
        body_kind = body.get("kind")
        if body_kind is not None and body_kind != kind.kind:
            raise bad_request(f"the kind in the data ({body_kind}) does not match the expected kind ({kind.kind})")
        body["apiVersion"] = kind.api_version()  # stored under the storage version
        body["kind"] = kind.kind

    def _check_body_namespace(self, kind: ResourceKind, body: JsonObject, namespace: str | None) -> None:
        body_ns = _meta(body).get("namespace")
        if kind.namespaced and body_ns and body_ns != namespace:
            raise bad_request("the namespace of the provided object does not match the namespace sent on the request")

    def create(
        self, kind: ResourceKind, namespace: str | None, body: Any, version: str, options: WriteOptions | None = None
    ) -> JsonObject:
        obj = self._decode_body(kind, body, version)
        self._prune(kind, obj, version, options)
        self._check_body_namespace(kind, obj, namespace)
        meta = obj.setdefault("metadata", {})
        errors = normalise(kind, obj, version)
        name = meta.get("name") or ""
        if not name and meta.get("generateName"):
            name = str(meta["generateName"]) + "".join(random.choices(_NAME_CHARS, k=5))  # noqa: S311
            meta["name"] = name
        if not name:
            raise apierrors.invalid(
                kind.group, kind.kind, "", [FieldError("metadata.name", "name or generateName is required")]
            )
        if kind.namespaced:
            self._check_namespace(kind, namespace or "")
        errors = validate_name(kind, name) + errors + validate_event(kind, obj, namespace or "")
        if kind.key == CRDS:
            errors += validate_crd(obj)
        errors += self._schema_errors(kind, version, obj, None, "")
        if errors:
            raise apierrors.invalid(kind.group, kind.kind, name, errors)
        key = self._key(kind, namespace, name)
        if key in self._objects[kind.key]:
            raise apierrors.already_exists(kind.group, kind.plural, name)
        self._fill_new(kind, obj, namespace or "")
        if options is not None and options.dry_run:
            return obj
        stored = self._write(kind, "ADDED", key, obj, None)
        if kind.key == CRDS:
            self._register_crd(stored)
        return stored

    def _decode_body(self, kind: ResourceKind, body: Any, version: str) -> JsonObject:
        if not isinstance(body, dict):
            raise decode_error(
                kind, version, f"json: cannot unmarshal {type(body).__name__} into Go value of type struct"
            )
        obj = copy.deepcopy(body)
        self._check_type(kind, obj, version)
        meta = obj.get("metadata")
        if meta is not None and not isinstance(meta, dict):
            normalise(kind, obj, version)  # raises the decode error
        return obj

    def update(
        self,
        kind: ResourceKind,
        namespace: str | None,
        name: str,
        body: Any,
        *,
        version: str,
        subresource: str = "",
        options: WriteOptions | None = None,
    ) -> tuple[JsonObject, bool]:
        """PUT; returns (object, created)."""
        obj = self._decode_body(kind, body, version)
        self._prune(kind, obj, version, options)
        body_name = _meta(obj).get("name")
        if body_name != name:
            raise bad_request(f"the name of the object ({body_name or ''}) does not match the name on the URL ({name})")
        self._check_body_namespace(kind, obj, namespace)
        errors = normalise(kind, obj, version)
        key = self._key(kind, namespace, name)
        old = self._objects[kind.key].get(key)
        if old is None:
            if kind.create_on_update and not subresource:
                return self.create(kind, namespace, body, version, options), True
            raise apierrors.not_found(kind.group, kind.plural, name)
        self._check_rv(kind, name, obj, old)
        committed = self._commit_update(
            kind, key, old, obj, subresource, version=version, errors=errors, dry_run=bool(options and options.dry_run)
        )
        return committed, False

    def _prune(
        self, kind: ResourceKind, obj: JsonObject, version: str, options: WriteOptions | None, *, patch: bool = False
    ) -> None:
        """Drop the unknown fields of a custom resource as the real server's decoder
        does; with fieldValidation=Strict they fail the request instead (400, or
        422 for a patch), by default each becomes a warning."""
        if not kind.custom:
            return
        patched = json.dumps(obj, sort_keys=True, separators=(",", ":")) if patch else ""
        unknown = openapi.prune_object(obj, kind.schema(version))
        if not unknown:
            return
        texts = [f"unknown field {go_quote(path)}" for path in unknown]
        mode = options.field_validation if options is not None else ""
        if mode == "Strict":
            why = "strict decoding error: " + ", ".join(texts)
            if patch:
                raise apierrors.invalid("", "", "", [FieldError("patch", why, go_quote(patched))])
            raise decode_error(kind, version, why)
        if mode != "Ignore" and options is not None:
            options.warnings.extend(texts)

    def _schema_errors(
        self, kind: ResourceKind, version: str, new: JsonObject, old: JsonObject | None, subresource: str
    ) -> list[FieldError]:
        """A custom resource against its version's schema: the whole object on
        create and update (without status on create, which drops it first), only
        the status through the status subresource. On updates, unchanged values
        keep their errors to themselves (ratcheting) and list types are checked
        only if the old object passed them."""
        schema = kind.schema(version)
        if not kind.custom or schema is None:
            return []
        view = openapi.without_meta(new)
        if old is None and kind.status_subresource:
            view.pop("status", None)
        if subresource == "status":
            errors = []
            if "status" in new:
                before = old.get("status", openapi.MISSING) if old is not None else openapi.MISSING
                errors = openapi.validate(new["status"], kind.status_schema(version), path="status", old=before)
        else:
            before = openapi.without_meta(old) if old is not None else openapi.MISSING
            errors = openapi.validate(view, schema, old=before)
        if old is None or not openapi.validate_list_types(openapi.without_meta(old), schema):
            errors += openapi.validate_list_types(view, schema)
        return errors

    def _check_rv(self, kind: ResourceKind, name: str, new: JsonObject, old: JsonObject) -> None:
        new_rv = _meta(new).get("resourceVersion") or ""
        if not new_rv:
            if kind.unconditional_update:
                return
            raise apierrors.invalid(
                kind.group,
                kind.plural,
                name,
                [FieldError("metadata.resourceVersion", "must be specified for an update", "0")],
            )
        if str(new_rv) != _meta(old)["resourceVersion"]:
            raise apierrors.conflict(kind.group, kind.plural, name)

    def _commit_update(
        self,
        kind: ResourceKind,
        key: ObjKey,
        old: JsonObject,
        new: JsonObject,
        subresource: str,
        *,
        version: str,
        errors: Sequence[FieldError] = (),
        dry_run: bool = False,
    ) -> JsonObject:
        result = _with_status(kind, old, new, subresource)
        meta = _keep_system_metadata(kind, result, old)
        old_meta = _meta(old)
        result["apiVersion"], result["kind"] = old["apiVersion"], old["kind"]
        if kind.tracks_generation and _spec_part(kind, result) != _spec_part(kind, old):
            meta["generation"] = int(old_meta.get("generation", 1)) + 1
        problems = [*errors, *validate_event(kind, result, str(meta.get("namespace") or ""))]
        problems += self._schema_errors(kind, version, result, old, subresource)
        if kind.key == CRDS and subresource != "status":
            problems += validate_crd(result)
        if problems:
            raise apierrors.invalid(kind.group, kind.kind, meta["name"], problems)
        if result == old:
            return old  # a no-op write keeps its RV and sends no event, as on a real server
        if dry_run:
            return result
        stored = self._write(kind, "MODIFIED", key, result, old)
        if kind.key == CRDS:
            self._register_crd(stored)
        return stored

    def patch(
        self,
        kind: ResourceKind,
        namespace: str | None,
        name: str,
        patch: Any,
        *,
        content_type: str,
        version: str,
        subresource: str = "",
        options: WriteOptions | None = None,
    ) -> JsonObject:
        accepted = [
            JSON_PATCH,
            MERGE_PATCH,
            *([STRATEGIC_MERGE_PATCH] if kind.strategic_merge else []),
            "application/apply-patch+yaml",
        ]
        if content_type not in accepted or content_type == "application/apply-patch+yaml":
            raise apierrors.unsupported_media_type(content_type, accepted)
        key = self._key(kind, namespace, name)
        old = self._objects[kind.key].get(key)
        if old is None:
            raise apierrors.not_found(kind.group, kind.plural, name)
        if content_type == JSON_PATCH:
            try:
                patched = json_patch(old, patch)
            except JsonPatchError as exc:
                raise ApiError(422, "Invalid", str(exc), {}) from exc
        else:
            if not isinstance(patch, dict):
                raise bad_request(
                    f"json: cannot unmarshal {type(patch).__name__} into Go value of type map[string]interface {{}}"
                )
            # Strategic merge patch is treated as a merge patch: exact for the map-shaped
            # objects egressd uses; lists with merge keys (containers) are replaced whole.
            patched = merge_patch(old, patch)
        if not isinstance(patched, dict):
            raise bad_request("the patch did not produce an object")
        self._check_type(kind, patched, version)
        if _meta(patched).get("name") != name:
            raise bad_request(
                f"the name of the object ({_meta(patched).get('name') or ''}) "
                f"does not match the name on the URL ({name})"
            )
        errors = normalise(kind, patched, version)
        self._prune(kind, patched, version, options, patch=True)
        if (_meta(patched).get("resourceVersion") or "") != _meta(old)["resourceVersion"]:
            self._check_rv(kind, name, patched, old)
        return self._commit_update(
            kind,
            key,
            old,
            patched,
            subresource,
            version=version,
            errors=errors,
            dry_run=bool(options and options.dry_run),
        )

    def delete(
        self,
        kind: ResourceKind,
        namespace: str | None,
        name: str,
        options: Mapping[str, Any] | None = None,
        *,
        dry_run: bool = False,
    ) -> JsonObject:
        """DELETE; answers what the real server answers for this resource
        (``dry_run``: the same answer, nothing removed)."""
        key = self._key(kind, namespace, name)
        old = self._objects[kind.key].get(key)
        if old is None:
            raise apierrors.not_found(kind.group, kind.plural, name)
        preconditions = (options or {}).get("preconditions") or {}
        meta = _meta(old)
        uid, rv = preconditions.get("uid"), preconditions.get("resourceVersion")
        # the real server names the Kind here, not the resource
        if uid and uid != meta.get("uid"):
            why = (
                f"the UID in the precondition ({uid}) does not match the UID in record ({meta.get('uid')}). "
                "The object might have been deleted and then recreated"
            )
            raise apierrors.conflict(kind.group, kind.kind, name, why)
        if rv and rv != meta.get("resourceVersion"):
            why = (
                f"the ResourceVersion in the precondition ({rv}) does not match the ResourceVersion in record "
                f"({meta.get('resourceVersion')}). The object might have been modified"
            )
            raise apierrors.conflict(kind.group, kind.kind, name, why)
        if dry_run:
            return self._delete_answer(kind, name, old)
        if kind.key == NAMESPACES:
            self._delete_all(lambda k: k.namespaced, name)
        if kind.key == CRDS:
            self._unregister_crd(old)
        self._write(kind, "DELETED", key, None, old)
        return self._delete_answer(kind, name, old)

    @staticmethod
    def _delete_answer(kind: ResourceKind, name: str, old: JsonObject) -> JsonObject:
        meta = _meta(old)
        if kind.key == NAMESPACES:
            terminating = copy.deepcopy(old)
            terminating["metadata"]["deletionTimestamp"] = now_time()
            terminating["status"] = {"phase": "Terminating"}
            return terminating
        if kind.delete_returns_object:
            return old
        details: JsonObject = {"name": name}
        if kind.group:
            details["group"] = kind.group
        details.update({"kind": kind.plural, "uid": meta.get("uid")})
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}

    def delete_collection(self, kind: ResourceKind, namespace: str | None, selection: Selection) -> list[JsonObject]:
        deleted = []
        for obj in self.list_objects(kind, namespace, selection).items:
            meta = _meta(obj)
            self.delete(kind, meta.get("namespace"), meta["name"])
            deleted.append(obj)
        return deleted

    def _delete_all(self, which: Callable[[ResourceKind], bool], namespace: str | None) -> None:
        for kind in list(self._kinds.values()):
            if not which(kind):
                continue
            for key, obj in sorted(self._objects.get(kind.key, {}).items()):
                if namespace is None or key[0] == namespace:
                    self._write(kind, "DELETED", key, None, obj)

    # ------------------------------------------------------------------ CRDs

    def _register_crd(self, crd: JsonObject) -> None:
        kind = kind_from_crd(crd)
        self._kinds[kind.key] = kind
        self._objects.setdefault(kind.key, {})
        logger.info(
            "custom resource registered resource=%s versions=%s namespaced=%s",
            apierrors.qualified(*kind.key),
            ",".join(kind.versions),
            kind.namespaced,
        )

    def _unregister_crd(self, crd: JsonObject) -> None:
        key = (crd["spec"]["group"], crd["spec"]["names"]["plural"])
        if key not in self._kinds:
            return
        self._delete_all(lambda k: k.key == key, None)
        del self._kinds[key]
        del self._objects[key]
        for watcher in list(self._watchers):
            if watcher.kind.key == key:
                watcher.close("resource removed")

    # ------------------------------------------------------------------ watch

    def watch(self, kind: ResourceKind, namespace: str | None, selection: Selection, resource_version: str) -> Watcher:
        """Register a watcher, preloaded per the RV semantics of the real server.

        Unset or "0": synthetic ADDED events for the current state, then live.
        A given RV: the history after it, then live. An RV older than the
        history: one ERROR event (410 Expired), then the stream ends.
        """
        watcher = Watcher(kind, namespace, selection, self.watch_queue_size)
        if resource_version in ("", "0"):
            for key in sorted(self._objects[kind.key]):
                obj = self._objects[kind.key][key]
                if (namespace is None or key[0] == namespace) and selection.matches(obj):
                    watcher.preload({"type": "ADDED", "object": obj})
        else:
            start = _parse_rv(resource_version, watch=True)
            if start < self._floor:
                status = apierrors.expired(f"too old resource version: {start} ({self._floor + 1})").status()
                watcher.preload({"type": "ERROR", "object": status})
                watcher.close("expired")
                return watcher
            for entry in self._history:
                if entry.rv > start:
                    event = watcher.translate(entry)
                    if event is not None:
                        watcher.preload(event)
        self._watchers.add(watcher)
        return watcher

    def unwatch(self, watcher: Watcher) -> None:
        self._watchers.discard(watcher)

    def close_watchers(self, reason: str) -> None:
        for watcher in list(self._watchers):
            watcher.close(reason)
        self._watchers.clear()

    @property
    def watcher_count(self) -> int:
        return len(self._watchers)


def _spec_part(kind: ResourceKind, obj: Mapping[str, Any]) -> JsonObject:
    skip = {"metadata", "apiVersion", "kind"} | ({"status"} if kind.status_subresource else set())
    return {k: v for k, v in obj.items() if k not in skip}


def _parse_rv(text: str, *, watch: bool = False) -> int:
    """A resourceVersion parameter; what is not one is 400 for a list, and (as
    the real server's watch path answers) 500 without a reason for a watch."""
    if text.isascii() and text.isdigit():
        return int(text)
    parse_error = f"strconv.ParseUint: parsing {go_quote(text)}: invalid syntax"
    problem = FieldError("resourceVersion", parse_error, go_value(text))
    if watch:
        raise ApiError(500, "", str(problem))
    raise bad_request(f"invalid resource version: {problem}")


def _encode_continue(rv: int, start: ObjKey) -> str:
    raw = json.dumps({"v": "lab/1", "rv": rv, "start": list(start)}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_continue(token: str) -> tuple[int, ObjKey]:
    try:
        raw = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        namespace, name = raw["start"]
        return int(raw["rv"]), (str(namespace), str(name))
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise bad_request(f"continue key is not valid: {exc}") from exc


def iter_kinds(kinds: Iterable[ResourceKind], group: str, version: str) -> list[ResourceKind]:
    return sorted((k for k in kinds if k.group == group and version in k.versions), key=lambda k: k.plural)
