"""One change, one trace: the producer's request, the publisher's and subscriber's sends and the
consumer's processing, each a child of the event's context, across four processes; spans come
from the services' own span files (the OpenTelemetry SDK's exporter), logs carry the trace.

Checked in the end-to-end run (tests/e2e/test_e2e.py, outbox): one order is created and submitted
before the load, and its two traces are checked after the services stopped."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import orjson

from eventflow_testing.e2e import System, settle
from eventflow_testing.traces import Span, in_trace, order_trace_ids, read_spans

ROOT = Path(__file__).resolve().parents[2]


def _one(spans: list[Span], **where: str) -> Span:
    found = [s for s in spans if all(getattr(s, k) == v for k, v in where.items())]
    assert len(found) == 1, f"{where}: {[(s.service, s.name) for s in found]}"
    return found[0]


def _descends(span: Span, ancestor: Span, by_id: dict[str, Span]) -> bool:
    parent = span.parent_id
    while parent is not None:
        if parent == ancestor.span_id:
            return True
        parent = by_id[parent].parent_id if parent in by_id else None
    return False


def _log_lines(path: Path) -> list[dict[str, object]]:
    lines = []
    for line in path.read_bytes().splitlines():
        if line.startswith(b"{"):
            lines.append(orjson.loads(line))
    return lines


async def traced_change(system: System) -> tuple[str, list[dict[str, Any]]]:
    """Creates and submits one order and waits until the consumer applied both events; returns
    the order id and its events as the producer stored them."""
    async with httpx.AsyncClient(base_url=system.producer_url, timeout=30,
                                 headers=system.headers) as client:  # fmt: skip
        line = {"sku": "SKU-1", "quantity": 2, "unit_price": "9.99"}
        created = await client.post("/orders", json={"customer_id": "c-1", "currency": "EUR", "lines": [line]})  # fmt: skip
        assert created.status_code == 201, created.text
        order_id = str(created.json()["id"])
        submitted = await client.post(f"/orders/{order_id}/submit",
                                      headers={"If-Match": created.headers["etag"]})  # fmt: skip
        assert submitted.status_code == 200, submitted.text
        events = (await client.get(f"/orders/{order_id}/events")).json()
    await settle(system, [order_id], wait=60)
    return order_id, events["items"] if isinstance(events, dict) else events


def check_one_trace_per_change(
    system: System, traces: Path, order_id: str, event_items: list[dict[str, Any]]
) -> None:
    """After the services stopped (SIGTERM: every service flushed its spans)."""
    spans = read_spans(traces)
    by_id = {span.span_id: span for span in spans}
    trace_ids = order_trace_ids(spans, order_id)
    assert len(trace_ids) == 2, "one trace per change (create, submit)"
    assert len(event_items) == 2
    for trace_id, event in zip(trace_ids, event_items, strict=True):
        members = in_trace(spans, trace_id)
        server = _one(members, service="eventflow-producer-api", kind="SERVER")
        assert server.parent_id is None
        assert server.attributes["eventflow.order_id"] == order_id
        # The event carries the server span's context: every per-event span below descends from it.
        assert event["traceparent"].startswith(f"00-{trace_id}-{server.span_id}-")
        batch = [
            s
            for s in members
            if s.service == "eventflow-producer-api" and "batch" in s.name.lower()
        ]
        assert batch, "the Cosmos batch (the SDK's span)"
        assert all(_descends(s, server, by_id) for s in batch)

        published = _one(members, service="eventflow-publisher", name="send orders")
        assert published.kind == "PRODUCER"
        assert published.parent_id == server.span_id
        assert published.attributes["messaging.message.id"] == event["id"]
        assert published.attributes["messaging.destination.name"] == "orders"
        sdk_message = _one(members, service="eventflow-publisher", name="EventHubs.message")
        assert sdk_message.parent_id == published.span_id

        forwarded = _one(members, service="eventflow-subscriber", name="send inbox")
        assert forwarded.kind == "PRODUCER"
        assert forwarded.parent_id == server.span_id
        assert forwarded.attributes["messaging.message.id"] == event["id"]

        processed = _one(members, service="eventflow-consumer", kind="CONSUMER")
        assert processed.parent_id == server.span_id
        assert processed.attributes["eventflow.decision"] == "complete"
        writes = [s for s in members if s.service == "eventflow-consumer" and s is not processed]
        assert writes, "the projection write (the SDK's spans)"
        assert all(_descends(s, processed, by_id) for s in writes)

        # Batch spans of the SDKs are traces of their own, linked to the event's context: the
        # messages' trace properties carry the event's traceparent, not an SDK span of their own.
        event_link = (trace_id, server.span_id)
        for service, name in (("eventflow-publisher", "EventHubs.send"),
                              ("eventflow-subscriber", "EventHubs.process"),
                              ("eventflow-subscriber", "ServiceBus.send"),
                              ("eventflow-consumer", "ServiceBus.receive")):  # fmt: skip
            linking = [
                s
                for s in spans
                if s.service == service and s.name == name and event_link in s.links
            ]
            assert linking, f"{service} {name} links to the event"

    # Log lines written inside a span carry its ids: the producer's request line, the consumer's.
    servers = {s.span_id: s for s in spans if s.kind == "SERVER" and s.trace_id in trace_ids}
    requests = [e for e in _log_lines(system.folder / "producer-0.log")
                if e.get("event") == "request" and e.get("method") == "POST" and e.get("order_id") == order_id]  # fmt: skip
    assert len(requests) == 2
    assert {(e["trace_id"], e["span_id"]) for e in requests} == {
        (s.trace_id, i) for i, s in servers.items()
    }
    handled = [e for e in _log_lines(system.folder / "consumer-0.log")
               if e.get("event") == "handled" and e.get("order_id") == order_id]  # fmt: skip
    assert {e["trace_id"] for e in handled} == set(trace_ids)
    for entry in handled:
        span = by_id[str(entry["span_id"])]
        assert (span.service, span.kind) == ("eventflow-consumer", "CONSUMER")

    # make trace: the order's two traces as waterfalls, stages in flow order.
    drawn = _trace_tool("--dir", str(traces), order_id)
    assert drawn.returncode == 0, drawn.stderr
    assert drawn.stdout.count("trace ") == 2
    for trace_id in trace_ids:
        assert f"trace {trace_id}" in drawn.stdout
    first = drawn.stdout.split("\n\n")[0]
    stages = [
        "eventflow-producer-api",
        "eventflow-publisher",
        "eventflow-subscriber",
        "eventflow-consumer",
    ]
    positions = [first.index(stage) for stage in stages]
    assert positions == sorted(positions), first
    assert _trace_tool("--dir", str(traces), "no-such-order").returncode == 1


def _trace_tool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "tools" / "trace.py"), *args],
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
