"""Settles per second on one lane, on azure-servicebus against the project's messaging emulator.

A lane is one Service Bus session held by one long-lived session receiver, and the consumer makes
every call on that receiver take its turn (ServiceBusSessionChannel, its `Turns`): completions that
the lane worker issues concurrently still reach the broker one at a time. This measures what that
allows on ONE lane.

Per round, a fresh messaging emulator in a process of its own (the repository's config: the `inbox`
queue, sessions, lock 30 s). Per mode, `--messages` messages (one event of a new order each) are
sent to a lane of their own (`lanes8-<n>`, only orders of that lane) and, except in the last mode,
all received first by one session receiver with the lane's prefetch; that part is not timed. The
timed part:

- bare, one after another: `await receiver.complete_message(m)` for each message in turn.
- channel, one after another: the same through the project's ServiceBusSessionChannel (its turn,
  uncontended, and its conversion of lock errors).
- channel, concurrent: every completion issued at once, each its own task, through the project's
  ServiceBusSessionChannel (as the lane worker's `_complete_later` does); the channel serialises them.
- channel, concurrent, renewal beside: the same with the lane's lock renewal (`keep_locked`) running
  every `--renew-seconds` (the consumer renews every 10 s by default; a shorter period here so that
  renewals fall inside the window).
- bare, concurrent, no turns: every completion issued at once on the bare receiver. The consumer
  does not do this (the SDK's receivers are not coroutine-safe); it shows whether overlapping
  dispositions would gain anything over one at a time.
- lane worker, in-memory store: the consumer's LaneWorker and InboxHandler (default lane settings)
  holding the lane through the channel, its store in memory (benchmarks/consumer.py's, free): the
  receives (prefetch, batches of up to 100, the short busy wait) and the completes of the lane
  worker's own loop, timed from the hold until the last message is settled. After it, ten receives
  of up to 100 with the worker's busy wait on the lane, now empty: how long one holds the receiver.

Reported per mode (median of the rounds): settles/s; per settle the wall time, the client's CPU
(time.process_time of this process), the emulator's CPU (/proc/<pid>/stat utime + stime) and the
rest (wall - client CPU - emulator CPU: the loopback round trips and the wake-ups, neither process
on a core); the p50/p99 of one complete_message call (bare sequential) and of one completion as
the lane worker sees it (its wait for the receiver's turn included). For the bare sequential mode
also the system part of either CPU and how often this process was preempted (getrusage). Also the
CPU of one turn of `Turns` alone (in this process, no I/O). The 1-minute load average (uptime's first
figure) is printed for each round: read the figures next to it.

`--profile DIR` (py-spy on PATH, e.g. `uv run --with py-spy python benchmarks/lane_settles.py
--profile DIR`): one more bare sequential run with py-spy attached to this process and to the
emulator during the settles; the collapsed stacks go to DIR and the share of the samples per stage
of a settle is printed for each side. py-spy counts a thread as busy while it is runnable, so a
socket write that wakes the other process and loses the core to it counts as the write's: the
socket calls' share is given apart (their CPU is the system part above), every other stage as a
share of the rest. Then one more such run under cProfile: Python function calls per settle.

    uv run python benchmarks/lane_settles.py [--messages 5000] [--rounds 3] [--renew-seconds 0.5]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import logging
import os
import pstats
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import structlog
from azure.servicebus import ServiceBusMessage
from azure.servicebus import __version__ as SDK_VERSION
from azure.servicebus.aio import ServiceBusClient, ServiceBusReceiver
from consumer import MemoryStore, order_events

from eventflow_consumer.adapters.servicebus_sessions import (
    ServiceBusSessionChannel,
    Turns,
    inbound_of,
    keep_locked,
)
from eventflow_consumer.bootstrap import tls_context
from eventflow_consumer.handling import InboxHandler
from eventflow_consumer.lanes import BUSY_RECEIVE_WAIT_SECONDS, RECEIVE_BATCH, LaneWorker
from eventflow_consumer.ports import Inbound
from eventflow_contracts.lanes import session_id_for
from eventflow_emulators.messaging.testing import messaging_emulator

QUEUE = "inbox"
SEND_BATCH = 100
PREFETCH = 2 * RECEIVE_BATCH  # the lane holder's
TICKS = os.sysconf("SC_CLK_TCK")
LANES = 8  # mode n settles on the lane lanes8-<n>: a session of its own per mode
MODES = (
    "bare, one after another",
    "channel, one after another",
    "channel, concurrent",
    "channel, concurrent, renewal beside",
    "bare, concurrent, no turns",
    "lane worker, in-memory store",
)


def cpu_seconds(pid: int) -> tuple[float, float]:
    """utime and stime of a process, from /proc/<pid>/stat (fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICKS, int(fields[12]) / TICKS


def lane_events(lane: int, count: int) -> list[bytes]:
    """The first event of `count` new orders that all belong to lane `lane` of LANES."""
    events: list[bytes] = []
    n = 0
    while len(events) < count:
        if session_id_for(f"o{n}", LANES) == f"lanes{LANES}-{lane}":
            events += order_events(f"o{n}", 1)
        n += 1
    return events


async def send(client: ServiceBusClient, session_id: str, events: list[bytes]) -> None:
    async with client.get_queue_sender(QUEUE) as sender:
        for start in range(0, len(events), SEND_BATCH):
            await sender.send_messages([
                ServiceBusMessage(raw, session_id=session_id, message_id=orjson.loads(raw)["id"])
                for raw in events[start : start + SEND_BATCH]
            ])  # fmt: skip


async def receive_all(receiver: ServiceBusReceiver, count: int) -> list[Any]:
    messages: list[Any] = []
    while len(messages) < count:
        batch = await receiver.receive_messages(
            max_message_count=min(RECEIVE_BATCH, count - len(messages)), max_wait_time=5
        )
        if not batch:
            raise RuntimeError(f"only {len(messages)} of {count} messages received")
        messages += batch
    return messages


class CountingChannel(ServiceBusSessionChannel):
    """The project's channel, counting its lock renewals."""

    def __init__(self, receiver: Any) -> None:
        super().__init__(receiver)
        self.renewals = 0

    async def renew_lock(self) -> None:
        await super().renew_lock()
        self.renewals += 1


async def one_after_another(receiver: ServiceBusReceiver, messages: list[Any]) -> list[float]:
    """Each complete awaited before the next; the duration of every call."""
    calls = []
    for message in messages:
        started = time.perf_counter()
        await receiver.complete_message(message)
        calls.append(time.perf_counter() - started)
    return calls


async def through_channel(channel: ServiceBusSessionChannel, inbound: list[Inbound]) -> None:
    """Every completion issued at once, each its own task, as the lane worker issues them."""
    await asyncio.gather(*(asyncio.create_task(channel.complete(i)) for i in inbound))


async def with_renewal(channel: CountingChannel, inbound: list[Inbound], period: float) -> int:
    renewing = asyncio.create_task(keep_locked(channel, period))
    try:
        await through_channel(channel, inbound)
    finally:
        renewing.cancel()
        await asyncio.gather(renewing, return_exceptions=True)
    return channel.renewals


class Snapshot:
    """Wall clock, this process's CPU (and its system part, its involuntary context switches)
    and the emulator's CPU (and its system part), read together."""

    def __init__(self, emulator_pid: int) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        self.sys, self.switches = usage.ru_stime, usage.ru_nivcsw
        user, self.emulator_sys = cpu_seconds(emulator_pid)
        self.emulator = user + self.emulator_sys


class LastSettle(ServiceBusSessionChannel):
    """The project's channel, taking a Snapshot when its `count`-th completion is done."""

    def __init__(self, receiver: Any, count: int, emulator_pid: int) -> None:
        super().__init__(receiver)
        self.left, self.emulator_pid = count, emulator_pid
        self.end: Snapshot | None = None
        self.calls: list[float] = []  # each completion, from the worker's call to its end

    async def complete(self, inbound: Inbound) -> None:
        started = time.perf_counter()
        await super().complete(inbound)
        self.calls.append(time.perf_counter() - started)
        self.left -= 1
        if self.left == 0:
            self.end = Snapshot(self.emulator_pid)


async def lane_worker(
    receiver: ServiceBusReceiver, count: int, emulator_pid: int
) -> tuple[Snapshot, list[float]]:
    """The consumer's lane worker on the lane until it has settled `count` messages: the snapshot
    taken at the last settle (the worker returns after its receive in progress then) and the
    duration of every completion, its wait for the receiver's turn included."""
    store = MemoryStore()
    worker = LaneWorker(InboxHandler(store), store)
    channel = LastSettle(receiver, count, emulator_pid)
    await worker.hold(channel, stopping=lambda: worker.settled >= count)
    if worker.settled != count or len(store.marks) != count or channel.end is None:
        raise RuntimeError(
            f"lane worker: {worker.settled} settled, {len(store.marks)} applied of {count}"
        )
    return channel.end, channel.calls


async def empty_receives(receiver: ServiceBusReceiver, times: int = 10) -> float:
    """Median duration (s) of a receive of up to RECEIVE_BATCH with the lane worker's busy wait
    (BUSY_RECEIVE_WAIT_SECONDS) on a lane with nothing in it."""
    took = []
    for _ in range(times):
        started = time.perf_counter()
        if await receiver.receive_messages(
            max_message_count=RECEIVE_BATCH, max_wait_time=BUSY_RECEIVE_WAIT_SECONDS
        ):
            raise RuntimeError("the lane was meant to be empty")
        took.append(time.perf_counter() - started)
    return statistics.median(took)


async def settle(
    receiver: ServiceBusReceiver,
    mode: str,
    messages: list[Any],
    inbound: list[Inbound],
    count: int,
    renew_seconds: float,
    emulator_pid: int,
) -> tuple[list[float], int, Snapshot | None]:
    """The timed part of one mode: durations of the completions when measured, renewals done,
    and the snapshot at the last settle when it is not the end of this call."""
    if mode == "bare, one after another":
        return await one_after_another(receiver, messages), 0, None
    if mode == "bare, concurrent, no turns":
        await asyncio.gather(*(receiver.complete_message(m) for m in messages))
    elif mode == "channel, one after another":
        channel = ServiceBusSessionChannel(receiver)
        for each in inbound:
            await channel.complete(each)
    elif mode == "channel, concurrent":
        await through_channel(ServiceBusSessionChannel(receiver), inbound)
    elif mode == "channel, concurrent, renewal beside":
        return [], await with_renewal(CountingChannel(receiver), inbound, renew_seconds), None
    else:
        last, calls = await lane_worker(receiver, count, emulator_pid)
        return calls, 0, last
    return [], 0, None


async def run_mode(
    connection_string: str,
    emulator_pid: int,
    mode: str,
    lane: int,
    count: int,
    renew_seconds: float,
    around: Callable[[], Awaitable[Callable[[], Awaitable[None]]]] | None = None,
) -> dict[str, Any]:
    """Send `count` events to the lane, receive them all on one session receiver (the lane's
    prefetch; not in the lane worker's mode, which receives for itself), then time their settles in
    `mode`. `around`, if given, is awaited right before the timed part and the callable it returns
    right after it (the profiler's start and stop)."""
    session_id = f"lanes{LANES}-{lane}"
    async with ServiceBusClient.from_connection_string(
        connection_string, ssl_context=tls_context()
    ) as client:
        await send(client, session_id, lane_events(lane, count))
        async with client.get_queue_receiver(
            QUEUE, session_id=session_id, prefetch_count=PREFETCH
        ) as receiver:
            messages = (
                [] if mode == "lane worker, in-memory store" else await receive_all(receiver, count)
            )
            inbound = [inbound_of(m) for m in messages]  # as the lane worker holds them
            # The session's lock (30 s) runs from the accept; receiving thousands of messages on
            # a busy machine takes a good part of it, so it starts afresh for the timed part.
            await receiver.session.renew_lock()
            stop = await around() if around is not None else None
            start = Snapshot(emulator_pid)
            calls, renewals, last = await settle(
                receiver, mode, messages, inbound, count, renew_seconds, emulator_pid
            )
            end = last or Snapshot(emulator_pid)
            if stop is not None:
                await stop()
            left = await receiver.peek_messages(max_message_count=1)
            empty_receive = await empty_receives(receiver) if mode == MODES[-1] else None
        if empty_receive is not None:
            # the same with the receiver's socket_timeout at the busy wait
            async with client.get_queue_receiver(
                QUEUE, session_id=session_id, prefetch_count=PREFETCH,
                socket_timeout=BUSY_RECEIVE_WAIT_SECONDS,
            ) as short:  # fmt: skip
                empty_short = await empty_receives(short)
    wall, cpu, emulator = end.wall - start.wall, end.cpu - start.cpu, end.emulator - start.emulator
    if left:
        raise RuntimeError(f"{mode}: messages left in the session after settling them all")
    result: dict[str, Any] = {
        "mode": mode, "messages": count, "settles_per_s": round(count / wall, 1),
        "wall_us_per_settle": round(wall / count * 1e6),
        "client_cpu_us_per_settle": round(cpu / count * 1e6),
        "emulator_cpu_us_per_settle": round(emulator / count * 1e6),
        "rest_us_per_settle": round((wall - cpu - emulator) / count * 1e6),
        "client_sys_us_per_settle": round((end.sys - start.sys) / count * 1e6),
        "emulator_sys_us_per_settle": round((end.emulator_sys - start.emulator_sys) / count * 1e6),
        "client_involuntary_switches_per_settle": round((end.switches - start.switches) / count, 2),
    }  # fmt: skip
    if calls:
        calls.sort()
        result["call_p50_us"] = round(calls[len(calls) // 2] * 1e6)
        result["call_p99_us"] = round(calls[int(len(calls) * 0.99)] * 1e6)
    if mode == "channel, concurrent, renewal beside":
        result["renewals"] = renewals
    if empty_receive is not None:
        result["empty_receive_ms"] = round(empty_receive * 1e3, 1)
        result["empty_receive_short_socket_timeout_ms"] = round(empty_short * 1e3, 1)
    return result


def one_round(count: int, renew_seconds: float, folder: Path) -> tuple[float, list[dict[str, Any]]]:
    with messaging_emulator(folder) as messaging:
        load = os.getloadavg()[0]
        results = [
            asyncio.run(run_mode(messaging.connection_string, messaging.pid, mode, n, count, renew_seconds))
            for n, mode in enumerate(MODES)
        ]  # fmt: skip
    return load, results


async def turns_cpu(count: int, repeats: int = 7) -> float:
    """CPU of one turn of `Turns` (µs): `count` calls issued at once, each yielding once inside its
    turn as an SDK call does, against the same calls without turns; the median of `repeats`."""

    async def call(turns: Turns | None) -> None:
        if turns is None:
            await asyncio.sleep(0)
            return
        async with turns.turn():
            await asyncio.sleep(0)

    differences = []
    for _ in range(repeats):
        spent = []
        for turns in (None, Turns()):
            gc.collect()
            started = time.process_time()
            await asyncio.gather(*(asyncio.create_task(call(turns)) for _ in range(count)))
            spent.append(time.process_time() - started)
        differences.append((spent[1] - spent[0]) / count)
    return round(statistics.median(differences) * 1e6, 1)


# --- the profile ------------------------------------------------------------------------------

# Stages of a settle, by the innermost frame (leaf first) that names one. Samples in the event
# loop's select (waiting for the other side) are left out.
IDLE = ("select (selectors.py",)
SOCKET = "socket write and read (the kernel's loopback TCP)"
CLIENT_STAGES = (
    (SOCKET, ("_SelectorSocketTransport.write", "_read_ready", "StreamReader.")),
    ("AMQP frame encoding", ("encode_",)),
    ("AMQP frame decoding", ("decode_",)),
    ("asyncio.wait_for around every frame read and write", ("wait_for (asyncio/tasks.py",)),
    ("the SDK's transport, connection and link code", ("servicebus/_pyamqp/",)),
    ("the SDK's checks, retry wrapper and tracing context", ("servicebus/aio/_", "servicebus/_common/", "servicebus/_servicebus", "core/")),
    ("the event loop (scheduling tasks and callbacks)", ("asyncio/",)),
)  # fmt: skip
EMULATOR_STAGES = (
    (SOCKET, ("_SelectorSocketTransport.write", "_read_ready")),
    ("sqlite (the emulator's store: delete the message)", ("messaging/store.py",)),
    ("AMQP codec", ("amqp/codec.py",)),
    ("AMQP connection and link", ("amqp/",)),
    ("Service Bus model (locks, queue, settle)", ("messaging/servicebus/",)),
    ("the event loop (scheduling tasks and callbacks)", ("asyncio/",)),
)  # fmt: skip


def stage_shares(path: Path, stages: tuple[tuple[str, tuple[str, ...]], ...]) -> dict[str, float]:
    """Share (%) of the runnable samples per stage, from py-spy's raw (collapsed) output; the
    socket calls' share of all of them, every other stage's share of the samples outside them."""
    counts: dict[str, int] = {}
    for line in path.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        frames = stack.split(";")
        if not stack or any(marker in frames[-1] for marker in IDLE):
            continue
        stage = next((name for frame in reversed(frames) for name, markers in stages
                      if any(marker in frame for marker in markers)), "other")  # fmt: skip
        counts[stage] = counts.get(stage, 0) + int(samples)
    total, socket = sum(counts.values()) or 1, counts.pop(SOCKET, 0)
    rest = total - socket or 1
    ranked = sorted(counts.items(), key=lambda kv: -kv[1])
    return {SOCKET: round(100 * socket / total, 1)} | {
        s: round(100 * n / rest, 1) for s, n in ranked
    }


def profile(count: int, folder: Path, out: Path) -> dict[str, Any]:
    """One bare sequential run with py-spy on this process and on the emulator. py-spy attaches
    during a 2 s pause before the settles and stops right after them; the pause is idle."""
    spy = shutil.which("py-spy")
    if spy is None:
        raise SystemExit(
            "--profile needs py-spy on PATH: uv run --with py-spy python benchmarks/lane_settles.py --profile DIR"
        )
    out.mkdir(parents=True, exist_ok=True)
    with messaging_emulator(folder) as messaging:
        files = {"client": out / "client.txt", "emulator": out / "emulator.txt"}
        pids = {"client": os.getpid(), "emulator": messaging.pid}

        async def start() -> Callable[[], Awaitable[None]]:
            spies = [subprocess.Popen([spy, "record", "--pid", str(pids[name]), "--rate", "500",
                                       "--format", "raw", "--output", str(files[name])],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                     for name in files]  # fmt: skip
            await asyncio.sleep(2.0)  # py-spy attaches

            async def stop() -> None:
                for process in spies:
                    process.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
                for process in spies:
                    process.wait(60)

            return stop

        result = asyncio.run(run_mode(messaging.connection_string, messaging.pid, MODES[0], 0,
                                      count, 0.0, around=start))  # fmt: skip
        result["client_python_calls_per_settle"] = asyncio.run(python_calls(messaging, count))
    result["client_busy_samples_percent"] = stage_shares(files["client"], CLIENT_STAGES)
    result["emulator_busy_samples_percent"] = stage_shares(files["emulator"], EMULATOR_STAGES)
    return result


async def python_calls(messaging: Any, count: int) -> int:
    """Python function calls in this process per settle, bare one after another (cProfile)."""
    profiler = cProfile.Profile()

    async def start() -> Callable[[], Awaitable[None]]:
        profiler.enable()

        async def stop() -> None:
            profiler.disable()

        return stop

    await run_mode(
        messaging.connection_string, messaging.pid, MODES[0], 1, count, 0.0, around=start
    )
    return round(pstats.Stats(profiler).total_calls / count)


# --- the report -------------------------------------------------------------------------------


def medians(rounds: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per mode, the round with the median settles/s, with every round's rate beside it."""
    table = []
    for n in range(len(MODES)):
        runs = sorted((r[n] for r in rounds), key=lambda r: float(r["settles_per_s"]))
        table.append(
            {
                **runs[len(runs) // 2],
                "rounds_settles_per_s": [r[n]["settles_per_s"] for r in rounds],
            }
        )
    return table


def report_lines(args: argparse.Namespace, report: dict[str, Any]) -> list[str]:
    loads = ", ".join(f"{x:.2f}" for x in report["load_average_1m"])
    lines = [
        f"one lane (one session receiver), azure-servicebus {report['sdk']} against the messaging emulator: "
        f"{args.messages} messages per mode; median of {args.rounds} rounds; load (1 min) at each round: "
        f"{loads}; {os.cpu_count()} CPUs",
        "per settle: wall = client CPU (this process) + emulator CPU + rest (round trips, wake-ups)",
        "",
        "| mode | settles/s | rounds (settles/s) | wall µs | client CPU µs | emulator CPU µs | rest µs | one call p50 / p99 µs |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in report["modes"]:
        call = f"{row['call_p50_us']} / {row['call_p99_us']}" if "call_p50_us" in row else ""
        mode = row["mode"] + (f" ({row['renewals']} renewals)" if "renewals" in row else "")
        lines.append(
            f"| {mode} | {row['settles_per_s']} | {row['rounds_settles_per_s']} | {row['wall_us_per_settle']} "
            f"| {row['client_cpu_us_per_settle']} | {row['emulator_cpu_us_per_settle']} | {row['rest_us_per_settle']} | {call} |"
        )
    bare = report["modes"][0]
    lines += ["", f"{bare['mode']}: system CPU {bare['client_sys_us_per_settle']} µs of the client's, "
                  f"{bare['emulator_sys_us_per_settle']} µs of the emulator's per settle; the client was "
                  f"preempted {bare['client_involuntary_switches_per_settle']} times per settle"]  # fmt: skip
    lines += [f"one turn of Turns alone (no I/O): {report['turns_cpu_us']} µs of CPU",
              f"a receive of up to {RECEIVE_BATCH} with the lane worker's busy wait ({BUSY_RECEIVE_WAIT_SECONDS} s) on an empty "
              f"lane: {report['modes'][-1]['empty_receive_ms']} ms (median of 10; per round "
              f"{[r[-1]['empty_receive_ms'] for r in report['all_rounds']]}); with the receiver's socket_timeout "
              f"at {BUSY_RECEIVE_WAIT_SECONDS} s: {report['modes'][-1]['empty_receive_short_socket_timeout_ms']} ms"]  # fmt: skip
    if "profile" in report:
        lines += ["", f"py-spy, bare one after another ({report['profile']['settles_per_s']} settles/s while "
                      "profiled): the socket calls' share of the runnable samples (a runnable thread may be "
                      "waiting for a core), then each stage's share of the others (%):", "client:"]  # fmt: skip
        lines += [
            f"  {k}: {v}" for k, v in report["profile"]["client_busy_samples_percent"].items()
        ]
        lines += ["emulator:"]
        lines += [
            f"  {k}: {v}" for k, v in report["profile"]["emulator_busy_samples_percent"].items()
        ]
        lines += [f"Python function calls in the client per settle (cProfile, another run): "
                  f"{report['profile']['client_python_calls_per_settle']}"]  # fmt: skip
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=5000, help="messages per mode and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--renew-seconds", type=float, default=0.5,
                        help="the lock renewal's period in the 'renewal beside' mode")  # fmt: skip
    parser.add_argument("--profile", type=Path, default=None,
                        help="also profile a bare sequential run with py-spy; collapsed stacks go here")  # fmt: skip
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "lane_settles.json"
    )
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    rounds, loads = [], []
    for number in range(args.rounds):
        sys.stderr.write(f"lane settles: round {number + 1}/{args.rounds} ...\n")
        with tempfile.TemporaryDirectory(prefix="bench-lane-settles-") as folder:
            load, results = one_round(args.messages, args.renew_seconds, Path(folder))
        loads.append(round(load, 2))
        rounds.append(results)
    report: dict[str, Any] = {"scenario": "lane settles", "sdk": SDK_VERSION, "messages": args.messages,
                              "rounds": args.rounds, "renew_seconds": args.renew_seconds,
                              "load_average_1m": loads, "modes": medians(rounds), "all_rounds": rounds,
                              "turns_cpu_us": asyncio.run(turns_cpu(args.messages))}  # fmt: skip
    if args.profile is not None:
        sys.stderr.write("lane settles: profiling a bare sequential run ...\n")
        with tempfile.TemporaryDirectory(prefix="bench-lane-settles-profile-") as folder:
            report["profile"] = profile(args.messages, Path(folder), args.profile)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    sys.stdout.write("\n".join(report_lines(args, report)) + "\n")


if __name__ == "__main__":
    main()
