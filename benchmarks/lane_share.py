"""Consumer replicas sharing the inbox's lanes, on the real SDKs against the project's emulators.

Per replica count (2 and 4 by default, in one run), fresh emulators (the repository's config: the
`inbox` queue as deployed, lock 30 s) and consumer processes (`python -m eventflow_consumer.main`,
default settings: 32 lanes, `CONSUMER_LANE_SHARE_SECONDS` 5, the hold/rebalance period):

1. One replica starts alone and takes every lane. Idle CPU: its utime + stime over `--idle-seconds`
   while it holds every lane and nothing is sent (/proc/<pid>/stat).
2. Orders flow (one event per new order, every lane, `--rate` events/s) and the other replicas start
   together. Reported: each new replica's time from "resources ready" (connected) to its first held
   lane (goal: within 2 periods); the time until every lane is held and none above
   ceil(lanes / replicas); the most lanes any replica held from then on (goal: not above the share);
   the longest time a lane stayed unheld (goal: 5 s at most; every lane has messages waiting, since
   orders flow into all of them).
3. One replica is stopped (SIGTERM) while orders flow: the longest time one of its lanes stayed
   unheld until another took it (it leaves the share and keeps its lanes one more period first).
4. The flow stops; every event sent must be applied exactly once ("applied" log lines, summed over
   the replicas; a stopped replica's lines included).

Who holds what comes from the replicas' logs ("lane held", "lane no longer held"), timed when this
process reads each line. The machine may be shared: the 1-minute load average is reported.

    uv run python benchmarks/lane_share.py [--replicas 2 4] [--rate 100] [--idle-seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
from azure.servicebus import ServiceBusMessage
from azure.servicebus.aio import ServiceBusClient

from eventflow_consumer.settings import Settings
from eventflow_contracts import OrderCreated, OrderLine, encode_event, new_event
from eventflow_contracts.lanes import session_id_for
from eventflow_emulators.cosmos.testing import cosmos_emulator
from eventflow_emulators.messaging.testing import messaging_emulator

TICKS = os.sysconf("SC_CLK_TCK")
LINE = OrderLine(sku="SKU-1", quantity=1, unit_price=Decimal("1.00"))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


class Lanes:
    """Who holds each lane, over time, from every replica's log."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.holders: dict[str, set[str]] = {}  # lane -> replicas holding it (one, if all is well)
        self.unheld_since: dict[str, float] = {}
        self.gaps: list[tuple[float, str, float]] = []  # (ended at, lane, seconds unheld)
        self.most_held: dict[str, int] = {}
        self.double_held = 0

    def held(self, replica: str, lane: str, now: float) -> None:
        with self.lock:
            holders = self.holders.setdefault(lane, set())
            holders.add(replica)
            if len(holders) > 1:
                self.double_held += 1
            since = self.unheld_since.pop(lane, None)
            if since is not None:
                self.gaps.append((now, lane, now - since))
            count = self.count(replica)
            self.most_held[replica] = max(self.most_held.get(replica, 0), count)

    def released(self, replica: str, lane: str, now: float) -> None:
        with self.lock:
            holders = self.holders.setdefault(lane, set())
            holders.discard(replica)
            if not holders:
                self.unheld_since[lane] = now

    def count(self, replica: str) -> int:
        return sum(replica in h for h in self.holders.values())

    def by_replica(self) -> dict[str, int]:
        with self.lock:
            names = {r for h in self.holders.values() for r in h}
            return {r: self.count(r) for r in sorted(names)}

    def all_held(self, lanes: int) -> bool:
        with self.lock:
            return sum(1 for h in self.holders.values() if h) == lanes


class Replica:
    def __init__(self, name: str, env: dict[str, str], lanes: Lanes) -> None:
        self.name, self.lanes = name, lanes
        self.started = time.monotonic()
        self.ready_at: float | None = None
        self.first_lane_at: float | None = None
        self.applied: list[str] = []
        self.process = subprocess.Popen([sys.executable, "-m", "eventflow_consumer.main"], env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)  # fmt: skip
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        kept = os.environ.get("LANE_SHARE_LOGS")  # a folder: each replica's log kept there
        log = open(Path(kept) / f"{self.name}-{os.getpid()}.log", "ab") if kept else None  # noqa: SIM115
        for line in self.process.stdout:
            now = time.monotonic()
            if log is not None:
                log.write(f"{now:.3f} ".encode() + line)
                log.flush()
            record = orjson.loads(line)
            event = record.get("event")
            if event == "resources ready":
                self.ready_at = now
            elif event == "lane held":
                self.first_lane_at = self.first_lane_at or now
                self.lanes.held(self.name, record["lane"], now)
            elif event == "lane no longer held":
                self.lanes.released(self.name, record["lane"], now)
            elif event == "applied":
                self.applied.append(record["message_id"])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class Flow:
    """One event per new order, spread over every lane, at `rate` events/s, in a thread."""

    def __init__(self, connection_string: str, lanes: int, rate: float, prefix: str) -> None:
        self.connection_string, self.lanes, self.rate, self.prefix = (
            connection_string, lanes, rate, prefix,
        )  # fmt: skip
        self.sent: list[str] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self.thread.start()

    async def _run(self) -> None:
        async with (
            ServiceBusClient.from_connection_string(self.connection_string) as client,
            client.get_queue_sender("inbox") as sender,
        ):
            n, tick = 0, 0.25
            while not self.stopping.is_set():
                started = time.monotonic()
                batch = []
                for _ in range(max(1, round(self.rate * tick))):
                    order = f"{self.prefix}{n}"
                    n += 1
                    raw = encode_event(new_event(OrderCreated(
                        order_id=order, customer_id="c", lines=(LINE,), currency="EUR",
                        total=LINE.unit_price), source="/bench", sequence=1))  # fmt: skip
                    event_id = orjson.loads(raw)["id"]
                    batch.append(ServiceBusMessage(raw, session_id=session_id_for(order, self.lanes),
                                                   message_id=event_id))  # fmt: skip
                    self.sent.append(event_id)
                await sender.send_messages(batch)
                await asyncio.sleep(max(0.0, tick - (time.monotonic() - started)))

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(30)


def until(check: Callable[[], bool], what: str, wait: float) -> float:
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > wait:
            raise RuntimeError(f"{what}: not within {wait} s")
        time.sleep(0.05)
    return time.monotonic() - started


def scenario(count: int, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    lanes_n = int(Settings.model_fields["inbox_lanes"].default)
    period = float(Settings.model_fields["lane_share_seconds"].default)
    share = math.ceil(lanes_n / count)
    lanes = Lanes()
    replicas: list[Replica] = []
    with ExitStack() as stack:
        messaging = stack.enter_context(messaging_emulator(folder / "messaging"))
        cosmos = stack.enter_context(cosmos_emulator(folder / "cosmos"))
        env = {**os.environ, "CONSUMER_MODE": "emulator",
               "CONSUMER_SERVICEBUS_CONNECTION_STRING": messaging.connection_string,
               "CONSUMER_COSMOS_ENDPOINT": cosmos.endpoint, "CONSUMER_COSMOS_KEY": cosmos.key,
               "CONSUMER_HTTP_PORT": "0"}  # fmt: skip
        stack.callback(lambda: [r.stop() for r in replicas])
        load = os.getloadavg()[0]
        replicas.append(Replica("r0", env, lanes))
        until(lambda: lanes.all_held(lanes_n), "the first replica holds every lane", 120)
        time.sleep(2)  # its accepts done
        pid = replicas[0].process.pid
        idle_before, idle_started = cpu_seconds(pid), time.monotonic()
        time.sleep(args.idle_seconds)
        idle_cpu = (cpu_seconds(pid) - idle_before) / (time.monotonic() - idle_started)

        flow = Flow(messaging.connection_string, lanes_n, args.rate, "a")
        time.sleep(2)
        lanes.gaps.clear()
        replicas += [Replica(f"r{n}", env, lanes) for n in range(1, count)]

        def fair() -> bool:
            held = lanes.by_replica()
            return (lanes.all_held(lanes_n) and len(held) == count
                    and max(held.values()) <= share)  # fmt: skip

        converged = until(fair, "a fair share", 180)
        lanes.most_held = dict.fromkeys(lanes.most_held, 0)
        for name, held in lanes.by_replica().items():
            lanes.most_held[name] = held
        time.sleep(3 * period)  # it stays fair
        most_after = max(lanes.most_held.values())
        first_lane = [
            round(r.first_lane_at - (r.ready_at or r.started), 2)
            for r in replicas[1:]
            if r.first_lane_at is not None
        ]
        from_start = [round((r.first_lane_at or 0) - r.started, 2) for r in replicas[1:]]
        scale_out_gaps = [g for _, _, g in lanes.gaps]

        lanes.gaps.clear()
        leaving = replicas[-1]
        its_lanes = {lane for lane, h in lanes.holders.items() if leaving.name in h}
        leaving.process.terminate()
        until(lambda: lanes.all_held(lanes_n) and leaving.process.poll() is not None,
              "its lanes taken", 120)  # fmt: skip
        scale_in_gaps = [g for _, lane, g in lanes.gaps if lane in its_lanes]
        flow.stop()
        until(lambda: len({m for r in replicas for m in r.applied}) >= len(flow.sent),
              "every event applied", 180)  # fmt: skip
        time.sleep(2)
        applied = [m for r in replicas for m in r.applied]
    return {
        "replicas": count,
        "lanes": lanes_n,
        "period_s": period,
        "fair_share": share,
        "load_average_1m": round(load, 2),
        "idle_replica_holding_all_lanes": {
            "cpu_percent": round(idle_cpu * 100, 2),
            "cpu_ms_per_s": round(idle_cpu * 1000, 1),
        },
        "new_replica_first_lane_s_after_connected": first_lane,
        "new_replica_first_lane_s_after_process_start": from_start,
        "fair_share_reached_s_after_scale_out": round(converged, 2),
        "most_lanes_one_replica_held_after_fair": most_after,
        "longest_unheld_lane_s_scale_out": round(max(scale_out_gaps, default=0.0), 2),
        "longest_unheld_lane_s_scale_in": round(max(scale_in_gaps, default=0.0), 2),
        "lanes_moved_on_scale_in": len(its_lanes),
        "lanes_held_twice_at_once_seen": lanes.double_held,
        "events_sent": len(flow.sent),
        "events_applied": len(set(applied)),
        "applied_twice": len(applied) - len(set(applied)),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--replicas", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--rate", type=float, default=100.0, help="events/s while replicas start")
    parser.add_argument("--idle-seconds", type=float, default=20.0)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "lane_share.json"
    )
    args = parser.parse_args()
    results = []
    for count in args.replicas:
        sys.stderr.write(f"lane share: {count} replicas ...\n")
        with tempfile.TemporaryDirectory(prefix="bench-lane-share-") as folder:
            results.append(scenario(count, args, Path(folder)))
    report = {"scenario": "lane share", "transport": "azure-servicebus + azure-cosmos on the project's emulators",
              "rate_events_per_s": args.rate, "results": results}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")


if __name__ == "__main__":
    main()
