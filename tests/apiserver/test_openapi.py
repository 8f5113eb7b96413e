"""egressd.apiserver.openapi on its own: kube-openapi's checks and wording, list
types, pruning, ratcheting and the structural-schema rules."""

from __future__ import annotations

import re
from typing import Any

import pytest

from egressd.apiserver import openapi
from egressd.apiserver.errors import FieldError, go_float, go_quote, go_value, invalid


def errors(value: Any, schema: dict[str, Any], **kwargs: Any) -> list[str]:
    return [str(e) for e in openapi.validate(value, schema, **kwargs)]


def at(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` as the property ``x`` of an object."""
    return {"type": "object", "properties": {"x": schema}}


def check(value: Any, schema: dict[str, Any]) -> list[str]:
    return errors({"x": value}, at(schema))


# --------------------------------------------------------------------------- types


@pytest.mark.parametrize(
    ("declared", "good", "bad", "given"),
    [
        ("string", "a", 1, "integer"),
        ("integer", 3, "3", "string"),
        ("integer", 3.0, 3.5, "number"),
        ("number", 3, True, "boolean"),
        ("boolean", False, 0, "integer"),
        ("array", [], {}, "object"),
        ("object", {}, [], "array"),
    ],
)
def test_types(declared: str, good: Any, bad: Any, given: str) -> None:
    assert check(good, {"type": declared}) == []
    assert check(bad, {"type": declared}) == [
        f'x: Invalid value: "{given}": x in body must be of type {declared}: "{given}"'
    ]


def test_a_type_error_is_a_type_invalid_cause() -> None:
    (error,) = openapi.validate({"x": "1"}, at({"type": "integer"}))
    assert (error.field, error.reason) == ("x", "FieldValueTypeInvalid")


def test_null_needs_nullable() -> None:
    assert check(None, {"type": "string"}) == ['x: Invalid value: "null": x in body must be of type string: "null"']
    assert check(None, {"type": "string", "nullable": True}) == []


def test_int_or_string() -> None:
    schema = {"x-kubernetes-int-or-string": True}
    assert check(80, schema) == check("http", schema) == []
    assert check(True, schema) == ['x: Invalid value: "boolean": x in body must be of type integer,string: "boolean"']


def test_a_node_without_type_takes_anything() -> None:
    assert check({"a": [1, "b"]}, {"x-kubernetes-preserve-unknown-fields": True}) == []


# --------------------------------------------------------------------------- formats


@pytest.mark.parametrize(
    ("name", "good", "bad"),
    [
        ("ipv4", ["172.18.0.42", "010.0.0.1", "::ffff:1.2.3.4"], ["1.2.3", "1.2.3.256", "1.2.3.4 ", "fd00::1", ""]),
        ("ipv6", ["fd00::42", "::1", "::ffff:1.2.3.4"], ["1.2.3.4", "fe80::1%eth0", "fd00:::1", "fd00::g"]),
        (
            "cidr",
            ["172.18.0.0/16", "10.0.0.1/8", "0.0.0.0/0", "fd00::/64", "fd00::/128"],
            ["172.18.0.0/33", "172.18.0.0", "fd00::/129", "172.18.0.0/1x", "/8", "1.2.3.4/8/9"],
        ),
        (
            "date-time",
            ["2026-11-24T10:00:00Z", "2026-11-24T10:00:00.123456Z", "2026-11-24t10:00:00+01:00"],
            ["2026-11-24T24:00:00Z", "2026-11-24T10:00:00", "2026-02-30T10:00:00Z", "2026-11-24 10:00:00Z", "x"],
        ),
        ("date", ["2024-02-29", "2026-11-24"], ["2026-02-29", "2026-1-24", "2026-13-01"]),
        ("uuid", ["6ba7b810-9dad-11d1-80b4-00c04fd430c8"], ["6ba7b810-9dad-11d1-80b4"]),
        ("byte", ["ZWdyZXNzZA=="], ["not base64"]),
    ],
)
def test_formats(name: str, good: list[str], bad: list[str]) -> None:
    schema = {"type": "string", "format": name}
    for text in good:
        assert check(text, schema) == [], text
    for text in bad:
        assert check(text, schema) == [
            f"x: Invalid value: {go_quote(text)}: x in body must be of type {name}: {go_quote(text)}"
        ], text


def test_unsupported_formats_are_ignored() -> None:
    assert check("anything", {"type": "string", "format": "not-a-format"}) == []
    assert check(2**40, {"type": "integer", "format": "int32"}) == []  # the real server strips int32 in CRDs


def test_a_formatted_string_given_a_number_names_the_format() -> None:
    """kube-openapi checks the format before the type for non-strings."""
    assert check(5, {"type": "string", "format": "ipv4"}) == [
        'x: Invalid value: "int64": x in body must be of type ipv4: "int64"'
    ]


def test_any_of_formats_reports_the_first_branch_and_a_summary() -> None:
    schema = {"type": "string", "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]}
    assert check("fd00::42", schema) == check("172.18.0.42", schema) == []
    assert check("1.2.3", schema) == [
        '<nil>: Invalid value: "": "x" must validate at least one schema (anyOf)',
        'x: Invalid value: "1.2.3": x in body must be of type ipv4: "1.2.3"',
    ]
    assert errors("1.2.3", schema, path="status") == [
        'status: Invalid value: "": "" must validate at least one schema (anyOf)',
        'status: Invalid value: "1.2.3":  in body must be of type ipv4: "1.2.3"',
    ]


# --------------------------------------------------------------------------- strings, numbers


def test_string_checks_stop_at_the_first_failure() -> None:
    schema = {"type": "string", "minLength": 2, "maxLength": 4, "pattern": "^[a-z]+$"}
    assert check("abc", schema) == []
    assert check("abcdE", schema) == ["x: Too long: may not be more than 4 bytes"]
    assert check("a", schema) == ['x: Invalid value: "a": x in body should be at least 2 chars long']
    assert check("aB", schema) == ["x: Invalid value: \"aB\": x in body should match '^[a-z]+$'"]


def test_lengths_count_characters_not_bytes() -> None:
    assert check("ééé", {"type": "string", "maxLength": 3}) == []


def test_patterns_are_go_regular_expressions() -> None:
    schema = {"type": "string", "pattern": r"^[^/:\s]+$"}
    assert check("net0", schema) == []
    assert check("net0\n", schema) != []  # Go's $ is the end of the text
    assert check("net\u00a00", schema) == []  # Go's \s is ASCII white space only
    assert check("abc", {"type": "string", "pattern": r"b\z"}) == [
        "x: Invalid value: \"abc\": x in body should match 'b\\z'"
    ]
    for perl in (r"^(?=a)", r"^(?<!a)b", r"(a)\1"):
        with pytest.raises(re.error):
            openapi.go_regex(perl)
    (broken,) = check("a", {"type": "string", "pattern": "("})
    assert broken.startswith('x: Invalid value: "a": x in body should match \'(, but pattern is invalid: ')


def test_number_bounds() -> None:
    schema = {"type": "integer", "minimum": 0, "maximum": 10}
    assert check(0, schema) == check(10, schema) == []
    assert check(-1, schema) == ["x: Invalid value: -1: x in body should be greater than or equal to 0"]
    assert check(11, schema) == ["x: Invalid value: 11: x in body should be less than or equal to 10"]
    exclusive = {"type": "number", "minimum": 0.5, "exclusiveMinimum": True, "maximum": 1e6, "exclusiveMaximum": True}
    assert check(0.5, exclusive) == ["x: Invalid value: 0.5: x in body should be greater than 0.5"]
    assert check(1e6, exclusive) == ["x: Invalid value: 1e+06: x in body should be less than 1e+06"]
    assert check(3, {"type": "integer", "multipleOf": 2}) == [
        "x: Invalid value: 3: x in body should be a multiple of 2"
    ]
    assert check(0.75, {"type": "number", "multipleOf": 0.25}) == []


# --------------------------------------------------------------------------- arrays, enums, objects


def test_item_counts() -> None:
    schema = {"type": "array", "minItems": 1, "maxItems": 2, "items": {"type": "string"}}
    assert check(["a"], schema) == []
    assert check([], schema) == ["x: Invalid value: 0: x in body should have at least 1 items"]
    assert check(["a", "b", "c"], schema) == ["x: Too many: 3: must have at most 2 items"]
    assert check(["a", 1], schema) == ['x[1]: Invalid value: "integer": x[1] in body must be of type string: "integer"']


def test_enum() -> None:
    assert check("In", {"type": "string", "enum": ["In", "NotIn"]}) == []
    assert check("Is", {"type": "string", "enum": ["In", "NotIn"]}) == [
        'x: Unsupported value: "Is": supported values: "In", "NotIn"'
    ]
    assert check(3, {"type": "integer", "enum": [1, 2.0]}) == ['x: Unsupported value: 3: supported values: "1", "2.0"']
    assert check(2, {"type": "integer", "enum": [1, 2.0]}) == []
    assert check(True, {"type": "boolean", "enum": [1]}) != []


def test_properties_required_and_counts() -> None:
    schema = {
        "type": "object",
        "required": ["a", "b"],
        "minProperties": 2,
        "maxProperties": 3,
        "properties": {"a": {"type": "string"}, "b": {"type": "object", "required": ["c"]}},
    }
    assert errors({"a": "x", "b": {"c": 1}}, schema) == []
    assert errors({"b": {}}, schema) == [
        "<nil>: Invalid value: 1:  in body should have at least 2 properties",
        "b.c: Required value",
        "a: Required value",
    ]
    assert errors({"a": "", "b": {"c": 1}, "d": 1, "e": 2}, schema) == ["<nil>: Too many: 4: must have at most 3 items"]


def test_additional_properties() -> None:
    labels = {"type": "object", "additionalProperties": {"type": "string"}}
    assert check({"org": "alliance"}, labels) == []
    assert check({"org": 1}, labels) == [
        'x.org: Invalid value: "integer": x.org in body must be of type string: "integer"'
    ]
    closed = {"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": False}
    assert check({"a": "", "b": 1}, closed) == ['x: Invalid value: "b": x.b in body is a forbidden property']


def test_one_of_all_of_and_not() -> None:
    one = {"type": "integer", "oneOf": [{"minimum": 5}, {"maximum": 10}]}
    assert check(20, one) == []
    assert check(7, one) == [
        '<nil>: Invalid value: "": "x" must validate one and only one schema (oneOf). Found 2 valid alternatives'
    ]
    every = {"type": "integer", "allOf": [{"minimum": 5}, {"maximum": 10}]}
    assert check(7, every) == []
    assert check(20, every) == [
        "x: Invalid value: 20: x in body should be less than or equal to 10",
        '<nil>: Invalid value: "": "x" must validate all the schemas (allOf)',
    ]
    never = {"type": "string", "not": {"enum": ["default"]}}
    assert check("mine", never) == []
    assert check("default", never) == ['<nil>: Invalid value: "": "x" must not validate the schema (not)']


# --------------------------------------------------------------------------- list types


def test_set_lists_reject_repeated_items_once_each() -> None:
    schema = at({"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "string"}})
    assert openapi.validate_list_types({"x": ["a", "b"]}, schema) == []
    found = openapi.validate_list_types({"x": ["a", "b", "a", "a", "b"]}, schema)
    assert [str(e) for e in found] == ['x[2]: Duplicate value: "a"', 'x[4]: Duplicate value: "b"']
    assert {e.reason for e in found} == {"FieldValueDuplicate"}
    numbers = at({"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "number"}})
    assert openapi.validate_list_types({"x": [1, 1.0, True]}, numbers) == []  # different Go types


def test_map_lists_reject_repeated_keys() -> None:
    schema = at(
        {
            "type": "array",
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
            "items": {"type": "object", "properties": {"type": {"type": "string"}}},
        }
    )
    value = {"x": [{"type": "Ready", "status": "True"}, {"type": "Ready", "status": "False"}, {"status": "x"}]}
    assert [str(e) for e in openapi.validate_list_types(value, schema)] == [
        'x[1]: Duplicate value: map[string]interface {}{"type":"Ready"}'
    ]
    assert [str(e) for e in openapi.validate_list_types({"x": ["Ready"]}, schema)] == [
        'x[0]: Invalid value: "Ready": must be an object for an array of list-type map'
    ]


def test_list_types_below_maps_use_key_paths() -> None:
    schema = {
        "type": "object",
        "additionalProperties": {"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "integer"}},
    }
    assert [str(e) for e in openapi.validate_list_types({"a.b/c": [1, 1]}, schema, path="spec")] == [
        "spec[a.b/c][1]: Duplicate value: 1"
    ]


# --------------------------------------------------------------------------- decoding

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "spec": {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "note": {"type": "string", "nullable": True},
                "mode": {"type": "string", "default": "auto"},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "items": {"type": "array", "items": {"type": "object", "properties": {"a": {"type": "integer"}}}},
                "free": {
                    "type": "object",
                    "x-kubernetes-preserve-unknown-fields": True,
                    "properties": {"known": {"type": "object", "properties": {"k": {"type": "string"}}}},
                },
            },
        }
    },
}


def test_prune_drops_unknown_fields_and_reports_their_paths() -> None:
    obj: dict[str, Any] = {
        "apiVersion": "x/v1",
        "kind": "X",
        "metadata": {"name": "a", "labels": {"k": "v"}, "colour": "red"},
        "spec": {
            "name": "a",
            "extra": 1,
            "labels": {"any": "thing"},
            "items": [{"a": 1, "b": 2}, {"c": {}}],
            "free": {"anything": {"goes": 1}, "known": {"k": "v", "drop": 1}},
        },
        "status": {"x": 1},
    }
    assert openapi.prune_object(obj, SCHEMA) == [
        "metadata.colour",
        "spec.extra",
        "spec.free.known.drop",
        "spec.items[0].b",
        "spec.items[1].c",
        "status",
    ]
    assert obj == {
        "apiVersion": "x/v1",
        "kind": "X",
        "metadata": {"name": "a", "labels": {"k": "v"}},
        "spec": {
            "name": "a",
            "mode": "auto",
            "labels": {"any": "thing"},
            "items": [{"a": 1}, {}],
            "free": {"anything": {"goes": 1}, "known": {"k": "v"}},
        },
    }


def test_nulls_are_dropped_unless_nullable_and_defaults_fill_gaps() -> None:
    obj: dict[str, Any] = {"spec": {"name": None, "note": None, "mode": None}}
    assert openapi.prune_object(obj, SCHEMA) == []
    assert obj == {"spec": {"note": None, "mode": "auto"}}


def test_a_schema_that_preserves_everything_prunes_nothing() -> None:
    obj: dict[str, Any] = {"spec": {"a": {"b": 1}}, "other": [1]}
    assert openapi.prune_object(obj, {"type": "object", "x-kubernetes-preserve-unknown-fields": True}) == []
    assert obj == {"spec": {"a": {"b": 1}}, "other": [1]}


# --------------------------------------------------------------------------- ratcheting


def test_unchanged_invalid_values_pass_an_update() -> None:
    schema = at({"type": "string", "maxLength": 3})
    assert errors({"x": "net0"}, schema, old={"x": "net0"}) == []
    assert errors({"x": "net1"}, schema, old={"x": "net0"}) == ["x: Too long: may not be more than 3 bytes"]
    assert errors({"x": "net0"}, schema) == ["x: Too long: may not be more than 3 bytes"]


def test_map_list_items_correlate_by_key_set_items_do_not() -> None:
    item = {"type": "object", "properties": {"k": {"type": "string"}, "v": {"type": "integer", "maximum": 1}}}
    keyed = at({"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["k"], "items": item})
    old = {"x": [{"k": "a", "v": 5}]}
    assert errors({"x": [{"k": "b", "v": 0}, {"k": "a", "v": 5}]}, keyed, old=old) == []
    atomic = at({"type": "array", "items": item})
    assert errors({"x": [{"k": "b", "v": 0}, {"k": "a", "v": 5}]}, atomic, old=old) == [
        "x[1].v: Invalid value: 5: x[1].v in body should be less than or equal to 1"
    ]


# --------------------------------------------------------------------------- structural schemas


def test_structural_rules() -> None:
    path = "spec.versions[0].schema.openAPIV3Schema"
    assert openapi.structural_errors(SCHEMA, path) == []
    broken = {
        "properties": {
            "a": {"type": "array"},
            "b": {},
            "c": {"type": "string", "anyOf": [{"type": "string", "description": "d"}, {"properties": {"z": {}}}]},
            "d": {"x-kubernetes-int-or-string": True, "anyOf": [{"type": "integer"}, {"type": "string"}]},
            "e": {"type": "array", "uniqueItems": True, "items": {"type": "string", "pattern": "("}},
        },
        "additionalProperties": {"type": "string"},
    }
    assert [str(e) for e in openapi.structural_errors(broken, path)] == sorted(
        [
            f"{path}.type: Required value: must not be empty at the root",
            f"{path}.additionalProperties: Forbidden: must not be used at the root",
            f"{path}.additionalProperties: Forbidden: additionalProperties and properties are mutual exclusive",
            f"{path}.properties[a].items: Required value: must be specified",
            f"{path}.properties[b].type: Required value: must not be empty for specified object fields",
            f"{path}.properties[c].anyOf[0].type: Forbidden: must be empty to be structural",
            f"{path}.properties[c].anyOf[0].description: Forbidden: must be empty to be structural",
            f"{path}.properties[c].properties[z]: Required value: because it is defined in "
            f"{path}.properties[c].anyOf[1].properties[z]",
            f"{path}.properties[e].uniqueItems: Forbidden: uniqueItems cannot be set to true since the runtime "
            "complexity becomes quadratic",
            f'{path}.properties[e].items.pattern: Invalid value: "(": must be a valid regular expression, '
            "but isn't: missing ), unterminated subpattern at position 0",
        ]
    )
    assert [str(e) for e in openapi.structural_errors({"type": "string"}, path)] == [
        f'{path}.type: Invalid value: "string": must be object at the root'
    ]


# --------------------------------------------------------------------------- rendering


def test_values_render_as_go_prints_them() -> None:
    assert [go_float(v) for v in (1.5, 100.0, 1e6, 1234567.0, 0.0001, 1e-5, -2.0)] == [
        "1.5",
        "100",
        "1e+06",
        "1.234567e+06",
        "0.0001",
        "1e-05",
        "-2",
    ]
    assert go_quote('a"b\\c\nd\x01é') == '"a\\"b\\\\c\\nd\\x01é"'
    assert (
        go_value({"type": "Ready", "n": [1, None]})
        == 'map[string]interface {}{"n":[]interface {}{1, interface {}(nil)}, "type":"Ready"}'
    )


def test_repeated_messages_appear_once_in_the_summary_but_every_cause_stays() -> None:
    same = FieldError("x", "", None)
    error = invalid("egressd.io", "EgressGatewayPolicy", "p", [same, same])
    assert error.message == 'EgressGatewayPolicy.egressd.io "p" is invalid: x: Required value'
    assert error.details is not None and len(error.details["causes"]) == 2
