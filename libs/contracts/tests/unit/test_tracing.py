"""The CloudEvents tracing extension to and from an OpenTelemetry context."""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

from eventflow_contracts.tracing import (
    broker_trace_properties,
    current_trace_headers,
    event_context,
    event_link,
)

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{SPAN_ID}-01"


def test_an_events_traceparent_becomes_the_remote_parent() -> None:
    parent = trace.get_current_span(event_context(TRACEPARENT, "vendor=1")).get_span_context()
    assert parent.is_remote
    assert format(parent.trace_id, "032x") == TRACE_ID
    assert format(parent.span_id, "016x") == SPAN_ID
    assert parent.trace_flags.sampled
    assert parent.trace_state.get("vendor") == "1"


def test_no_or_an_invalid_traceparent_gives_an_empty_context() -> None:
    for value in (None, "", "00-zz-11-01", f"00-{'0' * 32}-{SPAN_ID}-01"):
        assert not trace.get_current_span(event_context(value)).get_span_context().is_valid


def test_the_current_span_becomes_the_events_traceparent() -> None:
    span = NonRecordingSpan(SpanContext(
        int(TRACE_ID, 16), int(SPAN_ID, 16), is_remote=False,
        trace_flags=TraceFlags(TraceFlags.SAMPLED), trace_state=TraceState([("vendor", "1")]),
    ))  # fmt: skip
    with trace.use_span(span):
        assert current_trace_headers() == (TRACEPARENT, "vendor=1")
    assert current_trace_headers() == (None, None)


def test_round_trip_keeps_the_unsampled_flag() -> None:
    unsampled = f"00-{TRACE_ID}-{SPAN_ID}-00"
    with trace.use_span(trace.get_current_span(event_context(unsampled))):
        assert current_trace_headers()[0] == unsampled


def test_a_link_points_at_the_events_context() -> None:
    link = event_link(TRACEPARENT)
    assert link is not None
    assert format(link.context.span_id, "016x") == SPAN_ID
    assert event_link(None) is None


def test_broker_properties_carry_the_events_context_under_the_sdks_keys() -> None:
    assert broker_trace_properties(TRACEPARENT, "vendor=1") == {
        b"traceparent": TRACEPARENT,
        b"Diagnostic-Id": TRACEPARENT,
        b"tracestate": "vendor=1",
    }
    assert broker_trace_properties(TRACEPARENT) == {
        b"traceparent": TRACEPARENT,
        b"Diagnostic-Id": TRACEPARENT,
    }
    assert broker_trace_properties(None) == {}
    assert broker_trace_properties("not-a-traceparent") == {}
