"""A property over joins, steals, same-name starts, crashes, pauses, splits, refused sends and
stalled lease stores, against fakes of the processor's own ports: no change is handled by two
live runs at the same time, none is lost, and each order's changes are first seen in order.

A pause freezes every lease-store and feed call of a run, and its handler, like SIGSTOP; a call
in flight across a pause is not a live one (the run may finish a send it had begun when it
resumes: at-least-once). A refusal makes the hub refuse a run's sends for a while: its handler
retries, as the publisher's does, until its context reports the lease lost. A stall makes a
run's lease-store calls hang for a while (a request that never answers) while the run, and its
handler, stay live. Every send attempt counts for overlaps, refused or cancelled ones too."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from eventflow_publisher.changefeed import (
    ChangeFeedProcessor,
    LeaseContext,
    LeaseLostError,
    ProcessorOptions,
)
from eventflow_publisher.changefeed.ranges import bounds

from ..fakes import FakeChangeFeed, FakeLeaseStore, feed_range  # type: ignore[import-not-found]

FAST = {"poll_delay": 0.01, "max_poll_delay": 0.02, "acquire_interval": 0.05, "renew_interval": 0.1,
        "expiry": 0.6, "lag_interval": 0.2, "retry_delay": 0.01, "max_retry_delay": 0.05,
        "shutdown_grace": 2.0, "max_items": 3, "request_check_interval": 0.05,
        "handover_poll": 0.02, "handover_timeout": 0.3}  # fmt: skip
ORDERS = {f"o{n}": f"{16 * n + 8:02X}" for n in range(16)}  # order -> its EPK position
SPLITS = {("", "80"): ("40",), ("80", "FF"): ("C0",), ("", "40"): ("20",), ("C0", "FF"): ("E0",)}


def _inside(position: str, low: str, high: str) -> bool:
    return low <= position and (high == "FF" or position < high)


@dataclass
class Feed(FakeChangeFeed):
    """The fake feed with orders placed by EPK position; a write lands in every range (current or
    split away) that holds its position, as a token of a split range follows its children."""

    stamp: itertools.count[int] = field(default_factory=lambda: itertools.count(1000))
    sequences: dict[str, int] = field(default_factory=dict)

    def write(self) -> None:
        ts = next(self.stamp)
        for order, position in ORDERS.items():
            sequence = self.sequences[order] = self.sequences.get(order, 0) + 1
            document = {"id": f"{order}:{sequence:04d}", "order": order, "_ts": ts}
            for low, high in {*self.items, *(bounds(r) for r in self.ranges)}:
                if _inside(position, low, high):
                    self.items.setdefault((low, high), []).append(document)

    def split(self) -> None:
        for current in list(self.ranges):
            cut = SPLITS.get(bounds(current))
            if cut is None:
                continue
            low, high = bounds(current)
            children = [feed_range(low, cut[0]), feed_range(cut[0], high)]
            for child in children:
                child_low, child_high = bounds(child)
                self.items[(child_low, child_high)] = [
                    d for d in self.items.get((low, high), [])
                    if _inside(ORDERS[d["order"]], child_low, child_high)
                ]  # fmt: skip
            self.ranges = [r for r in self.ranges if r is not current] + children
            return


@dataclass
class Frozen:
    """A run's view of a port: every call waits while the run is paused (and, for the lease
    store, while it is stalled)."""

    port: Any
    run: Run
    stalls: bool = False

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.port, name)
        if not asyncio.iscoroutinefunction(attribute):
            return attribute

        async def frozen(*args: Any, **kwargs: Any) -> Any:
            await self.run.thaw()
            if self.stalls:
                await self.run.unstall()
            result = await attribute(*args, **kwargs)
            await self.run.thaw()
            return result

        return frozen


@dataclass
class Run:
    label: str
    paused_until: float = 0.0
    stalled_until: float = 0.0
    refused_until: float = 0.0
    pauses: list[tuple[float, float]] = field(default_factory=list)
    processor: ChangeFeedProcessor | None = None
    task: asyncio.Task[None] | None = None

    async def thaw(self) -> None:
        while (left := self.paused_until - time.monotonic()) > 0:  # noqa: ASYNC110 - a pause may be extended
            await asyncio.sleep(left)

    async def unstall(self) -> None:
        while (left := self.stalled_until - time.monotonic()) > 0:  # noqa: ASYNC110 - as thaw
            await asyncio.sleep(left)


@dataclass
class Calls:
    """`calls`: the accepted sends; `attempts`: every send attempt (refused, cancelled too)."""

    calls: list[tuple[str, tuple[str, str], float, float, list[str]]] = field(default_factory=list)
    attempts: list[tuple[str, tuple[str, str], float, float, list[str]]] = field(
        default_factory=list
    )

    def handler(self, run: Run) -> Any:
        async def handle(context: LeaseContext, documents: Sequence[dict[str, Any]]) -> None:
            ids = [d["id"] for d in documents]
            while True:  # the publisher's send loop: retry a refused send until the lease is lost
                if context.is_lost:
                    raise LeaseLostError(context.lease_id)
                await run.thaw()
                began, refused = time.monotonic(), time.monotonic() < run.refused_until
                try:
                    await asyncio.sleep(0.01)  # a send in flight
                    await run.thaw()
                finally:
                    attempt = (run.label, bounds(context.feed_range), began, time.monotonic(), ids)
                    self.attempts.append(attempt)
                if not refused:
                    self.calls.append(attempt)
                    return
                await asyncio.sleep(0.01)  # the back-off

        return handle


def live_overlaps(calls: Calls, runs: dict[str, Run]) -> list[Any]:
    def live(call: Any) -> bool:
        return not any(call[2] < end and call[3] > begin for begin, end in runs[call[0]].pauses)

    found = []
    for a, b in itertools.combinations([c for c in calls.attempts if live(c)], 2):
        (a_low, a_high), (b_low, b_high) = a[1], b[1]
        meet = a_low < (b_high if b_high != "FF" else "G") and b_low < (
            a_high if a_high != "FF" else "G"
        )
        if a[0] != b[0] and meet and a[2] < b[3] and b[2] < a[3]:
            found.append((a[:4], b[:4]))
    return found


ACTIONS = st.lists(
    st.sampled_from(
        [
            "join",
            "same-name",
            "crash",
            "pause",
            "split",
            "refuse",
            "stall",
            "write",
            "write",
            "wait",
        ]
    ),
    min_size=3,
    max_size=9,
)


@settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck), print_blob=True)
@given(actions=ACTIONS)
@example(
    actions=["join", "write", "same-name", "write", "pause", "split", "join", "crash", "write"]
)
@example(actions=["refuse", "write", "join", "wait", "wait", "write"])  # a steal mid-send
@example(actions=["refuse", "write", "stall", "join", "wait", "wait", "write"])  # hung lease store
@example(  # a run paused across its own listing: the owner's write in it was aged by the pause
    actions=["refuse", "join", "write", "wait", "write", "wait", "refuse", "pause"]
)
def test_no_change_is_handled_by_two_live_runs_at_once_none_is_lost_and_order_is_kept(
    actions: list[str],
) -> None:
    async def scenario() -> None:
        feed, store, calls = (
            Feed([feed_range("", "80"), feed_range("80", "FF")]),
            FakeLeaseStore(),
            Calls(),
        )
        runs: dict[str, Run] = {}
        live: list[Run] = []

        def begin(name: str) -> None:
            run = Run(f"{name}-{len(runs)}")
            runs[run.label] = run
            run.processor = ChangeFeedProcessor(
                feed=Frozen(feed, run), leases=Frozen(store, run, stalls=True),
                handler=calls.handler(run),
                options=ProcessorOptions(instance_name=name, **FAST),
            )  # fmt: skip
            run.task = asyncio.create_task(run.processor.run())
            live.append(run)

        begin("a")
        for number, action in enumerate(actions):
            if action == "join":
                begin(f"n{number}")
            elif action == "same-name" and live:
                begin(live[0].processor.options.instance_name if live[0].processor else "a")
            elif action == "crash" and len(live) > 1:
                victim = live.pop(0)
                assert victim.processor is not None
                assert victim.task is not None
                tasks = [t for w in victim.processor.workers.values() for t in w.tasks]
                for task in [*tasks, victim.task, *victim.processor._handovers.values()]:
                    task.cancel()
                await asyncio.gather(*tasks, victim.task, return_exceptions=True)
                victim.pauses.append((time.monotonic(), float("inf")))  # dead: never live again
            elif action == "pause" and live:
                run = live[-1]
                run.paused_until = time.monotonic() + 1.0  # longer than the expiry
                run.pauses.append((time.monotonic(), run.paused_until))
            elif action in ("refuse", "stall") and live:  # the oldest run: it owns the most
                until = "refused_until" if action == "refuse" else "stalled_until"
                setattr(live[0], until, time.monotonic() + 2.0)  # over three expiries
            elif action == "split":
                feed.split()
            elif action == "write":
                feed.write()
            await asyncio.sleep(0.2)
        feed.write()
        written = {d["id"] for documents in feed.items.values() for d in documents}
        deadline = time.monotonic() + 20
        while not written <= {i for call in calls.calls for i in call[4]}:
            assert time.monotonic() < deadline, f"changes lost: {actions}"
            await asyncio.sleep(0.05)
        for run in live:
            assert run.processor is not None
            assert run.task is not None
            await run.thaw()
            await run.processor.stop()
            await run.task
        overlaps = live_overlaps(calls, runs)
        assert not overlaps, f"two live runs on one range at once ({actions}): {overlaps}"
        first_seen = list(
            dict.fromkeys(i for call in sorted(calls.calls, key=lambda c: c[2]) for i in call[4])
        )
        for order in ORDERS:
            mine = [i for i in first_seen if i.startswith(f"{order}:")]
            assert mine == sorted(mine), f"{order} first seen out of order ({actions}): {mine}"

    asyncio.run(scenario())
