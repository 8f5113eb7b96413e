"""Conntrack replication at scale: dump, install and delete N entries in a
namespace, and what a full resync costs on the mesh.

    python chaos/bench_conntrack.py [--entries 10000] [--rounds 3] [--chunk 512]

Needs root. Two namespaces, ``egct-<hex>-owner`` and ``egct-<hex>-cand``,
each with a source-NAT table (so the NAT hooks exist as on a gateway), are
created for the run and removed at the end, also on failure or Ctrl-C;
nothing touches the root namespace.

Per round:

1. ``install into owner``: N synthetic established TCP entries (pod
   10.98.x.y -> server 10.99.0.100:443, SNATed to 10.99.0.42 with the pod's
   port), with egressd's mark, created through :class:`KernelConntrack` (the
   owner's table is filled the same way the candidate's is, in batches of
   ``--chunk``);
2. ``dump owner``: the N entries read back by mark (what a full resync reads);
3. ``encode``/``decode``: the entries packed into mesh payloads and unpacked
   (CPU of the sender and of the receiver), with the number of datagrams and
   bytes a full resync sends;
4. ``install into candidate``: the decoded entries created in the candidate
   (what a takeover does when the entries were not installed ahead of time);
   ``build requests`` is the part of it spent building the netlink requests
   in Python (the rest is the kernel and reading its acknowledgements);
5. ``delete``: the candidate's entries removed again.

Prints the figures per round and the median over the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import secrets
import statistics
import time
from collections.abc import Callable

from egressd.adapters.conntrack import KernelConntrack, ctnetlink
from egressd.core.conntrack_entries import (
    PAYLOAD_LIMIT,
    TCP,
    Entry,
    FlowTuple,
    Status,
    TcpInfo,
    TcpState,
    decode_all,
    encode_batch,
    snat_reply,
)
from egressd.core.mesh_messages import MAGIC, TAG_SIZE
from egressd.lab.netns import Namespaces, run_cmd

MARK, MASK = 0x00E90000, 0x00FF0000
EGRESS = ipaddress.ip_address("10.99.0.42")
SERVER = ipaddress.ip_address("10.99.0.100")
STATUS = int(Status.SEEN_REPLY | Status.ASSURED | Status.CONFIRMED | Status.SRC_NAT | Status.SRC_NAT_DONE)

SNAT = f"""
table inet egct {{
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr 10.98.0.0/16 ct mark set ct mark and {~MASK & 0xFFFFFFFF:#x} or {MARK:#x} snat ip to {EGRESS}
  }}
}}
"""


def synthetic(n: int) -> list[Entry]:
    """``n`` established TCP flows of distinct pods and ports (port 1024 + i % 60000)."""
    out = []
    for i in range(n):
        pod = ipaddress.ip_address(int(ipaddress.ip_address("10.98.0.1")) + i // 60000 * 256 + i % 250)
        port = 1024 + i % 60000
        original = FlowTuple(pod, SERVER, port, 443)
        tcp = TcpInfo(TcpState.ESTABLISHED, 7, 7, 0x23, 0x23)
        out.append(Entry(TCP, original, snat_reply(original, EGRESS, port), STATUS, 432000, MARK, tcp))
    return out


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


async def one_round(owner: str, cand: str, entries: list[Entry], chunk: int) -> dict[str, float]:
    src = KernelConntrack(mark=MARK, mask=MASK, netns=owner, chunk=chunk)
    dst = KernelConntrack(mark=MARK, mask=MASK, netns=cand, chunk=chunk)
    figures: dict[str, float] = {}
    try:
        await src.dump()  # opens the sockets (a fork into the namespace) outside the timings
        await dst.dump()
        start = time.perf_counter()
        failures = await src.install(entries)
        figures["install into owner"] = time.perf_counter() - start
        assert not failures, failures[:3]
        start = time.perf_counter()
        dumped = await src.dump()
        figures["dump owner"] = time.perf_counter() - start
        assert len(dumped) == len(entries), len(dumped)
        payloads: list[bytes] = []
        figures["encode"] = timed(lambda: payloads.extend(encode_batch(dumped)))
        decoded: list[object] = []
        figures["decode"] = timed(lambda: decoded.extend(decode_all(payloads)))
        figures["datagrams"] = len(payloads)
        figures["bytes on the wire"] = sum(len(p) + len(MAGIC) + TAG_SIZE for p in payloads)
        figures["build requests"] = timed(
            lambda: [ctnetlink.create_request(e, i, liberal=True) for i, e in enumerate(dumped)]
        )
        start = time.perf_counter()
        failures = await dst.install([e for e in decoded if isinstance(e, Entry)])
        figures["install into candidate"] = time.perf_counter() - start
        assert not failures, failures[:3]
        start = time.perf_counter()
        failures = await dst.delete([e.key for e in dumped])
        figures["delete"] = time.perf_counter() - start
        assert not failures, failures[:3]
        await src.delete([e.key for e in dumped])
    finally:
        await src.close()
        await dst.close()
    return figures


def show(name: str, values: list[float], n: int) -> str:
    med = statistics.median(values)
    if name in ("datagrams", "bytes on the wire"):
        return f"  {name:24} {med:10.0f}"
    return f"  {name:24} {med * 1000:8.1f} ms  ({med / n * 1e6:5.1f} us per entry)"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--chunk", type=int, default=512)
    args = parser.parse_args()
    entries = synthetic(args.entries)
    with Namespaces(f"egct-{secrets.token_hex(3)}-") as net:
        owner, cand = net.add("owner"), net.add("cand")
        for ns in (owner, cand):
            run_cmd(["ip", "netns", "exec", ns, "nft", "-f", "-"], input_text=SNAT)
        rounds = []
        for i in range(args.rounds):
            figures = await one_round(owner, cand, entries, args.chunk)
            rounds.append(figures)
            print(f"round {i + 1}: " + ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in figures.items() if v < 100))
    print(
        f"\n{args.entries} entries, chunk {args.chunk}, payload limit {PAYLOAD_LIMIT} bytes, "
        f"median of {args.rounds} rounds:"
    )
    for name in rounds[0]:
        print(show(name, [r[name] for r in rounds], args.entries))


if __name__ == "__main__":
    asyncio.run(main())
