"""Two consumer processes on one inbox: together they handle every session, each effect once, and no
session is handled by both at the same time."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
from typing import Any

import aiohttp
import orjson
import pytest

from eventflow_emulators.cosmos.testing import RunningCosmosEmulator
from eventflow_testing import eventually

from ..conftest import (  # type: ignore[import-not-found]
    Backends,
    CosmosDatabase,
    inbox_message,
    order_events,
)

pytestmark = pytest.mark.slow


class Consumer:
    def __init__(self, backends: Backends, name: str, port: int = 0) -> None:
        settings = {**backends.environment(), "CONSUMER_HTTP_PORT": str(port),
                    "CONSUMER_SESSION_IDLE_SECONDS": "0.3", "CONSUMER_MAX_CONCURRENT_SESSIONS": "2",
                    "CONSUMER_STORE_RETRY_MAX_SECONDS": "0.2"}  # fmt: skip
        self.name = name
        self.process = subprocess.Popen([sys.executable, "-m", "eventflow_consumer.main"], env={**os.environ, **settings},
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)  # fmt: skip
        self.applied: list[dict[str, Any]] = []
        self.connected = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            record = orjson.loads(line)
            if record.get("event") == "applied":
                self.applied.append(record)
            elif record.get("event") == "resources ready":
                self.connected.set()


async def test_two_processes_share_the_sessions_without_overlap(
    backends: Backends, cosmos_database: CosmosDatabase
) -> None:
    orders = [f"o{n}" for n in range(16)]
    consumers = [Consumer(backends, name) for name in ("a", "b")]
    try:
        # Both connected before the sessions exist: one that connects late (a slow start, or a
        # retry after losing the race to create a container) would otherwise find them all taken.
        for consumer in consumers:
            assert await asyncio.to_thread(consumer.connected.wait, 60), consumer.name
        await backends.send(*(inbox_message(raw, o) for o in orders for raw in order_events(o)))
        await eventually(lambda: sum(len(c.applied) for c in consumers) >= 4 * len(orders),
                         "every effect applied", wait=90)  # fmt: skip
        # Every message settled: no late duplicate can follow. A session found settled stays so
        # (nothing more is sent), and each check holds the session a moment: one at a time.
        pending = list(orders)

        async def settled_one() -> bool:
            if await backends.settled(pending[0]):
                pending.pop(0)
            return not pending

        await eventually(settled_one, "no message left in the inbox", wait=90)
    finally:
        for consumer in consumers:
            consumer.process.send_signal(signal.SIGTERM)
            assert consumer.process.wait(timeout=30) == 0
    effects = [(r["session"], r["sequence"]) for c in consumers for r in c.applied]
    assert sorted(effects) == sorted((o, s) for o in orders for s in range(1, 5)), (
        "every effect exactly once"
    )
    assert all(consumer.applied for consumer in consumers), "both processes took sessions"
    spans = {}
    for consumer in consumers:
        for record in consumer.applied:
            key = (consumer.name, record["session"])
            first, last = spans.get(key, (record["timestamp"], record["timestamp"]))
            spans[key] = (min(first, record["timestamp"]), max(last, record["timestamp"]))
    for order_id in orders:
        held = [span for (name, session), span in spans.items() if session == order_id]
        if len(held) == 2:
            (a_start, a_end), (b_start, b_end) = held
            assert a_end <= b_start or b_end <= a_start, f"{order_id} handled by both at once"
    async with cosmos_database.client() as cosmos:
        database = cosmos.get_database_client(cosmos_database.name)
        container = database.get_container_client("order-summaries")
        for order_id in orders:
            summary = await container.read_item(order_id, partition_key=order_id)
            assert (summary["last_sequence"], summary["status"]) == (4, "cancelled")


async def test_a_store_outage_turns_the_process_unready_until_it_ends(
    backends: Backends,
    cosmos_database: CosmosDatabase,
    cosmos_emulator_server: RunningCosmosEmulator,
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    admin = cosmos_emulator_server.admin
    admin.inject_fault(
        "unavailable", count=10**6, operation="batch", path_contains=f"/dbs/{cosmos_database.name}/"
    )
    await backends.send(inbox_message(order_events("o1")[0], "o1"))
    consumer = Consumer(backends, "a", port)
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
            await ready_is(http, 503, "unready during the outage")
            admin.reset_faults()
            await ready_is(http, 200, "ready once the store answers")
        await eventually(
            lambda: bool(consumer.applied), "the held message applied after the outage"
        )
    finally:
        consumer.process.send_signal(signal.SIGTERM)
        assert consumer.process.wait(timeout=30) == 0


async def ready_is(http: aiohttp.ClientSession, status: int, what: str) -> None:
    async def answers() -> bool:
        try:
            async with http.get("/readyz") as response:
                return response.status == status
        except aiohttp.ClientConnectionError:
            return False  # not listening yet

    await eventually(answers, what)
