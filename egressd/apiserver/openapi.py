"""OpenAPI v3 validation of custom resources, as the real kube-apiserver applies it.

What a real server does with a custom resource on its way to storage, and the
function here that does the same:

1. **Decoding** (:func:`prune_object`): unknown fields are dropped (pruned),
   unless a node says ``x-kubernetes-preserve-unknown-fields``; nulls in
   fields that are not ``nullable`` are dropped; ``default`` values are filled
   in. The paths of the dropped fields come back: with
   ``?fieldValidation=Strict`` they fail the request, by default (``Warn``)
   they become warnings. ``apiVersion``, ``kind`` and ``metadata`` at the root
   are left to the server (unknown ``metadata`` fields are dropped as the
   typed ObjectMeta decoding drops them).
2. **Validation** (:func:`validate`) against the ``openAPIV3Schema``: the
   validators of kube-openapi (type, format, string, number, array, enum,
   object, ``allOf``/``anyOf``/``oneOf``/``not``) in their order, their
   messages turned into field errors as the apiextensions server turns them,
   wording included::

       spec.egressGateway.egressIPs[0]: Invalid value: "1.2.3":
           spec.egressGateway.egressIPs[0] in body must be of type ipv4: "1.2.3"

   On updates errors of a node whose value did not change are dropped
   ("ratcheting", on by default since Kubernetes 1.30).
3. **List types** (:func:`validate_list_types`): ``x-kubernetes-list-type:
   set`` lists may not repeat an item, ``map`` lists may not repeat a key.

:func:`structural_errors` gives the structural-schema rules a CRD must meet.

Formats: those the real server supports for CRDs are kept, the others are
ignored as there. Checked: ``ipv4``, ``ipv6``, ``cidr`` (Go's parsers,
leading zeros tolerated), ``date-time``, ``date``, ``uuid`` (3, 4, 5),
``byte``, ``hexcolor``, ``password``; accepted unchecked: ``uri``,
``email``, ``hostname``, ``mac``, ``isbn``, ``creditcard``, ``ssn``,
``rgbcolor``, ``duration``, ``bsonobjectid``. Patterns are Go (RE2) regular
expressions run with Python's ``re`` after translating ``$`` and ``\\z``
(lookarounds and backreferences, which RE2 lacks, are invalid patterns);
Unicode classes (``\\pL``) do not compile here and fail as invalid too.

Not implemented: ``x-kubernetes-validations`` (CEL rules), the ObjectMeta
checks of ``x-kubernetes-embedded-resource`` objects, the rules a CRD's
``x-kubernetes-list-map-keys`` must follow, and conversion between versions
(each version's schema applies to the objects sent to it).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Final

from egressd.apiserver.errors import FieldError, go_float, go_quote, go_value

Schema = Mapping[str, Any]

#: Fields at the root of every object that the server, not the schema, looks after.
META_FIELDS: Final = frozenset({"apiVersion", "kind", "metadata"})
#: The JSON fields of ``metav1.ObjectMeta``; others are dropped on decoding.
OBJECT_META_FIELDS: Final = frozenset(
    {
        "name",
        "generateName",
        "namespace",
        "selfLink",
        "uid",
        "resourceVersion",
        "generation",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "labels",
        "annotations",
        "ownerReferences",
        "finalizers",
        "managedFields",
    }
)


class _Missing:
    """No old value to compare with (a create, or a value that cannot be correlated)."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final = _Missing()


# --------------------------------------------------------------------------- formats

_UUID = {
    "uuid": r"^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}\Z",
    "uuid3": r"^[0-9a-f]{8}-?[0-9a-f]{4}-?3[0-9a-f]{3}-?[0-9a-f]{4}-?[0-9a-f]{12}\Z",
    "uuid4": r"^[0-9a-f]{8}-?[0-9a-f]{4}-?4[0-9a-f]{3}-?[89ab][0-9a-f]{3}-?[0-9a-f]{12}\Z",
    "uuid5": r"^[0-9a-f]{8}-?[0-9a-f]{4}-?5[0-9a-f]{3}-?[89ab][0-9a-f]{3}-?[0-9a-f]{12}\Z",
}
_DATE = re.compile(r"(\d{4})-(\d{2})-(\d{2})", re.ASCII)
_CLOCK = re.compile(r"^([0-9]{2}):([0-9]{2}):([0-9]{2})(.[0-9]+)?(z|([+-][0-9]{2}:[0-9]{2}))\Z", re.ASCII)
_BASE64 = re.compile(r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=|[A-Za-z0-9+/]{4})\Z")
_HEXCOLOR = re.compile(r"^#?([0-9a-fA-F]{3}|[0-9a-fA-F]{6})\Z")


def _decimal(text: str, limit: int) -> int | None:
    """Go's ``dtoi`` as the IP parsers use it: ASCII digits only, value at most ``limit``."""
    if not text or not all("0" <= c <= "9" for c in text):
        return None
    value = int(text)
    return value if value <= limit else None


def _ipv4(text: str) -> bool:
    """Go 1.16's ``parseIPv4`` (Kubernetes' "sloppy" parser): leading zeros allowed."""
    parts = text.split(".")
    return len(parts) == 4 and all(_decimal(p, 255) is not None for p in parts)


def _ipv6(text: str) -> bool:
    """Go's ``parseIPv6``: no zone; an embedded IPv4 tail may have leading zeros."""
    if "%" in text or ":" not in text:
        return False
    head, _, tail = text.rpartition(":")
    if "." in tail:
        if not _ipv4(tail):
            return False
        text = head + ":" + ".".join(str(int(p)) for p in tail.split("."))
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _parse_ip(text: str) -> bool:
    """``net.ParseIP``: the first separator decides the family."""
    for char in text:
        if char == ".":
            return _ipv4(text)
        if char == ":":
            return _ipv6(text)
    return False


def _cidr(text: str) -> bool:
    """``netutils.ParseCIDRSloppy``: an address, '/', a prefix length within the family's bits."""
    address, slash, length = text.partition("/")
    if not slash:
        return False
    bits = 32 if _ipv4(address) else 128 if _ipv6(address) else 0
    return bits > 0 and _decimal(length, bits) is not None


def _date(text: str) -> bool:
    """Go's ``time.Parse("2006-01-02")``: two-digit month and day, a day the month has."""
    match = _DATE.fullmatch(text)
    if not match:
        return False
    year, month, day = (int(g) for g in match.groups())
    if not 1 <= month <= 12:
        return False
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    days = [31, 29 if leap else 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31][month - 1]
    return 1 <= day <= days


def _date_time(text: str) -> bool:
    """kube-openapi's ``IsDateTime``: a date, 'T', a clock time with a zone (case-insensitive)."""
    if len(text) < 4:
        return False
    parts = text.lower().split("t")
    if len(parts) < 2 or not _date(parts[0]):
        return False
    match = _CLOCK.match(parts[1])
    return match is not None and match[1] <= "23" and match[2] <= "59" and match[3] <= "59"


def _matches(pattern: str, flags: int = 0) -> Callable[[str], bool]:
    compiled = re.compile(pattern, flags)
    return lambda text: compiled.match(text) is not None


def _base64(text: str) -> bool:
    if not _BASE64.match(text):
        return False
    try:
        base64.b64decode(text, validate=True)
    except binascii.Error:
        return False
    return True


def _anything(_: str) -> bool:
    return True


#: Format names (without '-') the real server keeps in CRD schemas; others are ignored.
SUPPORTED_FORMATS: Final = frozenset(
    {
        "bsonobjectid",
        "uri",
        "email",
        "hostname",
        "ipv4",
        "ipv6",
        "cidr",
        "mac",
        "uuid",
        "uuid3",
        "uuid4",
        "uuid5",
        "isbn",
        "isbn10",
        "isbn13",
        "creditcard",
        "ssn",
        "hexcolor",
        "rgbcolor",
        "byte",
        "password",
        "date",
        "duration",
        "datetime",
    }
)
#: The checks of the supported formats; a supported format missing here is accepted unchecked.
FORMAT_CHECKS: Final[Mapping[str, Callable[[str], bool]]] = {
    "ipv4": lambda text: _parse_ip(text) and "." in text,
    "ipv6": lambda text: _parse_ip(text) and ":" in text,
    "cidr": _cidr,
    "datetime": _date_time,
    "date": _date,
    **{name: _matches(pattern, re.IGNORECASE) for name, pattern in _UUID.items()},
    "byte": _base64,
    "hexcolor": _matches(_HEXCOLOR.pattern),
    "password": _anything,
}


def schema_format(schema: Schema) -> str:
    """The node's format as the real server keeps it: "" when not supported for CRDs."""
    name = schema.get("format")
    if not isinstance(name, str) or name.replace("-", "") not in SUPPORTED_FORMATS:
        return ""
    return name


def check_format(name: str, text: str) -> bool:
    """Whether ``text`` is of format ``name`` (unchecked formats pass)."""
    return FORMAT_CHECKS.get(name.replace("-", ""), _anything)(text)


@lru_cache(maxsize=256)
def go_regex(pattern: str) -> re.Pattern[str]:
    """A Go (RE2) pattern as a Python one: ``$`` and ``\\z`` end the text only
    (Python's ``$`` also matches before a final newline); ``\\d``, ``\\s``,
    ``\\w`` are ASCII as in Go. Raises ``re.error`` if it does not compile,
    or uses what RE2 lacks (lookarounds, backreferences)."""
    out: list[str] = []
    in_class = False
    multiline = re.search(r"\(\?[a-zA-Z]*m", pattern) is not None
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\" and i + 1 < len(pattern):
            escaped = pattern[i + 1]
            if escaped in "123456789":
                raise re.error(f"invalid escape sequence: `\\{escaped}`")  # RE2 has no backreferences
            out.append("\\Z" if escaped == "z" and not in_class else char + escaped)
            i += 2
            continue
        if char == "(" and not in_class and pattern.startswith(("(?=", "(?!", "(?<=", "(?<!"), i):
            lookaround = pattern[i : i + (4 if pattern[i + 2] == "<" else 3)]
            raise re.error(f"invalid or unsupported Perl syntax: `{lookaround}`")  # nor lookarounds
        if in_class:
            in_class = char != "]" or out[-1] == "["
        elif char == "[":
            in_class = True
        elif char == "$" and not multiline:
            char = "\\Z"
        out.append(char)
        i += 1
    return re.compile("".join(out), re.ASCII)


# --------------------------------------------------------------------------- kube-openapi results


@dataclass(frozen=True)
class _Issue:
    """One error of kube-openapi's validator, before it becomes a field error.

    ``code`` says how the apiextensions server converts it: required, enum,
    too_long, max_items, max_properties, type, other (``field.Invalid``) and
    composite (the anyOf/oneOf/allOf/not summaries, which name no field).
    """

    code: str
    name: str
    message: str
    value: Any = None
    valid: Any = None
    values: tuple[Any, ...] = ()


@dataclass
class _Result:
    issues: list[_Issue] = field(default_factory=list)
    matches: int = 0  # kube-openapi's MatchCount: picks the anyOf/oneOf branch whose errors are shown

    def add(self, *issues: _Issue) -> None:
        for issue in issues:  # kube-openapi reports a message once per result
            if all(issue.message != seen.message for seen in self.issues):
                self.issues.append(issue)

    def merge(self, other: _Result | None) -> None:
        if other is not None:
            self.add(*other.issues)
            self.matches += other.matches


def _fail(issue: _Issue) -> _Result:
    return _Result([issue])


def _invalid_type(path: str, expected: str, value: str) -> _Issue:
    return _Issue("type", path, f"{path} in body must be of type {expected}: {go_quote(value)}", value)


def _json_type(value: Any) -> tuple[str, str]:
    """kube-openapi's type and format of a decoded JSON value."""
    if isinstance(value, bool):
        return "boolean", ""
    if isinstance(value, int):
        return "integer", "int64"
    if isinstance(value, float):
        return "number", "float64"
    if isinstance(value, str):
        return "string", ""
    if isinstance(value, list):
        return "array", ""
    return "object", ""


def _types(schema: Schema) -> list[str]:
    if schema.get("x-kubernetes-int-or-string"):
        return ["integer", "string"]
    declared = schema.get("type")
    return [declared] if isinstance(declared, str) and declared else []


def _json_integer(value: float) -> bool:
    """swag's ``IsFloat64AJSONInteger``: integral, within +-2^53."""
    return math.isfinite(value) and abs(value) <= 2**53 and abs(value - round(value)) < 1e-9


def json_equal(a: Any, b: Any) -> bool:
    """Go's ``reflect.DeepEqual`` of decoded JSON: 1 and 1.0 and True differ."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def _enum_equal(value: Any, allowed: Any) -> bool:
    """kube-openapi's enum comparison: equal after converting to the enum value's Go type."""
    if isinstance(value, bool) or isinstance(allowed, bool):
        return value is allowed
    if isinstance(value, (int, float)) and isinstance(allowed, (int, float)):
        return (int(value) if isinstance(allowed, int) else float(value)) == allowed
    return json_equal(value, allowed)


class _Validator:
    """kube-openapi's ``SchemaValidator`` over plain schema mappings, with ratcheting."""

    def node(self, data: Any, schema: Schema, path: str, old: Any) -> _Result:
        """All validators of one schema node, in kube-openapi's order."""
        result = _Result()
        if data is None:
            result.merge(self.type(data, schema, path))
            result.merge(self.enum(data, schema, path))
            return self.ratchet(result, data, old)
        checks: list[Callable[[], _Result | None]] = []
        if _types(schema) or schema_format(schema):
            checks.append(lambda: self.type(data, schema, path))
        checks.append(lambda: self.junctions(data, schema, path, old))
        if isinstance(data, str):
            checks.append(lambda: self.string(data, schema, path))
            if schema_format(schema):
                checks.append(lambda: self.format(data, schema, path))
        if isinstance(data, (int, float)) and not isinstance(data, bool):
            checks.append(lambda: self.number(data, schema, path))
        if isinstance(data, list):
            checks.append(lambda: self.array(data, schema, path, old))
        checks.append(lambda: self.enum(data, schema, path))
        if isinstance(data, dict):
            checks.append(lambda: self.object(data, schema, path, old))
        for check in checks:
            result.merge(check())
            result.matches += 1
        result.matches += 1
        return self.ratchet(result, data, old)

    @staticmethod
    def ratchet(result: _Result, data: Any, old: Any) -> _Result:
        """An update keeps an invalid value it does not change (CRDValidationRatcheting)."""
        if result.issues and old is not MISSING and json_equal(old, data):
            return _Result(matches=result.matches)
        return result

    @staticmethod
    def type(data: Any, schema: Schema, path: str) -> _Result | None:
        types, fmt = _types(schema), schema_format(schema)
        if not types and not fmt:
            return None
        ok = _Result(matches=1)
        if data is None:
            if types and "null" not in types and not schema.get("nullable"):
                return _fail(_invalid_type(path, ",".join(types), "null"))
            return ok
        json_type, json_format = _json_type(data)
        float_int = json_type == "number" and _json_integer(data) and "integer" in types
        int_float = json_type == "integer" and "number" in types
        scalar = not isinstance(data, (str, list))
        if scalar and fmt and not (json_type in types or json_format == fmt or float_int or int_float):
            return _fail(_invalid_type(path, fmt, json_format))
        if not ("number" in types or "integer" in types) and fmt and not scalar:
            return ok  # a formatted string node: the format validator decides
        if not (json_type in types or float_int or int_float):
            return _fail(_invalid_type(path, ",".join(types), json_type))
        return ok

    def junctions(self, data: Any, schema: Schema, path: str, old: Any) -> _Result:
        """allOf, anyOf, oneOf and not (kube-openapi's schemaPropsValidator)."""
        result = _Result()
        any_of = schema.get("anyOf") or []
        if any_of:
            self._any_of(result, data, any_of, path, old)
        one_of = schema.get("oneOf") or []
        if one_of:
            self._one_of(result, data, one_of, path, old)
        all_of = schema.get("allOf") or []
        if all_of:
            self._all_of(result, data, all_of, path, old)
        not_schema = schema.get("not")
        if isinstance(not_schema, Mapping) and not self.node(data, not_schema, path, old).issues:
            result.add(_Issue("composite", path, f"{go_quote(path)} must not validate the schema (not)"))
        result.matches += 1
        return result

    def _any_of(self, result: _Result, data: Any, branches: Sequence[Schema], path: str, old: Any) -> None:
        """anyOf: the first branch that validates; else the issues of the one that matched best."""
        best: _Result | None = None
        success: _Result | None = None
        for branch in branches:
            outcome = self.node(data, branch, path, old)
            if not outcome.issues:
                success, best = outcome, None
                break
            if best is None or outcome.matches > best.matches:
                best = outcome
        if success is None:
            result.add(_Issue("composite", path, f"{go_quote(path)} must validate at least one schema (anyOf)"))
        result.merge(best if best is not None else success)

    def _one_of(self, result: _Result, data: Any, branches: Sequence[Schema], path: str, old: Any) -> None:
        """oneOf: exactly one branch validates; else the issues of the one that matched best."""
        valid, best, first = 0, None, None
        for branch in branches:
            outcome = self.node(data, branch, path, old)
            if not outcome.issues:
                valid += 1
                best = None
                first = first or outcome
            elif valid == 0 and (best is None or outcome.matches > best.matches):
                best = outcome
        if valid != 1:
            found = "Found none valid" if valid == 0 else f"Found {valid} valid alternatives"
            result.add(
                _Issue("composite", path, f"{go_quote(path)} must validate one and only one schema (oneOf). {found}")
            )
            result.merge(best)
        else:
            result.merge(first)

    def _all_of(self, result: _Result, data: Any, branches: Sequence[Schema], path: str, old: Any) -> None:
        """allOf: every branch validates; the issues of all of them."""
        valid = 0
        for branch in branches:
            outcome = self.node(data, branch, path, old)
            valid += not outcome.issues
            result.merge(outcome)
        if valid != len(branches):
            none = ". None validated" if valid == 0 else ""
            result.add(_Issue("composite", path, f"{go_quote(path)} must validate all the schemas (allOf){none}"))

    @staticmethod
    def string(data: str, schema: Schema, path: str) -> _Result | None:
        """maxLength, minLength, pattern; the first failure only (as kube-openapi)."""
        longest, shortest, pattern = schema.get("maxLength"), schema.get("minLength"), schema.get("pattern")
        if longest is not None and len(data) > longest:
            message = f"{path} in body should be at most {longest} chars long"
            return _fail(_Issue("too_long", path, message, data, longest))
        if shortest is not None and len(data) < shortest:
            return _fail(_Issue("other", path, f"{path} in body should be at least {shortest} chars long", data))
        if isinstance(pattern, str) and pattern:
            try:
                matched = go_regex(pattern).search(data) is not None
            except re.error as exc:
                message = f"{path} in body should match '{pattern}, but pattern is invalid: {exc}'"
                return _fail(_Issue("other", path, message, data))
            if not matched:
                return _fail(_Issue("other", path, f"{path} in body should match '{pattern}'", data))
        return None

    @staticmethod
    def format(data: str, schema: Schema, path: str) -> _Result | None:
        name = schema_format(schema)
        return None if check_format(name, data) else _fail(_invalid_type(path, name, data))

    @staticmethod
    def number(data: float, schema: Schema, path: str) -> _Result:
        """multipleOf, maximum, minimum; integers compare with integer bounds (truncated), as in Go."""
        result = _Result(matches=1)
        integral = isinstance(data, int)

        def shown(bound: float) -> str:
            return str(int(bound)) if integral else go_float(float(bound))

        factor = schema.get("multipleOf")
        if factor is not None:
            if factor <= 0:
                message = f"factor MultipleOf declared for {path} must be positive: {go_value(factor)}"
                result.add(_Issue("other", path, message, factor))
            else:
                whole = int(factor) if integral else factor
                if integral and whole == 0:
                    message = f"factor MultipleOf declared for {path} must be positive: 0"
                    result.add(_Issue("other", path, message, 0))
                elif (
                    (data % whole != 0)
                    if integral
                    else not _json_integer(1 / factor * data if factor < 1 else data / factor)
                ):
                    message = f"{path} in body should be a multiple of {shown(factor)}"
                    result.add(_Issue("other", path, message, data))
        for bound_key, exclusive_key, words in (
            ("minimum", "exclusiveMinimum", "greater than"),
            ("maximum", "exclusiveMaximum", "less than"),
        ):
            bound = schema.get(bound_key)
            if bound is None:
                continue
            exclusive = bool(schema.get(exclusive_key))
            limit = int(bound) if integral else float(bound)
            below = data < limit or (exclusive and data == limit)
            above = data > limit or (exclusive and data == limit)
            if below if bound_key == "minimum" else above:
                relation = words if exclusive else f"{words} or equal to"
                result.add(_Issue("other", path, f"{path} in body should be {relation} {shown(bound)}", data))
        return result

    def array(self, data: list[Any], schema: Schema, path: str, old: Any) -> _Result:
        result = _Result()
        items = schema.get("items")
        if isinstance(items, Mapping):
            olds = _correlate_items(data, schema, old)
            for i, item in enumerate(data):
                result.merge(self.node(item, items, f"{path}[{i}]", olds[i]))
        fewest, most = schema.get("minItems"), schema.get("maxItems")
        if fewest is not None and len(data) < fewest:
            result.add(_Issue("other", path, f"{path} in body should have at least {fewest} items", len(data)))
        if most is not None and len(data) > most:
            message = f"{path} in body should have at most {most} items"
            result.add(_Issue("max_items", path, message, len(data), most))
        if schema.get("uniqueItems") and any(json_equal(a, b) for i, a in enumerate(data) for b in data[i + 1 :]):
            result.add(_Issue("other", path, f"{path} in body shouldn't contain duplicates"))
        result.matches += 1
        return result

    @staticmethod
    def enum(data: Any, schema: Schema, path: str) -> _Result | None:
        allowed = schema.get("enum")
        if not allowed or any(data is not None and _enum_equal(data, a) for a in allowed):
            return None
        message = f"{path} in body should be one of [{' '.join(map(_go_plain, allowed))}]"
        return _fail(_Issue("enum", path, message, data, values=tuple(allowed)))

    def object(self, data: dict[str, Any], schema: Schema, path: str, old: Any) -> _Result:
        result = _Result()
        properties: Mapping[str, Schema] = schema.get("properties") or {}
        result.add(*_property_count_issues(data, schema, path))
        extra = schema.get("additionalProperties")
        if extra is False:
            for key in data:
                if key not in properties:
                    result.add(_Issue("other", path, f"{path}.{key} in body is a forbidden property", key))
        elif isinstance(extra, Mapping):
            for key, value in data.items():
                if key not in properties:
                    result.merge(self.node(value, extra, f"{path}.{key}", _child(old, key)))
        for name, sub in properties.items():
            if name in data:
                result.merge(self.node(data[name], sub, f"{path}.{name}" if path else name, _child(old, name)))
        for name in schema.get("required") or ():
            if name not in data:
                result.add(_Issue("required", f"{path}.{name}", f"{path}.{name} in body is required"))
        result.matches += 1
        return result


def _property_count_issues(data: dict[str, Any], schema: Schema, path: str) -> list[_Issue]:
    """minProperties and maxProperties."""
    issues: list[_Issue] = []
    fewest, most = schema.get("minProperties"), schema.get("maxProperties")
    if fewest is not None and len(data) < fewest:
        message = f"{path} in body should have at least {fewest} properties"
        issues.append(_Issue("other", path, message, len(data), fewest))
    if most is not None and len(data) > most:
        message = f"{path} in body should have at most {most} properties"
        issues.append(_Issue("max_properties", path, message, len(data), most))
    return issues


def _go_plain(value: Any) -> str:
    """Go's ``%v`` of an enum value inside the ``should be one of [...]`` text."""
    if isinstance(value, str):
        return value
    return go_value(value)


def _child(old: Any, key: str) -> Any:
    return old[key] if isinstance(old, dict) and key in old else MISSING


def _correlate_items(data: list[Any], schema: Schema, old: Any) -> list[Any]:
    """The old value of each item: only ``map`` lists correlate items (by their keys)."""
    if schema.get("x-kubernetes-list-type") != "map" or not isinstance(old, list):
        return [MISSING] * len(data)
    keys = list(schema.get("x-kubernetes-list-map-keys") or ())

    def key_of(item: Any) -> str | None:
        if not isinstance(item, dict):
            return None
        return json.dumps([item.get(k) for k in keys], sort_keys=True)

    by_key = {key_of(item): item for item in old if key_of(item) is not None}
    return [by_key.get(key_of(item), MISSING) if key_of(item) is not None else MISSING for item in data]


def _field(prefix: str | None, name: str) -> str:
    """apimachinery's ``fldPath.Child(name)`` printed; a missing path prints as ``<nil>``."""
    name = name.removeprefix(".") if name not in ("", ".") else ""
    if not name:
        return prefix if prefix is not None else "<nil>"
    return f"{prefix}.{name}" if prefix is not None else name


def _to_field_error(issue: _Issue, prefix: str | None) -> FieldError:
    """The apiextensions server's conversion of one kube-openapi error."""
    if issue.code == "composite":
        return FieldError(prefix if prefix is not None else "<nil>", issue.message, go_value(""), "FieldValueInvalid")
    where = _field(prefix, issue.name)
    value = go_value(issue.value if issue.value is not None else "")
    if issue.code == "required":
        return FieldError(where, "", None, "FieldValueRequired")
    if issue.code == "enum":
        supported = [v if isinstance(v, str) else json.dumps(v, separators=(",", ":")) for v in issue.values]
        detail = "supported values: " + ", ".join(map(go_quote, supported)) if supported else ""
        return FieldError(where, detail, go_value(issue.value), "FieldValueNotSupported")
    if issue.code == "too_long":
        # apimachinery's field.TooLong wording since v1.32 (it counts characters all the same)
        detail = f"may not be more than {issue.valid} bytes" if issue.valid is not None else "value is too long"
        return FieldError(where, detail, value, "FieldValueTooLong")
    if issue.code in ("max_items", "max_properties"):
        return FieldError(where, f"must have at most {issue.valid} items", str(issue.value), "FieldValueTooMany")
    if issue.code == "type":
        return FieldError(where, issue.message, value, "FieldValueTypeInvalid")
    return FieldError(where, issue.message, value, "FieldValueInvalid")


def validate(value: Any, schema: Schema | None, *, path: str | None = None, old: Any = MISSING) -> list[FieldError]:
    """Errors of ``value`` against ``schema`` as the real server reports them.

    ``path`` is the field path of ``value`` in the object (None for the whole
    object, ``"status"`` for the status subresource): it prefixes the fields
    of the errors, while the messages keep kube-openapi's paths relative to
    ``value``. ``old`` (updates) drops the errors of unchanged values. The
    root meta fields are the caller's: pass the object without them.
    """
    if not schema:
        return []
    result = _Validator().node(value, schema, "", old)
    return [_to_field_error(issue, path) for issue in result.issues]


# --------------------------------------------------------------------------- list types


def _key_path(path: str | None, key: str) -> str:
    return f"{path}.{key}" if path is not None else key


def _set_duplicates(items: list[Any]) -> list[int]:
    """The index of each item's second appearance (later ones are not reported again)."""
    seen: dict[str, int] = {}
    repeated: list[int] = []
    for i, item in enumerate(items):
        marker = json.dumps([type(item).__name__, item], sort_keys=True)
        seen[marker] = seen.get(marker, 0) + 1
        if seen[marker] == 2:
            repeated.append(i)
    return repeated


def _list_map_errors(path: str, schema: Schema, items: list[Any]) -> list[FieldError]:
    for i, item in enumerate(items):
        if item is not None and not isinstance(item, dict):
            return [FieldError(f"{path}[{i}]", "must be an object for an array of list-type map", go_value(item))]
    keys = list(schema.get("x-kubernetes-list-map-keys") or ())
    values = [{k: item[k] for k in keys if k in item} if isinstance(item, dict) else {} for item in items]
    return [FieldError(f"{path}[{i}]", "", go_value(values[i]), "FieldValueDuplicate") for i in _set_duplicates(values)]


def _list_types(value: Any, schema: Schema | None, path: str | None) -> Iterator[FieldError]:
    if schema is None:
        return
    if isinstance(value, dict):
        properties: Mapping[str, Schema] = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            if isinstance(extra, Mapping):
                yield from _list_types(item, extra, f"{path or ''}[{key}]")
            if key in properties:
                yield from _list_types(item, properties[key], _key_path(path, key))
    elif isinstance(value, list):
        where = path or ""
        list_type = schema.get("x-kubernetes-list-type")
        if list_type == "set":
            for i in _set_duplicates(value):
                yield FieldError(f"{where}[{i}]", "", go_value(value[i]), "FieldValueDuplicate")
        elif list_type == "map":
            yield from _list_map_errors(where, schema, value)
        items = schema.get("items")
        if isinstance(items, Mapping):
            for i, item in enumerate(value):
                yield from _list_types(item, items, f"{where}[{i}]")


def validate_list_types(value: Any, schema: Schema | None, *, path: str | None = None) -> list[FieldError]:
    """Repeated items of ``set`` lists and repeated keys of ``map`` lists."""
    return list(_list_types(value, schema, path))


# --------------------------------------------------------------------------- decoding


def _record(paths: list[str], prefix: str, key: str) -> None:
    paths.append(f"{prefix}.{key}" if prefix else key)


def _prune(value: Any, schema: Schema | None, prefix: str, paths: list[str]) -> None:
    if schema is not None and schema.get("x-kubernetes-preserve-unknown-fields"):
        _keep_unknown(value, schema, prefix, paths)
        return
    if isinstance(value, dict):
        if schema is None:
            for key in list(value):
                _record(paths, prefix, key)
                del value[key]
            return
        embedded = schema.get("x-kubernetes-embedded-resource")
        properties: Mapping[str, Schema] = schema.get("properties") or {}
        for key in list(value):
            here = f"{prefix}.{key}" if prefix else key
            if embedded and key in META_FIELDS:
                continue
            if key in properties:
                _prune(value[key], properties[key], here, paths)
            elif "additionalProperties" in schema:
                extra = schema["additionalProperties"]
                _prune(value[key], extra if isinstance(extra, Mapping) else None, here, paths)
            else:
                if key not in META_FIELDS or prefix:
                    _record(paths, prefix, key)
                del value[key]
    elif isinstance(value, list):
        items = schema.get("items") if schema is not None else None
        for i, item in enumerate(value):
            _prune(item, items, f"{prefix}[{i}]", paths)


def _keep_unknown(value: Any, schema: Schema | None, prefix: str, paths: list[str]) -> None:
    """Below ``x-kubernetes-preserve-unknown-fields``: unknown fields stay, known ones are pruned."""
    if schema is None:
        return
    if isinstance(value, dict):
        properties: Mapping[str, Schema] = schema.get("properties") or {}
        for key in list(value):
            here = f"{prefix}.{key}" if prefix else key
            if schema.get("x-kubernetes-embedded-resource") and key in META_FIELDS:
                continue
            if key in properties:
                _prune(value[key], properties[key], here, paths)
            elif "additionalProperties" in schema:
                extra = schema["additionalProperties"]
                _prune(value[key], extra if isinstance(extra, Mapping) else None, here, paths)
    elif isinstance(value, list):
        items = schema.get("items")
        for i, item in enumerate(value):
            _keep_unknown(item, items if isinstance(items, Mapping) else None, f"{prefix}[{i}]", paths)


def prune(obj: dict[str, Any], schema: Schema | None) -> list[str]:
    """Drop the fields of a resource that its schema does not know, in place;
    their paths, sorted (``spec.egressGateway.foo``, ``spec.selectors[0].bar``).
    ``apiVersion``, ``kind`` and ``metadata`` at the root are kept."""
    paths: list[str] = []
    _prune(obj, {**(schema or {}), "x-kubernetes-embedded-resource": True}, "", paths)
    return sorted(paths)


def _field_schema(schema: Schema | None, key: str) -> Schema | None:
    if schema is None:
        return None
    properties: Mapping[str, Schema] = schema.get("properties") or {}
    if key in properties:
        return properties[key]
    extra = schema.get("additionalProperties")
    return extra if isinstance(extra, Mapping) else None


def drop_nulls(value: Any, schema: Schema | None) -> None:
    """Remove nulls from fields that are neither ``nullable`` nor defaulted, in place."""
    if isinstance(value, dict):
        for key in list(value):
            sub = _field_schema(schema, key)
            if value[key] is None and sub is not None and not sub.get("nullable") and "default" not in sub:
                del value[key]
            else:
                drop_nulls(value[key], sub)
    elif isinstance(value, list):
        items = schema.get("items") if schema is not None else None
        for item in value:
            drop_nulls(item, items if isinstance(items, Mapping) else None)


def _null_to_default(value: Any, schema: Schema | None) -> bool:
    return value is None and schema is not None and "default" in schema and not schema.get("nullable")


def apply_defaults(value: Any, schema: Schema | None) -> None:
    """Fill in ``default`` values of absent (or non-nullable null) fields, in place."""
    if schema is None:
        return
    if isinstance(value, dict):
        _apply_object_defaults(value, schema)
    elif isinstance(value, list):
        items = schema.get("items")
        if not isinstance(items, Mapping):
            return
        for i, item in enumerate(value):
            if _null_to_default(item, items):
                value[i] = json.loads(json.dumps(items["default"]))
            apply_defaults(value[i], items)


def _apply_object_defaults(value: dict[str, Any], schema: Schema) -> None:
    """:func:`apply_defaults` on an object: its properties, then each of its
    fields by its property's or the additionalProperties' schema."""
    properties: Mapping[str, Schema] = schema.get("properties") or {}
    for key, sub in properties.items():
        if "default" in sub and (key not in value or _null_to_default(value[key], sub)):
            value[key] = json.loads(json.dumps(sub["default"]))
    extra = schema.get("additionalProperties")
    for key in list(value):
        if key in properties:
            apply_defaults(value[key], properties[key])
        elif isinstance(extra, Mapping):
            if _null_to_default(value[key], extra):
                value[key] = json.loads(json.dumps(extra["default"]))
            apply_defaults(value[key], extra)


def prune_object(obj: dict[str, Any], schema: Schema | None) -> list[str]:
    """What the real server's decoder does to a custom resource, in place:
    unknown ``metadata`` fields dropped, then :func:`prune`,
    :func:`drop_nulls`, :func:`apply_defaults`. Returns the dropped fields'
    paths (``metadata.x`` first, then the others sorted), which
    ``fieldValidation=Strict`` rejects. Without a schema nothing is pruned."""
    unknown: list[str] = []
    metadata = obj.get("metadata")
    if isinstance(metadata, dict):
        for key in [k for k in metadata if k not in OBJECT_META_FIELDS]:
            unknown.append(f"metadata.{key}")
            del metadata[key]
    if schema is None:
        return unknown
    unknown += prune(obj, schema)
    drop_nulls(obj, schema)
    apply_defaults(obj, schema)
    return unknown


def without_meta(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The object as the schema validates it here: without apiVersion, kind, metadata."""
    return {k: v for k, v in obj.items() if k not in META_FIELDS}


# --------------------------------------------------------------------------- structural schemas

_INT_OR_STRING = [{"type": "integer"}, {"type": "string"}]
_JUNCTIONS = ("allOf", "anyOf", "oneOf")
_NESTED_FORBIDDEN: tuple[tuple[str, str], ...] = (
    ("type", "must be empty to be structural"),
    ("additionalProperties", "must be undefined to be structural"),
    ("default", "must be undefined to be structural"),
    ("title", "must be empty to be structural"),
    ("description", "must be empty to be structural"),
    ("nullable", "must be false to be structural"),
    ("x-kubernetes-preserve-unknown-fields", "must be false to be structural"),
    ("x-kubernetes-embedded-resource", "must be false to be structural"),
    ("x-kubernetes-int-or-string", "must be false to be structural"),
    ("x-kubernetes-list-map-keys", "must be empty to be structural"),
    ("x-kubernetes-list-type", "must be undefined to be structural"),
    ("x-kubernetes-map-type", "must be undefined to be structural"),
    ("x-kubernetes-validations", "must be empty to be structural"),
)


def _nested(schema: Schema, path: str) -> Iterator[FieldError]:
    """A schema under allOf/anyOf/oneOf/not may only hold value validations."""
    for key, why in _NESTED_FORBIDDEN:
        if (key in schema) if key == "default" else bool(schema.get(key)):
            yield FieldError(f"{path}.{key}", why, None, "FieldValueForbidden")
    if "metadata" in (schema.get("properties") or {}):
        yield FieldError(
            f"{path}.properties[metadata]", "must not be specified in a nested context", None, "FieldValueForbidden"
        )
    yield from _junction_errors(schema, path)
    items = schema.get("items")
    if isinstance(items, Mapping):
        yield from _nested(items, f"{path}.items")
    for name, sub in (schema.get("properties") or {}).items():
        if isinstance(sub, Mapping):
            yield from _nested(sub, f"{path}.properties[{name}]")


def _junction_errors(schema: Schema, path: str) -> Iterator[FieldError]:
    for junction in _JUNCTIONS:
        branches = schema.get(junction) or []
        skip_first = junction == "anyOf" and branches == _INT_OR_STRING
        if junction == "allOf" and branches and (branches[0].get("anyOf") or []) == _INT_OR_STRING:
            rest = {k: v for k, v in branches[0].items() if k != "anyOf"}
            yield from _nested(rest, f"{path}.allOf[0]")
            branches = branches[1:]
            offset = 1
        else:
            offset = 0
        if skip_first:
            continue
        for i, branch in enumerate(branches, start=offset):
            yield from _nested(branch, f"{path}.{junction}[{i}]")
    if isinstance(schema.get("not"), Mapping):
        yield from _nested(schema["not"], f"{path}.not")


def _completeness(branch: Schema, node: Schema | None, node_path: str, branch_path: str) -> Iterator[FieldError]:
    """Every field or array a value validation names must exist outside of value validations."""
    if node is None:
        yield FieldError(node_path, f"because it is defined in {branch_path}", None, "FieldValueRequired")
        return
    for junction in _JUNCTIONS:
        for i, sub in enumerate(branch.get(junction) or []):
            yield from _completeness(sub, node, node_path, f"{branch_path}.{junction}[{i}]")
    if isinstance(branch.get("not"), Mapping):
        yield from _completeness(branch["not"], node, node_path, f"{branch_path}.not")
    if isinstance(branch.get("items"), Mapping):
        items = node.get("items")
        yield from _completeness(
            branch["items"], items if isinstance(items, Mapping) else None, f"{node_path}.items", f"{branch_path}.items"
        )
    node_properties: Mapping[str, Schema] = node.get("properties") or {}
    for name, sub in (branch.get("properties") or {}).items():
        yield from _completeness(
            sub, node_properties.get(name), f"{node_path}.properties[{name}]", f"{branch_path}.properties[{name}]"
        )


def _structural(schema: Schema, level: str, path: str) -> Iterator[FieldError]:
    yield from _structural_children(schema, level, path)
    int_or_string = bool(schema.get("x-kubernetes-int-or-string"))
    preserve = bool(schema.get("x-kubernetes-preserve-unknown-fields"))
    if int_or_string and preserve:
        yield FieldError(
            f"{path}.x-kubernetes-preserve-unknown-fields",
            "must be false if x-kubernetes-int-or-string is true",
            "true",
        )
    yield from _junction_errors(schema, path)
    for junction in _JUNCTIONS:
        for i, branch in enumerate(schema.get(junction) or []):
            yield from _completeness(branch, schema, path, f"{path}.{junction}[{i}]")
    if isinstance(schema.get("not"), Mapping):
        yield from _completeness(schema["not"], schema, path, f"{path}.not")
    if schema.get("uniqueItems"):
        why = "uniqueItems cannot be set to true since the runtime complexity becomes quadratic"
        yield FieldError(f"{path}.uniqueItems", why, None, "FieldValueForbidden")
    if isinstance(schema.get("pattern"), str):
        try:
            go_regex(schema["pattern"])
        except re.error as exc:
            why = f"must be a valid regular expression, but isn't: {exc}"
            yield FieldError(f"{path}.pattern", why, go_value(schema["pattern"]))
    yield from _structural_type(schema, level, path, untyped_ok=int_or_string or preserve)


def _structural_children(schema: Schema, level: str, path: str) -> Iterator[FieldError]:
    """The structural errors of ``items``, ``properties`` and ``additionalProperties``."""
    types = schema.get("type") or ""
    items = schema.get("items")
    if types == "array" and not isinstance(items, Mapping):
        yield FieldError(f"{path}.items", "must be specified", None, "FieldValueRequired")
    if isinstance(items, Mapping):
        yield from _structural(items, "item", f"{path}.items")
    properties: Mapping[str, Schema] = schema.get("properties") or {}
    for name, sub in properties.items():
        yield from _structural(sub, "field", f"{path}.properties[{name}]")
    extra = schema.get("additionalProperties")
    if extra is not None:
        if level == "root":
            yield FieldError(
                f"{path}.additionalProperties", "must not be used at the root", None, "FieldValueForbidden"
            )
        if properties:
            yield FieldError(
                f"{path}.additionalProperties",
                "additionalProperties and properties are mutual exclusive",
                None,
                "FieldValueForbidden",
            )
        if isinstance(extra, Mapping):
            yield from _structural(extra, "field", f"{path}.additionalProperties")


def _structural_type(schema: Schema, level: str, path: str, *, untyped_ok: bool) -> Iterator[FieldError]:
    """The errors of ``type``: required unless ``untyped_ok`` (int-or-string or
    preserving unknown fields), object for an embedded resource and at the root."""
    types = schema.get("type") or ""
    if schema.get("x-kubernetes-embedded-resource") and types != "object":
        why = "must be object if x-kubernetes-embedded-resource is true"
        yield FieldError(f"{path}.type", why, go_value(types) if types else None)
    elif not types and not untyped_ok:
        where = {"root": "at the root", "item": "for specified array items", "field": "for specified object fields"}
        yield FieldError(f"{path}.type", f"must not be empty {where[level]}", None, "FieldValueRequired")
    if level == "root" and types and types != "object":
        yield FieldError(f"{path}.type", "must be object at the root", go_value(types))


def structural_errors(schema: Any, path: str) -> list[FieldError]:
    """Why ``schema`` is not a structural schema (empty when it is), sorted as
    the real server sorts them. ``path`` names the schema in the CRD
    (``spec.versions[0].schema.openAPIV3Schema``)."""
    if not isinstance(schema, Mapping):
        return [FieldError(path, "must be an object", go_value(schema))]
    return sorted(_structural(schema, "root", path), key=str)
