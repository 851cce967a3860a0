"""Fixtures: an orders container and a lease container on the Cosmos DB emulator (the real SDK),
and helpers."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from azure.cosmos import PartitionKey
from azure.cosmos.aio import CosmosClient

from eventflow_contracts import OrderItemAdded, OrderLine, new_event, to_json_dict
from eventflow_emulators.cosmos.testing import RunningCosmosEmulator, cosmos_emulator
from eventflow_publisher.adapters.cosmos_changefeed import CosmosChangeFeed, CosmosLeaseStore
from eventflow_publisher.changefeed import LeaseContext


@dataclass
class Collector:
    """A handler that records every page it is given."""

    pages: list[list[dict[str, Any]]] = field(default_factory=list)
    fail_next: int = 0

    async def __call__(self, context: LeaseContext, documents: Sequence[dict[str, Any]]) -> None:
        self.pages.append(list(documents))
        if self.fail_next:
            self.fail_next -= 1
            raise RuntimeError("the handler failed")

    def ids(self) -> list[str]:
        return [document["id"] for page in self.pages for document in page]


@dataclass
class Store:
    """A database of its own on the Cosmos DB emulator, through the real SDK: the monitored
    `orders` container and the `leases` container."""

    cosmos: RunningCosmosEmulator
    database: str
    client: CosmosClient
    orders: Any
    leases_container: Any

    def feed(self) -> CosmosChangeFeed:
        return CosmosChangeFeed(self.orders)

    async def lease_store(self, name: str = "publisher", **options: Any) -> CosmosLeaseStore:
        return CosmosLeaseStore(
            self.leases_container,
            f"{name}:{await self.feed().identity()}",
            lock_retry=0.05,
            **options,
        )

    def settings(self) -> dict[str, str]:
        """The environment that points a publisher process at this store."""
        return {"PUBLISHER_COSMOS_ENDPOINT": self.cosmos.endpoint, "PUBLISHER_COSMOS_KEY": self.cosmos.key,
                "PUBLISHER_DATABASE": self.database}  # fmt: skip

    async def write_events(self, orders: int, per_order: int, start: int = 1) -> list[str]:
        """Outbox event documents like the producer writes; returns their ids in write order."""
        ids = []
        for sequence in range(start, start + per_order):
            for n in range(orders):
                order_id = f"order-{n}"
                data = OrderItemAdded(
                    order_id=order_id,
                    line=OrderLine(sku="SKU-1", quantity=1, unit_price=Decimal("1.00")),
                )
                event = new_event(data, source="/test", sequence=sequence)
                document = {"id": f"{order_id}:event:{sequence:020d}", "order_id": order_id, "kind": "event",
                            "event": to_json_dict(event)}  # fmt: skip
                await self.orders.create_item(document)
                ids.append(document["id"])
        return ids


@pytest.fixture
def feed_ranges() -> int:
    return 4


@pytest.fixture
def cosmos(
    request: pytest.FixtureRequest, feed_ranges: int, tmp_path: Path
) -> Iterator[RunningCosmosEmulator]:
    """The session's emulator (4 partition key ranges), or one of its own for another count."""
    if feed_ranges == 4:
        yield request.getfixturevalue("cosmos_emulator_server")
        return
    with cosmos_emulator(tmp_path / "cosmos", partition_key_ranges=feed_ranges) as emulator:
        yield emulator


@pytest.fixture
async def store(cosmos: RunningCosmosEmulator) -> AsyncIterator[Store]:
    name = f"publisher-{uuid.uuid4().hex[:10]}"
    async with CosmosClient(cosmos.endpoint, credential=cosmos.key) as client:
        database = await client.create_database(name)
        orders = await database.create_container(
            "orders", partition_key=PartitionKey("/order_id"), default_ttl=-1
        )
        leases = await database.create_container(
            "leases", partition_key=PartitionKey("/id"), default_ttl=-1
        )
        yield Store(cosmos, name, client, orders, leases)
        await client.delete_database(name)
