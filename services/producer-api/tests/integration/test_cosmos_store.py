"""CosmosOrderStore through the local stand-in and through the real azure-cosmos SDK against
@vercel/cosmosdb-server (create path only: that server's batches are not atomic and accept only
create operations, so updates and rollbacks are covered by the stand-in alone)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, ClassVar

import orjson
import pytest
from azure.cosmos import PartitionKey
from azure.cosmos.aio import CosmosClient as AzureCosmosClient

from eventflow_contracts import OrderLine, decode_event, encode_event, evolve, new_event
from eventflow_contracts.orders_container import PARTITION_KEY_PATH
from eventflow_emulators.conformance import BackendCases
from eventflow_emulators.cosmos.testing import RunningCosmosEmulator
from eventflow_emulators.servers import RunningServer
from eventflow_producer.adapters.cosmos_event_store import CosmosEventStore
from eventflow_producer.adapters.cosmos_store import CosmosOrderStore
from eventflow_producer.domain import add_item, open_order
from eventflow_producer.ports import ConcurrentChangeError, IdempotencyRecord, OrderExistsError

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
LINE = OrderLine(sku="SKU-1", quantity=3, unit_price=Decimal("2.50"))
UPDATES = "cosmosdb-server batches accept only create operations"


def opened(order_id: str | None = None) -> Any:
    order, data = open_order(order_id or uuid.uuid4().hex, "c-1", "EUR", (LINE,), NOW)
    return order, new_event(data, source="/test", sequence=order.version, time=NOW)


class OrderStoreCases(BackendCases):
    @pytest.fixture
    def store(self, container: Any) -> CosmosOrderStore:
        return CosmosOrderStore(container, event_ttl_seconds=3600, idempotency_ttl_seconds=3600)

    async def test_a_created_order_loads_with_its_events(self, store: CosmosOrderStore) -> None:
        order, event = opened()
        await store.create(order, [event], None)
        stored = await store.load(order.id)
        assert stored is not None
        assert stored.order == order
        (raw,) = await store.events(order.id)
        assert decode_event(_bytes(raw)) == decode_event(encode_event(event))

    async def test_a_second_create_of_the_same_id_writes_nothing(
        self, store: CosmosOrderStore
    ) -> None:
        order, event = opened()
        await store.create(order, [event], IdempotencyRecord("hash-1", order))
        again, other_event = opened(order.id)
        with pytest.raises(OrderExistsError):
            await store.create(again, [other_event], IdempotencyRecord("hash-2", again))
        record = await store.idempotency_record(order.id)
        assert record is not None
        assert (record.request_hash, record.order) == ("hash-1", order)
        assert [e["id"] for e in await store.events(order.id)] == [event.id]

    async def test_a_missing_order_loads_as_none(self, store: CosmosOrderStore) -> None:
        assert await store.load("nope") is None
        assert await store.idempotency_record("nope") is None

    async def test_an_update_with_the_token_appends_its_event(
        self, store: CosmosOrderStore
    ) -> None:
        order, event = opened()
        token = await store.create(order, [event], None)
        changed, data = add_item(order, LINE, NOW)
        await store.update(changed, token, [new_event(data, source="/t", sequence=changed.version)])
        stored = await store.load(order.id)
        assert stored is not None
        assert stored.order.version == 2
        assert [e["sequence"] for e in await store.events(order.id)] == [
            "00000000000000000001",
            "00000000000000000002",
        ]

    async def test_an_update_with_a_stale_token_writes_nothing(
        self, store: CosmosOrderStore
    ) -> None:
        order, event = opened()
        token = await store.create(order, [event], None)
        first, data = add_item(order, LINE, NOW)
        await store.update(first, token, [new_event(data, source="/t", sequence=first.version)])
        second, data = add_item(order, LINE, NOW)
        with pytest.raises(ConcurrentChangeError):
            await store.update(
                second, token, [new_event(data, source="/t", sequence=second.version)]
            )
        assert len(await store.events(order.id)) == 2

    async def test_event_documents_carry_the_outbox_ttl(
        self, store: CosmosOrderStore, container: Any
    ) -> None:
        order, event = opened()
        await store.create(order, [event], None)
        document = await container.read_item(
            f"{order.id}:event:00000000000000000001", partition_key=order.id
        )
        assert (document["ttl"], document["kind"], document["event_id"]) == (
            3600,
            "event",
            event.id,
        )

    async def test_the_store_answers_its_check(self, store: CosmosOrderStore) -> None:
        await store.check()


def _bytes(document: dict[str, Any]) -> bytes:
    return orjson.dumps(document)


@asynccontextmanager
async def new_container(endpoint: str, key: str) -> AsyncIterator[Any]:
    """A fresh orders container (TTL on, no default expiry) through the real SDK."""
    async with AzureCosmosClient(endpoint, credential=key) as client:
        database = await client.create_database_if_not_exists("eventflow")
        yield await database.create_container_if_not_exists(
            id=f"orders-{uuid.uuid4().hex[:8]}", partition_key=PartitionKey(path=PARTITION_KEY_PATH),
            default_ttl=-1,
        )  # fmt: skip


class TestOnCosmosEmulator(OrderStoreCases):
    backend = "the Cosmos DB emulator"

    @pytest.fixture
    async def container(self, cosmos_emulator_server: RunningCosmosEmulator) -> AsyncIterator[Any]:
        async with new_container(cosmos_emulator_server.endpoint, cosmos_emulator_server.key) as c:
            yield c


class TestOnCosmosDbServer(OrderStoreCases):
    backend = "@vercel/cosmosdb-server"
    not_applicable: ClassVar[dict[str, str]] = {
        "test_an_update_with_the_token_appends_its_event": UPDATES,
        "test_an_update_with_a_stale_token_writes_nothing": UPDATES,
    }

    @pytest.fixture
    async def container(self, cosmos_server: RunningServer) -> AsyncIterator[Any]:
        async with new_container(cosmos_server.endpoint, cosmos_server.key) as c:
            yield c


class TestEventStoreOnCosmosEmulator:
    """The event-first store: events only, never expiring; reads fold the events after the read
    model's version, so they are current whether the read model is missing, behind or current."""

    @pytest.fixture
    async def container(self, cosmos_emulator_server: RunningCosmosEmulator) -> AsyncIterator[Any]:
        async with new_container(cosmos_emulator_server.endpoint, cosmos_emulator_server.key) as c:
            yield c

    @pytest.fixture
    def store(self, container: Any) -> CosmosEventStore:
        return CosmosEventStore(container, idempotency_ttl_seconds=3600)

    async def test_a_change_appends_events_without_ttl_and_writes_no_order(
        self, store: CosmosEventStore, container: Any
    ) -> None:
        order, event = opened()
        token = await store.create(order, [event], IdempotencyRecord("h", order))
        changed, data = add_item(order, LINE, NOW)
        await store.update(changed, token, [new_event(data, source="/t", sequence=2, time=NOW)])
        documents = [d async for d in container.query_items(
            "SELECT * FROM c WHERE c.order_id = @o", parameters=[{"name": "@o", "value": order.id}],
            partition_key=order.id)]  # fmt: skip
        kinds = sorted((d["kind"], "ttl" in d) for d in documents)
        assert kinds == [("event", False), ("event", False), ("idempotency", True)]
        stored = await store.load(order.id)
        assert stored is not None
        assert (stored.order, stored.token) == (changed, "2")

    async def test_a_taken_sequence_is_a_concurrent_change_and_a_taken_id_exists(
        self, store: CosmosEventStore
    ) -> None:
        order, event = opened()
        token = await store.create(order, [event], None)
        first, data = add_item(order, LINE, NOW)
        await store.update(first, token, [new_event(data, source="/t", sequence=2, time=NOW)])
        with pytest.raises(ConcurrentChangeError):
            await store.update(first, token, [new_event(data, source="/t", sequence=2, time=NOW)])
        with pytest.raises(OrderExistsError):
            await store.create(*opened(order.id)[:1], [opened(order.id)[1]], None)
        assert [e["sequence"] for e in await store.events(order.id)] == [
            "00000000000000000001",
            "00000000000000000002",
        ]

    async def test_a_read_folds_what_the_read_model_has_not_absorbed(
        self, store: CosmosEventStore, container: Any
    ) -> None:
        order, event = opened()
        token = await store.create(order, [event], None)
        # The read model as the maintainer writes it, at version 1; then two more events.
        created = evolve(None, decode_event(encode_event(event)))
        await container.upsert_item(
            {**created.model_dump(mode="json"), "id": order.id, "kind": "order"}
        )
        current = order
        for _ in range(2):
            current, data = add_item(current, LINE, NOW)
            step = new_event(data, source="/t", sequence=current.version, time=NOW)
            token = await store.update(current, token, [step])
        stored = await store.load(order.id)
        assert stored is not None
        assert (stored.order, stored.token) == (current, "3")
        assert await store.load("nope") is None
