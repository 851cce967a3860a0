"""Consumer processes sharing the inbox's lanes (real SDKs, both emulators): three converge to a fair
share; one killed with kill -9 while orders flow, the two others take its lanes after its membership
record expires and its locks lapse; every order ends applied once, in order, nothing dead-lettered."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from eventflow_consumer.adapters.cosmos_projection import CosmosProjectionStore
from eventflow_consumer.bootstrap import open_resources
from eventflow_contracts.lanes import Lane, session_id_for
from eventflow_testing import eventually

from ..conftest import Backends, inbox_message, order_events  # type: ignore[import-not-found]

pytestmark = pytest.mark.slow

LANES = 8
PERIOD = 1.0  # the hold/rebalance period of these consumers


class Consumer:
    """A consumer process; what it holds, from its log ("lane held" / "lane no longer held")."""

    def __init__(self, backends: Backends, name: str) -> None:
        settings = {**backends.environment(), "CONSUMER_HTTP_PORT": "0",
                    "CONSUMER_INBOX_LANES": str(LANES), "CONSUMER_LANE_SHARE_SECONDS": str(PERIOD),
                    "CONSUMER_LANE_RETRY_SECONDS": "0.3", "CONSUMER_SESSION_RENEW_SECONDS": "0.5",
                    "CONSUMER_MAX_CONCURRENT_SESSIONS": "2", "CONSUMER_LEFTOVER_SESSIONS": "2",
                    "CONSUMER_STORE_RETRY_MAX_SECONDS": "0.2"}  # fmt: skip
        self.name = name
        self.process = subprocess.Popen([sys.executable, "-m", "eventflow_consumer.main"], env={**os.environ, **settings},
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)  # fmt: skip
        self.held: set[str] = set()
        self.most_held = 0  # the most lanes held at once since `reset`
        self.applied: list[str] = []  # message ids
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            record = orjson.loads(line)
            event = record.get("event")
            if event == "lane held":
                self.held.add(record["lane"])
                self.most_held = max(self.most_held, len(self.held))
            elif event == "lane no longer held":
                self.held.discard(record["lane"])
            elif event == "applied":
                self.applied.append(record["message_id"])

    def reset(self) -> None:
        self.most_held = len(self.held)


async def until(check: Callable[[], bool], what: Callable[[], str], wait: float) -> None:
    """eventually(), its failure naming the replicas' state at that moment."""
    try:
        await eventually(check, "the lanes' condition", wait=wait)
    except AssertionError:
        raise AssertionError(what()) from None


def fair(consumers: list[Consumer]) -> Callable[[], bool]:
    share = math.ceil(LANES / len(consumers))

    def check() -> bool:
        held = [lane for c in consumers for lane in c.held]
        return (sorted(held) == sorted(Lane(LANES, n).session_id for n in range(LANES))
                and all(0 < len(c.held) <= share for c in consumers))  # fmt: skip

    return check


def holding(consumers: list[Consumer]) -> Callable[[], str]:
    return lambda: str({c.name: sorted(c.held) for c in consumers})


@pytest.mark.long
async def test_replicas_converge_to_a_fair_share_and_take_a_killed_ones_lanes(
    backends: Backends,
) -> None:
    orders = [f"o{n}" for n in range(48)]
    messages = [
        inbox_message(raw, session_id_for(o, LANES)) for o in orders for raw in order_events(o)
    ]
    consumers = [Consumer(backends, name) for name in ("a", "b", "c")]
    try:
        # within 2 periods of the last start (plus the processes' start on a busy machine)
        await until(fair(consumers), holding(consumers), 60)
        await backends.send(*messages[: len(messages) // 2])
        killed, *alive = consumers
        await until(lambda: len(killed.applied) > 0, lambda: "nothing applied by a", 60)
        killed.process.send_signal(signal.SIGKILL)
        killed.process.wait()
        killed.held.clear()
        await backends.send(*messages[len(messages) // 2 :])
        for c in alive:
            c.reset()
        # its record expires after 3 periods, its locks after 2 s: then its lanes are taken
        await until(fair(alive), holding(alive), 60)
        assert all(c.most_held <= math.ceil(LANES / 2) for c in alive), holding(alive)()
        async with backends.cosmos.client() as client:
            container = client.get_database_client(backends.cosmos.name).get_container_client(
                "order-summaries"
            )
            store = CosmosProjectionStore(container, mark_ttl_seconds=3600)
            for order_id in orders:
                summary = await _eventually(lambda o=order_id: store.get(o), 90)  # type: ignore[misc]
                statuses = [h["status"] for h in summary["status_history"]]
                assert statuses == ["open", "submitted", "cancelled"]
                assert len(summary["lines"]) == 2  # the item added once
    finally:
        for consumer in consumers:
            if consumer.process.poll() is None:
                consumer.process.send_signal(signal.SIGTERM)
        for consumer in consumers[1:]:
            assert consumer.process.wait(timeout=60) == 0
    applied = [m for c in consumers for m in c.applied]
    assert len(applied) == len(set(applied)), "an event applied twice"
    assert await backends.dead_letters() == []


async def _eventually(read: Callable[[], Any], wait: float) -> dict[str, Any]:
    async def applied() -> dict[str, Any] | None:
        summary = await read()
        return dict(summary) if summary is not None and summary["last_sequence"] == 4 else None

    found: dict[str, Any] = await eventually(applied, "every event of the order applied", wait=wait)
    return found


async def test_replicas_starting_together_on_a_new_database_all_connect(backends: Backends) -> None:
    """Each creates the containers it needs (emulator mode): the replicas that lose the race to
    create one find it on their next attempt instead of ending (a 409 from the create)."""
    settings = backends.settings(inbox_lanes=LANES)
    async with contextlib.AsyncExitStack() as stack:
        opening = [stack.enter_async_context(open_resources(settings)) for _ in range(4)]
        resources = await asyncio.wait_for(asyncio.gather(*opening), 120)
        assert all(r.members is not None for r in resources)
