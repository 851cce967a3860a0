"""Cosmos DB's rules as state transitions over the store: items, ETags, TTL, batches, queries,
partition key ranges, splits and the latest-version change feed.

No HTTP here: every operation takes plain values and returns a `Reply` (status, JSON body bytes,
ETag, continuation, session token, request charge) or raises `CosmosError`. The protocol layer maps
requests to these calls. Sources for each rule are named where the rule is not obvious.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any

import orjson

from eventflow_emulators.cosmos import errors, ru
from eventflow_emulators.cosmos.epk import (
    MAX_EPK,
    MIN_EPK,
    UNDEFINED,
    EpkRange,
    Undefined,
    effective_partition_key,
    initial_ranges,
)
from eventflow_emulators.cosmos.errors import CosmosError
from eventflow_emulators.cosmos.patch import apply_patch
from eventflow_emulators.cosmos.query import QueryNotSupportedError, parse_query
from eventflow_emulators.cosmos.resources import (
    Container,
    Database,
    PartitionRange,
    new_rid,
    quoted_etag,
)
from eventflow_emulators.cosmos.store import (
    ContainerRow,
    DatabaseRow,
    ItemRow,
    RangeRow,
    Store,
)

MAX_ITEM_BYTES = 2 * 1024 * 1024
"""Azure's item size limit (learn.microsoft.com/azure/cosmos-db/concepts-limits)."""
MAX_ID_BYTES = 1023
"""Azure's id length limit in bytes (same page)."""
MAX_BATCH_OPERATIONS = 100
"""Transactional batch limit (learn.microsoft.com/azure/cosmos-db/transactional-batch)."""
MAX_NAME_CHARACTERS = 255
"""Longest database or container name ("Azure Cosmos DB service quotas", per-container limits)."""
MAX_PARTITION_KEY_BYTES = 2048
"""Longest partition key value, with large partition keys (hash V2) (same page, per-item limits)."""
MAX_TTL_SECONDS = 2_147_483_647
"""Largest `defaultTtl` or item `ttl` (same page; "Time to live" in Azure Cosmos DB)."""
MAX_QUERY_CHARACTERS = 512 * 1024
"""Longest query text: "512 KB" ("SQL query limits", same page); the service counts characters
("The SQL query text exceeded the maximum limit of 524288 characters", code SC3020, 400)."""
DEFAULT_PAGE_SIZE = 100
EPK_CACHE_SIZE = 65_536
SYSTEM_PROPERTIES = frozenset({"_rid", "_self", "_etag", "_ts", "_attachments", "_lsn"})
_FORBIDDEN_ID_CHARACTERS = frozenset("/\\?#")


@dataclass
class Reply:
    """What the service answers: the protocol layer turns the fields into status and headers."""

    status: int
    body: bytes | None = None
    etag: str | None = None
    continuation: str | None = None
    session_token: str | None = None
    charge: float = ru.METADATA
    item_count: int | None = None
    headers: dict[str, str] = field(default_factory=dict)


def _json(value: Any) -> bytes:
    return orjson.dumps(value)


# -- partition keys ---------------------------------------------------------------------------


def parse_partition_key_header(text: str) -> list[Any]:
    """The `x-ms-documentdb-partitionkey` header: a JSON list of components; `{}` is Undefined.
    Raises 400 unless every component is a valid partition key value (`_check_component`)."""
    try:
        value = json.loads(text)
    except ValueError:
        raise errors.bad_request(
            f"The partition key header {_shortened(text)!r} is not valid JSON."
        ) from None
    if not isinstance(value, list) or not value:
        raise errors.bad_request(
            f"The partition key header {_shortened(text)!r} must be a non-empty list."
        )
    components = [UNDEFINED if component == {} else component for component in value]
    for component in components:
        _check_component(component)
    return components


def partition_key_text(components: Sequence[Any]) -> str:
    """A canonical text key for equality of partition key values (numbers compare as doubles)."""
    canonical = [
        {"$undefined": True} if isinstance(c, Undefined)
        else float(c) if isinstance(c, int) and not isinstance(c, bool) else c
        for c in components
    ]  # fmt: skip
    return orjson.dumps(canonical).decode()


def _check_component(value: Any) -> None:
    """A partition key value is a string of at most 2,048 UTF-8 bytes, a number that is a finite
    double (the hash encodes numbers as doubles), a boolean, null or Undefined."""
    if isinstance(value, dict | list):
        raise errors.bad_request(
            "The partition key value must be a string, number, boolean or null.",
            errors.PARTITION_KEY_MISMATCH,
        )
    if isinstance(value, str) and len(value.encode()) > MAX_PARTITION_KEY_BYTES:
        raise errors.bad_request(
            f"The partition key value is {len(value.encode())} bytes long; the limit is "
            f"{MAX_PARTITION_KEY_BYTES} bytes."
        )
    if isinstance(value, int | float) and not isinstance(value, bool) and not _finite(value):
        raise errors.bad_request(
            f"The partition key value {_shortened(str(value))} is not a finite 64-bit "
            "floating-point number."
        )


def _finite(value: int | float) -> bool:
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def _shortened(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


# -- the account ------------------------------------------------------------------------------


class Account:
    """Every database and container of one emulated account, over one store."""

    def __init__(
        self,
        store: Store,
        *,
        ranges_per_container: int = 4,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.ranges_per_container = ranges_per_container
        self.clock = clock
        self.databases: dict[str, Database] = {}
        self.containers: dict[tuple[str, str], Container] = {}
        self.change_feed_scan_lsns: int | None = None
        """At most this many LSNs examined per change feed read (None: all). A read whose scope
        has no change among them answers an empty 200 whose ETag moved only that far, as Azure
        does for a sub-range of a busy physical partition (an admin control)."""
        self._epks: dict[str, str] = {}
        self._load()

    def epk(self, pk: list[Any]) -> str:
        """The EPK of a partition key, memoized: the hash is pure Python and keys repeat."""
        text = partition_key_text(pk)
        found = self._epks.get(text)
        if found is None:
            if len(self._epks) >= EPK_CACHE_SIZE:
                self._epks.clear()
            found = self._epks[text] = effective_partition_key(pk)
        return found

    def _load(self) -> None:
        for row in self.store.databases():
            self.databases[row.id] = Database(row.id, row.rid, row.ts, row.etag)
        for container_row in self.store.containers():
            container = Container(
                container_row.db, container_row.id, container_row.rid,
                self.databases[container_row.db].rid, orjson.loads(container_row.properties),
                container_row.next_range_id, container_row.generation,
                [PartitionRange(r.id, r.min, r.max, orjson.loads(r.parents), r.lsn,
                                r.generation, r.gone, r.ts)
                 for r in self.store.ranges(container_row.rid)],
            )  # fmt: skip
            self.containers[(container.db, container.id)] = container

    # -- databases ------------------------------------------------------------------------------

    def database(self, name: str) -> Database:
        found = self.databases.get(name)
        if found is None:
            raise errors.not_found(f"Database {name!r} does not exist.")
        return found

    def create_database(self, body: dict[str, Any]) -> Reply:
        name = _resource_id(body)
        if name in self.databases:
            raise errors.conflict()
        database = Database(name, new_rid(), int(self.clock()), quoted_etag())
        with self.store.transaction():
            self.store.insert_database(DatabaseRow(name, database.rid, database.ts, database.etag))
        self.databases[name] = database
        return Reply(201, _json(database.to_wire()), etag=database.etag)

    def read_database(self, name: str) -> Reply:
        database = self.database(name)
        return Reply(200, _json(database.to_wire()), etag=database.etag)

    def delete_database(self, name: str) -> Reply:
        self.database(name)
        with self.store.transaction():
            self.store.delete_database(name)
        del self.databases[name]
        for key in [key for key in self.containers if key[0] == name]:
            del self.containers[key]
        return Reply(204)

    def list_databases(self, query: str | None, parameters: Sequence[dict[str, Any]]) -> Reply:
        found = _filter([d.to_wire() for d in self.databases.values()], query, parameters)
        return Reply(200, _json({"_rid": "", "Databases": found, "_count": len(found)}),
                     item_count=len(found))  # fmt: skip

    # -- containers -----------------------------------------------------------------------------

    def container(self, database: str, name: str) -> Container:
        found = self.containers.get((database, name))
        if found is None:
            self.database(database)
            raise errors.not_found(f"Container {database}/{name} does not exist.")
        return found

    def create_container(self, database: str, body: dict[str, Any]) -> Reply:
        db = self.database(database)
        name = _resource_id(body)
        if (database, name) in self.containers:
            raise errors.conflict()
        properties = self._container_properties(body, name)
        now = int(self.clock())
        rid = new_rid(db.rid)
        properties |= {"_rid": rid, "_ts": now, "_etag": quoted_etag(), "_docs": "docs/",
                       "_sprocs": "sprocs/", "_triggers": "triggers/", "_udfs": "udfs/",
                       "_conflicts": "conflicts/"}  # fmt: skip
        ranges = [
            PartitionRange(str(index), r.min, r.max, [], 0, 0, False, now)
            for index, r in enumerate(initial_ranges(self.ranges_per_container))
        ]
        container = Container(database, name, rid, db.rid, properties, len(ranges), 0, ranges)
        with self.store.transaction():
            self.store.insert_container(
                ContainerRow(database, name, rid, _json(properties), len(ranges), 0)
            )
            for partition in ranges:
                self.store.insert_range(rid, _range_row(partition))
        self.containers[(database, name)] = container
        return Reply(201, _json(container.to_wire()), etag=properties["_etag"])

    @staticmethod
    def _container_properties(body: dict[str, Any], name: str) -> dict[str, Any]:
        definition = body.get("partitionKey")
        if not isinstance(definition, dict) or not definition.get("paths"):
            raise errors.bad_request("The container must have a partition key definition.")
        paths = definition["paths"]
        kind = definition.get("kind", "Hash")
        if kind != "Hash" or len(paths) != 1:
            raise errors.bad_request(
                f"Partition key kind {kind!r} with {len(paths)} paths is not supported by the "
                "emulator (only single-path Hash)."
            )
        if definition.get("version", 1) != 2:
            raise errors.bad_request(
                "Only hash V2 partition keys are supported by the emulator "
                "(PartitionKey(path=...) sends version 2)."
            )
        path = paths[0]
        if not isinstance(path, str) or not path.startswith("/") or path == "/":
            raise errors.bad_request(f"Invalid partition key path {path!r}.")
        ttl = body.get("defaultTtl")
        if ttl is not None and not _valid_ttl(ttl):
            raise errors.bad_request(
                f"The value of defaultTtl must be -1 or a positive number of seconds up to "
                f"{MAX_TTL_SECONDS}."
            )
        properties = {k: v for k, v in body.items() if k not in SYSTEM_PROPERTIES}
        properties.setdefault(
            "indexingPolicy",
            {"indexingMode": "consistent", "automatic": True,
             "includedPaths": [{"path": "/*"}], "excludedPaths": [{"path": '/"_etag"/?'}]},
        )  # fmt: skip
        properties.setdefault("conflictResolutionPolicy", {
            "mode": "LastWriterWins", "conflictResolutionPath": "/_ts", "conflictResolutionProcedure": ""})  # fmt: skip
        properties["id"] = name
        return properties

    def read_container(self, database: str, name: str) -> Reply:
        container = self.container(database, name)
        return Reply(200, _json(container.to_wire()), etag=container.properties["_etag"])

    def replace_container(self, database: str, name: str, body: dict[str, Any]) -> Reply:
        container = self.container(database, name)
        if (
            body.get("partitionKey", container.properties["partitionKey"])
            != container.properties["partitionKey"]
        ):
            raise errors.bad_request("The partition key of a container cannot be changed.")
        properties = self._container_properties(
            body | {"partitionKey": container.properties["partitionKey"]}, name
        )
        system = {k: v for k, v in container.properties.items() if k.startswith("_")}
        properties |= system | {"_etag": quoted_etag(), "_ts": int(self.clock())}
        with self.store.transaction():
            self.store.update_container(
                container.rid, _json(properties), container.next_range_id, container.generation
            )
        container.properties = properties
        return Reply(200, _json(container.to_wire()), etag=properties["_etag"])

    def delete_container(self, database: str, name: str) -> Reply:
        container = self.container(database, name)
        with self.store.transaction():
            self.store.delete_container(database, container.rid)
        del self.containers[(database, name)]
        return Reply(204)

    def list_containers(
        self, database: str, query: str | None, parameters: Sequence[dict[str, Any]]
    ) -> Reply:
        db = self.database(database)
        every = [c.to_wire() for (owner, _), c in self.containers.items() if owner == database]
        found = _filter(every, query, parameters)
        return Reply(200, _json({"_rid": db.rid, "DocumentCollections": found,
                                 "_count": len(found)}), item_count=len(found))  # fmt: skip

    # -- partition key ranges and splits ----------------------------------------------------------

    def partition_key_ranges(self, database: str, name: str, if_none_match: str | None) -> Reply:
        """The ranges as an incremental feed: every live range, or with If-None-Match the ranges
        created since that generation; 304 when there are none (the SDK drains the /pkranges
        feed until it sees a literal 304: azure/cosmos/_routing/_routing_map_provider_common.py
        `evaluate_drain_page`)."""
        container = self.container(database, name)
        # The ETag names the container's incarnation too: a client whose cached map belongs to a
        # deleted container of the same name must get the full list, not a 304.
        etag = f'"{container.rid}:{container.generation}"'
        since = _generation(if_none_match, container.rid)
        if since is not None and since >= container.generation:
            return Reply(304, etag=etag)
        ranges = [r for r in container.live_ranges() if since is None or r.generation > since]
        body = {"_rid": container.rid, "PartitionKeyRanges": [container.range_to_wire(r) for r in ranges],
                "_count": len(ranges)}  # fmt: skip
        return Reply(200, _json(body), etag=etag, item_count=len(ranges))

    def split(self, database: str, name: str, range_id: str) -> list[PartitionRange]:
        """Split a live range at the middle of its hash span into two children that inherit its LSN;
        the parent is gone from then on (requests naming it get 410/1002)."""
        container = self.container(database, name)
        parent = container.range_by_id(range_id)
        if parent is None or parent.gone:
            raise errors.not_found(f"Partition key range {range_id} is not a live range of {name}.")
        generation = container.generation + 1
        now = int(self.clock())
        children = [
            PartitionRange(str(container.next_range_id + index), half.min, half.max,
                           [*parent.parents, parent.id], parent.lsn, generation, False, now)
            for index, half in enumerate(parent.epk_range.halves())
        ]  # fmt: skip
        with self.store.transaction():
            self.store.mark_range_gone(container.rid, parent.id)
            for child in children:
                self.store.insert_range(container.rid, _range_row(child))
            self.store.update_container(
                container.rid, _json(container.properties), container.next_range_id + 2, generation
            )
        parent.gone = True
        container.ranges += children
        container.next_range_id += 2
        container.generation = generation
        container.reindex()
        return children

    # -- items ----------------------------------------------------------------------------------

    def read_item(
        self, container: Container, pk: list[Any], item_id: str, if_none_match: str | None
    ) -> Reply:
        row = self.store.item(container.rid, partition_key_text(pk), item_id, self.clock())
        if row is None:
            raise errors.not_found()
        partition = container.range_for(row.epk)
        etag = _etag_of(row.body)
        if if_none_match is not None and if_none_match in (etag, "*"):
            return Reply(304, etag=etag, session_token=partition.session_token())
        return Reply(200, row.body, etag=etag, session_token=partition.session_token(),
                     charge=ru.point_read(len(row.body)))  # fmt: skip

    def write_item(self, container: Container, operation: ItemOperation) -> Reply:
        """Create, upsert, replace, delete or patch one item, in its own transaction."""
        partition = container.range_for(self.epk(operation.pk))
        lsn = partition.lsn + 1
        with self.store.transaction():
            result = self._apply(container, operation, lsn, 0, self.clock())
            self.store.set_range_lsn(container.rid, partition.id, lsn)
        partition.lsn = lsn
        return Reply(result.status, result.body, etag=result.etag,
                     session_token=partition.session_token(), charge=result.charge)  # fmt: skip

    def batch(self, container: Container, pk: list[Any], operations: list[ItemOperation]) -> Reply:
        """A transactional batch: every operation or none, with one LSN (a transaction is one
        change-feed unit). On a failure the failing operation reports its status and every other
        one 424, with HTTP 207 (what the SDK expects: aio/_cosmos_client_connection_async.py
        `Batch`)."""
        if not operations:
            raise errors.bad_request(
                "The batch request did not have any operations to be executed."
            )
        if len(operations) > MAX_BATCH_OPERATIONS:
            raise errors.bad_request(
                f"Batch request has more operations than what is supported ({MAX_BATCH_OPERATIONS})."
            )
        partition = container.range_for(self.epk(pk))
        lsn = partition.lsn + 1
        now = self.clock()
        results: list[ItemResult] = []
        failure: tuple[int, CosmosError] | None = None
        batch_pk = partition_key_text(pk)
        try:
            with self.store.transaction():
                for index, operation in enumerate(operations):
                    try:
                        if partition_key_text(operation.pk) != batch_pk:
                            raise errors.bad_request(
                                "PartitionKey extracted from document doesn't match the one "
                                "specified in the header.", errors.PARTITION_KEY_MISMATCH,
                            )  # fmt: skip
                        results.append(self._apply(container, operation, lsn, index, now))
                    except CosmosError as refused:
                        failure = (index, refused)
                        raise
                self.store.set_range_lsn(container.rid, partition.id, lsn)
        except CosmosError:
            if failure is None:
                raise
            index, cause = failure
            failed: list[dict[str, float]] = [
                {"statusCode": 424, "requestCharge": 0, "subStatusCode": 0} for _ in operations
            ]
            failed[index] = {"statusCode": cause.status, "requestCharge": 1.0,
                             "subStatusCode": cause.sub_status}  # fmt: skip
            return Reply(207, _json(failed), session_token=partition.session_token(),
                         charge=1.0 + index)  # fmt: skip
        partition.lsn = lsn
        body = b"[" + b",".join(r.batch_entry() for r in results) + b"]"
        return Reply(200, body, session_token=partition.session_token(),
                     charge=round(sum(r.charge for r in results), 2))  # fmt: skip

    def _apply(
        self, container: Container, operation: ItemOperation, lsn: int, seq: int, now: float
    ) -> ItemResult:
        pk_text = partition_key_text(operation.pk)
        kind = operation.kind
        item_id = operation.item_id if kind not in {"create", "upsert"} else None
        body = operation.body
        if body is not None:
            item_id = self._check_body(container, operation, body)
        assert item_id is not None
        existing = self.store.item(container.rid, pk_text, item_id, now)
        _check_conditions(existing, operation)
        if kind == "read":
            if existing is None:
                raise errors.not_found()
            return ItemResult(200, existing.body, _etag_of(existing.body),
                              ru.point_read(len(existing.body)))  # fmt: skip
        if kind == "delete":
            if existing is None:
                raise errors.not_found()
            self.store.delete_item(container.rid, pk_text, item_id)
            return ItemResult(204, None, None, ru.write(len(existing.body)))
        if kind == "create" and existing is not None:
            raise errors.conflict()
        if kind in ("replace", "patch") and existing is None:
            raise errors.not_found()
        if kind == "patch":
            assert existing is not None
            current = orjson.loads(existing.body)
            body = apply_patch(current, operation.patch or [], operation.condition)
            self._check_body(container, operation, body)
        assert body is not None
        stored, etag = self._stored_body(container, body, existing, now)
        if len(stored) > MAX_ITEM_BYTES:
            raise CosmosError(413, "Request size is too large.")
        expires = self._expiry(container, body, now)
        self.store.put_item(container.rid, ItemRow(
            pk_text, item_id, self.epk(operation.pk), lsn, seq, int(now), expires, stored,
        ))  # fmt: skip
        status = 201 if existing is None else 200
        return ItemResult(status, stored, etag, ru.write(len(stored)))

    @staticmethod
    def _check_body(container: Container, operation: ItemOperation, body: dict[str, Any]) -> str:
        item_id = body.get("id")
        if not isinstance(item_id, str) or not item_id:
            raise errors.bad_request(
                "The input content is invalid because the required properties - 'id; ' - are missing"
            )
        if len(item_id.encode()) > MAX_ID_BYTES or _FORBIDDEN_ID_CHARACTERS & set(item_id):
            raise errors.bad_request(
                f"The input name {item_id!r} is invalid. Ensure to provide a unique non-empty string "
                "less than '1024' characters, without '/', '\\\\', '?' or '#'."
            )
        if operation.item_id is not None and operation.item_id != item_id:
            raise errors.bad_request(
                f"The id in the body ({item_id!r}) differs from the one in the URL "
                f"({operation.item_id!r})."
            )
        if partition_key_text(body_partition_key(container, body)) != partition_key_text(
            operation.pk
        ):
            raise errors.bad_request(
                "PartitionKey extracted from document doesn't match the one specified in the header.",
                errors.PARTITION_KEY_MISMATCH,
            )
        return item_id

    @staticmethod
    def _stored_body(
        container: Container, body: dict[str, Any], existing: ItemRow | None, now: float
    ) -> tuple[bytes, str]:
        """The item as stored and returned (system properties added), and its new ETag."""
        document = {k: v for k, v in body.items() if k not in SYSTEM_PROPERTIES}
        rid = (
            orjson.loads(existing.body)["_rid"]
            if existing is not None
            else new_rid(container.rid, 8)
        )
        etag = quoted_etag()
        document |= {
            "_rid": rid, "_self": f"{container.self_link}docs/{rid}/", "_etag": etag,
            "_attachments": "attachments/", "_ts": int(now),
        }  # fmt: skip
        return orjson.dumps(document), etag

    @staticmethod
    def _expiry(container: Container, body: dict[str, Any], now: float) -> float | None:
        """Item `ttl` counts only when the container has a default TTL (learn.microsoft.com/azure/
        cosmos-db/time-to-live): -1 means never; a positive number is seconds after the write."""
        if container.default_ttl is None:
            return None
        ttl = body.get("ttl", container.default_ttl)
        if not _valid_ttl(ttl):
            raise errors.bad_request(
                f"The value of ttl must be -1 or a positive number of seconds up to "
                f"{MAX_TTL_SECONDS}."
            )
        return None if ttl == -1 else now + ttl

    def purge_expired(self) -> int:
        with self.store.transaction():
            return self.store.purge_expired(self.clock())

    # -- queries and feeds ----------------------------------------------------------------------

    def query(self, container: Container, request: QueryRequest) -> Reply:
        """Run a query of the supported subset over the request's scope, one page at a time.

        The emulator serves every supported query itself, cross-partition ORDER BY and aggregates
        included, where the service would ask the SDK to fetch a query plan (400/1004)."""
        try:
            parsed = parse_query(request.text, request.parameters)
        except QueryNotSupportedError as error:
            raise errors.bad_request(
                f"The emulator does not support this query: {error}. See the Cosmos section of "
                "libs/emulators/README.md for the supported subset."
            ) from None
        scope, pk_text, partition = self._scope(container, request.scope)
        rows = self.store.scan(container.rid, scope.min, scope.max, pk_text, self.clock())
        results = parsed.run([orjson.loads(row.body) for row in rows])
        offset = _offset(request.continuation)
        size = (
            request.max_items if request.max_items and request.max_items > 0 else DEFAULT_PAGE_SIZE
        )
        page = results[offset : offset + size]
        body = _json({"_rid": container.rid, "Documents": page, "_count": len(page)})
        more = offset + size < len(results)
        return Reply(200, body, continuation=json.dumps({"offset": offset + size}) if more else None,
                     session_token=(partition or container.live_ranges()[0]).session_token(),
                     charge=ru.query(len(rows), len(body)), item_count=len(page))  # fmt: skip

    def _scope(
        self, container: Container, scope: Scope
    ) -> tuple[EpkRange, str | None, PartitionRange | None]:
        """The EPK range, partition key and pk range a query or feed request is limited to."""
        if scope.range_id is not None:
            partition = container.range_by_id(scope.range_id)
            if partition is None or partition.gone:
                raise errors.range_gone(scope.range_id)
            epk = partition.epk_range
            if scope.epk is not None:
                epk = epk.intersect(scope.epk)
            pk_text = partition_key_text(scope.pk) if scope.pk is not None else None
            return epk, pk_text, partition
        if scope.pk is not None:
            point = self.epk(scope.pk)
            partition = container.range_for(point)
            return partition.epk_range, partition_key_text(scope.pk), partition
        if not scope.cross_partition and len(container.live_ranges()) > 1:
            raise errors.bad_request(
                "Cross partition query is required but disabled. Please set "
                "x-ms-documentdb-query-enablecrosspartition to true, specify "
                "x-ms-documentdb-partitionkey, or revise your query to avoid this exception."
            )
        return EpkRange(MIN_EPK, MAX_EPK), None, None

    def change_feed(self, container: Container, request: ChangeFeedRequest) -> Reply:
        """Latest-version changes of one partition key range (optionally an EPK sub-range or one
        partition key) after the LSN in If-None-Match, in LSN order, whole transactions per page.

        If-None-Match absent: from the beginning; "*": from now; otherwise a quoted LSN (the ETag of
        an earlier response). If-Modified-Since keeps changes at or after that time. 304 when the
        range has nothing after the LSN; an empty 200 with a later ETag when it has changes, but
        none in the requested sub-range.
        """
        if request.scope.range_id is None and request.scope.pk is None:
            if len(container.live_ranges()) != 1:
                raise errors.bad_request(
                    "A change feed request must name a partition key range "
                    "(x-ms-documentdb-partitionkeyrangeid) or a partition key."
                )
            request.scope.range_id = container.live_ranges()[0].id
        scope, pk_text, partition = self._scope(container, request.scope)
        assert partition is not None
        after = _start_lsn(request.if_none_match, partition)
        limit = (
            request.max_items if request.max_items and request.max_items > 0 else DEFAULT_PAGE_SIZE
        )
        horizon = partition.lsn
        if self.change_feed_scan_lsns is not None:
            horizon = min(horizon, after + self.change_feed_scan_lsns)
        rows = self.store.changes(
            container.rid, scope.min, scope.max, after_lsn=after, since_ts=request.since,
            pk=pk_text, now=self.clock(), limit=limit, until_lsn=horizon,
        )  # fmt: skip
        session = partition.session_token()
        if not rows:
            status = 200 if horizon > after else 304
            body = (
                _json({"_rid": container.rid, "Documents": [], "_count": 0})
                if status == 200
                else None
            )
            return Reply(status, body, etag=f'"{max(after, horizon)}"', session_token=session,
                         charge=ru.change_feed(0), item_count=0)  # fmt: skip
        documents = b",".join(
            row.body[:-1] + b',"_lsn":' + str(row.lsn).encode() + b"}" for row in rows
        )
        body = (b'{"_rid":"' + container.rid.encode() + b'","Documents":[' + documents
                + b'],"_count":' + str(len(rows)).encode() + b"}")  # fmt: skip
        return Reply(200, body, etag=f'"{rows[-1].lsn}"', session_token=session,
                     charge=ru.change_feed(len(body)), item_count=len(rows))  # fmt: skip


# -- requests and results ---------------------------------------------------------------------


@dataclass
class ItemOperation:
    """One item operation, alone or inside a batch. `item_id` is the id from the URL (or the batch
    operation) for read/replace/delete/patch; create and upsert take it from the body."""

    kind: str  # create, upsert, replace, delete, read, patch
    pk: list[Any]
    item_id: str | None = None
    body: dict[str, Any] | None = None
    if_match: str | None = None
    if_none_match: str | None = None
    patch: list[dict[str, Any]] | None = None
    condition: str | None = None


@dataclass(frozen=True)
class ItemResult:
    status: int
    body: bytes | None
    etag: str | None
    charge: float

    def batch_entry(self) -> bytes:
        head = (
            b'{"statusCode":'
            + str(self.status).encode()
            + b',"requestCharge":'
            + str(self.charge).encode()
        )
        if self.etag is not None:
            head += b',"eTag":' + orjson.dumps(self.etag)
        if self.body is not None:
            head += b',"resourceBody":' + self.body
        return head + b"}"


@dataclass
class Scope:
    """Where a query or feed request reads: a pk range (with an optional EPK sub-range), a
    partition key, or the whole container when cross-partition is allowed."""

    range_id: str | None = None
    epk: EpkRange | None = None
    pk: list[Any] | None = None
    cross_partition: bool = False


@dataclass
class QueryRequest:
    text: str
    parameters: list[dict[str, Any]]
    scope: Scope
    continuation: str | None = None
    max_items: int | None = None


@dataclass
class ChangeFeedRequest:
    scope: Scope
    if_none_match: str | None = None
    since: int | None = None
    max_items: int | None = None


def parse_http_date(text: str) -> int:
    """If-Modified-Since as epoch seconds (the SDK sends RFC 1123: change_feed_start_from.py)."""
    try:
        return int(parsedate_to_datetime(text).timestamp())
    except (TypeError, ValueError):
        raise errors.bad_request(f"If-Modified-Since {text!r} is not an HTTP date.") from None


def body_partition_key(container: Container, body: dict[str, Any]) -> list[Any]:
    components: list[Any] = []
    for path in container.pk_paths:
        value: Any = body
        for name in path:
            if not isinstance(value, dict) or name not in value:
                value = UNDEFINED
                break
            value = value[name]
        _check_component(value)
        components.append(value)
    return components


def _resource_id(body: dict[str, Any]) -> str:
    """A database or container name: 1 to 255 characters, without `/ \\ ? #`."""
    name = body.get("id")
    if not isinstance(name, str) or not name or _FORBIDDEN_ID_CHARACTERS & set(name):
        raise errors.bad_request(f"The resource id {name!r} is invalid.")
    if len(name) > MAX_NAME_CHARACTERS:
        raise errors.bad_request(
            f"The resource id is {len(name)} characters long; the limit is {MAX_NAME_CHARACTERS}."
        )
    return name


def _valid_ttl(ttl: Any) -> bool:
    """-1 (never expires) or 1 to 2,147,483,647 seconds."""
    if isinstance(ttl, bool) or not isinstance(ttl, int):
        return False
    return ttl == -1 or 0 < ttl <= MAX_TTL_SECONDS


def _range_row(partition: PartitionRange) -> RangeRow:
    return RangeRow(partition.id, partition.min, partition.max, _json(partition.parents).decode(),
                    partition.lsn, partition.generation, partition.gone, partition.ts)  # fmt: skip


def _etag_of(body: bytes) -> str:
    etag: str = orjson.loads(body)["_etag"]
    return etag


def _check_conditions(existing: ItemRow | None, operation: ItemOperation) -> None:
    if operation.if_match is not None and operation.if_match != "*":
        if existing is None:
            raise errors.not_found() if operation.kind != "upsert" else errors.precondition_failed()
        if _etag_of(existing.body) != operation.if_match:
            raise errors.precondition_failed()
    if (
        operation.if_none_match is not None
        and existing is not None
        and operation.kind != "read"
        and operation.if_none_match in ("*", _etag_of(existing.body))
    ):
        raise errors.precondition_failed()


def _generation(if_none_match: str | None, rid: str) -> int | None:
    """The topology generation an If-None-Match names, if it is one of this container's."""
    owner, _, generation = (if_none_match or "").strip('"').rpartition(":")
    if owner != rid or not generation.isdigit():
        return None
    return int(generation)


def _start_lsn(if_none_match: str | None, partition: PartitionRange) -> int:
    if if_none_match is None:
        return 0
    if if_none_match == "*":
        return partition.lsn
    try:
        return int(if_none_match.removeprefix("W/").strip('"'))
    except ValueError:
        raise errors.bad_request(
            f"If-None-Match {if_none_match!r} is not a change feed continuation (a quoted LSN)."
        ) from None


def _offset(continuation: str | None) -> int:
    if not continuation:
        return 0
    try:
        offset = json.loads(continuation)["offset"]
        if not isinstance(offset, int) or offset < 0:
            raise ValueError(offset)
        return offset
    except (ValueError, KeyError, TypeError):
        raise errors.bad_request(f"Invalid continuation token {continuation!r}.") from None


def _filter(
    resources: list[dict[str, Any]], query: str | None, parameters: Sequence[dict[str, Any]]
) -> list[Any]:
    if query is None:
        return resources
    try:
        return parse_query(query, parameters).run(resources)
    except QueryNotSupportedError as error:
        raise errors.bad_request(f"The emulator does not support this query: {error}.") from None
