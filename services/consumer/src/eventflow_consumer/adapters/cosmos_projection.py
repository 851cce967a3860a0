"""CosmosProjectionStore: order summaries and inbox marks in the consumer's own container
(partition key /order_id), written together in one transactional batch."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from azure.cosmos.exceptions import CosmosBatchOperationError, CosmosHttpResponseError

from eventflow_consumer.handling import AlreadyAppliedError, TransientStoreError
from eventflow_consumer.projection import OrderSummary

PARTITION_KEY_PATH = "/order_id"
_TRANSIENT = {408, 429, 449, 503}


def mark_id(event_id: str) -> str:
    return f"inbox:{event_id}"


class CosmosProjectionStore:
    def __init__(self, container: Any, *, mark_ttl_seconds: int) -> None:
        self._container = container
        self._mark_ttl = mark_ttl_seconds

    async def _read(self, item_id: str, partition_key: str) -> dict[str, Any] | None:
        try:
            document: dict[str, Any] = await self._container.read_item(
                item_id, partition_key=partition_key
            )
        except CosmosHttpResponseError as error:
            if error.status_code == 404:
                return None
            if error.status_code in _TRANSIENT:
                raise TransientStoreError(f"Cosmos DB answered {error.status_code}") from error
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
        event_id: str,
        committed_at: datetime | None = None,
    ) -> None:
        document = summary.to_document()
        write = (
            ("create", (document,))
            if token is None
            else ("replace", (summary.order_id, document), {"if_match_etag": token})
        )
        mark = {"id": mark_id(event_id), "order_id": summary.order_id, "kind": "inbox-mark", "ttl": self._mark_ttl,
                "applied_at": datetime.now(UTC).isoformat(),
                "committed_at": committed_at.isoformat() if committed_at else None}  # fmt: skip
        try:
            await self._container.execute_item_batch(
                [write, ("create", (mark,))], partition_key=summary.order_id
            )
        except CosmosBatchOperationError as error:
            if error.error_index == 1 and error.status_code == 409:
                raise AlreadyAppliedError(event_id) from error
            if error.status_code in (*_TRANSIENT, 409, 412):
                raise TransientStoreError(
                    f"batch refused with {error.status_code} at {error.error_index}"
                ) from error
            raise
        except CosmosHttpResponseError as error:
            if error.status_code in _TRANSIENT:
                raise TransientStoreError(f"Cosmos DB answered {error.status_code}") from error
            raise

    # -- blocked sessions: a record per blocked session, for the operator CLI -------------------

    async def set_blocked(self, session_id: str, reason: str) -> None:
        await self._container.upsert_item({"id": f"blocked:{session_id}", "order_id": session_id, "kind": "blocked-session",
                                           "reason": reason, "blocked_at": datetime.now(UTC).isoformat()})  # fmt: skip

    async def clear_blocked(self, session_id: str) -> None:
        try:
            await self._container.delete_item(f"blocked:{session_id}", partition_key=session_id)
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
