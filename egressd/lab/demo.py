"""``egressd lab demo``: a narrated walk through the reference scenario, then a failover.

What ``bash scripts/bootstrap lab`` ends with. Each step prints a line saying
what it is about to show, then what happened:

1. remove a lab left over in the state directory, build the lab and wait until
   both egress IPs have an owner;
2. ``xwing`` and ``ywing`` (selected) reach the outpost, which sees an egress IP
   and answers 200; ``tiefighter`` (not selected) is refused with its pod address;
3. the leases and their owners (``egressd lab status``);
4. SIGKILL the gateway that owns xwing's egress IP and keep it down, while
   xwing probes the outpost every 5 ms: the probes move to the other gateway;
   the measured gap and the dual-owner time are printed;
5. remove the lab (also on Ctrl-C or an error).

:func:`demo` returns 0 when every step behaved as expected, 1 otherwise.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from egressd.drill.run import Drill, egress_ip_of
from egressd.lab.netlab import DEFAULT_PREFIX, DEFAULT_STATE_DIR, Lab, egressd_command
from egressd.lab.netns import LabError


class _Steps:
    def __init__(self, out: Callable[[str], None]) -> None:
        self.out = out
        self.failed: list[str] = []
        self.n = 0

    def say(self, text: str) -> None:
        self.n += 1
        self.out(f"\n== {self.n}. {text}")

    def check(self, ok: bool, text: str) -> bool:
        self.out(f"   {'ok' if ok else 'UNEXPECTED'}: {text}")
        if not ok:
            self.failed.append(text)
        return ok


def demo(
    prefix: str = DEFAULT_PREFIX,
    state_dir: str | Path = DEFAULT_STATE_DIR,
    out: Callable[[str], None] = print,
    *,
    mode: str = "static",
    apiserver: str = "embedded",
) -> int:
    """Run the demo on a fresh lab of ``prefix`` in ``state_dir``; the exit code.
    ``mode="kubernetes"``: the policy and the pods live in the lab API server,
    and the demo also labels tiefighter into the policy and out again.
    ``apiserver="kube"``: the lab runs kube-apiserver and etcd (see :class:`Lab`)."""
    steps = _Steps(out)
    steps.say("Remove any lab left over in the state directory")
    _teardown_leftovers(prefix, state_dir, out)
    lab = Lab(prefix, state_dir, mode=mode, apiserver=apiserver)
    server = (
        "kube-apiserver and etcd (RBAC on; the daemons use the egressd ServiceAccount's token)"
        if apiserver == "kube"
        else "an API server"
    )
    try:
        steps.say(
            f"Build Cilium's egress-gateway walkthrough in network namespaces: {server}, four workers "
            "(kind-worker3/4 are the gateways), the pods xwing, ywing, tiefighter and the outpost 172.18.0.7"
            + (
                "; the EgressGatewayPolicy 'outpost' (org=alliance pods, egress-gw=true gateways) and the "
                "Pod objects are in the API server"
                if mode == "kubernetes"
                else ""
            )
        )
        started = time.monotonic()
        lab.up()
        out(f"   lab {prefix!r} is up in {time.monotonic() - started:.1f} s (state and logs in {lab.state.path})")
        _owners(lab, steps)
        _curl(lab, steps)
        if mode == "kubernetes":
            _relabel(lab, steps)
        steps.say("The leases, one per egress IP, and who holds them (egressd lab status)")
        status = subprocess.run(
            [*egressd_command(), "lab", "status", "--state-dir", str(lab.state.path)],
            capture_output=True,
            text=True,
            check=False,
        )
        out("\n".join(f"   {line}" for line in status.stdout.rstrip().splitlines()))
        steps.check(status.returncode == 0, "egressd lab status")
        _failover(lab, steps)
    except KeyboardInterrupt:
        steps.failed.append("interrupted")
        out("\n   interrupted")
    except LabError as exc:
        steps.failed.append(str(exc))
        out(f"\n   UNEXPECTED: {exc}")
    finally:
        steps.say("Remove the lab")
        lab.down()
        out("   done: no namespace, process or state of the lab is left")
    if steps.failed:
        out(f"\nthe demo did not go as expected: {'; '.join(steps.failed)}")
        return 1
    out("\nevery step behaved as expected")
    return 0


def _teardown_leftovers(prefix: str, state_dir: str | Path, out: Callable[[str], None]) -> None:
    removed: list[str] = []
    with contextlib.suppress(LabError):
        removed += Lab.attach(state_dir).down()
    removed += Lab(prefix, state_dir).down()
    out(f"   removed {len(removed)} leftover object(s)" if removed else "   nothing left over")


def _owners(lab: Lab, steps: _Steps) -> None:
    steps.say("Wait until egressd on the gateways has elected an owner for each egress IP")
    deadline = time.monotonic() + 20.0
    holders: dict[str, str | None] = {}
    while time.monotonic() < deadline:
        try:
            holders = {r.egress_ip: r.holder or None for r in lab.leases()}
        except (OSError, LabError, http.client.HTTPException):
            holders = {}
        if all(holders.get(ip) for ip in lab.scenario.egress_ips):
            break
        time.sleep(0.1)
    for ip in lab.scenario.egress_ips:
        steps.check(bool(holders.get(ip)), f"{ip} is owned by {holders.get(ip) or 'nobody'}")


def _curl(lab: Lab, steps: _Steps) -> None:
    url = f"http://{lab.scenario.outpost.address}:{lab.scenario.outpost.http_port}/"
    allowed = set(lab.scenario.outpost.allowed)
    for pod in ("xwing", "ywing", "tiefighter"):
        spec = lab.scenario.pod(pod)
        selected = pod != "tiefighter"
        steps.say(
            f"{pod} ({', '.join(f'{k}={v}' for k, v in spec.labels.items())}) asks the outpost who it is: "
            + ("selected, so it leaves through a gateway as an egress IP" if selected else "not selected")
        )
        status, body = _get(lab, pod, url)
        lab_out = body.decode(errors="replace").strip()
        steps.out(f"   $ curl {url}  (from {pod}, pod address {spec.ip})")
        steps.out(f"   {status} {lab_out}")
        try:
            answer = json.loads(body)
        except ValueError:
            answer = {}
        if selected:
            steps.check(
                status == 200 and answer.get("ip") in allowed and answer.get("allowed") is True,
                f"{pod} is seen as {answer.get('ip')} and allowed",
            )
        else:
            steps.check(
                status == 403 and answer.get("ip") == spec.ip and answer.get("allowed") is False,
                f"{pod} is seen with its pod address {answer.get('ip')} and refused",
            )


def _relabel(lab: Lab, steps: _Steps) -> None:
    url = f"http://{lab.scenario.outpost.address}:{lab.scenario.outpost.http_port}/"
    allowed = set(lab.scenario.outpost.allowed)

    def seen(until: Callable[[int, dict[str, Any]], bool]) -> tuple[int, dict[str, Any], float]:
        started = time.monotonic()
        status, answer = 0, {}
        while time.monotonic() - started < 10.0:
            with contextlib.suppress(OSError, http.client.HTTPException, ValueError):
                status, body = lab.http("tiefighter", url, timeout=0.2)
                answer = json.loads(body)
                if until(status, answer):
                    break
            time.sleep(0.005)
        return status, answer, time.monotonic() - started

    steps.say("Label tiefighter org=alliance, as kubectl label would (egressd lab label tiefighter org=alliance)")
    lab.label_pod("tiefighter", {"org": "alliance"})
    status, answer, took = seen(lambda code, a: code == 200 and a.get("ip") in allowed)
    steps.out(f"   {status} {json.dumps(answer)}")
    steps.check(
        status == 200 and answer.get("ip") in allowed,
        f"tiefighter is selected now, seen as {answer.get('ip')} {took * 1000:.0f} ms after the label",
    )
    policy = lab.policy("outpost").get("status") or {}
    for entry in policy.get("egressIPs", []):
        steps.out(f"   policy status: {entry.get('egressIP')} on {entry.get('node')} (epoch {entry.get('epoch')})")
    steps.say("Label it org=empire again")
    lab.label_pod("tiefighter", {"org": "empire"})
    spec = lab.scenario.pod("tiefighter")
    status, answer, took = seen(lambda code, a: a.get("ip") == spec.ip)
    steps.check(
        status == 403 and answer.get("ip") == spec.ip,
        f"tiefighter leaves with its pod address {answer.get('ip')} again ({took * 1000:.0f} ms) and is refused",
    )


def _get(lab: Lab, pod: str, url: str) -> tuple[int, bytes]:
    """GET from the pod, retried for a few seconds (steering may still be settling)."""
    answer: tuple[int, bytes] | None = None
    error: Exception | None = None
    for _ in range(20):
        try:
            answer = lab.http(pod, url, timeout=1.0)
        except (OSError, http.client.HTTPException) as exc:
            error = exc
        else:
            if pod == "tiefighter" or answer[0] == 200:
                return answer
        time.sleep(0.25)
    if answer is None:
        raise LabError(f"{pod} cannot reach {url}: {error}")
    return answer


def _failover(lab: Lab, steps: _Steps) -> None:
    ip = egress_ip_of(lab, "xwing")
    holder = next((r.holder for r in lab.leases() if r.egress_ip == ip), None)
    steps.say(
        f"Kill the gateway that owns xwing's egress IP {ip} ({holder}) with SIGKILL and keep it down, while "
        "xwing sends a UDP probe to the outpost every 5 ms and a watcher on the switch records which "
        "gateway carries them and who answers ARP for the egress IPs"
    )
    with Drill(lab, probers=("xwing",), settle_timeout=30.0) as drill:
        result = drill.round("kill", 1)
    # xwing's probes on the wire (a gateway SNATs them to an egress IP it owns, not necessarily this one)
    probes = sorted((c for c in result.claims if c.kind == "probe" and c.prober is not None), key=lambda c: c.t)
    before = [c for c in probes if c.node == result.target]
    after = [c for c in probes if c.node != result.target and c.t > result.fault]
    if before:
        steps.out(f"   probes via {result.target} until {result.rel(before[-1].t):+.0f} ms (the fault is at 0)")
    if after:
        steps.out(f"   probes via {after[0].node} from {result.rel(after[0].t):+.0f} ms")
    for change in result.leases:
        if change.ip == ip:
            steps.out(
                f"   lease of {ip}: {change.holder or 'free'} (epoch {change.epoch}) at {result.rel(change.t):+.0f} ms"
            )
    gap = result.gap_ms
    steps.check(bool(after), f"the traffic moved from {result.target} to {after[0].node if after else 'nowhere'}")
    steps.check(
        gap is not None, "xwing's probes reach the outpost again" + (f" after a gap of {gap:.0f} ms" if gap else "")
    )
    steps.check(
        result.dual_owner_ms == 0 and not result.doubles,
        f"no two gateways served one egress IP at once (dual-owner time {result.dual_owner_ms:.0f} ms)",
    )
