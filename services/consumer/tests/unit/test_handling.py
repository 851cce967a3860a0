from typing import Any

import orjson
import pytest

from eventflow_consumer.handling import (
    AlreadyAppliedError,
    Delivery,
    InboxHandler,
    SessionState,
    TransientStoreError,
    properties_of,
)
from eventflow_consumer.projection import OrderSummary

from ..conftest import order_events  # type: ignore[import-not-found]


class FakeStore:
    def __init__(self, transient: int = 0) -> None:
        self.summaries: dict[str, tuple[OrderSummary, str]] = {}
        self.marks: set[str] = set()
        self.transient = transient
        self.commits = 0

    async def load(self, order_id: str) -> tuple[OrderSummary, str] | None:
        return self.summaries.get(order_id)

    async def has_mark(self, order_id: str, event_id: str) -> bool:
        return event_id in self.marks

    async def commit(
        self, summary: OrderSummary, token: str | None, event_id: str, committed_at: Any = None
    ) -> None:
        if self.transient:
            self.transient -= 1
            raise TransientStoreError("throttled")
        if event_id in self.marks:
            raise AlreadyAppliedError(event_id)
        self.commits += 1
        self.marks.add(event_id)
        self.summaries[summary.order_id] = (summary, str(self.commits))


def delivery(body: bytes, **properties: Any) -> Delivery:
    return Delivery(body, "m", "o1", 1, 0, properties)


async def handle(
    store: FakeStore, body: bytes, state: SessionState | None = None, **properties: Any
) -> Any:
    return await InboxHandler(store, retry_delay=0.001).handle(
        delivery(body, **properties), state or SessionState()
    )


async def test_an_event_is_applied_with_its_mark() -> None:
    store = FakeStore()
    decision = await handle(store, order_events("o1")[0])
    assert (decision.action, decision.effect, decision.sequence) == ("complete", True, 1)
    assert store.commits == 1


async def test_the_same_event_twice_changes_nothing_the_second_time() -> None:
    store, created = FakeStore(), order_events("o1")[0]
    await handle(store, created)
    again = await handle(store, created)
    assert (again.action, again.effect, again.duplicate) == ("complete", False, "inbox")
    assert store.commits == 1


async def test_a_sequence_at_or_below_the_session_state_is_a_duplicate() -> None:
    decision = await handle(FakeStore(), order_events("o1")[1], SessionState(last_sequence=2))
    assert (decision.action, decision.duplicate) == ("complete", "sequence")


@pytest.mark.parametrize(
    ("body", "reason"),
    [(b"not json", "invalid-json"), (orjson.dumps({"specversion": "1.0"}), "not-a-cloudevent")],
)
async def test_undecodable_messages_are_poison_dead_letters(body: bytes, reason: str) -> None:
    decision = await handle(FakeStore(), body)
    assert (decision.action, decision.reason, decision.poison) == ("dead_letter", reason, True)


async def test_a_marker_is_dead_lettered_with_its_reason_and_is_not_poison() -> None:
    decision = await handle(
        FakeStore(), b'{"reason": "invalid-json"}', eventflow_unroutable=True, reason="invalid-json"
    )
    assert (decision.action, decision.reason, decision.poison) == (
        "dead_letter",
        "unroutable:invalid-json",
        False,
    )


async def test_a_rule_the_event_breaks_is_a_poison_dead_letter() -> None:
    decision = await handle(FakeStore(), order_events("o1")[1])
    assert (decision.action, decision.reason, decision.poison) == (
        "dead_letter",
        "unknown-order",
        True,
    )


async def test_transient_failures_are_retried_then_abandoned() -> None:
    store = FakeStore(transient=2)
    assert (await handle(store, order_events("o1")[0])).effect
    store = FakeStore(transient=5)
    decision = await handle(store, order_events("o1")[0])
    assert (decision.action, decision.reason) == ("abandon", "transient")


def test_session_state_round_trips_and_properties_decode() -> None:
    state = SessionState(3, True, "poison", [7, 9])
    assert SessionState.from_bytes(state.to_bytes()) == state
    assert SessionState.from_bytes(None) == SessionState()
    assert properties_of({b"type": b"t", b"sequence": 3}) == {"type": "t", "sequence": 3}
