"""Consumer throughput and per-message CPU cost.

1. messages/s: one consumer process-worth of session loops (16 concurrent sessions) applying N
   messages spread over sessions (orders) from the local Service Bus stand-in into the local Cosmos
   stand-in, wall clock until every effect is applied.
2. CPU per message of the consumer's own code: the session worker and handler (decode, duplicate
   checks, projection) against an in-memory receiver and store; process CPU time.

    uv run python benchmarks/consumer.py [--orders 500] [--events-per-order 4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
from azure.servicebus import ServiceBusMessage

from eventflow_consumer.adapters.servicebus_sessions import SessionPump
from eventflow_consumer.bootstrap import open_resources
from eventflow_consumer.handling import Delivery, InboxHandler
from eventflow_consumer.ports import Inbound
from eventflow_consumer.projection import OrderSummary
from eventflow_consumer.sessions import SessionWorker
from eventflow_consumer.settings import Settings
from eventflow_contracts import (
    OrderCancelled,
    OrderCreated,
    OrderItemAdded,
    OrderLine,
    OrderSubmitted,
    encode_event,
    new_event,
)
from eventflow_local import LocalEnvironment
from eventflow_local.servicebus import ServiceBusAdministrationClient, ServiceBusClient

LINE = OrderLine(sku="SKU-1", quantity=1, unit_price=Decimal("1.00"))


def order_events(order_id: str) -> list[bytes]:
    data: list[Any] = [
        OrderCreated(
            order_id=order_id, customer_id="c", lines=(LINE,), currency="EUR", total=Decimal("1.00")
        ),
        OrderItemAdded(order_id=order_id, line=LINE),
        OrderSubmitted(order_id=order_id, currency="EUR", total=Decimal("2.00"), line_count=2),
        OrderCancelled(order_id=order_id, reason="bench"),
    ]
    return [
        encode_event(new_event(d, source="/bench", sequence=n)) for n, d in enumerate(data, start=1)
    ]


async def end_to_end(orders: int, folder: Path, concurrency: int) -> dict[str, Any]:
    environment = LocalEnvironment(folder)
    async with ServiceBusAdministrationClient(environment) as admin:
        await admin.create_queue("inbox", requires_session=True, requires_duplicate_detection=True,
                                 duplicate_detection_history_time_window=timedelta(minutes=10))  # fmt: skip
    async with ServiceBusClient(environment) as client, client.get_queue_sender("inbox") as sender:
        for n in range(orders):
            await sender.send_messages([ServiceBusMessage(raw, session_id=f"o{n}", message_id=orjson.loads(raw)["id"])
                                        for raw in order_events(f"o{n}")])  # fmt: skip
    settings = Settings(mode="local", local_dir=folder, session_idle_seconds=0.2)
    async with open_resources(settings) as resources:
        worker = SessionWorker(InboxHandler(resources.store), resources.store)
        pump = SessionPump(
            resources.servicebus,
            "inbox",
            worker,
            concurrency=concurrency,
            idle_seconds=0.2,
            renew_seconds=10,
        )
        started = time.perf_counter()
        running = asyncio.create_task(pump.run())
        for n in reversed(range(orders)):
            while (await resources.store.get(f"o{n}") or {}).get("last_sequence") != 4:
                await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - started
        pump.stop()
        await running
    return {
        "messages": orders * 4,
        "seconds": round(elapsed, 2),
        "messages_per_s": round(orders * 4 / elapsed, 1),
    }


class _Channel:
    """One session's messages in memory: the worker's SessionChannel port, settling nothing."""

    def __init__(self, session_id: str, inbound: list[Inbound]) -> None:
        self.session_id, self._inbound = session_id, inbound

    async def get_state(self) -> bytes | None:
        return None

    async def set_state(self, state: bytes) -> None:
        return None

    async def receive(self, max_count: int, wait: float) -> list[Inbound]:
        batch, self._inbound = self._inbound[:max_count], self._inbound[max_count:]
        return batch

    async def receive_deferred(self, sequence_number: int) -> Inbound | None:
        return None

    async def deferred_present(self, sequence_numbers: list[int]) -> set[int]:
        return set()

    async def complete(self, inbound: Inbound) -> None:
        return None

    async def abandon(self, inbound: Inbound) -> None:
        return None

    async def defer(self, inbound: Inbound) -> None:
        return None

    async def dead_letter(self, inbound: Inbound, reason: str, description: str) -> None:
        return None


class _MemoryStore:
    def __init__(self) -> None:
        self.summaries: dict[str, tuple[OrderSummary, str]] = {}
        self.marks: set[str] = set()

    async def load(self, order_id: str) -> tuple[OrderSummary, str] | None:
        return self.summaries.get(order_id)

    async def has_mark(self, order_id: str, event_id: str) -> bool:
        return event_id in self.marks

    async def commit(
        self,
        summary: OrderSummary,
        token: str | None,
        event_id: str | None,
        committed_at: datetime | None = None,
    ) -> None:
        if event_id is not None:
            self.marks.add(event_id)
        self.summaries[summary.order_id] = (summary, f"token-{len(self.marks)}")

    async def set_blocked(self, session_id: str, reason: str) -> None:
        return None

    async def clear_blocked(self, session_id: str) -> None:
        return None


async def own_cpu(orders: int) -> float:
    channels = [
        _Channel(f"o{n}", [Inbound(Delivery(raw, orjson.loads(raw)["id"], f"o{n}", s, 0, {}), s)
                           for s, raw in enumerate(order_events(f"o{n}"))])
        for n in range(orders)
    ]  # fmt: skip
    store = _MemoryStore()
    worker = SessionWorker(InboxHandler(store), store)
    started = time.process_time()
    for channel in channels:
        await worker.drain(channel, idle_seconds=0, stopping=lambda: False)
    return round((time.process_time() - started) / (orders * 4) * 1e6, 1)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--orders", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "consumer.json"
    )
    args = parser.parse_args()
    throughput, cpu = [], []
    for round_number in range(args.rounds):
        sys.stderr.write(f"consumer round {round_number + 1}/{args.rounds} ...\n")
        with tempfile.TemporaryDirectory(prefix="bench-consumer-") as folder:
            throughput.append(await end_to_end(args.orders, Path(folder), args.concurrency))
        cpu.append(await own_cpu(args.orders))
    throughput.sort(key=lambda r: r["messages_per_s"])
    median = throughput[len(throughput) // 2]
    report = {"scenario": "consumer", "sessions": args.orders, "concurrent_sessions": args.concurrency, "end_to_end": median,
              "rounds_messages_per_s": [r["messages_per_s"] for r in throughput],
              "own_cpu_us_per_message_median": statistics.median(cpu), "own_cpu_rounds": cpu}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    sys.stdout.write(
        f"consumer, {args.orders} sessions x 4 messages, {args.concurrency} concurrent sessions, {args.rounds} rounds\n"
        "| measure | value |\n| --- | ---: |\n"
        f"| messages/s, Service Bus stand-in → Cosmos stand-in | {median['messages_per_s']} |\n"
        f"| CPU per message, consumer's own code (in-memory receiver and store) | {report['own_cpu_us_per_message_median']} µs |\n"
        f"| rounds (messages/s) | {report['rounds_messages_per_s']} |\n"
    )


if __name__ == "__main__":
    asyncio.run(main())
