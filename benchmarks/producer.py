"""POST /orders: the producer on the real azure-cosmos SDK against the Cosmos DB emulator (its own
process) vs a bare FastAPI app with the same validation and no I/O, each served by uvicorn in its
own process, loaded from this process over loopback with a fixed number of requests at a fixed
concurrency. Reported: throughput, latency percentiles, and each server process's CPU per request
(user + system time from /proc over the measured rounds).

Next to them, the SDK's transactional batch measured alone (a process doing nothing else: the same
three creates a POST /orders writes, at the same concurrency), with the aiohttp session the services
configure (`trust_env=False`) and with the SDK's default transport: the goal is a producer CPU per
create within 1.25 times bare FastAPI + the batch alone.

The producer runs twice: with authentication off (as locally) and with callers' tokens checked
(RS256 tokens from an issuer on 127.0.0.1 serving a discovery document and a key set, as Entra
ID does); the difference of their CPU per request is the token check's, and the check alone (the
validator called in this process, its key cached) is measured beside it.

    uv run python benchmarks/producer.py [--requests 3000] [--concurrency 16] [--out results/producer.json]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import orjson

from eventflow_contracts.auth import WRITE_ROLE, KeySet, TokenValidator
from eventflow_contracts.auth_testing import LocalIssuer, running_issuer
from eventflow_emulators.cosmos.testing import RunningCosmosEmulator, cosmos_emulator

TICKS = os.sysconf("SC_CLK_TCK")

BODY = {
    "customer_id": "bench",
    "currency": "EUR",
    "lines": [{"sku": "SKU-1", "quantity": 2, "unit_price": "9.99"}],
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


BATCH_ALONE = """
import asyncio, os, sys, time, uuid
import aiohttp
from azure.core.pipeline.transport import AioHttpTransport
from azure.cosmos import PartitionKey
from azure.cosmos.aio import CosmosClient

async def main(endpoint, key, transport_kind, count, concurrency):
    async with aiohttp.ClientSession(trust_env=False) as session:
        options = {}
        if transport_kind == "plain":
            options["transport"] = AioHttpTransport(session=session, session_owner=False)
        async with CosmosClient(endpoint, credential=key, **options) as client:
            database = await client.create_database_if_not_exists("bench-batch")
            container = await database.create_container_if_not_exists(
                "orders", partition_key=PartitionKey("/order_id"), default_ttl=-1)
            order = {"customer_id": "bench", "currency": "EUR", "status": "open", "version": 1,
                     "lines": [{"sku": "SKU-1", "quantity": 2, "unit_price": "9.99"}], "kind": "order"}
            async def one():
                order_id = uuid.uuid4().hex
                await container.execute_item_batch([
                    ("create", ({**order, "id": order_id, "order_id": order_id},)),
                    ("create", ({"id": order_id + ":event:1", "order_id": order_id, "kind": "event",
                                 "ttl": 604800, "event": {"id": uuid.uuid4().hex, "data": order}},)),
                    ("create", ({"id": order_id + ":idempotency", "order_id": order_id,
                                 "kind": "idempotency", "ttl": 86400, "order": order},)),
                ], partition_key=order_id)
            for _ in range(100):
                await one()
            queue = iter(range(count))
            async def worker():
                for _ in queue:
                    await one()
            started = time.process_time()
            await asyncio.gather(*[worker() for _ in range(concurrency)])
            sys.stdout.write(str((time.process_time() - started) / count * 1e6))

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])))
"""


def batch_alone(
    cosmos: RunningCosmosEmulator, transport: str, count: int, concurrency: int
) -> float:
    """CPU µs per batch call of a process that only calls the SDK."""
    output = subprocess.run(
        [sys.executable, "-c", BATCH_ALONE, cosmos.endpoint, cosmos.key, transport, str(count), str(concurrency)],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    return round(float(output), 1)


def serve(target: str, port: int, environment: dict[str, str]) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "uvicorn", target, "--host", "127.0.0.1", "--port", str(port),
               "--log-level", "warning", "--no-access-log"]  # fmt: skip
    if target.endswith("_app") and ":" in target and not target.endswith(":app"):
        command.append("--factory")
    return subprocess.Popen(command, env={**os.environ, **environment}, cwd=Path(__file__).parent)


async def wait_ready(url: str) -> None:
    deadline = time.monotonic() + 30
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            try:
                await client.get(url)
                return
            except httpx.TransportError:
                await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not answer")


async def token_check_alone(issuer: LocalIssuer, count: int = 5000) -> float:
    """CPU µs per token check in this process (the key set fetched once before)."""
    keys = KeySet(issuer.config())
    validator = TokenValidator(issuer.config(), keys)
    header = f"Bearer {issuer.token(WRITE_ROLE)}"
    try:
        await validator.caller(header)
        started = time.process_time()
        for _ in range(count):
            await validator.caller(header)
        return round((time.process_time() - started) / count * 1e6, 1)
    finally:
        await keys.close()


async def load(
    url: str, requests: int, concurrency: int, authorization: str | None = None
) -> dict[str, Any]:
    """aiohttp keeps the client's own cost per request low; it still shares the 2 cores."""
    latencies: list[float] = []
    failures = 0
    queue = iter(range(requests))
    payload = orjson.dumps(BODY)
    headers = {"content-type": "application/json"}
    if authorization:
        headers["authorization"] = authorization
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as client:

        async def post() -> int:
            async with client.post(url, data=payload, headers=headers) as response:
                await response.read()
                return response.status

        async def worker() -> None:
            nonlocal failures
            for _ in queue:
                started = time.perf_counter()
                status = await post()
                latencies.append(time.perf_counter() - started)
                failures += status != 201

        for _ in range(min(200, requests // 10)):  # warm-up, not measured
            await post()
        started = time.perf_counter()
        await asyncio.gather(*[worker() for _ in range(concurrency)])
        elapsed = time.perf_counter() - started
    quantiles = statistics.quantiles(latencies, n=100)
    return {
        "requests": requests, "failures": failures, "seconds": round(elapsed, 3),
        "throughput_rps": round(requests / elapsed, 1),
        "p50_ms": round(quantiles[49] * 1000, 2), "p99_ms": round(quantiles[98] * 1000, 2),
    }  # fmt: skip


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3, help="report the median round")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "producer.json"
    )
    args = parser.parse_args()
    results: dict[str, Any] = {}
    with (
        tempfile.TemporaryDirectory(prefix="bench-producer-") as data,
        cosmos_emulator(Path(data) / "cosmos") as cosmos,
        running_issuer() as issuer,
    ):
        producer = {"PRODUCER_MODE": "emulator", "PRODUCER_COSMOS_ENDPOINT": cosmos.endpoint,
                    "PRODUCER_COSMOS_KEY": cosmos.key, "PRODUCER_LOG_LEVEL": "WARNING"}  # fmt: skip
        # A token valid for the whole run (Entra ID's last about an hour).
        bearer = f"Bearer {issuer.token(WRITE_ROLE, exp=int(time.time()) + 4 * 3600)}"
        targets = {
            "bare FastAPI (validation only)": ("bare_app:app", {}, None),
            "producer-api, real SDK → Cosmos DB emulator": (
                "eventflow_producer.main:create_default_app", producer, None,
            ),
            "producer-api with tokens checked": (
                "eventflow_producer.main:create_default_app",
                producer | issuer.environment("PRODUCER_"), bearer,
            ),
        }  # fmt: skip
        for name, (target, environment, authorization) in targets.items():
            port = free_port()
            server = serve(target, port, environment)
            try:
                await wait_ready(f"http://127.0.0.1:{port}/docs")
                rounds = []
                for round_number in range(args.rounds):
                    sys.stderr.write(
                        f"loading {name}, round {round_number + 1}/{args.rounds} ...\n"
                    )
                    cpu_before = cpu_seconds(server.pid)
                    result = await load(
                        f"http://127.0.0.1:{port}/orders", args.requests, args.concurrency,
                        authorization,
                    )  # fmt: skip
                    # The warm-up requests are in the CPU figure too: count them.
                    served = args.requests + min(200, args.requests // 10)
                    used = cpu_seconds(server.pid) - cpu_before
                    rounds.append(
                        result | {"server_cpu_us_per_request": round(used / served * 1e6, 1)}
                    )
                rounds.sort(key=lambda result: result["throughput_rps"])
                results[name] = rounds[len(rounds) // 2] | {
                    "rounds_rps": [r["throughput_rps"] for r in rounds]
                }
            finally:
                server.terminate()
                server.wait()
        alone = {
            kind: statistics.median(batch_alone(cosmos, kind, args.requests, args.concurrency)
                                    for _ in range(args.rounds))
            for kind in ("plain", "default")
        }  # fmt: skip
        check_alone = await token_check_alone(issuer)
    bare, full, authenticated = results.values()
    token_cpu = round(
        authenticated["server_cpu_us_per_request"] - full["server_cpu_us_per_request"], 1
    )
    budget = bare["server_cpu_us_per_request"] + alone["plain"]
    report = {
        "scenario": "POST /orders", "concurrency": args.concurrency, "results": results,
        "throughput_ratio_producer_to_bare": round(full["throughput_rps"] / bare["throughput_rps"], 3),
        "sdk_batch_alone_cpu_us": {"trust_env=False session (the services')": alone["plain"],
                                   "SDK default transport": alone["default"]},
        "producer_cpu_over_bare_plus_batch": round(full["server_cpu_us_per_request"] / budget, 3),
        "token_check_cpu_us": {"producer with tokens minus without": token_cpu,
                               "the check alone, in process": check_alone},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    lines = [
        f"POST /orders, {args.requests} requests x {args.rounds} rounds at concurrency {args.concurrency} (median round)",
        "| app | requests/s | p50 ms | p99 ms | server CPU µs/request | failures | rounds (requests/s) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    lines += [
        f"| {n} | {r['throughput_rps']} | {r['p50_ms']} | {r['p99_ms']} | {r['server_cpu_us_per_request']} | {r['failures']} | {r['rounds_rps']} |"
        for n, r in results.items()
    ]
    lines.append(
        f"\nSDK batch alone, client CPU µs per call: {alone['plain']} (aiohttp session with trust_env=False, "
        f"as the services configure it), {alone['default']} (the SDK's default transport)"
    )
    lines.append(
        f"producer CPU / (bare + batch alone): {report['producer_cpu_over_bare_plus_batch']} (goal: at most 1.25)"
    )
    lines.append(f"producer / bare throughput: {report['throughput_ratio_producer_to_bare']}")
    lines.append(
        f"token check, CPU µs per request: {token_cpu} (producer with tokens minus without), "
        f"{check_alone} (the check alone, in process)"
    )
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
