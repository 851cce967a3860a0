"""Event Hubs producer and consumer through the real azure-eventhub SDK: one set of cases, every
backend.

Backends: this repository's messaging emulator (always), and the official Event Hubs emulator or
Azure when EVENTFLOW_CONFORMANCE_EVENTHUBS_CONNECTION_STRING and _HUB (a hub of its own for these
tests) are set; _OTHER_HUB names a second hub of the namespace for the authorization case. The consumer always checkpoints with the SDK's real BlobCheckpointStore on Azurite.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import pytest
from azure.eventhub import CloseReason, EventData
from azure.eventhub.aio import EventHubConsumerClient as AzureConsumer
from azure.eventhub.aio import EventHubProducerClient as AzureProducer
from azure.eventhub.exceptions import AuthenticationError

from eventflow_emulators.conformance import BackendCases, setting_or_skip
from eventflow_emulators.messaging.eventhubs.hashing import partition_for_key
from eventflow_emulators.messaging.testing import RunningMessagingEmulator
from eventflow_emulators.servers import RunningServer
from eventflow_testing import eventually

from . import amqp_types, sas
from .test_checkpoint_store import blob_store

PARTITIONS = 4
BALANCE_S = 0.3


@dataclass
class Hub:
    producer: Any
    make_consumer: Callable[..., Awaitable[Any]]
    store: Any
    connection_string: str
    name: str
    consumer_group: str
    partitions: int = PARTITIONS
    emulator: RunningMessagingEmulator | None = None
    other_hub: str | None = None  # another hub of the namespace, for the authorization case


@dataclass
class Collected:
    events: dict[str, list[Any]] = field(default_factory=dict)
    empty_batches: int = 0
    idle: set[str] = field(default_factory=set)  # partitions that delivered an empty batch
    errors: list[Exception] = field(default_factory=list)
    closed: list[tuple[str, CloseReason]] = field(default_factory=list)
    opened: set[str] = field(default_factory=set)  # partitions whose receiver the SDK created

    def bodies(self) -> list[bytes]:
        return [b"".join(e.body) for events in self.events.values() for e in events]

    def all(self) -> list[Any]:
        return [e for events in self.events.values() for e in events]


@asynccontextmanager
async def consuming(
    consumer: Any, *, checkpoint: bool = True, fail_once: bool = False, **kwargs: Any
) -> AsyncIterator[Collected]:
    collected = Collected()
    failed = [not fail_once]

    async def on_batch(context: Any, events: list[Any]) -> None:
        if not events:
            collected.empty_batches += 1
            collected.idle.add(context.partition_id)
            return
        if not failed[0]:
            failed[0] = True
            raise RuntimeError("the handler failed once")
        if checkpoint:
            await context.update_checkpoint(events[-1])
        # Visible to the test only once checkpointed: close() cancels an in-flight callback.
        collected.events.setdefault(context.partition_id, []).extend(events)

    async def on_error(_context: Any, error: Exception) -> None:
        collected.errors.append(error)

    async def on_close(context: Any, reason: CloseReason) -> None:
        collected.closed.append((context.partition_id, reason))

    async def on_initialize(context: Any) -> None:
        collected.opened.add(context.partition_id)

    task = asyncio.create_task(
        consumer.receive_batch(
            on_batch,
            on_error=on_error,
            on_partition_close=on_close,
            on_partition_initialize=on_initialize,
            **kwargs,
        )
    )
    try:
        yield collected
    finally:
        await consumer.close()
        await task


async def send(hub: Hub, key: str, *bodies: bytes, **properties: Any) -> None:
    batch = await hub.producer.create_batch(partition_key=key)
    for body in bodies:
        event = EventData(body)
        event.content_type = "application/cloudevents+json"
        event.properties = properties
        batch.add(event)
    await hub.producer.send_batch(batch)


class EventHubsConformance(BackendCases):
    """The cases. A backend subclasses this and provides the `hub` fixture."""

    backend: ClassVar[str]

    async def test_partition_ids_are_listed(self, hub: Hub) -> None:
        assert await hub.producer.get_partition_ids() == [str(n) for n in range(hub.partitions)]

    async def test_an_event_keeps_body_content_type_and_properties(self, hub: Hub) -> None:
        key = uuid.uuid4().hex
        await send(hub, key, b'{"x": 1}', type="t.v1", sequence=3)
        async with consuming(await hub.make_consumer(), starting_position="-1") as got:
            await eventually(lambda: b'{"x": 1}' in got.bodies())
        (event,) = [
            e for events in got.events.values() for e in events if b"".join(e.body) == b'{"x": 1}'
        ]
        assert event.content_type == "application/cloudevents+json"
        assert event.properties[b"type"] == b"t.v1"
        assert event.properties[b"sequence"] == 3
        assert isinstance(event.sequence_number, int)
        assert event.offset is not None

    async def test_every_amqp_type_round_trips_in_an_event(self, hub: Hub) -> None:
        # "AMQP 1.0 in Azure Service Bus and Event Hubs protocol guide": every AMQP type in
        # application properties and message annotations reaches the consumer as sent.
        key = uuid.uuid4().hex
        event = EventData(key.encode())
        event.properties = amqp_types.application_properties()
        event.raw_amqp_message.annotations = amqp_types.annotations()
        batch = await hub.producer.create_batch(partition_key=key)
        batch.add(event)
        await hub.producer.send_batch(batch)
        async with consuming(await hub.make_consumer(), starting_position="-1") as got:
            await eventually(lambda: key.encode() in got.bodies())
        (received,) = [e for e in got.all() if b"".join(e.body) == key.encode()]
        assert amqp_types.received(received.properties) == amqp_types.EXPECTED
        annotations = received.raw_amqp_message.annotations
        assert amqp_types.received(annotations, "x-opt-") == amqp_types.EXPECTED

    async def test_one_partition_key_lands_on_one_partition_in_send_order(self, hub: Hub) -> None:
        key = uuid.uuid4().hex
        for n in range(3):
            await send(hub, key, *[f"{key}-{n}-{m}".encode() for m in range(3)])
        async with consuming(await hub.make_consumer(), starting_position="-1") as got:
            await eventually(lambda: sum(b.startswith(key.encode()) for b in got.bodies()) == 9)
        partitions = {
            p
            for p, events in got.events.items()
            for e in events
            if b"".join(e.body).startswith(key.encode())
        }
        assert len(partitions) == 1
        ordered = [
            b"".join(e.body)
            for e in got.events[partitions.pop()]
            if b"".join(e.body).startswith(key.encode())
        ]
        assert ordered == [f"{key}-{n}-{m}".encode() for n in range(3) for m in range(3)]

    async def test_a_full_batch_refuses_the_next_event(self, hub: Hub) -> None:
        batch = await hub.producer.create_batch(partition_key="k", max_size_in_bytes=1000)
        for _ in range(3):
            batch.add(EventData(b"x" * 200))
        with pytest.raises(ValueError, match="size limit"):
            batch.add(EventData(b"x" * 200))
        assert len(batch) == 3

    async def test_the_key_goes_on_the_batch_not_the_send(self, hub: Hub) -> None:
        batch = await hub.producer.create_batch()
        batch.add(EventData(b"x"))
        with pytest.raises(TypeError):
            await hub.producer.send_batch(batch, partition_key="k")

    async def test_latest_skips_what_was_already_there(self, hub: Hub) -> None:
        before, after = uuid.uuid4().hex.encode(), uuid.uuid4().hex
        await send(hub, "k", before)
        async with consuming(await hub.make_consumer(), starting_position="@latest") as got:
            # The readers open at the end some time after the client starts (after claiming
            # ownership), and nothing tells when: send markers until one arrives.
            deadline = asyncio.get_running_loop().time() + 20
            n = 0
            while not any(b.startswith(after.encode()) for b in got.bodies()):
                assert asyncio.get_running_loop().time() < deadline, "no marker arrived"
                await send(hub, "k", f"{after}-{n}".encode())
                n += 1
                await asyncio.sleep(0.3)
        assert before not in got.bodies()

    async def test_a_new_consumer_resumes_after_the_checkpoint(self, hub: Hub) -> None:
        key = uuid.uuid4().hex
        await send(hub, key, b"one", b"two")
        async with consuming(await hub.make_consumer(), starting_position="-1") as first:
            await eventually(lambda: b"two" in first.bodies())
        await send(hub, key, b"three")
        async with consuming(await hub.make_consumer(), starting_position="-1") as second:
            await eventually(lambda: b"three" in second.bodies())
        assert b"one" not in second.bodies()

    async def test_a_failing_callback_is_redelivered_from_the_checkpoint(self, hub: Hub) -> None:
        key = uuid.uuid4().hex.encode()
        await send(hub, "k", key)
        async with consuming(
            await hub.make_consumer(), starting_position="-1", fail_once=True
        ) as got:
            # on_error and on_partition_close run in the failed partition's task, maybe after
            # another partition delivered: wait for all of it (closing cancels those tasks).
            await eventually(
                lambda: (
                    key in got.bodies()
                    and bool(got.errors)
                    and any(reason == CloseReason.OWNERSHIP_LOST for _, reason in got.closed)
                ),
                wait=20,
            )
        assert [type(e) for e in got.errors] == [RuntimeError]
        assert any(reason == CloseReason.OWNERSHIP_LOST for _, reason in got.closed)

    async def test_max_wait_time_calls_back_with_no_events(self, hub: Hub) -> None:
        async with consuming(
            await hub.make_consumer(), starting_position="@latest", max_wait_time=0.2
        ) as got:
            await eventually(lambda: got.empty_batches >= 2)

    async def owners(self, hub: Hub) -> dict[str, str]:
        """Partition -> owner id, from the checkpoint store (the SDK keeps ownership private)."""
        found = await hub.store.list_ownership(namespace_of(hub), hub.name, hub.consumer_group)
        return {o["partition_id"]: o["owner_id"] for o in found if o["owner_id"]}

    async def test_two_consumers_split_the_partitions_and_one_takes_over(self, hub: Hub) -> None:
        first, second = await hub.make_consumer(), await hub.make_consumer()
        async with consuming(first, starting_position="-1"):
            async with consuming(second, starting_position="-1"):
                await eventually(
                    lambda: self._split_evenly(hub), wait=30, what="two owners, half each"
                )
            await eventually(
                lambda: self._one_owner_of_all(hub), wait=30, what="one owner of every partition"
            )

    async def _split_evenly(self, hub: Hub) -> bool:
        owners = await self.owners(hub)
        counts = [list(owners.values()).count(o) for o in set(owners.values())]
        return len(owners) == hub.partitions and counts == [hub.partitions // 2] * 2

    async def _one_owner_of_all(self, hub: Hub) -> bool:
        owners = await self.owners(hub)
        return len(owners) == hub.partitions and len(set(owners.values())) == 1

    async def _no_owner(self, hub: Hub) -> bool:
        return await self.owners(hub) == {}

    async def test_closing_releases_ownership(self, hub: Hub) -> None:
        # A longer balancing interval (close() waits out its sleep): with 0.3 s, a claim cycle running when close() starts
        # can write its claims after the release (seen on a loaded machine), which this case is
        # not about. The first cycle runs at once.
        consumer = await hub.make_consumer(load_balancing_interval=2)
        async with consuming(consumer, starting_position="-1") as got:
            await eventually(
                lambda: self._one_owner_of_all(hub), wait=30, what="every partition owned"
            )
            # azure-eventhub claims a partition in the store before it starts the partition's task;
            # a close() in between has no task to stop and releases nothing (the claim expires):
            # wait until the SDK created every partition's receiver (on_partition_initialize).
            await eventually(lambda: len(got.opened) == hub.partitions, wait=30,
                             what="every partition's receiver created")  # fmt: skip
        # close() releases each partition as its receiver closes; on a loaded machine the last
        # release can land just after close() returns.
        await eventually(lambda: self._no_owner(hub), wait=30, what="every partition released")

    async def test_hub_and_partition_properties(self, hub: Hub) -> None:
        # azure-eventhub aio/_client_base_async.py _get_eventhub_properties_async and
        # _get_partition_properties_async: what the SDK reads from the READ replies.
        key = uuid.uuid4().hex
        await send(hub, key, b"p")
        props = await hub.producer.get_eventhub_properties()
        assert props["eventhub_name"] == hub.name
        assert props["partition_ids"] == [str(n) for n in range(hub.partitions)]
        found = [await hub.producer.get_partition_properties(p) for p in props["partition_ids"]]
        assert all(p["eventhub_name"] == hub.name for p in found)
        busy = [p for p in found if not p["is_empty"]]
        assert busy
        assert all(
            p["last_enqueued_sequence_number"] >= p["beginning_sequence_number"] for p in busy
        )
        assert all(isinstance(p["last_enqueued_time_utc"], datetime) for p in busy)

    async def test_a_sequence_number_position_is_exclusive_unless_inclusive(self, hub: Hub) -> None:
        key = uuid.uuid4().hex
        await send(hub, key, *[f"{key}-{n}".encode() for n in range(3)])
        async with consuming(await hub.make_consumer(), starting_position="-1") as everything:
            await eventually(lambda: f"{key}-2".encode() in everything.bodies())
        (first,) = [e for e in everything.all() if b"".join(e.body) == f"{key}-0".encode()]
        partition = next(p for p, es in everything.events.items() if first in es)
        for inclusive, expected in ((False, [1, 2]), (True, [0, 1, 2])):
            got = await read_partition(
                hub, partition, first.sequence_number, inclusive=inclusive, until=f"{key}-2"
            )
            assert [b for b in got if b.startswith(key.encode())] == [
                f"{key}-{n}".encode() for n in expected
            ]

    async def test_a_start_past_the_partitions_end_is_refused(self, hub: Hub) -> None:
        # "Event Hubs features" (Event consumers, stream offsets and sequence numbers): a reader
        # starts at a sequence number or offset of an event; one past the partition's last
        # sequence number + 1 is refused with "The supplied sequence number '…' is invalid. The
        # last sequence number in the system is '…'" (the service's wording in client reports;
        # not on a documentation page), never taken as the end of the partition.
        key = uuid.uuid4().hex
        await send(hub, key, key.encode())
        partition = str(partition_for_key(key, hub.partitions))
        last = (await hub.producer.get_partition_properties(partition))[
            "last_enqueued_sequence_number"
        ]
        consumer = await hub.make_consumer(checkpoint_store=None)
        async with consuming(
            consumer, checkpoint=False, partition_id=partition, starting_position=last + 10,
            starting_position_inclusive=True,
        ) as got:  # fmt: skip
            await eventually(lambda: bool(got.errors), wait=20)
        assert got.all() == []
        assert any("sequence number" in str(error) for error in got.errors), got.errors

    async def test_an_offset_and_an_enqueued_time_are_positions(self, hub: Hub) -> None:
        key = uuid.uuid4().hex
        before = datetime.now(UTC) - timedelta(seconds=1)
        await send(hub, key, f"{key}-a".encode(), f"{key}-b".encode())
        async with consuming(await hub.make_consumer(), starting_position="-1") as everything:
            await eventually(lambda: f"{key}-b".encode() in everything.bodies())
        (first,) = [e for e in everything.all() if b"".join(e.body) == f"{key}-a".encode()]
        partition = next(p for p, es in everything.events.items() if first in es)
        by_offset = await read_partition(hub, partition, first.offset, until=f"{key}-b")
        assert f"{key}-a".encode() not in by_offset
        by_time = await read_partition(hub, partition, before, until=f"{key}-b")
        assert [b for b in by_time if b.startswith(key.encode())] == [
            f"{key}-a".encode(), f"{key}-b".encode(),
        ]  # fmt: skip

    async def test_a_large_event_crosses_several_frames_intact(self, hub: Hub) -> None:
        # ~900 KB: more than one AMQP frame each way (the emulator offers 256 KB frames).
        key = uuid.uuid4().hex
        big = key.encode() + bytes(range(256)) * 3500
        await send(hub, key, big)
        async with consuming(await hub.make_consumer(), starting_position="-1") as got:
            await eventually(lambda: big in got.bodies(), wait=20)

    async def test_a_batch_cannot_exceed_the_link_max_message_size(self, hub: Hub) -> None:
        # The producer sizes batches by the link's max-message-size (1 MB on Standard:
        # learn.microsoft.com/azure/event-hubs/event-hubs-quotas) and refuses a bigger max
        # (azure-eventhub aio/_producer_client_async.py create_batch).
        with pytest.raises(ValueError, match="Max message size"):
            await hub.producer.create_batch(max_size_in_bytes=1024 * 1024 + 1)
        batch = await hub.producer.create_batch()
        assert batch.max_size_in_bytes == 1024 * 1024

    async def test_a_higher_owner_level_takes_the_partition(self, hub: Hub) -> None:
        # Epoch semantics: learn.microsoft.com/azure/event-hubs/event-hubs-event-processor-host
        # ("Epoch"); the displaced receiver gets amqp:link:stolen, which the SDK reports to
        # on_error and closes the partition (azure-eventhub _consumer.py, check_link_stolen).
        low = await hub.make_consumer(checkpoint_store=None)
        high = await hub.make_consumer(checkpoint_store=None)
        async with consuming(
            low, partition_id="0", owner_level=1, starting_position="@latest"
        ) as a:
            await asyncio.sleep(1.0)  # let the first reader attach before the second takes over
            async with consuming(
                high, partition_id="0", owner_level=2, starting_position="@latest"
            ):
                await eventually(lambda: bool(a.errors), wait=20)
        assert a.errors

    async def test_a_token_for_one_hub_does_not_read_another_hubs_properties(
        self, hub: Hub
    ) -> None:
        # "Authorize access to Event Hubs resources using Shared Access Signatures": a token is
        # scoped to its resource URI (a hub, or the namespace root); the $management node serves
        # a request only for a hub its token reaches.
        if hub.other_hub is None:
            pytest.skip("no second hub named (EVENTFLOW_CONFORMANCE_EVENTHUBS_OTHER_HUB)")
        only_this = sas.with_signature(hub.connection_string, hub.name)
        async with AzureProducer.from_connection_string(
            only_this, eventhub_name=hub.name, retry_total=0
        ) as own:
            assert await own.get_partition_ids()
        async with AzureProducer.from_connection_string(
            only_this, eventhub_name=hub.other_hub, retry_total=0
        ) as other:
            with pytest.raises(AuthenticationError):
                await other.get_eventhub_properties()

    @pytest.mark.parametrize("retries", [0])
    async def test_a_wrong_key_is_an_authentication_error(self, hub: Hub, retries: int) -> None:
        wrong = hub.connection_string.replace("SharedAccessKey=", "SharedAccessKey=x")
        async with AzureProducer.from_connection_string(
            wrong, eventhub_name=hub.name, retry_total=retries
        ) as producer:
            with pytest.raises(AuthenticationError):
                await producer.get_partition_ids()


def namespace_of(hub: Hub) -> str:
    """The namespace the consumer names its checkpoint blobs with: the endpoint's host[:port]
    (checkpointstoreblobaio `_blobstoragecsaio.py`; the client's `_address.hostname`)."""
    endpoint = next(p for p in hub.connection_string.split(";") if p.startswith("Endpoint="))
    return endpoint.removeprefix("Endpoint=sb://").strip("/")


async def read_partition(
    hub: Hub, partition: str, position: Any, *, inclusive: bool = False, until: str
) -> list[bytes]:
    """The bodies one partition yields from `position` until `until` arrives (no checkpoints)."""
    consumer = await hub.make_consumer(checkpoint_store=None)
    async with consuming(
        consumer, checkpoint=False, partition_id=partition, starting_position=position,
        starting_position_inclusive=inclusive,
    ) as got:  # fmt: skip
        await eventually(lambda: until.encode() in got.bodies())
    return got.bodies()


def consumer_factory(
    connection_string: str, name: str, group: str, store: Any
) -> Callable[..., Awaitable[AzureConsumer]]:
    async def make_consumer(**overrides: Any) -> AzureConsumer:
        options: dict[str, Any] = {
            "consumer_group": group, "eventhub_name": name, "checkpoint_store": store,
            "load_balancing_interval": BALANCE_S,
        }  # fmt: skip
        options.update(overrides)
        return AzureConsumer.from_connection_string(connection_string, **options)

    return make_consumer


@asynccontextmanager
async def sdk_hub(
    connection_string: str, name: str, group: str, azurite: RunningServer
) -> AsyncIterator[Hub]:
    store = await blob_store(azurite.connection_string)
    try:
        async with AzureProducer.from_connection_string(
            connection_string, eventhub_name=name
        ) as producer:
            yield Hub(
                producer, consumer_factory(connection_string, name, group, store), store,
                connection_string, name, group, len(await producer.get_partition_ids()),
            )  # fmt: skip
    finally:
        await store.close()


class TestMessagingEmulator(EventHubsConformance):
    backend = "the eventflow messaging emulator"

    @pytest.fixture
    async def hub(
        self, messaging_emulator_server: RunningMessagingEmulator, azurite_server: RunningServer
    ) -> AsyncIterator[Hub]:
        # emulators/eventhubs.json: hub "conformance", 4 partitions, consumer group "conformance".
        async with sdk_hub(
            messaging_emulator_server.connection_string,
            "conformance",
            "conformance",
            azurite_server,
        ) as hub:
            hub.emulator = messaging_emulator_server
            hub.other_hub = "orders"
            yield hub

    async def test_a_stolen_partition_reaches_on_error(self, hub: Hub) -> None:
        # The admin endpoint detaches the reader with amqp:link:stolen, as a higher owner level
        # would; the processor reports it to on_error and closes the partition as
        # OWNERSHIP_LOST (azure-eventhub aio/_eventprocessor/event_processor.py _receive).
        assert hub.emulator is not None
        consumer = await hub.make_consumer()
        async with consuming(consumer, starting_position="@latest") as got:
            admin = hub.emulator.admin

            async def steal() -> bool:
                # The reader attaches a moment after the claim: steal once it is there.
                stolen = await asyncio.to_thread(
                    admin.steal_partition, hub.name, "0", hub.consumer_group
                )
                return stolen == 1

            await eventually(steal, wait=30, what="a reader on partition 0 to steal from")
            await eventually(lambda: bool(got.errors), wait=20)
        assert any(reason == CloseReason.OWNERSHIP_LOST for p, reason in got.closed if p == "0")

    async def test_last_enqueued_event_properties_are_tracked(self, hub: Hub) -> None:
        # track_last_enqueued_event_properties asks for com.microsoft:enable-receiver-runtime-metric;
        # each delivery then carries the partition's last enqueued event (azure-eventhub
        # _utils.py get_last_enqueued_event_properties).
        key = uuid.uuid4().hex
        await send(hub, key, key.encode(), b"after")
        partition = str(partition_for_key(key, hub.partitions))
        consumer = await hub.make_consumer(checkpoint_store=None)
        seen: list[dict[str, Any]] = []

        async def on_event(context: Any, event: Any) -> None:
            if event is not None and b"".join(event.body) == key.encode():
                seen.append(context.last_enqueued_event_properties)

        task = asyncio.create_task(
            consumer.receive(
                on_event, partition_id=partition, starting_position="-1",
                track_last_enqueued_event_properties=True,
            )
        )  # fmt: skip
        try:
            await eventually(lambda: bool(seen), wait=20)
        finally:
            await consumer.close()
            await task
        props = await hub.producer.get_partition_properties(partition)
        assert seen[0]["sequence_number"] >= props["last_enqueued_sequence_number"] - 1
        assert seen[0]["offset"] is not None

    async def test_a_partition_key_lands_where_the_sdk_predicts(self, hub: Hub) -> None:
        # The emulator routes keys with the hash the SDK's buffered producer uses to predict the
        # service (azure-eventhub _buffered_producer/_partition_resolver.py); see hashing.py.
        key = uuid.uuid4().hex
        await send(hub, key, key.encode())
        expected = str(partition_for_key(key, hub.partitions))
        got = await read_partition(hub, expected, "-1", until=key)
        assert key.encode() in got

    async def test_sending_keeps_going_through_a_dropped_connection(self, hub: Hub) -> None:
        # A dropped connection is retried by the SDK (retry_total default 3) before the
        # application sees an error (azure-eventhub aio/_producer_async.py _send_event_data_with_retry).
        assert hub.emulator is not None
        await send(hub, "k", b"before")
        await asyncio.to_thread(hub.emulator.admin.drop_connections)
        started = time.monotonic()
        await send(hub, "k", b"after")
        assert time.monotonic() - started < 10


class TestEmulatorOrAzure(EventHubsConformance):
    backend = "the Event Hubs emulator or Azure"

    @pytest.fixture
    async def hub(self, azurite_server: RunningServer) -> AsyncIterator[Hub]:
        connection_string = setting_or_skip("EVENTFLOW_CONFORMANCE_EVENTHUBS_CONNECTION_STRING")
        name = setting_or_skip("EVENTFLOW_CONFORMANCE_EVENTHUBS_HUB")
        async with sdk_hub(connection_string, name, "$Default", azurite_server) as hub:
            hub.other_hub = os.environ.get("EVENTFLOW_CONFORMANCE_EVENTHUBS_OTHER_HUB")
            yield hub
