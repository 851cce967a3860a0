"""With OTEL_EXPORTER_OTLP_ENDPOINT set, the producer process exports its spans and log records
over OTLP/HTTP (the standard OTel variables): a collector stand-in here receives and decodes them."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from aiohttp import web
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from eventflow_emulators.cosmos.testing import RunningCosmosEmulator
from eventflow_testing import eventually

WANTED = {("eventflow-producer-api", "POST /orders"),
          ("eventflow-producer-api", "ContainerProxy.execute_item_batch")}  # fmt: skip


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _spans(bodies: list[bytes]) -> set[tuple[str, str]]:
    spans = set()
    for body in bodies:
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        for resource in request.resource_spans:
            attributes = {a.key: a.value.string_value for a in resource.resource.attributes}
            spans |= {(attributes["service.name"], span.name)
                      for scope in resource.scope_spans for span in scope.spans}  # fmt: skip
    return spans


def _request_logged(bodies: list[bytes]) -> bool:
    """Whether the producer's request line arrived as a log record carrying its trace id."""
    for body in bodies:
        request = ExportLogsServiceRequest()
        request.ParseFromString(body)
        for resource in request.resource_logs:
            for scope in resource.scope_logs:
                if any(r.trace_id and "request" in str(r.body) for r in scope.log_records):
                    return True
    return False


def _start_producer(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "eventflow_producer.main"], env=env,
                                stdout=out, stderr=subprocess.STDOUT)  # fmt: skip


async def test_spans_and_logs_go_to_the_otlp_endpoint(
    cosmos_emulator_server: RunningCosmosEmulator, tmp_path: Path
) -> None:
    received: dict[str, list[bytes]] = {"traces": [], "logs": [], "metrics": []}

    async def collect(request: web.Request) -> web.Response:
        received[request.match_info["signal"]].append(await request.read())
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/v1/{signal}", collect)
    runner = web.AppRunner(app)
    await runner.setup()
    collector, port = _free_port(), _free_port()
    await web.TCPSite(runner, "127.0.0.1", collector).start()
    env = {**os.environ, "PRODUCER_MODE": "emulator", "PRODUCER_PORT": str(port),
           "PRODUCER_COSMOS_ENDPOINT": cosmos_emulator_server.endpoint, "PRODUCER_COSMOS_KEY": cosmos_emulator_server.key,
           "PRODUCER_DATABASE": f"otlp-{port}", "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector}",
           "OTEL_BSP_SCHEDULE_DELAY": "100", "OTEL_BLRP_SCHEDULE_DELAY": "100"}  # fmt: skip
    process = _start_producer(env, tmp_path / "producer.log")
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:

            async def ready() -> bool:
                try:
                    return (await client.get("/readyz")).status_code == 200
                except httpx.TransportError:
                    return False

            await eventually(ready, "the producer ready", wait=60, every=0.1)
            line = {"sku": "SKU-1", "quantity": 1, "unit_price": "1.00"}
            created = await client.post("/orders", json={"customer_id": "c", "currency": "EUR", "lines": [line]})  # fmt: skip
            assert created.status_code == 201
        deadline = time.monotonic() + 30
        while not (_spans(received["traces"]) >= WANTED and _request_logged(received["logs"])):
            assert time.monotonic() < deadline, f"not exported: {_spans(received['traces'])}"
            await asyncio.sleep(0.1)
    finally:
        process.send_signal(signal.SIGTERM)
        # The collector answers in this loop: wait without blocking it (the exit flushes).
        code = await asyncio.get_running_loop().run_in_executor(None, process.wait, 30)
        await runner.cleanup()
    assert code in (0, -15)
