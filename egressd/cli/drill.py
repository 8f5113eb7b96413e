"""``egressd drill``: chaos drills against the lab (needs root).

    egressd drill --scenario NAME --rounds N [--json FILE] [--plot FILE] [--state-dir DIR] [--prefix P]
                  [--mode static|kubernetes] [--apiserver embedded|kube]
                  [--outage S] [--freeze S] [--partition S] [--hold-min S] [--kill-after S] [--quiet S]
                  [--connections N [--udp-flows M] [--sync-interval MS] [--ramp S]]
                  [--timing FILE] [--lease-duration S] ... (every timing key)

Scenarios: graceful, kill, kill-restart, freeze, link-cut, api-partition,
api-outage, peer-partition, isolate, double-fault, and baseline (no fault: the
probers' own jitter) (see :mod:`egressd.drill.faults`).
Uses the lab that is up in the state directory; when none is, brings one up
(with the timing profile given) and removes it at the end (also on Ctrl-C or
error), so the lab is left as it was found. A timing profile given for a lab
that is up already must be the one it runs with. Prints one line per round
and a summary; ``--json`` writes every round, ``--plot`` draws one round's
timeline (the worst by default) as a PNG.

``--connections N`` keeps N long-lived TCP connections from the probing pods to
a server in the outpost through every round's fault (half server-first, half
client-first, the same number per pod), plus ``--udp-flows`` UDP flows per pod
on fixed source ports, and reports per connection whether it was reset, its
longest stall and whether its source port changed (:mod:`egressd.drill.survival`).

Wiring only; the drill is :mod:`egressd.drill`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from egressd.cli.lab import add_apiserver_argument, add_timing_arguments, timing_from_args
from egressd.drill.faults import SCENARIOS, Holds
from egressd.drill.keepers import Connections
from egressd.drill.report import plot_round, report_json, worst_round
from egressd.drill.run import PROBE_PODS, Drill
from egressd.drill.survival import line as connections_line
from egressd.lab.netlab import DEFAULT_PREFIX, DEFAULT_STATE_DIR, Lab
from egressd.lab.netns import LabError


def add_parser(subparsers: Any) -> None:
    """Add ``drill`` to the ``egressd`` subparsers."""
    p = subparsers.add_parser(
        "drill",
        help="chaos drills against the lab: fault an egress IP's owner, measure the gap, look for two owners",
        description="Fault the gateway that owns xwing's egress IP, round after round, while pods probe the "
        "outpost every 5 ms and a watcher on the lab's bridge records who answers ARP and who sends traffic "
        "for each egress IP. Reports the outage gap, lost probes and any time two nodes served one IP.",
    )
    p.add_argument("--scenario", required=True, choices=SCENARIOS)
    p.add_argument("--rounds", type=int, default=1, help="rounds to run (default 1)")
    p.add_argument("--json", metavar="FILE", help="write the settings, every round and the summary as JSON")
    p.add_argument("--plot", metavar="FILE", help="draw one round's timeline as a PNG (needs matplotlib)")
    p.add_argument("--plot-round", type=int, metavar="N", help="the round to draw (default: the worst)")
    p.add_argument("--state-dir", default=DEFAULT_STATE_DIR, help=f"lab state directory (default {DEFAULT_STATE_DIR})")
    p.add_argument(
        "--prefix", default=None, help=f"namespace prefix of a lab brought up here (default {DEFAULT_PREFIX})"
    )
    p.add_argument(
        "--mode",
        choices=["static", "kubernetes"],
        default="static",
        help="mode of a lab brought up here: static groups, or policies and pods in the API server",
    )
    add_apiserver_argument(p)
    holds = p.add_argument_group("hold times (seconds)")
    holds.add_argument(
        "--outage",
        "--outage-seconds",
        dest="outage",
        type=float,
        default=30.0,
        help="api-outage, double-fault: how long the API server is paused (default 30; 300 for 5 minutes)",
    )
    holds.add_argument(
        "--freeze", type=float, help="freeze: how long the target is stopped (default leaseDuration + 2)"
    )
    holds.add_argument(
        "--partition",
        type=float,
        default=10.0,
        help="peer-partition, api-partition: how long the gateways are cut apart, or the target from the API "
        "server (default 10)",
    )
    holds.add_argument(
        "--hold-min",
        type=float,
        help="kill, link-cut, isolate: hold the fault at least this long, and until the IP "
        "has moved (default leaseDuration)",
    )
    holds.add_argument(
        "--quiet",
        type=float,
        default=10.0,
        help="baseline: how long the lab is watched with no fault (default 10; the length of the rounds it is "
        "compared with)",
    )
    holds.add_argument(
        "--kill-after", type=float, default=1.0, help="double-fault: seconds from the API pause to the kill (default 1)"
    )
    conns = p.add_argument_group("long-lived connections kept through the fault")
    conns.add_argument(
        "--connections",
        type=int,
        default=0,
        metavar="N",
        help="TCP connections from xwing and ywing to a server in the outpost, opened before each fault and "
        "kept through it; half server-first (the server sends a line every 20 ms), half client-first (the pod "
        "sends and waits for the echo); a multiple of 4 (default 0: none)",
    )
    conns.add_argument(
        "--udp-flows",
        type=int,
        metavar="M",
        help="UDP flows per pod on fixed source ports, echoed by the server (default 2 with --connections, else 0)",
    )
    conns.add_argument(
        "--sync-interval",
        type=float,
        default=100.0,
        metavar="MS",
        help="connections at least this old at the fault are reported apart (default 100 ms)",
    )
    conns.add_argument("--ramp", type=float, default=1.0, help="seconds over which the connections open (default 1)")
    add_timing_arguments(p)
    p.add_argument(
        "--settle-timeout", type=float, default=60.0, help="seconds to wait for the lab to settle (default 60)"
    )


def run(args: argparse.Namespace) -> int:
    """Run the drill in ``args``; 0 when no round saw two owners and every round settled."""
    if args.rounds < 1:
        print("egressd drill: --rounds must be at least 1", file=sys.stderr)
        return 2
    holds = Holds(
        outage=args.outage,
        freeze=args.freeze,
        partition=args.partition,
        moved_min=args.hold_min,
        kill_after=args.kill_after,
        quiet=args.quiet,
    )
    connections = connections_from_args(args)
    problems = holds.problems() + connections.problems(len(PROBE_PODS))
    if problems:
        print("egressd drill: " + "; ".join(problems), file=sys.stderr)
        return 2
    try:
        timing = timing_from_args(args)  # a bad profile is refused before anything starts
        lab, ours = _lab(args, timing)
    except LabError as exc:
        print(f"egressd drill: {exc}", file=sys.stderr)
        return 1
    try:
        if ours:
            print(f"bringing the lab up (prefix {lab.prefix!r}, state {lab.state.path}) ...", flush=True)
            lab.up()
        with Drill(lab, settle_timeout=args.settle_timeout, holds=holds, connections=connections) as d:
            results = d.run(args.scenario, args.rounds, report=lambda line: print(line, flush=True))
            timing = d.timing
    except LabError as exc:
        print(f"egressd drill: {exc}", file=sys.stderr)
        return 1
    finally:
        if ours:
            lab.down()
    report = report_json(
        args.scenario,
        timing,
        results,
        mode=lab.mode,
        apiserver=lab.apiserver,
        timingProfile=args.timing,
        outageSeconds=holds.outage if args.scenario in ("api-outage", "double-fault") else None,
        holds={k: v for k, v in dataclasses.asdict(holds).items() if v is not None},
        sync_interval=connections.sync_interval,
        **(
            {
                "connections": {
                    "tcp": connections.total,
                    "udpPerPod": connections.udp_per_pod,
                    "syncIntervalMs": args.sync_interval,
                    "rampSeconds": connections.ramp,
                }
            }
            if connections.enabled
            else {}
        ),
    )
    s = report["summary"]
    gap = s["gap_ms"]
    print(
        f"{args.scenario}: {s['rounds']} round(s)  gap p50 {_fmt(gap['p50'])}  p99 {_fmt(gap['p99'])}  "
        f"max {_fmt(gap['max'])}  unrecovered {s['unrecovered_rounds']}  lost probes {s['lost_probes']}/"
        f"{s['probes_sent']}  dual-owner {s['dual_owner_ms']} ms (claims interleaved {s['dual_interleaved_ms']} ms, "
        f"{s['double_answers']} doubly answered ARP requests)  "
        f"transit max {_fmt(s['transit_max_ms'])}"
    )
    if args.scenario in ("api-outage", "double-fault"):
        served = s["served_after_recover_ms"]
        print(f"  served again after the API server's return: p50 {_fmt(served['p50'])}  max {_fmt(served['max'])}")
    if "connections" in s:
        print("  " + connections_line(s["connections"]))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
        print(f"rounds written to {args.json}")
    if args.plot:
        chosen = (
            next((r for r in results if r.index == args.plot_round), None) if args.plot_round else worst_round(results)
        )
        if chosen is None:
            print(f"egressd drill: no round {args.plot_round} to plot", file=sys.stderr)
            return 2
        plot_round(chosen, args.plot)
        print(f"round {chosen.index} drawn in {args.plot}")
    safe = s["dual_owner_ms"] == 0 and s["double_answers"] == 0
    return 0 if safe and all(r.settled for r in results) else 1


def connections_from_args(args: argparse.Namespace) -> Connections:
    """The long-lived connections of ``args`` (checked by :meth:`Connections.problems`)."""
    udp = args.udp_flows if args.udp_flows is not None else (2 if args.connections > 0 else 0)
    return Connections(total=args.connections, udp_per_pod=udp, sync_interval=args.sync_interval / 1000, ramp=args.ramp)


def _lab(args: argparse.Namespace, timing: dict[str, Any]) -> tuple[Lab, bool]:
    """The lab that is up in the state directory, or a new one to bring up (then True)."""
    try:
        lab = Lab.attach(args.state_dir)
    except LabError:
        lab = Lab(
            args.prefix or DEFAULT_PREFIX, args.state_dir, mode=args.mode, apiserver=args.apiserver, timing=timing
        )
        return lab, True
    if lab.supervisor_pid() is None:
        raise LabError(f"{args.state_dir} describes lab {lab.prefix!r} but its supervisor is gone; 'egressd lab down'")
    if args.prefix and args.prefix != lab.prefix:
        raise LabError(f"{args.state_dir} holds the lab of prefix {lab.prefix!r}, not {args.prefix!r}")
    if timing and timing != dict(lab.scenario.timing):
        raise LabError(
            f"the lab in {args.state_dir} runs with timing {dict(lab.scenario.timing) or 'defaults'}, not {timing}; "
            "bring it down, or drill it without a timing profile"
        )
    return lab, False


def _fmt(ms: float | None) -> str:
    return "-" if ms is None else f"{ms:.1f} ms"
