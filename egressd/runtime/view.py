"""What this node has seen of the leases, and *when* it saw it.

The observation time of a lease is the local monotonic time at which this
node first saw its current resourceVersion (from the watch, a read, or the
answer to its own write). Expiry is measured from it, never from the
``renewTime`` another node wrote.

A lease that someone else wrote in a shape egressd cannot read is kept as a
*problem* entry: it is reported, and no member acts on it (it is neither free
nor expirable) until it is fixed or deleted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from egressd.core.lease import LeaseRecord
from egressd.ports import Clock, LeaseEvent

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Entry:
    record: LeaseRecord | None
    observed_at: float
    problem: str = ""

    @property
    def resource_version(self) -> str | None:
        return self.record.resource_version if self.record else None


def _newer(candidate: str, current: str) -> bool:
    """resourceVersions are opaque, but egressd must not let a late watch event
    replace the answer to its own newer write. Compare numerically when both
    are integers (etcd's are); otherwise accept the candidate."""
    if candidate.isdigit() and current.isdigit():
        return int(candidate) > int(current)
    return candidate != current


class LeaseView:
    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._entries: dict[str, Entry] = {}
        self._news: dict[str, asyncio.Event] = {}
        self.ready = asyncio.Event()
        """Set after the first full list (sync)."""
        self._listeners: list[asyncio.Event] = []
        self.any_news = self.listener()
        """Set whenever any entry changes (for steering)."""

    def listener(self, event: asyncio.Event | None = None) -> asyncio.Event:
        """An event (``event``, or a new one) set whenever any entry changes, for
        one more consumer of every lease (each clears its own). A consumer that
        also waits for other news passes its own event, so it waits on one."""
        event = event or asyncio.Event()
        self._listeners.append(event)
        return event

    def news(self, name: str) -> asyncio.Event:
        """An event set whenever the entry for ``name`` changes."""
        return self._news.setdefault(name, asyncio.Event())

    def get(self, name: str) -> Entry:
        entry = self._entries.get(name)
        if entry is None:
            entry = Entry(None, self._clock.monotonic())
            self._entries[name] = entry
        return entry

    def records(self) -> list[LeaseRecord]:
        return [e.record for e in self._entries.values() if e.record is not None]

    def observe(self, name: str, record: LeaseRecord | None, *, problem: str = "", notify: bool = True) -> bool:
        """Record what was seen; returns whether it changed anything. A member
        recording the answer to its own write passes ``notify=False``: its own
        write is no news to itself."""
        current = self._entries.get(name)
        if current is not None and not problem and not current.problem:
            if record is not None and current.record is not None:
                if record.resource_version == current.record.resource_version:
                    return False
                if not _newer(record.resource_version, current.record.resource_version):
                    return False
            elif record is None and current.record is None:
                return False
        self._entries[name] = Entry(record, self._clock.monotonic(), problem)
        if notify:
            self.news(name).set()
        for listener in self._listeners:
            listener.set()
        return True

    def problems(self) -> dict[str, str]:
        """The leases seen but unreadable now, by name: what is wrong with each."""
        return {name: e.problem for name, e in self._entries.items() if e.problem}

    def apply(self, event: LeaseEvent) -> None:
        if event.kind == "sync":
            self._sync(event.records, event.problems)
        elif event.kind == "upsert" and event.record is not None:
            self.observe(event.name, event.record)
        elif event.kind == "delete":
            self.observe(event.name, None)
        elif event.kind == "invalid":
            self._unreadable(event.name, event.problem)

    def _unreadable(self, name: str, problem: str) -> None:
        current = self._entries.get(name)
        if current is None or current.problem != problem:
            log.error("lease %s is unreadable and will not be acted on: %s", name or "-", problem)
        self.observe(name, None, problem=problem)

    def _sync(self, records: Iterable[LeaseRecord], problems: Iterable[tuple[str, str]] = ()) -> None:
        present = {r.name: r for r in records}
        unreadable = dict(problems)
        for name in list(self._entries):
            if name not in present and name not in unreadable:
                self.observe(name, None)
        for name, record in present.items():
            self.observe(name, record)
        for name, problem in unreadable.items():
            self._unreadable(name, problem)
        self.ready.set()
