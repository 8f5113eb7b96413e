"""The node lease: its object, read back, and any object read defensively."""

from __future__ import annotations

import copy
import re
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from egressd.core.errors import MalformedLease
from egressd.core.lease import ANN_DURATION_MS, ANN_HOLDER_ADDRESS, ANN_INCARNATION, MAX_LEASE_DURATION, lease_name
from egressd.core.node_lease import (
    ANN_HEARTBEAT_SEQ,
    ANN_PEERS,
    KIND_NODE,
    LABEL_KIND,
    NodeLeaseRecord,
    is_node_lease,
    node_lease_name,
    node_object_from_record,
    node_record_from_object,
)
from tests.core.test_lease_record import json_values, set_field

RECORD = NodeLeaseRecord(
    name="egressd-node-kind-worker3",
    node="kind-worker3",
    incarnation="0123abcd",
    lease_duration=2.5,
    resource_version="42",
    address="172.18.0.5",
    peers=("kind-worker4", "kind-worker5"),
    renew_time=datetime(2026, 1, 1, 12, 0, 0, 500, tzinfo=UTC),
    heartbeat_seq=1234,
)


def node_object() -> dict[str, Any]:
    return node_object_from_record(RECORD, "egressd")


def test_a_written_node_lease_reads_back_the_same() -> None:
    obj = node_object()
    assert obj["metadata"]["labels"][LABEL_KIND] == KIND_NODE
    assert obj["metadata"]["annotations"][ANN_PEERS] == "kind-worker4,kind-worker5"
    assert obj["metadata"]["annotations"][ANN_DURATION_MS] == "2500"
    assert obj["metadata"]["annotations"][ANN_HEARTBEAT_SEQ] == "1234"
    assert node_record_from_object(obj) == RECORD


def test_the_heartbeat_sequence_is_optional() -> None:
    obj = node_object_from_record(replace(RECORD, heartbeat_seq=None), "egressd")
    assert ANN_HEARTBEAT_SEQ not in obj["metadata"]["annotations"]  # no mesh, or an earlier version
    assert node_record_from_object(obj).heartbeat_seq is None
    obj["metadata"]["annotations"][ANN_HEARTBEAT_SEQ] = "0"
    assert node_record_from_object(obj).heartbeat_seq == 0


def test_node_leases_and_claims_cannot_be_mistaken_by_name() -> None:
    assert node_lease_name("kind-worker3") == "egressd-node-kind-worker3"
    assert is_node_lease(node_lease_name("kind-worker3"))
    for ip in ("172.18.0.42", "fd00::42", "ffff::1"):
        assert not is_node_lease(lease_name(ip))


MALFORMED = {
    "holder-other-node": ("spec.holderIdentity", "kind-worker9", r"holderIdentity: 'kind-worker9' is not the node"),
    "holder-missing": ("spec.holderIdentity", None, r"spec\.holderIdentity: must be the node's name"),
    "incarnation-missing": (f"metadata.annotations.{ANN_INCARNATION}", "", re.escape(f"[{ANN_INCARNATION}]: missing")),
    "address-not-ip": (f"metadata.annotations.{ANN_HOLDER_ADDRESS}", "gw", "not an IP: 'gw'"),
    "peer-empty": (f"metadata.annotations.{ANN_PEERS}", "a,,b", "not a node name: ''"),
    "duration-huge": (f"metadata.annotations.{ANN_DURATION_MS}", "9" * 40, "must be at most"),
    "name-a-claim": ("metadata.name", "egressd-172-18-0-42", "a node lease is named egressd-node-"),
    "rv-missing": ("metadata.resourceVersion", "", r"metadata\.resourceVersion: missing"),
    "seq-negative": (f"metadata.annotations.{ANN_HEARTBEAT_SEQ}", "-1", "not a sequence number: '-1'"),
    "seq-text": (f"metadata.annotations.{ANN_HEARTBEAT_SEQ}", "12a", "not a sequence number: '12a'"),
    "seq-padded": (f"metadata.annotations.{ANN_HEARTBEAT_SEQ}", "007", "not a sequence number: '007'"),
    "seq-empty": (f"metadata.annotations.{ANN_HEARTBEAT_SEQ}", "", "not a sequence number: ''"),
    "seq-unicode-digits": (f"metadata.annotations.{ANN_HEARTBEAT_SEQ}", "\u0663", "not a sequence number"),
    "seq-huge": (f"metadata.annotations.{ANN_HEARTBEAT_SEQ}", "1" + "0" * 20, "not a sequence number"),
    "seq-above-max": (f"metadata.annotations.{ANN_HEARTBEAT_SEQ}", "9" * 19, "is above"),
    "seq-number": (f"metadata.annotations.{ANN_HEARTBEAT_SEQ}", 5, "must be a string"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_node_lease_names_its_field(case: str) -> None:
    path, value, message = MALFORMED[case]
    obj = node_object()
    if path.startswith("metadata.annotations."):
        obj["metadata"]["annotations"][path.removeprefix("metadata.annotations.")] = value
    else:
        set_field(obj, path, value)
    with pytest.raises(MalformedLease, match=message):
        node_record_from_object(obj)


def test_peers_are_optional_and_read_sorted_and_unique() -> None:
    obj = node_object()
    obj["metadata"]["annotations"][ANN_PEERS] = "b,a,b"
    assert node_record_from_object(obj).peers == ("a", "b")
    del obj["metadata"]["annotations"][ANN_PEERS]
    assert node_record_from_object(obj).peers == ()


FIELDS = [
    "metadata",
    "metadata.name",
    "metadata.resourceVersion",
    "metadata.annotations",
    *(
        f"metadata.annotations.{key}"
        for key in (ANN_DURATION_MS, ANN_HOLDER_ADDRESS, ANN_INCARNATION, ANN_PEERS, ANN_HEARTBEAT_SEQ)
    ),
    "spec",
    *(f"spec.{key}" for key in ("holderIdentity", "leaseDurationSeconds", "renewTime")),
]


PLAUSIBLE = st.one_of(
    st.from_regex(r"[a-z0-9][a-z0-9.,-]{0,20}", fullmatch=True),
    st.sampled_from(["egressd-node-kind-worker4", "kind-worker4", "2500", "fd00::5", "a,b", "0", "01"]),
    st.integers(-(2**64), 2**64).map(str),
)
"""Strings a node lease's fields could hold, so that records that parse are common."""


@st.composite
def node_lease_like_objects(draw: st.DrawFn) -> Any:
    """Mostly a real node lease with some fields replaced by arbitrary JSON
    values, sometimes anything at all."""
    if draw(st.integers(0, 9)) == 0:
        return draw(json_values)
    obj = copy.deepcopy(node_object())
    for path in draw(st.lists(st.sampled_from(FIELDS), max_size=3, unique=True)):
        value = draw(st.one_of(json_values, PLAUSIBLE))
        if path.startswith("metadata.annotations.") and isinstance(obj.get("metadata"), dict):
            annotations = obj["metadata"].get("annotations")
            if isinstance(annotations, dict):
                annotations[path.removeprefix("metadata.annotations.")] = value
        else:
            set_field(obj, path, value)
    return obj


@given(node_lease_like_objects())
@settings(max_examples=600, deadline=None)
def test_any_object_is_a_node_lease_or_malformed(obj: Any) -> None:
    try:
        rec = node_record_from_object(obj)
    except MalformedLease as exc:
        assert str(exc)
        assert len(str(exc)) < 600
        return
    assert isinstance(rec, NodeLeaseRecord)
    assert rec.name == node_lease_name(rec.node)
    assert rec.incarnation and isinstance(rec.incarnation, str)
    assert 0 < rec.lease_duration <= MAX_LEASE_DURATION
    assert all(isinstance(p, str) and p for p in rec.peers)
    assert rec.heartbeat_seq is None or 0 <= rec.heartbeat_seq < 2**63
    assert list(rec.peers) == sorted(set(rec.peers))
