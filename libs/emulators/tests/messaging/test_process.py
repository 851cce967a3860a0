"""The emulator as a process: its listening line, SIGTERM, durability across restarts, and the
SDKs' timing against it where the services' code depends on it."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from azure.eventhub import EventData
from azure.eventhub.aio import EventHubConsumerClient, EventHubProducerClient
from azure.servicebus import NEXT_AVAILABLE_SESSION, ServiceBusMessage
from azure.servicebus.aio import ServiceBusClient
from azure.servicebus.exceptions import OperationTimeoutError

from eventflow_emulators.messaging.testing import messaging_emulator

SERVICEBUS_CONFIG = {
    "UserConfig": {
        "Namespaces": [{
            "Name": "sbemulatorns",
            "Queues": [{"Name": "empty-sessions", "Properties": {
                "RequiresSession": True, "MaxDeliveryCount": 3, "LockDuration": "PT5S",
            }}],
            "Topics": [],
        }],
        "Logging": {"Type": "Console"},
    }
}  # fmt: skip


def test_sigterm_stops_it_cleanly(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "eventflow_emulators.messaging.server", "--port", "0",
               "--data", str(tmp_path / "data")]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line.startswith("eventflow-messaging-emulator listening on amqp://127.0.0.1:")
    assert int(line.rsplit(":", 1)[1]) > 0
    assert process.stdout.readline().startswith("eventflow-messaging-emulator admin on http://")
    process.send_signal(signal.SIGTERM)
    assert process.wait(10) == 0


async def test_events_and_messages_survive_a_restart(tmp_path: Path) -> None:
    marker = uuid.uuid4().hex
    with messaging_emulator(tmp_path) as emulator:
        async with EventHubProducerClient.from_connection_string(
            emulator.connection_string, eventhub_name="orders"
        ) as producer:
            batch = await producer.create_batch(partition_id="2")
            batch.add(EventData(marker))
            await producer.send_batch(batch)
        async with (
            ServiceBusClient.from_connection_string(emulator.connection_string) as client,
            client.get_queue_sender("conformance-plain") as sender,
        ):
            await sender.send_messages(ServiceBusMessage(marker, message_id=marker))
    with messaging_emulator(tmp_path) as emulator:
        async with EventHubConsumerClient.from_connection_string(
            emulator.connection_string, consumer_group="$default", eventhub_name="orders"
        ) as consumer:
            props = await consumer.get_partition_properties("2")
        assert props["last_enqueued_sequence_number"] == 0
        async with (
            ServiceBusClient.from_connection_string(emulator.connection_string) as client,
            client.get_queue_receiver("conformance-plain", max_wait_time=2) as receiver,
        ):
            (received,) = await receiver.receive_messages(max_wait_time=2)
            await receiver.complete_message(received)
        assert str(received) == marker


PRODUCER = """
import asyncio, sys
from azure.eventhub import EventData
from azure.eventhub.aio import EventHubProducerClient

async def main():
    async with EventHubProducerClient.from_connection_string(sys.argv[1]) as producer:
        for _ in range(5):
            batch = await producer.create_batch(partition_id="3")
            for _ in range(20):
                batch.add(EventData(b"x"))
            await producer.send_batch(batch)

asyncio.run(main())
"""


def test_several_client_processes_at_once(tmp_path: Path) -> None:
    """Three producer processes (the hub named by EntityPath) send 100 events each at once."""
    with messaging_emulator(tmp_path) as emulator:
        entity = emulator.connection_string + ";EntityPath=conformance"
        workers = [subprocess.Popen([sys.executable, "-c", PRODUCER, entity]) for _ in range(3)]
        assert [w.wait(120) for w in workers] == [0, 0, 0]
        props = asyncio.run(partition_properties(entity, "3"))
    assert props["last_enqueued_sequence_number"] == 299


async def partition_properties(connection_string: str, partition: str) -> dict[str, object]:
    async with EventHubProducerClient.from_connection_string(connection_string) as producer:
        return dict(await producer.get_partition_properties(partition))


@pytest.mark.parametrize(("retries", "low", "high"), [(0, 0.9, 4.0), (3, 5.0, 40.0)])
async def test_an_empty_next_available_session_accept_times_out(
    tmp_path: Path, retries: int, low: float, high: float
) -> None:
    """With max_wait_time=1 the SDK asks the broker to wait ~1 s (link property
    com.microsoft:timeout, azure-servicebus _transport/_pyamqp_transport.py
    create_receive_client); the broker then refuses the link with com.microsoft:timeout, which
    the SDK raises as OperationTimeoutError after its retries (OperationTimeoutError is
    retryable: exceptions.py). Measured here: retry_total=0 about 2 s, the default 3 retries
    about 19 s (back-off 0.8 s doubling)."""
    config = tmp_path / "servicebus.json"
    config.write_text(json.dumps(SERVICEBUS_CONFIG))
    with messaging_emulator(tmp_path / "data", servicebus_config=config) as emulator:
        async with ServiceBusClient.from_connection_string(
            emulator.connection_string, retry_total=retries
        ) as client:
            started = time.monotonic()
            with pytest.raises(OperationTimeoutError):
                async with client.get_queue_receiver(
                    "empty-sessions", session_id=NEXT_AVAILABLE_SESSION, max_wait_time=1
                ):
                    pass
            took = time.monotonic() - started
    assert low <= took <= high, took
