"""Hypothesis strategies for valid events, for property tests here and in the services.

Needs the `testing` extra (hypothesis); production code never imports this module.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from hypothesis import strategies as st

from eventflow_contracts.envelope import MAX_SEQUENCE, CloudEvent, new_event
from eventflow_contracts.events import (
    EventData,
    OrderCancelledV1,
    OrderCreatedV1,
    OrderCreatedV2,
    OrderItemAddedV1,
    OrderLine,
    OrderStateChangedV1,
    OrderStatusName,
    OrderSubmittedV1,
    total_of,
)
from eventflow_contracts.values import MAX_UNIT_PRICE

order_ids = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_-]{0,63}\Z")
customer_ids = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.@-]{0,40}\Z")
skus = st.from_regex(r"\A[A-Z0-9][A-Z0-9-]{1,31}\Z")
currencies = st.from_regex(r"\A[A-Z]{3}\Z")
unit_prices = st.integers(0, int(MAX_UNIT_PRICE * 100)).map(lambda cents: Decimal(cents) / 100)
lines = st.builds(OrderLine, sku=skus, quantity=st.integers(1, 1000), unit_price=unit_prices)
line_lists = st.lists(lines, max_size=8).map(tuple)
reasons = st.text(min_size=1, max_size=500)
traceparents = st.builds(
    lambda trace, parent, flags: f"00-{trace:032x}-{parent:016x}-{flags:02x}",
    st.integers(1, 2**128 - 1),
    st.integers(1, 2**64 - 1),
    st.integers(0, 255),
)
utc_offsets = st.integers(-14 * 60, 14 * 60).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)
times = st.datetimes(
    min_value=datetime(2000, 1, 1),
    max_value=datetime(2200, 1, 1),
    timezones=st.just(UTC) | utc_offsets,
)


@st.composite
def order_created_v2(draw: st.DrawFn) -> OrderCreatedV2:
    order_lines = draw(line_lists)
    return OrderCreatedV2(
        order_id=draw(order_ids),
        customer_id=draw(customer_ids),
        lines=order_lines,
        currency=draw(currencies),
        total=total_of(order_lines),
    )


@st.composite
def order_submitted_v1(draw: st.DrawFn) -> OrderSubmittedV1:
    order_lines = draw(st.lists(lines, min_size=1, max_size=8))
    return OrderSubmittedV1(
        order_id=draw(order_ids),
        currency=draw(currencies),
        total=total_of(order_lines),
        line_count=len(order_lines),
    )


order_created_v1 = st.builds(
    OrderCreatedV1,
    order_id=order_ids,
    customer_id=customer_ids,
    lines=line_lists,
    currency=st.none() | currencies,
)
order_item_added_v1 = st.builds(OrderItemAddedV1, order_id=order_ids, line=lines)
order_cancelled_v1 = st.builds(OrderCancelledV1, order_id=order_ids, reason=reasons)


@st.composite
def order_state_changed_v1(draw: st.DrawFn) -> OrderStateChangedV1:
    order_lines = draw(line_lists)
    status: OrderStatusName = draw(st.sampled_from(["open", "submitted", "cancelled"]))
    created = draw(times)
    return OrderStateChangedV1(
        order_id=draw(order_ids), customer_id=draw(customer_ids), currency=draw(currencies),
        lines=order_lines, status=status, version=draw(st.integers(1, 10**6)),
        total=total_of(order_lines), cancel_reason=draw(reasons) if status == "cancelled" else None,
        created_at=created, updated_at=created + draw(st.timedeltas(timedelta(0), timedelta(days=9))),
    )  # fmt: skip


current_event_data: st.SearchStrategy[EventData] = st.one_of(
    order_created_v2(), order_item_added_v1, order_submitted_v1(), order_cancelled_v1,
    order_state_changed_v1(),
)  # fmt: skip
"""Data of every current event version."""

any_event_data: st.SearchStrategy[EventData] = current_event_data | order_created_v1
"""Data of every published event version, old ones included."""


@st.composite
def envelopes(draw: st.DrawFn, data: st.SearchStrategy[EventData]) -> CloudEvent[Any]:
    """Valid envelopes around data drawn from `data`."""
    return new_event(
        draw(data),
        source=draw(st.sampled_from(["/eventflow/producer-api", "urn:test:source"])),
        sequence=draw(st.integers(1, MAX_SEQUENCE)),
        traceparent=draw(st.none() | traceparents),
        tracestate=draw(st.none() | st.just("vendor=value")),
        event_id=draw(st.uuids().map(str) | st.from_regex(r"\A[A-Za-z0-9-]{1,128}\Z")),
        time=draw(times),
    )
