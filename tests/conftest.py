"""What tests of several tiers share: the one rule for tests that need the
kernel, and an embedded API server.

A test marked ``kernel`` builds network namespaces (the kernel tests, the lab,
the drills). It runs only as root on a host where ``ip netns`` can add and
delete a namespace; elsewhere it is skipped, with the reason. The check runs
once, and only when such a test was collected.
"""

from __future__ import annotations

import functools
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from egressd.apiserver.server import LabApiServer, LabSettings


@functools.cache
def kernel_unavailable() -> str | None:
    """Why the kernel tests cannot run here, or ``None`` when they can."""
    if os.geteuid() != 0:
        return "kernel tests need root (network namespaces)"
    if shutil.which("ip") is None:
        return "kernel tests need iproute2 (`ip`)"
    probe = f"egdprobe{secrets.token_hex(3)}"
    added = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, check=False)
    if added.returncode != 0:
        return f"kernel tests need network namespaces: `ip netns add` failed: {added.stderr.strip()}"
    subprocess.run(["ip", "netns", "delete", probe], capture_output=True, check=False)
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    kernel = [item for item in items if item.get_closest_marker("kernel") is not None]
    reason = kernel_unavailable() if kernel else None
    if reason is None:
        return
    skip = pytest.mark.skip(reason=reason)
    for item in kernel:
        item.add_marker(skip)


@pytest.fixture
def api_server() -> Iterator[LabApiServer]:
    """An embedded API server on its own thread (namespaces created on first
    use), stopped even when the test fails."""
    server = LabApiServer(LabSettings(auto_create_namespaces=True))
    server.start_in_thread()
    try:
        yield server
    finally:
        server.stop_in_thread()
