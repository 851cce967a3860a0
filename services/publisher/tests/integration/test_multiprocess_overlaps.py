"""Three publisher processes under load on the real SDKs against the emulators: splits, a
SIGSTOP/SIGCONT longer than the lease expiry, a kill -9 and a restart under the same name. Every
handler call is recorded (tests/integration/recording_publisher.py); the test counts calls of two
live processes on overlapping feed ranges at the same time: 0.

A call in flight while its process was stopped is not a live one: a process paused by SIGSTOP can
finish a send it had begun when it resumes (at-least-once; the next stage deduplicates)."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from eventflow_emulators.messaging.reading import hub_contents
from eventflow_emulators.messaging.testing import RunningMessagingEmulator, messaging_emulator

from ..conftest import Store  # type: ignore[import-not-found]

pytestmark = [pytest.mark.slow, pytest.mark.long]
RECORDER = Path(__file__).with_name("recording_publisher.py")


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[RunningMessagingEmulator]:
    with messaging_emulator(tmp_path / "messaging") as emulator:
        yield emulator


def publisher(
    store: Store, hub: RunningMessagingEmulator, name: str, record: Path
) -> subprocess.Popen[bytes]:
    settings = {**store.settings(),
        "PUBLISHER_MODE": "emulator", "PUBLISHER_EVENTHUBS_CONNECTION_STRING": hub.connection_string,
        "PUBLISHER_INSTANCE_NAME": name, "RECORD_HANDLER_CALLS": str(record),
        "PUBLISHER_POLL_DELAY_SECONDS": "0.05", "PUBLISHER_MAX_POLL_DELAY_SECONDS": "0.05",
        "PUBLISHER_MAX_ITEMS_PER_PAGE": "20", "PUBLISHER_ACQUIRE_INTERVAL_SECONDS": "0.3",
        "PUBLISHER_RENEW_INTERVAL_SECONDS": "0.5", "PUBLISHER_LEASE_EXPIRY_SECONDS": "2",
        "PUBLISHER_HEALTH_PORT": "0", "PUBLISHER_LOG_LEVEL": "WARNING",
    }  # fmt: skip
    return subprocess.Popen(
        [sys.executable, str(RECORDER)], env={**os.environ, **settings},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def _end(bound: str) -> str:
    return "G" if bound.upper() == "FF" else bound.upper()  # "FF" is the end of the EPK space


def live_overlaps(
    calls: list[dict[str, Any]], stopped: dict[int, list[tuple[float, float]]]
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Pairs of calls of two processes on overlapping ranges at the same time, neither of them
    in flight across a stop of its process."""

    def live(call: dict[str, Any]) -> bool:
        return not any(
            call["start"] < cont and call["end"] > stop
            for stop, cont in stopped.get(call["pid"], [])
        )

    found = []
    for a, b in itertools.combinations([c for c in calls if live(c)], 2):
        if a["pid"] == b["pid"]:
            continue
        ranges_meet = a["min"].upper() < _end(b["max"]) and b["min"].upper() < _end(a["max"])
        if ranges_meet and a["start"] < b["end"] and b["start"] < a["end"]:
            found.append((a, b))
    return found


async def write(store: Store, order: int, sequence: int) -> None:
    from decimal import Decimal  # noqa: PLC0415

    from eventflow_contracts import OrderItemAdded, OrderLine, new_event, to_json_dict  # noqa: PLC0415

    order_id = f"order-{order}"
    data = OrderItemAdded(order_id=order_id,
                          line=OrderLine(sku="SKU-1", quantity=1, unit_price=Decimal("1.00")))  # fmt: skip
    event = new_event(data, source="/test", sequence=sequence)
    await store.orders.create_item({"id": f"{order_id}:event:{sequence:020d}", "order_id": order_id,
                                    "kind": "event", "event": to_json_dict(event)})  # fmt: skip


@pytest.mark.parametrize("feed_ranges", [8])
async def test_no_two_live_publishers_handle_one_range_at_once_through_splits_pauses_and_kills(
    store: Store, hub: RunningMessagingEmulator, tmp_path: Path
) -> None:
    record = tmp_path / "calls.jsonl"
    processes = {name: publisher(store, hub, name, record) for name in "abc"}
    stopped: dict[int, list[tuple[float, float]]] = {}
    orders, sequences = 16, dict.fromkeys(range(16), 0)
    writing = asyncio.Event()
    writing.set()

    async def writer() -> None:
        while writing.is_set():
            for order in range(orders):
                sequences[order] += 1
                await write(store, order, sequences[order])
            await asyncio.sleep(0.05)

    leases = await store.lease_store()

    async def owned() -> list[int]:
        found = [lease.owner for lease in await leases.list_leases()]
        return (
            sorted(found.count(name) for name in "abc" if name in found)
            if None not in found
            else []
        )

    try:
        deadline = time.monotonic() + 30
        while sum(await owned()) != 8:
            assert time.monotonic() < deadline, f"leases never all owned: {await owned()}"
            await asyncio.sleep(0.1)
        balanced = await owned()
        flowing = asyncio.create_task(writer())
        await asyncio.sleep(1.0)
        for range_id in ("0", "4"):  # splits under load
            await asyncio.to_thread(store.cosmos.admin.split, store.database, "orders", range_id)
            await asyncio.sleep(1.0)
        pid = processes["b"].pid
        processes["b"].send_signal(signal.SIGSTOP)  # longer than the expiry
        paused = time.monotonic()
        await asyncio.sleep(4.0)
        processes["b"].send_signal(signal.SIGCONT)
        stopped[pid] = [(paused, time.monotonic())]
        processes["a2"] = publisher(store, hub, "a", record)  # a copied name, beside a live "a"
        await asyncio.sleep(4.0)
        processes["c"].send_signal(signal.SIGKILL)
        processes["c"].wait()
        processes["c"] = publisher(store, hub, "c", record)  # a restart under the same name
        await asyncio.sleep(4.0)
        writing.clear()
        await flowing
        expected = {(f"order-{n}", s) for n in range(orders) for s in range(1, sequences[n] + 1)}
        deadline = time.monotonic() + 60
        while True:
            contents = await hub_contents(hub.connection_string, "orders")
            published = [
                (pid_, orjson.loads(b"".join(e.body))) for pid_, es in contents.items() for e in es
            ]
            seen = {(e["partitionkey"], int(e["sequence"])) for _, e in published}
            if expected <= seen or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        assert expected <= seen, f"{len(expected - seen)} of {len(expected)} events never published"
        for n in range(orders):
            mine = [int(e["sequence"]) for _, e in published if e["partitionkey"] == f"order-{n}"]
            first_seen = list(dict.fromkeys(mine))
            assert first_seen == sorted(first_seen), f"order-{n} out of order"
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGCONT)
                process.terminate()
                process.wait(timeout=20)
    calls = [orjson.loads(line) for line in record.read_bytes().splitlines() if line.strip()]
    overlaps = live_overlaps(calls, stopped)
    handled = sum(len(call["ids"]) for call in calls)
    sys.stdout.write(f"leases at the start {balanced}; {len(calls)} handler calls, {handled} documents handled for "
                     f"{len(expected)} events, {len(overlaps)} overlaps among live processes\n")  # fmt: skip
    assert overlaps == [], f"{len(overlaps)} overlaps, e.g. {overlaps[:2]}"
