"""Cosmos emulator cost: server CPU per point operation and ops/s, driven by the real aio SDK.

Starts eventflow-cosmos-emulator, then for each operation kind (create, read, 2-op batch) runs
--processes client processes, each with --concurrency tasks, for --ops operations in total. The
emulator's CPU is read from /proc/<pid>/stat (utime + stime) before and after each phase;
the per-op figure is that difference divided by the operations done. Medians of --rounds rounds.

Clients use `AioHttpTransport(session=aiohttp.ClientSession(trust_env=False))`: with the default
transport aiohttp reads netrc for every request, which triples the client's own CPU cost.

    uv run python benchmarks/cosmos_emulator.py [--processes 3] [--concurrency 16] [--ops 3000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from azure.core.pipeline.transport import AioHttpTransport
from azure.cosmos import PartitionKey
from azure.cosmos.aio import CosmosClient

from eventflow_emulators.cosmos.testing import cosmos_emulator

KINDS = ("create", "read", "batch")
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime (fields 14, 15)


async def _client_run(
    endpoint: str, key: str, kind: str, worker: int, ops: int, concurrency: int
) -> None:
    session = aiohttp.ClientSession(trust_env=False)
    transport = AioHttpTransport(session=session, session_owner=False)
    try:
        async with CosmosClient(endpoint, credential=key, transport=transport) as client:
            container = client.get_database_client("bench").get_container_client("items")
            counter = iter(range(ops))

            async def loop() -> None:
                for n in counter:
                    pk = f"w{worker}-{n % 64}"
                    if kind == "create":
                        await container.create_item({"id": f"{worker}-{n}", "pk": pk, "n": n})
                    elif kind == "read":
                        await container.read_item(f"{worker}-{n}", partition_key=pk)
                    else:
                        await container.execute_item_batch(
                            [("create", ({"id": f"b{worker}-{n}", "pk": pk},)),
                             ("create", ({"id": f"m{worker}-{n}", "pk": pk, "mark": True},))],
                            partition_key=pk,
                        )  # fmt: skip

            await asyncio.gather(*(loop() for _ in range(concurrency)))
    finally:
        await session.close()


def _client_process(
    endpoint: str, key: str, kind: str, worker: int, ops: int, concurrency: int
) -> None:
    asyncio.run(_client_run(endpoint, key, kind, worker, ops, concurrency))


async def _prepare(endpoint: str, key: str) -> None:
    """A fresh `bench/items` container (each round creates the same ids again)."""
    async with CosmosClient(endpoint, credential=key) as client:
        database = await client.create_database_if_not_exists("bench")
        if "items" in [c["id"] async for c in database.list_containers()]:
            await database.delete_container("items")
        await database.create_container("items", partition_key=PartitionKey(path="/pk"))


def phase(
    endpoint: str, key: str, pid: int, kind: str, arguments: argparse.Namespace
) -> tuple[float, float]:
    """(server µs of CPU per operation, operations per second) of one phase."""
    per_process = arguments.ops // arguments.processes
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=_client_process,
                        args=(endpoint, key, kind, worker, per_process, arguments.concurrency))
        for worker in range(arguments.processes)
    ]  # fmt: skip
    cpu_before, started = cpu_seconds(pid), time.perf_counter()
    for process in workers:
        process.start()
    for process in workers:
        process.join()
        if process.exitcode != 0:
            raise SystemExit(f"client process failed with {process.exitcode}")
    elapsed, cpu = time.perf_counter() - started, cpu_seconds(pid) - cpu_before
    done = per_process * arguments.processes
    return cpu / done * 1e6, done / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--ops", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    arguments = parser.parse_args()
    results: dict[str, list[tuple[float, float]]] = {kind: [] for kind in KINDS}
    with tempfile.TemporaryDirectory() as folder, cosmos_emulator(Path(folder)) as emulator:
        for _ in range(arguments.rounds):
            asyncio.run(_prepare(emulator.endpoint, emulator.key))
            for kind in KINDS:
                results[kind].append(
                    phase(emulator.endpoint, emulator.key, emulator.pid, kind, arguments)
                )
    out: list[Any] = [f"{arguments.processes} client processes x {arguments.concurrency} tasks, "
                      f"{arguments.ops} ops per phase, median of {arguments.rounds} rounds, "
                      f"{os.cpu_count()} cores\n",
                      "| operation | server CPU per op (µs) | ops/s |\n|---|---|---|\n"]  # fmt: skip
    for kind in KINDS:
        cpu = statistics.median(r[0] for r in results[kind])
        rate = statistics.median(r[1] for r in results[kind])
        out.append(f"| {kind} | {cpu:.0f} | {rate:.0f} |\n")
    sys.stdout.write("".join(out))


if __name__ == "__main__":
    main()
