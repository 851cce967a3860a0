"""Helpers for the subscriber's tests: events as the publisher writes them, the backends (the
project's messaging emulator for Event Hubs + Service Bus, Azurite for the blob checkpoints) and
the real SDKs' clients on them.

Each test that needs the backends gets a messaging emulator of its own (a start takes well under a
second), with the entities written below, so the hub's retention and the inbox never carry another
test's events; Azurite is shared by the session and each test checkpoints into a container of its
own."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

import orjson
import pytest
from azure.eventhub import EventData
from azure.eventhub.aio import EventHubConsumerClient, EventHubProducerClient
from azure.eventhub.extensions.checkpointstoreblobaio import BlobCheckpointStore
from azure.servicebus import NEXT_AVAILABLE_SESSION
from azure.servicebus.aio import ServiceBusClient
from azure.servicebus.exceptions import OperationTimeoutError
from azure.storage.blob.aio import BlobServiceClient

from eventflow_contracts import OrderCancelled, OrderItemAdded, OrderLine, encode_event, new_event
from eventflow_contracts.lanes import belongs
from eventflow_emulators.messaging.testing import RunningMessagingEmulator, messaging_emulator

HUB, GROUP, INBOX, PARTITIONS = "orders", "inbox-subscriber", "inbox", 4

# The entities the subscriber uses, in the official emulators' config format: the hub as Azure has
# it (4 partitions, the subscriber's consumer group) and the inbox queue the consumer reads
# (sessions, duplicate detection: the subscriber's replays after a crash rely on it).
EVENTHUBS_CONFIG = {"UserConfig": {"NamespaceConfig": [{"Type": "EventHub", "Name": "emulatorNs1", "Entities": [
    {"Name": HUB, "PartitionCount": PARTITIONS, "ConsumerGroups": [{"Name": GROUP}]},
]}], "LoggingConfig": {"Type": "Console"}}}  # fmt: skip
SERVICEBUS_CONFIG = {"UserConfig": {"Namespaces": [{"Name": "sbemulatorns", "Queues": [
    {"Name": INBOX, "Properties": {
        "RequiresSession": True, "RequiresDuplicateDetection": True, "DuplicateDetectionHistoryTimeWindow": "PT10M",
        "MaxDeliveryCount": 10, "LockDuration": "PT30S", "DefaultMessageTimeToLive": "PT1H",
        "DeadLetteringOnMessageExpiration": True, "ForwardTo": "", "ForwardDeadLetteredMessagesTo": "",
    }},
], "Topics": []}], "Logging": {"Type": "Console"}}}  # fmt: skip


class BlobServer(Protocol):
    """What the tests use of the `azurite_server` fixture (Azurite's blob service on a free port)."""

    connection_string: str


@dataclass(frozen=True)
class Backends:
    messaging: RunningMessagingEmulator
    storage_connection_string: str
    checkpoint_container: str

    @property
    def connection_string(self) -> str:
        return self.messaging.connection_string

    @property
    def namespace(self) -> str:
        """The fully qualified namespace the SDK names checkpoints and ownership by: host:port."""
        return f"127.0.0.1:{self.messaging.port}"

    def checkpoint_store(self) -> BlobCheckpointStore:
        return BlobCheckpointStore.from_connection_string(
            self.storage_connection_string, container_name=self.checkpoint_container
        )

    def consumer(self, store: BlobCheckpointStore, **options: Any) -> EventHubConsumerClient:
        return EventHubConsumerClient.from_connection_string(
            self.connection_string, consumer_group=GROUP, eventhub_name=HUB, checkpoint_store=store,
            **options,
        )  # fmt: skip

    def service_bus(self, **options: Any) -> ServiceBusClient:
        return ServiceBusClient.from_connection_string(self.connection_string, **options)

    def subscriber_settings(self) -> dict[str, str]:
        """The subscriber's environment for these backends (mode `emulator`)."""
        return {
            "SUBSCRIBER_MODE": "emulator",
            "SUBSCRIBER_EVENTHUBS_CONNECTION_STRING": self.connection_string,
            "SUBSCRIBER_SERVICEBUS_CONNECTION_STRING": self.connection_string,
            "SUBSCRIBER_STORAGE_CONNECTION_STRING": self.storage_connection_string,
            "SUBSCRIBER_CHECKPOINT_CONTAINER": self.checkpoint_container,
            "SUBSCRIBER_EVENTHUB_NAME": HUB,
            "SUBSCRIBER_CONSUMER_GROUP": GROUP,
            "SUBSCRIBER_INBOX_QUEUE": INBOX,
        }


def write_configs(folder: Path) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    eventhubs, servicebus = folder / "eventhubs.json", folder / "servicebus.json"
    eventhubs.write_text(json.dumps(EVENTHUBS_CONFIG))
    servicebus.write_text(json.dumps(SERVICEBUS_CONFIG))
    return eventhubs, servicebus


@pytest.fixture
def messaging(tmp_path: Path) -> Iterator[RunningMessagingEmulator]:
    """A messaging emulator of this test's own: an empty hub and an empty inbox."""
    eventhubs, servicebus = write_configs(tmp_path / "configs")
    with messaging_emulator(
        tmp_path / "messaging", eventhubs_config=eventhubs, servicebus_config=servicebus
    ) as emulator:
        yield emulator


@pytest.fixture
async def backends(
    messaging: RunningMessagingEmulator, azurite_server: BlobServer
) -> AsyncIterator[Backends]:
    """The test's own emulator, and a checkpoint container of its own on the session's Azurite."""
    container = f"checkpoints-{uuid.uuid4().hex[:12]}"
    service = BlobServiceClient.from_connection_string(azurite_server.connection_string)
    async with service:
        await service.create_container(container)
        yield Backends(messaging, azurite_server.connection_string, container)
        await service.delete_container(container)


def event_bytes(order_id: str, sequence: int, *, cancelled: bool = False) -> bytes:
    line = OrderLine(sku="SKU-1", quantity=1, unit_price=Decimal("1.00"))
    data = (
        OrderCancelled(order_id=order_id, reason="r")
        if cancelled
        else OrderItemAdded(order_id=order_id, line=line)
    )
    return encode_event(new_event(data, source="/test", sequence=sequence))


async def publish(backends: Backends, bodies: list[tuple[str, bytes]]) -> None:
    """(partition key, body) pairs onto the `orders` hub, one batch per event, in order."""
    producer = EventHubProducerClient.from_connection_string(
        backends.connection_string, eventhub_name=HUB
    )
    async with producer:
        for key, body in bodies:
            batch = await producer.create_batch(partition_key=key)
            batch.add(EventData(body))
            await producer.send_batch(batch)


def order_of(message: Any) -> str:
    """The order a message's event belongs to, checked against its session (its lane)."""
    session_id = str(message.session_id)
    if (message.application_properties or {}).get(b"eventflow_unroutable"):
        return session_id
    order_id = str(orjson.loads(b"".join(message.body))["partitionkey"])
    assert belongs(order_id, session_id), f"{order_id} travels in {session_id}"
    return order_id


async def read_inbox(
    backends: Backends, queue: str = INBOX, readers: int = 8
) -> dict[str, list[Any]]:
    """Every message, completed, by order (markers by their session id), in session order. Orders
    share lanes (sessions), so each message is checked to travel in its order's lane and grouped
    by its order: a session keeps its order's events in sequence. `readers` session receivers take
    the next available session side by side until none is left."""
    sessions: dict[str, list[Any]] = {}

    async def reader(client: ServiceBusClient) -> None:
        while True:
            try:
                receiver = client.get_queue_receiver(
                    queue, session_id=NEXT_AVAILABLE_SESSION, max_wait_time=1
                )
                await receiver.__aenter__()
            except OperationTimeoutError:
                return
            async with receiver:
                while messages := await receiver.receive_messages(
                    max_message_count=100, max_wait_time=0.5
                ):
                    for message in messages:
                        sessions.setdefault(order_of(message), []).append(message)
                        await receiver.complete_message(message)

    # retry_total=0: the SDK retries the accept of a next available session that timed out (three
    # times, with back-off), which would make each final "no session left" answer take ~20 s.
    async with backends.service_bus(retry_total=0) as client:
        await asyncio.gather(*(reader(client) for _ in range(readers)))
    return sessions


async def checkpointed(backends: Backends, store: BlobCheckpointStore) -> int:
    """Events checkpointed over every partition (sequence numbers start at 0 on each)."""
    listed = await store.list_checkpoints(backends.namespace, HUB, GROUP)
    return sum(checkpoint["sequence_number"] + 1 for checkpoint in listed)
