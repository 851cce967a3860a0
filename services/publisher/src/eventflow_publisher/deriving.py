"""Which change feed documents carry events, and how an event is read from each (the write patterns).

The documents are those of `eventflow_contracts.orders_container`, the producer's layout.
- outbox and event-first: event documents (`kind = "event"`) carry their CloudEvent as written.
- entity-first: the order documents (`kind = "order"`) a legacy writer keeps are the only record;
  each version read becomes an `OrderStateChanged.v1` with the whole order, its version as the
  event's sequence and an id derived from (order id, version), so a re-read of the same version is
  the same event (Event Hubs replays and Service Bus duplicate detection see one id).

The latest-version change feed returns an item's newest version only: writes to one order between
two reads of its range coalesce into one document, and the versions in between are never seen.
A derived event therefore promises the order's state at some version, in increasing version order
per order, and the latest state eventually; not every intermediate state (docs/patterns.md).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from eventflow_contracts import (
    ContractError,
    ErrorReason,
    OrderStateChanged,
    new_event,
    to_json_dict,
)
from eventflow_contracts.orders_container import DocumentKind, event_kind

DERIVED_SOURCE = "/eventflow/publisher/entity-first"
_DERIVED_IDS = uuid.UUID("6f1c2a4e-5b0d-4e53-9d0e-0a6b3f4c2d71")


@dataclass(frozen=True, slots=True)
class EventSource:
    """The documents of the change feed that carry events (`kind`), and the CloudEvent JSON object
    of one (`event_of`, which raises KeyError, TypeError or ContractError when it has none)."""

    kind: DocumentKind
    event_of: Callable[[dict[str, Any]], Any]


def stored_event(document: dict[str, Any]) -> Any:
    """The CloudEvent an event document carries (outbox and event-first)."""
    return document["event"]


def derived_event_id(order_id: str, version: int) -> str:
    """The same id for the same version of an order, in every process and release."""
    return str(uuid.uuid5(_DERIVED_IDS, f"{order_id}:{version}"))


def state_event(document: dict[str, Any]) -> dict[str, Any]:
    """The OrderStateChanged.v1 CloudEvent of one version of an order document.
    Raises ContractError(INVALID_DATA) when the document is no valid order."""
    try:
        data = OrderStateChanged.model_validate(document)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in item['loc'])}: {item['msg']}" for item in error.errors()[:5]
        )
        raise ContractError(
            ErrorReason.INVALID_DATA, f"not an order document: {problems}"
        ) from None
    event = new_event(
        data, source=DERIVED_SOURCE, sequence=data.version, time=data.updated_at,
        event_id=derived_event_id(data.order_id, data.version),
    )  # fmt: skip
    return to_json_dict(event)


OUTBOX = EventSource(event_kind("outbox"), stored_event)
"""The outbox's and event-first's: the event documents, their CloudEvent as written."""
ENTITY_FIRST = EventSource(event_kind("entity-first"), state_event)
"""entity-first's: the order documents, an event derived from each version read."""
