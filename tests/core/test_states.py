"""The per-IP member state machine: the table is the specification."""

from __future__ import annotations

import itertools

import pytest

from egressd.core.errors import IllegalTransition
from egressd.core.states import SERVING, TRANSITIONS, Event, State, StateMachine, next_state

EXPECTED = {
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

ALL_MOVES = list(itertools.product(State, Event))
ILLEGAL = [move for move in ALL_MOVES if move not in EXPECTED]


def _id(move: tuple[State, Event]) -> str:
    return f"{move[0].value}-{move[1].value}"


def test_the_table_is_exactly_the_documented_one() -> None:
    assert TRANSITIONS == EXPECTED


@pytest.mark.parametrize(("move", "after"), list(EXPECTED.items()), ids=[_id(m) for m in EXPECTED])
def test_every_table_entry(move: tuple[State, Event], after: State) -> None:
    state, event = move
    assert next_state(state, event) is after
    sm = StateMachine(state)
    assert sm.fire(event) == (state, after)
    assert sm.state is after


@pytest.mark.parametrize("move", ILLEGAL, ids=[_id(m) for m in ILLEGAL])
def test_every_move_outside_the_table_raises(move: tuple[State, Event]) -> None:
    state, event = move
    with pytest.raises(IllegalTransition, match=f"from {state.value} on {event.value}"):
        next_state(state, event)


@pytest.mark.parametrize(
    ("state", "event"),
    [
        (State.OWNER, Event.STOP),
        (State.STANDBY, Event.RENEWED),
        (State.FENCED, Event.ACQUIRED),
        (State.STOPPED, Event.ACQUIRED),
        (State.OWNER, Event.ACQUIRED),
        (State.STANDBY, Event.STEPPED_DOWN),
    ],
)
def test_illegal_move_leaves_the_machine_where_it_was(state: State, event: Event) -> None:
    sm = StateMachine(state)
    with pytest.raises(IllegalTransition):
        sm.fire(event)
    assert sm.state is state


def test_a_new_machine_starts_in_standby_and_does_not_serve() -> None:
    sm = StateMachine()
    assert sm.state is State.STANDBY
    assert not sm.serving


def test_only_the_owner_serves() -> None:
    assert frozenset({State.OWNER}) == SERVING
    assert [s for s in State if StateMachine(s).serving] == [State.OWNER]


def test_a_full_tenure() -> None:
    sm = StateMachine()
    for event, state in [
        (Event.ACQUIRED, State.OWNER),
        (Event.RENEWED, State.OWNER),
        (Event.RENEWED, State.OWNER),
        (Event.RELEASED, State.STANDBY),
        (Event.ACQUIRED, State.OWNER),
        (Event.CLASH, State.FENCED),
        (Event.HOLD_OFF_OVER, State.STANDBY),
        (Event.STOP, State.STOPPED),
        (Event.STOP, State.STOPPED),
    ]:
        sm.fire(event)
        assert sm.state is state


def _paths_to_stopped(start: State) -> list[list[tuple[State, Event, State]]]:
    """Every cycle-free path of the table from ``start`` to STOPPED."""
    found: list[list[tuple[State, Event, State]]] = []

    def walk(state: State, path: list[tuple[State, Event, State]], visited: set[State]) -> None:
        for (src, event), dst in TRANSITIONS.items():
            if src is not state or dst in visited:
                continue
            step = [*path, (src, event, dst)]
            if dst is State.STOPPED:
                found.append(step)
            else:
                walk(dst, step, visited | {dst})

    walk(start, [], {start})
    return found


def test_stopped_is_only_reached_from_states_that_do_not_serve() -> None:
    """Shutdown can never leave an IP served: STOPPED is entered only from a
    non-serving state, so every path from OWNER leaves OWNER (withdrawing the
    data plane) on the way."""
    into_stopped = {src for (src, _), dst in TRANSITIONS.items() if dst is State.STOPPED}
    assert into_stopped.isdisjoint(SERVING)
    paths = _paths_to_stopped(State.OWNER)
    assert paths
    for path in paths:
        assert path[0][2] not in SERVING, path  # the first step already withdraws


def test_from_owner_to_stopped_passes_standby_or_the_fence() -> None:
    """OWNER reaches STOPPED only through STANDBY (after a release or step-down)
    or through FENCED (after an identity clash, which also withdraws)."""
    for path in _paths_to_stopped(State.OWNER):
        visited = {dst for _, _, dst in path[:-1]}
        assert visited & {State.STANDBY, State.FENCED}, path
    routes = {tuple(dst for _, _, dst in path) for path in _paths_to_stopped(State.OWNER)}
    assert routes == {
        (State.STANDBY, State.STOPPED),
        (State.FENCED, State.STOPPED),
        (State.FENCED, State.STANDBY, State.STOPPED),
    }


def test_fenced_never_becomes_owner_without_passing_standby() -> None:
    assert all(dst is not State.OWNER for (src, _), dst in TRANSITIONS.items() if src is State.FENCED)


def test_stopped_is_final() -> None:
    assert {dst for (src, _), dst in TRANSITIONS.items() if src is State.STOPPED} == {State.STOPPED}
