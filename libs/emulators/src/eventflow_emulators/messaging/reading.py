"""Read back what a hub holds, through the real azure-eventhub SDK: for tests and tools that check
what a producer published (every event, per partition, in partition order)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from azure.eventhub.aio import EventHubConsumerClient, EventHubProducerClient


async def hub_contents(
    connection_string: str,
    hub: str,
    *,
    consumer_group: str = "$default",
    wait_seconds: float = 30.0,
) -> dict[str, list[Any]]:
    """Every event in each partition of `hub` as it is now, oldest first: {partition id: events}.
    Reads each partition from its beginning up to the last sequence number it had when called."""
    async with EventHubProducerClient.from_connection_string(
        connection_string, eventhub_name=hub
    ) as producer:
        partitions = await producer.get_partition_ids()
        last = {pid: (await producer.get_partition_properties(pid)) for pid in partitions}
    wanted = {
        pid: -1 if props["is_empty"] else int(props["last_enqueued_sequence_number"])
        for pid, props in last.items()
    }
    found: dict[str, list[Any]] = {pid: [] for pid in partitions}
    done = asyncio.Event()

    def complete() -> bool:
        return all(
            (found[pid][-1].sequence_number if found[pid] else -1) >= wanted[pid]
            for pid in partitions
        )

    async def on_batch(context: Any, events: list[Any]) -> None:
        found[context.partition_id].extend(events)
        if complete():
            done.set()

    consumer = EventHubConsumerClient.from_connection_string(
        connection_string, consumer_group=consumer_group, eventhub_name=hub
    )
    if complete():
        return found
    reading = asyncio.create_task(
        consumer.receive_batch(on_batch, starting_position="-1", max_wait_time=0.5)
    )
    deadline = time.monotonic() + wait_seconds
    try:
        await asyncio.wait_for(done.wait(), max(0.0, deadline - time.monotonic()))
    finally:
        await consumer.close()
        # close() stops the reading at once, but receive_batch returns only after its current
        # load-balancing sleep (up to 36 s): the sleep is cancelled, an error of the reading raised.
        reading.cancel()
        await asyncio.wait([reading])
        if not reading.cancelled():
            reading.result()
    return {
        pid: [event for event in events if event.sequence_number <= wanted[pid]]
        for pid, events in found.items()
    }
