"""The change feed and the lease container on Cosmos DB (the SDK's aio ContainerProxy or the
local stand-in's, which share these calls)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import structlog
from azure.core import MatchConditions
from azure.cosmos.exceptions import CosmosHttpResponseError, CosmosResourceExistsError

from eventflow_publisher.changefeed import Lease, LeaseLostError, Page, StartPosition

LOG = structlog.get_logger("eventflow_publisher.cosmos")
LEASE_SCHEMA = "eventflow-lease-1"
MAX_CONFLICT_RETRIES = 5


def _start_time(start: StartPosition) -> datetime | str:
    return "Beginning" if start.kind == "beginning" or start.time is None else start.time


class CosmosChangeFeed:
    """The ChangeFeed port on the monitored container."""

    def __init__(self, container: Any) -> None:
        self._container = container

    async def identity(self) -> str:
        properties = await self._container.read()
        return str(properties["_rid"]).replace("/", "-")

    async def feed_ranges(self) -> list[dict[str, Any]]:
        return [
            feed_range async for feed_range in self._container.read_feed_ranges(force_refresh=True)
        ]

    def _pages(
        self,
        feed_range: dict[str, Any],
        continuation: str | None,
        start: StartPosition,
        max_items: int,
    ) -> Any:
        if continuation is not None:
            return self._container.query_items_change_feed(
                continuation=continuation, max_item_count=max_items
            )
        return self._container.query_items_change_feed(
            feed_range=feed_range, start_time=_start_time(start), max_item_count=max_items
        )

    async def read_page(
        self,
        feed_range: dict[str, Any],
        *,
        continuation: str | None,
        start: StartPosition,
        max_items: int,
    ) -> Page:
        pager = self._pages(feed_range, continuation, start, max_items).by_page()
        try:
            page = await anext(pager)
        except StopAsyncIteration:
            # Nothing new: the SDK yields no page; the position this poll reached is only in the
            # client's last response headers. Read them now, before any other request.
            reached = self._container.client_connection.last_response_headers.get("etag")
            return Page([], reached or continuation)
        items = [item async for item in page]
        return Page(items, pager.continuation_token)

    async def estimate_lag(
        self, feed_range: dict[str, Any], *, continuation: str | None, start: StartPosition
    ) -> int:
        """As the .NET estimator: global LSN of the session token minus the first waiting item's
        LSN, plus one; 0 when nothing waits; 1 (a wake-up sentinel) before the first checkpoint."""
        if continuation is None:
            return 1
        page = await self.read_page(feed_range, continuation=continuation, start=start, max_items=1)
        if not page.items:
            return 0
        session = str(
            self._container.client_connection.last_response_headers.get("x-ms-session-token", "")
        )
        try:
            global_lsn = int(session.split(":", 1)[1].split("#")[1])
        except (IndexError, ValueError):
            return 1
        return max(0, global_lsn - (int(page.items[0]["_lsn"]) - 1))


class CosmosLeaseStore:
    """The LeaseStore port on a lease container (partition key /id, TTL on).

    Ids: `<prefix>..<min>-<max>` per lease, `<prefix>.lock` (with a TTL) during bootstrap,
    `<prefix>.info` once bootstrapped, `<prefix>.poison.<document id>` for poison records.
    """

    def __init__(
        self,
        container: Any,
        prefix: str,
        *,
        clock: Callable[[], float] = time.time,
        lock_ttl: int = 30,
        lock_retry: float = 2.0,
    ) -> None:
        self._container = container
        self.prefix = prefix
        self._clock = clock
        self._lock_ttl = lock_ttl
        self._lock_retry = lock_retry

    def lease_id(self, feed_range: dict[str, Any]) -> str:
        bounds = feed_range["Range"]
        return f"{self.prefix}..{bounds['min']}-{bounds['max']}"

    async def _exists(self, item_id: str) -> bool:
        try:
            await self._container.read_item(item_id, partition_key=item_id)
        except CosmosHttpResponseError as error:
            if error.status_code == 404:
                return False
            raise
        return True

    async def _create_if_absent(self, document: dict[str, Any]) -> None:
        try:
            await self._container.create_item(document)
        except CosmosResourceExistsError:
            return

    async def bootstrap(self, feed_ranges: Sequence[dict[str, Any]], start: StartPosition) -> None:
        info, lock = f"{self.prefix}.info", f"{self.prefix}.lock"
        while not await self._exists(info):
            try:
                await self._container.create_item(
                    {"id": lock, "kind": "lock", "ttl": self._lock_ttl}
                )
            except CosmosResourceExistsError:
                LOG.info(
                    "another instance is creating the leases; waiting", retry_in_s=self._lock_retry
                )
                await asyncio.sleep(self._lock_retry)
                continue
            try:
                for feed_range in feed_ranges:
                    await self._create_if_absent({
                        "id": self.lease_id(feed_range), "kind": "lease", "schema": LEASE_SCHEMA,
                        "feed_range": feed_range, "owner": None, "continuation": None,
                        "start": start.to_document(), "timestamp": self._clock(), "properties": {},
                    })  # fmt: skip
                await self._create_if_absent(
                    {"id": info, "kind": "info", "leases": len(feed_ranges)}
                )
                LOG.info("leases created", leases=len(feed_ranges), prefix=self.prefix)
            finally:
                try:
                    await self._container.delete_item(lock, partition_key=lock)
                except CosmosHttpResponseError as error:
                    if error.status_code != 404:
                        raise

    @staticmethod
    def _lease(document: dict[str, Any]) -> Lease:
        return Lease(
            id=document["id"],
            feed_range=document["feed_range"],
            owner=document.get("owner"),
            continuation=document.get("continuation"),
            start=StartPosition.from_document(document["start"]),
            timestamp=float(document["timestamp"]),
            etag=document["_etag"],
            properties=document.get("properties") or {},
        )

    def _document(self, lease: Lease, **changes: Any) -> dict[str, Any]:
        document = {
            "id": lease.id, "kind": "lease", "schema": LEASE_SCHEMA, "feed_range": lease.feed_range,
            "owner": lease.owner, "continuation": lease.continuation, "start": lease.start.to_document(),
            "timestamp": self._clock(), "properties": lease.properties,
        }  # fmt: skip
        return document | changes

    async def list_leases(self) -> list[Lease]:
        query = "SELECT * FROM c WHERE STARTSWITH(c.id, @prefix)"
        found = self._container.query_items(
            query, parameters=[{"name": "@prefix", "value": f"{self.prefix}.."}]
        )
        return [self._lease(document) async for document in found]

    async def _update(self, lease: Lease, expected_owner: str | None, **changes: Any) -> Lease:
        """Conditional replace; on a lost race re-read and re-apply while the owner is unchanged."""
        for _ in range(MAX_CONFLICT_RETRIES):
            try:
                replaced = await self._container.replace_item(
                    lease.id, self._document(lease, **changes), etag=lease.etag,
                    match_condition=MatchConditions.IfNotModified,
                )  # fmt: skip
                return self._lease(replaced)
            except CosmosHttpResponseError as error:
                if error.status_code == 404:
                    raise LeaseLostError(lease.id) from error
                if error.status_code != 412:
                    raise
            try:
                current = self._lease(
                    await self._container.read_item(lease.id, partition_key=lease.id)
                )
            except CosmosHttpResponseError as error:
                if error.status_code == 404:
                    raise LeaseLostError(lease.id) from error
                raise
            if current.owner != expected_owner:
                raise LeaseLostError(lease.id)
            lease = current
        raise LeaseLostError(f"{lease.id}: kept conflicting after {MAX_CONFLICT_RETRIES} attempts")

    async def acquire(self, lease: Lease, owner: str) -> Lease:
        return await self._update(lease, lease.owner, owner=owner)

    async def renew(self, lease: Lease) -> Lease:
        return await self._update(lease, lease.owner)

    async def checkpoint(self, lease: Lease, continuation: str) -> Lease:
        return await self._update(lease, lease.owner, continuation=continuation)

    async def release(self, lease: Lease) -> None:
        await self._update(lease, lease.owner, owner=None)


class CosmosPoisonStore:
    """Events that can never be sent, kept in the lease container with the reason (no TTL)."""

    def __init__(self, container: Any, prefix: str) -> None:
        self._container = container
        self._prefix = prefix

    async def record(self, document: dict[str, Any], reason: str, detail: str) -> None:
        """Idempotent per source document: a replay overwrites the same record."""
        await self._container.upsert_item({
            "id": f"{self._prefix}.poison.{document.get('id', 'unknown')}", "kind": "poison",
            "reason": reason, "detail": detail, "document": document,
            "recorded_at": datetime.now(UTC).isoformat(),
        })  # fmt: skip

    async def list_records(self) -> list[dict[str, Any]]:
        query = "SELECT * FROM c WHERE STARTSWITH(c.id, @prefix)"
        found = self._container.query_items(
            query, parameters=[{"name": "@prefix", "value": f"{self._prefix}.poison."}]
        )
        return [document async for document in found]
