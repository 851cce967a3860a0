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
import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from email.utils import formatdate
from typing import Any, ClassVar, NamedTuple
from urllib.parse import quote, urlsplit

import aiohttp
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
RANK_INDEXED = {
    "indexingMode": "consistent",
    "automatic": True,
    "includedPaths": [{"path": "/rank/?"}, {"path": "/*"}],
    "excludedPaths": [{"path": '/"_etag"/?'}],
}
"""An indexing policy naming /rank explicitly, so ORDER BY c.rank returns items without it."""
NO_LIMITS = "it does not enforce the service quotas (names, key and query lengths, TTL, body size)"


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


class Account(NamedTuple):
    """Where a backend listens and its key, for the requests the SDK cannot send."""

    endpoint: str
    key: str


class RawResponse(NamedTuple):
    status: int
    content_type: str
    body: bytes

    def error(self) -> dict[str, Any]:
        """The Cosmos DB error body ({"code": ..., "message": ...}), checked to be JSON."""
        assert self.content_type == "application/json", (self.status, self.body[:200])
        body: dict[str, Any] = json.loads(self.body)
        assert isinstance(body.get("code"), str), body
        assert "message" in body, body
        return body


async def signed_request(
    account: Account,
    method: str,
    link: str,
    *,
    resource_type: str,
    resource_link: str,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    dated: bool = True,
) -> RawResponse:
    """One REST request, signed with the account key as the REST reference describes ("Access
    control on Azure Cosmos DB resources": HMAC-SHA256 over verb, resource type, resource link,
    x-ms-date and Date, lower-cased but for the link). `link` is the URL path, already quoted;
    `resource_link` is the name-based link as signed (unquoted). `dated=False` leaves out both
    x-ms-date and Date (and signs empty dates)."""
    date = formatdate(usegmt=True) if dated else ""
    text = f"{method.lower()}\n{resource_type}\n{resource_link}\n{date.lower()}\n\n"
    signature = base64.b64encode(
        hmac.new(base64.b64decode(account.key), text.encode(), hashlib.sha256).digest()
    ).decode()
    sent = {
        "authorization": quote(f"type=master&ver=1.0&sig={signature}", "-_.!~*'()"),
        "x-ms-version": "2020-07-15",  # what azure-cosmos 4.17.1 sends (py:http_constants.py)
        "content-type": "application/json",
        **({"x-ms-date": date} if dated else {}),
        **(headers or {}),
    }
    loopback = urlsplit(account.endpoint).hostname in ("127.0.0.1", "localhost")
    async with (
        aiohttp.ClientSession(skip_auto_headers=("Content-Type",)) as session,
        session.request(method, account.endpoint.rstrip("/") + "/" + link, headers=sent,
                        data=body or None, ssl=not loopback) as response,
    ):  # fmt: skip
        return RawResponse(response.status, response.content_type, await response.read())


def container_link(container: Container) -> str:
    return f"dbs/{database_of(container)}/colls/{container.id}"


def cosmos_error_body(error: Any) -> dict[str, Any]:
    """The JSON error body the SDK raised an error from."""
    body: dict[str, Any] = json.loads(error.response.text())
    assert isinstance(body.get("code"), str), body
    return body


# Partition-scoped queries repeat the partition key in the query text: cosmosdb-server refuses
# a single-partition query whose text does not name it (it ignores the partition key header).


class CosmosConformance(BackendCases):
    """The cases. A backend subclasses this and provides the `database` fixture."""

    @pytest.fixture
    def make_container(self, database: Any) -> MakeContainer:
        async def make(
            pk: str = "/pk",
            default_ttl: int | None = None,
            indexing_policy: dict[str, Any] | None = None,
        ) -> Container:
            kwargs: dict[str, Any] = {} if default_ttl is None else {"default_ttl": default_ttl}
            if indexing_policy is not None:
                kwargs["indexing_policy"] = indexing_policy
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

    # -- ids, patch, ORDER BY, limits and malformed requests ---------------------------------
    # Each case below pins an answer of the service. Where the documentation is silent the case
    # says so and names what was assumed.

    @pytest.mark.parametrize("item_id", ["a%20b", "x%41", "50%25", "a%2Fb"])
    async def test_an_id_with_percent_sequences_round_trips_through_every_operation(
        self, container: Container, item_id: str
    ) -> None:
        # An id may hold any Unicode character but '/' and '\\' ("Azure Cosmos DB service
        # quotas", per-item limits); the SDK quotes the link once (py:_base.py GetPathFromLink),
        # so the service decodes it once.
        await container.create_item(doc(id=item_id, n=1))
        assert (await container.read_item(item_id, partition_key="p1"))["n"] == 1
        await container.replace_item(item_id, doc(id=item_id, n=2))
        await container.upsert_item(doc(id=item_id, n=3))
        patched = await container.patch_item(
            item_id, partition_key="p1", patch_operations=[{"op": "incr", "path": "/n", "value": 1}]
        )
        assert patched["n"] == 4
        results = await container.execute_item_batch([("read", (item_id,))], partition_key="p1")
        assert results[0]["resourceBody"]["id"] == item_id
        await container.delete_item(item_id, partition_key="p1")
        with pytest.raises(CosmosResourceNotFoundError):
            await container.read_item(item_id, partition_key="p1")

    async def test_patch_move_into_its_own_child_is_refused_and_changes_nothing(
        self, container: Container
    ) -> None:
        # "Path attribute cannot be a JSON child of the from JSON location" ("Partial document
        # update", Move). The status is not documented: 400, as for every invalid operation.
        await container.create_item(doc(id="a", a={"x": 1}))
        with pytest.raises(CosmosHttpResponseError) as caught:
            await container.patch_item(
                "a", partition_key="p1",
                patch_operations=[{"op": "move", "from": "/a", "path": "/a/b"}],
            )  # fmt: skip
        assert caught.value.status_code == 400
        assert cosmos_error_body(caught.value)["code"] == "BadRequest"
        assert (await container.read_item("a", partition_key="p1"))["a"] == {"x": 1}

    async def test_patch_set_at_the_arrays_length_appends(self, container: Container) -> None:
        # Set is "similar to Add except with the Array data type"; Add at an index "equal to the
        # length of the array ... appends an element" ("Partial document update"). Assumed: Set
        # at that index appends too (there is no element to update; JSON Patch semantics).
        await container.create_item(doc(id="a", tags=["x", "y"]))
        patched = await container.patch_item(
            "a",
            partition_key="p1",
            patch_operations=[{"op": "set", "path": "/tags/2", "value": "z"}],
        )
        assert patched["tags"] == ["x", "y", "z"]

    async def test_patch_incr_past_the_64_bit_range_is_refused(self, container: Container) -> None:
        # Not documented ("Partial document update" says only that incr adds the value): assumed
        # 400, the status of every impossible patch, and the item unchanged.
        await container.create_item(doc(id="a", n=2**63 - 1))
        with pytest.raises(CosmosHttpResponseError) as caught:
            await container.patch_item(
                "a", partition_key="p1", patch_operations=[{"op": "incr", "path": "/n", "value": 1}]
            )
        assert caught.value.status_code == 400
        assert cosmos_error_body(caught.value)["code"] == "BadRequest"
        assert (await container.read_item("a", partition_key="p1"))["n"] == 2**63 - 1

    @pytest.mark.parametrize(
        "operation",
        [
            pytest.param("set /n 1", id="operation-as-a-string"),
            pytest.param(
                {"op": "set", "path": "/tags/\u00b2", "value": 1}, id="superscript-digit-index"
            ),
        ],
    )
    async def test_every_malformed_or_impossible_patch_is_a_400_with_the_error_body(
        self, container: Container, operation: Any
    ) -> None:
        # "HTTP status codes for Azure Cosmos DB": 400 "The JSON ... in the request body is
        # invalid"; "Partial document update" makes an invalid index an error. The SDK passes the
        # operations through as given. (Indexes past the length, removes of missing elements and
        # unknown operations are pinned without the wire in tests/cosmos/test_patch.py.)
        await container.create_item(doc(id="a", n=1, tags=["x", "y"]))
        with pytest.raises(CosmosHttpResponseError) as caught:
            await container.patch_item("a", partition_key="p1", patch_operations=[operation])
        assert caught.value.status_code == 400
        assert cosmos_error_body(caught.value)["code"] == "BadRequest"
        read = await container.read_item("a", partition_key="p1")
        assert (read["n"], read["tags"]) == (1, ["x", "y"])

    async def test_order_by_keeps_items_without_the_property_in_one_partition(
        self, make_container: MakeContainer
    ) -> None:
        # "Queries with ORDER BY return all items, including items where the property in the
        # ORDER BY clause isn't defined" ("ORDER BY (NoSQL query)"), provided the indexing
        # policy includes the sorted path explicitly ("The default indexing policy doesn't
        # allow for the retrieval of the items where the sort property is undefined", same
        # page). Undefined sorts before every value ascending, after them descending.
        container = await make_container(indexing_policy=RANK_INDEXED)
        await container.create_item(doc(id="two", rank=2))
        await container.create_item(doc(id="none"))
        await container.create_item(doc(id="one", rank=1))
        query = "SELECT * FROM c WHERE c.pk = @pk ORDER BY c.rank"
        parameters = [{"name": "@pk", "value": "p1"}]
        found = await collect(
            container.query_items(query, parameters=parameters, partition_key="p1")
        )
        assert [item["id"] for item in found] == ["none", "one", "two"]
        found = await collect(container.query_items(
            query + " DESC", parameters=parameters, partition_key="p1"))  # fmt: skip
        assert [item["id"] for item in found] == ["two", "one", "none"]

    async def test_order_by_keeps_items_without_the_property_across_partitions(
        self, make_container: MakeContainer
    ) -> None:
        # Same rule across partitions (the SDK merges per-partition results where the gateway
        # asks it to).
        container = await make_container(indexing_policy=RANK_INDEXED)
        for n, pk in enumerate(["p1", "p2", "p3", "p4"]):
            await container.create_item(doc(pk, id=f"ranked-{n}", rank=n))
        await container.create_item(doc("p5", id="unranked"))
        found = await collect(container.query_items("SELECT * FROM c ORDER BY c.rank"))
        assert [item["id"] for item in found] == [
            "unranked", "ranked-0", "ranked-1", "ranked-2", "ranked-3"]  # fmt: skip

    async def test_a_container_name_over_255_characters_is_refused(self, database: Any) -> None:
        # "Maximum length of database or container name: 255" ("Azure Cosmos DB service
        # quotas"); the status is not documented: 400 assumed (an invalid resource id).
        with pytest.raises(CosmosHttpResponseError) as caught:
            await database.create_container(id="c" * 256, partition_key=PartitionKey(path="/pk"))
        assert caught.value.status_code == 400

    async def test_a_partition_key_value_over_2048_bytes_is_refused(
        self, container: Container
    ) -> None:
        # "Maximum length of partition key value: 2048 bytes" (large partition keys, which
        # PartitionKey(path=...) asks for with version 2; "Azure Cosmos DB service quotas");
        # 400 assumed for the write and for a read naming such a key.
        await container.create_item(doc("k" * 2000, id="fits"))
        with pytest.raises(CosmosHttpResponseError) as caught:
            await container.create_item(doc("k" * 2049, id="too-long"))
        assert caught.value.status_code == 400
        with pytest.raises(CosmosHttpResponseError) as caught:
            await container.read_item("too-long", partition_key="k" * 2049)
        assert caught.value.status_code == 400

    async def test_a_query_text_over_512_kb_is_refused(self, container: Container) -> None:
        # "Maximum length of SQL query: 512 KB" ("Azure Cosmos DB service quotas", SQL query
        # limits); the service answers 400 "The SQL query text exceeded the maximum limit of
        # 524288 characters" (code SC3020; seen in service answers, not in the docs).
        query = "SELECT * FROM c WHERE c.pk = @pk AND c.id = '" + "x" * 524_288 + "'"
        with pytest.raises(CosmosHttpResponseError) as caught:
            await collect(container.query_items(
                query, parameters=[{"name": "@pk", "value": "p1"}], partition_key="p1"))  # fmt: skip
        assert caught.value.status_code == 400

    async def test_a_ttl_over_2147483647_is_refused(
        self, database: Any, make_container: MakeContainer
    ) -> None:
        # "Maximum TTL value: 2147483647" ("Azure Cosmos DB service quotas"; "Time to live");
        # 400 assumed for an item ttl and a container defaultTtl past it.
        container = await make_container(default_ttl=-1)
        with pytest.raises(CosmosHttpResponseError) as caught:
            await container.create_item(doc(id="a", ttl=2_147_483_648))
        assert caught.value.status_code == 400
        await container.create_item(doc(id="b", ttl=2_147_483_647))
        with pytest.raises(CosmosHttpResponseError) as caught:
            await database.create_container(
                id=f"c{uuid.uuid4().hex[:12]}", partition_key=PartitionKey(path="/pk"),
                default_ttl=2_147_483_648,
            )  # fmt: skip
        assert caught.value.status_code == 400

    async def test_a_request_without_a_date_is_unauthorized(
        self, container: Container, account: Account
    ) -> None:
        # x-ms-date is required (REST reference "Common Azure Cosmos DB REST request headers";
        # Date may stand in for it) and signed ("Access control on Azure Cosmos DB resources");
        # without either the service answers 401.
        await container.create_item(doc(id="a"))
        link = f"{container_link(container)}/docs/a"
        response = await signed_request(
            account, "GET", link, resource_type="docs", resource_link=link,
            headers={"x-ms-documentdb-partitionkey": '["p1"]'}, dated=False,
        )  # fmt: skip
        assert response.status == 401
        assert response.error()["code"] == "Unauthorized"
        dated = await signed_request(
            account, "GET", link, resource_type="docs", resource_link=link,
            headers={"x-ms-documentdb-partitionkey": '["p1"]'},
        )  # fmt: skip
        assert dated.status == 200

    async def test_a_400_digit_number_as_partition_key_is_a_400(
        self, container: Container, account: Account
    ) -> None:
        # A partition key number is a 64-bit double (the hash encodes it so: "Azure Cosmos DB
        # service quotas", numbers are IEEE 754 binary64); one that does not fit is an invalid
        # header. Not documented: 400 assumed, with the JSON error body.
        link = f"{container_link(container)}/docs/a"
        response = await signed_request(
            account, "GET", link, resource_type="docs", resource_link=link,
            headers={"x-ms-documentdb-partitionkey": "[" + "9" * 400 + "]"},
        )  # fmt: skip
        assert response.status == 400
        assert response.error()["code"] == "BadRequest"

    async def test_a_batch_read_without_an_id_is_a_400(
        self, container: Container, account: Account
    ) -> None:
        # A batch read names its item by id (py:_base.py `_format_batch_operations`; REST body of
        # a transactional batch). Not documented: 400 assumed for the whole request, nothing run.
        link = f"{container_link(container)}/docs"
        body = json.dumps([{"operationType": "Read"}, {"operationType": "Create",
                           "resourceBody": doc(id="b")}]).encode()  # fmt: skip
        response = await signed_request(
            account, "POST", link, resource_type="docs", resource_link=container_link(container),
            headers={"x-ms-documentdb-partitionkey": '["p1"]', "x-ms-cosmos-is-batch-request": "True",
                     "x-ms-cosmos-batch-atomic": "True"}, body=body,
        )  # fmt: skip
        assert response.status == 400
        assert response.error()["code"] == "BadRequest"
        with pytest.raises(CosmosResourceNotFoundError):
            await container.read_item("b", partition_key="p1")

    async def test_a_9_mb_body_is_a_413_with_the_error_body(
        self, container: Container, account: Account
    ) -> None:
        # "Maximum request size: 2 MB" ("Azure Cosmos DB service quotas"); "HTTP status codes for
        # Azure Cosmos DB": 413 "The document size in the request exceeded the allowable
        # document size for a request", with the JSON error body like every error.
        link = f"{container_link(container)}/docs"
        body = json.dumps(doc(id="huge", blob="x" * (9 * 1024 * 1024))).encode()
        response = await signed_request(
            account, "POST", link, resource_type="docs", resource_link=container_link(container),
            headers={"x-ms-documentdb-partitionkey": '["p1"]'}, body=body,
        )  # fmt: skip
        assert response.status == 413
        assert response.error()["code"] == "RequestEntityTooLarge"

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
        "test_an_id_with_percent_sequences_round_trips_through_every_operation": CREATE_ONLY_BATCH,
        "test_patch_set_at_the_arrays_length_appends": "it refuses set at the array's length (400)",
        "test_patch_incr_past_the_64_bit_range_is_refused": "its incr has no 64-bit bound",
        "test_order_by_keeps_items_without_the_property_in_one_partition": "its ORDER BY drops them",
        "test_order_by_keeps_items_without_the_property_across_partitions": "its ORDER BY drops them",
        "test_a_container_name_over_255_characters_is_refused": NO_LIMITS,
        "test_a_partition_key_value_over_2048_bytes_is_refused": NO_LIMITS,
        "test_a_query_text_over_512_kb_is_refused": NO_LIMITS,
        "test_a_ttl_over_2147483647_is_refused": NO_LIMITS,
        "test_a_9_mb_body_is_a_413_with_the_error_body": NO_LIMITS,
        "test_a_request_without_a_date_is_unauthorized": "it checks neither signatures nor dates",
        "test_a_400_digit_number_as_partition_key_is_a_400": "it answers 404 (no key validation)",
        "test_a_batch_read_without_an_id_is_a_400": CREATE_ONLY_BATCH,
    }

    @pytest.fixture
    def account(self, cosmos_server: RunningServer) -> Account:
        return Account(cosmos_server.endpoint, cosmos_server.key)

    @pytest.fixture
    async def database(self, cosmos_server: RunningServer) -> AsyncIterator[Any]:
        async with AzureCosmosClient(
            cosmos_server.endpoint, credential=cosmos_server.key
        ) as client:
            yield await client.create_database_if_not_exists("conformance")


class TestEmulatorOrAzure(CosmosConformance):
    backend = "the Cosmos DB emulator or Azure"

    @pytest.fixture
    def account(self) -> Account:
        settings = dict(
            part.split("=", 1)
            for part in setting_or_skip("EVENTFLOW_CONFORMANCE_COSMOS_CONNECTION_STRING").split(";")
            if "=" in part
        )
        return Account(settings["AccountEndpoint"], settings["AccountKey"])

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
    def account(self, cosmos_emulator_server: RunningCosmosEmulator) -> Account:
        return Account(cosmos_emulator_server.endpoint, cosmos_emulator_server.key)

    @pytest.fixture
    async def database(self, cosmos_emulator_server: RunningCosmosEmulator) -> AsyncIterator[Any]:
        async with AzureCosmosClient(
            cosmos_emulator_server.endpoint, credential=cosmos_emulator_server.key
        ) as client:
            yield await client.create_database_if_not_exists("conformance")

    @pytest.fixture
    def admin(self, cosmos_emulator_server: RunningCosmosEmulator) -> CosmosEmulatorAdmin:
        return cosmos_emulator_server.admin
