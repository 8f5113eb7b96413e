"""The scenarios of a drill as one table: how the fault is made, how long it is held, how it is undone,
and whether the daemon comes back as a new process.

Scenarios (:data:`SCENARIOS`, in the order of :data:`FAULTS`):

* ``graceful``      SIGTERM the target; the supervisor starts it again (``Restart=always``).
* ``kill``          SIGKILL the target, held down until the IP has moved and traffic flows again.
* ``kill-restart``  SIGKILL the target, started again after the supervisor's 100 ms.
* ``freeze``        SIGSTOP the target for ``leaseDuration + 2 s``, then SIGCONT.
* ``link-cut``      the target's cables pulled (node loss) until the IP has moved, then plugged back.
* ``api-partition`` the target cannot reach the API server (data plane intact) until the IP has
  moved, then the partition is lifted.
* ``api-outage``    the API server frozen for everyone for ``outage_seconds`` (30 s), then thawed.
  Today egressd steps down when it cannot renew, so this measures an outage of
  about the pause; the point is that no two nodes serve an IP.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from egressd.lab.netlab import Lab

Hold = Literal["", "freeze", "outage", "moved"]
"""How long a fault is held before it is undone: ``""`` not held (nothing to undo, or undone at
once); ``freeze`` ``leaseDuration + 2 s``; ``outage`` the drill's ``outage_seconds``; ``moved``
until the IP has moved away from the target and traffic flows again (at least ``leaseDuration``)."""


@dataclass(frozen=True)
class Fault:
    """One row of :data:`FAULTS`. The ``*_action`` texts are templates with ``{target}``,
    ``{freeze}`` (``leaseDuration + 2``, seconds) and ``{outage}`` (seconds)."""

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
        "{target} cut off from the API server",
        hold="moved",
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
    ),
}

SCENARIOS = tuple(FAULTS)
