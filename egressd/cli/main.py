"""``egressd`` command line: parse arguments, wire adapters, nothing else.

Exit codes: 0 success, 1 runtime failure, 2 bad input (arguments, config).
Errors are one line on stderr; ``--debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from egressd import __version__
from egressd.cli.configfile import read_config
from egressd.cli.filechecks import read_mesh_key, secret_file_warnings
from egressd.core.addressing import on_link_problem
from egressd.core.config import expand_env, parse_settings
from egressd.core.errors import ConfigError, EgressdError, Problem
from egressd.core.model import IPAddress, Settings

if TYPE_CHECKING:
    from egressd.adapters.addresses import KernelAddresses
    from egressd.adapters.mqtt import MqttEvents
    from egressd.adapters.nftables import NftablesSnat
    from egressd.adapters.observability import ObservabilityServer, PrometheusMetrics
    from egressd.ports import Clock, ClusterSource, ConnectionGuard, Conntrack, EventSink, LeaseStore, Steering
    from egressd.runtime.conntrack import Replication
    from egressd.runtime.daemon import Daemon
    from egressd.runtime.member import DataPlane
    from egressd.runtime.mesh import Mesh
    from egressd.runtime.sinks import FanoutEvents

log = logging.getLogger("egressd")

SWITCH_INTERVAL = 0.001
"""The interpreter's thread switch interval in the daemon (Python's default: 5 ms). The
takeover and steering steps hop between the event loop and the adapters' threads
(netlink, nftables, conntrack); a thread woken by its kernel answer waits for the
interpreter lock while another thread runs Python code, up to this long at each hop."""


class UsageError(EgressdError):
    """Bad command-line input."""


def load_settings(path: str) -> Settings:
    """Read and validate a config file; ConfigError lists every problem. The
    file's rules (UTF-8, YAML 1.2 scalars, no aliases, no duplicate keys,
    bounded nesting) are :mod:`egressd.cli.configfile`'s."""
    data = read_config(path)
    data, problems = expand_env(data, os.environ)
    if problems:
        raise ConfigError(problems, path)
    return parse_settings(data, source=path)


def _wants_lab(argv: Sequence[str]) -> bool:
    """Whether the command line is for the lab or the drills (or needs the full help).

    Their modules are loaded only then: the daemon's start-up (a restart after a
    crash races its fences) must not pay for code it never runs."""
    first = next((a for a in argv if not a.startswith("-")), None)
    return first in (None, "lab", "drill")


def _parser(*, lab_commands: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="egressd", description="Highly available egress IPs for Kubernetes.")
    p.add_argument("--version", action="version", version=f"egressd {__version__}")
    p.add_argument("--debug", action="store_true", help="debug logging and tracebacks on errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run the daemon (SIGTERM, SIGINT or SIGHUP: withdraw, hand the IPs over, exit 0)")
    run.add_argument("--config", "-c", required=True, help="config file (YAML)")
    run.add_argument(
        "--dataplane",
        choices=["kernel", "record"],
        default="kernel",
        help="kernel: addresses, nftables SNAT, gratuitous ARP and policy routing (default); "
        "record: touch nothing, journal what would be done (a dry run of the election)",
    )
    run.add_argument("--journal", help="with --dataplane record: append each data-plane operation as JSON here")
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])

    cleanup = sub.add_parser(
        "cleanup", help="remove every egressd address, nftables table, rule and route from this node (idempotent)"
    )
    cleanup.add_argument("--quiet", "-q", action="store_true", help="print nothing when there was nothing to remove")

    check = sub.add_parser("check-config", help="validate a config file; exit 2 listing every problem")
    check.add_argument("file")

    status = sub.add_parser("status", help="owners of the egress IPs, this node's kernel state and daemon view")
    status.add_argument("--config", "-c", required=True)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument("--no-kernel", action="store_true", help="do not read this node's kernel state")

    handoff = sub.add_parser("handoff", help="move an egress IP to another candidate node")
    handoff.add_argument("ip", metavar="IP")
    handoff.add_argument("--to", required=True, metavar="NODE", help="the candidate node to move it to")
    drain = sub.add_parser("drain", help="move every egress IP this node holds to its next preferred candidate")
    for mover in (handoff, drain):
        mover.add_argument("--config", "-c", required=True)
        mover.add_argument("--no-wait", action="store_true", help="return once the request is written")
        mover.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for the move (default 15)")

    api = sub.add_parser("apiserver", help="run the lab Kubernetes API server (for labs and tests only)")
    api.add_argument("--listen", default="127.0.0.1:6443", help="HOST:PORT to listen on")
    if lab_commands:
        from egressd.cli import drill, lab  # noqa: PLC0415 — see _wants_lab

        lab.add_parser(sub)
        drill.add_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser(lab_commands=_wants_lab(argv))
    args = parser.parse_args(argv)
    debug = bool(args.debug)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    level = "debug" if debug else getattr(args, "log_level", "info")
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.command == "run":
        # First thing: a stop signal during start-up (loading the config and the
        # Kubernetes client takes a few hundred ms) must not kill by its default action.
        from egressd.runtime.supervisor import catch_stop_signals  # noqa: PLC0415

        catch_stop_signals()
        log.debug("stop signals (SIGTERM, SIGINT, SIGHUP) held until the event loop handles them")
    try:
        return int(_dispatch(args))
    except ConfigError as exc:
        print(f"egressd: {exc}", file=sys.stderr)
        return 2
    except UsageError as exc:
        print(f"egressd: {exc}", file=sys.stderr)
        return 2
    except EgressdError as exc:
        if debug:
            log.exception("failed")
        print(f"egressd: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "check-config":
        settings = load_settings(args.file)
        for warning in secret_file_warnings(settings):
            print(f"egressd: warning: {warning}", file=sys.stderr)
        if settings.mesh is not None and read_mesh_key(settings) is None:
            print(
                f"egressd: note: mesh off here: mesh.keyFile {settings.mesh.key_file} does not exist", file=sys.stderr
            )
        role = "gateway candidate" if settings.candidate_groups() else "steering only"
        print(f"{args.file}: ok (node {settings.node.name}, {len(settings.groups)} group(s), {role})")
        return 0
    if args.command == "run":
        return _run(args)
    if args.command == "status":
        return _status(args)
    if args.command in ("handoff", "drain"):
        return _move(args)
    if args.command == "cleanup":
        return asyncio.run(_cleanup(quiet=bool(args.quiet)))
    if args.command == "apiserver":
        from egressd.apiserver.server import run as run_apiserver  # noqa: PLC0415 — aiohttp only when needed

        run_apiserver(args.listen)
        return 0
    if args.command in ("lab", "drill"):
        from egressd.cli import drill, lab  # noqa: PLC0415

        return lab.run(args) if args.command == "lab" else drill.run(args)
    raise UsageError(f"unknown command {args.command}")


def _run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    for warning in secret_file_warnings(settings):
        log.warning("%s", warning)
    if args.journal and args.dataplane != "record":
        raise UsageError("--journal needs --dataplane record")
    mesh_key = read_mesh_key(settings)
    if settings.mesh is not None and mesh_key is None:
        log.warning(
            "mesh off: mesh.keyFile %s does not exist (mesh.optional is set; in the DaemonSet: no Secret "
            "egressd-mesh); serving on API rights alone, an API outage stops egress",
            settings.mesh.key_file,
        )
        settings = replace(settings, mesh=None)
    sys.setswitchinterval(SWITCH_INTERVAL)
    return asyncio.run(_run_async(settings, args, mesh_key))


async def _run_async(settings: Settings, args: argparse.Namespace, mesh_key: bytes | None = None) -> int:
    # The kernel first: after a crash and restart the addresses the previous
    # process left may expire while the Kubernetes client loads (a few hundred
    # ms); the adoption needs the API, keeping them does not (runtime.restart).
    kernel = await _kernel_at_start(settings, args) if args.dataplane == "kernel" else None
    try:
        return await _run_with_api(settings, args, mesh_key, kernel)
    finally:
        if kernel is not None:
            await kernel.addresses.close()


async def _run_with_api(
    settings: Settings, args: argparse.Namespace, mesh_key: bytes | None, kernel: _KernelAtStart | None
) -> int:
    from egressd.adapters.clock import SystemClock  # noqa: PLC0415
    from egressd.adapters.kube.client import api_client  # noqa: PLC0415
    from egressd.adapters.kube.leases import KubeLeaseStore  # noqa: PLC0415
    from egressd.adapters.observability import PrometheusMetrics  # noqa: PLC0415
    from egressd.runtime.sinks import FanoutEvents, LogEvents  # noqa: PLC0415

    clock = SystemClock()
    api = api_client(settings.kubernetes)
    if any(g.node_selector for g in settings.groups):
        from egressd.adapters.kube.cluster import nodes_matching  # noqa: PLC0415

        # candidates by Node labels, read once at start (a Kubernetes-mode concern beyond that)
        selected = {
            g.name: await nodes_matching(api, g.node_selector, request_timeout=10.0)
            for g in settings.groups
            if g.node_selector
        }
        for name, nodes in selected.items():
            log.info("group %s: nodeSelector matches %s", name, ", ".join(nodes) or "no node")
        settings = settings.with_selected_candidates(selected)
    store = KubeLeaseStore(
        api,
        settings.kubernetes.namespace,
        clock=clock,
        api_timeout=settings.timing.api_timeout,
        watch_idle=settings.timing.lease_duration,
    )
    metrics = PrometheusMetrics()
    sinks: list[EventSink] = [LogEvents()]
    mqtt = None
    if settings.mqtt is not None:
        from egressd.adapters.mqtt import MqttEvents  # noqa: PLC0415

        mqtt = MqttEvents(settings.mqtt, settings.node.name)
        mqtt.start()
        sinks.append(mqtt)
        mqtt_counters(mqtt, metrics)
    events = FanoutEvents(sinks)
    cluster: ClusterSource | None = None
    if settings.mode == "kubernetes":
        from egressd.adapters.kube.cluster import KubeCluster  # noqa: PLC0415

        cluster = KubeCluster(api, clock=clock)
    inputs = _Inputs(store, clock, metrics, events, cluster, mesh_key)
    try:
        if kernel is None:
            return await _run_recorded(settings, args, inputs)
        return await _run_kernel(settings, inputs, kernel)
    finally:
        if mqtt is not None:
            await mqtt.close(2.0)  # after the daemon: its shutdown events go out first


@dataclass(frozen=True)
class _KernelAtStart:
    """The kernel adapters built (and used) before the Kubernetes client loads."""

    addresses: KernelAddresses
    snat: NftablesSnat


async def _kernel_at_start(settings: Settings, args: argparse.Namespace) -> _KernelAtStart:
    """The address and nftables adapters: the interfaces checked against the
    config, then the addresses a previous process left kept
    (:func:`egressd.runtime.restart.keep_addresses`)."""
    from egressd.adapters.addresses import KernelAddresses  # noqa: PLC0415
    from egressd.adapters.nftables import NftablesSnat  # noqa: PLC0415
    from egressd.core.nft import CtMark  # noqa: PLC0415
    from egressd.runtime.restart import keep_addresses  # noqa: PLC0415

    addresses = KernelAddresses()
    await _check_interface_addresses(settings, args, addresses)
    ct = settings.conntrack
    snat = NftablesSnat(
        fence_ttl=settings.timing.fence_ttl or None,
        mark=CtMark(ct.mark, ct.mask) if settings.replicates else None,
        guard=settings.replicates,
    )
    try:
        await keep_addresses(addresses, snat, settings.timing)
    except BaseException:
        await addresses.close()
        raise
    return _KernelAtStart(addresses, snat)


@dataclass(frozen=True)
class _Inputs:
    """What the daemon is built with, whatever its data plane."""

    store: LeaseStore
    clock: Clock
    metrics: PrometheusMetrics
    events: FanoutEvents
    cluster: ClusterSource | None
    mesh_key: bytes | None = None
    """The mesh's cluster key; None: the mesh is off."""

    async def serve(
        self,
        settings: Settings,
        dataplane: DataPlane,
        steering: Steering,
        *,
        built: Callable[[Daemon], None] | None = None,
        conntrack: Conntrack | None = None,
        guard: ConnectionGuard | None = None,
    ) -> int:
        """Build the daemon on ``dataplane`` (``built`` is told of it at once),
        attach the Kubernetes-mode controller, and run it until it stops."""
        from egressd.adapters.mesh import MeshSocket  # noqa: PLC0415
        from egressd.runtime.daemon import Daemon  # noqa: PLC0415

        daemon = Daemon(
            settings,
            store=self.store,
            dataplane=dataplane,
            steering=steering,
            clock=self.clock,
            metrics=self.metrics,
            events=self.events,
            mesh_transport=MeshSocket(self.mesh_key) if self.mesh_key is not None else None,
            conntrack=conntrack if self.mesh_key is not None else None,
            guard=guard,
        )
        if built is not None:
            built(daemon)
        _attach_controller(daemon, self.cluster, self.events, self.clock, self.metrics)
        return await _serve(daemon, self.metrics, settings)


async def _run_recorded(settings: Settings, args: argparse.Namespace, inputs: _Inputs) -> int:
    """The daemon on a data plane that records what it would do (``--journal``: to a file)."""
    from egressd.adapters.recording import RecordingDataPlane  # noqa: PLC0415
    from egressd.runtime.member import DataPlane  # noqa: PLC0415

    recorder = RecordingDataPlane(settings.node.name, Path(args.journal) if args.journal else None)
    try:
        return await inputs.serve(settings, DataPlane(recorder, recorder, recorder), recorder)
    finally:
        recorder.close()


async def _run_kernel(settings: Settings, inputs: _Inputs, kernel: _KernelAtStart) -> int:
    """The daemon on the kernel: addresses, nftables SNAT, ARP and policy routing
    (``kernel``: the adapters built at start; the caller closes them)."""
    from egressd.adapters.announcer import ScapyAnnouncer  # noqa: PLC0415
    from egressd.adapters.steering import PolicySteering  # noqa: PLC0415
    from egressd.runtime.member import DataPlane  # noqa: PLC0415

    daemons: list[Daemon] = []

    def on_conflict(ip: IPAddress, mac: str) -> None:
        for daemon in daemons:
            daemon.report_conflict(ip, mac)

    addresses, snat = kernel.addresses, kernel.snat
    ct = settings.conntrack
    announcer = ScapyAnnouncer(on_conflict=on_conflict, guard=lambda ip: any(d.may_announce(ip) for d in daemons))
    steering = PolicySteering()
    inputs.metrics.counter_per_ip(
        "egressd_gratuitous_arp_frames",
        "Gratuitous ARP / unsolicited NA frames sent for the egress IP (takeover burst and refresh).",
        lambda: {str(ip): float(announcer.sent(ip)) for d in daemons for ip in d.members},
    )
    conntrack = None
    if settings.replicates and inputs.mesh_key is not None:
        from egressd.adapters.conntrack.table import KernelConntrack  # noqa: PLC0415

        conntrack = KernelConntrack(mark=ct.mark, mask=ct.mask)
    try:
        return await inputs.serve(
            settings,
            DataPlane(addresses, snat, announcer),
            steering,
            built=daemons.append,
            conntrack=conntrack,
            guard=snat if conntrack is not None else None,
        )
    finally:
        if conntrack is not None:
            await conntrack.close()
        await announcer.close()
        await steering.close()


async def _check_interface_addresses(settings: Settings, args: argparse.Namespace, addresses: KernelAddresses) -> None:
    """Raises :class:`ConfigError` (and closes ``addresses``) when an egress IP
    clashes with an address the interfaces already have
    (:func:`egress_ips_on_interfaces`)."""
    interfaces = {g.interface for g in settings.candidate_groups()}
    problems = egress_ips_on_interfaces(
        settings, {name: await addresses.interface_addresses(name) for name in sorted(interfaces)}
    )
    if problems:
        await addresses.close()
        raise ConfigError(problems, f"{args.config} on this node")


def egress_ips_on_interfaces(
    settings: Settings, found: Mapping[str, Sequence[ipaddress.IPv4Interface | ipaddress.IPv6Interface]]
) -> list[Problem]:
    """Static mode, at start: the egress IPs of the groups this node is a
    candidate of against the addresses its interfaces already have (``found``:
    interface -> addresses, egressd's own left out). An egress IP must not be
    one of them, nor the network or broadcast address of their subnets."""
    problems: list[Problem] = []
    for gi, group in enumerate(settings.groups):
        if group not in settings.candidate_groups():
            continue
        on_link = found.get(group.interface, ())
        for ii, ip in enumerate(group.egress_ips):
            why = on_link_problem(ip, group.interface, on_link)
            if why is not None:
                problems.append(Problem(f"groups[{gi}].egressIPs[{ii}]", why))
    return problems


def _attach_controller(
    daemon: Daemon, cluster: ClusterSource | None, events: FanoutEvents, clock: Clock, metrics: PrometheusMetrics
) -> None:
    """Kubernetes mode: the controller feeds the daemon its groups and turns its
    ownership events into Kubernetes Events."""
    if cluster is None:
        return
    from egressd.runtime.controller import Controller  # noqa: PLC0415

    controller = Controller(daemon.settings, cluster, daemon, clock=clock)
    controller.attach()
    events.sinks.append(controller)
    metrics.gauge_per_label(
        "egressd_policy_selected_pods", "Pods each EgressGatewayPolicy serves now.", "policy", controller.selected_pods
    )
    metrics.gauge_per_label(
        "egressd_policy_served",
        "1 if the EgressGatewayPolicy is served, 0 if it is invalid or in conflict (see its status).",
        "policy",
        controller.served,
    )


def daemon_gauges(daemon: Daemon, metrics: PrometheusMetrics) -> None:
    """The gauges and counters read off the daemon's state when scraped."""
    metrics.gauge_per_ip(
        "egressd_lease_renew_age_seconds",
        "Seconds since the last successful renew of each egress IP this node owns; the owner steps down "
        "when this passes renewDeadline.",
        daemon.renew_ages,
    )
    metrics.gauge_per_label(
        "egressd_unreadable_leases",
        "1 for each Lease with egressd's label that cannot be read (malformed; never acted on, the log names "
        "the field and the problem).",
        "lease",
        lambda: dict.fromkeys(daemon.view.problems(), 1.0),
    )
    metrics.counter_per_label(
        "egressd_task_restarts",
        "Times each supervised task (watches, member loops, fences, repair) was started again after it "
        "ended unexpectedly; the log says why.",
        "task",
        lambda: {name: float(state.restarts) for name, state in daemon.supervisor.states.items()},
    )


def right_gauges(daemon: Daemon, metrics: PrometheusMetrics) -> None:
    """The serving right per owned IP and the time on peer rights, read when scraped."""
    metrics.gauge_per_labels(
        "egressd_serving_right",
        "For each egress IP this node serves: 1 for the right it is served on now (api: the node lease's "
        "renewals; peer: the promises of the other candidates, during an API outage), 0 for the other. "
        "An IP not served here, or being withdrawn for want of a right, has no sample.",
        ("ip", "right"),
        daemon.serving_rights,
    )
    metrics.gauge_per_labels(
        "egressd_peer_right",
        "1 while this node serves on peer rights (its node lease cannot be renewed and its peers' promises "
        "carry it, for at most maxHold), else 0.",
        (),
        lambda: {(): 1.0 if daemon.peer_rights.on_peer_right else 0.0},
    )
    metrics.counter_per_labels(
        "egressd_peer_right_seconds",
        "Seconds this node has served on peer rights since it started.",
        (),
        lambda: {(): daemon.peer_rights.seconds(daemon.clock.monotonic())},
    )


def _floats(counts: Mapping[str, int]) -> Callable[[], dict[str, float]]:
    return lambda: {key: float(n) for key, n in counts.items()}


def mesh_counters(mesh: Mesh, metrics: PrometheusMetrics) -> None:
    """The mesh's counters and last round trips, read when scraped."""
    per_peer = (
        ("egressd_mesh_heartbeats_sent", "Heartbeats sent to each peer (while this node serves IPs on a right).",
         mesh.per_peer.heartbeats_to),
        ("egressd_mesh_promises_given", "Promises given to each holder, in answer to its heartbeats.",
         mesh.per_peer.given_to),
        ("egressd_mesh_promises_received", "Promises taken from each peer (signed, echoing a heartbeat's nonce).",
         mesh.per_peer.received_from),
    )  # fmt: skip
    for name, doc, counts in per_peer:
        metrics.counter_per_label(name, doc, "peer", _floats(counts))
    metrics.gauge_per_label(
        "egressd_mesh_rtt_last_seconds",
        "Seconds from this node's latest heartbeat to each peer to the promise that answered it.",
        "peer",
        lambda: dict(mesh.per_peer.last_rtt),
    )
    news = mesh.news
    metrics.counter_per_label(
        "egressd_mesh_news",
        "News of new owners over the mesh, by result: announced (IPs this gateway told its listeners it "
        "serves), taken (claims a steering node steered on ahead of its watch), not-steered, not-candidate, "
        "stale-epoch (claims refused).",
        "result",
        lambda: (
            {"announced": float(news.claims_announced), "taken": float(news.taken)}
            | {reason: float(n) for reason, n in news.dropped.items()}
        ),
    )
    metrics.gauge_per_labels(
        "egressd_mesh_listeners",
        "Steering nodes this gateway tells when it starts serving an IP (those heard from recently).",
        (),
        lambda: {(): float(len(news.listeners))},
    )
    metrics.counter_per_label(
        "egressd_mesh_datagrams_rejected",
        "Mesh datagrams dropped, by reason: size, unsigned, bad-signature, malformed, overflow (the "
        "socket's checks); unknown-peer, replayed, retired-incarnation, stale, misdirected, short-promise "
        "(the protocol's).",
        "reason",
        lambda: {reason: float(n) for reason, n in mesh.transport.rejected.items()},  # the socket counts both
    )


def conntrack_counters(replication: Replication, metrics: PrometheusMetrics) -> None:
    """The conntrack stream's counters (docs/metrics.md), read when scraped."""
    r = replication
    per_peer = (
        ("egressd_conntrack_entries_sent", "Conntrack entries and removals sent to each peer (stream and resyncs).",
         r.sent),
        ("egressd_conntrack_entries_received", "Conntrack entries and removals taken from each holder.", r.received),
    )  # fmt: skip
    for name, doc, counts in per_peer:
        metrics.counter_per_label(name, doc, "peer", _floats(counts))
    metrics.gauge_per_label(
        "egressd_conntrack_entries_held",
        "Conntrack entries kept for a takeover, per sending holder (bounded by conntrack.maxEntriesPerPeer).",
        "peer",
        lambda: {peer: float(n) for peer, n in r.replica.held().items()},
    )
    metrics.counter_per_label(
        "egressd_conntrack_entries_refused",
        "Conntrack records (or datagrams) refused, by reason: not-candidate, not-owned, over-limit, malformed, "
        "replayed, unknown-incarnation, request-not-held; and entries the kernel refused at install "
        "(install-exists, install-<errno>).",
        "reason",
        lambda: {**_floats(r.refused)(), **{f"install-{k}": float(n) for k, n in r.install_failed.items()}},
    )
    metrics.counter_per_labels(
        "egressd_conntrack_installed", "Conntrack entries installed at takeovers.", (), lambda: {(): float(r.installed)}
    )
    metrics.gauge_per_labels(
        "egressd_conntrack_install_last_seconds",
        "Seconds the last takeover's install of conntrack entries took, before and after the announcement.",
        (),
        lambda: {(): r.install_seconds[-1]} if r.install_seconds else {},
    )
    metrics.counter_per_labels(
        "egressd_conntrack_resyncs", "Full resyncs of an egress IP's entries sent to a peer.", (),
        lambda: {(): float(r.resyncs)},
    )  # fmt: skip
    metrics.counter_per_labels(
        "egressd_conntrack_guard_drops",
        "Inbound packets to an egress IP matching no conntrack entry, dropped by the guard after a takeover "
        "(read from the guard's nftables counter every few seconds).",
        (),
        lambda: {(): float(r.guard_drops)},
    )


def mqtt_counters(mqtt: MqttEvents, metrics: PrometheusMetrics) -> None:
    """The MQTT sink's counters, read when scraped."""
    metrics.counter_per_label(
        "egressd_mqtt_messages",
        "MQTT messages by outcome: published (acknowledged by the broker), dropped (the queue was full, "
        "or the publish failed), coalesced (an IP's retained state superseded before it was sent).",
        "outcome",
        lambda: {
            "published": float(mqtt.published),
            "dropped": float(mqtt.dropped),
            "coalesced": float(mqtt.coalesced),
        },
    )


async def _serve(daemon: Daemon, metrics: PrometheusMetrics, settings: Settings) -> int:
    """Run the daemon with its metrics and health endpoints."""
    from egressd.adapters.observability import ObservabilityServer  # noqa: PLC0415

    daemon_gauges(daemon, metrics)
    right_gauges(daemon, metrics)
    if daemon.mesh is not None:
        mesh_counters(daemon.mesh, metrics)
    if daemon.replication is not None:
        conntrack_counters(daemon.replication, metrics)
    server: ObservabilityServer | None = None
    if settings.metrics.listen is not None:
        server = ObservabilityServer(metrics, health=daemon.health, ready=daemon.readiness, status=daemon.status_report)
        try:
            # bind now, so a taken port is an error at once; serve once the members
            # settled (the HTTP stack loads then, not before a restart's adoption)
            server.bind(*settings.metrics.listen)
        except OSError as exc:
            host, port = settings.metrics.listen
            raise EgressdError(f"metrics.listen {host}:{port}: cannot listen: {exc.strerror or exc}") from exc
    running = asyncio.create_task(daemon.run())
    try:
        if server is not None:
            settled = asyncio.create_task(daemon.settled.wait())
            await asyncio.wait({running, settled}, return_when=asyncio.FIRST_COMPLETED)
            settled.cancel()
            if not running.done():
                await server.start()
        return await running
    finally:
        if server is not None:
            await server.stop()


async def _cleanup(*, quiet: bool) -> int:
    """Remove every trace of egressd from this node's network namespace."""
    from egressd.adapters.addresses import KernelAddresses  # noqa: PLC0415
    from egressd.adapters.nftables import NftablesSnat  # noqa: PLC0415
    from egressd.adapters.steering import PolicySteering  # noqa: PLC0415

    addresses, snat, steering = KernelAddresses(), NftablesSnat(), PolicySteering()
    try:
        removed = [f"address {ip} on {interface}" for ip, interface in sorted(await addresses.flush_all(), key=str)]
        removed += [f"SNAT to {ip}" for ip in sorted(await snat.active(), key=str)]
        await snat.clear()  # the SNAT and fence tables, whether or not any rule was active
        flushed = await steering.flush_all()
        if flushed:
            removed.append(f"steering ({len(flushed.rules)} rule(s), {len(flushed.routes)} route(s))")
    finally:
        await addresses.close()
        await steering.close()
    if removed or not quiet:
        print("removed: " + ", ".join(removed) if removed else "nothing of egressd was present")
    return 0


def _status(args: argparse.Namespace) -> int:
    from egressd.cli import ops  # noqa: PLC0415

    settings = load_settings(args.config)
    return asyncio.run(ops.status(settings, as_json=bool(args.json), kernel=not args.no_kernel))


def _move(args: argparse.Namespace) -> int:
    from egressd.cli import ops  # noqa: PLC0415
    from egressd.runtime import operations  # noqa: PLC0415

    settings = load_settings(args.config)
    if args.command == "handoff":
        try:
            ip = ipaddress.ip_address(args.ip)
        except ValueError:
            raise UsageError(f"IP: not an IP address: {args.ip!r}") from None
        moves = operations.handoff_moves(asyncio.run(ops.with_policy_groups(settings)).groups, ip, args.to)
    else:
        moves = asyncio.run(ops.drain_moves(settings))
        if not moves:
            print(f"{settings.node.name} holds no egress IP; nothing to drain")
            return 0
    return asyncio.run(ops.move(settings, moves, wait=not args.no_wait, limit=args.timeout))


if __name__ == "__main__":
    sys.exit(main())
