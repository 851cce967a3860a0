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
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable

import pytest

from eventflow_testing import eventually

from ..conftest import (  # type: ignore[import-not-found]
    GROUP,
    HUB,
    Backends,
    checkpointed,
    event_bytes,
    publish,
    read_inbox,
)

pytestmark = pytest.mark.slow


def subscriber(backends: Backends, **more: str) -> subprocess.Popen[bytes]:
    settings = backends.subscriber_settings() | {
        "SUBSCRIBER_LOAD_BALANCING_INTERVAL_SECONDS": "0.5",
        "SUBSCRIBER_HEALTH_PORT": "0", "SUBSCRIBER_LOG_LEVEL": "WARNING",
    } | {f"SUBSCRIBER_{name.upper()}": value for name, value in more.items()}  # fmt: skip
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
            await eventually(all_checkpointed, "every event checkpointed", wait=90)
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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def metric(port: int, name: str) -> float:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return 0.0
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


async def test_sigterm_finishes_the_batches_in_flight_checkpoints_them_and_releases_the_partitions(
    backends: Backends,
) -> None:
    """The inbox answers server-busy, so the first batches stay in flight (the service's own SDK
    retry settings and back-off); SIGTERM comes; the inbox recovers: the process forwards and
    checkpoints what it had taken, takes nothing new, releases its partitions (the SDK empties
    their owner id) and exits 0. A later process reads on from those checkpoints: every event once,
    in order."""
    admin = backends.messaging.admin
    await publish(backends, [(f"order-{n % 10}", event_bytes(f"order-{n % 10}", n // 10 + 1)) for n in range(40)])  # fmt: skip
    admin.server_busy(120, operations=["send"])
    port = free_port()
    first = subscriber(  # batches of 3: what is in flight is a part of the hub only
        backends, health_port=str(port), drain_timeout_seconds="40", max_batch_size="3"
    )
    store = backends.checkpoint_store()
    try:
        async with store:

            async def in_flight() -> bool:
                return metric(port, "eventflow_subscriber_events_received_total") > 0

            await eventually(in_flight, "a batch taken from the hub", wait=90)
            assert await checkpointed(backends, store) == 0
            first.send_signal(signal.SIGTERM)
            admin.clear()
            assert await asyncio.to_thread(first.wait, 60) == 0, (
                "SIGTERM ends the subscriber cleanly"
            )
            drained = await checkpointed(backends, store)
            assert 0 < drained <= 12, (
                "the batches in flight (one a partition) were forwarded and checkpointed"
            )
            ownership = await store.list_ownership(backends.namespace, HUB, GROUP)
            assert ownership, "the partitions were claimed"
            assert not any(o.get("owner_id") for o in ownership), "every partition released"
            inbox = await read_inbox(backends)
            assert sum(len(messages) for messages in inbox.values()) == drained

            second = subscriber(backends)
            try:

                async def all_checkpointed() -> bool:
                    return await checkpointed(backends, store) == 40

                await eventually(all_checkpointed, "the rest read from the checkpoints", wait=90)
                second.send_signal(signal.SIGTERM)
                assert await asyncio.to_thread(second.wait, 30) == 0
            finally:
                if second.poll() is None:
                    second.kill()
                    second.wait()
        for session, messages in (await read_inbox(backends)).items():
            inbox.setdefault(session, []).extend(messages)
        assert sorted(inbox) == [f"order-{n}" for n in range(10)]
        for messages in inbox.values():
            assert [m.application_properties[b"sequence"] for m in messages] == [1, 2, 3, 4]
    finally:
        admin.clear()
        if first.poll() is None:
            first.kill()
            first.wait()
