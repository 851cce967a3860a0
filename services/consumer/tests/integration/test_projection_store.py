"""CosmosProjectionStore through the real azure-cosmos SDK on the Cosmos DB emulator: the create
path and the replace path (transactional batches), reads, marks and the blocked-session records."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from azure.cosmos import PartitionKey
from azure.cosmos.aio import CosmosClient as AzureCosmosClient

from eventflow_consumer.adapters.cosmos_projection import PARTITION_KEY_PATH, CosmosProjectionStore
from eventflow_consumer.handling import AlreadyAppliedError
from eventflow_consumer.projection import apply
from eventflow_contracts import decode_event
from eventflow_emulators.cosmos.testing import RunningCosmosEmulator

from ..conftest import order_events  # type: ignore[import-not-found]


class TestOnCosmosEmulator:
    @pytest.fixture
    async def container(self, cosmos_emulator_server: RunningCosmosEmulator) -> AsyncIterator[Any]:
        async with AzureCosmosClient(
            cosmos_emulator_server.endpoint, credential=cosmos_emulator_server.key
        ) as client:
            database = await client.create_database_if_not_exists("eventflow")
            yield await database.create_container_if_not_exists(
                f"summaries-{uuid.uuid4().hex[:8]}",
                partition_key=PartitionKey(PARTITION_KEY_PATH),
                default_ttl=-1,
            )

    @pytest.fixture
    def store(self, container: Any) -> CosmosProjectionStore:
        return CosmosProjectionStore(container, mark_ttl_seconds=3600)

    async def test_a_first_event_creates_the_summary_and_its_mark_together(
        self, store: CosmosProjectionStore
    ) -> None:
        created = decode_event(order_events("o1")[0])
        await store.commit(apply(None, created), None, created.id)
        loaded = await store.load("o1")
        assert loaded is not None
        assert loaded[0].last_sequence == 1
        assert await store.has_mark("o1", created.id)
        assert not await store.has_mark("o1", "other")
        assert (await store.get("o1") or {})["status"] == "open"

    async def test_a_second_commit_of_one_event_is_already_applied(
        self, store: CosmosProjectionStore
    ) -> None:
        events = [decode_event(raw) for raw in order_events("o1")]
        summary = apply(None, events[0])
        await store.commit(summary, None, events[0].id)
        _, token = await store.load("o1") or (None, "")
        with pytest.raises(AlreadyAppliedError):
            await store.commit(summary, token, events[0].id)

    async def test_later_events_replace_the_summary_on_its_token(
        self, store: CosmosProjectionStore
    ) -> None:
        events = [decode_event(raw) for raw in order_events("o1")]
        summary = apply(None, events[0])
        await store.commit(summary, None, events[0].id)
        for event in events[1:]:
            loaded = await store.load("o1")
            assert loaded is not None
            await store.commit(apply(loaded[0], event), loaded[1], event.id)
        assert (await store.get("o1") or {})["status"] == "cancelled"

    async def test_a_skip_is_recorded_without_an_inbox_mark(
        self, store: CosmosProjectionStore
    ) -> None:
        created = decode_event(order_events("o2")[0])
        await store.commit(apply(None, created), None, created.id)
        loaded = await store.load("o2")
        assert loaded is not None
        await store.commit(loaded[0].skip(2), loaded[1], None)
        summary = await store.load("o2")
        assert summary is not None
        assert (summary[0].last_sequence, summary[0].skipped) == (2, (2,))
        assert await store.has_mark("o2", created.id)

    async def test_blocked_sessions_are_recorded_listed_and_cleared(
        self, store: CosmosProjectionStore
    ) -> None:
        await store.set_blocked("o7", "invalid-json: bad")
        (first,) = await store.list_blocked()
        await store.set_blocked("o7", "invalid-json: bad")  # a repair on a later accept
        await store.set_blocked("o7", "sequence-gap: blocked again by a replay")
        (record,) = await store.list_blocked()
        assert (record["order_id"], record["reason"]) == (
            "o7",
            "sequence-gap: blocked again by a replay",
        )
        assert record["blocked_at"] == first["blocked_at"]
        assert await store.is_blocked("o7")
        await store.clear_blocked("o7")
        assert not await store.is_blocked("o7")
        await store.clear_blocked("o7")
        assert await store.list_blocked() == []
