"""Lease takeover at the default timings, in-process on the real SDK against the Cosmos DB
emulator (4 leases, no changes flowing):

1. crash-restart under the same name: a run owning every lease is killed (its tasks cancelled,
   nothing released) and a new run with the same instance name starts; seconds until it owns all;
2. hand-over on steal: a second instance joins a run owning every lease; seconds until it owns its
   first lease, and until the split is 2/2.

    uv run python benchmarks/publisher_takeover.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from azure.cosmos import PartitionKey
from azure.cosmos.aio import CosmosClient

from eventflow_emulators.cosmos.testing import cosmos_emulator
from eventflow_publisher.adapters.cosmos_changefeed import CosmosChangeFeed, CosmosLeaseStore
from eventflow_publisher.changefeed import ChangeFeedProcessor, ProcessorOptions
from eventflow_testing import eventually


async def nothing(*_: Any) -> None:
    return None


async def until(check: Any, limit: float = 120.0) -> float:
    """How long `check` took to hold (seconds)."""
    began = time.monotonic()
    await eventually(check, "the ownership reached", wait=limit, every=0.02)
    return time.monotonic() - began


async def one_round(client: CosmosClient, number: int) -> dict[str, float]:
    database = await client.create_database(f"takeover-{number}")
    orders = await database.create_container("orders", partition_key=PartitionKey("/order_id"))
    leases = await database.create_container(
        "leases", partition_key=PartitionKey("/id"), default_ttl=-1
    )
    feed = CosmosChangeFeed(orders)
    prefix = f"bench:{await feed.identity()}"

    def start(name: str) -> tuple[ChangeFeedProcessor, asyncio.Task[None]]:
        processor = ChangeFeedProcessor(feed=feed, leases=CosmosLeaseStore(leases, prefix), handler=nothing,
                                        options=ProcessorOptions(instance_name=name))  # fmt: skip
        return processor, asyncio.create_task(processor.run())

    old, old_task = start("replica")
    await until(lambda: len(old.owned) == 4)
    tasks = [t for w in old.workers.values() for t in w.tasks] + [old_task]
    for task in tasks:
        task.cancel()  # kill -9: nothing released
    await asyncio.gather(*tasks, return_exceptions=True)
    new, new_task = start("replica")
    restart = await until(lambda: len(new.owned) == 4)
    joiner, joiner_task = start("other")
    first = await until(lambda: len(joiner.owned) >= 1)
    shared = first + await until(lambda: sorted([len(new.owned), len(joiner.owned)]) == [2, 2])
    for processor, task in ((new, new_task), (joiner, joiner_task)):
        await processor.stop()
        await task
    await client.delete_database(database.id)
    return {"restart_takeover_s": round(restart, 2), "join_first_lease_s": round(first, 2),
            "join_2_2_s": round(shared, 2)}  # fmt: skip


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory() as folder,
        cosmos_emulator(Path(folder) / "cosmos") as cosmos,
    ):
        async with CosmosClient(cosmos.endpoint, credential=cosmos.key) as client:
            rounds = [await one_round(client, n) for n in range(args.rounds)]
    medians = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
    sys.stdout.write(
        orjson.dumps({"rounds": rounds, "medians": medians}, option=orjson.OPT_INDENT_2).decode()
        + "\n"
    )


if __name__ == "__main__":
    asyncio.run(main())
