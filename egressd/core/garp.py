"""When to send gratuitous ARP (IPv4) or unsolicited neighbour advertisements
(IPv6) for an egress IP: a schedule, as plain data (no I/O, no clock).

After a takeover the other hosts on the segment (the router, the firewall, the
steering nodes) still map the egress IP to the previous owner's MAC. One frame
usually fixes that, but a single frame can be lost (a busy switch, a port still
learning, a receiver whose neighbour entry is being updated at that instant),
and a host that misses it keeps sending to the old MAC until its entry goes
stale (tens of seconds). So:

* **frame 0 at once**, on the takeover path, before ``Announcer.start`` returns;
* **a burst** at 50, 150, 350 and 750 ms: gaps doubling from 50 ms, so a loss
  caused by something short (a queue overflow) is repaired within 50 ms, and one
  caused by something longer (a port or bridge relearning, a receiver busy) is
  still covered up to 0.75 s, all well inside one lease duration. MetalLB sends
  one frame and a second one 1.1 s later; keepalived sends ``garp_master_repeat``
  (default 5) frames at once and again after ``garp_master_delay`` (default 5 s).
  Spreading five frames over 0.75 s costs the same and protects earlier;
* **a slow refresh** while owning (default every 30 s, ``0`` disables), like
  keepalived's ``garp_master_refresh``: it repairs hosts that joined later or
  flushed their caches, and keeps switch MAC tables fresh for a quiet IP.

Form: an ARP *request* with sender = target = the IP (RFC 5227 "ARP
announcement") updates existing entries on every common stack and creates none;
the *reply* form (op 2, broadcast) is what some older routers only accept.
IPv6 uses an unsolicited NA to all-nodes with the Override flag (RFC 4861 7.2.6).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

ArpForm = Literal["request", "reply"]


@dataclass(frozen=True)
class GarpSchedule:
    """Times of the frames announcing one egress IP after it was taken over."""

    burst: tuple[float, ...] = (0.05, 0.15, 0.35, 0.75)
    """Seconds after the first frame (which is sent at once) at which the burst
    frames go out; strictly increasing. See the module docstring for why."""

    refresh: float = 30.0
    """Seconds between refresh frames after the burst while the IP is owned;
    0 disables the refresh."""

    form: ArpForm = "request"
    """ARP opcode of IPv4 announcements: ``request`` (RFC 5227 announcement,
    the default) or ``reply`` (gratuitous reply, for peers that need it)."""

    def __post_init__(self) -> None:
        if any(t <= 0 for t in self.burst):
            raise ValueError(f"burst offsets must be positive, got {self.burst}")
        if any(b <= a for a, b in zip(self.burst, self.burst[1:], strict=False)):
            raise ValueError(f"burst offsets must increase strictly, got {self.burst}")
        if self.refresh < 0:
            raise ValueError(f"refresh must be 0 (off) or positive, got {self.refresh}")
        if self.form not in ("request", "reply"):
            raise ValueError(f"form must be 'request' or 'reply', got {self.form!r}")

    def offsets(self) -> Iterator[float]:
        """Times after the first frame of every later frame: the burst, then the
        refresh forever (or nothing more when the refresh is off)."""
        yield from self.burst
        if self.refresh <= 0:
            return
        t = self.burst[-1] if self.burst else 0.0
        while True:
            t += self.refresh
            yield t

    def delays(self) -> Iterator[float]:
        """Sleeps between consecutive frames (what a sender loop waits)."""
        previous = 0.0
        for t in self.offsets():
            yield t - previous
            previous = t
