"""When a holder moves onto or off peer rights, and why, as values (no I/O).

The serving right (:func:`egressd.core.rights.serving_right`) is read again
and again; what operators need to hear about is its *changes* of source that
involve the peer right:

* **onto peer rights**: the API right lapsed (the node-lease renewals stopped
  reaching the API) and the peers' promises carry on. The detail says how
  long ago the last successful API write was sent: ``maxHold`` counts from it.
* **off peer rights**, with one of three reasons: ``api-right-back`` (a renew
  reached the API again; the holder serves on), ``promises-gone`` (a required
  peer's promise is missing or ran out; the holder steps down), ``max-hold``
  (the last API write is ``maxHold`` old; the holder steps down). A node that
  no longer serves anything loses the peer right too (``no-peers``).

:func:`change` is the decision; the runtime (:mod:`egressd.runtime.peer_rights`)
turns it into Events, log lines and the time-on-peer-rights counter. Nothing
here changes what the right *is*.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from egressd.core.rights import Right, Source

Kind = Literal["peer-right-started", "peer-right-ended"]

STARTED: Kind = "peer-right-started"
ENDED: Kind = "peer-right-ended"

API_RIGHT_LAPSED = "api-right-lapsed"
API_RIGHT_BACK = "api-right-back"
PROMISES_GONE = "promises-gone"
MAX_HOLD = "max-hold"
NO_PEERS = "no-peers"


@dataclass(frozen=True)
class PeerRightChange:
    kind: Kind
    reason: str
    """``api-right-lapsed`` (started); ``api-right-back``, ``promises-gone``,
    ``max-hold`` or ``no-peers`` (ended)."""
    detail: str


def end_reason(right: Right) -> str:
    """Why a peer right is over, from the right that followed it."""
    if right.source is Source.API:
        return API_RIGHT_BACK
    if right.reason == "max-hold":
        return MAX_HOLD
    if right.reason.startswith(("no-promise-from-", "promise-expired-")):
        return PROMISES_GONE
    return NO_PEERS


def change(
    before: Source, right: Right, *, now: float, last_api_write: float | None, peer_since: float | None
) -> PeerRightChange | None:
    """The change from ``before`` (the source last seen) to ``right`` (now), if
    it moves onto or off peer rights; None otherwise.

    1. Onto peer rights: say how long since the last API write (``maxHold``
       counts from it).
    2. Off peer rights: say why (:func:`end_reason`), what the right's own
       reason was, and how long the holder served on peer rights."""
    after = right.source
    if after is Source.PEER and before is not Source.PEER:
        since = f"{now - last_api_write:.3f}s" if last_api_write is not None else "never"
        return PeerRightChange(STARTED, API_RIGHT_LAPSED, f"last API write {since} ago")
    if before is Source.PEER and after is not Source.PEER:
        reason = end_reason(right)
        served = f"served on peer rights for {now - peer_since:.3f}s" if peer_since is not None else ""
        why = "" if reason == API_RIGHT_BACK else right.reason
        return PeerRightChange(ENDED, reason, "; ".join(p for p in (why, served) if p))
    return None
