"""A fake clock for the runtime: an event loop whose time moves by a tick per
turn, and jumps when nothing is ready to run.

When every task waits (for a timer, an event, a fake API call), the loop jumps
its clock straight to the next timer instead of sleeping, so seconds of
protocol time pass in milliseconds and every run is exactly repeatable.
:class:`VirtualClock` is the :class:`egressd.ports.Clock` reading that time.
Only for code that waits on the loop alone (the fakes): real I/O is still
polled, but time does not wait for it.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

T = TypeVar("T")

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


TICK = 1e-5
"""Virtual seconds one turn of the loop takes: some microseconds, as on a real
machine, whose clock never reads the same instant twice across a wait. Without
it, a wait shorter than the clock's float can hold (``now + 3e-17 == now``: a
recheck computed as a difference of times) would be due at once, forever, and
time would stop; and what happens in successive turns would share one
microsecond, which real clocks never show (Event names carry the microsecond)."""


class _JumpingSelector(selectors.DefaultSelector):
    """Polls without blocking; each turn takes a :data:`TICK`, and when nothing
    is ready, the loop's clock moves to the timeout it would have slept for."""

    def __init__(self) -> None:
        super().__init__()
        self.loop: VirtualTimeLoop | None = None

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready: list[tuple[selectors.SelectorKey, int]] = super().select(0)
        if timeout is None:
            if not ready:
                ready = super().select(None)  # nothing scheduled: only I/O can wake us
            return ready
        if self.loop is not None:
            self.loop.advance(timeout if not ready and timeout > TICK else TICK)
        return ready


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self._virtual_now = 0.0
        selector = _JumpingSelector()
        super().__init__(selector)
        selector.loop = self

    def time(self) -> float:
        return self._virtual_now

    def advance(self, seconds: float) -> None:
        self._virtual_now += seconds


class VirtualClock:
    """:class:`egressd.ports.Clock` on the running loop's (virtual) time."""

    def monotonic(self) -> float:
        return asyncio.get_running_loop().time()

    def wall(self) -> datetime:
        return EPOCH + timedelta(seconds=self.monotonic())

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


def run_virtual(main: Callable[[], Awaitable[T]]) -> T:
    """Run ``main()`` to completion on a fresh virtual-time loop."""
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(main())
    finally:
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


async def until(cond: Callable[[], bool], timeout: float = 3.0, step: float = 0.001) -> float:
    """Wait until ``cond()`` holds, on the running loop's clock (virtual on the
    virtual-time loop); how long it took. Fails after ``timeout``."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while not cond():
        if loop.time() - started > timeout:
            raise AssertionError(f"condition not met within {timeout}s (virtual)")
        await asyncio.sleep(step)
    return loop.time() - started


def counts(ops: Sequence[Mapping[str, Any]], op: str) -> int:
    return sum(1 for o in ops if o["op"] == op)
