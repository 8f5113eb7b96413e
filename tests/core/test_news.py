"""News of a new owner: taken only from a candidate of a steered IP, and only
ahead of the claim the view shows; forgotten once the claim catches up."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from egressd.core.lease import EPOCH_MODULUS, LeaseRecord, epoch_order, lease_name, next_epoch
from egressd.core.news import Hint, judge_news, steer_to

IP = "172.18.0.42"
CANDIDATES = ("gw-a", "gw-b")


def claim(epoch: int, holder: str | None = "gw-a") -> LeaseRecord:
    return LeaseRecord(
        name=lease_name(IP),
        egress_ip=IP,
        holder=holder,
        lease_duration=2.5,
        transitions=epoch,
        resource_version="7",
        holder_address="172.18.0.5" if holder else None,
        incarnation="i" if holder else None,
    )


def hint(epoch: int) -> Hint:
    return Hint("gw-b", epoch, ipaddress.ip_address("172.18.0.6"))


def test_news_of_a_newer_claim_from_a_candidate_is_taken() -> None:
    verdict = judge_news(IP, 4, "gw-b", candidates=CANDIDATES, known=claim(3))
    assert verdict.taken and verdict.reason == "taken"
    assert judge_news(IP, 0, "gw-b", candidates=CANDIDATES, known=None).taken  # no claim seen yet


def test_news_is_refused_for_an_ip_not_steered_from_a_stranger_or_behind_the_claim() -> None:
    assert judge_news(IP, 4, "gw-b", candidates=None, known=claim(3)).reason == "not-steered"
    assert judge_news(IP, 4, "gw-x", candidates=CANDIDATES, known=claim(3)).reason == "not-candidate"
    assert judge_news(IP, 3, "gw-b", candidates=CANDIDATES, known=claim(3, "gw-b")).reason == "stale-epoch"
    assert judge_news(IP, 2, "gw-b", candidates=CANDIDATES, known=claim(3)).reason == "stale-epoch"
    # released at the news' epoch: the claim says more than the news
    assert judge_news(IP, 3, "gw-b", candidates=CANDIDATES, known=claim(3, None)).reason == "stale-epoch"


def test_a_hint_holds_until_the_claim_reaches_its_epoch() -> None:
    assert steer_to(None, None) is None
    assert steer_to(claim(3), None) is None
    assert steer_to(claim(3), hint(4)) == hint(4)
    assert steer_to(None, hint(4)) == hint(4)
    assert steer_to(claim(4, "gw-b"), hint(4)) is None
    assert steer_to(claim(5), hint(4)) is None  # a later claim: the claim decides


@given(st.integers(0, EPOCH_MODULUS - 1), st.integers(1, 1000))
def test_the_order_survives_the_wrap_of_the_epoch(known: int, ahead: int) -> None:
    news = known
    for _ in range(ahead):
        news = next_epoch(news)
    assert epoch_order(news, known) > 0
    assert judge_news(IP, news, "gw-b", candidates=CANDIDATES, known=claim(known)).taken
    assert not judge_news(IP, known, "gw-b", candidates=CANDIDATES, known=claim(news)).taken
    assert steer_to(claim(known), hint(news)) == hint(news)
    assert steer_to(claim(news), hint(known)) is None


def test_news_not_newer_than_a_hint_held_is_refused() -> None:
    assert judge_news(IP, 5, "gw-b", candidates=CANDIDATES, known=claim(3), held=hint(4)).taken
    assert judge_news(IP, 4, "gw-b", candidates=CANDIDATES, known=claim(3), held=hint(4)).reason == "stale-epoch"
    assert judge_news(IP, 4, "gw-a", candidates=CANDIDATES, known=claim(3), held=hint(5)).reason == "stale-epoch"
