"""Long-lived connections through a fault: what the keepers and the server recorded, per connection
and summed up. Pure: takes the reports of :mod:`egressd.lab.longlived` as plain dicts; no I/O.

Per connection (:class:`Flow`, from the pod's keeper and the server joined by connection id):

``reset``
    A TCP connection is reset when either end saw it end before the stop: the server by a reset,
    an end of file or an error without the pod's ``BYE``, the pod by a reset or an end of file.
    A server-first connection reset by the new owner's kernel is seen by the server only (the
    reset goes to the server); the pod just stops receiving. ``reset_ms`` is the earliest end,
    in milliseconds after the fault. UDP flows are never reset.
``stall_ms``
    The longest gap between two lines the receiving end got (the pod, for both TCP kinds and
    UDP), including the gap from the last line to the stop when that is longer (``stall_open``:
    nothing came after it).
``stuck``
    Not reset, yet nothing received from before the fault to the stop: the connection did not
    come back within the round.
``port_changed``
    UDP: the server saw the flow from more than one source address:port (its mapping changed).
    TCP: the server's socket takes only segments of the tuple it accepted, so a line received
    after the fault proves the mapping unchanged (``False``); a changed mapping cannot show
    otherwise than as a reset (``None``: not known, no line after the fault).
``faulted``
    The server saw the connection come from an egress IP the round's target owned at the fault
    (the others cross the round without a move and show what the rest of the lab sees). The
    lab's two egress IPs are often both on one gateway, so both pods' connections move.
``age_ms``
    The connection's age at the fault (from the end of its opening); *old* when at least the
    sync interval (:data:`SYNC_INTERVAL`), the time within which a replicated entry is assumed
    to have reached the candidates.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from egressd.drill.analysis import percentile

SYNC_INTERVAL = 0.1
"""Seconds: connections at least this old at the fault are expected to have been replicated."""

KINDS = ("sf", "cf", "udp")


@dataclass(frozen=True)
class Flow:
    """One connection (or UDP flow) of a round, as measured."""

    id: str
    kind: str
    """``sf`` server-first, ``cf`` client-first (TCP), ``udp``."""
    opened: bool
    age_ms: float | None
    old: bool | None
    reset: bool
    reset_ms: float | None
    end: str | None
    """How it ended before the stop, as the first end that saw it put it (``server: reset``...)."""
    stall_ms: float | None
    stall_open: bool
    stall_to_ms: float | None
    """When the longest stall ended, ms after the fault (None: open, or no stall measured)."""
    stuck: bool
    port_changed: bool | None
    source: str | None
    """The source address:port the server saw first."""
    faulted: bool
    """The source address is an egress IP the faulted gateway owned."""

    @property
    def survived(self) -> bool:
        """Opened, not reset, and came back after the fault."""
        return self.opened and not self.reset and not self.stuck

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "survived": self.survived}


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def _is_old(age_ms: float | None, sync: float) -> bool | None:
    """At least one sync interval old at the fault (on the rounded figures the JSON shows)."""
    return None if age_ms is None else age_ms >= round(sync * 1000, 1)


def _rel(t: float | None, fault: float) -> float | None:
    return None if t is None else _ms(float(t) - fault)


def _faulted(source: str | None, ips: Collection[str]) -> bool:
    return source is not None and source.rpartition(":")[0] in ips


def _unopened(kept: Mapping[str, Any]) -> Flow:
    """A connection that never opened: counted apart, in no other figure."""
    return Flow(
        id=str(kept["id"]),
        kind=str(kept["kind"]),
        opened=False,
        age_ms=None,
        old=None,
        reset=False,
        reset_ms=None,
        end=kept.get("end"),
        stall_ms=None,
        stall_open=False,
        stall_to_ms=None,
        stuck=False,
        port_changed=None,
        source=None,
        faulted=False,
    )


def tcp_flow(
    kept: Mapping[str, Any], served: Mapping[str, Any] | None, *, fault: float, sync: float, ips: Collection[str] = ()
) -> Flow:
    """One TCP connection from the pod's record and the server's (None: the server never saw it)."""
    opened = kept.get("opened")
    if opened is None:
        return _unopened(kept)
    ends: list[tuple[float, str]] = []
    if kept.get("end") is not None:
        ends.append((float(kept.get("ended") or fault), f"pod: {kept['end']}"))
    if served is not None and served.get("end") not in (None, "bye"):
        ends.append((float(served.get("ended") or fault), f"server: {served['end']}"))
    first = min(ends) if ends else None
    last_rx = kept.get("last_rx")
    after = last_rx is not None and float(last_rx) > fault
    age = fault - float(opened)
    source = served.get("source") if served is not None else kept.get("seen")
    return Flow(
        id=str(kept["id"]),
        kind=str(kept["kind"]),
        opened=True,
        age_ms=_ms(age),
        old=_is_old(_ms(age), sync),
        reset=first is not None,
        reset_ms=None if first is None else _ms(first[0] - fault),
        end=None if first is None else first[1],
        stall_ms=_ms(kept.get("stall")),
        stall_open=bool(kept.get("stall_open")),
        stall_to_ms=_rel(kept.get("stall_end"), fault),
        stuck=first is None and not after,
        port_changed=False if after and first is None else None,
        source=source,
        faulted=_faulted(source, ips),
    )


def udp_flow(
    kept: Mapping[str, Any], served: Mapping[str, Any] | None, *, fault: float, sync: float, ips: Collection[str] = ()
) -> Flow:
    """One UDP flow: the pod's record and the server's (sources seen)."""
    opened = kept.get("opened")
    sources: Sequence[Sequence[Any]] = (served or {}).get("sources") or kept.get("sources") or []
    more = int((served or {}).get("more_sources") or 0)
    last_rx = kept.get("last_rx")
    age = None if opened is None else fault - float(opened)
    source = str(sources[0][0]) if sources else None
    return Flow(
        id=str(kept["id"]),
        kind="udp",
        opened=opened is not None,
        age_ms=_ms(age),
        old=_is_old(_ms(age), sync),
        reset=False,
        reset_ms=None,
        end=kept.get("end"),
        stall_ms=_ms(kept.get("stall")),
        stall_open=bool(kept.get("stall_open")),
        stall_to_ms=_rel(kept.get("stall_end"), fault),
        stuck=last_rx is None or float(last_rx) <= fault,
        port_changed=(len(sources) > 1 or more > 0) if sources else None,
        source=source,
        faulted=_faulted(source, ips),
    )


def flows(
    keepers: Iterable[Mapping[str, Any]],
    server: Mapping[str, Any] | None,
    *,
    fault: float,
    ips: Collection[str] = (),
    sync: float = SYNC_INTERVAL,
) -> list[Flow]:
    """Every connection and flow of a round, from the keepers' reports and the server's; ``ips``
    are the egress IPs the faulted gateway owned at the fault."""
    served = {str(c["id"]): c for c in (server or {}).get("connections", [])}
    served_udp: Mapping[str, Any] = (server or {}).get("udp", {})
    out: list[Flow] = []
    for report in keepers:
        for kept in report.get("connections", []):
            out.append(tcp_flow(kept, served.get(str(kept["id"])), fault=fault, sync=sync, ips=ips))
        for kept in report.get("udp", []):
            out.append(udp_flow(kept, served_udp.get(str(kept["id"])), fault=fault, sync=sync, ips=ips))
    return out


def _stats(values: Sequence[float]) -> dict[str, float | None]:
    def r(v: float | None) -> float | None:
        return None if v is None else round(v, 1)

    return {
        "p50": r(percentile(values, 50)),
        "p99": r(percentile(values, 99)),
        "max": r(max(values) if values else None),
    }


def summarize(records: Iterable[Mapping[str, Any]], sync: float = SYNC_INTERVAL) -> dict[str, Any]:
    """The figures of a set of flow records (:meth:`Flow.to_json`, from one round or many).

    Resets split by kind and by age (old: at least one sync interval at the fault); stalls over
    the TCP connections that were neither reset nor stuck, and over the UDP flows that came back."""
    recs = list(records)
    tcp = [r for r in recs if r["kind"] in ("sf", "cf") and r["opened"]]
    udp = [r for r in recs if r["kind"] == "udp" and r["opened"]]

    def count(rows: Iterable[Mapping[str, Any]], key: str) -> int:
        return sum(1 for r in rows if r.get(key))

    by_kind = {k: {"reset": count((r for r in tcp if r["kind"] == k), "reset"), "of": 0} for k in ("sf", "cf")}
    for r in tcp:
        by_kind[r["kind"]]["of"] += 1
    old = [r for r in tcp if _is_old(r["age_ms"], sync)]
    young = [r for r in tcp if not _is_old(r["age_ms"], sync)]
    faulted = [r for r in tcp if r.get("faulted")]
    kept = [float(r["stall_ms"]) for r in tcp if not r["reset"] and not r["stuck"] and r["stall_ms"] is not None]
    udp_back = [float(r["stall_ms"]) for r in udp if not r["stuck"] and r["stall_ms"] is not None]
    return {
        "sync_interval_ms": round(sync * 1000, 1),
        "connections": len(tcp),
        "failed_to_open": sum(1 for r in recs if not r["opened"]),
        "survived": count(tcp, "survived"),
        "reset": count(tcp, "reset"),
        "reset_by_kind": by_kind,
        "reset_old": {"reset": count(old, "reset"), "of": len(old)},
        "reset_young": {"reset": count(young, "reset"), "of": len(young)},
        "reset_faulted": {"reset": count(faulted, "reset"), "of": len(faulted)},
        "stuck": count(tcp, "stuck"),
        "stall_ms": _stats(kept),
        "udp_flows": len(udp),
        "udp_stuck": count(udp, "stuck"),
        "udp_stall_ms": _stats(udp_back),
        "port_changes": {
            "tcp": sum(1 for r in tcp if r["port_changed"]),
            "udp": sum(1 for r in udp if r["port_changed"]),
        },
    }


def loop_lags(keepers: Iterable[Mapping[str, Any]], server: Mapping[str, Any] | None) -> dict[str, float | None]:
    """The longest lateness of each process's ticker, ms: a stall no longer than the lag of the
    process that measured it may be that process's, not the network's."""
    keeper_lags = [float(k["loop_lag"]) for k in keepers if k.get("loop_lag") is not None]
    server_lag = None if server is None or server.get("loop_lag") is None else float(server["loop_lag"])
    return {"keepers": _ms(max(keeper_lags)) if keeper_lags else None, "server": _ms(server_lag)}


def round_json(
    flows_: Sequence[Flow], sync: float = SYNC_INTERVAL, lags: Mapping[str, float | None] | None = None
) -> dict[str, Any]:
    """A round's ``connections`` part of the drill's JSON: every flow, their summary, the processes' lags."""
    records = [f.to_json() for f in flows_]
    summary = summarize(records, sync)
    if lags is not None:
        summary["loop_lag_ms"] = dict(lags)
    return {"flows": records, "summary": summary}


def over_rounds(rounds: Iterable[Mapping[str, Any]], sync: float = SYNC_INTERVAL) -> dict[str, Any] | None:
    """The summary over the rounds' ``connections`` (None when no round kept connections)."""
    parts = [r["connections"] for r in rounds if r.get("connections")]
    if not parts:
        return None
    summary = summarize([f for p in parts for f in p["flows"]], sync)
    lags: dict[str, float | None] = {}
    for key in ("keepers", "server"):
        values = [float(v) for p in parts if (v := p["summary"].get("loop_lag_ms", {}).get(key)) is not None]
        lags[key] = max(values) if values else None
    summary["loop_lag_ms"] = lags
    return summary


def line(summary: Mapping[str, Any]) -> str:
    """The text of a summary, for a round's line or the drill's last lines."""

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.0f}"

    k, s, u = summary["reset_by_kind"], summary["stall_ms"], summary["udp_stall_ms"]
    old, young, moved = summary["reset_old"], summary["reset_young"], summary["reset_faulted"]
    text = (
        f"connections reset {summary['reset']}/{summary['connections']}, {moved['reset']}/{moved['of']} through the "
        "faulted gateway "
        f"(server-first {k['sf']['reset']}/{k['sf']['of']}, client-first {k['cf']['reset']}/{k['cf']['of']}; "
        f"older than {summary['sync_interval_ms']:.0f} ms {old['reset']}/{old['of']}, "
        f"younger {young['reset']}/{young['of']})  "
        f"stall p50/p99/max {ms(s['p50'])}/{ms(s['p99'])}/{ms(s['max'])} ms  "
        f"udp {summary['udp_flows']} flows, stall max {ms(u['max'])} ms, port changes {summary['port_changes']['udp']}"
    )
    lag = summary.get("loop_lag_ms") or {}
    if lag:
        text += f"  (own delay: keepers {ms(lag.get('keepers'))}, server {ms(lag.get('server'))} ms)"
    if summary["stuck"] or summary["udp_stuck"]:
        text += f"  stuck {summary['stuck']} tcp, {summary['udp_stuck']} udp"
    if summary["failed_to_open"]:
        text += f"  failed to open {summary['failed_to_open']}"
    return text
