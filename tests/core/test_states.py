"""The per-IP member state machine, specified by what a member may do: named
scenarios of legal moves and where they lead, and the moves each rule of
``core/states.py`` forbids. A move no scenario uses must raise."""

from __future__ import annotations

import itertools

import pytest

from egressd.core.errors import IllegalTransition
from egressd.core.states import SERVING, TRANSITIONS, Event, State, StateMachine, next_state

S, E = State, Event

SCENARIOS: dict[str, tuple[State, list[tuple[Event, State]]]] = {
    "a standby wins the lease and serves": (S.STANDBY, [(E.ACQUIRED, S.OWNER)]),
    "an owner renews and keeps serving": (S.OWNER, [(E.RENEWED, S.OWNER), (E.RENEWED, S.OWNER)]),
    "an owner past its renew deadline steps down and may win again": (
        S.OWNER,
        [(E.STEPPED_DOWN, S.STANDBY), (E.ACQUIRED, S.OWNER)],
    ),
    "an owner hands off, then the daemon stops": (S.OWNER, [(E.RELEASED, S.STANDBY), (E.STOP, S.STOPPED)]),
    "an identity clash fences the owner until the hold-off is over": (
        S.OWNER,
        [(E.CLASH, S.FENCED), (E.HOLD_OFF_OVER, S.STANDBY), (E.ACQUIRED, S.OWNER)],
    ),
    "a fenced member stops without serving": (S.FENCED, [(E.STOP, S.STOPPED)]),
    "stopping a stopped member again changes nothing": (S.STOPPED, [(E.STOP, S.STOPPED)]),
}

FORBIDDEN: dict[str, list[tuple[State, Event]]] = {
    "an owner never stops while serving (it releases or steps down first)": [(S.OWNER, E.STOP)],
    "an owner does not acquire what it holds": [(S.OWNER, E.ACQUIRED)],
    "a standby has no tenure to renew, end or clash over": [
        (S.STANDBY, E.RENEWED),
        (S.STANDBY, E.STEPPED_DOWN),
        (S.STANDBY, E.RELEASED),
        (S.STANDBY, E.CLASH),
    ],
    "a fenced member never serves nor writes before its hold-off ends": [
        (S.FENCED, E.ACQUIRED),
        (S.FENCED, E.RENEWED),
        (S.FENCED, E.STEPPED_DOWN),
        (S.FENCED, E.RELEASED),
        (S.FENCED, E.CLASH),
    ],
    "only a fence has a hold-off to end": [(S.STANDBY, E.HOLD_OFF_OVER), (S.OWNER, E.HOLD_OFF_OVER)],
    "a stopped member never comes back": [
        (S.STOPPED, E.ACQUIRED),
        (S.STOPPED, E.RENEWED),
        (S.STOPPED, E.STEPPED_DOWN),
        (S.STOPPED, E.RELEASED),
        (S.STOPPED, E.CLASH),
        (S.STOPPED, E.HOLD_OFF_OVER),
    ],
}


def legal_moves() -> set[tuple[State, Event]]:
    moves = set()
    for start, steps in SCENARIOS.values():
        state = start
        for event, after in steps:
            moves.add((state, event))
            state = after
    return moves


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_scenario(name: str) -> None:
    start, steps = SCENARIOS[name]
    sm = StateMachine(start)
    for event, after in steps:
        before = sm.state
        assert sm.fire(event) == (before, after), f"{name}: {before.value} --{event.value}-->"
        assert sm.serving == (after is S.OWNER)


@pytest.mark.parametrize("rule", list(FORBIDDEN))
def test_forbidden_moves_raise_and_leave_the_machine_where_it_was(rule: str) -> None:
    for state, event in FORBIDDEN[rule]:
        sm = StateMachine(state)
        with pytest.raises(IllegalTransition, match=f"from {state.value} on {event.value}"):
            sm.fire(event)
        assert sm.state is state, rule


def test_every_move_is_either_in_a_scenario_or_forbidden_by_a_rule() -> None:
    """The specification is complete: a new transition needs a scenario, and a
    move dropped from the table fails its scenario."""
    forbidden = {move for moves in FORBIDDEN.values() for move in moves}
    assert legal_moves().isdisjoint(forbidden)
    assert legal_moves() | forbidden == set(itertools.product(State, Event))


def test_every_move_no_scenario_uses_raises() -> None:
    for state, event in set(itertools.product(State, Event)) - legal_moves():
        with pytest.raises(IllegalTransition):
            next_state(state, event)


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
