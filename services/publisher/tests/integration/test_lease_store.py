"""CosmosLeaseStore through the real azure-cosmos SDK against the Cosmos DB emulator and
@vercel/cosmosdb-server: conditional replaces, create conflicts, the prefix query."""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, ClassVar

import orjson
import pytest
from azure.cosmos import PartitionKey
from azure.cosmos.aio import CosmosClient as AzureCosmosClient

from eventflow_emulators.conformance import BackendCases
from eventflow_emulators.cosmos.testing import RunningCosmosEmulator
from eventflow_emulators.servers import RunningServer
from eventflow_publisher.adapters.cosmos_changefeed import CosmosLeaseStore, CosmosPoisonStore
from eventflow_publisher.changefeed import LeaseLostError, StartPosition

RANGES = [{"Range": {"min": lo, "max": hi, "isMinInclusive": True, "isMaxInclusive": False}}
          for lo, hi in [("", "40"), ("40", "80"), ("80", "FF")]]  # fmt: skip
BEGINNING = StartPosition("beginning")


class LeaseStoreCases(BackendCases):
    @pytest.fixture
    def store(self, container: Any) -> CosmosLeaseStore:
        return CosmosLeaseStore(container, f"p-{uuid.uuid4().hex[:8]}", lock_retry=0.05, lock_ttl=1)

    async def test_bootstrap_creates_one_lease_per_range_once(
        self, store: CosmosLeaseStore
    ) -> None:
        await store.bootstrap(RANGES, BEGINNING)
        await store.bootstrap(RANGES[:1], BEGINNING)
        leases = await store.list_leases()
        assert sorted(lease.feed_range["Range"]["min"] for lease in leases) == ["", "40", "80"]
        assert all(lease.owner is None and lease.continuation is None for lease in leases)

    async def test_bootstrap_waits_while_another_instance_holds_the_lock(
        self, store: CosmosLeaseStore, container: Any
    ) -> None:
        lock = {"id": f"{store.prefix}.lock", "kind": "lock", "ttl": 30}
        await container.create_item(lock)
        waiting = asyncio.create_task(store.bootstrap(RANGES, BEGINNING))
        await asyncio.sleep(
            0.3
        )  # an absence cannot be polled for: several lock retries (0.05 s) pass
        assert not waiting.done()
        await container.delete_item(lock["id"], partition_key=lock["id"])
        await asyncio.wait_for(waiting, 5)
        assert len(await store.list_leases()) == 3

    async def test_a_crashed_bootstrap_blocks_nobody_beyond_the_lock_ttl(
        self, store: CosmosLeaseStore, container: Any
    ) -> None:
        await container.create_item({"id": f"{store.prefix}.lock", "kind": "lock", "ttl": 1})
        await asyncio.wait_for(store.bootstrap(RANGES, BEGINNING), 10)
        assert len(await store.list_leases()) == 3

    async def test_acquire_with_a_stale_etag_loses(self, store: CosmosLeaseStore) -> None:
        await store.bootstrap(RANGES, BEGINNING)
        listed = (await store.list_leases())[0]
        await store.acquire(listed, "a")
        with pytest.raises(LeaseLostError):
            await store.acquire(listed, "b")

    async def test_own_writes_racing_are_reapplied_not_lost(self, store: CosmosLeaseStore) -> None:
        await store.bootstrap(RANGES, BEGINNING)
        mine = await store.acquire((await store.list_leases())[0], "a")
        checkpointed = await store.checkpoint(mine, "token-1", 1000)
        renewed = await store.renew(mine)  # mine's ETag is stale now, but the owner is still "a"
        assert (renewed.owner, renewed.continuation) == ("a", "token-1")
        assert renewed.etag != checkpointed.etag

    async def test_a_write_after_another_owner_took_the_lease_is_lost(
        self, store: CosmosLeaseStore
    ) -> None:
        await store.bootstrap(RANGES, BEGINNING)
        mine = await store.acquire((await store.list_leases())[0], "a")
        await store.acquire(mine, "b")
        with pytest.raises(LeaseLostError):
            await store.checkpoint(mine, "token-9", 1000)
        (current,) = [lease for lease in await store.list_leases() if lease.id == mine.id]
        assert (current.owner, current.continuation) == ("b", None)

    async def test_an_acquisition_under_the_same_name_fences_the_earlier_one(
        self, store: CosmosLeaseStore
    ) -> None:
        await store.bootstrap(RANGES, BEGINNING)
        earlier = await store.acquire((await store.list_leases())[0], "a")
        later = await store.acquire(earlier, "a")  # a restart under the same name
        assert later.owner_token != earlier.owner_token
        for write in (
            store.renew(earlier),
            store.checkpoint(earlier, "token-2", 1),
            store.release(earlier),
        ):
            with pytest.raises(LeaseLostError):
                await write
        assert (await store.checkpoint(later, "token-3", 2)).continuation == "token-3"

    async def test_a_split_lease_becomes_child_leases_starting_at_its_checkpoint_time(
        self, store: CosmosLeaseStore
    ) -> None:
        from datetime import UTC, datetime  # noqa: PLC0415

        await store.bootstrap(RANGES[:1], BEGINNING)
        parent = await store.acquire((await store.list_leases())[0], "a")
        parent = await store.checkpoint(parent, "token-1", 1_700_000_000)
        halves = [{"Range": {"min": lo, "max": hi, "isMinInclusive": True, "isMaxInclusive": False}}
                  for lo, hi in [("", "20"), ("20", "40")]]  # fmt: skip
        children = await store.split(parent, halves)
        again = await store.split(parent, halves)  # a crash before the parent was gone: repeatable
        leases = await store.list_leases()
        assert (
            sorted(lease.id for lease in leases)
            == sorted(c.id for c in children)
            == sorted(c.id for c in again)
        )
        moment = datetime.fromtimestamp(1_700_000_000, UTC)
        assert {(lease.owner, lease.continuation, lease.start) for lease in leases} == {
            (None, None, StartPosition("time", moment))
        }

    async def test_a_lease_of_the_previous_version_is_read_and_upgraded(
        self, store: CosmosLeaseStore, container: Any
    ) -> None:
        lease_id = f"{store.prefix}..-FF"
        await container.create_item({
            "id": lease_id, "kind": "lease", "schema": "eventflow-lease-1", "feed_range": RANGES[0],
            "owner": "old-replica", "continuation": "token-0", "start": BEGINNING.to_document(),
            "timestamp": 1.0, "properties": {},
        })  # fmt: skip
        (old,) = await store.list_leases()
        assert (old.version, old.owner, old.owner_token, old.continuation) == (
            1,
            "old-replica",
            None,
            "token-0",
        )
        taken = await store.acquire(old, "new-replica")
        assert (taken.version, taken.continuation) == (2, "token-0")
        assert taken.owner_token is not None

    async def test_a_previous_versions_point_in_time_continuation_is_read_again_from_the_start(
        self, store: CosmosLeaseStore, container: Any
    ) -> None:
        """Version 1 handed point-in-time starts to the SDK; its tokens for them cannot be read
        back (azure-cosmos 4.17.1: `ValueError: year ... is out of range`)."""
        token = base64.b64encode(orjson.dumps({
            "v": "v2", "containerRid": "x", "mode": "LatestVersion",
            "startFrom": {"Type": "PointInTime", "PointInTimeMs": 1_700_000_000_000},
            "continuation": {"v": "v2", "rid": "x", "continuation": [{"token": '"5"', "range": {}}]},
        })).decode()  # fmt: skip
        await container.create_item({
            "id": f"{store.prefix}..-FF", "kind": "lease", "schema": "eventflow-lease-1",
            "feed_range": RANGES[0], "owner": None, "continuation": token,
            "start": StartPosition("time", datetime(2026, 5, 1, tzinfo=UTC)).to_document(),
            "timestamp": 1.0, "properties": {},
        })  # fmt: skip
        (lease,) = await store.list_leases()
        assert lease.continuation is None
        assert lease.start.kind == "time"

    async def test_a_newer_versions_lease_is_left_alone(
        self, store: CosmosLeaseStore, container: Any
    ) -> None:
        await store.bootstrap(RANGES[:1], BEGINNING)
        await container.create_item(
            {"id": f"{store.prefix}..future", "kind": "lease", "version": 3}
        )
        assert [lease.version for lease in await store.list_leases()] == [2]

    async def test_an_acquisition_loses_to_an_owner_that_wrote_since_the_listing(
        self, store: CosmosLeaseStore
    ) -> None:
        await store.bootstrap(RANGES[:1], BEGINNING)
        owned = await store.acquire((await store.list_leases())[0], "a")
        (listed,) = await store.list_leases()
        await store.renew(owned)  # the owner is alive: its write lands after the listing
        with pytest.raises(LeaseLostError):
            await store.acquire(listed, "b")

    async def test_release_clears_the_owner(self, store: CosmosLeaseStore) -> None:
        await store.bootstrap(RANGES, BEGINNING)
        mine = await store.acquire((await store.list_leases())[0], "a")
        await store.release(mine)
        assert {lease.owner for lease in await store.list_leases()} == {None}

    async def test_processors_sharing_a_container_see_only_their_leases(
        self, container: Any
    ) -> None:
        first = CosmosLeaseStore(container, f"one-{uuid.uuid4().hex[:6]}")
        second = CosmosLeaseStore(container, f"two-{uuid.uuid4().hex[:6]}")
        await first.bootstrap(RANGES, BEGINNING)
        await second.bootstrap(RANGES[:1], BEGINNING)
        assert (len(await first.list_leases()), len(await second.list_leases())) == (3, 1)

    async def test_the_start_position_is_kept_in_the_lease(self, store: CosmosLeaseStore) -> None:
        from datetime import UTC, datetime  # noqa: PLC0415

        moment = datetime(2026, 5, 1, 8, 30, tzinfo=UTC)
        await store.bootstrap(RANGES, StartPosition("time", moment))
        assert {lease.start for lease in await store.list_leases()} == {
            StartPosition("time", moment)
        }

    async def test_a_poison_record_is_kept_once_per_document(self, container: Any) -> None:
        poison = CosmosPoisonStore(container, f"p-{uuid.uuid4().hex[:6]}")
        await poison.record({"id": "o1:event:1", "kind": "event"}, "too-large", "big")
        await poison.record({"id": "o1:event:1", "kind": "event"}, "too-large", "big")
        (record,) = await poison.list_records()
        assert (record["reason"], record["document"]["id"]) == ("too-large", "o1:event:1")


class TestOnCosmosEmulator(LeaseStoreCases):
    backend = "the Cosmos DB emulator"

    @pytest.fixture
    async def container(self, cosmos_emulator_server: RunningCosmosEmulator) -> AsyncIterator[Any]:
        async with AzureCosmosClient(
            cosmos_emulator_server.endpoint, credential=cosmos_emulator_server.key
        ) as client:
            database = await client.create_database_if_not_exists("eventflow")
            yield await database.create_container_if_not_exists(
                f"leases-{uuid.uuid4().hex[:8]}", partition_key=PartitionKey("/id"), default_ttl=-1
            )


class TestOnCosmosDbServer(LeaseStoreCases):
    backend = "@vercel/cosmosdb-server"
    not_applicable: ClassVar[dict[str, str]] = {
        "test_a_crashed_bootstrap_blocks_nobody_beyond_the_lock_ttl": "it does not expire items (no TTL)",
    }

    @pytest.fixture
    async def container(self, cosmos_server: RunningServer) -> AsyncIterator[Any]:
        async with AzureCosmosClient(
            cosmos_server.endpoint, credential=cosmos_server.key
        ) as client:
            database = await client.create_database_if_not_exists("eventflow")
            yield await database.create_container_if_not_exists(
                f"leases-{uuid.uuid4().hex[:8]}", partition_key=PartitionKey("/id"), default_ttl=-1
            )
