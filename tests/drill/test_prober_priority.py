"""The instruments' threads run at real-time priority; the drill's main thread does not."""

from __future__ import annotations

import os

import pytest

from egressd.drill.instruments import INSTRUMENT_PRIORITY, Worker


@pytest.mark.skipif(os.geteuid() != 0, reason="real-time scheduling needs root")
def test_instrument_threads_run_at_realtime_priority_and_the_caller_does_not() -> None:
    seen: list[tuple[int, int]] = []

    def run() -> None:
        seen.append((os.sched_getscheduler(0), os.sched_getparam(0).sched_priority))

    worker = Worker()
    worker._spawn(run, "test")
    worker.stop()
    assert seen == [(os.SCHED_RR | os.SCHED_RESET_ON_FORK, INSTRUMENT_PRIORITY)]
    assert os.sched_getscheduler(0) == os.SCHED_OTHER  # the caller's own thread is untouched
