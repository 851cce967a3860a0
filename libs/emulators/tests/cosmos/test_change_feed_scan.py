"""The change feed scan width (admin): a read examines a bounded number of LSNs, so a narrow scope
in a busy physical range moves forward through empty 200s, as on Azure."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.cosmos import PartitionKey
from azure.cosmos.aio import CosmosClient

from eventflow_emulators.cosmos.testing import RunningCosmosEmulator, cosmos_emulator


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[RunningCosmosEmulator]:
    with cosmos_emulator(tmp_path / "cosmos", partition_key_ranges=1) as running:
        yield running


@pytest.fixture
async def container(emulator: RunningCosmosEmulator) -> AsyncIterator[Any]:
    async with CosmosClient(emulator.endpoint, credential=emulator.key) as client:
        database = await client.create_database("scan")
        yield await database.create_container(
            id=f"c{uuid.uuid4().hex[:12]}", partition_key=PartitionKey(path="/pk")
        )


async def reads_until_found(container: Any, **kwargs: Any) -> tuple[int, list[str]]:
    """Read `kwargs`' scope from the beginning, one page per request, until a document comes
    back: (requests, ids)."""
    continuation, requests = None, 0
    while requests < 100:
        requests += 1
        options = {"continuation": continuation} if continuation else kwargs
        pager = container.query_items_change_feed(**options).by_page()
        try:
            page = await anext(pager)
        except StopAsyncIteration:
            continuation = container.client_connection.last_response_headers["etag"]
            continue
        ids = [item["id"] async for item in page]
        if ids:
            return requests, ids
        continuation = pager.continuation_token
    raise AssertionError("never found")


async def test_a_narrow_scope_moves_through_empty_200s_a_few_lsns_at_a_time(
    emulator: RunningCosmosEmulator, container: Any
) -> None:
    for n in range(20):
        await container.create_item({"id": f"a{n}", "pk": "busy"})
    await container.create_item({"id": "b", "pk": "quiet"})
    scope = {"partition_key": "quiet", "start_time": "Beginning"}
    try:
        emulator.admin.set_change_feed_scan(5)
        requests, ids = await reads_until_found(container, **scope)
        assert ids == ["b"]
        assert requests == 5, "20 foreign LSNs 5 at a time, then the change"
        statuses = emulator.admin.status()["statuses"]
        assert statuses.get("200", 0) >= 5
    finally:
        emulator.admin.set_change_feed_scan(None)
    requests, ids = await reads_until_found(container, **scope)
    assert (requests, ids) == (1, ["b"]), "without a scan width the first read finds it"
