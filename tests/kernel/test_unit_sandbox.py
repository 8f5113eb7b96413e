"""The daemon works inside the sandbox systemd/egressd.service gives it.

The unit's system-call filter (``SystemCallFilter=`` lines, expanded with
``systemd-analyze syscall-filter``) and its /proc (``ProcSubset=pid``) are
applied to ``egressd check-config``, ``egressd run`` with the kernel data
plane, and ``egressd cleanup``, in a network namespace: the daemon claims its
egress IP with nftables SNAT and ARP, renews, and on SIGTERM withdraws and
exits 0. Two probes show the sandbox is in force: ``nice()`` (``@resources``)
fails with EPERM, and /proc/sys is not there.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.kernel.netns import Lab, ns_exec

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"),
]

UNIT = Path(__file__).parents[2] / "systemd" / "egressd.service"
EGRESS_IP = "10.0.0.42"


def filter_lines() -> list[str]:
    prefix = "SystemCallFilter="
    return [line[len(prefix) :].strip() for line in UNIT.read_text().splitlines() if line.startswith(prefix)]


def expand(name: str, seen: set[str] | None = None) -> set[str]:
    """The system calls of a name: itself, or every call of a ``@group``, recursively."""
    if not name.startswith("@"):
        return {name}
    seen = seen if seen is not None else set()
    if name in seen:
        return set()
    seen.add(name)
    out = subprocess.run(["systemd-analyze", "syscall-filter", name], capture_output=True, text=True, check=True)
    calls: set[str] = set()
    for line in out.stdout.splitlines()[1:]:
        entry = line.strip()
        if entry and not entry.startswith("#"):
            calls |= expand(entry, seen)
    return calls


def allowed_calls() -> set[str]:
    """What the unit's filter lets through: the allow-lists, minus every ``~`` deny-list
    (systemd applies the lines in order; this unit allows first, then denies)."""
    allowed: set[str] = set()
    for line in filter_lines():
        if line.startswith("~"):
            for name in line[1:].split():
                allowed -= expand(name)
        else:
            for name in line.split():
                allowed |= expand(name)
    return allowed


def sandboxed(ns: str, allow_file: Path, *argv: str) -> list[str]:
    return [
        "ip", "netns", "exec", ns,
        "unshare", "--mount", "--propagation", "private",
        sys.executable, "-m", "tests.kernel.sandboxed", str(allow_file), "--", *argv,
    ]  # fmt: skip


def egressd(*argv: str) -> list[str]:
    return [sys.executable, "-m", "egressd.cli.main", *argv]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait(cond: object, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"{what} within {timeout}s")


def addresses(ns: str) -> set[str]:
    out = ns_exec(ns, "ip", "-j", "addr", "show", "dev", "net0")
    return {a["local"] for link in json.loads(out) for a in link.get("addr_info", [])}


def test_the_daemon_works_inside_the_units_sandbox(lab: Lab, tmp_path: Path) -> None:
    allowed = allowed_calls()
    denied = expand("@privileged") | expand("@resources")
    assert {"setrlimit", "sched_setaffinity", "capset", "setuid"} <= denied
    assert not allowed & {"nice", "setpriority", "setrlimit", "capset", "setuid", "setgroups", "bpf"}
    allow_file = tmp_path / "allowed"
    allow_file.write_text("\n".join(sorted(allowed)) + "\n")

    gw = lab.attach("gw", ["10.0.0.3/24"])
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}

    # the sandbox is in force: a call of @resources fails, /proc has only processes
    probe = subprocess.run(
        sandboxed(gw.ns, allow_file, sys.executable, "-c", "import os; os.nice(1)"),
        capture_output=True, text=True, env=env, check=False, timeout=60,
    )  # fmt: skip
    assert probe.returncode != 0 and "PermissionError" in probe.stderr, probe.stderr
    probe = subprocess.run(
        sandboxed(gw.ns, allow_file, "sh", "-c", "test ! -e /proc/sys/kernel && test -e /proc/self/status"),
        capture_output=True, text=True, env=env, check=False, timeout=60,
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr

    port = free_port()
    api_log = (tmp_path / "apiserver.log").open("wb")
    api = subprocess.Popen(
        ["ip", "netns", "exec", gw.ns, *egressd("apiserver", "--listen", f"127.0.0.1:{port}")],
        stdout=api_log, stderr=api_log, env=env,
    )  # fmt: skip
    daemon: subprocess.Popen[bytes] | None = None
    try:
        create_ns = (
            "import json, time, urllib.request\n"
            "for _ in range(200):\n"
            "    try:\n"
            f"        req = urllib.request.Request('http://127.0.0.1:{port}/api/v1/namespaces',"
            " data=json.dumps({'metadata': {'name': 'egressd'}}).encode(),"
            " headers={'Content-Type': 'application/json'}, method='POST')\n"
            "        urllib.request.urlopen(req, timeout=2).close(); break\n"
            "    except OSError: time.sleep(0.05)\n"
            "else: raise SystemExit('API server did not start')\n"
        )
        ns_exec(gw.ns, sys.executable, "-c", create_ns, timeout=30)
        config = tmp_path / "egressd.yaml"
        config.write_text(
            json.dumps(
                {
                    "node": {"name": "gw-a", "address": "10.0.0.3"},
                    "kubernetes": {"access": "url", "url": f"http://127.0.0.1:{port}", "namespace": "egressd"},
                    "metrics": {"listen": ""},
                    "groups": [
                        {
                            "name": "outpost",
                            "egressIPs": [EGRESS_IP],
                            "interface": "net0",
                            "candidates": ["gw-a"],
                            "sourceCIDRs": ["10.244.1.0/24"],
                            "destinationCIDRs": ["172.18.0.0/16"],
                        }
                    ],
                }
            )
        )
        # ExecStartPre
        check = subprocess.run(
            sandboxed(gw.ns, allow_file, *egressd("check-config", str(config))),
            capture_output=True, text=True, env=env, check=False, timeout=60,
        )  # fmt: skip
        assert check.returncode == 0, check.stderr

        # ExecStart: claims the IP (address, SNAT, ARP) and keeps renewing
        log_path = tmp_path / "daemon.log"
        with log_path.open("wb") as log:
            daemon = subprocess.Popen(
                sandboxed(gw.ns, allow_file, *egressd("run", "--config", str(config))),
                stdout=log, stderr=log, env=env,
            )  # fmt: skip
        wait(lambda: EGRESS_IP in addresses(gw.ns), 15, f"{EGRESS_IP} not claimed: {log_path.read_text()[-2000:]}")
        assert EGRESS_IP in ns_exec(gw.ns, "nft", "list", "ruleset")
        time.sleep(2.0)  # several renewals, fence refreshes and ARP repeats
        assert daemon.poll() is None, log_path.read_text()[-2000:]
        assert EGRESS_IP in addresses(gw.ns)

        # stop: withdraws and exits 0
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(20) == 0, log_path.read_text()[-2000:]
        assert EGRESS_IP not in addresses(gw.ns)
        text = log_path.read_text()
        assert "Traceback" not in text and "Operation not permitted" not in text, text[-2000:]

        # ExecStopPost
        cleanup = subprocess.run(
            sandboxed(gw.ns, allow_file, *egressd("cleanup", "--quiet")),
            capture_output=True, text=True, env=env, check=False, timeout=60,
        )  # fmt: skip
        assert cleanup.returncode == 0, cleanup.stderr
        assert "egressd" not in ns_exec(gw.ns, "nft", "list", "ruleset")
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        api.terminate()
        try:
            api.wait(10)
        except subprocess.TimeoutExpired:
            api.kill()
            api.wait()
        api_log.close()
