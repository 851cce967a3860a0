"""Subscriber throughput and CPU per event, as a process of its own on the real SDKs.

Per round: a messaging emulator of its own (hub `orders`, 4 partitions; queue `inbox` with sessions
and duplicate detection, as in Azure) and a fresh checkpoint container on Azurite; N events over
500 orders are sent to the hub first (the real producer, batched per order); then one subscriber
process (`python -m eventflow_subscriber.main`, mode `emulator`: azure-eventhub with the
BlobCheckpointStore, azure-servicebus) drains them into the inbox. Reported:

1. events/s hub -> inbox, counted from the first checkpoint to the one that covers the last event
   (a checkpoint is written only after the inbox accepted its batch); the start-up before the first
   checkpoint (interpreter, imports, connections, partition claims) is reported on its own.
2. the subscriber process's CPU per event over the same span (user + system time from
   /proc/<pid>/stat: own code and the SDKs); the emulator's and Azurite's CPU per event beside it
   (they share the machine's cores with the subscriber).
3. CPU per event of the subscriber's own code alone (routing, mapping, filling the SDK's
   ServiceBusMessageBatch; a sender that keeps nothing), in this process.

    uv run python benchmarks/subscriber.py [--events 20000] [--rounds 3] [--batch 300]

Needs Azurite from `npm ci` (node_modules) and node.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
from azure.eventhub import EventData
from azure.eventhub.aio import EventHubProducerClient
from azure.eventhub.extensions.checkpointstoreblobaio import BlobCheckpointStore
from azure.servicebus import ServiceBusMessageBatch
from azure.storage.blob.aio import BlobServiceClient

from eventflow_contracts import OrderItemAdded, OrderLine, encode_event, new_event
from eventflow_emulators.messaging.testing import RunningMessagingEmulator, messaging_emulator
from eventflow_subscriber.adapters.servicebus_inbox import ServiceBusInbox
from eventflow_subscriber.forwarding import Forwarder
from eventflow_subscriber.routing import HubEvent

ORDERS = 500
HUB, GROUP, INBOX, PARTITIONS = "orders", "inbox-subscriber", "inbox", 4
LOAD_BALANCING_INTERVAL_S = 1.0
TICKS = os.sysconf("SC_CLK_TCK")
ROOT = Path(__file__).resolve().parents[1]
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
EVENTHUBS_CONFIG = {"UserConfig": {"NamespaceConfig": [{"Type": "EventHub", "Name": "emulatorNs1", "Entities": [
    {"Name": HUB, "PartitionCount": PARTITIONS, "ConsumerGroups": [{"Name": GROUP}]},
]}], "LoggingConfig": {"Type": "Console"}}}  # fmt: skip
SERVICEBUS_CONFIG = {"UserConfig": {"Namespaces": [{"Name": "sbemulatorns", "Queues": [
    {"Name": INBOX, "Properties": {
        "RequiresSession": True, "RequiresDuplicateDetection": True, "DuplicateDetectionHistoryTimeWindow": "PT10M",
        "MaxDeliveryCount": 10, "LockDuration": "PT30S", "DefaultMessageTimeToLive": "PT1H",
    }},
], "Topics": []}], "Logging": {"Type": "Console"}}}  # fmt: skip


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def bodies(count: int) -> list[tuple[str, bytes]]:
    line = OrderLine(sku="SKU-1", quantity=1, unit_price=Decimal("1.00"))
    out = []
    for n in range(count):
        order_id = f"order-{n % ORDERS}"
        event = new_event(
            OrderItemAdded(order_id=order_id, line=line), source="/b", sequence=n // ORDERS + 1
        )
        out.append((order_id, encode_event(event)))
    return out


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@contextmanager
def azurite(folder: Path) -> Iterator[tuple[str, int]]:
    """Azurite's blob service from node_modules, in memory, on a free port: (connection string, pid)."""
    node, script = shutil.which("node"), ROOT / "node_modules/azurite/dist/src/blob/main.js"
    if node is None or not script.is_file():
        raise SystemExit("Azurite needs node and `npm ci` (node_modules/azurite)")
    port = free_port()
    with (folder / "azurite.log").open("wb") as log:
        process = subprocess.Popen(
            [node, str(script), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--inMemoryPersistence",
             "--skipApiVersionCheck", "--disableTelemetry", "--silent"],
            cwd=folder, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not listening(port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"Azurite did not start: {(folder / 'azurite.log').read_text()}")
            time.sleep(0.05)
        yield (
            f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={AZURITE_KEY};"
            f"BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1;",
            process.pid,
        )
    finally:
        process.terminate()
        process.wait(timeout=10)


async def fill_hub(emulator: RunningMessagingEmulator, count: int) -> None:
    """The events onto the hub, each order's in sequence, batched per order (partition key)."""
    by_order: dict[str, list[bytes]] = {}
    for key, body in bodies(count):
        by_order.setdefault(key, []).append(body)
    producer = EventHubProducerClient.from_connection_string(
        emulator.connection_string, eventhub_name=HUB
    )
    async with producer:
        for key, events in by_order.items():
            batch = await producer.create_batch(partition_key=key)
            for body in events:
                try:
                    batch.add(EventData(body))
                except ValueError:
                    await producer.send_batch(batch)
                    batch = await producer.create_batch(partition_key=key)
                    batch.add(EventData(body))
            await producer.send_batch(batch)


async def one_round(
    count: int, batch_size: int, folder: Path, storage: str, azurite_pid: int
) -> dict[str, Any]:
    (folder / "eventhubs.json").write_text(json.dumps(EVENTHUBS_CONFIG))
    (folder / "servicebus.json").write_text(json.dumps(SERVICEBUS_CONFIG))
    container = f"bench-{uuid.uuid4().hex[:12]}"
    async with BlobServiceClient.from_connection_string(storage) as service:
        await service.create_container(container)
    with ExitStack() as stack:
        emulator = stack.enter_context(messaging_emulator(
            folder / "messaging", eventhubs_config=folder / "eventhubs.json",
            servicebus_config=folder / "servicebus.json",
        ))  # fmt: skip
        await fill_hub(emulator, count)
        settings = {
            "SUBSCRIBER_MODE": "emulator", "SUBSCRIBER_EVENTHUBS_CONNECTION_STRING": emulator.connection_string,
            "SUBSCRIBER_SERVICEBUS_CONNECTION_STRING": emulator.connection_string,
            "SUBSCRIBER_STORAGE_CONNECTION_STRING": storage, "SUBSCRIBER_CHECKPOINT_CONTAINER": container,
            "SUBSCRIBER_MAX_BATCH_SIZE": str(batch_size),
            "SUBSCRIBER_LOAD_BALANCING_INTERVAL_SECONDS": str(LOAD_BALANCING_INTERVAL_S),
            "SUBSCRIBER_HEALTH_PORT": "0", "SUBSCRIBER_LOG_LEVEL": "WARNING",
        }  # fmt: skip
        environment = {k: v for k, v in os.environ.items() if not k.startswith("SUBSCRIBER_")}
        started = time.perf_counter()
        process = subprocess.Popen([sys.executable, "-m", "eventflow_subscriber.main"],
                                   env=environment | settings, stdout=subprocess.DEVNULL)  # fmt: skip
        pids = {"subscriber": process.pid, "emulator": emulator.pid, "azurite": azurite_pid}
        namespace = f"127.0.0.1:{emulator.port}"
        try:
            first: tuple[float, dict[str, float], int] | None = None
            async with BlobCheckpointStore.from_connection_string(
                storage, container_name=container
            ) as store:
                while True:
                    listed = await store.list_checkpoints(namespace, HUB, GROUP)
                    done = sum(c["sequence_number"] + 1 for c in listed)
                    if first is None and done > 0:
                        first = (
                            time.perf_counter(),
                            {k: cpu_seconds(p) for k, p in pids.items()},
                            done,
                        )
                    if done >= count:
                        break
                    if process.poll() is not None:
                        raise RuntimeError(f"the subscriber exited with {process.returncode}")
                    await asyncio.sleep(0.1)
            assert first is not None
            ended = time.perf_counter()
            cpu = {k: cpu_seconds(p) - first[1][k] for k, p in pids.items()}
        finally:
            process.terminate()
            process.wait(timeout=30)
    measured = count - first[2]
    elapsed = ended - first[0]
    return {
        "events": count, "events_per_s": round(measured / elapsed, 1),
        "startup_to_first_checkpoint_s": round(first[0] - started, 2),
        "since_first_checkpoint": {"events": measured, "seconds": round(elapsed, 2)},
        "cpu_us_per_event": {k: round(v / measured * 1e6, 1) for k, v in cpu.items()},
    }  # fmt: skip


class _NullSender:
    async def create_message_batch(self) -> ServiceBusMessageBatch:
        return ServiceBusMessageBatch(max_size_in_bytes=256 * 1024)

    async def send_messages(self, batch: Any) -> None:
        return None


async def own_cpu(count: int, batch_size: int) -> float:
    events = [HubEvent(body, "0", str(n), n) for n, (_, body) in enumerate(bodies(count))]
    forwarder = Forwarder(
        ServiceBusInbox(_NullSender()),
        hub=HUB,
        subscribed=None,
        max_message_bytes=250_000,
        lanes=32,
    )
    started = time.process_time()
    for chunk in range(0, count, batch_size):
        await forwarder.forward(events[chunk : chunk + batch_size])
    return round((time.process_time() - started) / count * 1e6, 1)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=300, help="SUBSCRIBER_MAX_BATCH_SIZE")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "subscriber.json"
    )
    args = parser.parse_args()
    rounds, own = [], []
    with (
        tempfile.TemporaryDirectory(prefix="bench-subscriber-") as scratch,
        azurite(Path(scratch)) as (storage, azurite_pid),
    ):
        for number in range(args.rounds):
            sys.stderr.write(f"subscriber round {number + 1}/{args.rounds} ...\n")
            folder = Path(scratch) / f"round-{number}"
            folder.mkdir()
            rounds.append(await one_round(args.events, args.batch, folder, storage, azurite_pid))
            own.append(await own_cpu(args.events, args.batch))
    median = sorted(rounds, key=lambda r: r["events_per_s"])[len(rounds) // 2]
    cpu = {
        k: statistics.median(r["cpu_us_per_event"][k] for r in rounds)
        for k in median["cpu_us_per_event"]
    }
    configuration = {
        "events": args.events, "orders": ORDERS, "hub_partitions": PARTITIONS, "max_batch_size": args.batch,
        "load_balancing_interval_s": LOAD_BALANCING_INTERVAL_S, "subscriber_processes": 1,
        "inbox": "sessions + duplicate detection", "checkpoints": "BlobCheckpointStore on Azurite (in memory)",
        "cpus": os.cpu_count(), "python": platform.python_version(),
    }  # fmt: skip
    report = {"scenario": "subscriber", "configuration": configuration, "median_round": median, "rounds": rounds,
              "cpu_us_per_event_median": cpu, "own_code_cpu_us_per_event_median": statistics.median(own),
              "own_code_rounds": own}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    sys.stdout.write(
        f"subscriber, {args.events} events ({ORDERS} orders) x {args.rounds} rounds (median round): one process "
        f"on the real SDKs, {PARTITIONS} hub partitions, max batch {args.batch}, load balancing every "
        f"{LOAD_BALANCING_INTERVAL_S} s; messaging emulator + Azurite on the same {os.cpu_count()} cores\n"
        "| measure | value |\n| --- | ---: |\n"
        f"| events/s, hub -> inbox (first checkpoint to last) | {median['events_per_s']} |\n"
        f"| start-up to the first checkpoint | {median['startup_to_first_checkpoint_s']} s |\n"
        f"| subscriber process CPU per event (own code + SDKs) | {cpu['subscriber']} µs |\n"
        f"| messaging emulator CPU per event | {cpu['emulator']} µs |\n"
        f"| Azurite CPU per event (checkpoints, ownership, this script polling the checkpoints every 0.1 s) | {cpu['azurite']} µs |\n"
        f"| CPU per event, subscriber's own code alone (no-op sender) | {statistics.median(own)} µs |\n"
        f"| rounds (events/s) | {[r['events_per_s'] for r in rounds]} |\n"
    )


if __name__ == "__main__":
    asyncio.run(main())
