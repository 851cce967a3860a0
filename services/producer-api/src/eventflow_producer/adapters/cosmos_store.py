"""CosmosOrderStore: orders and their outbox events in one Cosmos DB container.

Documents of one order share its partition key (`/order_id`):
- the order:        id = <order_id>,                       kind = "order"
- each event:       id = <order_id>:event:<sequence 20 digits>, kind = "event", ttl = event TTL,
                    event = the CloudEvent JSON object
- the idempotency record of a keyed create: id = <order_id>:idempotency, ttl = idempotency TTL

Every write is one transactional batch, so an order and its events commit together or not at
all; an event id derived from (order, sequence) makes a second writer of the same version fail.
Works with the azure-cosmos aio ContainerProxy.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from azure.cosmos.exceptions import CosmosBatchOperationError, CosmosHttpResponseError

from eventflow_contracts import CloudEvent, OrderLine, format_sequence, to_json_dict
from eventflow_producer.domain import Order, OrderStatus
from eventflow_producer.ports import (
    ConcurrentChangeError,
    IdempotencyRecord,
    OrderExistsError,
    OrderMissingError,
    Stored,
    StoreUnavailableError,
)

PARTITION_KEY_PATH = "/order_id"
_TRANSIENT = {408, 429, 449, 503}


def event_document_id(order_id: str, sequence: int) -> str:
    """One id per (order, sequence): a second writer of the same version conflicts (409)."""
    return f"{order_id}:event:{format_sequence(sequence)}"


def order_document(order: Order) -> dict[str, Any]:
    return {
        "id": order.id,
        "order_id": order.id,
        "kind": "order",
        "customer_id": order.customer_id,
        "currency": order.currency,
        "lines": [line.model_dump(mode="json") for line in order.lines],
        "status": order.status.value,
        "version": order.version,
        "total": f"{order.total:.2f}",
        "cancel_reason": order.cancel_reason,
        "created_at": order.created_at.isoformat(),
        "updated_at": order.updated_at.isoformat(),
    }


def order_from_document(document: dict[str, Any]) -> Order:
    return Order(
        id=document["order_id"],
        customer_id=document["customer_id"],
        currency=document["currency"],
        lines=tuple(OrderLine.model_validate(line) for line in document["lines"]),
        status=OrderStatus(document["status"]),
        version=int(document["version"]),
        created_at=datetime.fromisoformat(document["created_at"]),
        updated_at=datetime.fromisoformat(document["updated_at"]),
        cancel_reason=document.get("cancel_reason"),
    )


def _unavailable(
    error: CosmosHttpResponseError | CosmosBatchOperationError,
) -> StoreUnavailableError:
    headers = getattr(error, "headers", None) or {}
    retry_ms = headers.get("x-ms-retry-after-ms") if hasattr(headers, "get") else None
    retry = float(retry_ms) / 1000 if retry_ms else 1.0
    return StoreUnavailableError(
        f"Cosmos DB answered {error.status_code}", retry_after_seconds=retry
    )


class CosmosOrderStore:
    """The OrderStore port on a Cosmos DB container (the SDK's aio ContainerProxy)."""

    def __init__(
        self, container: Any, *, event_ttl_seconds: int | None, idempotency_ttl_seconds: int
    ) -> None:
        """`event_ttl_seconds=None`: event documents never expire."""
        self._container = container
        self._event_ttl = event_ttl_seconds
        self._idempotency_ttl = idempotency_ttl_seconds

    def _event_documents(
        self, order: Order, events: Sequence[CloudEvent[Any]]
    ) -> list[tuple[Any, ...]]:
        expiry = {} if self._event_ttl is None else {"ttl": self._event_ttl}
        return [
            ("create", ({
                "id": event_document_id(order.id, event.sequence),
                "order_id": order.id,
                "kind": "event",
                "sequence": event.sequence,
                "event_id": event.id,
                "type": event.type,
                "event": to_json_dict(event),
                **expiry,
            },))
            for event in events
        ]  # fmt: skip

    def _idempotency_operation(
        self, order: Order, idempotency: IdempotencyRecord
    ) -> tuple[Any, ...]:
        return ("create", ({
            "id": f"{order.id}:idempotency", "order_id": order.id, "kind": "idempotency",
            "request_hash": idempotency.request_hash, "order": order_document(idempotency.order),
            "ttl": self._idempotency_ttl,
        },))  # fmt: skip

    async def _batch(
        self, operations: list[tuple[Any, ...]], order_id: str
    ) -> list[dict[str, Any]]:
        try:
            results: list[dict[str, Any]] = await self._container.execute_item_batch(
                operations, partition_key=order_id
            )
        except CosmosBatchOperationError as error:
            if error.status_code in _TRANSIENT:
                raise _unavailable(error) from error
            raise
        except CosmosHttpResponseError as error:
            if error.status_code in _TRANSIENT:
                raise _unavailable(error) from error
            raise
        return results

    async def create(
        self, order: Order, events: Sequence[CloudEvent[Any]], idempotency: IdempotencyRecord | None
    ) -> str:
        operations: list[tuple[Any, ...]] = [("create", (order_document(order),))]
        operations += self._event_documents(order, events)
        if idempotency is not None:
            operations.append(self._idempotency_operation(order, idempotency))
        try:
            results = await self._batch(operations, order.id)
        except CosmosBatchOperationError as error:
            if error.status_code == 409:
                raise OrderExistsError(order.id) from error
            raise
        return str(results[0]["eTag"])

    async def load(self, order_id: str) -> Stored | None:
        document = await self._order_document(order_id)
        return (
            None
            if document is None
            else Stored(order_from_document(document), str(document["_etag"]))
        )

    async def _order_document(self, order_id: str) -> dict[str, Any] | None:
        """The order document (id = order id), or None."""
        try:
            document: dict[str, Any] = await self._container.read_item(
                order_id, partition_key=order_id
            )
        except CosmosHttpResponseError as error:
            if error.status_code == 404:
                return None
            if error.status_code in _TRANSIENT:
                raise _unavailable(error) from error
            raise
        return document

    async def update(self, order: Order, token: str, events: Sequence[CloudEvent[Any]]) -> str:
        operations: list[tuple[Any, ...]] = [
            ("replace", (order.id, order_document(order)), {"if_match_etag": token})
        ]
        operations += self._event_documents(order, events)
        try:
            results = await self._batch(operations, order.id)
        except CosmosBatchOperationError as error:
            if error.status_code in (409, 412):
                raise ConcurrentChangeError(order.id) from error
            if error.status_code == 404:
                raise OrderMissingError(order.id) from error
            raise
        return str(results[0]["eTag"])

    async def events(self, order_id: str) -> list[dict[str, Any]]:
        return await self._events_after(order_id, 0)

    async def _events_after(self, order_id: str, sequence: int) -> list[dict[str, Any]]:
        """The order's stored events after `sequence`, in sequence order."""
        query = (
            "SELECT * FROM c WHERE c.order_id = @order_id AND c.kind = 'event'"
            " AND c.sequence > @after ORDER BY c.sequence"
        )
        parameters = [
            {"name": "@order_id", "value": order_id},
            {"name": "@after", "value": sequence},
        ]
        try:
            pages = self._container.query_items(
                query, parameters=parameters, partition_key=order_id
            )
            return [document["event"] async for document in pages]
        except CosmosHttpResponseError as error:
            if error.status_code in _TRANSIENT:
                raise _unavailable(error) from error
            raise

    async def idempotency_record(self, order_id: str) -> IdempotencyRecord | None:
        try:
            document = await self._container.read_item(
                f"{order_id}:idempotency", partition_key=order_id
            )
        except CosmosHttpResponseError as error:
            if error.status_code == 404:
                return None
            raise
        return IdempotencyRecord(document["request_hash"], order_from_document(document["order"]))

    async def check(self) -> None:
        try:
            await self._container.read()
        except CosmosHttpResponseError as error:
            raise _unavailable(error) from error
