"""Fixtures for the lab API server: in a thread (blocking client) or on the
test's loop; and ``server``, the embedded or the real one, for the conformance tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from kubernetes.client import ApiClient, Configuration

from egressd.apiserver.server import LabApiServer, LabSettings
from tests.apiserver import servers

#: Short timings so that bookmark and history tests stay fast.
TEST_SETTINGS = LabSettings(bookmark_interval=0.2, history_size=50, watch_queue_size=20)


@pytest.fixture
def lab() -> Iterator[LabApiServer]:
    """A lab API server on its own thread and loop, stopped even when the test fails."""
    server = LabApiServer(TEST_SETTINGS)
    server.start_in_thread()
    try:
        yield server
    finally:
        server.stop_in_thread()


@pytest.fixture
def api(lab: LabApiServer) -> Iterator[ApiClient]:
    """An official-client ApiClient pointed at ``lab``."""
    client: Any = ApiClient(Configuration(host=lab.url))
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
async def alab() -> AsyncIterator[LabApiServer]:
    """A lab API server on the test's own event loop."""
    async with LabApiServer(TEST_SETTINGS) as server:
        yield server


@pytest.fixture
async def http(alab: LabApiServer) -> AsyncIterator[aiohttp.ClientSession]:
    """A raw HTTP session to ``alab``."""
    async with aiohttp.ClientSession(base_url=alab.url) as session:
        yield session


@pytest.fixture(params=["embedded", pytest.param("kube", marks=pytest.mark.kube_apiserver)])
def server(request: pytest.FixtureRequest) -> Iterator[servers.Server]:
    """The embedded API server or kube-apiserver (admin), with a namespace of
    the test's own; what the test listed for removal is deleted even when it fails."""
    if request.param == "kube":
        with servers.session(servers.kube(request.getfixturevalue("kube_control_plane"))) as handle:
            yield handle
        return
    lab = LabApiServer(TEST_SETTINGS)
    lab.start_in_thread()
    try:
        with servers.session(servers.embedded(lab)) as handle:
            yield handle
    finally:
        lab.stop_in_thread()
