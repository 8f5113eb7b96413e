"""The Kubernetes-mode inputs over the official client: EgressGatewayPolicies,
Nodes, Namespaces and Pods watched; policy status and Events written.

One thread per resource lists it (a ``RELISTED`` event with every object),
then watches from the list's resourceVersion, reconnects from the last one it
saw (bookmarks advance it) and lists again after 410 Expired, like an
informer. A watch refused, failed or ended early is retried after
:data:`egressd.core.backoff.WATCH_BACKOFF` (longer if the server asks with
``Retry-After``), and logged once per change of problem, not once per try.

The policies' CRD may not be installed yet, or be deleted: a 404 on their
list or watch, whether a Status or the plain-text ``404 page not found`` a
real server answers for a path no API serves, is an empty list, looked at
again every ``crd_retry`` seconds and logged once.

Objects are passed on as the API server sent them (JSON); the core parses
them (:mod:`egressd.core.cluster`), so an object egressd cannot read is
reported where it is used, never dropped here in silence.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import urllib3
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from egressd.adapters.kube import (
    Wait,
    blocking_json,
    log_step,
    raw_request,
    start_watch_thread,
    translate,
    wait_on,
    watch_events,
)
from egressd.core.backoff import WATCH_BACKOFF, Streak
from egressd.core.errors import ApiTimeout, LeaseError, LeaseExpired, LeaseNotFound
from egressd.core.kube_events import EVENT_NAMESPACE
from egressd.ports import Clock, ClusterEvent, ClusterResource

log = logging.getLogger(__name__)

GROUP, VERSION, PLURAL = "egressd.io", "v1alpha1", "egressgatewaypolicies"

#: The collection of each resource, cluster-wide (list and watch).
PATHS: Mapping[ClusterResource, str] = {
    "policies": f"/apis/{GROUP}/{VERSION}/{PLURAL}",
    "nodes": "/api/v1/nodes",
    "namespaces": "/api/v1/namespaces",
    "pods": "/api/v1/pods",
}

Emit = Callable[[ClusterEvent | BaseException], None]


class KubeCluster:
    """:class:`egressd.ports.ClusterSource` over the official client."""

    def __init__(
        self,
        api: k8s.ApiClient,
        *,
        clock: Clock,
        api_timeout: float = 5.0,
        list_timeout: float = 30.0,
        watch_timeout: int = 240,
        watch_idle: float = 60.0,
        crd_retry: float = 10.0,
        workers: int = 2,
        draw: Callable[[], float] = random.random,
        wait: Wait = wait_on,
    ) -> None:
        self._api = api
        self._clock = clock
        self._api_timeout = api_timeout
        self._list_timeout = list_timeout
        self._watch_timeout = watch_timeout
        self._watch_idle = watch_idle
        self._crd_retry = crd_retry
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="egressd-cluster-api")
        self._closed = threading.Event()
        self._draw = draw
        self._wait = wait

    # --- requests -----------------------------------------------------------
    #
    # Raw requests through the client's transport (auth, TLS, pool), not the
    # typed CoreV1Api: that module alone takes the best part of a second to
    # import, which a restarted daemon cannot spare before it re-arms the
    # fences of the IPs it still serves.

    def _read(self, method: str, path: str, timeout: float, **kw: Any) -> Any:
        response = raw_request(self._api, method, path, timeout, **kw)
        response.read()
        return response

    def _watch_once(self, resource: ClusterResource, rv: str, stop: threading.Event) -> Any:
        query = [
            ("watch", "true"),
            ("resourceVersion", rv),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", self._watch_timeout),
        ]
        timeout = (max(self._api_timeout, 1.0), self._watch_idle)
        response = raw_request(self._api, "GET", PATHS[resource], timeout, query=query)
        if response.status >= 400:
            error = ApiException(status=response.status, reason=response.reason)
            error.body = response.read()
            raise translate(error, "watch")
        return watch_events(response.response, stop)

    async def watch(self) -> AsyncIterator[ClusterEvent]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[ClusterEvent | BaseException] = asyncio.Queue()
        stop = threading.Event()

        def emit(item: ClusterEvent | BaseException) -> None:
            with contextlib.suppress(RuntimeError):  # loop closed during shutdown
                loop.call_soon_threadsafe(queue.put_nowait, item)

        for resource in PATHS:
            start_watch_thread(
                f"egressd-watch-{resource}", partial(self._watch_thread, resource, emit, stop), emit, stop
            )
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()

    def _watch_thread(self, resource: ClusterResource, emit: Emit, stop: threading.Event) -> None:
        rv = ""
        streak = Streak(WATCH_BACKOFF, self._draw)
        missing_crd = False
        path = PATHS[resource]
        while not stop.is_set() and not self._closed.is_set():
            started = self._clock.monotonic()
            problem: BaseException | None = None
            idle = False
            try:
                if not rv:
                    try:
                        listing = blocking_json(lambda t: self._read("GET", path, t), self._list_timeout)
                    except LeaseNotFound:
                        if resource != "policies":
                            raise
                        if not missing_crd:
                            log.warning(
                                "the EgressGatewayPolicy CRD is not installed (404 on %s.%s); "
                                "serving no policy, looking again every %.0fs",
                                PLURAL,
                                GROUP,
                                self._crd_retry,
                            )
                            emit(ClusterEvent(resource=resource, type="RELISTED"))
                        missing_crd = True
                        streak.reset()  # not a failure of the watch: a state, logged above
                        self._wait(stop, self._crd_retry)
                        continue
                    if missing_crd:
                        log.info("the EgressGatewayPolicy CRD is installed now")
                        missing_crd = False
                    items = tuple(item for item in listing.get("items") or [] if isinstance(item, Mapping))
                    rv = str((listing.get("metadata") or {}).get("resourceVersion") or "")
                    emit(ClusterEvent(resource=resource, type="RELISTED", objects=items))
                    started = self._clock.monotonic()
                for event in self._watch_once(resource, rv, stop):
                    rv = event.pop("_rv", rv) or rv
                    if event:
                        emit(ClusterEvent(resource=resource, type=event["type"], object=event["object"]))
            except LeaseExpired as exc:
                rv = ""
                problem = exc
            except LeaseNotFound as exc:
                # the collection is gone (the CRD deleted under an open watch):
                # list again, which takes the "not installed" path above
                rv = ""
                problem = exc
            except (urllib3.exceptions.ReadTimeoutError, TimeoutError):
                idle = True  # a quiet watch: reconnect from rv
            except (LeaseError, urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
                problem = exc
            if stop.is_set():
                return
            ran = self._clock.monotonic() - started
            ended = streak.ran(ran)
            if ended:
                log.info("%s watch healthy again after %d failed attempt(s)", resource, ended)
            if problem is None and not idle and ran < min(streak.healthy_after, self._watch_timeout):
                problem = EOFError(f"the watch ended after {ran:.1f}s")
            if problem is None:
                continue  # a watch that ran its course, or sat idle: reconnect at once
            step = streak.failed(type(problem).__name__, retry_after=getattr(problem, "retry_after", None))
            log_step(log, f"{resource} watch", problem, step, rv)
            self._wait(stop, step.delay)

    async def snapshot(self) -> dict[ClusterResource, tuple[Mapping[str, Any], ...]]:
        """Every object of each resource, listed once (for ``egressd status``,
        ``handoff`` and ``drain`` in the Kubernetes mode). Policies are empty
        when their CRD is not installed."""
        loop = asyncio.get_running_loop()
        out: dict[ClusterResource, tuple[Mapping[str, Any], ...]] = {}
        for resource in PATHS:
            try:
                listing = await loop.run_in_executor(
                    self._executor,
                    blocking_json,
                    lambda t, path=PATHS[resource]: self._read("GET", path, t),
                    self._list_timeout,
                )
            except LeaseNotFound:
                if resource != "policies":
                    raise
                listing = {}
            out[resource] = tuple(item for item in listing.get("items") or [] if isinstance(item, Mapping))
        return out

    # --- writes --------------------------------------------------------------

    async def write_policy_status(
        self, name: str, status: Mapping[str, Any], resource_version: str, *, deadline: float
    ) -> Mapping[str, Any]:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "EgressGatewayPolicy",
            "metadata": {"name": name, "resourceVersion": resource_version},
            "status": dict(status),
        }
        path = f"{PATHS['policies']}/{name}/status"
        return await self._call(deadline, lambda t: self._read("PUT", path, t, body=body))

    async def create_event(self, event: Mapping[str, Any], *, deadline: float) -> None:
        path = f"/api/v1/namespaces/{EVENT_NAMESPACE}/events"
        await self._call(deadline, lambda t: self._read("POST", path, t, body=dict(event)))

    async def _call(self, deadline: float, fn: Callable[[float], Any]) -> dict[str, Any]:
        remaining = deadline - self._clock.monotonic()
        if remaining <= 0:
            raise ApiTimeout("deadline passed before the call")
        timeout = min(self._api_timeout, remaining)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout + 0.05):
                return await loop.run_in_executor(self._executor, blocking_json, fn, timeout)
        except TimeoutError as exc:
            raise ApiTimeout(f"no answer within {timeout:.3f}s") from exc

    async def close(self) -> None:
        self._closed.set()
        self._executor.shutdown(wait=False, cancel_futures=True)
