"""A restarted process keeps its predecessor's addresses only under the fence."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from egressd.core.model import Timing
from egressd.core.rights import keep_address_at_start


def test_an_address_whose_fence_element_is_armed_is_kept_as_long_as_the_element_can_last() -> None:
    verdict = keep_address_at_start(Timing(), fence_armed=True)
    assert verdict
    assert verdict.reason == "fence-armed"
    assert verdict.lifetime == 2  # fenceTtl 1.5 s, rounded up: the address lasts as long as the element


def test_an_address_whose_fence_element_ran_out_is_left_to_expire() -> None:
    verdict = keep_address_at_start(Timing(), fence_armed=False)
    assert not verdict
    assert (verdict.reason, verdict.lifetime) == ("fence-expired", 0)


def test_without_the_nftables_fence_the_address_is_the_fence_and_is_never_kept() -> None:
    # (T1) then counts the address's lifetime: re-arming it would serve past the right
    timing = Timing(fence_ttl=0, kernel_slack=1.2, lease_duration=3.5)
    for armed in (True, False):
        verdict = keep_address_at_start(timing, fence_armed=armed)
        assert not verdict
        assert verdict.reason == "address-is-the-fence"


@given(
    fence_ms=st.integers(min_value=250, max_value=5000),
    lifetime=st.integers(min_value=1, max_value=10),
)
def test_a_kept_address_outlives_any_element_and_is_never_shorter_than_configured(fence_ms: int, lifetime: int) -> None:
    timing = Timing(fence_ttl=fence_ms / 1000, address_lifetime=lifetime, lease_duration=30.0, renew_deadline=0.8)
    verdict = keep_address_at_start(timing, fence_armed=True)
    assert verdict.lifetime >= timing.fence_ttl
    assert verdict.lifetime >= lifetime
    assert verdict.lifetime < max(lifetime, timing.fence_ttl) + 1
