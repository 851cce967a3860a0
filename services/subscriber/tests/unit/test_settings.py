"""Settings that would break the consumer are refused at start."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from eventflow_subscriber.settings import Settings


def test_a_filter_that_leaves_out_a_type_the_projection_needs_is_refused() -> None:
    with pytest.raises(ValidationError) as refused:
        Settings(
            subscribed_types="eventflow.orders.OrderCreated.v2,eventflow.orders.OrderItemAdded.v1"
        )
    message = str(refused.value)
    assert (
        "leaves out eventflow.orders.OrderCancelled, eventflow.orders.OrderStateChanged, "
        "eventflow.orders.OrderSubmitted" in message
    )


def test_a_filter_with_every_needed_type_in_any_version_is_accepted() -> None:
    settings = Settings(
        subscribed_types="eventflow.orders.OrderCreated.v1,eventflow.orders.OrderItemAdded,"
        "eventflow.orders.OrderSubmitted.v3,eventflow.orders.OrderCancelled.v1,other.Thing.v1,"
        "eventflow.orders.OrderStateChanged"
    )
    assert len(settings.subscribed_types) == 6
    assert Settings().subscribed_types == []  # no filter: every type


def test_the_inbox_lanes_default_to_32_and_a_count_out_of_range_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert Settings().inbox_lanes == 32
    monkeypatch.setenv("SUBSCRIBER_INBOX_LANES", "0")
    assert Settings().inbox_lanes == 0  # one session per order
    for bad in ("-1", "4097"):
        monkeypatch.setenv("SUBSCRIBER_INBOX_LANES", bad)
        with pytest.raises(ValidationError, match="inbox_lanes"):
            Settings()
