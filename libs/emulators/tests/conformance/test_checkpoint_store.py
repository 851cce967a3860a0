"""The Event Hubs CheckpointStore interface: the SDK's BlobCheckpointStore on Azurite (or Azure
Storage when EVENTFLOW_CONFORMANCE_STORAGE_CONNECTION_STRING is set), the store the Event Hubs
consumer cases of test_eventhubs.py run with."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import pytest
from azure.eventhub.extensions.checkpointstoreblobaio import BlobCheckpointStore
from azure.storage.blob.aio import BlobServiceClient

from eventflow_emulators.conformance import BackendCases, setting_or_skip
from eventflow_emulators.servers import RunningServer

NAMESPACE, HUB, GROUP = "ns.servicebus.windows.net", "orders", "inbox-subscriber"


def ownership(
    partition_id: str, owner: str, etag: str | None = None, group: str = GROUP
) -> dict[str, Any]:
    claim = {
        "fully_qualified_namespace": NAMESPACE, "eventhub_name": HUB, "consumer_group": group,
        "partition_id": partition_id, "owner_id": owner,
    }  # fmt: skip
    if etag is not None:
        claim["etag"] = etag
    return claim


def checkpoint(
    partition_id: str, offset: str, sequence_number: int, group: str = GROUP
) -> dict[str, Any]:
    return {
        "fully_qualified_namespace": NAMESPACE, "eventhub_name": HUB, "consumer_group": group,
        "partition_id": partition_id, "offset": offset, "sequence_number": sequence_number,
    }  # fmt: skip


async def owners(store: Any, group: str = GROUP) -> dict[str, str | None]:
    return {
        o["partition_id"]: o["owner_id"] for o in await store.list_ownership(NAMESPACE, HUB, group)
    }


async def blob_store(connection_string: str) -> BlobCheckpointStore:
    container = f"checkpoints-{uuid.uuid4().hex[:12]}"
    async with BlobServiceClient.from_connection_string(connection_string) as service:
        await service.create_container(container)
    return BlobCheckpointStore.from_connection_string(connection_string, container_name=container)


class CheckpointStoreConformance(BackendCases):
    """The cases. A backend subclasses this and provides the `store` fixture."""

    backend: ClassVar[str]

    async def test_nothing_is_owned_at_first(self, store: Any) -> None:
        assert list(await store.list_ownership(NAMESPACE, HUB, GROUP)) == []
        assert list(await store.list_checkpoints(NAMESPACE, HUB, GROUP)) == []

    async def test_a_claim_returns_an_etag_and_a_modification_time(self, store: Any) -> None:
        (claimed,) = await store.claim_ownership([ownership("0", "a")])
        assert claimed["etag"]
        assert isinstance(claimed["last_modified_time"], float)
        assert await owners(store) == {"0": "a"}

    async def test_a_claim_with_the_current_etag_renews(self, store: Any) -> None:
        (first,) = await store.claim_ownership([ownership("0", "a")])
        (listed,) = await store.list_ownership(NAMESPACE, HUB, GROUP)
        (renewed,) = await store.claim_ownership([ownership("0", "a", listed["etag"])])
        assert renewed["etag"].strip('"') != first["etag"].strip('"')

    async def test_a_claim_with_a_stale_etag_loses(self, store: Any) -> None:
        (first,) = await store.claim_ownership([ownership("0", "a")])
        (listed,) = await store.list_ownership(NAMESPACE, HUB, GROUP)
        await store.claim_ownership([ownership("0", "b", listed["etag"])])
        assert list(await store.claim_ownership([ownership("0", "a", first["etag"])])) == []
        assert await owners(store) == {"0": "b"}

    async def test_claims_are_judged_one_by_one(self, store: Any) -> None:
        await store.claim_ownership([ownership("0", "a"), ownership("1", "a")])
        listed = {o["partition_id"]: o for o in await store.list_ownership(NAMESPACE, HUB, GROUP)}
        await store.claim_ownership([ownership("1", "b", listed["1"]["etag"])])
        won = await store.claim_ownership(
            [ownership("0", "a", listed["0"]["etag"]), ownership("1", "a", listed["1"]["etag"])]
        )
        assert [o["partition_id"] for o in won] == ["0"]

    async def test_a_claim_without_an_etag_loses_to_an_existing_owner(self, store: Any) -> None:
        # The store claims without an etag with `If-None-Match: *` (checkpointstoreblobaio
        # _blobstoragecsaio.py `_upload_ownership`). Azure Storage documents that header as
        # "perform the operation only if the resource does not exist, and fail the operation if
        # it does exist" (learn.microsoft.com/rest/api/storageservices/
        # specifying-conditional-headers-for-blob-service-operations), so on an existing
        # ownership blob Set Blob Metadata fails with 412 and the claim is lost.
        await store.claim_ownership([ownership("0", "a")])
        assert await store.claim_ownership([ownership("0", "b")]) == []
        assert await owners(store) == {"0": "a"}

    async def test_releasing_clears_the_owner(self, store: Any) -> None:
        await store.claim_ownership([ownership("0", "a")])
        (listed,) = await store.list_ownership(NAMESPACE, HUB, GROUP)
        await store.claim_ownership([ownership("0", "", listed["etag"])])
        assert await owners(store) == {"0": None}

    async def test_a_checkpoint_is_listed_with_offset_and_sequence_number(self, store: Any) -> None:
        await store.update_checkpoint(checkpoint("0", "1200", 41))
        await store.update_checkpoint(checkpoint("0", "2000", 50))
        await store.update_checkpoint(checkpoint("1", "10", 1))
        found = {c["partition_id"]: c for c in await store.list_checkpoints(NAMESPACE, HUB, GROUP)}
        assert (found["0"]["offset"], found["0"]["sequence_number"]) == ("2000", 50)
        assert (found["1"]["offset"], found["1"]["sequence_number"]) == ("10", 1)

    async def test_consumer_groups_keep_their_own_state(self, store: Any) -> None:
        await store.claim_ownership([ownership("0", "a", group="one")])
        await store.update_checkpoint(checkpoint("0", "5", 5, group="one"))
        assert await owners(store, "two") == {}
        assert list(await store.list_checkpoints(NAMESPACE, HUB, "two")) == []

    async def test_names_are_compared_in_lower_case(self, store: Any) -> None:
        await store.update_checkpoint(checkpoint("0", "5", 5, group="Inbox-Subscriber"))
        found = list(await store.list_checkpoints(NAMESPACE, HUB, "inbox-subscriber"))
        assert [c["sequence_number"] for c in found] == [5]


class TestBlobStoreOnAzurite(CheckpointStoreConformance):
    backend = "BlobCheckpointStore on Azurite"
    not_applicable: ClassVar[dict[str, str]] = {
        "test_a_claim_without_an_etag_loses_to_an_existing_owner": (
            "Azurite 3.35 ignores If-None-Match: * on Set Blob Metadata of an existing blob and"
            " overwrites the owner, unlike the documented Azure Storage behaviour"
        ),
    }

    @pytest.fixture
    async def store(self, azurite_server: RunningServer) -> AsyncIterator[Any]:
        async with await blob_store(azurite_server.connection_string) as store:
            yield store


class TestBlobStoreOnAzure(CheckpointStoreConformance):
    backend = "BlobCheckpointStore on Azure Storage"

    @pytest.fixture
    async def store(self) -> AsyncIterator[Any]:
        connection_string = setting_or_skip("EVENTFLOW_CONFORMANCE_STORAGE_CONNECTION_STRING")
        async with await blob_store(connection_string) as store:
            yield store
