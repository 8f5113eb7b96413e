"""``egressd lab``: the reference scenario in network namespaces on this machine.

    egressd lab up [--prefix egl-] [--state-dir /run/egressd-lab] [--dataplane kernel|record]
                   [--mode static|kubernetes] [--apiserver embedded|kube]
                   [--timing FILE] [--lease-duration S] [--renew-deadline S] ... (every timing key)
    egressd lab label POD KEY=VALUE... KEY-...   (Kubernetes mode: relabel a pod's Pod object)
    egressd lab status [--json]
    egressd lab exec HOST -- CMD...      (HOST: a node, a pod, outpost or switch)
    egressd lab down
    egressd lab demo [--mode ...] [--apiserver ...]  (up, a narrated walk and a failover, down)
    egressd lab supervise --state-dir DIR   (started by 'up'; not for interactive use)

Wiring only; the lab is :mod:`egressd.lab.netlab`. Wired into ``egressd`` by
``egressd.cli.main`` (``add_parser``/``run``); ``python -m egressd.cli.lab``
runs it on its own.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from egressd.lab.demo import demo
from egressd.lab.netlab import APISERVERS, DEFAULT_PREFIX, DEFAULT_STATE_DIR, Lab
from egressd.lab.netns import LabError
from egressd.lab.supervisor import supervise
from egressd.lab.timing import FLAGS, flag_value, resolve_timing


def add_apiserver_argument(p: argparse.ArgumentParser) -> None:
    """``--apiserver embedded|kube`` (also for ``egressd drill``, which may bring a lab up)."""
    p.add_argument(
        "--apiserver",
        choices=APISERVERS,
        default="embedded",
        help="embedded (default): egressd's own API server; kube: kube-apiserver and etcd built by "
        "scripts/build-kube, RBAC on, the daemons with their ServiceAccount's token",
    )


def add_timing_arguments(p: argparse.ArgumentParser) -> None:
    """``--timing FILE`` and a flag per timing key (also for ``egressd drill``)."""
    g = p.add_argument_group(
        "timing profile",
        "the daemons' timing: section, from a file (config/timing-fast.yaml) and/or flags that override "
        "single keys; checked like a daemon's config before anything starts",
    )
    g.add_argument("--timing", metavar="FILE", help="a YAML file with a timing: section, as in egressd's config")
    for key, flag in FLAGS.items():
        g.add_argument(flag, dest=f"timing_{key}", type=flag_value, metavar="S", help=f"timing.{key} (seconds)")


def timing_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The checked timing profile of ``args`` (empty: egressd's defaults); a LabError naming the field."""
    return resolve_timing(getattr(args, "timing", None), {key: getattr(args, f"timing_{key}", None) for key in FLAGS})


def add_parser(subparsers: Any) -> None:
    """Add ``lab`` and its subcommands to the ``egressd`` subparsers."""
    lab = subparsers.add_parser(
        "lab",
        help="the reference scenario in network namespaces on this machine (needs root)",
        description="Build, inspect and remove the lab: Cilium's egress-gateway walkthrough in network "
        "namespaces, with the lab API server, the outpost and egressd on every node.",
    )
    sub = lab.add_subparsers(dest="lab_command", metavar="LAB_COMMAND")

    def common(p: argparse.ArgumentParser, *, prefix: bool = True) -> None:
        p.add_argument("--state-dir", default=DEFAULT_STATE_DIR, help=f"state directory (default {DEFAULT_STATE_DIR})")
        if prefix:
            p.add_argument(
                "--prefix",
                default=None,
                help=f"namespace name prefix (default: from the state file, else {DEFAULT_PREFIX})",
            )

    up = sub.add_parser("up", help="build the lab and start its processes")
    common(up)
    up.add_argument(
        "--dataplane",
        choices=["kernel", "record"],
        default="kernel",
        help="data plane of the daemons: kernel (default) or record (touch nothing, journal)",
    )
    up.add_argument(
        "--mode",
        choices=["static", "kubernetes"],
        default="static",
        help="static (default): groups in the daemons' configs; kubernetes: the EgressGatewayPolicy CRD, "
        "the walkthrough's policy and the pods' labels in the lab API server",
    )
    add_apiserver_argument(up)
    add_timing_arguments(up)
    up.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"], dest="daemon_log")
    up.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        help="seconds to wait for every process (default 30; kube-apiserver gets at least 120 to be ready)",
    )

    down = sub.add_parser("down", help="remove the lab: processes, namespaces, state (idempotent)")
    common(down)

    status = sub.add_parser("status", help="nodes, daemons and the owner of each egress IP")
    common(status)
    status.add_argument("--json", action="store_true", help="machine-readable output")

    ex = sub.add_parser("exec", help="run a command in the namespace of a node, pod, outpost or switch")
    common(ex)
    ex.add_argument("host", help="kind-worker3, xwing, outpost, switch, ...")
    ex.add_argument("argv", nargs=argparse.REMAINDER, help="-- CMD [ARG...]")

    label = sub.add_parser(
        "label",
        help="set or remove labels of a pod's Pod object (Kubernetes mode), like kubectl label",
        description="KEY=VALUE sets a label, KEY- removes it. In the Kubernetes mode the daemons follow "
        "at once: a pod that gets org=alliance is steered and SNATed, one that loses it is not.",
    )
    common(label)
    label.add_argument("pod", help="xwing, ywing or tiefighter")
    label.add_argument("labels", nargs="+", metavar="KEY=VALUE|KEY-")

    demo_parser = sub.add_parser("demo", help="a narrated walk through the scenario and a failover, then down again")
    common(demo_parser)
    demo_parser.add_argument(
        "--mode",
        choices=["static", "kubernetes"],
        default="static",
        help="kubernetes: the policy and pods in the API server, and a pod labelled into the policy and out",
    )
    add_apiserver_argument(demo_parser)

    sup = sub.add_parser("supervise", help="run the lab's process supervisor (started by 'up')")
    common(sup, prefix=False)


def run(args: argparse.Namespace) -> int:
    """Run the ``lab`` subcommand in ``args``; the exit code."""
    command = getattr(args, "lab_command", None)
    try:
        if command == "up":
            return _up(args)
        if command == "down":
            return _down(args)
        if command == "status":
            return _status(args)
        if command == "exec":
            return _exec(args)
        if command == "label":
            return _label(args)
        if command == "demo":
            return demo(args.prefix or DEFAULT_PREFIX, args.state_dir, mode=args.mode, apiserver=args.apiserver)
        if command == "supervise":
            return supervise(args.state_dir)
    except LabError as exc:
        print(f"egressd lab: {exc}", file=sys.stderr)
        return 1
    print("egressd lab: a subcommand is needed: up, down, status, exec, label, demo", file=sys.stderr)
    return 2


def _lab(args: argparse.Namespace) -> Lab:
    """The lab in the state dir, or (no state file) the one ``--prefix`` names."""
    try:
        lab = Lab.attach(args.state_dir)
    except LabError:
        return Lab(args.prefix or DEFAULT_PREFIX, args.state_dir)
    if args.prefix and args.prefix != lab.prefix:
        raise LabError(f"{args.state_dir} holds the lab of prefix {lab.prefix!r}, not {args.prefix!r}")
    return lab


def _up(args: argparse.Namespace) -> int:
    timing = timing_from_args(args)  # a bad profile is refused before anything starts
    lab = Lab(
        args.prefix or DEFAULT_PREFIX,
        args.state_dir,
        dataplane=args.dataplane,
        log_level=args.daemon_log,
        mode=args.mode,
        apiserver=args.apiserver,
        timing=timing,
    )
    lab.up(timeout=args.timeout)
    print(
        f"lab {lab.prefix!r} is up ({lab.mode} mode, {lab.apiserver} API server): {len(lab.namespaces)} "
        f"namespaces, state and logs in {lab.state.path}"
    )
    if timing:
        print("  timing: " + ", ".join(f"{k} {v}" for k, v in timing.items()))
    print(f"  egressd lab status --state-dir {lab.state.path}")
    print(f"  egressd lab exec --state-dir {lab.state.path} xwing -- curl -s http://172.18.0.7:8000")
    if lab.apiserver == "kube":
        print(
            f"  egressd lab exec --state-dir {lab.state.path} {lab.scenario.api_node} -- "
            f"kubectl --kubeconfig {lab.admin_kubeconfig} get leases -n egressd"
        )
    return 0


def parse_label_args(items: Sequence[str]) -> dict[str, str | None]:
    """``KEY=VALUE`` and ``KEY-`` arguments -> labels to set (None: remove)."""
    out: dict[str, str | None] = {}
    for item in items:
        if item.endswith("-") and "=" not in item:
            out[item[:-1]] = None
        elif "=" in item:
            key, _, value = item.partition("=")
            out[key] = value
        else:
            raise LabError(f"label {item!r}: must be KEY=VALUE or KEY- (to remove)")
        if not next(reversed(out)):
            raise LabError(f"label {item!r}: the key is empty")
    return out


def _label(args: argparse.Namespace) -> int:
    lab = _lab(args)
    if lab.mode != "kubernetes":
        raise LabError("pods are selected by labels in the Kubernetes mode only: 'egressd lab up --mode kubernetes'")
    labels = lab.label_pod(args.pod, parse_label_args(args.labels))
    print(f"pod {args.pod}: " + ",".join(f"{k}={v}" for k, v in sorted(labels.items())))
    return 0


def _down(args: argparse.Namespace) -> int:
    lab = _lab(args)
    removed = lab.down()
    namespaces = sum(1 for r in removed if r.startswith("namespace "))
    processes = sum(1 for r in removed if r.startswith(("process ", "supervisor ")))
    if removed:
        print(f"lab {lab.prefix!r} removed: {namespaces} namespace(s), {processes} process(es)")
    else:
        print(f"nothing of lab {lab.prefix!r} was present")
    return 0


def _status(args: argparse.Namespace) -> int:
    lab = _lab(args)
    st = lab.status()
    if args.json:
        print(json.dumps(st, indent=2))
        return 0
    sup = st["supervisor"]
    print(
        f"lab {st['prefix']!r}  state {st['stateDir']}  supervisor {sup if sup else 'not running'}  "
        f"API server {st['apiserver']}"
    )
    rows: list[Sequence[str]] = [("NODE", "ROLE", "ADDRESS", "NETNS", "DAEMON", "PID", "STARTS")]
    for n in st["nodes"]:
        rows.append(
            (
                n["name"],
                n["role"],
                n["address"],
                "yes" if n["netns"] else "missing",
                n["state"] + (" (held)" if n["held"] and n["state"] != "held" else ""),
                str(n["pid"] or "-"),
                str(n["starts"]),
            )
        )
    for name, p in st["processes"].items():
        rows.append((name, "lab", "", "", p["state"], str(p["pid"] or "-"), str(p["starts"])))
    _table(rows)
    print()
    ips: list[Sequence[str]] = [("EGRESS IP", "HOLDER", "EPOCH", "ON INTERFACE OF")]
    for ip in st["egressIPs"]:
        ips.append(
            (
                ip["ip"],
                ip["holder"] or "<free>",
                "-" if ip["epoch"] is None else str(ip["epoch"]),
                ", ".join(ip["on"]) or "-",
            )
        )
    _table(ips)
    if st["apiError"]:
        print(f"(leases unknown: {st['apiError']})")
    return 0


def _table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def _exec(args: argparse.Namespace) -> int:
    argv = list(args.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise LabError("no command: egressd lab exec HOST -- CMD [ARG...]")
    lab = _lab(args)
    ns = lab.netns(args.host)
    proc = subprocess.run(["ip", "netns", "exec", ns, *argv], check=False)
    return proc.returncode if proc.returncode >= 0 else 128 - proc.returncode


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m egressd.cli.lab ...``: the same as ``egressd lab ...``."""
    parser = argparse.ArgumentParser(prog="egressd")
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["lab", *(sys.argv[1:] if argv is None else argv)])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
