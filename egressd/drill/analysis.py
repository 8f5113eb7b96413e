"""The events of a drill and their pure analysis: gap, lost probes, dual ownership, summary.

Takes plain event lists (what :mod:`egressd.drill.instruments` records), so it
is tested without namespaces; no I/O, no threads.

Per round (:class:`RoundResult`):

``gap_ms``
    For each prober, its *good* arrivals at the outpost (source address one of
    the allowed egress IPs) in time order; the longest interval between two
    consecutive good arrivals among those that end after the fault (the first of
    them starts at the last good arrival before the fault). The round's gap is the
    largest over probers (the prober whose IP was not faulted shows the probe
    interval). ``None`` when good traffic did not come back before the round ended.
    Each prober's gap in the JSON timeline carries its anatomy (:func:`gap_anatomy`):
    ``probes_between``, the probes the prober sent between the two that bound the gap (0: the
    prober sent nothing in between, so no probe went unserved and the gap is the prober's or the
    outpost's own timing, not the gateway's), ``send_gap_ms`` (how far apart the prober sent those
    two) and each one's delay from send to the outpost's record (``delay_before_ms``,
    ``delay_after_ms``) and to the bridge (``bridge_before_ms``, ``bridge_after_ms``). The gap is
    ``send_gap_ms + delay_after_ms - delay_before_ms``.
``lost_probes``
    Probes sent in the round that the prober got no echo of and that the
    outpost did not record either (with any source address).
``transit_ms``
    p50/p99/max over the round's probes that arrived with an allowed source of the time from
    their send to the outpost's record (the kernel's receive time). With no probe lost, its
    ``max`` bounds how long the service held up any probe: a prober that did not send (its
    thread descheduled) makes a gap but no transit time.
``served_after_recover_ms``
    When the fault was undone at a known time (``recover``): from then until the last prober is
    served again (the end of the round's gap). Negative when traffic came back before the undo
    (the IP was served again while the fault lasted); ``None`` without an undo or a recovery.
    The figure of ``double-fault`` (from the API server's return) and ``api-outage``.
``dual_owner_ms``
    A *claim* is a frame on the bridge by which a node serves an egress IP: an
    ARP frame whose sender protocol address is the IP (an answer to the
    watcher's request or a gratuitous ARP; the node is the one whose MAC is the
    sender hardware address), or a probe datagram whose source address is the
    IP (the node whose MAC sent it). Each claim at time ``t`` makes its node an
    *active server* of the IP over ``[t, t + window)``, ``window`` =
    :data:`DUAL_WINDOW` (the ARP request interval, so a node that keeps serving
    is active without interruption). ``dual_owner_ms`` is the total length of
    the union, over IPs, of the times at which two or more different nodes are
    active servers of one IP. A clean move from node A to node B adds nothing
    unless B's first claim comes less than ``window`` after A's last one, which
    a move through the API cannot do (two API writes and a netlink and nftables
    transaction lie between them). The sharpest form, one ARP request answered
    by two nodes, is counted separately as ``double_answers``. A move faster than
    ``window`` (a transfer over the mesh: one API write) can make a clean move
    count, so each interval's anatomy (:func:`dual_anatomy`) says whether the
    nodes' claims *interleaved* (a node claimed again after another's first
    claim of the interval) or followed each other, and how far apart;
    ``dual_interleaved_ms`` counts the intervals whose claims interleaved.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

ARP_INTERVAL = 0.01
"""Seconds between two ARP requests of the watcher for one egress IP."""

DUAL_WINDOW = ARP_INTERVAL

SERVED_AFTER_RECOVER = ("api-outage", "double-fault")
"""The scenarios whose round line shows ``served_after_recover_ms`` (every round's JSON has it)."""
"""How long one claim keeps its node an active server of the IP (see the module doc)."""


# --- events (what the instruments record) --------------------------------------------------


@dataclass(frozen=True)
class Sent:
    prober: str
    seq: int
    t: float


@dataclass(frozen=True)
class Arrival:
    """A probe as the outpost recorded it."""

    prober: str
    seq: int
    t: float
    src: str


@dataclass(frozen=True)
class Claim:
    """A frame on the bridge by which ``node`` serves ``ip`` (see the module doc)."""

    t: float
    ip: str
    node: str
    kind: str
    """``answer`` (ARP reply to the watcher), ``garp`` (gratuitous ARP), ``arp`` (other ARP
    with the IP as sender) or ``probe`` (a probe datagram with the IP as source)."""
    prober: str | None = None
    seq: int | None = None


@dataclass(frozen=True)
class LeaseChange:
    t: float
    ip: str
    holder: str | None
    epoch: int | None


@dataclass(frozen=True)
class DualInterval:
    start: float
    end: float
    ip: str
    nodes: tuple[str, ...]

    @property
    def length(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class Gap:
    start: float | None
    """The good arrival that opens the longest hole (None: no good arrival before the fault)."""
    end: float | None
    """The good arrival that closes it (None: good traffic did not come back)."""

    @property
    def seconds(self) -> float | None:
        if self.start is None or self.end is None:
            return None
        return self.end - self.start


@dataclass(frozen=True)
class GapAnatomy:
    """Where a gap between two good arrivals of one prober comes from (see the module doc)."""

    probes_between: int | None
    """Probes sent between the two bounding probes (None: a bound is missing or unknown)."""
    send_gap: float | None
    """Seconds between the sends of the two bounding probes."""
    delay_before: float | None
    """Send to the outpost's record, seconds, of the probe that opens the gap."""
    delay_after: float | None
    """The same for the probe that closes it."""
    bridge_before: float | None
    """Send to the bridge (the watcher's kernel timestamp), seconds, of the probe that opens the gap."""
    bridge_after: float | None

    def to_json(self) -> dict[str, Any]:
        return {
            "probes_between": self.probes_between,
            "send_gap_ms": _ms(self.send_gap),
            "delay_before_ms": _ms(self.delay_before),
            "delay_after_ms": _ms(self.delay_after),
            "bridge_before_ms": _ms(self.bridge_before),
            "bridge_after_ms": _ms(self.bridge_after),
        }


# --- pure analysis ---------------------------------------------------------------------------


def gap_anatomy(
    gap: Gap, prober: str, sent: Iterable[Sent], arrivals: Iterable[Arrival], claims: Iterable[Claim]
) -> GapAnatomy:
    """The anatomy of ``gap``, one of ``prober``'s: the probes that bound it (the good arrivals at
    ``gap.start`` and ``gap.end``), when they were sent, when they crossed the bridge, and how many
    probes the prober sent between them."""
    sends = {s.seq: s.t for s in sent if s.prober == prober}
    bridge = {c.seq: c.t for c in claims if c.kind == "probe" and c.prober == prober and c.seq is not None}

    def bound(t: float | None) -> Arrival | None:
        if t is None:
            return None
        return next((a for a in arrivals if a.prober == prober and a.t == t), None)

    first, last = bound(gap.start), bound(gap.end)

    def since_send(a: Arrival | None, at: Mapping[int, float]) -> float | None:
        if a is None or a.seq not in sends or a.seq not in at:
            return None
        return at[a.seq] - sends[a.seq]

    arrived = {a.seq: a.t for a in (first, last) if a is not None}
    known = first is not None and last is not None and first.seq in sends and last.seq in sends
    return GapAnatomy(
        probes_between=last.seq - first.seq - 1 if known and first and last else None,
        send_gap=sends[last.seq] - sends[first.seq] if known and first and last else None,
        delay_before=since_send(first, arrived),
        delay_after=since_send(last, arrived),
        bridge_before=since_send(first, bridge),
        bridge_after=since_send(last, bridge),
    )


def outage_gap(good: Sequence[float], fault: float) -> Gap:
    """The longest interval between consecutive good arrival times (sorted) that ends after
    ``fault``, starting from the last good arrival at or before ``fault``."""
    before = [t for t in good if t <= fault]
    after = sorted(t for t in good if t > fault)
    start = before[-1] if before else None
    if not after:
        return Gap(start, None)
    chain = [*([start] if start is not None else []), *after]
    if len(chain) == 1:
        return Gap(None, chain[0])
    best = max(range(1, len(chain)), key=lambda i: chain[i] - chain[i - 1])
    return Gap(chain[best - 1], chain[best])


def _merge(intervals: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    merged: list[tuple[float, float]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def dual_owner_intervals(claims: Iterable[Claim], window: float = DUAL_WINDOW) -> list[DualInterval]:
    """Per IP, the maximal intervals during which two or more nodes are active servers
    (a claim at ``t`` makes its node active over ``[t, t + window)``), in time order."""
    active: dict[str, dict[str, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    for c in claims:
        active[c.ip][c.node].append((c.t, c.t + window))
    out: list[DualInterval] = []
    for ip, per_node in active.items():
        edges: list[tuple[float, int, str]] = []
        for node, spans in per_node.items():
            for start, end in _merge(spans):
                edges += [(start, 1, node), (end, -1, node)]
        edges.sort(key=lambda e: (e[0], e[1]))  # ends before starts at the same instant: [t, t+w) is half-open
        serving: set[str] = set()
        seen: set[str] = set()
        opened: float | None = None
        for t, step, node in edges:
            if step > 0:
                serving.add(node)
            else:
                serving.discard(node)
            if len(serving) >= 2:
                seen |= serving
                if opened is None:
                    opened = t
            elif opened is not None:
                if t > opened:
                    out.append(DualInterval(opened, t, ip, tuple(sorted(seen))))
                opened, seen = None, set()
    return sorted(out, key=lambda d: (d.start, d.ip))


def dual_anatomy(dual: DualInterval, claims: Iterable[Claim], window: float = DUAL_WINDOW) -> dict[str, Any]:
    """Whether the claims that make ``dual`` interleaved, and if not how far
    apart the later node's first claim came after the earlier node's last:
    ``{"interleaved": bool, "separation_ms": float | None}``. The claims
    looked at are those of the interval's IP and nodes in
    ``[dual.start - window, dual.end)``."""
    spans: dict[str, list[float]] = defaultdict(list)
    for c in claims:
        if c.ip == dual.ip and c.node in dual.nodes and dual.start - window <= c.t < dual.end:
            spans[c.node].append(c.t)
    ranges = sorted((min(ts), max(ts)) for ts in spans.values() if ts)
    separations = [later[0] - earlier[1] for earlier, later in itertools.pairwise(ranges)]
    if len(ranges) < 2 or any(gap <= 0 for gap in separations):
        return {"interleaved": True, "separation_ms": None}
    return {"interleaved": False, "separation_ms": _ms(min(separations))}


def union_length(intervals: Iterable[DualInterval]) -> float:
    """Total time covered by ``intervals`` (overlaps between IPs counted once)."""
    return sum(end - start for start, end in _merge((d.start, d.end) for d in intervals))


def double_answers(
    requests: Mapping[str, Sequence[float]], claims: Iterable[Claim]
) -> list[tuple[float, str, set[str]]]:
    """ARP requests of the watcher answered by two or more nodes: (request time, IP, nodes).
    An answer belongs to the latest request for its IP sent before it."""
    import bisect  # noqa: PLC0415 - only here

    answered: dict[tuple[str, float], set[str]] = defaultdict(set)
    for c in claims:
        if c.kind != "answer":
            continue
        times = requests.get(c.ip, ())
        i = bisect.bisect_right(times, c.t) - 1
        if i >= 0:
            answered[(c.ip, times[i])].add(c.node)
    return sorted((t, ip, nodes) for (ip, t), nodes in answered.items() if len(nodes) >= 2)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100) with linear interpolation between closest ranks
    (numpy's default); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = q / 100 * (len(ordered) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(rounds: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """p50/p99/max of ``gap_ms`` (an unrecovered round counts as an infinite gap), total
    ``dual_owner_ms`` and ``lost_probes``."""
    gaps = [math.inf if r.get("gap_ms") is None else float(r["gap_ms"]) for r in rounds]
    served = [float(r["served_after_recover_ms"]) for r in rounds if r.get("served_after_recover_ms") is not None]

    def finite(v: float | None) -> float | None:
        return None if v is None or math.isinf(v) else round(v, 1)

    return {
        "rounds": len(rounds),
        "gap_ms": {
            "p50": finite(percentile(gaps, 50)),
            "p99": finite(percentile(gaps, 99)),
            "max": finite(max(gaps) if gaps else None),
        },
        "unrecovered_rounds": sum(1 for g in gaps if math.isinf(g)),
        "served_after_recover_ms": {
            "p50": finite(percentile(served, 50)),
            "max": finite(max(served) if served else None),
        },
        "dual_owner_ms": round(sum(float(r.get("dual_owner_ms") or 0.0) for r in rounds), 1),
        "dual_interleaved_ms": round(sum(float(r.get("dual_interleaved_ms") or 0.0) for r in rounds), 1),
        "double_answers": sum(int(r.get("double_answers") or 0) for r in rounds),
        "lost_probes": sum(int(r.get("lost_probes") or 0) for r in rounds),
        "probes_sent": sum(int(r.get("probes_sent") or 0) for r in rounds),
        "transit_max_ms": finite(max(transits) if (transits := _transit_maxima(rounds)) else None),
    }


def _transit_maxima(rounds: Sequence[Mapping[str, Any]]) -> list[float]:
    maxima = []
    for r in rounds:
        transit = r.get("transit_ms")
        if isinstance(transit, Mapping) and transit.get("max") is not None:
            maxima.append(float(transit["max"]))
    return maxima


def transit_times(sent: Iterable[Sent], arrivals: Iterable[Arrival], allowed: frozenset[str]) -> list[float]:
    """Seconds from send to the outpost's record of every probe that arrived with an allowed
    source (the first record of a probe recorded twice)."""
    sends = {(s.prober, s.seq): s.t for s in sent}
    seen: set[tuple[str, int]] = set()
    out = []
    for a in arrivals:
        key = (a.prober, a.seq)
        if a.src in allowed and key in sends and key not in seen:
            seen.add(key)
            out.append(a.t - sends[key])
    return out


# --- rounds ----------------------------------------------------------------------------------


@dataclass
class RoundResult:
    """One round: the JSON part (:meth:`to_json`) and the raw events (for the plot)."""

    scenario: str
    index: int
    target: str
    ip: str
    fault: float
    fault_action: str
    recover: float | None
    recover_action: str | None
    start: float
    end: float
    settled: bool
    gap: Gap
    gaps: dict[str, Gap]
    lost: int
    sent: int
    unsnat: int
    duals: list[DualInterval]
    doubles: list[tuple[float, str, set[str]]]
    sent_events: list[Sent] = field(repr=False)
    arrivals: list[Arrival] = field(repr=False)
    claims: list[Claim] = field(repr=False)
    leases: list[LeaseChange] = field(repr=False)
    allowed: frozenset[str] = frozenset()
    steps: list[tuple[float, str]] = field(default_factory=list)
    """Actions after the fault and besides the undo (a second fault, a release), with their times."""
    connections: dict[str, Any] | None = None
    """The long-lived connections kept through the fault (:func:`egressd.drill.survival.round_json`),
    when the drill keeps any."""

    @property
    def gap_ms(self) -> float | None:
        seconds = self.gap.seconds
        return None if seconds is None else seconds * 1000

    @property
    def served_after_recover_ms(self) -> float | None:
        if self.recover is None or self.gap.end is None:
            return None
        return round((self.gap.end - self.recover) * 1000, 1)

    @property
    def dual_owner_ms(self) -> float:
        return union_length(self.duals) * 1000

    @property
    def dual_interleaved_ms(self) -> float:
        """Of :attr:`dual_owner_ms`, the intervals whose claims interleaved."""
        return union_length(d for d in self.duals if dual_anatomy(d, self.claims)["interleaved"]) * 1000

    def transit(self) -> dict[str, float | None]:
        """p50/p99/max of the send-to-record time of the round's good probes, milliseconds."""
        times = transit_times(self.sent_events, self.arrivals, self.allowed)
        return {
            "p50": _ms(percentile(times, 50)),
            "p99": _ms(percentile(times, 99)),
            "max": _ms(max(times) if times else None),
        }

    def rel(self, t: float | None) -> float | None:
        """Milliseconds after the fault."""
        return None if t is None else round((t - self.fault) * 1000, 1)

    def carriers(self) -> dict[str, dict[str, str | None]]:
        """Per prober, the gateway that carried its probes last before the fault and last in the round."""
        out: dict[str, dict[str, str | None]] = {}
        for prober in sorted({s.prober for s in self.sent_events}):
            frames = [c for c in self.claims if c.kind == "probe" and c.prober == prober]
            before = [c.node for c in frames if c.t <= self.fault]
            after = [c.node for c in frames if c.t > self.fault]
            out[prober] = {"before": before[-1] if before else None, "after": after[-1] if after else None}
        return out

    def timeline(self) -> dict[str, Any]:
        arp: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
        traffic: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
        for c in self.claims:
            table = traffic if c.kind == "probe" else arp
            entry = table[c.ip].setdefault(c.node, {"first_ms": self.rel(c.t), "last_ms": None, "frames": 0})
            entry["last_ms"] = self.rel(c.t)
            entry["frames"] += 1
        return {
            "fault_ms": 0.0,
            "fault": self.fault_action,
            "recover_ms": self.rel(self.recover),
            "recover": self.recover_action,
            "steps": [{"t_ms": self.rel(t), "action": action} for t, action in self.steps],
            "end_ms": self.rel(self.end),
            "lease": [{"t_ms": self.rel(c.t), "ip": c.ip, "holder": c.holder, "epoch": c.epoch} for c in self.leases],
            "arp": {ip: dict(sorted(nodes.items())) for ip, nodes in sorted(arp.items())},
            "traffic": {ip: dict(sorted(nodes.items())) for ip, nodes in sorted(traffic.items())},
            "gaps": {
                p: {
                    "from_ms": self.rel(g.start),
                    "to_ms": self.rel(g.end),
                    "gap_ms": _ms(g.seconds),
                    **gap_anatomy(g, p, self.sent_events, self.arrivals, self.claims).to_json(),
                }
                for p, g in sorted(self.gaps.items())
            },
            "dual_owner": [
                {
                    "from_ms": self.rel(d.start),
                    "to_ms": self.rel(d.end),
                    "ip": d.ip,
                    "nodes": list(d.nodes),
                    **dual_anatomy(d, self.claims),
                }
                for d in self.duals
            ],
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "round": self.index,
            "target": self.target,
            "ip": self.ip,
            "gap_ms": _ms(self.gap.seconds),
            "recovered": self.gap.end is not None,
            "served_after_recover_ms": self.served_after_recover_ms,
            "dual_owner_ms": round(self.dual_owner_ms, 1),
            "dual_interleaved_ms": round(self.dual_interleaved_ms, 1),
            "double_answers": len(self.doubles),
            "lost_probes": self.lost,
            "probes_sent": self.sent,
            "unsnat_probes": self.unsnat,
            "transit_ms": self.transit(),
            "settled": self.settled,
            "carriers": self.carriers(),
            "timeline": self.timeline(),
            **({} if self.connections is None else {"connections": self.connections}),
        }

    def _dual_note(self) -> str:
        """For a dual-owner time whose claims never interleaved: how far apart they came."""
        if not self.duals or self.dual_interleaved_ms > 0:
            return ""
        apart = min(dual_anatomy(d, self.claims)["separation_ms"] or 0.0 for d in self.duals)
        return f" (claims not interleaved: the next node's first came {apart:.1f} ms after the last of the one before)"

    def progress(self, rounds: int) -> str:
        gap = "no recovery" if self.gap_ms is None else f"{self.gap_ms:7.1f} ms"
        moves = ", ".join(
            f"{p.split('.')[0]} {c['before'] or '-'} -> {c['after'] or '-'}" for p, c in self.carriers().items()
        )
        return (
            f"{self.scenario} round {self.index}/{rounds}: target {self.target} ({self.ip})  gap {gap}  "
            f"dual-owner {self.dual_owner_ms:.1f} ms{self._dual_note()}  lost {self.lost}  [{moves}]"
            + (
                ""
                if (served := self.served_after_recover_ms) is None or self.scenario not in SERVED_AFTER_RECOVER
                else f"  served {served:.0f} ms after the undo"
            )
            + ("" if self.settled else "  (did not settle)")
        )


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def analyse_round(
    *,
    scenario: str,
    index: int,
    target: str,
    ip: str,
    fault: float,
    fault_action: str,
    recover: float | None,
    recover_action: str | None,
    start: float,
    end: float,
    settled: bool,
    sent: Sequence[Sent],
    steps: Sequence[tuple[float, str]] = (),
    echoed: Mapping[str, Mapping[int, tuple[float, str]]],
    arrivals: Sequence[Arrival],
    claims: Sequence[Claim],
    requests: Mapping[str, Sequence[float]],
    leases: Sequence[LeaseChange],
    allowed: Iterable[str],
    window: float = DUAL_WINDOW,
    grace: float = 0.5,
) -> RoundResult:
    """The measures of one round from the events of ``[start, end]``. Probes sent in the last
    ``grace`` seconds are not judged lost (their echo may still be on its way)."""
    ok = frozenset(allowed)
    sent_r = [s for s in sent if start <= s.t <= end]
    arr_r = [a for a in arrivals if start <= a.t <= end + grace]
    claims_r = [c for c in claims if start <= c.t <= end]
    leases_r = [c for c in leases if start <= c.t <= end]
    recorded = {(a.prober, a.seq) for a in arrivals}
    lost = sum(
        1
        for s in sent_r
        if s.t <= end - grace and s.seq not in echoed.get(s.prober, {}) and (s.prober, s.seq) not in recorded
    )
    gaps: dict[str, Gap] = {}
    for prober in sorted({s.prober for s in sent_r}):
        good = sorted(a.t for a in arr_r if a.prober == prober and a.src in ok and a.t <= end)
        gaps[prober] = outage_gap(good, fault)
    worst = max(
        gaps.values(),
        key=lambda g: math.inf if g.seconds is None else g.seconds,
        default=Gap(None, None),
    )
    duals = dual_owner_intervals(claims_r, window)
    reqs = {ip_: [t for t in ts if start - 1.0 <= t <= end] for ip_, ts in requests.items()}
    return RoundResult(
        scenario=scenario,
        index=index,
        target=target,
        ip=ip,
        fault=fault,
        fault_action=fault_action,
        recover=recover,
        recover_action=recover_action,
        start=start,
        end=end,
        settled=settled,
        gap=worst,
        gaps=gaps,
        lost=lost,
        sent=len(sent_r),
        unsnat=sum(1 for a in arr_r if a.src not in ok),
        duals=duals,
        doubles=double_answers(reqs, claims_r),
        sent_events=sent_r,
        arrivals=arr_r,
        claims=claims_r,
        leases=leases_r,
        allowed=ok,
        steps=list(steps),
    )
