"""Benchmark: API writes per second, daemon CPU and step-downs of G gateways electing N egress IPs.

Starts ``egressd apiserver`` and G daemons (``egressd run --dataplane record``: nothing is touched),
every one a candidate of one group of N egress IPs, with the default timings (or ``--timing FILE``,
a profile as ``egressd lab up`` takes it). It waits until every IP is owned (at most
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
import ipaddress
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from egressd.core.config import parse_settings
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


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def node_config(index: int, gateways: int, ips: list[str], url: str, timing: dict[str, Any]) -> dict[str, Any]:
    names = [f"bench-{i}" for i in range(gateways)]
    config: dict[str, Any] = {
        "node": {"name": names[index], "address": f"10.0.0.{index + 1}"},
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


def owned(url: str) -> tuple[int, dict[str, int]]:
    """IPs with a holder, and how many each node holds."""
    items = http("GET", f"{url}/apis/coordination.k8s.io/v1/namespaces/egressd/leases")["items"]
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
    args = parser.parse_args()
    if not 1 <= args.ips <= 65_000 or not 1 <= args.gateways <= 50 or not 0 < args.seconds <= 3600:
        parser.error("--ips 1..65000, --gateways 1..50, --seconds up to 3600")
    timing = resolve_timing(args.timing) if args.timing else {}
    retry = parse_settings({"node": {"name": "n"}, "timing": timing}).timing.retry_period

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    ips = [str(ipaddress.ip_address("10.200.0.1") + i) for i in range(args.ips)]
    tmp = Path(tempfile.mkdtemp(prefix="egressd-bench-"))
    procs: list[subprocess.Popen[bytes]] = []
    daemons: list[subprocess.Popen[bytes]] = []
    logs = [tmp / f"bench-{i}.log" for i in range(args.gateways)]
    try:
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "egressd.cli.main", "apiserver", "--listen", f"127.0.0.1:{port}"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        for _ in range(200):
            try:
                http("POST", f"{url}/api/v1/namespaces", {"metadata": {"name": "egressd"}})
                break
            except OSError:
                time.sleep(0.05)
        for i in range(args.gateways):
            cfg = tmp / f"bench-{i}.yaml"
            cfg.write_text(json.dumps(node_config(i, args.gateways, ips, url, timing)))
            with logs[i].open("wb") as log:
                daemon = subprocess.Popen(
                    [sys.executable, "-m", "egressd.cli.main", "run", "--config", str(cfg), "--dataplane", "record"],
                    stdout=log,
                    stderr=log,
                )
            procs.append(daemon)
            daemons.append(daemon)
        started = time.monotonic()
        count, per, serving = 0, dict[str, int](), 0
        while time.monotonic() - started < args.acquire_timeout:
            count, per = owned(url)
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
        rv0 = int(
            http("GET", f"{url}/apis/coordination.k8s.io/v1/namespaces/egressd/leases")["metadata"]["resourceVersion"]
        )
        down0 = [p.read_text(errors="replace").count(STEP_DOWN) for p in logs]
        load0 = os.getloadavg()[0]
        api0 = cpu_seconds(procs[0].pid)
        cpu0, t0 = [cpu_seconds(d.pid) for d in daemons], time.monotonic()
        time.sleep(args.seconds)
        rv1 = int(
            http("GET", f"{url}/apis/coordination.k8s.io/v1/namespaces/egressd/leases")["metadata"]["resourceVersion"]
        )
        cpu1, t1 = [cpu_seconds(d.pid) for d in daemons], time.monotonic()
        api1 = cpu_seconds(procs[0].pid)
        down1 = [p.read_text(errors="replace").count(STEP_DOWN) for p in logs]
        end_count, end_per = owned(url)
        elapsed = t1 - t0
        cpu = ", ".join(
            f"bench-{i} {(b - a) / elapsed * 100:.1f} %" for i, (a, b) in enumerate(zip(cpu0, cpu1, strict=True))
        )
        print(f"IPs: {args.ips}  gateways: {args.gateways}  window: {elapsed:.1f} s  retryPeriod: {retry:g} s")
        print(f"API writes per second: {(rv1 - rv0) / elapsed:.1f}")
        print(f"  (node-lease renewals needed: {args.gateways / retry:.0f} per second; claims: on transitions only)")
        print(f"daemon CPU: {cpu} (of one core)")
        print(f"  (API server CPU: {(api1 - api0) / elapsed * 100:.1f} % of one core)")
        print(f"  (load average of the machine: {load0:.2f} before the window, {os.getloadavg()[0]:.2f} after)")
        print(f"step-downs in window: {sum(down1) - sum(down0)}")
        print(f"  at the end: {end_count} of {args.ips} Leases name a holder {end_per}; the daemons serve ", end="")
        print(", ".join(f"bench-{i} {len(served(p))}" for i, p in enumerate(logs)))
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
        shutil.rmtree(tmp, ignore_errors=True)  # the daemons' configs and logs


if __name__ == "__main__":
    sys.exit(main())
