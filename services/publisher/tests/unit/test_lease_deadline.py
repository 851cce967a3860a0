"""A handler already running is stopped by time, not only by a failed lease write: the publisher's
send-retry loop of an owner whose lease is asked for, or whose lease-store calls hang, makes no
send attempt once another instance may handle the lease.

The handler is the real EventPublisher; its EventSender port refuses every send of the old owner
(Event Hubs refusing: `_send` retries) and accepts the new owner's. Each send attempt is recorded
with its run and lease, in the order the event loop ran them."""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from eventflow_publisher.changefeed import ChangeFeedProcessor, LeaseContext, ProcessorOptions
from eventflow_publisher.publishing import (
    EventPublisher,
    Outgoing,
    SendError,
    SendHealth,
    SendResult,
)

from ..fakes import FakeChangeFeed, FakeLeaseStore, feed_range  # type: ignore[import-not-found]
from .test_publishing import PARTITIONS, FakePoison, event_document

LEASE: contextvars.ContextVar[str] = contextvars.ContextVar("lease")
LOW, HIGH = feed_range("", "80"), feed_range("80", "FF")
TIMINGS = {"poll_delay": 0.02, "max_poll_delay": 0.02, "lag_interval": 5.0, "retry_delay": 0.05,
           "max_retry_delay": 0.2, "shutdown_grace": 1.0, "request_check_interval": 0.1,
           "handover_poll": 0.05}  # fmt: skip


@dataclass
class Hub:
    """Every send attempt: (run, lease, monotonic time); `refused`: the runs whose sends fail."""

    attempts: list[tuple[str, str, float]] = field(default_factory=list)
    refused: set[str] = field(default_factory=set)

    def sender(self, run: str) -> Any:
        hub = self

        class Sender:
            async def partition_ids(self) -> list[str]:
                return PARTITIONS

            async def send(self, partition_id: str, events: Sequence[Outgoing]) -> SendResult:
                hub.attempts.append((run, LEASE.get(), time.monotonic()))
                if run in hub.refused:
                    raise SendError("ServerBusyError: the hub refuses")
                return SendResult((len(events),))

        return Sender()

    def handler(self, run: str) -> Any:
        publish = EventPublisher(
            self.sender(run), FakePoison(), health=SendHealth(30.0), retry_delay=0.05,
            max_retry_delay=0.05,
        )  # fmt: skip

        async def handle(context: LeaseContext, documents: Sequence[dict[str, Any]]) -> None:
            LEASE.set(context.lease_id)  # this page's task only
            await publish(context, documents)

        return handle

    def first(self, run: str, lease: str) -> float | None:
        return next((t for r, lease_, t in self.attempts if (r, lease_) == (run, lease)), None)

    def after(self, run: str, lease: str, moment: float) -> list[float]:
        return [t for r, lease_, t in self.attempts if (r, lease_) == (run, lease) and t >= moment]


def feed_with_events() -> FakeChangeFeed:
    feed = FakeChangeFeed([LOW, HIGH])
    for range_, order in ((LOW, "o-low"), (HIGH, "o-high")):
        feed.append(range_, *[event_document(order, n) | {"_ts": 1000} for n in range(1, 4)])
    return feed


async def wait_for(check: Any, what: str, wait: float) -> None:
    deadline = time.monotonic() + wait
    while not check():
        assert time.monotonic() < deadline, f"{what} not met within {wait} s"
        await asyncio.sleep(0.01)


async def finish(*tasks: asyncio.Task[None]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


@dataclass
class Stalling:
    """A run's view of the lease store: its calls hang once `stalled` (a Cosmos DB request that
    never answers, e.g. over a half-open connection); `acquired`: when its acquisitions returned."""

    store: FakeLeaseStore
    stalled: bool = False
    acquired: dict[str, float] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.store, name)
        if not asyncio.iscoroutinefunction(attribute):
            return attribute

        async def call(*args: Any, **kwargs: Any) -> Any:
            if self.stalled:
                await asyncio.Event().wait()
            result = await attribute(*args, **kwargs)
            if name == "acquire":
                self.acquired.setdefault(result.id, time.monotonic())
            return result

        return call


async def test_an_owner_retrying_a_refused_send_stops_before_the_thief_handles_the_lease() -> None:
    """A owns both leases and retries its sends (the hub refuses A's). B joins and asks for one:
    A cancels the page at the hand-over deadline and releases, long before the expiry, and makes
    no send attempt on that lease after B's first."""
    hub, feed, store = Hub(refused={"a"}), feed_with_events(), FakeLeaseStore()
    options = TIMINGS | {"renew_interval": 0.3, "expiry": 5.0, "handover_timeout": 0.5}
    a = ChangeFeedProcessor(
        feed=feed, leases=store, handler=hub.handler("a"),
        options=ProcessorOptions(instance_name="a", acquire_interval=30.0, **options),
    )  # fmt: skip
    a_task = asyncio.create_task(a.run())
    try:
        await wait_for(lambda: {lease for _, lease, _ in hub.attempts} == set(store.leases),
                       "A sends on both leases", 10.0)  # fmt: skip
        joined, b_store = time.monotonic(), Stalling(store)
        b = ChangeFeedProcessor(
            feed=feed, leases=b_store, handler=hub.handler("b"),
            options=ProcessorOptions(instance_name="b", acquire_interval=0.2, **options),
        )  # fmt: skip
        b_task = asyncio.create_task(b.run())
        try:
            await wait_for(lambda: any(r == "b" for r, _, _ in hub.attempts), "B sends", 15.0)
            stolen = next(lease for r, lease, _ in hub.attempts if r == "b")
            taken = b_store.acquired[stolen]
            await asyncio.sleep(1.0)  # A's send loop retries every 0.05 s: time for any straggler
            late = hub.after("a", stolen, taken)
            assert late == [], f"A made {len(late)} send attempts on a lease B had taken"
            assert taken - joined < options["expiry"], "B waited for the expiry of a live owner"
            assert store.leases[stolen].owner == "b"
            others = [lease for lease in store.leases if lease != stolen]
            assert [store.leases[lease].owner for lease in others] == ["a"], "A keeps its other"
        finally:
            await finish(b_task)
    finally:
        await finish(a_task)


async def test_an_owner_whose_lease_store_calls_hang_stops_sending_before_its_lease_can_be_taken() -> (
    None
):
    """A's lease-store calls hang while A retries a refused send; B (another name) takes the lease
    at the expiry. Every send attempt of A comes before B's acquisition."""
    hub, feed, store = Hub(refused={"a"}), feed_with_events(), FakeLeaseStore()
    feed.ranges = [LOW]
    store.add(LOW)
    options = TIMINGS | {"renew_interval": 0.3, "expiry": 1.5, "acquire_interval": 0.2}
    a_store = Stalling(store)
    a = ChangeFeedProcessor(feed=feed, leases=a_store, handler=hub.handler("a"),
                            options=ProcessorOptions(instance_name="a", **options))  # fmt: skip
    a_task = asyncio.create_task(a.run())
    try:
        await wait_for(lambda: bool(hub.attempts), "A sends", 10.0)
        a_store.stalled = True
        b_store = Stalling(store)
        b = ChangeFeedProcessor(feed=feed, leases=b_store, handler=hub.handler("b"),
                                options=ProcessorOptions(instance_name="b", **options))  # fmt: skip
        b_task = asyncio.create_task(b.run())
        try:
            await wait_for(lambda: any(r == "b" for r, _, _ in hub.attempts), "B sends", 15.0)
            (lease,) = store.leases
            taken = b_store.acquired[lease]
            await asyncio.sleep(1.0)  # A's send loop retries every 0.05 s: time for any straggler
            late = hub.after("a", lease, taken)
            assert late == [], f"A made {len(late)} send attempts after B took the lease"
            assert all(w.context.is_lost for w in a.workers.values())
        finally:
            await finish(b_task)
    finally:
        await finish(a_task)
