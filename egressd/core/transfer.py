"""A graceful handoff by transfer: the leaving owner writes the claim naming
its successor, so the successor serves on that write without one of its own
(DESIGN.md, "The mesh"; docs/mesh.md, "Graceful handoff").

A release followed by the successor's claim puts two API writes, and the
successor's read of the release, between the old owner's last packet and the
new owner's first. With the mesh, the owner leaving an IP first *offers* its
claim to the successor (:class:`~egressd.core.mesh_messages.Offer`, signed);
a successor that can serve answers with an
:class:`~egressd.core.mesh_messages.Accept` naming its process. The owner
then withdraws as before and, instead of writing the claim free, writes it
held by the successor's process (the epoch goes up: a new tenure), a
conditional write on its own tenure like the release. Without an accept in
time (:data:`ACCEPT_WAIT`) it releases as before.

Why the successor may serve on a write it did not make:

* **No overlap with the old owner.** The transfer is written only after the
  old owner withdrew, exactly as the release it replaces.
* **No overlap with a third node.** Any other standby times the new holder
  from its own sight of the transfer (the claim's last change counts), so it
  takes over no sooner than ``leaseDuration`` after the transfer was written.
  The transfer is written after the accept was sent, so after the successor
  recorded the accept (its time ``at``). The successor serves on the transfer
  only while less than ``renewDeadline`` has passed since ``at``
  (:func:`may_assume`) and with its own node lease's API right, as every
  acquire: it then starts serving before any standby can have timed it out
  (``renewDeadline`` < ``leaseDuration``, inequality T1), and from then on it
  is a holder like any other, whose renews and fences T1 covers. A successor
  that sees the transfer later, or not as accepted (another epoch, another
  process), writes the claim itself first, as it always did for a claim
  naming it (``reacquire-own-lease``): the conditional write then settles any
  race.
* **Nothing in a datagram gives a right.** An offer only makes a standby
  record that it accepted; the accept only lets the owner choose a transfer
  over a release. A forged or replayed one fails the signature or the nonce;
  a recorded accept answers no later offer (the nonce); an accept from a
  process that restarted names the old process, which the transfer then
  names, and the new process treats that claim as its predecessor's.
* **The owner's word for its write.** The owner's wake after the transfer
  (sent once the write's answer came back) tells the successor the transfer
  is written before its watch or a read can: the wake of the process that
  offered, at the accepted epoch (:func:`confirmed_by`), stands for the
  transfer (:func:`transferred`, the answer's resourceVersion), and the
  successor decides on it as on the claim read back. This is the trust every
  promise already gets: a datagram signed with the cluster key is what the
  daemon that sent it did. The window and the API right are checked as for
  a transfer seen on the watch; a wake that does not match (another epoch or
  process, or a view that does not show the offered claim) makes the
  successor read the claim instead.

Pure: the caller gives its clock readings and what its view knows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from egressd.core.lease import LeaseRecord, epoch_order, held_by, next_epoch
from egressd.core.mesh_messages import Offer, Wake
from egressd.core.model import Timing

ACCEPT_WAIT = 0.02
"""Seconds from its offer an owner waits for the accept, at most; without it,
it releases the claim as it would without the mesh. The offer leaves before
the withdrawal, which takes a few milliseconds, and an accept comes back
within one round trip of the node network (about a millisecond, more on a
loaded node): so an accept is usually there when the withdrawal ends, and a
successor that is gone or refuses costs the handoff at most this much."""


@dataclass(frozen=True)
class Accepted:
    """A standby's record of an offer it accepted."""

    epoch: int
    """The epoch the transfer will carry: the offered one, plus one."""
    at: float
    """Our clock when we accepted (before the accept left)."""
    owner: str = ""
    owner_incarnation: str = ""
    """The process that offered the claim (its wake stands for its transfer write)."""


@dataclass(frozen=True)
class OfferVerdict:
    accept: bool
    reason: str
    """Short and fixed (a metric label): ``accepted`` or why not."""
    detail: str = ""


def judge_offer(
    offer: Offer,
    *,
    me: str,
    candidates: Sequence[str] | None,
    known: LeaseRecord | None,
    standby: bool,
    api_right: bool,
    held_off: bool,
    stopping: bool,
) -> OfferVerdict:
    """Whether to accept ``offer``: only a standby that could take the claim
    now by a write of its own accepts one.

    ``candidates``: the IP's candidates as we know them (None: we have no
    member for it); ``known``: its claim as our view shows it; ``standby``: we
    neither hold nor serve it; ``api_right``: our node lease's last renew is
    within the renew deadline; ``held_off``: a hold-off forbids us to take
    anything; ``stopping``: this process is shutting down.

    1. It must name us (``misdirected``); we and the sender must be candidates
       of the IP (``not-candidate``).
    2. We must be able to serve: a standby (``not-standby``), not stopping
       (``stopping``), not held off (``hold-off``), with the API right
       (``no-node-lease-right``).
    3. A view newer than the offer (a later epoch) shows the offer is old (``stale-epoch``)."""
    ip = offer.ip
    refusals = (
        (offer.to != me, "misdirected", f"an offer for {offer.to}"),
        (
            candidates is None or me not in candidates or offer.sender not in candidates,
            "not-candidate",
            f"{ip}: {offer.sender} and {me} are not both candidates",
        ),
        (not standby, "not-standby", f"{ip}: we hold or serve it"),
        (stopping, "stopping", ""),
        (held_off, "hold-off", ""),
        (not api_right, "no-node-lease-right", ""),
        (
            known is not None and epoch_order(known.transitions, offer.epoch) > 0,
            "stale-epoch",
            f"{ip}: offered at epoch {offer.epoch}, the claim is at {known.transitions if known else '-'}",
        ),
    )
    for refused, reason, detail in refusals:
        if refused:
            return OfferVerdict(False, reason, detail)
    return OfferVerdict(True, "accepted")


def accepted(offer: Offer, now: float) -> Accepted:
    """What a standby records when it accepts ``offer`` at ``now``."""
    return Accepted(next_epoch(offer.epoch), now, offer.sender, offer.incarnation)


def may_assume(acceptance: Accepted | None, record: LeaseRecord, now: float, timing: Timing) -> bool:
    """Whether a claim naming our process (``record``) is the transfer we
    accepted, seen soon enough to serve on it without a write of our own:
    its epoch is the accepted one and less than ``renewDeadline`` has passed
    since we accepted (see the module docstring)."""
    return (
        acceptance is not None
        and record.transitions == acceptance.epoch
        and 0 <= now - acceptance.at < timing.renew_deadline
    )


def transfer_record(
    base: LeaseRecord,
    *,
    successor: str,
    address: str,
    incarnation: str,
    lease_duration: float,
    now: datetime,
) -> LeaseRecord:
    """The claim an owner writes to transfer ``base`` (its own, held) to the
    successor's process ``incarnation`` at its node address ``address``."""
    return held_by(
        base,
        name=base.name,
        egress_ip=base.egress_ip,
        holder=successor,
        holder_address=address,
        incarnation=incarnation,
        lease_duration=lease_duration,
        now=now,
        reason=f"transferred-from-{base.holder}",
    )


def confirmed_by(acceptance: Accepted | None, wake: Wake, known: LeaseRecord | None) -> bool:
    """Whether ``wake`` is the owner's word that it wrote the transfer we
    accepted: from the process that offered, at the accepted epoch, and our
    view shows the claim it transferred (held by that process one epoch
    before), from which the transfer follows."""
    return (
        acceptance is not None
        and wake.sender == acceptance.owner
        and wake.incarnation == acceptance.owner_incarnation
        and wake.epoch == acceptance.epoch
        and known is not None
        and known.holder == wake.sender
        and next_epoch(known.transitions) == wake.epoch
    )


def transferred(
    known: LeaseRecord, wake: Wake, *, me: str, address: str, incarnation: str, lease_duration: float, now: datetime
) -> LeaseRecord:
    """The transfer as the owner wrote it (:func:`transfer_record` of the claim
    our view shows, with the resourceVersion of the write's answer the wake
    carries), but for the times, which are the owner's in the claim written."""
    record = transfer_record(
        known, successor=me, address=address, incarnation=incarnation, lease_duration=lease_duration, now=now
    )
    return replace(record, resource_version=wake.resource_version)
