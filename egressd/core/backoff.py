"""How egressd waits before it asks the API server again, as values (no I/O).

One policy for every loop that talks to the API (the lease watch, the
cluster watches, the retries of a lease call), so that a fault answered at
once (a watch refused with 410 Gone, 429, 500) never becomes a request storm:

* :class:`Backoff`: exponential, with *equal jitter*: after the n-th failure
  in a row the wait is ``d/2 + u * d/2`` with ``d = min(cap, initial *
  factor**(n-1))`` and ``u`` a uniform draw in [0, 1). The random half spreads
  the daemons of a cluster apart; the fixed half is a floor, so the request
  rate under a storm is bounded whatever the draws (full jitter could draw
  zero again and again).
* :class:`Streak`: the consecutive failures of one loop, reset once a try ran
  healthily for a while; it says how long to wait and whether the failure
  deserves a log line (the first of a streak, a different problem, and then
  only every power of two: a storm logs a handful of lines, not one per try).
* :func:`retry_after` reads a ``Retry-After`` header (seconds or HTTP-date);
  :func:`retry_wait` decides whether a call with a deadline tries again, and
  after how long: never sleeping past the deadline it serves, and giving up at
  once when the server asks for more time than is left.

The random source is injected (``draw``), so tests fix it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with equal jitter (see the module docstring)."""

    initial: float
    """Ceiling of the wait after the first failure, seconds."""
    cap: float
    """Largest ceiling, seconds."""
    factor: float = 2.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.initial) and self.initial > 0):
            raise ValueError(f"backoff initial must be a positive number of seconds, got {self.initial!r}")
        if not (math.isfinite(self.cap) and self.cap >= self.initial):
            raise ValueError(f"backoff cap must be at least initial ({self.initial}), got {self.cap!r}")
        if not (math.isfinite(self.factor) and self.factor >= 1):
            raise ValueError(f"backoff factor must be at least 1, got {self.factor!r}")

    def ceiling(self, failures: int) -> float:
        """``d`` after ``failures`` (>= 1) failures in a row."""
        if failures < 1:
            raise ValueError(f"failures must be at least 1, got {failures}")
        if self.factor == 1:
            return self.initial
        steps = math.log(self.cap / self.initial, self.factor)
        if failures - 1 >= steps:  # also keeps factor**n from overflowing
            return self.cap
        return min(self.cap, self.initial * self.factor ** (failures - 1))

    def delay(self, failures: int, draw: float) -> float:
        """Seconds to wait after ``failures`` failures in a row; ``draw`` in [0, 1)."""
        d = self.ceiling(failures)
        return d / 2 + d / 2 * min(max(draw, 0.0), 1.0)


WATCH_BACKOFF = Backoff(initial=0.1, cap=30.0, factor=4.0)
"""Relists and watch restarts: the first retry after a healthy watch comes
within 0.1 s (a 410 after compaction is routine and must resync fast). The
ceiling quadruples (0.1, 0.4, 1.6, 6.4, 25.6 s): a daemon has five watches,
and with doubling the first 20 s of a storm cost each of them eight relists,
twice a gateway's steady request rate; this way five. The cap is client-go's
reflector cap; it is this long because a watch-only node makes about one
request per watch per minute when all is well: at a cap of a few seconds a
storm of refused watches would multiply that rate by ten."""

UNANSWERED_BACKOFF = Backoff(initial=0.1, cap=2.0, factor=4.0)
"""The lease watch after a failure the server never answered (connection
refused, connect or read timeout: the API server is down, paused or cut
off). The claims and node leases are what failover and steering act on, so
the watch must be back within a couple of seconds of the API's return: with
:data:`WATCH_BACKOFF` a 30-second outage grew the wait to up to 25.6 s, and a
steering node kept sending traffic to a dead owner for seconds after the API
answered again. The ceilings are 0.1, 0.4, 1.6, 2 s; at the cap one watch
tries once every 1 to 2 s plus the timeout of the try (the connect timeout,
1 s): at most about one request per 2 s to a down API, which costs a server
that is down nothing and one that is paused a queued connection each.
Failures the server did answer (410, 429, 5xx, a watch ended early) keep
:data:`WATCH_BACKOFF`: they come from a server that is up and may be
overloaded."""

WATCH_HEALTHY_AFTER = 10.0
"""A watch that stayed open this long was not refused: the streak ends."""


@dataclass(frozen=True)
class Step:
    """What a loop does after a failure."""

    delay: float
    """Seconds to wait before the next try."""
    failures: int
    """Failures in a row, this one included."""
    report: bool
    """Whether this failure deserves a log line (else a debug line)."""


class Repeats:
    """Failures of one kind of operation in a row, and which of them deserve a
    log line: the first, one whose problem differs from the last, and then
    every power of two (1, 2, 4, 8, ...), so a fault that lasts logs a handful
    of lines whatever the number of tries; the others go to debug."""

    def __init__(self) -> None:
        self.failures = 0
        self._problem = ""

    @property
    def problem(self) -> str:
        """The kind of the last failure of the current run ("" after a success)."""
        return self._problem

    def failed(self, problem: str) -> bool:
        """Count a failure of kind ``problem`` (a short, stable text such as the
        error's class); whether it deserves a log line."""
        self.failures += 1
        changed = problem != self._problem
        self._problem = problem
        return changed or self.failures & (self.failures - 1) == 0

    def succeeded(self) -> int:
        """The operation worked: how many failures in a row this ended."""
        ended, self.failures, self._problem = self.failures, 0, ""
        return ended


class Streak:
    """The failures in a row of one loop (a watch, a relist)."""

    def __init__(self, backoff: Backoff, draw: Callable[[], float], *, healthy_after: float = WATCH_HEALTHY_AFTER):
        self.backoff = backoff
        self.healthy_after = healthy_after
        self._draw = draw
        self._repeats = Repeats()

    @property
    def failures(self) -> int:
        return self._repeats.failures

    @property
    def problem(self) -> str:
        """The kind of the streak's last failure ("" when there is no streak)."""
        return self._repeats.problem

    def failed(self, problem: str, *, retry_after: float | None = None, backoff: Backoff | None = None) -> Step:
        """Record a failure of kind ``problem`` (a short, stable text such as
        the error's class); a ``retry_after`` the server asked for lengthens
        the wait, up to the backoff's cap. ``backoff``: the policy for this
        failure when it is not the streak's (a failure the server never
        answered, :data:`UNANSWERED_BACKOFF`); the count of failures in a row
        is the streak's either way."""
        policy = backoff or self.backoff
        report = self._repeats.failed(problem)
        delay = policy.delay(self.failures, self._draw())
        if retry_after is not None and retry_after > delay:
            delay = min(retry_after, policy.cap)
        return Step(delay, self.failures, report)

    def reset(self) -> None:
        self._repeats.succeeded()

    def ran(self, seconds: float) -> int:
        """A try ran ``seconds`` without failing: a long enough run ends the
        streak. Returns how many failures it ended (0: none, or too short)."""
        if seconds < self.healthy_after or not self.failures:
            return 0
        ended = self.failures
        self.reset()
        return ended


def retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds a ``Retry-After`` header asks for: ``"2"`` or an HTTP-date
    (``"Wed, 21 Oct 2026 07:28:00 GMT"``, relative to ``now``); None when
    absent or unreadable. Never negative."""
    if value is None:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        return float(min(int(text[:12]), 10**9))
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    try:
        return max(0.0, (when - now).total_seconds())
    except OverflowError:  # pragma: no cover - dates are bounded to years 1..9999
        return None


@dataclass(frozen=True)
class RetryWait:
    """Whether a failed call tries again, and when."""

    delay: float | None
    """Seconds to wait before the next attempt; None: give up now."""
    reason: str


def retry_wait(backoff_delay: float, server_asks: float | None, remaining: float, min_attempt: float) -> RetryWait:
    """After a failed attempt with ``remaining`` seconds to the call's
    deadline: wait ``backoff_delay``, or what the server asked for
    (``Retry-After``) if longer; never into the last ``min_attempt`` seconds
    the next attempt needs. A wait the server asks for that does not fit is a
    reason to give up at once: an answer after the deadline is useless (a
    lease renewed after its renew deadline serves nobody)."""
    room = remaining - min_attempt
    if server_asks is not None and server_asks > room:
        return RetryWait(None, f"the server asks to retry after {server_asks:g}s, {max(room, 0.0):.3f}s are left")
    if room < min_attempt:
        return RetryWait(None, f"{max(remaining, 0.0):.3f}s left, too little for another attempt")
    if server_asks is not None and server_asks >= backoff_delay:
        return RetryWait(server_asks, f"Retry-After {server_asks:g}s")
    return RetryWait(min(backoff_delay, room), "backoff")
