"""Helpers for the subscriber's tests: events as the publisher writes them, and reading the inbox."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from azure.eventhub import EventData
from azure.servicebus import NEXT_AVAILABLE_SESSION
from azure.servicebus.exceptions import OperationTimeoutError

from eventflow_contracts import OrderCancelled, OrderItemAdded, OrderLine, encode_event, new_event
from eventflow_local import LocalEnvironment
from eventflow_local.eventhubs import EventHubProducerClient, create_event_hub
from eventflow_local.servicebus import ServiceBusAdministrationClient, ServiceBusClient


def event_bytes(order_id: str, sequence: int, *, cancelled: bool = False) -> bytes:
    line = OrderLine(sku="SKU-1", quantity=1, unit_price=Decimal("1.00"))
    data = (
        OrderCancelled(order_id=order_id, reason="r")
        if cancelled
        else OrderItemAdded(order_id=order_id, line=line)
    )
    return encode_event(new_event(data, source="/test", sequence=sequence))


async def publish(environment: LocalEnvironment, bodies: list[tuple[str, bytes]]) -> None:
    """(partition key, body) pairs onto the `orders` hub, one batch per event, in order."""
    async with EventHubProducerClient(environment, eventhub_name="orders") as producer:
        for key, body in bodies:
            batch = await producer.create_batch(partition_key=key)
            batch.add(EventData(body))
            await producer.send_batch(batch)


async def read_inbox(environment: LocalEnvironment, queue: str = "inbox") -> dict[str, list[Any]]:
    """Every message of every session, completed, by session id, in session order."""
    sessions: dict[str, list[Any]] = {}
    async with ServiceBusClient(environment) as client:
        while True:
            try:
                receiver = client.get_queue_receiver(
                    queue, session_id=NEXT_AVAILABLE_SESSION, max_wait_time=0.5
                )
                await receiver.__aenter__()
            except OperationTimeoutError:
                return sessions
            async with receiver:
                while messages := await receiver.receive_messages(
                    max_message_count=100, max_wait_time=0.2
                ):
                    for message in messages:
                        sessions.setdefault(message.session_id, []).append(message)
                        await receiver.complete_message(message)


async def eventually(check: Callable[[], Any], wait: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + wait
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {wait}s")
        await asyncio.sleep(0.05)


@pytest.fixture
async def environment(tmp_path: Path) -> LocalEnvironment:
    environment = LocalEnvironment(tmp_path / "local")
    await create_event_hub(environment, "orders", partition_count=4)
    async with ServiceBusAdministrationClient(environment) as admin:
        await admin.create_queue(
            "inbox", requires_session=True, requires_duplicate_detection=True,
            duplicate_detection_history_time_window=timedelta(minutes=10), lock_duration=timedelta(seconds=30),
        )  # fmt: skip
    return environment
