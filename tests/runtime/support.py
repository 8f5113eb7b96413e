"""What the runtime tests share: a daemon run as a task, waiting on conditions,
and the check that no two recorded data planes served one IP at once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable

from egressd.adapters.recording import RecordingDataPlane
from egressd.runtime.daemon import Daemon
from tests.journal import intervals, overlaps


class RunsDaemon:
    """A test node: ``daemon`` run as ``task``."""

    daemon: Daemon
    task: asyncio.Task[int] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self.daemon.run(install_signals=False))

    async def stop(self) -> None:
        self.daemon.supervisor.request_stop("test")
        assert self.task is not None
        await asyncio.wait_for(self.task, 5)


async def until(cond: Callable[[], bool], timeout: float = 3.0, step: float = 0.005) -> float:
    """Wait until ``cond()`` holds; how long it took. Fails after ``timeout`` seconds."""
    started = time.monotonic()
    while not cond():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(step)
    return time.monotonic() - started


def assert_no_two_owners(planes: Iterable[RecordingDataPlane]) -> None:
    ops = [op for plane in planes for op in plane.ops]
    bad = overlaps(intervals(ops, until=time.monotonic()))
    assert not bad, f"two nodes served one IP: {bad}"
