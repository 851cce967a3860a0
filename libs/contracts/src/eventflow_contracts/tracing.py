"""The CloudEvents distributed tracing extension (`traceparent`, `tracestate`) and OpenTelemetry.

The event's own `traceparent` is the context that travels with a change from the producer to the
consumer: every stage starts its per-event span from it. The Azure messaging SDKs also stamp a
context on each message they send (application properties `traceparent`, `Diagnostic-Id`,
`tracestate`), taken from a span of their own unless the message already carries one;
`broker_trace_properties` gives a message the event's context, so the SDK's spans and the next
stage see one and the same context.
"""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from eventflow_contracts.envelope import is_valid_traceparent

_W3C = TraceContextTextMapPropagator()
_SDK_TRACE_PROPERTIES = (b"traceparent", b"Diagnostic-Id")
"""The application properties the Azure Event Hubs and Service Bus SDKs read a context from."""


def event_context(traceparent: str | None, tracestate: str | None = None) -> Context:
    """The OpenTelemetry context of an event: its `traceparent` as the remote parent. An event
    without one (or with an invalid one) gives an empty context, so a span started in it begins
    a new trace."""
    carrier = {}
    if traceparent is not None and is_valid_traceparent(traceparent):
        carrier["traceparent"] = traceparent
        if tracestate:
            carrier["tracestate"] = tracestate
    return _W3C.extract(carrier, context=Context())


def current_trace_headers() -> tuple[str | None, str | None]:
    """`traceparent` and `tracestate` of the current span, for an event created in it; (None,
    None) when there is no valid current span (OpenTelemetry not configured)."""
    carrier: dict[str, str] = {}
    _W3C.inject(carrier)
    return carrier.get("traceparent"), carrier.get("tracestate")


def event_link(traceparent: str | None, tracestate: str | None = None) -> trace.Link | None:
    """A span link to the event's context; None when the event carries no valid one."""
    span_context = trace.get_current_span(event_context(traceparent, tracestate)).get_span_context()
    return trace.Link(span_context) if span_context.is_valid else None


def broker_trace_properties(
    traceparent: str | None, tracestate: str | None = None
) -> dict[str | bytes, str]:
    """Application properties that give a broker message the event's context. The SDKs add their
    own only where a key is absent, and these are the keys (as bytes) they look up."""
    if traceparent is None or not is_valid_traceparent(traceparent):
        return {}
    properties: dict[str | bytes, str] = dict.fromkeys(_SDK_TRACE_PROPERTIES, traceparent)
    if tracestate:
        properties[b"tracestate"] = tracestate
    return properties
