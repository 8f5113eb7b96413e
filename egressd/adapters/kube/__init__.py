"""Lease store over the official ``kubernetes`` client.

* Every call runs in a small bounded thread pool (the client blocks) with a
  per-call timeout no longer than ``api_timeout`` and never past the caller's
  deadline; urllib3's own retries are off.
* Retries live here and only here (tenacity): connection failures, 429 and
  5xx are retried, at most twice per call, after a jittered wait of a quarter
  then half of the call's time (:data:`_MAX_ATTEMPTS`), and never past the
  deadline the call serves. A ``Retry-After`` is honoured: the store sends
  nothing before that time, also in later calls, and a call whose deadline
  comes first gives up at once (a renew after its renew deadline is
  useless). Timeouts are not retried (the write may have happened; the
  caller re-reads).
* Errors become egressd's own (see :mod:`egressd.core.errors`): 409 → LostRace,
  404 → LeaseNotFound, 410 → LeaseExpired, timeouts → ApiTimeout, refused /
  reset / 429 / 5xx → ApiUnavailable (with the ``Retry-After`` asked for),
  each chained to the library's exception.
* Responses are read as raw JSON (``_preload_content=False``) and validated by
  :func:`egressd.core.lease.record_from_object`; writes send the exact JSON
  egressd renders (MicroTime with six digits and ``Z``) through the client's
  transport.
* The watch runs in a thread of its own, bridged to the event loop by a
  queue. It lists first (a ``sync`` event), then watches from the list's
  resourceVersion, reconnects from the last seen one (bookmarks advance it),
  and lists again after 410 Expired. A watch refused, failed or ended early
  is retried after :data:`egressd.core.backoff.WATCH_BACKOFF` (a storm of
  410s must not become a storm of relists), and logged once per change of
  problem, not once per try.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, TypeVar

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from tenacity import AsyncRetrying, RetryCallState, RetryError, retry_if_exception_type

from egressd.core.backoff import WATCH_BACKOFF, Backoff, RetryWait, Step, Streak, retry_after, retry_wait
from egressd.core.errors import (
    ApiTimeout,
    ApiUnavailable,
    EgressdError,
    LeaseError,
    LeaseExpired,
    LeaseNotFound,
    LostRace,
    MalformedLease,
)
from egressd.core.lease import LABEL_SELECTOR, LeaseRecord, object_from_record, record_from_object, released
from egressd.core.model import KubeSettings
from egressd.ports import Clock, LeaseEvent

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Shortest useful remaining time for one more attempt.
_MIN_ATTEMPT = 0.02

_MAX_ATTEMPTS = 3
"""Attempts per call. With the waits between them (at least a quarter, then
half of the call's time) a call that keeps failing makes 3 requests in at
least 3/4 of its time, so a member that renews every ``retryPeriod`` with
``renewDeadline`` > 1.2 x ``retryPeriod`` (T2) makes at most 3 requests per
3/4 x 1.2 + 1 = 1.9 retry periods under a storm of 5xx: below twice its
steady rate of one per retry period."""

Wait = Callable[[threading.Event, float], object]
"""How a watch thread waits out a backoff: ``stop.wait(seconds)`` (a fake
clock's in tests)."""


def wait_on(stop: threading.Event, seconds: float) -> bool:
    """The real :data:`Wait`."""
    return stop.wait(seconds)


def api_client(settings: KubeSettings, *, pool_size: int = 8) -> k8s.ApiClient:
    """An ApiClient for the configured access mode, with urllib3 retries off
    (retries are ours) and a connection pool as large as our thread pool."""
    cfg = k8s.Configuration()
    try:
        if settings.access == "in-cluster":
            k8s_config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
        elif settings.access == "kubeconfig":
            k8s_config.load_kube_config(config_file=settings.kubeconfig, client_configuration=cfg)  # type: ignore[no-untyped-call]
        else:
            assert settings.url is not None
            cfg.host = settings.url.rstrip("/")
            if settings.token_file:
                with open(settings.token_file, encoding="utf-8") as fh:  # noqa: PTH123
                    cfg.api_key = {"authorization": "Bearer " + fh.read().strip()}
            if settings.ca_file:
                cfg.ssl_ca_cert = settings.ca_file
    except (k8s_config.ConfigException, OSError) as exc:
        raise EgressdError(f"kubernetes.{settings.access}: cannot load API access: {exc}") from exc
    cfg.retries = False
    cfg.connection_pool_maxsize = pool_size
    return k8s.ApiClient(cfg)


class KubeLeaseStore:
    """:class:`egressd.ports.LeaseStore` for the leases of one namespace."""

    def __init__(
        self,
        api: k8s.ApiClient,
        namespace: str,
        *,
        clock: Clock,
        api_timeout: float,
        workers: int = 4,
        watch_timeout: int = 240,
        watch_idle: float = 10.0,
        label_selector: str = LABEL_SELECTOR,
        draw: Callable[[], float] = random.random,
        wait: Wait = wait_on,
    ) -> None:
        self._api = api
        self._leases = k8s.CoordinationV1Api(api)
        self._namespace = namespace
        self._clock = clock
        self._api_timeout = api_timeout
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="egressd-api")
        self._watch_timeout = watch_timeout
        self._watch_idle = watch_idle
        """A watch stream silent this long is reconnected (from its last
        resourceVersion). A partition can leave the TCP connection of a watch
        dead without an error; unnoticed, the node's view stops moving and its
        next takeover waits for a lease expiry it computes from stale
        observations. Owners renew every retry period, so a healthy stream is
        rarely silent; reconnecting an idle one costs one request."""
        self._selector = label_selector
        self._closed = threading.Event()
        self._watch_up = False
        self._last_ok = 0.0
        self._last_failed = 0.0
        self._draw = draw
        self._wait = wait
        self._not_before = 0.0
        """Monotonic time before which the server asked us (Retry-After) not to call."""

    # --- calls --------------------------------------------------------------

    async def get(self, name: str, *, deadline: float) -> LeaseRecord | None:
        try:
            obj = await self._call(
                "get",
                deadline,
                lambda t: self._leases.read_namespaced_lease(
                    name, self._namespace, _preload_content=False, _request_timeout=t
                ),
            )
        except LeaseNotFound:
            return None
        return record_from_object(obj)

    async def create(self, record: LeaseRecord, *, deadline: float) -> LeaseRecord:
        body = object_from_record(record, self._namespace)
        path = f"/apis/coordination.k8s.io/v1/namespaces/{self._namespace}/leases"
        obj = await self._call("create", deadline, lambda t: self._send("POST", path, body, t))
        return record_from_object(obj)

    async def update(self, record: LeaseRecord, *, deadline: float) -> LeaseRecord:
        if not record.resource_version:
            raise LeaseError(f"{record.name}: update needs a resourceVersion")
        body = object_from_record(record, self._namespace)
        path = f"/apis/coordination.k8s.io/v1/namespaces/{self._namespace}/leases/{record.name}"
        obj = await self._call("update", deadline, lambda t: self._send("PUT", path, body, t))
        return record_from_object(obj)

    def _send(self, method: str, path: str, body: dict[str, Any], timeout: float) -> Any:
        """Write an exact JSON body. The typed methods would turn MicroTime
        strings into datetimes and back with ``isoformat()``, which drops the
        fraction when the microseconds are zero: a real API server rejects that."""
        response = raw_request(self._api, method, path, timeout, body=body)
        response.read()
        return response

    async def release(self, record: LeaseRecord, *, successor: str | None, deadline: float) -> LeaseRecord:
        return await self.update(released(record, successor=successor, now=self._clock.wall()), deadline=deadline)

    async def delete(self, record: LeaseRecord, *, deadline: float) -> bool:
        if not record.resource_version:
            raise LeaseError(f"{record.name}: delete needs a resourceVersion")
        body = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "preconditions": {"resourceVersion": record.resource_version},
        }
        path = f"/apis/coordination.k8s.io/v1/namespaces/{self._namespace}/leases/{record.name}"
        try:
            await self._call("delete", deadline, lambda t: self._send("DELETE", path, body, t))
        except LeaseNotFound:
            return False
        return True

    async def list_leases(self, *, deadline: float) -> list[LeaseRecord]:
        records, _ = await self._list(deadline)
        return records

    def connected(self) -> bool:
        """The watch is established and the latest call (the watch's requests
        included) succeeded."""
        return self._watch_up and self._last_ok >= self._last_failed

    async def close(self) -> None:
        self._closed.set()
        self._executor.shutdown(wait=False, cancel_futures=True)
        await asyncio.get_running_loop().run_in_executor(None, self._api.close)

    async def _list(self, deadline: float) -> tuple[list[LeaseRecord], str]:
        obj = await self._call(
            "list",
            deadline,
            lambda t: self._leases.list_namespaced_lease(
                self._namespace, label_selector=self._selector, _preload_content=False, _request_timeout=t
            ),
        )
        records, rv, problems = _records(obj)
        for name, problem in problems:
            log.warning("lease %s is unreadable and left out of the list: %s", name or "-", problem)
        return records, rv

    async def _call(self, verb: str, deadline: float, fn: Callable[[float], Any]) -> dict[str, Any]:
        """Run ``fn(timeout)`` in the pool, retried on unavailability within the deadline."""
        loop = asyncio.get_running_loop()
        budget = deadline - self._clock.monotonic()
        backoff = Backoff(initial=max(budget, _MIN_ATTEMPT) / 2, cap=max(budget, _MIN_ATTEMPT))
        decisions: dict[int, RetryWait] = {}
        unavailable: list[ApiUnavailable] = []

        def decide(state: RetryCallState) -> RetryWait:
            # tenacity asks for the wait before it asks whether to stop: decide once per attempt
            if state.attempt_number not in decisions:
                error = state.outcome.exception() if state.outcome is not None else None
                asks = error.retry_after if isinstance(error, ApiUnavailable) else None
                if isinstance(error, ApiUnavailable):
                    unavailable[:] = [error]
                remaining = deadline - self._clock.monotonic()
                delay = backoff.delay(state.attempt_number, self._draw())
                decisions[state.attempt_number] = (
                    RetryWait(None, f"{_MAX_ATTEMPTS} attempts failed")
                    if state.attempt_number >= _MAX_ATTEMPTS
                    else retry_wait(delay, asks, remaining, _MIN_ATTEMPT)
                )
            return decisions[state.attempt_number]

        def stop(state: RetryCallState) -> bool:
            return decide(state).delay is None

        def wait(state: RetryCallState) -> float:
            return decide(state).delay or 0.0

        try:
            async for attempt in AsyncRetrying(
                stop=stop,
                wait=wait,
                sleep=self._clock.sleep,
                retry=retry_if_exception_type(ApiUnavailable),
            ):
                with attempt:
                    return await self._attempt(loop, verb, deadline, fn, unavailable[0] if unavailable else None)
        except RetryError as exc:
            last = exc.last_attempt.exception()
            assert isinstance(last, ApiUnavailable)
            decision = decisions[exc.last_attempt.attempt_number]
            if decision.reason.startswith("the server asks"):
                # report the wait that did not fit, not only the last error
                raise ApiUnavailable(f"{last}; gave up: {decision.reason}", retry_after=last.retry_after) from last
            raise last from last.__cause__
        raise AssertionError("unreachable")  # pragma: no cover

    async def _attempt(
        self,
        loop: asyncio.AbstractEventLoop,
        verb: str,
        deadline: float,
        fn: Callable[[float], Any],
        unavailable: ApiUnavailable | None,
    ) -> dict[str, Any]:
        """One request, after the wait the server asked for if there is one;
        ``unavailable`` is the previous attempt's error, if any."""
        remaining = deadline - self._clock.monotonic()
        hold = self._not_before - self._clock.monotonic()
        if hold > 0:
            if hold > remaining - _MIN_ATTEMPT:
                raise ApiUnavailable(
                    f"lease {verb}: the API server asked to wait {hold:.3f}s more (Retry-After)", retry_after=hold
                )
            await self._clock.sleep(hold)
            remaining = deadline - self._clock.monotonic()
        if remaining < _MIN_ATTEMPT:
            if unavailable is not None:
                raise unavailable  # the real reason, not the clock
            raise ApiTimeout(f"lease {verb}: deadline passed before the call")
        timeout = min(self._api_timeout, remaining)
        future = loop.run_in_executor(self._executor, blocking_json, fn, timeout)
        try:
            async with asyncio.timeout(timeout + 0.05):
                result = await future
        except TimeoutError as exc:
            self._last_failed = self._clock.monotonic()
            raise ApiTimeout(f"lease {verb}: no answer within {timeout:.3f}s") from exc
        except ApiUnavailable as exc:
            self._failed_unavailable(exc)
            raise
        except ApiTimeout:
            self._last_failed = self._clock.monotonic()
            raise
        self._last_ok = self._clock.monotonic()
        return result

    def _failed_unavailable(self, exc: ApiUnavailable) -> None:
        now = self._clock.monotonic()
        self._last_failed = now
        if exc.retry_after is not None:
            # honoured up to the watch backoff's cap: a proxy asking for an hour
            # must not keep every lease of this node unrenewable for an hour
            self._not_before = max(self._not_before, now + min(exc.retry_after, WATCH_BACKOFF.cap))

    # --- watch ----------------------------------------------------------------

    async def watch(self) -> AsyncIterator[LeaseEvent]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[LeaseEvent | BaseException] = asyncio.Queue()
        stop = threading.Event()

        def emit(item: LeaseEvent | BaseException) -> None:
            with contextlib.suppress(RuntimeError):  # loop closed during shutdown
                loop.call_soon_threadsafe(queue.put_nowait, item)

        start_watch_thread("egressd-lease-watch", lambda: self._watch_thread(emit, stop), emit, stop)
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()

    def _watch_thread(self, emit: Callable[[LeaseEvent | BaseException], None], stop: threading.Event) -> None:
        rv = ""
        streak = Streak(WATCH_BACKOFF, self._draw)
        while not stop.is_set() and not self._closed.is_set():
            started = self._clock.monotonic()
            problem: BaseException | None = None
            idle = False
            try:
                if not rv:
                    records, rv, problems = self._list_blocking()
                    emit(LeaseEvent(kind="sync", records=tuple(records), problems=problems))
                    started = self._clock.monotonic()
                for event in self._watch_once(rv, stop):
                    self._watch_up = True
                    self._last_ok = self._clock.monotonic()
                    rv = event.pop("_rv", rv)
                    if event:
                        emit(_to_lease_event(event))
            except LeaseExpired as exc:
                rv = ""
                problem = exc
            except (urllib3.exceptions.ReadTimeoutError, TimeoutError) as exc:
                # silent for watch_idle: reconnect at once, quietly (an idle watch is normal)
                log.debug(
                    "lease watch silent for %.1fs (%s); reconnecting from resourceVersion %s", self._watch_idle, exc, rv
                )
                idle = True
            except (LeaseError, urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
                self._watch_up = False
                if isinstance(exc, ApiUnavailable):
                    self._failed_unavailable(exc)
                problem = exc
            if stop.is_set():
                return
            ran = self._clock.monotonic() - started
            ended = streak.ran(ran)
            if ended:
                log.info("lease watch healthy again after %d failed attempt(s)", ended)
            if problem is None and not idle and ran < min(streak.healthy_after, self._watch_timeout):
                problem = EOFError(f"the watch ended after {ran:.1f}s")
            if problem is None:
                continue  # a watch that ran its course, or sat idle: reconnect at once
            step = streak.failed(type(problem).__name__, retry_after=getattr(problem, "retry_after", None))
            log_step(log, "lease watch", problem, step, rv)
            self._wait(stop, step.delay)

    def _list_blocking(self) -> tuple[list[LeaseRecord], str, tuple[tuple[str, str], ...]]:
        obj = blocking_json(
            lambda t: self._leases.list_namespaced_lease(
                self._namespace, label_selector=self._selector, _preload_content=False, _request_timeout=t
            ),
            max(self._api_timeout, 2.0),
        )
        return _records(obj)

    def _watch_once(self, rv: str, stop: threading.Event) -> Iterator[dict[str, Any]]:
        """One watch request; yields raw events, each with ``_rv`` (the
        resourceVersion to resume from after it)."""
        try:
            resp: Any = self._leases.list_namespaced_lease(
                self._namespace,
                label_selector=self._selector,
                watch=True,
                resource_version=rv,
                allow_watch_bookmarks=True,
                timeout_seconds=self._watch_timeout,
                _preload_content=False,
                _request_timeout=(max(self._api_timeout, 1.0), self._watch_idle),
            )
        except ApiException as exc:
            raise translate(exc, "watch") from exc
        self._watch_up = True
        self._last_ok = self._clock.monotonic()  # an established watch is an API call that worked
        yield from watch_events(resp, stop)


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
    if isinstance(problem, LeaseNotFound):
        level = logging.INFO  # the collection is gone: what the list finds is reported there
    elif isinstance(problem, LeaseExpired | EOFError) and step.failures == 1:
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


def raw_request(
    api: k8s.ApiClient,
    method: str,
    path: str,
    timeout: Any,
    *,
    query: Sequence[tuple[str, Any]] = (),
    body: Any = None,
) -> Any:
    """One request through the client's transport (auth, TLS, pool) with an
    exact JSON body; the response unread (a watch streams it)."""
    headers = {"Accept": "application/json"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    params = api.param_serialize(
        method=method,
        resource_path=path,
        query_params=list(query),
        header_params=headers,
        body=body,
        auth_settings=["BearerToken"],
    )
    return api.call_api(*params, _request_timeout=timeout)


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


def _records(obj: dict[str, Any]) -> tuple[list[LeaseRecord], str, tuple[tuple[str, str], ...]]:
    """The readable leases of a list response, the list's resourceVersion, and
    the unreadable leases as (name, problem) pairs: one bad Lease spoils
    neither the list nor the watch. A response that is no list at all raises
    ApiUnavailable (the server answered with garbage)."""
    items = obj.get("items")
    if items is None:
        items = []
    if not isinstance(items, list):
        raise ApiUnavailable(f"lease list: items is not a list but a {type(items).__name__}")
    records: list[LeaseRecord] = []
    problems: list[tuple[str, str]] = []
    for item in items:
        try:
            records.append(record_from_object(item))
        except MalformedLease as exc:
            problems.append((_object_name(item), str(exc)))
    return records, _resource_version(obj), tuple(problems)


_WATCH_TYPES = frozenset({"ADDED", "MODIFIED", "DELETED"})


def _decode_watch_line(line: bytes) -> dict[str, Any]:
    """One line of a watch stream: ``{"_rv": rv}`` for a bookmark, else
    ``{"_rv": rv, "type": ..., "object": ...}``, with ``_rv`` left out when
    the object carries no resourceVersion (the stream resumes from the last
    good one), and ``{}`` for an event that names nothing to act on (logged).
    An ERROR event raises the LeaseError its status names; a line that is no
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
            raise LeaseExpired(f"watch: {message}")
        raise ApiUnavailable(f"watch error {_cut(code)}: {message}")
    if not isinstance(obj, dict):
        log.warning("watch: ignoring a %s event whose object is not a JSON object: %s", _cut(kind), _cut(line))
        return {}
    rv = _resource_version(obj)
    if kind == "BOOKMARK":
        return {"_rv": rv} if rv else {}
    if not isinstance(kind, str) or kind not in _WATCH_TYPES:
        log.warning("watch: ignoring an event of unknown type %s (%s)", _cut(kind), _object_name(obj) or "no name")
        return {"_rv": rv} if rv else {}
    return ({"_rv": rv} if rv else {}) | {"type": kind, "object": obj}


def _to_lease_event(event: dict[str, Any]) -> LeaseEvent:
    """A decoded watch event (see :func:`_decode_watch_line`) as a LeaseEvent;
    an unreadable Lease becomes an ``invalid`` event naming it, its field and
    the problem."""
    obj = event["object"]
    name = _object_name(obj)
    if event["type"] == "DELETED":
        return LeaseEvent(kind="delete", name=name)
    try:
        return LeaseEvent(kind="upsert", name=name, record=record_from_object(obj))
    except MalformedLease as exc:
        return LeaseEvent(kind="invalid", name=name, problem=str(exc))


_MAX_NAME = 253
"""The longest object name the API accepts."""


def _object_name(obj: Any) -> str:
    """``metadata.name`` of an object that may be shaped any way ("" if none)."""
    meta = obj.get("metadata") if isinstance(obj, Mapping) else None
    name = meta.get("name") if isinstance(meta, Mapping) else None
    return name[:_MAX_NAME] if isinstance(name, str) else ""


def _resource_version(obj: Mapping[str, Any]) -> str:
    """``metadata.resourceVersion`` ("" unless a non-empty string)."""
    meta = obj.get("metadata")
    rv = meta.get("resourceVersion") if isinstance(meta, Mapping) else None
    return rv if isinstance(rv, str) else ""


def _cut(value: Any, limit: int = 120) -> str:
    """A value for a log line or an error, cut to ``limit`` characters."""
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def blocking_json(fn: Callable[[float], Any], timeout: float) -> dict[str, Any]:
    """Call the client with ``_request_timeout`` and decode its raw response."""
    started = time.monotonic()
    try:
        resp = fn(timeout)
        data = resp.data
    except ApiException as exc:
        raise translate(exc, "call") from exc
    except (urllib3.exceptions.TimeoutError, TimeoutError) as exc:
        raise ApiTimeout(f"no answer within {timeout:.3f}s") from exc
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        if time.monotonic() - started >= timeout:
            raise ApiTimeout(f"no answer within {timeout:.3f}s ({exc})") from exc
        raise ApiUnavailable(f"API server unreachable: {exc}") from exc
    status = getattr(resp, "status", 200)
    if status >= 400:
        error = ApiException(status=status, reason=getattr(resp, "reason", ""))
        error.body = data
        error.headers = getattr(resp, "headers", None)
        raise translate(error, "call")
    try:
        decoded = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ApiUnavailable(f"API server sent something that is not JSON: {data[:80]!r}") from exc
    if not isinstance(decoded, dict):
        raise ApiUnavailable("API server sent JSON that is not an object")
    return decoded


def translate(exc: ApiException, verb: str) -> LeaseError:
    status = exc.status or 0
    message = _status_message(exc)
    if status == 409:
        return LostRace(f"{verb}: {message}")
    if status == 404:
        return LeaseNotFound(f"{verb}: {message}")
    if status == 410:
        return LeaseExpired(f"{verb}: {message}")
    if status == 429 or status >= 500 or status == 0:
        return ApiUnavailable(f"{verb}: HTTP {status}: {message}", retry_after=_retry_after(exc))
    return LeaseError(f"{verb}: HTTP {status}: {message}")


def _retry_after(exc: ApiException) -> float | None:
    """The wait a 429/5xx asks for: the ``Retry-After`` header, else the
    Status's ``details.retryAfterSeconds`` (a real server sends both)."""
    headers = getattr(exc, "headers", None)
    header = headers.get("Retry-After") if headers is not None and hasattr(headers, "get") else None
    if header is not None:
        seconds = retry_after(str(header), datetime.now(UTC))
        if seconds is not None:
            return seconds
    body = exc.body
    if isinstance(body, bytes | str):
        try:
            status = json.loads(body)
        except (ValueError, RecursionError):
            return None
        details = status.get("details") if isinstance(status, dict) else None
        seconds_field = details.get("retryAfterSeconds") if isinstance(details, dict) else None
        if isinstance(seconds_field, int) and not isinstance(seconds_field, bool) and seconds_field > 0:
            return float(min(seconds_field, 10**9))
    return None


def _status_message(exc: ApiException) -> str:
    body = exc.body
    if isinstance(body, bytes | str):
        try:
            status = json.loads(body)
            if isinstance(status, dict) and status.get("message"):
                return str(status["message"])
        except ValueError:
            pass
    return str(exc.reason or "")


async def nodes_matching(api: k8s.ApiClient, labels: Mapping[str, str], *, request_timeout: float) -> list[str]:
    """Names of the Nodes whose labels include ``labels`` (a matchLabels selector)."""
    selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
    core = k8s.CoreV1Api(api)
    loop = asyncio.get_running_loop()
    obj = await loop.run_in_executor(
        None,
        blocking_json,
        lambda t: core.list_node(label_selector=selector, _preload_content=False, _request_timeout=t),
        request_timeout,
    )
    return sorted(str((item.get("metadata") or {}).get("name")) for item in obj.get("items") or [])
