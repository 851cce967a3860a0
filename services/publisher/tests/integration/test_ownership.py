"""Ownership through the real azure-cosmos SDK on the Cosmos DB emulator: the owner is a process
run, not a name; a steal is a hand-over at a page boundary. Handler calls are recorded per lease
and run, and no two runs may handle one lease at the same time."""

from __future__ import annotations

import asyncio
import itertools
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from eventflow_publisher.changefeed import ChangeFeedProcessor, LeaseContext, ProcessorOptions
from eventflow_testing import eventually

from ..conftest import Store  # type: ignore[import-not-found]

FAST = {"poll_delay": 0.02, "max_poll_delay": 0.02, "acquire_interval": 0.1, "renew_interval": 0.2,
        "expiry": 2.0, "lag_interval": 0.5, "retry_delay": 0.01, "max_retry_delay": 0.05,
        "shutdown_grace": 5.0, "request_check_interval": 0.1, "handover_poll": 0.05,
        "max_items": 5}  # fmt: skip


@dataclass
class Calls:
    """Every handler call of every run: (run, lease, start, end, ids)."""

    calls: list[tuple[str, str, float, float, list[str]]] = field(default_factory=list)
    busy: float = 0.05

    def handler(self, run: str) -> Any:
        async def handle(context: LeaseContext, documents: Sequence[dict[str, Any]]) -> None:
            began = time.monotonic()
            await asyncio.sleep(self.busy)  # a send in flight
            self.calls.append(
                (run, context.lease_id, began, time.monotonic(), [d["id"] for d in documents])
            )

        return handle

    def overlaps(self) -> list[tuple[Any, Any]]:
        """Pairs of calls of two runs on one lease that ran at the same time."""
        found = []
        for a, b in itertools.combinations(self.calls, 2):
            if a[0] != b[0] and a[1] == b[1] and a[2] < b[3] and b[2] < a[3]:
                found.append((a[:4], b[:4]))
        return found

    def ids(self) -> set[str]:
        return {i for call in self.calls for i in call[4]}


def run(store: Store, leases: Any, calls: Calls, label: str, name: str, **options: Any) -> Any:
    processor = ChangeFeedProcessor(
        feed=store.feed(), leases=leases, handler=calls.handler(label),
        options=ProcessorOptions(instance_name=name, **(FAST | options)),
    )  # fmt: skip
    return processor, asyncio.create_task(processor.run())


async def stop(*runs: Any) -> None:
    for processor, task in runs:
        await processor.stop()
        await task


async def flow(store: Store, written: list[str], until: asyncio.Event) -> None:
    """Changes keep coming: one event per order every 50 ms."""
    sequence = 1
    while not until.is_set():
        written += await store.write_events(orders=8, per_order=1, start=sequence)
        sequence += 1
        await asyncio.sleep(0.05)


async def test_two_live_processes_with_one_name_share_the_leases_and_never_handle_one_at_once(
    store: Store,
) -> None:
    """A copied instance name: the second process used to take back every lease of its name at
    once, mid-page of the first (two handlers on one lease), and then the first kept 0 for good."""
    calls, leases = Calls(), await store.lease_store()
    first = run(store, leases, calls, "first", "replica")
    await eventually(lambda: len(first[0].owned) == 4, what="the first owns every lease")
    written: list[str] = []
    done = asyncio.Event()
    writer = asyncio.create_task(flow(store, written, done))
    await asyncio.sleep(0.5)
    second = run(store, await store.lease_store(), calls, "second", "replica")
    try:
        await eventually(lambda: sorted([len(first[0].owned), len(second[0].owned)]) == [2, 2],
                         what="the leases shared 2/2", wait=20)  # fmt: skip
        await asyncio.sleep(1.0)
        done.set()
        await writer
        await eventually(lambda: set(written) <= calls.ids(), what="every change handled")
        assert sorted([len(first[0].owned), len(second[0].owned)]) == [2, 2]
    finally:
        done.set()
        await stop(first, second)
    assert calls.overlaps() == [], "two live runs handled one lease at the same time"


async def test_a_restart_under_the_same_name_takes_over_within_the_restart_takeover_time(
    store: Store,
) -> None:
    """kill -9 and a restart with the same name (a Container Apps replica): the new run proves the
    old one gone when its leases stay unchanged for 1.5 renew intervals, well before the expiry."""
    calls, leases = Calls(), await store.lease_store()
    timings = {"renew_interval": 1.0, "expiry": 30.0, "acquire_interval": 5.0}
    old = run(store, leases, calls, "old", "replica", **timings)
    await eventually(lambda: len(old[0].owned) == 4, what="the old run owns every lease")
    tasks = [t for w in old[0].workers.values() for t in w.tasks] + [old[1]]
    for task in tasks:  # kill -9: nothing released
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    crashed = time.monotonic()
    new = run(store, await store.lease_store(), calls, "new", "replica", **timings)
    try:
        await eventually(
            lambda: len(new[0].owned) == 4, what="the new run owns every lease", wait=25
        )
        took = time.monotonic() - crashed
        assert took < 1.5 * 1.0 + 2.0, f"takeover after {took:.1f} s"
        assert took >= 1.5 * 1.0 * 0.9, (
            f"taken after {took:.1f} s: no proof that the old run is gone"
        )
    finally:
        await stop(new)


async def test_a_steal_hands_the_lease_over_at_a_page_boundary(store: Store) -> None:
    """A joining instance steals its share while pages are in flight: the owner finishes its page,
    checkpoints and releases, then the thief takes the lease. The owner used to keep handling its
    page after the thief had started on the same lease."""
    calls, leases = Calls(busy=0.15), await store.lease_store()
    first = run(store, leases, calls, "a", "a")
    await eventually(lambda: len(first[0].owned) == 4, what="a owns every lease")
    written: list[str] = []
    done = asyncio.Event()
    writer = asyncio.create_task(flow(store, written, done))
    await asyncio.sleep(0.5)
    joined = time.monotonic()
    second = run(store, await store.lease_store(), calls, "b", "b")
    try:
        await eventually(lambda: sorted([len(first[0].owned), len(second[0].owned)]) == [2, 2],
                         what="the leases shared 2/2", wait=20)  # fmt: skip
        balanced = time.monotonic() - joined
        await asyncio.sleep(0.5)
        done.set()
        await writer
        await eventually(lambda: set(written) <= calls.ids(), what="every change handled")
    finally:
        done.set()
        await stop(first, second)
    assert calls.overlaps() == [], "the old owner and the thief handled one lease at once"
    moved = {lease for run_, lease, *_ in calls.calls if run_ == "b"}
    gaps = []
    for lease in moved:
        last_a = max(c[3] for c in calls.calls if c[0] == "a" and c[1] == lease)
        first_b = min(c[2] for c in calls.calls if c[0] == "b" and c[1] == lease)
        gaps.append(first_b - last_a)
    sys.stdout.write(f"balanced 2/2 {balanced:.2f} s after the join; hand-over gaps (s): "
                     f"{sorted(round(g, 3) for g in gaps)}; handler calls "
                     f"{Counter(c[0] for c in calls.calls)}\n")  # fmt: skip
    assert all(gap > 0 for gap in gaps)
