#!/bin/sh
# The "today" column of issue 13: every drill on today's daemon, default timings, then the tuned
# profile's link-cut. Run as root from the repository root; writes the JSON files beside this
# script and leaves no lab behind (egressd lab down also on failure).
set -u
OUT=$(dirname "$0")
STATE=${STATE:-/tmp/helab}
PREFIX=${PREFIX:-he-}
lab() { egressd lab "$@" --state-dir "$STATE"; }
drill() { egressd drill --state-dir "$STATE" "$@"; }
trap 'lab down --prefix "$PREFIX"' EXIT INT TERM
lab down --prefix "$PREFIX"
lab up --prefix "$PREFIX" || exit 1
drill --scenario api-outage --outage 30 --rounds 1 --json "$OUT/api-outage-30s.json"
drill --scenario api-outage --outage 300 --rounds 1 --json "$OUT/api-outage-300s.json"
for s in api-partition peer-partition isolate link-cut kill freeze graceful; do
    drill --scenario "$s" --rounds 5 --json "$OUT/$s.json"
done
drill --scenario double-fault --outage 30 --rounds 1 --json "$OUT/double-fault.json"
lab down --prefix "$PREFIX"
lab up --prefix "$PREFIX" --timing config/timing-fast.yaml || exit 1
drill --scenario link-cut --rounds 3 --timing config/timing-fast.yaml --json "$OUT/fast-link-cut.json"
