"""The ``conntrack:`` section: defaults, every bad value named by its field,
the mark within its mask, in effect only with the mesh."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from egressd.core.config import parse_settings
from egressd.core.conntrack_settings import ConntrackSettings, parse_conntrack
from egressd.core.errors import ConfigError
from tests.core.test_config import config, problems_of
from tests.core.test_parsers_property import BOUNDED, mutated, values

GOOD = {"enabled": True, "mark": "0x00110000", "mask": 0x00FF0000, "guardGrace": "2s", "maxEntriesPerPeer": 1000,
        "batchInterval": "100ms", "resyncInterval": "1m", "installBudget": "10ms"}  # fmt: skip


def test_defaults_and_on_only_with_the_mesh() -> None:
    settings = parse_settings(config())
    assert settings.conntrack == ConntrackSettings()
    assert settings.conntrack.guard_grace == 3.0 and settings.conntrack.max_entries_per_peer == 65_536
    assert not settings.replicates  # no mesh: nothing to carry the entries
    assert parse_settings(config() | {"mesh": {"keyFile": "/k"}}).replicates
    off = config() | {"mesh": {"keyFile": "/k"}, "conntrack": {"enabled": False}}
    assert not parse_settings(off).replicates


def test_every_field() -> None:
    assert parse_settings(config() | {"conntrack": GOOD}).conntrack == ConntrackSettings(
        enabled=True, mark=0x110000, mask=0xFF0000, guard_grace=2.0, max_entries_per_peer=1000,
        batch_interval=0.1, resync_interval=60.0, install_budget=0.01,
    )  # fmt: skip
    assert parse_settings(config() | {"conntrack": {"resyncInterval": 0}}).conntrack.resync_interval == 0


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("enabled", "yes"),
        ("mark", "0x1000000000"),
        ("mark", "marked"),
        ("mark", -1),
        ("mark", True),
        ("mark", 0x01000000),  # outside the mask
        ("mask", 0),
        ("guardGrace", "0s"),
        ("guardGrace", "2m"),
        ("guardGrace", float("nan")),
        ("maxEntriesPerPeer", 0),
        ("maxEntriesPerPeer", 10**9),
        ("maxEntriesPerPeer", 1.5),
        ("batchInterval", "1ms"),
        ("resyncInterval", "5s"),
        ("resyncInterval", float("inf")),
        ("installBudget", "2s"),
        ("guard_grace", "1s"),
    ],
)
def test_bad_values_name_their_field(key: str, value: Any) -> None:
    problems = problems_of(config() | {"conntrack": GOOD | {key: value}})
    assert [p.field for p in problems] == [f"conntrack.{key}"]


def test_not_a_mapping() -> None:
    assert [p.field for p in problems_of(config() | {"conntrack": "on"})] == ["conntrack"]


@BOUNDED
@given(st.one_of(values, mutated(GOOD)))
def test_parse_conntrack_on_arbitrary_data(data: Any) -> None:
    parsed, problems = parse_conntrack(data)
    assert isinstance(parsed, ConntrackSettings)
    assert all(p.field.startswith("conntrack") and p.message for p in problems)
    if not problems:
        assert parsed.mark & ~parsed.mask == 0 and parsed.mask
        assert 0 < parsed.guard_grace <= 60 and parsed.max_entries_per_peer >= 1


@BOUNDED
@given(mutated(config() | {"conntrack": GOOD}))
def test_parse_settings_with_conntrack_on_mutated_configs(data: dict[str, Any]) -> None:
    try:
        parse_settings(data)
    except ConfigError as exc:
        assert exc.problems
