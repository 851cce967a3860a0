"""The AMQP 1.0 type system (OASIS AMQP 1.0 part 1, "Types"): Python values <-> encoded bytes.

Decoding gives plain Python values: `Symbol` for symbols (a `str`, so map look-ups by plain `str`
work), `str`, `bytes`, `int` (`Timestamp` for timestamps), `float`, `bool`, `None`, `uuid.UUID`,
`list` (lists and arrays), `dict` (maps) and `Described` for described types. Encoding needs the
exact AMQP type for some fields, so the wrappers below (`UInt`, `ULong`, `Symbol`, `Array`, ...)
pick it; a plain `int` becomes an int or a long, whichever fits.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Callable
from typing import Any, NamedTuple


class Symbol(str):
    """An AMQP symbol (ASCII name) as opposed to an AMQP string."""


class UByte(int):
    pass


class UShort(int):
    pass


class UInt(int):
    pass


class ULong(int):
    pass


class Timestamp(int):
    """Milliseconds since the Unix epoch."""


class Array(list[Any]):
    """An AMQP array: every element has the type of the first one."""


class Described(NamedTuple):
    descriptor: Any
    value: Any


class Raw(bytes):
    """Already-encoded bytes, inserted as they are (a message section kept from the wire)."""


class DecodeError(ValueError):
    pass


_pack_b = struct.Struct(">b").pack
_pack_h = struct.Struct(">h").pack
_pack_H = struct.Struct(">H").pack
_pack_i = struct.Struct(">i").pack
_pack_I = struct.Struct(">I").pack
_pack_q = struct.Struct(">q").pack
_pack_Q = struct.Struct(">Q").pack
_pack_d = struct.Struct(">d").pack
_pack_f = struct.Struct(">f").pack
_unpack_b = struct.Struct(">b").unpack_from
_unpack_h = struct.Struct(">h").unpack_from
_unpack_H = struct.Struct(">H").unpack_from
_unpack_i = struct.Struct(">i").unpack_from
_unpack_I = struct.Struct(">I").unpack_from
_unpack_q = struct.Struct(">q").unpack_from
_unpack_Q = struct.Struct(">Q").unpack_from
_unpack_d = struct.Struct(">d").unpack_from
_unpack_f = struct.Struct(">f").unpack_from


def encode(value: Any) -> bytes:
    out = bytearray()
    encode_into(out, value)
    return bytes(out)


def encode_into(out: bytearray, value: Any) -> None:  # noqa: PLR0912 - a branch per AMQP type
    if value is None:
        out.append(0x40)
    elif value is True:
        out.append(0x41)
    elif value is False:
        out.append(0x42)
    elif isinstance(value, Raw):
        out += value
    elif isinstance(value, Symbol):
        data = value.encode("ascii")
        _variable(out, 0xA3, 0xB3, data)
    elif isinstance(value, str):
        _variable(out, 0xA1, 0xB1, value.encode("utf-8"))
    elif isinstance(value, (bytes, bytearray, memoryview)):
        _variable(out, 0xA0, 0xB0, bytes(value))
    elif isinstance(value, int):
        _encode_int(out, value)
    elif isinstance(value, float):
        out.append(0x82)
        out += _pack_d(value)
    elif isinstance(value, uuid.UUID):
        out.append(0x98)
        out += value.bytes
    elif isinstance(value, Described):
        out.append(0x00)
        encode_into(out, value.descriptor)
        encode_into(out, value.value)
    elif isinstance(value, Array):
        _encode_array(out, value)
    elif isinstance(value, (list, tuple)):
        _encode_list(out, value)
    elif isinstance(value, dict):
        _encode_map(out, value)
    else:
        raise TypeError(f"cannot encode {type(value).__name__} as AMQP")


def _variable(out: bytearray, small: int, large: int, data: bytes) -> None:
    if len(data) < 256:
        out.append(small)
        out.append(len(data))
    else:
        out.append(large)
        out += _pack_I(len(data))
    out += data


def _unsigned(out: bytearray, value: int, codes: tuple[int, int, int], pack: Any) -> None:
    """uint / ulong: the zero code, the one-byte code, or the full width."""
    if value == 0:
        out.append(codes[0])
    elif value < 256:
        out.append(codes[1])
        out.append(value)
    else:
        out.append(codes[2])
        out += pack(value)


def _encode_int(out: bytearray, value: int) -> None:
    if isinstance(value, ULong):
        _unsigned(out, value, (0x44, 0x53, 0x80), _pack_Q)
    elif isinstance(value, UInt):
        _unsigned(out, value, (0x43, 0x52, 0x70), _pack_I)
    elif isinstance(value, Timestamp):
        out.append(0x83)
        out += _pack_q(value)
    elif isinstance(value, UByte):
        out.append(0x50)
        out.append(value)
    elif isinstance(value, UShort):
        out.append(0x60)
        out += _pack_H(value)
    elif -128 <= value <= 127:
        out.append(0x54)
        out += _pack_b(value)
    elif -(2**31) <= value < 2**31:
        out.append(0x71)
        out += _pack_i(value)
    else:
        out.append(0x81)
        out += _pack_q(value)


def _encode_list(out: bytearray, items: list[Any] | tuple[Any, ...]) -> None:
    if not items:
        out.append(0x45)
        return
    body = bytearray()
    for item in items:
        encode_into(body, item)
    if len(body) + 1 < 256 and len(items) < 256:
        out.append(0xC0)
        out.append(len(body) + 1)
        out.append(len(items))
    else:
        out.append(0xD0)
        out += _pack_I(len(body) + 4)
        out += _pack_I(len(items))
    out += body


def _encode_map(out: bytearray, mapping: dict[Any, Any]) -> None:
    body = bytearray()
    for key, item in mapping.items():
        encode_into(body, key)
        encode_into(body, item)
    count = 2 * len(mapping)
    if len(body) + 1 < 256 and count < 256:
        out.append(0xC1)
        out.append(len(body) + 1)
        out.append(count)
    else:
        out.append(0xD1)
        out += _pack_I(len(body) + 4)
        out += _pack_I(count)
    out += body


def _array_element(value: Any) -> tuple[int, Callable[[bytearray, Any], None]]:  # noqa: PLR0911
    """The constructor byte and the constructor-less writer for an array's elements."""
    if isinstance(value, Symbol):
        return 0xB3, lambda out, v: _raw_var32(out, v.encode("ascii"))
    if isinstance(value, str):
        return 0xB1, lambda out, v: _raw_var32(out, v.encode("utf-8"))
    if isinstance(value, (bytes, bytearray)):
        return 0xB0, lambda out, v: _raw_var32(out, bytes(v))
    if isinstance(value, uuid.UUID):
        return 0x98, lambda out, v: out.extend(v.bytes)
    if isinstance(value, Timestamp):
        return 0x83, lambda out, v: out.extend(_pack_q(v))
    if isinstance(value, (UInt,)):
        return 0x70, lambda out, v: out.extend(_pack_I(v))
    if isinstance(value, int) and not isinstance(value, bool):
        return 0x81, lambda out, v: out.extend(_pack_q(v))
    raise TypeError(f"cannot encode an array of {type(value).__name__}")


def _raw_var32(out: bytearray, data: bytes) -> None:
    out += _pack_I(len(data))
    out += data


def _encode_array(out: bytearray, items: Array) -> None:
    if not items:
        # An empty array still needs an element type; symbols are what the services send.
        out += b"\xe0\x02\x00\xb3"
        return
    constructor, write = _array_element(items[0])
    body = bytearray()
    for item in items:
        write(body, item)
    out.append(0xF0)
    out += _pack_I(len(body) + 5)
    out += _pack_I(len(items))
    out.append(constructor)
    out += body


# --- decoding ----------------------------------------------------------------------------------


def decode(data: bytes | memoryview, pos: int = 0) -> tuple[Any, int]:
    """The value starting at `pos` and the position after it."""
    try:
        code = data[pos]
        return _DECODERS[code](data, pos + 1)
    except (IndexError, KeyError, struct.error) as error:
        raise DecodeError(f"malformed AMQP value at {pos}: {error!r}") from error


def decode_all(data: bytes | memoryview) -> list[Any]:
    values = []
    pos = 0
    while pos < len(data):
        value, pos = decode(data, pos)
        values.append(value)
    return values


def _value_of(code: int, data: bytes | memoryview, pos: int) -> tuple[Any, int]:
    return _DECODERS[code](data, pos)


def _described(data: bytes | memoryview, pos: int) -> tuple[Any, int]:
    descriptor, pos = decode(data, pos)
    value, pos = decode(data, pos)
    return Described(descriptor, value), pos


def _fixed(value: Any) -> Callable[[bytes | memoryview, int], tuple[Any, int]]:
    return lambda _data, pos: (value, pos)


def _var(width: int, convert: Callable[[bytes], Any]) -> Callable[..., tuple[Any, int]]:
    def read(data: bytes | memoryview, pos: int) -> tuple[Any, int]:
        if width == 1:
            size = data[pos]
            pos += 1
        else:
            (size,) = _unpack_I(data, pos)
            pos += 4
        end = pos + size
        if end > len(data):
            raise DecodeError("variable-width value runs past the end")
        return convert(bytes(data[pos:end])), end

    return read


def _compound(width: int, as_map: bool) -> Callable[..., tuple[Any, int]]:
    def read(data: bytes | memoryview, pos: int) -> tuple[Any, int]:
        if width == 1:
            count = data[pos + 1]
            pos += 2
        else:
            (count,) = _unpack_I(data, pos + 4)
            pos += 8
        items = []
        for _ in range(count):
            item, pos = decode(data, pos)
            items.append(item)
        if as_map:
            return dict(zip(items[::2], items[1::2], strict=True)), pos
        return items, pos

    return read


def _array(width: int) -> Callable[..., tuple[Any, int]]:
    def read(data: bytes | memoryview, pos: int) -> tuple[Any, int]:
        if width == 1:
            count = data[pos + 1]
            pos += 2
        else:
            (count,) = _unpack_I(data, pos + 4)
            pos += 8
        code = data[pos]
        pos += 1
        descriptor = None
        if code == 0x00:
            descriptor, pos = decode(data, pos)
            code = data[pos]
            pos += 1
        items = []
        for _ in range(count):
            item, pos = _value_of(code, data, pos)
            items.append(Described(descriptor, item) if descriptor is not None else item)
        return items, pos

    return read


def _struct(
    size: int, unpack: Callable[..., tuple[Any, ...]], wrap: Callable[[Any], Any] = int
) -> Any:
    return lambda data, pos: (wrap(unpack(data, pos)[0]), pos + size)


_DECODERS: dict[int, Callable[[bytes | memoryview, int], tuple[Any, int]]] = {
    0x00: _described,
    0x40: _fixed(None),
    0x41: _fixed(True),
    0x42: _fixed(False),
    0x56: lambda data, pos: (data[pos] != 0, pos + 1),
    0x50: lambda data, pos: (data[pos], pos + 1),
    0x51: _struct(1, _unpack_b),
    0x60: _struct(2, _unpack_H),
    0x61: _struct(2, _unpack_h),
    0x43: _fixed(0),
    0x52: lambda data, pos: (data[pos], pos + 1),
    0x70: _struct(4, _unpack_I),
    0x71: _struct(4, _unpack_i),
    0x54: _struct(1, _unpack_b),
    0x44: _fixed(0),
    0x53: lambda data, pos: (data[pos], pos + 1),
    0x80: _struct(8, _unpack_Q),
    0x81: _struct(8, _unpack_q),
    0x55: _struct(1, _unpack_b),
    0x83: _struct(8, _unpack_q, Timestamp),
    0x72: _struct(4, _unpack_f, float),
    0x82: _struct(8, _unpack_d, float),
    0x73: _struct(4, _unpack_I, chr),
    0x98: lambda data, pos: (uuid.UUID(bytes=bytes(data[pos : pos + 16])), pos + 16),
    0xA0: _var(1, bytes),
    0xB0: _var(4, bytes),
    0xA1: _var(1, lambda b: b.decode("utf-8")),
    0xB1: _var(4, lambda b: b.decode("utf-8")),
    0xA3: _var(1, lambda b: Symbol(b.decode("ascii"))),
    0xB3: _var(4, lambda b: Symbol(b.decode("ascii"))),
    0x45: lambda _data, pos: ([], pos),
    0xC0: _compound(1, as_map=False),
    0xD0: _compound(4, as_map=False),
    0xC1: _compound(1, as_map=True),
    0xD1: _compound(4, as_map=True),
    0xE0: _array(1),
    0xF0: _array(4),
    0x74: lambda data, pos: (bytes(data[pos : pos + 4]), pos + 4),  # decimal32, kept opaque
    0x84: lambda data, pos: (bytes(data[pos : pos + 8]), pos + 8),  # decimal64
    0x94: lambda data, pos: (bytes(data[pos : pos + 16]), pos + 16),  # decimal128
}


def skip(data: bytes | memoryview, pos: int) -> int:
    """The position after the value at `pos`, without building it where the width says so."""
    code = data[pos]
    if code in (0xA0, 0xA1, 0xA3, 0xC0, 0xC1, 0xE0):
        return pos + 2 + data[pos + 1]
    if code in (0xB0, 0xB1, 0xB3, 0xD0, 0xD1, 0xF0):
        size: int = _unpack_I(data, pos + 1)[0]
        return pos + 5 + size
    end: int = decode(data, pos)[1]
    return end
