"""Fixtures of the kernel tests: namespaces that are removed whatever happens."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.kernel.netns import Lab


@pytest.fixture
def lab() -> Iterator[Lab]:
    lab = Lab()
    try:
        yield lab
    finally:
        lab.close()
