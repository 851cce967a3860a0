"""The subscriber in-process on the real SDKs (azure-eventhub with the blob checkpoint store on
Azurite, azure-servicebus) against the messaging emulator: hub → inbox, checkpoints, crashes,
filters, markers, and the emulator's faults under the SDKs' own retries.

SDK settings used on purpose: `load_balancing_interval=0.2` s, so the one consumer claims the four
partitions at once and, after a crash, the dead owner's claims expire after the SDK's default
6 x interval = 1.2 s instead of a minute."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager
from typing import Any

import orjson
from azure.eventhub.extensions.checkpointstoreblobaio import BlobCheckpointStore

from eventflow_contracts.lanes import session_id_for
from eventflow_subscriber.adapters.eventhubs_reader import Subscription
from eventflow_subscriber.adapters.servicebus_inbox import ServiceBusInbox
from eventflow_subscriber.forwarding import Forwarder, ForwarderObserver, RetryPolicy
from eventflow_testing import eventually

from ..conftest import (  # type: ignore[import-not-found]
    INBOX,
    Backends,
    checkpointed,
    event_bytes,
    publish,
    read_inbox,
)

LOAD_BALANCING_INTERVAL = 0.2


@asynccontextmanager
async def subscriber(
    backends: Backends,
    forwarder_type: type[Forwarder] = Forwarder,
    subscribed: Collection[str] | None = None,
    retry: RetryPolicy | None = None,
    service_bus_options: dict[str, Any] | None = None,
    observer: ForwarderObserver | None = None,
    max_message_bytes: int = 250_000,
) -> AsyncIterator[tuple[Subscription, asyncio.Task[None], BlobCheckpointStore]]:
    store = backends.checkpoint_store()
    consumer = backends.consumer(store, load_balancing_interval=LOAD_BALANCING_INTERVAL)
    async with (
        store,
        backends.service_bus(**(service_bus_options or {})) as client,
        client.get_queue_sender(INBOX) as sender,
    ):
        forwarder = forwarder_type(ServiceBusInbox(sender), hub="orders", subscribed=subscribed, max_message_bytes=max_message_bytes, lanes=32,
                                   retry=retry or RetryPolicy(base_delay=0.01), observer=observer)  # fmt: skip
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


def all_checkpointed(backends: Backends, store: BlobCheckpointStore, count: int) -> Any:
    async def check() -> bool:
        return await checkpointed(backends, store) == count

    return check


async def test_events_reach_the_inbox_in_order_per_order_and_are_checkpointed(
    backends: Backends,
) -> None:
    bodies = [(f"order-{n % 5}", event_bytes(f"order-{n % 5}", n // 5 + 1)) for n in range(40)]
    await publish(backends, bodies)
    async with subscriber(backends) as (_, _, store):
        await eventually(all_checkpointed(backends, store, 40), what="every event checkpointed")
    inbox = await read_inbox(backends)
    assert sorted(inbox) == [f"order-{n}" for n in range(5)]
    for order_id, messages in inbox.items():
        assert [m.application_properties[b"sequence"] for m in messages] == list(range(1, 9))
        # every event of an order in its lane
        assert {m.session_id for m in messages} == {session_id_for(order_id, 32)}


async def test_a_crash_between_send_and_checkpoint_is_absorbed_by_duplicate_detection(
    backends: Backends,
) -> None:
    class Crash(BaseException):
        pass

    crashed = asyncio.Event()

    class CrashAfterSending(Forwarder):
        async def forward(self, events: Any) -> None:
            await super().forward(events)
            crashed.set()
            raise Crash  # the process dies after the inbox accepted, before the checkpoint

    await publish(backends, [(f"order-{n}", event_bytes(f"order-{n}", 1)) for n in range(8)])
    # The crashing process: its clients are never closed, as in a process that dies.
    crashed_store = backends.checkpoint_store()
    consumer = backends.consumer(crashed_store, load_balancing_interval=LOAD_BALANCING_INTERVAL)
    sender = backends.service_bus().get_queue_sender(INBOX)
    forwarder = CrashAfterSending(ServiceBusInbox(sender), hub="orders", subscribed=None,
                                  max_message_bytes=250_000, lanes=32, retry=RetryPolicy(base_delay=0.01))  # fmt: skip
    subscription = Subscription(
        consumer, forwarder, max_batch_size=50, max_wait_time=None, starting_position="-1"
    )
    task = asyncio.create_task(subscription.run())
    await asyncio.wait_for(crashed.wait(), 20)
    for other in asyncio.all_tasks() - {asyncio.current_task()}:
        other.cancel()  # everything of the crashed process stops at once: no drain, no release
    await asyncio.gather(task, return_exceptions=True)
    backends.messaging.admin.drop_connections()  # and its connections end with it
    await crashed_store.close()  # only this test's HTTP session: the claims stay as they were
    async with backends.checkpoint_store() as store:
        assert await checkpointed(backends, store) == 0, "no checkpoint past the crash"

    async with subscriber(backends) as (_, _, store):
        await eventually(
            all_checkpointed(backends, store, 8), what="everything checkpointed after the restart"
        )
    inbox = await read_inbox(backends)
    assert sorted(inbox) == [f"order-{n}" for n in range(8)]
    assert all(len(messages) == 1 for messages in inbox.values()), "each event once in the inbox"


async def test_filtered_events_are_checkpointed_past_and_never_sent(backends: Backends) -> None:
    await publish(
        backends, [("o1", event_bytes("o1", 1)), ("o1", event_bytes("o1", 2, cancelled=True))]
    )
    async with subscriber(backends, subscribed={"eventflow.orders.OrderCancelled.v1"}) as (
        _,
        _,
        store,
    ):
        await eventually(all_checkpointed(backends, store, 2))
    inbox = await read_inbox(backends)
    assert [m.subject for m in inbox["o1"]] == ["eventflow.orders.OrderCancelled.v1"]


async def test_a_malformed_event_on_the_hub_becomes_a_marker_and_the_rest_flows(
    backends: Backends,
) -> None:
    await publish(backends, [("o1", b"{not json"), ("o1", event_bytes("o1", 1))])
    async with subscriber(backends) as (_, _, store):
        await eventually(all_checkpointed(backends, store, 2))
    inbox = await read_inbox(backends)
    (marker,) = inbox["eventflow.unroutable"]
    assert marker.application_properties[b"reason"] == b"invalid-json"
    details = orjson.loads(b"".join(marker.body))
    assert (details["eventhub"], details["sequence_number"]) == ("orders", 0)
    assert len(inbox["o1"]) == 1


class Refusals(ForwarderObserver):
    def __init__(self) -> None:
        self.busy = 0

    def send_retry(self, *, busy: bool) -> None:
        self.busy += busy


def orders(count: int, first_sequence: int = 1, keys: int = 5) -> list[tuple[str, bytes]]:
    """`count` events over `keys` orders, each order's sequence numbers from `first_sequence` on."""
    return [
        (f"order-{n % keys}", event_bytes(f"order-{n % keys}", n // keys + first_sequence))
        for n in range(count)
    ]


def in_order_once(inbox: dict[str, list[Any]], keys: int, per_order: int) -> None:
    assert sorted(inbox) == [f"order-{n}" for n in range(keys)]
    for messages in inbox.values():
        sequences = [m.application_properties[b"sequence"] for m in messages]
        assert sequences == list(range(1, per_order + 1)), "each event once, in order"


async def test_a_busy_inbox_holds_the_checkpoint_until_it_accepts(backends: Backends) -> None:
    """The emulator answers the inbox's sends with com.microsoft:server-busy until told to stop.
    SDK settings: retry_total=1, retry_backoff_factor=0.05 (the SDK retries once, then raises
    ServiceBusServerBusyError); the forwarder then backs off by its own policy (busy_delay cut from
    10 s to 0.2 s here) and nothing is checkpointed while the inbox refuses."""
    await publish(backends, orders(20))
    backends.messaging.admin.server_busy(120, operations=["send"])
    refusals = Refusals()
    async with subscriber(
        backends,
        retry=RetryPolicy(base_delay=0.01, busy_delay=0.2, max_attempts=1000),
        service_bus_options={"retry_total": 1, "retry_backoff_factor": 0.05},
        observer=refusals,
    ) as (_, task, store):

        async def refused_twice() -> bool:
            return refusals.busy >= 2

        await eventually(refused_twice, what="the inbox refusing as busy")
        assert await checkpointed(backends, store) == 0, "no checkpoint while the inbox refuses"
        assert not task.done()
        backends.messaging.admin.clear()
        await eventually(all_checkpointed(backends, store, 20), what="every event checkpointed")
    in_order_once(await read_inbox(backends), keys=5, per_order=4)


async def test_a_lost_acknowledgement_of_an_inbox_send_is_absorbed_by_duplicate_detection(
    backends: Backends,
) -> None:
    """The emulator stores the next inbox batches, then drops the connection before acknowledging
    them; the SDK (default retry policy, 3 tries) sends each batch again on a new connection."""
    await publish(backends, orders(20))
    backends.messaging.admin.apply_then_drop("send", count=2)
    async with subscriber(backends) as (_, _, store):
        await eventually(all_checkpointed(backends, store, 20), what="every event checkpointed")
    in_order_once(await read_inbox(backends), keys=5, per_order=4)


async def test_the_subscriber_reconnects_after_the_connections_drop(backends: Backends) -> None:
    """Every connection aborted (no close frame) while the subscriber runs: the SDKs reconnect,
    the hub is read on from where it was and the inbox gets every event once."""
    await publish(backends, orders(20))
    async with subscriber(backends) as (_, task, store):
        await eventually(
            all_checkpointed(backends, store, 20), what="the first events checkpointed"
        )
        assert backends.messaging.admin.drop_connections() > 0
        await publish(backends, orders(20, first_sequence=5))
        await eventually(all_checkpointed(backends, store, 40), what="every event checkpointed")
        assert not task.done()
    in_order_once(await read_inbox(backends), keys=5, per_order=8)


async def test_a_stolen_partition_is_claimed_again_and_read_from_its_checkpoint(
    backends: Backends,
) -> None:
    """The emulator detaches every partition's reader with amqp:link:stolen (a higher owner level
    took it): the SDK calls on_error and closes the partition; its next load-balancing round
    claims it again and reads on from the checkpoint."""
    await publish(backends, orders(20))
    async with subscriber(backends) as (_, task, store):
        await eventually(
            all_checkpointed(backends, store, 20), what="the first events checkpointed"
        )
        stolen = sum(
            backends.messaging.admin.steal_partition("orders", str(p), "inbox-subscriber")
            for p in range(4)
        )
        assert stolen == 4
        await publish(backends, orders(20, first_sequence=5))
        await eventually(all_checkpointed(backends, store, 40), what="every event checkpointed")
        assert not task.done()
    in_order_once(await read_inbox(backends), keys=5, per_order=8)


async def test_an_event_larger_than_the_inbox_link_allows_becomes_a_marker_and_the_rest_flows(
    backends: Backends,
) -> None:
    """The limit the real SDK sizes its ServiceBusMessageBatch by is the one the queue's link
    advertises on attach (256 KB, Standard tier): a 300 KB event, which the hub accepts (1 MB) and
    the subscriber's own size check lets through here, does not fit an empty batch and goes to the
    inbox as a too-large marker; the events around it flow."""
    big = orjson.loads(event_bytes("o1", 2))
    big["padding"] = "x" * 300_000  # an extension attribute: the envelope stays routable
    await publish(
        backends, [("o1", event_bytes("o1", 1)), ("o1", orjson.dumps(big)), ("o1", event_bytes("o1", 3))]
    )  # fmt: skip
    async with subscriber(backends, max_message_bytes=1_000_000) as (_, _, store):
        await eventually(all_checkpointed(backends, store, 3))
    inbox = await read_inbox(backends)
    (marker,) = inbox["eventflow.unroutable"]
    assert marker.application_properties[b"reason"] == b"too-large"
    assert orjson.loads(b"".join(marker.body))["sequence_number"] == 1
    assert [m.application_properties[b"sequence"] for m in inbox["o1"]] == [1, 3]
