"""Kubernetes label selectors (``metav1.LabelSelector``): validation and matching.

A selector is ``matchLabels`` (every key must carry exactly that value) and
``matchExpressions`` (every requirement must hold), as the API server defines
them:

* ``In``: the key is present and its value is one of ``values``;
* ``NotIn``: the key is absent, or its value is none of ``values``;
* ``Exists``: the key is present (``values`` must be empty);
* ``DoesNotExist``: the key is absent (``values`` must be empty).

An empty selector (``{}``) matches every object. Whether an *absent* selector
means "any" or "none" is for the field that holds it to say; this module only
reports absence (:func:`parse_selector` returns None).

:func:`parse_selector` validates like the API server (label key and value
syntax, values per operator, unknown keys) and reports every problem with its
field path, e.g. ``spec.selectors[0].podSelector.matchExpressions[1].operator``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from egressd.core.errors import Problem
from egressd.core.fields import Reader

Operator = Literal["In", "NotIn", "Exists", "DoesNotExist"]
OPERATORS: tuple[Operator, ...] = ("In", "NotIn", "Exists", "DoesNotExist")

_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
"""RFC 1123 subdomain: label prefixes, and the names of most Kubernetes objects
(at most 253 characters, checked apart)."""
_NAME_MAX = 63
_PREFIX_MAX = 253
_VALUE_MAX = 63

_SELECTOR_KEYS = ("matchLabels", "matchExpressions")
_EXPRESSION_KEYS = ("key", "operator", "values")


@dataclass(frozen=True)
class Expression:
    """One ``matchExpressions`` requirement."""

    key: str
    operator: Operator
    values: tuple[str, ...] = ()
    """Empty for ``Exists`` and ``DoesNotExist``, non-empty otherwise."""

    def matches(self, labels: Mapping[str, str]) -> bool:
        value = labels.get(self.key)
        if self.operator == "In":
            return value is not None and value in self.values
        if self.operator == "NotIn":
            return value is None or value not in self.values
        if self.operator == "Exists":
            return value is not None
        return value is None

    def __str__(self) -> str:
        if self.operator == "Exists":
            return self.key
        if self.operator == "DoesNotExist":
            return f"!{self.key}"
        word = "in" if self.operator == "In" else "notin"
        return f"{self.key} {word} ({','.join(sorted(set(self.values)))})"


@dataclass(frozen=True)
class LabelSelector:
    """``matchLabels`` and ``matchExpressions``; all must hold. Hashable (equal
    selectors hash alike), so results can be cached per selector."""

    match_labels: Mapping[str, str] = field(default_factory=dict)
    match_expressions: tuple[Expression, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        for key, value in self.match_labels.items():
            if labels.get(key) != value:
                return False
        return all(e.matches(labels) for e in self.match_expressions)

    @property
    def empty(self) -> bool:
        """True for ``{}``, which matches everything."""
        return not self.match_labels and not self.match_expressions

    def __hash__(self) -> int:
        return hash((tuple(sorted(self.match_labels.items())), self.match_expressions))

    def __str__(self) -> str:
        """kubectl's form: ``org=alliance,class in (xwing)`` (matchLabels by
        key, then the expressions in order); ``""`` for the empty selector."""
        parts = [f"{k}={v}" for k, v in sorted(self.match_labels.items())]
        parts += [str(e) for e in self.match_expressions]
        return ",".join(parts)


def label_key_problem(key: Any) -> str | None:
    """Why ``key`` is not a valid label key (a qualified name with an optional
    DNS subdomain prefix), or None if it is."""
    if not isinstance(key, str) or not key:
        return f"must be a non-empty string, got {key!r}"
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > _PREFIX_MAX or not DNS_SUBDOMAIN.match(prefix)):
        return (
            f"invalid label key {key!r}: the prefix must be a DNS subdomain "
            f"(at most {_PREFIX_MAX} characters: lower case, digits, '-', '.')"
        )
    if len(name) > _NAME_MAX or not _NAME.match(name):
        return (
            f"invalid label key {key!r}: the name must be at most {_NAME_MAX} characters of alphanumerics, "
            f"'-', '_' or '.', starting and ending with an alphanumeric"
        )
    return None


def label_value_problem(value: Any) -> str | None:
    """Why ``value`` is not a valid label value, or None if it is."""
    if not isinstance(value, str):
        return f"must be a string (quote values like 'true' or '1'), got {value!r}"
    if value and (len(value) > _VALUE_MAX or not _NAME.match(value)):
        return (
            f"invalid label value {value!r}: at most {_VALUE_MAX} characters of alphanumerics, "
            f"'-', '_' or '.', starting and ending with an alphanumeric"
        )
    return None


def parse_selector(value: Any, path: str) -> tuple[LabelSelector | None, list[Problem]]:
    """Validate a ``metav1.LabelSelector`` mapping located at ``path``.

    Returns (None, []) when ``value`` is None (the field is absent), the
    selector and [] when it is valid, and (None, problems) otherwise.
    """
    if value is None:
        return None, []
    r = Reader()
    m = r.mapping(value, path, _SELECTOR_KEYS)
    labels: dict[str, str] = {}
    raw_labels = m.get("matchLabels")
    allowed = list(raw_labels) if isinstance(raw_labels, Mapping) else ()
    for key, val in r.mapping(raw_labels, f"{path}.matchLabels", allowed).items():
        where = f"{path}.matchLabels.{key}"
        problem = label_key_problem(key) or label_value_problem(val)
        if problem:
            r.problem(where, problem)
        else:
            labels[key] = val
    expressions = tuple(
        e
        for where, item in r.items(m.get("matchExpressions"), f"{path}.matchExpressions")
        if (e := _expression(r, item, where)) is not None
    )
    if r.problems:
        return None, r.problems
    return LabelSelector(labels, expressions), []


def _expression(r: Reader, value: Any, path: str) -> Expression | None:
    if not isinstance(value, Mapping):
        r.problem(path, f"must be a mapping with key, operator and values, got {value!r}")
        return None
    reported = len(r.problems)
    m = r.mapping(value, path, _EXPRESSION_KEYS)
    key = m.get("key")
    if key is None:
        r.problem(f"{path}.key", "is required")
    elif problem := label_key_problem(key):
        r.problem(f"{path}.key", problem)
    operator = m.get("operator")
    if operator is None:
        r.problem(f"{path}.operator", "is required")
    elif operator not in OPERATORS:
        supported = ", ".join(f'"{o}"' for o in OPERATORS)
        r.problem(f"{path}.operator", f"unsupported value {operator!r}: supported values: {supported}")
    values: list[str] = []
    for where, item in r.items(m.get("values"), f"{path}.values"):
        if problem := label_value_problem(item):
            r.problem(where, problem)
        else:
            values.append(item)
    if operator in ("In", "NotIn") and not m.get("values"):
        r.problem(f"{path}.values", "must be specified when `operator` is 'In' or 'NotIn'")
    if operator in ("Exists", "DoesNotExist") and m.get("values"):
        r.problem(f"{path}.values", "may not be specified when `operator` is 'Exists' or 'DoesNotExist'")
    if len(r.problems) > reported:
        return None
    assert isinstance(key, str)
    assert operator in OPERATORS
    return Expression(key, operator, tuple(values))
