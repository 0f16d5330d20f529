"""Suite-wide settings.

Slow tests (`-m slow`: the 600 s soaks and contention runs, outside CI) get an hour
before pytest-timeout fails them; every other test keeps pyproject's 10 minutes,
which a 600 s run plus its set-up would exceed.
"""

from __future__ import annotations

import pytest

SLOW_TIMEOUT = 3600


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("slow") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(SLOW_TIMEOUT))
