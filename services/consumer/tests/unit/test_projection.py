import pytest

from eventflow_consumer.projection import OrderSummary, PermanentFailure, Position, apply, position
from eventflow_contracts import decode_event

from ..conftest import order_events  # type: ignore[import-not-found]


def events(order_id: str = "o1") -> list:
    return [decode_event(raw) for raw in order_events(order_id)]


def test_the_summary_follows_the_order() -> None:
    summary = None
    for event in events():
        summary = apply(summary, event)
    assert summary is not None
    assert (summary.status, summary.last_sequence, f"{summary.total}") == ("cancelled", 4, "20.00")
    assert [h["status"] for h in summary.status_history] == ["open", "submitted", "cancelled"]
    assert OrderSummary.from_document(summary.to_document()) == summary


@pytest.mark.parametrize(
    ("steps", "reason"),
    [([1], "unknown-order"), ([0, 0], "order-exists"), ([0, 2], "sequence-gap")],
)
def test_events_that_cannot_follow_are_permanent_failures(steps: list[int], reason: str) -> None:
    history = events()
    summary = None
    for step in steps[:-1]:
        summary = apply(summary, history[step])
    with pytest.raises(PermanentFailure) as failure:
        apply(summary, history[steps[-1]])
    assert failure.value.reason == reason


def test_skipping_records_the_skipped_sequences_and_a_late_copy_is_no_duplicate() -> None:
    created, added, submitted, _ = events()
    summary = apply(apply(None, created), submitted, accept_gap=True)
    assert (summary.last_sequence, summary.skipped) == (3, (2,))
    assert OrderSummary.from_document(summary.to_document()) == summary
    assert position(summary, added) is Position.SKIPPED
    assert position(summary, created) is Position.DUPLICATE


def test_position_is_decided_by_the_event_kind() -> None:
    created, _, submitted, _ = events()
    summary = apply(None, created)
    assert position(summary, submitted) is Position.EARLY
    assert position(summary, submitted, whole_state=(type(submitted.data),)) is Position.NEXT


def state_at(version: int, status: str = "open", lines: int = 0) -> object:
    """An OrderStateChanged of order o1 at `version` (the entity-first pattern's derived event)."""
    from datetime import UTC, datetime, timedelta  # noqa: PLC0415
    from decimal import Decimal  # noqa: PLC0415

    from eventflow_contracts import OrderLine, OrderStateChanged, new_event  # noqa: PLC0415

    line = OrderLine(sku="SKU-1", quantity=1, unit_price=Decimal("2.50"))
    moment = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=version)
    data = OrderStateChanged(
        order_id="o1", customer_id="c", currency="EUR", lines=(line,) * lines, status=status,
        version=version, total=Decimal("2.50") * lines, created_at=moment, updated_at=moment,
        cancel_reason="why" if status == "cancelled" else None,
    )  # fmt: skip
    return new_event(data, source="urn:test", sequence=version, time=moment)


def test_whole_state_events_replace_the_summary_and_may_jump_versions() -> None:
    first = state_at(3, lines=2)  # versions 1 and 2 were coalesced away by the change feed
    assert position(None, first) is Position.NEXT
    summary = apply(None, first)
    assert (summary.last_sequence, summary.status, f"{summary.total}") == (3, "open", "5.00")
    later = state_at(7, "submitted", lines=3)
    assert position(summary, later) is Position.NEXT
    assert position(summary, state_at(3)) is Position.DUPLICATE
    summary = apply(apply(summary, state_at(5, lines=3)), later)
    assert (summary.last_sequence, len(summary.lines), summary.skipped) == (7, 3, ())
    # Only the statuses that were seen, at the version they were seen at.
    assert [(h["status"], h["sequence"]) for h in summary.status_history] == [
        ("open", 3),
        ("submitted", 7),
    ]
    assert OrderSummary.from_document(summary.to_document()) == summary


def test_a_whole_state_event_whose_version_is_not_its_sequence_is_refused() -> None:
    from dataclasses import replace  # noqa: PLC0415

    event = replace(state_at(4), sequence=5)
    with pytest.raises(PermanentFailure) as failure:
        apply(None, event)
    assert failure.value.reason == "version-mismatch"
