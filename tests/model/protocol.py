"""An explicit-state model of the ownership protocol: every reachable state of
a few gateways, one or two egress IPs, the API server, the mesh and the
groups' changing candidates, under faults, with the invariant "no two nodes
serve an IP" checked for each IP in each state.

What is modelled, in discrete time (one tick is one round of every daemon):

* each node's clock runs at its own rate, chosen at the start among
  ``rates`` (local time units per tick): the rules read only local clocks;
* the groups: each IP's candidates, as a plan of configurations the cluster
  moves through, one step at any tick (a candidate added to an IP's group,
  then removed...). Each daemon knows one of them and learns the newest at a
  tick of its own (the policies' watch, or a static file edited node by
  node), so nodes disagree about the groups for a while;
* the API server holds, per IP, the claim (its holder, or free), and per
  node its node lease: whether it changed since each other node last looked,
  and the peer set it publishes. A daemon's step reads and writes the API at
  once: that is what the claim's epoch (its resourceVersion) buys the real
  daemons, whose compare-and-swap on a stale view fails and changes nothing;
* a daemon that is up, every tick: takes the promises that reach it, looks at
  the API (when it reaches it), renews its node lease while it is a
  candidate of some IP (publishing its peer set, ``rights.peer_set``),
  heartbeats its required peers (``rights.required_peers``) while it serves
  on a right (a peer that is up, reached, and counts it among its candidates
  or its last published peers answers with a promise, which reaches the
  holder at once or, with ``delay``, up to that many ticks later, whatever
  becomes of the link meanwhile), then decides about each IP with the rules
  of :mod:`egressd.core.rights`: keeps serving and re-arms its kernel fences
  while it has a right, withdraws them all when it has none, takes a free,
  own or lapsed claim of an IP it is a candidate of by a write;
* the kernel of a node serves an IP while that IP's fence has time left; the
  fence runs down on the node's clock also while the daemon is frozen or
  dead; a lost node serves nothing;
* a daemon that learns it is no candidate of an IP it serves any more
  withdraws it and writes the claim free (with the API); a holder with the
  API may hand an IP off (withdraw, then write the claim free) at any tick,
  at most ``handoffs`` times;
* a holder with the API may also hand an IP off by a **transfer**, at most
  ``transfers`` times: a candidate it reaches that accepts the offer
  (``transfer.judge_offer``: it neither holds nor serves the IP and has its
  node lease's API right) records the acceptance, the holder withdraws and
  writes the claim naming it, all in that tick (the accept as late as it can
  be: a transfer written later only shortens the successor's window). The
  successor may then serve on that claim *without the API*
  (``transfer.may_assume``, with its API right, as ``decide`` asks), or take
  it by its own write like any claim naming it. The model's writes are
  atomic with the reads that justify them, so it cannot show what the
  window after the accept protects against (a standby's takeover write on
  its way while the successor starts serving); the docstring of
  :mod:`egressd.core.transfer` argues that part;
* faults, at most ``faults`` toggles per run, at any tick: the API cut from
  one node or restored (also, kind ``unsure``, cut in the middle of a renew
  that lands or not, the daemon cannot tell); the link between two
  nodes cut or restored; a daemon frozen or thawed; a daemon killed
  (restarted at once, with nothing in memory, its kernel still serving until
  its fences run out); a node lost (kernel and daemon) and back.

A heartbeat reaches its peer within the tick or not at all: a late heartbeat
only moves the peer's promise later, which the holder does not count on.

The heartbeat bound (``rights.stamped_by``): each renew carries the sequence
``c`` of the holder's last datagram, and a standby may count the holder's
lease from its receipt of a later one. Sequences are kept as what the rule
can read of them: per standby and holder, the age of the receipt of the
holder's latest datagram (numbered as a renew written now would be), and per
version of the holder's node lease (the one the standby saw last, the one in
the API, one the API server holds queued) the ages of the receipts of the
datagram numbered ``c`` and of the first one numbered above it. A version
whose process is dead takes no receipt any more. Kind ``late`` is a renew the
API server holds when the API is cut from its sender and commits at any
later tick, unless a later renew of the sender landed first (the double
fault: the sender may be dead by then).

Ages are kept instead of clock readings, and saturate where the rules stop
telling values apart, so the state space is finite. Nodes (and IPs) that
nothing tells apart (clock rate, every configuration of the plan) are
renamed to one representative state.
"""

from __future__ import annotations

import argparse
import itertools
import re
import sys
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple, TypeVar

from egressd.core import rights, transfer
from egressd.core.election import api_right
from egressd.core.lease import LeaseRecord
from egressd.core.mesh_messages import MeshRejected, Offer, Outstanding, Promise
from egressd.core.model import Timing

NOW = 10_000.0
"""The local clock reading of "now" given to the rules; times are NOW - age."""

UP, FROZEN, LOST = "up", "frozen", "lost"

T = TypeVar("T")

KINDS = frozenset({"api", "link", "freeze", "kill", "lose"})
ALL_KINDS = KINDS | {"unsure", "late"}
"""The kinds of faults explored unless a configuration says otherwise."""

NEVER = -1
"""An age that was never started (no renew yet, no promise, never seen);
also a free claim's holder."""

DEAD = -2
"""The receipt of a datagram above a version's sequence that never comes: the
version's process is dead (an age that never starts, like NEVER)."""

KNOW_NONE = (NEVER,) * 6
"""What a standby knows of a holder's lease versions before any receipt."""

SEEN, API, QUEUED = 0, 2, 4
"""Offsets, in a standby's knowledge of a holder, of the versions it saw last,
in the API and queued: (age of the receipt of the datagram numbered as the
version, age of the first receipt of one numbered above)."""


def answered_at(outstanding: Outstanding, promise: Promise, me: str, now: float) -> float:
    """The time a promise is counted from: the send time of the heartbeat it
    answers, as the mesh takes it (``Outstanding.answer``)."""
    return outstanding.answer(promise, me)


def renew_seq(counter: int, previous: int | None) -> int:
    """The sequence a renew carries: that of the last datagram sent when it is
    stamped (``counter``), never that of an earlier body (``previous``)."""
    return counter


def published_after_unsure_renew(previous: frozenset[str], attempted: frozenset[str]) -> frozenset[str]:
    """The peer sets a node lease may show after a renew whose outcome is
    unknown: the one before or the one written (``rights.required_peers``
    needs both)."""
    return previous | attempted


@dataclass(frozen=True)
class Rules:
    """The rules the daemons follow (the real ones unless a test plants a bug)."""

    serving_right: Callable[[rights.Holding, float, Timing, rights.MeshTiming], rights.Right] = rights.serving_right
    fence_ttl: Callable[[rights.Right, float, Timing, rights.MeshTiming], float] = rights.fence_ttl
    may_take_over: Callable[[rights.Standby, float, Timing, rights.MeshTiming], rights.Takeover] = rights.may_take_over
    promise_until: Callable[[float, float | None, rights.MeshTiming], float] = rights.promise_until
    peer_set: Callable[[str, Iterable[Collection[str]]], frozenset[str]] = rights.peer_set
    required_peers: Callable[[str, Iterable[Collection[str]], Collection[str], Collection[str]], frozenset[str]] = (
        rights.required_peers
    )
    answered_at: Callable[[Outstanding, Promise, str, float], float] = answered_at
    published_after_unsure_renew: Callable[[frozenset[str], frozenset[str]], frozenset[str]] = (
        published_after_unsure_renew
    )
    stamped_by: Callable[[list[int], list[float], int], float | None] = rights.stamped_by
    renew_seq: Callable[[int, int | None], int] = renew_seq
    judge_offer: Callable[..., transfer.OfferVerdict] = transfer.judge_offer
    may_assume: Callable[[transfer.Accepted | None, LeaseRecord, float, Timing], bool] = transfer.may_assume
    transfer_withdraws: bool = True
    """The holder withdraws before it writes a transfer (a planted bug turns it off)."""


@dataclass(frozen=True)
class Params:
    gateways: int = 2
    ips: int = 1
    plan: tuple[tuple[int, ...], ...] = ()
    """The groups as they change: ``plan[k][x]`` is the set of IP x's
    candidates in the k-th configuration, as a bit mask of node indices (bit
    n: node n). The cluster starts in the first and may move on to the next at
    any tick. Empty: every node a candidate of every IP, unchanging."""
    rates: tuple[int, ...] = (9, 11)
    """Local time units per tick a node's clock may run at (one per node, for
    the whole run): two clocks differ by up to 18 %, within ``mesh.drift``.
    A daemon steps once a tick, about ten times a lease duration, as the
    default timings renew ten times a lease duration."""
    faults: int = 3
    handoffs: int = 0
    """Handoffs a holder may make (withdraw, then write the claim free)."""
    transfers: int = 0
    """Transfers a holder may make (an accepted offer: withdraw, then write the
    claim naming the successor, who may serve on it without the API)."""
    delay: int = 0
    """Ticks a promise may take to reach the holder (0: at once)."""
    kinds: frozenset[str] = KINDS
    """The kinds of faults: ``api`` (the API cut from a node, restored),
    ``unsure`` (the API cut from a node in the middle of a renew whose outcome
    the daemon cannot tell, a timeout: it landed, or not), ``late`` (the same,
    and the renew may also be held by the API server and land at any later
    tick), ``link`` (the link
    between two nodes cut, mended), ``freeze`` (and thaw), ``kill`` (and
    restart), ``lose`` (a node, and its return)."""
    timing: Timing = field(
        default_factory=lambda: Timing(
            lease_duration=130,
            renew_deadline=30,
            retry_period=10,
            api_timeout=5,
            fence_ttl=60,
            fence_slack=5,
            safety_margin=20,
            kernel_slack=0,
            address_lifetime=60,
            non_preferred_delay=0,
            handoff_grace=0,
        )
    )
    mesh: rights.MeshTiming = field(
        default_factory=lambda: rights.MeshTiming(promise_duration=60, drift=0.2, margin=5, max_hold=200, rtt_bound=0)
    )
    rules: Rules | None = None
    receipts: bool = True
    """Keep the receipts the heartbeat bound reads (False: no standby ever has
    one, the bound never shortens a wait: for planted bugs that do not
    involve it, found faster without its states)."""

    def groups(self) -> tuple[tuple[int, ...], ...]:
        """The plan, or its default: every node a candidate of every IP."""
        return self.plan or (((1 << self.gateways) - 1,) * self.ips,)


def grow_and_shrink(gateways: int, ips: int, node: int, ip: int) -> tuple[tuple[int, ...], ...]:
    """A plan: every other node a candidate of every IP; then ``node`` joins
    the group of ``ip``; then it leaves it again."""
    others = ((1 << gateways) - 1) & ~(1 << node)
    base = tuple(others for _ in range(ips))
    grown = tuple(others | (1 << node) if x == ip else others for x in range(ips))
    return (base, grown, base)


Column = tuple[tuple[int, tuple[int, ...]], ...]
"""Per node: its receipt of a node's latest datagram and its knowledge of that
node's lease versions."""
Effects = tuple[bool, tuple[int, ...] | None]
"""Of a node's step on the others' receipts: whether it stamped a renew, and
who took its heartbeats (None: it sent none)."""
Change = tuple["Node", tuple[int, ...], int, tuple[int, ...], int, str, Effects]
"""What a node's step changes: its node, the claims, its lease's peer set, the
others' promises to it, the renew of it held, what it learnt, and its effects
on the others' receipts."""


class Node(NamedTuple):
    mode: str
    rate: int
    started: int
    """Age of the daemon process (saturates at the promise duration)."""
    since_renew: int
    """Age of the last successful node-lease renew (NEVER: none)."""
    since_write: int
    """Age of the last successful API write."""
    promises: tuple[int, ...]
    """Per node: age of the heartbeat the latest promise from it answered."""
    inflight: tuple[int, ...]
    """Per node: age of the heartbeat a promise from it on its way to us answers."""
    promised: tuple[int, ...]
    """Per node: how much longer our promise to it runs (0: none)."""
    unchanged: tuple[int, ...]
    """Per node: age of our last sight of its node lease changing."""
    holds: tuple[bool, ...]
    """Per IP: the daemon believes it holds the claim and may serve."""
    fence: tuple[int, ...]
    """Kernel, per IP: how much longer the fence lets the IP be served."""
    known: int
    """The configuration of the plan this daemon knows."""
    published: int
    """The peer set this daemon believes its node lease shows (bit mask)."""
    heard: tuple[int, ...]
    """Per node: age of our receipt of its process's latest datagram (NEVER:
    we did not take that one)."""
    know: tuple[tuple[int, ...], ...]
    """Per node: receipt ages for the versions of its node lease we saw, in the
    API, queued (offsets SEEN, API, QUEUED): of the datagram numbered as the
    version, and of the first numbered above (DEAD: its process is gone)."""
    accepted: tuple[int, ...]
    """Per IP: age of the transfer offer we accepted last (NEVER: none)."""


class State(NamedTuple):
    nodes: tuple[Node, ...]
    claims: tuple[int, ...]
    """Per IP: the claim's holder (a node index) or NEVER (free)."""
    leases: tuple[int, ...]
    """Per node: the peer set its node lease shows (bit mask)."""
    dirty: tuple[tuple[bool, ...], ...]
    """dirty[o][n]: n's node lease changed since o last looked."""
    api: tuple[bool, ...]
    link: tuple[tuple[int, int], ...]
    """Cut links (pairs, smaller index first), sorted."""
    budget: int
    handoffs: int
    queued: tuple[int, ...]
    """Per node: the peer set of a renew of it the API server holds and may
    still commit (NEVER: none)."""
    transfers: int


def _grow(age: int, by: int, cap: int) -> int:
    return age if age < 0 else min(age + by, cap)


def _at(age: int) -> float | None:
    """The clock reading an age stands for."""
    return None if age in (NEVER, DEAD) else NOW - age


def _dies(know: tuple[int, ...]) -> tuple[int, ...]:
    """Knowledge of versions whose process died: no receipt above them will come."""
    return tuple(DEAD if a == NEVER and k % 2 else a for k, a in enumerate(know))


def _take(know: tuple[int, ...]) -> tuple[int, ...]:
    """Knowledge after a receipt of a datagram now: above every live version."""
    return tuple(0 if a == NEVER and k % 2 else a for k, a in enumerate(know))


def _forgotten(know: tuple[int, ...]) -> tuple[int, ...]:
    """After our process restarted: no receipts, the dead versions still dead."""
    return tuple(DEAD if a == DEAD else NEVER for a in know)


def _n(i: int) -> str:
    """A node in a trace's label (renamed to the start's names in the trace)."""
    return f"<n{i}>"


def _ip(x: int) -> str:
    return f"<ip{x}>"


def _names(mask: int) -> frozenset[str]:
    return frozenset(str(n) for n in range(mask.bit_length()) if mask >> n & 1)


def _mask(names: Iterable[str]) -> int:
    return sum(1 << int(n) for n in set(names))


def _put(seq: tuple[T, ...], i: int, value: T) -> tuple[T, ...]:
    out = list(seq)
    out[i] = value
    return tuple(out)


def _put2(seq: tuple[int, ...], i: int, first: int, second: int) -> tuple[int, ...]:
    """``seq`` with the pair at ``i``, ``i + 1`` replaced."""
    return (*seq[:i], first, second, *seq[i + 2 :])


class Model:
    def __init__(self, params: Params) -> None:
        self.p = params
        self.rules = params.rules or Rules()
        self.groups = params.groups()
        t, m = params.timing, params.mesh
        # Beyond these ages the rules cannot tell values apart.
        self.cap_renew = int(t.renew_deadline) + 1
        self.cap_write = int(m.max_hold) + 1
        self.cap_unchanged = int(t.lease_duration + m.max_hold) + 1
        self.cap_started = int(m.promise_duration) + 1
        self.cap_promise = int(m.promise_duration) + 1
        self.cap_accepted = int(t.renew_deadline) + 1
        self._claim_record = LeaseRecord(
            name="claim", egress_ip="192.0.2.1", holder="holder", lease_duration=t.lease_duration, transitions=1,
            resource_version="1", incarnation="holder",
        )  # fmt: skip
        """What a transferred claim looks like to ``may_assume`` (the model keeps no epochs: every
        acceptance is taken as one for the claim at hand, which allows more, never less)."""
        self._symmetries: dict[tuple[int, ...], list[tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]] = {}
        # The rules are pure: their answers are kept by their (small, integer) arguments.
        self._peer_masks: dict[tuple[int, int], int] = {}
        self._required: dict[tuple[int, int, tuple[bool, ...], int], int] = {}
        self._rights: dict[tuple[int, int, int, tuple[int, ...]], rights.Right] = {}
        self._aged_nodes: dict[Node, Node] = {}
        self._steps: dict[tuple[object, ...], list[Change]] = {}
        self._receipts: dict[tuple[int, Column, Effects], Column] = {}
        # What the rules can read of the sequences: the receipt of the datagram
        # numbered as a renew (a rule counting ``seq >= c``), or of one before
        # the stamp (a renew carrying a sequence read too early). The real
        # rules read neither, and the model then keeps no such receipt.
        self.early_seq = self.rules.renew_seq(1, 0) != 1
        self.own_seq = self.rules.stamped_by([1], [NOW - 1.0], 1) is not None
        self.track_heard = self.early_seq or self.own_seq
        self.by_heartbeat = 0
        """Takeovers the heartbeat bound allowed before the observation alone would."""
        n = params.gateways
        self._none = (NEVER,) * n
        self._clean = {n: (False,) * n}
        self._all_peers = [((1 << n) - 1) & ~(1 << i) for i in range(n)]

    # --- the groups --------------------------------------------------------------------------

    def candidate(self, i: int, x: int, config: int) -> bool:
        return bool(self.groups[config][x] >> i & 1)

    def peers(self, i: int, config: int) -> int:
        """The peer set of node ``i`` in ``config`` (``rights.peer_set``), a bit mask."""
        key = (i, config)
        mask = self._peer_masks.get(key)
        if mask is None:
            mask = _mask(self.rules.peer_set(str(i), [_names(g) for g in self.groups[config]]))
            self._peer_masks[key] = mask
        return mask

    def required(self, i: int, known: int, holds: tuple[bool, ...], published: int) -> int:
        """The peers whose promises node ``i``'s peer right needs (``rights.required_peers``)."""
        key = (i, known, holds, published)
        mask = self._required.get(key)
        if mask is None:
            groups = self.groups[known]
            served = [_names(groups[x]) for x, held in enumerate(holds) if held and groups[x] >> i & 1]
            current = _names(self.peers(i, known))
            mask = _mask(self.rules.required_peers(str(i), served, current, _names(published)))
            self._required[key] = mask
        return mask

    def renews(self, i: int, config: int) -> bool:
        """Whether node ``i`` renews its node lease: it is a candidate of some IP."""
        return any(g >> i & 1 for g in self.groups[config])

    def accepts(self, peer: Node, j: int, i: int) -> bool:
        """Whether node ``j`` answers ``i``'s heartbeats: ``i`` is among its
        candidates now or in the peer set it last published (the mesh's rule)."""
        return bool((self.peers(j, peer.known) | peer.published) >> i & 1)

    # --- the start ---------------------------------------------------------------------------

    def initial(self) -> Iterator[State]:
        n = self.p.gateways
        for rates in itertools.combinations_with_replacement(self.p.rates, n):
            yield State(
                nodes=tuple(self._fresh(r, (0,) * self.p.ips, 0) for r in rates),
                claims=(NEVER,) * self.p.ips,
                # the node leases of earlier processes, in the first configuration
                leases=tuple(self.peers(i, 0) for i in range(n)),
                dirty=tuple((False,) * n for _ in range(n)),
                api=(True,) * n,
                link=(),
                budget=self.p.faults,
                handoffs=self.p.handoffs,
                queued=(NEVER,) * n,
                transfers=self.p.transfers,
            )

    def _fresh(
        self, rate: int, fence: tuple[int, ...], known: int, know: tuple[tuple[int, ...], ...] | None = None
    ) -> Node:
        """A daemon just started: nothing in memory; its kernel keeps ``fence``.
        ``know``: its predecessor's knowledge of the lease versions (the
        versions' processes that were dead stay so); none: at the start, the
        node leases are of earlier processes."""
        n, k = self.p.gateways, self.p.ips
        none = (NEVER,) * n
        known_versions = tuple(_forgotten(x) for x in know) if know is not None else ((DEAD,) * 6,) * n
        return Node(
            UP,
            rate,
            0,
            NEVER,
            NEVER,
            none,
            none,
            (0,) * n,
            none,
            (False,) * k,
            fence,
            known,
            0,
            none,
            known_versions,
            (NEVER,) * k,
        )

    # --- events: the groups change, daemons learn them, handoffs, faults ---------------------

    def events(self, s: State) -> Iterator[tuple[str, State]]:
        yield "none", s
        for i, peers in enumerate(s.queued):
            if peers != NEVER:
                # the API server commits a renew it held (no fault of its own: the one that held it)
                yield f"held-renew-of-{_n(i)}-lands", self._lands(s, i, peers)
        if s.handoffs:
            for i, node in enumerate(s.nodes):
                if node.mode == UP and s.api[i]:
                    for x, held in enumerate(node.holds):
                        if held and s.claims[x] == i:
                            yield f"handoff-{_n(i)}-{_ip(x)}", self._release(s._replace(handoffs=s.handoffs - 1), i, x)
        if s.transfers:
            yield from self._transfers(s)
        yield from self.faults(s)

    def _transfers(self, s: State) -> Iterator[tuple[str, State]]:
        """Every transfer a holder with the API may make now to a candidate it reaches that accepts."""
        for i, node in enumerate(s.nodes):
            if node.mode != UP or not s.api[i]:
                continue
            for x, held in enumerate(node.holds):
                if not held or s.claims[x] != i:
                    continue
                for j, peer in enumerate(s.nodes):
                    if j == i or peer.mode != UP or not self._reach(s, i, j) or not self._accepts_offer(peer, j, i, x):
                        continue
                    spent = s._replace(transfers=s.transfers - 1)
                    if self.rules.transfer_withdraws:
                        spent = self._set(
                            spent, i, node._replace(holds=_put(node.holds, x, False), fence=_put(node.fence, x, 0))
                        )
                    spent = spent._replace(claims=_put(spent.claims, x, j))
                    spent = self._set(spent, j, peer._replace(accepted=_put(peer.accepted, x, 0)))
                    yield f"transfer-{_n(i)}-{_ip(x)}-to-{_n(j)}", spent

    def _accepts_offer(self, peer: Node, j: int, i: int, x: int) -> bool:
        """Whether node ``j`` accepts ``i``'s offer of IP ``x`` (``transfer.judge_offer``)."""
        offer = Offer(str(i), "p", 1, "192.0.2.1", 0, "0" * 32, str(j))
        candidates = [str(c) for c in range(self.p.gateways) if self.candidate(c, x, peer.known)]
        verdict = self.rules.judge_offer(
            offer,
            me=str(j),
            candidates=candidates,
            known=None,
            standby=not peer.holds[x] and peer.fence[x] == 0,
            api_right=bool(api_right(_at(peer.since_renew), NOW, self.p.timing)),
            held_off=False,
            stopping=False,
        )
        return bool(verdict.accept)

    def _may_assume(self, node: Node, x: int) -> bool:
        """Whether a node whose claim of IP ``x`` was transferred to it may serve
        on it without a write (``transfer.may_assume``, and the API right ``decide`` asks for)."""
        age = node.accepted[x]
        if age == NEVER or not api_right(_at(node.since_renew), NOW, self.p.timing):
            return False
        return self.rules.may_assume(transfer.Accepted(1, NOW - age), self._claim_record, NOW, self.p.timing)

    def _learn(self, s: State, i: int, config: int) -> State:
        """Node ``i`` learns the groups of ``config``, and hands off what it is
        no candidate of any more."""
        s = self._set(s, i, s.nodes[i]._replace(known=config))
        for x, held in enumerate(s.nodes[i].holds):
            if held and not self.candidate(i, x, config):
                s = self._release(s, i, x)
        return s

    def _release(self, s: State, i: int, x: int) -> State:
        """Withdraw IP ``x`` from node ``i``, then write its claim free (with the API)."""
        node = s.nodes[i]
        s = self._set(s, i, node._replace(holds=_put(node.holds, x, False), fence=_put(node.fence, x, 0)))
        if s.api[i] and s.claims[x] == i:
            s = s._replace(claims=_put(s.claims, x, NEVER))
        return s

    def faults(self, s: State) -> Iterator[tuple[str, State]]:
        if s.budget == 0:
            return
        spent = s._replace(budget=s.budget - 1)
        for i in range(self.p.gateways):
            yield from self._node_faults(s, spent, i)
        if "link" in self.p.kinds:
            for pair in itertools.combinations(range(self.p.gateways), 2):
                cut_links = tuple(sorted(set(s.link) ^ {pair}))
                what = "cut" if pair not in s.link else "mend"
                yield f"link-{what}-{_n(pair[0])}-{_n(pair[1])}", spent._replace(link=cut_links)

    def _node_faults(self, s: State, spent: State, i: int) -> Iterator[tuple[str, State]]:
        kinds, node = self.p.kinds, s.nodes[i]
        cut = spent._replace(api=_put(s.api, i, not s.api[i]))
        if "api" in kinds:
            yield f"api-{'down' if s.api[i] else 'up'}-{_n(i)}", cut
        if kinds & {"unsure", "late"} and s.api[i] and node.mode == UP and self.renews(i, node.known):
            yield from self._unsure_renew(cut, i)
        if node.mode == UP:
            if "freeze" in kinds:
                yield f"freeze-{_n(i)}", self._set(spent, i, node._replace(mode=FROZEN))
            if "kill" in kinds:
                killed = self._fresh(node.rate, node.fence, node.known, node.know)
                yield f"kill-{_n(i)}", self._died(self._set(spent, i, killed), i)
            if "lose" in kinds:
                lost = self._fresh(node.rate, (0,) * self.p.ips, node.known, node.know)._replace(mode=LOST)
                yield f"lose-{_n(i)}", self._died(self._set(spent, i, lost), i)
        elif node.mode == FROZEN:
            yield f"thaw-{_n(i)}", self._set(spent, i, node._replace(mode=UP))
        elif node.mode == LOST:
            yield f"return-{_n(i)}", self._set(spent, i, node._replace(mode=UP, started=0))

    def _died(self, s: State, i: int) -> State:
        """Node ``i``'s process is gone: no datagram of it comes any more, so
        versions of its lease that no receipt is above stay so."""
        nodes = tuple(
            node
            if j == i
            else node._replace(heard=_put(node.heard, i, NEVER), know=_put(node.know, i, _dies(node.know[i])))
            for j, node in enumerate(s.nodes)
        )
        return s._replace(nodes=nodes)

    def _unsure_renew(self, s: State, i: int) -> Iterator[tuple[str, State]]:
        """The API is cut from node ``i`` while its renew is under way: the
        write lands or not, and the daemon cannot tell; with kind ``late``
        the API server may also hold it, to commit it at a later tick."""
        node = s.nodes[i]
        attempted = self.peers(i, node.known)
        kept = _mask(self.rules.published_after_unsure_renew(_names(node.published), _names(attempted)))
        s = self._set(s, i, node._replace(published=kept))
        stamped = self._stamped(s, i, QUEUED) if self.p.receipts else s
        yield f"api-down-{_n(i)}-renew-landed", self._lands(stamped, i, attempted)
        yield f"api-down-{_n(i)}-renew-lost", s
        if "late" in self.p.kinds:
            yield (
                f"api-down-{_n(i)}-renew-held",
                self._stamped(s, i, QUEUED)._replace(queued=_put(s.queued, i, attempted))
                if self.p.receipts
                else s._replace(queued=_put(s.queued, i, attempted)),
            )

    def _stamped(self, s: State, i: int, at: int) -> State:
        """A renew of node ``i`` is stamped now, as version ``at`` (API, QUEUED)
        in every other node's knowledge: the sequence it carries is the latest
        datagram's (``rules.renew_seq``), whose receipt is the version's own;
        or one read before the last round of heartbeats (a bug), whose
        datagrams then count as sent after the stamp."""
        nodes = list(s.nodes)
        for j, node in enumerate(nodes):
            if j == i:
                continue
            pair = (NEVER, node.heard[i]) if self.early_seq else (node.heard[i], NEVER)
            if node.know[i][at : at + 2] != pair:
                nodes[j] = node._replace(know=_put(node.know, i, _put2(node.know[i], at, *pair)))
        nodes_t = tuple(nodes)
        if nodes_t == s.nodes:
            return s
        return s._replace(nodes=nodes_t)

    def _lands(self, s: State, i: int, peers: int, at: int = QUEUED) -> State:
        """Version ``at`` of node ``i``'s lease (publishing ``peers``) lands in
        the API: every other node sees it changed at its next look."""
        dirty = tuple(
            tuple(True if n == i and o != i else d for n, d in enumerate(row)) for o, row in enumerate(s.dirty)
        )
        nodes = tuple(
            node
            if j == i
            else node._replace(know=_put(node.know, i, _put2(node.know[i], API, *node.know[i][at : at + 2])))
            for j, node in enumerate(s.nodes)
        )
        return s._replace(nodes=nodes, leases=_put(s.leases, i, peers), dirty=dirty, queued=_put(s.queued, i, NEVER))

    @staticmethod
    def _set(s: State, i: int, node: Node) -> State:
        return s._replace(nodes=_put(s.nodes, i, node))

    # --- one tick ----------------------------------------------------------------------------

    def tick(self, s: State) -> Iterator[tuple[str, State, tuple[int, int] | None]]:
        """Every successor after one tick: (what happened, state, (node, IP) if
        two nodes served the IP after that node's step on some way there, else
        None). Daemons step in every order (the API serializes their writes);
        orders that meet in one state on the way (steps that commute) go on as one."""
        for event, f in self.events(s):
            aged = self._age(f)
            up = frozenset(i for i, node in enumerate(aged.nodes) if node.mode == UP)
            Way = tuple[tuple[int, int] | None, str]
            layer: dict[tuple[State, frozenset[int]], Way] = {(aged, frozenset()): (None, event)}
            for _ in up:
                nxt: dict[tuple[State, frozenset[int]], Way] = {}
                for (state, done), (bad, what) in layer.items():
                    for i in up - done:
                        for after, learnt in self._step(state, i):
                            key = (after, done | {i})
                            seen = nxt.get(key)
                            if seen is None or seen[0] is None:
                                x = self.doubled(after) if bad is None else None
                                now_bad = bad if bad is not None else (None if x is None else (i, x))
                                if seen is None or now_bad is not None:
                                    nxt[key] = (now_bad, f"{what}, {learnt}" if learnt else what)
                layer = nxt
            for (state, _), (bad, what) in layer.items():
                yield what, state, bad

    def doubled(self, s: State) -> int | None:
        """An IP that two nodes serve in ``s``, or None."""
        for x in range(self.p.ips):
            if sum(1 for node in s.nodes if node.mode != LOST and node.fence[x] > 0) > 1:
                return x
        return None

    def _age(self, s: State) -> State:
        return s._replace(nodes=tuple(self._aged(node) for node in s.nodes))

    def _aged(self, node: Node) -> Node:
        """``node`` one tick later (kept: nodes recur in many states)."""
        aged = self._aged_nodes.get(node)
        if aged is None:
            r = node.rate
            aged = Node(
                node.mode,
                r,
                min(node.started + r, self.cap_started),
                _grow(node.since_renew, r, self.cap_renew),
                _grow(node.since_write, r, self.cap_write),
                tuple(_grow(a, r, self.cap_promise) for a in node.promises),
                tuple(_grow(a, r, self.cap_promise) for a in node.inflight),
                tuple(max(0, x - r) for x in node.promised),
                tuple(_grow(a, r, self.cap_unchanged) for a in node.unchanged),
                node.holds,
                tuple(max(0, f - r) for f in node.fence),
                node.known,
                node.published,
                tuple(_grow(a, r, self.cap_unchanged) for a in node.heard),
                tuple(tuple(_grow(a, r, self.cap_unchanged) for a in k) for k in node.know),
                tuple(_grow(a, r, self.cap_accepted) for a in node.accepted),
            )
            self._aged_nodes[node] = aged
        return aged

    def _step(self, s: State, i: int) -> Iterator[tuple[State, str]]:
        """Node ``i``'s step: every state it may leave, and what it learnt ("": nothing).

        A step reads only node ``i``, the API (its reach, the claims, the
        leases, its row of ``dirty``, a renew of it held), its links, and of
        each peer whether it is up, whether it answers ``i``, its promise to
        ``i`` and what it knows of ``i``'s datagrams; it is worked out once per
        such context and applied to ``s`` as a change."""
        node = s.nodes[i]
        if node.mode != UP:
            yield s, ""
            return
        api = s.api[i]
        context = tuple(
            (peer.mode == UP and self._reach(s, i, j) and self.accepts(peer, j, i), peer.promised[i])
            for j, peer in enumerate(s.nodes)
        )
        newest = max(n.known for n in s.nodes)
        column = tuple((peer.heard[i], peer.know[i]) for peer in s.nodes) if self.p.receipts else ()
        key = (i, node, api, s.claims, s.leases, s.dirty[i], s.queued[i], context, newest)
        changes = self._steps.get(key)
        if changes is None:
            changes = self._steps[key] = [
                (
                    after.nodes[i],
                    after.claims,
                    after.leases[i],
                    tuple(p.promised[i] for p in after.nodes),
                    after.queued[i],
                    learnt,
                    effects,
                )
                for after, learnt, effects in self._work_out(s, i)
            ]
        renewed = api and self.renews(i, node.known)
        dirty = s.dirty
        if api:
            clean = self._clean[len(s.nodes)]
            dirty = tuple(clean if o == i else (_put(row, i, True) if renewed else row) for o, row in enumerate(dirty))
        for mine, claims, lease, promised, queued, learnt, (stamped, took) in changes:
            nodes = list(s.nodes)
            nodes[i] = mine
            for j, value in enumerate(promised):
                if j != i and value != nodes[j].promised[i]:
                    nodes[j] = nodes[j]._replace(promised=_put(nodes[j].promised, i, value))
            leases = s.leases if lease == s.leases[i] else _put(s.leases, i, lease)
            queue = s.queued if queued == s.queued[i] else _put(s.queued, i, queued)
            if self.p.receipts and (stamped or took is not None):
                self._apply_receipts(nodes, i, column, (stamped, took))
            yield (
                State(tuple(nodes), claims, leases, dirty, s.api, s.link, s.budget, s.handoffs, queue, s.transfers),
                learnt,
            )

    def _apply_receipts(self, nodes: list[Node], i: int, column: Column, effects: Effects) -> None:
        """The others' receipts of node ``i`` (``column``: each one's receipt of
        its latest datagram and knowledge of its lease versions) after its
        step's ``effects``: a renew stamped (:meth:`_stamped`), then a round of
        heartbeats (:meth:`_received`). Kept by their arguments."""
        key = (i, column, effects)
        after = self._receipts.get(key)
        if after is None:
            stamped, took = effects
            before = tuple(
                n._replace(heard=_put(n.heard, i, h), know=_put(n.know, i, k))
                for n, (h, k) in zip(nodes, column, strict=True)
            )
            state = State(before, (), (), (), (), (), 0, 0, (), 0)
            if stamped:
                state = self._stamped(state, i, API)
            if took is not None:
                state = self._received(state, i, took)
            after = self._receipts[key] = tuple((n.heard[i], n.know[i]) for n in state.nodes)
        for j, (heard, know) in enumerate(after):
            if j != i and (heard, know) != column[j]:
                nodes[j] = nodes[j]._replace(heard=_put(nodes[j].heard, i, heard), know=_put(nodes[j].know, i, know))

    def _received(self, s: State, i: int, took: tuple[int, ...]) -> State:
        """Node ``i`` sent a round of heartbeats, which the nodes ``took``
        received: a receipt above every version of ``i``'s lease stamped so
        far; the others did not take ``i``'s latest datagram."""
        nodes = list(s.nodes)
        for j, peer in enumerate(nodes):
            if j == i:
                continue
            if j in took:
                heard, know = 0 if self.track_heard else NEVER, _take(peer.know[i])
                if (heard, know) != (peer.heard[i], peer.know[i]):
                    nodes[j] = peer._replace(heard=_put(peer.heard, i, heard), know=_put(peer.know, i, know))
            elif peer.heard[i] != NEVER:
                nodes[j] = peer._replace(heard=_put(peer.heard, i, NEVER))
        return s._replace(nodes=tuple(nodes))

    def _work_out(self, s: State, i: int) -> Iterator[tuple[State, str, Effects]]:
        node = s.nodes[i]
        arrivals = (node,) if node.inflight == self._none else self._arrivals(node, i)
        for arrived in arrivals:
            for after, effects in self._act(s, i, arrived):
                yield after, "", effects
                for learnt, what in self._learning(after, i):
                    yield learnt, what, effects

    def _learning(self, s: State, i: int) -> Iterator[tuple[State, str]]:
        """After its step, node ``i`` may learn a newer configuration: the
        newest a daemon knows, or the next one (the cluster moves on; a change
        nobody knows of yet changes nothing). Its next renew publishes it."""
        known = s.nodes[i].known
        newest = min(max(node.known for node in s.nodes) + 1, len(self.groups) - 1)
        for config in range(known + 1, newest + 1):
            yield self._learn(s, i, config), f"{_n(i)} learns groups {config}"

    def _arrivals(self, node: Node, i: int) -> Iterator[Node]:
        """The promises on their way to node ``i``: each arrives now, or later
        (but within ``delay`` ticks of its heartbeat)."""
        waiting = [j for j, a in enumerate(node.inflight) if a != NEVER]
        choices = [(True,) if node.inflight[j] >= self.p.delay * node.rate else (True, False) for j in waiting]
        for now in itertools.product(*choices):
            promises, inflight = list(node.promises), list(node.inflight)
            for j, take in zip(waiting, now, strict=True):
                if take:
                    sent = self._taken(i, j, inflight[j])
                    inflight[j] = NEVER
                    if sent is not None and (promises[j] == NEVER or sent < promises[j]):
                        promises[j] = sent
            yield node._replace(promises=tuple(promises), inflight=tuple(inflight))

    def _taken(self, i: int, j: int, age: int) -> int | None:
        """The age a promise from ``j`` answering our heartbeat of age ``age``
        is counted from, as the mesh takes it; None: refused (too old)."""
        outstanding = Outstanding(keep=self.p.mesh.promise_duration)
        outstanding.sent(str(j), "n", NOW - age)
        outstanding.expire(NOW)
        duration_ms = round(self.p.mesh.promise_duration * 1000)
        try:
            at = self.rules.answered_at(outstanding, Promise(str(j), "p", str(i), "n", duration_ms), str(i), NOW)
        except MeshRejected:
            return None
        return int(NOW - at)

    def _act(self, s: State, i: int, node: Node) -> Iterator[tuple[State, Effects]]:
        """Steps 1-4 of node ``i``'s round; step 5 (:meth:`_decide`) once per
        way its answers travel; with each, its effects on the others' receipts
        (applied by :meth:`_step`, so that the step's work is kept whatever
        they hold)."""
        n = self.p.gateways
        known, holds, fence = node.known, node.holds, node.fence
        since_renew, since_write, published, unchanged = (
            node.since_renew,
            node.since_write,
            node.published,
            node.unchanged,
        )
        leases, dirty, know = s.leases, s.dirty, node.know
        stamped, took = False, None
        if s.api[i]:
            # 1. Look: a node lease that changed since our last look was seen changing now.
            mine = dirty[i]
            if any(mine):
                unchanged = tuple(0 if mine[j] else a for j, a in enumerate(unchanged))
                know = tuple(_put2(k, SEEN, *k[API : API + 2]) if mine[j] else k for j, k in enumerate(know))
            # 2. Renew our node lease, publishing our peer set, while a candidate
            #    (a renew the API server held cannot land after it).
            if self.renews(i, known):
                published = self.peers(i, known)
                leases = _put(leases, i, published)
                since_renew = since_write = 0
                dirty = tuple(self._clean[n] if o == i else _put(row, i, True) for o, row in enumerate(dirty))
                stamped = True
                s = s._replace(queued=_put(s.queued, i, NEVER))
            elif any(mine):
                dirty = _put(dirty, i, self._clean[n])
            # 3. A claim written by another since is lost.
            if any(h and s.claims[x] != i for x, h in enumerate(holds)):
                lost = [h and s.claims[x] != i for x, h in enumerate(holds)]
                holds = tuple(h and not gone for h, gone in zip(holds, lost, strict=True))
                fence = tuple(0 if gone else f for f, gone in zip(fence, lost, strict=True))
        # 4. Heartbeats to our required peers while we serve on a right; who promises.
        nodes, answered = s.nodes, list[int]()
        if any(holds) and self.right(i, since_renew, since_write, known, holds, published, node.promises):
            required = self.required(i, known, holds, published)
            nodes, answered = self._heartbeats(s, i, required)
            took = tuple(answered) if required else None
        s = s._replace(nodes=nodes, leases=leases, dirty=dirty)
        effects = (stamped, took)
        base = Node(
            node.mode,
            node.rate,
            node.started,
            since_renew,
            since_write,
            node.promises,
            node.inflight,
            node.promised,
            unchanged,
            holds,
            fence,
            known,
            published,
            node.heard,
            know,
            node.accepted,
        )
        for after in self._answers(s, i, node, base, answered):
            yield after, effects

    def _answers(self, s: State, i: int, node: Node, base: Node, answered: list[int]) -> Iterator[State]:
        """Step 5 once per way the promises of ``answered`` travel: they reach
        node ``i`` now, or (with a delay, none other on its way) later."""
        if not answered:
            yield from self._decide(s, i, base)
            return
        slow = [j for j in answered if self.p.delay and node.inflight[j] == NEVER]
        for late in itertools.product((False, True), repeat=len(slow)):
            promises, inflight = list(node.promises), list(node.inflight)
            for j in answered:
                promises[j] = 0
            for j, on_its_way in zip(slow, late, strict=True):
                if on_its_way:
                    inflight[j] = 0
                    promises[j] = node.promises[j]
            yield from self._decide(s, i, base._replace(promises=tuple(promises), inflight=tuple(inflight)))

    def _heartbeats(self, s: State, i: int, required: int) -> tuple[tuple[Node, ...], list[int]]:
        """Node ``i``'s heartbeats to ``required``: the nodes after, and who
        took them and promised (their receipts: :meth:`_received`)."""
        listed, answered = list(s.nodes), []
        for j, peer in enumerate(s.nodes):
            if j == i or not required >> j & 1 or peer.mode != UP or not self._reach(s, i, j):
                continue
            if self.accepts(peer, j, i):
                previous = peer.promised[i]
                end = self.rules.promise_until(NOW, NOW + previous if previous else None, self.p.mesh)
                listed[j] = peer._replace(promised=_put(peer.promised, i, int(end - NOW)))
                answered.append(j)
        return tuple(listed), answered

    def _decide(self, s: State, i: int, node: Node) -> Iterator[State]:
        """5. Each IP: keep serving on a right, withdraw all without one, take
        what may be taken. A daemon that serves an IP may leave a free or
        lapsed claim to another candidate (the spread: ``spread_rank`` and
        ``non_preferred_delay`` make it wait for the preferred one)."""
        t, m = self.p.timing, self.p.mesh
        holds, fence = list(node.holds), list(node.fence)
        if any(holds):
            right = self.right(
                i, node.since_renew, node.since_write, node.known, node.holds, node.published, node.promises
            )
            ttl = int(self.rules.fence_ttl(right, NOW, t, m)) if right else 0
            for x, held in enumerate(holds):
                if held:
                    fence[x] = ttl
                    holds[x] = bool(right)  # without a right: the daemon fence
        takeable = [x for x in range(self.p.ips) if s.api[i] and not holds[x] and self._may_take(s, i, node, x)]
        # a claim transferred to us, served on without a write (no API needed)
        assumable = [
            x
            for x in range(self.p.ips)
            if not holds[x] and x not in takeable and s.claims[x] == i and self._may_assume(node, x)
        ]
        serving = any(holds)
        for taken, assumed in itertools.product(
            itertools.product((True, False), repeat=len(takeable)),
            itertools.product((True, False), repeat=len(assumable)),
        ):
            if takeable and not serving and not any(taken):
                continue
            now_holds, now_fence, claims, accepted = list(holds), list(fence), s.claims, list(node.accepted)
            for x, take in zip(takeable, taken, strict=True):
                if take:
                    # A free claim, our own, or a lapsed holder's: the compare-and-swap write.
                    now_holds[x] = True
                    claims = _put(claims, x, i)
            for x, assume in zip(assumable, assumed, strict=True):
                if assume:
                    now_holds[x] = True
            write = 0 if any(taken) else node.since_write
            if any(taken) or any(assumed):
                right = self.right(
                    i, node.since_renew, write, node.known, tuple(now_holds), node.published, node.promises
                )
                ttl = int(self.rules.fence_ttl(right, NOW, t, m)) if right else 0
                for x in [x for x, take in zip(takeable, taken, strict=True) if take] + [
                    x for x, assume in zip(assumable, assumed, strict=True) if assume
                ]:
                    now_fence[x] = ttl
                    accepted[x] = NEVER
            after = node._replace(
                holds=tuple(now_holds), fence=tuple(now_fence), since_write=write, accepted=tuple(accepted)
            )
            yield s._replace(nodes=_put(s.nodes, i, after), claims=claims)

    def _may_take(self, s: State, i: int, node: Node, x: int) -> bool:
        """Whether node ``i`` may write IP ``x``'s claim now: a candidate, and
        the claim free, its own, or its holder lapsed (``rights.may_take_over``)."""
        if not self.candidate(i, x, node.known):
            return False
        h = s.claims[x]
        if h in (NEVER, i):
            return True
        standby = rights.Standby(
            promised_until=NOW + node.promised[h] if node.promised[h] else None,
            lease_changed_at=_at(node.unchanged[h]),
            in_peer_set=bool(s.leases[h] >> i & 1),
            started_at=NOW - node.started,
            lease_stamped_by=self.stamped_by(node.know[h]),
        )
        verdict = self.rules.may_take_over(standby, NOW, self.p.timing, self.p.mesh)
        if verdict.reason == "holder-lapsed-by-heartbeat":
            self.by_heartbeat += 1
        return bool(verdict)

    def stamped_by(self, know: tuple[int, ...]) -> float | None:
        """The heartbeat bound of the version of a holder's lease we saw
        (``rules.stamped_by``), from the receipts of the datagram numbered as
        it (1 here) and of the first numbered above."""
        at, after = know[SEEN], know[SEEN + 1]
        seqs = [q for q, a in ((1, at), (2, after)) if a >= 0]
        times = [NOW - a for a in (at, after) if a >= 0]
        return self.rules.stamped_by(seqs, times, 1)

    def right(
        self,
        i: int,
        since_renew: int,
        since_write: int,
        known: int,
        holds: tuple[bool, ...],
        published: int,
        promises: tuple[int, ...],
    ) -> rights.Right:
        """Node ``i``'s serving right now (``rights.serving_right``)."""
        required = self.required(i, known, holds, published)
        if required != self._all_peers[i]:
            promises = tuple(a if required >> j & 1 else NEVER for j, a in enumerate(promises))
        key = (since_renew, since_write, required, promises)
        right = self._rights.get(key)
        if right is None:
            holding = rights.Holding(
                last_renew_sent=_at(since_renew),
                last_api_write=_at(since_write),
                required_peers=_names(required),
                promises={str(j): NOW - a for j, a in enumerate(promises) if a != NEVER and required >> j & 1},
            )
            right = self.rules.serving_right(holding, NOW, self.p.timing, self.p.mesh)
            self._rights[key] = right
        return right

    def _reach(self, s: State, i: int, j: int) -> bool:
        return (min(i, j), max(i, j)) not in s.link

    # --- symmetry ----------------------------------------------------------------------------

    def canonical(self, s: State) -> tuple[State, tuple[int, ...], tuple[int, ...]]:
        """The least of the states that differ from ``s`` only in the names of
        nodes and IPs that nothing tells apart, and the renaming (new node n
        is old node perm[n], new IP y is old IP ips[y])."""
        rates = tuple(node.rate for node in s.nodes)
        symmetries = self._symmetries.get(rates)
        if symmetries is None:
            symmetries = self._symmetries[rates] = self._find_symmetries(rates)
        same = (tuple(range(self.p.gateways)), tuple(range(self.p.ips)))
        if not symmetries:
            return s, *same
        # Only renamings that order the nodes by what their names do not change
        # can give the least state; it is the least of those (usually one).
        signatures = [self._signature(s, n) for n in range(len(s.nodes))]
        least = tuple(signatures)
        chosen: list[tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]] | None] = [None]  # None: as it is
        for symmetry in symmetries:
            order = tuple(signatures[old] for old in symmetry[0])
            if order < least:
                least, chosen = order, [symmetry]
            elif order == least:
                chosen.append(symmetry)
        return min(((s, *same) if c is None else (self._rename(s, *c), c[0], c[1]) for c in chosen), key=lambda r: r[0])

    def forget(self, s: State) -> State:
        """``s`` without what no rule can read again, so that states that differ
        only there are one:

        * what others know of a node's lease (when they last saw it change,
          whether it changed since, the peer set it shows, the receipts above
          its versions, a renew of it the API server holds) while no claim
          names that node: a claim naming it comes from its own write, after a
          renew in the same step (which a held renew cannot land after), and
          every other node looks at the API (and sees that renew) before it
          can decide to take the claim over;
        * a daemon's renew and write ages while it holds nothing: they count
          only for a right, and an acquisition renews and writes first (its
          renew's age is kept while transfers remain or it accepted one:
          accepting an offer and serving on a transfer read it)."""
        named = set(s.claims)
        n = self.p.gateways
        idle = [j for j in range(n) if j not in named]
        nodes = s.nodes
        if idle:
            nodes = tuple(
                node._replace(
                    unchanged=tuple(NEVER if j in idle else a for j, a in enumerate(node.unchanged)),
                    know=tuple(KNOW_NONE if j in idle else k for j, k in enumerate(node.know)),
                )
                for node in nodes
            )
            s = s._replace(
                dirty=tuple(tuple(d and j not in idle for j, d in enumerate(row)) for row in s.dirty),
                leases=tuple(0 if j in idle else m for j, m in enumerate(s.leases)),
                queued=tuple(NEVER if j in idle else q for j, q in enumerate(s.queued)),
            )
        nodes = tuple(
            node
            if any(node.holds) or node.since_write == NEVER
            else node._replace(
                since_renew=node.since_renew if self._may_need_renew(s, node) else NEVER, since_write=NEVER
            )
            for node in nodes
        )
        nodes = tuple(self._unreadable_receipts(s, o, node) for o, node in enumerate(nodes))
        return s._replace(nodes=nodes)

    @staticmethod
    def _may_need_renew(s: State, node: Node) -> bool:
        """Whether a node that holds nothing may still read its renew's age: to
        accept an offer (transfers remain) or to serve on a transfer it accepted."""
        return s.transfers > 0 or any(a != NEVER for a in node.accepted)

    @staticmethod
    def _unreadable_receipts(s: State, o: int, node: Node) -> Node:
        """``node`` (number ``o``) without the receipts no rule reads again: of
        the version it saw, those not before its sight of it (the bound counts
        only when earlier than the observation, ``Standby.lease_stamped_by``,
        and every later receipt is later still; never seen: the observation is
        the process's start, before all its receipts); of the API's version
        once seen (it is the one seen, and a new version replaces it); of a
        queued one when none is held."""
        know = list(node.know)
        for n, k in enumerate(know):
            if n == o:
                continue
            seen = node.unchanged[n]
            at, after = k[SEEN], k[SEEN + 1]
            at = at if seen >= 0 and at > seen else NEVER
            after = after if seen >= 0 and after > seen else DEAD
            api = k[API : API + 2] if s.dirty[o][n] else (NEVER, DEAD)
            queued = k[QUEUED : QUEUED + 2] if s.queued[n] != NEVER else (NEVER, DEAD)
            know[n] = (at, after, *api, *queued)
        know_t = tuple(know)
        return node if know_t == node.know else node._replace(know=know_t)

    @staticmethod
    def _signature(s: State, n: int) -> tuple[object, ...]:
        """What node ``n`` is in ``s`` whatever the names of nodes and IPs."""
        node = s.nodes[n]
        return (
            node.mode,
            node.started,
            node.since_renew,
            node.since_write,
            s.api[n],
            sorted(zip(node.holds, node.fence, node.accepted, strict=True)),
            sorted(node.promises),
            sorted(node.promised),
            sorted(node.unchanged),
            sorted(node.inflight),
            node.known,
            sorted(node.heard),
            sorted(node.know),
        )

    def _find_symmetries(
        self, rates: tuple[int, ...]
    ) -> list[tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
        """Renamings (new node n is old perm[n], new IP y is old ips[y]) that
        keep every node's clock rate and every configuration of the plan."""
        n, k = self.p.gateways, self.p.ips
        found = []
        for perm in itertools.permutations(range(n)):
            if any(rates[old] != rates[new] for new, old in enumerate(perm)):
                continue
            inv = [0] * n
            for new, old in enumerate(perm):
                inv[old] = new
            masks = tuple(sum(1 << inv[b] for b in range(n) if m >> b & 1) for m in range(1 << n))
            for ips in itertools.permutations(range(k)):
                if list(perm) == sorted(perm) and list(ips) == sorted(ips):
                    continue
                if all(masks[config[ips[y]]] == config[y] for config in self.groups for y in range(k)):
                    found.append((perm, ips, masks))
        return found

    @staticmethod
    def _rename(s: State, perm: tuple[int, ...], ips: tuple[int, ...], masks: tuple[int, ...]) -> State:
        inv = {old: new for new, old in enumerate(perm)}
        inv[NEVER] = NEVER
        nodes = tuple(
            s.nodes[old]._replace(
                promises=tuple(s.nodes[old].promises[o] for o in perm),
                inflight=tuple(s.nodes[old].inflight[o] for o in perm),
                promised=tuple(s.nodes[old].promised[o] for o in perm),
                unchanged=tuple(s.nodes[old].unchanged[o] for o in perm),
                heard=tuple(s.nodes[old].heard[o] for o in perm),
                know=tuple(s.nodes[old].know[o] for o in perm),
                holds=tuple(s.nodes[old].holds[x] for x in ips),
                fence=tuple(s.nodes[old].fence[x] for x in ips),
                published=masks[s.nodes[old].published],
                accepted=tuple(s.nodes[old].accepted[x] for x in ips),
            )
            for old in perm
        )
        return State(
            nodes=nodes,
            claims=tuple(inv[s.claims[x]] for x in ips),
            leases=tuple(masks[s.leases[old]] for old in perm),
            dirty=tuple(tuple(s.dirty[old][o] for o in perm) for old in perm),
            api=tuple(s.api[old] for old in perm),
            link=tuple(sorted((min(inv[a], inv[b]), max(inv[a], inv[b])) for a, b in s.link)),
            budget=s.budget,
            handoffs=s.handoffs,
            queued=tuple(NEVER if s.queued[old] == NEVER else masks[s.queued[old]] for old in perm),
            transfers=s.transfers,
        )


@dataclass
class Result:
    states: int
    transitions: int
    violation: list[str] | None
    """The trace (events per tick) to the first state where two nodes served an IP, if any."""
    seconds: float = 0.0
    by_heartbeat: int = 0
    """Ways (steps) on which the heartbeat bound allowed a takeover the
    observation alone did not yet."""


Renaming = tuple[tuple[int, ...], tuple[int, ...]]


def explore(params: Params, *, limit: int = 5_000_000) -> Result:
    """Breadth-first over every reachable state; stops at the first violation."""
    started = time.monotonic()
    model = Model(params)
    parent: dict[State, tuple[State | None, str, Renaming]] = {}
    queue: deque[State] = deque()
    for first in model.initial():
        start, perm, ips = model.canonical(model.forget(first))
        parent[start] = (None, "start", (perm, ips))
        queue.append(start)
    transitions = 0
    while queue:
        s = queue.popleft()
        for event, successor, bad in model.tick(s):
            transitions += 1
            if bad is not None:
                node, ip = bad
                trace = _trace(parent, s, f"{event}; {_ip(ip)} served by two after {_n(node)} steps")
                return Result(len(parent), transitions, trace, time.monotonic() - started, model.by_heartbeat)
            nxt, perm, ips = model.canonical(model.forget(successor))
            if nxt not in parent:
                parent[nxt] = (s, event, (perm, ips))
                if len(parent) > limit:
                    raise RuntimeError(f"more than {limit} states")
                queue.append(nxt)
    return Result(len(parent), transitions, None, time.monotonic() - started, model.by_heartbeat)


def _trace(parent: dict[State, tuple[State | None, str, Renaming]], s: State, last: str) -> list[str]:
    """The events from the start to ``s``, then ``last``, with every node and
    IP called by its name in the start (the states on the way were renamed)."""
    steps: list[tuple[str, Renaming]] = []
    cur: State | None = s
    while cur is not None:
        prev, event, renaming = parent[cur]
        steps.append((event, renaming))
        cur = prev
    steps.reverse()
    # names[n]: the start's name of node n of the state reached so far
    nodes, ips = list(range(len(s.nodes))), list(range(len(s.claims)))
    out = []
    labels = [event for event, _ in steps[1:]] + [last]
    for (_, (perm, ip_perm)), label in zip([*steps[1:], ((), ((), ()))], labels, strict=True):
        out.append(_named(label, nodes, ips))
        if perm:
            nodes = [nodes[old] for old in perm]
            ips = [ips[old] for old in ip_perm]
    return ["start", *out]


def _named(label: str, nodes: list[int], ips: list[int]) -> str:
    label = re.sub(r"<n(\d+)>", lambda m: f"n{nodes[int(m[1])]}", label)
    return re.sub(r"<ip(\d+)>", lambda m: f"ip{ips[int(m[1])]}", label)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--gateways", type=int, default=2)
    parser.add_argument("--ips", type=int, default=1)
    parser.add_argument("--faults", type=int, default=3)
    parser.add_argument("--handoffs", type=int, default=0)
    parser.add_argument("--transfers", type=int, default=0)
    parser.add_argument("--delay", type=int, default=0, help="ticks a promise may take to arrive")
    parser.add_argument(
        "--plan",
        choices=("none", "add", "remove", "add-remove"),
        default="none",
        help="the last node joins the first IP's group, leaves it, or both (grow_and_shrink)",
    )
    parser.add_argument("--rates", default="9,11", help="clock rates a node may have, comma-separated")
    parser.add_argument(
        "--kinds",
        default=",".join(sorted(KINDS)),
        help="kinds of faults, comma-separated, among api,unsure,late,link,freeze,kill,lose",
    )
    args = parser.parse_args(argv)
    steps = grow_and_shrink(args.gateways, args.ips, args.gateways - 1, 0)
    plan = {"none": (), "add": steps[:2], "remove": steps[1:], "add-remove": steps}[args.plan]
    params = Params(
        gateways=args.gateways,
        ips=args.ips,
        faults=args.faults,
        handoffs=args.handoffs,
        transfers=args.transfers,
        delay=args.delay,
        plan=plan,
        kinds=frozenset(args.kinds.split(",")),
        rates=tuple(int(r) for r in args.rates.split(",")),
    )
    result = explore(params)
    what = " ".join(f"{a}={v}" for a, v in vars(args).items())
    print(
        f"{what}: {result.states} states, {result.transitions} transitions, {result.seconds:.1f}s, "
        f"{result.by_heartbeat} takeovers on the heartbeat bound"
    )
    if result.violation:
        print(f"two owners after {len(result.violation) - 1} ticks:", " -> ".join(result.violation))
        return 1
    print("never two owners")
    return 0


if __name__ == "__main__":
    sys.exit(main())
