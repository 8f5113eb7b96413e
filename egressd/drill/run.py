"""The drill: instruments on a running lab (:mod:`egressd.drill.instruments`) and the rounds of one
scenario (:mod:`egressd.drill.faults`), each measured by :func:`egressd.drill.analysis.analyse_round`."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import http.client
import ipaddress
import itertools
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from egressd.core.assignment import sources_for
from egressd.core.config import parse_settings
from egressd.core.model import Timing
from egressd.drill import survival
from egressd.drill.analysis import RoundResult, analyse_round
from egressd.drill.faults import FAULTS, SCENARIOS, Holds, play
from egressd.drill.instruments import (
    SWITCH_INTERVAL,
    DrillError,
    LeasePoller,
    OutpostTail,
    Prober,
    Watcher,
    Worker,
    node_macs,
)
from egressd.drill.keepers import Connections, Keepers
from egressd.lab.netlab import Lab
from egressd.lab.netns import LabError
from egressd.lab.outpost import monotonic

SETTLED_PROBES = 2.0
"""Seconds of good probes (every prober) that make the lab settled."""

PROBE_PODS = ("xwing", "ywing")
"""The pods that probe; the target of every round is the owner of the first one's egress IP."""


def lab_timing(lab: Lab) -> dict[str, Any]:
    """The daemons' timing settings, camelCase, from a gateway's generated config."""
    gateway = lab.scenario.gateways[0].name
    path = lab.config_file(gateway)
    try:
        timing = parse_settings(yaml.safe_load(path.read_text(encoding="utf-8")), source=str(path)).timing
    except (OSError, yaml.YAMLError):
        timing = Timing()
    return {_camel(k): v for k, v in dataclasses.asdict(timing).items()}


def _camel(name: str) -> str:
    return re.sub(r"_([a-z])", lambda m: m.group(1).upper(), name)


def egress_ip_of(lab: Lab, pod: str) -> str:
    """The egress IP the pod's traffic uses (the steering's rendezvous split)."""
    settings = parse_settings(lab.scenario.daemon_config(lab.scenario.pod(pod).node))
    address = ipaddress.ip_address(lab.scenario.pod(pod).ip)
    for group in settings.groups:
        for ip in group.egress_ips:
            if any(address in net for net in sources_for(group, ip)):
                return str(ip)
    raise DrillError(f"pod {pod} is in no egress group")


class Drill:
    """Instruments on a running lab, and the rounds of one scenario.

    ``with Drill(lab) as d: d.run("kill", rounds=20, report=print)``; the
    instruments run from ``__enter__`` to ``__exit__``."""

    def __init__(
        self,
        lab: Lab,
        *,
        probers: Sequence[str] = PROBE_PODS,
        settle_timeout: float = 60.0,
        outage_seconds: float = 30.0,
        holds: Holds | None = None,
        connections: Connections | None = None,
    ) -> None:
        self.lab = lab
        self.connections = connections if connections is not None else Connections()
        problems = self.connections.problems(len(probers))
        if problems:
            raise DrillError("; ".join(problems))
        self.pods = tuple(probers)
        self.settle_timeout = settle_timeout
        self.holds = holds if holds is not None else Holds(outage=outage_seconds)
        problems = self.holds.problems()
        if problems:
            raise DrillError("; ".join(problems))
        self.outage_seconds = self.holds.outage
        self.timing = lab_timing(lab)
        self.allowed = frozenset(lab.scenario.outpost.allowed)
        self.probers: list[Prober] = []
        self.watcher: Watcher | None = None
        self.leases: LeasePoller | None = None
        self.tail: OutpostTail | None = None
        self._switch_interval = sys.getswitchinterval()
        self._gc_was_on = gc.isenabled()

    # --- instruments ---

    def __enter__(self) -> Drill:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(SWITCH_INTERVAL)
        # The events of a drill are hundreds of thousands of small objects: a full pass of the
        # cyclic garbage collector over them stops every thread for 100-200 ms (a prober sent
        # nothing for 161 ms in a round without any fault). The instruments make no cycles.
        self._gc_was_on = gc.isenabled()
        gc.disable()
        tag = f"{os.getpid()}{int(monotonic() * 1000) % 100000}"
        self.probers = [Prober(self.lab, pod, tag=tag) for pod in self.pods]
        self.tail = OutpostTail(self.lab.outpost_log, [p.id for p in self.probers]).start()
        self.watcher = Watcher(self.lab, node_macs(self.lab)).start()
        self.leases = LeasePoller(self.lab).start()
        for p in self.probers:
            p.start()

    def stop(self) -> None:
        workers: list[Worker] = [*self.probers]
        if self.tail is not None:
            workers.append(self.tail)
        if self.watcher is not None:
            workers.append(self.watcher)
        if self.leases is not None:
            workers.append(self.leases)
        for w in workers:
            w.stop()
        sys.setswitchinterval(self._switch_interval)
        if self._gc_was_on:
            gc.enable()

    def _check(self) -> None:
        for w in (*self.probers, self.tail, self.watcher, self.leases):
            if w is not None:
                w.check()

    # --- state ---

    def holders(self) -> dict[str, str | None]:
        assert self.leases is not None
        return {ip: self.leases.holder(ip) for ip in self.lab.scenario.egress_ips}

    def good_for(self, seconds: float, now: float) -> bool:
        """Every prober's probes arrived with a good source for the last ``seconds``, without a hole."""
        assert self.tail is not None
        arrivals = self.tail.read()
        for p in self.probers:
            recent = [a for a in arrivals if a.prober == p.id and a.t >= now - seconds - 0.2]
            if not recent or recent[0].t > now - seconds or now - recent[-1].t > 0.3:
                return False
            if any(a.src not in self.allowed for a in recent):
                return False
            times = [a.t for a in recent]
            if max((b - a for a, b in itertools.pairwise(times)), default=0.0) > 0.1:
                return False
        return True

    def node_healthy(self, node: str) -> bool:
        pid = self.lab.pid(node)
        if pid is None or self.lab.is_held(node):
            return False
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{pid}/stat").read_text()
            if stat.rpartition(")")[2].split()[0] == "T":
                return False
        try:
            status, _ = self.lab.http(node, "http://127.0.0.1:9464/readyz", timeout=0.5)
        except (OSError, LabError, http.client.HTTPException):
            return False
        return status == 200

    def wait(self, predicate: Callable[[], bool], timeout: float, *, poll: float = 0.1, at_least: float = 0.0) -> bool:
        """Wait until ``predicate`` holds (no earlier than ``at_least`` seconds); False on timeout."""
        start = monotonic()
        deadline = start + timeout
        while True:
            self._check()
            now = monotonic()
            if now - start >= at_least and predicate():
                return True
            if now >= deadline:
                return False
            time.sleep(poll)

    def settled(self, node: str | None, *, away_from: str | None = None, replaced: int | None = None) -> bool:
        """Both IPs owned (by someone other than ``away_from``), ``node`` healthy (and, with
        ``replaced``, running as a process other than that pid), good probes."""
        holders = self.holders()
        if any(h is None or h == away_from for h in holders.values()):
            return False
        if node is not None and not self.node_healthy(node):
            return False
        if node is not None and replaced is not None and self.lab.pid(node) == replaced:
            return False  # a daemon that ignored its signal: the fault did not happen
        return self.good_for(SETTLED_PROBES, monotonic())

    # --- rounds ---

    def target(self) -> tuple[str, str]:
        """The owner of the first prober's egress IP, and that IP."""
        ip = egress_ip_of(self.lab, self.pods[0])
        holder = self.holders().get(ip)
        if holder is None:
            raise DrillError(f"{ip} has no owner")
        return holder, ip

    def round(self, scenario: str, index: int) -> RoundResult:
        if scenario not in SCENARIOS:
            raise DrillError(f"unknown scenario {scenario!r} (known: {', '.join(SCENARIOS)})")
        if not self.wait(lambda: self.settled(None), self.settle_timeout):
            raise DrillError(f"the lab did not settle before round {index} (leases {self.holders()})")
        lab = self.lab
        target, ip = self.target()
        lease = float(self.timing.get("leaseDuration", 2.5))
        f = FAULTS[scenario]
        start = monotonic() - 1.0
        node_to_check = target if f.target_checked else None
        before = lab.pid(target)

        def moved(at_least: float) -> bool:
            # the rest of the round: until the IP has moved and traffic flows again
            return self.wait(lambda: self.settled(None, away_from=target), self.settle_timeout, at_least=at_least)

        kept = Keepers(lab, self.pods, self.connections).start() if self.connections.enabled else None
        moved_ips = {ip_ for ip_, holder in self.holders().items() if holder == target}
        try:
            played = play(
                scenario,
                lab,
                target,
                holds=self.holds,
                lease=lease,
                clock=monotonic,
                sleep=time.sleep,
                wait_moved=moved,
            )
            settled = played.moved
            replaced = before if f.restart else None
            settled = (
                self.wait(lambda: self.settled(node_to_check, replaced=replaced), self.settle_timeout, at_least=0.5)
                and settled
            )
            end = monotonic()
            time.sleep(0.3)  # the outpost writes its log every 50 ms; echoes in flight
            reports = kept.stop() if kept is not None else None
        finally:
            if kept is not None:
                kept.kill()
        assert self.tail is not None and self.watcher is not None and self.leases is not None
        arrivals = list(self.tail.read())
        result = analyse_round(
            scenario=scenario,
            index=index,
            target=target,
            ip=ip,
            fault=played.fault,
            fault_action=played.fault_action,
            recover=played.recover,
            recover_action=played.recover_action,
            steps=played.steps,
            start=start,
            end=end,
            settled=settled,
            sent=[s for p in self.probers for s in list(p.sent)],
            echoed={p.id: dict(p.echoed) for p in self.probers},
            arrivals=arrivals,
            claims=list(self.watcher.claims),
            requests={ip_: list(ts) for ip_, ts in self.watcher.requests.items()},
            leases=list(self.leases.changes),
            allowed=self.allowed,
        )
        if reports is not None:
            sync = self.connections.sync_interval
            keepers, server = reports
            result.connections = survival.round_json(
                survival.flows(keepers, server, fault=played.fault, ips=moved_ips, sync=sync),
                sync,
                survival.loop_lags(keepers, server),
            )
        return result

    def run(self, scenario: str, rounds: int, report: Callable[[str], None] | None = None) -> list[RoundResult]:
        results = []
        for i in range(1, rounds + 1):
            result = self.round(scenario, i)
            results.append(result)
            if report is not None:
                line = result.progress(rounds)
                if result.connections is not None:
                    line += "\n  " + survival.line(result.connections["summary"])
                report(line)
        return results
