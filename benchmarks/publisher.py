"""Publisher throughput, batch sizes and CPU per event, as a process of its own on the real SDKs.

N outbox events are written to the `orders` container first (the Cosmos DB emulator, through the
real SDK); then one publisher process starts and drains them into the hub `orders` of the messaging
emulator (4 partitions). Reported per round, counted from the publisher's first send: events/s,
mean events per Event Hubs batch (its own batch histogram), and the publisher process's CPU per
event (user + system time from /proc: own code and the SDKs; the emulators run in processes of
their own and are excluded; their cost is in their own benchmarks).

    uv run python benchmarks/publisher.py [--events 20000] [--rounds 3] [--page 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import orjson
from azure.cosmos import PartitionKey
from azure.cosmos.aio import CosmosClient

from eventflow_contracts import OrderItemAdded, OrderLine, new_event, to_json_dict
from eventflow_emulators.cosmos.testing import RunningCosmosEmulator, cosmos_emulator
from eventflow_emulators.messaging.testing import messaging_emulator

ORDERS = 500
HUB_PARTITIONS = 4  # the hub `orders` of emulators/eventhubs.json
TICKS = os.sysconf("SC_CLK_TCK")


def documents(count: int) -> list[dict[str, Any]]:
    line = OrderLine(sku="SKU-1", quantity=1, unit_price=Decimal("1.00"))
    out = []
    for n in range(count):
        order_id, sequence = f"order-{n % ORDERS}", n // ORDERS + 1
        event = new_event(
            OrderItemAdded(order_id=order_id, line=line), source="/bench", sequence=sequence
        )
        out.append({"id": f"{order_id}:event:{sequence:020d}", "order_id": order_id, "kind": "event",
                    "event": to_json_dict(event)})  # fmt: skip
    return out


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


async def fill(cosmos: RunningCosmosEmulator, count: int) -> None:
    async with CosmosClient(cosmos.endpoint, credential=cosmos.key) as client:
        database = await client.create_database_if_not_exists("eventflow")
        orders = await database.create_container_if_not_exists(
            "orders", partition_key=PartitionKey("/order_id"), default_ttl=-1
        )
        pending = documents(count)
        gate = asyncio.Semaphore(32)

        async def create(document: dict[str, Any]) -> None:
            async with gate:
                await orders.create_item(document)

        await asyncio.gather(*(create(d) for d in pending))


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


async def one_round(count: int, page: int, folder: Path) -> dict[str, Any]:
    with ExitStack() as stack:
        cosmos = stack.enter_context(cosmos_emulator(folder / "cosmos"))
        hub = stack.enter_context(messaging_emulator(folder / "messaging"))
        await fill(cosmos, count)
        port = 18000 + os.getpid() % 1000
        settings = {
            "PUBLISHER_MODE": "emulator", "PUBLISHER_EVENTHUBS_CONNECTION_STRING": hub.connection_string,
            "PUBLISHER_COSMOS_ENDPOINT": cosmos.endpoint, "PUBLISHER_COSMOS_KEY": cosmos.key,
            "PUBLISHER_MAX_ITEMS_PER_PAGE": str(page),
            "PUBLISHER_HEALTH_PORT": str(port), "PUBLISHER_LOG_LEVEL": "WARNING",
        }  # fmt: skip
        process = subprocess.Popen([sys.executable, "-m", "eventflow_publisher.main"],
                                   env={**os.environ, **settings}, stdout=subprocess.DEVNULL)  # fmt: skip
        try:
            first: tuple[float, float, float] | None = None  # (time, cpu, events) at the first send
            async with httpx.AsyncClient() as http:
                while True:
                    try:
                        text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
                    except httpx.TransportError:
                        text = ""
                    published = metric(text, "eventflow_publisher_events_published_total")
                    if first is None and published > 0:
                        first = (time.perf_counter(), cpu_seconds(process.pid), published)
                    if published >= count:
                        break
                    if process.poll() is not None:
                        raise RuntimeError(f"the publisher exited with {process.returncode}")
                    await asyncio.sleep(0.05)
            assert first is not None
            # From the first send on: the interpreter's start and imports are not per-event costs.
            measured = count - first[2]
            elapsed = time.perf_counter() - first[0]
            cpu = cpu_seconds(process.pid) - first[1]
        finally:
            process.terminate()
            process.wait(timeout=30)
    batches = metric(text, "eventflow_publisher_batch_events_count")
    return {
        "events": count, "events_per_s": round(measured / elapsed, 1), "batches": int(batches),
        "mean_batch_events": round(metric(text, "eventflow_publisher_batch_events_sum") / max(batches, 1), 1),
        "process_cpu_us_per_event": round(cpu / measured * 1e6, 1),
        "since_first_send": {"events": int(measured), "seconds": round(elapsed, 2)},
    }  # fmt: skip


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--page", type=int, default=1000, help="PUBLISHER_MAX_ITEMS_PER_PAGE")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "publisher.json"
    )
    args = parser.parse_args()
    rounds = []
    for number in range(args.rounds):
        sys.stderr.write(f"publisher round {number + 1}/{args.rounds} ...\n")
        with tempfile.TemporaryDirectory(prefix="bench-publisher-") as folder:
            rounds.append(await one_round(args.events, args.page, Path(folder)))
    median = sorted(rounds, key=lambda r: r["events_per_s"])[len(rounds) // 2]
    cpu = statistics.median(r["process_cpu_us_per_event"] for r in rounds)
    report = {"scenario": "publisher", "page": args.page, "hub_partitions": HUB_PARTITIONS, "median_round": median,
              "rounds": rounds, "process_cpu_us_per_event_median": cpu,
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version()}}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    sys.stdout.write(
        f"publisher, {args.events} events x {args.rounds} rounds, pages of {args.page}, "
        f"{HUB_PARTITIONS} hub partitions (median round)\n"
        "| measure | value |\n| --- | ---: |\n"
        f"| events/s, one publisher process | {median['events_per_s']} |\n"
        f"| batches sent / mean events per batch | {median['batches']} / {median['mean_batch_events']} |\n"
        f"| publisher process CPU per event (own code + SDKs; emulators excluded) | {cpu} µs |\n"
    )


if __name__ == "__main__":
    asyncio.run(main())
