"""What a successor does with a handoff's wake (DESIGN.md, "The mesh").

A graceful handoff withdraws, then releases the claim naming a successor;
the successor learns of it from its watch of the claims, or sooner from the
old owner's **wake** datagram (:class:`egressd.core.mesh_messages.Wake`). The
wake is authenticated but its content is not trusted for safety: all it
decides is that the successor reads the claim *now* (one GET, a quorum read)
instead of waiting for its watch. Whatever the claim then says is decided by
:func:`egressd.core.election.decide` as if the watch had brought it, and
taken, if at all, by the usual conditional write. A wake that is lost, late
or false costs time, never safety: without it the watch still brings the
release.

:func:`judge_wake` filters the wakes worth a read; those refused are dropped
and counted by reason. Pure: the caller gives what its view knows.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from egressd.core.lease import LeaseRecord, epoch_order
from egressd.core.mesh_messages import Wake


class WakeAction(enum.Enum):
    READ = "read"
    """Read the claim now (the member decides on what the read returns)."""
    SEEN = "seen"
    """Nothing to do: our view shows the released claim already, or shows us
    holding it (the watch came first)."""
    DROP = "drop"
    """Refused, counted by reason."""


@dataclass(frozen=True)
class WakeVerdict:
    action: WakeAction
    reason: str
    """Short and fixed (a metric label): ``read``, ``seen``, ``held``, or why it was dropped."""
    detail: str = ""


def judge_wake(
    wake: Wake,
    *,
    me: str,
    candidates: Sequence[str] | None,
    known: LeaseRecord | None,
) -> WakeVerdict:
    """Whether to read the claim of ``wake.ip`` now.

    ``candidates``: the candidates of the IP as this node knows them (None:
    this node is no candidate of it, or does not know the IP); ``known``: the
    claim as our view shows it (None: not seen).

    1. The wake must name us as the successor (``misdirected``).
    2. We and the sender must both be candidates of the IP (``not-candidate``):
       nobody else can hold or hand off its claim.
    3. A claim our view shows held by us needs no read (``held``): the watch
       was first and we took it already (the wake then names an older epoch:
       no fault of anyone's, so not dropped).
    4. A wake older than the claim we know (its epoch before the claim's, in
       the wrapping order of epochs) is from an earlier handoff (``stale-epoch``).
    5. A view that shows the released version already needs no read (``seen``).
    6. Otherwise: read the claim now."""
    refused = _not_ours(wake, me, candidates)
    if refused is not None:
        return refused
    if known is not None and known.holder == me:
        return WakeVerdict(WakeAction.SEEN, "held")
    if known is not None and epoch_order(known.transitions, wake.epoch) > 0:
        detail = f"{wake.ip}: released at epoch {wake.epoch}, the claim is at {known.transitions}"
        return WakeVerdict(WakeAction.DROP, "stale-epoch", detail)
    if known is not None and known.resource_version == wake.resource_version:
        return WakeVerdict(WakeAction.SEEN, "seen")
    return WakeVerdict(WakeAction.READ, "read")


def _not_ours(wake: Wake, me: str, candidates: Sequence[str] | None) -> WakeVerdict | None:
    """Steps 1 and 2 of :func:`judge_wake`: the drop, if the wake is not for us."""
    if wake.to != me:
        return WakeVerdict(WakeAction.DROP, "misdirected", f"a wake for {wake.to}")
    if candidates is None or me not in candidates:
        return WakeVerdict(WakeAction.DROP, "not-candidate", f"{me} is no candidate of {wake.ip}")
    if wake.sender not in candidates:
        return WakeVerdict(WakeAction.DROP, "not-candidate", f"{wake.sender} is no candidate of {wake.ip}")
    return None
