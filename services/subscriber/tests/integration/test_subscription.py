"""The subscriber in-process on the stand-ins: hub → inbox, checkpoints, crashes, filters, markers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager
from typing import Any

import orjson

from eventflow_local import LocalEnvironment
from eventflow_local.checkpoints import SqliteCheckpointStore
from eventflow_local.eventhubs import LOCAL_NAMESPACE, EventHubConsumerClient
from eventflow_local.servicebus import ServiceBusClient
from eventflow_subscriber.adapters.eventhubs_reader import Subscription
from eventflow_subscriber.adapters.servicebus_inbox import ServiceBusInbox
from eventflow_subscriber.forwarding import Forwarder, RetryPolicy

from ..conftest import event_bytes, eventually, publish, read_inbox  # type: ignore[import-not-found]


@asynccontextmanager
async def subscriber(
    environment: LocalEnvironment,
    forwarder_type: type[Forwarder] = Forwarder,
    subscribed: Collection[str] | None = None,
) -> AsyncIterator[tuple[Subscription, asyncio.Task[None], Any]]:
    store = SqliteCheckpointStore(environment)
    consumer = EventHubConsumerClient(
        environment, eventhub_name="orders", consumer_group="inbox-subscriber", checkpoint_store=store,
        load_balancing_interval=0.2,
    )  # fmt: skip
    async with ServiceBusClient(environment) as client, client.get_queue_sender("inbox") as sender:
        forwarder = forwarder_type(ServiceBusInbox(sender), hub="orders", subscribed=subscribed,
                                   max_message_bytes=250_000, retry=RetryPolicy(base_delay=0.01))  # fmt: skip
        subscription = Subscription(
            consumer, forwarder, max_batch_size=50, max_wait_time=None, starting_position="-1"
        )
        task = asyncio.create_task(subscription.run())
        try:
            yield subscription, task, store
        finally:
            if not task.done():
                await subscription.drain(5)
                await task
            await store.close()


async def checkpointed(store: SqliteCheckpointStore) -> int:
    listed = await store.list_checkpoints(LOCAL_NAMESPACE, "orders", "inbox-subscriber")
    return sum(checkpoint["sequence_number"] + 1 for checkpoint in listed)


async def test_events_reach_the_inbox_in_order_per_order_and_are_checkpointed(
    environment: LocalEnvironment,
) -> None:
    bodies = [(f"order-{n % 5}", event_bytes(f"order-{n % 5}", n // 5 + 1)) for n in range(40)]
    await publish(environment, bodies)
    async with subscriber(environment) as (_, _, store):
        await eventually(lambda: _equals(checkpointed(store), 40), what="every event checkpointed")
    inbox = await read_inbox(environment)
    assert sorted(inbox) == [f"order-{n}" for n in range(5)]
    for messages in inbox.values():
        assert [m.application_properties[b"sequence"] for m in messages] == list(range(1, 9))


async def test_a_crash_between_send_and_checkpoint_is_absorbed_by_duplicate_detection(
    environment: LocalEnvironment,
) -> None:
    class Crash(BaseException):
        pass

    crashed = asyncio.Event()

    class CrashAfterSending(Forwarder):
        async def forward(self, events: Any) -> None:
            await super().forward(events)
            crashed.set()
            raise Crash  # the process dies after the inbox accepted, before the checkpoint

    await publish(environment, [(f"order-{n}", event_bytes(f"order-{n}", 1)) for n in range(8)])
    async with subscriber(environment, CrashAfterSending) as (_, task, _store):
        await asyncio.wait_for(crashed.wait(), 20)
        for other in asyncio.all_tasks() - {asyncio.current_task()}:
            other.cancel()  # everything of the crashed process stops at once: no drain, no release
        await asyncio.gather(task, return_exceptions=True)
    async with subscriber(environment) as (_, _, store):
        await eventually(
            lambda: _equals(checkpointed(store), 8),
            what="everything checkpointed after the restart",
        )
    inbox = await read_inbox(environment)
    assert sorted(inbox) == [f"order-{n}" for n in range(8)]
    assert all(len(messages) == 1 for messages in inbox.values()), "each event once in the inbox"


async def test_filtered_events_are_checkpointed_past_and_never_sent(
    environment: LocalEnvironment,
) -> None:
    await publish(
        environment, [("o1", event_bytes("o1", 1)), ("o1", event_bytes("o1", 2, cancelled=True))]
    )
    async with subscriber(environment, subscribed={"eventflow.orders.OrderCancelled.v1"}) as (
        _,
        _,
        store,
    ):
        await eventually(lambda: _equals(checkpointed(store), 2))
    inbox = await read_inbox(environment)
    assert [m.subject for m in inbox["o1"]] == ["eventflow.orders.OrderCancelled.v1"]


async def test_a_malformed_event_on_the_hub_becomes_a_marker_and_the_rest_flows(
    environment: LocalEnvironment,
) -> None:
    await publish(environment, [("o1", b"{not json"), ("o1", event_bytes("o1", 1))])
    async with subscriber(environment) as (_, _, store):
        await eventually(lambda: _equals(checkpointed(store), 2))
    inbox = await read_inbox(environment)
    (marker,) = inbox["eventflow.unroutable"]
    assert marker.application_properties[b"reason"] == b"invalid-json"
    details = orjson.loads(b"".join(marker.body))
    assert (details["eventhub"], details["sequence_number"]) == ("orders", 0)
    assert len(inbox["o1"]) == 1


async def _equals(value: Any, expected: Any) -> bool:
    return bool(await value == expected)
