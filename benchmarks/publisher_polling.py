"""The publisher's polling at its default settings, on the real SDKs against the emulators:

1. an idle publisher process (4 leases): Cosmos DB requests per minute and request units per
   minute (the emulator's estimate, docs in libs/emulators/README.md), counted by the emulator;
2. commit → accepted by the hub on that idle system: one event at a time, 0.5 to 1.5 s apart (the
   first after a quiet minute), from the write's return to the hub's enqueued time (one machine,
   one clock);
3. a quiet lease beside a busy sibling: two leases over the halves of one physical range, 20
   changes/s in one half only; reads and request units of the quiet lease per minute.

    uv run python benchmarks/publisher_polling.py [--idle 60] [--events 40]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
from azure.cosmos import PartitionKey
from azure.cosmos.aio import CosmosClient

from eventflow_contracts import OrderItemAdded, OrderLine, new_event, to_json_dict
from eventflow_emulators.cosmos.testing import cosmos_emulator
from eventflow_emulators.messaging.reading import hub_contents
from eventflow_emulators.messaging.testing import messaging_emulator
from eventflow_publisher.adapters.cosmos_changefeed import CosmosChangeFeed, CosmosLeaseStore
from eventflow_publisher.changefeed import (
    ChangeFeedProcessor,
    LeaseContext,
    Page,
    ProcessorOptions,
    StartPosition,
)


def event_document(order_id: str, sequence: int) -> dict[str, Any]:
    line = OrderLine(sku="SKU-1", quantity=1, unit_price=Decimal("1.00"))
    event = new_event(
        OrderItemAdded(order_id=order_id, line=line), source="/bench", sequence=sequence
    )
    return {"id": f"{order_id}:event:{sequence:020d}", "order_id": order_id, "kind": "event",
            "event": to_json_dict(event)}  # fmt: skip


async def containers(client: CosmosClient) -> tuple[Any, Any]:
    database = await client.create_database_if_not_exists("eventflow")
    orders = await database.create_container_if_not_exists(
        "orders", partition_key=PartitionKey("/order_id"), default_ttl=-1
    )
    leases = await database.create_container_if_not_exists(
        "leases", partition_key=PartitionKey("/id"), default_ttl=-1
    )
    return orders, leases


async def idle_and_latency(folder: Path, idle: float, events: int) -> dict[str, Any]:
    with cosmos_emulator(folder / "cosmos") as cosmos, messaging_emulator(folder / "hub") as hub:
        async with CosmosClient(cosmos.endpoint, credential=cosmos.key) as client:
            orders, leases = await containers(client)
            settings = {
                "PUBLISHER_MODE": "emulator", "PUBLISHER_EVENTHUBS_CONNECTION_STRING": hub.connection_string,
                "PUBLISHER_COSMOS_ENDPOINT": cosmos.endpoint, "PUBLISHER_COSMOS_KEY": cosmos.key,
                "PUBLISHER_HEALTH_PORT": "0", "PUBLISHER_LOG_LEVEL": "WARNING",
            }  # fmt: skip
            process = subprocess.Popen([sys.executable, "-m", "eventflow_publisher.main"],
                                       env={**os.environ, **settings}, stdout=subprocess.DEVNULL)  # fmt: skip
            try:
                await owned(leases, 4)
                await asyncio.sleep(20.0)  # past the first renewals and estimates
                before, began = cosmos.admin.status(), time.monotonic()
                await asyncio.sleep(idle)
                after, minutes = cosmos.admin.status(), (time.monotonic() - began) / 60
                committed: dict[str, float] = {}
                for n in range(events):
                    if n:
                        await asyncio.sleep(random.uniform(0.5, 1.5))
                    document = event_document(f"order-{n}", 1)
                    await orders.create_item(document)
                    committed[document["event"]["id"]] = time.time()
                await asyncio.sleep(2.0)
                contents = await hub_contents(hub.connection_string, "orders")
            finally:
                process.terminate()
                process.wait(timeout=30)
    latencies, partitions = {}, {}
    for partition_id, partition in contents.items():
        for event in partition:
            envelope = orjson.loads(b"".join(event.body))
            if envelope["id"] in committed:
                latencies[envelope["id"]] = (
                    event.enqueued_time.timestamp() - committed[envelope["id"]]
                )
                partitions[envelope["id"]] = partition_id
    ordered = [latencies[key] for key in committed if key in latencies]
    # The SDK attaches a link per hub partition on its first send to it: apart from polling.
    firsts = {partitions[key]: key for key in reversed(committed) if key in partitions}
    warm = [latencies[key] for key in committed if key in latencies and key not in firsts.values()]
    statuses = {k: round((after["statuses"].get(k, 0) - before["statuses"].get(k, 0)) / minutes)
                for k in after["statuses"]}  # fmt: skip
    return {
        "idle_requests_per_minute": round((after["requests"] - before["requests"]) / minutes),
        "idle_request_units_per_minute": round((after["request_units"] - before["request_units"]) / minutes, 1),
        "idle_responses_per_minute_by_status": {k: v for k, v in statuses.items() if v},
        "commit_to_hub_ms": {
            "events": len(ordered), "p50": round(statistics.median(ordered) * 1000),
            "p95": round(statistics.quantiles(ordered, n=20)[18] * 1000),
            "max": round(max(ordered) * 1000),
            "first_after_a_quiet_minute": round(ordered[0] * 1000),
            "first_send_to_each_hub_partition": [round(latencies[k] * 1000) for k in firsts.values()],
            "p50_other_sends": round(statistics.median(warm) * 1000),
            "p95_other_sends": round(statistics.quantiles(warm, n=20)[18] * 1000),
        },
    }  # fmt: skip


async def owned(leases: Any, count: int) -> None:
    deadline = time.monotonic() + 60
    while True:
        found = [d async for d in leases.query_items(
            "SELECT * FROM c WHERE c.kind = 'lease'")]  # fmt: skip
        found = [d for d in found if d.get("owner")]
        if len(found) >= count:
            return
        if time.monotonic() > deadline:
            raise RuntimeError("the publisher never owned its leases")
        await asyncio.sleep(0.2)


class CountingFeed(CosmosChangeFeed):
    """The ChangeFeed port, counting reads and request charges per feed range."""

    def __init__(self, container: Any) -> None:
        super().__init__(container)
        self.reads: dict[str, int] = {}
        self.charges: dict[str, float] = {}

    async def read_page(self, feed_range: dict[str, Any], **kwargs: Any) -> Page:
        page = await super().read_page(feed_range, **kwargs)
        key = feed_range["Range"]["min"] or "low"
        headers = self._container.client_connection.last_response_headers
        self.reads[key] = self.reads.get(key, 0) + 1
        self.charges[key] = self.charges.get(key, 0.0) + float(
            headers.get("x-ms-request-charge", 0)
        )
        return page


async def quiet_beside_busy(folder: Path, seconds: float) -> dict[str, Any]:
    with cosmos_emulator(folder / "cosmos1", partition_key_ranges=1) as cosmos:
        async with CosmosClient(cosmos.endpoint, credential=cosmos.key) as client:
            orders, lease_container = await containers(client)
            feed = CountingFeed(orders)
            (whole,) = await feed.feed_ranges()
            middle = "1FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF"
            low = {"Range": whole["Range"] | {"max": middle}}
            high = {"Range": whole["Range"] | {"min": middle}}
            store = CosmosLeaseStore(lease_container, f"bench:{await feed.identity()}")
            await store.bootstrap([low, high], StartPosition("beginning"))
            busy = []
            n = 0
            while len(busy) < 20:
                key = f"order-{n}"
                if await orders.is_feed_range_subset(
                    low, await orders.feed_range_from_partition_key(key)
                ):
                    busy.append(key)
                n += 1

            async def handler(_: LeaseContext, __: Sequence[dict[str, Any]]) -> None:
                return None

            processor = ChangeFeedProcessor(feed=feed, leases=store, handler=handler,
                                            options=ProcessorOptions(instance_name="bench"))  # fmt: skip
            task = asyncio.create_task(processor.run())
            while len(processor.owned) < 2:
                await asyncio.sleep(0.1)
            await asyncio.sleep(2.0)
            feed.reads.clear()
            feed.charges.clear()
            began, sequence = time.monotonic(), 0
            while time.monotonic() - began < seconds:
                sequence += 1
                for key in busy:  # 20 changes a second in the busy half
                    await orders.create_item(event_document(key, sequence))
                await asyncio.sleep(max(0.0, began + sequence - time.monotonic()))
            minutes = (time.monotonic() - began) / 60
            await processor.stop()
            await task
    return {
        "busy_changes_per_minute": round(sequence * 20 / minutes),
        "quiet_lease_reads_per_minute": round(feed.reads.get(middle, 0) / minutes),
        "quiet_lease_request_units_per_minute": round(feed.charges.get(middle, 0) / minutes, 1),
        "busy_lease_reads_per_minute": round(feed.reads.get("low", 0) / minutes),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--idle", type=float, default=60.0)
    parser.add_argument("--events", type=int, default=40)
    parser.add_argument("--busy-seconds", type=float, default=30.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        result = await idle_and_latency(Path(folder), args.idle, args.events)
        result["quiet_beside_busy"] = await quiet_beside_busy(Path(folder), args.busy_seconds)
    sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")


if __name__ == "__main__":
    asyncio.run(main())
