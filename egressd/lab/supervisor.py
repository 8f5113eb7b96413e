"""The lab's process supervisor: ``Restart=always``, ``RestartSec=100ms``, and holds.

``egressd lab up`` starts one supervisor per lab, detached (``setsid``), as
``python -m egressd.lab.supervisor --state-dir DIR`` (or ``egressd lab
supervise``). It reads the processes to run from ``DIR/state.json`` and keeps
each one running the way systemd keeps a ``Restart=always`` unit running:

* a process that exits, whatever its status or signal, is started again
  :data:`RESTART_SEC` later;
* unless it is **held**: while the file ``DIR/hold/<name>`` exists, a process
  that exits stays down (and one that is down is not started). Removing the
  file starts it again within :data:`POLL_INTERVAL`. Holding does not stop a
  running process; drills hold, then kill, to simulate a node whose daemon is
  gone for good;
* a process with ``after`` waits for the gate file ``DIR/<after>`` before its
  first start (the daemons wait until the API server is seeded).

SIGTERM/SIGINT stop everything: the highest ``tier`` first (the daemons, so
that they can still release their leases through the API server), each
process with SIGCONT + SIGTERM (a frozen process must be able to die), then
SIGKILL after its ``stop_timeout``.

What it writes (all under the state dir; see :class:`StateDir`):
``supervisor.pid``; ``pids.json`` (atomically replaced on every start and
exit: pid, starts, last exit status); ``logs/<name>.log`` (the process's
stdout and stderr, appended across restarts); ``logs/events.jsonl`` (one
``start``/``exit`` record per event with the CLOCK_MONOTONIC time ``t``, so
drills can line restarts up with probe records).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

RESTART_SEC = 0.1
"""Delay between the exit of a process and its restart (systemd ``RestartSec=100ms``)."""

POLL_INTERVAL = 0.05
"""How often a process that is held, or waits for its gate, looks again."""

ENV_LAB = "EGRESSD_LAB"
"""Environment variable carrying the lab's prefix into the supervisor and every
process it starts: ``egressd lab down`` finds a crashed lab's processes by it."""


class StateDir:
    """The layout of a lab's state directory."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @property
    def state_file(self) -> Path:
        return self.path / "state.json"

    @property
    def pids_file(self) -> Path:
        return self.path / "pids.json"

    @property
    def supervisor_pid_file(self) -> Path:
        return self.path / "supervisor.pid"

    @property
    def hold_dir(self) -> Path:
        return self.path / "hold"

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    @property
    def events_file(self) -> Path:
        return self.logs / "events.jsonl"

    @property
    def config_dir(self) -> Path:
        return self.path / "config"

    def hold_file(self, name: str) -> Path:
        return self.hold_dir / name

    def log_file(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def gate(self, name: str) -> Path:
        return self.path / name

    def read_json(self, path: Path) -> dict[str, Any] | None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None


def write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    """Replace ``path`` so that readers see the old or the new content, never half of it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


@dataclass(frozen=True)
class ProcessSpec:
    """One supervised process."""

    name: str
    """Unique; names the log file and the hold file (a daemon's name is its node's)."""
    argv: tuple[str, ...]
    """Full command line, ``ip netns exec NS ...`` included (that exec replaces itself
    with the command, so the pid is the command's)."""
    restart: bool = True
    """``Restart=always`` when true; started once otherwise."""
    after: str | None = None
    """Gate file in the state dir that must exist before the first start."""
    tier: int = 0
    """Stop order: higher tiers are stopped first."""
    stop_timeout: float = 5.0
    """Seconds between SIGTERM and SIGKILL when the supervisor stops."""

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "argv": list(self.argv),
            "restart": self.restart,
            "after": self.after,
            "tier": self.tier,
            "stopTimeout": self.stop_timeout,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ProcessSpec:
        return cls(
            name=str(data["name"]),
            argv=tuple(str(a) for a in data["argv"]),
            restart=bool(data.get("restart", True)),
            after=data.get("after"),
            tier=int(data.get("tier", 0)),
            stop_timeout=float(data.get("stopTimeout", 5.0)),
        )


@dataclass
class _Status:
    pid: int | None = None
    starts: int = 0
    last_exit: int | None = None
    started_at: float | None = None
    exited_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "starts": self.starts,
            "lastExit": self.last_exit,
            "startedAt": self.started_at,
            "exitedAt": self.exited_at,
        }


@dataclass
class Supervisor:
    """Keeps the processes of ``specs`` running; :meth:`run` until SIGTERM/SIGINT."""

    state: StateDir
    specs: Sequence[ProcessSpec]
    _status: dict[str, _Status] = field(default_factory=dict)
    _stop_tier: dict[int, asyncio.Event] = field(default_factory=dict)

    async def run(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        self.state.logs.mkdir(parents=True, exist_ok=True)
        self.state.hold_dir.mkdir(parents=True, exist_ok=True)
        self._status = {spec.name: _Status() for spec in self.specs}
        self._stop_tier = {spec.tier: asyncio.Event() for spec in self.specs}
        self._publish()
        tasks = {spec.name: asyncio.create_task(self._keep(spec), name=f"keep-{spec.name}") for spec in self.specs}
        log.info("supervising %s", ", ".join(tasks))
        await stop.wait()
        log.info("stopping")
        for tier in sorted(self._stop_tier, reverse=True):
            self._stop_tier[tier].set()
            members = [tasks[s.name] for s in self.specs if s.tier == tier]
            results = await asyncio.gather(*members, return_exceptions=True)
            for result in results:
                if isinstance(result, BaseException):
                    log.error("keeper failed: %r", result)
        log.info("stopped")

    async def _keep(self, spec: ProcessSpec) -> None:
        stop = self._stop_tier[spec.tier]
        status = self._status[spec.name]
        with self.state.log_file(spec.name).open("ab") as output:
            while not stop.is_set():
                if spec.after and not self.state.gate(spec.after).exists():
                    await _wait(stop, POLL_INTERVAL)
                    continue
                if self.state.hold_file(spec.name).exists():
                    await _wait(stop, POLL_INTERVAL)
                    continue
                try:
                    proc = await asyncio.create_subprocess_exec(
                        *spec.argv, stdin=asyncio.subprocess.DEVNULL, stdout=output, stderr=output, cwd="/"
                    )
                except OSError as exc:
                    log.error("cannot start %s: %s", spec.name, exc)
                    self._event("start-failed", spec.name, None, error=str(exc))
                    await _wait(stop, RESTART_SEC)
                    continue
                status.pid, status.starts, status.started_at = proc.pid, status.starts + 1, _monotonic()
                self._event("start", spec.name, proc.pid, starts=status.starts)
                self._publish()
                await self._until_exit(proc, stop, spec.stop_timeout)
                status.pid, status.last_exit, status.exited_at = None, proc.returncode, _monotonic()
                held = self.state.hold_file(spec.name).exists()
                self._event("exit", spec.name, proc.pid, rc=proc.returncode, held=held)
                self._publish()
                if not spec.restart:
                    break
                await _wait(stop, RESTART_SEC)

    @staticmethod
    async def _until_exit(proc: asyncio.subprocess.Process, stop: asyncio.Event, stop_timeout: float) -> None:
        exited = asyncio.create_task(proc.wait(), name=f"wait-{proc.pid}")
        stopping = asyncio.create_task(stop.wait(), name=f"stop-{proc.pid}")
        try:
            await asyncio.wait({exited, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not exited.done():
                for sig in (signal.SIGCONT, signal.SIGTERM):
                    with contextlib.suppress(ProcessLookupError):
                        proc.send_signal(sig)
                try:
                    await asyncio.wait_for(asyncio.shield(exited), stop_timeout)
                except TimeoutError:
                    log.warning("pid %d did not stop within %.1f s: SIGKILL", proc.pid, stop_timeout)
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
            await exited
        finally:
            stopping.cancel()
            exited.cancel()

    def _event(self, event: str, name: str, pid: int | None, **extra: Any) -> None:
        record = {"t": _monotonic(), "wall": time.time(), "event": event, "name": name, "pid": pid, **extra}
        log.info("%s %s pid=%s %s", event, name, pid, extra or "")
        try:
            with self.state.events_file.open("a", encoding="utf-8") as f:
                f.write(json.dumps(record, separators=(",", ":")) + "\n")
        except OSError as exc:
            log.warning("cannot write %s: %s", self.state.events_file, exc)

    def _publish(self) -> None:
        try:
            write_json_atomic(
                self.state.pids_file,
                {
                    "supervisor": os.getpid(),
                    "processes": {name: st.to_json() for name, st in self._status.items()},
                },
            )
        except OSError as exc:
            log.warning("cannot write %s: %s", self.state.pids_file, exc)


async def _wait(event: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds``, or less if ``event`` is set."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()


def _monotonic() -> float:
    return time.clock_gettime(time.CLOCK_MONOTONIC)


def load_specs(state: StateDir) -> list[ProcessSpec]:
    data = state.read_json(state.state_file)
    if data is None:
        raise FileNotFoundError(f"no readable lab state in {state.state_file}")
    return [ProcessSpec.from_json(p) for p in data.get("processes", [])]


def supervise(state_dir: str | Path) -> int:
    """Run the supervisor of the lab in ``state_dir`` until SIGTERM/SIGINT (blocking)."""
    state = StateDir(state_dir)
    specs = load_specs(state)
    pid_file = state.supervisor_pid_file
    pid_file.write_text(f"{os.getpid()}\n", encoding="utf-8")
    try:
        asyncio.run(Supervisor(state, specs).run())
    finally:
        with contextlib.suppress(OSError):
            if pid_file.read_text(encoding="utf-8").strip() == str(os.getpid()):
                pid_file.unlink()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m egressd.lab.supervisor", description="Supervise a lab's processes.")
    p.add_argument("--state-dir", required=True)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    try:
        return supervise(args.state_dir)
    except (OSError, ValueError, KeyError) as exc:
        print(f"supervisor: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
