"""Named, guarded background tasks; signals set a stop flag; bounded shutdown.

Every task the daemon runs is started here under a name. A task that dies
with an exception is logged with its name and traceback and recorded in
:attr:`Supervisor.dead`; a *critical* task's death also requests a stop, so the
daemon withdraws and exits non-zero and its service manager restarts it
(a half-working daemon that still holds IPs is worse than a restart).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger(__name__)


class Supervisor:
    def __init__(self) -> None:
        self.stop_requested = asyncio.Event()
        self.stop_reason = ""
        self.dead: dict[str, BaseException] = {}
        self._tasks: dict[str, asyncio.Task[Any]] = {}

    def request_stop(self, reason: str) -> None:
        if not self.stop_requested.is_set():
            log.info("stop requested: %s", reason)
            self.stop_reason = reason
            self.stop_requested.set()

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop, signal.Signals(sig).name)

    def spawn(self, name: str, coro: Coroutine[Any, Any, Any], *, critical: bool = True) -> asyncio.Task[Any]:
        if name in self._tasks and not self._tasks[name].done():
            raise RuntimeError(f"task {name!r} is already running")
        task = asyncio.create_task(self._guard(name, coro, critical), name=name)
        self._tasks[name] = task
        return task

    async def _guard(self, name: str, coro: Coroutine[Any, Any, Any], critical: bool) -> Any:
        try:
            return await coro
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("task %s died", name)
            self.dead[name] = exc
            if critical:
                self.request_stop(f"task {name} died: {exc!r}")
            return None

    def running(self) -> list[str]:
        return sorted(name for name, task in self._tasks.items() if not task.done())

    async def cancel(self, name: str) -> None:
        task = self._tasks.get(name)
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def shutdown(self, grace: float) -> None:
        """Cancel every task and wait for them, at most ``grace`` seconds."""
        tasks = [t for t in self._tasks.values() if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                log.warning("task %s did not stop within %.1fs", task.get_name(), grace)


async def wait_event(event: asyncio.Event, limit: float | None) -> bool:
    """Wait for ``event`` at most ``limit`` seconds; returns whether it is set.

    Built on ``asyncio.timeout`` rather than ``asyncio.wait_for``: on Python
    3.11, ``wait_for`` can swallow a cancellation that arrives as the inner
    wait completes, which turns a cancelled loop into one that never ends."""
    if event.is_set():
        return True
    try:
        async with asyncio.timeout(limit):
            await event.wait()
    except TimeoutError:
        return False
    return True
