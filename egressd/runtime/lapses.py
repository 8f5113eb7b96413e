"""One timer per holder node for the standbys waiting for it to lapse.

A standby may take over a claim held by another node once that node's lease
has stood still for a lease duration by our own clock
(:func:`egressd.core.election.holder_lapsed`). The holder renews its node
lease every retry period, so a standby timing the holder on its own finds it
alive at every recheck and waits again: a gateway standing by for a thousand
claims of one holder decided a thousand times per lease duration, each time
to find the holder renewed.

Instead a member whose decision waits for the holder
(:data:`egressd.core.election.WAITS_ON_HOLDER`) parks on it
(:meth:`HolderLapses.park`) and waits for news, with a long net
(:func:`egressd.core.election.next_look`). One timer per holder node wakes
all the members parked on it at the earliest time any claim of that holder
may be taken over (:func:`egressd.core.election.holder_lapse_at`), read
again then: renewed meanwhile, the holder's time has moved and nobody is
woken. The time is read again at least every retry period too, because a
heartbeat bound (a datagram of the holder's process) or a new peer set can
bring it earlier without any change the members would hear of.

Safety does not rest on this module: :func:`decide` is what keeps one owner,
the timer only says when a member decides. A wake too early costs a
decision. A wake too late would delay a takeover, so: the holder's time is a
lower bound of the recheck of every claim it holds (the claim's own last
change only lengthens the wait); it is the time decide() would give with the
inputs of then, read again when it comes; a member parks only while that
time lies ahead (else it keeps its own recheck); everything else that may
let a standby act (the claim changed, the holder's node lease changed
process, went or became unreadable, a wake datagram, a transfer) is news
that wakes the member itself, parked or not.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from egressd.core.election import Me, holder_lapse_at
from egressd.core.model import Timing
from egressd.ports import Clock
from egressd.runtime.liveness import NodeLiveness
from egressd.runtime.supervisor import wait_event
from egressd.runtime.view import LeaseView

log = logging.getLogger(__name__)


class HolderLapses:
    """The parked standbys of each holder node, and the timer that wakes them."""

    def __init__(self, *, node: str, view: LeaseView, liveness: NodeLiveness, clock: Clock, timing: Timing) -> None:
        self._node = node
        self._view = view
        self._liveness = liveness
        self._clock = clock
        self._timing = timing
        self._parked: dict[str, dict[str, Callable[[], None]]] = {}
        """Holder node -> the members parked on it: claim name -> its wake."""
        self._due: dict[str, float] = {}
        """Holder node -> its lapse time as last read (while members are parked on it)."""
        self._changed = asyncio.Event()
        self._next = float("inf")
        """When the timer runs next (our clock)."""

    def lapse_at(self, holder: str) -> float | None:
        """The earliest time (our clock) at which a claim of ``holder`` may be
        taken over, with what we know now; None: its node lease is not
        readable now (every member times its claim on its own)."""
        observation = self._view.holder_observation(holder, self._liveness.stamped_by)
        entry = self._view.node(holder)
        if observation is None or entry is None or entry.record is None:
            return None
        me = Me(
            identity=self._node,
            incarnation=self._liveness.incarnation,
            egress_ip="",
            candidates=(),
            started_at=self._liveness.started_at,
            mesh=self._liveness.mesh,
            promised_until=self._liveness.promised_until(holder),
            in_holder_peer_set=self._node in entry.record.peers,
        )
        return holder_lapse_at(observation, me, self._timing)

    def park(self, holder: str, name: str, wake: Callable[[], None]) -> bool:
        """Park the member of claim ``name`` on ``holder``: ``wake`` is called
        when the holder may have lapsed. Whether it was parked: not when the
        holder's time has come already or cannot be read (the member keeps
        its own recheck then)."""
        parked = self._parked.get(holder)
        due = self._due.get(holder) if parked else None
        if due is None:
            due = self.lapse_at(holder)
        if due is None or due <= self._clock.monotonic():
            return False
        if parked is None:
            parked = self._parked[holder] = {}
        parked[name] = wake
        self._due[holder] = due
        if due < self._next:
            self._changed.set()
        return True

    def unpark(self, holder: str, name: str) -> None:
        """The member of ``name`` waits on ``holder`` no more."""
        parked = self._parked.get(holder)
        if parked is not None:
            parked.pop(name, None)

    def parked(self, holder: str) -> int:
        """How many members are parked on ``holder``."""
        return len(self._parked.get(holder, ()))

    async def run(self) -> None:
        """The timer: at each holder's time (and every retry period while
        members are parked), wake the members of the holders that may have
        lapsed."""
        while True:
            self._changed.clear()
            now = self._clock.monotonic()
            self._next = self._sweep(now)
            await wait_event(self._changed, None if self._next == float("inf") else max(0.0, self._next - now))

    def _sweep(self, now: float) -> float:
        """Wake the members of every holder whose time has come; returns when
        to look again."""
        look = float("inf")
        for holder in list(self._parked):
            parked = self._parked[holder]
            due = self.lapse_at(holder) if parked else None
            if due is not None and due > now:
                self._due[holder] = due
                look = min(look, due, now + self._timing.retry_period)
                continue
            del self._parked[holder]
            self._due.pop(holder, None)
            if parked:
                log.info(
                    "node=%s holder=%s may have lapsed (%s): waking its %d standby member(s)",
                    self._node,
                    holder,
                    "its node lease is not readable" if due is None else f"its time came {now - due:.3f}s ago",
                    len(parked),
                )
            for wake in parked.values():
                wake()
        return look
