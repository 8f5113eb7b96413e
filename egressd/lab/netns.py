"""Network namespaces joined by veth pairs, with a bridge in a namespace of its own, removed whatever happens.

The one namespace builder: the lab (:mod:`egressd.lab.netlab`), the kernel
tests (``tests/kernel/netns.py``) and the benchmarks (``chaos/bench_takeover.py``)
build on :class:`Namespaces`. Names are ``{prefix}{role}``. Links are created
directly inside the namespaces (``ip -n NS link add ... peer ... netns OTHER``),
so nothing ever appears in the root namespace, not even for a moment. Deleting
a namespace deletes its links and, with them, their veth peers; :func:`remove`
first kills the processes still in it, so that it really goes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from egressd.core.errors import EgressdError

IFNAMSIZ = 15


class LabError(EgressdError):
    """The lab could not be built, reached or torn down."""


# --- commands -----------------------------------------------------------------------------


def run_cmd(argv: Sequence[str], *, input_text: str | None = None, check: bool = True, timeout: float = 20.0) -> str:
    """Run a command; its stdout, or :class:`LabError` with its stderr when it fails and ``check``."""
    try:
        proc = subprocess.run(
            list(argv), input=input_text, capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LabError(f"{' '.join(argv)}: {exc}") from exc
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def netns_list() -> set[str]:
    """Names of the named network namespaces (``ip netns list``)."""
    out = run_cmd(["ip", "netns", "list"], check=False)
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def netns_pids(ns: str) -> list[int]:
    out = run_cmd(["ip", "netns", "pids", ns], check=False)
    return [int(p) for p in out.split() if p.isdigit()]


# --- processes ----------------------------------------------------------------------------


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    state = proc_state(pid)
    return state is not None and state != "Z"


def proc_state(pid: int) -> str | None:
    """The one-letter state of ``/proc/PID/stat`` (R, S, T, Z...), None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[0]


def kill_all(pids: Sequence[int], *, wait: float = 3.0) -> list[int]:
    """SIGKILL every pid and wait until they are gone; the pids that were killed."""
    killed = []
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and any(pid_alive(p) for p in killed):
        time.sleep(0.02)
    return killed


# --- building and removing ------------------------------------------------------------------


def remove(namespaces: Iterable[str]) -> list[str]:
    """Kill the processes in those of ``namespaces`` that exist, then delete them (last first);
    what was removed (``process PID``, ``namespace NAME``). Raises :class:`LabError` when a
    namespace is still there afterwards."""
    present = netns_list()
    mine = [ns for ns in namespaces if ns in present]
    stray = [pid for ns in mine for pid in netns_pids(ns)]
    removed = [f"process {p}" for p in kill_all(stray)]
    for ns in reversed(mine):
        with contextlib.suppress(LabError):  # the others go all the same; the check below tells
            run_cmd(["ip", "netns", "del", ns], check=False)
        removed.append(f"namespace {ns}")
    left = set(mine) & netns_list()
    if left:
        raise LabError(f"could not delete namespaces: {', '.join(sorted(left))}")
    return removed


@dataclass
class Namespaces:
    """The namespaces one owner creates, ``{prefix}{role}``; :meth:`close` removes them all
    (also usable as a context manager)."""

    prefix: str
    created: list[str] = field(default_factory=list)

    def __enter__(self) -> Namespaces:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ip(self, ns: str, *args: str) -> None:
        run_cmd(["ip", "-n", ns, *args])

    def add(self, role: str) -> str:
        """A new empty namespace with loopback up; its name."""
        name = f"{self.prefix}{role}"
        run_cmd(["ip", "netns", "add", name])
        self.created.append(name)
        self.ip(name, "link", "set", "lo", "up")
        return name

    def bridge(self, ns: str, name: str = "br0", *options: str) -> None:
        """A bridge ``name`` in ``ns``, up (``options``: e.g. ``stp_state 0``)."""
        self.ip(ns, "link", "add", name, "type", "bridge", *options)
        self.ip(ns, "link", "set", name, "up")

    def switch(self, role: str = "sw", name: str = "br0") -> str:
        """A new namespace holding bridge ``name``; its name."""
        ns = self.add(role)
        self.bridge(ns, name)
        return ns

    def plug(self, ns: str, ifname: str, switch: str, port: str, bridge: str = "br0") -> None:
        """A veth from ``ifname`` in ``ns`` to ``port`` of ``bridge`` in ``switch``, both ends up."""
        if len(port) > IFNAMSIZ:
            raise LabError(f"interface name {port!r} is longer than {IFNAMSIZ} characters")
        self.ip(ns, "link", "add", ifname, "type", "veth", "peer", "name", port, "netns", switch)
        self.ip(switch, "link", "set", port, "master", bridge, "up")
        self.ip(ns, "link", "set", ifname, "up")

    def wire(self, a: str, a_if: str, b: str, b_if: str) -> None:
        """A point-to-point veth between ``a_if`` in ``a`` and ``b_if`` in ``b``, both ends up."""
        self.ip(a, "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", b)
        self.ip(a, "link", "set", a_if, "up")
        self.ip(b, "link", "set", b_if, "up")

    def address(self, ns: str, ifname: str, *cidrs: str) -> None:
        for cidr in cidrs:
            self.ip(ns, "addr", "add", cidr, "dev", ifname)

    def attach(self, role: str, switch: str, addresses: Sequence[str] = (), ifname: str = "net0") -> str:
        """A new namespace with ``ifname`` on the bridge ``br0`` of ``switch`` (port ``p-<role>``),
        carrying ``addresses``; its name."""
        ns = self.add(role)
        self.plug(ns, ifname, switch, f"p-{role}"[:IFNAMSIZ])
        self.address(ns, ifname, *addresses)
        return ns

    def close(self) -> list[str]:
        """Remove every namespace created here, with the processes in it; what was removed."""
        try:
            return remove(self.created)
        finally:
            self.created.clear()


def link_mac(ns: str, ifname: str) -> str:
    """The MAC address of ``ifname`` in ``ns``, lower case."""
    return run_cmd(["ip", "-n", ns, "-br", "link", "show", "dev", ifname]).split()[2].lower()
