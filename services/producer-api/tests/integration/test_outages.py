"""Outages answered 503 through the real SDK: the Cosmos DB emulator stopped (connection refused),
stalled (SIGSTOP: no answer), faulting (503s from its controls), and not there yet when the app
starts. Every route that needs the store answers 503 store-unavailable with Retry-After, never 500;
liveness stays 200; the app waits for a store that comes late and then works. A setup a retry cannot
fix (a wrong key, a container that is not there) is told to the process, never waited for."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr
from structlog.testing import capture_logs

from eventflow_emulators.cosmos.server import EMULATOR_KEY
from eventflow_emulators.cosmos.testing import RunningCosmosEmulator, cosmos_emulator
from eventflow_producer.api import create_app
from eventflow_producer.bootstrap import write_strategy
from eventflow_producer.settings import Settings
from eventflow_testing import eventually

ORDER = {
    "customer_id": "c-1",
    "currency": "EUR",
    "lines": [{"sku": "SKU-1", "quantity": 1, "unit_price": "5.00"}],
}
DEADLINE_S = 60.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _settings(endpoint: str, key: str, **overrides: object) -> Settings:
    return Settings(
        mode="emulator", cosmos_endpoint=endpoint, cosmos_key=SecretStr(key),
        database=f"outage-{uuid.uuid4().hex[:8]}", store_timeout_seconds=3.0,
        startup_wait_seconds=0.5, **overrides,  # type: ignore[arg-type]
    )  # fmt: skip


@asynccontextmanager
async def _app(
    settings: Settings, on_fatal: Callable[[str], None] | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, write_strategy(settings), *([on_fatal] if on_fatal else []))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://producer") as client:
            yield client


async def _ready(client: httpx.AsyncClient) -> bool:
    return (await client.get("/readyz")).status_code == 200


def _is_store_unavailable(answer: httpx.Response) -> None:
    assert answer.status_code == 503, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["type"].endswith("store-unavailable")
    assert float(answer.headers["retry-after"]) > 0


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[RunningCosmosEmulator]:
    """An emulator of this test's own, to be stopped, stalled or faulted."""
    with cosmos_emulator(tmp_path / "cosmos") as running:
        yield running


@contextmanager
def _stalled(pid: int) -> Iterator[None]:
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


async def test_a_stopped_store_answers_503_on_every_store_route_and_liveness_stays_200(
    emulator: RunningCosmosEmulator,
) -> None:
    async with _app(_settings(emulator.endpoint, emulator.key)) as client:
        await eventually(lambda: _ready(client), "ready", wait=DEADLINE_S)
        created = await client.post("/orders", json=ORDER)
        assert created.status_code == 201
        url = created.headers["location"]
        os.kill(emulator.pid, signal.SIGKILL)
        await asyncio.to_thread(os.waitpid, emulator.pid, 0)
        _is_store_unavailable(await client.post("/orders", json=ORDER))
        _is_store_unavailable(await client.get(url))
        _is_store_unavailable(await client.get(f"{url}/events"))
        _is_store_unavailable(await client.get("/readyz"))
        assert (await client.get("/healthz")).status_code == 200


async def test_a_stalled_store_answers_503_within_the_store_timeout(
    emulator: RunningCosmosEmulator,
) -> None:
    async with _app(_settings(emulator.endpoint, emulator.key)) as client:
        await eventually(lambda: _ready(client), "ready", wait=DEADLINE_S)
        created = await client.post("/orders", json=ORDER)
        with _stalled(emulator.pid):
            started = time.monotonic()
            _is_store_unavailable(await client.get(created.headers["location"]))
            _is_store_unavailable(await client.get("/readyz"))
            # two calls of at most 3 s each (store_timeout_seconds), with room for a loaded machine
            assert time.monotonic() - started < 15
        await eventually(lambda: _ready(client), "ready again after the stall", wait=DEADLINE_S)
        assert (await client.get(created.headers["location"])).status_code == 200


async def test_a_faulting_store_answers_503_also_while_a_keyed_create_reads_its_record(
    emulator: RunningCosmosEmulator,
) -> None:
    async with _app(_settings(emulator.endpoint, emulator.key)) as client:
        await eventually(lambda: _ready(client), "ready", wait=DEADLINE_S)
        keyed = {"Idempotency-Key": uuid.uuid4().hex}
        first = await client.post("/orders", json=ORDER, headers=keyed)
        assert first.status_code == 201
        # The repeat's batch conflicts (409), then the idempotency record's read gets 503s,
        # more than the SDK retries.
        emulator.admin.outage(30, operation="read", path_contains=":idempotency")
        _is_store_unavailable(await client.post("/orders", json=ORDER, headers=keyed))
        emulator.admin.outage(30)
        _is_store_unavailable(await client.post("/orders", json=ORDER))
        _is_store_unavailable(await client.get(first.headers["location"]))
        _is_store_unavailable(await client.get("/readyz"))
        emulator.admin.reset_faults()
        replayed = await client.post("/orders", json=ORDER, headers=keyed)
        assert (replayed.status_code, replayed.json()["id"]) == (201, first.json()["id"])


async def test_an_app_started_before_its_store_waits_unready_then_works(tmp_path: Path) -> None:
    port = _free_port()
    settings = _settings(f"http://127.0.0.1:{port}/", EMULATOR_KEY)
    with capture_logs() as logs:
        async with _app(settings) as client:
            assert (await client.get("/healthz")).status_code == 200
            _is_store_unavailable(await client.get("/readyz"))
            _is_store_unavailable(await client.post("/orders", json=ORDER))
            with cosmos_emulator(tmp_path / "late", port=port):
                await eventually(
                    lambda: _ready(client), "ready once the store is up", wait=DEADLINE_S
                )
                assert (await client.post("/orders", json=ORDER)).status_code == 201
    waits = [entry for entry in logs if entry["event"] == "still waiting for Cosmos DB"]
    assert waits, "the wait is logged"
    assert all(entry["log_level"] == "warning" for entry in waits)


async def test_a_wrong_key_is_a_setup_problem_told_at_once(
    emulator: RunningCosmosEmulator,
) -> None:
    fatal: list[str] = []
    wrong = "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXktd3Jvbmcta2V5LXdyb25nLWtleQ=="
    async with _app(_settings(emulator.endpoint, wrong), fatal.append) as client:
        await eventually(lambda: bool(fatal), "the setup problem told", wait=DEADLINE_S)
        _is_store_unavailable(await client.get("/readyz"))
    assert len(fatal) == 1
    assert "PRODUCER_COSMOS_KEY" in fatal[0]


async def test_a_container_that_is_not_there_and_not_ours_to_create_is_a_setup_problem(
    emulator: RunningCosmosEmulator,
) -> None:
    fatal: list[str] = []
    settings = _settings(emulator.endpoint, emulator.key, create_containers=False)
    async with _app(settings, fatal.append):
        await eventually(lambda: bool(fatal), "the setup problem told", wait=DEADLINE_S)
    assert f"{settings.database}/orders" in fatal[0]
    assert "PRODUCER_CREATE_CONTAINERS" in fatal[0]


@contextmanager
def _producer_process(cosmos_port: int, key: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """The producer's entry point as a process, aimed at a store on `cosmos_port`."""
    http_port = _free_port()
    env = {name: value for name, value in os.environ.items() if not name.startswith("PRODUCER_")}
    env |= {
        "PRODUCER_MODE": "emulator", "PRODUCER_COSMOS_ENDPOINT": f"http://127.0.0.1:{cosmos_port}/",
        "PRODUCER_COSMOS_KEY": key, "PRODUCER_PORT": str(http_port),
        "PRODUCER_DATABASE": f"process-{uuid.uuid4().hex[:8]}", "PRODUCER_STARTUP_WAIT_SECONDS": "0",
    }  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, "-c", "from eventflow_producer.main import main; main()"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        yield process, f"http://127.0.0.1:{http_port}"
    finally:
        process.kill()
        process.communicate()


async def _status(client: httpx.AsyncClient, url: str) -> int | None:
    try:
        return (await client.get(url)).status_code
    except httpx.TransportError:
        return None


@pytest.mark.slow
async def test_a_producer_process_started_while_its_store_is_down_waits_then_works(
    tmp_path: Path,
) -> None:
    cosmos_port = _free_port()
    with _producer_process(cosmos_port, EMULATOR_KEY) as (process, base):
        async with httpx.AsyncClient(base_url=base, timeout=10) as client:

            async def alive_and_unready() -> bool:
                return (await _status(client, "/healthz"), await _status(client, "/readyz")) == (
                    200,
                    503,
                )

            await eventually(
                alive_and_unready, "alive and unready while the store is down", wait=DEADLINE_S
            )
            await asyncio.sleep(3)  # a few more waits
            assert process.poll() is None
            with cosmos_emulator(tmp_path / "late", port=cosmos_port):
                await eventually(lambda: _ready(client), "ready", wait=DEADLINE_S)
                assert (await client.post("/orders", json=ORDER)).status_code == 201
                process.send_signal(signal.SIGTERM)
                assert await asyncio.to_thread(process.wait, 30) == 0
        assert "Traceback" not in (process.stderr.read() if process.stderr else "")


@pytest.mark.slow
def test_a_producer_process_refused_by_its_store_exits_2_with_one_line(
    emulator: RunningCosmosEmulator,
) -> None:
    wrong = "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXktd3Jvbmcta2V5LXdyb25nLWtleQ=="
    port = int(emulator.endpoint.rstrip("/").rsplit(":", 1)[1])
    with _producer_process(port, wrong) as (process, _):
        assert process.wait(timeout=60) == 2
        error = process.stderr.read() if process.stderr else ""
    lines = [line for line in error.splitlines() if line.startswith("eventflow-producer-api:")]
    assert lines == [
        "eventflow-producer-api: cannot start: Cosmos DB refused this service (401): check "
        "PRODUCER_COSMOS_KEY"
    ], error
