"""Versioned event contracts shared by the eventflow services.

Write: build the current version's data model, wrap it with `new_event`, `encode_event` it.
Read: `decode_event(raw)` validates and upcasts to the current version, or raises ContractError
with a machine-readable `reason`. Route without reading data: `read_routing(raw)`.
"""

from eventflow_contracts.envelope import (
    CONTENT_TYPE,
    DATA_CONTENT_TYPE,
    DEFAULT_MAX_EVENT_BYTES,
    SPEC_VERSION,
    CloudEvent,
    EventRouting,
    decode_event,
    encode_event,
    format_sequence,
    is_valid_traceparent,
    new_event,
    read_routing,
    to_json_dict,
)
from eventflow_contracts.errors import ContractError, ErrorReason
from eventflow_contracts.events import (
    NAMESPACE,
    EventData,
    OrderCancelled,
    OrderCancelledV1,
    OrderCreated,
    OrderCreatedV1,
    OrderCreatedV2,
    OrderEvent,
    OrderItemAdded,
    OrderItemAddedV1,
    OrderLine,
    OrderStateChanged,
    OrderStateChangedV1,
    OrderSubmitted,
    OrderSubmittedV1,
    total_of,
)
from eventflow_contracts.registry import CURRENT, PUBLISHED, is_current, model_for_type, upcast
from eventflow_contracts.state import OrderState, StateError, evolve
from eventflow_contracts.upcasting import upcast_order_created_v1_to_v2

__all__ = [
    "CONTENT_TYPE",
    "CURRENT",
    "DATA_CONTENT_TYPE",
    "DEFAULT_MAX_EVENT_BYTES",
    "NAMESPACE",
    "PUBLISHED",
    "SPEC_VERSION",
    "CloudEvent",
    "ContractError",
    "ErrorReason",
    "EventData",
    "EventRouting",
    "OrderCancelled",
    "OrderCancelledV1",
    "OrderCreated",
    "OrderCreatedV1",
    "OrderCreatedV2",
    "OrderEvent",
    "OrderItemAdded",
    "OrderItemAddedV1",
    "OrderLine",
    "OrderState",
    "OrderStateChanged",
    "OrderStateChangedV1",
    "OrderSubmitted",
    "OrderSubmittedV1",
    "StateError",
    "decode_event",
    "encode_event",
    "evolve",
    "format_sequence",
    "is_current",
    "is_valid_traceparent",
    "model_for_type",
    "new_event",
    "read_routing",
    "to_json_dict",
    "total_of",
    "upcast",
    "upcast_order_created_v1_to_v2",
]
