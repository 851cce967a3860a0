"""The lane worker against fakes of its ports: orders of one lane concurrently and each in sequence,
early events that wait per order without holding up the lane, per-order gap timers, an unexpected
error that backs off one order only, and store outages that never spend a delivery."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson

from eventflow_consumer.handling import InboxHandler
from eventflow_consumer.lanes import LaneSettings, LaneWorker
from eventflow_consumer.ports import Inbound
from eventflow_consumer.session_state import SessionState
from eventflow_consumer.sessions import ConsumerObserver, WorkerSettings
from eventflow_contracts.lanes import session_id_for
from eventflow_testing import eventually

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
    return LaneWorker(InboxHandler(store), store, lane, clock=clock or Clock())


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

        async def commit(self, summary: Any, *args: Any) -> str | None:
            if summary.order_id == "a" and self.failures:
                self.failures -= 1
                raise RuntimeError("a bug")
            return await super().commit(summary, *args)

    store, channel, observer = OneOrderBroken(), FakeChannel(LANE), Abandons()
    channel.add(order_events("a")[0])
    for body in order_events("b"):
        channel.add(body)
    worker = LaneWorker(
        InboxHandler(store), store,
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


class Asking(FakeChannel):
    """Records how many messages each receive asks for."""

    def __init__(self, session_id: str) -> None:
        super().__init__(session_id)
        self.asked: list[int] = []

    async def receive(self, max_count: int, wait: float) -> list[Inbound]:
        self.asked.append(max_count)
        return await super().receive(max_count, wait)


async def test_an_idle_lane_asks_for_one_message_and_a_busy_one_for_a_batch() -> None:
    """azure-servicebus returns a batch receive 0.2 s after its first message (it pulls on for
    more): an idle lane asks for one, so a lone event is not held back by it."""
    store, channel = FakeStore(), Asking(LANE)
    events = {o: order_events(o) for o in ("a", "b", "c")}
    worker = lane_worker(store)
    held = asyncio.create_task(
        holding(worker, channel, lambda: all(at(store, o, 4) for o in events))
    )
    await until(lambda: channel.receives >= 3)
    assert set(channel.asked) == {1}, channel.asked
    for n in range(4):
        for body in events.values():
            channel.add(body[n])
    await held
    assert max(channel.asked) > 1, "a busy lane takes a batch"


async def until(check: Callable[[], bool], wait: float = 10.0) -> None:
    await eventually(check, "the lane's condition", wait=wait, every=0.005)


def test_the_consumer_holds_its_lanes_unless_there_are_none() -> None:
    from eventflow_consumer.bootstrap import Resources, worker_of  # noqa: PLC0415
    from eventflow_consumer.main import lanes_of  # noqa: PLC0415
    from eventflow_consumer.observability import ConsumerMetrics  # noqa: PLC0415
    from eventflow_consumer.settings import Settings  # noqa: PLC0415

    resources = Resources(servicebus=object(), store=FakeStore())  # type: ignore[arg-type]
    metrics = ConsumerMetrics()

    def holder(**changes: Any) -> Any:
        settings = Settings(mode="local", **changes)
        return lanes_of(settings, resources, worker_of(settings, resources, metrics), metrics)

    assert holder()._session_ids == [f"lanes32-{n}" for n in range(32)]
    assert holder(inbox_lanes=0) is None  # one session per order: all through the session pump
    assert holder(poison_policy="block")._worker.policy == "block"  # per order, inside the lane


# -- the block policy per order, caps, unblock -------------------------------------------------


def poison(order_id: str, sequence: int) -> bytes:
    """An event whose envelope names its order, and whose data breaks the contract."""
    document = orjson.loads(item_added(order_id, sequence))
    document["data"] = {"line": "not a line"}
    return orjson.dumps(document)


def blocking(store: FakeStore, clock: Clock | None = None, **changes: Any) -> LaneWorker:
    settings = WorkerSettings(policy="block", retry_initial_seconds=0.001,
                              retry_max_seconds=0.005, gap_wait_seconds=5.0)  # fmt: skip
    lane = LaneSettings(worker=settings, idle_seconds=0.01, order_backoff_seconds=0.05,
                        unblock_poll_seconds=0.01, **changes)  # fmt: skip
    return LaneWorker(InboxHandler(store), store, lane, clock=clock or Clock())


def blocked_lane(store: FakeStore) -> FakeChannel:
    """Order a blocked by a poison message at sequence 2, with its 3 and 4 after it; order b's
    four events interleaved."""
    channel = FakeChannel(LANE)
    a, b = order_events("a"), order_events("b")
    for body in (a[0], b[0], poison("a", 2), b[1], a[1], b[2], a[2], b[3], a[3]):
        channel.add(body)
    return channel


def recorded_before_deferred(store: FakeStore, channel: FakeChannel) -> bool:
    return all(n in store.deferrals.get("a", {}) for n in channel.deferred)


async def test_a_poison_message_blocks_its_order_only_and_the_lane_goes_on() -> None:
    store = FakeStore()
    channel = blocked_lane(store)
    worker = blocking(store)
    await holding(worker, channel, lambda: at(store, "b", 4) and len(channel.deferred) == 3)
    assert at(store, "a", 1)
    assert store.records["a"]["lane"] == LANE
    assert store.records["a"]["reason"].startswith("invalid-data")
    assert channel.outcomes("dead_letter") == [("dead_letter", 3, "invalid-data")]
    assert sorted(channel.deferred) == [5, 7, 9]  # a2 (valid), a3, a4: deferred, not settled
    assert store.deferrals["a"] == {5: 2, 7: 3, 9: 4}
    assert store.log.index("set_blocked") < store.log.index("record_deferred")
    assert channel.state is None  # nothing in the session state: the lane is many orders'


async def test_unblock_replays_the_order_in_event_order_and_clears_the_record_last() -> None:
    store = FakeStore()
    channel = blocked_lane(store)
    worker = blocking(store)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.hold(channel, stopping=stop.is_set))
    await until(lambda: len(channel.deferred) == 3)
    store.request_unblock("a", "r1")
    await until(lambda: "a" not in store.records)
    stop.set()
    await asyncio.wait_for(task, 10)
    assert at(store, "a", 4)
    assert [h["sequence"] for h in store.summary("a").status_history] == [1, 3, 4]
    assert store.deferrals["a"] == {}
    assert channel.deferred == {}
    assert store.log[-1] == "clear_blocked"  # after every record was forgotten
    assert [e[1] for e in channel.journal if e[0] == "receive_deferred"] == [5, 7, 9]


async def test_an_unblock_cut_short_is_taken_up_again_by_the_lanes_next_holder() -> None:
    class FailsAfterTheFirstReplayed(FakeStore):
        armed = False

        async def forget_deferred(self, order_id: str, numbers: set[int]) -> None:
            if self.armed:
                self.failing = 1_000_000  # the store goes down after the first replayed event
            await super().forget_deferred(order_id, numbers)

    store = FailsAfterTheFirstReplayed()
    channel = blocked_lane(store)
    stop = asyncio.Event()
    task = asyncio.create_task(blocking(store).hold(channel, stopping=stop.is_set))
    await until(lambda: len(channel.deferred) == 3)
    store.armed = True
    store.request_unblock("a", "r1")
    await until(lambda: at(store, "a", 2) and store.failing > 0)
    stop.set()  # the lane is let go mid-unblock, during the outage
    await asyncio.wait_for(task, 10)
    assert "a" in store.records
    assert 5 in store.deferrals["a"]
    store.armed, store.failing = False, 0
    await holding(blocking(store), channel, lambda: "a" not in store.records)
    assert at(store, "a", 4)
    assert [h["sequence"] for h in store.summary("a").status_history] == [1, 3, 4]
    assert store.deferrals["a"] == {}  # the settled one's record dropped on accept
    assert channel.outcomes("abandon") == []


async def test_a_poison_message_among_the_replayed_blocks_the_order_again() -> None:
    store, channel = FakeStore(), FakeChannel(LANE)
    for body in (order_events("a")[0], poison("a", 2), poison("a", 3), order_events("a")[3]):
        channel.add(body)
    worker = blocking(store)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.hold(channel, stopping=stop.is_set))
    await until(lambda: len(channel.deferred) == 2)
    store.request_unblock("a", "r1")
    await until(lambda: "unblock_answer" in store.records["a"])
    stop.set()
    await asyncio.wait_for(task, 10)
    assert store.records["a"]["unblock_answer"] == {"id": "r1", "outcome": "blocked-again"}
    assert store.deferrals["a"] == {4: 4}
    assert list(channel.deferred) == [4]
    assert [e[2] for e in channel.outcomes("dead_letter")] == ["invalid-data", "invalid-data"]


async def test_under_block_an_early_event_waits_then_blocks_its_order_only() -> None:
    store, channel, clock = FakeStore(), FakeChannel(LANE), Clock()
    channel.add(order_events("a")[0])
    channel.add(item_added("a", 3))  # 2 never comes
    worker = blocking(store, clock)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.hold(channel, stopping=stop.is_set))
    await until(lambda: at(store, "a", 1) and channel.receives > 3)
    for body in order_events("b"):
        channel.add(body)
    await until(lambda: at(store, "b", 4))  # b flows while a's event waits
    assert "a" not in store.records
    clock.now = 6.0
    await until(lambda: 2 in channel.deferred)
    stop.set()
    await asyncio.wait_for(task, 10)
    assert store.records["a"]["reason"].startswith("sequence-gap")
    assert store.summary("a").skipped == ()


async def test_a_hot_order_past_its_cap_is_deferred_and_brought_back_in_order() -> None:
    store, channel = FakeStore(), FakeChannel(LANE)
    channel.add(order_events("a")[0])
    for sequence in range(2, 31):
        channel.add(item_added("a", sequence))
    channel.add(order_events("b")[0])
    worker = lane_worker(store, order_max_in_flight=4)
    await holding(worker, channel, lambda: at(store, "a", 30) and at(store, "b", 1))
    # a held 4 at once; the rest were recorded and deferred, then brought back in arrival order
    assert [e[1] for e in channel.outcomes("defer")] == list(range(5, 31))
    assert [e[1] for e in channel.outcomes("receive_deferred")] == list(range(5, 31))
    assert store.deferrals["a"] == {}
    assert channel.deferred == {}
    assert store.summary("a").skipped == ()
    assert len(store.summary("a").lines) == 30
    assert channel.outcomes("dead_letter") == []
    assert channel.outcomes("abandon") == []


async def test_on_accept_records_of_messages_no_longer_deferred_are_dropped() -> None:
    store, channel = FakeStore(), FakeChannel(LANE)
    channel.add(order_events("a")[0])
    (first,) = await channel.receive(1, 0)
    await channel.complete(first)
    kept = channel.add(item_added("a", 2))
    (second,) = await channel.receive(1, 0)
    await channel.defer(second)
    store.records["a"] = {"order_id": "a", "lane": LANE, "reason": "invalid-data: x"}
    store.deferrals["a"], store.deferral_lanes["a"] = {1: 1, kept: 2, 99: None}, LANE
    channel.add(item_added("a", 3))  # blocked: deferred too
    worker = blocking(store)
    await holding(worker, channel, lambda: len(channel.deferred) == 2)
    assert store.deferrals["a"] == {kept: 2, 3: 3}
    assert "a" not in store.summaries  # nothing of a blocked order applied


async def test_a_store_outage_while_blocking_spends_no_delivery() -> None:
    store = FakeStore()
    channel = blocked_lane(store)
    worker = blocking(store)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.hold(channel, stopping=stop.is_set))
    await until(lambda: at(store, "a", 1))
    store.failing = 50  # the block's record, each deferral's record: all wait out the outage
    await until(lambda: len(channel.deferred) == 3 and at(store, "b", 4))
    stop.set()
    await asyncio.wait_for(task, 10)
    assert channel.outcomes("abandon") == []
    assert recorded_before_deferred(store, channel)


# -- per-event work ----------------------------------------------------------------------------


async def test_an_orders_next_event_is_applied_on_the_summary_this_holder_wrote_without_a_read() -> (
    None
):
    store, channel = FakeStore(), FakeChannel(LANE, order_events("a"))
    worker = lane_worker(store)
    await holding(worker, channel, lambda: at(store, "a", 4))
    assert store.log.count("commit") == 4
    assert store.log.count("load") == 0  # a create without a read, then three on the cached one


async def test_a_summary_changed_by_another_writer_is_read_again() -> None:
    store, channel = FakeStore(), FakeChannel(LANE, order_events("a")[:1])
    worker = lane_worker(store)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.hold(channel, stopping=stop.is_set))
    await until(lambda: at(store, "a", 1))
    summary, _ = store.summaries["a"]
    store.summaries["a"] = (summary, "written-elsewhere")  # e.g. a rebuild: the token moved on
    channel.add(order_events("a")[1])
    await until(lambda: at(store, "a", 2))
    stop.set()
    await asyncio.wait_for(task, 10)
    assert store.log.count("load") == 1  # the stale token refused, then read
    assert len(store.summary("a").lines) == 2


async def test_completions_do_not_hold_up_the_orders_next_event() -> None:
    """The lane's receiver takes one call at a time: an order's next event is applied while the
    completion of the one before still waits for it."""

    class SlowCompletions(FakeChannel):
        async def complete(self, inbound: Any) -> None:
            await asyncio.sleep(0.2)
            await super().complete(inbound)

    store, channel = FakeStore(), SlowCompletions(LANE, order_events("a"))
    worker = lane_worker(store)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.hold(channel, stopping=stop.is_set))
    await until(lambda: at(store, "a", 4), wait=0.5)
    assert len(channel.outcomes("complete")) < 4  # applied ahead of their completions
    await until(lambda: len(channel.outcomes("complete")) == 4)
    stop.set()
    await asyncio.wait_for(task, 10)


async def test_a_lane_blocked_whole_by_an_earlier_release_is_taken_over_per_order() -> None:
    """The earlier release's session pump blocked the whole lane in its session state: its
    deferred messages are recorded per order, brought back in order, and the block lifted."""
    store, channel = FakeStore(), FakeChannel(LANE)
    for body in (*order_events("a")[:2], *order_events("b")[:2]):
        channel.add(body)
    for inbound in await channel.receive(4, 0):
        await channel.defer(inbound)
    state = SessionState(blocked=True, reason="invalid-json: x", deferred=[3, 1, 4, 2])
    channel.state = state.to_bytes()
    await store.set_blocked(LANE, "invalid-json: x")
    channel.add(order_events("b")[2])  # arrives after the deferred ones: applied after them
    worker = blocking(store)
    await holding(worker, channel, lambda: at(store, "a", 2) and at(store, "b", 3))
    assert LANE not in store.records
    assert SessionState.from_bytes(channel.state).deferred == []
    assert store.deferrals == {"a": {}, "b": {}}
    assert channel.outcomes("dead_letter") == []


async def test_early_events_filling_an_orders_cap_do_not_keep_their_predecessor_deferred() -> None:
    store, channel, clock = FakeStore(), FakeChannel(LANE), Clock()
    channel.add(order_events("a")[0])
    for sequence in (3, 4, 5, 6):  # early: 3, 4, 5 wait (the cap), 6 is deferred
        channel.add(item_added("a", sequence))
    worker = lane_worker(store, clock, order_max_in_flight=3)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.hold(channel, stopping=stop.is_set))
    await until(lambda: at(store, "a", 1) and len(channel.deferred) == 1)
    channel.add(item_added("a", 2))  # the missing one: past the cap, deferred, then brought back
    await until(lambda: at(store, "a", 6))
    stop.set()
    await asyncio.wait_for(task, 10)
    assert store.summary("a").skipped == ()
    assert channel.outcomes("dead_letter") == []
    assert channel.deferred == {}
