"""Kubernetes ``Status`` error bodies for the lab API server.

Every failure the lab server reports is an :class:`ApiError` carrying the
exact ``Status`` object a real kube-apiserver writes for the same situation
(shapes follow apimachinery's ``pkg/api/errors``)::

    {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
     "message": ..., "reason": ..., "details": {...}, "code": ...}

``details.kind`` is the resource *plural* for NotFound/AlreadyExists/Conflict
(the real server puts the resource there), the *kind* for Invalid errors of
validation, and ``details.group`` is omitted for the core group.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

JsonObject = dict[str, Any]

OPTIMISTIC_LOCK_MESSAGE = "the object has been modified; please apply your changes to the latest version and try again"


def qualified(group: str, plural: str) -> str:
    """``leases.coordination.k8s.io`` for a grouped resource, ``pods`` for core."""
    return f"{plural}.{group}" if group else plural


def go_value(value: Any) -> str:
    """Render a value the way Go's field errors print it (``%#v``-like)."""
    if isinstance(value, str):
        return json.dumps(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@dataclass(frozen=True)
class FieldError:
    """One field problem, as apimachinery's ``field.Error``."""

    field: str
    detail: str
    value: str | None = None  # already rendered; None for "Required value" errors

    @property
    def reason(self) -> str:
        return "FieldValueRequired" if self.value is None else "FieldValueInvalid"

    @property
    def message(self) -> str:
        head = "Required value" if self.value is None else f"Invalid value: {self.value}"
        return f"{head}: {self.detail}" if self.detail else head

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class ApiError(Exception):
    """A request failure with the Status body the real server would send."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = dict(details) if details is not None else None

    def status(self) -> JsonObject:
        body: JsonObject = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
        }
        if self.details is not None:
            body["details"] = self.details
        body["code"] = self.code
        return body


def _details(name: str, group: str, kind: str) -> JsonObject:
    details: JsonObject = {"name": name}
    if group:
        details["group"] = group
    details["kind"] = kind
    return details


def not_found(group: str, plural: str, name: str) -> ApiError:
    return ApiError(
        404,
        "NotFound",
        f'{qualified(group, plural)} "{name}" not found',
        _details(name, group, plural),
    )


def already_exists(group: str, plural: str, name: str) -> ApiError:
    return ApiError(
        409,
        "AlreadyExists",
        f'{qualified(group, plural)} "{name}" already exists',
        _details(name, group, plural),
    )


def conflict(group: str, plural: str, name: str, why: str = OPTIMISTIC_LOCK_MESSAGE) -> ApiError:
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {qualified(group, plural)} "{name}": {why}',
        _details(name, group, plural),
    )


def invalid(group: str, kind: str, name: str, errors: Sequence[FieldError]) -> ApiError:
    """422 Invalid.

    ``kind`` is the Kind (``Lease``) for validation errors; the real server passes the
    resource plural instead for the missing-resourceVersion check, which then reads
    ``leases.coordination.k8s.io "x" is invalid: ...``.
    """
    joined = str(errors[0]) if len(errors) == 1 else "[" + ", ".join(map(str, errors)) + "]"
    details = _details(name, group, kind)
    details["causes"] = [{"reason": e.reason, "message": e.message, "field": e.field} for e in errors]
    return ApiError(
        422,
        "Invalid",
        f'{_group_kind(group, kind)} "{name}" is invalid: {joined}',
        details,
    )


def _group_kind(group: str, kind: str) -> str:
    return f"{kind}.{group}" if group else kind


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def resource_not_found() -> ApiError:
    return ApiError(404, "NotFound", "the server could not find the requested resource", {})


def method_not_allowed() -> ApiError:
    return ApiError(
        405,
        "MethodNotAllowed",
        "the server does not allow this method on the requested resource",
        {},
    )


def expired(message: str) -> ApiError:
    return ApiError(410, "Expired", message)


def too_large_resource_version(requested: int, current: int) -> ApiError:
    return ApiError(
        504,
        "Timeout",
        f"Too large resource version: {requested}, current: {current}",
        {
            "causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
            "retryAfterSeconds": 1,
        },
    )


def unsupported_media_type(content_type: str, accepted: Sequence[str]) -> ApiError:
    return ApiError(
        415,
        "UnsupportedMediaType",
        f"the body of the request was in an unknown format - accepted media types include: {', '.join(accepted)}",
    )


def injected(code: int) -> ApiError:
    """The error a paused-for-faults lab server answers with (test plumbing)."""
    reasons = {
        429: ("TooManyRequests", "the server has received too many requests and has asked us to try again later"),
        500: ("InternalError", "Internal error occurred: injected fault"),
        503: ("ServiceUnavailable", "the server is currently unable to handle the request"),
        504: (
            "Timeout",
            "the server was unable to return a response in the time allotted, but may still be processing the request",
        ),
    }
    reason, message = reasons.get(code, ("InternalError", "Internal error occurred: injected fault"))
    return ApiError(code, reason, message, {})
