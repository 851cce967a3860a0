from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import orjson
import pytest

from eventflow_contracts import (
    CONTENT_TYPE,
    DEFAULT_MAX_EVENT_BYTES,
    ContractError,
    ErrorReason,
    OrderCancelledV1,
    OrderCreatedV1,
    OrderCreatedV2,
    OrderItemAddedV1,
    OrderLine,
    OrderSubmittedV1,
    decode_event,
    encode_event,
    format_sequence,
    is_valid_traceparent,
    new_event,
    read_routing,
    to_json_dict,
)

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
LINE = OrderLine(sku="SKU-1", quantity=2, unit_price=Decimal("12.30"))


def created(order_id: str = "order-1") -> OrderCreatedV2:
    return OrderCreatedV2(
        order_id=order_id, customer_id="c-1", lines=(LINE,), currency="EUR", total=Decimal("24.60")
    )


def wire(**changes: Any) -> dict[str, Any]:
    """A valid encoded OrderCreated.v2 as a dict, with attributes changed or removed (None)."""
    document = to_json_dict(
        new_event(created(), source="/test", sequence=1, traceparent=TRACEPARENT)
    )
    for name, value in changes.items():
        if value is None:
            document.pop(name, None)
        else:
            document[name] = value
    return document


def reason_of(document: Any, **kwargs: Any) -> ErrorReason:
    raw = document if isinstance(document, bytes) else orjson.dumps(document)
    with pytest.raises(ContractError) as caught:
        decode_event(raw, **kwargs)
    return caught.value.reason


def test_encoded_event_is_a_structured_cloudevent_with_the_profile_extensions() -> None:
    event = new_event(
        created(), source="/eventflow/producer-api", sequence=7, traceparent=TRACEPARENT
    )
    document = orjson.loads(encode_event(event))
    assert document["specversion"] == "1.0"
    assert document["type"] == "eventflow.orders.OrderCreated.v2"
    assert document["subject"] == document["partitionkey"] == "order-1"
    assert document["sequence"] == "00000000000000000007"
    assert document["traceparent"] == TRACEPARENT
    assert document["datacontenttype"] == "application/json"
    assert document["dataschema"] == "urn:eventflow:schema:eventflow.orders.OrderCreated.v2"
    assert document["time"].endswith("Z")
    assert document["data"]["total"] == "24.60"
    assert document["data"]["lines"] == [{"sku": "SKU-1", "quantity": 2, "unit_price": "12.30"}]
    assert CONTENT_TYPE == "application/cloudevents+json"


@pytest.mark.parametrize(
    "data",
    [
        created(),
        OrderItemAddedV1(order_id="o", line=LINE),
        OrderSubmittedV1(order_id="o", currency="USD", total=Decimal("1.00"), line_count=1),
        OrderCancelledV1(order_id="o", reason="customer changed their mind"),
    ],
)
def test_every_current_event_round_trips(data: Any) -> None:
    event = new_event(data, source="/test", sequence=3)
    assert decode_event(encode_event(event)) == event


def test_sequence_strings_sort_like_numbers() -> None:
    numbers = [1, 9, 10, 99, 100, 12345678901234567890]
    assert sorted(numbers, key=format_sequence) == numbers


def test_time_with_an_offset_keeps_its_instant() -> None:
    moment = datetime(2026, 3, 1, 12, 0, tzinfo=timezone(timedelta(hours=5)))
    event = new_event(created(), source="/t", sequence=1, time=moment)
    decoded = decode_event(encode_event(event))
    assert decoded.time == moment
    assert decoded.time.tzinfo == UTC


def test_v1_reads_as_v2_with_default_currency_and_computed_total() -> None:
    v1 = OrderCreatedV1(order_id="order-1", customer_id="c-1", lines=(LINE, LINE))
    decoded = decode_event(encode_event(new_event(v1, source="/old-producer", sequence=1)))
    assert decoded.type == "eventflow.orders.OrderCreated.v2"
    assert decoded.data == OrderCreatedV2(
        order_id="order-1",
        customer_id="c-1",
        lines=(LINE, LINE),
        currency="EUR",
        total=Decimal("49.20"),
    )


def test_routing_reads_attributes_without_knowing_the_type() -> None:
    routing = read_routing(orjson.dumps(wire(type="other.system.Thing.v9", data={"x": 1})))
    assert routing.type == "other.system.Thing.v9"
    assert routing.partitionkey == "order-1"
    assert routing.sequence == 1
    assert routing.traceparent == TRACEPARENT


def test_unknown_extensions_are_ignored() -> None:
    assert decode_event(orjson.dumps(wire(comexampleextra="value"))).data == created()


def test_unknown_data_fields_are_ignored_by_tolerant_readers() -> None:
    document = wire()
    document["data"]["gift_wrap"] = True
    assert decode_event(orjson.dumps(document)).data == created()


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        (b"\xff\xfe not utf-8", ErrorReason.INVALID_JSON),
        (b'{"specversion": "1.0",', ErrorReason.INVALID_JSON),
        (b"", ErrorReason.INVALID_JSON),
        ([1, 2, 3], ErrorReason.NOT_A_CLOUDEVENT),
        ("a string", ErrorReason.NOT_A_CLOUDEVENT),
        (wire(specversion=None), ErrorReason.NOT_A_CLOUDEVENT),
        (wire(specversion="0.3"), ErrorReason.NOT_A_CLOUDEVENT),
        (wire(id=None), ErrorReason.NOT_A_CLOUDEVENT),
        (wire(id=42), ErrorReason.NOT_A_CLOUDEVENT),
        (wire(source=None), ErrorReason.NOT_A_CLOUDEVENT),
        (wire(type=None), ErrorReason.NOT_A_CLOUDEVENT),
        (wire(id=""), ErrorReason.INVALID_ENVELOPE),
        (wire(id="x" * 129), ErrorReason.INVALID_ENVELOPE),
        (wire(subject=None), ErrorReason.INVALID_ENVELOPE),
        (wire(subject="order-2"), ErrorReason.INVALID_ENVELOPE),
        (wire(partitionkey=None), ErrorReason.INVALID_ENVELOPE),
        (wire(partitionkey="order-2"), ErrorReason.INVALID_ENVELOPE),
        (wire(partitionkey=7), ErrorReason.INVALID_ENVELOPE),
        (wire(sequence=None), ErrorReason.INVALID_ENVELOPE),
        (wire(sequence=5), ErrorReason.INVALID_ENVELOPE),
        (wire(sequence="-1"), ErrorReason.INVALID_ENVELOPE),
        (wire(sequence="0"), ErrorReason.INVALID_ENVELOPE),
        (wire(sequence="1e3"), ErrorReason.INVALID_ENVELOPE),
        (wire(time=None), ErrorReason.INVALID_ENVELOPE),
        (wire(time="yesterday"), ErrorReason.INVALID_ENVELOPE),
        (wire(time="2026-01-01T00:00:00"), ErrorReason.INVALID_ENVELOPE),
        (wire(traceparent="00-abc"), ErrorReason.INVALID_ENVELOPE),
        (wire(traceparent=f"00-{'0' * 32}-00f067aa0ba902b7-01"), ErrorReason.INVALID_ENVELOPE),
        (wire(tracestate="k=v" * 200), ErrorReason.INVALID_ENVELOPE),
        (wire(datacontenttype="application/xml"), ErrorReason.INVALID_ENVELOPE),
        (wire(data_base64="AAAA"), ErrorReason.INVALID_ENVELOPE),
        (wire(data=None), ErrorReason.INVALID_ENVELOPE),
        (wire(data=[1]), ErrorReason.INVALID_ENVELOPE),
        (wire(type="eventflow.orders.OrderShipped.v1"), ErrorReason.UNKNOWN_TYPE),
        (wire(type="com.other.orders.OrderCreated.v1"), ErrorReason.UNKNOWN_TYPE),
        (wire(type="OrderCreated"), ErrorReason.UNKNOWN_TYPE),
        (wire(type="eventflow.orders.OrderCreated.v3"), ErrorReason.UNSUPPORTED_VERSION),
        (wire(type="eventflow.orders.OrderCreated.v0"), ErrorReason.UNSUPPORTED_VERSION),
        (wire(data={"order_id": "order-1"}), ErrorReason.INVALID_DATA),
    ],
)
def test_each_broken_input_has_its_own_reason(document: Any, reason: ErrorReason) -> None:
    assert reason_of(document) == reason


@pytest.mark.parametrize(
    "change",
    [
        {"total": "24.6"},
        {"total": 24.6},
        {"total": "99.00"},
        {"currency": None},
        {"currency": "eur"},
        {"lines": [{"sku": "bad sku", "quantity": 1, "unit_price": "1.00"}]},
        {"lines": [{"sku": "SKU-1", "quantity": 0, "unit_price": "1.00"}]},
        {"lines": [{"sku": "SKU-1", "quantity": "1", "unit_price": "1.00"}]},
        {"lines": [{"sku": "SKU-1", "quantity": 1, "unit_price": "1000000.01"}]},
    ],
)
def test_invalid_data_is_rejected_with_a_summary_that_omits_the_input(
    change: dict[str, Any],
) -> None:
    document = wire()
    document["data"].update(change)
    with pytest.raises(ContractError) as caught:
        decode_event(orjson.dumps(document))
    assert caught.value.reason == ErrorReason.INVALID_DATA
    assert "eventflow.orders.OrderCreated.v2" in caught.value.detail
    assert "bad sku" not in caught.value.detail


def test_invalid_data_summary_is_bounded() -> None:
    document = wire()
    document["data"]["lines"] = [{"sku": "?", "quantity": 0, "unit_price": "x"}] * 5
    with pytest.raises(ContractError, match="and 10 more"):
        decode_event(orjson.dumps(document))


def test_size_limit_applies_to_decode_and_encode() -> None:
    raw = encode_event(new_event(created(), source="/t", sequence=1))
    assert reason_of(raw, max_bytes=len(raw) - 1) == ErrorReason.TOO_LARGE
    assert decode_event(raw, max_bytes=len(raw)).data == created()
    assert reason_of(b" " * (DEFAULT_MAX_EVENT_BYTES + 1)) == ErrorReason.TOO_LARGE
    big = OrderCancelledV1(order_id="o", reason="r" * 500)
    with pytest.raises(ContractError) as caught:
        encode_event(new_event(big, source="/t", sequence=1), max_bytes=300)
    assert caught.value.reason == ErrorReason.TOO_LARGE


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sequence": 0},
        {"source": ""},
        {"event_id": "x" * 129},
        {"traceparent": "not-a-traceparent"},
        {"time": datetime(2026, 1, 1)},
    ],
)
def test_new_event_refuses_attributes_outside_the_profile(kwargs: dict[str, Any]) -> None:
    arguments: dict[str, Any] = {"source": "/t", "sequence": 1} | kwargs
    with pytest.raises(ContractError) as caught:
        new_event(created(), **arguments)
    assert caught.value.reason == ErrorReason.INVALID_ENVELOPE


def test_error_message_starts_with_the_reason() -> None:
    error = ContractError(ErrorReason.UNKNOWN_TYPE, "unknown event type 'x'")
    assert str(error) == "unknown-type: unknown event type 'x'"
    assert isinstance(error, ValueError)


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        (TRACEPARENT, True),
        ("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future", True),
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra", False),
        ("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", False),
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", False),
        ("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", False),
    ],
)
def test_traceparent_validation_follows_w3c_trace_context(value: str, valid: bool) -> None:
    assert is_valid_traceparent(value) is valid
