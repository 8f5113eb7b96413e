"""Benchmark: lease renewals per second and CPU of one daemon holding N leases.

Starts ``egressd apiserver`` and one ``egressd run --dataplane record`` holding
N egress IPs (one group, this node the only candidate) with the default
timings, waits until every IP is owned, then measures for ``--seconds``:

* lease writes per second (the API server's global resourceVersion advances
  by one per write) against the expected ``N / retryPeriod``;
* the daemon's CPU time (utime + stime from /proc) per second, and per 100 leases;
* step-downs during the window (a daemon too slow to renew would step down).

Run: ``python chaos/bench_election.py --leases 100 --seconds 20``
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from egressd.core.model import Timing


def http(method: str, url: str, body: dict[str, Any] | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.load(resp)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leases", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    ips = [str(ipaddress.ip_address("10.200.0.1") + i) for i in range(args.leases)]
    tmp = Path(tempfile.mkdtemp(prefix="egressd-bench-"))
    cfg = tmp / "node.yaml"
    cfg.write_text(
        json.dumps(
            {
                "node": {"name": "bench-node", "address": "10.0.0.1"},
                "kubernetes": {"access": "url", "url": url, "namespace": "egressd"},
                "metrics": {"listen": ""},
                "groups": [
                    {
                        "name": "bench",
                        "egressIPs": ips,
                        "interface": "net0",
                        "candidates": ["bench-node"],
                        "sourceCIDRs": ["10.244.0.0/16"],
                        "destinationCIDRs": ["192.0.2.0/24"],
                    }
                ],
            }
        )
    )
    procs: list[subprocess.Popen[bytes]] = []
    log = (tmp / "daemon.log").open("wb")
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
        daemon = subprocess.Popen(
            [sys.executable, "-m", "egressd.cli.main", "run", "--config", str(cfg), "--dataplane", "record"],
            stdout=log,
            stderr=log,
        )
        procs.append(daemon)
        leases_url = f"{url}/apis/coordination.k8s.io/v1/namespaces/egressd/leases"
        started = time.monotonic()
        while True:
            items = http("GET", leases_url)["items"]
            claims = [i for i in items if not i["metadata"]["name"].startswith("egressd-node-")]  # not node leases
            if sum(1 for i in claims if i["spec"].get("holderIdentity")) == args.leases:
                break
            if time.monotonic() - started > 60:
                print("not every lease was acquired within 60 s", file=sys.stderr)
                return 1
            time.sleep(0.1)
        print(f"all {args.leases} leases acquired in {time.monotonic() - started:.2f}s (incl. process start)")
        time.sleep(1.0)
        rv0 = int(http("GET", leases_url)["metadata"]["resourceVersion"])
        cpu0, t0 = cpu_seconds(daemon.pid), time.monotonic()
        time.sleep(args.seconds)
        rv1 = int(http("GET", leases_url)["metadata"]["resourceVersion"])
        cpu1, t1 = cpu_seconds(daemon.pid), time.monotonic()
        elapsed = t1 - t0
        writes = (rv1 - rv0) / elapsed
        expected = args.leases / Timing().retry_period
        cpu = (cpu1 - cpu0) / elapsed
        log.flush()
        stepdowns = (tmp / "daemon.log").read_text().count("stepped down")
        print(f"leases:                 {args.leases}")
        print(f"renewals per second:    {writes:.1f} (expected {expected:.0f} at retryPeriod {Timing().retry_period}s)")
        print(f"daemon CPU:             {cpu * 100:.1f}% of one core")
        print(f"daemon CPU / 100 leases:{cpu * 100 * 100 / args.leases:6.1f}% of one core")
        print(f"step-downs in window:   {stepdowns}")
        return 0
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()


if __name__ == "__main__":
    sys.exit(main())
