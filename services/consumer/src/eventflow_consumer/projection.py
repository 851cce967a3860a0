"""The example business effect: an order-summary projection, built from order events. Pure."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from enum import Enum
from typing import Any

from eventflow_contracts import (
    CloudEvent,
    OrderCancelled,
    OrderCreated,
    OrderEvent,
    OrderItemAdded,
    OrderLine,
    OrderStateChanged,
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
    skipped: tuple[int, ...] = field(default=())

    @property
    def total(self) -> Decimal:
        return total_of(self.lines)

    def to_document(self) -> dict[str, Any]:
        return {
            "id": self.order_id, "order_id": self.order_id, "kind": "summary", "customer_id": self.customer_id,
            "currency": self.currency, "status": self.status, "total": f"{self.total:.2f}",
            "lines": [line.model_dump(mode="json") for line in self.lines], "last_sequence": self.last_sequence,
            "status_history": list(self.status_history), "skipped": list(self.skipped),
        }  # fmt: skip

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> OrderSummary:
        return cls(
            order_id=document["order_id"], customer_id=document["customer_id"], currency=document["currency"],
            status=document["status"], lines=tuple(OrderLine.model_validate(line) for line in document["lines"]),
            last_sequence=int(document["last_sequence"]), status_history=tuple(document["status_history"]),
            skipped=tuple(int(n) for n in document.get("skipped", ())),
        )  # fmt: skip

    def skip(self, sequence: int) -> OrderSummary:
        """The summary after giving up on the events up to `sequence` it has not seen: they are
        recorded as skipped, so a late copy of one is refused rather than taken for a duplicate."""
        missing = range(self.last_sequence + 1, sequence + 1)
        return replace(
            self, skipped=(*self.skipped, *missing), last_sequence=max(self.last_sequence, sequence)
        )


def _history(
    summary: OrderSummary | None, status: str, sequence: int, at: datetime
) -> tuple[dict[str, Any], ...]:
    earlier = summary.status_history if summary else ()
    return (*earlier, {"status": status, "sequence": sequence, "at": at.isoformat()})


class Position(Enum):
    """Where an event stands against the summary."""

    NEXT = "next"  # apply it now
    DUPLICATE = "duplicate"  # applied before
    SKIPPED = "skipped"  # given up on earlier (skip policy): a late copy, refused with a reason
    EARLY = "early"  # an event before it has not been applied yet: wait for it


# Event kinds that carry the whole order and its version (derived from the order document in the
# entity-first write pattern): they replace the summary and may legitimately jump over sequence
# numbers (the change feed coalesces versions it has not delivered yet), so a jump is no gap.
WHOLE_STATE_EVENTS: tuple[type, ...] = (OrderStateChanged,)


def position(
    summary: OrderSummary | None,
    event: CloudEvent[OrderEvent],
    whole_state: tuple[type, ...] = WHOLE_STATE_EVENTS,
) -> Position:
    """Decided by the event's kind: incremental events follow one another without holes; whole-state
    events only need to be newer than the summary."""
    sequence = event.sequence
    last = summary.last_sequence if summary else 0
    if summary is not None and sequence in summary.skipped:
        return Position.SKIPPED
    if sequence <= last:
        return Position.DUPLICATE
    if isinstance(event.data, whole_state) or sequence == last + 1:
        return Position.NEXT
    return Position.EARLY


def apply(
    summary: OrderSummary | None,
    event: CloudEvent[OrderEvent],
    *,
    accept_gap: bool = False,
    whole_state: tuple[type, ...] = WHOLE_STATE_EVENTS,
) -> OrderSummary:
    """The summary after `event`. Raises PermanentFailure when the event cannot follow the summary:
    a change to an order the projection does not know, a second creation, or a gap in the sequence
    (an event in between never arrived, so the summary would be wrong). With `accept_gap` (the skip
    policy, after the wait for the missing events), the missing sequences are recorded as skipped
    and the event applies."""
    data, sequence = event.data, event.sequence
    if accept_gap and summary is not None and sequence > summary.last_sequence + 1:
        summary = summary.skip(sequence - 1)
    if isinstance(data, OrderStateChanged) and isinstance(data, whole_state):
        return _whole_state(summary, data, event)
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
    if sequence != summary.last_sequence + 1 and not isinstance(data, whole_state):
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


def _whole_state(
    summary: OrderSummary | None, data: OrderStateChanged, event: CloudEvent[OrderEvent]
) -> OrderSummary:
    """The summary replaced by the order's state at `event.sequence`. The status history gains an
    entry only when the status differs from the last one seen: states the change feed coalesced
    away were never seen, so they are not in the history."""
    if data.version != event.sequence:
        raise PermanentFailure(
            "version-mismatch",
            f"OrderStateChanged of version {data.version} has sequence {event.sequence}",
        )
    history = summary.status_history if summary else ()
    if summary is None or summary.status != data.status:
        history = _history(summary, data.status, event.sequence, event.time)
    return OrderSummary(
        data.order_id, data.customer_id, data.currency, data.status, data.lines, event.sequence,
        history, summary.skipped if summary else (),
    )  # fmt: skip
