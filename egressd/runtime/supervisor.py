"""Named, guarded background tasks; signals set a stop flag; bounded shutdown.

Every task the daemon runs is started here under a name. A task that ends
when nobody asked it to (it returned, or raised) is logged as "has finished
unexpectedly" with the reason, listed by :meth:`Supervisor.problems` (so
``/healthz`` fails), and started again after an exponential backoff (capped).
A task counts as healthy again only once it has run ``stable_after`` seconds
after its restart, so a task that keeps dying keeps ``/healthz`` failing (the
liveness probe then restarts the process: the cure of last resort). A
restart, not a process exit, is the first cure: the fences of the members
run in tasks of their own, so a dead loop never keeps an IP served.

Tasks are given as factories (a callable returning a fresh coroutine), so
they can be started again; a bare coroutine runs once and stays dead if it
fails. A ``one_shot`` task is meant to finish: only a failure is unexpected.

Stop signals: SIGTERM, SIGINT and SIGHUP all request the graceful stop (every
IP withdrawn and handed to the next candidate). :func:`catch_stop_signals`
holds them from the very start of the process until the event loop's handlers
take over, so a signal during start-up never kills by the default action.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
"""Each asks for the graceful stop. SIGHUP too: egressd does not reload its
config in place (a restart adopts what the kernel still serves), and the
default action of SIGHUP would end the process without a handoff."""

Work = Coroutine[Any, Any, Any] | Callable[[], Coroutine[Any, Any, Any]]


class _EarlySignals:
    """Stop signals received before the event loop handles them."""

    def __init__(self) -> None:
        self.received: list[signal.Signals] = []
        self.installed = False

    def handler(self, signum: int, frame: FrameType | None) -> None:
        self.received.append(signal.Signals(signum))


_early = _EarlySignals()


def catch_stop_signals() -> None:
    """Record SIGTERM/SIGINT/SIGHUP from now on instead of dying by their
    default action; :meth:`Supervisor.install_signal_handlers` delivers what
    was recorded once the loop is up. Call it first thing in ``run``."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, _early.handler)
    _early.installed = True


@dataclass
class TaskState:
    """How a supervised task has fared."""

    failures: int = 0
    """Unexpected ends since it last ran ``stable_after`` seconds."""
    reason: str = ""
    """Why it last ended unexpectedly."""
    down_since: float | None = None
    """When it ended, while it waits to be started again (None: running)."""
    restarted_at: float | None = None
    restarts: int = 0


class Supervisor:
    def __init__(
        self,
        *,
        now: Callable[[], float] | None = None,
        backoff_initial: float = 0.1,
        backoff_max: float = 10.0,
        stable_after: float = 5.0,
    ) -> None:
        """``backoff_initial`` doubles with every unexpected end in a row, up to
        ``backoff_max`` (seconds); ``stable_after``: seconds a restarted task
        must run before it counts as healthy (shorter than the liveness probe's
        patience, so one crash does not get the process restarted)."""
        self.stop_requested = asyncio.Event()
        self.stop_reason = ""
        self.dead: dict[str, BaseException] = {}
        """Tasks that failed and will not be started again (bare coroutines)."""
        self.states: dict[str, TaskState] = {}
        self._tasks: dict[str, asyncio.Task[Any]] = {}
        self._now = now
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.stable_after = stable_after

    def _time(self) -> float:
        return self._now() if self._now is not None else asyncio.get_running_loop().time()

    def request_stop(self, reason: str) -> None:
        if not self.stop_requested.is_set():
            log.info("stop requested: %s", reason)
            self.stop_reason = reason
            self.stop_requested.set()

    def install_signal_handlers(self) -> None:
        """Let the loop handle the stop signals, and deliver any that arrived
        during start-up (see :func:`catch_stop_signals`)."""
        loop = asyncio.get_running_loop()
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, self.request_stop, signal.Signals(sig).name)
        early, _early.received = _early.received, []
        for sig in early:
            self.request_stop(f"{sig.name} (received during start-up)")

    def spawn(self, name: str, work: Work, *, one_shot: bool = False) -> asyncio.Task[Any]:
        """Run ``work`` as the task ``name``: a factory is started again after
        an unexpected end, a bare coroutine runs once."""
        if name in self._tasks and not self._tasks[name].done():
            raise RuntimeError(f"task {name!r} is already running")
        self.dead.pop(name, None)
        self.states[name] = TaskState()
        task = asyncio.create_task(self._guard(name, work, one_shot), name=name)
        self._tasks[name] = task
        return task

    def _delay(self, failures: int) -> float:
        return float(min(self.backoff_max, self.backoff_initial * 2 ** max(0, failures - 1)))

    async def _guard(self, name: str, work: Work, one_shot: bool) -> Any:
        state = self.states[name]
        while True:
            coro = work() if callable(work) else work
            started = self._time()
            try:
                result = await coro
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("task %s has finished unexpectedly: %r", name, exc)  # noqa: TRY401 — the reason on the first line
                reason = f"died: {exc!r}"
                error: BaseException = exc
            else:
                if one_shot:
                    return result
                log.error("task %s has finished unexpectedly: it returned %r", name, result)
                reason = "returned"
                error = RuntimeError(f"task {name} returned")
            if not callable(work):
                self.dead[name] = error
                state.reason, state.down_since = reason, self._time()
                return None
            if self._time() - started >= self.stable_after:
                state.failures = 0
            state.failures += 1
            state.reason, state.down_since = reason, self._time()
            delay = self._delay(state.failures)
            log.warning("task %s: starting it again in %.1fs (unexpected end %d in a row)", name, delay, state.failures)
            await asyncio.sleep(delay)
            state.down_since, state.restarted_at = None, self._time()
            state.restarts += 1
            log.info("task %s started again (restart %d)", name, state.restarts)

    def problems(self) -> list[str]:
        """Tasks that ended unexpectedly and are down, or were started again
        less than ``stable_after`` seconds ago (for ``/healthz``)."""
        now = self._time()
        out = []
        for name, state in sorted(self.states.items()):
            if name in self.dead:
                out.append(f"task {name} {state.reason}")
            elif state.down_since is not None:
                out.append(f"task {name} {state.reason} (down for {now - state.down_since:.1f}s, restarting)")
            elif state.restarted_at is not None and now - state.restarted_at < self.stable_after:
                out.append(
                    f"task {name} {state.reason} (started again {now - state.restarted_at:.1f}s ago, "
                    f"{state.failures} unexpected end(s) in a row)"
                )
        return out

    def running(self) -> list[str]:
        """Tasks under supervision (running, or waiting to be started again)."""
        return sorted(name for name, task in self._tasks.items() if not task.done())

    async def cancel(self, name: str) -> None:
        task = self._tasks.get(name)
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self.states.pop(name, None)

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
