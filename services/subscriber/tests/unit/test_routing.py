from datetime import UTC, datetime

import orjson
import pytest

from eventflow_contracts import DEFAULT_MAX_EVENT_BYTES
from eventflow_contracts.lanes import belongs, session_id_for
from eventflow_subscriber.routing import UNROUTABLE_SESSION, Filtered, HubEvent, InboxMessage, route

from ..conftest import event_bytes  # type: ignore[import-not-found]

WHEN = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def at(body: bytes) -> HubEvent:
    return HubEvent(
        body=body, partition_id="2", offset="4096", sequence_number=17, enqueued_time=WHEN
    )


def routed(
    body: bytes,
    subscribed: set[str] | None = None,
    limit: int = DEFAULT_MAX_EVENT_BYTES,
    lanes: int = 0,
) -> InboxMessage | Filtered:
    return route(
        at(body), hub="orders", subscribed=subscribed, max_message_bytes=limit, lanes=lanes
    )


def test_with_lanes_an_event_goes_to_its_orders_lane() -> None:
    body = event_bytes("order-7", 3)
    message = routed(body, lanes=32)
    assert isinstance(message, InboxMessage)
    assert message.session_id == session_id_for("order-7", 32)
    assert message.session_id.startswith("lanes32-")
    assert message.message_id == orjson.loads(body)["id"]  # the message id stays the event id
    assert belongs("order-7", message.session_id)
    # every event of one order in the same lane; the lane check accepts them
    assert {routed(event_bytes("order-7", n), lanes=32).session_id for n in range(1, 6)} == {  # type: ignore[union-attr]
        message.session_id
    }


def test_with_lanes_an_unroutable_event_keeps_its_own_session() -> None:
    marker = routed(b"\x00 not json", lanes=32)
    assert isinstance(marker, InboxMessage)
    assert marker.is_marker
    assert marker.session_id == UNROUTABLE_SESSION


def test_a_valid_event_becomes_a_message_of_its_order_session_with_the_same_bytes() -> None:
    """Without lanes (0): one session per order, the order id."""
    body = event_bytes("order-7", 3)
    message = routed(body)
    assert isinstance(message, InboxMessage)
    event = orjson.loads(body)
    assert message.body is body
    assert (message.message_id, message.session_id, message.subject) == (
        event["id"],
        "order-7",
        event["type"],
    )
    assert message.content_type == "application/cloudevents+json"
    assert message.properties == {
        "type": event["type"],
        "specversion": "1.0",
        "source": "/test",
        "sequence": 3,
    }
    assert not message.is_marker


def test_types_the_consumer_does_not_subscribe_to_are_filtered() -> None:
    body = event_bytes("order-7", 3)
    assert routed(body, {"eventflow.orders.OrderCancelled.v1"}) == Filtered(
        "eventflow.orders.OrderItemAdded.v1"
    )
    assert isinstance(routed(body, {"eventflow.orders.OrderItemAdded.v1"}), InboxMessage)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\x00 not json", "invalid-json"),
        (b"[1, 2]", "not-a-cloudevent"),
        (b'{"specversion": "1.0", "source": "/s", "type": "t"}', "not-a-cloudevent"),
        (
            orjson.dumps({**orjson.loads(event_bytes("o", 1)), "partitionkey": None}),
            "invalid-envelope",
        ),
        (orjson.dumps({**orjson.loads(event_bytes("o", 1)), "id": ""}), "invalid-envelope"),
    ],
)
def test_an_unroutable_event_becomes_a_marker_with_its_reason_and_coordinates(
    body: bytes, reason: str
) -> None:
    marker = routed(body)
    assert isinstance(marker, InboxMessage)
    assert marker.is_marker
    assert marker.session_id == UNROUTABLE_SESSION
    assert marker.properties["reason"] == reason
    assert (
        marker.properties["partition"],
        marker.properties["offset"],
        marker.properties["sequence_number"],
    ) == ("2", "4096", 17)
    details = orjson.loads(marker.body)
    assert (details["eventhub"], details["enqueued_time"]) == ("orders", WHEN.isoformat())
    assert marker.message_id == "unroutable:orders:2:17"


def test_an_event_larger_than_the_inbox_accepts_is_a_too_large_marker() -> None:
    body = event_bytes("order-7", 3)
    marker = routed(body, limit=len(body) - 1)
    assert isinstance(marker, InboxMessage)
    assert marker.properties["reason"] == "too-large"
