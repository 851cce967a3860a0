"""CosmosOrderStore: orders and their outbox events in one Cosmos DB container, in the layout
`eventflow_contracts.orders_container` documents (the publisher reads the same container).

Every write is one transactional batch, so an order and its events commit together or not at
all; an event id derived from (order, sequence) makes a second writer of the same version fail.
Works with the azure-cosmos aio ContainerProxy.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import datetime
from typing import Any

from azure.core.exceptions import (
    AzureError,
    HttpResponseError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.cosmos.exceptions import (
    CosmosBatchOperationError,
    CosmosClientTimeoutError,
    CosmosHttpResponseError,
)

from eventflow_contracts import CloudEvent, OrderLine, to_json_dict
from eventflow_contracts.orders_container import (
    event_document_id,
    events_after_query,
    idempotency_document_id,
    order_document_id,
)
from eventflow_producer.domain import Order, OrderStatus
from eventflow_producer.ports import (
    ConcurrentChangeError,
    IdempotencyRecord,
    OrderExistsError,
    OrderMissingError,
    Stored,
    StoreUnavailableError,
)

_TRANSIENT_STATUSES = frozenset({408, 429, 449})


def order_document(order: Order) -> dict[str, Any]:
    return {
        "id": order_document_id(order.id),
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


def unavailable_from(error: AzureError) -> StoreUnavailableError | None:
    """The outage an SDK error amounts to, or None when the error is not one: no connection (refused,
    DNS, reset), no answer in time, or a status Cosmos DB uses for "not now" (408, 429 after the
    SDK's own retries, 449, any 5xx). Every other status is the request's or the setup's (401, 403,
    404, 409, 412 ...) and is left to the caller."""
    if isinstance(error, HttpResponseError):
        status = error.status_code or 0
        if status not in _TRANSIENT_STATUSES and status < 500:
            return None
        headers = getattr(error, "headers", None) or {}
        retry_ms = headers.get("x-ms-retry-after-ms") if hasattr(headers, "get") else None
        return StoreUnavailableError(
            f"Cosmos DB answered {status}",
            retry_after_seconds=float(retry_ms) / 1000 if retry_ms else 1.0,
        )
    if isinstance(error, ServiceRequestError | ServiceResponseError | CosmosClientTimeoutError):
        return StoreUnavailableError(f"Cosmos DB unreachable ({type(error).__name__})")
    return None


@asynccontextmanager
async def outages_as_unavailable(timeout_seconds: float | None) -> AsyncIterator[None]:
    """Raise StoreUnavailableError for an SDK error that is an outage (`unavailable_from`) and for
    no answer within `timeout_seconds` (the SDK's own read timeout is 65 s, retried: a stalled
    store would hold a request for minutes); let every other error through unchanged."""
    try:
        async with asyncio.timeout(timeout_seconds):
            yield
    except TimeoutError as error:
        raise StoreUnavailableError(
            f"Cosmos DB did not answer within {timeout_seconds} s"
        ) from error
    except AzureError as error:
        unavailable = unavailable_from(error)
        if unavailable is None:
            raise
        raise unavailable from error


class CosmosOrderStore:
    """The OrderStore port on a Cosmos DB container (the SDK's aio ContainerProxy)."""

    def __init__(
        self,
        container: Any,
        *,
        event_ttl_seconds: int | None,
        idempotency_ttl_seconds: int,
        timeout_seconds: float | None = 10.0,
    ) -> None:
        """`event_ttl_seconds=None`: event documents never expire. Every operation answers or
        raises StoreUnavailableError within `timeout_seconds` (None: the SDK's own timeouts)."""
        self._container = container
        self._event_ttl = event_ttl_seconds
        self._idempotency_ttl = idempotency_ttl_seconds
        self._timeout = timeout_seconds

    def _answering(self) -> AbstractAsyncContextManager[None]:
        return outages_as_unavailable(self._timeout)

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
            "id": idempotency_document_id(order.id), "order_id": order.id, "kind": "idempotency",
            "request_hash": idempotency.request_hash, "order": order_document(idempotency.order),
            "ttl": self._idempotency_ttl,
        },))  # fmt: skip

    async def _batch(
        self, operations: list[tuple[Any, ...]], order_id: str
    ) -> list[dict[str, Any]]:
        async with self._answering():
            results: list[dict[str, Any]] = await self._container.execute_item_batch(
                operations, partition_key=order_id
            )
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
            async with self._answering():
                document: dict[str, Any] = await self._container.read_item(
                    order_id, partition_key=order_id
                )
        except CosmosHttpResponseError as error:
            if error.status_code == 404:
                return None
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
        query, parameters = events_after_query(order_id, sequence)
        async with self._answering():
            pages = self._container.query_items(
                query, parameters=parameters, partition_key=order_id
            )
            return [document["event"] async for document in pages]

    async def idempotency_record(self, order_id: str) -> IdempotencyRecord | None:
        try:
            async with self._answering():
                document = await self._container.read_item(
                    idempotency_document_id(order_id), partition_key=order_id
                )
        except CosmosHttpResponseError as error:
            if error.status_code == 404:
                return None
            raise
        return IdempotencyRecord(document["request_hash"], order_from_document(document["order"]))

    async def check(self) -> None:
        """Raises StoreUnavailableError when the container does not answer (any error: a
        readiness probe must not answer 500)."""
        try:
            async with self._answering():
                await self._container.read()
        except AzureError as error:
            raise StoreUnavailableError(f"Cosmos DB: {type(error).__name__}") from error
