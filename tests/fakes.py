"""Fakes at egressd's own interfaces (ports), never mocks of libraries.

:class:`FakeLeaseStore` keeps leases in memory with the API server's
optimistic concurrency (a global resourceVersion, LostRace on a stale one)
and fans changes out to watchers. ``pause()`` makes every call hang until
``resume()``, like a frozen API server; ``fail()`` makes calls raise
ApiUnavailable.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import datetime, timedelta

from egressd.core.errors import ApiTimeout, ApiUnavailable, LostRace
from egressd.core.lease import LeaseRecord, released
from egressd.ports import LeaseEvent


class FakeLeaseStore:
    def __init__(self) -> None:
        self.leases: dict[str, LeaseRecord] = {}
        self.rv = 0
        self.writes: list[tuple[str, LeaseRecord]] = []
        self._watchers: list[asyncio.Queue[LeaseEvent]] = []
        self._running = asyncio.Event()
        self._running.set()
        self._failing = False

    # --- test controls ---
    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    def fail(self, failing: bool = True) -> None:
        self._failing = failing

    def put(self, record: LeaseRecord) -> LeaseRecord:
        """Write directly, as another client would (no concurrency check)."""
        self.rv += 1
        stored = replace(record, resource_version=str(self.rv))
        self.leases[record.name] = stored
        self._publish(LeaseEvent(kind="upsert", name=record.name, record=stored))
        return stored

    # --- LeaseStore ---
    async def _gate(self, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(max(0.0, deadline - loop.time())):
                await self._running.wait()
        except TimeoutError:
            raise ApiTimeout("fake API server paused") from None
        if self._failing:
            raise ApiUnavailable("fake API server failing")

    async def get(self, name: str, *, deadline: float) -> LeaseRecord | None:
        await self._gate(deadline)
        return self.leases.get(name)

    async def create(self, record: LeaseRecord, *, deadline: float) -> LeaseRecord:
        await self._gate(deadline)
        if record.name in self.leases:
            raise LostRace(f"{record.name} already exists")
        self.writes.append(("create", record))
        return self.put(record)

    async def update(self, record: LeaseRecord, *, deadline: float) -> LeaseRecord:
        await self._gate(deadline)
        current = self.leases.get(record.name)
        if current is None or current.resource_version != record.resource_version:
            raise LostRace(f"{record.name}: stale resourceVersion {record.resource_version}")
        self.writes.append(("update", record))
        return self.put(record)

    async def release(self, record: LeaseRecord, *, successor: str | None, deadline: float) -> LeaseRecord:
        now = record.renew_time or datetime(2026, 1, 1)
        return await self.update(
            released(record, successor=successor, now=now + timedelta(seconds=1)), deadline=deadline
        )

    async def list_leases(self, *, deadline: float) -> list[LeaseRecord]:
        await self._gate(deadline)
        return list(self.leases.values())

    async def watch(self) -> AsyncIterator[LeaseEvent]:
        queue: asyncio.Queue[LeaseEvent] = asyncio.Queue()
        self._watchers.append(queue)
        try:
            await self._running.wait()
            yield LeaseEvent(kind="sync", records=tuple(self.leases.values()))
            while True:
                event = await queue.get()
                await self._running.wait()
                yield event
        finally:
            self._watchers.remove(queue)

    def connected(self) -> bool:
        return self._running.is_set() and not self._failing

    async def close(self) -> None:
        pass

    def _publish(self, event: LeaseEvent) -> None:
        for queue in self._watchers:
            queue.put_nowait(event)
