"""The lane worker: handles one held lane (a Service Bus session that many orders share) for as long
as it is held. Pure: it talks to the broker through the SessionChannel port only.

Inside a lane, different orders go concurrently and one order strictly in sequence: each received
message is queued to its order (read from the envelope), and each order with work has one task
that handles its queue in arrival order. Every guarantee of the session worker holds per order:
- a store outage never spends a delivery: the message stays locked (the holder renews the lane's
  lock) and the store call is retried for as long as the outage lasts; a stop meanwhile lets the
  lane go unsettled (closing a receiver counts no delivery);
- duplicates are completed without effect (the projection's sequence, the inbox mark);
- an early event waits, locked, for its predecessor **without holding up the lane**: the lane's
  other orders flow meanwhile; after `gap_wait_seconds` (from that order's first early event) the
  skip policy applies the waiting events over the gap; more than `max_waiting` waiting events of
  one order end that order's wait early;
- an unexpected error abandons that message (the broker counts the delivery) and backs off that
  order only; the lane is not released.
The messages held (queued, in handling or waiting) are capped per lane (`max_in_flight`): past it
the worker receives no more until some are settled, so early events of many orders cannot grow
without bound.

Only the skip policy runs on held lanes: under the block policy the consumer leaves lanes to the
session pump, which blocks a whole lane (see the consumer's README).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from eventflow_consumer.handling import Decision, InboxHandler
from eventflow_consumer.ports import Inbound, SessionChannel
from eventflow_consumer.sessions import (
    ConsumerObserver,
    LetGo,
    StoreHealth,
    WorkerSettings,
    through_outage,
)
from eventflow_contracts import ContractError, read_routing

LOG = structlog.get_logger("eventflow_consumer.lanes")
RECEIVE_BATCH = 100
BUSY_RECEIVE_WAIT_SECONDS = 0.05


@dataclass(frozen=True)
class LaneSettings:
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    idle_seconds: float = 1.0  # how long an empty receive waits
    max_in_flight: int = 1000  # messages held by one lane at once (queued, handled, waiting)
    order_backoff_seconds: float = 1.0  # after an unexpected error, that order pauses


@dataclass
class _Order:
    """One order's work in a held lane."""

    queue: list[Inbound] = field(default_factory=list)
    waiting: list[Inbound] = field(default_factory=list)
    waiting_until: float | None = None
    task: asyncio.Task[None] | None = None
    retry_at: float = 0.0


def order_of(inbound: Inbound) -> str:
    """The key that serialises a message: its event's order, or (a marker, an unreadable body)
    the message itself, which is then judged alone."""
    delivery = inbound.delivery
    if not delivery.is_marker:
        try:
            return "order:" + read_routing(delivery.body).partitionkey
        except ContractError:
            pass
    return f"message:{delivery.sequence_number}"


def _event_order(inbound: Inbound) -> tuple[int, int]:
    sequence = inbound.delivery.event_sequence
    return (sequence if sequence is not None else -1, inbound.delivery.sequence_number)


class LaneWorker:
    def __init__(
        self,
        handler: InboxHandler,
        settings: LaneSettings | None = None,
        *,
        observer: ConsumerObserver | None = None,
        health: StoreHealth | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._handler = handler
        self._settings = settings or LaneSettings()
        if self._settings.worker.policy != "skip":
            raise ValueError(
                "held lanes run the skip policy; the block policy uses the session pump"
            )
        self._observer = observer or ConsumerObserver()
        self.health = health or StoreHealth(self._observer, clock)
        self._clock = clock
        self.settled = 0  # messages settled (or abandoned) by this worker, over every lane

    async def hold(self, channel: SessionChannel, stopping: Callable[[], bool]) -> None:
        """Handle the held lane until `stopping()`; then finish the messages in handling and return
        (queued and waiting ones are let go unsettled, which costs no delivery). Raises
        ChannelLost and the channel's broker errors (the caller releases the lane; what was not
        settled returns to the queue)."""
        lane = _Lane(self, channel, stopping)
        try:
            await lane.run()
        finally:
            await lane.wind_down()


class _Lane:
    """The state of one held lane, for as long as it is held."""

    def __init__(
        self, worker: LaneWorker, channel: SessionChannel, stopping: Callable[[], bool]
    ) -> None:
        self.worker, self.channel, self.stopping = worker, channel, stopping
        self.settings = worker._settings
        self.orders: dict[str, _Order] = {}
        self.in_flight = 0
        self.room = asyncio.Event()
        self.failure: BaseException | None = None
        self.log = LOG.bind(lane=channel.session_id)

    # -- receiving ---------------------------------------------------------------------------

    async def run(self) -> None:
        while not self.stopping():
            self._raise_failure()
            room = self.settings.max_in_flight - self.in_flight
            if room <= 0:
                self.room.clear()
                await self._until_room()
                continue
            batch = await self.channel.receive(min(RECEIVE_BATCH, room), self._receive_wait())
            for inbound in batch:
                self._dispatch(inbound)
            self._expire_gaps()
        self._raise_failure()

    async def _until_room(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.room.wait(), self._receive_wait())
        self._expire_gaps()

    def _receive_wait(self) -> float:
        """The idle wait, cut short by the next order's gap deadline; and short while orders are
        being handled: a receive holds the lane's receiver (the SDK's receivers are not
        coroutine-safe), so their settlements would queue behind a long one."""
        wait = self.settings.idle_seconds
        if any(o.task is not None and not o.task.done() for o in self.orders.values()):
            wait = min(wait, BUSY_RECEIVE_WAIT_SECONDS)
        deadlines = [o.waiting_until for o in self.orders.values() if o.waiting_until is not None]
        if deadlines:
            wait = max(0.0, min(wait, min(deadlines) - self.worker._clock()))
        return wait

    def _raise_failure(self) -> None:
        if self.failure is not None:
            raise self.failure

    def _dispatch(self, inbound: Inbound) -> None:
        key = order_of(inbound)
        order = self.orders.setdefault(key, _Order())
        order.queue.append(inbound)
        self.in_flight += 1
        self._start(key, order)

    def _start(self, key: str, order: _Order) -> None:
        if order.task is None or order.task.done():
            order.task = asyncio.create_task(self._work(key, order))

    def _expire_gaps(self) -> None:
        now = self.worker._clock()
        for key, order in self.orders.items():
            expired = order.waiting_until is not None and now >= order.waiting_until
            if expired and not any(i is _GAP_EXPIRED for i in order.queue):
                order.queue.insert(0, _GAP_EXPIRED)
                self._start(key, order)

    # -- one order -----------------------------------------------------------------------------

    async def _work(self, key: str, order: _Order) -> None:
        """Handles the order's queue in arrival order; ends when it is empty."""
        try:
            while order.queue and not self.stopping():
                pause = order.retry_at - self.worker._clock()
                if pause > 0:
                    await asyncio.sleep(pause)
                inbound = order.queue.pop(0)
                if inbound is _GAP_EXPIRED:
                    await self._gap_expired(order)
                    continue
                await self._one(order, inbound)
        except LetGo as error:
            self.log.warning("stopping during a store outage: messages let go unsettled",
                             error=str(error))  # fmt: skip
        except BaseException as error:  # noqa: BLE001 - the lane's loop raises it (lock lost, broker)
            self.failure = self.failure or error
            self.room.set()
        finally:
            if not order.queue and not order.waiting and self.orders.get(key) is order:
                del self.orders[key]

    async def _one(self, order: _Order, inbound: Inbound) -> None:
        decision = await self._decide(order, inbound)
        if decision is None:
            return
        await self._settle(order, inbound, decision)
        if decision.action != "wait" and order.waiting:
            await self._release_waiting(order)

    async def _decide(
        self, order: _Order, inbound: Inbound, *, accept_gap: bool = False
    ) -> Decision | None:
        """The handler's decision; None when the message was abandoned after an unexpected error
        (the order then backs off)."""
        worker = self.worker
        started = time.perf_counter()
        try:
            decision = await through_outage(
                lambda: worker._handler.handle(
                    inbound.delivery, accept_gap=accept_gap, skip_poison=True
                ),
                self.stopping,
                worker.health,
                self.settings.worker,
            )
        except LetGo:
            raise
        except Exception:
            self.log.exception("handling failed unexpectedly; abandoned, the order backs off",
                               message_id=inbound.delivery.message_id)  # fmt: skip
            await self.channel.abandon(inbound)
            worker._observer.abandoned()
            self._settled()
            order.retry_at = worker._clock() + self.settings.order_backoff_seconds
            return None
        worker._observer.settled(decision, time.perf_counter() - started)
        return decision

    async def _settle(self, order: _Order, inbound: Inbound, decision: Decision) -> None:
        delivery = inbound.delivery
        if decision.action == "wait":
            order.waiting.append(inbound)
            order.waiting.sort(key=_event_order)
            if order.waiting_until is None:
                order.waiting_until = self.worker._clock() + self.settings.worker.gap_wait_seconds
            self.worker._observer.waited()
            self.log.info("early: waiting for the events before it", message_id=delivery.message_id,
                          sequence=decision.sequence)  # fmt: skip
            if len(order.waiting) > self.settings.worker.max_waiting:
                await self._gap_expired(order)
            return
        if decision.action == "complete":
            await self.channel.complete(inbound)
            if decision.effect:
                self.log.info("applied", message_id=delivery.message_id, sequence=decision.sequence)
        else:
            reason = decision.reason or "unknown"
            description = (decision.description or "")[:1000]
            await self.channel.dead_letter(inbound, reason, description)
            self.log.warning("dead-lettered", message_id=delivery.message_id, reason=reason,
                             description=description)  # fmt: skip
        self._settled()

    def _settled(self) -> None:
        self.worker.settled += 1
        self.in_flight -= 1
        self.room.set()

    async def _release_waiting(self, order: _Order) -> None:
        """Waiting messages whose predecessor has now been applied, lowest sequence first."""
        while order.waiting:
            first = order.waiting.pop(0)
            decision = await self._decide(order, first)
            if decision is None:
                continue
            if decision.action == "wait":
                order.waiting.insert(0, first)
                return
            await self._settle(order, first, decision)
        order.waiting_until = None

    async def _gap_expired(self, order: _Order) -> None:
        """The predecessors did not come in time: the waiting events are applied over the gap (the
        projection records the missing sequences as skipped)."""
        waiting, order.waiting, order.waiting_until = order.waiting, [], None
        if waiting:
            LOG.warning("events missing after the wait; skipped over", lane=self.channel.session_id,
                        first_waiting=waiting[0].delivery.event_sequence)  # fmt: skip
        for inbound in waiting:
            decision = await self._decide(order, inbound, accept_gap=True)
            if decision is not None:
                await self._settle(order, inbound, decision)

    # -- stopping -----------------------------------------------------------------------------

    async def wind_down(self) -> None:
        """Waits for the orders' tasks to end (each finishes the message it handles)."""
        tasks = [o.task for o in self.orders.values() if o.task is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        waiting = sum(len(o.waiting) + len(o.queue) for o in self.orders.values())
        if waiting:
            self.log.info("lane released: messages let go unsettled", messages=waiting)


_GAP_EXPIRED = Inbound(delivery=None, handle=None)  # type: ignore[arg-type]  # a queue marker
