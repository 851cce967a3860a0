"""Consumer throughput and CPU per message, on the real SDKs against the project's emulators.

Per round and per shape (one event per session, ten events per session), in processes of their own:
the messaging emulator (its repository config: the `inbox` queue with sessions and duplicate
detection), the Cosmos DB emulator and one consumer process (`python -m eventflow_consumer.main`,
its default settings: 16 concurrent sessions, 0.5 s session idle). Once the consumer answers
/readyz, this process sends the messages (azure-servicebus, batches of 100) and the clock starts;
it stops at the consumer's last `applied` log line.

- messages/s: messages / (last effect - first send).
- CPU per message: each process's /proc/<pid>/stat utime + stime over that span, divided by the
  messages (the consumer's includes its session accepts and releases, its idle polling and its
  JSON logging; the emulators' columns show what the two servers cost for it).
- own code: CPU per message of the consumer's session worker and handler alone (decode, duplicate
  checks, projection) against an in-memory channel and store, in this process (process time),
  without its logging (only warnings and errors are formatted here).

    uv run python benchmarks/consumer.py [--messages 400] [--rounds 3] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
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

import orjson
import structlog
from azure.servicebus import ServiceBusMessage
from azure.servicebus.aio import ServiceBusClient

from eventflow_consumer.handling import Delivery, InboxHandler
from eventflow_consumer.ports import Inbound
from eventflow_consumer.projection import OrderSummary
from eventflow_consumer.sessions import SessionWorker
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
        "messages_per_s": round(total / elapsed, 1),
        "cpu_us_per_message": {name: round(value / total * 1e6) for name, value in cpu.items()},
    }


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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=400, help="messages per shape and round")
    parser.add_argument(
        "--concurrency", type=int, default=16, help="the consumer's concurrent sessions"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "consumer.json"
    )
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    shapes: dict[int, dict[str, Any]] = {}
    for per_session in (1, 10):
        rounds, own = [], []
        for round_number in range(args.rounds):
            sys.stderr.write(
                f"consumer, {per_session} per session: round {round_number + 1}/{args.rounds} ...\n"
            )
            with tempfile.TemporaryDirectory(prefix="bench-consumer-") as folder:
                rounds.append(
                    end_to_end(args.messages, per_session, args.concurrency, Path(folder))
                )
            own.append(asyncio.run(own_cpu(args.messages, per_session)))
        rounds.sort(key=lambda r: r["messages_per_s"])
        shapes[per_session] = {"median_round": rounds[len(rounds) // 2],
                               "rounds_messages_per_s": [r["messages_per_s"] for r in rounds],
                               "own_code_cpu_us_per_message_median": statistics.median(own)}  # fmt: skip
    report = {"scenario": "consumer", "transport": "azure-servicebus + azure-cosmos on the project's emulators",
              "concurrent_sessions": args.concurrency, "messages": args.messages, "rounds": args.rounds,
              "cpu": "/proc/<pid>/stat utime + stime per process; own code: process time in-process",
              "events_per_session": {str(k): v for k, v in shapes.items()}}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    lines = [
        f"consumer on the real SDKs: messaging emulator → consumer process → Cosmos DB emulator; "
        f"{args.messages} messages per shape, {args.concurrency} concurrent sessions, median of {args.rounds} rounds",
        "CPU: /proc/<pid>/stat utime + stime of each process over the run; own code: process time, in-process",
        "",
        "| events per session | sessions | messages/s | rounds (messages/s) | consumer CPU µs/msg "
        "| messaging emulator CPU µs/msg | Cosmos emulator CPU µs/msg | own code CPU µs/msg |",
        "| ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for per_session, shape in shapes.items():
        median, cpu = shape["median_round"], shape["median_round"]["cpu_us_per_message"]
        lines.append(
            f"| {per_session} | {median['sessions']} | {median['messages_per_s']} | {shape['rounds_messages_per_s']} "
            f"| {cpu['consumer']} | {cpu['messaging emulator']} | {cpu['cosmos emulator']} "
            f"| {shape['own_code_cpu_us_per_message_median']} |"
        )
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
