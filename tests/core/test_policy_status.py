"""The .status egressd writes on a policy."""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import pytest

from tests.core.cluster_builders import (
    IP42,
    IP43,
    NOW1,
    NOW2,
    conditions,
    ip,
    lease,
    policy,
    status_of,
    walkthrough,
)

# --- policy status ---------------------------------------------------------------------


def test_status_of_a_ready_policy() -> None:
    c = walkthrough()
    status = status_of(
        c,
        {
            IP42: replace(lease("172.18.0.42", "kind-worker3", 4), transition_reason="renew-deadline"),
            IP43: lease("172.18.0.43", "kind-worker4", 1),
        },
    )
    assert status == {
        "observedGeneration": 1,
        "selectedPods": 2,
        "egressIPs": [
            {
                "egressIP": "172.18.0.42",
                "node": "kind-worker3",
                "epoch": 4,
                "lastTransitionTime": "2026-11-24T10:01:02.345678Z",
                "reason": "renew-deadline",
            },
            {
                "egressIP": "172.18.0.43",
                "node": "kind-worker4",
                "epoch": 1,
                "lastTransitionTime": "2026-11-24T10:01:02.345678Z",
                "reason": "",
            },
        ],
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "Ready",
                "message": "every egress IP has an owner: 172.18.0.42 on kind-worker3, 172.18.0.43 on kind-worker4",
                "lastTransitionTime": NOW1,
                "observedGeneration": 1,
            },
            {
                "type": "Degraded",
                "status": "False",
                "reason": "AsExpected",
                "message": "2 pods selected, 2 candidate nodes (kind-worker3, kind-worker4)",
                "lastTransitionTime": NOW1,
                "observedGeneration": 1,
            },
        ],
    }


def test_status_egress_ips_without_owner() -> None:
    c = walkthrough()
    status = status_of(c, {IP42: lease("172.18.0.42", "kind-worker3", 2), IP43: lease("172.18.0.43", None, 5)})
    assert status["egressIPs"][1] == {"egressIP": "172.18.0.43", "node": "", "epoch": 5, "reason": ""}
    assert conditions(status) == {"Ready": ("False", "NotOwned"), "Degraded": ("True", "NotOwned")}
    ready = status["conditions"][0]
    assert ready["message"] == "no node owns 172.18.0.43"
    absent = status_of(c, {IP42: lease("172.18.0.42", "kind-worker3", 2)})
    assert absent["egressIPs"][1] == {"egressIP": "172.18.0.43", "node": "", "epoch": 0, "reason": ""}
    assert conditions(absent)["Ready"] == ("False", "NotOwned")
    assert "172.18.0.42" not in absent["conditions"][0]["message"]
    none = status_of(c, {IP42: None, IP43: None})
    assert none["conditions"][0]["message"] == "no node owns 172.18.0.42, 172.18.0.43"


def test_status_without_candidate() -> None:
    c = walkthrough()
    c.replace("policies", [policy(node_selector={"matchLabels": {"egress-gw": "yes"}})])
    status = status_of(c, {})
    assert conditions(status) == {"Ready": ("False", "NoCandidate"), "Degraded": ("True", "NoCandidate")}
    assert "egress-gw=yes" in status["conditions"][0]["message"]
    assert "no node owns 172.18.0.42, 172.18.0.43" in status["conditions"][1]["message"]
    assert [e["node"] for e in status["egressIPs"]] == ["", ""]


def test_status_of_an_invalid_policy() -> None:
    c = walkthrough()
    c.apply("policies", "ADDED", policy("broken", ips=("127.0.0.1",), generation=6))
    status = status_of(c, {}, name="broken")
    assert status["observedGeneration"] == 6
    assert status["selectedPods"] == 0
    assert status["egressIPs"] == []
    assert conditions(status) == {"Ready": ("False", "Invalid"), "Degraded": ("False", "AsExpected")}
    assert "spec.egressGateway.egressIPs[0]" in status["conditions"][0]["message"]
    assert status["conditions"][0]["observedGeneration"] == 6


def test_status_of_a_conflicting_policy() -> None:
    c = walkthrough()
    c.apply(
        "policies",
        "ADDED",
        policy("younger", created="2026-11-25T00:00:00Z", ips=("172.18.0.43",), dst=("192.0.2.0/24",)),
    )
    held = {IP42: lease("172.18.0.42", "kind-worker3"), IP43: lease("172.18.0.43", "kind-worker4")}
    status = status_of(c, held, name="younger")
    assert conditions(status) == {"Ready": ("False", "EgressIPConflict"), "Degraded": ("False", "AsExpected")}
    assert "172.18.0.43 is already claimed by older policy outpost" in status["conditions"][0]["message"]
    assert status["egressIPs"] == []  # the owner of .43 serves outpost, not this policy
    assert status["selectedPods"] == 0


def test_status_with_overlapping_selection() -> None:
    c = walkthrough()
    c.apply(
        "policies",
        "ADDED",
        policy(
            "wing",
            created="2026-11-25T00:00:00Z",
            ips=("172.18.0.50",),
            selectors=[{"podSelector": {"matchLabels": {"class": "ywing"}}}],
        ),
    )
    status = status_of(c, {ip("172.18.0.50"): lease("172.18.0.50", "kind-worker4")}, name="wing")
    assert conditions(status) == {"Ready": ("True", "Ready"), "Degraded": ("True", "OverlappingSelection")}
    assert "default/ywing" in status["conditions"][1]["message"]
    assert "outpost" in status["conditions"][1]["message"]
    status = status_of(c, {}, name="wing")
    assert conditions(status) == {"Ready": ("False", "NotOwned"), "Degraded": ("True", "NotOwned")}
    assert "default/ywing" in status["conditions"][1]["message"]
    assert "no node owns 172.18.0.50" in status["conditions"][1]["message"]


def test_status_is_deterministic_and_keeps_transition_times() -> None:
    c = walkthrough()
    owned = {IP42: lease("172.18.0.42", "kind-worker3"), IP43: lease("172.18.0.43", "kind-worker4")}
    first = status_of(c, owned, None, NOW1)
    assert first == status_of(c, owned, None, NOW1)
    # written, read back, computed again later by another node: identical
    again = status_of(c, owned, copy.deepcopy(first), NOW2)
    assert again == first
    # an owner moves: Ready stays True, so its time is kept though its message changes
    moved = {**owned, IP43: lease("172.18.0.43", "kind-worker3", 1)}
    after_move = status_of(c, moved, first, NOW2)
    assert after_move["conditions"][0]["lastTransitionTime"] == NOW1
    assert after_move["conditions"][0]["message"] != first["conditions"][0]["message"]
    # an owner is lost: Ready and Degraded flip and take the new time
    lost = status_of(c, {**owned, IP43: lease("172.18.0.43", None, 1)}, after_move, NOW2)
    assert [(x["status"], x["lastTransitionTime"]) for x in lost["conditions"]] == [("False", NOW2), ("True", NOW2)]
    # stays lost with another reason: times kept
    later = status_of(c, {**owned, IP43: None}, lost, "2026-11-24T11:00:00Z")
    assert [x["lastTransitionTime"] for x in later["conditions"]] == [NOW2, NOW2]


def test_status_ignores_malformed_previous_conditions() -> None:
    c = walkthrough()
    owned = {IP42: lease("172.18.0.42", "kind-worker3"), IP43: lease("172.18.0.43", "kind-worker4")}
    previous = {
        "conditions": [
            "junk",
            {"type": "Ready", "status": "True"},
            {"type": "Degraded", "status": "False", "lastTransitionTime": "t0"},
        ]
    }
    status = status_of(c, owned, previous, NOW2)
    assert [x["lastTransitionTime"] for x in status["conditions"]] == [NOW2, "t0"]


@pytest.mark.parametrize(
    "previous",
    [{"conditions": 1}, {"conditions": "Ready"}, {"conditions": [{"type": ["Ready"], "status": "True"}]}],
    ids=["a-number", "a-string", "an-unhashable-type"],
)
def test_status_survives_a_stored_status_of_any_shape(previous: dict[str, Any]) -> None:
    c = walkthrough()
    owned = {IP42: lease("172.18.0.42", "kind-worker3"), IP43: lease("172.18.0.43", "kind-worker4")}
    status = status_of(c, owned, previous, NOW2)
    assert [x["lastTransitionTime"] for x in status["conditions"]] == [NOW2, NOW2]
