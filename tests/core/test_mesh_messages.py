"""The mesh's datagrams: authenticated, bound to their heartbeat, never trusted otherwise."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from egressd.core.mesh_messages import (
    MAGIC,
    MAX_DATAGRAM,
    MAX_SERVING_CLAIMS,
    Accept,
    Heartbeat,
    Listen,
    MeshRejected,
    Message,
    Offer,
    Outstanding,
    Promise,
    ReplayGuard,
    Serving,
    Wake,
    check_key,
    decode,
    encode,
)

KEY = b"k" * 32
OTHER = b"o" * 32
NONCE = "0123456789abcdef" * 2
HB = Heartbeat("gw-a", "inc-1", 7, NONCE, api_ok=True)
PROMISE = Promise("gw-b", "inc-2", "gw-a", NONCE, 2000)
WAKE = Wake("gw-a", "inc-1", 8, "172.18.0.42", 3, "4711", "gw-b")
OFFER = Offer("gw-a", "inc-1", 9, "172.18.0.42", 3, NONCE, "gw-b")
ACCEPT = Accept("gw-b", "inc-2", "gw-a", "172.18.0.42", 3, NONCE)
OFFER_BODY = {"k": "offer", "from": "gw-a", "inc": "i", "seq": 1, "ip": "172.18.0.42", "epoch": 3, "nonce": NONCE,
              "to": "b"}  # fmt: skip
ACCEPT_BODY = {"k": "accept", "from": "b", "inc": "i", "to": "gw-a", "ip": "172.18.0.42", "epoch": 3, "nonce": NONCE}
WAKE_BODY = {"k": "wake", "from": "gw-a", "inc": "i", "seq": 1, "ip": "172.18.0.42", "epoch": 3, "rv": "9", "to": "b"}


def signed(body: object, key: bytes = KEY) -> bytes:
    raw = MAGIC + json.dumps(body).encode()
    return raw + hmac.new(key, raw, hashlib.sha256).digest()


def decoded_or_malformed(body: object, fields: set[str]) -> Message | None:
    """The message in ``body``, signed; None when it is refused as
    ``malformed`` naming one of ``fields`` (an indexed field by its name)."""
    try:
        return decode(signed(body), KEY)
    except MeshRejected as exc:
        assert exc.reason == "malformed"
        assert str(exc).split(": ")[1].split("[")[0] in fields
        return None


def reason(datagram: bytes) -> str:
    with pytest.raises(MeshRejected) as info:
        decode(datagram, KEY)
    return info.value.reason


@pytest.mark.parametrize(
    "message",
    [HB, PROMISE, WAKE, Wake("gw-a", "i", 0, "2001:db8::42", 2**31 - 1, "x/1", "b"), OFFER, ACCEPT],
)
def test_a_message_survives_the_round_trip(message: Heartbeat | Promise | Wake | Offer | Accept) -> None:
    assert decode(encode(message, KEY), KEY) == message


def test_forged_unsigned_and_oversized_datagrams_are_rejected() -> None:
    good = encode(HB, KEY)
    assert reason(encode(HB, OTHER)) == "bad-signature"
    flipped = bytearray(good)
    flipped[10] ^= 1
    assert reason(bytes(flipped)) == "bad-signature"
    assert reason(b"{" + good[4:]) == "unsigned"
    assert reason(good[:20]) == "size"  # no room for a body and a tag
    assert reason(good[:60]) == "bad-signature"
    assert reason(b"x" * (MAX_DATAGRAM + 1)) == "size"
    assert reason(b"") == "size"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"k": "hb", "from": "gw-a", "inc": "i", "seq": -1, "nonce": NONCE, "api": True}, "seq"),
        ({"k": "hb", "from": "gw-a", "inc": "i", "seq": True, "nonce": NONCE, "api": True}, "seq"),
        ({"k": "hb", "from": "GW A", "inc": "i", "seq": 1, "nonce": NONCE, "api": True}, "from"),
        ({"k": "hb", "from": "gw-a", "inc": "i", "seq": 1, "nonce": "short", "api": True}, "nonce"),
        ({"k": "hb", "from": "gw-a", "inc": "i", "seq": 1, "nonce": NONCE, "api": 1}, "api"),
        ({"k": "hb", "from": "gw-a", "inc": "i", "seq": 1, "nonce": NONCE}, "fields"),
        ({"k": "promise", "from": "gw-b", "inc": "i", "to": "gw-a", "nonce": NONCE, "ms": 0}, "ms"),
        ({"k": "promise", "from": "gw-b", "inc": "i", "to": "gw-a", "nonce": NONCE, "ms": 10**9}, "ms"),
        ({"k": "promise", "from": "gw-b", "inc": "\x00", "to": "gw-a", "nonce": NONCE, "ms": 5}, "inc"),
        ({"k": "what"}, "k"),
        ({**WAKE_BODY, "ip": "172.18.0.420"}, "ip"),
        ({**WAKE_BODY, "ip": "2001:DB8::42"}, "ip"),  # not the canonical form claims are named by
        ({**WAKE_BODY, "ip": 42}, "ip"),
        ({**WAKE_BODY, "epoch": -1}, "epoch"),
        ({**WAKE_BODY, "epoch": 2**31}, "epoch"),
        ({**WAKE_BODY, "epoch": "3"}, "epoch"),
        ({**WAKE_BODY, "seq": False}, "seq"),
        ({**WAKE_BODY, "rv": ""}, "rv"),
        ({**WAKE_BODY, "rv": "9" * 65}, "rv"),
        ({**WAKE_BODY, "to": "GW-B"}, "to"),
        ({**WAKE_BODY, "from": ""}, "from"),
        ({k: v for k, v in WAKE_BODY.items() if k != "epoch"}, "fields"),
        ({**WAKE_BODY, "successor": "gw-b"}, "fields"),
        ({**OFFER_BODY, "nonce": NONCE.upper()}, "nonce"),
        ({**OFFER_BODY, "epoch": 2**31}, "epoch"),
        ({**OFFER_BODY, "seq": -1}, "seq"),
        ({**OFFER_BODY, "to": ""}, "to"),
        ({k: v for k, v in OFFER_BODY.items() if k != "nonce"}, "fields"),
        ({**ACCEPT_BODY, "ip": "::FFFF:1.2.3.4"}, "ip"),
        ({**ACCEPT_BODY, "inc": "x" * 65}, "inc"),
        ({**ACCEPT_BODY, "seq": 1}, "fields"),
        ({**ACCEPT_BODY, "nonce": 5}, "nonce"),
    ],
)
def test_a_signed_but_malformed_message_names_the_field(body: dict[str, object], field: str) -> None:
    with pytest.raises(MeshRejected, match=f"^malformed: {field}") as info:
        decode(signed(body), KEY)
    assert info.value.reason == "malformed"


def test_signed_bytes_that_are_not_a_json_object_are_malformed() -> None:
    assert reason(signed([1, 2])) == "malformed"
    raw = MAGIC + b"\xff\xfe"
    assert reason(raw + hmac.new(KEY, raw, hashlib.sha256).digest()) == "malformed"


@given(st.binary(max_size=MAX_DATAGRAM + 10))
def test_any_bytes_are_rejected_or_decoded_never_raise_otherwise(data: bytes) -> None:
    with contextlib.suppress(MeshRejected):
        decode(data, KEY)


@given(
    st.dictionaries(st.text(max_size=8), st.none() | st.booleans() | st.integers() | st.text(max_size=40), max_size=8)
)
def test_any_signed_object_is_a_message_or_malformed(body: dict[str, object]) -> None:
    data = signed(body)
    if len(data) > MAX_DATAGRAM:
        return
    try:
        decode(data, KEY)
    except MeshRejected as exc:
        assert exc.reason == "malformed"


names = st.from_regex(r"\A[a-z0-9]([-a-z0-9.]{0,30}[a-z0-9])?\Z")
tokens = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=64)
addresses = st.ip_addresses().map(str)


@given(
    st.builds(
        Wake,
        sender=names,
        incarnation=tokens,
        seq=st.integers(0, 2**63 - 1),
        ip=addresses,
        epoch=st.integers(0, 2**31 - 1),
        resource_version=tokens,
        to=names,
    )
)
def test_any_wake_survives_the_round_trip_and_no_other_key_opens_it(wake: Wake) -> None:
    data = encode(wake, KEY)
    assert decode(data, KEY) == wake
    with pytest.raises(MeshRejected, match="bad-signature"):
        decode(data, OTHER)


@given(
    st.fixed_dictionaries(
        {},
        optional={
            "k": st.just("wake"),
            "from": names | st.text(max_size=5),
            "inc": tokens | st.integers(),
            "seq": st.integers() | st.booleans() | st.none(),
            "ip": addresses | st.text(max_size=10),
            "epoch": st.integers() | st.text(max_size=3),
            "rv": tokens | st.none(),
            "to": names | st.integers(),
        },
    )
)
def test_any_signed_wake_body_is_a_wake_or_malformed_naming_a_field(body: dict[str, object]) -> None:
    message = decoded_or_malformed(body, {"k", "fields", "from", "inc", "seq", "ip", "epoch", "rv", "to"})
    if message is not None:
        assert isinstance(message, Wake)
        assert (message.sender, message.ip, message.epoch, message.to) == (
            body["from"],
            body["ip"],
            body["epoch"],
            body["to"],
        )


@given(
    st.builds(
        Offer,
        sender=names,
        incarnation=tokens,
        seq=st.integers(0, 2**63 - 1),
        ip=addresses,
        epoch=st.integers(0, 2**31 - 1),
        nonce=st.from_regex(r"\A[0-9a-f]{32}\Z"),
        to=names,
    ),
    tokens,
)
def test_any_offer_and_its_accept_survive_the_round_trip(offer: Offer, incarnation: str) -> None:
    accept = Accept(offer.to, incarnation, offer.sender, offer.ip, offer.epoch, offer.nonce)
    for message in (offer, accept):
        data = encode(message, KEY)
        assert decode(data, KEY) == message
        with pytest.raises(MeshRejected, match="bad-signature"):
            decode(data, OTHER)


@given(
    st.sampled_from(["offer", "accept"]),
    st.fixed_dictionaries(
        {},
        optional={
            "from": names | st.text(max_size=5),
            "inc": tokens | st.integers(),
            "seq": st.integers() | st.booleans() | st.none(),
            "ip": addresses | st.text(max_size=10),
            "epoch": st.integers() | st.text(max_size=3),
            "nonce": st.from_regex(r"\A[0-9a-f]{32}\Z") | st.text(max_size=40),
            "to": names | st.integers(),
        },
    ),
)
def test_any_signed_offer_or_accept_body_is_that_message_or_malformed_naming_a_field(
    kind: str, fields: dict[str, object]
) -> None:
    body = {"k": kind, **fields}
    message = decoded_or_malformed(body, {"fields", "from", "inc", "seq", "ip", "epoch", "nonce", "to"})
    if message is not None:
        assert isinstance(message, Offer if kind == "offer" else Accept)
        assert (message.sender, message.ip, message.epoch, message.nonce, message.to) == (
            body["from"],
            body["ip"],
            body["epoch"],
            body["nonce"],
            body["to"],
        )


def test_a_replayed_or_older_heartbeat_is_rejected_and_a_restart_starts_afresh() -> None:
    guard = ReplayGuard()
    guard.admit(HB)
    with pytest.raises(MeshRejected, match="replayed"):
        guard.admit(HB)
    with pytest.raises(MeshRejected, match="replayed"):
        guard.admit(Heartbeat("gw-a", "inc-1", 6, NONCE, api_ok=True))
    guard.admit(Heartbeat("gw-a", "inc-1", 8, NONCE, api_ok=True))
    guard.admit(Heartbeat("gw-a", "inc-2", 0, NONCE, api_ok=True))


def test_heartbeats_of_a_retired_incarnation_are_refused() -> None:
    """Recordings of two processes of one node, played in turn, are not each
    taken as new: the first incarnation is retired by the second."""
    guard = ReplayGuard()
    old, new = (Heartbeat("gw-a", inc, 5, NONCE, api_ok=True) for inc in ("inc-1", "inc-2"))
    guard.admit(old)
    guard.admit(new)
    for replay in (old, Heartbeat("gw-a", "inc-1", 99, NONCE, api_ok=True)):
        with pytest.raises(MeshRejected, match="retired") as caught:
            guard.admit(replay)
        assert caught.value.reason == "retired-incarnation"
    with pytest.raises(MeshRejected, match="replayed"):
        guard.admit(new)
    guard.admit(Heartbeat("gw-b", "inc-1", 1, NONCE, api_ok=True))  # per sender


def test_the_retired_incarnations_are_bounded() -> None:
    guard = ReplayGuard(retired=2)
    for inc in ("i1", "i2", "i3", "i4"):
        guard.admit(Heartbeat("gw-a", inc, 1, NONCE, api_ok=True))
    with pytest.raises(MeshRejected, match="retired"):
        guard.admit(Heartbeat("gw-a", "i2", 2, NONCE, api_ok=True))
    guard.admit(Heartbeat("gw-a", "i1", 2, NONCE, api_ok=True))  # forgotten: taken again


def test_a_replayed_wake_is_rejected() -> None:
    guard = ReplayGuard()
    guard.admit(WAKE)
    with pytest.raises(MeshRejected, match="replayed"):
        guard.admit(WAKE)
    guard.admit(Wake("gw-a", "inc-2", 1, "172.18.0.42", 3, "4711", "gw-b"))  # its process restarted


def test_the_replay_guard_is_bounded() -> None:
    guard = ReplayGuard(size=2)
    for name in ("a", "b", "c"):
        guard.admit(Heartbeat(name, "i", 5, NONCE, api_ok=True))
    guard.admit(Heartbeat("a", "i", 1, NONCE, api_ok=True))  # forgotten: taken again
    with pytest.raises(MeshRejected):
        guard.admit(Heartbeat("c", "i", 5, NONCE, api_ok=True))


def test_a_promise_counts_from_its_heartbeat_once_and_only_from_the_peer_asked() -> None:
    out = Outstanding(keep=3.0)
    out.sent("gw-b", NONCE, 10.0)
    assert out.answer(PROMISE, "gw-a") == 10.0
    with pytest.raises(MeshRejected, match="stale"):
        out.answer(PROMISE, "gw-a")  # replayed
    out.sent("gw-b", NONCE, 11.0)
    with pytest.raises(MeshRejected, match="misdirected"):
        out.answer(PROMISE, "gw-c")
    with pytest.raises(MeshRejected, match="stale"):
        out.answer(Promise("gw-c", "i", "gw-a", NONCE, 5), "gw-a")  # asked gw-b, not gw-c
    out.expire(14.5)
    with pytest.raises(MeshRejected, match="stale"):
        out.answer(PROMISE, "gw-a")  # too late


def test_keys_shorter_than_32_bytes_are_refused() -> None:
    assert check_key(KEY) == KEY
    with pytest.raises(ValueError, match="at least 32 bytes, got 5"):
        check_key(b"short")


# --- listens and news of new owners ------------------------------------------------


def test_a_listen_and_news_survive_the_round_trip() -> None:
    listen = Listen("wk-1", "inc-3", 5)
    serving = Serving("gw-b", "inc-2", 11, (("172.18.0.42", 4), ("2001:db8::42", 0)))
    assert decode(encode(listen, KEY), KEY) == listen
    assert decode(encode(serving, KEY), KEY) == serving


def test_the_longest_news_fits_one_datagram_and_more_claims_are_refused() -> None:
    widest = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe"
    claims = tuple((widest[:-1] + format(n, "x"), 2**31 - 1) for n in range(MAX_SERVING_CLAIMS))
    longest = Serving("a" * 253, '"\\' * 32, 2**63 - 1, claims)
    assert len(encode(longest, KEY)) <= MAX_DATAGRAM
    assert decode(encode(longest, KEY), KEY) == longest
    with pytest.raises(ValueError, match="1 to 12 claims"):
        encode(Serving("gw-a", "i", 1, (*claims, ("172.18.0.1", 1))), KEY)
    with pytest.raises(ValueError, match="1 to 12 claims"):
        encode(Serving("gw-a", "i", 1, ()), KEY)


@pytest.mark.parametrize(
    ("ips", "field"),
    [
        ([], "ips"),
        ("172.18.0.42", "ips"),
        ([["172.18.0.42", 1]] * 13, "ips"),
        ([["172.18.0.42"]], r"ips\[0\]"),
        ([{"ip": "172.18.0.42"}], r"ips\[0\]"),
        ([["172.18.0.42", 1], ["172.18.0.042", 1]], r"ips\[1\]"),
        ([["2001:DB8::1", 1]], r"ips\[0\]"),
        ([["172.18.0.42", -1]], r"ips\[0\]\.epoch"),
        ([["172.18.0.42", 2**31]], r"ips\[0\]\.epoch"),
        ([["172.18.0.42", True]], r"ips\[0\]\.epoch"),
        ([["172.18.0.42", 1], ["172.18.0.42", 2]], r"ips\[1\]: 172.18.0.42 is named twice"),
    ],
)
def test_news_with_a_bad_claim_is_malformed_naming_the_claim(ips: object, field: str) -> None:
    body = {"k": "serving", "from": "gw-a", "inc": "i", "seq": 1, "ips": ips}
    with pytest.raises(MeshRejected, match=f"^malformed: {field}") as info:
        decode(signed(body), KEY)
    assert info.value.reason == "malformed"


@given(
    st.builds(
        Serving,
        sender=names,
        incarnation=tokens,
        seq=st.integers(0, 2**63 - 1),
        claims=st.dictionaries(addresses, st.integers(0, 2**31 - 1), min_size=1, max_size=MAX_SERVING_CLAIMS).map(
            lambda d: tuple(d.items())
        ),
    ),
    st.builds(Listen, sender=names, incarnation=tokens, seq=st.integers(0, 2**63 - 1)),
)
def test_any_news_and_listen_survive_the_round_trip_and_no_other_key_opens_them(
    serving: Serving, listen: Listen
) -> None:
    for message in (serving, listen):
        data = encode(message, KEY)
        assert decode(data, KEY) == message
        with pytest.raises(MeshRejected, match="bad-signature"):
            decode(data, OTHER)


claim_pairs = st.lists(
    st.lists(addresses | st.text(max_size=6) | st.integers(), max_size=3)
    | st.tuples(addresses, st.integers() | st.booleans() | st.none()).map(list)
    | st.none(),
    max_size=14,
)


@given(
    st.sampled_from(["listen", "serving"]),
    st.fixed_dictionaries(
        {},
        optional={
            "from": names | st.text(max_size=5),
            "inc": tokens | st.integers(),
            "seq": st.integers() | st.booleans() | st.none(),
            "ips": claim_pairs | st.text(max_size=3),
        },
    ),
)
def test_any_signed_listen_or_news_body_is_that_message_or_malformed_naming_a_field(
    kind: str, fields: dict[str, object]
) -> None:
    body = {"k": kind, **fields}
    message = decoded_or_malformed(body, {"fields", "from", "inc", "seq", "ips"})
    if message is not None:
        assert isinstance(message, Listen if kind == "listen" else Serving)
        assert (message.sender, message.seq) == (body["from"], body["seq"])
        if isinstance(message, Serving):
            assert [list(pair) for pair in message.claims] == body["ips"]
