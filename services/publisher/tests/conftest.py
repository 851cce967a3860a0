"""Fixtures: a local environment with an orders container, a lease container, and helpers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from azure.cosmos import PartitionKey

from eventflow_contracts import OrderItemAdded, OrderLine, new_event, to_json_dict
from eventflow_local import LocalEnvironment
from eventflow_local.cosmos import CosmosClient
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
    environment: LocalEnvironment
    client: CosmosClient
    orders: Any
    leases_container: Any

    def feed(self) -> CosmosChangeFeed:
        return CosmosChangeFeed(self.orders)

    async def lease_store(self, name: str = "publisher") -> CosmosLeaseStore:
        return CosmosLeaseStore(
            self.leases_container, f"{name}:{await self.feed().identity()}", lock_retry=0.05
        )

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


async def eventually(
    check: Callable[[], bool], wait: float = 15.0, what: str = "condition"
) -> None:
    deadline = time.monotonic() + wait
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {wait}s")
        await asyncio.sleep(0.02)


async def create_containers(environment: LocalEnvironment, feed_ranges: int) -> None:
    async with CosmosClient(environment, feed_range_count=feed_ranges) as client:
        database = await client.create_database_if_not_exists("eventflow")
        await database.create_container_if_not_exists(
            "orders", partition_key=PartitionKey("/order_id"), default_ttl=-1
        )
        await database.create_container_if_not_exists(
            "leases", partition_key=PartitionKey("/id"), default_ttl=-1
        )


@pytest.fixture
def feed_ranges() -> int:
    return 4


@pytest.fixture
async def store(tmp_path: Path, feed_ranges: int) -> AsyncIterator[Store]:
    environment = LocalEnvironment(tmp_path / "local")
    await create_containers(environment, feed_ranges)
    async with CosmosClient(environment) as client:
        database = client.get_database_client("eventflow")
        yield Store(
            environment,
            client,
            database.get_container_client("orders"),
            database.get_container_client("leases"),
        )
