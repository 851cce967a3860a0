"""Order event data models, one class per published version.

A published version never changes incompatibly: a change that removes, renames or retypes a
field, or adds a required one, is a new version with an upcaster from the previous one
(see `upcasting.py`). The committed JSON Schemas under `schemas/` are the published record, and
a test compares every model against them.

Readers are tolerant: unknown fields are ignored, so adding an optional field to a version is
compatible with readers that predate it.
"""

from __future__ import annotations

from decimal import Decimal
from typing import ClassVar, Literal, Self

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from eventflow_contracts.values import (
    MAX_LINES_PER_ORDER,
    CurrencyCode,
    CustomerId,
    Money,
    OrderId,
    Quantity,
    Reason,
    Sku,
    UnitPrice,
)

NAMESPACE = "eventflow.orders"
"""The prefix of every order event type: `eventflow.orders.<Name>.v<version>`."""


class EventData(BaseModel):
    """Base of every event's `data`. Subclasses name their event and version."""

    model_config = ConfigDict(frozen=True, extra="ignore", str_strip_whitespace=False)

    event_name: ClassVar[str]
    event_version: ClassVar[int]

    order_id: OrderId

    @classmethod
    def event_type(cls) -> str:
        """The CloudEvents `type` of this event version."""
        return f"{NAMESPACE}.{cls.event_name}.v{cls.event_version}"


class OrderLine(BaseModel):
    """One line of an order: a SKU, how many, and the price of one."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    sku: Sku
    quantity: Quantity
    unit_price: UnitPrice

    @property
    def amount(self) -> Decimal:
        """quantity x unit_price."""
        return self.unit_price * self.quantity


def total_of(lines: tuple[OrderLine, ...] | list[OrderLine]) -> Decimal:
    """The sum of the lines' amounts, 0.00 for no lines."""
    return sum((line.amount for line in lines), Decimal("0.00"))


class OrderCreatedV1(EventData):
    """An order was opened. Version 1: `currency` may be absent, which means EUR."""

    event_name: ClassVar[str] = "OrderCreated"
    event_version: ClassVar[int] = 1
    DEFAULT_CURRENCY_V1: ClassVar[str] = "EUR"

    customer_id: CustomerId
    lines: tuple[OrderLine, ...] = Field(default=(), max_length=MAX_LINES_PER_ORDER)
    currency: CurrencyCode | None = None


class OrderCreatedV2(EventData):
    """An order was opened. Version 2: `currency` is required; `total` states the order's value."""

    event_name: ClassVar[str] = "OrderCreated"
    event_version: ClassVar[int] = 2

    customer_id: CustomerId
    lines: tuple[OrderLine, ...] = Field(default=(), max_length=MAX_LINES_PER_ORDER)
    currency: CurrencyCode
    total: Money

    @model_validator(mode="after")
    def _total_matches_lines(self) -> Self:
        if self.total != total_of(self.lines):
            raise ValueError("total must equal the sum of quantity x unit_price over the lines")
        return self


class OrderItemAddedV1(EventData):
    """A line was added to an open order."""

    event_name: ClassVar[str] = "OrderItemAdded"
    event_version: ClassVar[int] = 1

    line: OrderLine


class OrderSubmittedV1(EventData):
    """The customer submitted the order; it can no longer change."""

    event_name: ClassVar[str] = "OrderSubmitted"
    event_version: ClassVar[int] = 1

    currency: CurrencyCode
    total: Money
    line_count: int = Field(ge=1, le=MAX_LINES_PER_ORDER, strict=True)


class OrderCancelledV1(EventData):
    """The order was cancelled, with the reason given."""

    event_name: ClassVar[str] = "OrderCancelled"
    event_version: ClassVar[int] = 1

    reason: Reason


OrderStatusName = Literal["open", "submitted", "cancelled"]


class OrderStateChangedV1(EventData):
    """The whole order as one stored version of it, derived from the order document rather than
    from the change that made it (the entity-first write pattern). `version` is the order's
    version and the event's `sequence`. Consecutive events of one order may skip versions: the
    change feed coalesces writes it has not delivered yet, so a reader applies one when its
    version is newer than what it holds, and never waits for the ones in between."""

    event_name: ClassVar[str] = "OrderStateChanged"
    event_version: ClassVar[int] = 1

    customer_id: CustomerId
    currency: CurrencyCode
    lines: tuple[OrderLine, ...] = Field(default=(), max_length=MAX_LINES_PER_ORDER)
    status: OrderStatusName
    version: int = Field(ge=1, strict=True)
    total: Money
    cancel_reason: Reason | None = None
    created_at: AwareDatetime
    updated_at: AwareDatetime

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.total != total_of(self.lines):
            raise ValueError("total must equal the sum of quantity x unit_price over the lines")
        if (self.status == "cancelled") != (self.cancel_reason is not None):
            raise ValueError("cancel_reason is given exactly when the status is cancelled")
        return self


OrderCreated = OrderCreatedV2
OrderItemAdded = OrderItemAddedV1
OrderSubmitted = OrderSubmittedV1
OrderCancelled = OrderCancelledV1
OrderStateChanged = OrderStateChangedV1

OrderEvent = (
    OrderCreatedV2 | OrderItemAddedV1 | OrderSubmittedV1 | OrderCancelledV1 | OrderStateChangedV1
)
"""The current version of every order event: what decoding returns after upcasting."""
