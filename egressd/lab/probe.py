"""A standalone UDP prober and its analysis, for drills outside the lab.

Inside a pod (the kind drill runs it with ``kubectl exec``)::

    python -m egressd.lab.probe send --target 172.18.0.7:9000 --seconds 20 > probes.jsonl

sends a datagram every ``--interval`` seconds (5 ms by default) to the
outpost's probe port and prints one JSON line per datagram when its echo comes
back (or when it is given up): ``{"seq", "sent", "echo", "source"}`` with
CLOCK_MONOTONIC times of the sending host and the source address the outpost
saw (the egress IP, or something else when the traffic was not NATed).

On the drill's host::

    python -m egressd.lab.probe analyse probes.jsonl --fault-at SECONDS --allowed 172.18.0.42,172.18.0.43

prints the outage gap around the fault (last good echo before it to the first
good one after it; "good" means echoed with an allowed source) and the probes
lost, as JSON. ``--fault-at`` is on the pod's monotonic clock: the ``send``
command prints a ``{"clock": ...}`` line first, pairing it with wall time, so
the drill can convert.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from egressd.lab.outpost import decode_echo, encode_probe


def send(
    target: tuple[str, int],
    *,
    interval: float,
    seconds: float,
    prober: str,
    out: Any,
    stop: threading.Event | None = None,
) -> int:
    """Probe ``target`` for ``seconds`` (or until ``stop``); write the results as JSON lines to ``out``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(0.05)
    sent: dict[int, float] = {}
    lock = threading.Lock()
    stop = stop or threading.Event()
    out.write(json.dumps({"clock": time.monotonic(), "wall": time.time(), "prober": prober}) + "\n")

    def receive() -> None:
        while not stop.is_set() or sent:
            try:
                data, _ = sock.recvfrom(2048)
            except (TimeoutError, OSError):
                if stop.is_set():
                    break
                continue
            probe, source = decode_echo(data)
            if probe is None:
                continue
            with lock:
                at = sent.pop(probe.seq, None)
                if at is not None:
                    out.write(
                        json.dumps({"seq": probe.seq, "sent": at, "echo": time.monotonic(), "source": source}) + "\n"
                    )

    reader = threading.Thread(target=receive, daemon=True)
    reader.start()
    end = time.monotonic() + seconds
    seq = 0
    while not stop.is_set() and time.monotonic() < end:
        now = time.monotonic()
        with lock:
            sent[seq] = now
        sock.sendto(encode_probe(prober, seq, now), target)
        seq += 1
        time.sleep(max(0.0, interval - (time.monotonic() - now)))
    time.sleep(0.5)  # the last echoes
    stop.set()
    reader.join(1.0)
    with lock:
        for s, at in sorted(sent.items()):
            out.write(json.dumps({"seq": s, "sent": at, "echo": None, "source": None}) + "\n")
    out.flush()
    sock.close()
    return 0


def analyse(lines: Iterable[Mapping[str, Any]], *, fault_at: float, allowed: Sequence[str]) -> dict[str, Any]:
    """Gap and losses of one probe run around ``fault_at`` (the prober's clock)."""
    results = [r for r in lines if "seq" in r]
    good = sorted(r["echo"] for r in results if r["echo"] is not None and r["source"] in allowed)
    before = [t for t in good if t < fault_at]
    after = [t for t in good if t >= fault_at]
    gap = (after[0] - before[-1]) if before and after else None
    sources: dict[str, int] = {}
    for r in results:
        if r["source"] is not None:
            sources[r["source"]] = sources.get(r["source"], 0) + 1
    return {
        "sent": len(results),
        "lost_probes": sum(1 for r in results if r["echo"] is None),
        "gap_ms": round(gap * 1000, 1) if gap is not None else None,
        "recovered": bool(after),
        "sources": sources,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m egressd.lab.probe", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("send", help="probe the outpost, print results as JSON lines")
    s.add_argument("--target", required=True, help="HOST:PORT of the outpost's probe port")
    s.add_argument("--interval", type=float, default=0.005)
    s.add_argument("--seconds", type=float, default=20.0)
    s.add_argument("--prober", default=socket.gethostname().split(".")[0] or "probe")
    a = sub.add_parser("analyse", help="gap and losses of a probe run around a fault")
    a.add_argument("file")
    a.add_argument("--fault-at", type=float, required=True, help="fault time on the prober's monotonic clock")
    a.add_argument("--allowed", required=True, help="comma-separated egress IPs")
    args = parser.parse_args(argv)
    if args.command == "send":
        host, _, port = args.target.rpartition(":")
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        target = (host, int(port))
        return send(target, interval=args.interval, seconds=args.seconds, prober=args.prober, out=sys.stdout, stop=stop)
    with open(args.file, encoding="utf-8") as fh:  # noqa: PTH123
        records = [json.loads(line) for line in fh if line.strip()]
    print(json.dumps(analyse(records, fault_at=args.fault_at, allowed=args.allowed.split(","))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
