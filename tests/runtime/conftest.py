"""Every asynchronous test of the runtime tier runs on the virtual-time loop
(tests/virtual_time.py): protocol seconds pass without waiting for them."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import pytest

from tests.virtual_time import VirtualTimeLoop


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], VirtualTimeLoop]]:
    return {"virtual": VirtualTimeLoop}
