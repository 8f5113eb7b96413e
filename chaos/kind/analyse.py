"""One kind drill round: outage gap and losses (from the prober in xwing) and
dual-owner time (from arpwatch.py), as the JSON object of a round.

    python analyse.py --probes probes.jsonl --fault-at WALL_SECONDS --allowed 172.18.0.42,172.18.0.43 \
        --arp arp.jsonl --macs macs.json
"""

from __future__ import annotations

import argparse
import json
import sys

from egressd.drill.analysis import Claim, dual_owner_intervals, union_length
from egressd.lab.probe import analyse


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probes", required=True)
    parser.add_argument(
        "--fault-at", type=float, required=True, help="wall time (seconds since the epoch) of the fault"
    )
    parser.add_argument("--allowed", required=True)
    parser.add_argument("--arp", required=True)
    parser.add_argument("--macs", required=True, help="JSON object: MAC -> node")
    args = parser.parse_args()
    with open(args.probes, encoding="utf-8") as fh:  # noqa: PTH123
        probes = [json.loads(line) for line in fh if line.strip().startswith("{")]
    clock = next(p for p in probes if "clock" in p)
    # the prober's monotonic clock, paired with its wall clock at start
    fault_at = clock["clock"] + (args.fault_at - clock["wall"])
    result = analyse(probes, fault_at=fault_at, allowed=args.allowed.split(","))
    with open(args.macs, encoding="utf-8") as fh:  # noqa: PTH123
        macs = json.load(fh)
    claims = []
    with open(args.arp, encoding="utf-8") as fh:  # noqa: PTH123
        for line in fh:
            if line.strip():
                a = json.loads(line)
                claims.append(Claim(t=a["t"], ip=a["ip"], node=macs.get(a["mac"], a["mac"]), kind="answer"))
    duals = dual_owner_intervals(claims)
    result["dual_owner_ms"] = round(union_length(duals) * 1000, 1)
    result["dual_owner_intervals"] = [
        {"ip": d.ip, "nodes": list(d.nodes), "ms": round(d.length * 1000, 1)} for d in duals
    ]
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
