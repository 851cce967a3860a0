"""Two subscriber processes on the real SDKs (mode `emulator`: the messaging emulator, the SDK's
BlobCheckpointStore on Azurite): they split the hub's partitions; after a kill -9 the survivor
takes over from the checkpoints; nothing is lost and the replays are absorbed by duplicate
detection (each event once in the inbox, in order); SIGTERM ends the survivor cleanly. A process
is told apart in the ownership blobs by the owner id its SDK picked (SUBSCRIBER_OWNER_ID does not
reach the real SDK, which has no setting for it).

SDK settings used on purpose: `SUBSCRIBER_LOAD_BALANCING_INTERVAL_SECONDS=0.5` (greedy strategy, as
the service sets it), so the split settles within seconds and the killed process's claims expire
after the SDK's default 6 x interval = 3 s."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable

import pytest

from ..conftest import (  # type: ignore[import-not-found]
    GROUP,
    HUB,
    Backends,
    checkpointed,
    event_bytes,
    eventually,
    publish,
    read_inbox,
)

pytestmark = pytest.mark.slow


def subscriber(backends: Backends) -> subprocess.Popen[bytes]:
    settings = backends.subscriber_settings() | {
        "SUBSCRIBER_LOAD_BALANCING_INTERVAL_SECONDS": "0.5",
        "SUBSCRIBER_HEALTH_PORT": "0", "SUBSCRIBER_LOG_LEVEL": "WARNING",
    }  # fmt: skip
    environment = {k: v for k, v in os.environ.items() if not k.startswith("SUBSCRIBER_")}
    return subprocess.Popen([sys.executable, "-m", "eventflow_subscriber.main"], env=environment | settings,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip


async def test_two_processes_split_the_hub_and_one_takes_over_after_a_kill(
    backends: Backends,
) -> None:
    store = backends.checkpoint_store()
    processes: dict[str, subprocess.Popen[bytes]] = {}

    async def owners() -> Counter[str]:
        listed = await store.list_ownership(backends.namespace, HUB, GROUP)
        return Counter(o["owner_id"] for o in listed if o.get("owner_id"))

    async def eventually_owned(what: str, check: Callable[[Counter[str]], bool]) -> Counter[str]:
        """The owners once `check` holds for them: owner id -> partitions owned."""
        deadline = time.monotonic() + 40
        while not check(current := await owners()):
            assert time.monotonic() < deadline, f"{what}: owners {current}"
            await asyncio.sleep(0.1)
        return current

    async def all_checkpointed() -> bool:
        return await checkpointed(backends, store) == 80

    try:
        async with store:
            # The SDK names each process's claims by an id of its own (a uuid; the subscriber
            # cannot choose it): b starts alone and takes the four partitions, so its id is known.
            processes["b"] = subscriber(backends)
            (b_id,) = await eventually_owned("b alone owning 4", lambda o: list(o.values()) == [4])
            processes["a"] = subscriber(backends)
            split = await eventually_owned("a 2/2 split", lambda o: sorted(o.values()) == [2, 2])
            assert split[b_id] == 2
            await publish(
                backends,
                [(f"order-{n % 10}", event_bytes(f"order-{n % 10}", n // 10 + 1)) for n in range(40)],
            )  # fmt: skip
            processes["a"].send_signal(signal.SIGKILL)
            processes["a"].wait()
            await publish(
                backends,
                [(f"order-{n % 10}", event_bytes(f"order-{n % 10}", n // 10 + 5)) for n in range(40)],
            )  # fmt: skip
            await eventually_owned(
                "b taking over every partition", lambda o: o == Counter({b_id: 4})
            )
            await eventually(all_checkpointed, 40, "every event checkpointed")
            assert processes["b"].poll() is None, "the survivor is still running"
        inbox = await read_inbox(backends)
        assert sorted(inbox) == [f"order-{n}" for n in range(10)]
        for messages in inbox.values():
            assert [m.application_properties[b"sequence"] for m in messages] == list(range(1, 9))
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                assert process.wait(timeout=30) == 0, "SIGTERM ends the subscriber cleanly"
