"""An explicit-state model of the ownership protocol: every reachable state of
a few gateways, one egress IP, the API server and the mesh, under faults, with
the invariant "no two nodes serve the IP" checked in each.

What is modelled, in discrete time (one tick is one round of every daemon):

* each node's clock runs at its own rate, chosen at the start among
  ``rates`` (local time units per tick): the rules read only local clocks;
* the API server holds the IP's claim (holder) and, for every node, whether
  its node lease changed since each other node last looked;
* a daemon that is up, every tick: looks at the API (when it reaches it),
  renews its node lease, heartbeats every peer it reaches (a peer that is up
  answers with a promise), then decides about the IP with the rules of
  :mod:`egressd.core.rights`: keeps serving and re-arms its kernel fence
  while it has a right, withdraws when it has none, takes a free, own or
  lapsed claim over by a compare-and-swap write;
* the kernel of a node serves the IP while its fence has time left; the
  fence runs down on the node's clock also while the daemon is frozen or
  dead; a lost node serves nothing;
* faults, at most ``faults`` toggles per run, at any tick: the API cut from
  one node or restored; the link between two nodes cut or restored; a daemon
  frozen or thawed; a daemon killed (restarted at once, with nothing in
  memory, its kernel still serving until its fence runs out); a node lost
  (kernel and daemon) and back.

A round trip of heartbeat and promise happens within the tick or not at all:
a late answer only shortens the right a holder counts from its heartbeat's
send time, so delivery at once is the worst case.

Ages are kept instead of clock readings, and saturate where the rules stop
telling values apart, so the state space is finite.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

from egressd.core import rights
from egressd.core.model import Timing

NOW = 10_000.0
"""The local clock reading of "now" given to the rules; times are NOW - age."""

UP, FROZEN, KILLED, LOST = "up", "frozen", "killed", "lost"


@dataclass(frozen=True)
class Params:
    gateways: int = 2
    rates: tuple[int, ...] = (9, 11)
    """Local time units per tick a node's clock may run at (one per node, for
    the whole run): two clocks differ by up to 18 %, within ``mesh.drift``.
    A daemon steps once a tick, about ten times a lease duration, as the
    default timings renew ten times a lease duration."""
    faults: int = 3
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
        default_factory=lambda: rights.MeshTiming(
            promise_duration=60, drift=0.2, margin=5, max_hold=200, rtt_bound=0
        )
    )
    rules: Rules | None = None


@dataclass(frozen=True)
class Rules:
    """The rules the daemons follow (the real ones unless a test plants a bug)."""

    serving_right: Callable[[rights.Holding, float, Timing, rights.MeshTiming], rights.Right] = rights.serving_right
    fence_ttl: Callable[[rights.Right, float, Timing, rights.MeshTiming], float] = rights.fence_ttl
    may_take_over: Callable[[rights.Standby, float, Timing, rights.MeshTiming], rights.Takeover] = (
        rights.may_take_over
    )
    promise_until: Callable[[float, float | None, rights.MeshTiming], float] = rights.promise_until


NEVER = -1
"""An age that was never started (no renew yet, no promise, never seen)."""


class Node(NamedTuple):
    mode: str
    rate: int
    started: int
    """Age of the daemon process (saturates at the promise duration)."""
    holds: bool
    """The daemon believes it holds the claim and may serve."""
    since_renew: int
    """Age of the last successful node-lease renew (NEVER: none)."""
    since_write: int
    """Age of the last successful API write."""
    promises: tuple[int, ...]
    """Per node: age of the heartbeat the latest promise from it answered."""
    promised: tuple[int, ...]
    """Per node: how much longer our promise to it runs (0: none)."""
    unchanged: tuple[int, ...]
    """Per node: age of our last sight of its node lease changing."""
    fence: int
    """Kernel: how much longer the fence lets the IP be served."""


class State(NamedTuple):
    nodes: tuple[Node, ...]
    claim: int
    """The claim's holder (a node index) or NEVER (free)."""
    dirty: tuple[tuple[bool, ...], ...]
    """dirty[o][n]: n's node lease changed since o last looked."""
    api: tuple[bool, ...]
    link: tuple[tuple[int, int], ...]
    """Cut links (pairs, smaller index first), sorted."""
    budget: int


def _grow(age: int, by: int, cap: int) -> int:
    return NEVER if age == NEVER else min(age + by, cap)


def _at(age: int) -> float | None:
    """The clock reading an age stands for."""
    return None if age == NEVER else NOW - age


class Model:
    def __init__(self, params: Params) -> None:
        self.p = params
        self.rules = params.rules or Rules()
        t, m = params.timing, params.mesh
        # Beyond these ages the rules cannot tell values apart.
        self.cap_renew = int(t.renew_deadline) + 1
        self.cap_write = int(m.max_hold) + 1
        self.cap_unchanged = int(t.lease_duration + m.max_hold) + 1
        self.cap_started = int(m.promise_duration) + 1
        self.cap_promise = int(m.promise_duration) + 1
        self._perms: dict[tuple[int, ...], list[tuple[int, ...]]] = {}
        self._orders: dict[tuple[int, ...], list[tuple[int, ...]]] = {}

    # --- the start ---------------------------------------------------------------------------

    def initial(self) -> Iterator[State]:
        n = self.p.gateways
        for rates in itertools.combinations_with_replacement(self.p.rates, n):
            nodes = tuple(self._fresh(r) for r in rates)
            yield State(
                nodes=nodes,
                claim=NEVER,
                dirty=tuple((False,) * n for _ in range(n)),
                api=(True,) * n,
                link=(),
                budget=self.p.faults,
            )

    def _fresh(self, rate: int, fence: int = 0) -> Node:
        """A daemon just started: nothing in memory; its kernel keeps ``fence``."""
        n = self.p.gateways
        return Node(UP, rate, 0, False, NEVER, NEVER, (NEVER,) * n, (0,) * n, (NEVER,) * n, fence)

    # --- faults ------------------------------------------------------------------------------

    def faults(self, s: State) -> Iterator[tuple[str, State]]:
        yield "none", s
        if s.budget == 0:
            return
        n = self.p.gateways
        spent = s._replace(budget=s.budget - 1)
        for i in range(n):
            api = list(s.api)
            api[i] = not api[i]
            yield f"api-{'down' if s.api[i] else 'up'}-{i}", spent._replace(api=tuple(api))
            node = s.nodes[i]
            if node.mode == UP:
                yield f"freeze-{i}", self._set(spent, i, node._replace(mode=FROZEN))
                yield f"kill-{i}", self._set(spent, i, self._fresh(node.rate, node.fence))
                yield f"lose-{i}", self._set(spent, i, self._fresh(node.rate)._replace(mode=LOST))
            elif node.mode == FROZEN:
                yield f"thaw-{i}", self._set(spent, i, node._replace(mode=UP))
            elif node.mode == LOST:
                yield f"return-{i}", self._set(spent, i, node._replace(mode=UP, started=0))
        for pair in itertools.combinations(range(n), 2):
            cut = tuple(sorted(set(s.link) ^ {pair}))
            yield f"link-{'cut' if pair not in s.link else 'mend'}-{pair[0]}{pair[1]}", spent._replace(link=cut)

    @staticmethod
    def _set(s: State, i: int, node: Node) -> State:
        nodes = list(s.nodes)
        nodes[i] = node
        return s._replace(nodes=tuple(nodes))

    # --- one tick ----------------------------------------------------------------------------

    def tick(self, s: State) -> Iterator[tuple[str, State, int | None]]:
        """Every successor after one tick: (fault, state, node index after whose step two
        nodes served, or None). Daemons step in every order (the API serializes their writes)."""
        for fault, f in self.faults(s):
            aged = self._age(f)
            up = tuple(i for i, node in enumerate(aged.nodes) if node.mode == UP)
            if up not in self._orders:
                self._orders[up] = list(itertools.permutations(up))
            for order in self._orders[up]:
                state = aged
                bad: int | None = None
                for i in order:
                    state = self._step(state, i)
                    if bad is None and self.serving(state) > 1:
                        bad = i
                yield fault, state, bad

    def serving(self, s: State) -> int:
        return sum(1 for node in s.nodes if node.mode != LOST and node.fence > 0)

    def _age(self, s: State) -> State:
        nodes = []
        for node in s.nodes:
            r = node.rate
            nodes.append(
                node._replace(
                    started=min(node.started + r, self.cap_started),
                    since_renew=_grow(node.since_renew, r, self.cap_renew),
                    since_write=_grow(node.since_write, r, self.cap_write),
                    promises=tuple(_grow(a, r, self.cap_promise) for a in node.promises),
                    promised=tuple(max(0, x - r) for x in node.promised),
                    unchanged=tuple(_grow(a, r, self.cap_unchanged) for a in node.unchanged),
                    fence=max(0, node.fence - r),
                )
            )
        return s._replace(nodes=tuple(nodes))

    def canonical(self, s: State) -> State:
        """The least of the states that differ from ``s`` only in the nodes' names."""
        rates = tuple(node.rate for node in s.nodes)
        perms = self._perms.get(rates)
        if perms is None:
            # Only renaming nodes of equal clock rates gives a state that can occur.
            everything = itertools.permutations(range(len(rates)))
            perms = [
                p for p in everything if list(p) != sorted(p) and all(rates[o] == rates[n] for n, o in enumerate(p))
            ]
            self._perms[rates] = perms
        best = s
        for perm in perms:
            inv = [0] * len(perm)
            for new, old in enumerate(perm):
                inv[old] = new
            nodes = tuple(
                s.nodes[old]._replace(
                    promises=tuple(s.nodes[old].promises[o] for o in perm),
                    promised=tuple(s.nodes[old].promised[o] for o in perm),
                    unchanged=tuple(s.nodes[old].unchanged[o] for o in perm),
                )
                for old in perm
            )
            other = State(
                nodes=nodes,
                claim=NEVER if s.claim == NEVER else inv[s.claim],
                dirty=tuple(tuple(s.dirty[old][o] for o in perm) for old in perm),
                api=tuple(s.api[old] for old in perm),
                link=tuple(sorted((min(inv[a], inv[b]), max(inv[a], inv[b])) for a, b in s.link)),
                budget=s.budget,
            )
            best = min(best, other)
        return best

    def _reach(self, s: State, i: int, j: int) -> bool:
        return (min(i, j), max(i, j)) not in s.link

    def _step(self, s: State, i: int) -> State:
        node = s.nodes[i]
        if node.mode != UP:
            return s
        n = self.p.gateways
        dirty = [list(row) for row in s.dirty]
        unchanged = list(node.unchanged)
        promises = list(node.promises)
        nodes = list(s.nodes)
        if s.api[i]:
            # 1. Look: a node lease that changed since our last look was seen changing now.
            for j in range(n):
                if j != i and dirty[i][j]:
                    unchanged[j] = 0
                    dirty[i][j] = False
            # 2. Renew our node lease.
            for o in range(n):
                dirty[o][i] = True
            node = node._replace(since_renew=0, since_write=0)
        # 3. Heartbeats, answered by every peer that is up and reached, while we hold the IP.
        if node.holds:
            for j in range(n):
                peer = nodes[j]
                if j == i or peer.mode != UP or not self._reach(s, i, j):
                    continue
                promised = list(peer.promised)
                end = self.rules.promise_until(NOW, NOW + promised[i] if promised[i] else None, self.p.mesh)
                promised[i] = int(end - NOW)
                nodes[j] = peer._replace(promised=tuple(promised))
                promises[j] = 0
        node = node._replace(unchanged=tuple(unchanged), promises=tuple(promises))
        node, claim = self._decide(s, i, node)
        nodes[i] = node
        return s._replace(nodes=tuple(nodes), claim=claim, dirty=tuple(tuple(row) for row in dirty))

    def _decide(self, s: State, i: int, node: Node) -> tuple[Node, int]:
        t, m = self.p.timing, self.p.mesh
        claim = s.claim
        if node.holds and s.api[i] and claim != i:
            return node._replace(holds=False, fence=0), claim  # lost the claim
        if node.holds:
            right = self._right(node, i)
            if not right:
                return node._replace(holds=False, fence=0), claim  # the daemon fence
            return node._replace(fence=int(self.rules.fence_ttl(right, NOW, t, m))), claim
        if not s.api[i]:
            return node, claim
        if claim not in (NEVER, i):
            h = claim
            standby = rights.Standby(
                promised_until=NOW + node.promised[h] if node.promised[h] else None,
                lease_changed_at=_at(node.unchanged[h]),
                in_peer_set=True,
                started_at=NOW - node.started,
            )
            if not self.rules.may_take_over(standby, NOW, t, m):
                return node, claim
        # A free claim, our own, or a lapsed holder's: the compare-and-swap write.
        node = node._replace(holds=True, since_write=0)
        right = self._right(node, i)
        return node._replace(fence=int(self.rules.fence_ttl(right, NOW, t, m)) if right else 0), i

    def _right(self, node: Node, i: int) -> rights.Right:
        peers = frozenset(str(j) for j in range(self.p.gateways) if j != i)
        holding = rights.Holding(
            last_renew_sent=_at(node.since_renew),
            last_api_write=_at(node.since_write),
            required_peers=peers,
            promises={str(j): NOW - a for j, a in enumerate(node.promises) if j != i and a != NEVER},
        )
        return self.rules.serving_right(holding, NOW, self.p.timing, self.p.mesh)


@dataclass
class Result:
    states: int
    transitions: int
    violation: list[str] | None
    """The trace (faults per tick) to the first state where two nodes served, if any."""


def explore(params: Params, *, limit: int = 5_000_000) -> Result:
    """Breadth-first over every reachable state; stops at the first violation."""
    model = Model(params)
    parent: dict[State, tuple[State | None, str]] = {}
    queue: deque[State] = deque()
    for first in model.initial():
        start = model.canonical(first)
        parent[start] = (None, "start")
        queue.append(start)
    transitions = 0
    while queue:
        s = queue.popleft()
        for fault, successor, bad in model.tick(s):
            transitions += 1
            if bad is not None:
                trace = [*_trace(parent, s), f"{fault}; two serve after node {bad} steps"]
                return Result(len(parent), transitions, trace)
            nxt = model.canonical(successor)
            if nxt not in parent:
                parent[nxt] = (s, fault)
                if len(parent) > limit:
                    raise RuntimeError(f"more than {limit} states")
                queue.append(nxt)
    return Result(len(parent), transitions, None)


def _trace(parent: dict[State, tuple[State | None, str]], s: State) -> list[str]:
    out = []
    cur: State | None = s
    while cur is not None:
        prev, fault = parent[cur]
        out.append(fault)
        cur = prev
    return out[::-1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gateways", type=int, default=2)
    parser.add_argument("--faults", type=int, default=3)
    args = parser.parse_args(argv)
    result = explore(Params(gateways=args.gateways, faults=args.faults))
    print(f"gateways={args.gateways} faults={args.faults}: {result.states} states, {result.transitions} transitions")
    if result.violation:
        print("two owners:", " -> ".join(result.violation))
        return 1
    print("never two owners")
    return 0


if __name__ == "__main__":
    sys.exit(main())
