"""The AMQP 1.0 type system (OASIS AMQP 1.0 part 1, "Types"): Python values <-> encoded bytes.

Every AMQP type decodes to a value that encodes back to the same type, at its full range: the
broker re-encodes what clients sent (annotations, application properties, batches), so a value
must never change its type on the way through. Decoding gives `UByte`, `UShort`, `UInt`,
`ULong`, `Byte`, `Short`, `Int`, `Long` and `Timestamp` (all `int`), `Float` (32-bit) and plain
`float` (64-bit), `Decimal32`/`Decimal64`/`Decimal128` (the IEEE 754 bytes, kept opaque), `Char`
and `str`, `Symbol` (a `str`, so map look-ups by plain `str` work), `bytes`, `bool`, `None`,
`uuid.UUID`, `list`, `dict`, `Array` (which remembers its element constructor) and `Described`.
Encoding takes the same values; a plain `int` becomes an int or a long, whichever fits. A value
outside its type's range, or of no AMQP type, raises `EncodeError`; malformed bytes raise
`DecodeError`: both are `ValueError`s, so the caller can refuse that one operation.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple


class Symbol(str):
    """An AMQP symbol (ASCII name) as opposed to an AMQP string."""


class Char(str):
    """An AMQP char: one UTF-32 code point."""


class UByte(int):
    pass


class UShort(int):
    pass


class UInt(int):
    pass


class ULong(int):
    pass


class Byte(int):
    pass


class Short(int):
    pass


class Int(int):
    pass


class Long(int):
    pass


class Timestamp(int):
    """Milliseconds since the Unix epoch."""


class Float(float):
    """An AMQP float (IEEE 754 32-bit); a plain `float` is an AMQP double."""


class Decimal32(bytes):
    """An AMQP decimal32: its 4 IEEE 754-2008 bytes, kept as they are."""


class Decimal64(bytes):
    """An AMQP decimal64: its 8 bytes."""


class Decimal128(bytes):
    """An AMQP decimal128: its 16 bytes."""


class Array(list[Any]):
    """An AMQP array: every element has one type. `constructor` is the element constructor as
    received (with its descriptor, for described elements); an empty array needs it to keep
    its type, and it defaults to symbol, what the services send."""

    def __init__(self, items: Iterable[Any] = (), constructor: bytes | None = None) -> None:
        super().__init__(items)
        self.constructor = constructor


class Described(NamedTuple):
    descriptor: Any
    value: Any


class Raw(bytes):
    """Already-encoded bytes, inserted as they are (a message section kept from the wire)."""


class DecodeError(ValueError):
    """Bytes that are not a well-formed AMQP value."""


class EncodeError(ValueError):
    """A value outside its AMQP type's range, or of no AMQP type."""


_S = struct.Struct
_pack_b, _pack_h, _pack_i, _pack_q = _S(">b").pack, _S(">h").pack, _S(">i").pack, _S(">q").pack
_pack_B, _pack_H, _pack_I, _pack_Q = _S(">B").pack, _S(">H").pack, _S(">I").pack, _S(">Q").pack
_pack_f, _pack_d = _S(">f").pack, _S(">d").pack
_unpack_b, _unpack_h, _unpack_i = _S(">b").unpack_from, _S(">h").unpack_from, _S(">i").unpack_from
_unpack_q, _unpack_H, _unpack_I = _S(">q").unpack_from, _S(">H").unpack_from, _S(">I").unpack_from
_unpack_Q, _unpack_f, _unpack_d = _S(">Q").unpack_from, _S(">f").unpack_from, _S(">d").unpack_from


def encode(value: Any) -> bytes:
    out = bytearray()
    encode_into(out, value)
    return bytes(out)


def encode_into(out: bytearray, value: Any) -> None:
    """Append `value`'s encoding to `out`; `EncodeError` when it has no AMQP encoding."""
    try:
        _encode(out, value)
    except (struct.error, OverflowError, UnicodeEncodeError) as error:
        raise EncodeError(f"cannot encode {value!r:.80} as AMQP: {error}") from error


def _encode(out: bytearray, value: Any) -> None:  # noqa: PLR0912 - a branch per AMQP type
    if value is None:
        out.append(0x40)
    elif value is True:
        out.append(0x41)
    elif value is False:
        out.append(0x42)
    elif isinstance(value, Raw):
        out += value
    elif isinstance(value, Symbol):
        _variable(out, 0xA3, 0xB3, value.encode("ascii"))
    elif isinstance(value, Char):
        out.append(0x73)
        out += _pack_I(_code_point(value))
    elif isinstance(value, str):
        _variable(out, 0xA1, 0xB1, value.encode("utf-8"))
    elif isinstance(value, (Decimal32, Decimal64, Decimal128)):
        out.append(_DECIMAL_CODES[type(value)])
        out += _decimal_bytes(value)
    elif isinstance(value, (bytes, bytearray, memoryview)):
        _variable(out, 0xA0, 0xB0, bytes(value))
    elif isinstance(value, int):
        _encode_int(out, value)
    elif isinstance(value, Float):
        out.append(0x72)
        out += _pack_f(value)
    elif isinstance(value, float):
        out.append(0x82)
        out += _pack_d(value)
    elif isinstance(value, uuid.UUID):
        out.append(0x98)
        out += value.bytes
    elif isinstance(value, Described):
        out.append(0x00)
        _encode(out, value.descriptor)
        _encode(out, value.value)
    elif isinstance(value, Array):
        _encode_array(out, value)
    elif isinstance(value, (list, tuple)):
        _encode_list(out, value)
    elif isinstance(value, dict):
        _encode_map(out, value)
    else:
        raise EncodeError(f"cannot encode {type(value).__name__} as AMQP")


_DECIMAL_CODES = {Decimal32: 0x74, Decimal64: 0x84, Decimal128: 0x94}
_DECIMAL_WIDTHS = {Decimal32: 4, Decimal64: 8, Decimal128: 16}


def _decimal_bytes(value: bytes) -> bytes:
    width = _DECIMAL_WIDTHS[type(value)]
    if len(value) != width:
        raise EncodeError(f"a {type(value).__name__} is {width} bytes, not {len(value)}")
    return bytes(value)


def _code_point(value: str) -> int:
    if len(value) != 1:
        raise EncodeError(f"a char is one code point, not {len(value)}")
    return ord(value)


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
    elif 0 < value < 256:
        out.append(codes[1])
        out.append(value)
    else:
        out.append(codes[2])
        out += pack(value)


def _signed(out: bytearray, value: int, codes: tuple[int, int], pack: Any) -> None:
    """int / long: the one-byte code or the full width."""
    if -128 <= value <= 127:
        out.append(codes[0])
        out += _pack_b(value)
    else:
        out.append(codes[1])
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
        out += _pack_B(value)
    elif isinstance(value, UShort):
        out.append(0x60)
        out += _pack_H(value)
    elif isinstance(value, Byte):
        out.append(0x51)
        out += _pack_b(value)
    elif isinstance(value, Short):
        out.append(0x61)
        out += _pack_h(value)
    elif isinstance(value, Int):
        _signed(out, value, (0x54, 0x71), _pack_i)
    elif isinstance(value, Long):
        _signed(out, value, (0x55, 0x81), _pack_q)
    elif -(2**31) <= value < 2**31:
        _signed(out, value, (0x54, 0x71), _pack_i)
    else:
        _signed(out, value, (0x55, 0x81), _pack_q)


def _encode_list(out: bytearray, items: list[Any] | tuple[Any, ...]) -> None:
    if not items:
        out.append(0x45)
        return
    body = bytearray()
    for item in items:
        _encode(body, item)
    _compound(out, 0xC0, 0xD0, body, len(items))


def _encode_map(out: bytearray, mapping: dict[Any, Any]) -> None:
    body = bytearray()
    for key, item in mapping.items():
        _encode(body, key)
        _encode(body, item)
    _compound(out, 0xC1, 0xD1, body, 2 * len(mapping))


def _compound(out: bytearray, small: int, large: int, body: bytes | bytearray, count: int) -> None:
    if len(body) + 1 < 256 and count < 256:
        out.append(small)
        out.append(len(body) + 1)
        out.append(count)
    else:
        out.append(large)
        out += _pack_I(len(body) + 4)
        out += _pack_I(count)
    out += body


# An array's elements share one constructor, so each is written at its type's one full width.
_FIXED_WIDE: list[tuple[type, int, Callable[[Any], bytes]]] = [
    (ULong, 0x80, _pack_Q), (UInt, 0x70, _pack_I), (Timestamp, 0x83, _pack_q),
    (UByte, 0x50, _pack_B), (UShort, 0x60, _pack_H), (Byte, 0x51, _pack_b),
    (Short, 0x61, _pack_h), (Int, 0x71, _pack_i), (Long, 0x81, _pack_q),
    (Float, 0x72, _pack_f), (Char, 0x73, lambda v: _pack_I(_code_point(v))),
    (Decimal32, 0x74, _decimal_bytes), (Decimal64, 0x84, _decimal_bytes),
    (Decimal128, 0x94, _decimal_bytes), (Symbol, 0xB3, lambda v: _var32(v.encode("ascii"))),
]  # fmt: skip


def _var32(data: bytes) -> bytes:
    return _pack_I(len(data)) + data


def _element(value: Any) -> tuple[bytes, bytes]:  # noqa: PLR0911 - a branch per AMQP type
    """(constructor, constructor-less value) of an array element, at its widest encoding."""
    if value is None:
        return b"\x40", b""
    if isinstance(value, bool):
        return b"\x56", b"\x01" if value else b"\x00"
    for kind, code, write in _FIXED_WIDE:
        if isinstance(value, kind):
            return bytes([code]), write(value)
    if isinstance(value, str):
        return b"\xb1", _var32(value.encode("utf-8"))
    if isinstance(value, (bytes, bytearray)):
        return b"\xb0", _var32(bytes(value))
    if isinstance(value, int):
        return (b"\x71", _pack_i(value)) if -(2**31) <= value < 2**31 else (b"\x81", _pack_q(value))
    if isinstance(value, float):
        return b"\x82", _pack_d(value)
    if isinstance(value, uuid.UUID):
        return b"\x98", value.bytes
    if isinstance(value, Described):
        constructor, body = _element(value.value)
        return b"\x00" + encode(value.descriptor) + constructor, body
    if isinstance(value, (list, tuple, dict)):
        wide = bytearray()
        _encode(wide, value)
        if wide[0] in (0x45, 0xC0, 0xC1, 0xE0):  # re-frame the short forms at 32 bits
            return _widen(bytes(wide))
        return bytes(wide[:1]), bytes(wide[1:])
    raise EncodeError(f"cannot encode an array of {type(value).__name__}")


def _widen(short: bytes) -> tuple[bytes, bytes]:
    code = short[0]
    if code == 0x45:
        return b"\xd0", _pack_I(4) + _pack_I(0)
    count, body = short[2], short[3:]
    wide = {0xC0: 0xD0, 0xC1: 0xD1, 0xE0: 0xF0}[code]
    return bytes([wide]), _pack_I(len(body) + 4) + _pack_I(count) + body


def _encode_array(out: bytearray, items: Array) -> None:
    constructor = items.constructor or b"\xb3"
    body = bytearray()
    if items:
        constructor, _ = _element(items[0])
        for item in items:
            element_constructor, value = _element(item)
            if element_constructor != constructor:
                raise EncodeError("the elements of an AMQP array must share one type")
            body += value
    if len(body) + 1 + len(constructor) < 256 and len(items) < 256:
        out.append(0xE0)
        out.append(len(body) + 1 + len(constructor))
        out.append(len(items))
    else:
        out.append(0xF0)
        out += _pack_I(len(body) + 4 + len(constructor))
        out += _pack_I(len(items))
    out += constructor
    out += body


# --- decoding ----------------------------------------------------------------------------------


def decode(data: bytes | memoryview, pos: int = 0) -> tuple[Any, int]:
    """The value starting at `pos` and the position after it; `DecodeError` when malformed."""
    try:
        code = data[pos]
        return _DECODERS[code](data, pos + 1)
    except KeyError:
        raise DecodeError(f"unknown AMQP constructor 0x{data[pos]:02x} at {pos}") from None
    except (IndexError, OverflowError, TypeError, struct.error, ValueError) as error:
        if isinstance(error, DecodeError):
            raise
        raise DecodeError(f"malformed AMQP value at {pos}: {error}") from error


def decode_all(data: bytes | memoryview) -> list[Any]:
    values = []
    pos = 0
    while pos < len(data):
        value, pos = decode(data, pos)
        values.append(value)
    return values


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


def _sized(data: bytes | memoryview, pos: int, width: int) -> tuple[int, int, int]:
    """(count, position of the first item, end) of a compound or array value."""
    if width == 1:
        size, count, first = data[pos], data[pos + 1], pos + 2
        end = pos + 1 + size
    else:
        size, count, first = _unpack_I(data, pos)[0], _unpack_I(data, pos + 4)[0], pos + 8
        end = pos + 4 + size
    if end > len(data) or first > end:
        raise DecodeError("compound value runs past the end")
    return count, first, end


def _compound_reader(width: int, as_map: bool) -> Callable[..., tuple[Any, int]]:
    def read(data: bytes | memoryview, pos: int) -> tuple[Any, int]:
        count, pos, end = _sized(data, pos, width)
        if as_map and count % 2:
            raise DecodeError("a map has an even number of items")
        items = []
        for _ in range(count):
            item, pos = decode(data, pos)
            items.append(item)
        if pos != end:
            raise DecodeError("compound value size does not match its items")
        if as_map:
            return dict(zip(items[::2], items[1::2], strict=True)), pos
        return items, pos

    return read


def _array(width: int) -> Callable[..., tuple[Any, int]]:
    def read(data: bytes | memoryview, pos: int) -> tuple[Any, int]:
        count, pos, end = _sized(data, pos, width)
        start = pos
        code = data[pos]
        pos += 1
        descriptor = None
        if code == 0x00:
            descriptor, pos = decode(data, pos)
            code = data[pos]
            pos += 1
        if code not in _DECODERS or code == 0x00:
            raise DecodeError(f"unknown array element constructor 0x{code:02x}")
        constructor = bytes(data[start:pos])
        items = []
        for _ in range(count):
            item, pos = _DECODERS[code](data, pos)
            items.append(Described(descriptor, item) if descriptor is not None else item)
        if pos != end:
            raise DecodeError("array size does not match its items")
        return Array(items, constructor), pos

    return read


def _struct(size: int, unpack: Callable[..., tuple[Any, ...]], wrap: Callable[[Any], Any]) -> Any:
    return lambda data, pos: (wrap(unpack(data, pos)[0]), pos + size)


def _byte(wrap: Callable[[int], Any]) -> Any:
    return lambda data, pos: (wrap(data[pos]), pos + 1)


def _opaque(wrap: Callable[[bytes], Any], size: int) -> Any:
    def read(data: bytes | memoryview, pos: int) -> tuple[Any, int]:
        if pos + size > len(data):
            raise DecodeError("fixed-width value runs past the end")
        return wrap(bytes(data[pos : pos + size])), pos + size

    return read


def _char(code_point: int) -> Char:
    return Char(chr(code_point))


_DECODERS: dict[int, Callable[[bytes | memoryview, int], tuple[Any, int]]] = {
    0x00: _described,
    0x40: _fixed(None),
    0x41: _fixed(True),
    0x42: _fixed(False),
    0x56: lambda data, pos: (data[pos] != 0, pos + 1),
    0x50: _byte(UByte),
    0x51: _struct(1, _unpack_b, Byte),
    0x60: _struct(2, _unpack_H, UShort),
    0x61: _struct(2, _unpack_h, Short),
    0x43: _fixed(UInt(0)),
    0x52: _byte(UInt),
    0x70: _struct(4, _unpack_I, UInt),
    0x54: _struct(1, _unpack_b, Int),
    0x71: _struct(4, _unpack_i, Int),
    0x44: _fixed(ULong(0)),
    0x53: _byte(ULong),
    0x80: _struct(8, _unpack_Q, ULong),
    0x55: _struct(1, _unpack_b, Long),
    0x81: _struct(8, _unpack_q, Long),
    0x83: _struct(8, _unpack_q, Timestamp),
    0x72: _struct(4, _unpack_f, Float),
    0x82: _struct(8, _unpack_d, float),
    0x73: _struct(4, _unpack_I, _char),
    0x98: _opaque(lambda b: uuid.UUID(bytes=b), 16),
    0xA0: _var(1, bytes),
    0xB0: _var(4, bytes),
    0xA1: _var(1, lambda b: b.decode("utf-8")),
    0xB1: _var(4, lambda b: b.decode("utf-8")),
    0xA3: _var(1, lambda b: Symbol(b.decode("ascii"))),
    0xB3: _var(4, lambda b: Symbol(b.decode("ascii"))),
    0x45: lambda _data, pos: ([], pos),
    0xC0: _compound_reader(1, as_map=False),
    0xD0: _compound_reader(4, as_map=False),
    0xC1: _compound_reader(1, as_map=True),
    0xD1: _compound_reader(4, as_map=True),
    0xE0: _array(1),
    0xF0: _array(4),
    0x74: _opaque(Decimal32, 4),
    0x84: _opaque(Decimal64, 8),
    0x94: _opaque(Decimal128, 16),
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
