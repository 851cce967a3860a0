"""Which Cosmos DB failures are outages (retried, never the message's fault)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from azure.core.exceptions import ServiceRequestError
from azure.cosmos.exceptions import CosmosHttpResponseError

from eventflow_consumer.adapters.cosmos_projection import _guarded
from eventflow_consumer.ports import TransientStoreError


def failing(error: BaseException) -> Callable[[], Awaitable[None]]:
    async def call() -> None:
        raise error

    return call


@pytest.mark.parametrize("status", [408, 429, 449, 500, 502, 503, 504])
async def test_server_side_and_throttling_statuses_are_outages(status: int) -> None:
    with pytest.raises(TransientStoreError):
        await _guarded(failing(CosmosHttpResponseError(status_code=status, message="x")))


@pytest.mark.parametrize(
    "error", [ServiceRequestError("connection refused"), ConnectionResetError(), TimeoutError()]
)
async def test_an_unreachable_store_is_an_outage(error: BaseException) -> None:
    with pytest.raises(TransientStoreError):
        await _guarded(failing(error))


async def test_a_request_the_store_refuses_is_not_an_outage() -> None:
    with pytest.raises(CosmosHttpResponseError):
        await _guarded(failing(CosmosHttpResponseError(status_code=400, message="bad request")))
