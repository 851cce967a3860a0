"""Every AMQP 1.0 primitive type the SDKs can send, at the edges of its range, and what the SDKs
give back for it (azure-servicebus / azure-eventhub `_pyamqp`: a property or annotation value may be
`{TYPE: AMQPTypes.<type>, VALUE: ...}` to pick its AMQP type, `_encode.py` `encode_value`; a
plain `int` is sent as an AMQP int). Shared by the Service Bus and Event Hubs cases."""

from __future__ import annotations

import uuid
from typing import Any

from azure.servicebus._pyamqp.types import TYPE, VALUE, AMQPTypes

__all__ = ["TYPES", "AMQPTypes", "annotations", "application_properties", "received", "typed"]


def typed(kind: str, value: Any) -> dict[str, Any]:
    return {TYPE: kind, VALUE: value}


# name -> (what the application sets, what the SDK gives back on receive)
TYPES: dict[str, tuple[Any, Any]] = {
    "ubyte": (typed(AMQPTypes.ubyte, 2**8 - 1), 2**8 - 1),
    "byte": (typed(AMQPTypes.byte, -(2**7)), -(2**7)),
    "ushort": (typed(AMQPTypes.ushort, 2**16 - 1), 2**16 - 1),
    "short": (typed(AMQPTypes.short, -(2**15)), -(2**15)),
    "uint": (typed(AMQPTypes.uint, 2**32 - 1), 2**32 - 1),
    "int": (typed(AMQPTypes.int, -(2**31)), -(2**31)),
    "ulong": (typed(AMQPTypes.ulong, 2**64 - 1), 2**64 - 1),
    "long": (typed(AMQPTypes.long, -(2**63)), -(2**63)),
    "float": (typed(AMQPTypes.float, 1.5), 1.5),
    "double": (typed(AMQPTypes.double, -1.7976931348623157e308), -1.7976931348623157e308),
    "timestamp": (typed(AMQPTypes.timestamp, 253402300799999), 253402300799999),
    "uuid": (uuid.UUID(int=2**128 - 1), uuid.UUID(int=2**128 - 1)),
    "string": ("ü" * 3, "ü".encode() * 3),
    "symbol": (typed(AMQPTypes.symbol, b"a-symbol"), b"a-symbol"),
    "boolean": (True, True),
    "null": (None, None),
}

ULONG_MAX = typed(AMQPTypes.ulong, 2**64 - 1)


def application_properties() -> dict[str, Any]:
    return {name: sent for name, (sent, _) in TYPES.items()}


def annotations() -> dict[str, Any]:
    return {f"x-opt-{name}": sent for name, (sent, _) in TYPES.items()}


def received(values: dict[bytes, Any], prefix: str = "") -> dict[str, Any]:
    """The values of `TYPES` found in a received map (keys come back as bytes)."""
    return {name: values.get(f"{prefix}{name}".encode(), "missing") for name in TYPES}


EXPECTED = {name: back for name, (_, back) in TYPES.items()}
