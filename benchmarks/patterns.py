"""The three write patterns side by side (docs/patterns.md): for each, the whole system as processes
on the project's emulators, one replica of each service, and three phases.

1. Producer alone (nothing else touches the Cosmos DB emulator): a closed loop of `--orders` orders
   at `--concurrency`, each created, changed `--changes` times (add an item) and submitted, with
   its ETag. Reported: producer requests/s, and request units per change of the write path
   (the emulator's own charge model, docs/performance.md: an estimate, not Azure's bill).
2. Publisher, subscriber and consumer started on that backlog, until the consumer's projection of
   every order reached the producer's version. Reported: request units per change downstream of
   the producer (change feed reads, lease writes, event-first's read models, and the consumer's
   projection and inbox marks, which cost the same per handled event in every pattern), with the
   idle rate (polling, lease renewals) measured after the drain and subtracted; and the events the
   consumer handled (entity-first: one per version read, so fewer than the changes).
3. A fixed open-loop load of `--rate` commands/s for `--seconds` (a new order 1 in 4, else an item
   added to an order opened in this phase, with `If-Match: *`). Reported: commit → effect latency
   percentiles, from the consumer's inbox marks (applied_at - the event's time, the commit's).

    uv run python benchmarks/patterns.py [--patterns outbox,entity-first,event-first] [--rate 10]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import orjson

from eventflow_testing.e2e import PATTERNS, System, require, settle

LINE = {"sku": "SKU-1", "quantity": 1, "unit_price": "1.00"}
ORDER = {"customer_id": "bench", "currency": "EUR", "lines": [LINE]}


def request_units(system: System) -> float:
    return float(system.backends()[0].admin.status()["request_units"])


async def producer_ready(url: str, wait: float = 60) -> None:
    deadline = time.monotonic() + wait
    async with httpx.AsyncClient() as client:
        while True:
            try:
                if (await client.get(f"{url}/readyz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            require(time.monotonic() < deadline, "the producer never became ready")
            await asyncio.sleep(0.1)


async def closed_loop(url: str, orders: int, changes: int, concurrency: int) -> dict[str, Any]:
    """Each order: create, `changes` items, submit, each with the ETag of the answer before."""
    gate, created, requests = asyncio.Semaphore(concurrency), [], 0

    async def one(client: httpx.AsyncClient) -> None:
        nonlocal requests
        async with gate:
            answer = await client.post("/orders", json=ORDER)
            require(answer.status_code == 201, answer.text)
            order_id, etag = answer.json()["id"], answer.headers["etag"]
            created.append(order_id)
            for path in ["items"] * changes + ["submit"]:
                answer = await client.post(f"/orders/{order_id}/{path}", json=LINE if path == "items" else None,
                                           headers={"If-Match": etag})  # fmt: skip
                require(answer.status_code == 200, answer.text)
                etag = answer.headers["etag"]
            requests += changes + 2

    started = time.perf_counter()
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        await asyncio.gather(*(one(client) for _ in range(orders)))
    seconds = time.perf_counter() - started
    return {"orders": created, "requests": requests, "requests_per_s": round(requests / seconds, 1)}


async def open_loop(
    url: str, orders: list[str], rate: float, seconds: float
) -> tuple[int, list[str]]:
    """`rate` commands/s on schedule, whether or not earlier ones answered. Returns the accepted,
    and every order (those given and those opened)."""
    rng, accepted, tasks = random.Random(3), 0, []
    opened: list[str] = []  # the orders of `orders` are submitted: items go to orders opened here

    async def one(client: httpx.AsyncClient, create: bool) -> None:
        nonlocal accepted
        if create or not opened:
            answer = await client.post("/orders", json=ORDER)
            if answer.status_code == 201:
                opened.append(answer.json()["id"])
        else:
            order_id = rng.choice(opened)
            answer = await client.post(
                f"/orders/{order_id}/items", json=LINE, headers={"If-Match": "*"}
            )
        accepted += answer.status_code in (200, 201)

    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        started, sent = time.perf_counter(), 0
        while (elapsed := time.perf_counter() - started) < seconds:
            while sent < int(elapsed * rate) + 1:
                tasks.append(asyncio.create_task(one(client, create=sent % 4 == 0)))
                sent += 1
            await asyncio.sleep(min(0.005, 1 / rate))
        await asyncio.gather(*tasks)
    return accepted, [*orders, *opened]


async def marks(system: System) -> list[dict[str, Any]]:
    async with system.cosmos_client() as cosmos:
        container = cosmos.get_database_client("eventflow").get_container_client("order-summaries")
        query = "SELECT c.id, c.applied_at, c.committed_at FROM c WHERE c.kind = 'inbox-mark'"
        return [m async for m in container.query_items(query)]


async def quiet(system: System, seconds: float = 5.0) -> float:
    """The request units per second the idle system spends (polling, lease renewals)."""
    before = request_units(system)
    await asyncio.sleep(seconds)  # a measurement window, not a synchronisation
    return (request_units(system) - before) / seconds


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return (
        round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1) if ordered else float("nan")
    )


async def one_pattern(folder: Path, pattern: str, args: argparse.Namespace) -> dict[str, Any]:
    system = System(folder / pattern, pattern)
    await system.prepare()
    try:
        system._start("producer-0")
        await producer_ready(system.producer_url)
        before = request_units(system)
        load = await closed_loop(system.producer_url, args.orders, args.changes, args.concurrency)
        changes = load["requests"]
        write_ru = (request_units(system) - before) / changes
        sys.stderr.write(
            f"{pattern}: producer {load['requests_per_s']} req/s, {write_ru:.2f} RU per change\n"
        )

        before, started = request_units(system), time.monotonic()
        for kind, count in system.replicas.items():
            for n in range(count):
                system._start(f"{kind}-{n}")
        await system.wait_ready()
        await settle(system, load["orders"], wait=300)
        drain_seconds = time.monotonic() - started
        drained_ru = request_units(system) - before
        idle = await quiet(system)
        handled = len(await marks(system))
        downstream_ru = (drained_ru - idle * drain_seconds) / changes

        seen = {m["id"] for m in await marks(system)}
        accepted, touched = await open_loop(
            system.producer_url, load["orders"], args.rate, args.seconds
        )
        await settle(system, touched, wait=180)
        fresh = [m for m in await marks(system) if m["id"] not in seen and m.get("committed_at")]
        latencies = [(datetime.fromisoformat(m["applied_at"]) - datetime.fromisoformat(m["committed_at"])).total_seconds() * 1000
                     for m in fresh]  # fmt: skip
    finally:
        system.stop()
    return {
        "pattern": pattern, "producer_requests_per_s": load["requests_per_s"], "changes": changes,
        "write_ru_per_change": round(write_ru, 2), "downstream_ru_per_change": round(downstream_ru, 2),
        "idle_ru_per_s": round(idle, 2), "events_handled": handled, "drain_s": round(drain_seconds, 1),
        "fixed_load_per_s": args.rate, "fixed_load_accepted": accepted, "effects_measured": len(latencies),
        "p50_ms": percentile(latencies, 0.50), "p95_ms": percentile(latencies, 0.95),
        "p99_ms": percentile(latencies, 0.99),
    }  # fmt: skip


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--patterns", default=",".join(PATTERNS))
    parser.add_argument("--orders", type=int, default=200)
    parser.add_argument("--changes", type=int, default=4, help="items added per order, then submit")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rate", type=float, default=10.0, help="the fixed load, commands/s")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "patterns.json"
    )
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-patterns-") as folder:
        for pattern in args.patterns.split(","):
            rows.append(await one_pattern(Path(folder), pattern, args))
    report = {"scenario": "write patterns", "arguments": {k: str(v) for k, v in vars(args).items()}, "rows": rows,
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    header = ("| pattern | producer req/s | RU/change, write path | RU/change, downstream | events handled "
              "| changes | fixed load/s | accepted | p50 ms | p95 ms | p99 ms |\n" + "| --- " + "| ---: " * 10 + "|\n")  # fmt: skip
    lines = "".join(
        f"| {r['pattern']} | {r['producer_requests_per_s']} | {r['write_ru_per_change']} | {r['downstream_ru_per_change']} "
        f"| {r['events_handled']} | {r['changes']} | {r['fixed_load_per_s']} | {r['fixed_load_accepted']} | {r['p50_ms']} | {r['p95_ms']} | {r['p99_ms']} |\n"
        for r in rows
    )
    sys.stdout.write(header + lines + f"\nJSON: {args.out}\n")


if __name__ == "__main__":
    asyncio.run(main())
