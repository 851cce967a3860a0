"""AMQP messages as sections (OASIS AMQP 1.0 part 3, "Messaging"), kept as received bytes.

The broker never re-encodes what a client sent: it reads the few fields it routes on, and on
delivery re-encodes only the header (delivery count) and the message annotations (the broker's
`x-opt-*` values), copying every other section as it arrived.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from .codec import (
    DecodeError,
    Described,
    Raw,
    Symbol,
    Timestamp,
    UByte,
    UInt,
    ULong,
    decode,
    decode_all,
    encode,
    encode_into,
    skip,
)

HEADER = 0x70
DELIVERY_ANNOTATIONS = 0x71
MESSAGE_ANNOTATIONS = 0x72
PROPERTIES = 0x73
APPLICATION_PROPERTIES = 0x74
DATA = 0x75
AMQP_SEQUENCE = 0x76
AMQP_VALUE = 0x77
FOOTER = 0x78

# Event Hubs' batch format: the body's data sections each hold one whole encoded message
# (azure-eventhub _pyamqp/_encode.py encode_payload / EventDataBatch, format 0x80013700).
BATCH_FORMAT = 0x80013700

PROPERTY_NAMES = (
    "message_id", "user_id", "to", "subject", "reply_to", "correlation_id", "content_type",
    "content_encoding", "absolute_expiry_time", "creation_time", "group_id", "group_sequence",
    "reply_to_group_id",
)  # fmt: skip


@dataclass
class Message:
    header: list[Any] | None = None
    annotations: dict[Any, Any] = field(default_factory=dict)
    properties: list[Any] = field(default_factory=lambda: [None] * 13)
    application_properties: dict[Any, Any] | None = None
    raw_rest: bytes = b""  # application properties, body and footer as received
    raw_properties: bytes = b""  # the properties section as received

    def prop(self, name: str) -> Any:
        return self.properties[PROPERTY_NAMES.index(name)]

    @property
    def body_value(self) -> Any:
        """The amqp-value body, if the message has one (management requests do)."""
        pos = 0
        data = self.raw_rest
        while pos < len(data):
            section, end = decode(data, pos)
            if isinstance(section, Described) and section.descriptor == AMQP_VALUE:
                return section.value
            pos = end
        return None

    def data_sections(self) -> list[bytes]:
        out: list[bytes] = []
        pos = 0
        data = self.raw_rest
        while pos < len(data):
            section, end = decode(data, pos)
            if isinstance(section, Described) and section.descriptor == DATA:
                out.append(section.value)
            pos = end
        return out


def _code(descriptor: Any) -> int:
    if isinstance(descriptor, int):
        return descriptor
    return {"amqp:header:list": HEADER, "amqp:message-annotations:map": MESSAGE_ANNOTATIONS,
            "amqp:properties:list": PROPERTIES, "amqp:application-properties:map":
            APPLICATION_PROPERTIES}.get(str(descriptor), -1)  # fmt: skip


def check(payload: bytes) -> None:
    """Raise `DecodeError` unless `payload` is a sequence of well-formed, described sections:
    what the broker accepts it must be able to deliver (and re-encode) later."""
    for section in decode_all(payload):
        if not isinstance(section, Described):
            raise DecodeError("a message section must be a described type")


def parse(payload: bytes) -> Message:
    message = Message()
    pos = 0
    view = memoryview(payload)
    rest_start = len(payload)
    while pos < len(payload):
        if payload[pos] != 0x00:
            raise DecodeError("a message section must be a described type")
        descriptor, value_pos = decode(view, pos + 1)
        code = _code(descriptor)
        if code in (HEADER, MESSAGE_ANNOTATIONS, PROPERTIES, DELIVERY_ANNOTATIONS):
            value, end = decode(view, value_pos)
            if code == HEADER:
                message.header = list(value) + [None] * (5 - len(value))
            elif code == MESSAGE_ANNOTATIONS:
                message.annotations = dict(value or {})
            elif code == PROPERTIES:
                message.properties = list(value) + [None] * (13 - len(value))
                message.raw_properties = bytes(view[pos:end])
            pos = end
            continue
        if code == APPLICATION_PROPERTIES:
            value, _ = decode(view, value_pos)
            message.application_properties = dict(value or {})
        rest_start = pos
        break
    message.raw_rest = bytes(view[rest_start:])
    return message


def encode_message(
    message: Message,
    *,
    delivery_count: int | None = None,
    annotations: dict[Any, Any] | None = None,
    ttl: int | None = None,
) -> bytes:
    """The message with the broker's header and annotations; the rest copied as received.
    `ttl` replaces the header's time to live (the value the broker applied)."""
    out = bytearray()
    header = list(message.header) if message.header else [None] * 5
    if delivery_count is not None:
        header[4] = UInt(delivery_count)
    if ttl is not None:
        header[2] = UInt(ttl)
    if any(v is not None for v in header):
        header = _typed_header(header)
        encode_into(out, Described(ULong(HEADER), header))
    merged = dict(message.annotations)
    if annotations:
        merged.update(annotations)
    if merged:
        encode_into(out, Described(ULong(MESSAGE_ANNOTATIONS), merged))
    if message.raw_properties:
        out += message.raw_properties
    elif any(v is not None for v in message.properties):
        encode_into(out, Described(ULong(PROPERTIES), _typed_properties(message.properties)))
    out += message.raw_rest
    return bytes(out)


def _typed_header(header: list[Any]) -> list[Any]:
    durable, priority, ttl, first, count = header[:5]
    return [
        durable,
        UByte(priority) if priority is not None else None,
        UInt(ttl) if ttl is not None else None,
        first,
        UInt(count) if count is not None else None,
    ]


def _typed_properties(props: list[Any]) -> list[Any]:
    typed = list(props[:13])
    for index in (6, 7):  # content-type, content-encoding are symbols
        if typed[index] is not None:
            typed[index] = Symbol(typed[index])
    for index in (8, 9):
        if typed[index] is not None:
            typed[index] = Timestamp(typed[index])
    if typed[11] is not None:
        typed[11] = UInt(typed[11])
    return typed


def build(
    *,
    value: Any = None,
    application_properties: dict[str, Any] | None = None,
    properties: dict[str, Any] | None = None,
) -> bytes:
    """A small message of the broker's own (management responses): properties, app props, value."""
    out = bytearray()
    if properties:
        props = [properties.get(name) for name in PROPERTY_NAMES]
        encode_into(out, Described(ULong(PROPERTIES), props))
    if application_properties is not None:
        encode_into(out, Described(ULong(APPLICATION_PROPERTIES), application_properties))
    encode_into(out, Described(ULong(AMQP_VALUE), value))
    return bytes(out)


def unbatch(message: Message) -> list[Message]:
    """The messages inside an Event Hubs batch message, each parsed."""
    return [parse(section) for section in message.data_sections()]


__all__ = [
    "BATCH_FORMAT", "Message", "Raw", "build", "encode", "encode_message", "parse", "skip",
    "unbatch",
]  # fmt: skip


def with_delivery_annotations(payload: bytes, annotations: dict[Any, Any]) -> bytes:
    """`payload` with a delivery-annotations section in its place: after the header, if any."""
    split = 0
    if payload[:1] == b"\x00":
        descriptor, value_pos = decode(payload, 1)
        if _code(descriptor) == HEADER:
            split = skip(payload, value_pos)
    section = bytearray()
    encode_into(section, Described(ULong(DELIVERY_ANNOTATIONS), annotations))
    return payload[:split] + bytes(section) + payload[split:]


def application_properties_size(message: Message) -> int:
    """The encoded size of the message's application-properties section (0 without one)."""
    data = message.raw_rest
    if data[:1] == b"\x00":
        descriptor, value_pos = decode(data, 1)
        if _code(descriptor) == APPLICATION_PROPERTIES:
            return skip(data, value_pos)
    return 0


def with_application_properties(message: Message, extra: dict[str, Any]) -> Message:
    """A copy whose application properties have `extra` added (dead-letter reason and description)."""
    data = message.raw_rest
    rest = data
    if data[:1] == b"\x00":
        descriptor, value_pos = decode(data, 1)
        if _code(descriptor) == APPLICATION_PROPERTIES:
            rest = data[skip(data, value_pos) :]
    merged = dict(message.application_properties or {})
    merged.update(extra)
    out = bytearray()
    encode_into(out, Described(ULong(APPLICATION_PROPERTIES), merged))
    return replace(message, application_properties=merged, raw_rest=bytes(out) + rest)
