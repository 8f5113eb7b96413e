"""The ``mesh:`` section: defaults, every bad value named by its field, the
promises' inequalities checked with the election's timings, mesh off
without a key file."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from egressd.core.config import parse_settings
from egressd.core.errors import ConfigError
from egressd.core.mesh_settings import DEFAULT_PORT, MeshSettings, parse_mesh
from egressd.core.rights import MeshTiming
from tests.core.test_config import config, fields_of, problems_of
from tests.core.test_parsers_property import BOUNDED, mutated, values

GOOD = {"keyFile": "/etc/egressd/mesh/key", "port": 7000, "promiseDuration": "1500ms", "maxHold": "2m",
        "drift": 0.02, "margin": "20ms"}  # fmt: skip


def test_defaults_with_a_key_file() -> None:
    settings = parse_settings(config() | {"mesh": {"keyFile": "/k"}})
    assert settings.mesh == MeshSettings(key_file="/k", port=DEFAULT_PORT, timing=MeshTiming())
    assert settings.mesh.timing.promise_duration == 2.0
    assert settings.mesh.timing.max_hold == 900.0


def test_every_field() -> None:
    settings = parse_settings(config() | {"mesh": GOOD})
    assert settings.mesh is not None
    assert settings.mesh.port == 7000
    assert settings.mesh.timing == MeshTiming(promise_duration=1.5, max_hold=120.0, drift=0.02, margin=0.02)


@pytest.mark.parametrize("section", [None, {}, {"port": 7000, "promiseDuration": "1s"}])
def test_no_key_file_is_mesh_off(section: Any) -> None:
    assert parse_settings(config() | {"mesh": section}).mesh is None
    assert parse_settings(config()).mesh is None


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("keyFile", 7),
        ("keyFile", ""),
        ("port", 0),
        ("port", 65536),
        ("port", "7946"),
        ("port", True),
        ("promiseDuration", "0s"),
        ("promiseDuration", "-1s"),
        ("promiseDuration", "soon"),
        ("maxHold", float("inf")),
        ("maxHold", 10**400),
        ("drift", 0.5),
        ("drift", -0.1),
        ("drift", float("nan")),
        ("drift", "1%"),
        ("margin", "-5ms"),
        ("keyfile", "/k"),
    ],
)
def test_bad_values_name_their_field(key: str, value: Any) -> None:
    problems = problems_of(config() | {"mesh": GOOD | {key: value}})
    assert [p.field for p in problems] == [f"mesh.{key}"]


def test_not_a_mapping() -> None:
    assert fields_of(config() | {"mesh": "on"}) == {"mesh"}


@pytest.mark.parametrize(
    ("section", "inequality"),
    [
        ({"promiseDuration": "3s"}, "(M1)"),  # more than leaseDuration (2s)
        ({"promiseDuration": "0.2s"}, "(M2)"),  # leaves no room for a kernel fence
        ({"maxHold": "1s"}, "(M4)"),  # under leaseDuration
    ],
)
def test_inequalities_are_named(section: dict[str, Any], inequality: str) -> None:
    problems = problems_of(config() | {"mesh": {"keyFile": "/k"} | section})
    assert [p.field for p in problems] == ["mesh"]
    assert problems[0].message.startswith(inequality)


def test_inequalities_use_the_election_timings() -> None:
    data = config() | {"mesh": {"keyFile": "/k", "promiseDuration": "3s"}, "timing": {"leaseDuration": "4s"}}
    assert parse_settings(data).mesh is not None


@BOUNDED
@given(st.one_of(values, mutated(GOOD)))
def test_parse_mesh_on_arbitrary_data(data: Any) -> None:
    parsed, problems = parse_mesh(data)
    assert parsed is None or (isinstance(parsed, MeshSettings) and problems == [])
    assert all(p.field.startswith("mesh") and p.message for p in problems)


@BOUNDED
@given(mutated(config() | {"mesh": GOOD}))
def test_parse_settings_with_mesh_on_mutated_configs(data: dict[str, Any]) -> None:
    try:
        parse_settings(data)
    except ConfigError as exc:
        assert exc.problems


def test_optional_is_a_boolean() -> None:
    settings = parse_settings(config() | {"mesh": {"keyFile": "/k", "optional": True}})
    assert settings.mesh is not None and settings.mesh.optional is True
    assert parse_settings(config() | {"mesh": {"keyFile": "/k"}}).mesh.optional is False  # type: ignore[union-attr]
    assert [p.field for p in problems_of(config() | {"mesh": GOOD | {"optional": "yes"}})] == ["mesh.optional"]
