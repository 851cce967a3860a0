"""Fixtures for the consumer's tests: events as the subscriber forwards them, a local inbox, and a
database of its own on the Cosmos DB emulator."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from azure.cosmos.aio import CosmosClient
from azure.servicebus import ServiceBusMessage

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
from eventflow_local import LocalEnvironment
from eventflow_local.servicebus import ServiceBusAdministrationClient

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


@pytest.fixture
async def environment(tmp_path: Path, cosmos_database: CosmosDatabase) -> LocalEnvironment:
    environment = LocalEnvironment(tmp_path / "local")
    async with ServiceBusAdministrationClient(environment) as admin:
        await admin.create_queue(
            "inbox", requires_session=True, requires_duplicate_detection=True,
            duplicate_detection_history_time_window=timedelta(minutes=10), max_delivery_count=3,
            lock_duration=timedelta(seconds=2),
        )  # fmt: skip
    return environment
