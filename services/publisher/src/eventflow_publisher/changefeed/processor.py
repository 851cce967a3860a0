"""The change feed processor's runtime: bootstrap, balance, renew, read, checkpoint, release.

One worker per owned lease, never two: a worker reads a page, hands it to the handler, and only
after the handler returns stores the page's continuation in the lease (at-least-once). A handler
error means no checkpoint: the same page is read again after a back-off. Every lease write is
fenced by the owner token of this acquisition; a worker whose writes have not succeeded for the
lease expiry stops by itself, before any other instance may judge the lease expired.

Fencing only stops writes; a handler already running is stopped by time. Each worker has a lease
deadline: its last successful lease write plus the restart takeover time (never more than the
expiry: the earliest any other run may take the lease), less a margin. Past it the handler's
context reports the lease lost and the page in flight is cancelled (a send already on the wire may
still complete: delivery stays at-least-once, but no new attempt starts); nothing more is handled
before a write of this acquisition succeeds again. Every lease-store call of a worker is bounded by
a timeout, so a request that hangs cannot hold the worker for good.

Expiry is judged by what this instance observed: a lease whose ETag has not changed for `expiry`
seconds of this machine's monotonic clock, counted from when the listing that first carried it
answered. Two machines' wall clocks are never compared.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

import structlog

from eventflow_publisher.changefeed.balancing import LeaseView, plan
from eventflow_publisher.changefeed.leases import (
    LEASE_VERSION,
    Lease,
    LeaseLostError,
    LeaseStore,
    StartPosition,
)
from eventflow_publisher.changefeed.ranges import children_of

LOG = structlog.get_logger("eventflow_publisher.changefeed")


@dataclass(frozen=True, slots=True)
class Page:
    """One read of a feed range: its changes (maybe none) and the continuation after them.
    `drained`: whether the read reached everything the range held when it was answered (None:
    unknown). A read that moved the position without draining is followed by another at once."""

    items: list[dict[str, Any]]
    continuation: str | None
    drained: bool | None = None


@dataclass(frozen=True, slots=True)
class Backlog:
    """What waits in a range after a continuation: LSN steps, and the `_ts` of the first waiting
    change (None when nothing waits)."""

    changes: int
    oldest_ts: int | None


class ChangeFeed(Protocol):
    """The monitored container's change feed."""

    async def identity(self) -> str:
        """A stable id of the monitored container (its resource id), for lease ids."""
        ...

    async def feed_ranges(self, *, refresh: bool = True) -> list[dict[str, Any]]:
        """The container's current feed ranges: fresh from the service with `refresh`, else as the
        client last learnt them (it refreshes on its own when a read meets a split)."""
        ...

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

    def is_resumable(self, continuation: str) -> bool:
        """Whether a read can resume from `continuation` (a token with a sub-range that was
        never read cannot: checkpointing it would break every later read)."""
        ...

    def spans_one_range(self, continuation: str) -> bool:
        """Whether `continuation` stands at one position (not several sub-ranges read in turn,
        as after a split): only then does the newest `_ts` read bound everything before it."""
        ...

    async def estimate(
        self, feed_range: dict[str, Any], *, continuation: str | None, start: StartPosition
    ) -> Backlog:
        """What waits after `continuation`."""
        ...


@dataclass(frozen=True, slots=True)
class ProcessorOptions:
    """Lease timings follow the .NET processor. Polling (the .NET default is a fixed 5 s): a read
    that moved the position is followed by the next at once, unless it reached the end of the
    range (progress is not idleness: a narrow lease in a busy partition moves through empty
    pages); a read that did not move is idle: the next waits `poll_delay`, doubling on further
    idle reads up to `max_poll_delay`. Both are 0.15 s by default: a fixed idle interval, so a
    change after any quiet spell is read within 0.15 s (75 ms on average) and an idle lease costs
    400 reads a minute (docs/performance.md)."""

    instance_name: str
    start: Literal["beginning", "now"] | datetime = "beginning"
    poll_delay: float = 0.15
    max_poll_delay: float = 0.15
    max_items: int = 1000
    acquire_interval: float = 13.0
    renew_interval: float = 17.0
    expiry: float = 60.0
    lag_interval: float = 5.0
    retry_delay: float = 0.5
    max_retry_delay: float = 30.0
    shutdown_grace: float = 20.0
    stalled_after: float = 120.0
    oldest_change_limit: float | None = None
    split_check_rounds: int = 10
    restart_takeover: float | None = None
    """A lease of an earlier run of this instance's name that has not changed for this long is
    taken (its run is gone: a live one writes every renew interval). Default 1.5 renew
    intervals, never more than the expiry. A worker whose writes have not succeeded for this long
    handles no page before one has."""
    request_check_interval: float = 1.0
    """How often an owner reads its lease between renewals, to see a request for it."""
    handover_poll: float = 0.2
    """How often a thief reads a lease it asked for, to take it once its owner released it."""
    handover_timeout: float = 5.0
    """How long an owner asked for its lease lets the page in flight run: past it the page is
    cancelled (not checkpointed) and the lease released. The owner renews until it releases."""
    lease_call_timeout: float | None = None
    """The bound of one lease-store call of a worker (default half the lease deadline's span,
    never under 5 s): a call that hangs is abandoned and retried. It only unsticks the worker;
    the deadline, not this timeout, stops the handler, so it leaves the SDK's own retries of a
    slow or throttled request room to run their course."""
    lease_margin: float | None = None
    """How long before the earliest moment another run may take a lease its owner stops handling
    (default a tenth of the restart takeover time)."""

    @property
    def takeover_after(self) -> float:
        chosen = self.restart_takeover or 1.5 * self.renew_interval
        return min(chosen, self.expiry)

    @property
    def held_for(self) -> float:
        """How long after a successful lease write its owner may handle pages (its lease
        deadline): the takeover time less the margin."""
        margin = self.lease_margin if self.lease_margin is not None else self.takeover_after / 10
        return self.takeover_after - margin

    @property
    def call_timeout(self) -> float:
        return self.lease_call_timeout or max(self.held_for / 2, 5.0)

    @property
    def renew_every(self) -> float:
        """The renew interval, at most half the lease deadline's span, so that a late or failed
        renewal has a second chance before the deadline stops the handler."""
        return min(self.renew_interval, self.held_for / 2)


def _always() -> bool:
    return True


@dataclass
class LeaseContext:
    """What the handler learns about the lease whose page it handles. `is_lost`: the lease was
    lost, or its deadline passed (another run may take it now): start no new send."""

    lease_id: str
    feed_range: dict[str, Any]
    lost: asyncio.Event = field(default_factory=asyncio.Event)
    held: Callable[[], bool] = field(default=_always, repr=False)
    """Whether the lease's deadline is still ahead."""

    @property
    def is_lost(self) -> bool:
        return self.lost.is_set() or not self.held()


class PageCutError(Exception):
    """The page in flight was cancelled: its lease deadline or its hand-over deadline passed."""


Handler = Callable[[LeaseContext, Sequence[dict[str, Any]]], Awaitable[None]]


@dataclass
class LeaseStatus:
    """Progress of one owned lease, for metrics and readiness."""

    acquired_at: float
    checkpointed_at: float | None = None
    consecutive_failures: int = 0
    backlog: Backlog | None = None
    stalled: str | None = None


class ProcessorObserver:
    """Hooks for metrics and logs. The base class only logs."""

    def leases_owned(self, lease_ids: Sequence[str]) -> None:
        """Called after every balancing round and lease change."""

    def page_handled(self, lease_id: str, items: int) -> None:
        """A page was handled and checkpointed."""

    def handler_failed(self, lease_id: str, error: BaseException) -> None:
        LOG.warning(
            "reading or handling failed; the page will be read again",
            lease=lease_id,
            error=repr(error),
        )

    def lease_status(self, lease_id: str, status: LeaseStatus, now: float) -> None:
        """The status of an owned lease, after every estimate (`now`: the monotonic clock)."""

    def lease_released(self, lease_id: str) -> None:
        """This instance no longer owns the lease: forget its per-lease figures."""


def backoff(attempt: int, base: float, cap: float) -> float:
    """Exponential back-off with full jitter."""
    return float(random.uniform(0, min(cap, base * 2 ** min(attempt, 16))))


class _Worker:
    """Reads and renews one lease for one acquisition. Stopped and awaited before anything else
    may work on the lease in this process."""

    def __init__(self, processor: ChangeFeedProcessor, lease: Lease) -> None:
        self.processor = processor
        self.lease = lease
        self.renewed_at = processor.monotonic()
        self.status = LeaseStatus(acquired_at=self.renewed_at)
        self.lock = asyncio.Lock()
        self.context = LeaseContext(lease.id, lease.feed_range, held=self.fresh)
        self.stopping = asyncio.Event()
        self.handover = asyncio.Event()
        self.handover_by: float | None = None
        """When this worker must have handed the lease over (the page in flight is cancelled)."""
        self.tasks = [
            asyncio.create_task(self._read(), name=f"read-{lease.id}"),
            asyncio.create_task(self._keep_renewed(), name=f"renew-{lease.id}"),
        ]

    def lose(self) -> None:
        self.context.lost.set()

    @property
    def lost(self) -> bool:
        """This acquisition ended (a write was refused, or no write succeeded for the expiry);
        a worker only past its lease deadline is not lost: it renews before handling more."""
        return self.context.lost.is_set()

    def is_active(self) -> bool:
        return not (self.lost or self.stopping.is_set())

    def deadline(self) -> float:
        """Until when this acquisition may handle pages: its last successful write plus the
        restart takeover time (the earliest another run may take the lease), less the margin."""
        return self.renewed_at + self.processor.options.held_for

    def fresh(self) -> bool:
        """The lease deadline is ahead: no other run can have taken the lease."""
        return self.processor.monotonic() < self.deadline()

    def cutoff(self) -> float:
        """When the page in flight is cancelled: the lease deadline, or the hand-over deadline."""
        if self.handover_by is None:
            return self.deadline()
        return min(self.deadline(), self.handover_by)

    def note(self, lease: Lease) -> None:
        """See a request for the lease (in what a write returned or a read found)."""
        if lease.request is not None and lease.request != self.processor.me:
            if not self.handover.is_set():
                LOG.info("lease requested; handing it over at the page boundary",
                         lease=lease.id, requested_by=lease.request)  # fmt: skip
                timeout = self.processor.options.handover_timeout
                self.handover_by = self.processor.monotonic() + timeout
            self.handover.set()

    def outlived(self) -> bool:
        """No write of this acquisition has succeeded for the expiry: another instance may judge
        the lease expired now, so this one must not publish or write any more."""
        return self.processor.monotonic() - self.renewed_at > self.processor.options.expiry

    async def stop(self) -> None:
        """Stop reading and renewing; wait for the in-flight page and its checkpoint (bounded by
        the shutdown grace), then cancel what is left."""
        self.stopping.set()
        _, pending = await asyncio.wait(self.tasks, timeout=self.processor.options.shutdown_grace)
        for task in pending:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def write(self, update: Callable[[Lease], Awaitable[Lease]]) -> None:
        """One lease write of this acquisition. Transient store errors are retried with back-off
        while the lease is still ours; LeaseLostError (another owner or token, or the lease is
        gone) stops the worker."""
        options, attempt = self.processor.options, 0
        while True:
            if self.lost:
                raise LeaseLostError(self.lease.id)
            if self.outlived():
                self.lose()
                raise LeaseLostError(f"{self.lease.id}: no write succeeded within the expiry")
            began = self.processor.monotonic()
            try:
                async with self.lock:
                    self.lease = await asyncio.wait_for(
                        update(self.lease), self.processor.options.call_timeout
                    )
                self.note(self.lease)
            except LeaseLostError:
                self.lose()
                raise
            except Exception as error:  # noqa: BLE001 - the store's transient errors: retry
                attempt += 1
                LOG.warning("lease write failed; retrying", lease=self.lease.id, error=repr(error))
                await asyncio.sleep(backoff(attempt, options.retry_delay, options.max_retry_delay))
                continue
            self.renewed_at = max(self.renewed_at, began)
            return

    async def _keep_renewed(self) -> None:
        """Renew every renew interval (the first after half of one) and, in between, read the
        lease every request check interval for a request. Once the lease is requested, renewals
        go on until the worker releases it (at the page boundary, or at the hand-over deadline):
        the asker never waits for the expiry of a live owner."""
        processor, options = self.processor, self.processor.options
        renew_at = processor.monotonic() + options.renew_every / 2
        while self.is_active():
            wait = renew_at - processor.monotonic()
            if not self.handover.is_set():
                wait = min(options.request_check_interval, wait)
            await self._pause(max(0.0, wait), handover=False)
            if not self.is_active():
                return
            if processor.monotonic() >= renew_at:
                try:
                    await self.write(processor.leases.renew)
                except LeaseLostError:
                    LOG.warning("lease lost at renewal", lease=self.lease.id)
                    return
                renew_at = processor.monotonic() + options.renew_every
                continue
            if self.handover.is_set():
                continue
            try:
                current = await asyncio.wait_for(
                    processor.leases.read(self.lease.id), options.call_timeout
                )
            except Exception:  # noqa: BLE001 - a failed look is retried at the next check
                continue
            if current is None or (current.owner, current.owner_token) != (
                self.lease.owner, self.lease.owner_token,
            ):  # fmt: skip
                self.lose()
                return
            self.note(current)

    async def _hand_over(self) -> None:
        """At a page boundary, with the lease requested: release it (the asker takes it)."""
        leases = self.processor.leases
        try:
            async with self.lock:
                await asyncio.wait_for(
                    leases.release(self.lease), self.processor.options.call_timeout
                )
            LOG.info("lease handed over", lease=self.lease.id)
        except LeaseLostError:
            pass
        except Exception as error:  # noqa: BLE001 - not released: the asker takes it at expiry
            LOG.warning("hand-over release failed", lease=self.lease.id, error=repr(error))
        self.lose()

    def _after_start(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        not_before = self.lease.start.not_before_ts
        if not_before is None:
            return items
        return [item for item in items if int(item.get("_ts", not_before)) >= not_before]

    async def _checkpoint(self, page: Page) -> bool:
        """Store the page's position; False when it cannot be stored (the page will be read
        again from the last checkpoint)."""
        continuation = page.continuation
        if continuation is None or continuation == self.lease.continuation:
            return True
        if not self.processor.feed.is_resumable(continuation):
            LOG.info(
                "continuation not resumable yet; keeping the last checkpoint", lease=self.lease.id
            )
            self.processor.split_suspected = True
            return False
        reached = self.lease.checkpoint_ts
        if self.processor.feed.spans_one_range(continuation):
            stamps = [int(item["_ts"]) for item in page.items if "_ts" in item]
            reached = max(stamps, default=reached)
        # else: after a split the token reads the children in turn, one page each; the newest
        # `_ts` of one child's page says nothing of the other's, so the last bound is kept.
        leases = self.processor.leases
        await self.write(lambda lease: leases.checkpoint(lease, continuation, reached))
        self.status.checkpointed_at = self.processor.monotonic()
        return True

    async def _split_at_once(self) -> bool:
        """The read met a split before this lease had a resumable position (the SDK's token names
        a child never read): replace the lease by its children now, before its page is handled
        (the children read it), and have them balanced at once. False when the ranges show no
        split (yet)."""
        processor = self.processor
        children = children_of(self.lease.feed_range, await processor.feed.feed_ranges())
        if not children:
            return False
        created: list[Lease] = []

        async def split(lease: Lease) -> Lease:
            created[:] = await processor.leases.split(lease, children)
            return lease

        with contextlib.suppress(LeaseLostError):
            await self.write(split)
        self.lose()
        LOG.info("feed range split before a first checkpoint; lease replaced by its children",
                 lease=self.lease.id, children=[child.id for child in created])  # fmt: skip
        processor.wake()
        return True

    async def _read(self) -> None:
        processor, options = self.processor, self.processor.options
        delay: float | None = options.poll_delay
        while self.is_active():
            if self.outlived():
                self.lose()
                break
            if self.handover.is_set():
                await self._hand_over()
                break
            try:
                delay = await self._step(delay or options.poll_delay)
            except LeaseLostError:
                self.lose()
                break
            except Exception as error:  # noqa: BLE001 - any read or handler failure: no checkpoint, retry
                self.status.consecutive_failures += 1
                processor.observer.handler_failed(self.lease.id, error)
                attempt = self.status.consecutive_failures
                await self._pause(backoff(attempt, options.retry_delay, options.max_retry_delay))
                continue
            if delay is None:
                break
        if self.lost:
            LOG.info("lease lost; stopped reading its range", lease=self.lease.id)

    async def _step(self, delay: float) -> float | None:
        """Read, handle and checkpoint one page, then wait as the page calls for: not at all when
        the read moved the position short of the range's end, else `delay` (idle). Returns the
        next idle delay, or None when the worker must stop."""
        processor, options = self.processor, self.processor.options
        if not self.fresh():
            # a pause or a store outage: prove the lease is still this acquisition's before
            # handling anything more (a later run of this name may have taken it)
            await self.write(processor.leases.renew)
            return delay
        before = self.lease.continuation
        page = await processor.feed.read_page(
            self.lease.feed_range, continuation=before,
            start=self.lease.start, max_items=options.max_items,
        )  # fmt: skip
        if not self.is_active():
            return None
        if (
            page.continuation is not None
            and not processor.feed.is_resumable(page.continuation)
            and await self._split_at_once()
        ):
            return None
        changes = self._after_start(page.items)
        if changes:
            await self._handle(changes)
        stored = await self._checkpoint(page)
        self.status.consecutive_failures = 0
        if page.items:
            processor.observer.page_handled(self.lease.id, len(changes))
        if not stored:  # the same page comes back: not in a tight loop
            await self._pause(options.poll_delay)
            return delay
        moved = page.continuation is not None and page.continuation != before
        if len(page.items) >= options.max_items or (moved and not page.drained):
            return options.poll_delay  # progress, not idleness: read on at once
        if moved:
            delay = options.poll_delay
        await self._pause(delay)
        return min(delay * 2, options.max_poll_delay)

    async def _handle(self, changes: list[dict[str, Any]]) -> None:
        """Run the handler on a page until it returns, or cancel it at the cutoff: the lease
        deadline (no write of this acquisition succeeded recently enough: another run may take
        the lease from then on) or the hand-over deadline. A cancelled page is not checkpointed."""
        processor = self.processor
        handling: asyncio.Future[None] = asyncio.ensure_future(
            processor.handler(self.context, changes)
        )  # past the cutoff already (e.g. the read outlasted it): cancelled before it starts
        try:
            while not handling.done():
                left = self.cutoff() - processor.monotonic()
                if left <= 0:
                    break
                waits: list[asyncio.Future[Any]] = [handling]
                if not self.handover.is_set():
                    waits.append(asyncio.ensure_future(self.handover.wait()))
                await asyncio.wait(waits, timeout=left, return_when=asyncio.FIRST_COMPLETED)
                for waiter in waits[1:]:
                    waiter.cancel()
            if handling.done():
                try:
                    handling.result()
                except LeaseLostError:
                    if self.lost:
                        raise
                    # the handler saw the deadline pass (`is_lost`); the lease may still be ours
                    raise PageCutError(f"{self.lease.id}: lease deadline passed") from None
                return
        finally:
            if not handling.done():
                handling.cancel()
                await asyncio.gather(handling, return_exceptions=True)
        reason = "lease deadline" if not self.fresh() else "hand-over deadline"
        LOG.warning("page cancelled at the cutoff; it will be read again",
                    lease=self.lease.id, reason=reason)  # fmt: skip
        raise PageCutError(f"{self.lease.id}: page cancelled at the {reason}")

    async def _pause(self, seconds: float, *, handover: bool = True) -> None:
        """Wait `seconds`, or less when stopping or (with `handover`) asked to hand over."""
        if self.stopping.is_set() or (handover and self.handover.is_set()):
            return
        waits = [asyncio.create_task(self.stopping.wait())]
        if handover:
            waits.append(asyncio.create_task(self.handover.wait()))
        _, pending = await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


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
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.feed = feed
        self.leases = leases
        self.handler = handler
        self.options = options
        self.observer = observer or ProcessorObserver()
        self.monotonic = monotonic
        self.workers: dict[str, _Worker] = {}
        self.incarnation = uuid.uuid4().hex[:12]
        self.me = f"{options.instance_name}#{self.incarnation}"
        """The owner as balancing counts it: this run of this instance name."""
        self._asked: dict[str, str] = {}  # lease id -> the ETag this run's request wrote
        self._handovers: dict[str, asyncio.Task[None]] = {}
        self._wake_timer: asyncio.TimerHandle | None = None
        self.ready = asyncio.Event()
        self._observed: dict[str, tuple[str, float]] = {}
        self._rounds = 0
        self.split_suspected = False
        self._stopping = asyncio.Event()
        self._stopped = asyncio.Event()
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Run a balancing round now rather than at the end of the acquire interval."""
        self._wake.set()

    @property
    def owned(self) -> list[str]:
        return sorted(lease_id for lease_id, worker in self.workers.items() if worker.is_active())

    def problems(self) -> list[str]:
        """Why this instance should not be called ready: leases that stopped making progress
        or hold changes older than the limit. Empty when all is well."""
        return [
            f"{lease_id}: {worker.status.stalled}"
            for lease_id, worker in self.workers.items()
            if worker.is_active() and worker.status.stalled
        ]

    def _start_position(self) -> StartPosition:
        start = self.options.start
        if start == "beginning":
            return StartPosition("beginning")
        return StartPosition("time", datetime.now(UTC) if start == "now" else start)

    async def run(self) -> None:
        """Bootstrap the leases, then balance and read until `stop()`. Cancelling it abandons
        everything at once, releasing nothing (what a crash does)."""
        try:
            await self.leases.bootstrap(await self.feed.feed_ranges(), self._start_position())
            self.ready.set()
            loops = [
                asyncio.create_task(self._every(self.options.acquire_interval, self._balance, first=0, wake=self._wake)),
                asyncio.create_task(self._every(self.options.lag_interval, self._assess, first=self.options.lag_interval)),
            ]  # fmt: skip
            try:
                await self._stopping.wait()
            except asyncio.CancelledError:
                # Cancelled (the process is going down hard): everything stops at once and
                # nothing is released, as after kill -9; the leases go by expiry or takeover.
                await self._abandon(loops)
                raise
            # A round in flight finishes (never a lease acquired and left without a worker).
            await asyncio.gather(*loops, return_exceptions=True)
            await self._shutdown()
        finally:
            self._stopped.set()

    async def _abandon(self, loops: Sequence[asyncio.Task[None]]) -> None:
        tasks = [*loops, *self._handovers.values()]
        tasks += [task for worker in self.workers.values() for task in worker.tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def stop(self) -> None:
        """Stop reading, let in-flight pages finish and checkpoint, release every lease."""
        self._stopping.set()
        await self._stopped.wait()

    async def _every(
        self,
        interval: float,
        action: Callable[[], Awaitable[None]],
        *,
        first: float,
        wake: asyncio.Event | None = None,
    ) -> None:
        """Run `action` every `interval` (or as soon as `wake` is set) until stop(); a round in
        flight is never cut short."""
        wait = first
        while not await self._stopped_within(wait, wake):
            try:
                await action()
            except Exception as error:  # noqa: BLE001 - a failed round is retried next interval
                LOG.warning("processor round failed", action=action.__name__, error=repr(error))
            wait = interval

    async def _stopped_within(self, seconds: float, wake: asyncio.Event | None = None) -> bool:
        waits = [asyncio.create_task(self._stopping.wait())]
        if wake is not None:
            waits.append(asyncio.create_task(wake.wait()))
        _, pending = await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if wake is not None:
            wake.clear()
        return self._stopping.is_set()

    def _observe(self, leases: Sequence[Lease], now: float) -> None:
        """Remember when this instance first saw each lease's current ETag."""
        seen = {}
        for lease in leases:
            previous = self._observed.get(lease.id)
            if previous and (previous[0] == lease.etag or self._asked.get(lease.id) == lease.etag):
                seen[lease.id] = (lease.etag, previous[1])  # our own request is no sign of life
            else:
                seen[lease.id] = (lease.etag, now)
        self._observed = seen

    def _is_mine(self, lease: Lease) -> bool:
        worker = self.workers.get(lease.id)
        return worker is not None and worker.lease.owner_token == lease.owner_token

    @staticmethod
    def owner_of(lease: Lease) -> str | None:
        """The owner as balancing counts it: the process run (a version-1 lease: the name)."""
        if lease.owner is None or lease.owner_incarnation is None:
            return lease.owner
        return f"{lease.owner}#{lease.owner_incarnation}"

    def _gone_at(self, lease: Lease) -> float | None:
        """When a lease of an earlier run of this name may be taken (None: not such a lease)."""
        owner = self.owner_of(lease)
        if lease.owner != self.options.instance_name or owner in (None, self.me):
            return None
        return self._observed[lease.id][1] + self.options.takeover_after

    def _view(self, lease: Lease, now: float) -> LeaseView:
        owner = self.owner_of(lease)
        if owner is None and lease.request not in (None, self.me):
            owner = lease.request  # released to its asker: the asker's, unless it never takes it
        if owner == self.me and not self._is_mine(lease):
            owner = None  # an acquisition of this run that ended: free for this run to take
        gone_at = self._gone_at(lease)
        if gone_at is not None and now > gone_at:
            owner = None  # an earlier run of this name, silent past the restart takeover time
        if owner not in (None, self.me) and lease.request == self.me:
            owner = self.me  # asked for: counted as this run's share (taken at expiry if no answer)
        return LeaseView(lease.id, owner, self._observed[lease.id][1])

    def _wake_at(self, leases: Sequence[Lease], now: float) -> None:
        """Run the next round when the first lease of an earlier run of this name may be taken,
        if that comes before the acquire interval ends."""
        due = [at for lease in leases if (at := self._gone_at(lease)) is not None and at > now]
        if self._wake_timer is not None:
            self._wake_timer.cancel()
            self._wake_timer = None
        if due and min(due) - now < self.options.acquire_interval:
            loop = asyncio.get_running_loop()
            self._wake_timer = loop.call_later(min(due) - now + 0.05, self.wake)

    async def _ask(self, lease: Lease) -> None:
        """Steal by asking: write a request the owner's writes keep; the owner releases at its
        next page boundary, and a task here takes the lease once it is free."""
        if lease.id in self._handovers:
            return
        try:
            asked = await self.leases.request(lease, self.me)
        except LeaseLostError:
            return
        self._asked[lease.id] = asked.etag
        LOG.info("lease requested from its owner", lease=lease.id, owner=self.owner_of(lease))
        self._handovers[lease.id] = asyncio.create_task(self._await_handover(asked))

    async def _await_handover(self, asked: Lease) -> None:
        """Read the requested lease every hand-over poll; once released, balance at once (it is
        free now). Given up when another request or owner replaced this one, or after the expiry
        (an owner that reaches no boundary lets it expire; balancing takes it then)."""
        options = self.options
        patience = max(options.expiry, options.request_check_interval + options.handover_timeout)
        deadline = self.monotonic() + patience + options.renew_interval
        try:
            while self.monotonic() < deadline:
                if await self._stopped_within(self.options.handover_poll):
                    return
                try:
                    current = await self.leases.read(asked.id)
                except Exception:  # noqa: BLE001 - read again at the next poll
                    continue
                if current is None:
                    return
                if current.owner is None:
                    self.wake()
                    return
                if current.request != self.me or self.owner_of(current) != self.owner_of(asked):
                    return
        finally:
            self._handovers.pop(asked.id, None)

    async def _retire(self, lease_id: str) -> None:
        worker = self.workers.pop(lease_id)
        worker.lose()
        await worker.stop()
        self.observer.lease_released(lease_id)

    async def _balance(self) -> None:
        leases = [
            lease for lease in await self.leases.list_leases() if lease.version <= LEASE_VERSION
        ]
        # An ETag is first seen when the listing answered, never when it was asked for: a write
        # may land while the listing is slow (throttled, a stalled loop), and stamping its ETag
        # with the earlier time would age it by that wait, so a live owner's lease would look
        # expired (or its run gone) before its deadline has stopped it.
        now = self.monotonic()
        self._observe(leases, now)
        by_id = {lease.id: lease for lease in leases}
        for lease_id, worker in list(self.workers.items()):
            listed = by_id.get(lease_id)
            if not worker.is_active() or listed is None or not self._is_mine(listed):
                await self._retire(lease_id)
        # A fresh read drops the client's whole routing-map cache: only every few rounds, or
        # when a token showed a split; otherwise the client's own view (it refreshes on a 410).
        refresh = self.split_suspected or self._rounds % self.options.split_check_rounds == 0
        self.split_suspected = False
        ranges = await self.feed.feed_ranges(refresh=refresh)
        for lease_id, worker in list(self.workers.items()):
            children = children_of(worker.lease.feed_range, ranges)
            if children:
                await self._retire(lease_id)
                await self._split(worker.lease, children)
        views = [self._view(lease, now) for lease in leases]
        decision = plan(views, self.me, now, self.options.expiry)
        wanted = list(decision.take)
        if decision.steal is not None:
            await self._ask(by_id[decision.steal])
        self._wake_at(leases, now)
        self._rounds += 1
        for lease_id in wanted:
            if lease_id not in self.workers:
                await self._start(by_id[lease_id], ranges)
        self.observer.leases_owned(self.owned)

    async def _start(self, listed: Lease, ranges: Sequence[dict[str, Any]]) -> None:
        try:
            lease = await self.leases.acquire(listed, self.options.instance_name, self.incarnation)
        except LeaseLostError:
            return
        except Exception as error:  # noqa: BLE001 - this lease is tried again next round
            LOG.warning("lease acquisition failed", lease=listed.id, error=repr(error))
            return
        children = children_of(lease.feed_range, ranges)
        if children:
            await self._split(lease, children)
            return
        self.workers[lease.id] = _Worker(self, lease)
        LOG.info("lease acquired", lease=lease.id, continuation=lease.continuation is not None)

    async def _split(self, lease: Lease, children: Sequence[dict[str, Any]]) -> None:
        try:
            created = await self.leases.split(lease, children)
        except LeaseLostError:
            return
        LOG.info("feed range split; lease replaced by its children", lease=lease.id,
                 children=[child.id for child in created])  # fmt: skip

    async def _assess(self) -> None:
        """Estimate each owned lease's backlog (each on its own: one failing read never hides
        another lease's figures) and judge its progress."""
        for lease_id, worker in list(self.workers.items()):
            if not worker.is_active():
                continue
            try:
                worker.status.backlog = await self.feed.estimate(
                    worker.lease.feed_range,
                    continuation=worker.lease.continuation,
                    start=worker.lease.start,
                )
            except Exception as error:  # noqa: BLE001 - reported per lease, retried next round
                LOG.warning("backlog estimate failed", lease=lease_id, error=repr(error))
            self._judge(lease_id, worker)
            self.observer.lease_status(lease_id, worker.status, self.monotonic())

    def _judge(self, lease_id: str, worker: _Worker) -> None:
        status, options, now = worker.status, self.options, self.monotonic()
        backlog = status.backlog
        problem = None
        progressed = status.checkpointed_at or status.acquired_at
        stuck = now - progressed > options.stalled_after
        not_before = worker.lease.start.not_before_ts
        oldest = backlog.oldest_ts if backlog is not None else None
        if oldest is not None and not_before is not None and oldest < not_before:
            oldest = None  # history before the start is skipped, not waiting
        if stuck and status.consecutive_failures > 0:
            problem = (f"{status.consecutive_failures} reads or handlings failed in a row; nothing "
                       f"was checkpointed for {now - progressed:.0f} s")  # fmt: skip
        elif stuck and backlog is not None and backlog.changes > 0:
            problem = f"changes wait but nothing was checkpointed for {now - progressed:.0f} s"
        elif oldest is not None and options.oldest_change_limit:
            age = time.time() - oldest
            if age > options.oldest_change_limit:
                problem = f"the oldest unpublished change is {age:.0f} s old"
        if problem and problem != status.stalled:
            LOG.error("lease is not making progress", lease=lease_id, reason=problem,
                      failures=status.consecutive_failures)  # fmt: skip
        elif status.stalled and not problem:
            LOG.info("lease is making progress again", lease=lease_id)
        status.stalled = problem

    async def _shutdown(self) -> None:
        if self._wake_timer is not None:
            self._wake_timer.cancel()
        for handover in list(self._handovers.values()):
            handover.cancel()
        await asyncio.gather(*self._handovers.values(), return_exceptions=True)
        workers = list(self.workers.values())
        await asyncio.gather(*(worker.stop() for worker in workers))
        await asyncio.gather(*(self._release(worker) for worker in workers))
        self.workers.clear()
        self.observer.leases_owned([])
        LOG.info("processor stopped; leases released", leases=len(workers))

    async def _release(self, worker: _Worker) -> None:
        if worker.lost or worker.outlived():
            return
        for attempt in range(1, 4):
            try:
                async with worker.lock:
                    await asyncio.wait_for(
                        self.leases.release(worker.lease), self.options.call_timeout
                    )
                break
            except LeaseLostError:
                return
            except Exception as error:  # noqa: BLE001 - retried; else the lease expires instead
                LOG.warning(
                    "release failed", lease=worker.lease.id, attempt=attempt, error=repr(error)
                )
                await asyncio.sleep(backoff(attempt, self.options.retry_delay, 2.0))
        self.observer.lease_released(worker.lease.id)
