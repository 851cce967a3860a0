"""Cosmos DB item API, batch, queries, feed ranges and change feed: one set of cases, every backend.

Every case goes through the real azure-cosmos SDK. Backends: this repository's emulator
(eventflow-cosmos-emulator, always), @vercel/cosmosdb-server (where that server is faithful; each
case it cannot run names the reason), and Microsoft's Cosmos DB emulator or an Azure account when
EVENTFLOW_CONFORMANCE_COSMOS_CONNECTION_STRING is set. Cases that need operations controls
(splits, throttling) run where the backend has them (`admin`).

"py:" below is Azure/azure-sdk-for-python:sdk/cosmos/azure-cosmos/azure/cosmos/ at 4.17.1 (the
installed wheel); "docs:" is learn.microsoft.com/azure/cosmos-db/.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, ClassVar

import pytest
from azure.core import MatchConditions
from azure.cosmos import PartitionKey
from azure.cosmos.aio import CosmosClient as AzureCosmosClient
from azure.cosmos.exceptions import (
    CosmosAccessConditionFailedError,
    CosmosBatchOperationError,
    CosmosHttpResponseError,
    CosmosResourceExistsError,
    CosmosResourceNotFoundError,
)

from eventflow_emulators.conformance import BackendCases, setting_or_skip
from eventflow_emulators.cosmos.admin import CosmosEmulatorAdmin
from eventflow_emulators.cosmos.testing import RunningCosmosEmulator
from eventflow_emulators.servers import RunningServer

Container = Any
MakeContainer = Callable[..., Awaitable[Container]]

NO_INCREMENTAL_FEED = "its change feed is a stub: every read after the first is empty"
NO_ROLLBACK = "its batch is not atomic: earlier operations stay applied"
CREATE_ONLY_BATCH = "its batch supports only create operations from Python"
NO_TTL = "it does not expire items"
ONE_PARTITION_FEED = "its change feed ignores the partition key and feed range"


def doc(pk: str = "p1", **fields: Any) -> dict[str, Any]:
    return {"id": fields.pop("id", uuid.uuid4().hex), "pk": pk, **fields}


async def collect(iterable: Any) -> list[Any]:
    return [item async for item in iterable]


async def drain(container: Container, **kwargs: Any) -> tuple[list[dict[str, Any]], str]:
    """Read the change feed until a poll finds nothing; (items, token to resume from)."""
    pager = container.query_items_change_feed(**kwargs).by_page()
    items = [item async for page in pager async for item in page]
    return items, container.client_connection.last_response_headers["etag"]


def database_of(container: Container) -> str:
    return str(container.container_link.split("/")[1])


def first_range_id(admin: CosmosEmulatorAdmin, container: Container) -> str:
    ranges = admin.partition_key_ranges(database_of(container), container.id)
    return str(min(ranges, key=lambda r: r["minInclusive"])["id"])


async def next_second() -> None:
    """Wait for the next whole second of the clock (timestamps have second granularity)."""
    second = int(time.time())
    await asyncio.sleep(second + 1 - time.time())
    assert int(time.time()) > second


async def same_range_keys(container: Container) -> tuple[str, str]:
    """Two partition keys that live in the same feed range (physical partition)."""
    ranges = await collect(container.read_feed_ranges())
    owners: dict[int, str] = {}
    for n in range(200):
        key = f"key-{n}"
        point = await container.feed_range_from_partition_key(key)
        for owner, feed_range in enumerate(ranges):
            if await container.is_feed_range_subset(feed_range, point):
                if owner in owners:
                    return owners[owner], key
                owners[owner] = key
    raise AssertionError("no two keys share a range")


# Partition-scoped queries repeat the partition key in the query text: cosmosdb-server refuses
# a single-partition query whose text does not name it (it ignores the partition key header).


class CosmosConformance(BackendCases):
    """The cases. A backend subclasses this and provides the `database` fixture."""

    @pytest.fixture
    def make_container(self, database: Any) -> MakeContainer:
        async def make(pk: str = "/pk", default_ttl: int | None = None) -> Container:
            kwargs = {} if default_ttl is None else {"default_ttl": default_ttl}
            return await database.create_container_if_not_exists(
                id=f"c{uuid.uuid4().hex[:12]}", partition_key=PartitionKey(path=pk), **kwargs
            )

        return make

    @pytest.fixture
    async def container(self, make_container: MakeContainer) -> Container:
        return await make_container()

    @pytest.fixture
    def admin(self) -> CosmosEmulatorAdmin:
        pytest.skip(f"{self.backend} has no operations controls (splits, throttling) here")

    # -- items ------------------------------------------------------------------------------

    async def test_create_then_read_returns_the_body_with_system_properties(
        self, container: Container
    ) -> None:
        # System properties _etag/_ts on every item (docs: resource-model.md, "System properties").
        created = await container.create_item(doc(id="a", n=1))
        read = await container.read_item("a", partition_key="p1")
        assert read["n"] == 1
        assert read["_etag"] == created["_etag"]
        assert isinstance(read["_ts"], int)

    async def test_create_of_an_existing_id_is_a_conflict(self, container: Container) -> None:
        # 409 raises CosmosResourceExistsError (py:aio/_asynchronous_request.py L182).
        await container.create_item(doc(id="a"))
        with pytest.raises(CosmosResourceExistsError) as caught:
            await container.create_item(doc(id="a"))
        assert caught.value.status_code == 409

    async def test_the_same_id_may_live_in_two_partitions(self, container: Container) -> None:
        # Uniqueness of id is per logical partition (docs: resource-model.md, "Properties of an item").
        await container.create_item(doc("p1", id="a", n=1))
        await container.create_item(doc("p2", id="a", n=2))
        assert (await container.read_item("a", partition_key="p2"))["n"] == 2

    async def test_read_of_a_missing_item_is_not_found(self, container: Container) -> None:
        # 404 raises CosmosResourceNotFoundError (py:aio/_asynchronous_request.py L180).
        with pytest.raises(CosmosResourceNotFoundError) as caught:
            await container.read_item("nope", partition_key="p1")
        assert caught.value.status_code == 404

    async def test_read_with_another_partition_key_is_not_found(self, container: Container) -> None:
        # A point read addresses (partition key, id) (docs: resource-model.md).
        await container.create_item(doc("p1", id="a"))
        with pytest.raises(CosmosResourceNotFoundError):
            await container.read_item("a", partition_key="p2")

    async def test_replace_with_the_current_etag_changes_the_etag(
        self, container: Container
    ) -> None:
        # Every write issues a new _etag (docs: database-transactions-optimistic-concurrency.md).
        created = await container.create_item(doc(id="a", n=1))
        replaced = await container.replace_item(
            "a",
            doc(id="a", n=2),
            etag=created["_etag"],
            match_condition=MatchConditions.IfNotModified,
        )
        assert replaced["n"] == 2
        assert replaced["_etag"] != created["_etag"]

    async def test_replace_with_a_stale_etag_fails_the_precondition(
        self, container: Container
    ) -> None:
        # If-Match with a stale etag: 412, CosmosAccessConditionFailedError (py:aio/_asynchronous_request.py L184; docs: database-transactions-optimistic-concurrency.md).
        created = await container.create_item(doc(id="a", n=1))
        await container.replace_item("a", doc(id="a", n=2))
        with pytest.raises(CosmosAccessConditionFailedError) as caught:
            await container.replace_item(
                "a",
                doc(id="a", n=3),
                etag=created["_etag"],
                match_condition=MatchConditions.IfNotModified,
            )
        assert caught.value.status_code == 412
        assert (await container.read_item("a", partition_key="p1"))["n"] == 2

    async def test_replace_of_a_missing_item_is_not_found(self, container: Container) -> None:
        # Replace needs an existing item: 404 (docs: rest-api "Replace a Document").
        with pytest.raises(CosmosResourceNotFoundError):
            await container.replace_item("a", doc(id="a"))

    async def test_upsert_creates_then_replaces(self, container: Container) -> None:
        # Upsert creates or replaces (docs: rest-api "Create a Document", x-ms-documentdb-is-upsert).
        await container.upsert_item(doc(id="a", n=1))
        await container.upsert_item(doc(id="a", n=2))
        assert (await container.read_item("a", partition_key="p1"))["n"] == 2

    async def test_upsert_with_a_stale_etag_fails_the_precondition(
        self, container: Container
    ) -> None:
        # If-Match applies to upserts too (docs: database-transactions-optimistic-concurrency.md).
        created = await container.create_item(doc(id="a", n=1))
        await container.upsert_item(doc(id="a", n=2))
        with pytest.raises(CosmosAccessConditionFailedError):
            await container.upsert_item(
                doc(id="a", n=3),
                etag=created["_etag"],
                match_condition=MatchConditions.IfNotModified,
            )

    async def test_delete_removes_the_item(self, container: Container) -> None:
        # docs: rest-api "Delete a Document" (204, then 404 on read).
        await container.create_item(doc(id="a"))
        await container.delete_item("a", partition_key="p1")
        with pytest.raises(CosmosResourceNotFoundError):
            await container.read_item("a", partition_key="p1")

    async def test_delete_with_a_stale_etag_fails_the_precondition(
        self, container: Container
    ) -> None:
        # If-Match on delete: 412 (docs: database-transactions-optimistic-concurrency.md).
        created = await container.create_item(doc(id="a", n=1))
        await container.upsert_item(doc(id="a", n=2))
        with pytest.raises(CosmosAccessConditionFailedError):
            await container.delete_item(
                "a",
                partition_key="p1",
                etag=created["_etag"],
                match_condition=MatchConditions.IfNotModified,
            )

    async def test_delete_of_a_missing_item_is_not_found(self, container: Container) -> None:
        # docs: rest-api "Delete a Document" (404 when missing).
        with pytest.raises(CosmosResourceNotFoundError):
            await container.delete_item("nope", partition_key="p1")

    async def test_a_condition_without_an_etag_is_refused_before_sending(
        self, container: Container
    ) -> None:
        # Checked by the SDK before any request (py:_base.py L93 `_get_match_headers`).
        await container.create_item(doc(id="a"))
        with pytest.raises(ValueError, match="without 'etag'"):
            await container.replace_item(
                "a", doc(id="a"), match_condition=MatchConditions.IfNotModified
            )
        with pytest.raises(ValueError, match="without 'match_condition'"):
            await container.replace_item("a", doc(id="a"), etag='"x"')

    async def test_container_properties_name_the_partition_key_path(
        self, container: Container
    ) -> None:
        # docs: rest-api "Get a Collection" (partitionKey.paths).
        properties = await container.read()
        assert properties["partitionKey"]["paths"] == ["/pk"]
        assert properties["id"] == container.id

    async def test_create_container_if_not_exists_is_idempotent(self, database: Any) -> None:
        # Read first, create on 404 (py:aio/_database.py `create_container_if_not_exists`).
        name = f"c{uuid.uuid4().hex[:12]}"
        first = await database.create_container_if_not_exists(
            id=name, partition_key=PartitionKey(path="/pk")
        )
        await first.create_item(doc(id="a"))
        again = await database.create_container_if_not_exists(
            id=name, partition_key=PartitionKey(path="/pk")
        )
        assert (await again.read_item("a", partition_key="p1"))["id"] == "a"

    # -- transactional batch ----------------------------------------------------------------

    async def test_batch_of_creates_commits_every_item(self, container: Container) -> None:
        # Per-operation results with statusCode (py:aio/_cosmos_client_connection_async.py `Batch`).
        results = await container.execute_item_batch(
            [("create", (doc(id="a"),)), ("create", (doc(id="b"),))], partition_key="p1"
        )
        assert [result["statusCode"] for result in results] == [201, 201]
        assert (await container.read_item("b", partition_key="p1"))["id"] == "b"

    async def test_failed_batch_names_the_failing_operation(self, container: Container) -> None:
        # error_index = the op with a status >= 400 other than 424 (py:aio/_cosmos_client_connection_async.py L2100); the class derives from HttpResponseError (py:exceptions.py L77).
        await container.create_item(doc(id="taken"))
        with pytest.raises(CosmosBatchOperationError) as caught:
            await container.execute_item_batch(
                [("create", (doc(id="new"),)), ("create", (doc(id="taken"),))], partition_key="p1"
            )
        assert caught.value.error_index == 1
        assert caught.value.operation_responses[1]["statusCode"] == 409
        assert not isinstance(caught.value, CosmosHttpResponseError)

    async def test_failed_batch_rolls_back_and_reports_424_for_the_rest(
        self, container: Container
    ) -> None:
        # Atomic: all or nothing, 424 for the others (docs: transactional-batch.md).
        await container.create_item(doc(id="taken"))
        with pytest.raises(CosmosBatchOperationError) as caught:
            await container.execute_item_batch(
                [
                    ("create", (doc(id="new"),)),
                    ("create", (doc(id="taken"),)),
                    ("create", (doc(id="z"),)),
                ],
                partition_key="p1",
            )
        statuses = [response["statusCode"] for response in caught.value.operation_responses]
        assert statuses == [424, 409, 424]
        with pytest.raises(CosmosResourceNotFoundError):
            await container.read_item("new", partition_key="p1")

    async def test_batch_replace_with_a_stale_etag_fails_and_writes_nothing(
        self, container: Container
    ) -> None:
        # Per-operation if_match_etag (py:_base.py `_format_batch_operations`), atomic (docs: transactional-batch.md).
        created = await container.create_item(doc(id="order", version=1))
        await container.replace_item("order", doc(id="order", version=2))
        with pytest.raises(CosmosBatchOperationError) as caught:
            await container.execute_item_batch(
                [
                    (
                        "replace",
                        ("order", doc(id="order", version=3)),
                        {"if_match_etag": created["_etag"]},
                    ),
                    ("create", (doc(id="event-3"),)),
                ],
                partition_key="p1",
            )
        assert caught.value.error_index == 0
        assert caught.value.status_code == 412
        with pytest.raises(CosmosResourceNotFoundError):
            await container.read_item("event-3", partition_key="p1")

    async def test_batch_replace_and_create_commit_together(self, container: Container) -> None:
        # Replace 200, create 201, upsert 201 when new, read 200 with resourceBody (docs: transactional-batch.md).
        created = await container.create_item(doc(id="order", version=1))
        results = await container.execute_item_batch(
            [
                (
                    "replace",
                    ("order", doc(id="order", version=2)),
                    {"if_match_etag": created["_etag"]},
                ),
                ("create", (doc(id="event-2"),)),
                ("upsert", (doc(id="marker"),)),
                ("read", ("order",)),
            ],
            partition_key="p1",
        )
        assert [result["statusCode"] for result in results] == [200, 201, 201, 200]
        assert results[3]["resourceBody"]["version"] == 2

    async def test_batch_with_more_than_100_operations_is_refused(
        self, container: Container
    ) -> None:
        # At most 100 operations (docs: transactional-batch.md, "Limitations").
        operations = [("create", (doc(id=f"i{n}"),)) for n in range(101)]
        with pytest.raises((CosmosHttpResponseError, CosmosBatchOperationError, ValueError)):
            await container.execute_item_batch(operations, partition_key="p1")
        assert await collect(container.query_items("SELECT * FROM c")) == []

    async def test_batch_item_from_another_partition_fails_the_batch(
        self, container: Container
    ) -> None:
        # Every operation runs in the batch's logical partition (docs: transactional-batch.md).
        with pytest.raises((CosmosBatchOperationError, CosmosHttpResponseError)):
            await container.execute_item_batch(
                [("create", (doc("p1", id="a"),)), ("create", (doc("p2", id="b"),))],
                partition_key="p1",
            )
        with pytest.raises(CosmosResourceNotFoundError):
            await container.read_item("b", partition_key="p2")

    # -- queries ----------------------------------------------------------------------------

    async def test_query_filters_one_partition_by_a_parameter(self, container: Container) -> None:
        # Parameterized queries (docs: nosql/query/parameterized-queries.md).
        for n, kind in enumerate(["event", "entity", "event"]):
            await container.create_item(doc("p1", id=f"i{n}", kind=kind))
        await container.create_item(doc("p2", id="other", kind="event"))
        found = await collect(
            container.query_items(
                "SELECT * FROM c WHERE c.pk = @pk AND c.kind = @kind",
                parameters=[{"name": "@pk", "value": "p1"}, {"name": "@kind", "value": "event"}],
                partition_key="p1",
            )
        )
        assert sorted(item["id"] for item in found) == ["i0", "i2"]

    async def test_query_orders_by_a_field(self, container: Container) -> None:
        # docs: nosql/query/order-by.md.
        for n in (3, 1, 2):
            await container.create_item(doc(id=f"i{n}", sequence=n))
        found = await collect(
            container.query_items(
                "SELECT * FROM c WHERE c.pk = @pk ORDER BY c.sequence DESC",
                parameters=[{"name": "@pk", "value": "p1"}],
                partition_key="p1",
            )
        )
        assert [item["sequence"] for item in found] == [3, 2, 1]

    async def test_query_startswith_across_partitions(self, container: Container) -> None:
        # docs: nosql/query/startswith.md; cross-partition without a partition key.
        for n, pk in enumerate(["p1", "p2", "p3"]):
            await container.create_item(doc(pk, id=f"lease..{n}"))
        await container.create_item(doc("p4", id="other"))
        found = await collect(
            container.query_items(
                "SELECT * FROM c WHERE STARTSWITH(c.id, @prefix)",
                parameters=[{"name": "@prefix", "value": "lease.."}],
            )
        )
        assert sorted(item["id"] for item in found) == ["lease..0", "lease..1", "lease..2"]

    async def test_query_counts_with_select_value(self, container: Container) -> None:
        # docs: nosql/query/count.md (SELECT VALUE COUNT(1)).
        for n in range(4):
            await container.create_item(doc(id=f"i{n}", even=n % 2 == 0))
        counted = await collect(
            container.query_items("SELECT VALUE COUNT(1) FROM c WHERE c.even = true")
        )
        assert counted == [2]

    async def test_query_pages_with_max_item_count(self, container: Container) -> None:
        # x-ms-max-item-count caps a page (py:_base.py `GetHeaders`, PageSize).
        for n in range(5):
            await container.create_item(doc(id=f"i{n}", n=n))
        pages = container.query_items(
            "SELECT * FROM c WHERE c.pk = @pk ORDER BY c.n",
            parameters=[{"name": "@pk", "value": "p1"}],
            partition_key="p1",
            max_item_count=2,
        ).by_page()
        sizes = [len([item async for item in page]) async for page in pages]
        assert sum(sizes) == 5
        assert max(sizes) <= 2

    # -- feed ranges and the change feed ----------------------------------------------------

    async def test_feed_ranges_cover_every_partition_key_exactly_once(
        self, container: Container
    ) -> None:
        # One feed range per physical partition (py:aio/_container.py L2029, L2104, L2123).
        ranges = await collect(container.read_feed_ranges())
        assert ranges
        for key in (f"order-{n}" for n in range(50)):
            point = await container.feed_range_from_partition_key(key)
            owners = [r for r in ranges if await container.is_feed_range_subset(r, point)]
            assert len(owners) == 1

    async def test_change_feed_from_the_beginning_has_the_latest_version_of_each_item(
        self, container: Container
    ) -> None:
        # Latest-version mode shows the last version of each item (docs: change-feed-modes.md).
        await container.create_item(doc(id="a", n=1))
        await container.create_item(doc(id="b", n=1))
        await container.upsert_item(doc(id="a", n=2))
        items, _ = await drain(container, start_time="Beginning")
        assert sorted((item["id"], item["n"]) for item in items) == [("a", 2), ("b", 1)]

    async def test_change_feed_resumes_after_the_token_with_only_new_changes(
        self, container: Container
    ) -> None:
        # V2 token resumes after the last read LSN (py:_change_feed/aio/change_feed_fetcher.py `_get_base64_encoded_continuation`).
        await container.create_item(doc(id="a"))
        _, token = await drain(container, start_time="Beginning")
        await container.create_item(doc(id="b"))
        await container.upsert_item(doc(id="a", n=2))
        items, _ = await drain(container, continuation=token)
        assert sorted(item["id"] for item in items) == ["a", "b"]

    async def test_change_feed_keeps_commit_order_within_a_partition(
        self, container: Container
    ) -> None:
        # Changes are ordered per logical partition key (docs: change-feed.md).
        _, token = await drain(container, start_time="Beginning")
        for n in range(6):
            await container.create_item(doc("p1", id=f"e{n}"))
        items, _ = await drain(container, continuation=token)
        assert [item["id"] for item in items] == [f"e{n}" for n in range(6)]

    async def test_empty_poll_yields_no_page_and_its_token_is_in_the_headers(
        self, container: Container
    ) -> None:
        # 304 ends the iteration without a page; the token is in last_response_headers (docs: change-feed-pull-model.md, Python tab).
        pager = container.query_items_change_feed(start_time="Now").by_page()
        pages = [page async for page in pager]
        assert pages == []
        token = container.client_connection.last_response_headers["etag"]
        await container.create_item(doc(id="after"))
        items, _ = await drain(container, continuation=token)
        assert [item["id"] for item in items] == ["after"]

    async def test_change_feed_start_now_skips_earlier_changes(self, container: Container) -> None:
        # start_time="Now" sends If-None-Match: * (py:_change_feed/change_feed_start_from.py `ChangeFeedStartFromNow`).
        await container.create_item(doc(id="before"))
        _, token = await drain(container, start_time="Now")
        await container.create_item(doc(id="after"))
        items, _ = await drain(container, continuation=token)
        assert [item["id"] for item in items] == ["after"]

    async def test_change_feed_pages_respect_max_item_count(self, container: Container) -> None:
        # x-ms-max-item-count pages the change feed (docs: change-feed-pull-model.md).
        for n in range(5):
            await container.create_item(doc(f"p{n}", id=f"e{n}"))
        pager = container.query_items_change_feed(
            start_time="Beginning", max_item_count=2
        ).by_page()
        sizes = [len([item async for item in page]) async for page in pager]
        assert sum(sizes) == 5
        assert max(sizes) == 2

    async def test_change_feed_of_a_partition_key_has_only_that_partition(
        self, container: Container
    ) -> None:
        # partition_key narrows the feed to one logical partition (py:aio/_container.py `query_items_change_feed`).
        await container.create_item(doc("p1", id="a"))
        await container.create_item(doc("p2", id="b"))
        items, _ = await drain(container, partition_key="p2", start_time="Beginning")
        assert [item["id"] for item in items] == ["b"]

    async def test_change_feeds_of_all_feed_ranges_partition_the_changes(
        self, container: Container
    ) -> None:
        # Feed ranges split the container's changes without overlap (docs: change-feed-pull-model.md, "parallelize").
        keys = [f"order-{n}" for n in range(24)]
        for key in keys:
            await container.create_item(doc(key, id="x"))
        seen: list[str] = []
        for feed_range in await collect(container.read_feed_ranges()):
            items, _ = await drain(container, feed_range=feed_range, start_time="Beginning")
            seen += [item["pk"] for item in items]
        assert sorted(seen) == sorted(keys)

    async def test_a_token_of_another_container_is_refused(
        self, make_container: MakeContainer
    ) -> None:
        # Checked by the SDK (py:_change_feed/change_feed_state.py L367).
        first, second = await make_container(), await make_container()
        await first.create_item(doc(id="a"))
        _, token = await drain(first, start_time="Beginning")
        with pytest.raises(ValueError, match="Invalid continuation"):
            await drain(second, continuation=token)

    async def test_transaction_is_not_split_across_change_feed_pages(
        self, container: Container
    ) -> None:
        # A transaction's changes share an _lsn and come whole (docs: change-feed-modes.md; max_item_count is a hint).
        await container.execute_item_batch(
            [("create", (doc(id=f"e{n}"),)) for n in range(3)], partition_key="p1"
        )
        pager = container.query_items_change_feed(
            start_time="Beginning", max_item_count=1
        ).by_page()
        first_page = [item async for item in await anext(pager)]
        assert len(first_page) == 3

    # -- splits, start positions, empty reads -----------------------------------------------

    async def test_change_feed_resumes_from_a_checkpoint_across_a_split(
        self, container: Container, admin: CosmosEmulatorAdmin
    ) -> None:
        # A request naming a split range gets 410 with sub-status 1002 (PartitionKeyRangeGone);
        # the SDK then replaces the token's range by one per child, each inheriting the parent's
        # etag (py:_change_feed/aio/change_feed_fetcher.py `fetch_next_block`,
        # py:_change_feed/feed_range_composite_continuation_token.py L124
        # `handle_feed_range_gone_async`), so a saved token needs no client code.
        keys = [f"order-{n}" for n in range(16)]
        for key in keys:
            await container.create_item(doc(key, id="before"))
        before = await collect(container.read_feed_ranges())
        _, token = await drain(container, start_time="Beginning")
        gone = admin.status()["statuses"].get("410", 0)
        admin.split(database_of(container), container.id, first_range_id(admin, container))
        for key in keys:
            await container.create_item(doc(key, id="after"))
        items, _ = await drain(container, continuation=token)
        assert sorted(item["pk"] for item in items) == sorted(keys)
        assert {item["id"] for item in items} == {"after"}
        assert admin.status()["statuses"].get("410", 0) > gone
        after = await collect(container.read_feed_ranges(force_refresh=True))
        assert len(after) == len(before) + 1

    async def test_change_feed_of_a_range_read_first_after_its_split_covers_both_children(
        self, container: Container, admin: CosmosEmulatorAdmin
    ) -> None:
        # No checkpoint yet: the SDK still routes the parent range (its routing map is cached),
        # meets 410/1002 and reads both children from the beginning (same sources as above).
        keys = [f"order-{n}" for n in range(32)]
        for key in keys:
            await container.create_item(doc(key, id="before"))
        parent = (await collect(container.read_feed_ranges()))[0]
        admin.split(database_of(container), container.id, first_range_id(admin, container))
        inside = [
            key for key in keys
            if await container.is_feed_range_subset(
                parent, await container.feed_range_from_partition_key(key))
        ]  # fmt: skip
        items, token = await drain(container, feed_range=parent, start_time="Beginning")
        assert inside
        assert sorted(item["pk"] for item in items) == sorted(inside)
        await container.upsert_item(doc(inside[0], id="after"))
        items, _ = await drain(container, continuation=token)
        assert [(item["pk"], item["id"]) for item in items] == [(inside[0], "after")]

    async def test_change_feed_from_a_point_in_time_has_only_later_changes(
        self, container: Container
    ) -> None:
        # start_time=datetime sends If-Modified-Since (py:_change_feed/change_feed_start_from.py
        # `ChangeFeedStartFromPointInTime.populate_request_headers`), second granularity: wait for
        # the next second so "before" is strictly older.
        await container.create_item(doc(id="before"))
        await next_second()
        start = datetime.now(UTC)
        await container.create_item(doc(id="after"))
        items, _ = await drain(container, start_time=start)
        assert [item["id"] for item in items] == ["after"]

    async def test_sdk_cannot_resume_a_token_of_a_point_in_time_read(
        self, container: Container
    ) -> None:
        # Known SDK defect (azure-cosmos 4.17.1): the token stores the start in milliseconds
        # (py:_change_feed/change_feed_start_from.py L185) but parses it back as seconds
        # (L198 `datetime.fromtimestamp(point_in_time_ms)`), so resuming raises before any
        # request. This pins the SDK's real behaviour: persist tokens of "Beginning"/"Now" reads,
        # or a start time of your own, instead.
        await container.create_item(doc(id="a"))
        _, token = await drain(container, start_time=datetime.now(UTC))
        with pytest.raises(ValueError, match="out of range"):
            await drain(container, continuation=token)

    async def test_sdk_cannot_resume_a_token_saved_mid_way_through_a_multi_range_read(
        self, container: Container
    ) -> None:
        # Known SDK behaviour (azure-cosmos 4.17.1): a "Beginning" read over several ranges starts
        # every sub-token as null, and `CompositeContinuationToken.from_json` refuses null
        # (py:_change_feed/composite_continuation_token.py L62), so a token saved after the first
        # page, before every range was visited, cannot be resumed. Save tokens after a full drain,
        # or keep one feed range per reader (one range per lease).
        for n in range(20):
            await container.create_item(doc(f"key-{n}", id="a"))
        if len(await collect(container.read_feed_ranges())) < 2:
            pytest.skip("needs a container with more than one feed range")
        pager = container.query_items_change_feed(
            start_time="Beginning", max_item_count=2
        ).by_page()
        assert len([item async for item in await anext(pager)]) == 2
        with pytest.raises(ValueError, match="Missing token"):
            await drain(container, continuation=pager.continuation_token)

    async def test_reads_of_a_partition_key_skip_changes_of_its_neighbours(
        self, container: Container, admin: CosmosEmulatorAdmin
    ) -> None:
        # A physical range with changes only outside the requested sub-range answers 200 with no
        # documents and a later etag; with no changes at all, 304 (docs: change-feed-pull-model.md
        # "keep polling until 304"). The SDK treats both as "no page" (change_feed_fetcher.py L177).
        target, neighbour = await same_range_keys(container)
        await container.create_item(doc(target, id="first"))
        items, token = await drain(container, partition_key=target, start_time="Beginning")
        assert [item["id"] for item in items] == ["first"]
        statuses = admin.status()["statuses"]
        items, token = await drain(container, continuation=token)
        assert items == []
        assert admin.status()["statuses"].get("304", 0) > statuses.get("304", 0)
        await container.create_item(doc(neighbour, id="other"))
        statuses = admin.status()["statuses"]
        items, token = await drain(container, continuation=token)
        assert items == []
        assert admin.status()["statuses"].get("200", 0) > statuses.get("200", 0)
        await container.create_item(doc(target, id="second"))
        items, _ = await drain(container, continuation=token)
        assert [item["id"] for item in items] == ["second"]

    async def test_throttled_writes_are_retried_by_the_sdk(
        self, container: Container, admin: CosmosEmulatorAdmin
    ) -> None:
        # 429 with x-ms-retry-after-ms: the SDK waits and retries, 9 times by default
        # (py:_resource_throttle_retry_policy.py L37-54), so callers see success.
        throttled = admin.status()["throttled"]
        admin.set_request_units_per_second(20)
        try:
            await asyncio.gather(*(container.create_item(doc(id=f"t{n}")) for n in range(12)))
        finally:
            admin.set_request_units_per_second(None)
        assert admin.status()["throttled"] > throttled
        found = await collect(container.query_items("SELECT VALUE COUNT(1) FROM c"))
        assert found == [12]

    # -- time to live -----------------------------------------------------------------------

    async def test_expired_items_vanish_from_reads_queries_and_the_change_feed(
        self, make_container: MakeContainer
    ) -> None:
        # Item ttl with a container default; expired items drop out at once (docs: time-to-live.md).
        container = await make_container(default_ttl=-1)
        await container.create_item(doc(id="short", ttl=1))
        await container.create_item(doc(id="kept"))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            found = await collect(container.query_items("SELECT * FROM c"))
            if [item["id"] for item in found] == ["kept"]:
                break
            await asyncio.sleep(0.2)
        assert [item["id"] for item in found] == ["kept"]
        with pytest.raises(CosmosResourceNotFoundError):
            await container.read_item("short", partition_key="p1")
        items, _ = await drain(container, start_time="Beginning")
        assert [item["id"] for item in items] == ["kept"]

    async def test_item_ttl_is_ignored_when_the_container_has_no_default_ttl(
        self, container: Container
    ) -> None:
        # Item ttl counts only when DefaultTimeToLive is set (docs: time-to-live.md).
        created = await container.create_item(doc(id="a", ttl=1))
        assert created["ttl"] == 1
        await asyncio.sleep(0)
        read = await container.read_item("a", partition_key="p1")
        assert read["id"] == "a"


class TestCosmosDbServer(CosmosConformance):
    backend = "@vercel/cosmosdb-server"
    not_applicable: ClassVar[dict[str, str]] = {
        "test_failed_batch_rolls_back_and_reports_424_for_the_rest": NO_ROLLBACK,
        "test_batch_replace_with_a_stale_etag_fails_and_writes_nothing": CREATE_ONLY_BATCH,
        "test_batch_replace_and_create_commit_together": CREATE_ONLY_BATCH,
        "test_batch_item_from_another_partition_fails_the_batch": NO_ROLLBACK,
        "test_batch_with_more_than_100_operations_is_refused": "it does not enforce the 100-operation limit",
        "test_change_feed_resumes_after_the_token_with_only_new_changes": NO_INCREMENTAL_FEED,
        "test_change_feed_keeps_commit_order_within_a_partition": NO_INCREMENTAL_FEED,
        "test_empty_poll_yields_no_page_and_its_token_is_in_the_headers": NO_INCREMENTAL_FEED,
        "test_change_feed_start_now_skips_earlier_changes": NO_INCREMENTAL_FEED,
        "test_change_feed_of_a_partition_key_has_only_that_partition": ONE_PARTITION_FEED,
        "test_transaction_is_not_split_across_change_feed_pages": NO_INCREMENTAL_FEED,
        "test_change_feed_pages_respect_max_item_count": NO_INCREMENTAL_FEED,
        "test_expired_items_vanish_from_reads_queries_and_the_change_feed": NO_TTL,
        "test_change_feed_from_a_point_in_time_has_only_later_changes": NO_INCREMENTAL_FEED,
    }

    @pytest.fixture
    async def database(self, cosmos_server: RunningServer) -> AsyncIterator[Any]:
        async with AzureCosmosClient(
            cosmos_server.endpoint, credential=cosmos_server.key
        ) as client:
            yield await client.create_database_if_not_exists("conformance")


class TestEmulatorOrAzure(CosmosConformance):
    backend = "the Cosmos DB emulator or Azure"

    @pytest.fixture
    async def database(self) -> AsyncIterator[Any]:
        connection_string = setting_or_skip("EVENTFLOW_CONFORMANCE_COSMOS_CONNECTION_STRING")
        async with AzureCosmosClient.from_connection_string(
            connection_string, enable_endpoint_discovery=False
        ) as client:
            yield await client.create_database_if_not_exists("conformance")


class TestEventflowEmulator(CosmosConformance):
    backend = "eventflow-cosmos-emulator"

    @pytest.fixture
    async def database(self, cosmos_emulator_server: RunningCosmosEmulator) -> AsyncIterator[Any]:
        async with AzureCosmosClient(
            cosmos_emulator_server.endpoint, credential=cosmos_emulator_server.key
        ) as client:
            yield await client.create_database_if_not_exists("conformance")

    @pytest.fixture
    def admin(self, cosmos_emulator_server: RunningCosmosEmulator) -> CosmosEmulatorAdmin:
        return cosmos_emulator_server.admin
