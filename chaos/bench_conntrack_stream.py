"""The conntrack stream's CPU and bandwidth: what a full resync of N entries
costs the holder (packing and signing the datagrams) and a candidate
(checking the signatures, decoding, keeping), the part of a takeover spent
listing the kept entries before the first install call, and what the steady stream of
changes costs per batch. No kernel, no sockets: the mesh's own encoding and
the candidate's store, timed in process.

    python chaos/bench_conntrack_stream.py [--entries 10000] [--rounds 5] [--churn 1000]

``--churn``: flows created and destroyed per second in the steady stream
(each gives a new, about 3 updates and a destroy, docs/conntrack.md section
3, coalesced per batch interval of 50 ms).

Prints per round, then the median: datagrams and bytes of a resync, and
the milliseconds and microseconds per entry of each side.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import statistics
import time

from egressd.core.conntrack_entries import TCP, Entry, FlowTuple, Removal, Status, TcpInfo, TcpState, snat_reply
from egressd.core.conntrack_stream import Outbox, Replica, aged
from egressd.core.mesh_messages import CtBatch, decode, encode
from egressd.runtime.conntrack import INSTALL_CHUNK

KEY = b"k" * 32
EGRESS = ipaddress.ip_address("172.18.0.42")
SERVER = ipaddress.ip_address("172.18.0.7")
STATUS = int(Status.SEEN_REPLY | Status.ASSURED | Status.CONFIRMED | Status.SRC_NAT | Status.SRC_NAT_DONE)


def entries(n: int) -> list[Entry]:
    out = []
    for i in range(n):
        pod = ipaddress.ip_address(int(ipaddress.ip_address("10.244.0.0")) + 2 + i // 50_000)
        original = FlowTuple(pod, SERVER, 10_000 + i % 50_000, 443)
        tcp = TcpInfo(TcpState.ESTABLISHED, 7, 7, 0x23, 0x23)
        out.append(Entry(TCP, original, snat_reply(original, EGRESS, original.sport), STATUS, 431_999, 0xE90000, tcp))
    return out


def one_round(table: list[Entry]) -> dict[str, float]:
    outbox, replica = Outbox("kind-worker4", "f3c01473240c42d8"), Replica(len(table) + 1)
    t0 = time.perf_counter()
    batches = outbox.datagrams("kind-worker3", str(EGRESS), table, resync=True)
    wire = [encode(b, KEY) for b in batches]
    t1 = time.perf_counter()
    for datagram in wire:
        batch = decode(datagram, KEY)
        assert isinstance(batch, CtBatch)
        replica.take(batch, 0.0, candidate=True, holds=True)
    t2 = time.perf_counter()
    assert replica.held_for(str(EGRESS)) == len(table)
    t3 = time.perf_counter()
    kept = replica.kept(str(EGRESS))
    first = aged(kept[:INSTALL_CHUNK], 1.0)
    t4 = time.perf_counter()
    rest = aged(kept[INSTALL_CHUNK:], 1.0)
    t5 = time.perf_counter()
    assert len(first) + len(rest) == len(table)
    n = len(table)
    return {
        "datagrams": len(wire),
        "bytes": sum(len(d) + 28 for d in wire),  # with IPv4 and UDP headers
        "holder_ms": (t1 - t0) * 1000,
        "holder_us_per_entry": (t1 - t0) * 1e6 / n,
        "candidate_ms": (t2 - t1) * 1000,
        "candidate_us_per_entry": (t2 - t1) * 1e6 / n,
        "takeover_first_chunk_ms": (t4 - t3) * 1000,
        "takeover_rest_aged_ms": (t5 - t4) * 1000,
    }


def churn(per_second: int, seconds: float = 10.0, interval: float = 0.05) -> dict[str, float]:
    """The steady stream: ``per_second`` flows each seen new, 3 times updated
    and destroyed; changes coalesced per ``interval``."""
    outbox, replica = Outbox("kind-worker4", "f3c01473240c42d8"), Replica(10**6)
    flows = entries(int(per_second * seconds))
    per_batch = max(1, int(per_second * interval))
    sent = 0
    started = time.perf_counter()
    for at in range(0, len(flows), per_batch):
        for f in flows[at : at + per_batch]:
            outbox.change(f)
            for _ in range(3):
                outbox.change(dataclasses.replace(f, timeout=f.timeout - 1))
            outbox.change(Removal(TCP, f.original))
        for batch in outbox.datagrams("kind-worker3", str(EGRESS), outbox.take(str(EGRESS))):
            datagram = encode(batch, KEY)
            sent += len(datagram) + 28
            decoded = decode(datagram, KEY)
            assert isinstance(decoded, CtBatch)
            replica.take(decoded, 0.0, candidate=True, holds=True)
    cpu = time.perf_counter() - started
    return {"bytes_per_s": sent / seconds, "cpu_share": cpu / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--churn", type=int, default=1000)
    args = parser.parse_args()
    table = entries(args.entries)
    rounds = []
    for i in range(args.rounds):
        r = one_round(table)
        rounds.append(r)
        print(f"round {i + 1}: " + ", ".join(f"{k} {v:.1f}" for k, v in r.items()))
    print(f"median of {args.rounds} rounds, {args.entries} entries:")
    for key in rounds[0]:
        print(f"  {key}: {statistics.median(r[key] for r in rounds):.1f}")
    steady = churn(args.churn)
    print(f"steady stream, {args.churn} new flows/s (new, 3 updates, destroy each; 50 ms batches):")
    print(f"  bytes per second: {steady['bytes_per_s']:.0f}")
    print(f"  CPU of both sides: {steady['cpu_share'] * 100:.1f} % of one core")


if __name__ == "__main__":
    main()
