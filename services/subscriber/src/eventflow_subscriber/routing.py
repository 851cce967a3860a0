"""From a hub event to an inbox message: pure, no SDKs.

An event is read only as far as routing needs (its CloudEvent envelope); its bytes go on unchanged.
An event goes to its order's lane (`eventflow_contracts.lanes`: the session `lanes<N>-<n>`, or the
order id itself with no lanes). An event that cannot be routed is never dropped: it becomes a small
marker message in a session of its own (never a lane), carrying the reason and the hub coordinates,
which the consumer dead-letters and an operator can trace back to the original event.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from eventflow_contracts import CONTENT_TYPE, ContractError, ErrorReason, read_routing
from eventflow_contracts.lanes import session_id_for

UNROUTABLE_SESSION = "eventflow.unroutable"
UNROUTABLE_SUBJECT = "eventflow.unroutable"
MARKER_PROPERTY = "eventflow_unroutable"
_VERSION_SUFFIX = re.compile(r"\.v[0-9]+$")


def type_name(event_type: str) -> str:
    """An event type without its version: `eventflow.orders.OrderCreated.v2` → `eventflow.orders.OrderCreated`.
    The filter works on names, so a new version of a subscribed type is never filtered out (that
    would leave a permanent gap in its order's sequence)."""
    return _VERSION_SUFFIX.sub("", event_type)


def type_names(event_types: Iterable[str]) -> frozenset[str]:
    return frozenset(type_name(t) for t in event_types)


@dataclass(frozen=True, slots=True)
class HubEvent:
    """A received event and where it sits in the hub."""

    body: bytes
    partition_id: str
    offset: str
    sequence_number: int
    enqueued_time: datetime | None = None


@dataclass(frozen=True, slots=True)
class InboxMessage:
    """What goes into the inbox queue (maps 1:1 onto a ServiceBusMessage)."""

    body: bytes
    message_id: str
    session_id: str
    subject: str
    content_type: str
    properties: dict[str, Any] = field(default_factory=dict)

    @property
    def is_marker(self) -> bool:
        return bool(self.properties.get(MARKER_PROPERTY))


@dataclass(frozen=True, slots=True)
class Filtered:
    """A valid event of a type the consumer does not subscribe to: checkpointed past."""

    type: str


def marker(event: HubEvent, hub: str, reason: str, detail: str) -> InboxMessage:
    """The stand-in for an event that cannot be routed. Its id is derived from the hub position, so a
    replay of the same event makes the same marker (and duplicate detection drops it)."""
    coordinates = {
        "eventhub": hub, "partition": event.partition_id, "offset": event.offset,
        "sequence_number": event.sequence_number,
        "enqueued_time": event.enqueued_time.isoformat() if event.enqueued_time else None,
    }  # fmt: skip
    return InboxMessage(
        body=orjson.dumps({"reason": reason, "detail": detail[:1000], **coordinates}),
        message_id=f"unroutable:{hub}:{event.partition_id}:{event.sequence_number}"[:128],
        session_id=UNROUTABLE_SESSION,
        subject=UNROUTABLE_SUBJECT,
        content_type="application/json",
        properties={
            MARKER_PROPERTY: True,
            "reason": reason,
            "partition": event.partition_id,
            "offset": event.offset,
            "sequence_number": event.sequence_number,
        },
    )


def route(
    event: HubEvent,
    *,
    hub: str,
    subscribed: Collection[str] | None,
    max_message_bytes: int,
    lanes: int,
) -> InboxMessage | Filtered:
    """The inbox message for `event`, a marker when it cannot be routed, or Filtered.

    `subscribed` None means every type; its entries are compared by type name, in any version.
    `max_message_bytes` is what the queue accepts for a body. `lanes`: the inbox's lane count, the
    session is the order's lane; 0 means one session per order (the session is the order id)."""
    try:
        routing = read_routing(event.body, max_bytes=max_message_bytes)
    except ContractError as error:
        return marker(event, hub, error.reason.value, error.detail)
    if subscribed is not None and type_name(routing.type) not in type_names(subscribed):
        return Filtered(routing.type)
    properties: dict[str, Any] = {
        "type": routing.type, "specversion": "1.0", "source": routing.source,
        "sequence": routing.sequence,
    }  # fmt: skip
    if routing.traceparent:
        properties["traceparent"] = routing.traceparent
    if routing.tracestate:
        properties["tracestate"] = routing.tracestate
    return InboxMessage(
        body=event.body, message_id=routing.id, session_id=session_id_for(routing.partitionkey, lanes),
        subject=routing.type, content_type=CONTENT_TYPE, properties=properties,
    )  # fmt: skip


def too_large(event: HubEvent, hub: str) -> InboxMessage:
    return marker(
        event, hub, ErrorReason.TOO_LARGE.value, "the event does not fit a Service Bus message"
    )
