"""Label and field selectors as the Kubernetes API parses and applies them.

Label selector grammar (comma-separated requirements, all must hold)::

    key=value  key==value  key!=value  key in (a,b)  key notin (a,b)  key  !key

``!=`` and ``notin`` also match objects that do not carry the key, as on a
real server. Field selectors support ``=``, ``==`` and ``!=`` on the field
labels a resource declares (always ``metadata.name`` and
``metadata.namespace``); any other field is rejected with the real message:
``field label not supported: <field>`` for the kinds with a field label
conversion of their own (core kinds, Events) and custom resources,
``"<field>" is not a known field selector: only "metadata.name",
"metadata.namespace"`` for the other built-ins (Leases, CRDs). A parse failure raises
:class:`~egressd.apiserver.errors.ApiError` 400 BadRequest.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from egressd.apiserver.errors import bad_request

_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
_SET = re.compile(r"^(?P<key>\S+)\s+(?P<op>in|notin)\s*\((?P<values>[^()]*)\)$")
_FIELD_TERM = re.compile(r"^(?P<field>[^=!]+)(?P<op>!=|==|=)(?P<value>.*)$")
_EQ = re.compile(r"^(?P<key>[^=!\s]+)\s*(?P<op>==|=|!=)\s*(?P<value>\S*)$")


@dataclass(frozen=True)
class Requirement:
    """One label requirement; ``op`` is one of =, !=, in, notin, exists, !."""

    key: str
    op: str
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.op == "exists":
            return present
        if self.op == "!":
            return not present
        if self.op in ("=", "in"):
            return present and value in self.values
        # "!=" and "notin": absent keys match, as on a real server
        return not present or value not in self.values


@dataclass(frozen=True)
class LabelSelector:
    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        labels = labels or {}
        return all(r.matches(labels) for r in self.requirements)


def _split_top_level(text: str) -> list[str]:
    parts: list[str] = []
    depth = 0
    current: list[str] = []
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def _check_key(key: str) -> str:
    if len(key) > 317 or not _KEY.match(key):
        raise bad_request(f"unable to parse requirement: invalid label key {key!r}")
    return key


def _check_value(value: str) -> str:
    if len(value) > 63 or not _VALUE.match(value):
        raise bad_request(f"unable to parse requirement: invalid label value: {value!r}")
    return value


def parse_label_selector(text: str | None) -> LabelSelector:
    """Parse a ``labelSelector`` query value; empty means everything."""
    if not text or not text.strip():
        return LabelSelector()
    requirements: list[Requirement] = []
    for raw in _split_top_level(text):
        part = raw.strip()
        if not part:
            raise bad_request(f"unable to parse requirement: found '', expected: identifier in {text!r}")
        if part.startswith("!"):
            requirements.append(Requirement(_check_key(part[1:].strip()), "!"))
            continue
        match = _SET.match(part)
        if match:
            values = [v.strip() for v in match["values"].split(",")]
            requirements.append(
                Requirement(
                    _check_key(match["key"]),
                    match["op"],
                    frozenset(_check_value(v) for v in values),
                )
            )
            continue
        match = _EQ.match(part)
        if match:
            op = "=" if match["op"] in ("=", "==") else "!="
            requirements.append(
                Requirement(
                    _check_key(match["key"]),
                    op,
                    frozenset({_check_value(match["value"])}),
                )
            )
            continue
        if " " not in part and not any(c in part for c in "=!()"):
            requirements.append(Requirement(_check_key(part), "exists"))
            continue
        raise bad_request(f"unable to parse requirement: {part!r}")
    return LabelSelector(tuple(requirements))


@dataclass(frozen=True)
class FieldTerm:
    field: str
    value: str
    negate: bool


@dataclass(frozen=True)
class FieldSelector:
    terms: tuple[FieldTerm, ...] = ()

    def matches(self, obj: Mapping[str, Any]) -> bool:
        return all((field_value(obj, t.field) == t.value) != t.negate for t in self.terms)


def field_value(obj: Mapping[str, Any], path: str) -> str:
    """The string a field selector compares against; absent fields are ``""``."""
    current: Any = obj
    for part in path.split("."):
        if not isinstance(current, Mapping):
            return ""
        current = current.get(part)
    if current is None:
        return ""
    if isinstance(current, bool):
        return "true" if current else "false"
    return str(current)


def parse_field_selector(text: str | None, supported: Iterable[str], *, converted: bool = True) -> FieldSelector:
    """Parse a ``fieldSelector`` value against the resource's field labels;
    ``converted``: the kind has its own field label conversion (core kinds,
    Events), which words an unknown label differently from the generic one."""
    if not text or not text.strip():
        return FieldSelector()
    allowed = set(supported)
    terms: list[FieldTerm] = []
    for raw in text.split(","):
        part = raw.strip()
        match = _FIELD_TERM.match(part)
        if match is None:
            raise bad_request(f"invalid selector: '{text}'; can't understand '{part}'")
        field, op, value = match["field"].strip(), match["op"], match["value"]
        if field not in allowed and converted:
            raise bad_request(f"field label not supported: {field}")
        if field not in allowed:
            known = ", ".join(f'"{name}"' for name in ("metadata.name", "metadata.namespace"))
            raise bad_request(f'"{field}" is not a known field selector: only {known}')
        terms.append(FieldTerm(field, value.strip(), negate=op == "!="))
    return FieldSelector(tuple(terms))


@dataclass(frozen=True)
class Selection:
    """A label and a field selector together, as a list or watch applies them."""

    labels: LabelSelector = LabelSelector()
    fields: FieldSelector = FieldSelector()

    def matches(self, obj: Mapping[str, Any]) -> bool:
        metadata = obj.get("metadata") or {}
        return self.labels.matches(metadata.get("labels")) and self.fields.matches(obj)


__all__ = [
    "FieldSelector",
    "LabelSelector",
    "Selection",
    "field_value",
    "parse_field_selector",
    "parse_label_selector",
]
