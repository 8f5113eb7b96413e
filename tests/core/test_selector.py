"""Label selectors: matching as metav1.LabelSelector, validation as the API server."""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest

from egressd.apiserver.selectors import parse_label_selector
from egressd.core.errors import Problem
from egressd.core.selector import OPERATORS, Expression, LabelSelector, parse_selector

WALKTHROUGH = {
    "matchLabels": {"org": "alliance"},
    "matchExpressions": [{"key": "class", "operator": "In", "values": ["xwing"]}],
}


def parsed(value: Any) -> LabelSelector:
    selector, problems = parse_selector(value, "sel")
    assert problems == []
    assert selector is not None
    return selector


def problems_of(value: Any) -> list[Problem]:
    selector, problems = parse_selector(value, "spec.selectors[0].podSelector")
    assert selector is None
    assert problems
    return problems


def only_problem(value: Any, field: str) -> str:
    problems = problems_of(value)
    assert [p.field for p in problems] == [field], problems
    return problems[0].message


# --- matching ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "labels", "expected"),
    [
        (Expression("class", "In", ("xwing", "ywing")), {"class": "ywing"}, True),
        (Expression("class", "In", ("xwing", "ywing")), {"class": "tiefighter"}, False),
        (Expression("class", "In", ("xwing",)), {}, False),
        (Expression("class", "NotIn", ("tiefighter",)), {"class": "xwing"}, True),
        (Expression("class", "NotIn", ("tiefighter",)), {"class": "tiefighter"}, False),
        (Expression("class", "NotIn", ("tiefighter",)), {}, True),  # absent key matches NotIn
        (Expression("class", "Exists"), {"class": ""}, True),
        (Expression("class", "Exists"), {"org": "alliance"}, False),
        (Expression("class", "DoesNotExist"), {"org": "alliance"}, True),  # absent key matches
        (Expression("class", "DoesNotExist"), {"class": "xwing"}, False),
        (Expression("class", "In", ("",)), {"class": ""}, True),
    ],
)
def test_expression_operators(expression: Expression, labels: dict[str, str], expected: bool) -> None:
    assert expression.matches(labels) is expected
    assert LabelSelector(match_expressions=(expression,)).matches(labels) is expected


def test_match_labels_and_expressions_must_all_hold() -> None:
    selector = parsed(WALKTHROUGH)
    assert selector.matches({"org": "alliance", "class": "xwing", "extra": "x"})
    assert not selector.matches({"org": "alliance", "class": "ywing"})
    assert not selector.matches({"org": "empire", "class": "xwing"})
    assert not selector.matches({"class": "xwing"})
    assert not LabelSelector({"org": "alliance"}).matches({"org": "Alliance"})


def test_empty_selector_matches_everything() -> None:
    selector = parsed({})
    assert selector == LabelSelector()
    assert selector.empty
    assert selector.matches({})
    assert selector.matches({"any": "thing"})
    assert not parsed(WALKTHROUGH).empty
    assert parsed({"matchLabels": {}, "matchExpressions": []}).empty


def test_absent_selector_is_reported_as_none() -> None:
    assert parse_selector(None, "sel") == (None, [])


def test_string_form_is_kubectls() -> None:
    assert str(parsed(WALKTHROUGH)) == "org=alliance,class in (xwing)"
    selector = parsed(
        {
            "matchLabels": {"tier": "web", "app": "shop"},
            "matchExpressions": [
                {"key": "class", "operator": "NotIn", "values": ["ywing", "tiefighter"]},
                {"key": "egress", "operator": "Exists"},
                {"key": "legacy", "operator": "DoesNotExist"},
            ],
        }
    )
    assert str(selector) == "app=shop,tier=web,class notin (tiefighter,ywing),egress,!legacy"
    assert str(LabelSelector()) == ""


def test_equal_selectors_hash_alike() -> None:
    a = parsed({"matchLabels": {"a": "1", "b": "2"}})
    b = parsed({"matchLabels": {"b": "2", "a": "1"}})
    assert a == b
    assert hash(a) == hash(b)
    assert len({a, b, parsed(WALKTHROUGH)}) == 2


def test_semantics_agree_with_the_lab_servers_string_selectors() -> None:
    """The lab API server filters lists with the string form; both must select
    the same objects, for every operator and absent keys."""
    rng = random.Random(4)
    keys, values = ("a", "b", "c"), ("x", "y", "z")
    label_sets = [
        {k: v for k, v in zip(keys, combo, strict=True) if v is not None}
        for combo in itertools.product((None, *values), repeat=3)
    ]
    for _ in range(300):
        expressions = []
        for _ in range(rng.randint(0, 3)):
            op = rng.choice(OPERATORS)
            chosen = tuple(rng.sample(values, rng.randint(1, 2))) if op in ("In", "NotIn") else ()
            expressions.append(Expression(rng.choice(keys), op, chosen))
        labels = {k: rng.choice(values) for k in rng.sample(keys, rng.randint(0, 2))}
        selector = LabelSelector(labels, tuple(expressions))
        lab = parse_label_selector(str(selector))
        for candidate in label_sets:
            assert selector.matches(candidate) == lab.matches(candidate), (str(selector), candidate)


# --- validation --------------------------------------------------------------------


def test_valid_keys_and_values() -> None:
    selector = parsed(
        {
            "matchLabels": {
                "egressd.io/gateway": "true",
                "kubernetes.io/metadata.name": "default",
                "A_b.c-9": "",
                "k" * 63: "v" * 63,
                ("p" * 253) + "/name": "x",
            }
        }
    )
    assert selector.match_labels["egressd.io/gateway"] == "true"


@pytest.mark.parametrize(
    "key",
    [
        "-bad",
        "bad-",
        "has space",
        "a/b/c",
        "/name",
        "UPPER.io/name",
        "k" * 64,
        ("p" * 254) + "/name",
        "pre_fix/name",
        "",
    ],
)
def test_invalid_label_keys(key: str) -> None:
    message = only_problem({"matchLabels": {key: "x"}}, f"spec.selectors[0].podSelector.matchLabels.{key}")
    assert "label key" in message or "non-empty" in message
    message = only_problem(
        {"matchExpressions": [{"key": key, "operator": "Exists"}]},
        "spec.selectors[0].podSelector.matchExpressions[0].key",
    )
    assert "label key" in message or "non-empty" in message


@pytest.mark.parametrize("value", ["-x", "x-", "a b", "v" * 64, "a/b"])
def test_invalid_label_values(value: str) -> None:
    message = only_problem({"matchLabels": {"org": value}}, "spec.selectors[0].podSelector.matchLabels.org")
    assert "invalid label value" in message
    message = only_problem(
        {"matchExpressions": [{"key": "org", "operator": "In", "values": ["ok", value]}]},
        "spec.selectors[0].podSelector.matchExpressions[0].values[1]",
    )
    assert "invalid label value" in message


def test_unquoted_yaml_scalars_are_not_label_values() -> None:
    message = only_problem({"matchLabels": {"egress-gw": True}}, "spec.selectors[0].podSelector.matchLabels.egress-gw")
    assert "quote" in message
    only_problem({"matchLabels": {"replicas": 1}}, "spec.selectors[0].podSelector.matchLabels.replicas")


def test_unknown_operator_names_the_supported_ones() -> None:
    message = only_problem(
        {"matchExpressions": [{"key": "a", "operator": "in", "values": ["x"]}]},
        "spec.selectors[0].podSelector.matchExpressions[0].operator",
    )
    assert "'in'" in message
    for op in ("In", "NotIn", "Exists", "DoesNotExist"):
        assert f'"{op}"' in message


@pytest.mark.parametrize("op", ["In", "NotIn"])
@pytest.mark.parametrize("values", [None, []])
def test_set_operators_need_values(op: str, values: Any) -> None:
    expression: dict[str, Any] = {"key": "a", "operator": op}
    if values is not None:
        expression["values"] = values
    message = only_problem(
        {"matchExpressions": [{"key": "z", "operator": "Exists"}, expression]},
        "spec.selectors[0].podSelector.matchExpressions[1].values",
    )
    assert "must be specified" in message


@pytest.mark.parametrize("op", ["Exists", "DoesNotExist"])
def test_existence_operators_take_no_values(op: str) -> None:
    message = only_problem(
        {"matchExpressions": [{"key": "a", "operator": op, "values": ["x"]}]},
        "spec.selectors[0].podSelector.matchExpressions[0].values",
    )
    assert "may not be specified" in message
    assert parsed({"matchExpressions": [{"key": "a", "operator": op, "values": []}]}).match_expressions == (
        Expression("a", op),  # type: ignore[arg-type]
    )


def test_missing_key_and_operator() -> None:
    problems = problems_of({"matchExpressions": [{"values": ["x"]}]})
    assert {p.field for p in problems} == {
        "spec.selectors[0].podSelector.matchExpressions[0].key",
        "spec.selectors[0].podSelector.matchExpressions[0].operator",
    }


def test_unknown_keys_are_problems_with_a_hint() -> None:
    message = only_problem({"matchlabels": {"a": "b"}}, "spec.selectors[0].podSelector.matchlabels")
    assert "did you mean 'matchLabels'" in message
    only_problem(
        {"matchExpressions": [{"key": "a", "operator": "Exists", "value": "x"}]},
        "spec.selectors[0].podSelector.matchExpressions[0].value",
    )


@pytest.mark.parametrize(
    ("value", "field"),
    [
        ("org=alliance", "spec.selectors[0].podSelector"),
        ({"matchLabels": ["org=alliance"]}, "spec.selectors[0].podSelector.matchLabels"),
        ({"matchExpressions": {"key": "a"}}, "spec.selectors[0].podSelector.matchExpressions"),
        ({"matchExpressions": ["a"]}, "spec.selectors[0].podSelector.matchExpressions[0]"),
        ({"matchExpressions": [None]}, "spec.selectors[0].podSelector.matchExpressions[0]"),
        (
            {"matchExpressions": [{"key": "a", "operator": "In", "values": "x"}]},
            "spec.selectors[0].podSelector.matchExpressions[0].values",
        ),
    ],
)
def test_wrong_shapes(value: Any, field: str) -> None:
    assert field in {p.field for p in problems_of(value)}


def test_every_problem_is_reported() -> None:
    problems = problems_of(
        {
            "matchLabels": {"ok": "fine", "bad key": "x", "org": True},
            "matchExpressions": [
                {"key": "a", "operator": "Exists"},
                {"key": "b", "operator": "Has"},
                {"key": "c", "operator": "In"},
            ],
        }
    )
    base = "spec.selectors[0].podSelector"
    assert [p.field for p in problems] == [
        f"{base}.matchLabels.bad key",
        f"{base}.matchLabels.org",
        f"{base}.matchExpressions[1].operator",
        f"{base}.matchExpressions[2].values",
    ]
