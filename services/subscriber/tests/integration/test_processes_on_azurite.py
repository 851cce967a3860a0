"""Two subscriber processes with the SDK's BlobCheckpointStore on Azurite: they split the hub's
partitions; after a kill -9 the survivor takes over from the checkpoints; nothing is lost and the
replays are absorbed by duplicate detection (each event once in the inbox)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from azure.eventhub.extensions.checkpointstoreblobaio import BlobCheckpointStore
from azure.storage.blob.aio import BlobServiceClient

from eventflow_emulators.servers import RunningServer
from eventflow_local import LocalEnvironment

from ..conftest import event_bytes, publish, read_inbox  # type: ignore[import-not-found]

pytestmark = pytest.mark.slow
NAMESPACE, HUB, GROUP = "eventflow.local", "orders", "inbox-subscriber"


def subscriber(
    folder: Path, name: str, azurite: RunningServer, container: str
) -> subprocess.Popen[bytes]:
    settings = {
        "SUBSCRIBER_MODE": "local", "SUBSCRIBER_LOCAL_DIR": str(folder), "SUBSCRIBER_OWNER_ID": name,
        "SUBSCRIBER_LOCAL_CHECKPOINTS": "blob", "SUBSCRIBER_STORAGE_CONNECTION_STRING": azurite.connection_string,
        "SUBSCRIBER_CHECKPOINT_CONTAINER": container, "SUBSCRIBER_LOAD_BALANCING_INTERVAL_SECONDS": "0.5",
        "SUBSCRIBER_HEALTH_PORT": "0", "SUBSCRIBER_LOG_LEVEL": "WARNING",
    }  # fmt: skip
    return subprocess.Popen([sys.executable, "-m", "eventflow_subscriber.main"], env={**os.environ, **settings},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip


async def test_two_processes_split_the_hub_and_one_takes_over_after_a_kill(
    environment: LocalEnvironment, azurite_server: RunningServer
) -> None:
    container = f"checkpoints-{uuid.uuid4().hex[:8]}"
    async with BlobServiceClient.from_connection_string(
        azurite_server.connection_string
    ) as service:
        await service.create_container(container)
    store = BlobCheckpointStore.from_connection_string(
        azurite_server.connection_string, container_name=container
    )
    processes = {
        name: subscriber(environment.folder, name, azurite_server, container) for name in ("a", "b")
    }

    async def owners() -> Counter[str | None]:
        return Counter(o["owner_id"] for o in await store.list_ownership(NAMESPACE, HUB, GROUP))

    async def until(check: object, what: str) -> None:
        deadline = time.monotonic() + 40
        while not await check():  # type: ignore[operator]
            assert time.monotonic() < deadline, f"{what}: owners {await owners()}"
            await asyncio.sleep(0.1)

    async def checkpointed() -> int:
        return sum(
            c["sequence_number"] + 1 for c in await store.list_checkpoints(NAMESPACE, HUB, GROUP)
        )

    try:
        async with store:
            await until(lambda: _is(owners(), Counter({"a": 2, "b": 2})), "never split 2/2")
            await publish(
                environment,
                [
                    (f"order-{n % 10}", event_bytes(f"order-{n % 10}", n // 10 + 1))
                    for n in range(40)
                ],
            )
            processes["a"].send_signal(signal.SIGKILL)
            processes["a"].wait()
            await publish(
                environment,
                [
                    (f"order-{n % 10}", event_bytes(f"order-{n % 10}", n // 10 + 5))
                    for n in range(40)
                ],
            )
            await until(lambda: _is(owners(), Counter({"b": 4})), "b never took over")
            await until(lambda: _is(checkpointed(), 80), "not everything checkpointed")
        inbox = await read_inbox(environment)
        assert sorted(inbox) == [f"order-{n}" for n in range(10)]
        for messages in inbox.values():
            assert [m.application_properties[b"sequence"] for m in messages] == list(range(1, 9))
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                assert process.wait(timeout=30) == 0, "SIGTERM ends the subscriber cleanly"


async def _is(value: object, expected: object) -> bool:
    return bool(await value == expected)  # type: ignore[misc]
