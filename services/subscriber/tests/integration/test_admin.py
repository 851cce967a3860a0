"""`eventflow-subscriber-admin` on the real SDKs (the messaging emulator, the SDK's BlobCheckpointStore
on Azurite), run as the operator runs it: a process with the subscriber's settings.

The inbox queue here has no duplicate detection, so what a rewind replays is visible in the inbox
(with it, copies forwarded within the detection window are dropped by the broker: docs/operations.md).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from azure.storage.blob.aio import BlobServiceClient

from eventflow_emulators.messaging.testing import RunningMessagingEmulator, messaging_emulator
from eventflow_subscriber.admin import main as admin_main
from eventflow_testing import eventually

from ..conftest import (  # type: ignore[import-not-found]
    EVENTHUBS_CONFIG,
    PARTITIONS,
    SERVICEBUS_CONFIG,
    Backends,
    BlobServer,
    checkpointed,
    event_bytes,
    publish,
    read_inbox,
)

pytestmark = pytest.mark.slow
ORDERS = 10


@pytest.fixture
def replay_messaging(tmp_path: Path) -> Iterator[RunningMessagingEmulator]:
    servicebus = json.loads(json.dumps(SERVICEBUS_CONFIG))
    servicebus["UserConfig"]["Namespaces"][0]["Queues"][0]["Properties"][
        "RequiresDuplicateDetection"
    ] = False
    folder = tmp_path / "configs"
    folder.mkdir()
    (folder / "eventhubs.json").write_text(json.dumps(EVENTHUBS_CONFIG))
    (folder / "servicebus.json").write_text(json.dumps(servicebus))
    with messaging_emulator(
        tmp_path / "messaging",
        eventhubs_config=folder / "eventhubs.json",
        servicebus_config=folder / "servicebus.json",
    ) as emulator:
        yield emulator


@pytest.fixture
async def replay_backends(
    replay_messaging: RunningMessagingEmulator, azurite_server: BlobServer
) -> AsyncIterator[Backends]:
    container = f"checkpoints-{uuid.uuid4().hex[:12]}"
    service = BlobServiceClient.from_connection_string(azurite_server.connection_string)
    async with service:
        await service.create_container(container)
        yield Backends(replay_messaging, azurite_server.connection_string, container)
        await service.delete_container(container)


def environment(backends: Backends) -> dict[str, str]:
    settings = backends.subscriber_settings() | {
        "SUBSCRIBER_LOAD_BALANCING_INTERVAL_SECONDS": "0.5",
        "SUBSCRIBER_HEALTH_PORT": "0",
        "SUBSCRIBER_LOG_LEVEL": "WARNING",
    }
    return {k: v for k, v in os.environ.items() if not k.startswith("SUBSCRIBER_")} | settings


def start_subscriber(backends: Backends) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "eventflow_subscriber.main"], env=environment(backends),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def json_lines(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def admin(backends: Backends, *arguments: str) -> tuple[int, list[dict[str, Any]], str]:
    """The CLI as the operator runs it: a process; its exit status, JSON records and stderr."""
    done = subprocess.run(
        [sys.executable, "-m", "eventflow_subscriber.admin", *arguments],
        env=environment(backends), capture_output=True, timeout=120, check=False,
    )  # fmt: skip
    return done.returncode, json_lines(done.stdout.decode()), done.stderr.decode()


AdminRun = Callable[..., Awaitable[tuple[int, list[dict[str, Any]], str]]]


@pytest.fixture
def admin_in_process(backends: Backends, monkeypatch: Any, capsys: Any) -> AdminRun:
    """The CLI's own `main(argv)` in this process, with the same environment as `admin`: argument
    parsing, settings, the SDK clients and the exit status are the process's, without the ~2-6 s
    a new interpreter spends importing them. `main` runs its own event loop: in a thread."""
    for name in [name for name in os.environ if name.startswith("SUBSCRIBER_")]:
        monkeypatch.delenv(name)
    for name, value in environment(backends).items():
        if name.startswith("SUBSCRIBER_"):
            monkeypatch.setenv(name, value)

    async def run(*arguments: str) -> tuple[int, list[dict[str, Any]], str]:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exited:
            await asyncio.to_thread(admin_main, list(arguments))
        out, err = capsys.readouterr()
        return int(exited.value.code or 0), json_lines(out), err

    return run


async def forward_until(backends: Backends, events: int) -> None:
    """Runs a subscriber until `events` are checkpointed, then stops it (SIGTERM: claims released)."""
    process = start_subscriber(backends)
    store = backends.checkpoint_store()
    try:
        async with store:

            async def reached() -> bool:
                return await checkpointed(backends, store) == events

            await eventually(reached, f"{events} events checkpointed", wait=60)
    finally:
        process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.wait, 60) == 0


async def total_checkpointed(backends: Backends) -> int:
    async with backends.checkpoint_store() as store:
        return await checkpointed(backends, store)


def orders_events(sequences: range) -> list[tuple[str, bytes]]:
    return [
        (f"order-{n}", event_bytes(f"order-{n}", sequence))
        for sequence in sequences
        for n in range(ORDERS)
    ]


def sequences_by_order(inbox: dict[str, list[Any]]) -> dict[str, list[int]]:
    return {
        session: [m.application_properties[b"sequence"] for m in messages]
        for session, messages in inbox.items()
    }


@pytest.mark.long  # minutes on 2 cores: three forward passes and two rewinds through the real SDKs
async def test_rewind_replays_exactly_the_events_from_the_time_on_and_never_moves_forward(
    replay_backends: Backends,
) -> None:
    backends = replay_backends
    await publish(backends, orders_events(range(1, 3)))
    await forward_until(backends, 2 * ORDERS)
    rewind_to = datetime.now(UTC)
    # The enqueued times have millisecond precision: the next events are enqueued strictly later.
    await asyncio.sleep(0.01)
    await publish(backends, orders_events(range(3, 5)))

    code, records, _ = admin(backends, "rewind", "--to", rewind_to.isoformat())
    assert code == 0
    assert {r["action"] for r in records} <= {"unchanged"}, "never forward over unread events"
    assert await total_checkpointed(backends) == 2 * ORDERS

    await forward_until(backends, 4 * ORDERS)
    first_pass = sequences_by_order(await read_inbox(backends))
    assert first_pass == {f"order-{n}": [1, 2, 3, 4] for n in range(ORDERS)}

    code, records, _ = admin(backends, "checkpoints")
    assert code == 0
    assert len(records) == PARTITIONS
    assert sum(r["unread"] or 0 for r in records) == 0

    code, records, _ = admin(backends, "rewind", "--to", "beginning", "--dry-run")
    assert code == 0
    assert sum(r.get("replayed", 0) for r in records) == 4 * ORDERS

    code, records, _ = admin(backends, "rewind", "--to", rewind_to.isoformat(), "--dry-run")
    assert code == 0
    assert len(records) == PARTITIONS
    assert sum(r.get("replayed", 0) for r in records) == 2 * ORDERS
    assert all(r["dry_run"] for r in records)
    assert await total_checkpointed(backends) == 4 * ORDERS, "a dry run writes nothing"

    code, records, _ = admin(backends, "rewind", "--to", rewind_to.isoformat())
    assert code == 0
    assert sum(r.get("replayed", 0) for r in records) == 2 * ORDERS
    assert await total_checkpointed(backends) == 2 * ORDERS
    code, records, _ = admin(backends, "checkpoints")
    assert sum(r["unread"] for r in records) == 2 * ORDERS

    await forward_until(backends, 4 * ORDERS)
    replayed = sequences_by_order(await read_inbox(backends))
    assert replayed == {f"order-{n}": [3, 4] for n in range(ORDERS)}, (
        "exactly the events enqueued at or after the time, each once, in order"
    )


async def test_rewind_refuses_while_subscribers_claim_partitions_and_rejects_bad_input(
    backends: Backends, admin_in_process: AdminRun
) -> None:
    """Two runs are processes (the entry point, its exit statuses 2 and 0, stderr and the JSON
    lines on stdout); the other cases run the same `main(argv)` in this process."""
    await publish(backends, orders_events(range(1, 2)))
    process = start_subscriber(backends)
    store = backends.checkpoint_store()
    try:
        async with store:

            async def all_forwarded() -> bool:
                return await checkpointed(backends, store) == ORDERS

            await eventually(all_forwarded, "every event checkpointed", wait=60)
        code, _, error = admin(backends, "rewind", "--to", "beginning")
        assert code == 2
        assert "claimed by running subscribers" in error
        assert await total_checkpointed(backends) == ORDERS, "nothing written"

        code, listed, error = await admin_in_process("rewind", "--to", "beginning", "--dry-run")
        assert code == 2
        assert "pass --reader-group" in error
        code, listed, error = admin(
            backends, "rewind", "--to", "beginning", "--dry-run", "--reader-group", "$Default"
        )
        assert code == 0, error
        assert sum(r.get("replayed", 0) for r in listed) == ORDERS
        assert all(r.get("claimed_by") for r in listed), listed
    finally:
        process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.wait, 60) == 0

    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    for arguments, says in [
        (["rewind", "--to", "yesterday"], "not an ISO 8601 time"),
        (["rewind", "--to", "2026-11-28T09:00:00"], "has no time zone"),
        (["rewind", "--to", future], "is in the future"),
        (["rewind", "--to", "beginning", "--partition", "9"], "has no partition 9"),
        (["rewind"], "--to"),
    ]:
        started = time.monotonic()
        code, listed, error = await admin_in_process(*arguments)
        assert code == 2, arguments
        assert says in error, (arguments, error)
        assert not listed
        assert time.monotonic() - started < 60
    assert await total_checkpointed(backends) == ORDERS
