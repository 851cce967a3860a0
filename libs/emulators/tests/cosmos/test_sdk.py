"""The emulator through the real azure-cosmos aio SDK: behaviour the conformance suite cannot
check on other backends (auth, placement, faults, restarts, the process itself)."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import string
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from azure.cosmos import CosmosClient as SyncCosmosClient
from azure.cosmos import PartitionKey
from azure.cosmos.aio import CosmosClient
from azure.cosmos.exceptions import CosmosHttpResponseError, CosmosResourceNotFoundError

from eventflow_emulators.cosmos.testing import (
    EmulatorStartError,
    RunningCosmosEmulator,
    cosmos_emulator,
)

WRONG_KEY = "V3JvbmdLZXlXcm9uZ0tleVdyb25nS2V5V3JvbmdLZXk="


@pytest.fixture
async def container(cosmos_emulator_server: RunningCosmosEmulator) -> AsyncIterator[Any]:
    async with CosmosClient(
        cosmos_emulator_server.endpoint, credential=cosmos_emulator_server.key
    ) as client:
        database = await client.create_database_if_not_exists("sdk-tests")
        yield await database.create_container(
            id=f"c{uuid.uuid4().hex[:12]}", partition_key=PartitionKey(path="/pk")
        )


async def collect(iterable: Any) -> list[Any]:
    return [item async for item in iterable]


async def test_a_wrong_key_is_refused_with_401(
    cosmos_emulator_server: RunningCosmosEmulator,
) -> None:
    # The client reads the account first (GET /), which is signed like any request.
    client = CosmosClient(cosmos_emulator_server.endpoint, credential=WRONG_KEY)
    try:
        with pytest.raises(CosmosHttpResponseError) as caught:
            async with client:
                await client.create_database_if_not_exists("never")
    finally:
        await client.close()
    assert caught.value.status_code == 401
    assert "Unauthorized" in str(caught.value.message)


async def test_connection_string_works(cosmos_emulator_server: RunningCosmosEmulator) -> None:
    async with CosmosClient.from_connection_string(
        cosmos_emulator_server.connection_string
    ) as client:
        database = await client.create_database_if_not_exists("sdk-tests")
        assert (await database.read())["id"] == "sdk-tests"


async def test_items_land_in_the_feed_range_the_sdk_computes(container: Any) -> None:
    # The placement is the server's (it answers the change feed of each range); the point range
    # is the SDK's own hash (azure/cosmos/partition_key.py). They must agree for every key.
    rng = random.Random(7)
    keys = ["".join(rng.choices(string.printable, k=rng.randint(0, 30))) for _ in range(40)]
    keys = list(dict.fromkeys(keys))
    for key in keys:
        await container.create_item({"id": "x", "pk": key})
    ranges = await collect(container.read_feed_ranges())
    placed = 0
    for feed_range in ranges:
        pager = container.query_items_change_feed(feed_range=feed_range, start_time="Beginning")
        for item in await collect(pager):
            point = await container.feed_range_from_partition_key(item["pk"])
            assert await container.is_feed_range_subset(feed_range, point)
            placed += 1
    assert placed == len(keys)


async def test_nested_partition_key_path(cosmos_emulator_server: RunningCosmosEmulator) -> None:
    async with CosmosClient(
        cosmos_emulator_server.endpoint, credential=cosmos_emulator_server.key
    ) as client:
        database = await client.create_database_if_not_exists("sdk-tests")
        nested = await database.create_container(
            id=f"n{uuid.uuid4().hex[:12]}", partition_key=PartitionKey(path="/customer/id")
        )
        await nested.create_item({"id": "o1", "customer": {"id": "c7"}})
        assert (await nested.read_item("o1", partition_key="c7"))["customer"]["id"] == "c7"
        found = await collect(
            nested.query_items("SELECT * FROM c WHERE c.customer.id = 'c7'", partition_key="c7")
        )
        assert [item["id"] for item in found] == ["o1"]


async def test_items_over_2_mb_are_refused_with_413(container: Any) -> None:
    with pytest.raises(CosmosHttpResponseError) as caught:
        await container.create_item({"id": "big", "pk": "p", "blob": "x" * (2 * 1024 * 1024)})
    assert caught.value.status_code == 413


async def test_patch_through_the_sdk(container: Any) -> None:
    await container.create_item({"id": "a", "pk": "p", "n": 1})
    patched = await container.patch_item("a", partition_key="p", patch_operations=[
        {"op": "incr", "path": "/n", "value": 5}, {"op": "set", "path": "/state", "value": "done"}])  # fmt: skip
    assert (patched["n"], patched["state"]) == (6, "done")


async def test_one_503_is_retried_by_the_sdk_two_are_not(
    container: Any, cosmos_emulator_server: RunningCosmosEmulator
) -> None:
    # The SDK retries a 503 once on a one-region account, writes included
    # (azure/cosmos/_service_unavailable_retry_policy.py `ShouldRetry`).
    admin = cosmos_emulator_server.admin
    admin.inject_fault("unavailable", operation="create", path_contains=container.id)
    await container.create_item({"id": "a", "pk": "p"})
    admin.inject_fault("unavailable", count=2, operation="create", path_contains=container.id)
    with pytest.raises(CosmosHttpResponseError) as caught:
        await container.create_item({"id": "b", "pk": "p"})
    assert caught.value.status_code == 503
    with pytest.raises(CosmosResourceNotFoundError):
        await container.read_item("b", partition_key="p")


async def test_a_timeout_after_apply_leaves_the_write_done(
    container: Any, cosmos_emulator_server: RunningCosmosEmulator
) -> None:
    # A 408 on a write is not retried (azure/cosmos/_timeout_failover_retry_policy.py: writes
    # only with retry_write), so the caller sees the timeout although the item was written.
    cosmos_emulator_server.admin.inject_fault(
        "timeout-after-apply", operation="create", path_contains=container.id
    )
    with pytest.raises(CosmosHttpResponseError) as caught:
        await container.create_item({"id": "a", "pk": "p"})
    assert caught.value.status_code == 408
    assert (await container.read_item("a", partition_key="p"))["id"] == "a"


async def test_a_timeout_on_a_read_is_retried(
    container: Any, cosmos_emulator_server: RunningCosmosEmulator
) -> None:
    admin = cosmos_emulator_server.admin
    await container.create_item({"id": "a", "pk": "p"})
    faulted = admin.status()["faulted"]
    admin.inject_fault("timeout", operation="read", path_contains=container.id)
    assert (await container.read_item("a", partition_key="p"))["id"] == "a"
    assert admin.status()["faulted"] == faulted + 1


async def test_an_outage_fails_requests_until_it_ends(
    container: Any, cosmos_emulator_server: RunningCosmosEmulator
) -> None:
    admin = cosmos_emulator_server.admin
    await container.create_item({"id": "a", "pk": "p"})
    admin.outage(1.5, path_contains=container.id)
    with pytest.raises(CosmosHttpResponseError) as caught:
        await container.read_item("a", partition_key="p")
    assert caught.value.status_code == 503
    deadline = time.monotonic() + 10
    while True:
        try:
            await container.read_item("a", partition_key="p")
            break
        except CosmosHttpResponseError:
            assert time.monotonic() < deadline, "the outage did not end"
            await asyncio.sleep(0.1)


async def test_reset_removes_faults(
    container: Any, cosmos_emulator_server: RunningCosmosEmulator
) -> None:
    admin = cosmos_emulator_server.admin
    admin.inject_fault("unavailable", count=50, path_contains=container.id)
    assert admin.status()["faults"]
    admin.reset_faults()
    assert admin.status()["faults"] == []
    await container.create_item({"id": "a", "pk": "p"})


def test_admin_command_line(cosmos_emulator_server: RunningCosmosEmulator) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "eventflow_emulators.cosmos", "admin", "--endpoint",
         cosmos_emulator_server.endpoint, "status"],
        capture_output=True, text=True, check=True, timeout=30,
    )  # fmt: skip
    assert "requests" in json.loads(result.stdout)


async def test_data_and_change_feed_position_survive_a_restart(tmp_path: Path) -> None:
    async def write_and_read(endpoint: str, key: str, token: str | None) -> tuple[list[str], str]:
        async with CosmosClient(endpoint, credential=key) as client:
            database = await client.create_database_if_not_exists("durable")
            box = await database.create_container_if_not_exists(
                id="box", partition_key=PartitionKey(path="/pk")
            )
            await box.create_item({"id": uuid.uuid4().hex, "pk": "p", "run": token is None})
            kwargs: dict[str, Any] = (
                {"continuation": token} if token else {"start_time": "Beginning"}
            )
            pager = box.query_items_change_feed(**kwargs).by_page()
            items = [item async for page in pager async for item in page]
            return [
                str(item["run"]) for item in items
            ], box.client_connection.last_response_headers["etag"]

    with cosmos_emulator(tmp_path) as first:
        seen, token = await write_and_read(first.endpoint, first.key, None)
    assert seen == ["True"]
    with cosmos_emulator(tmp_path) as second:
        seen, _ = await write_and_read(second.endpoint, second.key, token)
    assert seen == ["False"]


def test_sigterm_stops_the_process_with_exit_code_0(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "eventflow_emulators.cosmos", "--port", "0", "--data", str(tmp_path)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line.startswith("eventflow-cosmos-emulator listening on http://127.0.0.1:")
    assert not line.rstrip().endswith(":0/")
    process.terminate()
    assert process.wait(timeout=10) == 0


async def test_query_of_a_feed_range_and_paged_read_all(container: Any) -> None:
    # query_items(feed_range=...) routes by pk range id plus EPK bounds
    # (aio/_cosmos_client_connection_async.py `__QueryFeed`, feed_range branch).
    keys = [f"k{n}" for n in range(30)]
    for key in keys:
        await container.create_item({"id": "x", "pk": key})
    seen: list[str] = []
    for feed_range in await collect(container.read_feed_ranges()):
        found = await collect(container.query_items("SELECT * FROM c", feed_range=feed_range))
        seen += [item["pk"] for item in found]
    assert sorted(seen) == sorted(keys)
    pages = container.read_all_items(max_item_count=7).by_page()
    sizes = [len(await collect(page)) async for page in pages]
    assert sum(sizes) == 30
    assert max(sizes) <= 7


async def test_a_recreated_container_is_found_by_an_old_proxy(
    cosmos_emulator_server: RunningCosmosEmulator,
) -> None:
    # The SDK sends the container rid it cached; a recreated container answers 400/1024 and the
    # SDK refreshes its cache and retries (azure/cosmos/aio/_retry_utility_async.py).
    endpoint, key = cosmos_emulator_server.endpoint, cosmos_emulator_server.key
    name = f"r{uuid.uuid4().hex[:12]}"
    async with (
        CosmosClient(endpoint, credential=key) as first,
        CosmosClient(endpoint, credential=key) as second,
    ):
        database = await first.create_database_if_not_exists("sdk-tests")
        old = await database.create_container(id=name, partition_key=PartitionKey(path="/pk"))
        await old.create_item({"id": "a", "pk": "p"})
        other = second.get_database_client("sdk-tests")
        await other.delete_container(name)
        await other.create_container(id=name, partition_key=PartitionKey(path="/pk"))
        await old.create_item({"id": "b", "pk": "p"})
        found = await collect(old.query_items("SELECT VALUE c.id FROM c", partition_key="p"))
        assert found == ["b"]


async def test_batch_runs_every_operation_kind(container: Any) -> None:
    # Every op kind the SDK formats (azure/cosmos/_base.py `_format_batch_operations`).
    created = await container.create_item({"id": "r", "pk": "p", "n": 1})
    await container.create_item({"id": "gone", "pk": "p"})
    results = await container.execute_item_batch(
        [
            ("create", ({"id": "c", "pk": "p"},)),
            ("upsert", ({"id": "u", "pk": "p"},)),
            ("replace", ("r", {"id": "r", "pk": "p", "n": 2}), {"if_match_etag": created["_etag"]}),
            ("patch", ("r", [{"op": "incr", "path": "/n", "value": 1}]), {"filter_predicate": "FROM c WHERE c.n = 2"}),
            ("read", ("r",)),
            ("delete", ("gone",)),
        ],
        partition_key="p",
    )  # fmt: skip
    assert [r["statusCode"] for r in results] == [201, 201, 200, 200, 200, 204]
    assert results[4]["resourceBody"]["n"] == 3
    with pytest.raises(CosmosResourceNotFoundError):
        await container.read_item("gone", partition_key="p")


async def test_a_batch_over_2_mb_is_refused_with_413(container: Any) -> None:
    half = "x" * (1024 * 1024 + 10)
    with pytest.raises(CosmosHttpResponseError) as caught:
        await container.execute_item_batch(
            [("create", ({"id": "a", "pk": "p", "blob": half},)), ("create", ({"id": "b", "pk": "p", "blob": half},))],
            partition_key="p",
        )  # fmt: skip
    assert caught.value.status_code == 413


async def test_an_unsupported_query_is_refused_naming_the_clause(container: Any) -> None:
    with pytest.raises(CosmosHttpResponseError) as caught:
        await collect(container.query_items("SELECT DISTINCT c.kind FROM c", partition_key="p"))
    assert caught.value.status_code == 400
    assert "DISTINCT" in str(caught.value.message)


def test_the_sync_client_works_too(cosmos_emulator_server: RunningCosmosEmulator) -> None:
    with SyncCosmosClient(
        cosmos_emulator_server.endpoint, credential=cosmos_emulator_server.key
    ) as client:
        database = client.create_database_if_not_exists("sdk-tests")
        box = database.create_container_if_not_exists(
            id=f"s{uuid.uuid4().hex[:12]}", partition_key=PartitionKey(path="/pk")
        )
        box.create_item({"id": "a", "pk": "p"})
        assert box.read_item("a", partition_key="p")["id"] == "a"
        assert [
            item["id"]
            for item in box.query_items("SELECT * FROM c", enable_cross_partition_query=True)
        ] == ["a"]
        assert [item["id"] for item in box.query_items_change_feed(start_time="Beginning")] == ["a"]


async def test_a_feed_range_query_after_a_split_reads_both_children(
    container: Any, cosmos_emulator_server: RunningCosmosEmulator
) -> None:
    # The query's feed-range path re-resolves its range on 410/1002
    # (aio/_cosmos_client_connection_async.py `__QueryFeed`, feed_range branch).
    keys = [f"k{n}" for n in range(40)]
    for key in keys:
        await container.create_item({"id": "x", "pk": key})
    parent = (await collect(container.read_feed_ranges()))[0]
    inside = [
        key for key in keys
        if await container.is_feed_range_subset(parent, await container.feed_range_from_partition_key(key))
    ]  # fmt: skip
    database = container.container_link.split("/")[1]
    cosmos_emulator_server.admin.split(database, container.id, "0")
    found = await collect(container.query_items("SELECT * FROM c", feed_range=parent))
    assert sorted(item["pk"] for item in found) == sorted(inside)


async def test_committed_writes_survive_a_killed_emulator(tmp_path: Path) -> None:
    async def connect(endpoint: str, key: str, work: Any) -> Any:
        async with CosmosClient(endpoint, credential=key) as client:
            database = await client.create_database_if_not_exists("durable")
            box = await database.create_container_if_not_exists(
                id="box", partition_key=PartitionKey(path="/pk")
            )
            return await work(box)

    async def write(box: Any) -> None:
        await box.execute_item_batch([("create", ({"id": "a", "pk": "p"},)), ("create", ({"id": "b", "pk": "p"},))], partition_key="p")  # fmt: skip

    async def read(box: Any) -> list[str]:
        return [item["id"] async for item in box.query_items("SELECT * FROM c", partition_key="p")]

    with cosmos_emulator(tmp_path) as first:
        await connect(first.endpoint, first.key, write)
        os.kill(first.pid, signal.SIGKILL)
    with cosmos_emulator(tmp_path) as second:
        assert sorted(await connect(second.endpoint, second.key, read)) == ["a", "b"]


WRITER = """
import asyncio, sys
from azure.cosmos.aio import CosmosClient

async def main(endpoint, key, name, writer):
    async with CosmosClient(endpoint, credential=key) as client:
        box = client.get_database_client("sdk-tests").get_container_client(name)
        for n in range(40):
            await box.create_item({"id": f"{writer}-{n}", "pk": f"k{n % 7}"})

asyncio.run(main(*sys.argv[1:]))
"""


async def test_writers_in_other_processes_and_a_change_feed_reader(
    container: Any, cosmos_emulator_server: RunningCosmosEmulator
) -> None:
    # Every write from every client process shows up once, in its range's feed.
    endpoint, key = cosmos_emulator_server.endpoint, cosmos_emulator_server.key
    writers = [
        await asyncio.create_subprocess_exec(sys.executable, "-c", WRITER, endpoint, key, container.id, name)
        for name in ("w1", "w2")
    ]  # fmt: skip
    ranges = await collect(container.read_feed_ranges())
    tokens: dict[int, str | None] = dict.fromkeys(range(len(ranges)))
    seen: list[str] = []
    deadline = time.monotonic() + 60
    while len(seen) < 80 and time.monotonic() < deadline:
        for index, feed_range in enumerate(ranges):
            token = tokens[index]
            kwargs: dict[str, Any] = (
                {"continuation": token}
                if token
                else {"feed_range": feed_range, "start_time": "Beginning"}
            )
            pager = container.query_items_change_feed(**kwargs).by_page()
            seen += [item["id"] async for page in pager async for item in page]
            tokens[index] = container.client_connection.last_response_headers["etag"]
        await asyncio.sleep(0.05)
    assert [await writer.wait() for writer in writers] == [0, 0]
    assert len(seen) == len(set(seen)) == 80


RECREATE = """
import asyncio, sys
from azure.cosmos import PartitionKey
from azure.cosmos.aio import CosmosClient

async def main(endpoint, key, name):
    async with CosmosClient(endpoint, credential=key) as client:
        database = client.get_database_client("sdk-tests")
        await database.delete_container(name)
        await database.create_container(id=name, partition_key=PartitionKey(path="/pk"))

asyncio.run(main(*sys.argv[1:]))
"""


async def test_a_container_recreated_after_a_split_gets_a_fresh_routing_map(
    cosmos_emulator_server: RunningCosmosEmulator,
) -> None:
    # The SDK caches routing maps per endpoint and container name and refreshes them
    # incrementally with If-None-Match (_routing/aio/routing_map_provider.py); a container
    # recreated by another process must not look unchanged to that refresh.
    endpoint, key = cosmos_emulator_server.endpoint, cosmos_emulator_server.key
    name = f"s{uuid.uuid4().hex[:12]}"
    async with CosmosClient(endpoint, credential=key) as client:
        database = await client.create_database_if_not_exists("sdk-tests")
        box = await database.create_container(id=name, partition_key=PartitionKey(path="/pk"))
        cosmos_emulator_server.admin.split("sdk-tests", name, "0")
        assert len(await collect(box.read_feed_ranges(force_refresh=True))) == 5
        other = await asyncio.create_subprocess_exec(
            sys.executable, "-c", RECREATE, endpoint, key, name
        )
        assert await other.wait() == 0
        assert len(await collect(box.read_feed_ranges(force_refresh=True))) == 4


def test_a_failed_start_raises_with_the_emulators_log(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with (
            pytest.raises(EmulatorStartError, match="address already in use"),
            cosmos_emulator(tmp_path, port=port),
        ):
            pytest.fail("the emulator started on a port in use")
