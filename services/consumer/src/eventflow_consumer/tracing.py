"""The consumer's processing span: one per handling of a delivery, a child of the event's context
(its CloudEvents `traceparent`), around the projection write (the Cosmos DB SDK's spans are its
children)."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

import structlog
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from eventflow_contracts.tracing import event_context

if TYPE_CHECKING:
    from eventflow_consumer.handling import Decision, Delivery

TRACER = trace.get_tracer("eventflow_consumer")
LOG = structlog.get_logger("eventflow_consumer.handling")


async def traced_processing(
    event: Any, delivery: Delivery, handling: Awaitable[Decision]
) -> Decision:
    """`handling`'s decision, awaited inside the span; the decision is recorded on the span."""
    with TRACER.start_as_current_span(
        f"process {event.type}", context=event_context(event.traceparent, event.tracestate),
        kind=SpanKind.CONSUMER, attributes={
            "messaging.system": "servicebus", "messaging.operation.type": "process",
            "messaging.operation.name": "process", "messaging.message.id": delivery.message_id,
            "messaging.servicebus.message.session_id": delivery.session_id,
            "messaging.servicebus.message.delivery_count": delivery.delivery_count,
            "cloudevents.event_type": event.type, "eventflow.sequence": event.sequence,
        },
    ) as span:  # fmt: skip
        decision = await handling
        span.set_attribute("eventflow.decision", decision.action)
        if decision.duplicate:
            span.set_attribute("eventflow.duplicate", decision.duplicate)
        if decision.reason:
            span.set_attribute("eventflow.reason", decision.reason)
        LOG.debug("handled", event_id=event.id, order_id=event.partitionkey,
                  decision=decision.action, duplicate=decision.duplicate)  # fmt: skip
        return decision
