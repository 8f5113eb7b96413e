"""Follows this node's serving right for the operators: when it moves onto or
off peer rights (:func:`egressd.core.peer_rights.change`), an ownership event
for every IP the node serves, a log line for each with the IP, node and epoch,
and the time served on peer rights for the metrics.

The node lease's fence loop (:meth:`egressd.runtime.liveness.NodeLiveness.fence`)
calls :meth:`PeerRightWatch.observe` with every right it reads: after each
renew, each promise taken, and when the API right runs out.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from egressd.core.ownership_events import OwnershipEvent
from egressd.core.peer_rights import STARTED, PeerRightChange, change
from egressd.core.rights import Right, Source
from egressd.ports import EventSink

log = logging.getLogger(__name__)


class PeerRightWatch:
    def __init__(
        self,
        *,
        node: str,
        events: EventSink,
        owned: Callable[[], Sequence[tuple[str, int]]],
        last_api_write: Callable[[], float | None],
    ) -> None:
        self.node = node
        self.events = events
        self._owned = owned
        """(egress IP, epoch) of every IP this node serves now."""
        self._last_api_write = last_api_write
        self.source = Source.NONE
        """The source of the right last observed."""
        self.since: float | None = None
        """When the node moved onto peer rights (None: not on them)."""
        self.served_seconds = 0.0
        """Seconds served on peer rights before the current stretch."""

    def observe(self, right: Right, now: float) -> PeerRightChange | None:
        """The right read at ``now``: events and log lines if it moved onto or off peer rights."""
        found = change(self.source, right, now=now, last_api_write=self._last_api_write(), peer_since=self.since)
        self.source = right.source
        if found is None:
            return None
        if found.kind == STARTED:
            self.since = now
        else:
            if self.since is not None:
                self.served_seconds += now - self.since
            self.since = None
        self._emit(found, now)
        return found

    def seconds(self, now: float) -> float:
        """Seconds served on peer rights so far, the current stretch included."""
        return self.served_seconds + (now - self.since if self.since is not None else 0.0)

    @property
    def on_peer_right(self) -> bool:
        return self.since is not None

    def _emit(self, found: PeerRightChange, now: float) -> None:
        owned = list(self._owned())
        level = logging.WARNING if found.kind == STARTED or found.reason != "api-right-back" else logging.INFO
        words = "serving on peer rights" if found.kind == STARTED else "no longer serving on peer rights"
        if not owned:
            log.log(level, "node=%s %s: %s; %s (no egress IP served)", self.node, words, found.reason, found.detail)
        for ip, epoch in owned:
            log.log(level, "ip=%s node=%s epoch=%d %s: %s; %s", ip, self.node, epoch, words, found.reason, found.detail)
            self.events.emit(
                OwnershipEvent(
                    kind=found.kind,
                    egress_ip=ip,
                    node=self.node,
                    epoch=epoch,
                    reason=found.reason,
                    detail=found.detail,
                    at=now,
                )
            )
