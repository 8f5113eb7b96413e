"""KubeCluster (the Kubernetes-mode watches) against the lab API server."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from egressd.adapters.clock import SystemClock
from egressd.adapters.kube.client import api_client, translate
from egressd.adapters.kube.cluster import KubeCluster
from egressd.apiserver.server import LabApiServer
from egressd.core import errors
from egressd.core.errors import ApiUnavailable, NotFound
from egressd.core.model import KubeSettings
from egressd.ports import ClusterEvent

CRD = yaml.safe_load((Path(__file__).resolve().parents[2] / "deploy" / "crd.yaml").read_text())
CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"


def call(api_server: LabApiServer, method: str, path: str, body: Any = None) -> None:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        api_server.url + path, data=data, headers={"Content-Type": "application/json"}, method=method
    )
    urllib.request.urlopen(req, timeout=5).close()


async def relisted(events: AsyncIterator[ClusterEvent], resource: str) -> ClusterEvent:
    async with asyncio.timeout(5):
        async for event in events:
            if event.resource == resource and event.type == "RELISTED":
                return event
    raise AssertionError("watch ended")


def test_a_404_of_either_form_is_not_found() -> None:
    """A real server answers a path no API serves with plain text, the lab's
    Status for a missing object is JSON: both are NotFound."""
    plain = ApiException(status=404, reason="Not Found")
    plain.body = "404 page not found\n"
    status = ApiException(status=404, reason="Not Found")
    status.body = json.dumps({"kind": "Status", "code": 404, "reason": "NotFound", "message": "gone"})
    assert isinstance(translate(plain, "watch"), NotFound)
    assert isinstance(translate(status, "watch"), NotFound)


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (401, errors.Unauthorized),
        (403, errors.Forbidden),
        (404, errors.NotFound),
        (409, errors.LostRace),
        (410, errors.ResourceExpired),
        (422, errors.Rejected),
        (429, errors.ApiUnavailable),
        (503, errors.ApiUnavailable),
    ],
)
def test_each_status_is_the_error_named_for_it(status: int, expected: type[errors.ApiError]) -> None:
    error = translate(ApiException(status=status, reason="x"), "call")
    assert type(error) is expected


def test_retry_after_is_read_from_the_header_or_the_status() -> None:
    header = ApiException(status=429, reason="Too Many Requests")
    header.headers = {"Retry-After": "3"}
    details = ApiException(status=503, reason="Service Unavailable")
    details.body = json.dumps({"kind": "Status", "code": 503, "details": {"retryAfterSeconds": 2}})
    bare = ApiException(status=500, reason="Internal Server Error")
    for exc, expected in ((header, 3.0), (details, 2.0), (bare, None)):
        error = translate(exc, "call")
        assert isinstance(error, ApiUnavailable) and error.retry_after == expected


async def test_a_deleted_crd_is_not_installed_looked_at_every_crd_retry(
    api_server: LabApiServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The CRD deleted under an open policies watch: a real server then answers
    the policies' path with a plain-text 404. The watch must take the "CRD not
    installed" path (one line, a look every crd_retry), not reconnect and warn
    every few tenths of a second."""
    caplog.set_level(logging.INFO, logger="egressd.adapters.kube")
    call(api_server, "POST", CRDS, CRD)
    waits: list[float] = []

    def wait(stop: threading.Event, seconds: float) -> bool:
        if threading.current_thread().name == "egressd-watch-policies":
            waits.append(seconds)
        return stop.wait(min(seconds, 0.02))  # the loop runs fast; what it asked for is recorded

    cluster = KubeCluster(
        api_client(KubeSettings(access="url", url=api_server.url)), clock=SystemClock(), crd_retry=10.0, wait=wait
    )
    events = cluster.watch()
    try:
        assert (await relisted(events, "policies")).objects == ()
        call(api_server, "DELETE", f"{CRDS}/{CRD['metadata']['name']}")
        assert (await relisted(events, "policies")).objects == ()
        async with asyncio.timeout(5):
            while len(waits) < 12:
                await asyncio.sleep(0.02)
        # at most two short waits on the way (the watch ended, then 404), then only crd_retry
        assert waits[2:] == [10.0] * len(waits[2:]), waits
        lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and "polic" in r.getMessage()]
        assert sum("CRD is not installed" in line for line in lines) == 1, lines
        assert len(lines) <= 2, lines
    finally:
        await events.aclose()  # type: ignore[attr-defined]
        await cluster.close()
