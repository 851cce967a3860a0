"""The generation barrier against fakes of its ports, alone and inside the lane worker: an early
event whose predecessor still waits in another session (its order's lane under an earlier lane
count, or its own per-order session) does not start its gap wait, and is applied once the
predecessor is applied from there."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from eventflow_consumer.barrier import GenerationBarrier
from eventflow_consumer.handling import Delivery, InboxHandler
from eventflow_consumer.lanes import LaneSettings, LaneWorker
from eventflow_consumer.sessions import WorkerSettings
from eventflow_contracts.lanes import session_id_for

from ..conftest import item_added, order_events  # type: ignore[import-not-found]
from .fakes import FakeChannel, FakeStore  # type: ignore[import-not-found]
from .test_lanes import Clock, at, until  # type: ignore[import-not-found]

NEW = session_id_for("a", 1)  # lanes1-0: the lane every order is in under one lane
OLD = session_id_for("a", 2)  # order a's lane under two lanes


class Counts:
    """The lane counts record, oldest first."""

    def __init__(self, *counts: int, failing: bool = False) -> None:
        self.values = list(counts)
        self.notes: list[tuple[int, bool]] = []
        self.reads = 0
        self.failing = failing

    async def counts(self) -> list[int]:
        self.reads += 1
        return list(self.values)

    async def note(self, count: int, *, current: bool) -> None:
        if self.failing:
            raise ConnectionError("store down")
        self.notes.append((count, current))
        if current:
            self.values = [c for c in self.values if c != count] + [count]
        elif count not in self.values:
            self.values.insert(0, count)


class Probe:
    """Sessions' contents by id: order → lowest event sequence; None: held by another receiver."""

    def __init__(self, sessions: dict[str, dict[str, int] | None] | None = None) -> None:
        self.sessions = sessions or {}
        self.looked: list[str] = []
        self.failing = False

    async def orders_in(self, session_id: str) -> dict[str, int] | None:
        self.looked.append(session_id)
        if self.failing:
            raise ConnectionError("broker down")
        return self.sessions.get(session_id, {})


async def test_an_earlier_event_in_the_orders_lane_under_another_count_holds_the_barrier() -> None:
    probe = Probe({OLD: {"a": 2, "b": 1}})
    barrier = GenerationBarrier(Counts(2, 1), probe, clock=Clock())
    assert await barrier.earlier_elsewhere("a", NEW, 3) == (OLD, True)
    assert await barrier.earlier_elsewhere("a", NEW, 2) is None  # only later events of a there
    assert await barrier.earlier_elsewhere("c", NEW, 5) is None  # nothing of c anywhere
    assert sorted(set(probe.looked)) == sorted({OLD, "a", "c", session_id_for("c", 2)})


async def test_a_session_held_by_another_receiver_holds_the_barrier() -> None:
    barrier = GenerationBarrier(Counts(2, 1), Probe({OLD: None}), clock=Clock())
    assert await barrier.earlier_elsewhere("a", NEW, 3) == (OLD, False)


async def test_the_orders_own_session_is_looked_at_even_with_no_other_count() -> None:
    """A release before lanes sent each order in its own session."""
    barrier = GenerationBarrier(Counts(1), Probe({"a": {"a": 1}}), clock=Clock())
    assert await barrier.earlier_elsewhere("a", NEW, 2) == ("a", True)


async def test_a_session_is_looked_at_once_per_period_whoever_asks() -> None:
    clock, probe = Clock(), Probe({OLD: {"a": 1}})
    barrier = GenerationBarrier(Counts(2, 1), probe, poll_seconds=1.0, clock=clock)
    await asyncio.gather(*(barrier.earlier_elsewhere("a", NEW, 3) for _ in range(5)))
    assert probe.looked.count(OLD) == 1
    clock.now = 1.5
    await barrier.earlier_elsewhere("a", NEW, 3)
    assert probe.looked.count(OLD) == 2


async def test_a_failed_look_raises_and_is_not_kept() -> None:
    probe = Probe({OLD: {"a": 1}})
    barrier = GenerationBarrier(Counts(2, 1), probe, clock=Clock())
    probe.failing = True
    with pytest.raises(ConnectionError):
        await barrier.earlier_elsewhere("a", NEW, 3)
    probe.failing = False
    assert await barrier.earlier_elsewhere("a", NEW, 3) == (OLD, True)


async def test_lane_counts_are_noted_once_per_process_and_a_failed_note_is_tried_again() -> None:
    counts = Counts(2, failing=True)
    barrier = GenerationBarrier(counts, Probe(), current=8, clock=Clock())
    await barrier.seen("lanes4-1")  # never raises
    counts.failing = False
    for session_id in ("lanes4-1", "lanes4-2", "lanes8-0", "order-1", "lanes4-3", "lanes8-1"):
        await barrier.seen(session_id)
    # its own count becomes the newest; a count only seen is added as the oldest
    assert counts.notes == [(4, False), (8, True)]
    assert counts.values == [4, 2, 8]


async def test_an_event_in_an_older_lane_never_looks_at_the_lanes_of_newer_counts() -> None:
    """Their holders hold them for good: looking there would never end the wait."""
    probe = Probe({session_id_for("a", 8): None, session_id_for("a", 2): {"a": 1}})
    barrier = GenerationBarrier(Counts(2, 4, 8), probe, clock=Clock())
    assert await barrier.earlier_elsewhere("a", session_id_for("a", 4), 3) == (
        session_id_for("a", 2),
        True,
    )
    assert session_id_for("a", 8) not in probe.looked
    assert await barrier.earlier_elsewhere("b", session_id_for("b", 2), 3) is None
    assert probe.looked[-1:] == ["b"]  # only its per-order session


async def test_a_look_under_way_is_shared_and_a_cancelled_one_tells_the_others_nothing() -> None:
    release = asyncio.Event()

    class Slow(Probe):
        async def orders_in(self, session_id: str) -> dict[str, int] | None:
            self.looked.append(session_id)
            await release.wait()
            return {"a": 1}

    probe, clock = Slow(), Clock()
    barrier = GenerationBarrier(Counts(2, 1), probe, poll_seconds=0.0, clock=clock)
    first = asyncio.create_task(barrier.earlier_elsewhere("a", NEW, 3))
    await until(lambda: probe.looked == [OLD])  # the first look is under way
    reads = clock.reads
    second = asyncio.create_task(barrier.earlier_elsewhere("a", NEW, 3))
    # its one clock read is in choosing the sessions; from there it runs on to the shared look
    await until(lambda: clock.reads > reads)
    assert probe.looked == [OLD]  # one look for both
    first.cancel()
    release.set()
    # OLD could not be told (it may hold one); the next session is looked at and holds a1
    assert await second == ("a", True)
    assert probe.looked == [OLD, "a"]


# -- inside the lane worker ----------------------------------------------------------------------


def worker_with(
    store: FakeStore, clock: Clock, barrier: GenerationBarrier | None, **changes: Any
) -> LaneWorker:
    settings = WorkerSettings(retry_initial_seconds=0.001, retry_max_seconds=0.005,
                              gap_wait_seconds=5.0)  # fmt: skip
    lane = LaneSettings(worker=settings, idle_seconds=0.01, **changes)
    return LaneWorker(InboxHandler(store), store, lane, barrier=barrier, clock=clock)


async def lane_rounds(clock: Clock, rounds: int = 10) -> None:
    """Until the lane's loop has gone round a few times at the clock's time (each round reads it
    and expires what is due), so that an assertion that nothing happened means something."""
    reads = clock.reads
    await until(lambda: clock.reads >= reads + rounds)


async def a3_early() -> tuple[FakeStore, FakeChannel, Clock, list[bytes]]:
    """Order a's first event applied from its old lane (OLD), its third in the new one (NEW)."""
    store, channel, clock = FakeStore(), FakeChannel(NEW), Clock()
    a = order_events("a")
    await applied_from(store, OLD, a[0], 100)
    channel.add(a[2])
    return store, channel, clock, a


async def applied_from(store: FakeStore, session_id: str, body: bytes, number: int) -> None:
    """What the holder of the other session does: the event applied from there."""
    delivery = Delivery(body, f"m{number}", session_id, number, 1, {})
    decision = await InboxHandler(store).handle(delivery)
    assert decision.effect


async def test_an_early_event_waits_behind_the_barrier_past_its_gap_wait_and_then_is_applied() -> (
    None
):
    store, channel, clock, a = await a3_early()  # a2 still in the old lane's backlog
    probe = Probe({OLD: {"a": 2}})
    barrier = GenerationBarrier(Counts(2, 1), probe, poll_seconds=1.0, clock=clock)
    worker = worker_with(store, clock, barrier)
    task = asyncio.create_task(worker.hold(channel, stopping=lambda: at(store, "a", 3)))
    await until(lambda: channel.receives > 2)  # a3 received: it waits
    for now in (1.1, 2.2, 6.0, 30.0, 60.0):  # far past the 5 s gap wait
        clock.now = now
        looks = probe.looked.count(OLD)
        await until(lambda: probe.looked.count(OLD) > looks)  # noqa: B023
    assert at(store, "a", 1)  # a3 waits: neither skipped nor applied
    assert not channel.outcomes("complete")
    await applied_from(store, OLD, a[1], 101)  # the old lane's holder reaches a2
    probe.sessions[OLD] = {}
    clock.now = 61.5
    await asyncio.wait_for(task, 10)
    assert store.summary("a").skipped == ()
    assert channel.outcomes("complete") == [("complete", 1)]


async def test_once_no_other_session_holds_an_earlier_event_the_gap_wait_begins() -> None:
    store, channel, clock, _ = await a3_early()  # a2 is lost upstream: nowhere in the inbox
    probe = Probe({OLD: {"b": 1}})
    worker = worker_with(store, clock, GenerationBarrier(Counts(2, 1), probe, clock=clock))
    task = asyncio.create_task(worker.hold(channel, stopping=lambda: at(store, "a", 3)))
    await until(lambda: channel.receives > 2)
    clock.now = 1.1
    await until(lambda: OLD in probe.looked)
    clock.now = 5.5  # 4.4 s into the gap wait that began at the look: still waiting
    await lane_rounds(clock)
    assert at(store, "a", 1)
    clock.now = 6.2  # the gap wait is over: the skip policy applies
    await asyncio.wait_for(task, 10)
    assert store.summary("a").skipped == (2,)


async def test_without_a_barrier_the_gap_wait_skips_what_waits_in_another_session() -> None:
    """What the barrier prevents: a3 applied over a2, which is dead-lettered when it arrives."""
    store, channel, clock, a = await a3_early()
    worker = worker_with(store, clock, None)
    task = asyncio.create_task(worker.hold(channel, stopping=lambda: at(store, "a", 3)))
    await until(lambda: channel.receives > 2)
    clock.now = 5.5
    await asyncio.wait_for(task, 10)
    late: Any = await InboxHandler(store).handle(Delivery(a[1], "m101", OLD, 101, 1, {}))
    assert late.reason == "skipped-earlier"


async def test_a_held_session_keeps_an_order_waiting_at_most_its_longest() -> None:
    store, channel, clock, _ = await a3_early()
    probe = Probe({OLD: None})  # held by a receiver that never lets go
    barrier = GenerationBarrier(Counts(2, 1), probe, clock=clock)
    worker = worker_with(store, clock, barrier, barrier_max_seconds=10.0)
    task = asyncio.create_task(worker.hold(channel, stopping=lambda: at(store, "a", 3)))
    await until(lambda: channel.receives > 2)
    for now in (1.1, 9.0):
        clock.now = now
        looks = probe.looked.count(OLD)
        await until(lambda: probe.looked.count(OLD) > looks)  # noqa: B023
    assert at(store, "a", 1)
    clock.now = 11.5  # 10.4 s behind the barrier, past its longest: the gap wait begins
    looks = probe.looked.count(OLD)
    await until(lambda: probe.looked.count(OLD) > looks)
    await lane_rounds(clock)
    assert at(store, "a", 1)
    clock.now = 17.0  # the gap wait is over (and the session is still held): skipped over
    await asyncio.wait_for(task, 10)
    assert store.summary("a").skipped == (2,)


async def test_the_end_of_the_gap_wait_looks_again_and_finds_what_the_first_look_missed() -> None:
    """A peek is best effort on Service Bus: an empty answer must not let the order through."""
    store, channel, clock, a = await a3_early()
    probe = Probe({OLD: {}})  # the first look finds nothing
    worker = worker_with(store, clock, GenerationBarrier(Counts(2, 1), probe, clock=clock))
    task = asyncio.create_task(worker.hold(channel, stopping=lambda: at(store, "a", 3)))
    await until(lambda: channel.receives > 2)
    clock.now = 1.1
    await until(lambda: OLD in probe.looked)  # the gap wait begins: until 6.1
    probe.sessions[OLD] = {"a": 2}
    clock.now = 6.5
    await until(lambda: probe.looked.count(OLD) == 2)
    for now in (8.0, 30.0):
        clock.now = now
        looks = probe.looked.count(OLD)
        await until(lambda: probe.looked.count(OLD) > looks)  # noqa: B023
    assert at(store, "a", 1)  # back behind the barrier, not skipped
    await applied_from(store, OLD, a[1], 101)
    clock.now = 31.5
    await asyncio.wait_for(task, 10)
    assert store.summary("a").skipped == ()


async def test_a_drained_lane_of_another_count_is_released_with_only_blocked_orders_left() -> None:
    """So that it does not hold one of the pump's slots: their unblock holds it again."""
    store, channel = FakeStore(), FakeChannel(OLD)
    a = order_events("a")
    document = orjson.loads(a[1])
    document["data"] = {"line": "not a line"}
    for body in (a[0], orjson.dumps(document), a[2], a[3]):
        channel.add(body)
    settings = WorkerSettings(policy="block", retry_initial_seconds=0.001, retry_max_seconds=0.005)
    worker = LaneWorker(
        InboxHandler(store), store, LaneSettings(worker=settings, idle_seconds=0.01)
    )
    await asyncio.wait_for(worker.hold(channel, stopping=lambda: False, drain=True), 10)
    assert sorted(channel.deferred) == [3, 4]
    assert store.blocked


async def test_an_earlier_event_seen_in_another_session_is_waited_for_past_the_longest_wait() -> (
    None
):
    """The longest wait bounds only sessions that cannot be looked into."""
    store, channel, clock, a = await a3_early()
    probe = Probe({OLD: {"a": 2}})
    barrier = GenerationBarrier(Counts(2, 1), probe, clock=clock)
    worker = worker_with(store, clock, barrier, barrier_max_seconds=10.0)
    task = asyncio.create_task(worker.hold(channel, stopping=lambda: at(store, "a", 3)))
    await until(lambda: channel.receives > 2)
    for now in (1.1, 20.0, 40.0):
        clock.now = now
        looks = probe.looked.count(OLD)
        await until(lambda: probe.looked.count(OLD) > looks)  # noqa: B023
    assert at(store, "a", 1)
    await applied_from(store, OLD, a[1], 101)
    clock.now = 41.5
    await asyncio.wait_for(task, 10)
    assert store.summary("a").skipped == ()


async def test_an_order_recorded_in_another_lane_is_not_deferred_here_until_those_records_go() -> (
    None
):
    """An order is deferred in one lane at a time, so that its unblock replays one lane."""
    store, channel = FakeStore(), FakeChannel(NEW)
    store.deferrals["a"], store.deferral_lanes["a"] = {7: 2}, OLD  # deferred in its old lane
    a = order_events("a")
    await applied_from(store, OLD, a[0], 100)
    for n in (3, 4):  # a's later events, past its cap of 1 here
        channel.add(item_added("a", n))
    settings = WorkerSettings(retry_initial_seconds=0.001, retry_max_seconds=0.005)
    lane = LaneSettings(worker=settings, idle_seconds=0.01, order_max_in_flight=1,
                        unblock_poll_seconds=0.05)  # fmt: skip
    worker = LaneWorker(InboxHandler(store), store, lane)
    task = asyncio.create_task(worker.hold(channel, stopping=lambda: bool(channel.deferred)))
    # refused twice (tried again after the poll period), kept here, locked, not deferred
    await until(lambda: store.log.count("record_deferred") >= 2)
    assert not channel.deferred
    assert store.deferral_lanes["a"] == OLD
    store.deferrals["a"] = {}  # the old lane's replay forgot them
    await asyncio.wait_for(task, 10)
    assert store.deferral_lanes["a"] == NEW
