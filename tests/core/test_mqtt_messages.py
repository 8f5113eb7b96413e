"""MQTT topics, payloads, the two epoch rules and the ``mqtt:`` settings, without a broker."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from egressd.core.errors import Problem
from egressd.core.mqtt_messages import (
    IpState,
    Topics,
    clear_decision,
    defend_decision,
    ip_state,
    node_status,
    parse_ip_state,
    render,
    render_event,
    rfc3339,
)
from egressd.core.mqtt_settings import MqttSettings, MqttTls, parse_mqtt
from egressd.core.ownership_events import OwnershipEvent

T = Topics("egressd", "prod")
WALL = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
IP = "172.18.0.42"


def event(kind: str, epoch: int = 3, **kw: Any) -> OwnershipEvent:
    fields: dict[str, Any] = {"egress_ip": IP, "node": "gw-a", "epoch": epoch, "reason": "expired", **kw}
    return OwnershipEvent(kind=kind, **fields)  # type: ignore[arg-type]


def body(payload: bytes) -> Any:
    return json.loads(payload)


def state(owner: str | None, epoch: int) -> IpState:
    return IpState(ip=IP, owner=owner, epoch=epoch, since="2024-05-01T12:00:00.000Z", reason="r")


# --- topics and payloads ----------------------------------------------------------------


def test_topics() -> None:
    assert T.ip(IP) == "egressd/prod/ip/172.18.0.42"
    assert T.ip("fd00::42") == "egressd/prod/ip/fd00::42"
    assert T.ips == "egressd/prod/ip/+"
    assert T.events == "egressd/prod/events"
    assert T.node("kind-worker3") == "egressd/prod/node/kind-worker3"
    assert Topics("site/egress", "c1").events == "site/egress/c1/events"


def test_ip_of_reads_back_only_ip_topics() -> None:
    assert T.ip_of("egressd/prod/ip/172.18.0.42") == IP
    assert T.ip_of("egressd/prod/ip/fd00::42") == "fd00::42"
    assert T.ip_of("egressd/prod/ip/") is None
    assert T.ip_of("egressd/prod/ip/a/b") is None
    assert T.ip_of("egressd/prod/events") is None
    assert T.ip_of("egressd/other/ip/172.18.0.42") is None


def test_rfc3339_is_utc_with_milliseconds() -> None:
    assert rfc3339(WALL) == "2024-05-01T12:00:00.123Z"
    assert rfc3339(datetime(2024, 5, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))) == "2024-05-01T12:00:00.000Z"
    with pytest.raises(ValueError, match="timezone"):
        rfc3339(datetime(2024, 5, 1))  # naive: the point of the test


def test_acquired_retains_this_node_as_owner() -> None:
    acquired, stream = render(T, event("acquired", epoch=7), "gw-a", WALL)
    assert acquired.topic == "egressd/prod/ip/172.18.0.42"
    assert acquired.retain
    assert body(acquired.payload) == {
        "ip": IP,
        "owner": "gw-a",
        "epoch": 7,
        "since": "2024-05-01T12:00:00.123Z",
        "reason": "expired",
    }
    assert stream.topic == "egressd/prod/events"
    assert not stream.retain


@pytest.mark.parametrize("kind", ["released", "stepped-down", "lost", "fenced"])
def test_letting_go_retains_no_owner(kind: str) -> None:
    retained, _ = render(T, event(kind, epoch=7, reason="shutdown"), "gw-a", WALL)
    assert retained.retain
    assert body(retained.payload)["owner"] is None
    assert body(retained.payload)["epoch"] == 7
    assert body(retained.payload)["reason"] == "shutdown"


@pytest.mark.parametrize("kind", ["renew-failed", "conflict", "drift"])
def test_other_kinds_only_go_to_the_stream(kind: str) -> None:
    (only,) = render(T, event(kind), "gw-a", WALL)
    assert only.topic == T.events
    assert ip_state(event(kind), "gw-a", WALL) is None


def test_the_stream_message_carries_every_field() -> None:
    e = event("conflict", epoch=4, reason="arp-conflict", detail="claimed by 02:42:ac:12:00:09", at=81.25)
    e = OwnershipEvent(**{**e.__dict__, "extra": {"mac": "02:42:ac:12:00:09"}})
    out = render_event(T, e, "gw-a", WALL)
    assert body(out.payload) == {
        "kind": "conflict",
        "ip": IP,
        "node": "gw-a",
        "epoch": 4,
        "reason": "arp-conflict",
        "detail": "claimed by 02:42:ac:12:00:09",
        "extra": {"mac": "02:42:ac:12:00:09"},
        "time": "2024-05-01T12:00:00.123Z",
        "at": 81.25,
    }


def test_node_status_and_last_will() -> None:
    online = node_status(T, "gw-a", online=True, wall=WALL)
    assert online.topic == "egressd/prod/node/gw-a"
    assert online.retain
    assert body(online.payload) == {"node": "gw-a", "online": True, "since": "2024-05-01T12:00:00.123Z"}
    will = node_status(T, "gw-a", online=False)
    assert body(will.payload) == {"node": "gw-a", "online": False}


def test_ip_state_round_trips() -> None:
    s = ip_state(event("acquired", epoch=11), "gw-a", WALL)
    assert s is not None
    assert parse_ip_state(s.payload()) == s


@pytest.mark.parametrize(
    "payload",
    [b"", b"not json", b"[]", b'{"ip": 1}', b'{"ip": "x", "owner": null, "epoch": true}', b'{"ip": "x", "owner": 5}'],
)
def test_unreadable_retained_messages_are_none(payload: bytes) -> None:
    assert parse_ip_state(payload) is None


# --- the epoch rules --------------------------------------------------------------------------


def test_a_clear_goes_out_over_own_or_older_or_no_state() -> None:
    clear = state(None, 5)
    assert clear_decision(clear, None, "gw-a") == ""
    assert clear_decision(clear, state("gw-a", 5), "gw-a") == ""
    assert clear_decision(clear, state("gw-b", 4), "gw-a") == ""
    assert clear_decision(clear, state(None, 9), "gw-a") == ""


def test_a_clear_never_erases_another_owner_at_a_newer_or_equal_epoch() -> None:
    clear = state(None, 5)
    assert clear_decision(clear, state("gw-b", 6), "gw-a") == "newer-owner"
    assert clear_decision(clear, state("gw-b", 5), "gw-a") == "newer-owner"


def test_the_owner_defends_against_older_or_missing_states() -> None:
    mine = state("gw-a", 5)
    assert defend_decision(mine, state("gw-a", 5), "gw-a") == ""
    assert defend_decision(mine, None, "gw-a") == "retained-missing"
    assert defend_decision(mine, state(None, 4), "gw-a") == "older-epoch"
    assert defend_decision(mine, state("gw-b", 4), "gw-a") == "older-epoch"
    assert defend_decision(mine, state(None, 5), "gw-a") == "cleared-at-our-epoch"


def test_the_owner_yields_to_newer_epochs_and_never_fights_an_equal_claim() -> None:
    mine = state("gw-a", 5)
    assert defend_decision(mine, state("gw-b", 6), "gw-a") == ""
    assert defend_decision(mine, state(None, 6), "gw-a") == ""
    assert defend_decision(mine, state("gw-b", 5), "gw-a") == ""  # two claimants of one epoch: no ping-pong


INT32_MAX = 2**31 - 1


def test_the_epoch_rules_hold_across_the_wrap_of_the_epoch() -> None:
    """The holder change after int32 max writes epoch 0: the new owner at 0
    is newer than the old one at 2147483647, in both rules."""
    clear = state(None, INT32_MAX)
    assert clear_decision(clear, state("gw-b", 0), "gw-a") == "newer-owner"
    assert clear_decision(state(None, 0), state("gw-b", INT32_MAX), "gw-a") == ""
    mine = state("gw-a", 0)
    assert defend_decision(mine, state("gw-b", INT32_MAX), "gw-a") == "older-epoch"
    assert defend_decision(mine, state(None, INT32_MAX - 3), "gw-a") == "older-epoch"
    assert defend_decision(state("gw-a", INT32_MAX), state("gw-b", 1), "gw-a") == ""


def test_late_clear_and_new_claim_converge_in_either_order() -> None:
    """The old owner's clear and the new owner's claim reach the broker in
    both orders; after each node applies its rule, the broker names the new owner."""
    clear, claim = state(None, 5), state("gw-b", 6)
    # claim first: gw-a saw it and does not clear
    assert clear_decision(clear, claim, "gw-a") == "newer-owner"
    # clear first (gw-a had not seen the claim): the claim overwrites it, and
    # were the clear to land last, gw-b would see it and republish
    assert clear_decision(clear, state("gw-a", 5), "gw-a") == ""
    assert defend_decision(claim, clear, "gw-b") == "older-epoch"


# --- settings -----------------------------------------------------------------------------------


def test_minimal_settings_take_the_defaults() -> None:
    s, problems = parse_mqtt({"host": "broker.example.net"})
    assert problems == []
    assert s == MqttSettings(host="broker.example.net")
    assert s.port == 1883
    assert s.qos == 1
    assert s.queue_size == 1000
    assert s.topic_prefix == "egressd"
    assert s.cluster == "default"
    assert s.tls is None
    assert s.effective_client_id("gw-a") == "egressd-gw-a"


def test_absent_section_is_mqtt_off() -> None:
    assert parse_mqtt(None) == (None, [])


@pytest.mark.parametrize("timeout", [10**400, "9" * 400, True, "1:30", 0])
def test_a_timeout_that_is_no_usable_duration_is_a_problem(timeout: object) -> None:
    s, problems = parse_mqtt({"host": "b", "timeout": timeout})
    assert s is None
    assert [p.field for p in problems] == ["mqtt.timeout"]


def test_full_settings() -> None:
    s, problems = parse_mqtt(
        {
            "host": "10.0.0.5",
            "cluster": "prod-eu1",
            "topicPrefix": "site/egress",
            "clientId": "gw-a-egressd",
            "username": "egressd",
            "passwordFile": "/etc/egressd/mqtt-password",
            "tls": {"caFile": "/etc/ca.pem", "certFile": "/etc/c.pem", "keyFile": "/etc/k.pem"},
            "keepalive": 30,
            "qos": 2,
            "queueSize": 50,
            "timeout": "1500ms",
        }
    )
    assert problems == []
    assert s == MqttSettings(
        host="10.0.0.5",
        port=8883,
        cluster="prod-eu1",
        topic_prefix="site/egress",
        client_id="gw-a-egressd",
        username="egressd",
        password_file="/etc/egressd/mqtt-password",
        tls=MqttTls(ca_file="/etc/ca.pem", cert_file="/etc/c.pem", key_file="/etc/k.pem"),
        keepalive=30,
        qos=2,
        queue_size=50,
        timeout=1.5,
    )
    assert s.effective_client_id("gw-a") == "gw-a-egressd"


def test_tls_true_uses_the_system_cas_and_verifies() -> None:
    s, _ = parse_mqtt({"host": "b", "tls": True, "port": 1884})
    assert s is not None
    assert s.tls == MqttTls()
    assert not s.tls.insecure_skip_verify
    assert s.port == 1884


def test_every_problem_is_reported_with_its_path() -> None:
    s, problems = parse_mqtt(
        {
            "host": "not a host!",
            "port": 70000,
            "cluster": "a/b",
            "topicPrefix": "/egressd/#",
            "password": "hunter2",
            "passwordFile": "/p",
            "qos": 3,
            "queueSize": 0,
            "keepalive": True,
            "timeout": "soon",
            "tls": {"keyFile": "/k", "insecureSkipVerify": "yes", "ca": "/x"},
            "queue_size": 5,
        },
        path="mqtt",
    )
    assert s is None
    fields = [p.field for p in problems]
    assert fields == [
        "mqtt.password",
        "mqtt.queue_size",
        "mqtt.host",
        "mqtt.tls.ca",
        "mqtt.tls.certFile",
        "mqtt.tls.insecureSkipVerify",
        "mqtt.port",
        "mqtt.cluster",
        "mqtt.topicPrefix",
        "mqtt.passwordFile",
        "mqtt.keepalive",
        "mqtt.qos",
        "mqtt.queueSize",
        "mqtt.timeout",
    ]
    by_field = {p.field: p.message for p in problems}
    assert "passwordFile" in by_field["mqtt.password"]
    assert "hunter2" not in " ".join(by_field.values())
    assert "did you mean 'queueSize'" in by_field["mqtt.queue_size"]
    assert by_field["mqtt.qos"] == "must be 0-2, got 3"
    assert by_field["mqtt.port"] == "must be 1-65535, got 70000"
    assert by_field["mqtt.queueSize"] == "must be at least 1, got 0"
    assert by_field["mqtt.passwordFile"].startswith("needs username")


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({}, Problem("mqtt.host", "is required")),
        ("broker", Problem("mqtt", "must be a mapping, got str")),
        ({"host": "b", "timeout": 0}, Problem("mqtt.timeout", "must be positive, got 0")),
        ({"host": "b", "tls": "on"}, Problem("mqtt.tls", "must be a mapping (or true for the system CAs), got str")),
        (
            {"host": "b", "clientId": "a/b"},
            Problem("mqtt.clientId", "must be at most 65535 bytes without '/', '+', '#' or NUL, got 'a/b'"),
        ),
    ],
)
def test_single_problems(data: Any, problem: Problem) -> None:
    assert parse_mqtt(data) == (None, [problem])


@pytest.mark.parametrize("host", ["localhost", "broker.example.net", "10.0.0.5", "fd00::5", "mqtt_1.lan"])
def test_hosts_accepted(host: str) -> None:
    assert parse_mqtt({"host": host})[1] == []


@pytest.mark.parametrize("host", ["-bad", "a..b", "tcp://broker", "broker:1883", " "])
def test_hosts_refused(host: str) -> None:
    assert parse_mqtt({"host": host})[1][0].field == "mqtt.host"


def test_a_password_without_tls_is_refused() -> None:
    s, problems = parse_mqtt({"host": "broker", "username": "egressd", "passwordFile": "/etc/egressd/mqtt-password"})
    assert s is None
    assert [p.field for p in problems] == ["mqtt.passwordFile"]
    assert problems[0].message.startswith("a password without tls crosses the network in clear text")
    assert "allowInsecurePassword: true" in problems[0].message


@pytest.mark.parametrize(("extra", "insecure"), [({"tls": True}, False), ({"allowInsecurePassword": True}, True)])
def test_a_password_with_tls_or_the_explicit_opt_in(extra: dict[str, Any], insecure: bool) -> None:
    s, problems = parse_mqtt({"host": "broker", "username": "egressd", "passwordFile": "/p", **extra})
    assert problems == []
    assert s is not None and s.allow_insecure_password is insecure


def test_allow_insecure_password_is_a_boolean() -> None:
    _, problems = parse_mqtt({"host": "broker", "allowInsecurePassword": "yes"})
    assert [str(p) for p in problems] == ["mqtt.allowInsecurePassword: must be true or false, got 'yes'"]
