"""When a standby took the mesh datagrams of each holder's process: the
memory behind the heartbeat bound of a takeover (``rights.stamped_by``).

A holder writes into each node-lease renew the sequence of the last datagram
it had sent when it stamped the renew. A standby that later sees that
version asks :meth:`HeartbeatReceipts.sent_by`: when did I first take a
datagram of that process with a larger sequence? The renew was stamped
before then.

Memory is bounded. Per sender the receipts of its last :data:`INCARNATIONS`
processes are kept; per process a list of (sequence, receipt time), both
increasing, whose entries are at least ``step`` seconds apart but for the
newest (a datagram taken within ``step`` of the entry before the newest
replaces the newest), and none older than ``keep``. Leaving a receipt out
only makes the answer later: the earliest *kept* receipt of a larger
sequence is a receipt of a larger sequence all the same.

Pure: the caller gives the times.
"""

from __future__ import annotations

from array import array
from collections import OrderedDict

from egressd.core import rights

INCARNATIONS = 2
"""Processes remembered per sender: its current one and the one before (whose
last renew a paused API server may still commit after it died)."""


class _Log:
    __slots__ = ("seqs", "times")

    def __init__(self) -> None:
        self.seqs = array("q")
        self.times = array("d")


class HeartbeatReceipts:
    def __init__(self, *, keep: float, step: float, senders: int = 1024) -> None:
        self._keep = keep
        """Seconds a receipt is kept: the longest a holder's last renew can be
        older than the datagrams that follow it and still matter (``maxHold``,
        a holder serving on peer rights, plus ``leaseDuration``)."""
        self._step = step
        self._senders = senders
        self._logs: OrderedDict[str, OrderedDict[str, _Log]] = OrderedDict()

    def took(self, sender: str, incarnation: str, seq: int, at: float) -> None:
        """A datagram of ``sender``'s process ``incarnation`` numbered ``seq``
        was taken (authenticated, not replayed) at ``at``. One whose sequence
        is not above the last kept (a wake overtaken by a heartbeat) is left
        out."""
        per = self._logs.setdefault(sender, OrderedDict())
        self._logs.move_to_end(sender)
        while len(self._logs) > self._senders:
            self._logs.popitem(last=False)
        log = per.get(incarnation)
        if log is None:
            log = per[incarnation] = _Log()
            while len(per) > INCARNATIONS:
                per.popitem(last=False)
        seqs, times = log.seqs, log.times
        if seqs and seq <= seqs[-1]:
            return
        if len(seqs) >= 2 and at - times[-2] < self._step:
            seqs[-1], times[-1] = seq, at
        else:
            seqs.append(seq)
            times.append(at)
        old = 0
        while old < len(times) - 1 and times[old] < at - self._keep:
            old += 1
        if old:
            del seqs[:old]
            del times[:old]

    def sent_by(self, sender: str, incarnation: str, seq: int) -> float | None:
        """When we first took a datagram of ``sender``'s process
        ``incarnation`` numbered above ``seq`` (as far as kept); None: none."""
        log = self._log(sender, incarnation)
        if log is None:
            return None
        return rights.stamped_by(log.seqs, log.times, seq)

    def size(self, sender: str, incarnation: str) -> int:
        """Receipts kept of one process (for the tests of the memory bound)."""
        log = self._log(sender, incarnation)
        return len(log.seqs) if log is not None else 0

    def _log(self, sender: str, incarnation: str) -> _Log | None:
        per = self._logs.get(sender)
        return per.get(incarnation) if per is not None else None
