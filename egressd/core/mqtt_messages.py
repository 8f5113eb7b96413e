"""Topics and payloads of the MQTT event sink, and its two decisions.

Pure: the adapter (``egressd.adapters.mqtt``) does the I/O. Three kinds of
message, all JSON (docs/mqtt.md shows them)::

    <prefix>/<cluster>/ip/<ip>      retained  who serves the IP now
    <prefix>/<cluster>/events       stream    every ownership event, in order
    <prefix>/<cluster>/node/<node>  retained  online/offline; offline is the last will

Only the owner's own events move the retained state of an IP: ``acquired``
sets the owner to this node; ``released``, ``stepped-down``, ``lost`` and
``fenced`` clear it (owner null). Each node publishes on its own connection,
so the clear of the old owner and the claim of the new one can reach the
broker in either order. Two rules, with the epoch (``leaseTransitions``,
which grows with every holder change and wraps from int32 max to 0, so it is
compared with :func:`egressd.core.lease.epoch_order`) as the tie-breaker,
make the retained state converge on the lease:

1. :func:`clear_decision`: a node does not clear a retained message that
   names another owner at an epoch at least its own.
2. :func:`defend_decision`: an owner that sees its IP's retained message
   say something else at an older epoch (or cleared at its own epoch, or
   deleted) publishes its claim again.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from egressd.core.lease import epoch_order
from egressd.core.ownership_events import OwnershipEvent

CLAIM_KINDS = frozenset({"acquired"})
"""Event kinds after which this node serves the IP: retained owner = node."""

CLEAR_KINDS = frozenset({"released", "stepped-down", "lost", "fenced"})
"""Event kinds after which this node no longer serves the IP: retained owner = null.
``renew-failed``, ``conflict`` and ``drift`` leave the retained state alone."""

RETAINED_KINDS = CLAIM_KINDS | CLEAR_KINDS


@dataclass(frozen=True)
class Outgoing:
    """One MQTT message to publish."""

    topic: str
    payload: bytes
    retain: bool


@dataclass(frozen=True)
class Topics:
    """The topic names of one cluster under one prefix (both validated by
    :func:`egressd.core.mqtt_settings.parse_mqtt`)."""

    prefix: str = "egressd"
    cluster: str = "default"

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.cluster}"

    def ip(self, ip: str) -> str:
        """Retained owner of ``ip``."""
        return f"{self.base}/ip/{ip}"

    @property
    def ips(self) -> str:
        """Subscription filter matching every IP's retained owner."""
        return f"{self.base}/ip/+"

    @property
    def events(self) -> str:
        """Stream of every event of every node."""
        return f"{self.base}/events"

    def node(self, node: str) -> str:
        """Retained online status of ``node``."""
        return f"{self.base}/node/{node}"

    def ip_of(self, topic: str) -> str | None:
        """The IP of a retained-owner topic, or None for any other topic."""
        head = f"{self.base}/ip/"
        rest = topic[len(head) :] if topic.startswith(head) else ""
        return rest if rest and "/" not in rest else None


@dataclass(frozen=True)
class IpState:
    """The retained message of one egress IP."""

    ip: str
    owner: str | None
    """Node serving the IP, or None when its last owner let it go."""
    epoch: int
    """Lease epoch (``leaseTransitions``) of the owner's tenure."""
    since: str
    """RFC 3339 UTC wall time of the event that set this state."""
    reason: str
    """Reason of the decision behind the event (``expired``, ``shutdown``...)."""

    def payload(self) -> bytes:
        body = {"ip": self.ip, "owner": self.owner, "epoch": self.epoch, "since": self.since, "reason": self.reason}
        return _json(body)


def rfc3339(wall: datetime) -> str:
    """``2024-05-01T12:00:00.123Z``; ``wall`` must carry a time zone."""
    if wall.tzinfo is None:
        raise ValueError("wall time must be timezone-aware (UTC)")
    return wall.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def ip_state(event: OwnershipEvent, node: str, wall: datetime) -> IpState | None:
    """The retained state ``event`` of ``node`` sets, or None if it sets none."""
    if event.kind in CLAIM_KINDS:
        owner: str | None = node
    elif event.kind in CLEAR_KINDS:
        owner = None
    else:
        return None
    return IpState(ip=event.egress_ip, owner=owner, epoch=event.epoch, since=rfc3339(wall), reason=event.reason)


def render_ip_state(topics: Topics, state: IpState) -> Outgoing:
    return Outgoing(topics.ip(state.ip), state.payload(), retain=True)


def render_event(topics: Topics, event: OwnershipEvent, node: str, wall: datetime) -> Outgoing:
    """The stream message of ``event``: its fields, the publishing node and the wall time.
    ``at`` is the node's monotonic clock, only good for ordering one node's events."""
    body = {
        "kind": event.kind,
        "ip": event.egress_ip,
        "node": node,
        "epoch": event.epoch,
        "reason": event.reason,
        "detail": event.detail,
        "extra": dict(event.extra),
        "time": rfc3339(wall),
        "at": event.at,
    }
    return Outgoing(topics.events, _json(body), retain=False)


def render(topics: Topics, event: OwnershipEvent, node: str, wall: datetime) -> list[Outgoing]:
    """Every message ``event`` causes, before the two decisions: the
    retained state of its IP (if the kind changes it), then the stream message."""
    out = []
    state = ip_state(event, node, wall)
    if state is not None:
        out.append(render_ip_state(topics, state))
    out.append(render_event(topics, event, node, wall))
    return out


def node_status(topics: Topics, node: str, *, online: bool, wall: datetime | None = None) -> Outgoing:
    """Retained status of ``node``. The last will carries no time (the broker
    publishes it later, when it notices the node is gone)."""
    body: dict[str, Any] = {"node": node, "online": online}
    if wall is not None:
        body["since"] = rfc3339(wall)
    return Outgoing(topics.node(node), _json(body), retain=True)


def parse_ip_state(payload: bytes) -> IpState | None:
    """Read back a retained IP message (possibly another node's); None if it
    is empty (deleted) or not shaped like :meth:`IpState.payload`."""
    try:
        data = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, Mapping):
        return None
    ip, owner, epoch = data.get("ip"), data.get("owner"), data.get("epoch")
    since, reason = data.get("since", ""), data.get("reason", "")
    if (
        not isinstance(ip, str)
        or not (owner is None or isinstance(owner, str))
        or not isinstance(epoch, int)
        or isinstance(epoch, bool)
        or not isinstance(since, str)
        or not isinstance(reason, str)
    ):
        return None
    return IpState(ip=ip, owner=owner, epoch=epoch, since=since, reason=reason)


def clear_decision(clear: IpState, retained: IpState | None, node: str) -> str:
    """Whether ``node`` may publish ``clear`` (owner null) over the retained
    message it last saw: "" to publish, else why not.

    ``newer-owner``: the retained message names another node at an epoch at
    least ours; that node took the IP after us and the message is right."""
    if retained is not None and retained.owner not in (None, node) and epoch_order(retained.epoch, clear.epoch) >= 0:
        return "newer-owner"
    return ""


def defend_decision(mine: IpState, seen: IpState | None, node: str) -> str:
    """Whether the owner ``node`` must publish its claim ``mine`` again after
    seeing ``seen`` on its IP's topic (None: empty, deleted or unreadable):
    the reason to republish, or "" to leave it.

    A message at a newer epoch is left alone: its author took the lease after
    us, and this node will learn of its loss from the lease, not from MQTT."""
    if seen is None:
        return "retained-missing"
    if seen.owner == node and seen.epoch == mine.epoch:
        return ""
    if epoch_order(seen.epoch, mine.epoch) < 0:
        return "older-epoch"
    if seen.epoch == mine.epoch and seen.owner is None:
        return "cleared-at-our-epoch"
    return ""


def _json(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
