"""The fold of an order's events into its whole state (the event-first read model)."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from eventflow_contracts import (
    CloudEvent,
    OrderCancelled,
    OrderCreated,
    OrderItemAdded,
    OrderLine,
    OrderState,
    OrderStateChanged,
    OrderSubmitted,
    StateError,
    decode_event,
    encode_event,
    evolve,
    new_event,
)

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
LINE = OrderLine(sku="SKU-1", quantity=2, unit_price=Decimal("1.50"))


def at(data: Any, sequence: int) -> CloudEvent[Any]:
    return new_event(
        data, source="urn:test", sequence=sequence, time=T0 + timedelta(seconds=sequence)
    )


def created() -> CloudEvent[Any]:
    return at(
        OrderCreated(
            order_id="o-1", customer_id="c", currency="EUR", lines=(), total=Decimal("0.00")
        ),
        1,
    )


def test_events_fold_into_the_whole_order() -> None:
    state = evolve(None, created())
    state = evolve(state, at(OrderItemAdded(order_id="o-1", line=LINE), 2))
    state = evolve(
        state,
        at(OrderSubmitted(order_id="o-1", currency="EUR", total=Decimal("3.00"), line_count=1), 3),
    )
    state = evolve(state, at(OrderCancelled(order_id="o-1", reason="changed mind"), 4))
    assert (state.version, state.status, state.cancel_reason, state.lines) == (
        4,
        "cancelled",
        "changed mind",
        (LINE,),
    )
    assert state.total == Decimal("3.00")
    assert (state.created_at, state.updated_at) == (
        T0 + timedelta(seconds=1),
        T0 + timedelta(seconds=4),
    )


def test_a_state_event_round_trips_and_replaces_the_state() -> None:
    state = evolve(None, created())
    whole = OrderStateChanged.model_validate({**state.model_dump(mode="json"), "version": 7})
    event = at(whole, 7)
    assert decode_event(encode_event(event)) == event
    assert evolve(state, event) == whole
    with pytest.raises(StateError, match="not newer"):
        evolve(whole, event)


@pytest.mark.parametrize(
    ("state", "event", "reason"),
    [
        (None, lambda: at(OrderItemAdded(order_id="o-1", line=LINE), 2), "unknown-order"),
        ("created", lambda: at(OrderItemAdded(order_id="o-1", line=LINE), 3), "sequence-gap"),
        ("created", created, "order-exists"),
        (None, lambda: at(created().data, 2), "sequence-gap"),
    ],
)
def test_an_event_that_cannot_follow_is_refused(state: str | None, event: Any, reason: str) -> None:
    before: OrderState | None = evolve(None, created()) if state else None
    with pytest.raises(StateError) as refused:
        evolve(before, event())
    assert refused.value.reason == reason


def test_the_state_is_consistent() -> None:
    fields = evolve(None, created()).model_dump(mode="json")
    with pytest.raises(ValueError, match="cancel_reason"):
        OrderState.model_validate({**fields, "status": "cancelled"})
    with pytest.raises(ValueError, match="total"):
        OrderState.model_validate({**fields, "total": "1.00"})
