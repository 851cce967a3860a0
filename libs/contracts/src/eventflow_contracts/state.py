"""An order's whole state, folded from its events: what the event-first write pattern keeps as its
read model, and what an `OrderStateChanged` carries. Pure.

    state = None
    for event in events_in_sequence:
        state = evolve(state, event)
"""

from __future__ import annotations

from typing import Any

from eventflow_contracts.envelope import CloudEvent
from eventflow_contracts.events import (
    OrderCancelledV1,
    OrderCreatedV2,
    OrderEvent,
    OrderItemAddedV1,
    OrderStateChangedV1,
    OrderSubmittedV1,
    total_of,
)

OrderState = OrderStateChangedV1
"""The whole order at one version: the data of an `OrderStateChanged.v1`."""


class StateError(Exception):
    """An event that cannot follow the state: `reason` is stable (`sequence-gap`, `unknown-order`,
    `order-exists`)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def evolve(state: OrderState | None, event: CloudEvent[OrderEvent]) -> OrderState:
    """The state after `event`, which must be the next one (`sequence` = version + 1; a whole-state
    event only needs to be newer). Raises StateError otherwise; an event at or before the state's
    version is the caller's to recognise as a duplicate first."""
    data, sequence = event.data, event.sequence
    if isinstance(data, OrderStateChangedV1):
        if state is not None and sequence <= state.version:
            raise StateError(
                "sequence-gap", f"version {sequence} is not newer than {state.version}"
            )
        return data
    if isinstance(data, OrderCreatedV2):
        if state is not None:
            raise StateError("order-exists", f"order {data.order_id} was already created")
        if sequence != 1:
            raise StateError("sequence-gap", f"OrderCreated has sequence {sequence}, expected 1")
        return OrderState(
            order_id=data.order_id, customer_id=data.customer_id, currency=data.currency,
            lines=data.lines, status="open", version=1, total=data.total,
            created_at=event.time, updated_at=event.time,
        )  # fmt: skip
    if state is None:
        raise StateError("unknown-order", f"{event.type} for an order with no OrderCreated")
    if sequence != state.version + 1:
        raise StateError("sequence-gap", f"sequence {sequence} follows {state.version}")
    changes: dict[str, Any] = {"version": sequence, "updated_at": event.time}
    if isinstance(data, OrderItemAddedV1):
        lines = (*state.lines, data.line)
        changes |= {"lines": lines, "total": total_of(lines)}
    elif isinstance(data, OrderSubmittedV1):
        changes["status"] = "submitted"
    elif isinstance(data, OrderCancelledV1):
        changes |= {"status": "cancelled", "cancel_reason": data.reason}
    return state.model_copy(update=changes)
