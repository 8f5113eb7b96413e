"""The informer's waits between watch attempts, on a fake clock: a watch cut off by the network
comes back as soon as its owner's other requests reach the API server again, and the first 410
after such a fault relists at once; refusals by the server still back off."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import urllib3

from egressd.adapters.kube.informer import RECONNECT_POLL, Informer, Pacing, could_not_connect
from egressd.core.errors import ApiUnavailable, ResourceExpired


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> datetime:
        return datetime.fromtimestamp(self.now, UTC)

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


def _no_route() -> urllib3.exceptions.NewConnectionError:
    return urllib3.exceptions.NewConnectionError(None, "Failed to establish a new connection: No route to host")  # type: ignore[arg-type]


class Script:
    """A watch that fails as scripted, one problem per attempt; the informer is closed after the last."""

    def __init__(self, problems: list[BaseException], *, answers_from: float = float("inf")) -> None:
        self.clock = Clock()
        self.problems = list(problems)
        self.answers_from = answers_from
        """The owner's other requests are answered from this time on."""
        self.attempts: list[float] = []
        self.relists: list[float] = []
        self.closed = threading.Event()

    def wait(self, stop: threading.Event, seconds: float) -> None:
        self.clock.now += seconds

    def relist(self, emit: Any, stop: threading.Event) -> str:
        self.relists.append(self.clock.now)
        return "1"

    def watch(self, rv: str, stop: threading.Event) -> Iterator[dict[str, Any]]:
        self.attempts.append(self.clock.now)
        problem = self.problems.pop(0)
        if not self.problems:
            self.closed.set()
        raise problem

    def run(self, *, reachable: bool = True) -> None:
        informer = Informer[dict[str, Any]](
            "test watch",
            relist=self.relist,
            watch=self.watch,
            convert=lambda e: e,
            pacing=Pacing(self.clock, 60.0, 10.0, lambda: 0.0, self.wait),
            closed=self.closed,
            logger=logging.getLogger("test"),
            reachable=(lambda since: self.clock.now >= self.answers_from and self.clock.now > since)
            if reachable
            else None,
        )
        informer.run(lambda _: None, threading.Event())

    def gaps(self) -> list[float]:
        return [round(b - a, 3) for a, b in zip(self.attempts, self.attempts[1:], strict=False)]


def test_connect_failures_back_off_while_nothing_reaches_the_server() -> None:
    script = Script([_no_route() for _ in range(5)])
    script.run()
    # equal jitter with a zero draw: half of 0.1, 0.4, 1.6, 6.4 s
    assert script.gaps() == [0.05, 0.2, 0.8, 3.2]


def test_a_watch_cut_off_by_the_network_reconnects_once_other_requests_get_through() -> None:
    script = Script([_no_route() for _ in range(5)], answers_from=101.2)
    script.run()
    gaps = script.gaps()
    assert gaps[:3] == [0.05, 0.2, 0.8]  # up to 101.05: nothing answered, the backoff as before
    # the fourth wait would be 3.2 s; the renewals answer from 101.2, so it ends at the next poll
    assert gaps[3] <= 0.2 + RECONNECT_POLL + 1e-9
    assert script.attempts[4] >= 101.2


def test_without_reachable_the_backoff_is_waited_out() -> None:
    script = Script([_no_route() for _ in range(5)], answers_from=0.0)
    script.run(reachable=False)
    assert script.gaps() == [0.05, 0.2, 0.8, 3.2]


def test_a_refusal_by_the_server_backs_off_even_when_other_requests_get_through() -> None:
    script = Script([ApiUnavailable("503") for _ in range(4)], answers_from=0.0)
    script.run()
    assert script.gaps() == [0.05, 0.2, 0.8]


def test_the_first_410_after_a_network_fault_relists_after_the_first_step() -> None:
    problems: list[BaseException] = [_no_route() for _ in range(4)]
    problems += [ResourceExpired("too old resource version"), ResourceExpired("too old"), _no_route()]
    script = Script(problems)
    script.run(reachable=False)
    gaps = script.gaps()
    assert gaps[:3] == [0.05, 0.2, 0.8]
    assert gaps[3] == 3.2  # the fourth connect failure's wait
    assert gaps[4] == 0.05  # the first 410: a fresh streak, relisted after 0.05 s
    assert gaps[5] == 0.2  # a second 410 in a row backs off
    assert len(script.relists) == 3  # the first list, and one after each 410


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (_no_route(), True),
        (urllib3.exceptions.ConnectTimeoutError("connect timeout=1.0"), True),
        (urllib3.exceptions.MaxRetryError(None, "/", _no_route()), True),  # type: ignore[arg-type]
        (ConnectionRefusedError(), True),
        (urllib3.exceptions.ProtocolError("reset"), False),
        (ApiUnavailable("503"), False),
    ],
)
def test_could_not_connect_names_the_failures_that_never_reached_the_server(exc: BaseException, expected: bool) -> None:
    assert could_not_connect(exc) is expected
