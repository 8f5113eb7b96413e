"""``egressd drill``'s connection options are checked before any lab is touched: a bad value is
refused with exit code 2 and a message naming the option."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from egressd.cli import drill as drill_cli
from egressd.drill.keepers import Connections


@pytest.fixture(autouse=True)
def no_lab(monkeypatch: pytest.MonkeyPatch) -> None:
    """A drill that got past the checks must not find or bring up a lab: it fails the test instead."""

    def refuse(*_: object) -> None:
        raise AssertionError("the drill went on to the lab")

    monkeypatch.setattr(drill_cli, "_lab", refuse)


def _args(tmp_path: Path, *argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="egressd")
    drill_cli.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["drill", "--scenario", "kill", "--state-dir", str(tmp_path / "none"), *argv])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--connections", "-4"], "--connections: must be 0 to 1000, got -4"),
        (["--connections", "6"], "--connections: must be a multiple of 4"),
        (["--connections", "2"], "got 2"),
        (["--connections", "1004"], "--connections: must be 0 to 1000"),
        (["--connections", "4", "--udp-flows", "-1"], "--udp-flows: must be 0 to 100 per pod, got -1"),
        (["--connections", "4", "--sync-interval", "0"], "--sync-interval: must be above 0"),
        (["--connections", "4", "--ramp", "-1"], "--ramp: must be 0 to 30 s"),
    ],
)
def test_bad_connection_options_are_refused_naming_the_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert drill_cli.run(_args(tmp_path, *argv)) == 2
    assert message in capsys.readouterr().err


def test_udp_flows_default_to_two_per_pod_with_connections_and_none_without(tmp_path: Path) -> None:
    assert drill_cli.connections_from_args(_args(tmp_path, "--connections", "20")) == Connections(
        total=20, udp_per_pod=2, sync_interval=0.1, ramp=1.0
    )
    assert not drill_cli.connections_from_args(_args(tmp_path)).enabled
    assert drill_cli.connections_from_args(_args(tmp_path, "--udp-flows", "3")).enabled


@given(st.integers(min_value=-10_000, max_value=10_000))
def test_connections_are_accepted_exactly_when_they_split_evenly(total: int) -> None:
    problems = Connections(total=total).problems(pods=2)
    assert (not problems) == (0 <= total <= 1000 and total % 4 == 0)
    assert all(p.startswith("--connections: ") for p in problems)
