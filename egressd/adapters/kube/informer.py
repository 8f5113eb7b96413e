"""The informer: one collection of the API followed from a thread, bridged
to the event loop (used by the lease store and by the cluster watches).

* :class:`Informer` lists the collection (its ``relist`` emits what it
  found), then watches from the list's resourceVersion, reconnects from the
  last one it saw (bookmarks advance it), and lists again after 410 Expired
  or a 404 (the collection is gone, a CRD deleted under an open watch). A
  watch refused, failed or ended early is retried after
  :data:`egressd.core.backoff.WATCH_BACKOFF` (longer if the server asks with
  ``Retry-After``; a storm of 410s must not become a storm of relists), and
  logged once per change of problem, not once per try. Two exceptions to the
  backoff, both for a watch that lost its server to the network, not to a
  refusal: a watch that could not connect tries again as soon as another
  request of its owner reached the API server (``reachable``: the fault is
  over, and a connection attempt costs a server nothing), and the first 410
  after another problem relists after the backoff's first step, not after
  the streak the network fault built up (the resourceVersion went stale
  while the node was cut off; a run of 410s still backs off).
  A failure the server never answered (refused, timed out: the API is down
  or paused) may have a shorter policy of its own (:func:`unanswered`; the
  lease watch's is :data:`egressd.core.backoff.UNANSWERED_BACKOFF`), so the
  watch is back soon after the API returns. A watch silent for its idle time
  is reconnected at once, quietly.
* :func:`stream` runs informers in threads of their own (the client blocks)
  and yields what they emit on the event loop, through a queue; a thread that
  dies ends the stream with its error (:func:`start_watch_thread`).
* :func:`watch_events` decodes a watch response, line by line: nothing but
  an event, a bookmark or an egressd error escapes, whatever a line holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, Generic, TypeVar

import urllib3
from kubernetes.client.exceptions import ApiException

from egressd.core.backoff import WATCH_BACKOFF, Backoff, Step, Streak
from egressd.core.errors import ApiError, ApiUnavailable, EgressdError, NotFound, ResourceExpired, clip
from egressd.ports import Clock

log = logging.getLogger(__name__)

T = TypeVar("T")

Wait = Callable[[threading.Event, float], object]
"""How a watch thread waits out a backoff: ``stop.wait(seconds)`` (a fake
clock's in tests)."""


def wait_on(stop: threading.Event, seconds: float) -> bool:
    """The real :data:`Wait`."""
    return stop.wait(seconds)


@dataclass(frozen=True)
class Pacing:
    """The timing of an informer's loop."""

    clock: Clock
    watch_timeout: float
    """Seconds a watch request asks the server to keep it open (``timeoutSeconds``)."""
    watch_idle: float
    """Seconds of silence after which a watch is reconnected."""
    draw: Callable[[], float]
    """The random source of the backoff's jitter."""
    wait: Wait
    """How the thread waits out a backoff."""


RECONNECT_POLL = 0.1
"""Seconds between two looks at ``Informer.reachable`` while a watch that could not connect waits
(the shortest such wait: the first step of the watch backoff)."""


def could_not_connect(exc: BaseException) -> bool:
    """The request never reached the API server: no route, refused, connect timeout."""
    if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason is not None:
        exc = exc.reason
    return isinstance(exc, urllib3.exceptions.ConnectTimeoutError | ConnectionRefusedError)


Relist = Callable[[Callable[[T], None], threading.Event], "str | None"]
"""List the collection and emit what it holds; the list's resourceVersion,
or None when there is nothing to watch yet (a CRD not installed): the relist
has then waited, and is called again."""


@dataclass(frozen=True)
class Informer(Generic[T]):
    """List, then watch, one collection (see the module docstring)."""

    what: str
    """For the logs: ``lease watch``, ``pods watch``."""
    relist: Relist[T]
    watch: Callable[[str, threading.Event], Iterator[dict[str, Any]]]
    """One watch request from a resourceVersion: its decoded events (:func:`watch_events`)."""
    convert: Callable[[dict[str, Any]], T]
    """A decoded ADDED, MODIFIED or DELETED event as what the informer emits."""
    pacing: Pacing
    closed: threading.Event
    """Set by the informer's owner when it closes."""
    logger: logging.Logger
    failed: Callable[[BaseException], None] = lambda exc: None
    """Told of each error of a list or watch request but a 410 (routine: a relist follows at once)."""
    reachable: Callable[[float], bool] | None = None
    """Whether another request of the informer's owner was answered by the API server after the
    given time (the owner's clock): a watch that could not connect stops waiting out its backoff
    then. None: it always waits the backoff out."""
    unanswered_backoff: Backoff | None = None
    """The backoff after a failure the server never answered (:func:`unanswered`);
    None: :data:`WATCH_BACKOFF` for every failure."""

    def run(self, emit: Callable[[T], None], stop: threading.Event) -> None:
        """The loop of the informer's thread, until ``stop`` or its owner's ``closed`` is set."""
        rv = ""
        streak = Streak(WATCH_BACKOFF, self.pacing.draw)
        while not stop.is_set() and not self.closed.is_set():
            started = self.pacing.clock.monotonic()
            problem: BaseException | None = None
            idle = False
            try:
                if not rv:
                    listed = self.relist(emit, stop)
                    if listed is None:
                        streak.reset()  # not a failure of the watch: a state, logged by the relist
                        continue
                    rv = listed
                    started = self.pacing.clock.monotonic()
                for event in self.watch(rv, stop):
                    rv = event.pop("_rv", rv) or rv
                    if event:
                        emit(self.convert(event))
            except ResourceExpired as exc:
                rv = ""
                problem = exc
            except (urllib3.exceptions.ReadTimeoutError, TimeoutError) as exc:
                # silent for watch_idle: reconnect at once, quietly (an idle watch is normal)
                self.logger.debug(
                    "%s silent for %.1fs (%s); reconnecting from resourceVersion %s",
                    self.what,
                    self.pacing.watch_idle,
                    exc,
                    rv,
                )
                idle = True
            except (ApiError, urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
                if isinstance(exc, NotFound):
                    # the collection is gone (the CRD deleted under an open watch):
                    # list again, which finds out what is left of it
                    rv = ""
                self.failed(exc)
                problem = exc
            if stop.is_set():
                return
            self._pause(streak, self.pacing.clock.monotonic() - started, problem, idle=idle, rv=rv, stop=stop)

    def _pause(
        self, streak: Streak, ran: float, problem: BaseException | None, *, idle: bool, rv: str, stop: threading.Event
    ) -> None:
        """After an attempt that ran ``ran`` seconds: logs a recovery, and waits
        the next backoff step after a failure or a watch that ended too soon."""
        ended = streak.ran(ran)
        if ended:
            self.logger.info("%s healthy again after %d failed attempt(s)", self.what, ended)
        if problem is None and not idle and ran < min(streak.healthy_after, self.pacing.watch_timeout):
            problem = EOFError(f"the watch ended after {ran:.1f}s")
        if problem is None:
            return  # a watch that ran its course, or sat idle: reconnect at once
        if isinstance(problem, ResourceExpired) and streak.problem != type(problem).__name__:
            streak.reset()  # a stale resourceVersion after another fault: resync fast
        policy = self.unanswered_backoff if unanswered(problem) else None
        step = streak.failed(type(problem).__name__, retry_after=getattr(problem, "retry_after", None), backoff=policy)
        log_step(self.logger, self.what, problem, step, rv)
        if self.reachable is not None and could_not_connect(problem):
            self._wait_unless_reachable(stop, step.delay)
        else:
            self.pacing.wait(stop, step.delay)

    def _wait_unless_reachable(self, stop: threading.Event, seconds: float) -> None:
        """Wait ``seconds``, or until another request sent after the failure reached the API
        server, but at least :data:`RECONNECT_POLL`: a server that answers requests on kept-alive
        connections while it refuses new ones sees at most one connection attempt per poll from
        this watch, and the streak still grows and logs as before."""
        assert self.reachable is not None
        failed_at = self.pacing.clock.monotonic()
        end = failed_at + seconds
        while not stop.is_set():
            left = end - self.pacing.clock.monotonic()
            if left <= 0:
                return
            self.pacing.wait(stop, min(left, RECONNECT_POLL))
            if self.reachable(failed_at):
                self.logger.debug("%s: the API server answers again; reconnecting now", self.what)
                return


_NO_ANSWER = (
    urllib3.exceptions.ConnectTimeoutError,  # NewConnectionError (refused, no route) is one too
    urllib3.exceptions.ReadTimeoutError,
    urllib3.exceptions.ProtocolError,
    ConnectionError,
    TimeoutError,
)


def unanswered(exc: BaseException) -> bool:
    """Whether a failed request got no answer from the server at all: the
    connection was refused, reset or timed out, here or in the error it was
    raised from. An HTTP status (410, 429, 5xx) is an answer."""
    seen: BaseException | None = exc
    for _ in range(8):  # a chain of causes is short; never loop on a cycle
        if seen is None or isinstance(seen, ApiException):
            return False
        if isinstance(seen, _NO_ANSWER):
            return True
        seen = seen.reason if isinstance(seen, urllib3.exceptions.MaxRetryError) else seen.__cause__
    return False


async def stream(informers: Mapping[str, Informer[T]]) -> AsyncIterator[T]:
    """What the informers emit, each run in a thread named by its key, until
    the consumer stops; the error of a thread that died is raised here."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[T | BaseException] = asyncio.Queue()
    stop = threading.Event()

    def emit(item: T | BaseException) -> None:
        with contextlib.suppress(RuntimeError):  # loop closed during shutdown
            loop.call_soon_threadsafe(queue.put_nowait, item)

    for name, informer in informers.items():
        start_watch_thread(name, partial(informer.run, emit, stop), emit, stop)
    try:
        while True:
            item = await queue.get()
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


def start_watch_thread(
    name: str, target: Callable[[], None], emit: Callable[[BaseException], None], stop: threading.Event
) -> None:
    """Run a watch loop in a daemon thread. If it ends before ``stop`` is set
    (an exception it does not handle, or a return), the error is sent through
    ``emit``, so the asyncio side of the watch raises it: the watch's task then
    ends unexpectedly, which its supervisor reports and restarts. A thread
    that died silently would leave the view frozen and the daemon "healthy"."""

    def run() -> None:
        try:
            target()
        except BaseException as exc:
            if not stop.is_set():
                log.error("%s: thread died: %r", name, exc)
                emit(exc)
            return
        if not stop.is_set():
            emit(EgressdError(f"{name}: thread ended"))

    threading.Thread(target=run, name=name, daemon=True).start()


def log_step(logger: logging.Logger, what: str, problem: BaseException, step: Step, rv: str) -> None:
    """One line per change of problem and per doubling of the streak (see
    :class:`egressd.core.backoff.Streak`); the other tries at debug level."""
    level = logging.WARNING
    action = "listing again" if not rv else f"reconnecting from resourceVersion {rv}"
    if isinstance(problem, NotFound):
        level = logging.INFO  # the collection is gone: what the list finds is reported there
    elif isinstance(problem, ResourceExpired | EOFError) and step.failures == 1:
        level = logging.INFO  # routine once (a compacted history, a server closing a stream), not in a row
    logger.log(
        level if step.report else logging.DEBUG,
        "%s: %s (%d in a row); %s in %.1fs",
        what,
        problem,
        step.failures,
        action,
        step.delay,
    )


def watch_events(resp: Any, stop: threading.Event) -> Iterator[dict[str, Any]]:
    """The decoded events of one watch response (see :func:`_decode_watch_line`),
    until the stream ends or ``stop`` is set."""
    try:
        buf = b""
        for chunk in resp.stream(4096, decode_content=True):
            if stop.is_set():
                return
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if line.strip():
                    yield _decode_watch_line(line)
    finally:
        resp.release_conn()


_WATCH_TYPES = frozenset({"ADDED", "MODIFIED", "DELETED"})


def _decode_watch_line(line: bytes) -> dict[str, Any]:
    """One line of a watch stream: ``{"_rv": rv}`` for a bookmark, else
    ``{"_rv": rv, "type": ..., "object": ...}``, with ``_rv`` left out when
    the object carries no resourceVersion (the stream resumes from the last
    good one), and ``{}`` for an event that names nothing to act on (logged).
    An ERROR event raises the ApiError its status names; a line that is no
    JSON object raises ApiUnavailable (the stream is reconnected). Nothing
    else escapes, whatever the line holds."""
    try:
        event = json.loads(line)
    except (ValueError, RecursionError) as exc:
        raise ApiUnavailable(f"watch: a line that is not JSON: {_cut(line)}") from exc
    if not isinstance(event, dict):
        raise ApiUnavailable(f"watch: an event that is not a JSON object: {_cut(line)}")
    kind = event.get("type")
    obj = event.get("object")
    if kind == "ERROR":
        status = obj if isinstance(obj, dict) else {}
        code = status.get("code")
        message = _cut(status.get("message", ""))
        if code == 410:
            raise ResourceExpired(f"watch: {message}")
        raise ApiUnavailable(f"watch error {_cut(code)}: {message}")
    if not isinstance(obj, dict):
        log.warning("watch: ignoring a %s event whose object is not a JSON object: %s", _cut(kind), _cut(line))
        return {}
    rv = resource_version(obj)
    if kind == "BOOKMARK":
        return {"_rv": rv} if rv else {}
    if not isinstance(kind, str) or kind not in _WATCH_TYPES:
        log.warning("watch: ignoring an event of unknown type %s (%s)", _cut(kind), object_name(obj) or "no name")
        return {"_rv": rv} if rv else {}
    return ({"_rv": rv} if rv else {}) | {"type": kind, "object": obj}


_MAX_NAME = 253
"""The longest object name the API accepts."""


def object_name(obj: Any) -> str:
    """``metadata.name`` of an object that may be shaped any way ("" if none)."""
    meta = obj.get("metadata") if isinstance(obj, Mapping) else None
    name = meta.get("name") if isinstance(meta, Mapping) else None
    return name[:_MAX_NAME] if isinstance(name, str) else ""


def resource_version(obj: Mapping[str, Any]) -> str:
    """``metadata.resourceVersion`` ("" unless a non-empty string)."""
    meta = obj.get("metadata")
    rv = meta.get("resourceVersion") if isinstance(meta, Mapping) else None
    return rv if isinstance(rv, str) else ""


def _cut(value: Any, limit: int = 120) -> str:
    """A value for a log line or an error, cut to ``limit`` characters."""
    return clip(value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value), limit)
