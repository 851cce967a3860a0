"""The handler against fakes: what is published, in what order, and what becomes poison."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import orjson
import pytest

from eventflow_contracts import OrderCancelled, OrderItemAdded, OrderLine, new_event, to_json_dict
from eventflow_publisher.adapters.eventhubs_sender import EventHubsSender
from eventflow_publisher.changefeed import LeaseContext, LeaseLostError
from eventflow_publisher.publishing import (
    EventPublisher,
    Outgoing,
    SendError,
    SendHealth,
    SendResult,
    partition_for,
)

PARTITIONS = ["0", "1", "2", "3"]


class FakeSender:
    """The EventSender port: records what each partition accepted; can refuse, or accept only a
    first part of a send before refusing."""

    def __init__(
        self, refusals: int = 0, too_large: tuple[int, ...] = (), accept_then_refuse: int = 0
    ) -> None:
        self.sent: list[tuple[str, list[Outgoing]]] = []
        self.refusals = refusals
        self.too_large = too_large
        self.accept_then_refuse = accept_then_refuse

    async def partition_ids(self) -> list[str]:
        return PARTITIONS

    async def send(self, partition_id: str, events: Sequence[Outgoing]) -> SendResult:
        if self.accept_then_refuse:
            accepted, self.accept_then_refuse = self.accept_then_refuse, 0
            self.sent.append((partition_id, list(events[:accepted])))
            raise SendError("busy after one batch", accepted=accepted, done=SendResult((accepted,)))
        if self.refusals:
            self.refusals -= 1
            raise SendError("ServerBusyError: busy")
        kept = [event for index, event in enumerate(events) if index not in self.too_large]
        self.sent.append((partition_id, kept))
        return SendResult((len(kept),), self.too_large)

    def sequences(self) -> dict[str, list[str]]:
        """Per order, the sequences the hub accepted, in order."""
        found: dict[str, list[str]] = {}
        for _, events in self.sent:
            for event in events:
                cloud_event = orjson.loads(event.body)
                found.setdefault(cloud_event["partitionkey"], []).append(
                    cloud_event["sequence"][-1]
                )
        return found


class FakePoison:
    def __init__(self) -> None:
        self.records: list[tuple[str, str]] = []

    async def record(self, document: dict[str, Any], reason: str, detail: str) -> None:
        self.records.append((str(document.get("id")), reason))


def event_document(order_id: str, sequence: int) -> dict[str, Any]:
    data = OrderItemAdded(
        order_id=order_id, line=OrderLine(sku="SKU-1", quantity=1, unit_price=Decimal("1.00"))
    )
    event = new_event(data, source="/test", sequence=sequence)
    return {
        "id": f"{order_id}:event:{sequence:020d}",
        "order_id": order_id,
        "kind": "event",
        "event": to_json_dict(event),
    }


def publisher(sender: Any, poison: FakePoison | None = None) -> EventPublisher:
    return EventPublisher(
        sender,
        poison or FakePoison(),
        health=SendHealth(30.0),
        retry_delay=0.001,
        max_retry_delay=0.01,
    )


def context() -> LeaseContext:
    return LeaseContext("lease", {"Range": {}})


async def test_only_event_documents_are_published_each_order_in_feed_order() -> None:
    sender = FakeSender()
    page = [
        {"id": "o1", "order_id": "o1", "kind": "order"},
        event_document("o1", 1), event_document("o2", 1), event_document("o1", 2),
        {"id": "o1:idempotency", "kind": "idempotency"}, event_document("o2", 2),
    ]  # fmt: skip
    await publisher(sender)(context(), page)
    assert sender.sequences() == {"o1": ["1", "2"], "o2": ["1", "2"]}


async def test_a_page_is_one_send_per_hub_partition_and_an_order_keeps_its_partition() -> None:
    sender = FakeSender()
    page = [event_document(f"order-{n}", s) for s in (1, 2, 3) for n in range(200)]
    await publisher(sender)(context(), page)
    assert sorted(pid for pid, _ in sender.sent) == PARTITIONS, "one send per partition"
    for partition_id, events in sender.sent:
        for event in events:
            order_id = orjson.loads(event.body)["partitionkey"]
            assert partition_for(order_id, PARTITIONS) == partition_id
    assert all(sequences == ["1", "2", "3"] for sequences in sender.sequences().values())


def test_an_orders_partition_is_stable_and_spread() -> None:
    assert partition_for("order-1", ["0", "1", "2", "3"]) == partition_for(
        "order-1", ["3", "2", "1", "0"]
    )
    spread = {partition_for(f"order-{n}", [str(p) for p in range(12)]) for n in range(500)}
    assert len(spread) == 12
    assert partition_for("x", ["0", "2", "10"]) in {"0", "2", "10"}


async def test_a_send_refused_after_some_batches_resumes_after_them() -> None:
    sender = FakeSender(accept_then_refuse=2)
    page = [event_document("o1", s) for s in range(1, 6)]
    await publisher(sender)(context(), page)
    assert sender.sequences() == {"o1": ["1", "2", "3", "4", "5"]}, "nothing twice, nothing lost"


async def test_the_body_is_the_cloudevent_and_properties_name_it() -> None:
    sender = FakeSender()
    document = event_document("o1", 1)
    await publisher(sender)(context(), [document])
    (outgoing,) = sender.sent[0][1]
    assert orjson.loads(outgoing.body) == document["event"]
    assert (outgoing.event_id, outgoing.type) == (
        document["event"]["id"],
        "eventflow.orders.OrderItemAdded.v1",
    )


async def test_refused_sends_are_retried_until_accepted() -> None:
    sender, health = FakeSender(refusals=3), SendHealth(30.0)
    handler = EventPublisher(
        sender, FakePoison(), health=health, retry_delay=0.001, max_retry_delay=0.01
    )
    await handler(context(), [event_document("o1", 1)])
    assert len(sender.sent) == 1
    assert health.ready


async def test_long_failing_sends_make_the_publisher_unready() -> None:
    ticks = iter([0.0, 100.0, 100.0, 100.0, 100.0])
    health = SendHealth(30.0, clock=lambda: next(ticks))
    health.failing()
    assert not health.ready
    health.recovered()
    assert health.ready


async def test_retrying_stops_when_the_lease_is_lost() -> None:
    sender = FakeSender(refusals=1_000_000)
    lease = context()
    task = asyncio.create_task(publisher(sender)(lease, [event_document("o1", 1)]))
    await asyncio.sleep(0.05)
    lease.lost.set()
    with pytest.raises(LeaseLostError):
        await asyncio.wait_for(task, 5)


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        (None, "not-an-event"),
        ({"specversion": "1.0"}, "not-a-cloudevent"),
        (
            {"specversion": "1.0", "id": "x", "source": "/s", "type": "t", "data": {}},
            "invalid-envelope",
        ),
    ],
)
async def test_a_document_that_is_not_a_valid_event_is_recorded_as_poison_and_skipped(
    event: Any, reason: str
) -> None:
    sender, poison = FakeSender(), FakePoison()
    bad = {"id": "o1:event:bad", "kind": "event", **({"event": event} if event is not None else {})}
    await publisher(sender, poison)(context(), [bad, event_document("o1", 2)])
    assert poison.records == [("o1:event:bad", reason)]
    assert len(sender.sent[0][1]) == 1


async def test_an_event_too_large_for_any_batch_is_recorded_as_poison() -> None:
    sender, poison = FakeSender(too_large=(0,)), FakePoison()
    await publisher(sender, poison)(context(), [event_document("o1", 1), event_document("o1", 2)])
    assert poison.records == [("o1:event:00000000000000000001", "too-large")]


class FakeProducer:
    """The producer calls EventHubsSender makes, with a small batch size limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.batches: list[list[Any]] = []

    async def create_batch(self, *, partition_id: str) -> Any:
        from azure.eventhub import EventDataBatch  # noqa: PLC0415

        return EventDataBatch(max_size_in_bytes=self.limit, partition_id=partition_id)

    async def send_batch(self, batch: Any) -> None:
        self.batches.append([len(batch)])


async def test_the_event_hubs_sender_starts_a_new_batch_when_one_is_full() -> None:
    producer = FakeProducer(limit=2500)
    events = [
        Outgoing(orjson.dumps(event_document("o1", n)["event"]), f"e{n}", "t", None, f"d{n}")
        for n in range(1, 9)
    ]
    result = await EventHubsSender(producer).send("0", events)
    assert sum(result.batch_sizes) == 8
    assert len(result.batch_sizes) > 1
    assert result.too_large == ()


async def test_the_event_hubs_sender_reports_an_event_no_batch_can_hold() -> None:
    producer = FakeProducer(limit=600)
    cancelled = new_event(OrderCancelled(order_id="o1", reason="r" * 400), source="/t", sequence=1)
    small = Outgoing(b"{}", "s", "t", None, "d0")
    big = Outgoing(orjson.dumps(to_json_dict(cancelled)), "b", "t", None, "d1")
    result = await EventHubsSender(producer).send("0", [small, big, small])
    assert result.too_large == (1,)
    assert sum(result.batch_sizes) == 2
