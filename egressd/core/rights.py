"""Serving rights, promises and takeover: the rules that keep one owner per
egress IP when the API server is not the only witness (DESIGN.md, "Safety").

A holder H may serve an IP only while it has a **serving right**:

1. the **API right**: H's last successful node-lease renew was *sent* less
   than ``renew_deadline`` ago (H's clock);
2. the **peer right**: every other candidate P that H must ask (H's required
   peers) answered one of H's heartbeats, sent at ``s``, with a promise "I take
   none of your claims before my time r + D"; H counts it valid until
   ``s + D*(1 - rho) - margin`` and relies on peer rights for at most
   ``max_hold`` after its last successful API write.

A standby P may take an IP over from H only when every promise P gave H has
run out on P's clock, H's node lease has not changed for ``lease_duration``
by P's own observation, a further ``max_hold`` has passed when P is not in the
peer set H published, and P's own process is older than the longest promise
(a restarted process cannot know what its predecessor promised).

"By P's own observation" has one refinement that still reads no clock of
another node: the **heartbeat bound** (:func:`stamped_by`). H writes into
each node-lease renew the sequence number ``c`` of the last mesh datagram it
had sent when it stamped the renew (read in the same step as its clock, no
await between). A datagram of the same process with a larger sequence was
sent after that stamp; if P took one at its time ``t_r``, the renew was
stamped before ``t_r`` in real time, so the API right H draws from it ends
``renew_deadline`` (H's clock) after a moment before ``t_r``: exactly what
P's observation of the change guaranteed before, with ``t_r`` in its place.
P counts ``lease_duration`` from the earlier of the two. A paused API server
that commits a dead holder's last renew on its return is then no news to a
standby that heard the holder's heartbeats after that renew was sent.

Everything here is pure: times are readings of the caller's own monotonic
clock, never a time written by another node. Decisions carry a reason for the
logs, the metrics and the Events.
"""

from __future__ import annotations

import bisect
import enum
import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from egressd.core.model import Timing


@dataclass(frozen=True)
class MeshTiming:
    """The timings of promises, beside the election's :class:`Timing`."""

    promise_duration: float = 2.0
    """D, seconds: how long a standby keeps a promise after giving it. At most
    ``lease_duration``, so that a takeover waits no longer for a promise than
    for the holder's lease."""
    drift: float = 0.01
    """rho: the largest relative difference of two nodes' clock rates. A holder
    counts a promise as ``D*(1 - rho)`` of its own time, so that it ends before
    the standby's ``D`` even when the holder's clock runs slow and the
    standby's fast. Quartz clocks differ by parts per million; 1 % covers a
    virtual machine's clock being slewed as well."""
    margin: float = 0.05
    """Seconds taken off every promise for scheduling delay between reading
    the clock and acting."""
    max_hold: float = 900.0
    """Seconds a holder may serve on peer rights after its last successful API
    write: the longest API outage egress survives. A standby outside the
    holder's published peer set waits this much longer before a takeover.
    15 minutes: a control-plane upgrade or an etcd defragmentation of several
    minutes (5 minutes is the outage egressd is drilled against) passes with
    room to spare, while the cost stays bounded: it is paid only by a
    candidate added to a group whose owner dies before it has published the
    new peer set, and such a candidate is the last resort of its group."""
    rtt_bound: float = 0.1
    """Seconds: the kernel fence under a peer right ends this much before the
    promise, room for the round trip that extends it."""


def check(timing: Timing, mesh: MeshTiming) -> list[str]:
    """The inequalities promises rest on that these timings break, each named
    with its numbers; empty when all hold.

    (M1) ``D <= lease_duration``: a standby never waits longer for its promise
    than for the holder's lease; (M2) ``D*(1 - rho) - margin > rtt_bound +
    fence_slack``: a promise leaves room for a kernel fence at all; (M3)
    ``0 <= rho < 0.5``; (M4) ``max_hold >= lease_duration``."""
    failed = []
    d = mesh.promise_duration
    if not d <= timing.lease_duration:
        failed.append(f"(M1) promiseDuration {d:g}s > leaseDuration {timing.lease_duration:g}s")
    usable = d * (1 - mesh.drift) - mesh.margin
    if not usable > mesh.rtt_bound + timing.fence_slack:
        failed.append(
            f"(M2) promiseDuration*(1-drift) - margin = {usable:g}s <= rttBound {mesh.rtt_bound:g}s "
            f"+ fenceSlack {timing.fence_slack:g}s"
        )
    if not 0 <= mesh.drift < 0.5:
        failed.append(f"(M3) drift {mesh.drift:g} is not within [0, 0.5)")
    if not mesh.max_hold >= timing.lease_duration:
        failed.append(f"(M4) maxHold {mesh.max_hold:g}s < leaseDuration {timing.lease_duration:g}s")
    return failed


def promise_end(sent_at: float, mesh: MeshTiming) -> float:
    """Until when (holder's clock) a promise answered to the heartbeat sent at
    ``sent_at`` (holder's clock) covers the holder."""
    return sent_at + mesh.promise_duration * (1 - mesh.drift) - mesh.margin


class Source(enum.Enum):
    API = "api"
    PEER = "peer"
    NONE = "none"


@dataclass(frozen=True)
class Right:
    """A serving right, or its absence with the reason."""

    source: Source
    until: float
    """Holder's clock: when the right ends (the later of the two sources)."""
    reason: str

    def __bool__(self) -> bool:
        return self.source is not Source.NONE


@dataclass(frozen=True)
class Holding:
    """What a holder knows for its serving right."""

    last_renew_sent: float | None
    """When the last successful node-lease renew was sent (None: none yet)."""
    last_api_write: float | None
    """When the last successful API write (renew or claim) was sent."""
    required_peers: frozenset[str]
    """The other candidates that must promise: those of this IP in our current
    and our last published peer set."""
    promises: Mapping[str, float] = field(default_factory=dict)
    """Peer -> send time of the heartbeat its latest promise answered."""


def peer_set(node: str, groups: Iterable[Collection[str]]) -> frozenset[str]:
    """The peer set of ``node``: the other candidates of the groups (each given
    by its candidates) that ``node`` is a candidate of. Published in its node
    lease; a standby outside the holder's published set waits a further
    ``max_hold`` before a takeover."""
    return frozenset(c for g in groups if node in g for c in g) - {node}


def required_peers(
    node: str, served: Iterable[Collection[str]], current: Collection[str], published: Collection[str]
) -> frozenset[str]:
    """The peers whose promises a peer right of ``node`` needs (and who get
    its heartbeats).

    1. The other candidates of the groups whose IPs ``node`` serves (``served``,
       each group given by its candidates); none while it serves nothing.
    2. Those of the peer set it last published that are not in its ``current``
       one: the lease still names them, so they take over without waiting
       ``max_hold`` as long as their view of the groups is older than ours.
    ``published`` must cover every peer set the node lease may show: after a
    renew whose outcome is unknown, the previous set and the one written."""
    held = frozenset(c for g in served for c in g) - {node}
    if not held:
        return held
    return held | (frozenset(published) - frozenset(current) - {node})


def serving_right(h: Holding, now: float, timing: Timing, mesh: MeshTiming) -> Right:
    """Whether the holder may serve now, on which right, and until when.

    1. The API right: the last renew was sent less than the renew deadline ago.
    2. The peer right: every required peer's promise still covers us, and the
       last API write is less than ``max_hold`` ago. No required peer means no
       peer right: a lone candidate has nobody to promise.
    3. The API right is named when both hold; ``until`` is the later end."""
    api_until = h.last_renew_sent + timing.renew_deadline if h.last_renew_sent is not None else float("-inf")
    peer_until, why_not = _peer_until(h, now, mesh)
    if api_until > now:
        return Right(Source.API, max(api_until, peer_until), "api")
    if peer_until > now:
        return Right(Source.PEER, peer_until, "peer")
    return Right(Source.NONE, max(api_until, peer_until), why_not)


def _peer_until(h: Holding, now: float, mesh: MeshTiming) -> tuple[float, str]:
    if not h.required_peers:
        return float("-inf"), "no-api-right-and-no-peers"
    if h.last_api_write is None or now - h.last_api_write >= mesh.max_hold:
        return float("-inf"), "max-hold"
    missing = sorted(p for p in h.required_peers if p not in h.promises)
    if missing:
        return float("-inf"), f"no-promise-from-{missing[0]}"
    ends = {p: promise_end(h.promises[p], mesh) for p in h.required_peers}
    first = min(ends, key=lambda p: ends[p])
    until = min(ends[first], h.last_api_write + mesh.max_hold)
    if until <= now:
        return until, f"promise-expired-{first}"
    return until, "peer"


def fence_ttl(right: Right, now: float, timing: Timing, mesh: MeshTiming) -> float:
    """The kernel fence to arm now (seconds; 0: none). Under the API right the
    election's ``fence_ttl`` (inequality T1 keeps it before any takeover);
    under a peer right no further than the promise's end less the round trip
    and the fence's slack, so the kernel stops before any standby may take
    over, even if this daemon freezes now."""
    if right.source is Source.API:
        return timing.fence_ttl
    if right.source is Source.PEER:
        return max(0.0, min(timing.fence_ttl, right.until - now - mesh.rtt_bound - timing.fence_slack))
    return 0.0


@dataclass(frozen=True)
class Standby:
    """What a standby knows about one holder."""

    promised_until: float | None
    """Our clock: the end of the latest promise we gave this holder."""
    lease_changed_at: float | None
    """Our clock: when we last saw the holder's node lease change (None: never
    seen, which counts from ``started_at``)."""
    in_peer_set: bool
    """We are in the peer set the holder last published."""
    started_at: float
    """Our clock: when this process started."""
    lease_stamped_by: float | None = None
    """Our clock: a time by which the holder surely stamped the node-lease
    version we see: when we took a datagram of the holder's process sent after
    that stamp (:func:`stamped_by`); None: no such datagram taken, or the
    lease carries no sequence. Counts only when earlier than
    ``lease_changed_at``."""


class TakeoverVerdict(enum.Enum):
    ALLOWED = "allowed"
    WAIT = "wait"


@dataclass(frozen=True)
class Takeover:
    verdict: TakeoverVerdict
    reason: str
    not_before: float
    """Our clock: the earliest time the answer can change to allowed."""

    def __bool__(self) -> bool:
        return self.verdict is TakeoverVerdict.ALLOWED


def may_take_over(s: Standby, now: float, timing: Timing, mesh: MeshTiming) -> Takeover:
    """Whether we may take the holder's claims over now.

    1. A restarted process waits out the longest promise its predecessor can
       have given.
    2. Our own promise to the holder must have run out.
    3. The holder's node lease must have stood still for ``lease_duration``,
       counted from our observation of its last change, or from the heartbeat
       bound when that is earlier (``lease_stamped_by``: the version we see
       was stamped before it, so the API right it gave ends before then +
       ``renew_deadline``, as for an observation then).
    4. Outside the holder's published peer set, a further ``max_hold`` from
       the same point: the holder may be serving on promises of peers we do
       not know of, for at most ``max_hold`` after its last API write, which
       its API right covered.

    Allowed earlier than the observation alone would allow, the reason is
    ``holder-lapsed-by-heartbeat``."""
    observed = s.lease_changed_at if s.lease_changed_at is not None else s.started_at
    seen = observed if s.lease_stamped_by is None else min(observed, s.lease_stamped_by)
    end, reason = _takeover_wait(s, seen, timing, mesh)
    if now < end:
        return Takeover(TakeoverVerdict.WAIT, reason, end)
    if seen < observed and now < _takeover_wait(s, observed, timing, mesh)[0]:
        return Takeover(TakeoverVerdict.ALLOWED, "holder-lapsed-by-heartbeat", now)
    return Takeover(TakeoverVerdict.ALLOWED, "holder-lapsed", now)


def _takeover_wait(s: Standby, seen: float, timing: Timing, mesh: MeshTiming) -> tuple[float, str]:
    """The end of the longest wait of :func:`may_take_over`, and its reason,
    the holder's lease counted from ``seen``."""
    waits = [
        (s.started_at + mesh.promise_duration, "restart-promise-wait"),
        (s.promised_until if s.promised_until is not None else float("-inf"), "promised"),
        (seen + timing.lease_duration, "holder-alive"),
    ]
    if not s.in_peer_set:
        waits.append((seen + timing.lease_duration + mesh.max_hold, "outside-peer-set"))
    return max(waits, key=lambda w: w[0])


def stamped_by(seqs: Sequence[int], times: Sequence[float], seq: int) -> float | None:
    """The heartbeat bound of a node-lease version carrying ``seq``: the
    earliest receipt (our clock) of a datagram of the same process whose
    sequence is *above* ``seq``, from the receipts ``seqs[i]`` taken at
    ``times[i]`` (both increasing); None when there is none.

    The datagram numbered ``seq`` itself went out before the stamp (it was the
    last one sent then), possibly long before: it bounds nothing. Any receipt
    of a larger sequence is an upper bound of the stamp; receipts left out
    (bounded memory) make the answer later, which is safe."""
    at = bisect.bisect_right(seqs, seq)
    return times[at] if at < len(times) else None


def promise_until(now: float, previous: float | None, mesh: MeshTiming) -> float:
    """The end of our promise after answering a heartbeat now: promises only grow."""
    end = now + mesh.promise_duration
    return end if previous is None else max(previous, end)


@dataclass(frozen=True)
class KeepAddress:
    """Whether a starting process may re-arm an address its predecessor left."""

    keep: bool
    reason: str
    lifetime: int = 0
    """Seconds to re-arm the address's lifetime to (0: not kept)."""

    def __bool__(self) -> bool:
        return self.keep


def keep_address_at_start(timing: Timing, *, fence_armed: bool) -> KeepAddress:
    """Whether a process that finds an egress address of its predecessor in
    the kernel (a crash and restart) may re-arm that address's lifetime at
    start-up, before it has a serving right of its own: before its node lease
    is renewed and its claim written, which an adoption needs and which take
    the Kubernetes client's import and a few API calls. Without it the address
    can expire meanwhile (``valid_lft`` is 1 s) and nobody answers ARP for the
    IP until the adoption adds it again. ``fence_armed``: the IP's element is
    in the nftables fence's owned set now (an element that timed out is not
    listed).

    1. The nftables fence is off (``fence_ttl`` 0): the address's lifetime is
       the kernel fence, (T1) counts it; re-arming it would let the node serve
       past its predecessor's right. No.
    2. The IP's fence element is gone: the predecessor's right is over and the
       node serves nothing with the IP; the adoption, if any, adds the address
       again. No.
    3. Otherwise yes. The fence element, armed by the predecessor under its
       right and ending before any standby may take over (T1), decides
       whether the node serves the IP: once it runs out the node sends
       nothing with the IP as source and answers no ARP for it, address or
       not ((T1) with the fence on does not count the address). Keeping the
       address changes neither how long the node serves nor who may take
       over; the element itself is left alone (only a claim written under
       this process's own right re-arms it). The lifetime covers the longest
       the element can last (``fence_ttl`` rounded up to whole seconds, the
       address's granularity), at least ``address_lifetime``; whether the
       address stays after that is the adoption's business (the start-up
       reconcile removes it when the claim does not name this node)."""
    if timing.fence_ttl <= 0:
        return KeepAddress(False, "address-is-the-fence")
    if not fence_armed:
        return KeepAddress(False, "fence-expired")
    return KeepAddress(True, "fence-armed", max(timing.address_lifetime, math.ceil(timing.fence_ttl)))
