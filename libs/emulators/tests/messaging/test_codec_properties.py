"""Every AMQP 1.0 type round-trips through the codec at its full range, in every message section
the broker handles, and bytes that are no AMQP value fail with `DecodeError` only (OASIS AMQP 1.0
part 1 "Types", part 3 "Messaging").

Round-tripping means the same value *and* the same AMQP type: the broker re-encodes what clients
sent (annotations it adds to, application properties it adds dead-letter details to), so a ulong
that came back as a long would be a different message, or none (a long cannot hold 2**64 - 1).
"""

from __future__ import annotations

import contextlib
import math
import struct
import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventflow_emulators.messaging.amqp import message as amqp_message
from eventflow_emulators.messaging.amqp.codec import (
    Array,
    Byte,
    Char,
    Decimal32,
    Decimal64,
    Decimal128,
    DecodeError,
    Described,
    EncodeError,
    Float,
    Int,
    Long,
    Short,
    Symbol,
    Timestamp,
    UByte,
    UInt,
    ULong,
    UShort,
    decode,
    decode_all,
    encode,
)

# One strategy per AMQP primitive type, each over its whole range.
PRIMITIVES: dict[str, st.SearchStrategy[Any]] = {
    "null": st.none(),
    "boolean": st.booleans(),
    "ubyte": st.integers(0, 2**8 - 1).map(UByte),
    "ushort": st.integers(0, 2**16 - 1).map(UShort),
    "uint": st.integers(0, 2**32 - 1).map(UInt),
    "ulong": st.integers(0, 2**64 - 1).map(ULong),
    "byte": st.integers(-(2**7), 2**7 - 1).map(Byte),
    "short": st.integers(-(2**15), 2**15 - 1).map(Short),
    "int": st.integers(-(2**31), 2**31 - 1).map(Int),
    "long": st.integers(-(2**63), 2**63 - 1).map(Long),
    "float": st.floats(width=32).map(Float),
    "double": st.floats(),
    "decimal32": st.binary(min_size=4, max_size=4).map(Decimal32),
    "decimal64": st.binary(min_size=8, max_size=8).map(Decimal64),
    "decimal128": st.binary(min_size=16, max_size=16).map(Decimal128),
    "char": st.integers(0, 0x10FFFF).map(lambda n: Char(chr(n))),
    "timestamp": st.integers(-(2**63), 2**63 - 1).map(Timestamp),
    "uuid": st.uuids(),
    "binary": st.binary(max_size=300),
    "string": st.text(max_size=300),
    "symbol": st.text(st.characters(max_codepoint=127), max_size=300).map(Symbol),
}
HASHABLE = st.one_of(*PRIMITIVES.values())


def arrays_of(element: st.SearchStrategy[Any]) -> st.SearchStrategy[Array]:
    return st.lists(element, min_size=1, max_size=8).map(Array)


def compounds(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    same_typed = st.sampled_from(list(PRIMITIVES.values())).flatmap(arrays_of)
    descriptors = st.one_of(st.integers(0, 2**64 - 1).map(ULong), PRIMITIVES["symbol"])
    return st.one_of(
        st.lists(children, max_size=8),
        st.dictionaries(HASHABLE, children, max_size=8),
        same_typed,
        # arrays of compound and described elements: one descriptor, one element type
        st.lists(st.lists(children, max_size=3), min_size=1, max_size=4).map(Array),
        st.lists(st.dictionaries(HASHABLE, children, max_size=3), min_size=1, max_size=4).map(
            Array
        ),
        st.tuples(descriptors, st.sampled_from(list(PRIMITIVES.values()))).flatmap(
            lambda pair: arrays_of(pair[1].map(lambda v, d=pair[0]: Described(d, v)))
        ),
        st.builds(Described, descriptors, children),
    )


VALUES = st.recursive(HASHABLE, compounds, max_leaves=20)


def same(a: Any, b: Any) -> bool:
    """Equal value and equal AMQP type, all the way down (NaN equals NaN bit for bit)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        pack = ">f" if isinstance(a, Float) else ">d"
        return struct.pack(pack, a) == struct.pack(pack, b) or (math.isnan(a) and math.isnan(b))
    if isinstance(a, Described):
        return same(a.descriptor, b.descriptor) and same(a.value, b.value)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return len(a) == len(b) and all(
            same(ka, kb) and same(va, vb)
            for (ka, va), (kb, vb) in zip(a.items(), b.items(), strict=True)
        )
    return bool(a == b)


@settings(max_examples=400, deadline=None)
@given(VALUES)
def test_every_type_round_trips_at_full_range(value: Any) -> None:
    encoded = encode(value)
    decoded, end = decode(encoded)
    assert end == len(encoded)
    assert same(decoded, value), (decoded, value)
    assert encode(decoded) == encoded


def sections(value: Any) -> list[Any]:
    """A message carrying `value` in every section that may carry it."""
    key = Symbol("x-opt-value")
    return [
        Described(ULong(amqp_message.HEADER), [True, UByte(4), UInt(60_000), False, UInt(0)]),
        Described(ULong(amqp_message.DELIVERY_ANNOTATIONS), {key: value}),
        Described(ULong(amqp_message.MESSAGE_ANNOTATIONS), {key: value}),
        Described(ULong(amqp_message.PROPERTIES), ["id", None, None, "subject"]),
        Described(ULong(amqp_message.APPLICATION_PROPERTIES), {"value": value}),
        Described(ULong(amqp_message.AMQP_VALUE), value),
        Described(ULong(amqp_message.FOOTER), {key: value}),
    ]


@settings(max_examples=200, deadline=None)
@given(VALUES)
def test_every_type_survives_the_broker_in_every_section(value: Any) -> None:
    payload = b"".join(encode(section) for section in sections(value))
    amqp_message.check(payload)
    parsed = amqp_message.parse(payload)
    dead = amqp_message.with_application_properties(parsed, {"DeadLetterReason": "r"})
    delivered = amqp_message.encode_message(
        dead, delivery_count=3, annotations={Symbol("x-opt-sequence-number"): Long(7)}, ttl=1000
    )
    out = {section.descriptor: section.value for section in decode_all(delivered)}
    key = "x-opt-value"
    # Delivery annotations are for one hop (part 3.2.1): the broker does not pass them on.
    assert amqp_message.DELIVERY_ANNOTATIONS not in out
    assert same(out[amqp_message.MESSAGE_ANNOTATIONS][Symbol(key)], value)
    assert out[amqp_message.MESSAGE_ANNOTATIONS]["x-opt-sequence-number"] == 7
    assert same(out[amqp_message.APPLICATION_PROPERTIES]["value"], value)
    assert out[amqp_message.APPLICATION_PROPERTIES]["DeadLetterReason"] == "r"
    assert same(out[amqp_message.AMQP_VALUE], value)
    assert same(out[amqp_message.FOOTER][Symbol(key)], value)
    assert out[amqp_message.HEADER][2:] == [1000, False, 3]


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=64))
def test_bytes_that_are_no_amqp_value_fail_with_a_decode_error_only(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode_all(data)


@settings(max_examples=300, deadline=None)
@given(VALUES, st.integers(0, 200))
def test_a_truncated_value_fails_with_a_decode_error(value: Any, cut: int) -> None:
    encoded = encode(value)
    if cut >= len(encoded):
        return
    with contextlib.suppress(DecodeError):
        decode_all(encoded[: len(encoded) - 1 - cut])


@pytest.mark.parametrize(
    "value",
    [
        UByte(256), UShort(-1), UInt(2**32), ULong(2**64), ULong(-1), Byte(128), Short(2**15),
        Int(2**31), Long(2**63), 2**63, -(2**63) - 1, Timestamp(2**63), Decimal32(b"\x00"),
        Char("ab"), Symbol("é"), object(), Array([UInt(1), "mixed"]),
    ],
)  # fmt: skip
def test_a_value_outside_its_type_is_an_encode_error(value: Any) -> None:
    with pytest.raises(EncodeError):
        encode(value)


def test_an_empty_array_keeps_its_element_type() -> None:
    ulongs = bytes([0xE0, 2, 0, 0x80])
    decoded, _ = decode(ulongs)
    assert decoded == []
    assert isinstance(decoded, Array)
    assert encode(decoded) == ulongs


def test_uuid_and_plain_ints_keep_their_usual_codes() -> None:
    assert encode(uuid.UUID(int=1))[0] == 0x98
    assert encode(5)[0] == 0x54
    assert encode(2**40)[0] == 0x81
