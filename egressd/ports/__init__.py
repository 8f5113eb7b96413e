"""Interfaces between the runtime and the outside world.

The runtime depends only on these protocols; adapters implement them (the
official Kubernetes client, pyroute2, nftables, scapy, MQTT, Prometheus) and
tests use in-memory fakes at this level, never mocks of the libraries.

Deadlines are monotonic times (``Clock.monotonic()``); an adapter call that
takes a deadline never runs past it, retries included.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

from egressd.core.addressing import OnLink
from egressd.core.conntrack_entries import Entry, Removal
from egressd.core.kube_objects import Resource
from egressd.core.lease import LeaseRecord
from egressd.core.mesh_messages import Message
from egressd.core.model import EgressGroup, IPAddress
from egressd.core.node_lease import NodeLeaseRecord
from egressd.core.ownership_events import OwnershipEvent


class Clock(Protocol):
    """Time, injected so timing logic can run on a fake clock in tests."""

    def monotonic(self) -> float:
        """Seconds on a clock that never jumps (CLOCK_MONOTONIC)."""
        ...

    def wall(self) -> datetime:
        """UTC wall time, only for timestamps written to the API."""
        ...

    async def sleep(self, seconds: float) -> None: ...


@dataclass(frozen=True)
class LeaseEvent:
    """One change seen by a lease watch.

    ``sync`` carries the full list after a (re)connect or a 410 resync, in
    ``records``, and the leases in it that egressd cannot read, in
    ``problems`` (name, problem); consumers replace their view.
    ``upsert``/``delete`` carry one lease. ``invalid`` reports a lease someone
    wrote that egressd cannot read (``problem`` names the field); it is
    treated as absent, never acted on beyond reporting.

    Node leases (:mod:`egressd.core.node_lease`) travel apart from the claims:
    a ``sync`` lists them in ``nodes``, an ``upsert`` of one carries it in
    ``node`` (``record`` is then None); a ``delete`` or ``invalid`` is told
    apart by its name (:func:`egressd.core.node_lease.is_node_lease`).
    """

    kind: Literal["sync", "upsert", "delete", "invalid"]
    name: str = ""
    record: LeaseRecord | None = None
    records: tuple[LeaseRecord, ...] = ()
    problem: str = ""
    problems: tuple[tuple[str, str], ...] = ()
    node: NodeLeaseRecord | None = None
    nodes: tuple[NodeLeaseRecord, ...] = ()


class LeaseStore(Protocol):
    """The egressd leases of one namespace."""

    async def get(self, name: str, *, deadline: float) -> LeaseRecord | None:
        """The lease, or None if it does not exist."""
        ...

    async def create(self, record: LeaseRecord, *, deadline: float) -> LeaseRecord:
        """Create; raises LostRace if it already exists."""
        ...

    async def update(self, record: LeaseRecord, *, deadline: float) -> LeaseRecord:
        """Replace at ``record.resource_version``; raises LostRace on a conflict."""
        ...

    async def release(self, record: LeaseRecord, *, successor: str | None, deadline: float) -> LeaseRecord:
        """Write the lease free (holder cleared), optionally naming a successor."""
        ...

    async def delete(self, record: LeaseRecord, *, deadline: float) -> bool:
        """Delete the lease if it is still at ``record.resource_version`` (a
        precondition: a lease written meanwhile, by an acquire say, is never
        deleted; LostRace instead). False if it was already gone."""
        ...

    async def list_leases(self, *, deadline: float) -> list[LeaseRecord]: ...

    async def get_node_lease(self, name: str, *, deadline: float) -> NodeLeaseRecord | None:
        """The node lease, or None if it does not exist; MalformedLease if unreadable."""
        ...

    async def write_node_lease(self, record: NodeLeaseRecord, *, deadline: float) -> NodeLeaseRecord:
        """Create the node lease (empty resourceVersion) or replace it at its
        resourceVersion; raises LostRace on a conflict."""
        ...

    def watch(self) -> AsyncIterator[LeaseEvent]:
        """Changes of the managed leases, forever: reconnects from the last
        resourceVersion and resyncs (a ``sync`` event) after 410 Expired."""
        ...

    def connected(self) -> bool:
        """Whether the API answered recently (the watch is established or the
        last call succeeded); for readiness, never for safety decisions."""
        ...

    async def close(self) -> None: ...


class Addresses(Protocol):
    """Egress IPs as kernel addresses with a finite lifetime (the kernel fence)."""

    async def claim(self, ip: IPAddress, interface: str, lifetime: int) -> None:
        """Add ``ip``/32 (or /128) on ``interface``, or refresh its lifetime."""
        ...

    async def refresh(self, addresses: Sequence[tuple[IPAddress, str]], lifetime: int) -> None:
        """Reset the lifetime of each (ip, interface), adding any that is
        missing, as ``claim`` does one by one but at the cost of a few
        (it runs after every node-lease renew, for every owned IP). Every
        address is tried; DataPlaneError names those that failed."""
        ...

    async def release(self, ip: IPAddress, interface: str) -> None:
        """Remove it; no error if it is already gone."""
        ...

    async def owned(self) -> set[tuple[IPAddress, str]]:
        """egressd's addresses present now, as (ip, interface)."""
        ...

    async def flush_all(self) -> set[tuple[IPAddress, str]]:
        """Remove every egressd address (``egressd cleanup``); returns what it removed."""
        ...

    async def has_interface(self, interface: str) -> bool:
        """Whether this node has a link called ``interface`` (a policy naming an
        interface the node lacks cannot be served by it)."""
        ...

    async def interface_addresses(self, interface: str) -> list[OnLink]:
        """The node's own addresses on ``interface`` with their prefixes
        (egressd's left out; empty if there is no such link): no egress IP may
        be one of them or the network or broadcast address of their subnets."""
        ...


class Snat(Protocol):
    """Source NAT to the egress IPs this node owns, in egressd's own table."""

    async def stage(self, groups: Sequence[EgressGroup]) -> None:
        """Prepare per-group sets so that activation is one small transaction."""
        ...

    async def activate(self, ip: IPAddress, group: str) -> None: ...

    async def prime(self, ip: IPAddress, group: str) -> bool:
        """Put the SNAT rule of ``ip`` in place with its fence *not* armed,
        ahead of a transfer this node accepted: it fails closed (the fence
        drops whatever would leave with ``ip`` as source) until
        :meth:`activate`, which then only arms the fence. Undone by
        :meth:`deactivate`. False, and nothing done, when the fence is off
        (the rule would NAT at once)."""
        ...

    async def deactivate(self, ip: IPAddress) -> None: ...

    async def deactivate_all(self, ips: Iterable[IPAddress]) -> None:
        """:meth:`deactivate` of every IP of ``ips`` in one transaction (a
        gateway leaving all its IPs at once)."""
        ...

    async def active(self) -> set[IPAddress]: ...

    async def refresh_fence(self, ips: Iterable[IPAddress], ttl: float | None = None) -> None:
        """Re-arm the sub-second kernel fence of these owned IPs (no-op when it
        is off) for ``ttl`` seconds, at most the configured ``fenceTtl`` (None:
        that); a ``ttl`` under a millisecond arms nothing (the fence runs out)."""
        ...

    async def fence(self) -> dict[IPAddress, float]:
        """The IPs whose fence element is armed now, with the seconds left as
        the kernel reports them (nft: whole seconds, rounded down; an element
        that timed out is not listed); empty when the fence is off or its
        tables do not exist."""
        ...

    async def clear(self) -> None:
        """Remove every trace of egressd's SNAT and fence tables (``egressd cleanup``)."""
        ...


class Announcer(Protocol):
    """Gratuitous ARP / unsolicited NA on takeover, and refresh while owning."""

    async def start(self, ip: IPAddress, interface: str) -> None:
        """Send the first frame now and schedule the burst and refresh."""
        ...

    async def stop(self, ip: IPAddress) -> None: ...

    async def prepare(self, interface: str) -> None:
        """Open what sending needs (sockets) before any takeover, off the takeover path."""
        ...


class Steering(Protocol):
    """Policy routing on nodes whose sources use an egress IP."""

    async def route(self, group: EgressGroup, ip: IPAddress, via: IPAddress | None) -> None:
        """Steer the group's traffic for ``ip`` via the owner's node address, or
        remove the steering when ``via`` is None."""
        ...


ClusterResource = Resource
"""``policies``, ``nodes``, ``namespaces`` or ``pods``."""


@dataclass(frozen=True)
class ClusterEvent:
    """One change seen by a watch of the Kubernetes-mode inputs.

    ``RELISTED`` carries the full list of ``resource`` after a (re)connect or a
    410 resync, in ``objects``; consumers replace what they know of that
    resource. The others carry one object as the API server sent it."""

    resource: ClusterResource
    type: Literal["ADDED", "MODIFIED", "DELETED", "RELISTED"]
    object: Mapping[str, Any] | None = None
    objects: tuple[Mapping[str, Any], ...] = ()


class ClusterSource(Protocol):
    """The Kubernetes objects of the Kubernetes mode: EgressGatewayPolicies,
    Nodes, Namespaces and Pods, watched; policy status and Events written."""

    def watch(self) -> AsyncIterator[ClusterEvent]:
        """Every resource listed (a ``RELISTED`` each), then their changes; reconnects by itself."""
        ...

    async def write_policy_status(
        self, name: str, status: Mapping[str, Any], resource_version: str, *, deadline: float
    ) -> Mapping[str, Any]:
        """Replace the status of policy ``name`` (status subresource) if its
        resourceVersion is still ``resource_version``; returns the written
        object. LostRace on a conflict, NotFound if the policy is gone."""
        ...

    async def create_event(self, event: Mapping[str, Any], *, deadline: float) -> None:
        """Create a ``v1`` Event in the daemon's namespace."""
        ...


class EventSink(Protocol):
    """Where ownership events go (log, Kubernetes Events, MQTT). Never blocks."""

    def emit(self, event: OwnershipEvent) -> None: ...


class Metrics(Protocol):
    """Domain events worth counting. Implementations must not block.

    Labels stay low-cardinality: ``ip`` is one of the configured egress IPs,
    ``reason``/``kind``/``error`` come from fixed vocabularies (decision
    reasons, exception class names)."""

    def owned(self, ip: str, owned: bool) -> None:
        """This node serves ``ip`` now (or no longer)."""
        ...

    def transition(self, ip: str, kind: str, reason: str) -> None:
        """A state-machine transition of ``ip``'s member, with the decision's reason."""
        ...

    def renew(self, ip: str, seconds: float, ok: bool, error: str = "") -> None:
        """A lease write (acquire or renew) took ``seconds``; ``error`` is its failure kind."""
        ...

    def takeover_phase(self, ip: str, phase: str, seconds: float) -> None:
        """Time from the acquiring write to the end of ``phase`` (address, snat, garp)."""
        ...

    def conflict(self, ip: str) -> None:
        """Another MAC claimed ``ip`` while this node served it."""
        ...

    def drift(self, ip: str, what: str) -> None:
        """The kernel differed from the desired state and was repaired."""
        ...

    def api_error(self, kind: str) -> None:
        """A Kubernetes API call failed (LostRace, ApiTimeout, ApiUnavailable, ...)."""
        ...

    def mesh_rtt(self, peer: str, seconds: float) -> None:
        """A promise from ``peer`` came ``seconds`` after the heartbeat it answers."""
        ...


@dataclass(frozen=True)
class MeshReceived:
    """One mesh message that passed the signature and field checks."""

    message: Message
    sender: tuple[str, int]
    """The datagram's source address and port."""
    at: float
    """Monotonic time of arrival."""


class MeshTransport(Protocol):
    """The mesh's datagrams to and from the other gateway candidates: signed on
    the way out, checked (size, signature, fields) on the way in, whatever
    fails dropped and counted before the runtime sees it."""

    async def open(self, host: str, port: int) -> tuple[str, int]:
        """Bind; the address and port bound."""
        ...

    def send(self, message: Message, peer: tuple[str, int]) -> None:
        """Sign and send; never blocks, a lost datagram is no error."""
        ...

    def reject(self, reason: str, sender: tuple[str, int], detail: str = "") -> None:
        """Count a message the runtime refused (``replayed``, ``stale``, ...)."""
        ...

    @property
    def rejected(self) -> Mapping[str, int]:
        """Datagrams dropped so far, by reason: the transport's own checks and
        what the runtime refused through :meth:`reject`."""
        ...

    async def receive(self) -> MeshReceived:
        """The next accepted message (waits for one)."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class ConntrackEvent:
    """One change of a flow egressd SNATs (its entry carries egressd's mark).

    ``new`` and ``update`` carry the entry, ``destroy`` the removal of its
    flow. ``overflow`` carries nothing: the kernel dropped events (the
    socket's buffer was full), so the consumer's copy may be stale and it
    must read the whole table again (:meth:`Conntrack.dump`).
    """

    kind: Literal["new", "update", "destroy", "overflow"]
    record: Entry | Removal | None = None


@dataclass(frozen=True)
class ConntrackFailure:
    """One entry the kernel refused to install or delete."""

    record: Entry | Removal
    errno: int
    reason: str
    """Short and fixed (a metric label): ``exists``, ``absent``, or the errno's name."""


class Conntrack(Protocol):
    """The kernel's conntrack table, limited to the flows egressd SNATs (those
    whose conntrack mark matches egressd's, set by the SNAT rule)."""

    async def dump(self) -> list[Entry]:
        """Every source-NATed TCP and UDP entry with egressd's mark, now."""
        ...

    def events(self) -> AsyncIterator[ConntrackEvent]:
        """New, updated and destroyed entries with egressd's mark, as they happen."""
        ...

    def events_pending(self) -> bool:
        """Whether events the kernel queued wait to be read by :meth:`events`
        (a handoff's final batch reads them first)."""
        ...

    async def install(self, entries: Sequence[Entry]) -> list[ConntrackFailure]:
        """Create these entries (same tuples, NAT mapping, TCP state, timeout,
        mark); the ones refused, each with its reason. An entry whose flow
        already has one is refused (``exists``), never overwritten."""
        ...

    async def delete(self, flows: Sequence[Removal]) -> list[ConntrackFailure]:
        """Delete the entries of these flows; those not found are ``absent``."""
        ...

    async def close(self) -> None: ...


class ConnectionGuard(Protocol):
    """Drops inbound packets to an egress IP that match no conntrack entry,
    for a grace period after a takeover (so they are not answered with a
    reset before the flows' entries are installed)."""

    async def arm_guard(self, ips: Iterable[IPAddress], grace: float) -> None:
        """Guard ``ips`` for ``grace`` seconds from now."""
        ...

    async def guard_drops(self) -> int:
        """Packets the guard dropped so far."""
        ...
