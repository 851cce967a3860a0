"""The order in which pytest-xdist hands out test files (make test: `--dist loadfile`).

A worker runs the files it is given one after the other, so a long file handed out last is run alone
at the end while the other workers idle. xdist's own order (`--loadscope-reorder`, files with the
most tests first) hands out a long scenario of a single test, the short chaos run, last of all. Make
test turns that off (`--no-loadscope-reorder`) and this orders the files instead: the longest first,
then the others as xdist would (most tests first). The order changes only when a test runs, never
whether it runs: a file missing from START_FIRST runs like any other."""

from __future__ import annotations

from collections import Counter

import pytest

# The files that took longest in make test (seconds per file on 2 cores, four workers), longest first.
START_FIRST = (
    "tests/e2e/test_chaos_short.py",  # 107-168
    "services/consumer/tests/integration/test_lane_orders.py",  # 113
    "services/consumer/tests/integration/test_sessions.py",  # 109
    "libs/emulators/tests/conformance/test_servicebus.py",  # 96
    "services/subscriber/tests/integration/test_processes_on_azurite.py",  # 95
    "services/subscriber/tests/integration/test_subscription.py",  # 87
    "tests/e2e/test_e2e.py",  # 80
    "tests/entrypoints/test_entrypoints.py",  # 64
)


@pytest.hookimpl(trylast=True)  # after the deselection by markers: what runs is what is counted
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def file_of(item: pytest.Item) -> str:
        return item.nodeid.split("::", 1)[0]  # relative to the root directory

    tests_per_file = Counter(file_of(item) for item in items)

    def rank(item: pytest.Item) -> tuple[int, int]:
        path = file_of(item)
        first = START_FIRST.index(path) if path in START_FIRST else len(START_FIRST)
        return first, -tests_per_file[path]

    items.sort(key=rank)  # stable: a file's tests keep their order
