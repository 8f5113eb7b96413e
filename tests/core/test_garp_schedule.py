"""The GARP schedule (pure)."""

from __future__ import annotations

import itertools

import pytest

from egressd.core.garp import GarpSchedule


def test_default_burst_then_refresh() -> None:
    s = GarpSchedule()
    assert list(itertools.islice(s.offsets(), 6)) == pytest.approx([0.05, 0.15, 0.35, 0.75, 30.75, 60.75])
    assert list(itertools.islice(s.delays(), 6)) == pytest.approx([0.05, 0.1, 0.2, 0.4, 30.0, 30.0])
    assert s.form == "request"


def test_refresh_zero_ends_after_the_burst() -> None:
    assert list(GarpSchedule(refresh=0).offsets()) == [0.05, 0.15, 0.35, 0.75]
    assert list(GarpSchedule(burst=(), refresh=0).offsets()) == []


def test_no_burst_refresh_only() -> None:
    assert list(itertools.islice(GarpSchedule(burst=(), refresh=5).delays(), 3)) == [5, 5, 5]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"burst": (0.1, 0.1)}, "increase"),
        ({"burst": (0.0, 0.1)}, "positive"),
        ({"refresh": -1}, "refresh"),
        ({"form": "shout"}, "form"),
    ],
)
def test_invalid_schedules_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GarpSchedule(**kwargs)  # type: ignore[arg-type]
