"""What happens to one egress IP on this node, as a value.

The member loop and the reconciler emit an :class:`OwnershipEvent` on every
transition (takeover, renew failure, step-down, release, loss, fence, ARP
conflict, drift repair), and the node's serving right moving onto or off
peer rights (:mod:`egressd.core.peer_rights`) once per IP it serves; the sinks behind :class:`egressd.ports.EventSink`
turn it into log lines, Kubernetes Events (:mod:`egressd.core.kube_events`)
and MQTT messages (:mod:`egressd.core.mqtt_messages`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class OwnershipEvent:
    """Something that happened to one egress IP on this node."""

    kind: Literal[
        "acquired",
        "renew-failed",
        "stepped-down",
        "released",
        "lost",
        "fenced",
        "conflict",
        "drift",
        "peer-right-started",
        "peer-right-ended",
    ]
    egress_ip: str
    node: str
    epoch: int
    reason: str
    detail: str = ""
    at: float = 0.0
    """Monotonic time."""
    extra: Mapping[str, str] = field(default_factory=dict)
