"""The change feed processor against fakes of its own ports: one worker per lease, fencing,
self-expiry, transient store errors, positions that move without changes, tokens that cannot be
resumed, adaptive polling, progress health and splits."""

from __future__ import annotations

import asyncio
import functools
import itertools
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from eventflow_publisher.changefeed import (
    ChangeFeedProcessor,
    LeaseContext,
    ProcessorOptions,
    StartPosition,
)
from eventflow_testing import eventually

from ..fakes import FakeChangeFeed, FakeLeaseStore, feed_range  # type: ignore[import-not-found]

FAST = {"poll_delay": 0.01, "max_poll_delay": 0.02, "acquire_interval": 0.05, "renew_interval": 0.1,
        "expiry": 0.6, "lag_interval": 0.05, "retry_delay": 0.01, "max_retry_delay": 0.05,
        "shutdown_grace": 2.0, "max_items": 10}  # fmt: skip
WHOLE = feed_range("", "FF")
LOW, HIGH = feed_range("", "80"), feed_range("80", "FF")


class Recorder:
    def __init__(self, fail: bool = False) -> None:
        self.pages: list[tuple[str, list[str]]] = []
        self.fail = fail

    async def __call__(self, context: LeaseContext, documents: Sequence[dict[str, Any]]) -> None:
        if self.fail:
            raise RuntimeError("the hub refuses")
        self.pages.append((context.lease_id, [d["id"] for d in documents]))

    def ids(self) -> list[str]:
        return [i for _, ids in self.pages for i in ids]


def documents(prefix: str, count: int, ts: int = 1000) -> list[dict[str, Any]]:
    return [{"id": f"{prefix}{n}", "_ts": ts} for n in range(count)]


class Running:
    def __init__(self, processor: ChangeFeedProcessor) -> None:
        self.processor = processor
        self.task = asyncio.create_task(processor.run())

    async def stop(self) -> None:
        await self.processor.stop()
        await self.task

    async def crash(self) -> None:
        """Like kill -9: every task ends at once, nothing is released."""
        for worker in self.processor.workers.values():
            for task in worker.tasks:
                task.cancel()
        self.task.cancel()
        await asyncio.gather(self.task, *(t for w in self.processor.workers.values() for t in w.tasks),
                             return_exceptions=True)  # fmt: skip


def start(
    feed: FakeChangeFeed, store: FakeLeaseStore, handler: Any, name: str = "a", **options: Any
) -> Running:
    return Running(ChangeFeedProcessor(
        feed=feed, leases=store, handler=handler,
        options=ProcessorOptions(instance_name=name, **(FAST | options)),
    ))  # fmt: skip


def positions_never_go_back(store: FakeLeaseStore, lease_id: str) -> None:
    marks = [int(w.continuation or 0) for w in store.checkpoints(lease_id)]
    assert marks == sorted(marks), f"checkpoints of {lease_id} moved backwards: {marks}"


async def test_two_processes_with_one_name_never_both_write_a_lease() -> None:
    feed, store = FakeChangeFeed([LOW, HIGH]), FakeLeaseStore()
    feed.append(LOW, *documents("l", 30))
    feed.append(HIGH, *documents("h", 30))
    first = start(feed, store, Recorder())
    await eventually(lambda: len(first.processor.owned) == 2, "the first owns both")
    second = start(feed, store, Recorder())  # a restart under the same name while the first lives
    await eventually(lambda: len(second.processor.owned) >= 1, "the second adopts leases")
    for round_ in range(40):
        feed.append(LOW, *documents(f"l{round_}-", 3))
        feed.append(HIGH, *documents(f"h{round_}-", 3))
        await asyncio.sleep(0.02)
    await eventually(
        lambda: len(first.processor.owned) + len(second.processor.owned) == 2, "settled"
    )
    for lease_id in store.leases:
        positions_never_go_back(store, lease_id)
        tokens = [
            w.token for w in store.writes if w.lease_id == lease_id and w.kind == "checkpoint"
        ]
        switches = sum(1 for a, b in itertools.pairwise(tokens) if a != b)
        acquisitions = sum(
            1 for w in store.writes if w.lease_id == lease_id and w.kind == "acquire"
        )
        assert switches <= acquisitions, "a token writes again after another acquisition took over"
    for running in (first, second):
        assert len({w.lease.id for w in running.processor.workers.values()}) == len(
            running.processor.workers
        )
    await first.stop()
    await second.stop()


async def test_a_worker_whose_writes_keep_failing_stops_within_the_expiry_and_others_go_on() -> (
    None
):
    feed, store = FakeChangeFeed([LOW, HIGH]), FakeLeaseStore()
    handler = Recorder()
    running = start(feed, store, handler)
    await eventually(lambda: len(running.processor.owned) == 2, "both owned")
    low_id = next(i for i in store.leases if i.endswith("-80"))
    store.failing_leases.add(low_id)
    failing_since = time.monotonic()
    await eventually(
        lambda: low_id not in running.processor.owned, "the failing lease's worker stops", wait=5
    )
    assert time.monotonic() - failing_since < 0.6 + 0.5, "stopped by the expiry"
    feed.append(LOW, *documents("late-low", 2))
    feed.append(HIGH, *documents("late-high", 2))
    await eventually(lambda: "late-high1" in handler.ids(), "the other lease goes on")
    await asyncio.sleep(0.1)
    assert "late-low0" not in handler.ids(), "nothing read from a lease that may be someone else's"
    store.failing_leases.clear()
    await eventually(
        lambda: "late-low1" in handler.ids(), "taken again once the store answers", wait=5
    )
    await running.stop()


async def test_transient_checkpoint_failures_retry_the_checkpoint_not_the_page() -> None:
    feed, store = FakeChangeFeed([WHOLE]), FakeLeaseStore()
    feed.append(WHOLE, *documents("d", 5))
    store.failing["checkpoint"] = 3
    handler = Recorder()
    running = start(feed, store, handler)
    await eventually(lambda: any(w.continuation == "5" for w in store.writes), "checkpointed")
    assert store.failing["checkpoint"] == 0, "the three checkpoint failures were met"
    assert handler.ids() == [f"d{n}" for n in range(5)], "the page was handled once"
    (lease_id,) = running.processor.owned
    store.failing["renew"] = 2
    store.failing["list"] = 1
    await eventually(
        lambda: store.failing["renew"] == store.failing["list"] == 0,
        "the renew and list failures met",
    )
    listings = store.listings
    await eventually(lambda: store.listings >= listings + 2, "balancing on after them")
    renewals = len([w for w in store.writes if w.kind == "renew"])
    await eventually(
        lambda: len([w for w in store.writes if w.kind == "renew"]) > renewals, "renewing on"
    )
    assert running.processor.owned == [lease_id], "transient renew and list failures lose nothing"
    assert [w.kind for w in store.writes].count("acquire") == 1, "the lease was never lost"
    assert handler.ids() == [f"d{n}" for n in range(5)], "nothing handled again"
    await running.stop()


async def test_a_position_that_moves_without_changes_is_checkpointed() -> None:
    feed, store = FakeChangeFeed([WHOLE]), FakeLeaseStore()
    feed.append(WHOLE, *documents("d", 2))
    running = start(feed, store, Recorder())
    await eventually(lambda: any(w.continuation == "2" for w in store.writes), "first checkpoint")
    feed.empty_page_token = "9"  # an empty 200 with an advanced etag
    await eventually(
        lambda: any(w.continuation == "9" for w in store.writes), "the new position is kept"
    )
    await running.stop()


async def test_a_token_that_cannot_be_resumed_is_never_checkpointed() -> None:
    feed, store = FakeChangeFeed([WHOLE], unresumable={3}), FakeLeaseStore()
    feed.append(WHOLE, *documents("d", 3))
    handler = Recorder()
    running = start(feed, store, handler)
    await eventually(lambda: any(w.continuation == "3" for w in store.writes), "checkpointed later")
    assert all(not (w.continuation or "").startswith("x") for w in store.writes)
    assert handler.ids().count("d0") == 2, "the page was read again: at-least-once, never lost"
    await running.stop()


async def test_an_idle_lease_backs_off_and_a_full_page_is_followed_at_once() -> None:
    """Lower bounds on the waits between reads (a sleep never ends early, however busy the
    machine): idle, they double from `poll_delay` to `max_poll_delay`. After a full page the
    next read waits not even `poll_delay` (an upper bound of half of it, 0.3 s)."""
    feed, store = FakeChangeFeed([WHOLE]), FakeLeaseStore()
    handler = Recorder()
    running = start(feed, store, handler, poll_delay=0.01, max_poll_delay=0.8, max_items=5)
    await eventually(lambda: feed.reads >= 10, "ten reads of an empty range")
    # the first read moves the position (none yet to "0") and is followed at once; the next
    # ones are idle
    idle = [b - a for a, b in itertools.pairwise(feed.read_times[1:10])]
    expected = [min(0.01 * 2**n, 0.8) for n in range(8)]  # 0.01, 0.02, ... 0.64, 0.8
    tolerance = 0.005  # the clock's resolution
    assert all(gap >= want - tolerance for gap, want in zip(idle, expected, strict=True)), (
        f"waits between idle reads {idle}, expected at least {expected}"
    )
    await running.stop()
    feed, handler = FakeChangeFeed([WHOLE]), Recorder()
    feed.append(WHOLE, *documents("d", 12))  # pages of 5, 5, 2
    running = start(
        feed, FakeLeaseStore(), handler, poll_delay=0.6, max_poll_delay=0.6, max_items=5
    )
    await eventually(lambda: len(handler.ids()) == 12, "the three pages handled")
    after_full = [b - a for a, b in itertools.pairwise(feed.read_times[:3])]
    assert all(gap < 0.6 / 2 for gap in after_full), (
        f"a full page waited before the next read: {after_full}"
    )
    await running.stop()


async def test_a_lease_that_makes_no_progress_is_reported_and_recovers() -> None:
    feed, store = FakeChangeFeed([WHOLE]), FakeLeaseStore()
    feed.append(WHOLE, *documents("d", 3))
    handler = Recorder(fail=True)
    running = start(feed, store, handler, stalled_after=0.3)
    await eventually(lambda: running.processor.problems() != [], "reported as stalled")
    assert "nothing was checkpointed" in running.processor.problems()[0]
    handler.fail = False
    await eventually(lambda: running.processor.problems() == [], "recovered", wait=5)
    await running.stop()


async def test_old_changes_past_the_limit_are_reported() -> None:
    feed, store = FakeChangeFeed([WHOLE]), FakeLeaseStore()
    feed.append(WHOLE, *documents("d", 3, ts=int(time.time()) - 3600))
    running = start(feed, store, Recorder(fail=True), oldest_change_limit=600)
    await eventually(lambda: running.processor.problems() != [], "reported")
    assert "oldest unpublished change" in running.processor.problems()[0]
    await running.stop()


async def test_a_start_time_skips_older_changes() -> None:
    feed, store = FakeChangeFeed([WHOLE]), FakeLeaseStore()
    feed.append(WHOLE, *documents("old", 3, ts=1000), *documents("new", 2, ts=2000))
    handler = Recorder()
    running = start(feed, store, handler, start=datetime.fromtimestamp(1500, UTC))
    await eventually(lambda: any(w.continuation == "5" for w in store.writes), "read to the end")
    assert handler.ids() == ["new0", "new1"]
    await running.stop()


async def test_a_split_range_is_replaced_by_child_leases_starting_at_the_parent_checkpoint() -> (
    None
):
    feed, store = FakeChangeFeed([WHOLE]), FakeLeaseStore()
    feed.append(WHOLE, *documents("d", 4, ts=1000))
    handler = Recorder()
    running = start(feed, store, handler)
    await eventually(
        lambda: any(w.continuation == "4" for w in store.writes), "parent checkpointed"
    )
    feed.ranges = [LOW, HIGH]  # the partition split: the children hold the parent's history
    feed.append(
        LOW,
        {"id": "d0", "_ts": 999},
        {"id": "c-low", "_ts": 1000},
        {"id": "after-low", "_ts": 1001},
    )
    feed.append(HIGH, {"id": "after-high", "_ts": 1002})
    await eventually(
        lambda: len(running.processor.owned) == 2 and "p..-FF" not in store.leases, "children owned"
    )
    assert len(store.leases) == 2
    assert all(
        lease.start == StartPosition("time", datetime.fromtimestamp(1000, UTC))
        for lease in store.leases.values()
    )
    await eventually(lambda: {"after-low", "after-high"} <= set(handler.ids()), "children read")
    assert "c-low" in handler.ids(), "changes of the checkpoint's second are replayed, not lost"
    assert handler.ids().count("d0") == 1, "what came before the checkpoint is not"
    await running.stop()


async def test_a_stop_releases_every_lease_and_a_crash_leaves_them_to_expire() -> None:
    feed, store = FakeChangeFeed([LOW, HIGH]), FakeLeaseStore()
    running = start(feed, store, Recorder())
    await eventually(lambda: len(running.processor.owned) == 2, "owned")
    await running.stop()
    assert all(lease.owner is None for lease in store.leases.values())
    crashed = start(feed, store, Recorder(), name="b")
    await eventually(lambda: len(crashed.processor.owned) == 2, "owned by b")
    await crashed.crash()
    heir = start(feed, store, Recorder(), name="c")
    began = time.monotonic()
    await eventually(lambda: len(heir.processor.owned) == 2, "taken over after the expiry", wait=5)
    assert time.monotonic() - began >= 0.6, "not before the expiry observed by the heir"
    await heir.stop()


@pytest.mark.parametrize("version", [1, 3])
async def test_leases_of_the_previous_version_are_taken_and_of_a_newer_one_left_alone(
    version: int,
) -> None:
    feed, store = FakeChangeFeed([WHOLE]), FakeLeaseStore()
    lease = store.add(WHOLE, version=version, continuation="0")
    running = start(feed, store, Recorder())
    if version <= 2:
        await eventually(lambda: running.processor.owned == [lease.id], "the lease taken")
    else:
        await eventually(lambda: store.listings >= 3, "balancing rounds after the first")
        assert running.processor.owned == [], "a newer version's lease is left alone"
        assert store.leases[lease.id] == lease, "and not written"
    await running.stop()


class StallableStore:
    """One instance's view of the shared lease store, whose listing can stall (as an event loop
    stall or a slow store would hold up balancing) while its other calls go through."""

    def __init__(self, shared: FakeLeaseStore) -> None:
        self.shared = shared
        self.paused_until = 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.shared, name)

    async def list_leases(self) -> list[Any]:
        await asyncio.sleep(max(0.0, self.paused_until - time.monotonic()))
        return await self.shared.list_leases()


def store_of(running: Running) -> StallableStore:
    leases = running.processor.leases
    assert isinstance(leases, StallableStore)
    return leases


def scaled_clock(rate: float) -> float:
    return time.monotonic() * rate


ACTIONS = st.lists(
    st.tuples(
        st.sampled_from(["start", "start", "stall", "crash", "stop", "write", "wait"]),
        st.sampled_from(["a", "b"]),  # names repeat: restarts and twins under one name
        st.sampled_from([0.5, 1.0, 2.0]),  # how fast this instance's monotonic clock runs
    ),
    min_size=3,
    max_size=10,
)


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(actions=ACTIONS)
# A restart under the same name while the first process's balancing is stalled.
@example(
    actions=[("start", "a", 1.0), ("stall", "a", 1.0), ("start", "a", 1.0), ("write", "a", 1.0)]
)
# A second instance whose clock runs fast steals while the first one's balancing is stalled.
@example(actions=[("start", "a", 1.0), ("stall", "b", 1.0), ("start", "b", 2.0), ("write", "b", 1.0),
                  ("wait", "a", 1.0)])  # fmt: skip
def test_no_interleaving_lets_two_acquisitions_write_one_lease_or_a_checkpoint_go_back(
    actions: list[tuple[str, str, float]],
) -> None:
    """From any sequence of starts (same names included), crashes, graceful stops, writes and
    pauses, with instances whose clocks run at different rates: once an acquisition is recorded, no
    earlier acquisition of that lease writes again, and checkpoints never move backwards."""

    async def scenario() -> None:
        feed, store = FakeChangeFeed([LOW, HIGH]), FakeLeaseStore()
        running: list[Running] = []
        for kind, name, rate in actions:
            if kind == "start":
                clock = functools.partial(scaled_clock, rate)
                view = StallableStore(store)
                running.append(Running(ChangeFeedProcessor(
                    feed=feed, leases=view, handler=Recorder(),
                    options=ProcessorOptions(instance_name=name, **FAST), monotonic=clock,
                )))  # fmt: skip
            elif kind == "stall" and running:
                # Its balancing stops learning anything while its workers go on writing: only the
                # fencing of the store keeps them from overwriting another acquisition.
                store_of(running[0]).paused_until = time.monotonic() + 0.6
            elif kind in ("crash", "stop") and running:
                victim = running.pop(0)
                await (victim.crash() if kind == "crash" else victim.stop())
            elif kind == "write":
                feed.append(LOW, *documents(f"l{len(store.writes)}-", 3))
                feed.append(HIGH, *documents(f"h{len(store.writes)}-", 3))
            await asyncio.sleep(0.15)
        await asyncio.sleep(0.5)
        for survivor in running:
            await survivor.stop()
        for lease_id in {w.lease_id for w in store.writes}:
            positions_never_go_back(store, lease_id)
            retired: set[str | None] = set()
            current: str | None = None
            for write in (w for w in store.writes if w.lease_id == lease_id):
                if write.kind == "acquire":
                    retired.add(current)
                    current = write.token
                elif write.kind in ("renew", "checkpoint"):
                    assert write.token not in retired, f"a retired acquisition wrote {lease_id}"

    asyncio.run(scenario())


async def test_a_token_reading_several_ranges_in_turn_never_advances_the_checkpoint_time() -> None:
    """After a split, one page comes from one child: its newest `_ts` says nothing of the other
    child's waiting changes, so child leases must not start there."""
    feed, store = FakeChangeFeed([WHOLE]), FakeLeaseStore()
    feed.append(WHOLE, *documents("before", 2, ts=1000))
    handler = Recorder()
    running = start(feed, store, handler)
    await eventually(
        lambda: any(w.continuation == "2" for w in store.writes), "single-range checkpoint"
    )
    feed.multi_range = True
    feed.append(WHOLE, *documents("child-a", 2, ts=2000))
    await eventually(
        lambda: any(w.continuation == "m4" for w in store.writes), "multi-range checkpoint"
    )
    assert store.leases["p..-FF"].checkpoint_ts == 1000, "the single-range bound is kept"
    await running.stop()
