"""The Kubernetes-mode inputs over the official client: EgressGatewayPolicies,
Nodes, Namespaces and Pods watched; policy status and Events written.

One :class:`egressd.adapters.kube.informer.Informer` per resource lists it
(a ``RELISTED`` event with every object), then watches from the list's
resourceVersion and lists again after 410 Expired.

The policies' CRD may not be installed yet, or be deleted: a 404 on their
list or watch, whether a Status or the plain-text ``404 page not found`` a
real server answers for a path no API serves, is an empty list, looked at
again every ``crd_retry`` seconds and logged once.

Objects are passed on as the API server sent them (JSON); the core parses
them (:mod:`egressd.core.kube_objects`), so an object egressd cannot read is
reported where it is used, never dropped here in silence.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from egressd.adapters.kube.client import blocking_json, raw_request, translate
from egressd.adapters.kube.informer import Informer, Pacing, Relist, Wait, stream, wait_on, watch_events
from egressd.core.errors import ApiTimeout, NotFound
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
        self._pacing = Pacing(clock, watch_timeout, watch_idle, draw, wait)

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

    def _watch_once(self, resource: ClusterResource, rv: str, stop: threading.Event) -> Iterator[dict[str, Any]]:
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

    def watch(self) -> AsyncIterator[ClusterEvent]:
        return stream({f"egressd-watch-{resource}": self._informer(resource) for resource in PATHS})

    def _informer(self, resource: ClusterResource) -> Informer[ClusterEvent]:
        return Informer[ClusterEvent](
            f"{resource} watch",
            relist=self._relister(resource),
            watch=partial(self._watch_once, resource),
            convert=partial(_to_cluster_event, resource),
            pacing=self._pacing,
            closed=self._closed,
            logger=log,
        )

    def _relister(self, resource: ClusterResource) -> Relist[ClusterEvent]:
        """The relist of one resource's informer: a ``RELISTED`` event with
        every object. A missing policy CRD is an empty list, looked at again
        every ``crd_retry`` seconds and logged once."""
        missing_crd = False
        path = PATHS[resource]

        def relist(emit: Callable[[ClusterEvent], None], stop: threading.Event) -> str | None:
            nonlocal missing_crd
            try:
                listing = blocking_json(lambda t: self._read("GET", path, t), self._list_timeout)
            except NotFound:
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
                self._pacing.wait(stop, self._crd_retry)
                return None
            if missing_crd:
                log.info("the EgressGatewayPolicy CRD is installed now")
                missing_crd = False
            items = tuple(item for item in listing.get("items") or [] if isinstance(item, Mapping))
            emit(ClusterEvent(resource=resource, type="RELISTED", objects=items))
            return str((listing.get("metadata") or {}).get("resourceVersion") or "")

        return relist

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
            except NotFound:
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


def _to_cluster_event(resource: ClusterResource, event: dict[str, Any]) -> ClusterEvent:
    """A decoded watch event (see :func:`egressd.adapters.kube.informer.watch_events`)."""
    return ClusterEvent(resource=resource, type=event["type"], object=event["object"])


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
