"""The lane worker: handles one held lane (a Service Bus session that many orders share) for as long
as it is held. Pure: it talks to the broker through the SessionChannel port and keeps every
per-order record in the consumer's store (OrderRecords), never in the session state, so that an
order's state survives its lane moving to another replica.

Inside a lane, different orders go concurrently and one order strictly in sequence: each received
message is queued to its order (read from the envelope), and each order with work has one task
that handles its queue in arrival order. Every guarantee of the session worker holds per order:
- a store outage never spends a delivery: the message stays locked (the holder renews the lane's
  lock) and the store call is retried for as long as the outage lasts; a stop meanwhile lets the
  lane go unsettled (closing a receiver counts no delivery);
- duplicates are completed without effect (the projection's sequence, the inbox mark);
- an early event waits, locked, for its predecessor **without holding up the lane**: the lane's
  other orders flow meanwhile; after `gap_wait_seconds` (from that order's first early event) the
  policy applies: skip applies the waiting events over the gap, block blocks the order; more than
  `max_waiting` waiting events of one order end that order's wait early. With a generation barrier
  (barrier.py) the gap wait starts only once no older session of the inbox (the order's lane under
  an older lane count, its own per-order session) holds an earlier event of the order: until then
  the order looks again every `barrier.poll_seconds`, re-reading its summary each time, so an
  earlier event applied from the other session releases the waiting ones at once;
- the block policy blocks **one order**: its blocked record is written first, then each of its
  messages (the poison one is dead-lettered) is recorded in the store and deferred in the lane;
  the lane's other orders go on. `unblock` is a request in the store that the lane's holder
  carries out: it replays the order's deferred messages in event order, forgetting each record
  after its message is settled, and clears the blocked record last, so that a replay cut short
  (a lost lane, a stop, a store outage) is taken up again by whoever holds the lane next;
- an unexpected error abandons that message (the broker counts the delivery) and backs off that
  order only; the lane is not released.
Caps: one order holds at most `order_max_in_flight` messages (queued, in handling, waiting); past
it, and for as long as the order has deferred messages, its messages are recorded and deferred,
and brought back in arrival order as the order drains, so a hot order or an order's many early
events cannot fill the lane's window. The lane holds at most `max_in_flight`: past it the worker
receives no more until some are settled.
On accept, the lane's records are reconciled with the broker: records of deferred messages that no
longer exist are dropped, blocked orders stay blocked, an order's capped messages are brought back;
a lane that an earlier release blocked whole (in its session state) is taken over per order.
A message whose order cannot be read (an unreadable envelope, a marker) is judged alone: under the
block policy it is dead-lettered without blocking anything.
Per event: a completion is issued concurrently (an order's next event is handled as soon as the
store write of the one before is done), and an event that is next after the summary this holder
last wrote for its order is applied on that summary without reading it (the store refuses a stale
token; then it is read). The cache lives as long as the lane is held.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import structlog

from eventflow_consumer.barrier import GenerationBarrier
from eventflow_consumer.handling import Decision, InboxHandler, SummaryCache
from eventflow_consumer.ports import (
    DeferredElsewhereError,
    Inbound,
    OrderRecords,
    SessionChannel,
    TransientStoreError,
)
from eventflow_consumer.session_state import SessionState
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
T = TypeVar("T")
SUMMARY_CACHE_PER_LANE = 1000


@dataclass(frozen=True)
class LaneSettings:
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    idle_seconds: float = 1.0  # how long an empty receive waits
    max_in_flight: int = 1000  # messages held by one lane at once (queued, handled, waiting)
    order_max_in_flight: int = 100  # of one order; past it, its messages are deferred
    order_backoff_seconds: float = 1.0  # after an unexpected error, that order pauses
    unblock_poll_seconds: float = 1.0  # how often a lane with blocked orders reads their records
    barrier_max_seconds: float = 600.0  # the longest wait behind the barrier for held sessions


@dataclass
class _Order:
    """One order's work in a held lane."""

    order_id: str | None  # None: a message judged alone
    queue: list[Inbound] = field(default_factory=list)
    waiting: list[Inbound] = field(default_factory=list)
    waiting_until: float | None = None
    barrier: bool = False  # the wait is behind the generation barrier: the gap wait has not begun
    held_since: float | None = None  # since when the barrier could only say "a session is held"
    elsewhere: str | None = None  # the other session the barrier last named
    task: asyncio.Task[None] | None = None
    retry_at: float = 0.0
    overflow: list[Inbound] = field(default_factory=list)  # to be recorded and deferred
    deferred: dict[int, int | None] = field(default_factory=dict)  # recorded: number → sequence
    out: set[int] = field(default_factory=set)  # recorded ones received back, not yet settled
    blocked: str | None = None  # the reason
    unblock: str | None = None  # an unblock request to carry out
    answered: str | None = None  # the last request carried out (or withdrawn) by this holder

    def held(self) -> int:
        return len(self.queue) + len(self.waiting) + len(self.overflow)

    def idle(self) -> bool:
        return not (self.queue or self.waiting or self.overflow or self.deferred or self.blocked
                    or self.unblock)  # fmt: skip

    def parked(self) -> bool:
        """Blocked with nothing to do until an unblock request comes."""
        busy = self.task is not None and not self.task.done()
        return bool(self.blocked) and not (self.queue or self.waiting or self.overflow or self.out
                                           or self.unblock or busy)  # fmt: skip


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
        records: OrderRecords,
        settings: LaneSettings | None = None,
        *,
        observer: ConsumerObserver | None = None,
        health: StoreHealth | None = None,
        barrier: GenerationBarrier | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._handler = handler
        self._barrier = barrier
        self._records = records
        self._settings = settings or LaneSettings()
        self._observer = observer or ConsumerObserver()
        self.health = health or StoreHealth(self._observer, clock)
        self._clock = clock
        self.settled = 0  # messages settled (or abandoned) by this worker, over every lane

    @property
    def policy(self) -> str:
        return self._settings.worker.policy

    async def hold(
        self, channel: SessionChannel, stopping: Callable[[], bool], *, drain: bool = False
    ) -> None:
        """Handle the held lane until `stopping()`; then finish the messages in handling and return
        (queued and waiting ones are let go unsettled, which costs no delivery). Raises
        ChannelLost and the channel's broker errors (the caller releases the lane; what was not
        settled returns to the queue). `drain`: return as well once the lane is drained, a receive
        of `idle_seconds` brought nothing and no order has work left but blocked ones (their
        unblock holds the lane again): for a lane of another lane count, which no replica holds
        for good."""
        lane = _Lane(self, channel, stopping, drain)
        try:
            try:
                await lane.restore()
            except LetGo as error:
                lane.log.warning("stopping during a store outage: lane released before receiving",
                                 error=str(error))  # fmt: skip
                return
            await lane.run()
        finally:
            await lane.wind_down()


class _Lane:
    """The state of one held lane, for as long as it is held."""

    def __init__(
        self,
        worker: LaneWorker,
        channel: SessionChannel,
        stopping: Callable[[], bool],
        drain: bool = False,
    ) -> None:
        self.worker, self.channel, self.stopping, self.drain = worker, channel, stopping, drain
        self.records = worker._records
        self.settings = worker._settings
        self.orders: dict[str, _Order] = {}
        self.in_flight = 0
        self.room = asyncio.Event()
        self.failure: BaseException | None = None
        self.settling: set[asyncio.Task[None]] = set()
        self.watcher: asyncio.Task[None] | None = None
        # Summaries this holder wrote since it acquired the lane, for apply only (handling.py).
        self.summaries = SummaryCache(SUMMARY_CACHE_PER_LANE)
        self.log = LOG.bind(lane=channel.session_id)

    async def _store(self, call: Callable[[], Awaitable[T]]) -> T:
        return await through_outage(call, self.stopping, self.worker.health, self.settings.worker)

    # -- accepting: the lane's records reconciled with the broker ------------------------------

    async def restore(self) -> None:
        """The orders of this lane that the store says are blocked or hold deferred messages, before
        anything is received: records of messages that are no longer deferred are dropped (settled
        before they were forgotten, or recorded and never deferred), an interrupted unblock is
        taken up again, capped messages are brought back."""
        lane = self.channel.session_id
        if self.worker._barrier is not None:
            await self.worker._barrier.seen(lane)
        await self._adopt_lane_block()
        records = await self._store(lambda: self.records.lane_records(lane))
        numbers = [n for messages in records.deferred.values() for n in messages]
        present = await self.channel.deferred_present(numbers) if numbers else set()
        for order_id, messages in records.deferred.items():
            order = self._order("order:" + order_id, order_id)
            gone = set(messages) - present
            if gone:
                self.log.warning("recorded deferred messages no longer exist; records dropped",
                                 order=order_id, sequence_numbers=sorted(gone))  # fmt: skip
                await self._forget_records(order_id, gone)
            order.deferred = {n: e for n, e in messages.items() if n in present}
        for order_id, record in records.blocked.items():
            order = self._order("order:" + order_id, order_id)
            order.blocked = str(record.get("reason") or "blocked")
            order.unblock = _requested(record)
        for key, order in list(self.orders.items()):
            if order.idle():
                del self.orders[key]
            else:
                self._start(key, order)
        if records.blocked or records.deferred:
            self.log.info("lane's records restored", blocked=sorted(records.blocked),
                          deferred={o: len(m) for o, m in records.deferred.items()})  # fmt: skip

    async def _adopt_lane_block(self) -> None:
        """A lane blocked whole by an earlier release (its session state says blocked, or lists
        deferred messages): each deferred message is recorded in the store under its order (so it
        is brought back in arrival order, and an order whose poison message was dead-lettered
        blocks itself again on its own gap), then the state and the lane's blocked record are
        cleared. Done again from the start if cut short: recording is idempotent."""
        channel, lane = self.channel, self.channel.session_id
        state = SessionState.from_bytes(await channel.get_state())
        if not state.blocked and not state.deferred:
            return
        self.log.warning("lane blocked whole by an earlier release: its deferred messages are "
                         "taken over per order", deferred=len(state.deferred), reason=state.reason)  # fmt: skip
        for number in list(state.deferred):
            inbound = await channel.receive_deferred(number)
            if inbound is None:
                continue
            key = order_of(inbound)
            if not key.startswith("order:"):
                self._dispatch(inbound)  # judged alone, like any message whose order is unknown
                continue
            order_id, sequence = key.removeprefix("order:"), inbound.delivery.event_sequence
            await self._record(order_id, number, sequence)
            await channel.defer(inbound)
        await channel.set_state(SessionState(last_sequence=state.last_sequence).to_bytes())
        await self._store(lambda: self.records.clear_blocked(lane))

    async def _record(self, order_id: str, number: int, sequence: int | None) -> None:
        lane = self.channel.session_id
        await self._store(lambda: self.records.record_deferred(order_id, lane, number, sequence))

    async def _forget_records(self, order_id: str, numbers: set[int]) -> None:
        await self._store(lambda: self.records.forget_deferred(order_id, numbers))

    def _order(self, key: str, order_id: str | None) -> _Order:
        order = self.orders.get(key)
        if order is None:
            order = self.orders[key] = _Order(order_id)
        return order

    # -- receiving ---------------------------------------------------------------------------

    async def run(self) -> None:
        self.watcher = asyncio.create_task(self._watch_unblocks())
        while not self.stopping():
            self._raise_failure()
            room = self.settings.max_in_flight - self.in_flight
            if room <= 0:
                self.room.clear()
                await self._until_room()
                continue
            wait = self._receive_wait()
            # An idle lane asks for one message: the SDK returns a batch receive only 0.2 s after
            # its first message arrives (it pulls on for more), which an idle lane would add to
            # every event's latency; a busy lane takes what its receiver prefetched, in batches.
            count = min(RECEIVE_BATCH, room) if self._busy() else 1
            batch = await self.channel.receive(count, wait)
            for inbound in batch:
                self._dispatch(inbound)
            self._expire_gaps()
            if self.drain and not batch and not self.settling and self._drained():
                self.log.info("lane drained: released", blocked=len(self.orders))
                break
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
        if self._busy():
            wait = min(wait, BUSY_RECEIVE_WAIT_SECONDS)
        deadlines = [o.waiting_until for o in self.orders.values() if o.waiting_until is not None]
        if deadlines:
            wait = max(0.0, min(wait, min(deadlines) - self.worker._clock()))
        return wait

    def _drained(self) -> bool:
        """Nothing left to do but blocked orders (an unblock holds the lane again: the command
        holds a lane of another count itself, since no replica holds it for good)."""
        return all(order.parked() for order in self.orders.values())

    def _busy(self) -> bool:
        """Messages are being handled or settled."""
        return bool(self.settling) or any(
            o.task is not None and not o.task.done() for o in self.orders.values()
        )

    def _raise_failure(self) -> None:
        if self.failure is not None:
            raise self.failure

    def _dispatch(self, inbound: Inbound) -> None:
        key = order_of(inbound)
        order = self._order(key, key.removeprefix("order:") if key.startswith("order:") else None)
        self.in_flight += 1
        deferring = order.blocked or order.deferred or order.overflow
        if order.order_id is not None and (
            deferring or order.held() >= self.settings.order_max_in_flight
        ):
            order.overflow.append(inbound)
        else:
            order.queue.append(inbound)
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

    async def _watch_unblocks(self) -> None:
        """Reads the blocked records of this lane's blocked orders every `unblock_poll_seconds`
        for an unblock request (an outage: tried again at the next period)."""
        while True:
            await asyncio.sleep(self.settings.unblock_poll_seconds)
            for key, order in list(self.orders.items()):
                if not order.blocked or order.unblock or order.order_id is None:
                    continue
                try:
                    record = await self.records.blocked_record(order.order_id)
                except TransientStoreError:
                    break
                except Exception:  # the watch goes on; the next period tries again
                    self.log.exception("reading a blocked record failed", order=order.order_id)
                    break
                request = _requested(record)
                if request is not None and request != order.answered:
                    order.unblock = request
                    self._start(key, order)

    # -- one order -----------------------------------------------------------------------------

    async def _work(self, key: str, order: _Order) -> None:
        """Handles the order's work until there is none."""
        try:
            while not self.stopping() and await self._step(order):
                pass
        except LetGo as error:
            self.log.warning("stopping during a store outage: messages let go unsettled",
                             error=str(error))  # fmt: skip
        except BaseException as error:  # noqa: BLE001 - the lane's loop raises it (lock lost, broker)
            self.failure = self.failure or error
            self.room.set()
        finally:
            if order.idle() and self.orders.get(key) is order:
                del self.orders[key]

    async def _step(self, order: _Order) -> bool:
        """One step of the order's work: deferrals first (they free the lane's window), then an
        unblock, then its queue in arrival order, then deferred messages back. False: none left."""
        if order.overflow:
            pause = order.retry_at - self.worker._clock()
            if pause > 0:  # its records are in another lane: the messages wait here meanwhile
                await asyncio.sleep(min(pause, self.settings.idle_seconds))
                return True
            await self._defer(order, order.overflow.pop(0))
            return True
        if order.unblock or order.queue:
            pause = order.retry_at - self.worker._clock()
            if pause > 0:
                await asyncio.sleep(pause)
                return True
        if order.unblock:
            await self._unblock(order, order.unblock)
        elif order.queue:
            inbound = order.queue.pop(0)
            if inbound is _GAP_EXPIRED:
                await self._gap_expired(order)
            elif order.blocked and order.order_id is not None:
                await self._defer(order, inbound)
            else:
                await self._one(order, inbound)
        elif self._to_bring_back(order):
            await self._bring_back(order)
        else:
            return False
        return True

    async def _one(self, order: _Order, inbound: Inbound) -> None:
        decision = await self._decide(order, inbound)
        if decision is None:
            return
        await self._settle(order, inbound, decision)
        if decision.action != "wait" and order.waiting and not order.blocked:
            await self._release_waiting(order)

    async def _decide(
        self, order: _Order, inbound: Inbound, *, accept_gap: bool = False
    ) -> Decision | None:
        """The handler's decision; None when the message was abandoned after an unexpected error
        (the order then backs off; a message brought back from deferral is deferred again)."""
        worker = self.worker
        started = time.perf_counter()
        try:
            decision = await self._store(
                lambda: worker._handler.handle(
                    inbound.delivery,
                    accept_gap=accept_gap,
                    skip_poison=worker.policy == "skip",
                    cache=self.summaries,
                )
            )
        except LetGo:
            raise
        except Exception:
            number = inbound.delivery.sequence_number
            self.log.exception("handling failed unexpectedly; the order backs off",
                               message_id=inbound.delivery.message_id)  # fmt: skip
            if number in order.out:  # still recorded: deferred again, brought back later
                order.out.discard(number)
                await self.channel.defer(inbound)
                self._settled()
            else:
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
                barrier = self.worker._barrier
                order.barrier = barrier is not None and order.order_id is not None
                wait = barrier.poll_seconds if barrier and order.barrier else self._gap_wait()
                order.waiting_until = self.worker._clock() + wait
            self.worker._observer.waited()
            self.log.info("early: waiting for the events before it", message_id=delivery.message_id,
                          sequence=decision.sequence)  # fmt: skip
            if len(order.waiting) > self.settings.worker.max_waiting:
                await self._gap_expired(order)
            return
        if decision.action == "complete":
            if delivery.sequence_number in order.out:
                await self.channel.complete(inbound)
                await self._forget(order, delivery.sequence_number)
                self._settled()
            else:  # the next event of the order goes on meanwhile
                self._complete_later(inbound)
            if decision.effect:
                self.log.info("applied", message_id=delivery.message_id, sequence=decision.sequence)
            return
        reason = decision.reason or "unknown"
        description = (decision.description or "")[:1000]
        if decision.poison and self.worker.policy == "block" and order.order_id is not None:
            await self._block(order, f"{reason}: {description}"[:500])
        await self.channel.dead_letter(inbound, reason, description)
        await self._forget(order, delivery.sequence_number)
        self.log.warning("dead-lettered", message_id=delivery.message_id, reason=reason,
                         description=description)  # fmt: skip
        self._settled()

    def _complete_later(self, inbound: Inbound) -> None:
        async def complete() -> None:
            try:
                await self.channel.complete(inbound)
            except BaseException as error:  # noqa: BLE001 - the lane's loop raises it
                self.failure = self.failure or error
            finally:
                self._settled()

        task = asyncio.create_task(complete())
        self.settling.add(task)
        task.add_done_callback(self.settling.discard)

    def _settled(self) -> None:
        self.worker.settled += 1
        self.in_flight -= 1
        self.room.set()

    async def _release_waiting(self, order: _Order) -> None:
        """Waiting messages whose predecessor has now been applied, lowest sequence first."""
        while order.waiting and not order.blocked:
            first = order.waiting.pop(0)
            decision = await self._decide(order, first)
            if decision is None:
                continue
            if decision.action == "wait":
                order.waiting.insert(0, first)
                return
            await self._settle(order, first, decision)
        order.waiting_until, order.barrier, order.elsewhere = None, False, None
        order.held_since = None

    def _gap_wait(self) -> float:
        return self.settings.worker.gap_wait_seconds

    async def _gap_expired(self, order: _Order) -> None:
        """The predecessors did not come in time (or too many wait): skip applies the waiting
        events over the gap (the projection records the missing sequences as skipped); block
        blocks the order, and its waiting events are deferred. Behind the generation barrier, the
        order looks again instead (`_behind_barrier`)."""
        if self.worker._barrier is not None and order.order_id is not None:
            if await self._behind_barrier(order):
                return
        else:
            await self._release_waiting(order)
        waiting, order.waiting, order.waiting_until = order.waiting, [], None
        order.barrier, order.elsewhere, order.held_since = False, None, None
        if not waiting:
            return
        first = waiting[0].delivery.event_sequence
        self.log.warning("events missing after the wait; the policy applies", order=order.order_id,
                         policy=self.worker.policy, first_waiting=first)  # fmt: skip
        if self.worker.policy == "block" and order.order_id is not None:
            order.waiting = waiting
            gap = self.settings.worker.gap_wait_seconds
            await self._block(
                order, f"sequence-gap: event {first} waited {gap}s for the events before it"
            )
            return
        for inbound in waiting:
            decision = await self._decide(order, inbound, accept_gap=True)
            if decision is not None:
                await self._settle(order, inbound, decision)

    async def _behind_barrier(self, order: _Order) -> bool:
        """One look of the generation barrier, when a look is due (behind the barrier), when the
        gap wait is over, or when too many events of the order wait. The waiting events are decided
        again (another session's holder may have applied the missing ones meanwhile); for those
        still early, if another session holds (or may hold) an earlier event of the order, the
        order waits behind the barrier — without end while an earlier event is seen there, for at
        most `barrier_max_seconds` while a session only cannot be looked at; otherwise they
        are decided once more (the look came after the decision) and the gap wait begins, or, if
        it is over, the policy applies. True: the order keeps waiting (or nothing is left
        waiting); False: the policy applies now."""
        barrier, order_id = self.worker._barrier, order.order_id
        assert barrier is not None
        assert order_id is not None
        gap_over = not order.barrier
        order.waiting_until = None  # no other look is due while this one runs
        await self._release_waiting(order)
        if not order.waiting:
            return True
        first = order.waiting[0].delivery.event_sequence or 0
        try:
            answer = await barrier.earlier_elsewhere(order_id, self.channel.session_id, first)
        except Exception as error:  # noqa: BLE001 - a store outage, a broker error: look again
            self.log.warning("the generation barrier could not look; it looks again", order=order_id,
                             error=repr(error))  # fmt: skip
            answer = ("(unknown)", False)
        now = self.worker._clock()
        elsewhere, seen = answer if answer is not None else (None, False)
        if elsewhere is not None and not seen and order.held_since is None:
            order.held_since = now
        elif seen:
            order.held_since = None  # an earlier event is there: it will come, however long
        if elsewhere is not None:
            held_for = 0.0 if order.held_since is None else now - order.held_since
            if held_for < self.settings.barrier_max_seconds:
                if elsewhere != order.elsewhere:
                    self.log.info("waiting for an earlier event in another session", order=order_id,
                                  first_waiting=first, session=elsewhere)  # fmt: skip
                order.barrier, order.elsewhere = True, elsewhere
                order.waiting_until = now + barrier.poll_seconds
                return True
            self.log.warning("waited behind the generation barrier for its longest: the gap wait "
                             "begins anyway", order=order_id, first_waiting=first, session=elsewhere,
                             seconds=self.settings.barrier_max_seconds)  # fmt: skip
        await self._release_waiting(order)
        if not order.waiting:
            return True
        if gap_over:
            return False
        if elsewhere is None:
            self.log.info("no other session holds earlier events of the order: the gap wait begins",
                          order=order_id, first_waiting=first)  # fmt: skip
        order.barrier, order.elsewhere = False, None
        order.waiting_until = now + self._gap_wait()
        return len(order.waiting) <= self.settings.worker.max_waiting

    # -- blocking, deferring, bringing back --------------------------------------------------

    async def _block(self, order: _Order, reason: str) -> None:
        """The blocked record first (the operator must see every block), then the order's held
        messages go to be deferred."""
        assert order.order_id is not None
        order_id, lane = order.order_id, self.channel.session_id
        await self._store(lambda: self.records.set_blocked(order_id, reason, lane))
        order.blocked = reason
        held = order.waiting + [i for i in order.queue if i is not _GAP_EXPIRED]
        order.overflow = held + order.overflow
        order.waiting, order.queue, order.waiting_until = [], [], None
        order.barrier, order.elsewhere, order.held_since = False, None, None
        self.worker._observer.blocked()
        self.log.warning("order blocked", order=order_id, reason=reason)

    async def _defer(self, order: _Order, inbound: Inbound) -> None:
        """Recorded in the store before it is deferred, so it can never be orphaned."""
        assert order.order_id is not None
        delivery, order_id, lane = inbound.delivery, order.order_id, self.channel.session_id
        number = delivery.sequence_number
        limit = self.settings.worker.max_deferred
        if number not in order.deferred and len(order.deferred) >= limit:
            description = (f"order {order_id} already holds {len(order.deferred)} deferred messages in "
                           f"lane {lane} (the limit); resubmit after it drains or is unblocked")  # fmt: skip
            await self.channel.dead_letter(inbound, "deferral-limit", description)
            self.worker._observer.settled(Decision("dead_letter", reason="deferral-limit"), 0.0)
            self.log.warning(
                "dead-lettered", reason="deferral-limit", message_id=delivery.message_id
            )
            self._settled()
            return
        sequence = delivery.event_sequence
        try:
            await self._record(order_id, number, sequence)
        except DeferredElsewhereError as error:
            # An order is deferred in one lane at a time (its unblock replays one lane): until its
            # records in the older lane are gone, the message stays here, locked under this lane.
            order.overflow.insert(0, inbound)
            order.retry_at = self.worker._clock() + self.settings.unblock_poll_seconds
            if order.elsewhere != error.lane:
                order.elsewhere = error.lane
                self.log.info("the order's deferred messages are recorded in another lane: its "
                              "messages wait here", order=order_id, lane=error.lane)  # fmt: skip
            return
        order.deferred[number] = sequence
        order.out.discard(number)
        await self.channel.defer(inbound)
        self.worker._observer.deferred()
        self._settled()
        self.log.info("message deferred", order=order_id, sequence_number=number,
                      blocked=order.blocked is not None)  # fmt: skip

    async def _forget(self, order: _Order, number: int) -> None:
        """After a recorded message is settled: its record goes."""
        if number not in order.deferred:
            return
        assert order.order_id is not None
        await self._forget_records(order.order_id, {number})
        order.deferred.pop(number, None)
        order.out.discard(number)

    async def _receive_back(self, order: _Order, number: int) -> Inbound | None:
        inbound = await self.channel.receive_deferred(number)
        if inbound is None:
            self.log.warning("a recorded deferred message no longer exists; record dropped",
                             order=order.order_id, sequence_number=number)  # fmt: skip
            await self._forget(order, number)
            return None
        self.in_flight += 1
        order.out.add(number)
        return inbound

    def _to_bring_back(self, order: _Order) -> list[int]:
        """Deferred messages of an order that is not blocked, in arrival order, up to its cap; and
        when early events fill the cap, a deferred predecessor of theirs past it (one at a time),
        so that the cap never keeps from an order the event it waits for."""
        if order.blocked:
            return []
        candidates = sorted(order.deferred.keys() - order.out)
        room = self.settings.order_max_in_flight - len(order.out) - order.held()
        if room > 0:
            return candidates[:room]
        if order.queue or not order.waiting:
            return []
        first = min(_event_order(i)[0] for i in order.waiting)
        earlier = [n for n in candidates if (order.deferred[n] or first) < first]
        return sorted(earlier, key=lambda n: (order.deferred[n] or 0, n))[:1]

    async def _bring_back(self, order: _Order) -> None:
        """The order drained: its deferred messages come back in arrival order, up to its cap."""
        for number in self._to_bring_back(order):
            inbound = await self._receive_back(order, number)
            if inbound is not None:
                order.queue.append(inbound)

    async def _unblock(self, order: _Order, request: str) -> None:
        """The operator's unblock: the order's deferred messages replayed in event order with gaps
        accepted, each record forgotten after its message is settled; a poison message among them
        blocks the order again (the request answered so). The blocked record is cleared last."""
        order_id = order.order_id
        assert order_id is not None
        if not await self._store(lambda: self.records.start_unblock(order_id, request)):
            order.unblock, order.answered = None, request  # withdrawn before it started
            return
        self.log.info("unblocking an order", order=order_id, deferred=len(order.deferred))
        blocked, order.blocked = order.blocked, None
        for number, _ in sorted(order.deferred.items(), key=_replay_order):
            if self.stopping():  # the request stays recorded: the lane's next holder goes on
                order.blocked = blocked
                return
            if number in order.out:
                continue
            inbound = await self._receive_back(order, number)
            if inbound is None:
                continue
            decision = await self._decide(order, inbound, accept_gap=True)
            if decision is None:  # deferred again; the order backs off and tries again
                order.blocked = blocked
                return
            again = decision.poison and self.worker.policy == "block"
            if again:
                await self._blocked_again(order, request, decision)
            await self._settle(order, inbound, decision)
            if again:
                return
        await self._store(lambda: self.records.clear_blocked(order_id))
        order.unblock, order.answered = None, request
        self.log.info("order unblocked", order=order_id)

    async def _blocked_again(self, order: _Order, request: str, decision: Decision) -> None:
        """The answer first: a replay cut short after it leaves the order blocked, not replayed on."""
        order_id = order.order_id
        assert order_id is not None
        reason = f"{decision.reason}: {decision.description or ''}"[:500]
        await self._store(lambda: self.records.answer_unblock(order_id, request, reason))
        order.blocked, order.unblock, order.answered = reason, None, request
        self.worker._observer.blocked()
        self.log.warning("unblocked order blocked again", order=order_id, reason=reason)

    # -- stopping -----------------------------------------------------------------------------

    async def wind_down(self) -> None:
        """Waits for the orders' tasks to end (each finishes the message it handles) and for the
        completions issued."""
        if self.watcher is not None:
            self.watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.watcher
        tasks = [o.task for o in self.orders.values() if o.task is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self.settling:
            await asyncio.gather(*self.settling, return_exceptions=True)
        waiting = sum(o.held() for o in self.orders.values())
        if waiting:
            self.log.info("lane released: messages let go unsettled", messages=waiting)


def _requested(record: dict[str, Any] | None) -> str | None:
    """The unblock request a blocked record carries and that was not answered yet."""
    if record is None:
        return None
    request = (record.get("unblock_requested") or {}).get("id")
    answered = (record.get("unblock_answer") or {}).get("id")
    return str(request) if request and request != answered else None


def _replay_order(entry: tuple[int, int | None]) -> tuple[int, int]:
    number, sequence = entry
    return (sequence if sequence is not None else -1, number)


_GAP_EXPIRED = Inbound(delivery=None, handle=None)  # type: ignore[arg-type]  # a queue marker
