"""The consumer in-process on the real azure-servicebus and azure-cosmos SDKs, against the messaging
and Cosmos DB emulators: exactly-once effects, duplicates, ordering, max delivery, lock expiry after a
crash, and the block → defer → unblock cycle."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from eventflow_consumer.adapters.servicebus_sessions import SessionPump, delivery_of
from eventflow_consumer.admin import run as admin
from eventflow_consumer.bootstrap import Resources, open_resources, worker_of
from eventflow_consumer.handling import InboxHandler
from eventflow_consumer.session_state import SessionState
from eventflow_consumer.sessions import SessionWorker
from eventflow_consumer.settings import Settings
from eventflow_contracts.lanes import Lane, lane_of
from eventflow_emulators.cosmos.testing import RunningCosmosEmulator
from eventflow_testing import eventually as until

from ..conftest import (  # type: ignore[import-not-found]
    Backends,
    CosmosDatabase,
    inbox_message,
    order_events,
)


def settings_for(backends: Backends, **changes: Any) -> Settings:
    return backends.settings(session_idle_seconds=0.3, session_renew_seconds=0.5,
                             max_concurrent_sessions=2, **changes)  # fmt: skip


@asynccontextmanager
async def consumer(
    backends: Backends,
    worker: Callable[[Settings, Resources], SessionWorker] = worker_of,
    **changes: Any,
) -> AsyncIterator[Resources]:
    async with running(backends, worker, **changes) as (resources, _, _):
        yield resources


@asynccontextmanager
async def running(
    backends: Backends,
    worker: Callable[[Settings, Resources], SessionWorker] = worker_of,
    **changes: Any,
) -> AsyncIterator[tuple[Resources, SessionWorker, asyncio.Task[None]]]:
    settings = settings_for(backends, **changes)
    # The pump's client keeps the SDK's 3 retries, with short backoffs so that the settlement
    # tests (server busy) finish quickly.
    async with (
        open_resources(settings) as resources,
        backends.client(retry_backoff_factor=0.05, retry_backoff_max=0.2) as client,
    ):
        session_worker = worker(settings, resources)
        pump = SessionPump(client, settings.inbox_queue, session_worker, concurrency=2,
                           idle_seconds=0.3, renew_seconds=0.5, accept_wait_seconds=1.5)  # fmt: skip
        task = asyncio.create_task(pump.run())
        try:
            yield resources, session_worker, task
        finally:
            pump.stop()
            await task


def at_sequence(resources: Resources, order_id: str, sequence: int) -> Callable[[], Any]:
    async def check() -> bool:
        summary = await resources.store.get(order_id)
        return summary is not None and summary["last_sequence"] == sequence

    return check


async def test_orders_are_projected_in_order_and_each_event_applied_once(
    backends: Backends,
) -> None:
    for n in range(5):
        await backends.send(*(inbox_message(raw, f"o{n}") for raw in order_events(f"o{n}")))
    async with consumer(backends) as resources:
        for n in range(5):
            await until(at_sequence(resources, f"o{n}", 4), f"o{n} fully projected")
        summary = await resources.store.get("o3")
    assert summary is not None
    assert (summary["status"], summary["total"]) == ("cancelled", "20.00")
    assert [h["sequence"] for h in summary["status_history"]] == [1, 3, 4]


async def test_the_same_event_delivered_twice_changes_the_projection_once(
    backends: Backends,
) -> None:
    created, added = order_events("o1")[:2]
    # The second copy has another message id, so only the consumer's inbox marks can stop it.
    await backends.send(
        inbox_message(created, "o1"),
        inbox_message(added, "o1"),
        inbox_message(added, "o1", "copy"),
    )
    async with consumer(backends) as resources:
        await until(at_sequence(resources, "o1", 2), "projected")
        await until(lambda: backends.settled("o1"), "the copy settled too")
        summary = await resources.store.get("o1")
    assert summary is not None
    assert len(summary["lines"]) == 2
    assert await backends.dead_letters() == []


async def test_an_out_of_order_replay_is_harmless(backends: Backends) -> None:
    events = order_events("o1")
    await backends.send(*(inbox_message(raw, "o1") for raw in events[:3]))
    async with consumer(backends) as resources:
        await until(at_sequence(resources, "o1", 3), "projected")
        await backends.send(
            inbox_message(events[0], "o1", "replay-1"),
            inbox_message(events[1], "o1", "replay-2"),
        )
        await until(lambda: backends.settled("o1"), "the replays settled")
        summary = await resources.store.get("o1")
    assert summary is not None
    assert (summary["last_sequence"], len(summary["lines"]), summary["status"]) == (
        3,
        2,
        "submitted",
    )


async def test_a_store_outage_longer_than_every_delivery_spends_none_of_them(
    backends: Backends,
    cosmos_database: CosmosDatabase,
    cosmos_emulator_server: RunningCosmosEmulator,
) -> None:
    # 8 s of 503s from the store outlast the 2 s lock and 3 deliveries of this queue.
    admin = cosmos_emulator_server.admin
    await backends.send(inbox_message(order_events("o1")[0], "o1"))
    admin.outage(8.0, operation="batch", path_contains=f"/dbs/{cosmos_database.name}/")
    try:
        async with running(backends, store_retry_max_seconds=0.5) as (resources, worker, _):
            await until(_async(lambda: not worker.health.available), "unready during the outage")
            await until(at_sequence(resources, "o1", 1), "applied once the store is back", wait=60)
            await until(_async(lambda: worker.health.available), "ready again")
    finally:
        admin.reset_faults()
    assert await backends.dead_letters() == []


async def test_one_failing_session_never_stops_the_others(backends: Backends) -> None:
    def broken_for_bad(settings: Settings, resources: Resources) -> SessionWorker:
        return SessionWorker(InboxHandler(BrokenFor("bad", resources.store)), resources.store)

    await backends.send(inbox_message(order_events("bad")[0], "bad"))
    await backends.send(*(inbox_message(raw, "o1") for raw in order_events("o1")))
    async with running(backends, broken_for_bad) as (resources, _, pump):
        await until(at_sequence(resources, "o1", 4), "other sessions go on")
        # Abandoned explicitly on every failure: Service Bus counts each and dead-letters it at last.
        await until(backends.has_dead_letters, "the failing message dead-lettered")
        assert not pump.done()
    (dead,) = await backends.dead_letters()
    assert (dead.session_id, dead.dead_letter_reason) == ("bad", "MaxDeliveryCountExceeded")


class BrokenFor:
    """The real store, except that every read and write of one order fails with an unexpected
    error (an order's first event is written without a read)."""

    def __init__(self, order_id: str, store: Any) -> None:
        self._order_id, self._store = order_id, store

    def _check(self, order_id: str) -> None:
        if order_id == self._order_id:
            raise RuntimeError("a bug that only this order meets")

    async def load(self, order_id: str) -> Any:
        self._check(order_id)
        return await self._store.load(order_id)

    async def commit(self, summary: Any, *args: Any) -> None:
        self._check(summary.order_id)
        await self._store.commit(summary, *args)


def _async(check: Callable[[], bool]) -> Callable[[], Any]:
    async def checked() -> bool:
        return check()

    return checked


async def test_a_crash_with_the_lock_held_redelivers_and_the_effect_stays_single(
    backends: Backends,
) -> None:
    created = order_events("o1")[0]
    await backends.send(inbox_message(created, "o1"))
    settings = settings_for(backends)
    async with open_resources(settings) as resources:
        receiver = resources.servicebus.get_queue_receiver(
            settings.inbox_queue, session_id="o1", max_wait_time=2
        )
        await receiver.__aenter__()
        (message,) = await receiver.receive_messages(max_wait_time=2)
        decision = await InboxHandler(resources.store).handle(delivery_of(message))
        assert decision.effect  # applied; then the process dies before completing
        # While the process is gone its session lock simply runs out (the emulator's control
        # expires it now instead of after the 2 s): Service Bus counts a delivery and offers the
        # message again. Closing afterwards settles nothing.
        assert backends.admin.expire_lock(backends.queue, session_id="o1") == 1
    async with consumer(backends) as resources:
        await until(
            lambda: backends.settled("o1"), "the message redelivered and completed", wait=20
        )
        summary = await resources.store.get("o1")
    assert summary is not None
    assert (summary["last_sequence"], len(summary["lines"])) == (1, 1)


async def test_block_defers_the_session_until_unblocked_then_replays_in_order(
    backends: Backends, monkeypatch: Any
) -> None:
    created, added, submitted, _ = order_events("o1")
    await backends.send(inbox_message(created, "o1"), inbox_message(b"{not json", "o1", "poison"),
               inbox_message(added, "o1"), inbox_message(submitted, "o1"))  # fmt: skip
    await backends.send(*(inbox_message(raw, "o2") for raw in order_events("o2")[:2]))
    async with consumer(backends, poison_policy="block") as resources:
        await until(backends.has_dead_letters, "the poison message dead-lettered")
        await until(at_sequence(resources, "o2", 2), "other sessions go on")
        await until(
            lambda: backends.settled("o1", "o2"), "o1's later messages deferred (no longer active)"
        )
        summary = await resources.store.get("o1")
        assert summary is not None
        assert summary["last_sequence"] == 1, "later messages of the blocked session wait"
        (blocked,) = await resources.store.list_blocked()
        assert blocked["order_id"] == "o1"
        assert blocked["reason"].startswith("invalid-json")
        assert await admin(["unblock", "o1", "--wait", "20"]) == 0
        await until(at_sequence(resources, "o1", 3), "the deferred messages replayed in order")
        assert await resources.store.list_blocked() == []
    (dead,) = await backends.dead_letters()
    assert (dead.message_id, dead.dead_letter_reason) == ("poison", "invalid-json")


async def test_the_admin_lists_and_resubmits_dead_letters_under_a_new_id_by_default(
    backends: Backends, monkeypatch: Any, capsys: Any
) -> None:
    await one_dead_letter(backends, monkeypatch, "bad-1")
    assert await admin(["dead-letters"]) == 0
    assert '"reason":"invalid-json"' in capsys.readouterr().out
    assert await admin(["resubmit", "--message-id", "bad-1"]) == 0
    assert '"resubmitted":"bad-1"' in capsys.readouterr().out
    assert await backends.dead_letters() == []
    async with (
        backends.client() as client,
        client.get_queue_receiver(backends.queue, session_id="o9", max_wait_time=2) as receiver,
    ):
        (copy,) = await receiver.peek_messages()
    assert copy.message_id.startswith("bad-1:resubmitted:")


async def test_resubmit_sends_the_copy_to_its_orders_lane_under_todays_lane_count(
    backends: Backends, monkeypatch: Any, capsys: Any
) -> None:
    """An event dead-lettered `lane-mismatch` (sent to the wrong lane) goes back to its own lane;
    a marker (its session is not an order's) keeps its session."""
    created = order_events("o7")[0]
    own = lane_of("o7", 8)
    wrong = Lane(8, (own.index + 1) % 8).session_id
    marker = inbox_message(b'{"reason": "invalid-json"}', "eventflow.unroutable", "marker-1",
                           eventflow_unroutable=True, reason="invalid-json")  # fmt: skip
    await backends.send(inbox_message(created, wrong, "misrouted"), marker)
    async with consumer(backends):
        await until(lambda: _count_dead_letters(backends, 2), "both dead-lettered")
    reasons = {m.message_id: m.dead_letter_reason for m in await backends.dead_letters()}
    assert reasons == {"misrouted": "lane-mismatch", "marker-1": "unroutable:invalid-json"}
    monkeypatch.setenv("CONSUMER_INBOX_LANES", "8")
    assert await admin(["resubmit"]) == 0
    out = capsys.readouterr().out
    assert f'"session_id":"{own.session_id}"' in out
    assert '"session_id":"eventflow.unroutable"' in out
    async with (
        backends.client() as client,
        client.get_queue_receiver(
            backends.queue, session_id=own.session_id, max_wait_time=2
        ) as receiver,
    ):
        (copy,) = await receiver.peek_messages()
    assert copy.message_id.startswith("misrouted:resubmitted:")


async def _count_dead_letters(backends: Backends, count: int) -> bool:
    return len(await backends.dead_letters()) >= count


async def test_a_copy_that_keeps_its_id_leaves_the_original_in_the_dead_letter_queue(
    backends: Backends, monkeypatch: Any, capsys: Any
) -> None:
    await one_dead_letter(backends, monkeypatch, "bad-1")
    assert await admin(["resubmit", "--message-id", "bad-1", "--keep-message-id"]) == 0
    assert '"original":"kept in the dead-letter queue"' in capsys.readouterr().out
    # Inside the duplicate-detection window the copy was dropped: the original is all there is.
    assert [m.message_id for m in await backends.dead_letters()] == ["bad-1"]


async def test_resubmit_finds_a_message_id_past_the_first_page(
    backends: Backends, monkeypatch: Any, capsys: Any
) -> None:
    await backends.send(*(inbox_message(b"{not json", "o9", f"bad-{n}") for n in range(130)))
    async with (
        backends.client() as client,
        client.get_queue_receiver(backends.queue, session_id="o9", max_wait_time=2) as receiver,
    ):
        while batch := await receiver.receive_messages(max_message_count=50, max_wait_time=0.5):
            for message in batch:
                await receiver.dead_letter_message(message, reason="test")
    assert await admin(["resubmit", "--message-id", "bad-127"]) == 0
    assert '"resubmitted":"bad-127"' in capsys.readouterr().out
    assert len(await backends.dead_letters()) == 129
    assert await admin(["resubmit", "--message-id", "no-such-message"]) == 1
    capsys.readouterr()
    assert await admin(["dead-letters", "--limit", "120"]) == 0
    listed = [
        line
        for line in capsys.readouterr().out.splitlines()
        if line.startswith('{"sequence_number"')
    ]
    assert len(listed) == 120


async def test_the_admin_refuses_bad_input(
    backends: Backends, monkeypatch: Any, capsys: Any
) -> None:
    for argv in (
        ["dead-letters", "--limit", "0"],
        ["resubmit", "--limit", "-3"],
        ["unblock", "o1", "--wait", "x"],
    ):
        with pytest.raises(SystemExit) as exit_:
            await admin(argv)
        assert exit_.value.code == 2
        assert "error:" in capsys.readouterr().err
    assert await admin(["unblock", "no-such-order", "--wait", "5"]) == 1
    assert '"error":"session no-such-order is not blocked"' in capsys.readouterr().out


async def test_unblock_replays_under_the_block_policy_whatever_the_command_lines_policy(
    backends: Backends, monkeypatch: Any, capsys: Any
) -> None:
    created, added, _, _ = order_events("o1")
    await backends.send(inbox_message(created, "o1"), inbox_message(b"{not json", "o1", "poison-1"),
               inbox_message(b"{again", "o1", "poison-2"), inbox_message(added, "o1"))  # fmt: skip
    async with consumer(backends, poison_policy="block") as resources:
        await until(lambda: backends.settled("o1"), "deferred behind the block")
        monkeypatch.setenv("CONSUMER_POISON_POLICY", "skip")
        assert await admin(["unblock", "o1", "--wait", "20"]) == 0
        assert '"blocked_again":true' in capsys.readouterr().out
        (record,) = await resources.store.list_blocked()
        assert record["reason"].startswith("invalid-json")
        summary = await resources.store.get("o1")
        assert summary is not None
        assert summary["last_sequence"] == 1


async def test_on_accept_the_recorded_deferrals_are_reconciled_with_the_broker(
    backends: Backends, monkeypatch: Any, capsys: Any
) -> None:
    created, added, submitted, _ = order_events("o1")
    await backends.send(inbox_message(created, "o1"), inbox_message(added, "o1"))
    async with (
        backends.client() as client,
        client.get_queue_receiver(backends.queue, session_id="o1", max_wait_time=2) as receiver,
    ):
        first, second = await receiver.receive_messages(max_message_count=2, max_wait_time=2)
        await receiver.defer_message(first)
        await receiver.complete_message(second)  # recorded, but settled before it was forgotten
        recorded = [first.sequence_number, second.sequence_number]
        state = SessionState(blocked=True, reason="invalid-json: x", deferred=recorded)
        await receiver.session.set_state(state.to_bytes())
    await backends.send(inbox_message(submitted, "o1"))
    async with consumer(backends, poison_policy="block") as resources:
        await until(lambda: backends.settled("o1"), "the new message deferred")
        (record,) = await resources.store.list_blocked()  # repaired from the state
        assert record["reason"] == "invalid-json: x"
    async with (
        backends.client() as client,
        client.get_queue_receiver(backends.queue, session_id="o1", max_wait_time=2) as receiver,
    ):
        state = SessionState.from_bytes(await receiver.session.get_state())
    assert state.deferred[0] == first.sequence_number
    assert len(state.deferred) == 2  # the settled one dropped, the new one recorded
    async with consumer(backends) as resources:
        assert await admin(["unblock", "o1", "--wait", "20"]) == 0
        await until(
            at_sequence(resources, "o1", 3),
            "replayed: 1, then 3 over the gap left by 2 (settled with no effect)",
        )
    assert '"blocked_again":false' in capsys.readouterr().out


async def one_dead_letter(backends: Backends, monkeypatch: Any, message_id: str) -> None:
    """A malformed message dead-lettered by the consumer (the `backends` fixture already points
    the CLI at the test's inbox and database)."""
    await backends.send(inbox_message(b"{not json", "o9", message_id))
    async with consumer(backends):
        await until(backends.has_dead_letters, "dead-lettered")


async def test_a_completion_lost_with_the_connection_leaves_each_effect_once(
    backends: Backends,
) -> None:
    # The broker applies the first completion, then the connection drops before it answers. The
    # SDK does not retry on a session receiver's connection: it raises, the pump releases the
    # session, and whatever was not completed on the lost connection is received again on a new
    # one, where the inbox marks complete the events already applied without a second effect.
    await backends.send(*(inbox_message(raw, "o1") for raw in order_events("o1")))
    backends.admin.apply_then_drop("settle")
    try:
        async with consumer(backends) as resources:
            await until(at_sequence(resources, "o1", 4), "projected after the drop", wait=30)
            await until(lambda: backends.settled("o1"), "every message completed", wait=30)
            summary = await resources.store.get("o1")
    finally:
        backends.admin.clear()
    assert summary is not None
    assert (len(summary["lines"]), summary["status"]) == (2, "cancelled")
    assert [h["sequence"] for h in summary["status_history"]] == [1, 3, 4]
    assert await backends.dead_letters() == []


async def test_a_busy_broker_refusing_completions_never_duplicates_an_effect(
    backends: Backends,
) -> None:
    # 3 s of com.microsoft:server-busy on every settlement. The first event is applied, then its
    # completion is refused until the SDK's own retries run out (3, backing off 0.05 s to 0.2 s on
    # the pump's client); the pump releases the session with the message unsettled. Received
    # again, the projection's last sequence makes it a duplicate, completed without effect once
    # the broker takes completions again.
    await backends.send(*(inbox_message(raw, "o1") for raw in order_events("o1")))
    backends.admin.server_busy(3.0, operations=["settle"])
    try:
        async with consumer(backends) as resources:
            await until(at_sequence(resources, "o1", 4), "projected", wait=30)
            await until(lambda: backends.settled("o1"), "every message completed", wait=30)
            summary = await resources.store.get("o1")
    finally:
        backends.admin.clear()
    assert summary is not None
    assert (len(summary["lines"]), summary["status"]) == (2, "cancelled")
    assert [h["sequence"] for h in summary["status_history"]] == [1, 3, 4]
    assert await backends.dead_letters() == []
