"""The timeline of a daemon restarted after SIGKILL, in a running lab.

    python chaos/restart_timeline.py --state-dir /run/egressd-lab --rounds 3

Needs root and a lab (``egressd lab up``). Per round:

1. the node serving ``--ip`` is found (the namespace whose ``net0`` has it);
2. it is held (the lab's supervisor does not restart it), SIGKILLed, and
   ``RESTART_SEC`` (100 ms, as the supervisor) later started again by this
   script with the same arguments under ``python -X importtime``;
3. meanwhile the address is read every few ms (``ip -j addr``): when it
   disappears, when it comes back, when its ``valid_lft`` is re-armed;
4. after ``--observe`` seconds the process is SIGKILLed once more and the
   hold lifted, so the supervisor starts the lab's own process again.

Prints, from the kill: the exec, the import blocks of the start-up (the
cumulative times of ``-X importtime``, top-level imports of 5 ms or more),
the daemon's log lines that mark the steps (addresses kept, starting, leases
read, node lease renewed and members started, adoption decided, claim
written, SNAT, first GARP), and what the address did.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

RESTART_SEC = 0.1

MARKS = (
    ("early re-arm", re.compile(r"re-armed the address lifetime")),
    ("egressd starting", re.compile(r"egressd starting")),
    ("leases read, kept", re.compile(r"reconcile: keeping")),
    ("renewed, members on", re.compile(r"started \d+ member")),
    ("adopt decided", re.compile(r"decision acquire \(adopt")),
    ("claim written", re.compile(r"acquired the lease \(adopt")),
    ("SNAT active", re.compile(r"SNAT to \S+ active")),
    ("first GARP", re.compile(r"announced \S+ on")),
)
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


@dataclass
class AddressWatch:
    """Reads ``ip`` on ``net0`` of ``ns`` every few ms: present or not, and the
    kernel's last-update stamp of its lifetime (``IFA_CACHEINFO.tstamp``,
    hundredths of a second), which changes when the lifetime is re-armed."""

    ns: str
    ip: str
    samples: list[tuple[float, int | None]] = field(default_factory=list)
    """(wall time, tstamp or None when absent)."""
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        from pyroute2 import IPRoute  # noqa: PLC0415 — in the thread that uses it

        with IPRoute(netns=self.ns) as ipr:
            while not self.stop.is_set():
                stamp: int | None = None
                for msg in ipr.get_addr(address=self.ip):
                    info = msg.get_attr("IFA_CACHEINFO")
                    stamp = int(info["tstamp"]) if info else 0
                self.samples.append((time.time(), stamp))
                time.sleep(0.002)


def holder(prefix: str, nodes: list[str], ip: str) -> str | None:
    for node in nodes:
        out = subprocess.run(["ip", "-n", prefix + node, "-j", "addr"], capture_output=True, text=True, check=False)
        if f'"{ip}"' in out.stdout:
            return node
    return None


def import_blocks(stderr: str, floor_us: int = 5000) -> list[tuple[str, float]]:
    """Top-level imports (of the importtime report) of ``floor_us`` or more, in order, in ms."""
    out = []
    for line in stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)", line)
        if m and len(m.group(3)) <= 1 and int(m.group(2)) >= floor_us:
            out.append((m.group(4), int(m.group(2)) / 1000))
    return out


def log_marks(stderr: str) -> list[tuple[str, float, str]]:
    out: list[tuple[str, float, str]] = []
    seen: set[str] = set()
    for line in stderr.splitlines():
        m = LOG_TIME.match(line)
        if not m:
            continue
        at = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        for name, pattern in MARKS:
            if name not in seen and pattern.search(line):
                seen.add(name)
                out.append((name, at, line[24:].strip()[:110]))
    return out


def one_round(state_dir: Path, ip: str, observe: float) -> None:
    state = json.loads((state_dir / "state.json").read_text())
    pids = json.loads((state_dir / "pids.json").read_text())["processes"]
    prefix = state["prefix"]
    specs = {p["name"]: p for p in state["processes"]}
    nodes = [n for n in specs if n.startswith("kind-")]
    node = holder(prefix, nodes, ip)
    if node is None:
        sys.exit(f"nobody serves {ip}")
    argv = list(specs[node]["argv"])
    # ip netns exec NS <venv>/bin/egressd run ... -> python -X importtime -c main
    exe = argv.index(next(a for a in argv if a.endswith("/egressd")))
    python = str(Path(argv[exe]).with_name("python3"))
    rest = argv[exe + 1 :]
    main = "import sys; from egressd.cli.main import main; sys.exit(main())"
    cmd = [*argv[:exe], python, "-X", "importtime", "-c", main, *rest]  # main() reads sys.argv[1:]
    hold = state_dir / "hold" / node
    hold.write_text("timeline\n")
    watch = AddressWatch(prefix + node, ip)
    thread = threading.Thread(target=watch.run, daemon=True)
    thread.start()
    time.sleep(0.3)
    killed = time.time()
    os.kill(int(pids[node]["pid"]), signal.SIGKILL)
    time.sleep(RESTART_SEC)
    err_path = state_dir / "logs" / f"timeline-{node}.stderr"
    with err_path.open("w") as err:
        started = time.time()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=os.environ.copy(), cwd="/")
        time.sleep(observe)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    watch.stop.set()
    thread.join()
    hold.unlink()
    stderr = err_path.read_text()

    def ms(t: float) -> float:
        return (t - killed) * 1000

    print(f"\n== {node} serving {ip}: SIGKILL at 0 ms")
    print(f"{ms(started):8.1f}  exec (python -X importtime)")
    total = 0.0
    for name, cum in import_blocks(stderr):
        total += cum
        print(f"          import {name:42s} {cum:7.1f} ms (sum {total:6.1f})")
    for name, at, line in log_marks(stderr):
        print(f"{ms(at):8.1f}  {name:20s} {line}")
    prev: int | None = -1
    for at, stamp in watch.samples:
        if stamp != prev:
            what = "gone" if stamp is None else "present" if prev in (-1, None) else "lifetime re-armed"
            print(f"{ms(at):8.1f}  address {what}")
            prev = stamp
    if watch.samples:
        print(f"          (address read every ~3 ms until {ms(watch.samples[-1][0]):.1f} ms)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--state-dir", default="/run/egressd-lab")
    p.add_argument("--ip", default="172.18.0.42")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--observe", type=float, default=2.5, help="seconds to watch the restarted process")
    p.add_argument("--settle", type=float, default=4.0, help="seconds between rounds")
    args = p.parse_args()
    for i in range(args.rounds):
        if i:
            time.sleep(args.settle)
        one_round(Path(args.state_dir), args.ip, args.observe)


if __name__ == "__main__":
    main()
