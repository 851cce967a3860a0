"""POST /orders throughput and latency: the producer on the local stand-in vs a bare FastAPI app
with the same validation and no I/O, each served by uvicorn in its own process, loaded from this
process over loopback with a fixed number of requests at a fixed concurrency.

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

BODY = {
    "customer_id": "bench",
    "currency": "EUR",
    "lines": [{"sku": "SKU-1", "quantity": 2, "unit_price": "9.99"}],
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


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


async def load(url: str, requests: int, concurrency: int) -> dict[str, Any]:
    """aiohttp keeps the client's own cost per request low; it still shares the 2 cores."""
    latencies: list[float] = []
    failures = 0
    queue = iter(range(requests))
    payload = orjson.dumps(BODY)
    headers = {"content-type": "application/json"}
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
    with tempfile.TemporaryDirectory(prefix="bench-producer-") as data:
        targets = {
            "bare FastAPI (validation only)": ("bare_app:app", {}),
            "producer-api on the local stand-in": (
                "eventflow_producer.main:create_default_app",
                {
                    "PRODUCER_MODE": "local",
                    "PRODUCER_LOCAL_DIR": data,
                    "PRODUCER_LOG_LEVEL": "WARNING",
                },
            ),
        }
        for name, (target, environment) in targets.items():
            port = free_port()
            server = serve(target, port, environment)
            try:
                await wait_ready(f"http://127.0.0.1:{port}/docs")
                rounds = []
                for round_number in range(args.rounds):
                    sys.stderr.write(
                        f"loading {name}, round {round_number + 1}/{args.rounds} ...\n"
                    )
                    rounds.append(
                        await load(
                            f"http://127.0.0.1:{port}/orders", args.requests, args.concurrency
                        )
                    )
                rounds.sort(key=lambda result: result["throughput_rps"])
                results[name] = rounds[len(rounds) // 2] | {
                    "rounds_rps": [r["throughput_rps"] for r in rounds]
                }
            finally:
                server.terminate()
                server.wait()
    bare, full = results.values()
    report = {
        "scenario": "POST /orders", "concurrency": args.concurrency, "results": results,
        "throughput_ratio_producer_to_bare": round(full["throughput_rps"] / bare["throughput_rps"], 3),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    lines = [
        f"POST /orders, {args.requests} requests x {args.rounds} rounds at concurrency {args.concurrency} (median round)",
        "| app | requests/s | p50 ms | p99 ms | failures | rounds (requests/s) |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    lines += [
        f"| {n} | {r['throughput_rps']} | {r['p50_ms']} | {r['p99_ms']} | {r['failures']} | {r['rounds_rps']} |"
        for n, r in results.items()
    ]
    lines.append(f"\nproducer / bare throughput: {report['throughput_ratio_producer_to_bare']}")
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
