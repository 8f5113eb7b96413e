"""Kubernetes Events as values: their shape, and the rate limit per object and reason."""

from __future__ import annotations

from datetime import UTC, datetime

from egressd.core.kube_events import (
    EVENT_NAMESPACE,
    EventLimiter,
    node_ref,
    ownership_message,
    policy_ref,
    render_event,
    shared_event_name,
)

NOW = datetime(2026, 11, 24, 17, 40, 2, 118342, tzinfo=UTC)


def test_an_event_about_a_policy_names_it_and_lives_in_default() -> None:
    event = render_event(
        policy_ref("outpost", "uid-1"), type_="Normal", reason="EgressIPAcquired", message="m", node="w3", now=NOW
    )
    assert event["metadata"]["namespace"] == EVENT_NAMESPACE == "default"
    assert event["metadata"]["name"].startswith("outpost.")
    assert event["involvedObject"] == {
        "apiVersion": "egressd.io/v1alpha1",
        "kind": "EgressGatewayPolicy",
        "name": "outpost",
        "uid": "uid-1",
    }
    assert event["firstTimestamp"] == event["lastTimestamp"] == "2026-11-24T17:40:02Z"
    assert event["source"] == {"component": "egressd", "host": "w3"} and event["count"] == 1


def test_event_names_differ_by_time() -> None:
    a = render_event(node_ref("w3"), type_="Normal", reason="R", message="m", node="w3", now=NOW)
    b = render_event(
        node_ref("w3"), type_="Normal", reason="R", message="m", node="w3", now=NOW.replace(microsecond=118343)
    )
    assert a["metadata"]["name"] != b["metadata"]["name"]
    assert "uid" not in a["involvedObject"]


def test_ownership_message() -> None:
    text = ownership_message("acquired", egress_ip="172.18.0.42", node="w3", epoch=4, reason="expired", detail="")
    assert text == "w3 took over 172.18.0.42 (epoch 4): expired"
    text = ownership_message("released", egress_ip="172.18.0.42", node="w3", epoch=4, reason="shutdown", detail="to w4")
    assert text == "w3 handed off 172.18.0.42 (epoch 4): shutdown; to w4"


def test_limiter_allows_a_burst_then_one_per_interval_and_counts_what_it_held() -> None:
    limiter = EventLimiter(burst=3, interval=10.0)
    key = ("Node", "w3", "EgressIPAcquired")
    assert [limiter.allow(key, 0.0)[0] for _ in range(5)] == [True, True, True, False, False]
    assert limiter.allow(key, 5.0) == (False, 0)
    assert limiter.allow(key, 10.0) == (True, 3)  # three held back since the last one that passed
    assert limiter.allow(key, 10.1) == (False, 0)
    assert limiter.allow(("Node", "w4", "EgressIPAcquired"), 10.1) == (True, 0)  # keys are independent


def test_limiter_refills_up_to_the_burst_only() -> None:
    limiter = EventLimiter(burst=2, interval=1.0)
    key = ("EgressGatewayPolicy", "outpost", "EgressIPLost")
    assert limiter.allow(key, 0.0)[0] and limiter.allow(key, 0.0)[0]
    results = [limiter.allow(key, 1000.0)[0] for _ in range(3)]
    assert results == [True, True, False]


def test_shared_event_name_is_the_same_on_every_node_and_new_for_news() -> None:
    ref = policy_ref("outpost", "uid-1")
    name = shared_event_name(ref, reason="Invalid", message="bad IP", generation=3)
    assert name == shared_event_name(policy_ref("outpost", "uid-1"), reason="Invalid", message="bad IP", generation=3)
    assert name.startswith("outpost.") and len(name) == len("outpost.") + 16
    others = {
        shared_event_name(ref, reason="Invalid", message="bad IP", generation=4),
        shared_event_name(ref, reason="Invalid", message="other", generation=3),
        shared_event_name(ref, reason="EgressIPConflict", message="bad IP", generation=3),
        shared_event_name(policy_ref("outpost", "uid-2"), reason="Invalid", message="bad IP", generation=3),
    }
    assert name not in others and len(others) == 4
    long = shared_event_name(policy_ref("p" * 253), reason="Invalid", message="m", generation=1)
    assert len(long) == 253
    body = render_event(ref, type_="Warning", reason="Invalid", message="m", node="n", now=NOW, name=name)
    assert body["metadata"]["name"] == name
