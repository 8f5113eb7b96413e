"""Moves onto and off peer rights, as values: the reason and the detail."""

from __future__ import annotations

import pytest

from egressd.core.kube_events import OWNERSHIP_REASONS, ownership_message
from egressd.core.peer_rights import ENDED, STARTED, change, end_reason
from egressd.core.rights import Right, Source

API = Right(Source.API, 11.0, "api")
PEER = Right(Source.PEER, 11.5, "peer")


def none(reason: str) -> Right:
    return Right(Source.NONE, 9.0, reason)


def test_onto_peer_rights_says_how_long_since_the_last_api_write() -> None:
    found = change(Source.API, PEER, now=10.0, last_api_write=9.25, peer_since=None)
    assert found is not None
    assert (found.kind, found.reason) == (STARTED, "api-right-lapsed")
    assert found.detail == "last API write 0.750s ago"


@pytest.mark.parametrize("before", [Source.API, Source.NONE])
def test_no_change_that_does_not_touch_peer_rights(before: Source) -> None:
    for right in (API, none("no-api-right-and-no-peers")):
        assert change(before, right, now=10.0, last_api_write=9.0, peer_since=None) is None
    assert change(Source.PEER, PEER, now=10.0, last_api_write=9.0, peer_since=8.0) is None


@pytest.mark.parametrize(
    ("right", "reason", "detail"),
    [
        (API, "api-right-back", "served on peer rights for 4.000s"),
        (none("max-hold"), "max-hold", "max-hold; served on peer rights for 4.000s"),
        (none("no-promise-from-gw-b"), "promises-gone", "no-promise-from-gw-b; served on peer rights for 4.000s"),
        (none("promise-expired-gw-c"), "promises-gone", "promise-expired-gw-c; served on peer rights for 4.000s"),
        (none("no-api-right-and-no-peers"), "no-peers", "no-api-right-and-no-peers; served on peer rights for 4.000s"),
    ],
)
def test_off_peer_rights_says_which_way(right: Right, reason: str, detail: str) -> None:
    found = change(Source.PEER, right, now=10.0, last_api_write=6.0, peer_since=6.0)
    assert found is not None
    assert (found.kind, found.reason, found.detail) == (ENDED, reason, detail)
    assert end_reason(right) == reason


def test_both_moves_become_kubernetes_events() -> None:
    assert OWNERSHIP_REASONS[STARTED][:2] == ("Warning", "EgressIPOnPeerRights")
    assert OWNERSHIP_REASONS[ENDED][:2] == ("Normal", "EgressIPOffPeerRights")
    message = ownership_message(
        STARTED,
        egress_ip="172.18.0.42",
        node="gw-a",
        epoch=4,
        reason="api-right-lapsed",
        detail="last API write 0.8s ago",
    )
    assert message == "gw-a moved onto peer rights for 172.18.0.42 (epoch 4): api-right-lapsed; last API write 0.8s ago"
