"""The rules of a transfer (pure): which offers a standby accepts, and when
a claim naming it is served on without a write of its own."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest

from egressd.core import transfer
from egressd.core.election import Action, decide
from egressd.core.mesh_messages import Offer, Wake
from tests.core.test_election import IP, PAIR, SECOND, TIMING, WALL, assert_decision, lease, member, seen

NONCE = "0123456789abcdef" * 2
OWNER = next(n for n in PAIR if n != SECOND)
OFFER = Offer(OWNER, "inc-owner", 5, IP, 3, NONCE, SECOND)


def judge(**changes: object) -> transfer.OfferVerdict:
    kwargs: dict[str, object] = {
        "me": SECOND,
        "candidates": PAIR,
        "known": lease(OWNER),
        "standby": True,
        "api_right": True,
        "held_off": False,
        "stopping": False,
    }
    kwargs.update(changes)
    return transfer.judge_offer(OFFER, **kwargs)  # type: ignore[arg-type]


def test_a_standby_that_could_take_the_claim_now_accepts() -> None:
    assert judge() == transfer.OfferVerdict(True, "accepted")
    assert judge(known=None).accept  # a view that has not seen the claim yet


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"me": "kind-worker9"}, "misdirected"),
        ({"candidates": None}, "not-candidate"),
        ({"candidates": (SECOND, "kind-worker9")}, "not-candidate"),
        ({"standby": False}, "not-standby"),
        ({"stopping": True}, "stopping"),
        ({"held_off": True}, "hold-off"),
        ({"api_right": False}, "no-node-lease-right"),
        ({"known": dataclasses.replace(lease(OWNER), transitions=4)}, "stale-epoch"),
    ],
)
def test_an_offer_is_refused_with_the_reason(changes: dict[str, object], reason: str) -> None:
    verdict = judge(**changes)
    assert (verdict.accept, verdict.reason) == (False, reason)


def test_the_transferred_claim_is_served_on_only_soon_after_the_accept() -> None:
    accepted = transfer.accepted(OFFER, 100.0)
    assert accepted.epoch == OFFER.epoch + 1
    me = dataclasses.replace(member(SECOND), accepted=accepted)
    claim = dataclasses.replace(lease(SECOND, incarnation=me.incarnation), transitions=accepted.epoch)
    at = 100.0 + TIMING.renew_deadline / 2
    assert_decision(decide(claim, seen(claim, at), at, me, TIMING), Action.ASSUME, "transferred")
    late = 100.0 + TIMING.renew_deadline + 0.001
    assert_decision(decide(claim, seen(claim, late), late, me, TIMING), Action.ACQUIRE, "reacquire-own-lease")
    other_epoch = dataclasses.replace(claim, transitions=accepted.epoch + 1)
    assert_decision(decide(other_epoch, seen(claim, at), at, me, TIMING), Action.ACQUIRE, "reacquire-own-lease")
    not_ours = dataclasses.replace(claim, incarnation="inc-earlier")
    assert decide(not_ours, seen(claim, at), at, me, TIMING).action is not Action.ASSUME


def test_a_transfer_is_not_served_on_without_the_api_right_or_during_a_hold_off() -> None:
    accepted = transfer.accepted(OFFER, 100.0)
    at = 100.1
    me = dataclasses.replace(member(SECOND, node_renew=at - TIMING.renew_deadline - 0.01), accepted=accepted)
    claim = dataclasses.replace(lease(SECOND, incarnation=me.incarnation), transitions=accepted.epoch)
    assert_decision(decide(claim, seen(claim, at), at, me, TIMING), Action.STANDBY, "no-node-lease-right")
    held = dataclasses.replace(member(SECOND), accepted=accepted, hold_off_until=at + 1, hold_off_reason="x")
    assert_decision(decide(claim, seen(claim, at), at, held, TIMING), Action.STANDBY, "hold-off")


def test_the_owners_wake_stands_for_its_transfer_only_from_the_process_that_offered_at_that_epoch() -> None:
    accepted = transfer.accepted(OFFER, 100.0)
    known = lease(OWNER)
    wake = Wake(OWNER, "inc-owner", 6, IP, OFFER.epoch + 1, "42", SECOND)
    assert transfer.confirmed_by(accepted, wake, known)
    assert not transfer.confirmed_by(None, wake, known)  # nothing accepted
    assert not transfer.confirmed_by(accepted, dataclasses.replace(wake, incarnation="inc-other"), known)
    assert not transfer.confirmed_by(accepted, dataclasses.replace(wake, sender=SECOND), known)
    assert not transfer.confirmed_by(accepted, dataclasses.replace(wake, epoch=OFFER.epoch + 2), known)
    assert not transfer.confirmed_by(accepted, wake, None)  # the view does not show the offered claim
    assert not transfer.confirmed_by(accepted, wake, lease(SECOND))
    assert not transfer.confirmed_by(accepted, wake, dataclasses.replace(known, transitions=OFFER.epoch + 1))


def test_the_transfer_on_the_owners_word_is_the_claim_the_owner_writes_but_for_the_times() -> None:
    known = lease(OWNER)
    wake = Wake(OWNER, "inc-owner", 6, IP, OFFER.epoch + 1, "42", SECOND)
    later = WALL + timedelta(seconds=1)
    written = transfer.transfer_record(
        known, successor=SECOND, address="172.18.0.6", incarnation="inc-second", lease_duration=2.5, now=WALL
    )
    told = transfer.transferred(
        known, wake, me=SECOND, address="172.18.0.6", incarnation="inc-second", lease_duration=2.5, now=later
    )
    assert dataclasses.replace(told, acquire_time=WALL, renew_time=WALL, resource_version="") == dataclasses.replace(
        written, resource_version=""
    )
    assert (told.holder, told.incarnation, told.transitions, told.resource_version) == (SECOND, "inc-second", 4, "42")
    assert told.transition_reason == f"transferred-from-{OWNER}"
    me = dataclasses.replace(member(SECOND), accepted=transfer.accepted(OFFER, 100.0))
    told = dataclasses.replace(told, incarnation=me.incarnation)
    assert_decision(decide(told, seen(told, 100.1), 100.1, me, TIMING), Action.ASSUME, "transferred")
