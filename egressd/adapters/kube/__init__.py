"""Lease store over the official ``kubernetes`` client.

* Every call runs in a small bounded thread pool (the client blocks) with a
  per-call timeout no longer than ``api_timeout`` and never past the caller's
  deadline; urllib3's own retries are off.
* Retries live here and only here (tenacity): connection failures and 5xx are
  retried with a short jittered backoff while the deadline allows; a retry
  never outlives the deadline it serves. Timeouts are not retried (the write
  may have happened; the caller re-reads).
* Errors become egressd's own (see :mod:`egressd.core.errors`): 409 → LostRace,
  404 → LeaseNotFound, 410 → LeaseExpired, timeouts → ApiTimeout, refused /
  reset / 5xx → ApiUnavailable, each chained to the library's exception.
* Responses are read as raw JSON (``_preload_content=False``) and validated by
  :func:`egressd.core.lease.record_from_object`; writes send the exact JSON
  egressd renders (MicroTime with six digits and ``Z``) through the client's
  transport.
* The watch runs in a thread of its own, bridged to the event loop by a
  queue. It lists first (a ``sync`` event), then watches from the list's
  resourceVersion, reconnects from the last seen one (bookmarks advance it),
  and lists again after 410 Expired.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_random_exponential

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
from egressd.core.settings import KubeSettings
from egressd.ports import Clock, LeaseEvent

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Shortest useful remaining time for one more attempt.
_MIN_ATTEMPT = 0.02


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
        """Run ``fn(timeout)`` in the pool, retried on unavailability until the deadline."""
        loop = asyncio.get_running_loop()

        backoff = wait_random_exponential(multiplier=0.02, max=0.2)
        unavailable: ApiUnavailable | None = None

        def stop(state: RetryCallState) -> bool:
            return deadline - self._clock.monotonic() < 2 * _MIN_ATTEMPT

        def wait(state: RetryCallState) -> float:
            # never sleep into the time the next attempt needs
            return min(backoff(state), max(0.0, deadline - self._clock.monotonic() - _MIN_ATTEMPT))

        async for attempt in AsyncRetrying(
            stop=stop,
            wait=wait,
            retry=retry_if_exception_type(ApiUnavailable),
            reraise=True,
        ):
            with attempt:
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
                    self._last_failed = self._clock.monotonic()
                    unavailable = exc
                    raise
                except ApiTimeout:
                    self._last_failed = self._clock.monotonic()
                    raise
                self._last_ok = self._clock.monotonic()
                return result
        raise AssertionError("unreachable")  # pragma: no cover

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
        backoff = 0.05
        while not stop.is_set() and not self._closed.is_set():
            try:
                if not rv:
                    records, rv, problems = self._list_blocking()
                    emit(LeaseEvent(kind="sync", records=tuple(records), problems=problems))
                for event in self._watch_once(rv, stop):
                    self._watch_up = True
                    self._last_ok = self._clock.monotonic()
                    backoff = 0.05
                    rv = event.pop("_rv", rv)
                    if event:
                        emit(_to_lease_event(event))
            except LeaseExpired:
                log.info("lease watch: resourceVersion %s expired; listing again", rv)
                rv = ""
            except (urllib3.exceptions.ReadTimeoutError, TimeoutError) as exc:
                # silent for watch_idle: reconnect at once, quietly (an idle watch is normal)
                log.debug(
                    "lease watch silent for %.1fs (%s); reconnecting from resourceVersion %s", self._watch_idle, exc, rv
                )
                continue
            except (LeaseError, urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
                self._watch_up = False
                if stop.is_set():
                    return
                log.warning("lease watch interrupted (%s); reconnecting from resourceVersion %s", exc, rv or "-")
                stop.wait(backoff)
                backoff = min(backoff * 2, 1.0)

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
        return ApiUnavailable(f"{verb}: HTTP {status}: {message}")
    return LeaseError(f"{verb}: HTTP {status}: {message}")


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
