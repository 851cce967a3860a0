"""The lane worker against fakes of its ports: orders of one lane concurrently and each in sequence,
early events that wait per order without holding up the lane, per-order gap timers, an unexpected
error that backs off one order only, and store outages that never spend a delivery."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from eventflow_consumer.handling import InboxHandler
from eventflow_consumer.lanes import LaneSettings, LaneWorker
from eventflow_consumer.sessions import ConsumerObserver, WorkerSettings
from eventflow_contracts.lanes import session_id_for

from ..conftest import item_added, order_events  # type: ignore[import-not-found]
from .fakes import FakeChannel, FakeStore  # type: ignore[import-not-found]

LANE = session_id_for("a", 1)  # lanes1-0: every order is in it


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.reads = 0  # every round of a lane's loop reads it (its gap deadlines)

    def __call__(self) -> float:
        self.reads += 1
        return self.now


class Abandons(ConsumerObserver):
    def __init__(self) -> None:
        self.count = 0

    def abandoned(self) -> None:
        self.count += 1


def lane_worker(store: FakeStore, clock: Clock | None = None, **changes: Any) -> LaneWorker:
    settings = WorkerSettings(
        retry_initial_seconds=0.001, retry_max_seconds=0.005, gap_wait_seconds=5.0
    )
    lane = LaneSettings(worker=settings, idle_seconds=0.01, order_backoff_seconds=0.05, **changes)
    return LaneWorker(InboxHandler(store), lane, clock=clock or Clock())


async def holding(worker: LaneWorker, channel: FakeChannel, done: Callable[[], bool]) -> None:
    await asyncio.wait_for(worker.hold(channel, stopping=done), 10)


def at(store: FakeStore, order_id: str, sequence: int) -> bool:
    return order_id in store.summaries and store.summary(order_id).last_sequence == sequence


async def test_orders_of_one_lane_are_each_applied_in_sequence() -> None:
    store, channel = FakeStore(), FakeChannel(LANE)
    events = {o: order_events(o) for o in ("a", "b", "c")}
    for n in range(4):  # interleaved: a1 b1 c1 a2 b2 c2 ...
        for body in events.values():
            channel.add(body[n])
    worker = lane_worker(store)
    await holding(worker, channel, lambda: all(at(store, o, 4) for o in events))
    assert store.commits == 12
    assert len(channel.outcomes("complete")) == 12


async def test_an_early_event_waits_without_holding_up_the_lanes_other_orders() -> None:
    store, channel, clock = FakeStore(), FakeChannel(LANE), Clock()
    channel.add(order_events("a")[1])  # a2 before a1: early
    for body in order_events("b"):
        channel.add(body)
    worker = lane_worker(store, clock)
    task = asyncio.create_task(worker.hold(channel, stopping=lambda: at(store, "a", 2)))
    await until(lambda: at(store, "b", 4))
    assert "a" not in store.summaries  # a2 still waits, locked, unsettled
    assert channel.outcomes("complete") == [("complete", n) for n in (2, 3, 4, 5)]
    channel.add(order_events("a")[0])  # the predecessor arrives: both applied, in order
    await asyncio.wait_for(task, 10)
    assert channel.outcomes("complete")[-2:] == [("complete", 6), ("complete", 1)]
    assert store.summary("a").skipped == ()


async def test_each_order_waits_its_own_gap_time() -> None:
    """Order a's wait ends first and is skipped over; order b, early later, still waits."""
    store, channel, clock = FakeStore(), FakeChannel(LANE), Clock()
    for body in (order_events("a")[0], order_events("b")[0], item_added("a", 3)):
        channel.add(body)
    worker = lane_worker(store, clock)
    task = asyncio.create_task(worker.hold(channel, stopping=lambda: at(store, "b", 3)))
    await until(lambda: at(store, "a", 1) and at(store, "b", 1))
    await until(lambda: channel.receives > 3)
    clock.now = 3.0
    channel.add(item_added("b", 3))  # b's wait starts at 3 s, a's at 0 s
    await until(lambda: channel.receives > 10)
    clock.now = 5.5  # a's wait (5 s) is over; b's is not
    await until(lambda: at(store, "a", 3))
    assert store.summary("a").skipped == (2,)
    assert at(store, "b", 1)  # b still waits
    channel.add(item_added("b", 2))
    await asyncio.wait_for(task, 10)
    assert store.summary("b").skipped == ()


async def test_an_unexpected_error_abandons_that_message_and_backs_off_that_order_only() -> None:
    class OneOrderBroken(FakeStore):
        failures = 1

        async def commit(self, summary: Any, *args: Any) -> None:
            if summary.order_id == "a" and self.failures:
                self.failures -= 1
                raise RuntimeError("a bug")
            await super().commit(summary, *args)

    store, channel, observer = OneOrderBroken(), FakeChannel(LANE), Abandons()
    channel.add(order_events("a")[0])
    for body in order_events("b"):
        channel.add(body)
    worker = LaneWorker(
        InboxHandler(store),
        LaneSettings(WorkerSettings(retry_initial_seconds=0.001), idle_seconds=0.01,
                     order_backoff_seconds=0.05),
        observer=observer,
    )  # fmt: skip
    await holding(worker, channel, lambda: at(store, "a", 1) and at(store, "b", 4))
    assert channel.outcomes("abandon") == [("abandon", 1)]
    assert observer.count == 1


async def test_a_store_outage_is_waited_out_without_settling() -> None:
    store, channel = FakeStore(failing=5), FakeChannel(LANE, order_events("a"))
    worker = lane_worker(store)
    await holding(worker, channel, lambda: at(store, "a", 4))
    assert channel.outcomes("abandon") == []
    assert channel.outcomes("dead_letter") == []
    assert worker.health.available


async def test_stopping_during_a_store_outage_lets_the_lane_go_unsettled() -> None:
    store, channel = FakeStore(failing=10_000), FakeChannel(LANE, order_events("a"))
    worker = lane_worker(store)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.hold(channel, stopping=stop.is_set))
    await until(lambda: not worker.health.available)
    stop.set()
    await asyncio.wait_for(task, 10)
    assert channel.journal == []  # nothing settled: closing the receiver costs no delivery


async def test_the_lane_holds_no_more_than_its_cap() -> None:
    """Early events of many orders fill the lane's window: it receives no more until room."""
    store, channel = FakeStore(), FakeChannel(LANE)
    for n in range(30):
        channel.add(item_added(f"o{n}", 2))  # every one early: no created events
    clock = Clock()
    worker = lane_worker(store, clock, max_in_flight=10)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.hold(channel, stopping=stop.is_set))
    await until(lambda: len(channel.active) == 20)
    rounds = clock.reads
    await until(lambda: clock.reads >= rounds + 20)  # the lane's loop went round, at its cap
    assert len(channel.active) == 20  # ten held, none received past the cap
    stop.set()
    await asyncio.wait_for(task, 10)


def test_held_lanes_refuse_the_block_policy() -> None:
    with pytest.raises(ValueError, match="skip policy"):
        LaneWorker(InboxHandler(FakeStore()), LaneSettings(WorkerSettings(policy="block")))


async def until(check: Callable[[], bool], wait: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + wait
    while not check():
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.005)


def test_the_consumer_holds_its_lanes_unless_there_are_none_or_the_block_policy_runs() -> None:
    from eventflow_consumer.bootstrap import Resources  # noqa: PLC0415
    from eventflow_consumer.main import lanes_of, worker_of  # noqa: PLC0415
    from eventflow_consumer.observability import ConsumerMetrics  # noqa: PLC0415
    from eventflow_consumer.settings import Settings  # noqa: PLC0415

    resources = Resources(servicebus=object(), store=FakeStore())  # type: ignore[arg-type]
    metrics = ConsumerMetrics()

    def holder(**changes: Any) -> Any:
        settings = Settings(mode="local", **changes)
        return lanes_of(settings, resources, worker_of(settings, resources, metrics), metrics)

    assert holder()._session_ids == [f"lanes32-{n}" for n in range(32)]
    assert holder(inbox_lanes=0) is None  # one session per order: all through the session pump
    assert holder(poison_policy="block") is None  # the session pump blocks a whole lane
