"""The Service Bus side: session receivers in peek-lock, settlement, session state and lock renewal.
Works with the SDK's aio ServiceBusClient and with the local stand-in."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any, Literal, Protocol

import structlog
from azure.servicebus import NEXT_AVAILABLE_SESSION
from azure.servicebus.exceptions import (
    MessageLockLostError,
    OperationTimeoutError,
    ServiceBusError,
    SessionLockLostError,
)

from eventflow_consumer.handling import (
    Decision,
    Delivery,
    InboxHandler,
    SessionState,
    body_of,
    properties_of,
)

LOG = structlog.get_logger("eventflow_consumer.sessions")
PoisonPolicy = Literal["skip", "block"]


class BlockedSessions(Protocol):
    async def set_blocked(self, session_id: str, reason: str) -> None: ...

    async def clear_blocked(self, session_id: str) -> None: ...


class ConsumerObserver:
    def settled(self, decision: Decision, seconds: float) -> None: ...

    def deferred(self) -> None: ...


def delivery_of(message: Any) -> Delivery:
    return Delivery(
        body=body_of(message.body), message_id=str(message.message_id), session_id=str(message.session_id),
        sequence_number=int(message.sequence_number), delivery_count=int(message.delivery_count or 0),
        properties=properties_of(message.application_properties),
    )  # fmt: skip


class SessionWorker:
    """Handles the messages of one held session, strictly in order, and settles each."""

    def __init__(
        self,
        handler: InboxHandler,
        blocked: BlockedSessions,
        *,
        policy: PoisonPolicy,
        observer: ConsumerObserver | None = None,
    ) -> None:
        self._handler = handler
        self._blocked = blocked
        self._policy = policy
        self._observer = observer or ConsumerObserver()

    async def one(self, receiver: Any, message: Any, state: SessionState) -> None:
        """Handle and settle `message`; state changes are saved before the message is settled."""
        delivery = delivery_of(message)
        log = LOG.bind(
            session=delivery.session_id,
            message_id=delivery.message_id,
            sequence_number=delivery.sequence_number,
        )
        if state.blocked and not delivery.is_marker:
            await receiver.defer_message(message)
            state.deferred.append(delivery.sequence_number)
            await receiver.session.set_state(state.to_bytes())
            self._observer.deferred()
            log.info("session blocked: message deferred", reason=state.reason)
            return
        started = time.perf_counter()
        decision = await self._handler.handle(delivery, state)
        if decision.action == "complete":
            if decision.sequence is not None and decision.sequence > state.last_sequence:
                state.last_sequence = decision.sequence
                await receiver.session.set_state(state.to_bytes())
            await receiver.complete_message(message)
        elif decision.action == "dead_letter":
            if decision.poison and self._policy == "block" and not delivery.is_marker:
                state.blocked, state.reason = (
                    True,
                    f"{decision.reason}: {decision.description}"[:500],
                )
                await receiver.session.set_state(state.to_bytes())
                await self._blocked.set_blocked(delivery.session_id, state.reason)
                log.warning("session blocked by a poison message", reason=decision.reason)
            await receiver.dead_letter_message(
                message,
                reason=decision.reason,
                error_description=(decision.description or "")[:1000],
            )
            log.warning("dead-lettered", reason=decision.reason, description=decision.description)
        else:
            await receiver.abandon_message(message)
            log.warning(
                "abandoned after transient failures",
                description=decision.description,
                delivery_count=delivery.delivery_count,
            )
        if decision.effect:
            log.info("applied", sequence=decision.sequence)
        self._observer.settled(decision, time.perf_counter() - started)

    async def replay_deferred(self, receiver: Any, state: SessionState) -> None:
        """After an unblock: the deferred messages, in the order they arrived, then on as usual."""
        while state.deferred and not state.blocked:
            sequence_number = state.deferred.pop(0)
            (message,) = await receiver.receive_deferred_messages([sequence_number])
            await receiver.session.set_state(state.to_bytes())
            await self.one(receiver, message, state)

    async def drain(
        self, receiver: Any, *, idle_seconds: float, stopping: Callable[[], bool]
    ) -> None:
        """Handle the held session until it stays empty for `idle_seconds` or the worker stops."""
        state = SessionState.from_bytes(await receiver.session.get_state())
        if not state.blocked and state.deferred:
            await self.replay_deferred(receiver, state)
        while not stopping():
            messages = await receiver.receive_messages(
                max_message_count=20, max_wait_time=idle_seconds
            )
            if not messages:
                return
            for message in messages:
                await self.one(receiver, message, state)


class SessionPump:
    """Up to `concurrency` sessions at once, each held by one loop until it goes idle."""

    def __init__(
        self,
        client: Any,
        queue: str,
        worker: SessionWorker,
        *,
        concurrency: int,
        idle_seconds: float,
        renew_seconds: float,
    ) -> None:
        self._client = client
        self._queue = queue
        self._worker = worker
        self._concurrency = concurrency
        self._idle = idle_seconds
        self._renew = renew_seconds
        self._stopping = asyncio.Event()
        self.active_sessions = 0

    async def run(self) -> None:
        await asyncio.gather(*(self._loop(n) for n in range(self._concurrency)))

    def stop(self) -> None:
        """Accept no new session; each loop finishes its in-flight message and closes."""
        self._stopping.set()

    async def _loop(self, slot: int) -> None:
        while not self._stopping.is_set():
            receiver = self._client.get_queue_receiver(
                self._queue, session_id=NEXT_AVAILABLE_SESSION, max_wait_time=self._idle
            )
            try:
                await receiver.__aenter__()
            except OperationTimeoutError:
                continue  # no session with messages right now
            except ServiceBusError as error:
                LOG.warning("could not accept a session; retrying", slot=slot, error=repr(error))
                await asyncio.sleep(1.0)
                continue
            self.active_sessions += 1
            renewing = asyncio.create_task(self._keep_locked(receiver))
            try:
                await self._worker.drain(
                    receiver, idle_seconds=self._idle, stopping=self._stopping.is_set
                )
            except (SessionLockLostError, MessageLockLostError) as error:
                LOG.warning(
                    "session lock lost; its messages return to the queue", error=repr(error)
                )
            except ServiceBusError as error:
                LOG.warning("session failed; released", error=repr(error))
            finally:
                renewing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await renewing
                self.active_sessions -= 1
                with contextlib.suppress(ServiceBusError):
                    await receiver.close()

    async def _keep_locked(self, receiver: Any) -> None:
        while True:
            await asyncio.sleep(self._renew)
            try:
                await receiver.session.renew_lock()
            except ServiceBusError as error:
                LOG.warning("session lock renewal failed", error=repr(error))
                return
