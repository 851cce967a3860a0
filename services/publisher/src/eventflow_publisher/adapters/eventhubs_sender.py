"""EventHubsSender: the EventSender port on the SDK's EventHubProducerClient.

Tracing: each event gets a PRODUCER span `send <hub>`, a child of the event's own context (its
CloudEvents `traceparent`), from being put into a batch until the hub accepted that batch; the
SDK's per-message span is its child. The message's trace properties carry the event's context, so
the SDK's batch span (`EventHubs.send`) links to every event and the subscriber's SDK spans read
the same context as its own code does from the event."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from azure.eventhub import EventData
from azure.eventhub.exceptions import EventHubError
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, StatusCode

from eventflow_contracts import CONTENT_TYPE
from eventflow_contracts.tracing import broker_trace_properties, event_context
from eventflow_publisher.publishing import Outgoing, SendError, SendResult


def event_data(outgoing: Outgoing) -> EventData:
    event = EventData(outgoing.body)
    event.content_type = CONTENT_TYPE
    properties: dict[str | bytes, Any] = {
        "event_id": outgoing.event_id, "type": outgoing.type,
        **broker_trace_properties(outgoing.traceparent, outgoing.tracestate),
    }  # fmt: skip
    event.properties = properties
    return event


TRACER = trace.get_tracer("eventflow_publisher")


def _event_span(outgoing: Outgoing, hub: str, partition_id: str) -> Span:
    return TRACER.start_span(
        f"send {hub}", context=event_context(outgoing.traceparent, outgoing.tracestate),
        kind=SpanKind.PRODUCER, attributes={
            "messaging.system": "eventhubs", "messaging.operation.type": "send",
            "messaging.operation.name": "send", "messaging.destination.name": hub,
            "messaging.destination.partition.id": partition_id,
            "messaging.message.id": outgoing.event_id, "cloudevents.event_type": outgoing.type,
        },
    )  # fmt: skip


def _end(spans: list[Span], error: BaseException | None = None) -> None:
    for span in spans:
        if error is not None:
            span.record_exception(error)
            span.set_status(StatusCode.ERROR, type(error).__name__)
        span.end()
    spans.clear()


class EventHubsSender:
    """Fills batches for one partition id, a new one whenever the last is full. Not the buffered
    producer: it settles in the background, and the processor checkpoints only after the hub
    accepted every batch. A cancelled send (the processor cancels a page at its lease or
    hand-over deadline) stops at once and sends no further batch; the SDK call in flight is
    shielded and finishes in the background (the hub may still accept it: at-least-once), so the
    shared producer is never left half-way through opening a link or settling a delivery."""

    def __init__(self, producer: Any) -> None:
        self._producer = producer

    async def partition_ids(self) -> list[str]:
        try:
            return [str(pid) for pid in await self._producer.get_partition_ids()]
        except EventHubError as error:
            raise SendError(f"{type(error).__name__}: {error}") from error

    async def send(self, partition_id: str, events: Sequence[Outgoing]) -> SendResult:
        sizes: list[int] = []
        too_large: list[int] = []
        accepted = 0  # events at the front that need no second try
        in_batch: list[Span] = []  # the spans of the events in the batch being filled
        hub = str(getattr(self._producer, "eventhub_name", "eventhub"))
        try:
            batch = await asyncio.shield(self._producer.create_batch(partition_id=partition_id))
            for index, outgoing in enumerate(events):
                data = event_data(outgoing)
                span = _event_span(outgoing, hub, partition_id)
                try:
                    with trace.use_span(
                        span, record_exception=False, set_status_on_exception=False
                    ):
                        batch.add(data)
                    in_batch.append(span)
                    continue
                except ValueError:
                    if len(batch) == 0:
                        too_large.append(index)
                        _end([span], ValueError("the event does not fit an empty batch"))
                        continue
                await asyncio.shield(self._producer.send_batch(batch))
                _end(in_batch)
                sizes.append(len(batch))
                accepted = index
                batch = await asyncio.shield(self._producer.create_batch(partition_id=partition_id))
                try:
                    with trace.use_span(
                        span, record_exception=False, set_status_on_exception=False
                    ):
                        batch.add(data)
                    in_batch.append(span)
                except ValueError as error:
                    too_large.append(index)
                    _end([span], error)
            if len(batch):
                await asyncio.shield(self._producer.send_batch(batch))
                _end(in_batch)
                sizes.append(len(batch))
        except BaseException as error:
            _end(in_batch, error)
            if not isinstance(error, EventHubError):
                raise
            done = SendResult(tuple(sizes), tuple(i for i in too_large if i < accepted))
            raise SendError(
                f"{type(error).__name__}: {error}", accepted=accepted, done=done
            ) from error
        return SendResult(tuple(sizes), tuple(too_large))
