"""End to end: commit → effect latency and achieved throughput under stepped offered loads.

The four services run as processes on the local stand-ins (one replica each). For each offered load
(events/s) the benchmark opens orders at that rate (open loop: a request is sent on schedule whether
or not earlier ones have answered) for `--seconds`, waits for the consumer to apply every event, and
reads each inbox mark: latency = applied_at (consumer) - committed_at (producer). CPU seconds per event
of each process are read from /proc. Outputs a Markdown table, a JSON file and a PNG plot.

    uv run python benchmarks/end_to_end.py [--loads 25,50,100,150,200] [--seconds 8]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from eventflow_testing.e2e import System

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


async def offer(url: str, rate: int, seconds: float) -> tuple[int, float]:
    """Open loop: one create per 1/rate s. Returns (accepted, achieved rate)."""
    accepted = 0
    body = orjson.dumps(
        {
            "customer_id": "bench",
            "currency": "EUR",
            "lines": [{"sku": "SKU-1", "quantity": 1, "unit_price": "1.00"}],
        }
    )
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)) as session:

        async def one() -> None:
            nonlocal accepted
            async with session.post(
                f"{url}/orders", data=body, headers={"content-type": "application/json"}
            ) as response:
                await response.read()
                accepted += response.status == 201

        started, tasks, sent = time.perf_counter(), [], 0
        while (elapsed := time.perf_counter() - started) < seconds:
            due = int(elapsed * rate) + 1
            while sent < due:
                tasks.append(asyncio.create_task(one()))
                sent += 1
            await asyncio.sleep(min(0.005, 1 / rate))
        await asyncio.gather(*tasks)
        return accepted, accepted / (time.perf_counter() - started)


async def latencies(system: System, since: set[str]) -> tuple[list[float], set[str]]:
    """Latencies (ms) of inbox marks not seen before, and every mark id seen so far."""
    async with system.cosmos_client() as cosmos:
        container = cosmos.get_database_client("eventflow").get_container_client("order-summaries")
        marks = [
            m async for m in container.query_items("SELECT * FROM c WHERE c.kind = 'inbox-mark'")
        ]
    fresh = [m for m in marks if m["id"] not in since]
    values = [(datetime.fromisoformat(m["applied_at"]) - datetime.fromisoformat(m["committed_at"])).total_seconds() * 1000
              for m in fresh if m.get("committed_at")]  # fmt: skip
    return values, since | {m["id"] for m in marks}


async def settled(system: System, expected: int, wait: float = 120) -> None:
    deadline = time.monotonic() + wait
    async with system.cosmos_client() as cosmos:
        container = cosmos.get_database_client("eventflow").get_container_client("order-summaries")
        while True:
            query = "SELECT VALUE COUNT(1) FROM c WHERE c.kind = 'inbox-mark'"
            (counted,) = [n async for n in container.query_items(query)]
            if counted >= expected or time.monotonic() > deadline:
                return
            await asyncio.sleep(0.2)


def percentile(values: list[float], q: int) -> float:
    return (
        round(statistics.quantiles(values, n=100)[q - 1], 1)
        if len(values) > 1
        else round(values[0], 1)
    )


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--loads", default="25,50,100,150,200")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "end_to_end.json"
    )
    args = parser.parse_args()
    steps: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as folder:
        system = System(Path(folder) / "local")
        await system.start()
        try:
            seen: set[str] = set()
            total = 0
            for rate in (int(r) for r in args.loads.split(",")):
                sys.stderr.write(f"offering {rate} events/s for {args.seconds:.0f} s ...\n")
                cpu_before = {name: cpu_seconds(p.pid) for name, p in system.processes.items()}
                accepted, achieved = await offer(system.producer_url, rate, args.seconds)
                total += accepted
                await settled(system, total)
                cpu = {name.split("-")[0]: round((cpu_seconds(p.pid) - cpu_before[name]) / max(accepted, 1) * 1e6, 1)
                       for name, p in system.processes.items()}  # fmt: skip
                values, seen = await latencies(system, seen)
                step = {"offered_per_s": rate, "achieved_per_s": round(achieved, 1), "events": accepted,
                        "p50_ms": percentile(values, 50), "p95_ms": percentile(values, 95), "p99_ms": percentile(values, 99),
                        "cpu_us_per_event": cpu}  # fmt: skip
                steps.append(step)
                sys.stderr.write(
                    f"  achieved {step['achieved_per_s']}/s, p50 {step['p50_ms']} ms, p99 {step['p99_ms']} ms\n"
                )
        finally:
            system.stop()
    report = {"scenario": "end to end, commit -> effect", "seconds_per_step": args.seconds, "steps": steps,
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    plot(steps, args.out.with_suffix(".png"))
    header = "| offered/s | achieved/s | p50 ms | p95 ms | p99 ms | CPU µs/event: producer | publisher | subscriber | consumer |\n"
    header += "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n"
    rows = "".join(
        f"| {s['offered_per_s']} | {s['achieved_per_s']} | {s['p50_ms']} | {s['p95_ms']} | {s['p99_ms']} | "
        f"{s['cpu_us_per_event']['producer']} | {s['cpu_us_per_event']['publisher']} | "
        f"{s['cpu_us_per_event']['subscriber']} | {s['cpu_us_per_event']['consumer']} |\n"
        for s in steps
    )
    sys.stdout.write(header + rows + f"\nJSON: {args.out}\nplot: {args.out.with_suffix('.png')}\n")


def plot(steps: list[dict[str, Any]], path: Path) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    offered = [s["offered_per_s"] for s in steps]
    figure, axis = plt.subplots(figsize=(7, 4))
    for key, label in (("p50_ms", "p50"), ("p95_ms", "p95"), ("p99_ms", "p99")):
        axis.plot(offered, [s[key] for s in steps], marker="o", label=label)
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("offered load (events/s)")
    axis.set_ylabel("commit → effect latency (ms)")
    axis.set_title("eventflow end to end on the local stand-ins (2 cores)")
    axis.grid(True, which="both", alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


if __name__ == "__main__":
    asyncio.run(main())
