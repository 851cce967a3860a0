"""Races through the API on the real store (the real SDK against the Cosmos DB emulator), with two app instances sharing it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import httpx
import pytest
from pydantic import SecretStr

from eventflow_emulators.cosmos.testing import RunningCosmosEmulator
from eventflow_producer.bootstrap import open_store
from eventflow_producer.settings import Settings

from ..conftest import running  # type: ignore[import-not-found]

ORDER = {
    "customer_id": "c-1",
    "currency": "EUR",
    "lines": [{"sku": "SKU-1", "quantity": 1, "unit_price": "5.00"}],
}


@pytest.fixture
async def replicas(
    cosmos_emulator_server: RunningCosmosEmulator,
) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    settings = Settings(
        mode="emulator", cosmos_endpoint=cosmos_emulator_server.endpoint,
        cosmos_key=SecretStr(cosmos_emulator_server.key), database=f"races-{uuid.uuid4().hex[:8]}",
    )  # fmt: skip
    async with AsyncExitStack() as stack:
        first = await stack.enter_async_context(running(settings, open_store))
        second = await stack.enter_async_context(running(settings, open_store))
        yield first, second


async def test_two_commands_with_one_etag_one_wins_the_other_gets_412(
    replicas: tuple[httpx.AsyncClient, httpx.AsyncClient],
) -> None:
    first, second = replicas
    for _ in range(10):
        order_id = (await first.post("/orders", json=ORDER)).json()["id"]
        line = {"sku": "SKU-2", "quantity": 1, "unit_price": "1.00"}
        answers = await asyncio.gather(
            first.post(f"/orders/{order_id}/items", json=line, headers={"If-Match": '"1"'}),
            second.post(f"/orders/{order_id}/submit", headers={"If-Match": '"1"'}),
        )
        assert sorted(answer.status_code for answer in answers) == [200, 412]
        events = (await first.get(f"/orders/{order_id}/events")).json()
        assert [int(event["sequence"]) for event in events] == [1, 2]


async def test_concurrent_duplicate_creates_with_one_key_make_one_order(
    replicas: tuple[httpx.AsyncClient, httpx.AsyncClient],
) -> None:
    first, second = replicas
    answers = await asyncio.gather(
        *[
            (first if n % 2 else second).post(
                "/orders", json=ORDER, headers={"Idempotency-Key": "once"}
            )
            for n in range(8)
        ]
    )
    assert {answer.status_code for answer in answers} == {201}
    assert len({answer.json()["id"] for answer in answers}) == 1
    assert len({answer.text for answer in answers}) == 1
    events = (await first.get(answers[0].headers["location"] + "/events")).json()
    assert len(events) == 1
