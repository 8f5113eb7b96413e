"""Sample the CPU of every thread of running egressd daemons, interval by interval.

Reads utime + stime of ``/proc/PID/task/TID/stat`` every ``--every`` seconds for
``--seconds`` and prints, per interval and per daemon, each thread's CPU in % of one
core and the total; at the end, the whole window's. Nothing is paused or traced (unlike a
sampling profiler in its default mode), so the daemons run as they would.

The daemons are the children of ``--parent`` (a ``chaos/bench_election.py`` run) whose
command line is ``egressd.cli.main run``, named by their ``--config`` file, or the
processes given by ``--pid``. Threads are listed in the order of their ids (the order they
were created in): the event loop first.

    python chaos/sample_threads.py --parent $(pgrep -f 'bench_election.py --ips 1000') \\
        --seconds 300 --every 10
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def children(parent: int) -> dict[int, str]:
    """The daemons started by ``parent``: pid -> name (its config file's stem)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        args = [a.decode(errors="replace") for a in argv if a]
        if ppid != parent or "egressd.cli.main" not in args or "run" not in args:
            continue
        config = args[args.index("--config") + 1] if "--config" in args else entry.name
        found[int(entry.name)] = Path(config).stem
    return found


def threads(pid: int) -> dict[int, tuple[str, float]]:
    """tid -> (thread name, CPU seconds so far) of every thread of ``pid``."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue  # ended meanwhile
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat.rsplit(")", 1)[1].split()
        out[int(task.name)] = (name, (int(fields[11]) + int(fields[12])) / TICK)
    return out


def report(label: str, before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]], span: float) -> str:
    parts = []
    total = 0.0
    for tid in sorted(after):
        name, cpu = after[tid]
        used = cpu - before.get(tid, (name, 0.0))[1]
        total += used
        parts.append(f"{tid}:{name} {used / span * 100:.2f}")
    return f"{label} total {total / span * 100:.2f}  [" + ", ".join(parts) + "]"


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--parent", type=int, help="the benchmark whose daemons to sample")
    parser.add_argument("--pid", type=int, action="append", default=[], help="a daemon to sample (repeatable)")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long (default 60)")
    parser.add_argument("--every", type=float, default=10.0, help="interval (default 10)")
    args = parser.parse_args()
    if not 0 < args.every <= args.seconds <= 7200:
        parser.error("0 < --every <= --seconds <= 7200")
    daemons = {pid: str(pid) for pid in args.pid}
    if args.parent is not None:
        daemons |= children(args.parent)
    if not daemons:
        parser.error("no daemon found (--parent PID of a benchmark, or --pid)")
    first = {pid: threads(pid) for pid in daemons}
    last = dict(first)
    started = time.monotonic()
    previous = 0.0
    while previous < args.seconds:
        time.sleep(max(0.0, min(args.every, args.seconds - previous)))
        offset = time.monotonic() - started
        for pid, name in daemons.items():
            now = threads(pid)
            print(report(f"{name} {previous:4.0f}-{offset:4.0f} s", last[pid], now, offset - previous))
            last[pid] = now
        previous = offset
        sys.stdout.flush()
    span = time.monotonic() - started
    for pid, name in daemons.items():
        print(report(f"{name} whole {span:.0f} s", first[pid], last[pid], span))
    return 0


if __name__ == "__main__":
    sys.exit(main())
