"""The change feed processor's runtime: bootstrap, balance, renew, read, checkpoint, release.

One worker task per owned lease reads a page, hands it to the handler, and only after the
handler returns stores the page's continuation in the lease (at-least-once). A handler error
means no checkpoint: the same page is read again after a back-off. A lost lease (found by renew,
checkpoint or balancing) stops its worker before it reads another page.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

import structlog

from eventflow_publisher.changefeed.balancing import LeaseView, plan
from eventflow_publisher.changefeed.leases import Lease, LeaseLostError, LeaseStore, StartPosition

LOG = structlog.get_logger("eventflow_publisher.changefeed")


@dataclass(frozen=True, slots=True)
class Page:
    """One read of a feed range: its changes (maybe none) and the continuation after them."""

    items: list[dict[str, Any]]
    continuation: str | None


class ChangeFeed(Protocol):
    """The monitored container's change feed."""

    async def identity(self) -> str:
        """A stable id of the monitored container (its resource id), for lease ids."""
        ...

    async def feed_ranges(self) -> list[dict[str, Any]]: ...

    async def read_page(
        self,
        feed_range: dict[str, Any],
        *,
        continuation: str | None,
        start: StartPosition,
        max_items: int,
    ) -> Page:
        """The next page after `continuation` (or from `start`). An empty page's continuation is
        the position the poll reached."""
        ...

    async def estimate_lag(
        self, feed_range: dict[str, Any], *, continuation: str | None, start: StartPosition
    ) -> int:
        """How many changes (LSN steps) are waiting after `continuation`."""
        ...


@dataclass(frozen=True, slots=True)
class ProcessorOptions:
    """Defaults follow the .NET processor, except the poll delay, kept short for low latency."""

    instance_name: str
    start: Literal["beginning", "now"] | datetime = "beginning"
    poll_delay: float = 0.2
    max_items: int = 100
    acquire_interval: float = 13.0
    renew_interval: float = 17.0
    expiry: float = 60.0
    lag_interval: float = 5.0
    retry_delay: float = 0.5
    max_retry_delay: float = 30.0
    shutdown_grace: float = 20.0


@dataclass
class LeaseContext:
    """What the handler learns about the lease whose page it handles."""

    lease_id: str
    feed_range: dict[str, Any]
    lost: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def is_lost(self) -> bool:
        return self.lost.is_set()


Handler = Callable[[LeaseContext, Sequence[dict[str, Any]]], Awaitable[None]]


class ProcessorObserver:
    """Hooks for metrics and logs. The base class only logs."""

    def leases_owned(self, lease_ids: Sequence[str]) -> None:
        """Called after every balancing round and lease change."""

    def page_handled(self, lease_id: str, items: int) -> None:
        """A page was handled and checkpointed."""

    def handler_failed(self, lease_id: str, error: BaseException) -> None:
        LOG.warning(
            "handler failed; the page will be read again", lease=lease_id, error=repr(error)
        )

    def lag(self, lease_id: str, changes: int) -> None:
        """The estimated changes waiting in the lease's range."""


def backoff(attempt: int, base: float, cap: float) -> float:
    """Exponential back-off with full jitter."""
    return float(random.uniform(0, min(cap, base * 2 ** min(attempt, 16))))


class _Worker:
    def __init__(self, processor: ChangeFeedProcessor, lease: Lease) -> None:
        self.processor = processor
        self.lease = lease
        self.lock = asyncio.Lock()
        self.context = LeaseContext(lease.id, lease.feed_range)
        self.stopping = asyncio.Event()
        self.task: asyncio.Task[None] = asyncio.create_task(self._run(), name=f"lease-{lease.id}")

    def lose(self) -> None:
        self.context.lost.set()

    def is_active(self) -> bool:
        return not (self.context.is_lost or self.stopping.is_set())

    async def write(self, update: Callable[[Lease], Awaitable[Lease]]) -> None:
        """Serialise this instance's writes to the lease (renew vs checkpoint)."""
        async with self.lock:
            try:
                self.lease = await update(self.lease)
            except LeaseLostError:
                self.lose()
                raise

    async def checkpoint(self, continuation: str) -> None:
        await self.write(lambda lease: self.processor.leases.checkpoint(lease, continuation))

    async def _run(self) -> None:
        processor, failures = self.processor, 0
        options = processor.options
        while self.is_active():
            try:
                page = await processor.feed.read_page(
                    self.lease.feed_range, continuation=self.lease.continuation,
                    start=self.lease.start, max_items=options.max_items,
                )  # fmt: skip
                if not self.is_active():
                    break
                if page.items:
                    await processor.handler(self.context, page.items)
                    if page.continuation is not None:
                        await self.checkpoint(page.continuation)
                    processor.observer.page_handled(self.lease.id, len(page.items))
                    failures = 0
                    continue
                if page.continuation is not None and self.lease.continuation is None:
                    # Pin the position of the first empty poll, so a restart cannot skip past it.
                    await self.checkpoint(page.continuation)
                failures = 0
                await self._pause(options.poll_delay)
            except LeaseLostError:
                break
            except Exception as error:  # noqa: BLE001 - any read or handler failure: no checkpoint, retry
                failures += 1
                processor.observer.handler_failed(self.lease.id, error)
                await self._pause(backoff(failures, options.retry_delay, options.max_retry_delay))
        if self.context.is_lost:
            LOG.info("lease lost; stopped reading its range", lease=self.lease.id)

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), seconds)


class ChangeFeedProcessor:
    """Spreads the leases of `feed` across every instance sharing `leases`, and feeds each owned
    range's changes to `handler`, checkpointing after it returns."""

    def __init__(
        self,
        *,
        feed: ChangeFeed,
        leases: LeaseStore,
        handler: Handler,
        options: ProcessorOptions,
        observer: ProcessorObserver | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.feed = feed
        self.leases = leases
        self.handler = handler
        self.options = options
        self.observer = observer or ProcessorObserver()
        self.clock = clock
        self.workers: dict[str, _Worker] = {}
        self.ready = asyncio.Event()
        self._stopping = asyncio.Event()
        self._stopped = asyncio.Event()

    @property
    def owned(self) -> list[str]:
        return sorted(lease_id for lease_id, worker in self.workers.items() if worker.is_active())

    def _start_position(self) -> StartPosition:
        start = self.options.start
        if start == "beginning":
            return StartPosition("beginning")
        return StartPosition("time", datetime.now(UTC) if start == "now" else start)

    async def run(self) -> None:
        """Bootstrap the leases, then balance, renew and read until `stop()`."""
        try:
            await self.leases.bootstrap(await self.feed.feed_ranges(), self._start_position())
            self.ready.set()
            loops = [
                asyncio.create_task(self._every(self.options.acquire_interval, self._balance, first=0)),
                asyncio.create_task(self._every(self.options.renew_interval, self._renew, first=self.options.renew_interval / 2)),
                asyncio.create_task(self._every(self.options.lag_interval, self._estimate_lag, first=self.options.lag_interval)),
            ]  # fmt: skip
            await self._stopping.wait()
            for loop in loops:
                loop.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
            await self._shutdown()
        finally:
            self._stopped.set()

    async def stop(self) -> None:
        """Stop reading, let in-flight pages finish and checkpoint, release every lease."""
        self._stopping.set()
        await self._stopped.wait()

    async def _every(
        self, interval: float, action: Callable[[], Awaitable[None]], *, first: float
    ) -> None:
        await asyncio.sleep(first)
        while True:
            try:
                await action()
            except Exception as error:  # noqa: BLE001 - a failed round is retried next interval
                LOG.warning("processor round failed", action=action.__name__, error=repr(error))
            await asyncio.sleep(interval)

    async def _balance(self) -> None:
        me, now = self.options.instance_name, self.clock()
        leases = await self.leases.list_leases()
        by_id = {lease.id: lease for lease in leases}
        for lease_id, worker in list(self.workers.items()):
            listed = by_id.get(lease_id)
            if listed is None or listed.owner != me or not worker.is_active():
                worker.lose()
                self.workers.pop(lease_id)
        mine_without_worker = [
            lease for lease in leases if lease.owner == me and lease.id not in self.workers
        ]
        decision = plan(
            [LeaseView(lease.id, lease.owner, lease.timestamp) for lease in leases],
            me,
            now,
            self.options.expiry,
        )
        wanted = [*(lease.id for lease in mine_without_worker), *decision.take]
        if decision.steal is not None:
            wanted.append(decision.steal)
            LOG.info(
                "stealing a lease", lease=decision.steal, from_owner=by_id[decision.steal].owner
            )
        for lease_id in wanted:
            try:
                lease = await self.leases.acquire(by_id[lease_id], me)
            except LeaseLostError:
                continue
            self.workers[lease_id] = _Worker(self, lease)
            LOG.info("lease acquired", lease=lease_id, continuation=lease.continuation is not None)
        self.observer.leases_owned(self.owned)

    async def _renew(self) -> None:
        for lease_id, worker in list(self.workers.items()):
            if not worker.is_active():
                continue
            try:
                await worker.write(self.leases.renew)
            except LeaseLostError:
                LOG.warning("lease lost at renewal", lease=lease_id)
        self.observer.leases_owned(self.owned)

    async def _estimate_lag(self) -> None:
        for lease_id, worker in list(self.workers.items()):
            lag = await self.feed.estimate_lag(
                worker.lease.feed_range,
                continuation=worker.lease.continuation,
                start=worker.lease.start,
            )
            self.observer.lag(lease_id, lag)

    async def _shutdown(self) -> None:
        workers = list(self.workers.values())
        for worker in workers:
            worker.stopping.set()
        _, pending = await asyncio.wait(
            [w.task for w in workers] or [asyncio.create_task(asyncio.sleep(0))],
            timeout=self.options.shutdown_grace,
        )
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for worker in workers:
            if worker.context.is_lost:
                continue
            try:
                async with worker.lock:
                    await self.leases.release(worker.lease)
            except LeaseLostError:
                continue
        self.workers.clear()
        self.observer.leases_owned([])
        LOG.info("processor stopped; leases released", leases=len(workers))
