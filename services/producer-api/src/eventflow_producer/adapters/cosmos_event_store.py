"""CosmosEventStore: the event-first write pattern. The events are the source of truth.

A change appends its events only: one document per event, id = <order_id>:event:<sequence>, no
TTL (the events must never expire), in one transactional batch with the idempotency record of a
keyed create. Creating the document of a sequence that is taken conflicts (409): that is the
optimistic concurrency check, so the API's 412 and 409 answers stay what they are.

The order documents (id = <order_id>, kind = "order") are a read model, written only by the
read-model maintainer (the publisher's second change feed processor), and may be behind. A read
here is never behind: it takes the read model and folds the events after its version (one point
read and one single-partition query), so a client reads its own writes, and a command is always
checked against the latest version.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from azure.cosmos.exceptions import CosmosBatchOperationError

from eventflow_contracts import CloudEvent, OrderState, decode_event, evolve
from eventflow_producer.adapters.cosmos_store import CosmosOrderStore, order_from_document
from eventflow_producer.domain import Order
from eventflow_producer.ports import (
    ConcurrentChangeError,
    IdempotencyRecord,
    OrderExistsError,
    Stored,
)


def token_of(order: Order) -> str:
    """The concurrency token of an event-first order: its version (the next event's sequence is
    version + 1, and only one writer can create it)."""
    return str(order.version)


class CosmosEventStore(CosmosOrderStore):
    """The OrderStore port on an append-only event stream per order, with a folded read."""

    def __init__(
        self, container: Any, *, idempotency_ttl_seconds: int, timeout_seconds: float | None = 10.0
    ) -> None:
        super().__init__(
            container, event_ttl_seconds=None, idempotency_ttl_seconds=idempotency_ttl_seconds,
            timeout_seconds=timeout_seconds,
        )  # fmt: skip

    async def create(
        self, order: Order, events: Sequence[CloudEvent[Any]], idempotency: IdempotencyRecord | None
    ) -> str:
        operations = self._event_documents(order, events)
        if idempotency is not None:
            operations.append(self._idempotency_operation(order, idempotency))
        try:
            await self._batch(operations, order.id)
        except CosmosBatchOperationError as error:
            if error.status_code == 409:
                raise OrderExistsError(order.id) from error
            raise
        return token_of(order)

    async def update(self, order: Order, token: str, events: Sequence[CloudEvent[Any]]) -> str:
        if not events or events[0].sequence != int(token) + 1:
            raise ValueError("event-first: a change appends the events after the version read")
        try:
            await self._batch(self._event_documents(order, events), order.id)
        except CosmosBatchOperationError as error:
            if error.status_code == 409:  # another writer took the sequence first
                raise ConcurrentChangeError(order.id) from error
            raise
        return token_of(order)

    async def load(self, order_id: str) -> Stored | None:
        state = await self._read_model(order_id)
        for raw in await self._events_after(order_id, state.version if state else 0):
            state = evolve(state, decode_event(orjson.dumps(raw)))
        if state is None:
            return None
        order = order_from_document(state.model_dump(mode="json"))
        return Stored(order, token_of(order))

    async def _read_model(self, order_id: str) -> OrderState | None:
        document = await self._order_document(order_id)
        return None if document is None else OrderState.model_validate(document)
