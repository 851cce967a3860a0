"""The Service Bus side: a session receiver as the worker's SessionChannel, and the pump that holds
up to `concurrency` sessions at once, on azure-servicebus 7.15 aio."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, Protocol

import structlog
from azure.servicebus import NEXT_AVAILABLE_SESSION, ServiceBusMessageState
from azure.servicebus.exceptions import (
    MessageLockLostError,
    MessageNotFoundError,
    OperationTimeoutError,
    ServiceBusError,
    SessionLockLostError,
)

from eventflow_consumer.handling import Delivery, body_of, properties_of
from eventflow_consumer.lanes import LaneWorker
from eventflow_consumer.ports import ChannelLost, Inbound
from eventflow_consumer.session_state import UnknownStateFormat
from eventflow_consumer.sessions import BATCH, LetGo, SessionFailed, SessionWorker
from eventflow_contracts.lanes import parse_lane

LOG = structlog.get_logger("eventflow_consumer.sessions")
PEEK_PAGE = 100
FAILED_SESSION_PAUSE_SECONDS = 1.0
UNREADY_AFTER_FAILED_OPENS = 3  # receivers that did not open in time, in a row: unready
RENEW_TIMEOUT_SECONDS = 10.0
# Room within a next-session accept for the connection, the CBS handshake and the link: the SDK
# polls each handshake step every 0.05 s, about 0.5 s in all (docs/performance.md).
ACCEPT_MARGIN_SECONDS = 1.0


def delivery_of(message: Any) -> Delivery:
    return Delivery(
        body=body_of(message.body), message_id=str(message.message_id), session_id=str(message.session_id),
        sequence_number=int(message.sequence_number), delivery_count=int(message.delivery_count or 0),
        properties=properties_of(message.application_properties),
    )  # fmt: skip


def inbound_of(message: Any) -> Inbound:
    return Inbound(delivery_of(message), message)


class Turns:
    """Calls on one receiver, one at a time, in arrival order, except that an urgent call (the lock
    renewal) goes before every waiting ordinary one: a held lane queues the settlements of many
    orders at once, and a renewal behind them would come after the lock it is meant to keep."""

    def __init__(self) -> None:
        self._busy = False
        self._urgent: deque[asyncio.Future[None]] = deque()
        self._ordinary: deque[asyncio.Future[None]] = deque()

    @contextlib.asynccontextmanager
    async def turn(self, *, urgent: bool = False) -> AsyncIterator[None]:
        if self._busy:
            waiters = self._urgent if urgent else self._ordinary
            granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            waiters.append(granted)
            try:
                await granted
            except BaseException:
                if granted.done() and not granted.cancelled():
                    self._next()  # handed the turn, then cancelled: hand it on
                else:
                    with contextlib.suppress(ValueError):
                        waiters.remove(granted)
                raise
        else:
            self._busy = True
        try:
            yield
        finally:
            self._next()

    def _next(self) -> None:
        for waiters in (self._urgent, self._ordinary):
            while waiters:
                granted = waiters.popleft()
                if not granted.done():
                    granted.set_result(None)  # the turn passes on: still busy
                    return
        self._busy = False


class ServiceBusSessionChannel:
    """A session receiver (already accepted) as a SessionChannel. Lock losses become ChannelLost;
    other Service Bus errors pass through to the pump."""

    def __init__(self, receiver: Any, first: list[Any] | None = None) -> None:
        self._receiver = receiver
        self._first = first or []  # received with the accept; served by the first receive()
        # The SDK's receivers are not coroutine-safe, and the lock renewal runs beside the worker:
        # every call on the receiver takes its turn; the renewal's goes first.
        self._turns = Turns()

    @property
    def session_id(self) -> str:
        return str(self._receiver.session.session_id)

    async def _call(self, operation: Any, *args: Any, urgent: bool = False, **kwargs: Any) -> Any:
        try:
            async with self._turns.turn(urgent=urgent):
                return await operation(*args, **kwargs)
        except (SessionLockLostError, MessageLockLostError) as error:
            raise ChannelLost(repr(error)) from error

    async def get_state(self) -> bytes | None:
        state: bytes | None = await self._call(self._receiver.session.get_state)
        return state

    async def set_state(self, state: bytes) -> None:
        await self._call(self._receiver.session.set_state, state)

    async def renew_lock(self) -> None:
        # Bounded: a renewal holds the receiver's turn, and settlements queue behind it; the SDK's
        # default would wait up to the broker's 60 s, past the lock it is meant to keep.
        await self._call(
            self._receiver.session.renew_lock, timeout=RENEW_TIMEOUT_SECONDS, urgent=True
        )

    async def receive(self, max_count: int, wait: float) -> list[Inbound]:
        if self._first:
            first, self._first = self._first, []
            return [inbound_of(m) for m in first]
        # The SDK rejects max_wait_time <= 0; a short wait is the closest to "what is there now".
        messages = await self._call(
            self._receiver.receive_messages,
            max_message_count=max_count,
            max_wait_time=max(wait, 0.05),
        )
        return [inbound_of(m) for m in messages]

    async def receive_deferred(self, sequence_number: int) -> Inbound | None:
        try:
            (message,) = await self._call(
                self._receiver.receive_deferred_messages, [sequence_number]
            )
        except MessageNotFoundError:
            return None
        return inbound_of(message)

    async def deferred_present(self, sequence_numbers: list[int]) -> set[int]:
        """Peeks the session from the lowest recorded number on (peek neither locks nor counts)."""
        wanted, present = set(sequence_numbers), set()
        start, last = min(wanted), max(wanted)
        while start <= last:
            page = await self._call(
                self._receiver.peek_messages, max_message_count=PEEK_PAGE, sequence_number=start
            )
            if not page:
                break
            for message in page:
                if (
                    message.sequence_number in wanted
                    and message.state == ServiceBusMessageState.DEFERRED
                ):
                    present.add(int(message.sequence_number))
            start = int(page[-1].sequence_number) + 1
        return present

    async def complete(self, inbound: Inbound) -> None:
        await self._call(self._receiver.complete_message, inbound.handle)

    async def abandon(self, inbound: Inbound) -> None:
        await self._call(self._receiver.abandon_message, inbound.handle)

    async def defer(self, inbound: Inbound) -> None:
        await self._call(self._receiver.defer_message, inbound.handle)

    async def dead_letter(self, inbound: Inbound, reason: str, description: str) -> None:
        await self._call(
            self._receiver.dead_letter_message,
            inbound.handle,
            reason=reason,
            error_description=description,
        )


class LaneOffer(Protocol):
    """The lane holder, as the session pump sees it (adapters/servicebus_lanes.py)."""

    pause_seconds: float  # how long the pump accepts nothing after letting a lane go

    def is_lane(self, session_id: str) -> bool: ...

    def offer(self, session_id: str, receiver: Any, first: list[Any]) -> bool: ...


class QuietEmptyAcceptCleanup(logging.Filter):
    """Keeps one SDK warning out of the logs: whenever a bounded next-session accept ends without a
    session, the SDK's cleanup close (which awaits its keep-alive loop's 1 s sleep) outlives what is
    left of the budget, and the SDK logs "Handler cleanup did not complete" with a traceback, once
    per empty accept, i.e. every few seconds while the queue is empty. The pump closes that receiver
    again in the background (and logs if that fails) and counts empty accepts, so the warning says
    nothing. Only that message with a timeout is dropped; any other cleanup failure still shows."""

    LOGGER = "azure.servicebus.aio._async_utils"

    def filter(self, record: logging.LogRecord) -> bool:
        timed_out = record.exc_info is not None and isinstance(record.exc_info[1], TimeoutError)
        return not (
            timed_out and record.getMessage().startswith("Handler cleanup did not complete")
        )

    @classmethod
    def install(cls) -> None:
        logger = logging.getLogger(cls.LOGGER)
        if not any(isinstance(f, cls) for f in logger.filters):
            logger.addFilter(cls())


def _link_never_opened(error: OperationTimeoutError) -> bool:
    """The SDK's own deadline ran out before the receiver's link was up (its messages: "Timed out
    waiting for the AMQP link to open.", "No time left for the operation after acquiring the AMQP
    link."), as against the broker answering that no session is available."""
    text = str(error)
    return "AMQP link" in text


class SessionPump:
    """Up to `concurrency` sessions held at once, each by one slot, with every free slot accepting
    the next session while the others handle theirs.

    - Accept and first receive are one call: a NEXT_AVAILABLE_SESSION receiver that is not opened
      yet accepts on its first `receive_messages`, bounded as a whole by `accept_wait_seconds` (the
      SDK retries the accept only within that budget, so an empty queue costs one bounded attempt,
      not its ~13 s retry loop), while settlement on the same receiver keeps the client's retries.
    - A drained session is released at once (see SessionWorker.drain), and its receiver is closed
      in the background: the SDK's close waits for its keep-alive loop, which sleeps 1 s at a
      time, and the session's lock is already released by then. At most `2 * concurrency`
      receivers (one connection each: the SDK shares no connection) are open or closing at once.
    - While no session is available one slot keeps looking and the others wait; each session
      accepted wakes two more slots, so the slots ramp up with the load instead of every idle slot
      paying a connection and a link per `accept_wait_seconds`.

    - With `lane_worker`, a lane of another lane count (sessions `lanes<M>-<n>` left by a change of
      the count, or filled by subscribers that use another count) is held by the lane worker, per
      order as this consumer's own lanes are, until it is drained and no order in it is blocked.

    A failure in one session is logged and that session released; the other slots go on."""

    def __init__(
        self,
        client: Any,
        queue: str,
        worker: SessionWorker,
        *,
        concurrency: int,
        idle_seconds: float,
        renew_seconds: float,
        accept_wait_seconds: float = 3.0,
        lanes: LaneOffer | None = None,
        seen: Callable[[str], Coroutine[Any, Any, None]] | None = None,
        lane_worker: LaneWorker | None = None,
    ) -> None:
        self._client = client
        self._lanes = lanes
        self._seen = seen  # told of every session held (the generation barrier notes lane counts)
        self._lane_worker = lane_worker  # for lanes of another lane count, until drained
        self._lanes_paused_until = 0.0
        self._queue = queue
        self._worker = worker
        self._concurrency = concurrency
        self._idle = idle_seconds
        self._renew = renew_seconds
        self._accept_wait = accept_wait_seconds
        self._stopping = asyncio.Event()
        self._receivers = asyncio.Semaphore(2 * concurrency)
        self._closing: set[asyncio.Task[None]] = set()
        self._looking = False
        self._waiting: list[asyncio.Future[None]] = []
        self.active_sessions = 0
        self.accepting = 0
        self.accepts = 0
        self.empty_accepts = 0
        self.failed_opens_in_a_row = 0

    @property
    def connected(self) -> bool:
        """False once receivers have failed to open several times in a row (unready)."""
        return self.failed_opens_in_a_row < UNREADY_AFTER_FAILED_OPENS

    async def run(self) -> None:
        QuietEmptyAcceptCleanup.install()
        try:
            await asyncio.gather(*(self._loop(n) for n in range(self._concurrency)))
        finally:
            if self._closing:
                await asyncio.gather(*self._closing)

    def stop(self) -> None:
        """Accept no new session; each slot finishes its in-flight message and releases."""
        self._stopping.set()
        self._wake(len(self._waiting))

    async def _loop(self, slot: int) -> None:
        found = True
        while not self._stopping.is_set():
            paused = self._lanes_paused_until - time.monotonic()
            if paused > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), paused)
                continue
            looking = not found  # this slot found nothing last time: look only if no one else does
            if looking and self._looking:
                await self._until_woken()
                found = True  # woken by an accepted session: accept beside it (or stopping)
                continue
            self._looking = self._looking or looking
            try:
                accepted = await self._accept(slot)
            finally:
                if looking:
                    self._looking = False
            found = accepted is not None
            if accepted is None:
                continue
            receiver, first = accepted
            if self._lanes is not None and self._lanes.is_lane(str(receiver.session.session_id)):
                await self._offer(receiver, first)
                continue
            self._wake(2)
            if self._seen is not None:  # beside the session's handling: it may take a store call
                self._background(self._seen(str(receiver.session.session_id)))
            if not await self._hold(receiver, first):
                await self._pause()

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _offer(self, receiver: Any, first: list[Any]) -> None:
        """A lane of this consumer's lane count, taken as the next available session (unheld for a
        moment: handed over between replicas, or its holder gone): to the lane holder if this
        replica's share wants it; otherwise let go at once (closing costs no delivery), so that the
        replica whose share it is gets it, and this slot pauses."""
        assert self._lanes is not None
        if self._lanes.offer(str(receiver.session.session_id), receiver, first):
            self._receivers.release()  # the holder closes it
            self._wake(2)  # lanes are let go together (a rebalance): more may come
            return
        self._close_later(receiver)
        # The broker hands a free session to a waiting next-available accept at once, and every
        # replica's pump waits in one: all of them step back for a while, or they would take the
        # lane from each other faster than its owner's accept by id comes.
        self._lanes_paused_until = time.monotonic() + self._lanes.pause_seconds
        await self._pause()

    async def _until_woken(self) -> None:
        woken = asyncio.get_running_loop().create_future()
        self._waiting.append(woken)
        await woken

    def _wake(self, count: int) -> None:
        while count > 0 and self._waiting:
            woken = self._waiting.pop(0)
            if not woken.done():
                woken.set_result(None)
                count -= 1

    async def _accept(self, slot: int) -> tuple[Any, list[Any]] | None:
        """The next session's receiver and its first messages, or None when none came in time
        (or accepting failed: then after a pause)."""
        await self._receivers.acquire()
        try:
            # The broker's wait for a session ends a margin before the whole call's budget, so an
            # empty queue is answered by the broker's own timeout (an OperationTimeoutError)
            # rather than by the SDK's deadline cutting its link open short.
            receiver = self._client.get_queue_receiver(
                self._queue, session_id=NEXT_AVAILABLE_SESSION,
                max_wait_time=self._accept_wait - ACCEPT_MARGIN_SECONDS,
            )  # fmt: skip
        except BaseException:
            self._receivers.release()
            raise
        self.accepting += 1
        first: list[Any] | None
        try:
            first = await receiver.receive_messages(
                max_message_count=BATCH, max_wait_time=self._accept_wait
            )
        except OperationTimeoutError as error:
            self._close_later(receiver)
            if not _link_never_opened(error):
                self.empty_accepts += 1
                self.failed_opens_in_a_row = 0
                return None  # the broker's answer: no session with messages right now
            # The SDK's own deadline: the connection, its token or the link did not come up in
            # the accept's budget (network, TLS, identity). Not an idle queue: said, and counted.
            self.failed_opens_in_a_row += 1
            LOG.warning("could not open a session receiver in time; retrying", slot=slot,
                        in_a_row=self.failed_opens_in_a_row, error=str(error))  # fmt: skip
            first = None
        except Exception as error:  # noqa: BLE001 - any failure to accept: retry after a pause
            LOG.warning("could not accept a session; retrying", slot=slot, error=repr(error))
            self._close_later(receiver)
            first = None
        finally:
            self.accepting -= 1
        if first is None:
            await self._pause()
            return None
        self.accepts += 1
        self.failed_opens_in_a_row = 0
        return receiver, first

    def _close_later(self, receiver: Any) -> None:
        closing = asyncio.create_task(self._close(receiver))
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)

    async def _close(self, receiver: Any) -> None:
        try:
            await receiver.close()
        except Exception as error:  # noqa: BLE001 - the lock expires on its own
            LOG.warning("closing a session receiver failed", error=repr(error))
        finally:
            self._receivers.release()

    async def _hold(self, receiver: Any, first: list[Any]) -> bool:
        """Drain one accepted session and release it; False when it failed."""
        channel = ServiceBusSessionChannel(receiver, first)
        log = LOG.bind(session=channel.session_id)
        self.active_sessions += 1
        renewing = asyncio.create_task(self._keep_locked(channel))
        healthy = False
        try:
            if self._lane_worker is not None and parse_lane(channel.session_id) is not None:
                await self._lane_worker.hold(channel, stopping=self._stopping.is_set, drain=True)
            else:
                await self._worker.drain(
                    channel, idle_seconds=self._idle, stopping=self._stopping.is_set
                )
            healthy = True
        except ChannelLost as error:
            log.warning("session lock lost; its messages return to the queue", error=str(error))
        except LetGo as error:
            healthy = True
            log.warning(
                "stopping during a store outage: session released unsettled", error=str(error)
            )
        except UnknownStateFormat as error:
            log.error("session state in a format this consumer does not read; left to a newer replica",
                      error=str(error))  # fmt: skip
        except SessionFailed as error:
            log.error("session failed; released after abandoning its message", error=str(error))
        except ServiceBusError as error:
            log.warning("Service Bus failed; session released", error=repr(error))
        except Exception:
            log.exception("session failed unexpectedly; released")
        finally:
            renewing.cancel()
            try:
                await renewing
            except asyncio.CancelledError:
                pass
            except Exception:  # the renewal's own failure must not skip the release
                log.exception("session lock renewal failed unexpectedly")
            finally:
                self.active_sessions -= 1
                self._close_later(receiver)
        return healthy

    async def _pause(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), FAILED_SESSION_PAUSE_SECONDS)

    async def _keep_locked(self, channel: ServiceBusSessionChannel) -> None:
        await keep_locked(channel, self._renew)


async def keep_locked(channel: ServiceBusSessionChannel, period: float) -> None:
    """Renews the session lock (which also holds its messages' locks) every `period` seconds while
    the session is held, including while the worker waits out a store outage. Returns when the
    lock is lost; a failed renewal (a broker blip) is tried again at the next period."""
    while True:
        await asyncio.sleep(period)
        try:
            await channel.renew_lock()
        except ChannelLost as error:
            LOG.warning("session lock lost", session=channel.session_id, error=str(error))
            return
        except ServiceBusError as error:
            LOG.warning(
                "session lock renewal failed", session=channel.session_id, error=repr(error)
            )
