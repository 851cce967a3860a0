"""A local stand-in for the async Cosmos DB client (`azure.cosmos.aio`), on SQLite.

Same method names, keyword arguments, return shapes and exception classes as the SDK for the
subset the services use; see this package's README for the list and every known difference.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self, TypeVar

import orjson
from azure.core import MatchConditions
from azure.core.async_paging import AsyncItemPaged, AsyncList
from azure.core.utils import CaseInsensitiveDict
from azure.cosmos import CosmosDict, CosmosList, PartitionKey
from azure.cosmos.exceptions import (
    CosmosAccessConditionFailedError,
    CosmosBatchOperationError,
    CosmosHttpResponseError,
    CosmosResourceExistsError,
    CosmosResourceNotFoundError,
)

from eventflow_local._cosmos_query import QueryNotSupportedError, parse_query
from eventflow_local.environment import LocalEnvironment
from eventflow_local.faults import FaultKind, guarded

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS cosmos_databases (name TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS cosmos_containers (
    db TEXT NOT NULL, name TEXT NOT NULL, rid TEXT NOT NULL UNIQUE, pk_path TEXT NOT NULL,
    default_ttl INTEGER, feed_ranges INTEGER NOT NULL, lsn INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (db, name)
);
CREATE TABLE IF NOT EXISTS cosmos_items (
    rid TEXT NOT NULL, pk TEXT NOT NULL, id TEXT NOT NULL, epk INTEGER NOT NULL,
    lsn INTEGER NOT NULL, idx INTEGER NOT NULL, modified REAL NOT NULL, expires REAL,
    body BLOB NOT NULL,
    PRIMARY KEY (rid, pk, id)
);
CREATE INDEX IF NOT EXISTS cosmos_items_feed ON cosmos_items (rid, lsn, idx);
"""

DEFAULT_FEED_RANGES = 4
MAX_BATCH_OPERATIONS = 100
MAX_ITEM_BYTES = 2 * 1024 * 1024
MAX_ID_LENGTH = 255
HASH_SPACE = 1 << 62
"""Effective partition keys are integers in [0, HASH_SPACE); feed ranges split that space."""
_TOKEN_VERSION = "local-1"
_FAULT_ERRORS = {
    FaultKind.TRANSIENT: (503, "Service is currently unavailable (injected fault)."),
    FaultKind.THROTTLED: (429, "Request rate is large (injected fault)."),
    FaultKind.TIMEOUT: (408, "Request timed out (injected fault)."),
}


def _error(status: int, message: str) -> CosmosHttpResponseError:
    kinds: dict[int, type[CosmosHttpResponseError]] = {
        404: CosmosResourceNotFoundError,
        409: CosmosResourceExistsError,
        412: CosmosAccessConditionFailedError,
    }
    return kinds.get(status, CosmosHttpResponseError)(status_code=status, message=message)


def _not_found() -> CosmosHttpResponseError:
    return _error(404, "Entity with the specified id does not exist in the system.")


def effective_partition_key(value: Any) -> int:
    """A stable hash of a partition key value into [0, HASH_SPACE)."""
    digest = hashlib.blake2b(orjson.dumps(value), digest_size=8).digest()
    return int.from_bytes(digest, "big") % HASH_SPACE


def _bound(text: str) -> int:
    return {"": 0, "FF": HASH_SPACE}.get(text) or int(text, 16)


def _bound_text(value: int) -> str:
    return {0: "", HASH_SPACE: "FF"}.get(value) or f"{value:016X}"


@dataclass(frozen=True)
class _Range:
    low: int
    high: int
    high_inclusive: bool = False

    @classmethod
    def of(cls, feed_range: Mapping[str, Any]) -> _Range:
        try:
            inner = feed_range["Range"]
            return cls(_bound(inner["min"]), _bound(inner["max"]), bool(inner["isMaxInclusive"]))
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"not a feed range: {feed_range!r}") from None

    def to_dict(self) -> dict[str, Any]:
        return {
            "Range": {
                "min": _bound_text(self.low),
                "max": _bound_text(self.high),
                "isMinInclusive": True,
                "isMaxInclusive": self.high_inclusive,
            }
        }

    def sql(self) -> tuple[str, tuple[int, int]]:
        return (f"epk >= ? AND epk {'<=' if self.high_inclusive else '<'} ?", (self.low, self.high))

    def contains(self, other: _Range) -> bool:
        above = other.low >= self.low
        if self.high_inclusive or not other.high_inclusive:
            return above and other.high <= self.high
        return above and other.high < self.high


def feed_ranges_of(count: int) -> list[_Range]:
    """`count` ranges splitting the hash space evenly, like physical partitions."""
    bounds = [index * HASH_SPACE // count for index in range(count + 1)]
    return [_Range(low, high) for low, high in itertools.pairwise(bounds)]


@dataclass(frozen=True)
class _Container:
    rid: str
    pk_path: str
    default_ttl: int | None
    feed_ranges: int

    def partition_key_of(self, body: Mapping[str, Any]) -> Any:
        value: Any = body
        for name in self.pk_path.strip("/").split("/"):
            if not isinstance(value, Mapping) or name not in value:
                raise _error(
                    400, f"The item has no value at the partition key path {self.pk_path}."
                )
            value = value[name]
        if isinstance(value, dict | list):
            raise _error(400, "A partition key value must be a string, number, boolean or null.")
        return value

    def expiry(self, body: Mapping[str, Any], now: float) -> float | None:
        if self.default_ttl is None:
            return None
        ttl = body.get("ttl", self.default_ttl)
        if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl == 0 or ttl < -1:
            raise _error(400, "ttl must be a positive integer number of seconds, or -1.")
        return None if ttl == -1 else now + ttl


def _match_headers(kwargs: dict[str, Any]) -> str | None:
    """The If-Match value the SDK would send; other conditions are outside the stand-in."""
    condition = kwargs.pop("match_condition", None)
    etag = kwargs.pop("etag", None)
    if condition is None:
        if etag is not None:
            raise ValueError("'etag' specified without 'match_condition'.")
        return None
    if condition == MatchConditions.IfNotModified:
        if not etag:
            raise ValueError("'match_condition' specified without 'etag'.")
        return str(etag)
    if condition == MatchConditions.IfPresent:
        return "*"
    raise ValueError(f"match_condition {condition!r} is not supported by the local Cosmos stand-in")


class _ClientConnection:
    """Stands for the SDK's client connection: only `last_response_headers` is used."""

    def __init__(self) -> None:
        self.last_response_headers: CaseInsensitiveDict = CaseInsensitiveDict()


class CosmosClient:
    """Stand-in for `azure.cosmos.aio.CosmosClient`, on `environment`'s cosmos file."""

    def __init__(
        self, environment: LocalEnvironment, *, feed_range_count: int = DEFAULT_FEED_RANGES
    ) -> None:
        self._database = environment.open("cosmos", SCHEMA)
        self._feed_range_count = feed_range_count
        self.client_connection = _ClientConnection()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        self._database.close()

    def get_database_client(self, database: str) -> DatabaseProxy:
        return DatabaseProxy(self, database)

    async def create_database_if_not_exists(self, id: str, **_: Any) -> DatabaseProxy:
        await self._database.write(
            lambda c: c.execute("INSERT OR IGNORE INTO cosmos_databases VALUES (?)", (id,))
        )
        return DatabaseProxy(self, id)

    async def create_database(self, id: str, **_: Any) -> DatabaseProxy:
        def work(connection: sqlite3.Connection) -> None:
            if connection.execute(
                "SELECT 1 FROM cosmos_databases WHERE name = ?", (id,)
            ).fetchone():
                raise _error(409, "Resource with specified id or name already exists.")
            connection.execute("INSERT INTO cosmos_databases VALUES (?)", (id,))

        await self._database.write(work)
        return DatabaseProxy(self, id)

    async def _call(
        self, operation: str, work: Callable[[sqlite3.Connection], T], *, write: bool
    ) -> T:
        return await guarded(
            self._database, f"cosmos.{operation}", work, write=write,
            error=lambda kind: _error(*_FAULT_ERRORS[kind]),
        )  # fmt: skip


class DatabaseProxy:
    """Stand-in for `azure.cosmos.aio.DatabaseProxy`."""

    def __init__(self, client: CosmosClient, database_id: str) -> None:
        self.client = client
        self.id = database_id

    def get_container_client(self, container: str) -> ContainerProxy:
        return ContainerProxy(self.client, self.id, container)

    async def create_container_if_not_exists(
        self, id: str, partition_key: PartitionKey, default_ttl: int | None = None, **_: Any
    ) -> ContainerProxy:
        return await self._create(id, partition_key, default_ttl, exist_ok=True)

    async def create_container(
        self, id: str, partition_key: PartitionKey, default_ttl: int | None = None, **_: Any
    ) -> ContainerProxy:
        return await self._create(id, partition_key, default_ttl, exist_ok=False)

    async def _create(
        self, name: str, partition_key: PartitionKey, default_ttl: int | None, *, exist_ok: bool
    ) -> ContainerProxy:
        paths = dict(partition_key)["paths"]
        if len(paths) != 1:
            raise _error(400, "The local Cosmos stand-in supports one partition key path.")
        if default_ttl is not None and (default_ttl == 0 or default_ttl < -1):
            raise _error(400, "default_ttl must be -1 or a positive number of seconds.")

        def work(connection: sqlite3.Connection) -> None:
            if not connection.execute(
                "SELECT 1 FROM cosmos_databases WHERE name = ?", (self.id,)
            ).fetchone():
                raise _not_found()
            exists = connection.execute(
                "SELECT 1 FROM cosmos_containers WHERE db = ? AND name = ?", (self.id, name)
            ).fetchone()
            if exists and not exist_ok:
                raise _error(409, "Resource with specified id or name already exists.")
            if not exists:
                connection.execute(
                    "INSERT INTO cosmos_containers (db, name, rid, pk_path, default_ttl, feed_ranges)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (self.id, name, uuid.uuid4().hex[:12], paths[0], default_ttl,
                     self.client._feed_range_count),
                )  # fmt: skip

        await self.client._database.write(work)
        return self.get_container_client(name)

    async def delete_container(self, container: str, **_: Any) -> None:
        def work(connection: sqlite3.Connection) -> None:
            row = connection.execute(
                "DELETE FROM cosmos_containers WHERE db = ? AND name = ? RETURNING rid",
                (self.id, container),
            ).fetchone()
            if row is None:
                raise _not_found()
            connection.execute("DELETE FROM cosmos_items WHERE rid = ?", (row[0],))

        await self.client._database.write(work)


class _BatchFailed(Exception):
    def __init__(self, index: int, error: CosmosHttpResponseError) -> None:
        self.index = index
        self.error = error


class ContainerProxy:
    """Stand-in for `azure.cosmos.aio.ContainerProxy`."""

    def __init__(self, client: CosmosClient, database_id: str, container_id: str) -> None:
        self._client = client
        self._db = client._database
        self.database_id = database_id
        self.id = container_id
        self.client_connection = client.client_connection

    # -- plumbing ---------------------------------------------------------------------------

    def _container(self, connection: sqlite3.Connection) -> _Container:
        row = connection.execute(
            "SELECT rid, pk_path, default_ttl, feed_ranges FROM cosmos_containers "
            "WHERE db = ? AND name = ?",
            (self.database_id, self.id),
        ).fetchone()
        if row is None:
            raise _error(404, f"Container {self.database_id}/{self.id} does not exist.")
        return _Container(*row)

    def _respond(self, body: dict[str, Any] | None, status: int) -> CosmosDict:
        headers = CaseInsensitiveDict({"x-ms-request-charge": "1", "x-ms-status": str(status)})
        if body is not None:
            headers["etag"] = body["_etag"]
        self.client_connection.last_response_headers = headers
        return CosmosDict(body, response_headers=headers)

    @staticmethod
    def _load(blob: bytes, lsn: int) -> dict[str, Any]:
        body: dict[str, Any] = orjson.loads(blob)
        body["_lsn"] = lsn
        return body

    def _existing(
        self, connection: sqlite3.Connection, container: _Container, pk: Any, item_id: str
    ) -> dict[str, Any] | None:
        row = connection.execute(
            "SELECT body, lsn FROM cosmos_items WHERE rid = ? AND pk = ? AND id = ? "
            "AND (expires IS NULL OR expires > ?)",
            (container.rid, orjson.dumps(pk), item_id, time.time()),
        ).fetchone()
        return None if row is None else self._load(row[0], row[1])

    @staticmethod
    def _check_id(item_id: Any) -> str:
        if not isinstance(item_id, str) or not item_id:
            raise _error(400, "The item must have a non-empty string id.")
        if len(item_id) > MAX_ID_LENGTH or any(ch in item_id for ch in "/\\?#"):
            raise _error(400, "The id is longer than 255 characters or contains / \\ ? #.")
        return item_id

    def _store(
        self,
        connection: sqlite3.Connection,
        container: _Container,
        body: Mapping[str, Any],
        lsn: int,
        index: int,
    ) -> dict[str, Any]:
        item_id = self._check_id(body.get("id"))
        pk = container.partition_key_of(body)
        now = time.time()
        stored = {k: v for k, v in body.items() if not k.startswith("_")}
        stored |= {
            "_rid": container.rid,
            "_self": f"dbs/{self.database_id}/colls/{self.id}/docs/{item_id}",
            "_etag": f'"{uuid.uuid4()}"',
            "_attachments": "attachments/",
            "_ts": int(now),
        }
        blob = orjson.dumps(stored)
        if len(blob) > MAX_ITEM_BYTES:
            raise _error(413, "Request size is too large.")
        connection.execute(
            "INSERT OR REPLACE INTO cosmos_items "
            "(rid, pk, id, epk, lsn, idx, modified, expires, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (container.rid, orjson.dumps(pk), item_id, effective_partition_key(pk), lsn, index,
             now, container.expiry(body, now), blob),
        )  # fmt: skip
        return stored | {"_lsn": lsn}

    @staticmethod
    def _next_lsn(connection: sqlite3.Connection, container: _Container) -> int:
        row = connection.execute(
            "UPDATE cosmos_containers SET lsn = lsn + 1 WHERE rid = ? RETURNING lsn",
            (container.rid,),
        ).fetchone()
        return int(row[0])

    def _write_one(
        self,
        connection: sqlite3.Connection,
        container: _Container,
        op: str,
        target: tuple[Any, str | None, Mapping[str, Any] | None],
        if_match: str | None,
        lsn: Callable[[], int],
        index: int = 0,
    ) -> tuple[int, dict[str, Any] | None]:
        """One create/upsert/replace/read/delete on `target` = (pk, id, body); (status, body)."""
        pk, item_id, body = target
        if body is not None:
            item_id = self._check_id(body.get("id")) if op != "replace" else item_id
            pk = container.partition_key_of(body)
            if op == "replace" and body.get("id") != item_id:
                raise _error(400, "The id in the body does not match the item being replaced.")
        existing = self._existing(connection, container, pk, str(item_id))
        if if_match is not None and (existing is None or if_match not in ("*", existing["_etag"])):
            if existing is None and op in ("replace", "delete", "read"):
                raise _not_found()
            raise _error(412, "Operation cannot be performed because one of the specified "
                         "precondition is not met.")  # fmt: skip
        if op == "read":
            if existing is None:
                raise _not_found()
            return 200, existing
        if op == "delete":
            if existing is None:
                raise _not_found()
            connection.execute(
                "DELETE FROM cosmos_items WHERE rid = ? AND pk = ? AND id = ?",
                (container.rid, orjson.dumps(pk), item_id),
            )
            return 204, None
        if op == "create" and existing is not None:
            raise _error(409, "Entity with the specified id already exists in the system.")
        if op == "replace" and existing is None:
            raise _not_found()
        assert body is not None
        status = 201 if op == "create" or (op == "upsert" and existing is None) else 200
        return status, self._store(connection, container, body, lsn(), index)

    async def _single(
        self,
        op: str,
        target: tuple[Any, str | None, Mapping[str, Any] | None],
        kwargs: dict[str, Any],
    ) -> CosmosDict | None:
        if_match = _match_headers(kwargs)

        def work(connection: sqlite3.Connection) -> tuple[int, dict[str, Any] | None]:
            container = self._container(connection)
            return self._write_one(
                connection, container, op, target, if_match,
                lambda: self._next_lsn(connection, container),
            )  # fmt: skip

        status, body = await self._client._call(f"{op}_item", work, write=op != "read")
        response = self._respond(body, status)
        return None if body is None else response

    # -- item API ---------------------------------------------------------------------------

    async def read(self, **_: Any) -> dict[str, Any]:
        """The container's properties: id, partitionKey, defaultTtl, _rid."""
        container = await self._db.read(self._container)
        properties: dict[str, Any] = {
            "id": self.id,
            "_rid": container.rid,
            "partitionKey": {"paths": [container.pk_path], "kind": "Hash", "version": 2},
        }
        if container.default_ttl is not None:
            properties["defaultTtl"] = container.default_ttl
        return properties

    async def create_item(self, body: dict[str, Any], **kwargs: Any) -> CosmosDict:
        result = await self._single("create", (None, None, body), kwargs)
        assert result is not None
        return result

    async def upsert_item(self, body: dict[str, Any], **kwargs: Any) -> CosmosDict:
        result = await self._single("upsert", (None, None, body), kwargs)
        assert result is not None
        return result

    async def replace_item(
        self, item: str | Mapping[str, Any], body: dict[str, Any], **kwargs: Any
    ) -> CosmosDict:
        item_id = item if isinstance(item, str) else str(item["id"])
        result = await self._single("replace", (None, item_id, body), kwargs)
        assert result is not None
        return result

    async def read_item(
        self, item: str | Mapping[str, Any], partition_key: Any, **kwargs: Any
    ) -> CosmosDict:
        item_id = item if isinstance(item, str) else str(item["id"])
        result = await self._single("read", (partition_key, item_id, None), kwargs)
        assert result is not None
        return result

    async def delete_item(
        self, item: str | Mapping[str, Any], partition_key: Any, **kwargs: Any
    ) -> None:
        item_id = item if isinstance(item, str) else str(item["id"])
        await self._single("delete", (partition_key, item_id, None), kwargs)

    async def execute_item_batch(
        self, batch_operations: Sequence[tuple[Any, ...]], partition_key: Any, **_: Any
    ) -> CosmosList:
        """All operations or none, in one logical partition; CosmosBatchOperationError names the
        failing operation and reports 424 for the others."""
        if not batch_operations:
            raise _error(400, "The batch request did not have any operations to be executed.")
        if len(batch_operations) > MAX_BATCH_OPERATIONS:
            raise _error(400, f"Batch request has more operations than what is supported "
                         f"({MAX_BATCH_OPERATIONS}).")  # fmt: skip
        operations = [
            self._batch_operation(operation, partition_key) for operation in batch_operations
        ]

        def work(connection: sqlite3.Connection) -> list[dict[str, Any]]:
            container = self._container(connection)
            lsn: list[int] = []

            def shared_lsn() -> int:
                if not lsn:
                    lsn.append(self._next_lsn(connection, container))
                return lsn[0]

            results = []
            for index, (op, target, if_match) in enumerate(operations):
                try:
                    if (
                        target[2] is not None
                        and container.partition_key_of(target[2]) != partition_key
                    ):
                        raise _error(
                            400, "The partition key of the item does not match the batch's."
                        )
                    status, body = self._write_one(
                        connection, container, op, target, if_match, shared_lsn, index
                    )
                except CosmosHttpResponseError as error:
                    raise _BatchFailed(index, error) from None
                result: dict[str, Any] = {"statusCode": status, "requestCharge": 1.0}
                if body is not None:
                    result |= {"eTag": body["_etag"], "resourceBody": body}
                results.append(result)
            return results

        try:
            results = await self._client._call("execute_item_batch", work, write=True)
        except _BatchFailed as failure:
            responses: list[dict[str, Any]] = [
                {"statusCode": 424, "requestCharge": 0.0} for _ in operations
            ]
            responses[failure.index] = {
                "statusCode": failure.error.status_code,
                "requestCharge": 0.0,
            }
            raise CosmosBatchOperationError(  # type: ignore[no-untyped-call]
                error_index=failure.index,
                headers={},
                status_code=failure.error.status_code,
                message=f"There was an error in the transactional batch on index {failure.index}. "
                f"Error message: {failure.error.http_error_message}",
                operation_responses=responses,
            ) from None
        headers = CaseInsensitiveDict({"x-ms-request-charge": str(len(results))})
        self.client_connection.last_response_headers = headers
        return CosmosList(results, response_headers=headers)

    @staticmethod
    def _batch_operation(
        operation: tuple[Any, ...], partition_key: Any
    ) -> tuple[str, tuple[Any, str | None, Mapping[str, Any] | None], str | None]:
        op, args = str(operation[0]).lower(), operation[1]
        options: dict[str, Any] = dict(operation[2]) if len(operation) > 2 else {}
        if options.get("if_none_match_etag") is not None:
            raise ValueError("if_none_match_etag is not supported by the local Cosmos stand-in")
        if_match = options.get("if_match_etag")
        if op in ("create", "upsert"):
            return op, (partition_key, None, args[0]), if_match
        if op == "replace":
            return op, (partition_key, str(args[0]), args[1]), if_match
        if op in ("read", "delete"):
            return op, (partition_key, str(args[0]), None), if_match
        raise ValueError(f"batch operation {op!r} is not supported by the local Cosmos stand-in")

    # -- queries ----------------------------------------------------------------------------

    def _paged(
        self, fetch: Callable[[int, int | None], Awaitable[list[Any]]], max_item_count: int | None
    ) -> AsyncItemPaged[Any]:
        async def get_next(token: str | None) -> tuple[str | None, list[Any]]:
            offset = int(token or 0)
            items = await fetch(offset, max_item_count)
            more = max_item_count is not None and len(items) == max_item_count
            return (str(offset + len(items)) if more else None), items

        async def extract(
            response: tuple[str | None, list[Any]],
        ) -> tuple[str | None, AsyncList[Any]]:
            return response[0], AsyncList(response[1])

        return AsyncItemPaged(get_next, extract)

    def query_items(
        self,
        query: str,
        parameters: Sequence[Mapping[str, Any]] | None = None,
        *,
        partition_key: Any = None,
        max_item_count: int | None = None,
        **_: Any,
    ) -> AsyncItemPaged[dict[str, Any]]:
        """Run a query of the supported subset (see `_cosmos_query`); 400 for anything else."""
        try:
            parsed = parse_query(query, parameters)
        except QueryNotSupportedError as error:
            raise _error(
                400, f"Query not supported by the local Cosmos stand-in: {error}"
            ) from None

        async def fetch(offset: int, limit: int | None) -> list[Any]:
            items = await self._items(partition_key)
            results = parsed.run(items)
            return results[offset : None if limit is None else offset + limit]

        return self._paged(fetch, max_item_count)

    def read_all_items(
        self, *, max_item_count: int | None = None, **_: Any
    ) -> AsyncItemPaged[dict[str, Any]]:
        return self.query_items("SELECT * FROM c", max_item_count=max_item_count)

    async def _items(self, partition_key: Any) -> list[dict[str, Any]]:
        def work(connection: sqlite3.Connection) -> list[dict[str, Any]]:
            container = self._container(connection)
            sql = (
                "SELECT body, lsn FROM cosmos_items WHERE rid = ? "
                "AND (expires IS NULL OR expires > ?)"
            )
            args: tuple[Any, ...] = (container.rid, time.time())
            if partition_key is not None:
                sql, args = sql + " AND pk = ?", (*args, orjson.dumps(partition_key))
            rows = connection.execute(sql + " ORDER BY pk, id", args).fetchall()
            return [self._load(blob, lsn) for blob, lsn in rows]

        return await self._client._call("query_items", work, write=False)

    # -- feed ranges and the change feed ----------------------------------------------------

    def read_feed_ranges(self, **_: Any) -> AsyncItemPaged[dict[str, Any]]:
        """One range per simulated physical partition (`feed_range_count`, default 4).

        The ranges never change (no splits), so `force_refresh` is accepted and has no effect."""

        async def fetch(offset: int, _limit: int | None) -> list[Any]:
            container = await self._db.read(self._container)
            return [r.to_dict() for r in feed_ranges_of(container.feed_ranges)][offset:]

        return self._paged(fetch, None)

    async def feed_range_from_partition_key(self, partition_key: Any) -> dict[str, Any]:
        epk = effective_partition_key(partition_key)
        return _Range(epk, epk, high_inclusive=True).to_dict()

    async def is_feed_range_subset(
        self, parent_feed_range: dict[str, Any], child_feed_range: dict[str, Any]
    ) -> bool:
        return _Range.of(parent_feed_range).contains(_Range.of(child_feed_range))

    def query_items_change_feed(
        self,
        *,
        feed_range: dict[str, Any] | None = None,
        partition_key: Any = None,
        start_time: datetime | str | None = None,
        continuation: str | None = None,
        max_item_count: int | None = None,
        mode: str | None = None,
        **_: Any,
    ) -> AsyncItemPaged[dict[str, Any]]:
        """Latest-version changes in commit order within the range, as the SDK's pull model.

        Not awaitable: iterate it, or `.by_page()` and read `continuation_token` after each page.
        A poll that finds nothing yields no page; the position it reached is then in
        `client_connection.last_response_headers["etag"]`, as with the SDK.
        """
        if mode not in (None, "LatestVersion"):
            raise ValueError("only mode='LatestVersion' is supported by the local Cosmos stand-in")
        if feed_range is not None and partition_key is not None:
            raise ValueError("feed_range and partition_key cannot be combined")
        start = "Now" if start_time is None else start_time
        if not isinstance(start, datetime) and start not in ("Now", "Beginning"):
            raise ValueError("start_time must be 'Now', 'Beginning' or a datetime")
        scope = _Range.of(feed_range) if feed_range is not None else None
        if partition_key is not None:
            epk = effective_partition_key(partition_key)
            scope = _Range(epk, epk, high_inclusive=True)
        feed = _ChangeFeed(
            self, scope or _Range(0, HASH_SPACE), partition_key, start, max_item_count
        )
        paged: AsyncItemPaged[dict[str, Any]] = AsyncItemPaged(feed.get_next, feed.extract)
        if continuation is not None:
            original = paged.by_page

            def by_page(continuation_token: str | None = None) -> AsyncIterator[AsyncIterator[Any]]:
                return original(continuation_token or continuation)

            paged.by_page = by_page  # type: ignore[method-assign]
        return paged


@dataclass
class _ChangeFeed:
    container: ContainerProxy
    scope: _Range
    partition_key: Any
    start: datetime | str
    max_item_count: int | None

    async def get_next(self, token: str | None) -> tuple[str, list[dict[str, Any]]]:
        def work(connection: sqlite3.Connection) -> tuple[str, list[dict[str, Any]], int]:
            container = self.container._container(connection)
            after, scope = self._position(token, container, connection)
            where, bounds = scope.sql()
            sql = (
                f"SELECT body, lsn, idx FROM cosmos_items WHERE rid = ? AND {where} "
                "AND (expires IS NULL OR expires > ?)"
            )
            args: tuple[Any, ...] = (container.rid, *bounds, time.time())
            if self.partition_key is not None:
                sql, args = sql + " AND pk = ?", (*args, orjson.dumps(self.partition_key))
            if isinstance(self.start, datetime) and token is None:
                sql, args = (
                    sql + " AND modified >= ?",
                    (*args, self.start.astimezone(UTC).timestamp()),
                )
            limit = self.max_item_count or -1
            rows = connection.execute(
                sql + " AND lsn > ? ORDER BY lsn, idx LIMIT ?", (*args, after, limit)
            ).fetchall()
            if (
                rows and len(rows) == limit
            ):  # a transaction stays whole: add the rest of the last one
                last_lsn, last_idx = rows[-1][1], rows[-1][2]
                rows += connection.execute(
                    sql + " AND lsn = ? AND idx > ? ORDER BY idx", (*args, last_lsn, last_idx)
                ).fetchall()
            current = _current_lsn(connection, container)
            if not rows:
                reached = current if token is None else after
                return _token(container.rid, scope, reached), [], current
            items = [ContainerProxy._load(body, lsn) for body, lsn, _ in rows]
            return _token(container.rid, scope, rows[-1][1]), items, current

        next_token, items, current = await self.container._client._call(
            "query_items_change_feed", work, write=False
        )
        self.container.client_connection.last_response_headers = CaseInsensitiveDict(
            {
                "etag": next_token,
                "x-ms-item-count": str(len(items)),
                # The SDK's format: <pk range>:<version>#<global LSN>; the lag estimator reads it.
                "x-ms-session-token": f"0:-1#{current}",
            }
        )
        if not items:
            raise StopAsyncIteration
        return next_token, items

    async def extract(
        self, response: tuple[str, list[dict[str, Any]]]
    ) -> tuple[str, AsyncList[dict[str, Any]]]:
        return response[0], AsyncList(response[1])

    def _position(
        self, token: str | None, container: _Container, connection: sqlite3.Connection
    ) -> tuple[int, _Range]:
        if token is None:
            if self.start == "Now":
                return _current_lsn(connection, container), self.scope
            return 0, self.scope
        try:
            state = orjson.loads(base64.b64decode(token))
            if state["v"] != _TOKEN_VERSION:
                raise ValueError(state["v"])
        except (ValueError, KeyError, TypeError):
            raise ValueError(
                "Invalid continuation: not a change feed token of this store"
            ) from None
        if state["rid"] != container.rid:
            raise ValueError("Invalid continuation: [Mismatch collection rid]")
        return int(state["lsn"]), _Range.of(state["range"])


def _current_lsn(connection: sqlite3.Connection, container: _Container) -> int:
    row = connection.execute(
        "SELECT lsn FROM cosmos_containers WHERE rid = ?", (container.rid,)
    ).fetchone()
    return int(row[0])


def _token(rid: str, scope: _Range, lsn: int) -> str:
    state = {"v": _TOKEN_VERSION, "rid": rid, "range": scope.to_dict(), "lsn": lsn}
    return base64.b64encode(orjson.dumps(state)).decode()
