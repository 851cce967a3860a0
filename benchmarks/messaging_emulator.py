"""Messaging emulator throughput and its CPU per message, with the real SDKs.

Processes: the emulator (its own process, started by eventflow_emulators.messaging.testing) and
this one, which runs every SDK client on one asyncio loop (one client process).

1. Event Hubs: send N events (1 KB, batches of 100, four partition keys) through one hub, then
   read them all back with an EventHubConsumerClient (no checkpoint store); events/s of each
   phase and the emulator's CPU per event (send + receive).
2. Service Bus: send M messages (1 KB, batches of 100, spread over S sessions) to one session
   queue, then receive and complete them all with S session receivers in parallel (accepted by
   name, prefetch 0, receive_messages(max_message_count=50)); messages/s of each phase and the
   emulator's CPU per message (send + receive + complete).

The emulator's CPU is utime + stime from /proc/<pid>/stat before and after each phase.

    uv run python benchmarks/messaging_emulator.py [--events 20000] [--messages 4000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from azure.eventhub import EventData
from azure.eventhub.aio import EventHubConsumerClient, EventHubProducerClient
from azure.servicebus import ServiceBusMessage
from azure.servicebus.aio import ServiceBusClient

from eventflow_emulators.messaging.testing import messaging_emulator

HUB = "orders"
QUEUE = "inbox"
BODY = b"x" * 1024
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime (fields 14, 15)


@dataclass
class Phase:
    count: int
    seconds: float
    cpu: float

    @property
    def rate(self) -> float:
        return self.count / self.seconds

    @property
    def cpu_us(self) -> float:
        return self.cpu / self.count * 1e6


async def eventhubs_round(connection_string: str, pid: int, events: int) -> tuple[Phase, Phase]:
    keys = [uuid.uuid4().hex for _ in range(4)]
    cpu0, started = cpu_seconds(pid), time.perf_counter()
    async with EventHubProducerClient.from_connection_string(
        connection_string, eventhub_name=HUB
    ) as producer:
        for offset in range(0, events, 100):
            batch = await producer.create_batch(partition_key=keys[(offset // 100) % 4])
            for _ in range(min(100, events - offset)):
                batch.add(EventData(BODY))
            await producer.send_batch(batch)
    send = Phase(events, time.perf_counter() - started, cpu_seconds(pid) - cpu0)

    received = 0
    done = asyncio.Event()

    async def on_batch(_context: object, batch: list[EventData]) -> None:
        nonlocal received
        received += len(batch)
        if received >= events:
            done.set()

    consumer = EventHubConsumerClient.from_connection_string(
        connection_string, consumer_group="$default", eventhub_name=HUB
    )
    cpu0, started = cpu_seconds(pid), time.perf_counter()
    task = asyncio.create_task(
        # From where this round began in every partition (sequence numbers, exclusive).
        consumer.receive_batch(on_batch, starting_position=dict(ROUND_START), max_batch_size=300)
    )
    await asyncio.wait_for(done.wait(), timeout=600)
    receive = Phase(events, time.perf_counter() - started, cpu_seconds(pid) - cpu0)
    await consumer.close()
    await task
    return send, receive


ROUND_START: dict[str, int] = {}


async def servicebus_round(
    connection_string: str, pid: int, messages: int, sessions: int
) -> tuple[Phase, Phase]:
    ids = [f"bench-{uuid.uuid4().hex}" for _ in range(sessions)]
    async with ServiceBusClient.from_connection_string(connection_string) as client:
        cpu0, started = cpu_seconds(pid), time.perf_counter()
        async with client.get_queue_sender(QUEUE) as sender:
            for offset in range(0, messages, 100):
                batch = await sender.create_message_batch()
                for n in range(offset, min(offset + 100, messages)):
                    batch.add_message(
                        ServiceBusMessage(
                            BODY, session_id=ids[n % sessions], message_id=uuid.uuid4().hex
                        )
                    )
                await sender.send_messages(batch)
        send = Phase(messages, time.perf_counter() - started, cpu_seconds(pid) - cpu0)

        per_session = messages // sessions

        async def drain(session_id: str) -> None:
            got = 0
            async with client.get_queue_receiver(
                QUEUE, session_id=session_id, max_wait_time=5
            ) as receiver:
                while got < per_session:
                    batch = await receiver.receive_messages(max_message_count=50, max_wait_time=5)
                    await asyncio.gather(*(receiver.complete_message(m) for m in batch))
                    got += len(batch)

        cpu0, started = cpu_seconds(pid), time.perf_counter()
        await asyncio.gather(*(drain(s) for s in ids))
        receive = Phase(
            per_session * sessions, time.perf_counter() - started, cpu_seconds(pid) - cpu0
        )
    return send, receive


async def main(args: argparse.Namespace) -> None:
    results: dict[str, list[Phase]] = {
        k: [] for k in ("eh-send", "eh-receive", "sb-send", "sb-receive")
    }
    with tempfile.TemporaryDirectory() as folder, messaging_emulator(Path(folder)) as emulator:
        for _ in range(args.rounds):
            async with EventHubProducerClient.from_connection_string(
                emulator.connection_string, eventhub_name=HUB
            ) as producer:
                for pid in await producer.get_partition_ids():
                    props = await producer.get_partition_properties(pid)
                    ROUND_START[pid] = props["last_enqueued_sequence_number"]
            send, receive = await eventhubs_round(
                emulator.connection_string, emulator.pid, args.events
            )
            results["eh-send"].append(send)
            results["eh-receive"].append(receive)
            send, receive = await servicebus_round(
                emulator.connection_string, emulator.pid, args.messages, args.sessions
            )
            results["sb-send"].append(send)
            results["sb-receive"].append(receive)
    for name, phases in results.items():
        rate = statistics.median(p.rate for p in phases)
        cpu = statistics.median(p.cpu_us for p in phases)
        sys.stdout.write(f"{name:11s} {rate:9.0f}/s  emulator CPU {cpu:7.1f} us/message\n")
    eh_cpu = statistics.median(
        (s.cpu + r.cpu) / s.count * 1e6
        for s, r in zip(results["eh-send"], results["eh-receive"], strict=True)
    )
    sb_cpu = statistics.median(
        (s.cpu + r.cpu) / s.count * 1e6
        for s, r in zip(results["sb-send"], results["sb-receive"], strict=True)
    )
    sys.stdout.write(
        f"event hubs  emulator CPU per event (send + receive):              {eh_cpu:7.1f} us\n"
    )
    sys.stdout.write(
        f"service bus emulator CPU per message (send + receive + complete): {sb_cpu:7.1f} us\n"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--messages", type=int, default=4000)
    parser.add_argument("--sessions", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    asyncio.run(main(parser.parse_args()))
