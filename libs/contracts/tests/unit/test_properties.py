"""Property tests: round trips, total upcasting, and decode's single error type."""

import contextlib
import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from eventflow_contracts import (
    PUBLISHED,
    CloudEvent,
    ContractError,
    OrderCreatedV1,
    OrderCreatedV2,
    decode_event,
    encode_event,
    is_current,
    read_routing,
    to_json_dict,
    upcast,
)
from eventflow_contracts.testing import (
    any_event_data,
    current_event_data,
    envelopes,
    order_created_v1,
)


@given(envelopes(current_event_data))
def test_encode_then_decode_returns_the_same_event(event: CloudEvent[Any]) -> None:
    assert decode_event(encode_event(event)) == event


@given(envelopes(any_event_data))
def test_any_published_version_decodes_to_a_current_version(event: CloudEvent[Any]) -> None:
    decoded = decode_event(encode_event(event))
    assert is_current(type(decoded.data))
    assert decoded.data.model_dump() == upcast(event.data).model_dump()
    assert (decoded.id, decoded.sequence, decoded.partitionkey) == (
        event.id,
        event.sequence,
        event.partitionkey,
    )


@given(envelopes(any_event_data))
def test_routing_agrees_with_the_envelope(event: CloudEvent[Any]) -> None:
    assert read_routing(encode_event(event)) == event.routing


@given(order_created_v1)
def test_upcasting_is_total_on_valid_v1(v1: OrderCreatedV1) -> None:
    v2 = upcast(v1)
    assert isinstance(v2, OrderCreatedV2)
    assert v2.lines == v1.lines
    assert v2.currency == (v1.currency or "EUR")
    assert OrderCreatedV2.model_validate(v2.model_dump(mode="json")) == v2


@given(st.binary(max_size=2048))
def test_decode_raises_only_contract_errors_on_arbitrary_bytes(raw: bytes) -> None:
    with contextlib.suppress(ContractError):
        decode_event(raw)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=20,
)


@given(envelopes(any_event_data), st.data())
def test_decode_raises_only_contract_errors_on_mutated_events(
    event: CloudEvent[Any], data: st.DataObject
) -> None:
    document = to_json_dict(event)
    target = data.draw(st.sampled_from([document, document["data"]]))
    key = data.draw(st.sampled_from(sorted(target)) | st.text(max_size=10))
    if data.draw(st.booleans()):
        target.pop(key, None)
    else:
        target[key] = data.draw(json_values)
    with contextlib.suppress(ContractError):
        decode_event(json.dumps(document).encode())


@given(st.sampled_from(PUBLISHED), json_values)
def test_decode_raises_only_contract_errors_on_arbitrary_data(model: Any, value: Any) -> None:
    data = value if isinstance(value, dict) else {"order_id": "o", "x": value}
    document = {
        "specversion": "1.0", "id": "e", "source": "/s", "type": model.event_type(),
        "subject": "o", "time": "2026-01-01T00:00:00Z", "partitionkey": "o",
        "sequence": "1", "data": data,
    }  # fmt: skip
    with contextlib.suppress(ContractError):
        decode_event(json.dumps(document).encode())
