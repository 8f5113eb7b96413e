"""API manners of KubeLeaseStore, counted: under a storm of 410, 429, 5xx, 409
or stalls, the requests a daemon sends stay within twice its steady rate.

The official client runs unchanged down to its REST layer, which is replaced
by :class:`FakeTransport`: it counts every request and answers it as the fault
says, and moves a fake clock by the time the answer takes. The store's waits
(tenacity's sleeps, the watch thread's backoff) run on the same fake clock, so
minutes of storm take milliseconds and the figures are requests per simulated
second, not wall time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import urllib3
from kubernetes.client.rest import RESTResponse

from egressd.adapters.kube.client import api_client
from egressd.adapters.kube.cluster import KubeCluster
from egressd.adapters.kube.leases import KubeLeaseStore
from egressd.core.backoff import UNANSWERED_BACKOFF
from egressd.core.errors import ApiError, ApiUnavailable, LostRace
from egressd.core.lease import held_by, lease_name, object_from_record
from egressd.core.model import KubeSettings, Timing
from egressd.ports import ClusterEvent, ClusterResource, LeaseEvent

NS = "egressd"
LATENCY = 0.005
"""Simulated seconds each answer takes."""
WATCH_IDLE = 10.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self._lock = threading.Lock()

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> datetime:
        return datetime(2026, 12, 4, tzinfo=UTC) + timedelta(seconds=self.now)

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += max(0.0, seconds)

    async def sleep(self, seconds: float) -> None:
        self.advance(seconds)
        await asyncio.sleep(0)


class FakeResponse:
    """What urllib3 hands the client: status, headers, body, a stream."""

    def __init__(
        self,
        status: int,
        body: Any = b"",
        headers: dict[str, str] | None = None,
        stream: Callable[[], Iterator[bytes]] | None = None,
    ) -> None:
        self.status = status
        self.reason = {200: "OK", 409: "Conflict", 429: "Too Many Requests", 500: "Internal Server Error"}.get(
            status, "Error"
        )
        self.data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.headers = headers or {}
        self._stream = stream

    def stream(self, amt: int = 4096, decode_content: bool = True) -> Iterator[bytes]:
        if self._stream is not None:
            yield from self._stream()
        else:
            yield self.data

    def release_conn(self) -> None:
        pass


def status(code: int, reason: str, message: str) -> dict[str, Any]:
    body: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code}
    return {**body, "reason": reason, "message": message}


class FakeTransport:
    """The client's REST layer, answering as ``fault`` says and counting requests."""

    def __init__(self, clock: FakeClock, fault: str, stop: threading.Event) -> None:
        self.clock = clock
        self.fault = fault
        self.stop = stop
        self.requests = 0
        self.rv = 10
        self.end = clock.now + WATCH_WINDOW
        """The watch thread is stopped once the clock passes this."""

    def request(
        self,
        method: str,
        url: str,
        headers: Any = None,
        body: Any = None,
        post_params: Any = None,
        _request_timeout: Any = None,
    ) -> RESTResponse:
        self.requests += 1
        self.clock.advance(LATENCY)
        try:
            return RESTResponse(self._answer(method, url, body, _request_timeout))
        finally:
            if self.clock.now >= self.end:
                self.stop.set()

    def close(self) -> None:
        pass

    def _answer(self, method: str, url: str, body: Any, timeout: Any) -> FakeResponse:
        watch = "watch=true" in url.lower()
        fault = self.fault
        if fault == "stall":
            read = timeout[1] if isinstance(timeout, tuple) else timeout
            self.clock.advance(float(read))
            raise urllib3.exceptions.ReadTimeoutError(None, url, "Read timed out.")  # type: ignore[arg-type]
        if fault == "500":
            return FakeResponse(500, status(500, "InternalError", "Internal error occurred"))
        if fault == "429":
            # what API Priority and Fairness answers: header and Status both
            answer = status(429, "TooManyRequests", "Too many requests, please try again later.")
            answer["details"] = {"retryAfterSeconds": 1}
            return FakeResponse(429, answer, {"Retry-After": "1"})
        if fault == "down":
            # nothing listens (or the listen queue is full): no answer at all
            raise urllib3.exceptions.NewConnectionError(None, "Failed to establish a new connection: refused")  # type: ignore[arg-type]
        if fault == "503-hour":
            return FakeResponse(503, status(503, "ServiceUnavailable", "come back later"), {"Retry-After": "3600"})
        if fault == "409" and method in ("PUT", "POST"):
            return FakeResponse(409, status(409, "Conflict", "the object has been modified"))
        if watch:
            return self._watch(fault)
        if method == "PUT":
            self.rv += 1
            answer = dict(body)
            answer["metadata"] = {**body["metadata"], "resourceVersion": str(self.rv)}
            return FakeResponse(200, answer)
        if url.split("?", maxsplit=1)[0].endswith("/leases"):
            return FakeResponse(200, {"kind": "LeaseList", "metadata": {"resourceVersion": str(self.rv)}, "items": []})
        return FakeResponse(200, object_from_record(replace(RECORD, resource_version=str(self.rv)), NS))

    def _watch(self, fault: str) -> FakeResponse:
        if fault == "410":
            gone = status(410, "Expired", "too old resource version: 1 (10)")
            line = json.dumps({"type": "ERROR", "object": gone}).encode() + b"\n"
            return FakeResponse(200, stream=lambda: iter([line]))
        if fault == "early-end":
            return FakeResponse(200, stream=lambda: iter(()))

        def idle() -> Iterator[bytes]:  # steady: nothing happens, the read times out after watch_idle
            yield from ()
            self.clock.advance(WATCH_IDLE)
            raise urllib3.exceptions.ReadTimeoutError(None, "watch", "Read timed out.")  # type: ignore[arg-type]

        return FakeResponse(200, stream=idle)


RECORD = replace(
    held_by(
        None,
        name=lease_name("172.18.0.42"),
        egress_ip="172.18.0.42",
        holder="gw-a",
        holder_address="10.0.0.1",
        incarnation="inc-a",
        lease_duration=2.5,
        now=datetime(2026, 12, 4, tzinfo=UTC),
    ),
    resource_version="10",
)


Wait = Callable[[threading.Event, float], bool]


def make_api(fault: str) -> tuple[Any, FakeTransport, FakeClock, threading.Event, Wait]:
    """An ApiClient whose REST layer is the counting fake, its clock, the stop
    flag, and a ``wait`` that advances the clock and stops at the window's end."""
    clock = FakeClock()
    stop = threading.Event()
    transport = FakeTransport(clock, fault, stop)
    api = api_client(KubeSettings(access="url", url="http://api.invalid"))
    api.rest_client = transport  # type: ignore[assignment]

    def wait(stop: threading.Event, seconds: float) -> bool:
        clock.advance(seconds)
        if clock.now >= transport.end:
            stop.set()
        return stop.is_set()

    return api, transport, clock, stop, wait


def make_store(fault: str, timing: Timing) -> tuple[KubeLeaseStore, FakeTransport, FakeClock, threading.Event]:
    api, transport, clock, stop, wait = make_api(fault)
    store = KubeLeaseStore(
        api, NS, clock=clock, api_timeout=timing.api_timeout, watch_idle=WATCH_IDLE, draw=lambda: 0.0, wait=wait
    )
    return store, transport, clock, stop


RENEW_WINDOW = 60.0
WATCH_WINDOW = 600.0
DEFAULT = Timing()
TIGHT = Timing(lease_duration=2.5, renew_deadline=0.31, retry_period=0.25, api_timeout=0.3)
"""renewDeadline just above 1.2 x retryPeriod (T2): the least room for retries."""


async def renew_rate(fault: str, timing: Timing) -> float:
    """Requests per simulated second of an owner renewing one lease the way
    a member does: write with the renew deadline, on a lost race read the
    lease, then wait a retry period."""
    store, transport, clock, _ = make_store(fault, timing)
    try:
        end = clock.now + RENEW_WINDOW
        start = clock.now
        while clock.now < end:
            started = clock.now
            try:
                await store.update(RECORD, deadline=started + timing.renew_deadline)
            except LostRace:
                with contextlib.suppress(ApiError):
                    await store.get(RECORD.name, deadline=clock.now + timing.api_timeout)
            except ApiError:
                pass
            await clock.sleep(timing.retry_period)
        return transport.requests / (clock.now - start)
    finally:
        await store.close()


def watch_rate(fault: str) -> float:
    """Requests per simulated second of the lease watch (list, watch, and
    whatever it does on a fault), run as its thread body until the window ends."""
    store, transport, clock, stop = make_store(fault, DEFAULT)
    start = clock.now
    events: list[LeaseEvent | BaseException] = []
    store._informer().run(events.append, stop)  # the thread's body, on this thread
    return transport.requests / (clock.now - start)


@pytest.mark.parametrize("timing", [DEFAULT, TIGHT], ids=["default", "tight"])
@pytest.mark.parametrize("fault", ["500", "429", "409", "stall"])
async def test_renewing_under_a_storm_stays_within_twice_the_steady_rate(fault: str, timing: Timing) -> None:
    steady = await renew_rate("steady", timing)
    stormy = await renew_rate(fault, timing)
    assert steady > 0.9 / (timing.retry_period + 2 * LATENCY)  # the harness renews as often as a member
    assert stormy <= 2 * steady, f"{fault}: {stormy:.2f} requests/s against {steady:.2f} steady"


@pytest.mark.parametrize("fault", ["410", "early-end", "500", "429"])
def test_the_lease_watch_under_a_storm_stays_within_twice_the_steady_rate(fault: str) -> None:
    steady = watch_rate("steady")
    stormy = watch_rate(fault)
    assert steady == pytest.approx(1 / WATCH_IDLE, rel=0.05)  # an idle watch reconnects every watch_idle
    assert stormy <= 2 * steady, f"{fault}: {stormy:.3f} requests/s against {steady:.3f} steady"


@pytest.mark.parametrize("fault", ["down", "stall"])
def test_the_lease_watch_asks_a_silent_api_at_most_every_two_seconds(fault: str) -> None:
    """A server that answers nothing (down, or paused) costs nothing to ask:
    the lease watch tries every 1 to 2 s after the time its try took, so it
    is back soon after the API returns, and never faster than that."""
    rate = watch_rate(fault)
    took = LATENCY if fault == "down" else 2.0  # a stalled list waits out its timeout
    fastest = 1 / (UNANSWERED_BACKOFF.cap / 2 + took)  # draw 0: the floor of equal jitter
    assert rate == pytest.approx(fastest, rel=0.05), f"{fault}: {rate:.3f} requests/s"
    assert rate <= 1.0


def test_the_lease_watch_is_back_within_the_cap_of_the_apis_return() -> None:
    """After ten minutes of a down API the lease watch lists again within
    UNANSWERED_BACKOFF.cap of the API's return (WATCH_BACKOFF's 30 s before)."""
    store, transport, clock, stop = make_store("down", DEFAULT)
    back = clock.now + 600.0
    listed: list[float] = []
    draws = iter(lambda: 0.999, None)  # the longest waits equal jitter allows

    def emit(event: LeaseEvent | BaseException) -> None:
        if isinstance(event, LeaseEvent) and event.kind == "sync":
            listed.append(clock.now)
            stop.set()

    original = transport._answer

    def answer(method: str, url: str, body: Any, timeout: Any) -> FakeResponse:
        if transport.fault == "down" and clock.now >= back:
            transport.fault = "steady"
        return original(method, url, body, timeout)

    transport._answer = answer  # type: ignore[method-assign]
    transport.end = back + 60.0
    informer = replace(store._informer(), pacing=replace(store._pacing, draw=lambda: next(draws)))
    informer.run(emit, stop)
    assert listed, "the watch never listed again"
    assert listed[0] - back <= UNANSWERED_BACKOFF.cap + 2 * LATENCY


@pytest.mark.parametrize("resource", ["policies", "pods"])
def test_the_cluster_watches_keep_the_long_backoff_for_a_silent_api(resource: ClusterResource) -> None:
    """Only the lease watch hurries back: the cluster watches ask a down API
    no more often than a refusing one."""
    assert cluster_watch_rate("down", resource) <= 2 * cluster_watch_rate("steady", resource)


async def test_a_429_asks_for_longer_than_the_renew_deadline_so_the_renew_reports_at_once() -> None:
    store, transport, clock, _ = make_store("429", DEFAULT)
    try:
        started = clock.now
        with pytest.raises(ApiUnavailable, match="retry after 1s") as caught:
            await store.update(RECORD, deadline=started + DEFAULT.renew_deadline)
        assert caught.value.retry_after == 1.0
        assert transport.requests == 1 and clock.now - started < 0.1  # no second try, no sleep past the deadline
        # the next renew inside that second sends nothing: the server asked for quiet
        with pytest.raises(ApiUnavailable, match="Retry-After"):
            await store.update(RECORD, deadline=clock.now + 0.5)
        assert transport.requests == 1
        # one whose deadline leaves room waits the rest of the second out, then asks
        transport.fault = "steady"
        before = clock.now
        await store.update(RECORD, deadline=clock.now + 2.0)
        assert transport.requests == 2 and clock.now - started >= 1.0 and clock.now > before
    finally:
        await store.close()


def cluster_watch_rate(fault: str, resource: ClusterResource) -> float:
    """The same for one of the Kubernetes-mode watches (KubeCluster)."""
    api, transport, clock, stop, wait = make_api(fault)
    cluster = KubeCluster(api, clock=clock, watch_idle=WATCH_IDLE, draw=lambda: 0.0, wait=wait)
    start = clock.now
    events: list[ClusterEvent | BaseException] = []
    cluster._informer(resource).run(events.append, stop)  # the thread's body, on this thread
    return transport.requests / (clock.now - start)


@pytest.mark.parametrize("resource", ["policies", "pods"])
@pytest.mark.parametrize("fault", ["410", "early-end", "500", "429", "stall"])
def test_the_cluster_watches_under_a_storm_stay_within_twice_the_steady_rate(
    fault: str, resource: ClusterResource
) -> None:
    steady = cluster_watch_rate("steady", resource)
    stormy = cluster_watch_rate(fault, resource)
    assert steady == pytest.approx(1 / WATCH_IDLE, rel=0.05)
    assert stormy <= 2 * steady, f"{fault}: {stormy:.3f} requests/s against {steady:.3f} steady"


async def test_a_retry_after_of_an_hour_holds_the_store_back_for_at_most_the_backoff_cap() -> None:
    store, transport, clock, _ = make_store("503-hour", DEFAULT)
    try:
        with pytest.raises(ApiUnavailable):
            await store.update(RECORD, deadline=clock.now + DEFAULT.renew_deadline)
        transport.fault = "steady"
        await clock.sleep(29.0)
        with pytest.raises(ApiUnavailable, match="Retry-After"):
            await store.update(RECORD, deadline=clock.now + DEFAULT.renew_deadline)
        await clock.sleep(1.1)
        assert (await store.update(RECORD, deadline=clock.now + DEFAULT.renew_deadline)).holder == "gw-a"
    finally:
        await store.close()
