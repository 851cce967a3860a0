from datetime import timedelta
from pathlib import Path

import pytest
from azure.eventhub import EventData
from azure.eventhub.exceptions import ConnectionLostError
from azure.servicebus import ServiceBusMessage
from azure.servicebus.exceptions import ServiceBusConnectionError, ServiceBusServerBusyError

from eventflow_local.environment import LocalEnvironment
from eventflow_local.eventhubs import EventHubProducerClient, create_event_hub
from eventflow_local.faults import FaultKind
from eventflow_local.servicebus import ServiceBusAdministrationClient, ServiceBusClient


async def test_a_fault_injected_from_another_client_reaches_this_one(tmp_path: Path) -> None:
    environment = LocalEnvironment(tmp_path)
    async with ServiceBusAdministrationClient(environment) as admin:
        await admin.create_queue("q", lock_duration=timedelta(seconds=5))
    async with ServiceBusClient(environment) as client, client.get_queue_sender("q") as sender:
        LocalEnvironment(tmp_path).inject_fault("servicebus.send_messages", FaultKind.TRANSIENT)
        with pytest.raises(ServiceBusConnectionError):
            await sender.send_messages(ServiceBusMessage("x"))
        environment.inject_fault("servicebus.send_messages", FaultKind.THROTTLED)
        with pytest.raises(ServiceBusServerBusyError):
            await sender.send_messages(ServiceBusMessage("x"))
        environment.inject_fault("servicebus.send_messages", FaultKind.TRANSIENT, count=5)
        environment.inject_fault("servicebus.send_messages", FaultKind.TRANSIENT, count=0)
        await sender.send_messages(ServiceBusMessage("x"))


async def test_event_hubs_faults_raise_the_sdk_errors(tmp_path: Path) -> None:
    environment = LocalEnvironment(tmp_path)
    await create_event_hub(environment, "h", partition_count=2)
    async with EventHubProducerClient(environment, eventhub_name="h") as producer:
        environment.inject_fault("eventhubs.send_batch", FaultKind.TRANSIENT)
        with pytest.raises(ConnectionLostError):
            await producer.send_batch([EventData(b"x")])
        await producer.send_batch([EventData(b"x")])


def test_an_unknown_service_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown service"):
        LocalEnvironment(tmp_path).inject_fault("storage.put")
