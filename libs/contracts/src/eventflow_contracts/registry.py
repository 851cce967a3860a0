"""Which event types and versions exist, which is current, and how to get from one to the next."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, cast

from eventflow_contracts.errors import ContractError, ErrorReason
from eventflow_contracts.events import (
    NAMESPACE,
    EventData,
    OrderCancelledV1,
    OrderCreatedV1,
    OrderCreatedV2,
    OrderEvent,
    OrderItemAddedV1,
    OrderStateChangedV1,
    OrderSubmittedV1,
)
from eventflow_contracts.upcasting import upcast_order_created_v1_to_v2

PUBLISHED: tuple[type[EventData], ...] = (
    OrderCreatedV1,
    OrderCreatedV2,
    OrderItemAddedV1,
    OrderSubmittedV1,
    OrderCancelledV1,
    OrderStateChangedV1,
)
"""Every version ever published and still readable. Removing one is a breaking change."""

CURRENT: dict[str, type[EventData]] = {
    cls.event_name: cls
    for cls in (
        OrderCreatedV2,
        OrderItemAddedV1,
        OrderSubmittedV1,
        OrderCancelledV1,
        OrderStateChangedV1,
    )
}
"""The version writers emit, per event name."""

_UPCASTERS: dict[type[EventData], Callable[[Any], EventData]] = {
    OrderCreatedV1: upcast_order_created_v1_to_v2,
}

_BY_TYPE: dict[str, type[EventData]] = {cls.event_type(): cls for cls in PUBLISHED}
_TYPE_RE = re.compile(r"^(?P<namespace>.+)\.(?P<name>[A-Za-z][A-Za-z0-9]*)\.v(?P<version>[0-9]+)$")


def model_for_type(event_type: str) -> type[EventData]:
    """The data model of a CloudEvents `type`.

    Raises ContractError with UNKNOWN_TYPE when the name is not an order event of this namespace,
    and UNSUPPORTED_VERSION when the name is known but the version is not readable here.
    """
    model = _BY_TYPE.get(event_type)
    if model is not None:
        return model
    match = _TYPE_RE.fullmatch(event_type)
    if match is None or match["namespace"] != NAMESPACE or match["name"] not in CURRENT:
        raise ContractError(ErrorReason.UNKNOWN_TYPE, f"unknown event type {event_type[:200]!r}")
    readable = sorted(cls.event_version for cls in PUBLISHED if cls.event_name == match["name"])
    raise ContractError(
        ErrorReason.UNSUPPORTED_VERSION,
        f"{match['name']} version {match['version'][:20]} is not readable; readable: {readable}",
    )


def upcast(data: EventData) -> OrderEvent:
    """Apply upcasters, one version step at a time, until `data` is the current version."""
    while type(data) is not CURRENT[data.event_name]:
        data = _UPCASTERS[type(data)](data)
    return cast(OrderEvent, data)


def is_current(model: type[EventData]) -> bool:
    """Whether writers emit this version."""
    return CURRENT[model.event_name] is model
