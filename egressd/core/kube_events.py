"""Kubernetes Events for what happens to egress IPs, as values (no I/O).

Each ownership event of a member (takeover, handoff, loss, identity clash,
ARP conflict, drift repair) becomes two ``v1`` Events: one on the
``EgressGatewayPolicy`` that names the IP and one on the ``Node``, so both
``kubectl describe egp NAME`` and ``kubectl describe node NAME`` show it.

Policies and Nodes are cluster-scoped, and the API server accepts an Event
about a cluster-scoped object only in the ``default`` namespace (or none), so
that is where they go (:data:`EVENT_NAMESPACE`).

A burst of failovers must not flood the API: :class:`EventLimiter` is a token
bucket per (object, reason), like client-go's event spam filter; what it holds
back is counted and said in the next Event that passes.

An Event every node would write alike (a policy turning invalid is seen by
every daemon at once) gets a name derived from what it says
(:func:`shared_event_name`): the first daemon creates it, the others' creates
answer 409 AlreadyExists and are done. One Event per cluster, without any
daemon having to know which of them is alive.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

EVENT_NAMESPACE = "default"
COMPONENT = "egressd"

POLICY_API_VERSION = "egressd.io/v1alpha1"
POLICY_KIND = "EgressGatewayPolicy"

#: ownership event kind -> (Event type, Event reason, verb for the message)
OWNERSHIP_REASONS: Mapping[str, tuple[str, str, str]] = {
    "acquired": ("Normal", "EgressIPAcquired", "took over"),
    "released": ("Normal", "EgressIPReleased", "handed off"),
    "stepped-down": ("Warning", "EgressIPSteppedDown", "stepped down from"),
    "lost": ("Warning", "EgressIPLost", "lost"),
    "fenced": ("Warning", "IdentityClash", "fenced itself from"),
    "conflict": ("Warning", "ARPConflict", "saw another host claim"),
    "drift": ("Warning", "DriftRepaired", "repaired the kernel state of"),
    "peer-right-started": ("Warning", "EgressIPOnPeerRights", "moved onto peer rights for"),
    "peer-right-ended": ("Normal", "EgressIPOffPeerRights", "moved off peer rights for"),
}


@dataclass(frozen=True)
class Involved:
    """The object an Event is about."""

    api_version: str
    kind: str
    name: str
    uid: str = ""

    def reference(self) -> dict[str, str]:
        ref = {"apiVersion": self.api_version, "kind": self.kind, "name": self.name}
        if self.uid:
            ref["uid"] = self.uid
        return ref


def policy_ref(name: str, uid: str = "") -> Involved:
    return Involved(POLICY_API_VERSION, POLICY_KIND, name, uid)


def node_ref(name: str, uid: str = "") -> Involved:
    return Involved("v1", "Node", name, uid)


def render_event(
    involved: Involved, *, type_: str, reason: str, message: str, node: str, now: datetime, name: str = ""
) -> dict[str, Any]:
    """A ``v1`` Event object (``count`` 1, first and last timestamp now), named
    ``name`` or, by default, as client-go names them: ``<object>.<unix
    nanoseconds in hex>``."""
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    nanos = int(now.timestamp() * 1_000_000) * 1000
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": name or f"{involved.name}.{nanos:x}", "namespace": EVENT_NAMESPACE},
        "involvedObject": involved.reference(),
        "type": type_,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": COMPONENT, "host": node},
        "reportingComponent": COMPONENT,
        "reportingInstance": node,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


def shared_event_name(involved: Involved, *, reason: str, message: str, generation: int) -> str:
    """The name every daemon gives the Event that says ``message`` about
    ``involved`` at its ``generation``: ``<object>.<16 hex digits>``. A new
    generation of the object (an edit) or a different message is a new Event."""
    key = "\x00".join((involved.kind, involved.name, involved.uid, str(generation), reason, message))
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return f"{involved.name[: 253 - 17]}.{digest}"


def ownership_message(kind: str, *, egress_ip: str, node: str, epoch: int, reason: str, detail: str) -> str:
    """``kind-worker3 took over 172.18.0.42 (epoch 4): expired``."""
    verb = OWNERSHIP_REASONS.get(kind, ("", "", kind))[2]
    text = f"{node} {verb} {egress_ip} (epoch {epoch}): {reason}"
    return f"{text}; {detail}" if detail else text


@dataclass
class EventLimiter:
    """A token bucket per key: ``burst`` Events at once, then one per ``interval`` seconds."""

    burst: int = 10
    interval: float = 10.0
    _tokens: dict[tuple[str, ...], tuple[float, float]] = field(default_factory=dict)
    _held: dict[tuple[str, ...], int] = field(default_factory=dict)

    def allow(self, key: tuple[str, ...], now: float) -> tuple[bool, int]:
        """Whether an Event for ``key`` may go out at monotonic time ``now``, and
        how many were held back since the last one that did."""
        tokens, since = self._tokens.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - since) / self.interval)
        if tokens < 1.0:
            self._tokens[key] = (tokens, now)
            self._held[key] = self._held.get(key, 0) + 1
            return False, 0
        self._tokens[key] = (tokens - 1.0, now)
        return True, self._held.pop(key, 0)
