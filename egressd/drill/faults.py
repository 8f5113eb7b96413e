"""The scenarios of a drill as one table: how the fault is made, how long it is held, how it is undone,
and what a round must show.

Scenarios (:data:`SCENARIOS`, in the order of :data:`FAULTS`):

* ``graceful``        SIGTERM the target; the supervisor starts it again (``Restart=always``).
* ``kill``            SIGKILL the target, held down until the IP has moved and traffic flows again.
* ``kill-restart``    SIGKILL the target, started again after the supervisor's 100 ms.
* ``freeze``          SIGSTOP the target for ``Holds.freeze`` (``leaseDuration + 2 s``), then SIGCONT.
* ``link-cut``        the target's cables pulled (node loss) until the IP has moved, then plugged back.
* ``api-partition``   the target cannot reach the API server (data plane intact) for
  ``Holds.partition`` (10 s), then the partition is lifted. With the mesh the target serves on its
  peers' promises: nothing should move (without it, the IP moves after ``leaseDuration``).
* ``api-outage``      the API server frozen for everyone for ``Holds.outage`` (30 s), then thawed.
  Today egressd steps down when it cannot renew, so this measures an outage of
  about the pause; the point is that no two nodes serve an IP.
* ``peer-partition``  the gateways cannot reach each other (every packet between two gateways'
  node addresses dropped) for ``Holds.partition`` (10 s); the API server, the outpost and the
  pods are reached as before. Nothing should move.
* ``isolate``         the target loses the API server and its peers but keeps its data path (pods
  and workers reach it, it reaches the outpost), until the IP has moved.
* ``double-fault``    the API server paused, ``Holds.kill_after`` (1 s) later the target SIGKILLed
  and held down; the API server thawed ``Holds.outage`` after the pause; the target released once
  the IP has moved. The round reports the time from the API server's return until every prober
  is served again (``served_after_recover_ms``).
* ``baseline``        no fault at all: the instruments watch a quiet lab for ``Holds.quiet`` (10 s).
  Its gap is the longest hole between two good arrivals that the probers, the outpost and the
  machine's load make by themselves: the jitter the other rounds' gaps are to be compared with.

Every round's verdict is the drill's: no time with two owners, no ARP request answered twice, and
the lab settled again (every IP owned, good probes, the target healthy where it is checked).
:func:`play` runs one scenario's fault, hold and undo against a lab; the drill's instruments
(:mod:`egressd.drill.run`) watch around it.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from egressd.lab.netlab import Lab

Hold = Literal["", "freeze", "outage", "partition", "quiet", "moved"]
"""How long a fault is held before it is undone: ``""`` not held (nothing to undo, or undone at
once); ``freeze``, ``outage``, ``partition``, ``quiet`` the :class:`Holds` of that name (seconds
from the fault); ``moved`` until the IP has moved away from the target and traffic flows again (at least
``Holds.moved_min``)."""


@dataclass(frozen=True)
class Holds:
    """The hold times of a drill, in seconds (``None``: derived from ``leaseDuration``)."""

    outage: float = 30.0
    """``api-outage`` and ``double-fault``: how long the API server stays paused."""
    freeze: float | None = None
    """``freeze``: how long the target stays stopped (default ``leaseDuration + 2``)."""
    partition: float = 10.0
    """``peer-partition``, ``api-partition``: how long the gateways stay cut
    apart, or the target from the API server."""
    moved_min: float | None = None
    """Faults held until the IP has moved: held at least this long (default ``leaseDuration``)."""
    kill_after: float = 1.0
    """``double-fault``: seconds from the API server's pause to the kill of the target."""
    quiet: float = 10.0
    """``baseline``: how long the lab is watched with no fault (make it the length of the round
    it is compared with: ``--quiet 30`` beside a 30 s ``api-outage``)."""

    def problems(self) -> list[str]:
        """Every hold out of its bounds, naming its setting."""
        out = []
        for name in ("outage", "freeze", "partition", "moved_min", "kill_after", "quiet"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 3600:
                out.append(f"{name.replace('_', '-')}: must be 0 to 3600 s, got {value:g}")
        if not self.kill_after < self.outage:
            out.append(
                f"kill-after: the kill must come while the API server is paused ({self.kill_after:g} s is not "
                f"below the outage of {self.outage:g} s)"
            )
        return out

    def seconds(self, hold: Hold, lease: float) -> float:
        """The fixed hold of ``hold`` (for ``moved``: the minimum), seconds from the fault."""
        if hold == "freeze":
            return lease + 2.0 if self.freeze is None else self.freeze
        if hold == "outage":
            return self.outage
        if hold == "partition":
            return self.partition
        if hold == "quiet":
            return self.quiet
        if hold == "moved":
            return lease if self.moved_min is None else self.moved_min
        return 0.0

    def texts(self, target: str, lease: float) -> dict[str, object]:
        """The values of the ``*_action`` templates of :class:`Fault`."""
        return {
            "target": target,
            "freeze": self.seconds("freeze", lease),
            "outage": self.outage,
            "partition": self.partition,
            "kill_after": self.kill_after,
            "quiet": self.quiet,
        }


@dataclass(frozen=True)
class Fault:
    """One row of :data:`FAULTS`. The ``*_action`` texts are templates with ``{target}`` and the
    holds in seconds: ``{freeze}``, ``{outage}``, ``{partition}``, ``{kill_after}``."""

    fault: Callable[[Lab, str], object]
    """Make the fault on the target node."""
    fault_action: str
    hold: Hold
    recover: Callable[[Lab, str], object] | None
    """Undo the fault (None: nothing to undo); runs also on Ctrl-C or an error."""
    recover_action: str
    restart: bool
    """The target comes back as a new process: the round settles only once its pid changed."""
    stamped_on_return: bool = False
    """The fault starts when its ip/nft command returns, not when the signal is sent."""
    target_checked: bool = True
    """The round settles only once the target is healthy again (not for a fault of the API server)."""
    then: Callable[[Lab, str], object] | None = None
    """A second fault, ``Holds.kill_after`` seconds after the first, inside its hold."""
    then_action: str = ""
    release: Callable[[Lab, str], object] | None = None
    """Undone after ``recover``, once the IP has moved away from the target (the held-down owner
    of ``double-fault``); runs also on Ctrl-C or an error."""
    release_action: str = ""
    measures: tuple[str, ...] = field(default=())
    """What the scenario is for, beyond the verdict every round has (for the docs and the JSON)."""


FAULTS: dict[str, Fault] = {
    "graceful": Fault(
        lambda lab, t: lab.kill(t, signal.SIGTERM, restart=True),
        "SIGTERM {target} (restarted by the supervisor)",
        hold="",
        recover=None,
        recover_action="",
        restart=True,
    ),
    "kill": Fault(
        lambda lab, t: lab.kill(t, signal.SIGKILL, restart=False),
        "SIGKILL {target} (held down)",
        hold="moved",
        recover=lambda lab, t: lab.release(t),
        recover_action="{target} released (started again)",
        restart=True,
    ),
    "kill-restart": Fault(
        lambda lab, t: lab.kill(t, signal.SIGKILL, restart=True),
        "SIGKILL {target} (restarted by the supervisor)",
        hold="",
        recover=None,
        recover_action="",
        restart=True,
    ),
    "freeze": Fault(
        lambda lab, t: lab.kill(t, signal.SIGSTOP, restart=True),
        "SIGSTOP {target} for {freeze:g} s",
        hold="freeze",
        recover=lambda lab, t: lab.kill(t, signal.SIGCONT, restart=True),
        recover_action="SIGCONT {target}",
        restart=False,
    ),
    "link-cut": Fault(
        lambda lab, t: lab.link(t, up=False),
        "links of {target} down",
        hold="moved",
        recover=lambda lab, t: lab.link(t, up=True),
        recover_action="links of {target} up",
        restart=False,
        stamped_on_return=True,
    ),
    "api-partition": Fault(
        lambda lab, t: lab.block_api(t, blocked=True),
        "{target} cut off from the API server for {partition:g} s",
        hold="partition",
        recover=lambda lab, t: lab.block_api(t, blocked=False),
        recover_action="{target} reaches the API server again",
        restart=False,
        stamped_on_return=True,
    ),
    "api-outage": Fault(
        lambda lab, t: lab.api_pause(paused=True),
        "API server paused for {outage:g} s",
        hold="outage",
        recover=lambda lab, t: lab.api_pause(paused=False),
        recover_action="API server resumed",
        restart=False,
        target_checked=False,
        measures=("served_after_recover_ms",),
    ),
    "peer-partition": Fault(
        lambda lab, t: lab.partition_gateways(partitioned=True),
        "gateways cut off from each other for {partition:g} s",
        hold="partition",
        recover=lambda lab, t: lab.partition_gateways(partitioned=False),
        recover_action="gateways reach each other again",
        restart=False,
        stamped_on_return=True,
    ),
    "isolate": Fault(
        lambda lab, t: lab.isolate(t, isolated=True),
        "{target} cut off from the API server and its peers (data path intact)",
        hold="moved",
        recover=lambda lab, t: lab.isolate(t, isolated=False),
        recover_action="{target} reaches the API server and its peers again",
        restart=False,
        stamped_on_return=True,
    ),
    "double-fault": Fault(
        lambda lab, t: lab.api_pause(paused=True),
        "API server paused for {outage:g} s",
        hold="outage",
        then=lambda lab, t: lab.kill(t, signal.SIGKILL, restart=False),
        then_action="SIGKILL {target} (held down) {kill_after:g} s into the outage",
        recover=lambda lab, t: lab.api_pause(paused=False),
        recover_action="API server resumed",
        release=lambda lab, t: lab.release(t),
        release_action="{target} released (started again) after the IP moved",
        restart=True,
        measures=("served_after_recover_ms",),
    ),
    "baseline": Fault(
        lambda lab, t: None,
        "nothing done for {quiet:g} s (baseline)",
        hold="quiet",
        recover=None,
        recover_action="",
        restart=False,
        measures=("gap_ms",),
    ),
}

SCENARIOS = tuple(FAULTS)


@dataclass
class Played:
    """What :func:`play` did, with the times (of ``clock``) it did it."""

    fault: float
    fault_action: str
    recover: float | None = None
    recover_action: str | None = None
    steps: list[tuple[float, str]] = field(default_factory=list)
    """Later actions: the second fault, the release."""
    moved: bool = True
    """For the faults held until the IP moved: whether it moved in time."""


def play(
    scenario: str,
    lab: Lab,
    target: str,
    *,
    holds: Holds,
    lease: float,
    clock: Callable[[], float],
    sleep: Callable[[float], object],
    wait_moved: Callable[[float], bool],
) -> Played:
    """Make the fault of ``scenario`` on ``target``, hold it and undo it. ``wait_moved(at_least)``
    waits (no less than ``at_least`` seconds) until the IP has moved away from the target and
    traffic flows again, False on timeout. The undo runs also on Ctrl-C or an error, so the lab
    is left as it was found."""
    f = FAULTS[scenario]
    texts = holds.texts(target, lease)
    hold = holds.seconds(f.hold, lease)
    # The fault starts when the signal is sent, or when the ip/nft command that makes it returns.
    fault = clock()
    f.fault(lab, target)
    if f.stamped_on_return:
        fault = clock()
    played = Played(fault, f.fault_action.format(**texts))
    held = False
    try:
        if f.then is not None:
            sleep(max(0.0, fault + holds.kill_after - clock()))
            f.then(lab, target)
            played.steps.append((clock(), f.then_action.format(**texts)))
        if f.hold in ("freeze", "outage", "partition", "quiet"):
            sleep(max(0.0, fault + hold - clock()))
        elif f.hold == "moved":
            played.moved = wait_moved(hold)
        held = True
    finally:
        try:
            if f.recover is not None:
                f.recover(lab, target)
                played.recover = clock()
                played.recover_action = f.recover_action.format(**texts)
        finally:
            if f.release is not None:
                try:
                    if held:
                        played.moved = wait_moved(0.0)
                finally:
                    f.release(lab, target)
                    played.steps.append((clock(), f.release_action.format(**texts)))
    return played
