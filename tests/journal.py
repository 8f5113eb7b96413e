"""Serving intervals from recording data-plane journals, and the safety check.

A node serves an IP from its first ``claim`` until its ``release`` or until
the address would have expired (last claim + lifetime): the kernel fence as
the recording data plane models it. A withdrawal removes the address before
SNAT (traffic stops with SNAT): a ``snat-off`` right after a ``release``
ends the interval then.
A ``refresh`` (the lifetimes of many addresses re-armed at once) is a
claim of each of its IPs.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Interval:
    node: str
    ip: str
    start: float
    end: float


def as_claims(ops: Iterable[Mapping[str, Any]]) -> Iterator[dict[str, Any]]:
    """``ops`` with each ``refresh`` spelled out as one ``claim`` per IP."""
    for op in ops:
        if op["op"] == "refresh":
            for ip in op["ips"]:
                yield {**op, "op": "claim", "ip": ip}
        else:
            yield dict(op)


def intervals(ops: Iterable[Mapping[str, Any]], until: float) -> list[Interval]:
    open_: dict[tuple[str, str], tuple[float, float]] = {}
    out: list[Interval] = []
    released: dict[tuple[str, str], int] = {}
    """Where in ``out`` the interval a ``release`` ended, until its withdrawal's ``snat-off``."""
    for op in sorted(as_claims(ops), key=lambda o: float(o["t"])):
        kind = op["op"]
        if kind not in ("claim", "release", "snat-off"):
            continue
        key = (str(op["node"]), str(op["ip"]))
        t = float(op["t"])
        if kind == "snat-off":
            index = released.pop(key, None)
            if index is not None:
                out[index] = Interval(key[0], key[1], out[index].start, t)
            continue
        released.pop(key, None)
        current = open_.get(key)
        if current is not None and current[1] <= t:
            out.append(Interval(key[0], key[1], current[0], current[1]))
            current = None
            del open_[key]
        if kind == "claim":
            start = current[0] if current else t
            open_[key] = (start, t + float(op["lifetime"]))
        elif current is not None:
            out.append(Interval(key[0], key[1], current[0], t))
            released[key] = len(out) - 1
            del open_[key]
    for (node, ip), (start, expiry) in open_.items():
        out.append(Interval(node, ip, start, min(expiry, until)))
    return out


def overlaps(spans: Iterable[Interval]) -> list[tuple[Interval, Interval]]:
    """Pairs of intervals in which two different nodes served one IP."""
    by_ip: dict[str, list[Interval]] = {}
    for span in spans:
        by_ip.setdefault(span.ip, []).append(span)
    bad = []
    for group in by_ip.values():
        group.sort(key=lambda s: s.start)
        for i, a in enumerate(group):
            for b in group[i + 1 :]:
                if b.start >= a.end:
                    break
                if a.node != b.node:
                    bad.append((a, b))
    return bad


def read_journals(paths: Iterable[Path]) -> list[dict[str, Any]]:
    ops: list[dict[str, Any]] = []
    for path in paths:
        if path.exists():
            ops.extend(json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    return ops
