"""The lease record and its mapping to a ``coordination.k8s.io/v1`` Lease."""

from __future__ import annotations

import copy
import json
import math
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from egressd.core.errors import MalformedLease
from egressd.core.lease import (
    ANN_DURATION_MS,
    ANN_EGRESS_IP,
    ANN_HOLDER_ADDRESS,
    ANN_INCARNATION,
    ANN_PREFERRED_HOLDER,
    EPOCH_MODULUS,
    LABEL_SELECTOR,
    MANAGED_BY,
    MAX_LEASE_DURATION,
    TRANSITION_REASON,
    LeaseRecord,
    epoch_order,
    format_microtime,
    held_by,
    lease_name,
    next_epoch,
    object_from_record,
    parse_time,
    record_from_object,
    released,
)

T0 = datetime(2025, 3, 1, 9, 30, 0, 123456, tzinfo=UTC)
T1 = T0 + timedelta(seconds=1, microseconds=250000)


def held_object() -> dict[str, Any]:
    """A Lease as the API server returns it for an IP held by kind-worker3."""
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": "egressd-172-18-0-42",
            "namespace": "egressd",
            "resourceVersion": "4711",
            "uid": "b1f7a0e2-0000-4000-8000-000000000001",
            "labels": {"app.kubernetes.io/managed-by": "egressd"},
            "annotations": {
                ANN_EGRESS_IP: "172.18.0.42",
                ANN_HOLDER_ADDRESS: "172.18.0.5",
                ANN_INCARNATION: "3f9c2b",
                ANN_DURATION_MS: "2500",
            },
        },
        "spec": {
            "holderIdentity": "kind-worker3",
            "leaseDurationSeconds": 3,
            "leaseTransitions": 4,
            "acquireTime": "2025-03-01T09:30:00.123456Z",
            "renewTime": "2025-03-01T09:30:01.373456Z",
        },
    }


def with_changes(obj: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A deep copy of ``obj`` with ``a.b.c`` set to ``value`` (or removed, for ``...``)."""
    out = copy.deepcopy(obj)
    *parents, last = path.split(".")
    node = out
    for key in parents:
        node = node[key]
    if value is ...:
        node.pop(last, None)
    else:
        node[last] = value
    return out


def record(**changes: Any) -> LeaseRecord:
    base = LeaseRecord(
        name="egressd-172-18-0-42",
        egress_ip="172.18.0.42",
        holder="kind-worker3",
        lease_duration=2.5,
        transitions=4,
        resource_version="4711",
        acquire_time=T0,
        renew_time=T1,
        holder_address="172.18.0.5",
        incarnation="3f9c2b",
    )
    return replace(base, **changes)


# --- names -----------------------------------------------------------------------


def test_lease_name_of_an_ipv4_address() -> None:
    assert lease_name("172.18.0.42") == "egressd-172-18-0-42"


@pytest.mark.parametrize("text", ["fd00::42", "FD00:0:0:0:0:0:0:42", "fd00:0000::0042"])
def test_lease_name_of_an_ipv6_address_is_exploded_and_unique(text: str) -> None:
    name = lease_name(text)
    assert name == "egressd-fd00-0000-0000-0000-0000-0000-0000-0042"
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name)
    assert len(name) <= 63


def test_lease_name_rejects_what_is_not_an_ip() -> None:
    with pytest.raises(ValueError, match="does not appear to be"):
        lease_name("172.18.0.42/32")


def test_label_selector_matches_the_label() -> None:
    assert LABEL_SELECTOR == f"{MANAGED_BY[0]}={MANAGED_BY[1]}" == "app.kubernetes.io/managed-by=egressd"


# --- MicroTime ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("when", "text"),
    [
        (T0, "2025-03-01T09:30:00.123456Z"),
        (datetime(2025, 3, 1, 9, 30, tzinfo=UTC), "2025-03-01T09:30:00.000000Z"),
        (datetime(2025, 3, 1, 11, 30, 0, 5, tzinfo=timezone(timedelta(hours=2))), "2025-03-01T09:30:00.000005Z"),
    ],
    ids=["micros", "whole-second", "other-zone"],
)
def test_microtime_is_utc_with_six_fractional_digits_and_z(when: datetime, text: str) -> None:
    formatted = format_microtime(when)
    assert formatted == text
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", formatted)


@pytest.mark.parametrize(
    "text",
    ["2025-03-01T09:30:00.123456Z", "2025-03-01T09:30:00.123456z", "2025-03-01T10:30:00.123456+01:00"],
)
def test_parse_time_reads_microtime(text: str) -> None:
    parsed = parse_time(text)
    assert parsed == T0
    assert parsed.tzinfo is UTC


def test_parse_time_reads_plain_rfc3339_time() -> None:
    assert parse_time("2025-03-01T09:30:00Z") == datetime(2025, 3, 1, 9, 30, tzinfo=UTC)


def test_parse_time_refuses_a_time_without_zone() -> None:
    with pytest.raises(ValueError, match="no time zone"):
        parse_time("2025-03-01T09:30:00.123456")


def test_format_and_parse_round_trip() -> None:
    assert parse_time(format_microtime(T1)) == T1


# --- reading good objects ----------------------------------------------------------


def test_record_from_a_held_lease() -> None:
    assert record_from_object(held_object()) == record()


def test_record_from_a_free_lease_without_duration() -> None:
    obj = held_object()
    obj["metadata"]["annotations"] = {ANN_EGRESS_IP: "172.18.0.42"}
    obj["spec"] = {"holderIdentity": None, "leaseTransitions": 5}
    rec = record_from_object(obj)
    assert rec.free
    assert rec.holder is None
    assert rec.lease_duration == 0.0
    assert rec.transitions == 5
    assert (rec.holder_address, rec.incarnation, rec.preferred_holder) == (None, None, None)


def test_empty_holder_identity_means_free() -> None:
    rec = record_from_object(with_changes(held_object(), "spec.holderIdentity", ""))
    assert rec.holder is None
    assert rec.free


def test_lease_duration_falls_back_to_whole_seconds_without_the_annotation() -> None:
    obj = held_object()
    del obj["metadata"]["annotations"][ANN_DURATION_MS]
    assert record_from_object(obj).lease_duration == 3.0


def test_missing_transitions_count_as_zero() -> None:
    assert record_from_object(with_changes(held_object(), "spec.leaseTransitions", ...)).transitions == 0
    assert record_from_object(with_changes(held_object(), "spec.leaseTransitions", None)).transitions == 0


def test_egress_ip_annotation_is_normalised() -> None:
    obj = with_changes(held_object(), "metadata.annotations", {ANN_EGRESS_IP: "FD00:0::42", ANN_DURATION_MS: "2500"})
    assert record_from_object(obj).egress_ip == "fd00::42"


def test_preferred_holder_from_the_annotation_or_the_spec_field() -> None:
    obj = held_object()
    obj["spec"]["preferredHolder"] = "kind-worker4"
    assert record_from_object(obj).preferred_holder == "kind-worker4"
    obj["metadata"]["annotations"][ANN_PREFERRED_HOLDER] = "kind-worker5"
    assert record_from_object(obj).preferred_holder == "kind-worker5"  # egressd writes the annotation; it wins


def test_times_already_parsed_by_a_client_are_accepted() -> None:
    assert record_from_object(with_changes(held_object(), "spec.renewTime", T1)).renew_time == T1


# --- reading objects written by others ---------------------------------------------


MALFORMED: dict[str, tuple[str, Any, str]] = {
    "metadata-not-an-object": ("metadata", ["x"], r"^metadata: must be an object, got list"),
    "spec-not-an-object": ("spec", "held", r"^spec: must be an object, got str"),
    "annotations-not-an-object": ("metadata.annotations", 7, r"^metadata\.annotations: must be an object"),
    "no-name": ("metadata.name", ..., r"^metadata\.name: missing"),
    "no-resource-version": ("metadata.resourceVersion", ..., r"metadata\.resourceVersion: missing"),
    "numeric-resource-version": ("metadata.resourceVersion", 4711, r"metadata\.resourceVersion: missing"),
    "no-egress-ip": ("metadata.annotations", {}, r"annotations\[egressd\.io/egress-ip\]: missing"),
    "bad-egress-ip": (
        "metadata.annotations",
        {ANN_EGRESS_IP: "172.18.0.420"},
        r"annotations\[egressd\.io/egress-ip\]: not an IP: '172\.18\.0\.420'",
    ),
    "holder-not-a-string": ("spec.holderIdentity", 3, r"spec\.holderIdentity: must be a string, got 3"),
    "negative-transitions": ("spec.leaseTransitions", -1, r"spec\.leaseTransitions: must be a non-negative integer"),
    "string-transitions": ("spec.leaseTransitions", "4", r"spec\.leaseTransitions: must be a non-negative integer"),
    "bool-transitions": ("spec.leaseTransitions", True, r"spec\.leaseTransitions: must be a non-negative integer"),
    "bad-renew-time": ("spec.renewTime", "yesterday", r"spec\.renewTime: not a MicroTime: 'yesterday'"),
    "renew-time-without-zone": ("spec.renewTime", "2025-03-01T09:30:00.123456", r"spec\.renewTime: not a MicroTime"),
    "numeric-acquire-time": ("spec.acquireTime", 1740821400, r"spec\.acquireTime: must be a MicroTime string"),
    "preferred-holder-not-a-string": (
        "spec.preferredHolder",
        ["kind-worker4"],
        r"spec\.preferredHolder: must be a string, got a list",
    ),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_lease_names_the_field(case: str) -> None:
    path, value, message = MALFORMED[case]
    with pytest.raises(MalformedLease, match=message):
        record_from_object(with_changes(held_object(), path, value))


@pytest.mark.parametrize(
    ("ms", "message"),
    [("2.5s", "not an integer: '2.5s'"), ("0", "must be positive, got '0'"), ("-100", "must be positive")],
)
def test_bad_duration_annotation_is_malformed(ms: str, message: str) -> None:
    obj = held_object()
    obj["metadata"]["annotations"][ANN_DURATION_MS] = ms
    with pytest.raises(MalformedLease, match=re.escape(f"annotations[{ANN_DURATION_MS}]: {message}")):
        record_from_object(obj)


@pytest.mark.parametrize(
    "seconds", [0, -3, 2.5, "3", True, ...], ids=["zero", "negative", "float", "str", "bool", "absent"]
)
def test_held_lease_needs_a_positive_whole_lease_duration(seconds: Any) -> None:
    obj = held_object()
    del obj["metadata"]["annotations"][ANN_DURATION_MS]
    obj = with_changes(obj, "spec.leaseDurationSeconds", seconds)
    with pytest.raises(MalformedLease, match=r"spec\.leaseDurationSeconds: (must be a positive integer|missing)"):
        record_from_object(obj)


def test_malformed_lease_message_starts_with_the_lease_name() -> None:
    with pytest.raises(MalformedLease, match=r"^egressd-172-18-0-42: spec\.leaseTransitions"):
        record_from_object(with_changes(held_object(), "spec.leaseTransitions", -1))


# --- what a lease may claim, and values that used to escape as other exceptions ------------

HUGE = "9" * 400
"""The 400-digit ``lease-duration-ms`` that once raised OverflowError in every gateway."""


def malformed(obj: Any) -> str:
    """The message of the MalformedLease that reading ``obj`` must raise."""
    with pytest.raises(MalformedLease) as info:
        record_from_object(obj)
    return str(info.value)


def with_duration_ms(ms: Any) -> dict[str, Any]:
    obj = held_object()
    obj["metadata"]["annotations"][ANN_DURATION_MS] = ms
    return obj


def with_seconds(seconds: Any) -> dict[str, Any]:
    obj = held_object()
    del obj["metadata"]["annotations"][ANN_DURATION_MS]
    obj["spec"]["leaseDurationSeconds"] = seconds
    return obj


def test_a_400_digit_duration_annotation_is_malformed_and_not_echoed() -> None:
    message = malformed(with_duration_ms(HUGE))
    assert message.startswith(f"egressd-172-18-0-42: metadata.annotations[{ANN_DURATION_MS}]: must be at most")
    assert "(400 characters)" in message
    assert len(message) < 200


@pytest.mark.parametrize(
    "ms",
    [str(MAX_LEASE_DURATION * 1000 + 1), str(365 * 24 * 3600 * 1000), "1" + "0" * 30, "+" + HUGE],
    ids=["just-above", "a-year", "30-digits", "signed-400-digits"],
)
def test_a_duration_annotation_above_the_maximum_is_malformed(ms: str) -> None:
    assert f"must be at most {MAX_LEASE_DURATION * 1000} ms" in malformed(with_duration_ms(ms))


def test_the_maximum_duration_itself_is_accepted() -> None:
    assert record_from_object(with_duration_ms(str(MAX_LEASE_DURATION * 1000))).lease_duration == MAX_LEASE_DURATION
    assert record_from_object(with_seconds(MAX_LEASE_DURATION)).lease_duration == MAX_LEASE_DURATION


@pytest.mark.parametrize(
    "ms",
    ["\u0663\u0660\u0660\u0660", "2_500", "2500.0", "0x9c4", "", " ", 2500, 2.5, None, True, ["2500"]],
    ids=[
        "arabic-indic-digits",
        "underscore",
        "decimal",
        "hex",
        "empty",
        "blank",
        "int",
        "float",
        "null",
        "bool",
        "list",
    ],
)
def test_a_duration_annotation_that_is_not_ascii_digits_is_malformed(ms: Any) -> None:
    obj = with_duration_ms(ms)
    if ms is None:  # an annotation is a string: null is not one
        obj["metadata"]["annotations"][ANN_DURATION_MS] = None
        del obj["spec"]["leaseDurationSeconds"]
    assert re.search(rf"annotations\[{re.escape(ANN_DURATION_MS)}\]|leaseDurationSeconds", malformed(obj))


@pytest.mark.parametrize(
    "seconds",
    [MAX_LEASE_DURATION + 1, 2**31, 10**400, math.inf, -math.inf, math.nan, 1e309],
    ids=["above-maximum", "int32-overflow", "400-digits", "inf", "-inf", "nan", "1e309"],
)
def test_a_huge_or_non_finite_lease_duration_seconds_is_malformed(seconds: Any) -> None:
    message = malformed(with_seconds(seconds))
    assert message.startswith("egressd-172-18-0-42: spec.leaseDurationSeconds: must be")
    assert len(message) < 200


def test_lease_duration_seconds_of_1e309_as_the_api_sends_it() -> None:
    obj = json.loads(json.dumps(with_seconds(0)).replace('"leaseDurationSeconds": 0', '"leaseDurationSeconds": 1e309'))
    assert "spec.leaseDurationSeconds: must be a positive integer, got inf" in malformed(obj)


@pytest.mark.parametrize(
    "text",
    [
        "0001-01-01T00:00:00.000000+01:00",
        "0001-01-01T00:30:00+00:31",
        "9999-12-31T23:59:59.999999-01:00",
        "9999-12-31T23:30:00-00:31",
    ],
    ids=["before-year-1", "before-year-1-by-a-minute", "after-year-9999", "after-year-9999-by-a-minute"],
)
@pytest.mark.parametrize("key", ["renewTime", "acquireTime"])
def test_a_time_whose_offset_leaves_the_years_1_to_9999_is_malformed(key: str, text: str) -> None:
    assert f"spec.{key}: not a MicroTime" in malformed(with_changes(held_object(), f"spec.{key}", text))


def test_parse_time_turns_an_overflow_into_value_error() -> None:
    with pytest.raises(ValueError, match="outside the years 1 to 9999"):
        parse_time("9999-12-31T23:59:59-01:00")


def test_a_parsed_time_that_leaves_the_years_1_to_9999_is_malformed() -> None:
    late = datetime(9999, 12, 31, 23, 59, tzinfo=timezone(timedelta(hours=-1)))
    assert "spec.renewTime: " in malformed(with_changes(held_object(), "spec.renewTime", late))
    naive = datetime(2025, 3, 1, 9, 30)
    assert "spec.renewTime: a time without a time zone" in malformed(
        with_changes(held_object(), "spec.renewTime", naive)
    )


@pytest.mark.parametrize(
    "key", [ANN_EGRESS_IP, ANN_HOLDER_ADDRESS, ANN_INCARNATION, ANN_PREFERRED_HOLDER, TRANSITION_REASON]
)
@pytest.mark.parametrize(
    "value", [42, ["172.18.0.5"], {"a": 1}, 1.5, False], ids=["int", "list", "map", "float", "bool"]
)
def test_an_annotation_that_is_not_a_string_is_malformed(key: str, value: Any) -> None:
    obj = held_object()
    obj["metadata"]["annotations"][key] = value
    assert f"metadata.annotations[{key}]: must be a string" in malformed(obj)


@pytest.mark.parametrize("obj", [None, [], "lease", 42, 1e309], ids=["null", "list", "str", "int", "float"])
def test_an_object_that_is_not_a_mapping_is_malformed(obj: Any) -> None:
    message = malformed(obj)
    assert message.startswith(("object: must be an object", "metadata.name: missing"))


def test_a_name_longer_than_any_object_name_is_malformed_and_not_echoed() -> None:
    message = malformed(with_changes(held_object(), "metadata", {**held_object()["metadata"], "name": "x" * 10_000}))
    assert message == "metadata.name: longer than 253 characters (10000)"


# --- the epoch is an int32 and wraps ---------------------------------------------------

INT32_MAX = 2**31 - 1


def test_the_largest_int32_epoch_is_read() -> None:
    assert record_from_object(with_changes(held_object(), "spec.leaseTransitions", INT32_MAX)).transitions == INT32_MAX


@pytest.mark.parametrize(
    "value", [INT32_MAX + 1, 2**32, 10**400, -1, -(2**31)], ids=["int32+1", "uint32", "400-digits", "-1", "int32-min"]
)
def test_an_epoch_outside_int32_from_the_api_is_malformed(value: int) -> None:
    message = malformed(with_changes(held_object(), "spec.leaseTransitions", value))
    assert message.startswith("egressd-172-18-0-42: spec.leaseTransitions: must be a non-negative integer")
    assert len(message) < 200


def test_taking_over_at_the_largest_epoch_wraps_to_zero_and_can_be_written_and_read() -> None:
    rec = take(record(transitions=INT32_MAX), "kind-worker4", "77aa01")
    assert rec.transitions == 0
    obj = object_from_record(rec, "egressd")
    assert obj["spec"]["leaseTransitions"] == 0
    assert record_from_object({**obj, "metadata": {**obj["metadata"], "resourceVersion": "1"}}).transitions == 0


def test_renewing_at_the_largest_epoch_keeps_it() -> None:
    assert take(record(transitions=INT32_MAX), "kind-worker3", "3f9c2b").transitions == INT32_MAX


def test_a_new_holder_after_release_at_the_largest_epoch_wraps_too() -> None:
    free = released(record(transitions=INT32_MAX), successor=None, now=T1)
    assert take(free, "kind-worker3", "3f9c2b").transitions == 0


@pytest.mark.parametrize(
    ("newer", "older"),
    [(5, 4), (0, INT32_MAX), (3, INT32_MAX - 2), (2**30 - 1, 0)],
    ids=["plain", "wrapped", "wrapped-by-a-few", "just-under-half-the-range"],
)
def test_epoch_order_survives_the_wrap(newer: int, older: int) -> None:
    assert epoch_order(newer, older) == 1
    assert epoch_order(older, newer) == -1
    assert epoch_order(newer, newer) == epoch_order(older, older) == 0


@given(st.integers(min_value=0, max_value=EPOCH_MODULUS - 1), st.integers(min_value=1, max_value=2**30 - 1))
@settings(max_examples=300, deadline=None)
def test_a_later_epoch_is_newer_across_the_wrap(epoch: int, changes: int) -> None:
    later = epoch
    for _ in range(min(changes, 3)):
        later = next_epoch(later)
        assert 0 <= later <= INT32_MAX
    assert epoch_order(later, epoch) == 1
    far = (epoch + changes) % EPOCH_MODULUS
    assert epoch_order(far, epoch) == 1
    assert epoch_order(epoch, far) == -1


# --- any input: a record or MalformedLease, never anything else ----------------------

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.from_regex(r"[+-]?[0-9]{1,400}", fullmatch=True),
    st.from_regex(r"-?\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?([Zz]|[+-]\d\d:\d\d)?", fullmatch=True),
    st.sampled_from(["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-23:59", "172.18.0.42", "fd00::42", HUGE]),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)
FIELDS = [
    "metadata",
    "metadata.name",
    "metadata.resourceVersion",
    "metadata.annotations",
    *(f"metadata.annotations.{key}" for key in (ANN_EGRESS_IP, ANN_DURATION_MS, ANN_HOLDER_ADDRESS, ANN_INCARNATION)),
    *(f"metadata.annotations.{key}" for key in (ANN_PREFERRED_HOLDER, TRANSITION_REASON)),
    "spec",
    *(f"spec.{key}" for key in ("holderIdentity", "leaseDurationSeconds", "leaseTransitions", "preferredHolder")),
    *(f"spec.{key}" for key in ("acquireTime", "renewTime")),
]


def set_field(obj: dict[str, Any], path: str, value: Any) -> None:
    """Set ``path`` (dots between keys; an annotation key's own dots are kept) if its parents are objects."""
    head, _, rest = path.partition(".")
    if not rest:
        obj[head] = value
        return
    if head == "annotations":
        obj[head] = obj.get(head) if isinstance(obj.get(head), dict) else {}
        obj[head][rest] = value
        return
    if isinstance(obj.get(head), dict):
        set_field(obj[head], rest, value)


@st.composite
def lease_like_objects(draw: st.DrawFn) -> Any:
    """Mostly a real Lease with some fields replaced by arbitrary JSON values
    (so the checks deep inside are reached), sometimes anything at all."""
    if draw(st.integers(0, 9)) == 0:
        return draw(json_values)
    obj = held_object()
    for path in draw(st.lists(st.sampled_from(FIELDS), max_size=4, unique=True)):
        set_field(obj, path, draw(json_values))
    return obj


@given(lease_like_objects())
@settings(max_examples=600, deadline=None)
def test_any_object_is_a_record_or_malformed(obj: Any) -> None:
    try:
        rec = record_from_object(obj)
    except MalformedLease as exc:
        assert str(exc)
        assert len(str(exc)) < 600  # bad values are quoted cut short
        return
    assert isinstance(rec, LeaseRecord)
    assert 0 <= rec.transitions < EPOCH_MODULUS
    assert 0 <= rec.lease_duration <= MAX_LEASE_DURATION
    assert all(t is None or t.tzinfo is UTC for t in (rec.acquire_time, rec.renew_time))
    assert all(v is None or isinstance(v, str) for v in (rec.holder, rec.holder_address, rec.preferred_holder))
    if rec.holder is not None:
        assert rec.lease_duration > 0


# --- writing -----------------------------------------------------------------------


def test_object_from_record_has_the_shape_of_a_lease() -> None:
    obj = object_from_record(record(preferred_holder="kind-worker4"), "egressd")
    assert obj == {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": "egressd-172-18-0-42",
            "namespace": "egressd",
            "resourceVersion": "4711",
            "labels": {"app.kubernetes.io/managed-by": "egressd"},
            "annotations": {
                ANN_EGRESS_IP: "172.18.0.42",
                ANN_DURATION_MS: "2500",
                ANN_HOLDER_ADDRESS: "172.18.0.5",
                ANN_INCARNATION: "3f9c2b",
                ANN_PREFERRED_HOLDER: "kind-worker4",
            },
        },
        "spec": {
            "holderIdentity": "kind-worker3",
            "leaseDurationSeconds": 3,
            "leaseTransitions": 4,
            "acquireTime": "2025-03-01T09:30:00.123456Z",
            "renewTime": "2025-03-01T09:30:01.373456Z",
        },
    }


def test_object_without_resource_version_is_a_create() -> None:
    obj = object_from_record(record(resource_version=""), "egressd")
    assert "resourceVersion" not in obj["metadata"]


@pytest.mark.parametrize(
    "rec",
    [
        record(),
        record(preferred_holder="kind-worker4"),
        record(lease_duration=0.75, transitions=0),
        record(holder=None, holder_address=None, incarnation=None, acquire_time=None, preferred_holder="kind-worker4"),
        record(egress_ip="fd00::42", name=lease_name("fd00::42")),
    ],
    ids=["held", "handoff-requested", "sub-second", "released", "ipv6"],
)
def test_object_from_record_round_trips(rec: LeaseRecord) -> None:
    assert record_from_object(object_from_record(rec, "egressd")) == rec


def test_a_free_lease_without_duration_can_be_written_back_and_read_again() -> None:
    free = record(holder=None, holder_address=None, incarnation=None, acquire_time=None, lease_duration=0.0)
    assert record_from_object(object_from_record(free, "egressd")).free


def test_whole_seconds_field_is_rounded_up_and_at_least_one() -> None:
    assert object_from_record(record(lease_duration=0.75), "egressd")["spec"]["leaseDurationSeconds"] == 1
    assert object_from_record(record(lease_duration=2.5), "egressd")["spec"]["leaseDurationSeconds"] == 3
    assert object_from_record(record(lease_duration=2.0), "egressd")["spec"]["leaseDurationSeconds"] == 2


def test_written_times_are_microtime() -> None:
    spec = object_from_record(record(renew_time=datetime(2025, 3, 1, 9, 30, tzinfo=UTC)), "egressd")["spec"]
    assert spec["renewTime"] == "2025-03-01T09:30:00.000000Z"


# --- acquire, renew, release -------------------------------------------------------


def take(base: LeaseRecord | None, holder: str, incarnation: str, now: datetime = T1) -> LeaseRecord:
    return held_by(
        base,
        name="egressd-172-18-0-42",
        egress_ip="172.18.0.42",
        holder=holder,
        holder_address="172.18.0.6" if holder == "kind-worker4" else "172.18.0.5",
        incarnation=incarnation,
        lease_duration=2.5,
        now=now,
    )


def test_first_holder_creates_the_lease_at_epoch_zero() -> None:
    rec = take(None, "kind-worker3", "3f9c2b")
    assert rec == LeaseRecord(
        name="egressd-172-18-0-42",
        egress_ip="172.18.0.42",
        holder="kind-worker3",
        lease_duration=2.5,
        transitions=0,
        resource_version="",
        acquire_time=T1,
        renew_time=T1,
        holder_address="172.18.0.5",
        incarnation="3f9c2b",
    )


def test_renewing_keeps_the_epoch_and_the_acquire_time() -> None:
    later = T1 + timedelta(seconds=0.25)
    rec = take(record(), "kind-worker3", "3f9c2b", now=later)
    assert rec.transitions == 4
    assert rec.acquire_time == T0
    assert rec.renew_time == later
    assert rec.resource_version == "4711"  # the optimistic write is against the version we read


def test_a_new_holder_bumps_the_epoch_and_starts_a_tenure() -> None:
    rec = take(record(), "kind-worker4", "77aa01")
    assert rec.transitions == 5
    assert (rec.holder, rec.incarnation, rec.holder_address) == ("kind-worker4", "77aa01", "172.18.0.6")
    assert rec.acquire_time == rec.renew_time == T1


def test_taking_a_released_lease_bumps_the_epoch() -> None:
    free = released(record(), successor=None, now=T1)
    assert take(free, "kind-worker3", "3f9c2b").transitions == 5


def test_a_new_incarnation_of_the_same_node_keeps_the_epoch_but_starts_a_tenure() -> None:
    rec = take(record(), "kind-worker3", "new-process")
    assert rec.transitions == 4
    assert rec.incarnation == "new-process"
    assert rec.acquire_time == T1


def test_renewing_keeps_a_pending_handoff_request() -> None:
    rec = take(record(preferred_holder="kind-worker4"), "kind-worker3", "3f9c2b")
    assert rec.preferred_holder == "kind-worker4"


def test_the_named_successor_taking_over_clears_the_request() -> None:
    free = released(record(), successor="kind-worker4", now=T1)
    rec = take(free, "kind-worker4", "77aa01")
    assert rec.preferred_holder is None
    assert rec.transitions == 5


def test_another_node_taking_over_clears_the_request_too() -> None:
    free = released(record(), successor="kind-worker5", now=T1)
    assert take(free, "kind-worker4", "77aa01").preferred_holder is None


def test_released_clears_the_holder_and_names_the_successor() -> None:
    later = T1 + timedelta(seconds=3)
    rec = released(record(), successor="kind-worker4", now=later)
    assert rec.free
    assert (rec.holder, rec.holder_address, rec.incarnation, rec.acquire_time) == (None, None, None, None)
    assert rec.preferred_holder == "kind-worker4"
    assert rec.renew_time == later
    assert (rec.transitions, rec.resource_version, rec.lease_duration) == (4, "4711", 2.5)


def test_released_without_successor_leaves_no_preferred_holder() -> None:
    assert released(record(preferred_holder="kind-worker4"), successor=None, now=T1).preferred_holder is None


def test_released_lease_is_written_with_an_empty_holder() -> None:
    obj = object_from_record(released(record(), successor="kind-worker4", now=T1), "egressd")
    assert obj["spec"]["holderIdentity"] is None
    assert "acquireTime" not in obj["spec"]
    assert ANN_HOLDER_ADDRESS not in obj["metadata"]["annotations"]
    assert obj["metadata"]["annotations"][ANN_PREFERRED_HOLDER] == "kind-worker4"


# --- why the holder last changed ---------------------------------------------------------


def test_the_transition_reason_annotation_is_read_and_written() -> None:
    obj = held_object()
    obj["metadata"]["annotations"][TRANSITION_REASON] = "lost-lease"
    rec = record_from_object(obj)
    assert rec.transition_reason == "lost-lease"
    assert object_from_record(rec, "egressd")["metadata"]["annotations"][TRANSITION_REASON] == "lost-lease"
    del obj["metadata"]["annotations"][TRANSITION_REASON]
    assert record_from_object(obj).transition_reason is None
    assert TRANSITION_REASON not in object_from_record(record_from_object(obj), "egressd")["metadata"]["annotations"]


def test_a_new_tenure_records_its_reason_and_renewals_keep_it() -> None:
    def acquire(base: LeaseRecord | None, holder: str, incarnation: str, reason: str) -> LeaseRecord:
        return held_by(
            base,
            name="egressd-172-18-0-42",
            egress_ip="172.18.0.42",
            holder=holder,
            holder_address=None,
            incarnation=incarnation,
            lease_duration=2.5,
            now=T1,
            reason=reason,
        )

    first = acquire(None, "kind-worker3", "3f9c2b", "free")
    assert first.transition_reason == "free"
    assert acquire(first, "kind-worker3", "3f9c2b", "renew").transition_reason == "free"
    assert acquire(first, "kind-worker4", "77aa01", "expired").transition_reason == "expired"
    assert released(first, successor=None, now=T1).transition_reason == "released"
    assert released(first, successor="kind-worker4", now=T1).transition_reason == "released-to-kind-worker4"
