"""The orders container's layout: the ids and kinds producer and publisher agree on."""

from __future__ import annotations

from eventflow_contracts.orders_container import (
    WRITE_PATTERNS,
    event_document_id,
    event_kind,
    idempotency_document_id,
    keeps_events,
    order_document_id,
)


def test_the_ids_of_an_orders_documents() -> None:
    assert order_document_id("o-1") == "o-1"
    assert event_document_id("o-1", 7) == "o-1:event:00000000000000000007"
    assert idempotency_document_id("o-1") == "o-1:idempotency"


def test_event_ids_sort_in_sequence_order() -> None:
    ids = [event_document_id("o", sequence) for sequence in (1, 2, 10, 100, 99)]
    assert sorted(ids) == [event_document_id("o", s) for s in (1, 2, 10, 99, 100)]


def test_which_documents_carry_the_events_in_each_pattern() -> None:
    assert WRITE_PATTERNS == ("outbox", "entity-first", "event-first")
    assert {p: event_kind(p) for p in WRITE_PATTERNS} == {
        "outbox": "event", "entity-first": "order", "event-first": "event",
    }  # fmt: skip
    assert [p for p in WRITE_PATTERNS if keeps_events(p)] == ["outbox", "event-first"]
