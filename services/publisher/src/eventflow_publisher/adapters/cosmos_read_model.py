"""CosmosReadModelStore: the event-first read models (order documents) in the producer's orders
container, next to the event documents they are folded from (one partition per order)."""

from __future__ import annotations

from typing import Any, Final

from azure.core import MatchConditions
from azure.cosmos.exceptions import CosmosHttpResponseError

from eventflow_contracts import OrderState
from eventflow_contracts.orders_container import (
    DocumentKind,
    events_after_query,
    order_document_id,
)
from eventflow_publisher.readmodel import ReadModelConflictError

READ_MODEL: Final[DocumentKind] = "order"


def read_model_document(state: OrderState) -> dict[str, Any]:
    """The order document the producer's API reads (`eventflow_contracts.orders_container`)."""
    return {**state.model_dump(mode="json"), "id": order_document_id(state.order_id),
            "kind": READ_MODEL}  # fmt: skip


class CosmosReadModelStore:
    """The ReadModelStore port on the orders container (the SDK's aio ContainerProxy)."""

    def __init__(self, container: Any) -> None:
        self._container = container

    async def load(self, order_id: str) -> tuple[OrderState | None, str | None]:
        try:
            document = await self._container.read_item(
                order_document_id(order_id), partition_key=order_id
            )
        except CosmosHttpResponseError as error:
            if error.status_code == 404:
                return None, None
            raise
        return OrderState.model_validate(document), str(document["_etag"])

    async def save(self, state: OrderState, etag: str | None) -> None:
        document = read_model_document(state)
        try:
            if etag is None:
                await self._container.create_item(document)
            else:
                await self._container.replace_item(
                    order_document_id(state.order_id),
                    document,
                    etag=etag,
                    match_condition=MatchConditions.IfNotModified,
                )
        except CosmosHttpResponseError as error:
            if error.status_code in (409, 412):
                raise ReadModelConflictError(state.order_id) from error
            raise

    async def events_after(self, order_id: str, version: int) -> list[dict[str, Any]]:
        query, parameters = events_after_query(order_id, version)
        found = self._container.query_items(query, parameters=parameters, partition_key=order_id)
        return [document async for document in found]
