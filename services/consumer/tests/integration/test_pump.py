"""The session pump's scheduling on the real azure-servicebus SDK against the messaging emulator:
a drained session is released at once, a slow session does not hold up the others, an empty queue
costs one bounded accept at a time (not the SDK's long retry loop), and stopping is prompt."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from azure.servicebus.exceptions import OperationTimeoutError, SessionCannotBeLockedError

from eventflow_consumer.adapters.servicebus_sessions import SessionPump
from eventflow_consumer.bootstrap import Resources, open_resources
from eventflow_consumer.handling import InboxHandler
from eventflow_consumer.sessions import SessionWorker
from eventflow_testing import eventually as until

from ..conftest import Backends, inbox_message, order_events  # type: ignore[import-not-found]
from .test_sessions import at_sequence  # type: ignore[import-not-found]

ACCEPT_WAIT = 1.5


@asynccontextmanager
async def pump_running(
    backends: Backends,
    *,
    concurrency: int = 2,
    idle_seconds: float = 30.0,
    store: Callable[[Resources], Any] = lambda resources: resources.store,
    **client_options: Any,
) -> AsyncIterator[tuple[Resources, SessionPump]]:
    """A pump whose held sessions would wait 30 s on an empty receive: whatever is released
    sooner was released because it was drained, not because it idled."""
    settings = backends.settings()
    async with open_resources(settings) as resources, backends.client(**client_options) as client:
        worker = SessionWorker(InboxHandler(store(resources)), resources.store)
        pump = SessionPump(client, settings.inbox_queue, worker, concurrency=concurrency,
                           idle_seconds=idle_seconds, renew_seconds=0.5,
                           accept_wait_seconds=ACCEPT_WAIT)  # fmt: skip
        task = asyncio.create_task(pump.run())
        try:
            yield resources, pump
        finally:
            pump.stop()
            await asyncio.wait_for(task, 15)


async def test_a_drained_session_is_released_at_once_and_its_next_event_can_go_elsewhere(
    backends: Backends,
) -> None:
    created, added = order_events("o1")[:2]
    await backends.send(inbox_message(created, "o1"))
    async with pump_running(backends) as (resources, _):
        await until(at_sequence(resources, "o1", 1), "the first event applied")
        released = time.monotonic()
        async with backends.client(retry_total=0) as client:
            receiver = await locked(client, backends, "o1")
            took = time.monotonic() - released
            # Another replica (this receiver) holds the order now and gets its next event.
            await backends.send(inbox_message(added, "o1"))
            (message,) = await receiver.receive_messages(max_wait_time=5)
            assert message.session_id == "o1"
            await receiver.complete_message(message)
            await receiver.close()
    assert took < 5.0  # with an idle hold it would have stayed with the pump for 30 s


async def locked(client: Any, backends: Backends, session_id: str, wait: float = 10.0) -> Any:
    """`session_id` locked by a receiver of the test's own, as soon as no one else holds it."""
    deadline = time.monotonic() + wait
    while True:
        receiver = client.get_queue_receiver(backends.queue, session_id=session_id, max_wait_time=1)
        try:
            await receiver.__aenter__()
            return receiver
        except (SessionCannotBeLockedError, OperationTimeoutError):
            await receiver.close()
            assert time.monotonic() < deadline, f"{session_id} still held by the pump"
            await asyncio.sleep(0.05)


class SlowFor:
    """The real store, except that the reads and writes of one order wait until the test lets
    them go (an order's first event is written without a read)."""

    def __init__(self, order_id: str, store: Any) -> None:
        self._order_id, self._store = order_id, store
        self.entered = asyncio.Event()
        self.go = asyncio.Event()

    async def _stall(self, order_id: str) -> None:
        if order_id == self._order_id:
            self.entered.set()
            await self.go.wait()

    async def load(self, order_id: str) -> Any:
        await self._stall(order_id)
        return await self._store.load(order_id)

    async def commit(self, summary: Any, *args: Any) -> None:
        await self._stall(summary.order_id)
        await self._store.commit(summary, *args)


async def test_other_sessions_go_on_while_one_is_slow(backends: Backends) -> None:
    slow: list[SlowFor] = []

    def slow_store(resources: Resources) -> SlowFor:
        slow.append(SlowFor("slow", resources.store))
        return slow[0]

    await backends.send(inbox_message(order_events("slow")[0], "slow"))
    async with pump_running(backends, store=slow_store) as (resources, pump):
        await asyncio.wait_for(slow[0].entered.wait(), 15)
        orders = [f"o{n}" for n in range(6)]
        await backends.send(*(inbox_message(order_events(o)[0], o) for o in orders))
        for order in orders:
            await until(at_sequence(resources, order, 1), f"{order} applied beside the slow one")
        assert pump.active_sessions >= 1  # the slow session is still held meanwhile
        slow[0].go.set()
        await until(at_sequence(resources, "slow", 1), "the slow one applied in the end")


async def test_an_empty_queue_costs_one_bounded_accept_at_a_time_and_stops_promptly(
    backends: Backends, caplog: pytest.LogCaptureFixture
) -> None:
    # The client's retry policy is the SDK's default (3 retries, 0.8 s backoff doubling), which
    # retries an empty NEXT_AVAILABLE_SESSION accept for many seconds when nothing bounds it.
    async with pump_running(backends, concurrency=4) as (_, pump):
        # At start every slot accepts at once (a backlog may be waiting); each comes back empty.
        await until(_async(lambda: pump.empty_accepts >= 4), "the first accepts", wait=15)
        started, in_flight = time.monotonic(), []
        while pump.empty_accepts < 6:
            in_flight.append(pump.accepting)
            assert time.monotonic() - started < 2 * ACCEPT_WAIT + 2.0, (
                "an accept outlived its bound"
            )
            await asyncio.sleep(0.05)
        stopping = time.monotonic()
    stopped = time.monotonic() - stopping
    assert max(in_flight) <= 1  # one slot looks while the queue is empty; the others wait
    # The broker's "no session" answers are told apart from receivers that never opened.
    assert pump.failed_opens_in_a_row == 0
    assert pump.connected
    assert stopped < ACCEPT_WAIT + 2.0
    # Each empty accept would otherwise log the SDK's cleanup warning, with a traceback.
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def _async(check: Callable[[], bool]) -> Callable[[], Any]:
    async def checked() -> bool:
        return check()

    return checked
