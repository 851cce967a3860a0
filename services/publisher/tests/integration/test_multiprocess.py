"""Three publisher processes on the real SDKs against the Cosmos DB and messaging emulators: a balanced split of sixteen leases,
four ranges split while changes flow, a kill -9 taken over after expiry, and every event on the hub at least once, in
order per order, with the twenty leases spread over the survivors."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from eventflow_emulators.messaging.reading import hub_contents
from eventflow_emulators.messaging.testing import RunningMessagingEmulator, messaging_emulator
from eventflow_testing import eventually

from ..conftest import Store  # type: ignore[import-not-found]

pytestmark = pytest.mark.slow


def publisher(store: Store, hub: RunningMessagingEmulator, name: str) -> subprocess.Popen[bytes]:
    settings = {**store.settings(),
        "PUBLISHER_MODE": "emulator", "PUBLISHER_EVENTHUBS_CONNECTION_STRING": hub.connection_string,
        "PUBLISHER_INSTANCE_NAME": name,
        "PUBLISHER_POLL_DELAY_SECONDS": "0.05", "PUBLISHER_ACQUIRE_INTERVAL_SECONDS": "0.3",
        "PUBLISHER_RENEW_INTERVAL_SECONDS": "1", "PUBLISHER_LEASE_EXPIRY_SECONDS": "3",
        "PUBLISHER_HEALTH_PORT": "0", "PUBLISHER_LOG_LEVEL": "WARNING",
    }  # fmt: skip
    return subprocess.Popen(
        [sys.executable, "-m", "eventflow_publisher.main"], env={**os.environ, **settings},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[RunningMessagingEmulator]:
    """A messaging emulator of the test's own: its hub `orders` (4 partitions) starts empty."""
    with messaging_emulator(tmp_path / "messaging") as emulator:
        yield emulator


async def hub_events(hub: RunningMessagingEmulator) -> list[tuple[str, dict]]:
    """Every event on the hub: (partition, CloudEvent), in partition order."""
    contents = await hub_contents(hub.connection_string, "orders")
    return [
        (pid, orjson.loads(b"".join(e.body))) for pid, events in contents.items() for e in events
    ]


# make test-long: the in-process balance and takeover run in make test (test_processor.py), the
# overlap count of three processes under splits, pauses and kills in make test-long beside this.
@pytest.mark.long
@pytest.mark.parametrize("feed_ranges", [16])
async def test_three_processes_balance_survive_a_kill_and_publish_everything_in_order(
    store: Store, hub: RunningMessagingEmulator
) -> None:
    processes = {name: publisher(store, hub, name) for name in "abc"}
    try:
        leases = await store.lease_store()

        async def owners() -> Counter[str | None]:
            return Counter(lease.owner for lease in await leases.list_leases())

        deadline = time.monotonic() + 30
        while sorted((await owners()).values()) != [5, 5, 6]:
            assert time.monotonic() < deadline, f"never balanced: {await owners()}"
            await asyncio.sleep(0.1)
        written = await store.write_events(orders=12, per_order=2)
        for range_id in ("0", "5", "10", "15"):  # splits while changes flow
            await asyncio.to_thread(store.cosmos.admin.split, store.database, "orders", range_id)
            written += await store.write_events(
                orders=12, per_order=1, start=len(written) // 12 + 1
            )
        processes["a"].send_signal(signal.SIGKILL)
        processes["a"].wait()
        written += await store.write_events(orders=12, per_order=2, start=len(written) // 12 + 1)
        deadline = time.monotonic() + 60
        while set((await owners()).elements()) != {"b", "c"} or sorted(
            (await owners()).values()
        ) != [10, 10]:
            assert time.monotonic() < deadline, f"a's leases never taken over: {await owners()}"
            await asyncio.sleep(0.1)
        expected = {f"order-{n}": list(range(1, 9)) for n in range(12)}
        published: list[tuple[str, dict]] = []

        def complete() -> bool:
            return len({(e["partitionkey"], e["sequence"]) for _, e in published}) == len(written)

        deadline = time.monotonic() + 60
        while True:
            published = await hub_events(hub)
            if complete() or time.monotonic() > deadline:
                break
        assert complete(), f"{len(published)} events on the hub, {len(written)} written"
        for order_id, sequences in expected.items():
            mine = [
                (partition, int(e["sequence"]))
                for partition, e in published
                if e["partitionkey"] == order_id
            ]
            assert len({partition for partition, _ in mine}) == 1, "one order, one partition"
            first_seen = list(dict.fromkeys(sequence for _, sequence in mine))
            assert first_seen == sequences, f"{order_id} out of order: {[s for _, s in mine]}"
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.terminate()
                process.wait(timeout=20)


async def test_sigterm_finishes_and_releases_every_lease(
    store: Store, hub: RunningMessagingEmulator
) -> None:
    process = publisher(store, hub, "solo")
    leases = await store.lease_store()

    async def taken() -> bool:
        return {lease.owner for lease in await leases.list_leases()} == {"solo"}

    await eventually(taken, "the leases taken", every=0.1)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=20) == 0
    assert {lease.owner for lease in await leases.list_leases()} == {None}
