"""The daemon's own event sinks and metrics: ownership events written to the
log, one event fanned out to several sinks, and metrics that count nothing
(when no Prometheus endpoint is configured, and in tests)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from egressd.core.ownership_events import OwnershipEvent
from egressd.ports import EventSink

log = logging.getLogger(__name__)


class LogEvents:
    """An EventSink that writes ownership events to the log."""

    def emit(self, event: OwnershipEvent) -> None:
        log.info(
            "event %s ip=%s node=%s epoch=%d reason=%s %s",
            event.kind,
            event.egress_ip,
            event.node,
            event.epoch,
            event.reason,
            event.detail,
        )


@dataclass
class FanoutEvents:
    """Sends each event to every sink; a failing sink never affects the others."""

    sinks: list[EventSink] = field(default_factory=list)

    def emit(self, event: OwnershipEvent) -> None:
        for sink in self.sinks:
            try:
                sink.emit(event)
            except Exception:
                log.exception("event sink %r failed", sink)


class NullMetrics:
    def owned(self, ip: str, owned: bool) -> None:
        pass

    def transition(self, ip: str, kind: str, reason: str) -> None:
        pass

    def renew(self, ip: str, seconds: float, ok: bool, error: str = "") -> None:
        pass

    def takeover_phase(self, ip: str, phase: str, seconds: float) -> None:
        pass

    def conflict(self, ip: str) -> None:
        pass

    def drift(self, ip: str, what: str) -> None:
        pass

    def api_error(self, kind: str) -> None:
        pass

    def mesh_rtt(self, peer: str, seconds: float) -> None:
        pass
