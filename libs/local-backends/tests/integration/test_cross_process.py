"""The stand-ins shared by separate OS processes: what one process writes, another sees; locks and
ownership hold across processes; a killed process's work is taken over."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
from azure.eventhub import EventData
from azure.servicebus import ServiceBusMessage

from eventflow_local.checkpoints import SqliteCheckpointStore
from eventflow_local.environment import LocalEnvironment
from eventflow_local.eventhubs import LOCAL_NAMESPACE, EventHubProducerClient, create_event_hub
from eventflow_local.servicebus import ServiceBusAdministrationClient, ServiceBusClient

WORKERS = Path(__file__).with_name("workers.py")


class Worker:
    """A worker process whose JSON lines are collected by a reader thread."""

    def __init__(self, command: str, folder: Path, argument: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(WORKERS), command, str(folder), argument],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self.lines: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(orjson.loads(line))

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


@contextmanager
def workers(*specs: tuple[str, Path, str]) -> Iterator[list[Worker]]:
    started = [Worker(*spec) for spec in specs]
    try:
        yield started
    finally:
        for worker in started:
            worker.stop()


async def eventually(check: Any, wait: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + wait
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {wait}s")
        await asyncio.sleep(0.05)


async def test_two_consumer_processes_split_the_hub_and_a_killed_ones_partitions_are_taken_over(
    tmp_path: Path,
) -> None:
    environment = LocalEnvironment(tmp_path)
    await create_event_hub(environment, "orders", partition_count=4)
    store = SqliteCheckpointStore(environment)

    async def owners() -> dict[str, str | None]:
        listed = await store.list_ownership(LOCAL_NAMESPACE, "orders", "subscriber")
        return {o["partition_id"]: o["owner_id"] for o in listed}

    async def send(prefix: str) -> list[str]:
        bodies = [f"{prefix}-{n}" for n in range(40)]
        async with EventHubProducerClient(environment, eventhub_name="orders") as producer:
            for n, body in enumerate(bodies):
                batch = await producer.create_batch(partition_key=f"order-{n % 10}")
                batch.add(EventData(body))
                await producer.send_batch(batch)
        return bodies

    with workers(("eh-consume", tmp_path, "a"), ("eh-consume", tmp_path, "b")) as (a, b):
        split: dict[str, str | None] = {}

        async def balanced() -> bool:
            split.update(await owners())
            return sorted(split.values()) == ["a", "a", "b", "b"]

        deadline = time.monotonic() + 20
        while not await balanced():
            assert time.monotonic() < deadline, f"never balanced: {split}"
            await asyncio.sleep(0.1)
        before = await send("before")
        a.kill()
        deadline = time.monotonic() + 20
        while set((await owners()).values()) != {"b"}:
            assert time.monotonic() < deadline, f"b never took over: {await owners()}"
            await asyncio.sleep(0.1)
        after = await send("after")

        def received() -> set[str]:
            return {line["body"] for line in a.lines + b.lines if "body" in line}

        await eventually(lambda: set(before + after) <= received(), what="every event received")
    await store.close()


async def test_two_receiver_processes_never_hold_one_session_at_once(tmp_path: Path) -> None:
    environment = LocalEnvironment(tmp_path)
    async with ServiceBusAdministrationClient(environment) as admin:
        await admin.create_queue(
            "inbox", requires_session=True, lock_duration=timedelta(seconds=30)
        )
    async with ServiceBusClient(environment) as client, client.get_queue_sender("inbox") as sender:
        await sender.send_messages(
            [ServiceBusMessage(f"{s}:{n}", session_id=f"s{s}") for s in range(8) for n in range(4)]
        )
    with workers(("sb-sessions", tmp_path, "inbox"), ("sb-sessions", tmp_path, "inbox")) as pair:
        await eventually(
            lambda: all(any("done" in line for line in w.lines) for w in pair), wait=60
        )
    spans: list[tuple[float, float, int, str]] = []
    for index, worker in enumerate(pair):
        opened: dict[str, float] = {}
        for line in worker.lines:
            if "acquired" in line:
                opened[line["acquired"]] = line["t"]
            elif "releasing" in line:
                spans.append((opened.pop(line["releasing"]), line["t"], index, line["releasing"]))
    for start, end, index, session in spans:
        for other_start, other_end, other_index, other_session in spans:
            if session == other_session and index != other_index:
                assert end <= other_start or other_end <= start, (
                    f"session {session} held twice at once"
                )
    handled = sorted(line["body"] for worker in pair for line in worker.lines if "handling" in line)
    assert handled == sorted(f"{s}:{n}" for s in range(8) for n in range(4))
    assert all(any("handling" in line for line in worker.lines) for worker in pair), (
        "one process did nothing"
    )


async def test_a_message_locked_by_a_killed_process_is_redelivered(tmp_path: Path) -> None:
    environment = LocalEnvironment(tmp_path)
    async with ServiceBusAdministrationClient(environment) as admin:
        await admin.create_queue("work", lock_duration=timedelta(seconds=1))
    async with ServiceBusClient(environment) as client:
        async with client.get_queue_sender("work") as sender:
            await sender.send_messages(ServiceBusMessage("job", message_id="job-1"))
        with workers(("sb-take-one", tmp_path, "work")) as (holder,):
            await eventually(lambda: holder.lines, what="the message to be locked")
            holder.kill()
        assert holder.lines[0] == holder.lines[0] | {"locked": "job-1", "delivery_count": 0}
        async with client.get_queue_receiver("work", max_wait_time=5) as receiver:
            assert await receiver.receive_messages(max_wait_time=0.2) == []  # still locked
            (again,) = await receiver.receive_messages(max_wait_time=5)
            await receiver.complete_message(again)
    assert (again.message_id, again.delivery_count) == ("job-1", 1)
