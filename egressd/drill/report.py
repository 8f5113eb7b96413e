"""The report of a drill: the JSON of its rounds with their summary, and the plot of one round."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from egressd.drill import survival
from egressd.drill.analysis import RoundResult, summarize

if TYPE_CHECKING:
    from matplotlib.axes import Axes


def report_json(
    scenario: str,
    timing: Mapping[str, Any],
    results: Sequence[RoundResult],
    *,
    sync_interval: float = survival.SYNC_INTERVAL,
    **extra: Any,
) -> dict[str, Any]:
    """The drill's JSON; ``summary.connections`` (over every round's long-lived connections, old
    ones being at least ``sync_interval`` seconds old at the fault) when the rounds kept any."""
    rounds = [r.to_json() for r in results]
    summary = summarize(rounds)
    connections = survival.over_rounds(rounds, sync_interval)
    if connections is not None:
        summary["connections"] = connections
    return {"scenario": scenario, "timings": dict(timing), **extra, "rounds": rounds, "summary": summary}


def worst_round(results: Sequence[RoundResult]) -> RoundResult | None:
    """The round with the largest dual-owner time, else the largest gap (no recovery first)."""
    if not results:
        return None
    return max(results, key=lambda r: (r.dual_owner_ms, math.inf if r.gap_ms is None else r.gap_ms))


def plot_round(result: RoundResult, path: str | Path, *, title: str | None = None) -> None:
    """The round's timeline as a PNG: a lane per gateway with the probes it carried (a tick per
    frame, a colour per prober) and its ARP answers, the outpost's good arrivals, the fault,
    the recovery, the takeover and the lease holder changes."""
    import matplotlib  # noqa: PLC0415 - only with --plot

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    lanes = _Lanes.of(result)
    fig, ax = plt.subplots(figsize=(13, 2.2 + 0.9 * len(lanes.names)))
    _draw_gateways(ax, lanes)
    _draw_outpost(ax, lanes)
    _draw_fault_and_recovery(ax, lanes)
    _draw_lease_changes(ax, lanes)
    _draw_duals_and_takeover(ax, lanes)
    _draw_frame(ax, lanes, title)
    fig.tight_layout()
    fig.savefig(str(path), dpi=110)
    plt.close(fig)


@dataclass(frozen=True)
class _Lanes:
    """The lanes of a round's plot: a lane per gateway, then the outpost's, each
    with a sub-lane per prober; time in seconds after the fault."""

    result: RoundResult
    gateways: list[str]
    probers: list[str]
    colour: dict[str, str]

    @classmethod
    def of(cls, result: RoundResult) -> _Lanes:
        probers = sorted({s.prober for s in result.sent_events})
        colours = ["tab:blue", "tab:orange", "tab:green", "tab:purple"]
        return cls(
            result,
            gateways=sorted({c.node for c in result.claims} | {result.target}),
            probers=probers,
            colour={p: colours[i % len(colours)] for i, p in enumerate(probers)},
        )

    @property
    def names(self) -> list[str]:
        return [*self.gateways, "outpost (good)"]

    @property
    def outpost(self) -> int:
        """The y of the outpost's lane."""
        return len(self.gateways)

    def rel(self, t: float) -> float:
        return t - self.result.fault

    def sub(self, y: float, i: int) -> float:
        """A sub-lane per prober, top to bottom, above the ARP marks."""
        return y + 0.35 - (i + 0.5) * 0.6 / self.n

    @property
    def n(self) -> int:
        return max(1, len(self.probers))


def _draw_gateways(ax: Axes, lanes: _Lanes) -> None:
    """Per gateway, the probes it carried and its ARP answers and gratuitous ARPs."""
    claims, rel, n = lanes.result.claims, lanes.rel, lanes.n
    for y, gw in enumerate(lanes.gateways):
        for i, p in enumerate(lanes.probers):
            ts = [rel(c.t) for c in claims if c.node == gw and c.kind == "probe" and c.prober == p]
            if ts:
                ax.eventplot(
                    ts, lineoffsets=lanes.sub(y, i), linelengths=0.5 / n, colors=lanes.colour[p], linewidths=0.6
                )
        answers = [rel(c.t) for c in claims if c.node == gw and c.kind in ("answer", "arp")]
        garps = [rel(c.t) for c in claims if c.node == gw and c.kind == "garp"]
        if answers:
            ax.plot(answers, [y - 0.3] * len(answers), "|", color="0.45", markersize=5)
        if garps:
            ax.plot(garps, [y - 0.3] * len(garps), "v", color="black", markersize=5)


def _draw_outpost(ax: Axes, lanes: _Lanes) -> None:
    """The outpost's good arrivals per prober, and each prober's gap."""
    result, rel, y_out = lanes.result, lanes.rel, lanes.outpost
    for i, p in enumerate(lanes.probers):
        ts = [rel(a.t) for a in result.arrivals if a.prober == p and a.src in result.allowed]
        if ts:
            ax.eventplot(
                ts, lineoffsets=lanes.sub(y_out, i), linelengths=0.5 / lanes.n, colors=lanes.colour[p], linewidths=0.6
            )
    for p, g in result.gaps.items():
        if g.start is not None and g.end is not None and g.seconds and g.seconds > 0.05:
            ax.axvspan(rel(g.start), rel(g.end), color=lanes.colour[p], alpha=0.12)
            ax.annotate(
                f"gap {g.seconds * 1000:.0f} ms",
                (rel(g.start) + g.seconds / 2, y_out + 0.45),
                ha="center",
                fontsize=8,
                color=lanes.colour[p],
            )


def _draw_fault_and_recovery(ax: Axes, lanes: _Lanes) -> None:
    result, top = lanes.result, len(lanes.names)
    ax.axvline(0, color="red", linewidth=1.5)
    ax.annotate(result.fault_action, (0, top - 0.4), color="red", fontsize=8, xytext=(3, 0), textcoords="offset points")
    if result.recover is not None:
        ax.axvline(lanes.rel(result.recover), color="green", linewidth=1.2, linestyle="--")
        ax.annotate(
            result.recover_action or "recovered",
            (lanes.rel(result.recover), top - 0.65),
            color="green",
            fontsize=8,
            xytext=(3, 0),
            textcoords="offset points",
        )


def _draw_lease_changes(ax: Axes, lanes: _Lanes) -> None:
    """A dotted line per lease change, labelled below the lanes."""
    labels: list[tuple[float, list[str]]] = []  # lease changes within 100 ms share one label
    for c in lanes.result.leases:
        x = lanes.rel(c.t)
        ax.axvline(x, color="0.6", linewidth=0.8, linestyle=":")
        text = f".{c.ip.rsplit('.', 1)[-1]} {c.holder or 'free'} e{c.epoch}"
        if labels and x - labels[-1][0] < 0.1:
            labels[-1][1].append(text)
        else:
            labels.append((x, [text]))
    for x, texts in labels:
        ax.annotate("\n".join(texts), (x, -0.85), rotation=90, fontsize=6.5, color="0.3", va="bottom", ha="right")


def _draw_duals_and_takeover(ax: Axes, lanes: _Lanes) -> None:
    """The dual-owner intervals, and a star on the first probe through a new gateway."""
    result = lanes.result
    for d in result.duals:
        ax.axvspan(lanes.rel(d.start), lanes.rel(d.end), color="red", alpha=0.35)
    takeover = [c for c in result.claims if c.kind == "probe" and c.node != result.target and c.t > result.fault]
    if takeover:
        first = min(takeover, key=lambda c: c.t)
        ax.plot([lanes.rel(first.t)], [lanes.gateways.index(first.node) + 0.45], "*", color="red", markersize=10)


def _draw_frame(ax: Axes, lanes: _Lanes, title: str | None) -> None:
    """Axes, legend, title and grid."""
    from matplotlib.lines import Line2D  # noqa: PLC0415 - only with --plot

    result = lanes.result
    ax.set_yticks(range(len(lanes.names)), lanes.names)
    ax.set_ylim(-0.9, len(lanes.names) - 0.2)
    ax.set_xlim(lanes.rel(result.start), lanes.rel(result.end))
    ax.set_xlabel("seconds after the fault")
    handles = [Line2D([], [], color=lanes.colour[p], label=f"probes {p.split('.')[0]}") for p in lanes.probers]
    handles += [
        Line2D([], [], color="0.45", marker="|", linestyle="", label="ARP answer"),
        Line2D([], [], color="black", marker="v", linestyle="", label="gratuitous ARP"),
        Line2D([], [], color="red", marker="*", linestyle="", label="takeover (first probe via new gateway)"),
        Line2D([], [], color="0.6", linestyle=":", label="lease change (IP: holder, epoch)"),
    ]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    gap = "no recovery" if result.gap_ms is None else f"{result.gap_ms:.0f} ms"
    ax.set_title(
        title
        or f"{result.scenario} round {result.index}: gap {gap}, dual-owner {result.dual_owner_ms:.1f} ms, "
        f"lost {result.lost}"
    )
    ax.grid(axis="x", alpha=0.3)
