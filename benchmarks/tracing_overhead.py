"""Tracing overhead: CPU per event of each service with tracing off and on.

The four services run as processes on the local stand-ins (one replica each), twice: tracing off
(sampling ratio 0: spans are not recorded, nothing is exported) and tracing on with every span
sampled (ratio 1, the span-file exporter of `make dev`: every span recorded and written). Each run
sends the same REST workload (orders of several commands each, the e2e test's load: creates, item
additions, submits and cancels, with some rejected), waits until the consumer applied every
committed event (or fails), and reads each process's CPU seconds from /proc. The acceptance bound:
on costs at most 15 % more CPU per event than off, per service. Outputs a Markdown table and JSON.

    uv run python benchmarks/tracing_overhead.py [--orders 60] [--commands 10] [--rounds 1]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.end_to_end import cpu_seconds
from eventflow_testing.e2e import COMMANDS, Load, System, settle

KINDS = ("producer", "publisher", "subscriber", "consumer")
BOUND = 0.15


async def measure(folder: Path, *, traced: bool, orders: int, commands: int) -> dict[str, float]:
    """CPU µs per committed event of each service, tracing on or off, after a warm-up load."""
    env = {f"{kind.upper()}_TRACE_SAMPLING_RATIO": "1" if traced else "0" for kind in COMMANDS}
    system = System(folder / "local", env=env, trace_dir=folder / "traces" if traced else None)
    await system.start()
    try:
        warm = Load()
        await warm.run(
            system.producer_url, orders=8, commands_per_order=commands, rng=random.Random(1)
        )
        await settle(system, warm.orders, wait=120)
        before = {name: cpu_seconds(p.pid) for name, p in system.processes.items()}
        load = Load()
        await load.run(
            system.producer_url, orders=orders, commands_per_order=commands, rng=random.Random(7)
        )
        await settle(system, load.orders, wait=300)
        events = load.committed_events
        return {name.split("-")[0]: round((cpu_seconds(p.pid) - before[name]) / events * 1e6, 1)
                for name, p in system.processes.items()}  # fmt: skip
    finally:
        system.stop()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--orders", type=int, default=60)
    parser.add_argument("--commands", type=int, default=10, help="REST commands per order")
    parser.add_argument("--rounds", type=int, default=1, help="off/on pairs (the median is kept)")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "tracing_overhead.json"
    )
    args = parser.parse_args()
    runs: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
    for round_ in range(args.rounds):
        for mode in ("off", "on"):
            sys.stderr.write(
                f"round {round_ + 1}: tracing {mode}, {args.orders} orders x {args.commands} commands\n"
            )
            with tempfile.TemporaryDirectory(prefix=f"bench-tracing-{mode}-") as folder:
                runs[mode].append(await measure(Path(folder), traced=mode == "on",
                                                orders=args.orders, commands=args.commands))  # fmt: skip
    median = {mode: {kind: sorted(r[kind] for r in results)[len(results) // 2] for kind in KINDS}
              for mode, results in runs.items()}  # fmt: skip
    overhead = {kind: round(median["on"][kind] / median["off"][kind] - 1, 3) for kind in KINDS}
    report: dict[str, Any] = {
        "scenario": "tracing off (ratio 0) vs on (ratio 1, span files)", "orders": args.orders,
        "commands_per_order": args.commands, "runs": runs, "cpu_us_per_event": median, "overhead": overhead,
        "within_bound": all(value <= BOUND for value in overhead.values()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    rows = "".join(
        f"| {kind} | {median['off'][kind]} | {median['on'][kind]} | {overhead[kind]:+.1%} |\n"
        for kind in KINDS
    )
    sys.stdout.write("| service | CPU µs/event, tracing off | tracing on (all sampled) | on vs off |\n"
                     "| --- | ---: | ---: | ---: |\n" + rows + f"\nbound: +{BOUND:.0%} per service; JSON: {args.out}\n")  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())
