"""The read API through the real SDK with the Cosmos DB emulator stopped (connection refused),
stalled (SIGSTOP: no answer) and faulting (503s from its controls): every failure that is
not the caller's answers 503 store-unavailable with Retry-After as problem+json, /readyz included,
never 500; /healthz stays 200; the API answers again once the store does."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from azure.cosmos import PartitionKey
from pydantic import SecretStr

from eventflow_consumer.adapters.cosmos_projection import PARTITION_KEY_PATH, CosmosProjectionStore
from eventflow_consumer.bootstrap import open_cosmos_client
from eventflow_consumer.observability import ConsumerMetrics, http_app
from eventflow_consumer.projection import OrderSummary
from eventflow_consumer.settings import Settings
from eventflow_emulators.cosmos.testing import RunningCosmosEmulator, cosmos_emulator

READ_TIMEOUT_S = 2.0
DEADLINE_S = 60.0


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[RunningCosmosEmulator]:
    """An emulator of this test's own, to be stopped, stalled or faulted."""
    with cosmos_emulator(tmp_path / "cosmos") as running:
        yield running


@asynccontextmanager
async def read_api(
    emulator: RunningCosmosEmulator,
) -> AsyncIterator[tuple[TestClient[Any, Any], str]]:
    """The read API on a projections container of its own, with one order in it (its id)."""
    settings = Settings(
        mode="emulator", cosmos_endpoint=emulator.endpoint, cosmos_key=SecretStr(emulator.key),
        servicebus_connection_string=SecretStr("Endpoint=sb://127.0.0.1:1;SharedAccessKeyName=k;"
                                               "SharedAccessKey=a2V5;UseDevelopmentEmulator=true"),
        database=f"read-{uuid.uuid4().hex[:8]}",
    )  # fmt: skip
    async with AsyncExitStack() as stack:
        cosmos = await open_cosmos_client(settings, stack)
        database = await cosmos.create_database_if_not_exists(settings.database)
        container = await database.create_container_if_not_exists(
            id="projections", partition_key=PartitionKey(path=PARTITION_KEY_PATH)
        )
        store = CosmosProjectionStore(container, mark_ttl_seconds=3600)
        order_id = f"o-{uuid.uuid4().hex[:8]}"
        summary = OrderSummary(order_id, "c-1", "EUR", "created", (), last_sequence=1)
        await store.commit(summary, None, None)
        app = http_app(
            ConsumerMetrics(), store.get, lambda: True, read_timeout_seconds=READ_TIMEOUT_S
        )
        async with TestClient(TestServer(app)) as client:
            yield client, order_id


async def is_store_unavailable(client: TestClient[Any, Any], path: str) -> None:
    answer = await client.get(path)
    assert answer.status == 503, await answer.text()
    assert answer.content_type == "application/problem+json"
    assert (await answer.json())["type"] == "urn:eventflow:problem:store-unavailable"
    assert int(answer.headers["Retry-After"]) >= 1


async def answers(client: TestClient[Any, Any], path: str, status: int) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while (await client.get(path)).status != status:
        assert time.monotonic() < deadline, f"{path} never answered {status}"
        await asyncio.sleep(0.2)


async def test_a_stopped_store_answers_503_and_liveness_stays_200(
    emulator: RunningCosmosEmulator,
) -> None:
    async with read_api(emulator) as (client, order_id):
        await answers(client, "/readyz", 200)
        assert (await client.get(f"/orders/{order_id}")).status == 200
        os.kill(emulator.pid, signal.SIGKILL)
        await asyncio.to_thread(os.waitpid, emulator.pid, 0)
        await is_store_unavailable(client, f"/orders/{order_id}")
        await is_store_unavailable(client, "/readyz")
        assert (await client.get("/healthz")).status == 200


async def test_a_stalled_store_answers_503_within_the_read_timeout(
    emulator: RunningCosmosEmulator,
) -> None:
    async with read_api(emulator) as (client, order_id):
        await answers(client, "/readyz", 200)
        os.kill(emulator.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            await is_store_unavailable(client, f"/orders/{order_id}")
            await is_store_unavailable(client, "/readyz")
            # two reads of at most 2 s each, with room for a loaded machine
            assert time.monotonic() - started < 15
        finally:
            os.kill(emulator.pid, signal.SIGCONT)
        await answers(client, "/readyz", 200)
        assert (await client.get(f"/orders/{order_id}")).status == 200


async def test_a_faulting_store_answers_503_then_answers_again(
    emulator: RunningCosmosEmulator,
) -> None:
    async with read_api(emulator) as (client, order_id):
        await answers(client, "/readyz", 200)
        emulator.admin.outage(30)
        await is_store_unavailable(client, f"/orders/{order_id}")
        await is_store_unavailable(client, "/readyz")
        emulator.admin.reset_faults()
        await answers(client, f"/orders/{order_id}", 200)
        assert (await client.get("/orders/no-such-order")).status == 404
