"""Publisher throughput and per-event CPU cost.

1. events/s: one publisher (the change feed processor + handler) draining N outbox events from
   the local Cosmos stand-in into the local Event Hubs stand-in, wall clock until the hub holds all.
2. CPU per event of the publisher's own code: the same processor and handler fed from an in-memory
   change feed and sending to a producer that keeps nothing (the SDK's EventDataBatch is still
   filled), measured with process CPU time, so the stand-ins' work is excluded.

    uv run python benchmarks/publisher.py [--events 20000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
from azure.cosmos import PartitionKey
from azure.eventhub import EventDataBatch

from eventflow_contracts import OrderItemAdded, OrderLine, new_event, to_json_dict
from eventflow_local import LocalEnvironment
from eventflow_local.cosmos import CosmosClient
from eventflow_local.eventhubs import (
    EventHubConsumerClient,
    EventHubProducerClient,
    create_event_hub,
)
from eventflow_publisher.adapters.cosmos_changefeed import CosmosChangeFeed, CosmosLeaseStore
from eventflow_publisher.adapters.eventhubs_sender import EventHubsSender
from eventflow_publisher.changefeed import (
    ChangeFeedProcessor,
    Page,
    ProcessorOptions,
    StartPosition,
)
from eventflow_publisher.observability import PublisherMetrics
from eventflow_publisher.publishing import EventPublisher, SendHealth

ORDERS = 500
OPTIONS: dict[str, Any] = {
    "poll_delay": 0.05,
    "acquire_interval": 0.2,
    "renew_interval": 2.0,
    "expiry": 10.0,
    "lag_interval": 60.0,
}


def documents(count: int) -> list[dict[str, Any]]:
    line = OrderLine(sku="SKU-1", quantity=1, unit_price=Decimal("1.00"))
    out = []
    for n in range(count):
        order_id, sequence = f"order-{n % ORDERS}", n // ORDERS + 1
        event = new_event(
            OrderItemAdded(order_id=order_id, line=line), source="/bench", sequence=sequence
        )
        out.append(
            {
                "id": f"{order_id}:event:{sequence:020d}",
                "order_id": order_id,
                "kind": "event",
                "event": to_json_dict(event),
            }
        )
    return out


async def end_to_end(count: int, folder: Path) -> dict[str, Any]:
    environment = LocalEnvironment(folder)
    await create_event_hub(environment, "orders", partition_count=4)
    async with CosmosClient(environment) as cosmos:
        database = await cosmos.create_database_if_not_exists("eventflow")
        orders = await database.create_container_if_not_exists(
            "orders", partition_key=PartitionKey("/order_id"), default_ttl=-1
        )
        leases = await database.create_container_if_not_exists(
            "leases", partition_key=PartitionKey("/id"), default_ttl=-1
        )
        for document in documents(count):
            await orders.upsert_item(document)
        feed = CosmosChangeFeed(orders)
        metrics = PublisherMetrics()
        async with EventHubProducerClient(environment, eventhub_name="orders") as producer:
            publisher = EventPublisher(
                EventHubsSender(producer), _NoPoison(), health=SendHealth(30), observer=metrics
            )
            processor = ChangeFeedProcessor(
                feed=feed, leases=CosmosLeaseStore(leases, f"bench:{await feed.identity()}"), handler=publisher,
                options=ProcessorOptions(instance_name="bench", max_items=500, **OPTIONS), observer=metrics,
            )  # fmt: skip
            consumer = EventHubConsumerClient(
                environment, eventhub_name="orders", consumer_group="bench"
            )
            started = time.perf_counter()
            running = asyncio.create_task(processor.run())
            while sum(await _hub_count(consumer)) < count:
                await asyncio.sleep(0.05)
            elapsed = time.perf_counter() - started
            await processor.stop()
            await running
            await consumer.close()
    batches = metrics.batches.collect()[0].samples
    total = next(s.value for s in batches if s.name.endswith("_sum"))
    number = next(s.value for s in batches if s.name.endswith("_count"))
    return {"events": count, "seconds": round(elapsed, 3), "events_per_s": round(count / elapsed, 1),
            "batches": int(number), "mean_batch_events": round(total / number, 1)}  # fmt: skip


async def _hub_count(consumer: EventHubConsumerClient) -> list[int]:
    counts = []
    for partition in await consumer.get_partition_ids():
        properties = await consumer.get_partition_properties(partition)
        counts.append(properties["last_enqueued_sequence_number"] + 1)
    return counts


class _NoPoison:
    async def record(self, document: dict[str, Any], reason: str, detail: str) -> None:
        raise AssertionError(f"unexpected poison: {reason}")


class _MemoryFeed:
    def __init__(self, pages: list[list[dict[str, Any]]]) -> None:
        self.pages = pages
        self.position = 0
        self.done = asyncio.Event()

    async def identity(self) -> str:
        return "memory"

    async def feed_ranges(self) -> list[dict[str, Any]]:
        return [
            {"Range": {"min": "", "max": "FF", "isMinInclusive": True, "isMaxInclusive": False}}
        ]

    async def read_page(
        self,
        feed_range: dict[str, Any],
        *,
        continuation: str | None,
        start: StartPosition,
        max_items: int,
    ) -> Page:
        if self.position >= len(self.pages):
            self.done.set()
            return Page([], str(self.position))
        self.position += 1
        return Page(self.pages[self.position - 1], str(self.position))

    async def estimate_lag(
        self, feed_range: dict[str, Any], *, continuation: str | None, start: StartPosition
    ) -> int:
        return 0


class _MemoryLeases:
    async def bootstrap(self, feed_ranges: Sequence[dict[str, Any]], start: StartPosition) -> None:
        self.lease = _lease(feed_ranges[0], None)

    async def list_leases(self) -> list[Any]:
        return [self.lease]

    async def acquire(self, lease: Any, owner: str) -> Any:
        self.lease = _lease(lease.feed_range, owner)
        return self.lease

    async def renew(self, lease: Any) -> Any:
        return lease

    async def checkpoint(self, lease: Any, continuation: str) -> Any:
        return lease

    async def release(self, lease: Any) -> None:
        return None


def _lease(feed_range: dict[str, Any], owner: str | None) -> Any:
    from eventflow_publisher.changefeed import Lease  # noqa: PLC0415

    return Lease("memory", feed_range, owner, None, StartPosition("beginning"), time.time(), "e")


class _NullProducer:
    async def create_batch(self, *, partition_key: str) -> EventDataBatch:
        return EventDataBatch(max_size_in_bytes=1024 * 1024, partition_key=partition_key)

    async def send_batch(self, batch: EventDataBatch) -> None:
        return None


async def own_cpu(count: int) -> dict[str, Any]:
    pages = [documents(count)[n : n + 500] for n in range(0, count, 500)]
    feed = _MemoryFeed(pages)
    publisher = EventPublisher(EventHubsSender(_NullProducer()), _NoPoison(), health=SendHealth(30))
    processor = ChangeFeedProcessor(feed=feed, leases=_MemoryLeases(), handler=publisher,
                                    options=ProcessorOptions(instance_name="cpu", **OPTIONS))  # fmt: skip
    running = asyncio.create_task(processor.run())
    cpu_started = time.process_time()
    await feed.done.wait()
    cpu = time.process_time() - cpu_started
    await processor.stop()
    await running
    return {"events": count, "cpu_us_per_event": round(cpu / count * 1e6, 1)}


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "publisher.json"
    )
    args = parser.parse_args()
    throughput, cpu = [], []
    for round_number in range(args.rounds):
        sys.stderr.write(f"publisher round {round_number + 1}/{args.rounds} ...\n")
        with tempfile.TemporaryDirectory(prefix="bench-publisher-") as folder:
            throughput.append(await end_to_end(args.events, Path(folder)))
        cpu.append(await own_cpu(args.events))
    throughput.sort(key=lambda r: r["events_per_s"])
    median = throughput[len(throughput) // 2]
    cpu_median = statistics.median(r["cpu_us_per_event"] for r in cpu)
    report = {"scenario": "publisher", "end_to_end": median, "rounds_events_per_s": [r["events_per_s"] for r in throughput],
              "own_cpu_us_per_event_median": cpu_median, "own_cpu_rounds": [r["cpu_us_per_event"] for r in cpu],
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version()}}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    sys.stdout.write(
        f"publisher, {args.events} events x {args.rounds} rounds (median round)\n"
        "| measure | value |\n| --- | ---: |\n"
        f"| events/s, Cosmos stand-in → Event Hubs stand-in | {median['events_per_s']} |\n"
        f"| batches sent / mean events per batch | {median['batches']} / {median['mean_batch_events']} |\n"
        f"| CPU per event, publisher's own code (no stand-ins) | {cpu_median} µs |\n"
        f"| rounds (events/s) | {report['rounds_events_per_s']} |\n"
    )


if __name__ == "__main__":
    asyncio.run(main())
