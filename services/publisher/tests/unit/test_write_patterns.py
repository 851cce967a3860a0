"""The write patterns' handlers against fakes: entity-first derives one OrderStateChanged per order
document version read; event-first's read-model maintainer folds events into read models."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson

from eventflow_contracts import (
    OrderCreated,
    OrderItemAdded,
    OrderLine,
    OrderState,
    decode_event,
    new_event,
    to_json_dict,
)
from eventflow_contracts.orders_container import WRITE_PATTERNS, event_kind, keeps_events
from eventflow_publisher.bootstrap import SOURCES, maintains_read_models
from eventflow_publisher.changefeed import LeaseContext
from eventflow_publisher.deriving import ENTITY_FIRST, derived_event_id
from eventflow_publisher.publishing import EventPublisher, SendHealth
from eventflow_publisher.readmodel import ReadModelConflictError, ReadModelMaintainer

from .test_publishing import FakePoison, FakeSender  # type: ignore[import-not-found]


def test_each_write_pattern_reads_the_documents_the_producer_writes_its_events_in() -> None:
    """The bootstrap's choice agrees with the orders container's contract, for every pattern."""
    assert {p: SOURCES[p].kind for p in WRITE_PATTERNS} == {
        p: event_kind(p) for p in WRITE_PATTERNS
    }
    assert {p: SOURCES[p] is ENTITY_FIRST for p in WRITE_PATTERNS} == {
        p: not keeps_events(p) for p in WRITE_PATTERNS
    }
    assert [p for p in WRITE_PATTERNS if maintains_read_models(p)] == ["event-first"]


LINE = OrderLine(sku="SKU-1", quantity=2, unit_price=Decimal("1.25"))
T0 = datetime(2026, 5, 1, 8, 0, tzinfo=UTC)


def order_document(order_id: str, version: int, lines: int = 1, **changes: Any) -> dict[str, Any]:
    """An order document as the producer (the 'legacy writer') stores it, as the feed returns it."""
    return {
        "id": order_id, "order_id": order_id, "kind": "order", "customer_id": "c-1",
        "currency": "EUR", "lines": [LINE.model_dump(mode="json")] * lines, "status": "open",
        "version": version, "total": f"{Decimal('2.50') * lines:.2f}", "cancel_reason": None,
        "created_at": T0.isoformat(), "updated_at": T0.isoformat(), "_etag": f'"{version}"',
        "_lsn": version, **changes,
    }  # fmt: skip


def context() -> LeaseContext:
    return LeaseContext("lease", {"Range": {}})


def entity_first(sender: FakeSender, poison: FakePoison) -> EventPublisher:
    return EventPublisher(sender, poison, health=SendHealth(30.0), source=ENTITY_FIRST)


async def test_each_order_version_read_becomes_one_state_event_with_a_stable_id() -> None:
    sender, poison = FakeSender(), FakePoison()
    page = [
        order_document("o1", 1), {"id": "o1:idempotency", "order_id": "o1", "kind": "idempotency"},
        order_document("o2", 3, lines=3), order_document("o1", 4, lines=2),
    ]  # fmt: skip
    await entity_first(sender, poison)(context(), page)
    events = [decode_event(e.body) for _, batch in sender.sent for e in batch]
    assert sorted((e.partitionkey, e.sequence) for e in events) == [("o1", 1), ("o1", 4), ("o2", 3)]
    latest = next(e for e in events if e.sequence == 4)
    assert (latest.type, latest.id) == (
        "eventflow.orders.OrderStateChanged.v1",
        derived_event_id("o1", 4),
    )
    assert (latest.data.version, latest.data.lines, f"{latest.data.total}") == (
        4,
        (LINE, LINE),
        "5.00",
    )
    assert poison.records == []
    # A re-read of the same version (a replay from an older checkpoint) is the same event.
    again = FakeSender()
    await entity_first(again, FakePoison())(context(), [order_document("o1", 4, lines=2)])
    assert [orjson.loads(e.body) for _, b in again.sent for e in b] == [
        orjson.loads(e.body)
        for _, b in sender.sent
        for e in b
        if decode_event(e.body).sequence == 4
    ]


async def test_an_order_document_that_is_no_valid_order_is_poison_not_dropped() -> None:
    sender, poison = FakeSender(), FakePoison()
    broken = order_document("o3", 2, total="9.99")  # total disagrees with the lines
    await entity_first(sender, poison)(context(), [broken, order_document("o4", 1)])
    assert poison.records == [("o3", "invalid-data")]
    assert [decode_event(e.body).partitionkey for _, b in sender.sent for e in b] == ["o4"]


class FakeReadModels:
    """The ReadModelStore port in memory: read models with ETags, and the event stream."""

    def __init__(self) -> None:
        self.models: dict[str, tuple[OrderState, str]] = {}
        self.stream: dict[str, list[dict[str, Any]]] = {}
        self.conflicts = 0
        self.writes = 0

    def append(self, *documents: dict[str, Any]) -> list[dict[str, Any]]:
        for document in documents:
            self.stream.setdefault(document["order_id"], []).append(document)
        return list(documents)

    async def load(self, order_id: str) -> tuple[OrderState | None, str | None]:
        found = self.models.get(order_id)
        return (found[0], found[1]) if found else (None, None)

    async def save(self, state: OrderState, etag: str | None) -> None:
        if self.conflicts:
            self.conflicts -= 1
            raise ReadModelConflictError(state.order_id)
        current = self.models.get(state.order_id)
        if (current[1] if current else None) != etag:
            raise ReadModelConflictError(state.order_id)
        self.writes += 1
        self.models[state.order_id] = (state, f"etag-{self.writes}")

    async def events_after(self, order_id: str, version: int) -> list[dict[str, Any]]:
        return [d for d in self.stream.get(order_id, []) if d["sequence"] > version]


def event_document(order_id: str, sequence: int, data: Any = None) -> dict[str, Any]:
    data = data or OrderItemAdded(order_id=order_id, line=LINE)
    event = new_event(data, source="/test", sequence=sequence, time=T0)
    return {"id": f"{order_id}:event:{sequence:020d}", "order_id": order_id, "kind": "event",
            "sequence": sequence, "event": to_json_dict(event)}  # fmt: skip


def created(order_id: str) -> dict[str, Any]:
    data = OrderCreated(
        order_id=order_id, customer_id="c", currency="EUR", lines=(), total=Decimal("0.00")
    )
    return event_document(order_id, 1, data)


async def test_the_maintainer_folds_each_orders_events_and_a_replay_changes_nothing() -> None:
    models, poison = FakeReadModels(), FakePoison()
    maintainer = ReadModelMaintainer(models, poison)
    page = models.append(
        created("o1"), created("o2"), event_document("o1", 2), event_document("o1", 3)
    )
    page.append(
        {"id": "o1", "order_id": "o1", "kind": "order"}
    )  # its own write, read back: ignored
    await maintainer(context(), page)
    assert {o: (s.version, len(s.lines)) for o, (s, _) in models.models.items()} == {
        "o1": (3, 2),
        "o2": (1, 0),
    }
    writes = models.writes
    await maintainer(context(), page)  # the same page again, as after a crash before the checkpoint
    assert models.writes == writes
    assert poison.records == []


async def test_a_gap_is_filled_from_the_stream_and_a_conflict_folds_again() -> None:
    models = FakeReadModels()
    models.append(created("o1"), event_document("o1", 2))
    models.conflicts = 1
    await ReadModelMaintainer(models, FakePoison())(
        context(), models.append(event_document("o1", 3))
    )
    state, _ = models.models["o1"]
    assert (state.version, len(state.lines)) == (3, 2)


async def test_an_event_that_cannot_be_folded_is_poison_and_the_read_model_stays_before_it() -> (
    None
):
    models, poison = FakeReadModels(), FakePoison()
    page = models.append(created("o1"), event_document("o1", 2))
    page[1]["event"]["data"] = {"order_id": "o1"}  # no line
    page += models.append(event_document("o1", 3))
    await ReadModelMaintainer(models, poison)(context(), page)
    assert models.models["o1"][0].version == 1
    assert poison.records == [("o1:event:00000000000000000002", "read-model:invalid-data")]
