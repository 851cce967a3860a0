"""The example business effect: an order-summary projection, built from order events. Pure."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from typing import Any

from eventflow_contracts import (
    CloudEvent,
    OrderCancelled,
    OrderCreated,
    OrderEvent,
    OrderItemAdded,
    OrderLine,
    OrderSubmitted,
    total_of,
)


class PermanentFailure(Exception):
    """The event breaks a rule of the projection; retrying cannot help."""

    def __init__(self, reason: str, description: str) -> None:
        super().__init__(f"{reason}: {description}")
        self.reason = reason
        self.description = description


@dataclass(frozen=True)
class OrderSummary:
    order_id: str
    customer_id: str
    currency: str
    status: str
    lines: tuple[OrderLine, ...]
    last_sequence: int
    status_history: tuple[dict[str, Any], ...] = field(default=())

    @property
    def total(self) -> Decimal:
        return total_of(self.lines)

    def to_document(self) -> dict[str, Any]:
        return {
            "id": self.order_id, "order_id": self.order_id, "kind": "summary", "customer_id": self.customer_id,
            "currency": self.currency, "status": self.status, "total": f"{self.total:.2f}",
            "lines": [line.model_dump(mode="json") for line in self.lines], "last_sequence": self.last_sequence,
            "status_history": list(self.status_history),
        }  # fmt: skip

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> OrderSummary:
        return cls(
            order_id=document["order_id"], customer_id=document["customer_id"], currency=document["currency"],
            status=document["status"], lines=tuple(OrderLine.model_validate(line) for line in document["lines"]),
            last_sequence=int(document["last_sequence"]), status_history=tuple(document["status_history"]),
        )  # fmt: skip


def _history(
    summary: OrderSummary | None, status: str, sequence: int, at: datetime
) -> tuple[dict[str, Any], ...]:
    earlier = summary.status_history if summary else ()
    return (*earlier, {"status": status, "sequence": sequence, "at": at.isoformat()})


def apply(summary: OrderSummary | None, event: CloudEvent[OrderEvent]) -> OrderSummary:
    """The summary after `event`. Raises PermanentFailure when the event cannot follow the summary:
    a change to an order the projection does not know, a second creation, or a gap in the sequence
    (an event in between never arrived, so the summary would be wrong)."""
    data, sequence = event.data, event.sequence
    if isinstance(data, OrderCreated):
        if summary is not None:
            raise PermanentFailure("order-exists", f"order {data.order_id} was already created")
        if sequence != 1:
            raise PermanentFailure(
                "sequence-gap", f"OrderCreated has sequence {sequence}, expected 1"
            )
        return OrderSummary(data.order_id, data.customer_id, data.currency, "open", data.lines, 1,
                            _history(None, "open", 1, event.time))  # fmt: skip
    if summary is None:
        raise PermanentFailure(
            "unknown-order",
            f"{event.type} for order {data.order_id}, which the projection does not know",
        )
    if sequence != summary.last_sequence + 1:
        raise PermanentFailure(
            "sequence-gap", f"sequence {sequence} follows {summary.last_sequence}"
        )
    if isinstance(data, OrderItemAdded):
        return replace(summary, lines=(*summary.lines, data.line), last_sequence=sequence)
    if isinstance(data, OrderSubmitted):
        status = "submitted"
    elif isinstance(data, OrderCancelled):
        status = "cancelled"
    else:  # pragma: no cover - the union is exhaustive
        raise PermanentFailure("unknown-type", event.type)
    return replace(
        summary,
        status=status,
        last_sequence=sequence,
        status_history=_history(summary, status, sequence, event.time),
    )
