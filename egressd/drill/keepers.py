"""The long-lived connections of a round: :mod:`egressd.lab.longlived`'s server in the outpost's
namespace and a keeper in every pod's, started before the fault and stopped once the round ends
(or the drill fails), their reports read back for :mod:`egressd.drill.survival`."""

from __future__ import annotations

import contextlib
import json
import selectors
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from egressd.drill.instruments import DrillError
from egressd.drill.survival import SYNC_INTERVAL
from egressd.lab.longlived import TCP_PORT, UDP_PORT
from egressd.lab.netlab import Lab
from egressd.lab.outpost import monotonic

UDP_BASE_PORT = 41000
"""The first fixed UDP source port; pod ``i`` uses ``UDP_BASE_PORT + 100 * i`` onwards, so that
the flows of two pods behind one egress IP never ask the SNAT for the same port."""

MAX_CONNECTIONS = 1000
"""Upper bound of ``--connections`` (file descriptors and the keepers' CPU on a lab machine)."""


@dataclass(frozen=True)
class Connections:
    """What a drill keeps through every fault."""

    total: int = 0
    """TCP connections over all pods: half server-first, half client-first, the same number per pod."""
    udp_per_pod: int = 0
    """UDP flows per pod, on fixed source ports."""
    sync_interval: float = SYNC_INTERVAL
    """Seconds; connections at least this old at the fault are reported apart."""
    ramp: float = 1.0
    """Seconds over which a pod's connections open, so that some are young at the fault."""

    @property
    def enabled(self) -> bool:
        return self.total > 0 or self.udp_per_pod > 0

    def problems(self, pods: int) -> list[str]:
        """Every setting out of bounds, naming its option."""
        out = []
        split = 2 * pods
        if not 0 <= self.total <= MAX_CONNECTIONS:
            out.append(f"--connections: must be 0 to {MAX_CONNECTIONS}, got {self.total}")
        elif self.total % split:
            out.append(
                f"--connections: must be a multiple of {split} (half server-first, half client-first, the same "
                f"number from each of the {pods} pods), got {self.total}"
            )
        if not 0 <= self.udp_per_pod <= 100:
            out.append(f"--udp-flows: must be 0 to 100 per pod, got {self.udp_per_pod}")
        if not 0 < self.sync_interval <= 60:
            out.append(f"--sync-interval: must be above 0 and at most 60000 ms, got {self.sync_interval * 1000:g}")
        if not 0 <= self.ramp <= 30:
            out.append(f"--ramp: must be 0 to 30 s, got {self.ramp:g}")
        return out


def _module(*args: str) -> list[str]:
    return [sys.executable, "-m", "egressd.lab.longlived", *args]


class Keepers:
    """The server and the keepers of one round. ``start()`` returns once every connection is open;
    ``stop()`` returns the reports; ``kill()`` ends whatever still runs (idempotent)."""

    def __init__(self, lab: Lab, pods: Sequence[str], settings: Connections) -> None:
        self.lab = lab
        self.pods = tuple(pods)
        self.settings = settings
        self.server: subprocess.Popen[str] | None = None
        self.keepers: dict[str, subprocess.Popen[str]] = {}
        self.ready: dict[str, dict[str, Any]] = {}

    def start(self, timeout: float = 15.0) -> Keepers:
        try:
            self._start(timeout)
        except BaseException:
            self.kill()
            raise
        return self

    def _start(self, timeout: float) -> None:
        s, out = self.settings, self.lab.scenario.outpost
        self.server = self._popen(
            out.name, _module("serve", "--tcp", f"0.0.0.0:{TCP_PORT}", "--udp", f"0.0.0.0:{UDP_PORT}")
        )
        self.ready["server"] = self._ready("server", self.server, timeout)
        per_kind = s.total // (2 * len(self.pods))
        for i, pod in enumerate(self.pods):
            argv = _module(
                "keep",
                "--server",
                out.address,
                "--pod",
                pod,
                "--server-first",
                str(per_kind),
                "--client-first",
                str(per_kind),
                "--udp-flows",
                str(s.udp_per_pod),
                "--udp-base-port",
                str(UDP_BASE_PORT + 100 * i),
                "--ramp",
                str(s.ramp),
            )
            self.keepers[pod] = self._popen(pod, argv)
        for pod, proc in self.keepers.items():
            self.ready[pod] = self._ready(f"keeper in {pod}", proc, timeout + s.ramp)
        failed = [c for r in self.ready.values() for c in r.get("failed", [])]
        if failed:
            raise DrillError(f"long-lived connections could not open: {', '.join(failed)}")

    def _popen(self, host: str, argv: Sequence[str]) -> subprocess.Popen[str]:
        return self.lab.popen(
            host, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
        )

    @staticmethod
    def _ready(name: str, proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
        """The process's ``ready`` line, or a :class:`DrillError` with its error output."""
        assert proc.stdout is not None
        deadline = monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            while monotonic() < deadline:
                if sel.select(timeout=min(0.2, max(0.0, deadline - monotonic()))):
                    line = proc.stdout.readline()
                    if not line:
                        break
                    with contextlib.suppress(ValueError):
                        record = json.loads(line)
                        if isinstance(record, dict) and "ready" in record:
                            return record
                elif proc.poll() is not None:
                    break
        proc.kill()
        _, err = proc.communicate(timeout=5)
        raise DrillError(f"long-lived {name} did not get ready in {timeout:g} s: {err.strip()[-500:] or 'no output'}")

    def stop(self, timeout: float = 10.0) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        """Stop the keepers (they say ``BYE``), then the server; their reports."""
        reports = [r for proc in self.keepers.values() if (r := _report(proc, timeout)) is not None]
        server = _report(self.server, timeout) if self.server is not None else None
        self.kill()
        return reports, server

    def kill(self) -> None:
        for proc in [*self.keepers.values(), *([self.server] if self.server is not None else [])]:
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired, ValueError, OSError):
                proc.communicate(timeout=5)


def _report(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any] | None:
    """SIGTERM, then the last JSON line the process prints (its report)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise DrillError(f"long-lived process {proc.args!r} did not stop in {timeout:g} s") from None
    for text in reversed(out.splitlines()):
        with contextlib.suppress(ValueError):
            record = json.loads(text)
            if isinstance(record, dict) and "role" in record:
                return record
    raise DrillError(f"long-lived process {proc.args!r} left no report: {err.strip()[-500:] or 'no output'}")
