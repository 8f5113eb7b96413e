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

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

JsonObject = dict[str, Any]

OPTIMISTIC_LOCK_MESSAGE = "the object has been modified; please apply your changes to the latest version and try again"


def qualified(group: str, plural: str) -> str:
    """``leases.coordination.k8s.io`` for a grouped resource, ``pods`` for core."""
    return f"{plural}.{group}" if group else plural


_GO_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v"}


def go_quote(text: str) -> str:
    """``strconv.Quote``: double quotes, Go escapes, printable Unicode kept as is."""
    out = ['"']
    for char in text:
        if char in ('"', "\\"):
            out.append("\\" + char)
        elif char in _GO_ESCAPES:
            out.append(_GO_ESCAPES[char])
        elif char.isprintable():
            out.append(char)
        elif ord(char) < 0x80:
            out.append(f"\\x{ord(char):02x}")
        elif ord(char) <= 0xFFFF:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(f"\\U{ord(char):08x}")
    out.append('"')
    return "".join(out)


def go_float(value: float) -> str:
    """A float64 as Go's ``%v`` prints it: shortest digits, exponent from 1e+06 and below 1e-04."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == 0:
        return "-0" if math.copysign(1.0, value) < 0 else "0"
    sign, digit_tuple, exponent = Decimal(repr(value)).as_tuple()
    assert isinstance(exponent, int)
    digits = "".join(map(str, digit_tuple)).lstrip("0")
    stripped = digits.rstrip("0")
    exponent += len(digits) - len(stripped)
    point = len(stripped) + exponent  # digits before the decimal point (<= 0: leading zeros after it)
    head = "-" if sign else ""
    if not -4 <= point - 1 < 6:
        mantissa = stripped[0] + ("." + stripped[1:] if len(stripped) > 1 else "")
        return f"{head}{mantissa}e{'+' if point > 0 else '-'}{abs(point - 1):02d}"
    if point <= 0:
        return f"{head}0.{'0' * -point}{stripped}"
    if point >= len(stripped):
        return head + stripped + "0" * (point - len(stripped))
    return f"{head}{stripped[:point]}.{stripped[point:]}"


def _go_syntax(value: Any) -> str:
    """Go's ``%#v`` of a decoded JSON value (``map[string]interface {}{...}``)."""
    if value is None:
        return "interface {}(nil)"
    if isinstance(value, dict):
        items = ", ".join(f"{go_quote(str(k))}:{_go_syntax(v)}" for k, v in sorted(value.items()))
        return f"map[string]interface {{}}{{{items}}}"
    if isinstance(value, list):
        return f"[]interface {{}}{{{', '.join(_go_syntax(v) for v in value)}}}"
    return go_value(value)


def go_value(value: Any) -> str:
    """Render a value the way Go's field errors print it: ``%q`` for strings,
    ``%v`` for numbers and booleans, ``%#v`` for maps and lists."""
    if isinstance(value, str):
        return go_quote(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return go_float(value)
    if isinstance(value, (dict, list)):
        return _go_syntax(value)
    return str(value)


#: Cause reasons of apimachinery's ``field.ErrorType`` and the words their messages start with.
FIELD_ERROR_TYPES: Mapping[str, str] = {
    "FieldValueNotFound": "Not found",
    "FieldValueRequired": "Required value",
    "FieldValueDuplicate": "Duplicate value",
    "FieldValueInvalid": "Invalid value",
    "FieldValueNotSupported": "Unsupported value",
    "FieldValueForbidden": "Forbidden",
    "FieldValueTooLong": "Too long",
    "FieldValueTooMany": "Too many",
    "InternalError": "Internal error",
    "FieldValueTypeInvalid": "Invalid value",
}
#: Types whose message never shows the value.
_VALUE_HIDDEN = frozenset({"FieldValueRequired", "FieldValueForbidden", "FieldValueTooLong", "InternalError"})


@dataclass(frozen=True)
class FieldError:
    """One field problem, as apimachinery's ``field.Error``.

    ``type`` is the cause reason (a key of :data:`FIELD_ERROR_TYPES`); left
    empty it is ``FieldValueRequired`` when ``value`` is None, else
    ``FieldValueInvalid``. ``value`` is already rendered (:func:`go_value`);
    None shows no value.
    """

    field: str
    detail: str
    value: str | None = None
    type: str = ""

    @property
    def reason(self) -> str:
        if self.type:
            return self.type
        return "FieldValueRequired" if self.value is None else "FieldValueInvalid"

    @property
    def message(self) -> str:
        reason = self.reason
        head = FIELD_ERROR_TYPES[reason]
        if self.value is not None and reason not in _VALUE_HIDDEN:
            head = f"{head}: {self.value}"
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
        }
        if self.reason:  # an internal error (500) has none
            body["reason"] = self.reason
        if self.details is not None:
            body["details"] = self.details
        body["code"] = self.code
        return body


def _details(name: str, group: str, kind: str) -> JsonObject:
    """``metav1.StatusDetails``: empty name, group and kind are left out (omitempty)."""
    details: JsonObject = {"name": name} if name else {}
    if group:
        details["group"] = group
    if kind:
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
    distinct = list(dict.fromkeys(map(str, errors)))  # the real server's aggregate drops repeated messages
    joined = distinct[0] if len(distinct) == 1 else "[" + ", ".join(distinct) + "]"
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
    """An unknown resource of an API group version the server itself serves
    (``/api/v1/things``): a Status."""
    return ApiError(404, "NotFound", "the server could not find the requested resource", {})


PAGE_NOT_FOUND = "404 page not found\n"


class PathNotFound(ApiError):
    """A path no API serves: an unknown group or version, or the resource of
    a CustomResourceDefinition that does not exist (or was deleted). The real
    server hands these to Go's ``http.NotFound``, which answers plain text
    :data:`PAGE_NOT_FOUND`, not a Status."""

    def __init__(self) -> None:
        super().__init__(404, "NotFound", PAGE_NOT_FOUND.strip())


def path_not_found() -> PathNotFound:
    return PathNotFound()


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
        f"Timeout: Too large resource version: {requested}, current: {current}",
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
