"""The order aggregate and its rules. Pure: no I/O, no SDKs, no clock of its own.

Each command returns the changed order and the event data that describes the change; the
order's version grows by one per event and becomes that event's `sequence`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from enum import StrEnum

from eventflow_contracts import (
    OrderCancelled,
    OrderCreated,
    OrderItemAdded,
    OrderLine,
    OrderSubmitted,
    total_of,
)
from eventflow_contracts.values import MAX_LINES_PER_ORDER


class OrderStatus(StrEnum):
    OPEN = "open"
    SUBMITTED = "submitted"
    CANCELLED = "cancelled"


class RuleBroken(Exception):
    """A command the order's current state does not allow. `code` is stable (the problem type)."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Order:
    id: str
    customer_id: str
    currency: str
    lines: tuple[OrderLine, ...]
    status: OrderStatus
    version: int
    created_at: datetime
    updated_at: datetime
    cancel_reason: str | None = None

    @property
    def total(self) -> Decimal:
        return total_of(self.lines)

    def _next(self, now: datetime, **changes: object) -> Order:
        return replace(self, version=self.version + 1, updated_at=now, **changes)  # type: ignore[arg-type]


def open_order(
    order_id: str, customer_id: str, currency: str, lines: tuple[OrderLine, ...], now: datetime
) -> tuple[Order, OrderCreated]:
    """A new open order at version 1, and its OrderCreated."""
    if len(lines) > MAX_LINES_PER_ORDER:
        raise RuleBroken("too-many-lines", f"an order has at most {MAX_LINES_PER_ORDER} lines")
    order = Order(
        id=order_id, customer_id=customer_id, currency=currency, lines=lines,
        status=OrderStatus.OPEN, version=1, created_at=now, updated_at=now,
    )  # fmt: skip
    event = OrderCreated(
        order_id=order_id,
        customer_id=customer_id,
        lines=lines,
        currency=currency,
        total=order.total,
    )
    return order, event


def _require_open(order: Order, action: str) -> None:
    if order.status is not OrderStatus.OPEN:
        raise RuleBroken("order-not-open", f"cannot {action}: the order is {order.status.value}")


def add_item(order: Order, line: OrderLine, now: datetime) -> tuple[Order, OrderItemAdded]:
    """Add a line to an open order that has room for it."""
    _require_open(order, "add an item")
    if len(order.lines) >= MAX_LINES_PER_ORDER:
        raise RuleBroken("too-many-lines", f"an order has at most {MAX_LINES_PER_ORDER} lines")
    changed = order._next(now, lines=(*order.lines, line))
    return changed, OrderItemAdded(order_id=order.id, line=line)


def submit(order: Order, now: datetime) -> tuple[Order, OrderSubmitted]:
    """Submit an open order that has at least one line."""
    _require_open(order, "submit")
    if not order.lines:
        raise RuleBroken("order-empty", "cannot submit an order without lines")
    changed = order._next(now, status=OrderStatus.SUBMITTED)
    event = OrderSubmitted(
        order_id=order.id, currency=order.currency, total=order.total, line_count=len(order.lines)
    )
    return changed, event


def cancel(order: Order, reason: str, now: datetime) -> tuple[Order, OrderCancelled]:
    """Cancel an order that is not cancelled yet (open or submitted)."""
    if order.status is OrderStatus.CANCELLED:
        raise RuleBroken("order-already-cancelled", "the order is already cancelled")
    changed = order._next(now, status=OrderStatus.CANCELLED, cancel_reason=reason)
    return changed, OrderCancelled(order_id=order.id, reason=reason)
