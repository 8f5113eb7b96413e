"""The settings model: constructors reject timings the runtime cannot honour,
and the inequalities of the safety argument are checked apart."""

from __future__ import annotations

import pytest

from egressd.core.errors import ConfigError
from egressd.core.model import TIMING_KEYS, Timing


def test_default_timing_satisfies_its_own_check() -> None:
    assert Timing().check() == []


def test_the_constructor_rejects_out_of_bounds_timings() -> None:
    with pytest.raises(ConfigError) as info:
        Timing(renew_deadline=-1, fence_ttl=0.0001, address_lifetime=2**32)
    assert [p.field for p in info.value.problems] == [
        "timing.renewDeadline",
        "timing.fenceTtl",
        "timing.addressLifetime",
    ]
    with pytest.raises(ConfigError, match=r"timing\.retryPeriod: must be a number of seconds"):
        Timing(retry_period="fast")  # type: ignore[arg-type]


def test_the_inequalities_are_checked_apart_from_the_constructor() -> None:
    # a fast timing for fake-clock tests is within every bound but fails (T1)
    fast = Timing(lease_duration=0.6, renew_deadline=0.25, retry_period=0.05, api_timeout=0.1)
    assert fast.bounds() == []
    assert [p.message[:4] for p in fast.check()] == ["(T1)"]


def test_every_timing_field_has_its_config_key() -> None:
    assert TIMING_KEYS["lease_duration"] == "leaseDuration"
    assert TIMING_KEYS["fence_ttl"] == "fenceTtl"
    assert TIMING_KEYS["non_preferred_delay"] == "nonPreferredDelay"
    assert len(TIMING_KEYS) == 11
