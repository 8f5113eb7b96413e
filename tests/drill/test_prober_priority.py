"""A prober's sending thread runs at real-time priority, the rest of the drill does not."""

from __future__ import annotations

import os
import threading

import pytest

from egressd.drill.instruments import PROBER_PRIORITY, realtime


@pytest.mark.skipif(os.geteuid() != 0, reason="real-time scheduling needs root")
def test_realtime_raises_the_calling_thread_only() -> None:
    seen: list[tuple[int, int]] = []

    def run() -> None:
        realtime()
        seen.append((os.sched_getscheduler(0), os.sched_getparam(0).sched_priority))

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert seen == [(os.SCHED_RR, PROBER_PRIORITY)]
    assert os.sched_getscheduler(0) == os.SCHED_OTHER  # the caller's own thread is untouched
