"""ServiceBusInbox: the InboxSender port on a Service Bus queue sender.

Tracing: each message gets a PRODUCER span `send <queue>`, a child of its event's context (the
CloudEvents `traceparent`), from being put into a batch until the queue accepted that batch; the
SDK's per-message span is its child. The message's trace properties carry the event's context, so
the SDK's batch span links to every event and the consumer's SDK spans see what its code reads
from the event."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from azure.servicebus import ServiceBusMessage
from azure.servicebus.exceptions import (
    MessageSizeExceededError,
    ServiceBusError,
    ServiceBusServerBusyError,
)
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, StatusCode

from eventflow_contracts.tracing import broker_trace_properties, event_context
from eventflow_subscriber.forwarding import SendRefusedError, SendResult
from eventflow_subscriber.routing import InboxMessage

TRACER = trace.get_tracer("eventflow_subscriber")
_TRACE_KEYS = ("traceparent", "tracestate")


def service_bus_message(message: InboxMessage) -> ServiceBusMessage:
    properties: dict[str | bytes, Any] = {
        key: value for key, value in message.properties.items() if key not in _TRACE_KEYS
    }
    properties.update(broker_trace_properties(*_trace_of(message)))
    return ServiceBusMessage(
        message.body, message_id=message.message_id, session_id=message.session_id, subject=message.subject,
        content_type=message.content_type, application_properties=properties,
    )  # fmt: skip


def _trace_of(message: InboxMessage) -> tuple[str | None, str | None]:
    return message.properties.get("traceparent"), message.properties.get("tracestate")


def _message_span(message: InboxMessage, queue: str) -> Span:
    return TRACER.start_span(
        f"send {queue}", context=event_context(*_trace_of(message)), kind=SpanKind.PRODUCER,
        attributes={
            "messaging.system": "servicebus", "messaging.operation.type": "send",
            "messaging.operation.name": "send", "messaging.destination.name": queue,
            "messaging.message.id": message.message_id,
            "messaging.servicebus.message.session_id": message.session_id,
        },
    )  # fmt: skip


def _end(spans: list[Span], error: BaseException | None = None) -> None:
    for span in spans:
        if error is not None:
            span.record_exception(error)
            span.set_status(StatusCode.ERROR, type(error).__name__)
        span.end()
    spans.clear()


class ServiceBusInbox:
    def __init__(self, sender: Any) -> None:
        self._sender = sender

    async def _fresh_batch(self) -> Any:
        return await self._sender.create_message_batch()

    async def send(self, messages: Sequence[InboxMessage]) -> SendResult:
        sizes: list[int] = []
        too_large: list[int] = []
        in_batch: list[Span] = []  # the spans of the messages in the batch being filled
        queue = str(getattr(self._sender, "entity_name", "inbox"))
        try:
            batch = await self._fresh_batch()
            for index, message in enumerate(messages):
                outgoing = service_bus_message(message)
                span = _message_span(message, queue)
                try:
                    with trace.use_span(
                        span, record_exception=False, set_status_on_exception=False
                    ):
                        batch.add_message(outgoing)
                    in_batch.append(span)
                    continue
                except MessageSizeExceededError as error:
                    if len(batch) == 0:
                        too_large.append(index)
                        _end([span], error)
                        continue
                await self._sender.send_messages(batch)
                _end(in_batch)
                sizes.append(len(batch))
                batch = await self._fresh_batch()
                try:
                    with trace.use_span(
                        span, record_exception=False, set_status_on_exception=False
                    ):
                        batch.add_message(outgoing)
                    in_batch.append(span)
                except MessageSizeExceededError as error:
                    too_large.append(index)
                    _end([span], error)
            if len(batch):
                await self._sender.send_messages(batch)
                _end(in_batch)
                sizes.append(len(batch))
        except BaseException as error:
            _end(in_batch, error)
            if isinstance(error, ServiceBusServerBusyError):
                raise SendRefusedError(f"server busy: {error}", busy=True) from error
            if isinstance(error, ServiceBusError):
                raise SendRefusedError(f"{type(error).__name__}: {error}") from error
            raise
        return SendResult(tuple(sizes), tuple(too_large))
