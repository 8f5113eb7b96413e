"""Prometheus metrics and the health endpoints, on one small HTTP listener.

Metric names follow Prometheus conventions (``egressd_*_total`` counters,
``*_seconds`` durations) and are named after domain events; labels stay
low-cardinality (``ip`` is one of the configured egress IPs, reasons and
error kinds come from fixed vocabularies). docs/metrics.md lists them with
example alerts.

``/status`` (JSON) is the daemon's own view for ``egressd status``: each
member's state, epoch, last transition and decision with its reason. The
process's incarnation token (what tells its lease writes from those of a
second daemon with the same node name) is in it only for a client on the
loopback interface: ``metrics.listen`` is often the node address, open to
the whole node network.

``/healthz`` fails (503) when the daemon should have stepped down but has not,
or a supervised task died: a reason to restart it. ``/readyz`` fails until
the initial reconcile is done and while the Kubernetes API is unreachable.
Both answer a line per problem.
"""

from __future__ import annotations

import asyncio
import importlib
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable, Collection, Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from aiohttp import web

log = logging.getLogger(__name__)

Check = Callable[[], tuple[bool, list[str]]]

LOOPBACK_ONLY = frozenset({"incarnation"})
"""Fields of ``/status`` served only to clients on the loopback interface."""

_FAST = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
_LAN = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)
"""Round trips between gateways on one LAN: well under a millisecond when
idle, tens of milliseconds when a node is loaded; above 100 ms (the default
``rttBound``) a peer right's kernel fence has less room than it was given."""


class PrometheusMetrics:
    """:class:`egressd.ports.Metrics` in a Prometheus registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self._owned = Gauge(
            "egressd_egress_ip_owned",
            "1 while this node serves the egress IP (address, SNAT and ARP), else 0.",
            ["ip"],
            registry=r,
        )
        self._transitions = Counter(
            "egressd_ownership_transitions_total",
            "Ownership state changes of an egress IP on this node, by event (acquired, stepped-down, "
            "released, clash, hold-off-over) and the reason of the decision behind it.",
            ["ip", "event", "reason"],
            registry=r,
        )
        self._takeover = Histogram(
            "egressd_takeover_phase_seconds",
            "Time from the lease write that won an egress IP to the end of each takeover phase: "
            "address (present on the interface), snat (rule active), garp (first gratuitous ARP sent).",
            ["phase"],
            buckets=_FAST,
            registry=r,
        )
        self._writes = Histogram(
            "egressd_lease_write_seconds",
            "Latency of successful lease writes (acquire and renew).",
            buckets=_FAST,
            registry=r,
        )
        self._write_failures = Counter(
            "egressd_lease_write_failures_total",
            "Lease writes (acquire or renew) that failed, by error kind. Repeated renew failures end in a "
            "step-down at the renew deadline.",
            ["error"],
            registry=r,
        )
        self._api_errors = Counter(
            "egressd_api_errors_total",
            "Failed Kubernetes API calls by kind. LostRace is a lost write race (another node wrote first), "
            "expected around takeovers; ApiTimeout and ApiUnavailable mean the API is slow or unreachable.",
            ["kind"],
            registry=r,
        )
        self._conflicts = Counter(
            "egressd_arp_conflicts_total",
            "ARP frames seen claiming an egress IP this node serves, from another MAC.",
            ["ip"],
            registry=r,
        )
        self._mesh_rtt = Histogram(
            "egressd_mesh_rtt_seconds",
            "Mesh round trip: from a heartbeat sent to the promise that answers it taken, per peer.",
            ["peer"],
            buckets=_LAN,
            registry=r,
        )
        self._drift = Counter(
            "egressd_drift_repairs_total",
            "Repairs of kernel state that differed from the desired state (address-missing, snat-missing, "
            "stale-state, foreign-address).",
            ["ip", "what"],
            registry=r,
        )

    # the port
    def owned(self, ip: str, owned: bool) -> None:
        self._owned.labels(ip=ip).set(1 if owned else 0)

    def transition(self, ip: str, kind: str, reason: str) -> None:
        self._transitions.labels(ip=ip, event=kind, reason=reason or "none").inc()

    def renew(self, ip: str, seconds: float, ok: bool, error: str = "") -> None:
        if ok:
            self._writes.observe(seconds)
        else:
            self._write_failures.labels(error=error or "unknown").inc()

    def takeover_phase(self, ip: str, phase: str, seconds: float) -> None:
        self._takeover.labels(phase=phase).observe(seconds)

    def conflict(self, ip: str) -> None:
        self._conflicts.labels(ip=ip).inc()

    def drift(self, ip: str, what: str) -> None:
        self._drift.labels(ip=ip, what=what).inc()

    def api_error(self, kind: str) -> None:
        self._api_errors.labels(kind=kind).inc()

    def mesh_rtt(self, peer: str, seconds: float) -> None:
        self._mesh_rtt.labels(peer=peer).observe(seconds)

    # values that exist only at scrape time
    def gauge_per_ip(self, name: str, documentation: str, values: Callable[[], dict[str, float]]) -> None:
        self.gauge_per_label(name, documentation, "ip", values)

    def counter_per_ip(self, name: str, documentation: str, values: Callable[[], dict[str, float]]) -> None:
        self.counter_per_label(name, documentation, "ip", values)

    def gauge_per_label(
        self, name: str, documentation: str, label: str, values: Callable[[], dict[str, float]]
    ) -> None:
        """A gauge with one sample per value of ``label`` (e.g. per policy)."""
        self._per_label(GaugeMetricFamily, name, documentation, label, values)

    def counter_per_label(
        self, name: str, documentation: str, label: str, values: Callable[[], dict[str, float]]
    ) -> None:
        """A counter with one sample per value of ``label`` (e.g. per outcome)."""
        self._per_label(CounterMetricFamily, name, documentation, label, values)

    def gauge_per_labels(
        self,
        name: str,
        documentation: str,
        labels: tuple[str, ...],
        values: Callable[[], dict[tuple[str, ...], float]],
    ) -> None:
        """A gauge with one sample per combination of ``labels`` (e.g. per IP
        and right; no labels: one sample, keyed ``()``)."""
        self._per_labels(GaugeMetricFamily, name, documentation, labels, values)

    def counter_per_labels(
        self,
        name: str,
        documentation: str,
        labels: tuple[str, ...],
        values: Callable[[], dict[tuple[str, ...], float]],
    ) -> None:
        """A counter with one sample per combination of ``labels`` (none: one sample)."""
        self._per_labels(CounterMetricFamily, name, documentation, labels, values)

    def _per_labels(
        self,
        kind: type[GaugeMetricFamily] | type[CounterMetricFamily],
        name: str,
        documentation: str,
        labels: tuple[str, ...],
        values: Callable[[], dict[tuple[str, ...], float]],
    ) -> None:
        def collect() -> list[Metric]:
            family = kind(name, documentation, labels=list(labels))
            for key, value in sorted(values().items()):
                family.add_metric(list(key), value)
            return [family]

        self.registry.register(_Callback(collect))

    def _per_label(
        self,
        kind: type[GaugeMetricFamily] | type[CounterMetricFamily],
        name: str,
        documentation: str,
        label: str,
        values: Callable[[], dict[str, float]],
    ) -> None:
        self._per_labels(kind, name, documentation, (label,), lambda: {(k,): v for k, v in values().items()})

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Callback(Collector):
    def __init__(self, collect: Callable[[], Iterable[Metric]]) -> None:
        self._collect = collect

    def collect(self) -> Iterable[Metric]:
        return self._collect()


def status_for(peer: str | None, report: dict[str, Any], private: Collection[str] = LOOPBACK_ONLY) -> dict[str, Any]:
    """``report`` as served to ``peer`` (the client's address): without the
    ``private`` fields unless the client is on the loopback interface."""
    if _is_loopback(peer):
        return report
    return {key: value for key, value in report.items() if key not in private}


def _is_loopback(peer: str | None) -> bool:
    try:
        address = ipaddress.ip_address((peer or "").split("%", 1)[0])
    except ValueError:
        return False  # no address (a Unix socket, or unknown): not known to be local
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


class ObservabilityServer:
    """``/metrics``, ``/healthz`` and ``/readyz`` on one listener."""

    def __init__(
        self,
        metrics: PrometheusMetrics,
        *,
        health: Check,
        ready: Check,
        status: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self._metrics = metrics
        self._health = health
        self._ready = ready
        self._status = status
        self._runner: web.AppRunner | None = None
        self._sock: socket.socket | None = None
        self.url = ""

    def bind(self, host: str, port: int) -> None:
        """Take the listening socket now (errors surface at start-up), serve later."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            sock.listen(64)
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        self._sock = sock
        bound = sock.getsockname()[1]
        self.url = f"http://{host if ':' not in host else f'[{host}]'}:{bound}"

    async def start(self, host: str | None = None, port: int = 0) -> str:
        """Serve on the socket taken by :meth:`bind` (or bind ``host``:``port`` now).

        aiohttp is imported here, not with the module: it costs a third of a
        second that a restarted daemon must not spend before adopting its IPs.
        It is imported in a worker thread: on the event loop, that third of a
        second (a second while scapy loads beside it) would stall the renews
        of the IPs just taken past their renew deadline."""
        web = await asyncio.to_thread(importlib.import_module, "aiohttp.web")

        if self._sock is None:
            assert host is not None
            self.bind(host, port)
        assert self._sock is not None
        app = web.Application()
        app.router.add_get("/metrics", self._get_metrics)
        app.router.add_get("/healthz", self._check(self._health, "healthy"))
        app.router.add_get("/readyz", self._check(self._ready, "ready"))
        if self._status is not None:
            app.router.add_get("/status", self._get_status)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.SockSite(runner, self._sock).start()
        self._runner = runner
        log.info("metrics and health endpoints on %s", self.url)
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def _get_status(self, request: web.Request) -> web.Response:
        from aiohttp import web  # noqa: PLC0415 — loaded by start()

        assert self._status is not None
        return web.json_response(status_for(request.remote, self._status()))

    async def _get_metrics(self, _: web.Request) -> web.Response:
        from aiohttp import web  # noqa: PLC0415 — loaded by start()

        return web.Response(body=self._metrics.render(), content_type="text/plain", charset="utf-8")

    @staticmethod
    def _check(check: Check, word: str) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(_: web.Request) -> web.Response:
            from aiohttp import web  # noqa: PLC0415 — loaded by start()

            ok, problems = check()
            if ok:
                return web.Response(text=f"{word}\n")
            return web.Response(status=503, text="".join(f"{p}\n" for p in problems) or "not ok\n")

        return handler
