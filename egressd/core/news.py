"""News of a new owner for the steering nodes (DESIGN.md, "The mesh").

A node that steers a group's traffic learns who serves each egress IP from
the claim, as its watch brings it. After a handoff or a takeover that watch
is the slowest part left: the API server delivers the new claim to every
steering node some milliseconds after the write (8 to 28 ms in the lab's
graceful handoff), and after an API outage it may be seconds, while the new
owner already serves. So a gateway that starts serving an IP tells the nodes
that listen to it (:class:`~egressd.core.mesh_messages.Listen`, sent by each
steering node to the candidates of the groups it steers) in a signed
:class:`~egressd.core.mesh_messages.Serving` datagram: "I serve these IPs,
each on its claim at this epoch".

A steering node takes a claim of that news as a **hint** (:func:`judge_news`)
only if

1. it steers the IP (``not-steered``);
2. the sender is a candidate of the IP's group (``not-candidate``);
3. the epoch is newer than the claim its view shows, or its view shows none,
   and newer than news it took before (``stale-epoch``): news never overrides
   what the API, or a later owner, already said.

It then routes the IP to the sender (the datagram's source address, which is
the node address a gateway binds its mesh socket to and writes in its claims)
until its view shows the claim at the hint's epoch or a newer one
(:func:`steer_to`); from then on the claim alone decides, as before.

Nothing here bears on safety: which node serves an IP is decided by the
claims and the rights (:mod:`egressd.core.rights`); a steering node only
chooses where to send its traffic. A gateway sends the news only once it
serves, so a hint sends traffic to a node that NATs it; if that node stops
serving, the claim written after it is newer than the hint and wins. News
lost or late costs what it costs without it: the watch brings the claim.

Pure: the caller gives what its view knows.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection
from dataclasses import dataclass

from egressd.core.lease import LeaseRecord, epoch_order

LISTEN_EVERY_LEASES = 1.0
"""A steering node sends its listen to each candidate every this many
``leaseDuration``."""
LISTEN_KEEP_LEASES = 3.0
"""A gateway sends news to a listener for this many ``leaseDuration`` after its
last listen: two listens may be lost before the news stops."""
MAX_LISTENERS = 4096
"""Listeners a gateway keeps (the least recently heard goes first)."""


@dataclass(frozen=True)
class Hint:
    """A new owner heard over the mesh, ahead of the claim."""

    holder: str
    epoch: int
    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    """Where to steer: the news' source address."""


@dataclass(frozen=True)
class NewsVerdict:
    taken: bool
    reason: str
    """Short and fixed (a metric label): ``taken``, or why it was dropped."""
    detail: str = ""


def judge_news(
    ip: str,
    epoch: int,
    sender: str,
    *,
    candidates: Collection[str] | None,
    known: LeaseRecord | None,
    held: Hint | None = None,
) -> NewsVerdict:
    """Whether a steering node takes the news that ``sender`` serves ``ip``
    on its claim at ``epoch``.

    ``candidates``: the candidates of the group this node steers ``ip`` for
    (None: it does not steer it); ``known``: the claim as its view shows it
    (None: not seen); ``held``: the hint it holds for ``ip`` (news taken
    earlier), which newer news only replaces."""
    if candidates is None:
        return NewsVerdict(False, "not-steered", f"{ip} is not steered here")
    if sender not in candidates:
        return NewsVerdict(False, "not-candidate", f"{sender} is no candidate of {ip}")
    if known is not None and epoch_order(epoch, known.transitions) <= 0:
        return NewsVerdict(
            False, "stale-epoch", f"{ip} epoch {epoch} is not newer than the claim's {known.transitions}"
        )
    if held is not None and epoch_order(epoch, held.epoch) <= 0:
        return NewsVerdict(False, "stale-epoch", f"{ip} epoch {epoch} is not newer than news of {held.epoch}")
    return NewsVerdict(True, "taken")


def steer_to(record: LeaseRecord | None, hint: Hint | None) -> Hint | None:
    """The hint still ahead of the claim ``record`` (None: the claim decides,
    the hint may be forgotten)."""
    if hint is None:
        return None
    if record is not None and epoch_order(hint.epoch, record.transitions) <= 0:
        return None
    return hint
