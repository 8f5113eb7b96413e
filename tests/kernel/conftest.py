"""Fixtures of the kernel tests: namespaces that are removed whatever happens."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.kernel.netns import Lab


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="kernel tests need root (network namespaces)")
    for item in items:
        if "kernel" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def lab() -> Iterator[Lab]:
    lab = Lab()
    try:
        yield lab
    finally:
        lab.close()
