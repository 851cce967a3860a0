"""AMQP 1.0 frames and performatives (OASIS AMQP 1.0 part 2, "Transport"; part 5, "Security").

A frame is 4 bytes of size, 1 of data offset (in 4-byte words), 1 of type (0 AMQP, 1 SASL), 2 of
channel, then a described performative list and, for transfers, the payload after it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from .codec import Described, Symbol, ULong, decode, encode_into

AMQP_HEADER = b"AMQP\x00\x01\x00\x00"
SASL_HEADER = b"AMQP\x03\x01\x00\x00"

FRAME_AMQP = 0
FRAME_SASL = 1

OPEN = 0x10
BEGIN = 0x11
ATTACH = 0x12
FLOW = 0x13
TRANSFER = 0x14
DISPOSITION = 0x15
DETACH = 0x16
END = 0x17
CLOSE = 0x18
ERROR = 0x1D
RECEIVED = 0x23
ACCEPTED = 0x24
REJECTED = 0x25
RELEASED = 0x26
MODIFIED = 0x27
SOURCE = 0x28
TARGET = 0x29
SASL_MECHANISMS = 0x40
SASL_INIT = 0x41
SASL_OUTCOME = 0x44

# How many fields each performative has: incoming lists are padded to this length so handlers
# index them without length checks (trailing nulls may be omitted on the wire).
FIELD_COUNTS = {
    OPEN: 10, BEGIN: 8, ATTACH: 14, FLOW: 11, TRANSFER: 11, DISPOSITION: 6, DETACH: 3,
    END: 1, CLOSE: 1, ERROR: 3, SOURCE: 11, TARGET: 7, SASL_INIT: 3, SASL_OUTCOME: 2,
    REJECTED: 1, MODIFIED: 3, RECEIVED: 2, ACCEPTED: 0, RELEASED: 0, SASL_MECHANISMS: 1,
}  # fmt: skip

_header = struct.Struct(">IBBH")


@dataclass(frozen=True, slots=True)
class Frame:
    kind: int
    channel: int
    code: int  # the performative's descriptor; -1 for an empty (heartbeat) frame
    fields: list[Any]
    payload: bytes = b""


def padded(fields: list[Any] | None, code: int) -> list[Any]:
    values = list(fields or [])
    want = FIELD_COUNTS.get(code, len(values))
    if len(values) < want:
        values.extend([None] * (want - len(values)))
    return values


def descriptor_code(descriptor: Any) -> int:
    """Performatives are sent with numeric descriptors; symbolic ones are accepted too."""
    if isinstance(descriptor, int):
        return descriptor & 0xFF
    return {"amqp:accepted:list": ACCEPTED, "amqp:rejected:list": REJECTED,
            "amqp:released:list": RELEASED, "amqp:modified:list": MODIFIED,
            "amqp:received:list": RECEIVED}.get(str(descriptor), -2)  # fmt: skip


def parse_frame(data: bytes) -> Frame:
    """One whole frame (size prefix included)."""
    size, doff, kind, channel = _header.unpack_from(data, 0)
    body_start = doff * 4
    if size == body_start:
        return Frame(kind, channel, -1, [])
    view = memoryview(data)
    performative, pos = decode(view, body_start)
    if not isinstance(performative, Described):
        raise ValueError("a frame body must start with a described performative")
    code = descriptor_code(performative.descriptor)
    payload = bytes(view[pos:size]) if pos < size else b""
    return Frame(kind, channel, code, padded(performative.value, code), payload)


def build_frame(
    code: int, fields: list[Any], *, channel: int = 0, kind: int = FRAME_AMQP, payload: bytes = b""
) -> bytes:
    # Every field is written, trailing nulls included: the SDKs' pure-Python AMQP client builds
    # its frame tuples from the decoded list and fails on a short one (azure-eventhub _pyamqp).
    fields = padded(fields, code)
    body = bytearray(8)
    encode_into(body, Described(ULong(code), fields))
    body += payload
    _header.pack_into(body, 0, len(body), 2, kind, channel)
    return bytes(body)


EMPTY_FRAME = _header.pack(8, 2, FRAME_AMQP, 0)


def error_fields(condition: str, description: str | None = None, info: Any = None) -> Described:
    return Described(ULong(ERROR), [Symbol(condition), description, info])
