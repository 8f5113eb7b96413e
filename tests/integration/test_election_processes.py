"""Three ``egressd run`` processes against an ``egressd apiserver`` process.

Default timings (leaseDuration 2.5 s, renewDeadline 1 s, retryPeriod 0.25 s).
The daemons run the recording data plane and journal every operation with
CLOCK_MONOTONIC timestamps, which are comparable with this process's
``time.monotonic()``; the journals prove or refute the invariant exactly.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from egressd.core.model import Timing
from egressd.core.node_lease import is_node_lease
from tests.journal import as_claims, intervals, overlaps, read_journals

pytestmark = pytest.mark.integration

NODES = ("kind-worker3", "kind-worker4", "kind-worker5")
IPS = ("172.18.0.42", "172.18.0.43")
T = Timing()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http(method: str, url: str, body: dict[str, Any] | None = None, timeout: float = 2.0) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.load(resp)


@dataclass
class Cluster:
    url: str
    tmp: Path
    api: subprocess.Popen[bytes]
    daemons: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    samples: list[tuple[float, dict[str, str | None]]] = field(default_factory=list)
    _sampling: bool = True

    extra: dict[str, Any] = field(default_factory=dict)

    def start(self, node: str) -> None:
        cfg = self.tmp / f"{node}.yaml"
        cfg.write_text(
            json.dumps(
                self.extra
                | {
                    "node": {"name": node, "address": f"10.0.0.{NODES.index(node) + 3}"},
                    "kubernetes": {"access": "url", "url": self.url, "namespace": "egressd"},
                    "metrics": {"listen": ""},
                    "groups": [
                        {
                            "name": "outpost",
                            "egressIPs": list(IPS),
                            "interface": "net0",
                            "candidates": list(NODES),
                            "sourceCIDRs": ["10.244.1.0/24"],
                            "destinationCIDRs": ["172.18.0.0/16"],
                        }
                    ],
                }
            )
        )
        with (self.tmp / f"{node}.log").open("ab") as log:
            self.daemons[node] = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "egressd.cli.main",
                    "run",
                    "--config",
                    str(cfg),
                    "--dataplane",
                    "record",
                    "--journal",
                    str(self.journal(node)),
                ],
                stdout=log,
                stderr=log,
            )

    def journal(self, node: str) -> Path:
        return self.tmp / f"{node}.journal"

    def holders(self) -> dict[str, str | None]:
        items = http("GET", f"{self.url}/apis/coordination.k8s.io/v1/namespaces/egressd/leases")["items"]
        claims = [i for i in items if not is_node_lease(i["metadata"]["name"])]
        by_ip = {i["metadata"]["annotations"]["egressd.io/egress-ip"]: i["spec"].get("holderIdentity") for i in claims}
        return {ip: by_ip.get(ip) for ip in IPS}

    def sample_forever(self) -> None:
        while self._sampling:
            with contextlib.suppress(OSError, urllib.error.URLError):  # a paused API server
                self.samples.append((time.monotonic(), self.holders()))
            time.sleep(0.02)

    def wait_owners(self, timeout: float = 15.0) -> dict[str, str | None]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                holders = self.holders()
                if all(holders.values()):
                    return holders
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.02)
        raise AssertionError(f"not every IP got an owner within {timeout}s")

    def wait_holder_change(self, ip: str, old: str, timeout: float) -> tuple[str, float]:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            holder = self.holders()[ip]
            if holder and holder != old:
                return holder, time.monotonic() - started
            time.sleep(0.005)
        raise AssertionError(f"{ip} still not taken over from {old} after {timeout}s")

    def ops(self) -> list[dict[str, Any]]:
        """Every node's journal; a refresh of many addresses as a claim of each (as before it was)."""
        return list(as_claims(read_journals(self.journal(n) for n in NODES)))

    def assert_safe(self) -> None:
        bad = overlaps(intervals(self.ops(), until=time.monotonic()))
        assert not bad, f"two nodes served one IP at once: {bad}"


@contextlib.contextmanager
def cluster_with(tmp_path: Path, extra: dict[str, Any] | None = None) -> Iterator[Cluster]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    tmp_path.mkdir(parents=True, exist_ok=True)
    with (tmp_path / "apiserver.log").open("ab") as api_log:
        api = subprocess.Popen(
            [sys.executable, "-m", "egressd.cli.main", "apiserver", "--listen", f"127.0.0.1:{port}"],
            stdout=api_log,
            stderr=api_log,
        )
    c = Cluster(url=url, tmp=tmp_path, api=api, extra=extra or {})
    sampler = threading.Thread(target=c.sample_forever, daemon=True)
    try:
        end = time.monotonic() + 15
        while True:
            try:
                http("POST", f"{url}/api/v1/namespaces", {"metadata": {"name": "egressd"}})
                break
            except (OSError, urllib.error.URLError):
                if time.monotonic() > end:
                    raise
                time.sleep(0.05)
        for node in NODES:
            c.start(node)
        sampler.start()
        yield c
    finally:
        c._sampling = False
        os.kill(api.pid, signal.SIGCONT)
        for proc in [*c.daemons.values(), api]:
            if proc.poll() is None:
                proc.terminate()
        for proc in [*c.daemons.values(), api]:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if sampler.is_alive():
            sampler.join(2)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with cluster_with(tmp_path) as c:
        yield c


def test_every_ip_has_exactly_one_owner_at_every_sample(cluster: Cluster) -> None:
    cluster.wait_owners()
    time.sleep(3.0)
    settled = [s for s in cluster.samples if all(s[1].values())]
    assert settled, "no samples"
    first = settled[0][0]
    for at, holders in cluster.samples:
        if at >= first:
            assert all(holders.values()), f"an IP had no owner at {at - first:.3f}s: {holders}"
    # spread: with rendezvous preference the two IPs do not land on one node
    assert len(set(cluster.holders().values())) == 2
    cluster.assert_safe()


def test_sigkilled_owner_is_replaced_within_lease_duration_plus_two_retry_periods(cluster: Cluster) -> None:
    owners = cluster.wait_owners()
    time.sleep(1.0)
    victim = owners[IPS[0]]
    assert victim is not None
    killed_at = time.monotonic()
    cluster.daemons[victim].send_signal(signal.SIGKILL)
    new, gap = cluster.wait_holder_change(IPS[0], victim, timeout=10)
    assert new != victim
    bound = T.lease_duration + 2 * T.retry_period
    assert gap <= bound + 0.2, f"takeover took {gap:.3f}s (bound {bound:.2f}s)"
    assert gap >= T.lease_duration - T.retry_period - 0.05, f"took over too early: {gap:.3f}s"

    # the victim's kernel fence (modelled) had ended before the new owner claimed
    def claims() -> list[float]:
        return [
            op["t"]
            for op in cluster.ops()
            if op["node"] == new and op["op"] == "claim" and op["ip"] == IPS[0] and op["t"] > killed_at
        ]

    deadline = time.monotonic() + 2.0  # the lease moves first, the new owner's claim follows it
    while not claims() and time.monotonic() < deadline:
        time.sleep(0.01)
    first_claim = min(claims())
    assert first_claim > killed_at
    cluster.assert_safe()


def test_sigterm_hands_off_in_well_under_a_second(cluster: Cluster) -> None:
    owners = cluster.wait_owners()
    time.sleep(0.5)
    victim = owners[IPS[1]]
    assert victim is not None
    cluster.daemons[victim].send_signal(signal.SIGTERM)
    _, gap = cluster.wait_holder_change(IPS[1], victim, timeout=5)
    assert gap < 0.5, f"graceful handoff took {gap:.3f}s"
    assert cluster.daemons[victim].wait(5) == 0
    releases = [op for op in cluster.ops() if op["node"] == victim and op["op"] == "release"]
    assert {op["ip"] for op in releases} >= {IPS[1]}
    cluster.assert_safe()


def test_paused_api_server_owner_steps_down_and_nobody_takes_over(cluster: Cluster) -> None:
    cluster.wait_owners()
    time.sleep(1.0)
    os.kill(cluster.api.pid, signal.SIGSTOP)
    stopped_at = time.monotonic()
    time.sleep(T.lease_duration + 1.0)
    os.kill(cluster.api.pid, signal.SIGCONT)
    resumed_at = time.monotonic()
    ops = cluster.ops()
    for ip in IPS:
        releases = [op["t"] for op in ops if op["op"] == "release" and op["ip"] == ip and op["t"] > stopped_at]
        assert releases, f"owner of {ip} did not step down while the API was frozen"
        assert releases[0] - stopped_at <= T.renew_deadline + 0.15, (
            f"{ip} stepped down after {releases[0] - stopped_at:.3f}s"
        )
        claims = [op for op in ops if op["op"] == "claim" and op["ip"] == ip and releases[0] < op["t"] < resumed_at]
        assert not claims, f"someone served {ip} while the API was frozen: {claims}"
    cluster.wait_owners(timeout=10)
    cluster.assert_safe()


def egressd_cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "egressd.cli.main", *argv], capture_output=True, text=True, timeout=60, check=False
    )


def test_handoff_and_drain_move_ips_without_overlap(cluster: Cluster) -> None:
    owners = cluster.wait_owners()
    time.sleep(0.5)
    ip = IPS[0]
    target = next(n for n in NODES if n != owners[ip])
    cfg = cluster.tmp / f"{target}.yaml"
    out = egressd_cli("handoff", ip, "--to", target, "--config", str(cfg))
    assert out.returncode == 0, out.stderr
    assert cluster.holders()[ip] == target
    moved_ms = float(out.stdout.split("after ")[1].split(" ms")[0])
    assert moved_ms < 1000, out.stdout
    drained = egressd_cli("drain", "--config", str(cfg))
    assert drained.returncode == 0, drained.stderr
    assert target not in cluster.holders().values()
    cluster.assert_safe()


def test_ownership_reaches_a_real_mqtt_subscriber(tmp_path: Path) -> None:
    """The daemons publish retained per-IP owners and an event stream (mosquitto from Debian)."""
    import asyncio  # noqa: PLC0415

    from tests.adapters.test_mqtt import retained, start_broker  # noqa: PLC0415

    (tmp_path / "broker").mkdir()
    broker = start_broker(tmp_path / "broker")
    try:
        port = broker.port
        with cluster_with(tmp_path, {"mqtt": {"host": "127.0.0.1", "port": port, "cluster": "it"}}) as c:
            owners = c.wait_owners()
            time.sleep(1.0)
            for ip in IPS:
                body = asyncio.run(retained(port, f"egressd/it/ip/{ip}", wait=1.0))
                assert body is not None and body["owner"] == owners[ip], body
            victim = owners[IPS[0]]
            assert victim is not None
            c.daemons[victim].send_signal(signal.SIGTERM)
            new, _ = c.wait_holder_change(IPS[0], victim, timeout=5)
            time.sleep(1.0)
            body = asyncio.run(retained(port, f"egressd/it/ip/{IPS[0]}", wait=1.0))
            assert body is not None and body["owner"] == new, body
    finally:
        broker.stop()


LEASES = "/apis/coordination.k8s.io/v1/namespaces/egressd/leases"


def lease_url(cluster: Cluster, ip: str) -> str:
    return f"{cluster.url}{LEASES}/egressd-{ip.replace('.', '-')}"


def rewrite_lease(cluster: Cluster, ip: str, change: Any) -> float:
    """Apply ``change`` to the IP's Lease as another client would (retrying lost
    races with the renewing owner); when it was written (monotonic)."""
    for _ in range(100):
        obj = http("GET", lease_url(cluster, ip))
        change(obj)
        try:
            http("PUT", lease_url(cluster, ip), obj)
        except urllib.error.HTTPError as exc:
            if exc.code == 409:
                continue
            raise
        return time.monotonic()
    raise AssertionError(f"could not rewrite the lease of {ip}")


def test_a_poisoned_lease_kills_no_daemon_and_its_ip_is_owned_once_deleted(cluster: Cluster) -> None:
    """A 400-digit lease-duration-ms once killed every gateway's member and lease watch."""
    owners = cluster.wait_owners()
    time.sleep(0.5)
    poisoned, other = IPS
    owner = owners[poisoned]

    def poison(obj: dict[str, Any]) -> None:
        obj["metadata"]["annotations"]["egressd.io/lease-duration-ms"] = "9" * 400

    poisoned_at = rewrite_lease(cluster, poisoned, poison)
    time.sleep(T.lease_duration + 1.0)
    ops = [op for op in cluster.ops() if op.get("ip") == poisoned and op["t"] > poisoned_at]
    released = [op for op in ops if op["op"] == "release"]
    assert [op["node"] for op in released] == [owner], f"the owner did not step down alone: {released}"
    assert released[0]["t"] - poisoned_at <= T.renew_deadline + 0.3
    assert not [op for op in ops if op["op"] == "claim"], "someone served an IP whose lease it cannot read"
    assert all(proc.poll() is None for proc in cluster.daemons.values()), "a daemon exited"
    assert cluster.holders()[other] == owners[other]
    deleted_at = time.monotonic()
    http("DELETE", lease_url(cluster, poisoned))
    cluster.wait_owners(timeout=T.lease_duration + 2.0)
    claims = [op for op in cluster.ops() if op.get("ip") == poisoned and op["op"] == "claim" and op["t"] > deleted_at]
    assert claims, "nobody served the IP after its poisoned lease was deleted"
    assert all(proc.poll() is None for proc in cluster.daemons.values())
    cluster.assert_safe()


def test_a_takeover_at_the_largest_int32_epoch_wraps_and_succeeds(cluster: Cluster) -> None:
    """leaseTransitions = 2147483647 written by another client: the next holder
    writes 0 (the API refuses 2147483648) and the IP is owned again."""
    owners = cluster.wait_owners()
    time.sleep(0.5)
    ip = IPS[0]
    victim = owners[ip]
    assert victim is not None

    def at_int32_max(obj: dict[str, Any]) -> None:
        obj["spec"]["leaseTransitions"] = 2**31 - 1

    rewrite_lease(cluster, ip, at_int32_max)
    time.sleep(2 * T.retry_period)  # renewals keep the epoch
    assert http("GET", lease_url(cluster, ip))["spec"]["leaseTransitions"] == 2**31 - 1
    cluster.daemons[victim].send_signal(signal.SIGTERM)
    new, _ = cluster.wait_holder_change(ip, victim, timeout=T.lease_duration + 2.0)
    assert new != victim
    assert http("GET", lease_url(cluster, ip))["spec"]["leaseTransitions"] == 0
    cluster.assert_safe()
