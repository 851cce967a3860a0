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
