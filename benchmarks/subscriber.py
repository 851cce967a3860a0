"""Subscriber throughput and per-event CPU cost.

1. events/s: one subscriber draining N events from the local Event Hubs stand-in into the local
   Service Bus stand-in (sessions, duplicate detection), wall clock until every event is checkpointed.
2. CPU per event of the subscriber's own code: routing, mapping and filling the SDK's
   ServiceBusMessageBatch, with a sender that keeps nothing; process CPU time.

    uv run python benchmarks/subscriber.py [--events 20000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
from azure.eventhub import EventData
from azure.servicebus import ServiceBusMessageBatch

from eventflow_contracts import OrderItemAdded, OrderLine, encode_event, new_event
from eventflow_local import LocalEnvironment
from eventflow_local.checkpoints import SqliteCheckpointStore
from eventflow_local.eventhubs import (
    LOCAL_NAMESPACE,
    EventHubConsumerClient,
    EventHubProducerClient,
    create_event_hub,
)
from eventflow_local.servicebus import ServiceBusAdministrationClient, ServiceBusClient
from eventflow_subscriber.adapters.eventhubs_reader import Subscription
from eventflow_subscriber.adapters.servicebus_inbox import ServiceBusInbox
from eventflow_subscriber.forwarding import Forwarder
from eventflow_subscriber.routing import HubEvent

ORDERS = 500


def bodies(count: int) -> list[tuple[str, bytes]]:
    line = OrderLine(sku="SKU-1", quantity=1, unit_price=Decimal("1.00"))
    out = []
    for n in range(count):
        order_id = f"order-{n % ORDERS}"
        out.append(
            (
                order_id,
                encode_event(
                    new_event(
                        OrderItemAdded(order_id=order_id, line=line),
                        source="/b",
                        sequence=n // ORDERS + 1,
                    )
                ),
            )
        )
    return out


async def end_to_end(count: int, folder: Path) -> dict[str, Any]:
    environment = LocalEnvironment(folder)
    await create_event_hub(environment, "orders", partition_count=4)
    async with ServiceBusAdministrationClient(environment) as admin:
        await admin.create_queue("inbox", requires_session=True, requires_duplicate_detection=True,
                                 duplicate_detection_history_time_window=timedelta(minutes=10))  # fmt: skip
    async with EventHubProducerClient(environment, eventhub_name="orders") as producer:
        for key, body in bodies(count):
            batch = await producer.create_batch(partition_key=key)
            batch.add(EventData(body))
            await producer.send_batch(batch)
    store = SqliteCheckpointStore(environment)
    consumer = EventHubConsumerClient(environment, eventhub_name="orders", consumer_group="bench", checkpoint_store=store,
                                      load_balancing_interval=0.2)  # fmt: skip
    async with ServiceBusClient(environment) as client, client.get_queue_sender("inbox") as sender:
        forwarder = Forwarder(
            ServiceBusInbox(sender), hub="orders", subscribed=None, max_message_bytes=250_000
        )
        subscription = Subscription(
            consumer, forwarder, max_batch_size=300, max_wait_time=None, starting_position="-1"
        )
        started = time.perf_counter()
        running = asyncio.create_task(subscription.run())
        while (
            sum(
                c["sequence_number"] + 1
                for c in await store.list_checkpoints(LOCAL_NAMESPACE, "orders", "bench")
            )
            < count
        ):
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - started
        await subscription.drain(5)
        await running
    await store.close()
    return {
        "events": count,
        "seconds": round(elapsed, 3),
        "events_per_s": round(count / elapsed, 1),
    }


class _NullSender:
    async def create_message_batch(self) -> ServiceBusMessageBatch:
        return ServiceBusMessageBatch(max_size_in_bytes=256 * 1024)

    async def send_messages(self, batch: Any) -> None:
        return None


async def own_cpu(count: int) -> dict[str, Any]:
    events = [HubEvent(body, "0", str(n), n) for n, (_, body) in enumerate(bodies(count))]
    forwarder = Forwarder(
        ServiceBusInbox(_NullSender()), hub="orders", subscribed=None, max_message_bytes=250_000
    )
    started = time.process_time()
    for chunk in range(0, count, 300):
        await forwarder.forward(events[chunk : chunk + 300])
    return {"cpu_us_per_event": round((time.process_time() - started) / count * 1e6, 1)}


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "subscriber.json"
    )
    args = parser.parse_args()
    throughput, cpu = [], []
    for round_number in range(args.rounds):
        sys.stderr.write(f"subscriber round {round_number + 1}/{args.rounds} ...\n")
        with tempfile.TemporaryDirectory(prefix="bench-subscriber-") as folder:
            throughput.append(await end_to_end(args.events, Path(folder)))
        cpu.append((await own_cpu(args.events))["cpu_us_per_event"])
    throughput.sort(key=lambda r: r["events_per_s"])
    median = throughput[len(throughput) // 2]
    report = {"scenario": "subscriber", "end_to_end": median, "rounds_events_per_s": [r["events_per_s"] for r in throughput],
              "own_cpu_us_per_event_median": statistics.median(cpu), "own_cpu_rounds": cpu}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    sys.stdout.write(
        f"subscriber, {args.events} events x {args.rounds} rounds (median round)\n"
        "| measure | value |\n| --- | ---: |\n"
        f"| events/s, Event Hubs stand-in → Service Bus stand-in | {median['events_per_s']} |\n"
        f"| CPU per event, subscriber's own code (no stand-ins) | {report['own_cpu_us_per_event_median']} µs |\n"
        f"| rounds (events/s) | {report['rounds_events_per_s']} |\n"
    )


if __name__ == "__main__":
    asyncio.run(main())
