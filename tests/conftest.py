"""What tests of several tiers share: the one rule for tests that need the
kernel, an embedded API server, and the real control plane.

A test marked ``kernel`` builds network namespaces (the kernel tests, the lab,
the drills). It runs only as root on a host where ``ip netns`` can add and
delete a namespace; elsewhere it is skipped, with the reason. The check runs
once, and only when such a test was collected.

A test marked ``kube_apiserver`` runs against a real kube-apiserver and etcd
(:mod:`egressd.lab.kubecontrol`), built by ``scripts/build-kube``. One control
plane serves the whole run (it takes seconds to start); a test keeps to
namespaces and names of its own and removes the cluster-wide objects it makes.
Without the built programs such a test is skipped with the reason, except
under CI (``CI=true``), where a missing build is an error.
"""

from __future__ import annotations

import functools
import os
import secrets
import shutil
import subprocess
from collections.abc import Callable, Iterator

import pytest

from egressd.apiserver.server import LabApiServer, LabSettings
from egressd.lab.kubecontrol import ControlPlane, ControlPlaneError, KubeBinaries


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


@functools.cache
def kube_unavailable() -> str | None:
    """Why the real control plane cannot run here, or ``None`` when it can."""
    if shutil.which("openssl") is None:
        return "the kube_apiserver tests need openssl (certificates)"
    try:
        KubeBinaries.find()
    except ControlPlaneError as exc:
        return str(exc)
    return None


def _skip_unless(items: list[pytest.Item], marker: str, why: Callable[[], str | None]) -> None:
    marked = [item for item in items if item.get_closest_marker(marker) is not None]
    reason = why() if marked else None
    if reason is None:
        return
    skip = pytest.mark.skip(reason=reason)
    for item in marked:
        item.add_marker(skip)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    _skip_unless(items, "kernel", kernel_unavailable)
    if os.environ.get("CI", "").lower() not in ("true", "1"):
        _skip_unless(items, "kube_apiserver", kube_unavailable)


@pytest.fixture(scope="session")
def kube_control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """etcd and kube-apiserver on loopback with TLS, Node,RBAC and
    ServiceAccount tokens, for the whole run; stopped even when tests fail."""
    if (reason := kube_unavailable()) is not None:
        pytest.fail(f"CI runs the kube_apiserver tests: {reason}")
    with ControlPlane(tmp_path_factory.mktemp("kube")) as control_plane:
        yield control_plane


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
