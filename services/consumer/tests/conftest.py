"""Fixtures for the consumer's tests: events as the subscriber forwards them, an inbox queue of the
test's own on a messaging emulator (the real azure-servicebus SDK at the wire), and a database of its
own on the Cosmos DB emulator."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
from azure.cosmos.aio import CosmosClient
from azure.servicebus import ServiceBusMessage, ServiceBusMessageState, ServiceBusSubQueue
from azure.servicebus.aio import ServiceBusClient
from azure.servicebus.exceptions import OperationTimeoutError, SessionCannotBeLockedError
from pydantic import SecretStr

from eventflow_consumer.settings import Settings
from eventflow_contracts import (
    OrderCancelled,
    OrderCreated,
    OrderItemAdded,
    OrderLine,
    OrderSubmitted,
    encode_event,
    new_event,
)
from eventflow_emulators.cosmos.testing import RunningCosmosEmulator
from eventflow_emulators.messaging.admin import MessagingEmulatorAdmin
from eventflow_emulators.messaging.testing import RunningMessagingEmulator, messaging_emulator

LINE = OrderLine(sku="SKU-1", quantity=2, unit_price=Decimal("5.00"))


def order_events(order_id: str) -> list[bytes]:
    """Created, item added, submitted, cancelled: sequences 1..4."""
    data: list[Any] = [
        OrderCreated(
            order_id=order_id,
            customer_id="c",
            lines=(LINE,),
            currency="EUR",
            total=Decimal("10.00"),
        ),
        OrderItemAdded(order_id=order_id, line=LINE),
        OrderSubmitted(order_id=order_id, currency="EUR", total=Decimal("20.00"), line_count=2),
        OrderCancelled(order_id=order_id, reason="changed my mind"),
    ]
    return [
        encode_event(new_event(d, source="/test", sequence=n)) for n, d in enumerate(data, start=1)
    ]


def item_added(order_id: str, sequence: int) -> bytes:
    """An OrderItemAdded at any sequence (for gaps and late events)."""
    return encode_event(
        new_event(OrderItemAdded(order_id=order_id, line=LINE), source="/test", sequence=sequence)
    )


def inbox_message(
    body: bytes, session_id: str, message_id: str | None = None, **properties: Any
) -> ServiceBusMessage:
    import orjson  # noqa: PLC0415

    try:
        event_id = orjson.loads(body)["id"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        event_id = None
    return ServiceBusMessage(body, session_id=session_id, message_id=message_id or event_id or None,
                             application_properties=properties or None)  # fmt: skip


@dataclass(frozen=True)
class CosmosDatabase:
    """A database of the test's own on the session's Cosmos DB emulator."""

    endpoint: str
    key: str
    name: str

    def client(self) -> CosmosClient:
        return CosmosClient(self.endpoint, credential=self.key)


@pytest.fixture
def cosmos_database(
    cosmos_emulator_server: RunningCosmosEmulator, monkeypatch: pytest.MonkeyPatch
) -> CosmosDatabase:
    """Points every consumer started by the test (in-process Settings or a child process, both
    read the environment) at the emulator, in a database of the test's own."""
    database = CosmosDatabase(
        cosmos_emulator_server.endpoint,
        cosmos_emulator_server.key,
        f"consumer-{uuid.uuid4().hex[:10]}",
    )
    monkeypatch.setenv("CONSUMER_COSMOS_ENDPOINT", database.endpoint)
    monkeypatch.setenv("CONSUMER_COSMOS_KEY", database.key)
    monkeypatch.setenv("CONSUMER_DATABASE", database.name)
    return database


# The inbox as these tests want it: the production queue's properties, except a 2 s lock and 3
# deliveries, so that lock expiry and MaxDeliveryCountExceeded happen within a test's time.
INBOX_PROPERTIES = {
    "RequiresSession": True,
    "RequiresDuplicateDetection": True,
    "DuplicateDetectionHistoryTimeWindow": "PT10M",
    "MaxDeliveryCount": 3,
    "LockDuration": "PT2S",
    "DefaultMessageTimeToLive": "PT1H",
    "DeadLetteringOnMessageExpiration": True,
    "ForwardTo": "",
    "ForwardDeadLetteredMessagesTo": "",
}
INBOX_QUEUES = 64  # one per test of the session; a test takes the next unused one


@pytest.fixture(scope="session")
def consumer_messaging(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[RunningMessagingEmulator, Iterator[str]]]:
    """A messaging emulator of the consumer's tests (their inbox properties differ from the
    repository's config), with a pool of identical inbox queues, and the names not yet taken."""
    folder = tmp_path_factory.mktemp("consumer-messaging")
    queues = [
        {"Name": f"inbox-{n:02d}", "Properties": INBOX_PROPERTIES} for n in range(INBOX_QUEUES)
    ]
    config = {"UserConfig": {"Namespaces": [{"Name": "sbemulatorns", "Queues": queues, "Topics": []}],
                             "Logging": {"Type": "Console"}}}  # fmt: skip
    (folder / "servicebus.json").write_text(json.dumps(config))
    with messaging_emulator(
        folder / "data", servicebus_config=folder / "servicebus.json"
    ) as emulator:
        yield emulator, iter(str(q["Name"]) for q in queues)


@dataclass(frozen=True)
class Backends:
    """An inbox queue of the test's own on the messaging emulator and a database of its own on the
    Cosmos DB emulator, with the consumer's settings for them and helpers on the real SDK."""

    connection_string: str
    queue: str
    admin: MessagingEmulatorAdmin
    cosmos: CosmosDatabase

    def settings(self, **changes: Any) -> Settings:
        return Settings(
            mode="emulator", servicebus_connection_string=SecretStr(self.connection_string),
            inbox_queue=self.queue, cosmos_endpoint=self.cosmos.endpoint, cosmos_key=SecretStr(self.cosmos.key),
            database=self.cosmos.name, **changes,
        )  # fmt: skip

    def environment(self) -> dict[str, str]:
        """The same settings for a child process or the admin CLI (read from the environment)."""
        return {"CONSUMER_MODE": "emulator", "CONSUMER_SERVICEBUS_CONNECTION_STRING": self.connection_string,
                "CONSUMER_INBOX_QUEUE": self.queue, "CONSUMER_COSMOS_ENDPOINT": self.cosmos.endpoint,
                "CONSUMER_COSMOS_KEY": self.cosmos.key, "CONSUMER_DATABASE": self.cosmos.name}  # fmt: skip

    @asynccontextmanager
    async def client(self, **options: Any) -> AsyncIterator[ServiceBusClient]:
        async with ServiceBusClient.from_connection_string(
            self.connection_string, **options
        ) as client:
            yield client

    async def send(self, *messages: ServiceBusMessage) -> None:
        async with self.client() as client, client.get_queue_sender(self.queue) as sender:
            await sender.send_messages(list(messages))

    async def dead_letters(self) -> list[Any]:
        """Every dead-letter, paged through by sequence number (peek neither locks nor counts)."""
        async with (
            self.client() as client,
            client.get_queue_receiver(self.queue, sub_queue=ServiceBusSubQueue.DEAD_LETTER) as dlq,
        ):
            found: list[Any] = []
            while page := await dlq.peek_messages(
                max_message_count=100,
                sequence_number=(found[-1].sequence_number + 1) if found else 0,
            ):
                found.extend(page)
            return found

    async def has_dead_letters(self) -> bool:
        return bool(await self.dead_letters())

    async def settled(self, *session_ids: str) -> bool:
        """Whether none of these sessions has an active message left (deferred ones are not
        active): what the queue's active message count told, which no local client can read.
        A session receiver may peek only while it holds the session, so a session a consumer
        holds counts as not settled yet. No retries: a held session answers at once."""
        async with self.client(retry_total=0) as client:
            for session_id in session_ids:
                try:
                    async with client.get_queue_receiver(
                        self.queue, session_id=session_id, max_wait_time=1
                    ) as receiver:
                        start = 0
                        while page := await receiver.peek_messages(
                            max_message_count=100, sequence_number=start
                        ):
                            if any(m.state == ServiceBusMessageState.ACTIVE for m in page):
                                return False
                            start = (page[-1].sequence_number or 0) + 1
                except (SessionCannotBeLockedError, OperationTimeoutError):
                    return False
        return True


@pytest.fixture
def backends(
    consumer_messaging: tuple[RunningMessagingEmulator, Iterator[str]],
    cosmos_database: CosmosDatabase,
    monkeypatch: pytest.MonkeyPatch,
) -> Backends:
    """The test's own inbox queue and database; the environment points the admin CLI and child
    processes at them too."""
    emulator, queues = consumer_messaging
    queue = next(queues, None)
    assert queue is not None, f"more than {INBOX_QUEUES} tests took an inbox: raise INBOX_QUEUES"
    backends = Backends(emulator.connection_string, queue, emulator.admin, cosmos_database)
    for name, value in backends.environment().items():
        monkeypatch.setenv(name, value)
    return backends
