"""What 429s on the lease container cost, at the default timings, in-process on the real SDK
against the Cosmos DB emulator (4 leases, no changes flowing): a run owning every lease is throttled
(the emulator's request-unit budget, with a competing load of point reads) while a second run of
the same name starts. Reports how long lease-store calls waited in the SDK's 429 retries, and how
the second run took its leases: released to it (a hand-over) or taken from a run it judged gone.

    uv run python benchmarks/publisher_throttled_leases.py [--budget 10] [--seconds 40]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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


class Timed:
    """A lease store that records each call: (run, call, began, seconds, taken from an owner)."""

    def __init__(self, store: CosmosLeaseStore, run: str, calls: list[dict[str, Any]]) -> None:
        self.store, self.run, self.calls = store, run, calls

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.store, name)
        if not asyncio.iscoroutinefunction(attribute):
            return attribute

        async def timed(*args: Any, **kwargs: Any) -> Any:
            began = time.monotonic()
            try:
                return await attribute(*args, **kwargs)
            finally:
                owned = name == "acquire" and args[0].owner is not None
                self.calls.append({"run": self.run, "call": name, "began": began,
                                   "seconds": time.monotonic() - began, "from_owner": owned})  # fmt: skip

        return timed


async def nothing(*_: Any) -> None:
    return None


async def measure(
    client: CosmosClient, cosmos: Any, budget: float, seconds: float
) -> dict[str, Any]:
    database = await client.create_database("throttled")
    orders = await database.create_container("orders", partition_key=PartitionKey("/order_id"))
    leases = await database.create_container(
        "leases", partition_key=PartitionKey("/id"), default_ttl=-1
    )
    feed = CosmosChangeFeed(orders)
    prefix = f"bench:{await feed.identity()}"
    calls: list[dict[str, Any]] = []

    def start(run: str) -> tuple[ChangeFeedProcessor, asyncio.Task[None]]:
        processor = ChangeFeedProcessor(
            feed=feed, leases=Timed(CosmosLeaseStore(leases, prefix), run, calls),  # type: ignore[arg-type]
            handler=nothing, options=ProcessorOptions(instance_name="replica"),
        )  # fmt: skip
        return processor, asyncio.create_task(processor.run())

    first = start("first")
    await eventually(lambda: len(first[0].owned) == 4, "the first run owns every lease")
    await asyncio.sleep(13)  # a renewal at the defaults before the throttling
    done = asyncio.Event()

    async def load() -> None:
        while not done.is_set():
            with contextlib.suppress(Exception):
                await leases.read_item("absent", partition_key="absent")

    throttled = cosmos.admin.status()["throttled"]
    cosmos.admin.set_request_units_per_second(budget)
    began = time.monotonic()
    loads = [asyncio.create_task(load()) for _ in range(4)]
    second = start("second")
    await asyncio.sleep(seconds)
    cosmos.admin.set_request_units_per_second(None)
    ended = time.monotonic()
    done.set()
    await asyncio.gather(*loads)
    await asyncio.sleep(15)
    owned = [len(first[0].owned), len(second[0].owned)]
    for processor, task in (first, second):
        await processor.stop()
        await task
    waits = {}
    for call in ("renew", "read", "list_leases"):
        durations = [
            c["seconds"] for c in calls if c["call"] == call and began <= c["began"] <= ended
        ]
        if durations:
            waits[call] = {"calls": len(durations), "max_s": round(max(durations), 2),
                           "median_s": round(statistics.median(durations), 2)}  # fmt: skip
    taken = [c for c in calls if c["run"] == "second" and c["call"] == "acquire"]
    return {
        "budget_ru_per_s": budget, "throttled_seconds": seconds,
        "answered_429": cosmos.admin.status()["throttled"] - throttled,
        "waits_while_throttled": waits, "owned_after": owned,
        "second_run_took": {"released_to_it": sum(not c["from_owner"] for c in taken),
                            "from_a_run_judged_gone": sum(c["from_owner"] for c in taken)},
    }  # fmt: skip


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", type=float, default=10.0, help="request units per second")
    parser.add_argument("--seconds", type=float, default=40.0, help="how long to throttle")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory() as folder,
        cosmos_emulator(Path(folder) / "cosmos") as cosmos,
    ):
        async with CosmosClient(cosmos.endpoint, credential=cosmos.key) as client:
            result = await measure(client, cosmos, args.budget, args.seconds)
    sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")


if __name__ == "__main__":
    asyncio.run(main())
