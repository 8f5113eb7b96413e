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
* Errors become egressd's own (:mod:`egressd.adapters.kube.client`).
* Responses are read as raw JSON (``_preload_content=False``) and validated by
  :func:`egressd.core.lease.record_from_object`; writes send the exact JSON
  egressd renders (MicroTime with six digits and ``Z``) through the client's
  transport.
* The watch is an :class:`egressd.adapters.kube.informer.Informer`: it lists
  first (a ``sync`` event), then watches from the list's resourceVersion, and
  lists again after 410 Expired.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException
from tenacity import AsyncRetrying, RetryCallState, RetryError, retry_if_exception_type

from egressd.adapters.kube.client import blocking_json, raw_request, translate
from egressd.adapters.kube.informer import (
    Informer,
    Pacing,
    Wait,
    object_name,
    resource_version,
    stream,
    wait_on,
    watch_events,
)
from egressd.core.backoff import UNANSWERED_BACKOFF, WATCH_BACKOFF, Backoff, RetryWait, retry_wait
from egressd.core.errors import ApiTimeout, ApiUnavailable, MalformedLease, NotFound, Rejected
from egressd.core.lease import LABEL_SELECTOR, LeaseRecord, object_from_record, record_from_object, released
from egressd.core.node_lease import (
    NodeLeaseRecord,
    is_node_lease,
    node_object_from_record,
    node_record_from_object,
)
from egressd.ports import Clock, LeaseEvent

log = logging.getLogger(__name__)

#: Shortest useful remaining time for one more attempt.
_MIN_ATTEMPT = 0.02

_MAX_ATTEMPTS = 3
"""Attempts per call. With the waits between them (at least a quarter, then
half of the call's time) a call that keeps failing makes 3 requests in at
least 3/4 of its time, so a member that renews every ``retryPeriod`` with
``renewDeadline`` > 1.2 x ``retryPeriod`` (T2) makes at most 3 requests per
3/4 x 1.2 + 1 = 1.9 retry periods under a storm of 5xx: below twice its
steady rate of one per retry period."""


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
        self._node_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="egressd-node-lease")
        """The node lease's own thread: its renewal is the serving right of every
        IP the node holds, so it never queues behind claim writes (a thousand
        members acquiring at start would otherwise hold it past its deadline,
        and without the right no acquire may proceed)."""
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
        self._pacing = Pacing(clock, watch_timeout, watch_idle, draw, wait)
        self._not_before = 0.0
        """Monotonic time before which the server asked us (Retry-After) not to call."""

    # --- calls --------------------------------------------------------------

    async def get(self, name: str, *, deadline: float) -> LeaseRecord | None:
        obj = await self._read(name, deadline)
        return None if obj is None else record_from_object(obj)

    async def _read(
        self, name: str, deadline: float, *, executor: ThreadPoolExecutor | None = None
    ) -> dict[str, Any] | None:
        """One Lease object as the server has it (None: there is none)."""
        try:
            return await self._call(
                "get",
                deadline,
                lambda t: self._leases.read_namespaced_lease(
                    name, self._namespace, _preload_content=False, _request_timeout=t
                ),
                executor=executor,
            )
        except NotFound:
            return None

    async def create(self, record: LeaseRecord, *, deadline: float) -> LeaseRecord:
        body = object_from_record(record, self._namespace)
        path = f"/apis/coordination.k8s.io/v1/namespaces/{self._namespace}/leases"
        obj = await self._call("create", deadline, lambda t: self._send("POST", path, body, t))
        return record_from_object(obj)

    async def update(self, record: LeaseRecord, *, deadline: float) -> LeaseRecord:
        if not record.resource_version:
            raise Rejected(f"{record.name}: update needs a resourceVersion")
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
            raise Rejected(f"{record.name}: delete needs a resourceVersion")
        body = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "preconditions": {"resourceVersion": record.resource_version},
        }
        path = f"/apis/coordination.k8s.io/v1/namespaces/{self._namespace}/leases/{record.name}"
        try:
            await self._call("delete", deadline, lambda t: self._send("DELETE", path, body, t))
        except NotFound:
            return False
        return True

    async def list_leases(self, *, deadline: float) -> list[LeaseRecord]:
        records, _ = await self._list(deadline)
        return records

    async def get_node_lease(self, name: str, *, deadline: float) -> NodeLeaseRecord | None:
        obj = await self._read(name, deadline, executor=self._node_executor)
        return None if obj is None else node_record_from_object(obj)

    async def write_node_lease(self, record: NodeLeaseRecord, *, deadline: float) -> NodeLeaseRecord:
        body = node_object_from_record(record, self._namespace)
        path = f"/apis/coordination.k8s.io/v1/namespaces/{self._namespace}/leases"
        if record.resource_version:
            put = f"{path}/{record.name}"
            obj = await self._call(
                "update", deadline, lambda t: self._send("PUT", put, body, t), executor=self._node_executor
            )
        else:
            obj = await self._call(
                "create", deadline, lambda t: self._send("POST", path, body, t), executor=self._node_executor
            )
        return node_record_from_object(obj)

    def connected(self) -> bool:
        """The watch is established and the latest call (the watch's requests
        included) succeeded."""
        return self._watch_up and self._last_ok >= self._last_failed

    async def close(self) -> None:
        self._closed.set()
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._node_executor.shutdown(wait=False, cancel_futures=True)
        await asyncio.get_running_loop().run_in_executor(None, self._api.close)

    async def _list(self, deadline: float) -> tuple[list[LeaseRecord], str]:
        obj = await self._call(
            "list",
            deadline,
            lambda t: self._leases.list_namespaced_lease(
                self._namespace, label_selector=self._selector, _preload_content=False, _request_timeout=t
            ),
        )
        records, _, rv, problems = _records(obj)
        for name, problem in problems:
            log.warning("lease %s is unreadable and left out of the list: %s", name or "-", problem)
        return records, rv

    async def _call(
        self, verb: str, deadline: float, fn: Callable[[float], Any], *, executor: ThreadPoolExecutor | None = None
    ) -> dict[str, Any]:
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
                    return await self._attempt(
                        loop,
                        verb,
                        deadline,
                        fn,
                        unavailable[0] if unavailable else None,
                        executor=executor or self._executor,
                    )
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
        *,
        executor: ThreadPoolExecutor,
    ) -> dict[str, Any]:
        """One request, in ``executor``, after the wait the server asked for if
        there is one; ``unavailable`` is the previous attempt's error, if any."""
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
        future = loop.run_in_executor(executor, blocking_json, fn, timeout)
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

    def watch(self) -> AsyncIterator[LeaseEvent]:
        return stream({"egressd-lease-watch": self._informer()})

    def _informer(self) -> Informer[LeaseEvent]:
        return Informer[LeaseEvent](
            "lease watch",
            relist=self._relist,
            watch=self._watch_once,
            convert=_to_lease_event,
            pacing=self._pacing,
            closed=self._closed,
            logger=log,
            failed=self._watch_failed,
            reachable=lambda since: self._last_ok > since,
            unanswered_backoff=UNANSWERED_BACKOFF,  # failover and steering act on what it sees
        )

    def _relist(self, emit: Callable[[LeaseEvent], None], stop: threading.Event) -> str:
        records, nodes, rv, problems = self._list_blocking()
        emit(LeaseEvent(kind="sync", records=tuple(records), problems=problems, nodes=tuple(nodes)))
        return rv

    def _watch_failed(self, exc: BaseException) -> None:
        self._watch_up = False
        if isinstance(exc, ApiUnavailable):
            self._failed_unavailable(exc)

    def _list_blocking(
        self,
    ) -> tuple[list[LeaseRecord], list[NodeLeaseRecord], str, tuple[tuple[str, str], ...]]:
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
        for event in watch_events(resp, stop):
            self._watch_up = True
            self._last_ok = self._clock.monotonic()
            yield event


def _records(
    obj: dict[str, Any],
) -> tuple[list[LeaseRecord], list[NodeLeaseRecord], str, tuple[tuple[str, str], ...]]:
    """The readable claims and node leases of a list response (told apart by
    name, :func:`egressd.core.node_lease.is_node_lease`), the list's
    resourceVersion, and the unreadable leases as (name, problem) pairs: one
    bad Lease spoils neither the list nor the watch. A response that is no
    list at all raises ApiUnavailable (the server answered with garbage)."""
    items = obj.get("items")
    if items is None:
        items = []
    if not isinstance(items, list):
        raise ApiUnavailable(f"lease list: items is not a list but a {type(items).__name__}")
    records: list[LeaseRecord] = []
    nodes: list[NodeLeaseRecord] = []
    problems: list[tuple[str, str]] = []
    for item in items:
        try:
            if is_node_lease(object_name(item)):
                nodes.append(node_record_from_object(item))
            else:
                records.append(record_from_object(item))
        except MalformedLease as exc:
            problems.append((object_name(item), str(exc)))
    return records, nodes, resource_version(obj), tuple(problems)


def _to_lease_event(event: dict[str, Any]) -> LeaseEvent:
    """A decoded watch event (see :func:`egressd.adapters.kube.informer.watch_events`) as a LeaseEvent;
    an unreadable Lease becomes an ``invalid`` event naming it, its field and
    the problem."""
    obj = event["object"]
    name = object_name(obj)
    if event["type"] == "DELETED":
        return LeaseEvent(kind="delete", name=name)
    try:
        if is_node_lease(name):
            return LeaseEvent(kind="upsert", name=name, node=node_record_from_object(obj))
        return LeaseEvent(kind="upsert", name=name, record=record_from_object(obj))
    except MalformedLease as exc:
        return LeaseEvent(kind="invalid", name=name, problem=str(exc))
