"""Requests and log lines of egressd daemons while the API server misbehaves.

Starts ``egressd apiserver``, seeds it with the EgressGatewayPolicy CRD, three
Nodes (gateways ``gw-a`` and ``gw-b``, worker ``worker``), a pod on the worker
and a policy with two egress IPs, then runs three ``egressd run --mode
kubernetes --dataplane record`` daemons, each through its own port of a
fault-injecting proxy (so requests are counted per daemon). Once both IPs are
held it measures a steady window, then one window per fault:

* ``410``: every new watch is answered 200 with one ``ERROR`` event (410
  Expired, as a real server answers a too old resourceVersion) and closed;
  lists pass;
* ``429``: every request answers 429 with ``Retry-After: 1`` (what API
  Priority and Fairness sends);
* ``500``: every request answers 500;
* ``409``: every write (POST, PUT, PATCH) answers 409 Conflict;
* ``stall``: requests are accepted and not answered, open watches stall.

Open watches are cut at the start of each fault window, so every watch meets
the fault. Between windows the fault is cleared and the daemons get
``--recover`` seconds. It prints requests per second of each daemon in each
window next to the steady ones (and the ratio of the total to the steady
total), and log lines per second. The daemons run whatever ``egressd``
``PYTHONPATH`` names, so the same script measures two trees.

Run: ``python chaos/bench_api_faults.py`` (about three minutes; ``--seconds``
sets the window length).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web

ROOT = Path(__file__).resolve().parents[1]
POLICY_PATH = "/apis/egressd.io/v1alpha1/egressgatewaypolicies"
LEASES = "/apis/coordination.k8s.io/v1/namespaces/egressd/leases"
DAEMONS = {"gw-a": "10.0.0.1", "gw-b": "10.0.0.2", "worker": "10.0.0.9"}
FAULTS = ("410", "429", "500", "409", "stall")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def api(url: str, method: str, path: str, body: Any = None, ctype: str = "application/json") -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, method=method, headers={"Content-Type": ctype})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read() or b"null")


def seed(url: str) -> None:
    api(url, "POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", yaml.safe_load(
        (ROOT / "deploy" / "crd.yaml").read_text()
    ))
    api(url, "POST", "/api/v1/namespaces", {"metadata": {"name": "egressd"}})
    for name, address in DAEMONS.items():
        labels = {"egress-gw": "true"} if name.startswith("gw-") else {}
        api(url, "POST", "/api/v1/nodes", {
            "metadata": {"name": name, "labels": labels},
            "status": {"addresses": [{"type": "InternalIP", "address": address}]},
        })
    pod = "/api/v1/namespaces/default/pods"
    api(url, "POST", pod, {
        "metadata": {"name": "xwing", "labels": {"org": "alliance"}},
        "spec": {"nodeName": "worker", "containers": [{"name": "c", "image": "x"}]},
    })
    api(url, "PATCH", f"{pod}/xwing/status",
        {"status": {"phase": "Running", "podIP": "10.244.1.2", "podIPs": [{"ip": "10.244.1.2"}]}},
        "application/merge-patch+json")
    api(url, "POST", POLICY_PATH, {
        "apiVersion": "egressd.io/v1alpha1",
        "kind": "EgressGatewayPolicy",
        "metadata": {"name": "outpost"},
        "spec": {
            "selectors": [{"podSelector": {"matchLabels": {"org": "alliance"}}}],
            "destinationCIDRs": ["172.18.0.0/16"],
            "egressGateway": {"nodeSelector": {"matchLabels": {"egress-gw": "true"}}, "interface": "net0",
                              "egressIPs": ["172.18.0.42", "172.18.0.43"]},
        },
    })


def status_body(code: int, reason: str, message: str, **details: Any) -> bytes:
    body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "details": details, "code": code}
    return json.dumps(body).encode()


class FaultProxy:
    """One listening port per daemon in front of the API server; counts the
    requests of each and answers them as the current fault says."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.fault = ""
        self.counts: dict[str, int] = {}
        self.urls: dict[str, str] = {}
        self._open: set[aiohttp.ClientResponse] = set()
        self._unstalled: asyncio.Event | None = None
        self._session: aiohttp.ClientSession | None = None
        self._runners: list[web.AppRunner] = []
        self.loop = asyncio.new_event_loop()

    def start(self, names: list[str]) -> None:
        ready = threading.Event()

        def main() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(self._start(names))
            ready.set()
            self.loop.run_forever()

        threading.Thread(target=main, name="fault-proxy", daemon=True).start()
        ready.wait(10)

    async def _start(self, names: list[str]) -> None:
        self._unstalled = asyncio.Event()
        self._unstalled.set()
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
        for name in names:
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", functools.partial(self._handle, name=name))
            runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
            await runner.setup()
            port = free_port()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            self._runners.append(runner)
            self.counts[name] = 0
            self.urls[name] = f"http://127.0.0.1:{port}"

    def set_fault(self, fault: str) -> None:
        """Switch the fault and cut every open watch, so each meets it."""

        async def switch() -> None:
            assert self._unstalled is not None
            self.fault = fault
            if fault == "stall":
                self._unstalled.clear()
            else:
                self._unstalled.set()
            for response in list(self._open):
                response.close()

        asyncio.run_coroutine_threadsafe(switch(), self.loop).result(5)

    async def _handle(self, request: web.Request, name: str) -> web.StreamResponse:
        assert self._session is not None and self._unstalled is not None
        self.counts[name] += 1
        watch = request.query.get("watch", "") in ("true", "1")
        fault = self.fault
        if fault == "stall":
            await self._unstalled.wait()
        elif fault == "429":
            return web.Response(status=429, body=status_body(429, "TooManyRequests", "Too many requests, please try "
                                "again later.", retryAfterSeconds=1), content_type="application/json",
                                headers={"Retry-After": "1"})
        elif fault == "500":
            return web.Response(status=500, body=status_body(500, "InternalError", "Internal error occurred"),
                                content_type="application/json")
        elif fault == "409" and request.method in ("POST", "PUT", "PATCH"):
            return web.Response(status=409, body=status_body(409, "Conflict", "Operation cannot be fulfilled: the "
                                "object has been modified; please apply your changes to the latest version and "
                                "try again"), content_type="application/json")
        elif fault == "410" and watch:
            gone = json.loads(status_body(410, "Expired", "too old resource version: 1 (2)"))
            gone.pop("details")
            return web.Response(status=200, body=json.dumps({"type": "ERROR", "object": gone}).encode() + b"\n",
                                content_type="application/json")
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("content-type", "accept", "authorization")}
        try:
            return await self._forward(request, body, headers, watch)
        except aiohttp.ClientError:  # the API server is gone (the end of the run)
            return web.Response(status=503, body=status_body(503, "ServiceUnavailable", "proxy: upstream gone"),
                                content_type="application/json")

    async def _forward(
        self, request: web.Request, body: bytes, headers: dict[str, str], watch: bool
    ) -> web.StreamResponse:
        assert self._session is not None and self._unstalled is not None
        async with self._session.request(request.method, self.upstream + request.path_qs, data=body or None,
                                         headers=headers) as upstream:
            if not watch:
                return web.Response(status=upstream.status, body=await upstream.read(),
                                    content_type=upstream.content_type)
            response = web.StreamResponse(status=upstream.status)
            response.content_type = upstream.content_type
            response.enable_chunked_encoding()
            await response.prepare(request)
            self._open.add(upstream)
            try:
                async for chunk in upstream.content.iter_any():
                    await self._unstalled.wait()
                    await response.write(chunk)
            except (aiohttp.ClientError, ConnectionError, asyncio.CancelledError):
                pass
            finally:
                self._open.discard(upstream)
            with contextlib.suppress(ConnectionError):
                await response.write_eof()
            return response


def lines(path: Path) -> int:
    with path.open("rb") as fh:
        return sum(1 for _ in fh)


def run(args: argparse.Namespace) -> int:
    # a daemon that gave up on a stalled request closes its connection: not an error of the proxy
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    port = free_port()
    upstream = f"http://127.0.0.1:{port}"
    tmp = Path(tempfile.mkdtemp(prefix="egressd-bench-faults-"))
    procs: list[subprocess.Popen[bytes]] = []
    logs: dict[str, Path] = {}
    proxy = FaultProxy(upstream)
    try:
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "egressd.cli.main", "apiserver", "--listen", f"127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ))
        for _ in range(200):
            try:
                api(upstream, "GET", "/api/v1/namespaces")
                break
            except OSError:
                time.sleep(0.05)
        seed(upstream)
        proxy.start(list(DAEMONS))
        for name, address in DAEMONS.items():
            cfg = tmp / f"{name}.yaml"
            cfg.write_text(json.dumps({
                "node": {"name": name, "address": address},
                "mode": "kubernetes",
                "kubernetes": {"access": "url", "url": proxy.urls[name], "namespace": "egressd"},
                "metrics": {"listen": ""},
            }))
            logs[name] = tmp / f"{name}.log"
            with logs[name].open("wb") as log:
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "egressd.cli.main", "run", "--config", str(cfg), "--dataplane", "record"],
                    stdout=log, stderr=log, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                ))

        def held() -> int:
            items = api(upstream, "GET", LEASES)["items"]
            return sum(1 for i in items if i["spec"].get("holderIdentity"))

        def settle(timeout: float) -> None:
            started = time.monotonic()
            while held() < 2 and time.monotonic() - started < timeout:
                time.sleep(0.2)
            time.sleep(2.0)

        settle(60)
        if held() < 2:
            print("the gateways did not take both egress IPs within 60 s", file=sys.stderr)
            return 1

        def window(fault: str) -> tuple[dict[str, float], dict[str, float]]:
            proxy.set_fault(fault)
            before = dict(proxy.counts)
            logged = {n: lines(p) for n, p in logs.items()}
            t0 = time.monotonic()
            time.sleep(args.seconds)
            elapsed = time.monotonic() - t0
            rates = {n: (proxy.counts[n] - before[n]) / elapsed for n in DAEMONS}
            log_rates = {n: (lines(p) - logged[n]) / elapsed for n, p in logs.items()}
            proxy.set_fault("")
            return rates, log_rates

        results = {"steady": window("")}
        for fault in args.faults:
            time.sleep(args.recover)
            settle(30)
            results[fault] = window(fault)
        steady_total = sum(results["steady"][0].values())
        names = list(DAEMONS)
        print(f"{args.seconds:g}s windows; requests/s per daemon (x its steady rate), total (x steady total); "
              f"log lines/s per daemon")
        print(f"{'fault':8}" + "".join(f"{n:>16}" for n in names) + f"{'total':>16}" + "".join(
            f"{'log ' + n:>12}" for n in names))
        for fault, (rates, log_rates) in results.items():
            cells = "".join(
                f"{rates[n]:8.2f} ({rates[n] / max(results['steady'][0][n], 1e-9):4.1f}x)" for n in names
            )
            total = sum(rates.values())
            print(f"{fault:8}{cells}{total:8.2f} ({total / steady_total:4.1f}x)" + "".join(
                f"{log_rates[n]:12.2f}" for n in names))
        return 0
    finally:
        for proc in reversed(procs):  # the daemons first, then the API server
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each measuring window")
    parser.add_argument("--recover", type=float, default=5.0, help="seconds without a fault between windows")
    parser.add_argument("--faults", nargs="*", default=list(FAULTS), choices=FAULTS)
    args = parser.parse_args()
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
