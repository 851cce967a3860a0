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

# The files that take longest in make test (the seconds their tests took in one run, four workers on
# two cores), longest first. Measured again when the suite changes much: an outdated list costs
# minutes at worst, never a test.
START_FIRST = (
    "libs/emulators/tests/conformance/test_servicebus.py",  # 206
    "services/consumer/tests/integration/test_sessions.py",  # 161
    "services/consumer/tests/integration/test_lane_orders.py",  # 107-165
    "services/subscriber/tests/integration/test_subscription.py",  # 116
    "libs/emulators/tests/conformance/test_eventhubs.py",  # 99
    "tests/entrypoints/test_entrypoints.py",  # 91
    "services/consumer/tests/integration/test_lane_generations.py",  # 80
    "tests/e2e/test_chaos_short.py",  # 78
    "tests/e2e/test_e2e.py",  # 76
    "services/publisher/tests/integration/test_processor.py",  # 49
    "services/subscriber/tests/integration/test_processes_on_azurite.py",  # 48
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
