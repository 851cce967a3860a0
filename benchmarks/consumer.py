"""Consumer throughput and CPU per event, on the real SDKs against the project's emulators.

Per round and per shape (one event per session, ten events per session), in processes of their own:
the messaging emulator (its repository config: the `inbox` queue with sessions and duplicate
detection), the Cosmos DB emulator and one consumer process (`python -m eventflow_consumer.main`,
its default settings unless --concurrency is given). Once the consumer answers /readyz, this process
sends the events (azure-servicebus, batches of 100) and the clock starts; it stops at the consumer's
last `applied` log line.

- events/s: events / (last effect - first send).
- CPU per event: each process's /proc/<pid>/stat utime + stime over that span, divided by the
  events (the consumer's includes its session accepts and releases, its idle polling and its
  JSON logging; the emulators' columns show what the two servers cost for it).
- own code: CPU per event of the consumer's session worker and handler alone (decode, duplicate
  checks, projection) against an in-memory channel and store, in this process (process time),
  without its logging (only warnings and errors are formatted here).
- SDK floor: what azure-servicebus alone costs per session, with no consumer code and no store: a
  bare client in this process (one shared SSL context, as the consumer's) accepts the next session
  with its first receive, completes its one message and closes the receiver, `concurrency` sessions
  at a time. Its process CPU per session bounds what one core can do with one event per session.

    uv run python benchmarks/consumer.py [--messages 400] [--rounds 3] [--concurrency N]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from contextlib import ExitStack
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import certifi
import orjson
import structlog
from azure.servicebus import NEXT_AVAILABLE_SESSION, ServiceBusMessage
from azure.servicebus.aio import ServiceBusClient

from eventflow_consumer.handling import Delivery, InboxHandler
from eventflow_consumer.ports import Inbound
from eventflow_consumer.projection import OrderSummary
from eventflow_consumer.sessions import SessionWorker
from eventflow_consumer.settings import Settings
from eventflow_contracts import (
    OrderCreated,
    OrderItemAdded,
    OrderLine,
    OrderSubmitted,
    encode_event,
    new_event,
)
from eventflow_emulators.cosmos.testing import cosmos_emulator
from eventflow_emulators.messaging.testing import messaging_emulator

LINE = OrderLine(sku="SKU-1", quantity=1, unit_price=Decimal("1.00"))
TICKS = os.sysconf("SC_CLK_TCK")
SEND_BATCH = 100
START_TIMEOUT_S = 120.0


def order_events(order_id: str, count: int) -> list[bytes]:
    """`count` events of one order, sequences 1..count: created, items added, then submitted."""
    data: list[Any] = [
        OrderCreated(
            order_id=order_id, customer_id="c", lines=(LINE,), currency="EUR", total=Decimal("1.00")
        )
    ]
    data += [OrderItemAdded(order_id=order_id, line=LINE) for _ in range(max(count - 2, 0))]
    if count > 1:
        data.append(
            OrderSubmitted(
                order_id=order_id, currency="EUR", total=Decimal(count - 1), line_count=count - 1
            )
        )
    return [
        encode_event(new_event(d, source="/bench", sequence=n)) for n, d in enumerate(data, start=1)
    ]


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/<pid>/stat (fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class ConsumerProcess:
    """The consumer as a child process; counts its `applied` log lines and notes the time and
    the CPU of every process measured when the expected count is reached."""

    def __init__(self, env: dict[str, str], expected: int, pids: dict[str, int]) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "eventflow_consumer.main"], env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)  # fmt: skip
        self.pids = {"consumer": self.process.pid, **pids}
        self.expected = expected
        self.applied = 0
        self.done = threading.Event()
        self.finished_at = 0.0
        self.cpu_at_end: dict[str, float] = {}
        threading.Thread(target=self._read, daemon=True).start()

    def cpu(self) -> dict[str, float]:
        return {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if b'"applied"' not in line or orjson.loads(line).get("event") != "applied":
                continue
            self.applied += 1
            if self.applied == self.expected:
                self.finished_at = time.perf_counter()
                self.cpu_at_end = self.cpu()
                self.done.set()

    def wait_ready(self, port: int) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError):
                pass  # not listening yet, or not ready
            if self.process.poll() is not None:
                raise RuntimeError(f"the consumer exited with {self.process.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError("the consumer did not get ready")
            time.sleep(0.1)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


async def send_all(connection_string: str, messages: list[ServiceBusMessage]) -> None:
    async with (
        ServiceBusClient.from_connection_string(connection_string) as client,
        client.get_queue_sender("inbox") as sender,
    ):
        for start in range(0, len(messages), SEND_BATCH):
            await sender.send_messages(messages[start : start + SEND_BATCH])


def end_to_end(messages: int, per_session: int, concurrency: int, folder: Path) -> dict[str, Any]:
    sessions = max(messages // per_session, 1)
    total = sessions * per_session
    outgoing = [
        ServiceBusMessage(raw, session_id=f"o{n}", message_id=orjson.loads(raw)["id"])
        for n in range(sessions)
        for raw in order_events(f"o{n}", per_session)
    ]
    with ExitStack() as stack:
        messaging = stack.enter_context(messaging_emulator(folder / "messaging"))
        cosmos = stack.enter_context(cosmos_emulator(folder / "cosmos"))
        port = free_port()
        env = {**os.environ, "CONSUMER_MODE": "emulator",
               "CONSUMER_SERVICEBUS_CONNECTION_STRING": messaging.connection_string,
               "CONSUMER_COSMOS_ENDPOINT": cosmos.endpoint, "CONSUMER_COSMOS_KEY": cosmos.key,
               "CONSUMER_HTTP_PORT": str(port), "CONSUMER_MAX_CONCURRENT_SESSIONS": str(concurrency)}  # fmt: skip
        consumer = ConsumerProcess(
            env, total, {"messaging emulator": messaging.pid, "cosmos emulator": cosmos.pid}
        )
        stack.callback(consumer.stop)
        consumer.wait_ready(port)
        before = consumer.cpu()
        started = time.perf_counter()
        asyncio.run(send_all(messaging.connection_string, outgoing))
        if not consumer.done.wait(600):
            raise RuntimeError(f"only {consumer.applied} of {total} messages applied in 600 s")
        elapsed = consumer.finished_at - started
        cpu = {name: consumer.cpu_at_end[name] - before[name] for name in before}
    return {
        "sessions": sessions,
        "messages": total,
        "seconds": round(elapsed, 2),
        "events_per_s": round(total / elapsed, 1),
        "cpu_us_per_event": {name: round(value / total * 1e6) for name, value in cpu.items()},
    }


async def _bare_session(client: ServiceBusClient, timings: dict[str, list[float]]) -> None:
    """One session the way the consumer's pump takes it: accept with the first receive, complete,
    close."""
    receiver = client.get_queue_receiver(
        "inbox", session_id=NEXT_AVAILABLE_SESSION, max_wait_time=4
    )
    started = time.perf_counter()
    messages = await receiver.receive_messages(max_message_count=20, max_wait_time=5)
    accepted = time.perf_counter()
    for message in messages:
        await receiver.complete_message(message)
    completed = time.perf_counter()
    await receiver.close()
    timings["accept + first receive"].append(accepted - started)
    timings["complete"].append(completed - accepted)
    timings["close"].append(time.perf_counter() - completed)


async def _bare_run(connection_string: str, sessions: int, concurrency: int) -> dict[str, Any]:
    await send_all(connection_string, [ServiceBusMessage(b"{}", session_id=f"bare{n}", message_id=f"bare{n}")
                                       for n in range(sessions)])  # fmt: skip
    context = ssl.create_default_context(cafile=certifi.where())
    timings: dict[str, list[float]] = {"accept + first receive": [], "complete": [], "close": []}
    async with ServiceBusClient.from_connection_string(
        connection_string, ssl_context=context
    ) as client:
        gate = asyncio.Semaphore(concurrency)

        async def one() -> None:
            async with gate:
                await _bare_session(client, timings)

        cpu, started = time.process_time(), time.perf_counter()
        await asyncio.gather(*(one() for _ in range(sessions)))
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    return {"sessions": sessions, "concurrency": concurrency,
            "sessions_per_s": round(sessions / elapsed, 1),
            "cpu_us_per_session": round(cpu / sessions * 1e6),
            "wall_ms_p50": {step: round(statistics.median(v) * 1e3, 1) for step, v in timings.items()}}  # fmt: skip


def sdk_floor(sessions: int, concurrency: int, folder: Path) -> dict[str, Any]:
    """azure-servicebus alone, per session (see the module's docstring)."""
    with messaging_emulator(folder / "messaging") as messaging:
        before = cpu_seconds(messaging.pid)
        result = asyncio.run(_bare_run(messaging.connection_string, sessions, concurrency))
        emulator = cpu_seconds(messaging.pid) - before
    result["messaging_emulator_cpu_us_per_session"] = round(emulator / sessions * 1e6)
    return result


class _Channel:
    """One session's messages in memory: the worker's SessionChannel port, settling nothing."""

    def __init__(self, session_id: str, inbound: list[Inbound]) -> None:
        self.session_id, self._inbound = session_id, inbound

    async def get_state(self) -> bytes | None:
        return None

    async def set_state(self, state: bytes) -> None:
        return None

    async def receive(self, max_count: int, wait: float) -> list[Inbound]:
        batch, self._inbound = self._inbound[:max_count], self._inbound[max_count:]
        return batch

    async def receive_deferred(self, sequence_number: int) -> Inbound | None:
        return None

    async def deferred_present(self, sequence_numbers: list[int]) -> set[int]:
        return set()

    async def complete(self, inbound: Inbound) -> None:
        return None

    async def abandon(self, inbound: Inbound) -> None:
        return None

    async def defer(self, inbound: Inbound) -> None:
        return None

    async def dead_letter(self, inbound: Inbound, reason: str, description: str) -> None:
        return None


class _MemoryStore:
    def __init__(self) -> None:
        self.summaries: dict[str, tuple[OrderSummary, str]] = {}
        self.marks: set[str] = set()

    async def load(self, order_id: str) -> tuple[OrderSummary, str] | None:
        return self.summaries.get(order_id)

    async def commit(
        self,
        summary: OrderSummary,
        token: str | None,
        event_id: str | None,
        committed_at: datetime | None = None,
    ) -> None:
        if event_id is not None:
            self.marks.add(event_id)
        self.summaries[summary.order_id] = (summary, f"token-{len(self.marks)}")

    async def set_blocked(self, session_id: str, reason: str) -> None:
        return None

    async def clear_blocked(self, session_id: str) -> None:
        return None


async def own_cpu(messages: int, per_session: int) -> float:
    sessions = max(messages // per_session, 1)
    channels = [
        _Channel(f"o{n}", [Inbound(Delivery(raw, orjson.loads(raw)["id"], f"o{n}", s, 0, {}), s)
                           for s, raw in enumerate(order_events(f"o{n}", per_session))])
        for n in range(sessions)
    ]  # fmt: skip
    store = _MemoryStore()
    worker = SessionWorker(InboxHandler(store), store)
    started = time.process_time()
    for channel in channels:
        await worker.drain(channel, idle_seconds=0, stopping=lambda: False)
    return round((time.process_time() - started) / (sessions * per_session) * 1e6, 1)


def floor_rounds(rounds: int, sessions: int, concurrency: int) -> dict[str, Any]:
    """The SDK floor's median round (by CPU per session)."""
    results = []
    for _ in range(rounds):
        with tempfile.TemporaryDirectory(prefix="bench-consumer-sdk-") as folder:
            results.append(sdk_floor(sessions, concurrency, Path(folder)))
    results.sort(key=lambda r: r["cpu_us_per_session"])
    return results[len(results) // 2]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=1000, help="events per shape and round")
    parser.add_argument("--concurrency", type=int, default=None,
                        help="the consumer's concurrent sessions (default: its setting's default)")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--floor-sessions", type=int, default=200)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "consumer.json"
    )
    args = parser.parse_args()
    concurrency = args.concurrency or int(Settings.model_fields["max_concurrent_sessions"].default)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    shapes: dict[int, dict[str, Any]] = {}
    for per_session in (1, 10):
        rounds, own = [], []
        for round_number in range(args.rounds):
            sys.stderr.write(
                f"consumer, {per_session} per session: round {round_number + 1}/{args.rounds} ...\n"
            )
            with tempfile.TemporaryDirectory(prefix="bench-consumer-") as folder:
                rounds.append(end_to_end(args.messages, per_session, concurrency, Path(folder)))
            own.append(asyncio.run(own_cpu(args.messages, per_session)))
        rounds.sort(key=lambda r: r["events_per_s"])
        shapes[per_session] = {"median_round": rounds[len(rounds) // 2],
                               "rounds_events_per_s": [r["events_per_s"] for r in rounds],
                               "own_code_cpu_us_per_event_median": statistics.median(own)}  # fmt: skip
    sys.stderr.write("azure-servicebus alone: one session at a time, then concurrently ...\n")
    # One at a time shows each step's wall time; a quarter of the sessions is enough for that.
    floors = {"1": floor_rounds(args.rounds, max(args.floor_sessions // 4, 10), 1),
              str(concurrency): floor_rounds(args.rounds, args.floor_sessions, concurrency)}  # fmt: skip
    report = {"scenario": "consumer", "transport": "azure-servicebus + azure-cosmos on the project's emulators",
              "concurrent_sessions": concurrency, "events": args.messages, "rounds": args.rounds,
              "cpu": "/proc/<pid>/stat utime + stime per process; own code and SDK floor: process time in-process",
              "events_per_session": {str(k): v for k, v in shapes.items()},
              "sdk_floor_by_concurrency": floors}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    sys.stdout.write("\n".join(report_lines(args, concurrency, shapes, floors)) + "\n")


def report_lines(
    args: argparse.Namespace,
    concurrency: int,
    shapes: dict[int, dict[str, Any]],
    floors: dict[str, dict[str, Any]],
) -> list[str]:
    lines = [
        f"consumer on the real SDKs: messaging emulator → consumer process → Cosmos DB emulator; "
        f"{args.messages} events per shape, {concurrency} concurrent sessions, median of {args.rounds} rounds",
        "CPU: /proc/<pid>/stat utime + stime of each process over the run; own code: process time, in-process",
        "",
        "| events per session | sessions | events/s | rounds (events/s) | consumer CPU µs/event "
        "| messaging emulator CPU µs/event | Cosmos emulator CPU µs/event | own code CPU µs/event |",
        "| ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for per_session, shape in shapes.items():
        median, cpu = shape["median_round"], shape["median_round"]["cpu_us_per_event"]
        lines.append(
            f"| {per_session} | {median['sessions']} | {median['events_per_s']} | {shape['rounds_events_per_s']} "
            f"| {cpu['consumer']} | {cpu['messaging emulator']} | {cpu['cosmos emulator']} "
            f"| {shape['own_code_cpu_us_per_event_median']} |"
        )
    lines += [
        "",
        "azure-servicebus alone (sessions of one message: accept with the first receive, complete, "
        "close), median of the rounds:",
        "",
        "| sessions at a time | sessions | sessions/s | client CPU µs/session | messaging emulator CPU µs/session "
        "| accept + first receive p50 ms | complete p50 ms | close p50 ms |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for at_once, floor in floors.items():
        wall = floor["wall_ms_p50"]
        lines.append(
            f"| {at_once} | {floor['sessions']} | {floor['sessions_per_s']} | {floor['cpu_us_per_session']} "
            f"| {floor['messaging_emulator_cpu_us_per_session']} | {wall['accept + first receive']} "
            f"| {wall['complete']} | {wall['close']} |"
        )
    return lines


if __name__ == "__main__":
    main()
