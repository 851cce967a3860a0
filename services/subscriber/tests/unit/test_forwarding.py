import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from eventflow_subscriber.forwarding import (
    Forwarder,
    ForwarderObserver,
    ForwardingFailedError,
    RetryPolicy,
    SendRefusedError,
    SendResult,
)
from eventflow_subscriber.routing import HubEvent, InboxMessage

from ..conftest import event_bytes  # type: ignore[import-not-found]

FAST = RetryPolicy(base_delay=0.001, max_delay=0.005, busy_delay=0.02, max_attempts=4)


class FakeInbox:
    def __init__(self, refusals: list[bool] | None = None, too_large: tuple[int, ...] = ()) -> None:
        self.refusals = refusals or []
        self.too_large = too_large
        self.sent: list[list[InboxMessage]] = []

    async def send(self, messages: Sequence[InboxMessage]) -> SendResult:
        if self.refusals:
            raise SendRefusedError("refused", busy=self.refusals.pop(0))
        kept = [m for index, m in enumerate(messages) if index not in self.too_large]
        self.sent.append(kept)
        too_large, self.too_large = self.too_large, ()
        return SendResult((len(kept),), too_large)


class Counts(ForwarderObserver):
    def __init__(self) -> None:
        self.counts: dict[str, Any] = {
            "received": 0,
            "forwarded": 0,
            "filtered": 0,
            "markers": 0,
            "busy": 0,
            "retries": 0,
        }

    def received(self, events: int) -> None:
        self.counts["received"] += events

    def forwarded(self, messages: int) -> None:
        self.counts["forwarded"] += messages

    def filtered(self, events: int) -> None:
        self.counts["filtered"] += events

    def markers(self, messages: int) -> None:
        self.counts["markers"] += messages

    def send_retry(self, *, busy: bool) -> None:
        self.counts["retries"] += 1
        self.counts["busy"] += busy


def events(*bodies: bytes) -> list[HubEvent]:
    return [HubEvent(body, "0", str(n * 100), n) for n, body in enumerate(bodies)]


def forwarder(inbox: FakeInbox, observer: Counts, subscribed: set[str] | None = None) -> Forwarder:
    return Forwarder(
        inbox,
        hub="orders",
        subscribed=subscribed,
        max_message_bytes=256 * 1024,
        lanes=0,
        retry=FAST,
        observer=observer,
    )


async def test_a_batch_goes_to_the_inbox_in_order() -> None:
    inbox, counts = FakeInbox(), Counts()
    await forwarder(inbox, counts).forward(events(*(event_bytes("o1", n) for n in range(1, 4))))
    assert [m.properties["sequence"] for m in inbox.sent[0]] == [1, 2, 3]
    assert counts.counts | {} == {
        "received": 3,
        "forwarded": 3,
        "filtered": 0,
        "markers": 0,
        "busy": 0,
        "retries": 0,
    }


async def test_a_batch_of_filtered_events_sends_nothing() -> None:
    inbox, counts = FakeInbox(), Counts()
    await forwarder(inbox, counts, {"eventflow.orders.OrderCancelled.v1"}).forward(
        events(event_bytes("o1", 1))
    )
    assert inbox.sent == []
    assert counts.counts["filtered"] == 1


async def test_refusals_are_retried_and_server_busy_waits_longer() -> None:
    inbox, counts = FakeInbox(refusals=[False, True, False]), Counts()
    await forwarder(inbox, counts).forward(events(event_bytes("o1", 1)))
    assert len(inbox.sent) == 1
    assert (counts.counts["retries"], counts.counts["busy"]) == (3, 1)
    assert FAST.delay(1, busy=True) >= FAST.busy_delay


async def test_past_the_retry_budget_the_callback_fails_as_a_last_resort() -> None:
    inbox = FakeInbox(refusals=[False] * 10)
    with pytest.raises(ForwardingFailedError, match="4 times"):
        await forwarder(inbox, Counts()).forward(events(event_bytes("o1", 1)))


async def test_a_message_no_batch_can_hold_is_replaced_by_a_marker() -> None:
    inbox, counts = FakeInbox(too_large=(1,)), Counts()
    await forwarder(inbox, counts).forward(events(event_bytes("o1", 1), event_bytes("o1", 2)))
    first, markers = inbox.sent
    assert [m.properties["sequence"] for m in first] == [1]
    assert [m.properties["reason"] for m in markers] == ["too-large"]
    assert (counts.counts["forwarded"], counts.counts["markers"]) == (1, 1)


async def test_unroutable_events_go_as_markers_beside_the_good_ones() -> None:
    inbox, counts = FakeInbox(), Counts()
    await forwarder(inbox, counts).forward(events(b"garbage", event_bytes("o1", 1)))
    assert [m.is_marker for m in inbox.sent[0]] == [True, False]
    assert (counts.counts["forwarded"], counts.counts["markers"]) == (1, 1)


class OverlapDetectingInbox(FakeInbox):
    """Like one shared Service Bus sender: records whether two sends were ever in flight together."""

    def __init__(self) -> None:
        super().__init__()
        self.in_flight = 0
        self.most_in_flight = 0

    async def send(self, messages: Sequence[InboxMessage]) -> SendResult:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(
                0.01
            )  # a send yields to the event loop while it waits for the broker
            return await super().send(messages)
        finally:
            self.in_flight -= 1


async def test_partitions_forwarding_at_once_take_turns_on_the_shared_sender() -> None:
    inbox = OverlapDetectingInbox()
    shared = forwarder(inbox, Counts())
    await asyncio.gather(*(shared.forward(events(event_bytes(f"o{p}", 1))) for p in range(4)))
    assert len(inbox.sent) == 4
    assert inbox.most_in_flight == 1


async def test_the_filter_compares_type_names_in_any_version() -> None:
    inbox, counts = FakeInbox(), Counts()
    # Subscribing to a later version of a type must not filter out the version on the hub.
    await forwarder(inbox, counts, {"eventflow.orders.OrderItemAdded.v2"}).forward(
        events(event_bytes("o1", 1), event_bytes("o1", 2, cancelled=True))
    )
    assert [m.subject for m in inbox.sent[0]] == ["eventflow.orders.OrderItemAdded.v1"]
    assert counts.counts["filtered"] == 1
