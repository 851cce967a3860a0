from typing import Any

import orjson
import pytest

from eventflow_consumer.handling import Delivery, InboxHandler, properties_of
from eventflow_consumer.ports import TransientStoreError
from eventflow_contracts.lanes import Lane, lane_of, session_id_for

from ..conftest import item_added, order_events  # type: ignore[import-not-found]
from .fakes import FakeStore  # type: ignore[import-not-found]


def delivery(body: bytes, **properties: Any) -> Delivery:
    return Delivery(body, "m", "o1", 1, 0, properties)


async def handle(store: FakeStore, body: bytes, **properties: Any) -> Any:
    return await InboxHandler(store).handle(delivery(body, **properties))


async def test_an_event_is_applied_with_its_mark() -> None:
    store = FakeStore()
    decision = await handle(store, order_events("o1")[0])
    assert (decision.action, decision.effect, decision.sequence) == ("complete", True, 1)
    assert store.commits == 1


async def test_the_same_event_twice_changes_nothing_the_second_time() -> None:
    store, created = FakeStore(), order_events("o1")[0]
    await handle(store, created)
    store.log.clear()
    again = await handle(store, created)
    assert (again.action, again.effect, again.duplicate) == ("complete", False, "sequence")
    assert store.commits == 1
    # the create is refused (the summary exists), then the summary is read; no inbox-mark read
    assert store.log == ["commit", "load"]


async def test_an_orders_first_event_is_created_without_a_read() -> None:
    store = FakeStore()
    decision = await handle(store, order_events("o1")[0])
    assert (decision.action, decision.effect) == ("complete", True)
    assert store.log == ["commit"]  # one store call per new order
    store.log.clear()
    await handle(store, order_events("o1")[1])
    assert store.log == ["load", "commit"]  # a later event reads the summary first


async def test_a_copy_that_races_the_first_write_meets_its_mark_in_the_commit() -> None:
    store, created = FakeStore(), order_events("o1")[0]
    store.marks.add(orjson.loads(created)["id"])  # applied by another replica after our load
    decision = await handle(store, created)
    assert (decision.action, decision.effect, decision.duplicate) == ("complete", False, "inbox")
    assert store.commits == 0


async def test_a_sequence_at_or_below_the_projection_is_a_duplicate() -> None:
    store = FakeStore()
    for raw in order_events("o1")[:2]:
        await handle(store, raw)
    store.marks.clear()  # the marks' TTL has passed: the summary's own sequence still knows
    decision = await handle(store, order_events("o1")[1])
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


async def test_an_event_before_its_order_exists_waits_then_breaks_a_rule_once_the_wait_is_over() -> (
    None
):
    decision = await handle(FakeStore(), order_events("o1")[1])
    assert (decision.action, decision.sequence) == ("wait", 2)
    decision = await InboxHandler(FakeStore()).handle(
        delivery(order_events("o1")[1]), accept_gap=True
    )
    assert (decision.action, decision.reason, decision.poison) == (
        "dead_letter",
        "unknown-order",
        True,
    )


async def test_an_early_event_waits_and_applies_over_the_gap_when_accepted() -> None:
    store = FakeStore()
    await handle(store, order_events("o1")[0])
    assert (await handle(store, item_added("o1", 3))).action == "wait"
    decision = await InboxHandler(store).handle(delivery(item_added("o1", 3)), accept_gap=True)
    assert decision.effect
    assert (store.summary("o1").last_sequence, store.summary("o1").skipped) == (3, (2,))


async def test_a_store_outage_is_raised_not_decided() -> None:
    with pytest.raises(TransientStoreError):
        await handle(FakeStore(failing=1), order_events("o1")[0])


async def test_a_message_whose_session_is_not_its_order_is_dead_lettered() -> None:
    store = FakeStore()
    decision = await InboxHandler(store).handle(
        Delivery(order_events("o1")[0], "m", "o2", 1, 0, {})
    )
    assert (decision.action, decision.reason, decision.poison) == (
        "dead_letter",
        "session-mismatch",
        False,
    )
    assert store.log == []


async def test_an_event_in_its_orders_lane_is_applied() -> None:
    store, lane = FakeStore(), session_id_for("o1", 32)
    decision = await InboxHandler(store).handle(
        Delivery(order_events("o1")[0], "m", lane, 1, 0, {})
    )
    assert (decision.action, decision.effect) == ("complete", True)


async def test_an_event_in_another_lane_is_dead_lettered_lane_mismatch() -> None:
    store, own = FakeStore(), lane_of("o1", 32)
    wrong = Lane(32, (own.index + 1) % 32).session_id
    decision = await InboxHandler(store).handle(
        Delivery(order_events("o1")[0], "m", wrong, 1, 0, {})
    )
    assert (decision.action, decision.reason, decision.poison) == (
        "dead_letter",
        "lane-mismatch",
        False,
    )
    assert decision.description is not None
    assert own.session_id in decision.description
    assert store.log == []


async def test_the_lane_check_uses_the_lane_count_the_session_id_names() -> None:
    """While N changes, an event sent under the old count is in the right lane of that count."""
    store = FakeStore()
    old = session_id_for("o1", 16)
    decision = await InboxHandler(store).handle(Delivery(order_events("o1")[0], "m", old, 1, 0, {}))
    assert (decision.action, decision.effect) == ("complete", True)


def test_properties_decode() -> None:
    assert properties_of({b"type": b"t", b"sequence": 3}) == {"type": "t", "sequence": 3}
