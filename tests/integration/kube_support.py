"""What the tests on the real control plane share: waiting with a deadline,
deleting at once, reading the claims' holders, running a daemon, and finding
calls the RBAC refused."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from egressd.lab.kubecontrol import KubeApi

R = TypeVar("R")

_REFUSED = re.compile(r"forbidden|HTTP 403|unauthorized|HTTP 401", re.IGNORECASE)


def wait(what: str, check: Callable[[], R | None], timeout: float, interval: float = 0.02) -> R:
    """``check()`` until it returns something truthy, within ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while True:
        last = check()
        if last:
            return last
        if time.monotonic() > end:
            raise AssertionError(f"not within {timeout:g}s: {what} (last: {last!r})")
        time.sleep(interval)


def leases(api: KubeApi, namespace: str) -> list[dict[str, Any]]:
    """Every Lease of ``namespace`` (claims and node leases)."""
    status, body = api.request("GET", f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases")
    assert status == 200, body
    return list(body["items"])


def holders(api: KubeApi, namespace: str, ips: Iterable[str]) -> dict[str, str | None]:
    """The holder named by the claim of each of ``ips`` (None: free or no claim)."""
    by_ip = {
        (i["metadata"].get("annotations") or {}).get("egressd.io/egress-ip"): i["spec"].get("holderIdentity")
        for i in leases(api, namespace)
    }
    return {ip: by_ip.get(ip) for ip in ips}


def delete(api: KubeApi, path: str) -> None:
    """Delete at once (no grace period); a missing object is fine."""
    body = {"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0}
    status, answer = api.request("DELETE", path, body)
    assert status in (200, 202, 404), f"DELETE {path}: {status} {answer}"


def start_daemon(config: Path, journal: Path, log: Path) -> subprocess.Popen[bytes]:
    """``egressd run`` with the recording data plane, its output in ``log``."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [
                sys.executable, "-m", "egressd.cli.main", "run", "--config", str(config),
                "--dataplane", "record", "--journal", str(journal),
            ],
            stdout=out, stderr=out, env=os.environ | {"PYTHONUNBUFFERED": "1"},
        )  # fmt: skip


def stop_daemon(proc: subprocess.Popen[bytes], sig: int) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def refused_calls(logs: Iterable[Path]) -> list[str]:
    """The log lines that report a call refused by authorization or authentication."""
    return [
        f"{log.name}: {line}"
        for log in logs
        if log.exists()
        for line in log.read_text(errors="replace").splitlines()
        if _REFUSED.search(line)
    ]
