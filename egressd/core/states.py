"""The per-IP member state machine, as a table.

Rules, in order of importance:

1. Only ``OWNER`` serves the IP (address, SNAT, ARP). Every way out of
   ``OWNER`` withdraws the data plane *before* anything is written to the API.
2. ``STOPPED`` cannot be reached from ``OWNER``: a member stops only after it
   has released or stepped down, so shutdown can never leave an IP served.
3. ``FENCED`` is entered on an identity clash and left only after a hold-off;
   it never serves.

Any move not in :data:`TRANSITIONS` raises :class:`IllegalTransition`.

::

    STANDBY --acquired--> OWNER --renewed--> OWNER
       ^                    |
       |<--stepped-down-----|   (renew deadline, lost lease)
       |<--released---------|   (handoff, shutdown)
       |                    +--clash--> FENCED --hold-off-over--> STANDBY
    STANDBY/FENCED --stop--> STOPPED
"""

from __future__ import annotations

from enum import Enum

from egressd.core.errors import IllegalTransition


class State(Enum):
    STANDBY = "standby"
    OWNER = "owner"
    FENCED = "fenced"
    STOPPED = "stopped"


class Event(Enum):
    ACQUIRED = "acquired"
    RENEWED = "renewed"
    STEPPED_DOWN = "stepped-down"
    RELEASED = "released"
    CLASH = "clash"
    HOLD_OFF_OVER = "hold-off-over"
    STOP = "stop"


TRANSITIONS: dict[tuple[State, Event], State] = {
    (State.STANDBY, Event.ACQUIRED): State.OWNER,
    (State.OWNER, Event.RENEWED): State.OWNER,
    (State.OWNER, Event.STEPPED_DOWN): State.STANDBY,
    (State.OWNER, Event.RELEASED): State.STANDBY,
    (State.OWNER, Event.CLASH): State.FENCED,
    (State.FENCED, Event.HOLD_OFF_OVER): State.STANDBY,
    (State.STANDBY, Event.STOP): State.STOPPED,
    (State.FENCED, Event.STOP): State.STOPPED,
    (State.STOPPED, Event.STOP): State.STOPPED,
}

SERVING = frozenset({State.OWNER})


def next_state(state: State, event: Event) -> State:
    """The state after ``event`` in ``state``, or raise :class:`IllegalTransition`."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise IllegalTransition(f"no transition from {state.value} on {event.value}") from None


class StateMachine:
    """Current state of one member plus the table's enforcement."""

    def __init__(self, state: State = State.STANDBY) -> None:
        self.state = state

    def fire(self, event: Event) -> tuple[State, State]:
        """Apply ``event``; return (before, after)."""
        before = self.state
        self.state = next_state(before, event)
        return before, self.state

    @property
    def serving(self) -> bool:
        return self.state in SERVING
