"""Consumer throughput and CPU per event, on the real SDKs against the project's emulators.

Per round and per shape (one event per order, ten events per order), in processes of their own:
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
- Inbox shapes: what azure-servicebus alone costs per message, with no consumer code and no store,
  for the three shapes an inbox can have (a bare client in this process, one shared SSL context
  as the consumer's; messages sent, then drained; wall time includes the sends): one session per
  message (accept with the first receive, complete, close; 64 at a time), 16 session ids each
  drained by one long-held receiver (prefetch 200, receives of up to 100, the batch's completes
  issued together), a plain queue with one such receiver.
- load: the 1-minute load average (uptime's first figure) when each round starts; the machine may
  be shared, so read every figure next to it.

The inbox is the consumer's default (CONSUMER_INBOX_LANES, 32 lanes) unless --lanes says otherwise
(0: one session per order, the pump of earlier releases).

    uv run python benchmarks/consumer.py [--messages 1000] [--rounds 3] [--lanes N] [--shape-messages 3000]
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
from eventflow_consumer.lanes import LaneSettings, LaneWorker
from eventflow_consumer.ports import Inbound, LaneRecords
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
from eventflow_contracts.lanes import session_id_for
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


def end_to_end(
    messages: int, per_session: int, concurrency: int, lanes: int, folder: Path
) -> dict[str, Any]:
    sessions = max(messages // per_session, 1)
    total = sessions * per_session
    outgoing = [
        ServiceBusMessage(raw, session_id=session_id_for(f"o{n}", lanes), message_id=orjson.loads(raw)["id"])
        for n in range(sessions)
        for raw in order_events(f"o{n}", per_session)
    ]  # fmt: skip
    with ExitStack() as stack:
        messaging = stack.enter_context(messaging_emulator(folder / "messaging"))
        cosmos = stack.enter_context(cosmos_emulator(folder / "cosmos"))
        port = free_port()
        env = {**os.environ, "CONSUMER_MODE": "emulator",
               "CONSUMER_SERVICEBUS_CONNECTION_STRING": messaging.connection_string,
               "CONSUMER_COSMOS_ENDPOINT": cosmos.endpoint, "CONSUMER_COSMOS_KEY": cosmos.key,
               "CONSUMER_HTTP_PORT": str(port), "CONSUMER_MAX_CONCURRENT_SESSIONS": str(concurrency),
               "CONSUMER_INBOX_LANES": str(lanes)}  # fmt: skip
        consumer = ConsumerProcess(
            env, total, {"messaging emulator": messaging.pid, "cosmos emulator": cosmos.pid}
        )
        stack.callback(consumer.stop)
        consumer.wait_ready(port)
        load = os.getloadavg()[
            0
        ]  # the machine's load when the round starts (uptime's first figure)
        before = consumer.cpu()
        started = time.perf_counter()
        asyncio.run(send_all(messaging.connection_string, outgoing))
        if not consumer.done.wait(600):
            raise RuntimeError(f"only {consumer.applied} of {total} messages applied in 600 s")
        elapsed = consumer.finished_at - started
        cpu = {name: consumer.cpu_at_end[name] - before[name] for name in before}
    return {
        "orders": sessions,
        "sessions": sessions,
        "load_average_1m": round(load, 2),
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


async def _drain_held(
    client: ServiceBusClient, queue: str, session_id: str | None, left: list[int]
) -> None:
    """One long-held receiver (prefetch 200, receives of up to 100, the batch's completes issued
    together) until `left[0]` messages are completed over all receivers."""
    receiver = client.get_queue_receiver(queue, session_id=session_id, prefetch_count=200)
    async with receiver:
        while left[0] > 0:
            batch = await receiver.receive_messages(max_message_count=100, max_wait_time=1)
            await asyncio.gather(*(receiver.complete_message(m) for m in batch))
            left[0] -= len(batch)


async def _inbox_shape(connection_string: str, shape: str, count: int) -> dict[str, Any]:
    """`count` messages sent then drained by a bare azure-servicebus client in one of three inbox
    shapes; wall time and this process's CPU include the sends."""
    context = ssl.create_default_context(cafile=certifi.where())
    queue = "conformance-plain" if shape == "plain queue" else "inbox"
    sessions: list[str | None] = [None] * count  # the plain queue
    if shape == "one session per message":
        sessions = [f"m{n}" for n in range(count)]
    elif shape == "16 held lanes":
        sessions = [f"lane{n % 16}" for n in range(count)]
    cpu, started = time.process_time(), time.perf_counter()
    async with ServiceBusClient.from_connection_string(
        connection_string, ssl_context=context
    ) as client:
        async with client.get_queue_sender(queue) as sender:
            for start in range(0, count, SEND_BATCH):
                await sender.send_messages([ServiceBusMessage(b"{}", session_id=sessions[n], message_id=f"{shape}{n}")
                                            for n in range(start, min(start + SEND_BATCH, count))])  # fmt: skip
        if shape == "one session per message":
            timings: dict[str, list[float]] = {
                "accept + first receive": [],
                "complete": [],
                "close": [],
            }
            gate = asyncio.Semaphore(64)

            async def one() -> None:
                async with gate:
                    await _bare_session(client, timings)

            await asyncio.gather(*(one() for _ in range(count)))
        else:
            left = [count]
            ids: list[str | None] = (
                sorted(set(sessions), key=str) if shape == "16 held lanes" else [None]
            )
            await asyncio.gather(*(_drain_held(client, queue, i, left) for i in ids))
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    return {"shape": shape, "messages": count, "messages_per_s": round(count / elapsed, 1),
            "client_cpu_us_per_message": round(cpu / count * 1e6)}  # fmt: skip


def inbox_shapes(count: int, folder: Path) -> list[dict[str, Any]]:
    """The inbox-shape comparison, each shape on a fresh messaging emulator."""
    results = []
    for shape in ("one session per message", "16 held lanes", "plain queue"):
        with messaging_emulator(folder / shape.replace(" ", "-")) as messaging:
            load = os.getloadavg()[0]
            before = cpu_seconds(messaging.pid)
            result = asyncio.run(_inbox_shape(messaging.connection_string, shape, count))
            emulator = cpu_seconds(messaging.pid) - before
        result["messaging_emulator_cpu_us_per_message"] = round(emulator / count * 1e6)
        result["load_average_1m"] = round(load, 2)
        results.append(result)
    return results


class _Channel:
    """One session's messages in memory: the worker's SessionChannel port, settling nothing."""

    def __init__(self, session_id: str, inbound: list[Inbound]) -> None:
        self.session_id, self._inbound = session_id, inbound

    async def get_state(self) -> bytes | None:
        return None

    async def set_state(self, state: bytes) -> None:
        return None

    async def receive(self, max_count: int, wait: float) -> list[Inbound]:
        await asyncio.sleep(0)  # a receive always yields, as the SDK's does
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


class MemoryStore:
    """The consumer's store in memory, free (also benchmarks/lane_settles.py's)."""

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
    ) -> str | None:
        if event_id is not None:
            self.marks.add(event_id)
        token = f"token-{len(self.marks)}"
        self.summaries[summary.order_id] = (summary, token)
        return token

    async def set_blocked(self, session_id: str, reason: str, lane: str | None = None) -> None:
        return None

    async def lane_records(self, lane: str) -> LaneRecords:
        return LaneRecords()

    async def blocked_record(self, order_id: str) -> dict[str, Any] | None:
        return None

    async def record_deferred(
        self, order_id: str, lane: str, sequence_number: int, event_sequence: int | None
    ) -> None:
        return None

    async def forget_deferred(self, order_id: str, sequence_numbers: set[int]) -> None:
        return None

    async def start_unblock(self, order_id: str, request: str) -> bool:
        return False

    async def answer_unblock(self, order_id: str, request: str, reason: str) -> None:
        return None

    async def clear_blocked(self, session_id: str) -> None:
        return None


async def own_cpu(messages: int, per_session: int, lanes: int) -> float:
    """The session worker's (no lanes) or the lane worker's own CPU per event."""
    sessions = max(messages // per_session, 1)
    inbound = [
        Inbound(Delivery(raw, orjson.loads(raw)["id"], session_id_for(f"o{n}", lanes), s, 0, {}), s)
        for n in range(sessions) for s, raw in enumerate(order_events(f"o{n}", per_session))
    ]  # fmt: skip
    store = MemoryStore()
    started = time.process_time()
    if lanes:
        by_lane: dict[str, list[Inbound]] = {}
        for message in inbound:
            by_lane.setdefault(message.delivery.session_id, []).append(message)
        worker = LaneWorker(InboxHandler(store), store, LaneSettings(idle_seconds=0))
        for session_id, messages_of_lane in by_lane.items():
            target = worker.settled + len(messages_of_lane)
            await worker.hold(_Channel(session_id, messages_of_lane),
                              stopping=lambda: worker.settled >= target)  # fmt: skip  # noqa: B023
    else:
        sessions_worker = SessionWorker(InboxHandler(store), store)
        for n in range(sessions):
            channel = _Channel(f"o{n}", inbound[n * per_session : (n + 1) * per_session])
            await sessions_worker.drain(channel, idle_seconds=0, stopping=lambda: False)
    return round((time.process_time() - started) / (sessions * per_session) * 1e6, 1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=1000, help="events per shape and round")
    parser.add_argument("--concurrency", type=int, default=None,
                        help="the consumer's concurrent sessions (default: its setting's default)")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--lanes", type=int, default=None,
                        help="CONSUMER_INBOX_LANES (default: its setting's default; 0 = a session per order)")  # fmt: skip
    parser.add_argument("--shape-messages", type=int, default=3000,
                        help="messages of the bare-SDK inbox-shape comparison (0: skip it)")  # fmt: skip
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "consumer.json"
    )
    args = parser.parse_args()
    concurrency = args.concurrency or int(Settings.model_fields["max_concurrent_sessions"].default)
    lanes = int(Settings.model_fields["inbox_lanes"].default) if args.lanes is None else args.lanes
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
                    end_to_end(args.messages, per_session, concurrency, lanes, Path(folder))
                )
            own.append(asyncio.run(own_cpu(args.messages, per_session, lanes)))
        rounds.sort(key=lambda r: r["events_per_s"])
        shapes[per_session] = {"median_round": rounds[len(rounds) // 2],
                               "rounds_events_per_s": [r["events_per_s"] for r in rounds],
                               "own_code_cpu_us_per_event_median": statistics.median(own)}  # fmt: skip
    floors: list[dict[str, Any]] = []
    if args.shape_messages:
        sys.stderr.write("azure-servicebus alone: the three inbox shapes ...\n")
        with tempfile.TemporaryDirectory(prefix="bench-consumer-shapes-") as folder:
            floors = inbox_shapes(args.shape_messages, Path(folder))
    report = {"scenario": "consumer", "transport": "azure-servicebus + azure-cosmos on the project's emulators",
              "lanes": lanes, "concurrent_sessions": concurrency, "events": args.messages, "rounds": args.rounds,
              "cpu": "/proc/<pid>/stat utime + stime per process; own code and SDK floor: process time in-process",
              "events_per_session": {str(k): v for k, v in shapes.items()},
              "inbox_shapes": floors}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    sys.stdout.write("\n".join(report_lines(args, lanes, shapes, floors)) + "\n")


def report_lines(
    args: argparse.Namespace,
    lanes: int,
    shapes: dict[int, dict[str, Any]],
    floors: list[dict[str, Any]],
) -> list[str]:
    inbox = f"{lanes} lanes" if lanes else "one session per order"
    lines = [
        f"consumer on the real SDKs: messaging emulator → consumer process → Cosmos DB emulator; "
        f"{args.messages} events per shape, inbox: {inbox}, median of {args.rounds} rounds",
        "CPU: /proc/<pid>/stat utime + stime of each process over the run; own code: process time, in-process;"
        " load: the 1-minute load average (uptime) when the round started",
        "",
        "| events per order | orders | events/s | rounds (events/s) | load | consumer CPU µs/event "
        "| messaging emulator CPU µs/event | Cosmos emulator CPU µs/event | own code CPU µs/event |",
        "| ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for per_session, shape in shapes.items():
        median, cpu = shape["median_round"], shape["median_round"]["cpu_us_per_event"]
        lines.append(
            f"| {per_session} | {median['orders']} | {median['events_per_s']} | {shape['rounds_events_per_s']} "
            f"| {median['load_average_1m']} | {cpu['consumer']} | {cpu['messaging emulator']} | {cpu['cosmos emulator']} "
            f"| {shape['own_code_cpu_us_per_event_median']} |"
        )
    if floors:
        lines += [
            "",
            "azure-servicebus alone, the inbox's shape (messages sent, then drained; wall time includes the sends):",
            "",
            "| shape | messages | messages/s | client CPU µs/message | messaging emulator CPU µs/message | load |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for floor in floors:
            lines.append(
                f"| {floor['shape']} | {floor['messages']} | {floor['messages_per_s']} | {floor['client_cpu_us_per_message']} "
                f"| {floor['messaging_emulator_cpu_us_per_message']} | {floor['load_average_1m']} |"
            )
    return lines


if __name__ == "__main__":
    main()
