"""CosmosProjectionStore: order summaries and inbox marks in the consumer's own container
(partition key /order_id), written together in one transactional batch."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import aiohttp
from azure.core.exceptions import ServiceRequestError, ServiceResponseError
from azure.cosmos.exceptions import CosmosBatchOperationError, CosmosHttpResponseError

from eventflow_consumer.ports import AlreadyAppliedError, ConcurrentWriteError, TransientStoreError
from eventflow_consumer.projection import OrderSummary

PARTITION_KEY_PATH = "/order_id"
T = TypeVar("T")
# Throttled, timed out, retry-with, and every server-side failure: none of them is the message's.
_TRANSIENT_STATUS = {408, 429, 449}
# The request never got an answer: the account or the network is down.
_UNREACHABLE = (
    ServiceRequestError,
    ServiceResponseError,
    aiohttp.ClientError,
    ConnectionError,
    TimeoutError,
)


def _is_transient(status: int | None) -> bool:
    return status is not None and (status in _TRANSIENT_STATUS or status >= 500)


def _retry_after(error: CosmosHttpResponseError) -> float | None:
    headers = getattr(error, "headers", None) or {}
    value = headers.get("x-ms-retry-after-ms")
    try:
        return float(value) / 1000 if value is not None else None
    except ValueError:
        return None


async def _guarded(call: Callable[[], Awaitable[T]]) -> T:
    """`call()`, with every outage of the store raised as TransientStoreError."""
    try:
        return await call()
    except CosmosBatchOperationError:
        raise  # the batch's own outcome: the caller reads its operation status
    except CosmosHttpResponseError as error:
        if _is_transient(error.status_code):
            raise TransientStoreError(
                f"Cosmos DB answered {error.status_code}", _retry_after(error)
            ) from error
        raise
    except _UNREACHABLE as error:
        raise TransientStoreError(f"Cosmos DB unreachable: {error!r}") from error


def mark_id(event_id: str) -> str:
    return f"inbox:{event_id}"


class CosmosProjectionStore:
    def __init__(self, container: Any, *, mark_ttl_seconds: int) -> None:
        self._container = container
        self._mark_ttl = mark_ttl_seconds

    async def _read(self, item_id: str, partition_key: str) -> dict[str, Any] | None:
        try:
            document: dict[str, Any] = await _guarded(
                lambda: self._container.read_item(item_id, partition_key=partition_key)
            )
        except CosmosHttpResponseError as error:
            if error.status_code == 404:
                return None
            raise
        return document

    async def load(self, order_id: str) -> tuple[OrderSummary, str] | None:
        document = await self._read(order_id, order_id)
        return (
            None if document is None else (OrderSummary.from_document(document), document["_etag"])
        )

    async def get(self, order_id: str) -> dict[str, Any] | None:
        document = await self._read(order_id, order_id)
        return (
            None
            if document is None
            else {k: v for k, v in document.items() if not k.startswith("_")}
        )

    async def has_mark(self, order_id: str, event_id: str) -> bool:
        return await self._read(mark_id(event_id), order_id) is not None

    async def commit(
        self,
        summary: OrderSummary,
        token: str | None,
        event_id: str | None,
        committed_at: datetime | None = None,
    ) -> None:
        document = summary.to_document()
        write = (
            ("create", (document,))
            if token is None
            else ("replace", (summary.order_id, document), {"if_match_etag": token})
        )
        operations: list[Any] = [write]
        if event_id is not None:
            mark = {"id": mark_id(event_id), "order_id": summary.order_id, "kind": "inbox-mark", "ttl": self._mark_ttl,
                    "applied_at": datetime.now(UTC).isoformat(),
                    "committed_at": committed_at.isoformat() if committed_at else None}  # fmt: skip
            operations.append(("create", (mark,)))
        try:
            await _guarded(
                lambda: self._container.execute_item_batch(
                    operations, partition_key=summary.order_id
                )
            )
        except CosmosBatchOperationError as error:
            if error.error_index == 1 and error.status_code == 409:
                raise AlreadyAppliedError(event_id) from error
            if error.status_code in (409, 412):
                raise ConcurrentWriteError(
                    f"batch refused with {error.status_code} at {error.error_index}"
                ) from error
            if _is_transient(error.status_code):
                raise TransientStoreError(
                    f"batch refused with {error.status_code} at {error.error_index}"
                ) from error
            raise

    # -- blocked sessions: a record per blocked session, for the operator CLI -------------------

    async def set_blocked(self, session_id: str, reason: str) -> None:
        """Creates the record; one that exists keeps its time and takes the current reason."""
        record = {"id": f"blocked:{session_id}", "order_id": session_id, "kind": "blocked-session",
                  "reason": reason, "blocked_at": datetime.now(UTC).isoformat()}  # fmt: skip
        try:
            await _guarded(lambda: self._container.create_item(record))
            return
        except CosmosHttpResponseError as error:
            if error.status_code != 409:
                raise
        existing = await self._read(record["id"], session_id)
        if existing is not None and existing.get("reason") != reason:
            record["blocked_at"] = existing.get("blocked_at", record["blocked_at"])
            await _guarded(lambda: self._container.upsert_item(record))

    async def is_blocked(self, session_id: str) -> bool:
        return await self._read(f"blocked:{session_id}", session_id) is not None

    async def clear_blocked(self, session_id: str) -> None:
        try:
            await _guarded(
                lambda: self._container.delete_item(
                    f"blocked:{session_id}", partition_key=session_id
                )
            )
        except CosmosHttpResponseError as error:
            if error.status_code != 404:
                raise

    async def list_blocked(self) -> list[dict[str, Any]]:
        query = "SELECT * FROM c WHERE c.kind = @kind"
        found = self._container.query_items(
            query, parameters=[{"name": "@kind", "value": "blocked-session"}]
        )
        return [
            {k: v for k, v in document.items() if not k.startswith("_")} async for document in found
        ]

    async def clear(self) -> int:
        """Deletes every order summary and inbox mark (for a rebuild from a replay); the blocked
        records stay: they describe sessions the broker still holds. Returns how many went."""
        query = "SELECT c.id, c.order_id FROM c WHERE NOT IS_DEFINED(c.kind) OR c.kind != @kind"
        found = self._container.query_items(
            query, parameters=[{"name": "@kind", "value": "blocked-session"}]
        )
        deleted = 0
        async for document in found:
            try:
                await self._container.delete_item(
                    document["id"], partition_key=document["order_id"]
                )
            except CosmosHttpResponseError as error:
                if error.status_code != 404:  # gone meanwhile (an inbox mark's TTL)
                    raise
            deleted += 1
        return deleted
