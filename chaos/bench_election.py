"""Benchmark: API writes per second, daemon CPU and step-downs of G gateways electing N egress IPs.

Starts ``egressd apiserver`` and G daemons (``egressd run --dataplane record``: nothing is touched),
every one a candidate of one group of N egress IPs, with the default timings (or ``--timing FILE``,
a profile as ``egressd lab up`` takes it).

``--kernel`` gives the daemons the kernel data plane instead (``--dataplane kernel``: the egress
addresses with their lifetimes, the nftables SNAT and fence, steering, gratuitous ARP), so that
their CPU includes re-arming the kernel fences after every renew. Needs root. Everything runs in
network namespaces made for the run, ``egb-<hex>-<role>``: a bridge in ``sw``; the API server in
``cp`` (10.96.0.2); gateway i in ``gw<i>`` (10.96.0.<10+i> on ``net0``), each with one veth to the
bridge. Nothing is added to the root namespace, and the namespaces are removed with their
processes at the end, also on failure or Ctrl-C.

It waits until every IP is owned (at most
``--acquire-timeout`` seconds: a daemon that cannot keep up never gets there, and the window is
measured anyway), then for ``--seconds``:

* API writes per second: the API server's global resourceVersion advances by one per write;
* each daemon's CPU (utime + stime from /proc) in % of one core;
* step-downs in the window (each daemon's "stepped down" log lines): an owner that could not
  renew in time;
* the IPs served, as the daemons see it (their ``acquired``/``stepped-down``/... events), next to
  the IPs whose Lease names a holder: under overload a lease write can time out in the daemon
  and still be done by the server, so a Lease may name a holder that does not serve.

Every run is bounded: the acquisition by ``--acquire-timeout``, the window by ``--seconds``, and
the processes are ended and their temporary directory removed at the end (also on Ctrl-C). Run:

    python chaos/bench_election.py --ips 100 --gateways 2 --seconds 20

and it prints per run exactly the lines ``API writes per second: X``, ``daemon CPU: ...`` and
``step-downs in window: N`` (results: chaos/results/bench-election-mesh-before.md).
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyroute2.netns import setns

from egressd.core.config import parse_settings
from egressd.lab.netns import Namespaces, run_cmd
from egressd.lab.timing import resolve_timing

STEP_DOWN = "stepped down"
"""What a daemon logs when it gives an IP up because it could not renew (egressd.runtime.member)."""

EVENT = re.compile(r"egressd\.runtime\.sinks: event ([a-z-]+) ip=(\S+)")
"""A daemon's event log line (egressd.runtime.sinks): ``acquired`` starts serving an IP; ``stepped-down``,
``lost``, ``fenced`` and ``released`` end it."""
ENDS = frozenset({"stepped-down", "lost", "fenced", "released"})


def served(log: Path) -> set[str]:
    """The IPs a daemon serves by its own events so far."""
    ips: set[str] = set()
    for kind, ip in EVENT.findall(log.read_text(errors="replace")):
        if kind == "acquired":
            ips.add(ip)
        elif kind in ENDS:
            ips.discard(ip)
    return ips


def http(method: str, url: str, body: dict[str, Any] | None = None, timeout: float = 10.0) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.load(resp)


class Api:
    """HTTP to the API server: from this thread, or (``--kernel``) from one thread inside its namespace."""

    def __init__(self, url: str, ns: str | None) -> None:
        self.url = url
        self._pool = ThreadPoolExecutor(1, "bench-api", initializer=setns, initargs=(ns, 0)) if ns else None

    def __call__(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        if self._pool is None:
            return http(method, self.url + path, body)
        return self._pool.submit(http, method, self.url + path, body).result(15.0)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)


@dataclass
class Place:
    """Where the processes run: the root namespace (record data plane) or the run's namespaces."""

    api_ns: str | None
    api_host: str
    gateways: list[str | None]
    """Per gateway: its namespace (None: this one)."""
    addresses: list[str]
    """Per gateway: its node address."""

    def wrap(self, ns: str | None, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", ns, *argv] if ns else argv


KERNEL_NET = "10.96.0"
"""The /24 of the run's namespaces (``--kernel``): the API server at .2, gateway i at .10+i."""


@contextlib.contextmanager
def place(kernel: bool, gateways: int) -> Iterator[Place]:
    """The namespaces of a ``--kernel`` run, removed with their processes at the end; nothing
    otherwise."""
    if not kernel:
        yield Place(None, "127.0.0.1", [None] * gateways, [f"10.0.0.{i + 1}" for i in range(gateways)])
        return
    with Namespaces(prefix=f"egb-{secrets.token_hex(3)}-") as spaces:
        switch = spaces.switch("sw")
        cp = spaces.attach("cp", switch, [f"{KERNEL_NET}.2/24"])
        addresses = [f"{KERNEL_NET}.{10 + i}" for i in range(gateways)]
        names = [spaces.attach(f"gw{i}", switch, [f"{addresses[i]}/24"]) for i in range(gateways)]
        yield Place(cp, f"{KERNEL_NET}.2", list[str | None](names), addresses)


def kernel_addresses(ns: str | None) -> int:
    """Addresses on ``net0`` of a gateway's namespace that are egressd's (label ``net0:egd``)."""
    if ns is None:
        return 0
    out = run_cmd(["ip", "-n", ns, "-4", "-o", "addr", "show", "dev", "net0"], check=False)
    return sum(1 for line in out.splitlines() if "net0:egd" in line)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def node_config(
    index: int, gateways: int, ips: list[str], url: str, timing: dict[str, Any], address: str
) -> dict[str, Any]:
    names = [f"bench-{i}" for i in range(gateways)]
    config: dict[str, Any] = {
        "node": {"name": names[index], "address": address},
        "kubernetes": {"access": "url", "url": url, "namespace": "egressd"},
        "metrics": {"listen": ""},
        "groups": [
            {
                "name": "bench",
                "egressIPs": ips,
                "interface": "net0",
                "candidates": names,
                "sourceCIDRs": ["10.244.0.0/16"],
                "destinationCIDRs": ["192.0.2.0/24"],
            }
        ],
    }
    if timing:
        config["timing"] = timing
    return config


LEASES = "/apis/coordination.k8s.io/v1/namespaces/egressd/leases"


def owned(api: Api) -> tuple[int, dict[str, int]]:
    """IPs with a holder, and how many each node holds."""
    items = api("GET", LEASES)["items"]
    per: dict[str, int] = {}
    for item in items:
        if item["metadata"]["name"].startswith("egressd-node-"):
            continue  # a gateway's node lease, not a claim
        holder = item["spec"].get("holderIdentity")
        if holder:
            per[holder] = per.get(holder, 0) + 1
    return sum(per.values()), per


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--ips", "--leases", dest="ips", type=int, default=100, help="egress IPs (default 100)")
    parser.add_argument("--gateways", type=int, default=2, help="daemons, all candidates (default 2)")
    parser.add_argument("--seconds", type=float, default=20.0, help="measuring window (default 20)")
    parser.add_argument("--acquire-timeout", type=float, default=60.0, help="wait for every IP at most (default 60)")
    parser.add_argument("--timing", metavar="FILE", help="a timing profile (config/timing-fast.yaml)")
    parser.add_argument(
        "--kernel", action="store_true", help="the kernel data plane, in namespaces made for the run (root)"
    )
    parser.add_argument("--keep-logs", metavar="DIR", help="copy the daemons' logs into DIR at the end")
    args = parser.parse_args()
    if not 1 <= args.ips <= 65_000 or not 1 <= args.gateways <= 50 or not 0 < args.seconds <= 3600:
        parser.error("--ips 1..65000, --gateways 1..50, --seconds up to 3600")
    if args.kernel and os.geteuid() != 0:
        parser.error("--kernel needs root (network namespaces)")
    try:
        with place(args.kernel, args.gateways) as where:
            return bench(args, where)
    except KeyboardInterrupt:
        print("interrupted; the processes and namespaces are removed", file=sys.stderr)
        return 130


def bench(args: argparse.Namespace, where: Place) -> int:
    timing = resolve_timing(args.timing) if args.timing else {}
    retry = parse_settings({"node": {"name": "n"}, "timing": timing}).timing.retry_period
    if where.api_ns is None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    else:
        port = 6443  # the namespace is the run's own
    url = f"http://{where.api_host}:{port}"
    api = Api(url, where.api_ns)
    ips = [str(ipaddress.ip_address("10.200.0.1") + i) for i in range(args.ips)]
    tmp = Path(tempfile.mkdtemp(prefix="egressd-bench-"))
    procs: list[subprocess.Popen[bytes]] = []
    daemons: list[subprocess.Popen[bytes]] = []
    logs = [tmp / f"bench-{i}.log" for i in range(args.gateways)]
    dataplane = "kernel" if args.kernel else "record"
    try:
        procs.append(
            subprocess.Popen(
                where.wrap(where.api_ns, [sys.executable, "-m", "egressd.cli.main", "apiserver", "--listen", url[7:]]),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        for _ in range(200):
            try:
                api("POST", "/api/v1/namespaces", {"metadata": {"name": "egressd"}})
                break
            except OSError:
                time.sleep(0.05)
        for i in range(args.gateways):
            cfg = tmp / f"bench-{i}.yaml"
            cfg.write_text(json.dumps(node_config(i, args.gateways, ips, url, timing, where.addresses[i])))
            argv = [sys.executable, "-m", "egressd.cli.main", "run", "--config", str(cfg), "--dataplane", dataplane]
            with logs[i].open("wb") as log:
                daemon = subprocess.Popen(where.wrap(where.gateways[i], argv), stdout=log, stderr=log)
            procs.append(daemon)
            daemons.append(daemon)
        acquire(args, api, logs)
        measure(args, api, logs, procs[0], daemons, retry, where, dataplane)
        return 0
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        api.close()
        if args.keep_logs:
            Path(args.keep_logs).mkdir(parents=True, exist_ok=True)
            for kept in logs:
                if kept.exists():
                    shutil.copy(kept, Path(args.keep_logs) / kept.name)
        shutil.rmtree(tmp, ignore_errors=True)  # the daemons' configs and logs


def acquire(args: argparse.Namespace, api: Api, logs: list[Path]) -> None:
    """Wait until every IP is owned and served (at most ``--acquire-timeout``); say how it went."""
    started = time.monotonic()
    count, per, serving = 0, dict[str, int](), 0
    while time.monotonic() - started < args.acquire_timeout:
        count, per = owned(api)
        serving = sum(len(served(p)) for p in logs)
        if count == args.ips and serving == args.ips:
            break
        time.sleep(0.2)
    took = time.monotonic() - started
    if count == args.ips and serving == args.ips:
        print(f"all {args.ips} IPs owned and served in {took:.1f} s (incl. process start): {per}")
    else:
        print(
            f"after {took:.0f} s: {count} of {args.ips} Leases name a holder {per}, the daemons serve "
            f"{serving}; measuring the window anyway"
        )
    time.sleep(1.0)


def measure(
    args: argparse.Namespace,
    api: Api,
    logs: list[Path],
    apiserver: subprocess.Popen[bytes],
    daemons: list[subprocess.Popen[bytes]],
    retry: float,
    where: Place,
    dataplane: str,
) -> None:
    """The window: API writes, CPU and step-downs, printed."""
    rv0 = int(api("GET", LEASES)["metadata"]["resourceVersion"])
    down0 = [p.read_text(errors="replace").count(STEP_DOWN) for p in logs]
    load0 = os.getloadavg()[0]
    api0 = cpu_seconds(apiserver.pid)
    cpu0, t0 = [cpu_seconds(d.pid) for d in daemons], time.monotonic()
    time.sleep(args.seconds)
    rv1 = int(api("GET", LEASES)["metadata"]["resourceVersion"])
    cpu1, t1 = [cpu_seconds(d.pid) for d in daemons], time.monotonic()
    api1 = cpu_seconds(apiserver.pid)
    down1 = [p.read_text(errors="replace").count(STEP_DOWN) for p in logs]
    end_count, end_per = owned(api)
    elapsed = t1 - t0
    cpu = ", ".join(
        f"bench-{i} {(b - a) / elapsed * 100:.1f} %" for i, (a, b) in enumerate(zip(cpu0, cpu1, strict=True))
    )
    print(f"IPs: {args.ips}  gateways: {args.gateways}  window: {elapsed:.1f} s  retryPeriod: {retry:g} s")
    print(f"data plane: {dataplane}")
    print(f"API writes per second: {(rv1 - rv0) / elapsed:.1f}")
    print(f"  (node-lease renewals needed: {args.gateways / retry:.0f} per second; claims: on transitions only)")
    print(f"daemon CPU: {cpu} (of one core)")
    print(f"  (API server CPU: {(api1 - api0) / elapsed * 100:.1f} % of one core)")
    print(f"  (load average of the machine: {load0:.2f} before the window, {os.getloadavg()[0]:.2f} after)")
    print(f"step-downs in window: {sum(down1) - sum(down0)}")
    print(f"  at the end: {end_count} of {args.ips} Leases name a holder {end_per}; the daemons serve ", end="")
    print(", ".join(f"bench-{i} {len(served(p))}" for i, p in enumerate(logs)))
    if dataplane == "kernel":
        found = ", ".join(f"bench-{i} {kernel_addresses(ns)}" for i, ns in enumerate(where.gateways))
        print(f"  egress addresses in the kernel at the end: {found}")


if __name__ == "__main__":
    sys.exit(main())
