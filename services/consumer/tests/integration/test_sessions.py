"""The consumer in-process on the stand-ins: exactly-once effects, duplicates, ordering, max delivery,
lock expiry after a crash, and the block → defer → unblock cycle."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from azure.servicebus import ServiceBusSubQueue

from eventflow_consumer.adapters.servicebus_sessions import SessionPump, delivery_of
from eventflow_consumer.admin import run as admin
from eventflow_consumer.bootstrap import Resources, open_resources
from eventflow_consumer.handling import InboxHandler, SessionState
from eventflow_consumer.main import worker_of
from eventflow_consumer.settings import Settings
from eventflow_emulators.cosmos.testing import RunningCosmosEmulator
from eventflow_local import LocalEnvironment
from eventflow_local.servicebus import ServiceBusAdministrationClient, ServiceBusClient

from ..conftest import (  # type: ignore[import-not-found]
    CosmosDatabase,
    inbox_message,
    order_events,
)


def settings_for(environment: LocalEnvironment, **changes: Any) -> Settings:
    return Settings(mode="local", local_dir=environment.folder, session_idle_seconds=0.3, session_renew_seconds=0.5,
                    max_concurrent_sessions=2, **changes)  # fmt: skip


@asynccontextmanager
async def consumer(environment: LocalEnvironment, **changes: Any) -> AsyncIterator[Resources]:
    settings = settings_for(environment, **changes)
    async with open_resources(settings) as resources:
        pump = SessionPump(resources.servicebus, "inbox", worker_of(settings, resources), concurrency=2,
                           idle_seconds=0.3, renew_seconds=0.5)  # fmt: skip
        task = asyncio.create_task(pump.run())
        try:
            yield resources
        finally:
            pump.stop()
            await task


async def send(environment: LocalEnvironment, *messages: Any) -> None:
    async with ServiceBusClient(environment) as client, client.get_queue_sender("inbox") as sender:
        await sender.send_messages(list(messages))


async def until(check: Callable[[], Any], what: str, wait: float = 20.0) -> None:
    deadline = time.monotonic() + wait
    while not await check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


async def dead_letters(environment: LocalEnvironment) -> list[Any]:
    async with (
        ServiceBusClient(environment) as client,
        client.get_queue_receiver("inbox", sub_queue=ServiceBusSubQueue.DEAD_LETTER) as dlq,
    ):
        return list(await dlq.peek_messages(max_message_count=100))


def at_sequence(resources: Resources, order_id: str, sequence: int) -> Callable[[], Any]:
    async def check() -> bool:
        summary = await resources.store.get(order_id)
        return summary is not None and summary["last_sequence"] == sequence

    return check


async def test_orders_are_projected_in_order_and_each_event_applied_once(
    environment: LocalEnvironment,
) -> None:
    for n in range(5):
        await send(environment, *(inbox_message(raw, f"o{n}") for raw in order_events(f"o{n}")))
    async with consumer(environment) as resources:
        for n in range(5):
            await until(at_sequence(resources, f"o{n}", 4), f"o{n} fully projected")
        summary = await resources.store.get("o3")
    assert summary is not None
    assert (summary["status"], summary["total"]) == ("cancelled", "20.00")
    assert [h["sequence"] for h in summary["status_history"]] == [1, 3, 4]


async def test_the_same_event_delivered_twice_changes_the_projection_once(
    environment: LocalEnvironment,
) -> None:
    created, added = order_events("o1")[:2]
    # The second copy has another message id, so only the consumer's inbox marks can stop it.
    await send(
        environment,
        inbox_message(created, "o1"),
        inbox_message(added, "o1"),
        inbox_message(added, "o1", "copy"),
    )
    async with consumer(environment) as resources:
        await until(at_sequence(resources, "o1", 2), "projected")
        await until(lambda: _queue_empty(environment), "the copy settled too")
        summary = await resources.store.get("o1")
    assert summary is not None
    assert len(summary["lines"]) == 2
    assert await dead_letters(environment) == []


async def test_an_out_of_order_replay_is_harmless(environment: LocalEnvironment) -> None:
    events = order_events("o1")
    await send(environment, *(inbox_message(raw, "o1") for raw in events[:3]))
    async with consumer(environment) as resources:
        await until(at_sequence(resources, "o1", 3), "projected")
        await send(
            environment,
            inbox_message(events[0], "o1", "replay-1"),
            inbox_message(events[1], "o1", "replay-2"),
        )
        await until(lambda: _queue_empty(environment), "the replays settled")
        summary = await resources.store.get("o1")
    assert summary is not None
    assert (summary["last_sequence"], len(summary["lines"]), summary["status"]) == (
        3,
        2,
        "submitted",
    )


async def test_past_max_delivery_count_a_message_is_dead_lettered(
    environment: LocalEnvironment,
    cosmos_database: CosmosDatabase,
    cosmos_emulator_server: RunningCosmosEmulator,
) -> None:
    admin = cosmos_emulator_server.admin
    admin.inject_fault(
        "unavailable", count=1000, operation="batch", path_contains=f"/dbs/{cosmos_database.name}/"
    )
    await send(environment, inbox_message(order_events("o1")[0], "o1"))
    try:
        async with consumer(environment, transient_attempts=1):
            await until(lambda: _has_dead_letters(environment), "dead-lettered", wait=30)
    finally:
        admin.reset_faults()
    (dead,) = await dead_letters(environment)
    assert dead.dead_letter_reason == "MaxDeliveryCountExceeded"


async def test_a_crash_with_the_lock_held_redelivers_and_the_effect_stays_single(
    environment: LocalEnvironment,
) -> None:
    created = order_events("o1")[0]
    await send(environment, inbox_message(created, "o1"))
    settings = settings_for(environment)
    async with open_resources(settings) as resources:
        receiver = resources.servicebus.get_queue_receiver(
            "inbox", session_id="o1", max_wait_time=2
        )
        await receiver.__aenter__()
        (message,) = await receiver.receive_messages(max_wait_time=2)
        decision = await InboxHandler(resources.store).handle(delivery_of(message), SessionState())
        assert (
            decision.effect
        )  # applied; then the process dies before completing: locks simply expire
    async with consumer(environment) as resources:
        await until(
            lambda: _queue_empty(environment), "the message redelivered and completed", wait=20
        )
        summary = await resources.store.get("o1")
    assert summary is not None
    assert (summary["last_sequence"], len(summary["lines"])) == (1, 1)


async def test_block_defers_the_session_until_unblocked_then_replays_in_order(
    environment: LocalEnvironment, monkeypatch: Any
) -> None:
    created, added, submitted, _ = order_events("o1")
    await send(environment, inbox_message(created, "o1"), inbox_message(b"{not json", "o1", "poison"),
               inbox_message(added, "o1"), inbox_message(submitted, "o1"))  # fmt: skip
    await send(environment, *(inbox_message(raw, "o2") for raw in order_events("o2")[:2]))
    async with consumer(environment, poison_policy="block") as resources:
        await until(lambda: _has_dead_letters(environment), "the poison message dead-lettered")
        await until(at_sequence(resources, "o2", 2), "other sessions go on")
        await until(
            lambda: _queue_empty(environment), "o1's later messages deferred (no longer active)"
        )
        summary = await resources.store.get("o1")
        assert summary is not None
        assert summary["last_sequence"] == 1, "later messages of the blocked session wait"
        (blocked,) = await resources.store.list_blocked()
        assert blocked["order_id"] == "o1"
        assert blocked["reason"].startswith("invalid-json")
        monkeypatch.setenv("CONSUMER_MODE", "local")
        monkeypatch.setenv("CONSUMER_LOCAL_DIR", str(environment.folder))
        assert await admin(["unblock", "o1", "--wait", "20"]) == 0
        await until(at_sequence(resources, "o1", 3), "the deferred messages replayed in order")
        assert await resources.store.list_blocked() == []
    (dead,) = await dead_letters(environment)
    assert (dead.message_id, dead.dead_letter_reason) == ("poison", "invalid-json")


async def test_the_admin_lists_and_resubmits_dead_letters(
    environment: LocalEnvironment, monkeypatch: Any, capsys: Any
) -> None:
    await send(environment, inbox_message(b"{not json", "o9", "bad-1"))
    async with consumer(environment):
        await until(lambda: _has_dead_letters(environment), "dead-lettered")
    monkeypatch.setenv("CONSUMER_LOCAL_DIR", str(environment.folder))
    assert await admin(["dead-letters"]) == 0
    assert '"reason":"invalid-json"' in capsys.readouterr().out
    assert await admin(["resubmit", "--message-id", "bad-1", "--new-message-id"]) == 0
    assert '"resubmitted":"bad-1"' in capsys.readouterr().out
    assert await dead_letters(environment) == []
    async with (
        ServiceBusClient(environment) as client,
        client.get_queue_receiver("inbox", session_id="o9", max_wait_time=2) as receiver,
    ):
        (copy,) = await receiver.peek_messages()
    assert copy.message_id.startswith("bad-1:resubmitted:")


async def _has_dead_letters(environment: LocalEnvironment) -> bool:
    return bool(await dead_letters(environment))


async def _queue_empty(environment: LocalEnvironment) -> bool:
    async with ServiceBusAdministrationClient(environment) as admin_client:
        counts = await admin_client.get_queue_runtime_properties("inbox")
    return counts["active_message_count"] == 0
