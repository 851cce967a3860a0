"""`hub_contents`, the read-back of a hub that tests and tools check a producer with (the real SDK)."""

from __future__ import annotations

import time
from pathlib import Path

from azure.eventhub import EventData
from azure.eventhub.aio import EventHubProducerClient

from eventflow_emulators.messaging.reading import hub_contents
from eventflow_emulators.messaging.testing import messaging_emulator

# receive_batch returns only after the load-balancing sleep it is in when the client closes (30 s
# and up to 20 % more by default): a read-back that waited for it would take 30 s or more.
SDK_BALANCING_SLEEP_S = 30.0


async def test_every_event_per_partition_in_order_without_waiting_out_the_sdks_balancing(
    tmp_path: Path,
) -> None:
    sent = {"0": [b"0-a", b"0-b"], "1": [b"1-a"], "2": [b"2-a", b"2-b", b"2-c"], "3": []}
    with messaging_emulator(tmp_path) as emulator:
        async with EventHubProducerClient.from_connection_string(
            emulator.connection_string, eventhub_name="orders"
        ) as producer:
            for partition, bodies in sent.items():
                for body in bodies:
                    batch = await producer.create_batch(partition_id=partition)
                    batch.add(EventData(body))
                    await producer.send_batch(batch)
        started = time.monotonic()
        contents = await hub_contents(emulator.connection_string, "orders")
        took = time.monotonic() - started
    assert {p: [b"".join(e.body) for e in events] for p, events in contents.items()} == sent
    assert took < SDK_BALANCING_SLEEP_S - 5, f"{took:.1f} s"
