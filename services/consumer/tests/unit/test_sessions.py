"""The session worker against fakes of its ports: outages, waiting for predecessors, skip and block,
crash-safe deferral, and the session state's format."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from eventflow_consumer.handling import InboxHandler
from eventflow_consumer.session_state import SessionState, UnknownStateFormat
from eventflow_consumer.sessions import (
    ConsumerObserver,
    LetGo,
    NotBlocked,
    SessionFailed,
    SessionWorker,
    WorkerSettings,
)
from eventflow_contracts import decode_event, encode_event, new_event

from ..conftest import item_added, order_events  # type: ignore[import-not-found]
from .fakes import FakeChannel, FakeStore  # type: ignore[import-not-found]

FAST = {"retry_initial_seconds": 0.001, "retry_max_seconds": 0.005, "gap_wait_seconds": 5.0}


class Observer(ConsumerObserver):
    def __init__(self) -> None:
        self.unavailable = 0
        self.abandons = 0
        self.outages: list[float] = []

    def store_unavailable(self) -> None:
        self.unavailable += 1

    def store_available(self, outage_seconds: float) -> None:
        self.outages.append(outage_seconds)

    def abandoned(self) -> None:
        self.abandons += 1


def worker(
    store: FakeStore, observer: ConsumerObserver | None = None, **settings: Any
) -> SessionWorker:
    return SessionWorker(
        InboxHandler(store), store, WorkerSettings(**{**FAST, **settings}), observer=observer
    )


async def drain(w: SessionWorker, channel: FakeChannel, stopping: Any = lambda: False) -> None:
    await asyncio.wait_for(w.drain(channel, idle_seconds=0.05, stopping=stopping), 10)


# -- the pump's throughput: a drained session is let go at once ---------------------------------


async def test_a_session_is_released_after_a_receive_that_brought_less_than_a_batch() -> None:
    store = FakeStore()
    channel = FakeChannel("o1", order_events("o1"))
    await drain(worker(store), channel)
    assert channel.receives == 1  # no second, empty receive that would hold the session idle
    assert store.summary("o1").last_sequence == 4


async def test_a_full_batch_is_followed_by_another_receive() -> None:
    store = FakeStore()
    created = order_events("o1")[0]
    channel = FakeChannel("o1", [created, *(item_added("o1", n) for n in range(2, 26))])
    await drain(worker(store), channel)
    assert channel.receives == 2  # 20, then the 5 left: fewer than a batch, so released
    assert store.summary("o1").last_sequence == 25
    assert channel.outcomes("dead_letter") == []


async def test_the_first_batch_is_handled_even_when_stopping() -> None:
    store = FakeStore()
    channel = FakeChannel("o1", order_events("o1")[:2])
    await drain(worker(store), channel, stopping=lambda: True)
    assert channel.receives == 1
    assert channel.outcomes("complete") == [("complete", 1), ("complete", 2)]


async def test_an_early_event_keeps_the_session_held_until_its_predecessor_comes() -> None:
    store = FakeStore()
    created, added, submitted, _ = order_events("o1")
    channel = FakeChannel("o1", [created, submitted])
    running = asyncio.create_task(
        worker(store).drain(channel, idle_seconds=0.05, stopping=lambda: False)
    )
    deadline = asyncio.get_running_loop().time() + 5
    while channel.receives < 3:  # waiting, not released although the receives come back short
        assert asyncio.get_running_loop().time() < deadline, "released while an event waited"
        await asyncio.sleep(0.01)
    assert not running.done()
    channel.add(added)
    await asyncio.wait_for(running, 5)
    assert store.summary("o1").last_sequence == 3


# -- item 1: a store outage never spends a delivery ------------------------------------------


async def test_a_store_outage_holds_the_message_and_retries_until_the_store_is_back() -> None:
    store, observer = FakeStore(failing=40), Observer()
    w = worker(store, observer)
    channel = FakeChannel("o1", order_events("o1")[:1])
    await drain(w, channel)
    assert channel.outcomes("complete") == [("complete", 1)]
    assert channel.outcomes("abandon") == []
    assert store.summary("o1").last_sequence == 1
    assert observer.unavailable == 40
    assert len(observer.outages) == 1
    assert w.health.available


async def test_the_worker_is_unready_while_the_store_is_down() -> None:
    store = FakeStore(failing=10**6)
    w = worker(store)
    channel = FakeChannel("o1", order_events("o1")[:1])
    running = asyncio.create_task(w.drain(channel, idle_seconds=0.05, stopping=lambda: False))
    deadline = asyncio.get_running_loop().time() + 5
    while w.health.available:
        assert asyncio.get_running_loop().time() < deadline, "never turned unready"
        await asyncio.sleep(0.01)
    store.failing = 0
    await asyncio.wait_for(running, 5)
    assert w.health.available
    assert channel.outcomes("complete") == [("complete", 1)]


async def test_stopping_during_an_outage_lets_the_session_go_unsettled() -> None:
    store = FakeStore(failing=10**6)
    stop = asyncio.Event()
    channel = FakeChannel("o1", order_events("o1")[:1])
    w = worker(store)
    running = asyncio.create_task(w.drain(channel, idle_seconds=0.05, stopping=stop.is_set))
    deadline = asyncio.get_running_loop().time() + 5
    while w.health.available:  # stop only once the outage is under way
        assert asyncio.get_running_loop().time() < deadline, "never turned unready"
        await asyncio.sleep(0.01)
    stop.set()
    with pytest.raises(LetGo):
        await asyncio.wait_for(running, 5)
    assert channel.journal == []  # nothing settled: no delivery spent


# -- items 7 and 8: an unexpected error is settled explicitly, then the session is let go ----


async def test_an_unexpected_error_abandons_the_message_explicitly_then_fails_the_session() -> None:
    store = FakeStore()
    store.broken = KeyError("bug")
    channel, observer = FakeChannel("o1", order_events("o1")[:1]), Observer()
    with pytest.raises(SessionFailed):
        await drain(worker(store, observer), channel)
    assert channel.outcomes("abandon") == [("abandon", 1)]
    assert observer.abandons == 1


# -- item 6 ------------------------------------------------------------------------------------


async def test_an_event_in_another_orders_session_is_dead_lettered_and_not_applied() -> None:
    store = FakeStore()
    channel = FakeChannel("o2")
    channel.add(order_events("o1")[0])
    await drain(worker(store), channel)
    assert channel.outcomes("dead_letter") == [("dead_letter", 1, "session-mismatch")]
    assert store.summaries == {}


# -- item 2: early events wait; skip records what it skips ---------------------------------


async def test_an_early_event_waits_for_its_predecessor_and_all_apply_in_order() -> None:
    created, added, submitted, cancelled = order_events("o1")
    store = FakeStore()
    channel = FakeChannel("o1", [created, submitted, cancelled, added])
    await drain(worker(store), channel)
    assert channel.outcomes("dead_letter") == []
    assert sorted(n for _, n in channel.outcomes("complete")) == [1, 2, 3, 4]
    summary = store.summary("o1")
    assert (summary.last_sequence, summary.status, summary.skipped) == (4, "cancelled", ())
    assert [h["sequence"] for h in summary.status_history] == [1, 3, 4]


async def test_under_skip_a_missing_event_is_skipped_after_the_wait_and_a_late_copy_refused() -> (
    None
):
    created = order_events("o1")[0]
    store = FakeStore()
    w = worker(store, gap_wait_seconds=0.1)
    channel = FakeChannel("o1", [created, item_added("o1", 3)])
    await drain(w, channel)
    summary = store.summary("o1")
    assert (summary.last_sequence, summary.skipped, len(summary.lines)) == (3, (2,), 2)
    late = FakeChannel("o1", [item_added("o1", 2)])
    await drain(w, late)
    assert late.outcomes("dead_letter") == [("dead_letter", 1, "skipped-earlier")]
    assert late.outcomes("complete") == []


async def test_under_skip_a_poison_event_is_recorded_as_skipped_so_the_next_one_follows() -> None:
    created = order_events("o1")[0]
    created_again = encode_event(new_event(decode_event(created).data, source="/test", sequence=2))
    store = FakeStore()
    channel = FakeChannel("o1", [created, created_again, item_added("o1", 3)])
    await drain(worker(store, gap_wait_seconds=60), channel)
    assert channel.outcomes("dead_letter") == [("dead_letter", 2, "order-exists")]
    assert ("complete", 3) in channel.outcomes("complete")
    assert store.summary("o1").skipped == (2,)


async def test_under_block_a_missing_event_blocks_the_session_after_the_wait() -> None:
    store = FakeStore()
    channel = FakeChannel("o1", [order_events("o1")[0], item_added("o1", 3)])
    await drain(worker(store, policy="block", gap_wait_seconds=0.1), channel)
    state = SessionState.from_bytes(channel.state)
    assert state.blocked
    assert (state.reason or "").startswith("sequence-gap")
    assert state.deferred == [2]
    assert 2 in channel.deferred
    assert store.blocked["o1"] == state.reason


async def test_whole_state_events_are_no_gap() -> None:
    store = FakeStore()
    handler = InboxHandler(store, whole_state=(type(_submitted_data()),))
    created, _, submitted, _ = order_events("o1")
    channel = FakeChannel("o1", [created, submitted])  # 3 follows 1: no gap for a whole-state kind
    await drain(SessionWorker(handler, store, WorkerSettings(**FAST)), channel)
    assert channel.outcomes("complete") == [("complete", 1), ("complete", 2)]  # nothing waited
    summary = store.summary("o1")
    assert (summary.last_sequence, summary.status, summary.skipped) == (3, "submitted", ())


def _submitted_data() -> Any:
    return decode_event(order_events("o1")[2]).data


# -- items 3 and 5: blocking and deferral are crash-safe ------------------------------------


async def test_a_block_writes_the_blocked_record_before_the_state_and_the_dead_letter() -> None:
    store = FakeStore()
    channel = FakeChannel("o1", [order_events("o1")[0], b"{not json", order_events("o1")[1]])
    await drain(worker(store, policy="block"), channel)
    assert store.blocked["o1"].startswith("invalid-json")
    blocked_at = next(
        i for i, e in enumerate(channel.journal) if e[0] == "set_state" and e[1]["blocked"]
    )
    dead_at = channel.journal.index(("dead_letter", 2, "invalid-json"))
    assert blocked_at < dead_at
    # The later message is recorded before it is deferred.
    recorded_at = next(
        i for i, e in enumerate(channel.journal) if e[0] == "set_state" and 3 in e[1]["deferred"]
    )
    assert recorded_at < channel.journal.index(("defer", 3))


async def test_on_accept_a_blocked_session_repairs_a_missing_blocked_record() -> None:
    store = FakeStore()
    state = SessionState(blocked=True, reason="invalid-json: x")
    channel = FakeChannel("o1", state=state.to_bytes())
    await drain(worker(store, policy="block"), channel)
    assert store.blocked == {"o1": "invalid-json: x"}


async def test_on_accept_recorded_deferrals_that_no_longer_exist_are_dropped() -> None:
    store = FakeStore()
    channel = FakeChannel("o1", [order_events("o1")[1]])
    (waiting,) = channel.active
    channel.active = []
    channel.deferred[1] = waiting
    channel.state = SessionState(blocked=True, reason="r", deferred=[1, 99]).to_bytes()
    await drain(worker(store, policy="block"), channel)
    assert SessionState.from_bytes(channel.state).deferred == [1]
    # Not blocked any more (an unblock that did not finish): recorded ones are replayed, gone ones dropped.
    channel.state = SessionState(deferred=[1, 98]).to_bytes()
    await drain(worker(store, policy="block"), channel)
    assert SessionState.from_bytes(channel.state).deferred == []


async def test_unblock_replays_in_event_sequence_order_and_clears_the_record_last() -> None:
    created, added, submitted, cancelled = order_events("o1")
    store = FakeStore()
    channel = FakeChannel("o1", [created, b"{not json", cancelled, submitted, added])
    w = worker(store, policy="block")
    await drain(w, channel)
    assert SessionState.from_bytes(channel.state).deferred == [3, 4, 5]
    replayed, state = await w.unblock(channel, lambda: False)
    assert (replayed, state.blocked, state.deferred) == ([3, 4, 5], False, [])
    assert [n for _, n in channel.outcomes("complete")] == [1, 5, 4, 3]  # sequences 2, 3, 4
    assert store.summary("o1").last_sequence == 4
    assert store.blocked == {}
    assert store.log[-1] == "clear_blocked"
    with pytest.raises(NotBlocked):
        await w.unblock(FakeChannel("o9"), lambda: False)


async def test_a_replay_that_meets_poison_blocks_again_and_keeps_the_record() -> None:
    store = FakeStore()
    channel = FakeChannel(
        "o1", [order_events("o1")[0], b"{not json", b"{again", order_events("o1")[1]]
    )
    w = worker(store, policy="block")
    await drain(w, channel)
    _, state = await w.unblock(channel, lambda: False)
    assert (state.blocked, state.deferred) == (True, [4])
    assert "o1" in store.blocked
    assert 4 in channel.deferred


async def test_deferral_is_capped_so_the_state_stays_small() -> None:
    store = FakeStore()
    channel = FakeChannel("o1", [b"{not json", *(item_added("o1", n) for n in range(2, 6))])
    await drain(worker(store, policy="block", max_deferred=2), channel)
    assert SessionState.from_bytes(channel.state).deferred == [2, 3]
    assert [e[2] for e in channel.outcomes("dead_letter")] == [
        "invalid-json",
        "deferral-limit",
        "deferral-limit",
    ]


# -- item 3: the session state's format -----------------------------------------------------


def test_the_current_format_written_by_earlier_consumers_is_read() -> None:
    written_by_format_1 = (
        b'{"last_sequence":3,"blocked":true,"reason":"invalid-json: x","deferred":[7,9]}'
    )
    assert SessionState.from_bytes(written_by_format_1) == SessionState(
        3, True, "invalid-json: x", [7, 9]
    )


def test_format_2_reads_the_same_to_an_earlier_consumer() -> None:
    raw = SessionState(3, True, "r", [7, 9], {7: 4, 9: 5}).to_bytes()
    document = orjson.loads(raw)  # what an earlier replica's reader takes from it:
    earlier = (document.get("last_sequence", 0), document.get("blocked", False), document.get("reason"),
               list(document.get("deferred", [])))  # fmt: skip
    assert earlier == (3, True, "r", [7, 9])
    assert SessionState.from_bytes(raw) == SessionState(3, True, "r", [7, 9], {7: 4, 9: 5})


@pytest.mark.parametrize(
    "raw", [b'{"v":3,"deferred":[]}', b"[1]", b"not json", b'{"deferred":"x"}']
)
def test_a_state_this_consumer_cannot_read_is_not_interpreted(raw: bytes) -> None:
    with pytest.raises(UnknownStateFormat):
        SessionState.from_bytes(raw)


def test_the_largest_state_fits_the_standard_tier() -> None:
    numbers = [2**62 + n for n in range(2000)]  # the setting allows at most 2000
    state = SessionState(2**40, True, "x" * 500, numbers, dict.fromkeys(numbers, 2**40))
    assert len(state.to_bytes()) < 256 * 1024


def test_a_receiver_that_never_opened_is_told_apart_from_an_empty_queue() -> None:
    from azure.servicebus.exceptions import OperationTimeoutError  # noqa: PLC0415

    from eventflow_consumer.adapters.servicebus_sessions import _link_never_opened  # noqa: PLC0415

    # The SDK's own deadlines (azure/servicebus/_common/utils.py, aio/_async_utils.py):
    for message in ("Timed out waiting for the AMQP link to open.",
                    "No time left for the operation after acquiring the AMQP link."):  # fmt: skip
        assert _link_never_opened(OperationTimeoutError(message=message))
    # The broker's answer when no session is available (com.microsoft:timeout on the link):
    assert not _link_never_opened(
        OperationTimeoutError(message="Timeout: no session available (com.microsoft:timeout)")
    )


async def test_in_a_lane_each_early_event_waits_its_own_gap_time() -> None:
    """A session that carries many orders (a lane, handled by the session pump): order a's early
    event is skipped over when its own wait ends, while order b's, early later, still waits."""
    now = [0.0]
    store = FakeStore()
    channel = FakeChannel("lanes1-0")
    for body in (order_events("a")[0], order_events("b")[0], item_added("a", 3)):
        channel.add(body)
    w = SessionWorker(InboxHandler(store), store, WorkerSettings(**FAST), clock=lambda: now[0])
    task = asyncio.create_task(
        w.drain(channel, idle_seconds=0.01, stopping=lambda: store.summaries.get("b", (None,))[0] is not None
                and store.summary("b").last_sequence == 3)
    )  # fmt: skip
    await _until(lambda: channel.receives > 3)
    now[0] = 3.0
    channel.add(item_added("b", 3))  # b's wait starts at 3 s, a's at 0 s
    await _until(lambda: channel.receives > 10)
    now[0] = 5.5  # a's wait (5 s) is over; b's is not
    await _until(lambda: store.summary("a").last_sequence == 3)
    assert store.summary("a").skipped == (2,)
    assert store.summary("b").last_sequence == 1  # b still waits for its event 2
    channel.add(item_added("b", 2))
    await asyncio.wait_for(task, 10)
    assert store.summary("b").skipped == ()


async def _until(check: Any, wait: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + wait
    while not check():
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.005)
