"""The mesh loop: heartbeats to the peers while this node holds claims,
promises in answer to the peers' heartbeats (DESIGN.md, "The mesh").

* **Heartbeat** (every ``retryPeriod``, while this node serves IPs on a
  right): to each peer whose promise its peer right needs (the other
  candidates of the groups it serves IPs of), at the address of the peer's
  node lease and the mesh port. A node without a right sends none, so the
  promises it was given run out and a standby may take over. The nonce is remembered
  (:class:`~egressd.core.mesh_messages.Outstanding`) so that only a promise
  echoing it, from that peer, counts, and counts from the heartbeat's send
  time.
* **Promise** (in answer to a heartbeat of a candidate peer, admitted by the
  :class:`~egressd.core.mesh_messages.ReplayGuard`): "I take none of your
  claims before my time now + D". We record that end (``promised``) and keep
  it whatever the API says: ``rights.may_take_over`` reads it.
* **Promises received** go into ``promises`` (peer -> send time of the
  heartbeat answered): ``rights.serving_right`` reads them. The time from
  that heartbeat to the promise taken is the mesh's round trip (``last_rtt``
  and the metrics' histogram).
* **Offer** and **Accept** (:meth:`Mesh.offer`, sent by an owner about to
  leave an IP for a named successor): a successor that could take the claim
  now answers with an accept naming its process, judged by ``on_offer``
  (:func:`egressd.core.transfer.judge_offer`), and the owner then writes the
  claim to it instead of free (:mod:`egressd.core.transfer`). An offer is
  taken from a candidate peer once (a replay guard of its own); an accept
  only for an offer we sent, still waiting, to that peer, with its nonce.
* **Receipts** (``receipts``): when each heartbeat and wake of a peer's
  process was taken, by sequence. A holder's node lease carries the sequence
  of its last datagram when the renew was stamped (:attr:`Mesh.seq`), so a
  standby knows the renew was stamped before the receipt of a larger one
  (``rights.stamped_by``, the heartbeat bound of ``rights.may_take_over``).
* **Listen** and **Serving** (:mod:`egressd.core.news`): a node that steers
  traffic to gateway candidates sends each of them a listen every
  ``leaseDuration`` (:meth:`Mesh.listen`); a gateway that starts serving an
  IP tells every node it heard a listen from within ``3 leaseDuration``
  (:meth:`Mesh.announce`; the IPs of one moment share datagrams), and each
  judges the news by ``on_serving``. Listens are taken from any node with
  the key (steering nodes are no candidates), once each; news is refused
  ``replayed`` the same way, and its claims are judged one by one.
* **Wake** (:meth:`Mesh.wake`, sent by an old owner right after its release
  write naming a successor succeeded): the successor reads the claim at once
  instead of waiting for its watch. Taken from a candidate peer once
  (a :class:`~egressd.core.mesh_messages.ReplayGuard` of its own) and judged
  by ``on_wake`` (:func:`egressd.core.wake.judge_wake`): it never decides
  more than *when* the claim is read.

Everything refused is counted by reason (``rejected``, and the transport's
own counter): ``unknown-peer`` (a sender that is no candidate with us),
``replayed``, ``retired-incarnation``, ``stale`` (a nonce we do not wait for), ``misdirected``,
``short-promise`` (a peer promising less than our promise duration, which
our peer right would overrate), for wakes ``not-candidate`` and
``stale-epoch``, and for offers the reasons of ``judge_offer``. The datagrams that fail the signature or the
fields never get here (the transport drops and counts them).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

from egressd.core import news, rights
from egressd.core.mesh_messages import (
    MAX_SERVING_CLAIMS,
    Accept,
    CtBatch,
    Heartbeat,
    Listen,
    MeshRejected,
    Message,
    Offer,
    Outstanding,
    Promise,
    ReplayGuard,
    Serving,
    Wake,
    fits_token,
)
from egressd.core.model import Timing
from egressd.core.receipts import HeartbeatReceipts
from egressd.core.transfer import OfferVerdict
from egressd.core.wake import WakeAction, WakeVerdict
from egressd.ports import Clock, MeshReceived, MeshTransport, Metrics
from egressd.runtime.sinks import NullMetrics

log = logging.getLogger(__name__)


RECEIPT_STEP = 0.1
"""Seconds: receipts of one process are kept at least this far apart (but the
newest), so a peer's memory of them is bounded by ``maxHold`` over this,
whatever the heartbeat rate; the heartbeat bound is then up to this much
later than it could be, which only delays a takeover."""


def new_nonce() -> str:
    return secrets.token_hex(16)


@dataclass
class PeerCounts:
    heartbeats_to: collections.Counter[str] = field(default_factory=collections.Counter)
    """Heartbeats sent, per peer."""
    given_to: collections.Counter[str] = field(default_factory=collections.Counter)
    """Promises given, per holder."""
    received_from: collections.Counter[str] = field(default_factory=collections.Counter)
    """Promises taken, per peer."""
    last_rtt: dict[str, float] = field(default_factory=dict)
    """Peer -> seconds from our latest heartbeat it answered to the promise taken."""


@dataclass
class Transfers:
    """The offers of claims (:mod:`egressd.core.transfer`): ours waiting for
    their accept, the replay guard of the peers', and the counts."""

    guard: ReplayGuard = field(default_factory=ReplayGuard)
    waiting: dict[tuple[str, str], tuple[asyncio.Future[Accept], str, int]] = field(default_factory=dict)
    """(successor, nonce) -> the accept awaited, with the IP and epoch offered."""
    offered: int = 0
    """Offers sent (as the owner leaving an IP)."""
    accepted: int = 0
    """Offers we accepted (as a successor)."""
    taken: int = 0
    """Accepts taken in answer to our offers."""


@dataclass
class WakeCounts:
    sent: int = 0
    read: int = 0
    """Wakes that made a member read its claim at once."""
    seen: int = 0
    """Wakes that came after the watch had brought the release."""


@dataclass
class News:
    """Listens and news of new owners (:mod:`egressd.core.news`): our
    listeners, the IPs not yet told, the replay guards and the counts."""

    listeners: collections.OrderedDict[str, tuple[tuple[str, int], float]] = field(
        default_factory=collections.OrderedDict
    )
    """Steering node -> (where its listen came from, until when we send it news)."""
    unannounced: list[tuple[str, int]] = field(default_factory=list)
    """(IP, epoch) started serving since the last news went out."""
    peers: Callable[[], frozenset[str]] = frozenset
    """The candidates of the groups this node steers (it listens to them)."""
    incarnation_of: Callable[[str], str | None] = lambda _peer: None
    """A candidate's process as its node lease names it (None: no node lease seen)."""
    on_serving: Callable[[str, int, str, str], news.NewsVerdict] = lambda ip, _epoch, _sender, _address: (
        news.NewsVerdict(False, "not-steered", ip)
    )
    """Judges one claim of news (IP, epoch, sender, source address) and, if
    taken, steers to it (the daemon's steerer)."""
    listen_guard: ReplayGuard = field(default_factory=ReplayGuard)
    news_guard: ReplayGuard = field(default_factory=ReplayGuard)
    listens_sent: int = 0
    claims_announced: int = 0
    """IPs we started serving and told our listeners of."""
    taken: int = 0
    """Claims of news taken as hints (as a steering node)."""
    dropped: collections.Counter[str] = field(default_factory=collections.Counter)
    """Claims of news not taken, by reason (``judge_news``'s)."""


class Mesh:
    def __init__(
        self,
        *,
        node: str,
        incarnation: str,
        transport: MeshTransport,
        clock: Clock,
        timing: Timing,
        mesh: rights.MeshTiming,
        port: int,
        heartbeat_peers: Callable[[], frozenset[str]],
        candidate_peers: Callable[[], frozenset[str]],
        address_of: Callable[[str], str | None],
        api_ok: Callable[[], bool],
        nonce: Callable[[], str] = new_nonce,
        metrics: Metrics | None = None,
        listen_peers: Callable[[], frozenset[str]] = frozenset,
        incarnation_of: Callable[[str], str | None] = lambda _peer: None,
    ) -> None:
        self.node = node
        self.incarnation = incarnation
        self.transport = transport
        self._clock = clock
        self._timing = timing
        self.timing = mesh
        self.port = port
        self._heartbeat_peers = heartbeat_peers
        """The peers to send heartbeats to now (empty: we serve nothing, or
        have no right to)."""
        self._candidate_peers = candidate_peers
        """The nodes we take heartbeats and promises from: the other candidates
        of the groups this node is a candidate of."""
        self._address_of = address_of
        self._api_ok = api_ok
        self._nonce = nonce
        self._seq = 0
        self._guard = ReplayGuard()
        self._wake_guard = ReplayGuard()
        """Wakes are numbered from the heartbeats' sequence but guarded apart,
        so a heartbeat overtaking a wake on the way does not void it."""
        self._outstanding = Outstanding(keep=mesh.promise_duration)
        self.receipts = HeartbeatReceipts(keep=mesh.max_hold + timing.lease_duration, step=RECEIPT_STEP)
        """Standby side: when we took each peer process's heartbeats and wakes."""
        self.promises: dict[str, float] = {}
        """Holder side: peer -> send time (our clock) of the heartbeat its
        latest promise answered."""
        self.promised: dict[str, float] = {}
        """Standby side: holder -> end (our clock) of the latest promise we gave it."""
        self.rejected: collections.Counter[str] = collections.Counter()
        self.heartbeats_sent = 0
        self.promises_given = 0
        self.promises_received = 0
        self.per_peer = PeerCounts()
        """Heartbeats, promises and round trips per peer (the metrics')."""
        self.metrics = metrics or NullMetrics()
        self.on_promise: Callable[[], None] = lambda: None
        """Called after each promise taken (the right may reach further)."""
        self.on_wake: Callable[[Wake], WakeVerdict] = lambda w: WakeVerdict(WakeAction.DROP, "not-candidate")
        """Judges a wake from a candidate peer and, if it is worth it, has the
        IP's member read the claim (the daemon's)."""
        self.wakes = WakeCounts()
        self.on_offer: Callable[[Offer], OfferVerdict] = lambda o: OfferVerdict(False, "not-candidate")
        """Judges an offer from a candidate peer and, if accepted, has the IP's
        member record it (the daemon's)."""
        self.transfers = Transfers()
        self.news = News(peers=listen_peers, incarnation_of=incarnation_of)
        self.open = False
        """Whether the transport is bound (wakes are sent only then)."""
        self.on_peer_promise: Callable[[str, str], None] = lambda _peer, _incarnation: None
        """Called with the peer and its incarnation after each promise taken
        (the conntrack stream resyncs a peer that restarted or came back)."""
        self.on_conntrack: Callable[[CtBatch, tuple[str, int]], None] = lambda _batch, _sender: None
        """Called with each conntrack datagram from a candidate peer."""
        self.peer_incarnation: dict[str, str] = {}
        """The incarnation of each peer whose heartbeat we took last (a
        conntrack batch of any other process of that peer is refused)."""
        self.log = logging.LoggerAdapter(log, {"node": node})

    def promised_until(self, holder: str) -> float | None:
        """The end of our latest promise to ``holder`` (None: never promised)."""
        return self.promised.get(holder)

    @property
    def seq(self) -> int:
        """The sequence of the last datagram we sent (heartbeats and wakes
        share it; 0: none yet). A node-lease renew carries it, read in the step
        that stamps the renew: any datagram numbered above it left later."""
        return self._seq

    def sent_by(self, holder: str, incarnation: str, seq: int) -> float | None:
        """When we first took a datagram of ``holder``'s process
        ``incarnation`` numbered above ``seq`` (None: none kept)."""
        return self.receipts.sent_by(holder, incarnation, seq)

    # --- heartbeats -------------------------------------------------------------

    def heartbeat(self) -> list[str]:
        """One round of heartbeats; the peers it went to (a peer without a
        known address is skipped, and it gives no promise)."""
        now = self._clock.monotonic()
        self._outstanding.expire(now)
        sent = []
        for peer in sorted(self._heartbeat_peers() - {self.node}):
            address = self._address_of(peer)
            if address is None:
                self.log.debug("no address for peer %s (no node lease seen): no heartbeat", peer)
                continue
            self._seq += 1
            nonce = self._nonce()
            message = Heartbeat(self.node, self.incarnation, self._seq, nonce, self._api_ok())
            self._outstanding.sent(peer, nonce, now)
            self.transport.send(message, (address, self.port))
            self.heartbeats_sent += 1
            self.per_peer.heartbeats_to[peer] += 1
            sent.append(peer)
        return sent

    async def heartbeat_forever(self) -> None:
        while True:
            started = self._clock.monotonic()
            self.heartbeat()
            await self._clock.sleep(max(0.0, started + self._timing.retry_period - self._clock.monotonic()))

    # --- listens and news of new owners -----------------------------------------

    def listen(self, peers: frozenset[str]) -> list[str]:
        """Ask ``peers`` (candidates we steer to) for news of new owners; the
        peers the listen went to (one without a known address is skipped)."""
        sent = []
        for peer in sorted(peers - {self.node}):
            address = self._address_of(peer)
            if address is None:
                continue
            self._seq += 1
            self.transport.send(Listen(self.node, self.incarnation, self._seq), (address, self.port))
            self.news.listens_sent += 1
            sent.append(peer)
        return sent

    async def listen_forever(self) -> None:
        """Listen to every candidate every ``leaseDuration``, and at once to a
        candidate whose process changed (its node lease names a new
        incarnation: a restarted gateway knows no listener), looked at every
        ``retryPeriod``; a candidate whose address is not known yet is tried
        again then as well."""
        every = news.LISTEN_EVERY_LEASES * self._timing.lease_duration
        heard: dict[str, str | None] = {}
        """Candidate -> its incarnation when we last listened to it."""
        due = self._clock.monotonic()
        while True:
            now = self._clock.monotonic()
            peers = self.news.peers() - {self.node}
            if now >= due:
                targets, due = peers, now + every
            else:
                targets = frozenset(p for p in peers if heard.get(p, "") != self.news.incarnation_of(p))
            if targets:
                for peer in self.listen(targets):
                    heard[peer] = self.news.incarnation_of(peer)
            await self._clock.sleep(self._timing.retry_period)

    def _listened(self, listen: Listen, sender: tuple[str, int]) -> None:
        if listen.sender == self.node:
            raise MeshRejected("unknown-peer", f"{listen.sender} is this node")
        self.news.listen_guard.admit(listen)
        until = self._clock.monotonic() + news.LISTEN_KEEP_LEASES * self._timing.lease_duration
        self.news.listeners[listen.sender] = (sender, until)
        self.news.listeners.move_to_end(listen.sender)
        while len(self.news.listeners) > news.MAX_LISTENERS:
            self.news.listeners.popitem(last=False)

    def announce(self, ip: str, epoch: int) -> None:
        """We serve ``ip`` on our claim at ``epoch`` now: tell the listeners.
        The IPs announced in one turn of the loop go out together, right
        after it."""
        if not self.open:
            return
        if not self.news.unannounced:
            asyncio.get_running_loop().call_soon(self._send_news)
        self.news.unannounced.append((ip, epoch))

    def _send_news(self) -> None:
        claims = dict(self.news.unannounced)
        self.news.unannounced.clear()
        now = self._clock.monotonic()
        for node in [n for n, (_a, until) in self.news.listeners.items() if until <= now]:
            del self.news.listeners[node]
        targets = [address for address, _until in self.news.listeners.values()]  # never this node (_listened)
        if not claims or not targets:
            return
        pairs = list(claims.items())
        for start in range(0, len(pairs), MAX_SERVING_CLAIMS):
            self._seq += 1
            message = Serving(self.node, self.incarnation, self._seq, tuple(pairs[start : start + MAX_SERVING_CLAIMS]))
            for address in targets:
                self.transport.send(message, address)
        self.news.claims_announced += len(pairs)
        self.log.debug("told %d listeners that we serve %s", len(targets), ", ".join(claims))

    def _heard(self, serving: Serving, sender: tuple[str, int]) -> None:
        self.news.news_guard.admit(serving)
        for ip, epoch in serving.claims:
            verdict = self.news.on_serving(ip, epoch, serving.sender, sender[0])
            if verdict.taken:
                self.news.taken += 1
            else:
                self.news.dropped[verdict.reason] += 1

    # --- wakes ------------------------------------------------------------------

    def wake(self, ip: str, epoch: int, resource_version: str, successor: str) -> bool:
        """Tell ``successor`` that the claim of ``ip`` was released to it (the
        release write's answer: ``epoch``, ``resource_version``); whether a
        datagram left. None leaves without an address for the successor (no
        node lease seen) or an open socket: its watch brings the release."""
        if not self.open or successor == self.node:
            return False
        address = self._address_of(successor)
        if address is None or not fits_token(resource_version):
            self.log.debug("no wake to %s for %s (address %s, version %r)", successor, ip, address, resource_version)
            return False
        self._seq += 1
        message = Wake(self.node, self.incarnation, self._seq, ip, epoch, resource_version, successor)
        self.transport.send(message, (address, self.port))
        self.wakes.sent += 1
        return True

    # --- transfers ----------------------------------------------------------------

    def offer(self, ip: str, epoch: int, successor: str) -> asyncio.Future[Accept] | None:
        """Offer the claim of ``ip`` (held at ``epoch``) to ``successor``; the
        future is its accept. None: no offer left (socket closed, or no
        address for the successor). The caller waits as long as it likes,
        then cancels the future: a later accept is then ``stale``."""
        if not self.open or successor == self.node:
            return None
        address = self._address_of(successor)
        if address is None:
            self.log.debug("no offer to %s for %s: no address", successor, ip)
            return None
        for key in [k for k, (f, _ip, _epoch) in self.transfers.waiting.items() if f.done()]:
            del self.transfers.waiting[key]  # given up by their owners (a late accept is then stale)
        self._seq += 1
        nonce = self._nonce()
        future: asyncio.Future[Accept] = asyncio.get_running_loop().create_future()
        self.transfers.waiting[(successor, nonce)] = (future, ip, epoch)
        message = Offer(self.node, self.incarnation, self._seq, ip, epoch, nonce, successor)
        self.transport.send(message, (address, self.port))
        self.transfers.offered += 1
        return future

    def _offered(self, offer: Offer, sender: tuple[str, int]) -> None:
        if offer.to != self.node:
            raise MeshRejected("misdirected", f"an offer for {offer.to}")
        self.transfers.guard.admit(offer)
        self.receipts.took(offer.sender, offer.incarnation, offer.seq, self._clock.monotonic())
        verdict = self.on_offer(offer)
        if not verdict.accept:
            raise MeshRejected(verdict.reason, verdict.detail)
        reply = Accept(self.node, self.incarnation, offer.sender, offer.ip, offer.epoch, offer.nonce)
        self.transport.send(reply, sender)
        self.transfers.accepted += 1

    def _accepted(self, accept: Accept) -> None:
        if accept.to != self.node:
            raise MeshRejected("misdirected", f"an accept for {accept.to}")
        waiting = self.transfers.waiting.get((accept.sender, accept.nonce))
        if waiting is None or waiting[0].done() or (waiting[1], waiting[2]) != (accept.ip, accept.epoch):
            raise MeshRejected("stale", f"no offer to {accept.sender} waits for this accept")
        del self.transfers.waiting[(accept.sender, accept.nonce)]
        waiting[0].set_result(accept)
        self.transfers.taken += 1

    def _woken(self, wake: Wake) -> None:
        if wake.to != self.node:
            raise MeshRejected("misdirected", f"a wake for {wake.to}")
        self._wake_guard.admit(wake)
        self.receipts.took(wake.sender, wake.incarnation, wake.seq, self._clock.monotonic())
        verdict = self.on_wake(wake)
        if verdict.action is WakeAction.DROP:
            raise MeshRejected(verdict.reason, verdict.detail)
        if verdict.action is WakeAction.SEEN:
            self.wakes.seen += 1
        else:
            self.wakes.read += 1

    # --- receiving --------------------------------------------------------------

    async def receive_forever(self) -> None:
        while True:
            self.handle(await self.transport.receive())

    def handle(self, received: MeshReceived) -> None:
        """One message that passed the transport's checks."""
        message = received.message
        try:
            if isinstance(message, Listen):  # from steering nodes, no candidates
                self._listened(message, received.sender)
            elif isinstance(message, Serving):  # to steering nodes; each claim judged
                self._heard(message, received.sender)
            else:
                self._from_candidate(message, received.sender)
        except MeshRejected as exc:
            self.rejected[exc.reason] += 1
            self.transport.reject(exc.reason, received.sender, str(exc))

    def _from_candidate(self, message: Message, sender: tuple[str, int]) -> None:
        self._known(message.sender)
        if isinstance(message, Heartbeat):
            self._answer(message, sender)
        elif isinstance(message, Wake):
            self._woken(message)
        elif isinstance(message, Offer):
            self._offered(message, sender)
        elif isinstance(message, Accept):
            self._accepted(message)
        elif isinstance(message, CtBatch):
            self.on_conntrack(message, sender)
        elif isinstance(message, Promise):
            self._take(message)

    def _known(self, sender: str) -> None:
        if sender == self.node or sender not in self._candidate_peers():
            raise MeshRejected("unknown-peer", f"{sender} is no candidate with {self.node}")

    def _answer(self, hb: Heartbeat, sender: tuple[str, int]) -> None:
        """Promise, and keep it: recorded before the promise leaves."""
        self._guard.admit(hb)
        self.peer_incarnation[hb.sender] = hb.incarnation
        now = self._clock.monotonic()
        self.receipts.took(hb.sender, hb.incarnation, hb.seq, now)
        self.promised[hb.sender] = rights.promise_until(now, self.promised.get(hb.sender), self.timing)
        duration_ms = round(self.timing.promise_duration * 1000)
        self.transport.send(Promise(self.node, self.incarnation, hb.sender, hb.nonce, duration_ms), sender)
        self.promises_given += 1
        self.per_peer.given_to[hb.sender] += 1

    def _take(self, promise: Promise) -> None:
        if promise.duration_ms < self.timing.promise_duration * 1000:
            # our peer right counts D of our own settings: a peer that keeps
            # its promises shorter would be overrated (a misconfiguration)
            raise MeshRejected(
                "short-promise",
                f"{promise.sender} promises {promise.duration_ms}ms, less than {self.timing.promise_duration:g}s",
            )
        sent_at = self._outstanding.answer(promise, self.node)
        self.promises[promise.sender] = max(sent_at, self.promises.get(promise.sender, sent_at))
        self.promises_received += 1
        self.per_peer.received_from[promise.sender] += 1
        rtt = self._clock.monotonic() - sent_at
        self.per_peer.last_rtt[promise.sender] = rtt
        self.metrics.mesh_rtt(promise.sender, rtt)
        self.on_promise()
        self.on_peer_promise(promise.sender, promise.incarnation)

    def status(self) -> dict[str, object]:
        """For ``egressd status``."""
        now = self._clock.monotonic()
        return {
            "heartbeatsSent": self.heartbeats_sent,
            "promisesGiven": self.promises_given,
            "promisesReceived": self.promises_received,
            "promisesHeld": {p: round(rights.promise_end(at, self.timing) - now, 3) for p, at in self.promises.items()},
            "promisedTo": {h: round(end - now, 3) for h, end in self.promised.items()},
            "wakesSent": self.wakes.sent,
            "wakesRead": self.wakes.read,
            "wakesAfterWatch": self.wakes.seen,
            "transfersOffered": self.transfers.offered,
            "transfersAccepted": self.transfers.accepted,
            "acceptsTaken": self.transfers.taken,
            "listeners": len(self.news.listeners),
            "listensSent": self.news.listens_sent,
            "newsSent": self.news.claims_announced,
            "newsTaken": self.news.taken,
            "newsDropped": dict(self.news.dropped),
            "rejected": dict(self.transport.rejected),  # the socket's checks and ours (reject() counts there too)
        }
