"""Traces from the services' span files (`<SERVICE>_TRACE_DIR`, one JSON line per finished span,
one file per process): read them, find an order's traces, draw one as a waterfall. Used by the
e2e trace test and `make trace`."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

ORDER_ATTRIBUTES = ("eventflow.order_id", "messaging.servicebus.message.session_id")


@dataclass(frozen=True, slots=True)
class Span:
    name: str
    service: str
    kind: str
    trace_id: str
    span_id: str
    parent_id: str | None
    start: datetime
    end: datetime
    status: str
    attributes: dict[str, Any] = field(default_factory=dict)
    links: tuple[tuple[str, str], ...] = ()

    @property
    def seconds(self) -> float:
        return (self.end - self.start).total_seconds()


def parse_span(line: bytes) -> Span:
    """One line of a span file (see the services' telemetry modules)."""
    raw = orjson.loads(line)
    return Span(
        name=raw["name"], service=raw["service"], kind=raw["kind"], trace_id=raw["trace_id"],
        span_id=raw["span_id"], parent_id=raw["parent_id"], start=_time(raw["start_ns"]),
        end=_time(raw["end_ns"]), status=raw["status"], attributes=raw["attributes"],
        links=tuple((trace_id, span_id) for trace_id, span_id in raw["links"]),
    )  # fmt: skip


def _time(nanoseconds: int) -> datetime:
    return datetime.fromtimestamp(nanoseconds / 1e9, UTC)


def read_spans(folder: Path) -> list[Span]:
    """Every span written into `folder` so far (a line still being written is left for later)."""
    spans = []
    for path in sorted(folder.glob("*.jsonl")):
        for line in path.read_bytes().splitlines():
            try:
                spans.append(parse_span(line))
            except (orjson.JSONDecodeError, KeyError):
                continue  # the tail of a file another process is writing
    return spans


def order_trace_ids(spans: Iterable[Span], order_id: str) -> list[str]:
    """The traces of an order's changes, oldest first: those with a span naming the order that
    made or carried an event (reads of the order are left out)."""
    first: dict[str, datetime] = {}
    for span in spans:
        changed = (
            "eventflow.event_ids" in span.attributes or "messaging.message.id" in span.attributes
        )
        if changed and any(span.attributes.get(name) == order_id for name in ORDER_ATTRIBUTES):
            first[span.trace_id] = min(first.get(span.trace_id, span.start), span.start)
    return sorted(first, key=first.__getitem__)


def in_trace(spans: Iterable[Span], trace_id: str) -> list[Span]:
    """A trace's spans in tree order (each parent before its children, siblings by start)."""
    members = [span for span in spans if span.trace_id == trace_id]
    ids = {span.span_id for span in members}
    children: dict[str | None, list[Span]] = {}
    for span in members:
        parent = span.parent_id if span.parent_id in ids else None
        children.setdefault(parent, []).append(span)
    ordered: list[Span] = []

    def visit(parent: str | None) -> None:
        for span in sorted(children.get(parent, []), key=lambda s: s.start):
            ordered.append(span)
            visit(span.span_id)

    visit(None)
    return ordered


def depth_of(span: Span, by_id: dict[str, Span]) -> int:
    depth, parent = 0, span.parent_id
    while parent in by_id:
        depth, parent = depth + 1, by_id[parent].parent_id
    return depth


def waterfall(spans: list[Span], width: int = 40) -> str:
    """The trace as text: per span its service, start offset and duration, and a bar on the
    trace's time line."""
    if not spans:
        return "(no spans)\n"
    origin = min(span.start for span in spans)
    total = max((max(span.end for span in spans) - origin).total_seconds(), 1e-6)
    by_id = {span.span_id: span for span in spans}
    lines = [f"trace {spans[0].trace_id}  {total * 1000:.1f} ms\n"]
    lines.append(f"{'offset ms':>10} {'took ms':>9}  {'service':<22} {'span':<44} time line\n")
    for span in spans:
        offset = (span.start - origin).total_seconds()
        begin = int(offset / total * width)
        length = max(1, round(span.seconds / total * width))
        bar = " " * begin + "█" * min(length, width - begin if begin < width else 1)
        label = "  " * depth_of(span, by_id) + span.name
        error = " !" if span.status == "ERROR" else ""
        lines.append(f"{offset * 1000:>10.1f} {span.seconds * 1000:>9.1f}  {span.service:<22} "
                     f"{label[:44]:<44} |{bar:<{width}}|{error}\n")  # fmt: skip
    return "".join(lines)
