"""Per-order guarantees inside a held lane, in-process on the real azure-servicebus and azure-cosmos
SDKs against the messaging and Cosmos DB emulators: the block policy blocks one order of a lane
while the others flow, `unblock` (the admin command) replays it through the lane's holder, also
across a store outage longer than the lane's lock; an early event under the block policy; a hot
order past its cap."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from eventflow_consumer.admin import run as admin
from eventflow_consumer.bootstrap import Resources, open_resources
from eventflow_consumer.session_state import SessionState
from eventflow_contracts.lanes import Lane, lane_of
from eventflow_emulators.cosmos.testing import RunningCosmosEmulator
from eventflow_testing import eventually

from ..conftest import (  # type: ignore[import-not-found]
    Backends,
    CosmosDatabase,
    inbox_message,
    item_added,
    order_events,
)
from .lanes_support import LANES, holding, summaries_at  # type: ignore[import-not-found]

LANE = Lane(LANES, 1).session_id


@pytest.fixture(autouse=True)
def _admin_lanes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The admin command is configured with the consumers' lane count, as in a deployment: a lane
    of another count would be held by the command itself (the lanes of a count changed since)."""
    monkeypatch.setenv("CONSUMER_INBOX_LANES", str(LANES))


def orders_in_lane(count: int, prefix: str = "o") -> list[str]:
    found, n = [], 0
    while len(found) < count:
        if lane_of(f"{prefix}{n}", LANES).session_id == LANE:
            found.append(f"{prefix}{n}")
        n += 1
    return found


def poison(order_id: str, sequence: int) -> bytes:
    """An event whose envelope names its order and whose data breaks the contract."""
    document = orjson.loads(item_added(order_id, sequence))
    document["data"] = {"line": "not a line"}
    return orjson.dumps(document)


def emitted(capsys: Any) -> list[dict[str, Any]]:
    """What the admin command printed (its JSON lines; the consumer's logs go to stdout too)."""
    lines = capsys.readouterr().out.splitlines()
    return [orjson.loads(line) for line in lines if line.startswith("{")]


def deferred_in_lane(resources: Resources, order_id: str, count: int) -> Callable[[], Any]:
    async def check() -> bool:
        records = await resources.store.lane_records(LANE)
        return len(records.deferred.get(order_id, {})) == count

    return check


async def blocked_among_fifty(backends: Backends, resources: Resources) -> tuple[str, list[str]]:
    """Order `blocked` gets a poison message at sequence 2 and then its events 2..4; 50 other
    orders of the same lane flow meanwhile and are applied without waiting."""
    blocked, *others = orders_in_lane(51)
    events = order_events(blocked)
    await backends.send(
        inbox_message(events[0], LANE), inbox_message(poison(blocked, 2), LANE, "poison")
    )
    await backends.send(*(inbox_message(raw, LANE) for raw in events[1:]),
                        *(inbox_message(raw, LANE) for o in others for raw in order_events(o)))  # fmt: skip
    started = time.monotonic()
    await eventually(
        summaries_at(resources, dict.fromkeys(others, 4)),
        "the lane's other orders applied",
        wait=60,
    )
    assert time.monotonic() - started < 45, "the other orders waited for the blocked one"
    await eventually(
        deferred_in_lane(resources, blocked, 3), "the blocked order's events deferred", wait=60
    )
    assert (await resources.store.get(blocked))["last_sequence"] == 1  # type: ignore[index]
    return blocked, others


async def test_a_blocked_order_lets_its_lanes_fifty_others_flow_and_unblock_replays_it(
    backends: Backends, capsys: Any
) -> None:
    async with holding(backends, poison_policy="block") as (resources, _):
        blocked, _ = await blocked_among_fifty(backends, resources)
        assert await admin(["blocked"]) == 0
        listed = emitted(capsys)
        assert [(r["order_id"], r["lane"]) for r in listed] == [(blocked, LANE)]
        assert listed[0]["reason"].startswith("invalid-data")
        assert await admin(["unblock", blocked, "--wait", "30"]) == 0
        answer = emitted(capsys)[-1]
        assert (answer["unblocked"], answer["blocked_again"]) == (blocked, False)
        summary = await resources.store.get(blocked)
        assert summary is not None
        assert [h["sequence"] for h in summary["status_history"]] == [1, 3, 4]
        assert len(summary["lines"]) == 2
        assert await resources.store.list_blocked() == []
        assert (await resources.store.lane_records(LANE)).deferred == {}
    (dead,) = await backends.dead_letters()
    assert (dead.message_id, dead.dead_letter_reason) == ("poison", "invalid-data")


async def test_an_unblock_survives_a_store_outage_longer_than_the_lanes_lock(
    backends: Backends, cosmos_database: CosmosDatabase,
    cosmos_emulator_server: RunningCosmosEmulator, capsys: Any,
) -> None:  # fmt: skip
    """8 s of 503s on every store write of the replay (the lock is 2 s, 3 deliveries): the
    holder waits it out with the lane's lock renewed, and the command waits for the outcome."""
    faults = cosmos_emulator_server.admin
    async with holding(backends, poison_policy="block") as (resources, _):
        blocked, _ = await blocked_among_fifty(backends, resources)
        faults.outage(8.0, operation="batch", path_contains=f"/dbs/{cosmos_database.name}/")
        try:
            started = time.monotonic()
            assert await admin(["unblock", blocked, "--wait", "30"]) == 0
            lasted = time.monotonic() - started
        finally:
            faults.reset_faults()
        assert lasted > 6, "the replay's writes met the outage"
        answer = emitted(capsys)[-1]
        assert (answer["unblocked"], answer["blocked_again"]) == (blocked, False)
        summary = await resources.store.get(blocked)
        assert summary is not None
        assert [h["sequence"] for h in summary["status_history"]] == [1, 3, 4]
        assert await resources.store.list_blocked() == []
    (dead,) = await backends.dead_letters()  # the outage spent no delivery
    assert dead.message_id == "poison"


async def test_unblock_without_a_holder_changes_nothing(backends: Backends, capsys: Any) -> None:
    async with holding(backends, poison_policy="block") as (resources, _):
        order_id = orders_in_lane(1)[0]
        events = order_events(order_id)
        await backends.send(inbox_message(events[0], LANE), inbox_message(poison(order_id, 2), LANE),
                            inbox_message(events[1], LANE))  # fmt: skip
        await eventually(
            deferred_in_lane(resources, order_id, 1), "blocked, its event deferred", wait=60
        )
    capsys.readouterr()
    assert await admin(["unblock", order_id, "--wait", "2"]) == 1
    assert "nothing changed" in capsys.readouterr().out
    async with holding(backends, poison_policy="block") as (resources, _):
        record = await resources.store.blocked_record(order_id)
        assert record is not None
        assert "unblock_requested" not in record
        await asyncio.sleep(1.0)  # a holder that came back does not unblock it on its own
        assert (await resources.store.get(order_id))["last_sequence"] == 1  # type: ignore[index]


async def test_under_block_an_early_event_waits_then_blocks_its_order_only(
    backends: Backends, capsys: Any
) -> None:
    late, *others = orders_in_lane(21)
    events = order_events(late)
    await backends.send(inbox_message(events[0], LANE), inbox_message(events[2], LANE))  # 2 missing
    async with holding(backends, poison_policy="block", gap_wait_seconds=3) as (resources, _):
        await backends.send(*(inbox_message(order_events(o)[0], LANE) for o in others))
        await eventually(
            summaries_at(resources, dict.fromkeys(others, 1)), "the other orders applied", wait=60
        )
        await eventually(
            deferred_in_lane(resources, late, 1), "the early event deferred after the wait", wait=60
        )
        (record,) = await resources.store.list_blocked()
        assert record["reason"].startswith("sequence-gap")
        await backends.send(inbox_message(events[1], LANE))  # the missing one: deferred as well
        await eventually(
            deferred_in_lane(resources, late, 2), "the missing event deferred", wait=60
        )
        assert await admin(["unblock", late, "--wait", "30"]) == 0
        await eventually(
            summaries_at(resources, {late: 3}), "replayed in event order: 2, then 3", wait=60
        )
        summary = await resources.store.get(late)
        assert summary is not None
        assert summary["skipped"] == []
    assert await backends.dead_letters() == []


async def test_a_hot_order_past_its_cap_is_deferred_and_brought_back_in_order(
    backends: Backends,
) -> None:
    hot, *others = orders_in_lane(21)
    hot_events = [order_events(hot)[0], *(item_added(hot, n) for n in range(2, 41))]
    await backends.send(*(inbox_message(raw, LANE) for raw in hot_events))
    await backends.send(*(inbox_message(raw, LANE) for o in others for raw in order_events(o)))
    async with holding(backends, order_max_in_flight=5) as (resources, holder):
        await eventually(
            summaries_at(resources, {hot: 40} | dict.fromkeys(others, 4)), "all applied", wait=60
        )
        summary = await resources.store.get(hot)
        assert summary is not None
        assert (len(summary["lines"]), summary["skipped"]) == (40, [])
        await eventually(
            deferred_in_lane(resources, hot, 0), "every record forgotten after settling", wait=60
        )
        assert holder._worker._observer.deferrals >= 10  # type: ignore[attr-defined]  # past the cap
        assert holder._worker.settled >= len(hot_events) + 4 * len(others)
    assert await backends.dead_letters() == []


async def test_unblocking_a_session_of_its_own_survives_a_store_outage_longer_than_its_lock(
    backends: Backends, cosmos_database: CosmosDatabase,
    cosmos_emulator_server: RunningCosmosEmulator, capsys: Any, monkeypatch: Any,
) -> None:  # fmt: skip
    """A per-order session blocked by an earlier release is accepted by id from its blocked
    record; its lock (2 s here) is renewed while the replay waits out 8 s of store outage."""
    monkeypatch.setenv("CONSUMER_SESSION_RENEW_SECONDS", "0.5")  # as the consumer's: below the lock
    await backends.send(*(inbox_message(raw, "o1") for raw in order_events("o1")[:3]))
    async with (
        backends.client() as client,
        client.get_queue_receiver(backends.queue, session_id="o1", max_wait_time=2) as receiver,
    ):
        messages = await receiver.receive_messages(max_message_count=3, max_wait_time=2)
        state = SessionState(blocked=True, reason="invalid-json: x",
                             deferred=[m.sequence_number for m in messages])  # fmt: skip
        await receiver.session.set_state(state.to_bytes())
        for message in messages:
            await receiver.defer_message(message)
    faults = cosmos_emulator_server.admin
    async with open_resources(backends.settings()) as resources:
        await resources.store.set_blocked("o1", "invalid-json: x")
        faults.outage(8.0, operation="batch", path_contains=f"/dbs/{cosmos_database.name}/")
        try:
            started = time.monotonic()
            assert await admin(["unblock", "o1", "--wait", "20"]) == 0
            assert time.monotonic() - started > 6, "the replay met the outage"
        finally:
            faults.reset_faults()
        answer = emitted(capsys)[-1]
        assert (answer["unblocked"], answer["blocked_again"]) == ("o1", False)
        summary = await resources.store.get("o1")
        assert summary is not None
        assert summary["last_sequence"] == 3
        assert await resources.store.list_blocked() == []
    assert await backends.dead_letters() == []


async def test_an_unblock_cut_short_by_a_stop_is_finished_by_the_lanes_next_holder(
    backends: Backends, cosmos_database: CosmosDatabase,
    cosmos_emulator_server: RunningCosmosEmulator, capsys: Any,
) -> None:  # fmt: skip
    """The holder takes the request on, the store goes down during the replay, and the holder is
    stopped: the order stays blocked with its request; the next holder replays the rest, and the
    command, still waiting, reports it unblocked."""
    faults = cosmos_emulator_server.admin
    async with holding(backends, poison_policy="block") as (resources, _):
        order_id = orders_in_lane(1)[0]
        events = order_events(order_id)
        await backends.send(inbox_message(events[0], LANE), inbox_message(poison(order_id, 2), LANE),
                            *(inbox_message(raw, LANE) for raw in events[1:]))  # fmt: skip
        await eventually(
            deferred_in_lane(resources, order_id, 3), "blocked, its events deferred", wait=60
        )
        faults.outage(60.0, operation="batch", path_contains=f"/dbs/{cosmos_database.name}/")
        command = asyncio.create_task(admin(["unblock", order_id, "--wait", "30"]))

        async def taken_on() -> bool:
            record = await resources.store.blocked_record(order_id)
            return record is not None and "unblock_started" in record

        await eventually(taken_on, "the lane's holder took the unblock on", wait=60)
        await asyncio.sleep(1.0)  # its first replayed event waits out the outage
    faults.reset_faults()
    async with open_resources(backends.settings()) as resources:
        record = await resources.store.blocked_record(order_id)
        assert record is not None  # still blocked, the request recorded: nothing half done
        assert "unblock_requested" in record
        assert (await resources.store.get(order_id))["last_sequence"] == 1  # type: ignore[index]
    async with holding(backends, poison_policy="block") as (resources, _):
        assert await asyncio.wait_for(command, 60) == 0
        summary = await resources.store.get(order_id)
        assert summary is not None
        assert [h["sequence"] for h in summary["status_history"]] == [1, 3, 4]
        assert len(summary["lines"]) == 2
        assert await resources.store.list_blocked() == []
    assert emitted(capsys)[-1]["blocked_again"] is False
    (dead,) = await backends.dead_letters()
    assert dead.dead_letter_reason == "invalid-data"
