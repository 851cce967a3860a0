"""Races through the API on the real store (the real SDK against the Cosmos DB emulator), with two app
instances sharing it, in each write pattern: the API's 412 and 409 answers are the same in all three."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import httpx
import pytest
from pydantic import SecretStr

from eventflow_emulators.cosmos.testing import RunningCosmosEmulator
from eventflow_producer.bootstrap import write_strategy
from eventflow_producer.settings import Settings

from ..conftest import running  # type: ignore[import-not-found]

ORDER = {
    "customer_id": "c-1",
    "currency": "EUR",
    "lines": [{"sku": "SKU-1", "quantity": 1, "unit_price": "5.00"}],
}


@pytest.fixture(params=["outbox", "entity-first", "event-first"])
def pattern(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def replicas(
    cosmos_emulator_server: RunningCosmosEmulator, pattern: str
) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    settings = Settings(
        mode="emulator", cosmos_endpoint=cosmos_emulator_server.endpoint,
        cosmos_key=SecretStr(cosmos_emulator_server.key), database=f"races-{uuid.uuid4().hex[:8]}",
        write_pattern=pattern,
    )  # fmt: skip
    async with AsyncExitStack() as stack:
        first = await stack.enter_async_context(running(settings, write_strategy(settings)))
        second = await stack.enter_async_context(running(settings, write_strategy(settings)))
        yield first, second


async def _sequences(client: httpx.AsyncClient, order_url: str, pattern: str) -> list[int]:
    """The order's stored event sequences; entity-first stores none and says so."""
    answer = await client.get(f"{order_url}/events")
    if pattern == "entity-first":
        assert (answer.status_code, answer.json()["type"].rsplit(":")[-1]) == (
            404,
            "events-not-kept",
        )
        return []
    return [int(event["sequence"]) for event in answer.json()]


async def test_two_commands_with_one_etag_one_wins_the_other_gets_412(
    replicas: tuple[httpx.AsyncClient, httpx.AsyncClient], pattern: str
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
        winner = next(answer for answer in answers if answer.status_code == 200)
        read = await second.get(f"/orders/{order_id}")  # read-your-writes, from either replica
        assert (read.headers["etag"], read.json()) == ('"2"', winner.json())
        expected = [] if pattern == "entity-first" else [1, 2]
        assert await _sequences(first, f"/orders/{order_id}", pattern) == expected


async def test_concurrent_duplicate_creates_with_one_key_make_one_order(
    replicas: tuple[httpx.AsyncClient, httpx.AsyncClient], pattern: str
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
    expected = [] if pattern == "entity-first" else [1]
    assert await _sequences(first, answers[0].headers["location"], pattern) == expected
