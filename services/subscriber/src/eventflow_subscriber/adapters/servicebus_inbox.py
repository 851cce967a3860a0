"""ServiceBusInbox: the InboxSender port on a Service Bus queue sender."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from azure.servicebus import ServiceBusMessage
from azure.servicebus.exceptions import (
    MessageSizeExceededError,
    ServiceBusError,
    ServiceBusServerBusyError,
)

from eventflow_subscriber.forwarding import SendRefusedError, SendResult
from eventflow_subscriber.routing import InboxMessage


def service_bus_message(message: InboxMessage) -> ServiceBusMessage:
    return ServiceBusMessage(
        message.body, message_id=message.message_id, session_id=message.session_id, subject=message.subject,
        content_type=message.content_type, application_properties=dict(message.properties),  # type: ignore[arg-type]
    )  # fmt: skip


class ServiceBusInbox:
    def __init__(self, sender: Any) -> None:
        self._sender = sender

    async def _fresh_batch(self) -> Any:
        return await self._sender.create_message_batch()

    async def send(self, messages: Sequence[InboxMessage]) -> SendResult:
        sizes: list[int] = []
        too_large: list[int] = []
        try:
            batch = await self._fresh_batch()
            for index, message in enumerate(messages):
                outgoing = service_bus_message(message)
                try:
                    batch.add_message(outgoing)
                    continue
                except MessageSizeExceededError:
                    if len(batch) == 0:
                        too_large.append(index)
                        continue
                await self._sender.send_messages(batch)
                sizes.append(len(batch))
                batch = await self._fresh_batch()
                try:
                    batch.add_message(outgoing)
                except MessageSizeExceededError:
                    too_large.append(index)
            if len(batch):
                await self._sender.send_messages(batch)
                sizes.append(len(batch))
        except ServiceBusServerBusyError as error:
            raise SendRefusedError(f"server busy: {error}", busy=True) from error
        except ServiceBusError as error:
            raise SendRefusedError(f"{type(error).__name__}: {error}") from error
        return SendResult(tuple(sizes), tuple(too_large))
