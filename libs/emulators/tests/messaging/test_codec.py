"""The AMQP type system round-trips (OASIS AMQP 1.0 part 1) and the partition-key hash matches the
SDK's own resolver (azure-eventhub _buffered_producer/_partition_resolver.py)."""

from __future__ import annotations

import uuid

import pytest
from azure.eventhub._buffered_producer._partition_resolver import generate_hash_code

from eventflow_emulators.messaging.amqp.codec import (
    Array,
    Described,
    Symbol,
    Timestamp,
    UInt,
    ULong,
    decode,
    encode,
)
from eventflow_emulators.messaging.amqp.frames import TRANSFER, build_frame, parse_frame
from eventflow_emulators.messaging.amqp.message import build, encode_message, parse
from eventflow_emulators.messaging.eventhubs.hashing import hash_code, partition_for_key


@pytest.mark.parametrize(
    "value",
    [
        None, True, False, 0, 7, -7, 300, -(2**40), 2**40, 1.5, "text", "ü" * 300, b"\x00\x01",
        b"x" * 300, Symbol("amqp:accepted:list"), uuid.UUID(int=42), Timestamp(1_700_000_000_000),
        [], [1, "a", None], {"k": [1, 2], Symbol("s"): {"n": None}}, ["x" * 300],
    ],
)  # fmt: skip
def test_values_round_trip(value: object) -> None:
    decoded, end = decode(encode(value))
    assert decoded == value
    assert end == len(encode(value))


def test_typed_integers_keep_their_codes() -> None:
    assert encode(UInt(0)) == b"\x43"
    assert encode(UInt(5)) == b"\x52\x05"
    assert encode(ULong(0x10)) == b"\x53\x10"
    assert encode(Timestamp(1))[0] == 0x83


def test_arrays_decode_as_lists() -> None:
    assert decode(encode(Array([Symbol("a"), Symbol("b")])))[0] == ["a", "b"]
    assert decode(encode(Array(["0", "1"])))[0] == ["0", "1"]


def test_a_frame_round_trips_with_its_payload() -> None:
    raw = build_frame(TRANSFER, [UInt(1), UInt(2), b"tag", UInt(0), False, False], payload=b"xyz")
    frame = parse_frame(raw)
    assert (frame.code, frame.fields[:3], frame.payload) == (TRANSFER, [1, 2, b"tag"], b"xyz")
    assert len(frame.fields) == 11  # padded: the SDK's client needs every field


def test_a_message_keeps_its_sections_and_gains_annotations() -> None:
    payload = build(
        value={"a": 1}, application_properties={"k": "v"}, properties={"message_id": "m1"}
    )
    message = parse(payload)
    assert message.prop("message_id") == "m1"
    assert message.application_properties == {"k": "v"}
    again = parse(encode_message(message, delivery_count=2, annotations={Symbol("x"): 5}))
    assert again.annotations == {"x": 5}
    assert again.header is not None
    assert again.header[4] == 2
    assert again.body_value == {"a": 1}
    assert isinstance(Described(0, 1), tuple)


@pytest.mark.parametrize(
    # Fixed keys (the same in every test worker), as varied as random ones.
    "key",
    [
        "a",
        "hello world",
        "x" * 12,
        "x" * 25,
        *[uuid.UUID(int=n * 0x9E3779B97F4A7C15 + 7).hex for n in range(50)],
    ],
)
def test_the_partition_key_hash_is_the_sdks(key: str) -> None:
    assert hash_code(key) == generate_hash_code(key)
    assert 0 <= partition_for_key(key, 4) < 4
