"""The session worker: handles the messages of one held session strictly in order and settles each
one explicitly. Pure: it talks to the broker through the SessionChannel port only.

What it guarantees:
- A store outage never spends a delivery: the message stays locked (the pump keeps renewing the
  session lock) and is retried with capped backoff for as long as the outage lasts; the worker is
  unready meanwhile. If the worker is told to stop during the outage, it lets the session go
  without settling (LetGo), which costs no delivery either.
- Only a failure that belongs to the message is settled against it: dead-letter with a reason, and
  under the block policy the session is blocked. An unexpected error is settled by an explicit
  abandon (the broker counts it) before the session is let go (SessionFailed).
- An early event (an event before it has not been applied) waits, locked, while the session is held,
  for its predecessor or for `gap_wait` seconds; then the policy applies: skip records the missing
  sequences as skipped in the projection and goes on; block blocks the session.
- Blocking and deferring are crash-safe: the blocked record is written first and repaired on
  accept; a deferred message is recorded in the session state before it is deferred and forgotten
  only after it is settled; on accept, recorded messages that no longer exist are dropped.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal, TypeVar

import structlog

from eventflow_consumer.handling import Decision, InboxHandler
from eventflow_consumer.ports import (
    BlockedSessions,
    ConcurrentWriteError,
    Inbound,
    SessionChannel,
    TransientStoreError,
)
from eventflow_consumer.session_state import SessionState

LOG = structlog.get_logger("eventflow_consumer.sessions")
PoisonPolicy = Literal["skip", "block"]
T = TypeVar("T")
BATCH = 20


class LetGo(Exception):
    """The worker is stopping while the store is unavailable: release the session unsettled."""


class SessionFailed(Exception):
    """An unexpected error while handling a message; the message was abandoned explicitly."""


class NotBlocked(Exception):
    """An unblock of a session that is not blocked and holds no deferred messages."""


class ConsumerObserver:
    """Metrics hooks; the default does nothing."""

    def settled(self, decision: Decision, seconds: float) -> None: ...

    def deferred(self) -> None: ...

    def waited(self) -> None: ...

    def blocked(self) -> None: ...

    def abandoned(self) -> None: ...

    def store_unavailable(self) -> None: ...

    def store_available(self, outage_seconds: float) -> None: ...


class StoreHealth:
    """Whether the store answers, as seen by every session of this process: unready while any
    store call fails, ready again on the first one that succeeds."""

    def __init__(
        self, observer: ConsumerObserver, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._observer = observer
        self._clock = clock
        self.unavailable_since: float | None = None

    @property
    def available(self) -> bool:
        return self.unavailable_since is None

    def failed(self, error: TransientStoreError) -> None:
        if self.unavailable_since is None:
            self.unavailable_since = self._clock()
            LOG.error(
                "store unavailable: holding messages and retrying; not ready", error=str(error)
            )
        self._observer.store_unavailable()

    def succeeded(self) -> None:
        if self.unavailable_since is not None:
            lasted = self._clock() - self.unavailable_since
            self.unavailable_since = None
            LOG.warning("store available again; ready", outage_seconds=round(lasted, 3))
            self._observer.store_available(lasted)


@dataclass(frozen=True)
class WorkerSettings:
    policy: PoisonPolicy = "skip"
    gap_wait_seconds: float = 30.0
    retry_initial_seconds: float = 0.1
    retry_max_seconds: float = 5.0
    max_deferred: int = 1000
    max_waiting: int = 200


@dataclass
class _Held:
    """One held session: its state and the early messages waiting, locked, for their predecessor."""

    channel: SessionChannel
    state: SessionState
    waiting: list[Inbound] = field(default_factory=list)
    waiting_until: float | None = None
    since: dict[int, float] = field(default_factory=dict)  # broker sequence number → wait started


def _order(inbound: Inbound, known: dict[int, int]) -> tuple[int, int]:
    delivery = inbound.delivery
    sequence = known.get(delivery.sequence_number, delivery.event_sequence)
    return (sequence if sequence is not None else -1, delivery.sequence_number)


class SessionWorker:
    def __init__(
        self,
        handler: InboxHandler,
        blocked: BlockedSessions,
        settings: WorkerSettings | None = None,
        *,
        observer: ConsumerObserver | None = None,
        health: StoreHealth | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._handler = handler
        self._blocked = blocked
        self._settings = settings or WorkerSettings()
        self._observer = observer or ConsumerObserver()
        self.health = health or StoreHealth(self._observer, clock)
        self._clock = clock

    @property
    def policy(self) -> PoisonPolicy:
        return self._settings.policy

    # -- the held session ------------------------------------------------------------------------

    async def drain(
        self, channel: SessionChannel, *, idle_seconds: float, stopping: Callable[[], bool]
    ) -> None:
        """Handle the held session until it is drained, or the worker stops: drained is a receive
        that brings fewer than a full batch (the broker had no more for it; an empty one waits
        `idle_seconds`) while no early message waits for its predecessor. The session is then
        released at once rather than held idle: an event of the same order that arrives a moment
        later costs a new session accept (by any replica) instead of holding this slot from other
        orders. Raises LetGo, SessionFailed, ChannelLost, UnknownStateFormat and the channel's
        broker errors; the caller releases the session."""
        held = await self.open(channel, stopping)
        # The first batch is handled even when the worker is stopping: the pump receives it with
        # the accept, so it is already delivered to this replica.
        first = True
        while first or not stopping():
            first = False
            wait = idle_seconds
            if held.waiting_until is not None:
                wait = max(0.0, min(wait, held.waiting_until - self._clock()))
            batch = await channel.receive(BATCH, wait)
            for inbound in batch:
                await self.one(held, inbound, stopping)
            if held.waiting_until is not None and self._clock() >= held.waiting_until:
                await self._gap_expired(held, stopping)
            if len(batch) < BATCH and not held.waiting:
                return
        if held.waiting:
            LOG.info("stopping: early messages let go unsettled", session=channel.session_id,
                     waiting=[i.delivery.sequence_number for i in held.waiting])  # fmt: skip

    async def open(self, channel: SessionChannel, stopping: Callable[[], bool]) -> _Held:
        """Read the state and reconcile it: repair the blocked record of a blocked session, drop
        recorded deferrals that no longer exist, and replay the deferred messages of a session that
        is no longer blocked (an unblock that did not finish, or an earlier replica's state)."""
        held = _Held(channel, SessionState.from_bytes(await channel.get_state()))
        state = held.state
        if state.blocked:
            reason = state.reason or "blocked"
            await self._through_outage(
                lambda: self._blocked.set_blocked(channel.session_id, reason), stopping
            )
            if state.deferred:
                gone = set(state.deferred) - await channel.deferred_present(list(state.deferred))
                await self._drop(held, gone)
        elif state.deferred:
            await self.replay(held, stopping)
        return held

    async def _drop(self, held: _Held, gone: set[int]) -> None:
        if not gone:
            return
        LOG.warning("recorded deferred messages no longer exist; dropped from the session state",
                    session=held.channel.session_id, sequence_numbers=sorted(gone))  # fmt: skip
        held.state.forget(gone)
        await held.channel.set_state(held.state.to_bytes())

    async def replay(self, held: _Held, stopping: Callable[[], bool]) -> None:
        """The deferred messages in event-sequence order (not arrival order). Gaps left by messages
        that never came are accepted: the operator unblocked the session. Each is forgotten only
        after it is settled; if the session blocks again, the rest are deferred again."""
        state, channel = held.state, held.channel
        found: list[Inbound] = []
        gone: set[int] = set()
        for number in list(state.deferred):
            inbound = await channel.receive_deferred(number)
            if inbound is None:
                gone.add(number)
            else:
                found.append(inbound)
        await self._drop(held, gone)
        found.sort(key=lambda i: _order(i, state.events))
        for inbound in found:
            if state.blocked:
                await channel.defer(inbound)  # still recorded
                continue
            decision = await self._decide(held, inbound, stopping, accept_gap=True)
            await self._settle(held, inbound, decision, stopping)
            state.forget({inbound.delivery.sequence_number})
            await channel.set_state(state.to_bytes())

    async def unblock(
        self, channel: SessionChannel, stopping: Callable[[], bool]
    ) -> tuple[list[int], SessionState]:
        """Unblock the held session and replay its deferred messages in event-sequence order under
        this worker's policy; the blocked record is cleared last, and only if the replay did not
        block the session again. Returns the replayed sequence numbers and the final state.
        Raises NotBlocked."""
        state = SessionState.from_bytes(await channel.get_state())
        if not state.blocked and not state.deferred:
            raise NotBlocked(channel.session_id)
        replaying = list(state.deferred)
        state.blocked, state.reason = False, None
        await channel.set_state(state.to_bytes())
        await self.replay(_Held(channel, state), stopping)
        if not state.blocked:
            await self._through_outage(
                lambda: self._blocked.clear_blocked(channel.session_id), stopping
            )
        return replaying, state

    async def one(self, held: _Held, inbound: Inbound, stopping: Callable[[], bool]) -> None:
        """Handle and settle one message (or keep it waiting for its predecessor)."""
        if held.state.blocked and not inbound.delivery.is_marker:
            await self._defer(held, inbound)
            return
        decision = await self._decide(held, inbound, stopping)
        await self._settle(held, inbound, decision, stopping)
        if decision.action != "wait" and held.waiting and not held.state.blocked:
            await self._release_waiting(held, stopping)

    # -- decisions and settlement ------------------------------------------------------------

    async def _decide(
        self,
        held: _Held,
        inbound: Inbound,
        stopping: Callable[[], bool],
        *,
        accept_gap: bool = False,
    ) -> Decision:
        started = time.perf_counter()
        try:
            decision = await self._through_outage(
                lambda: self._handler.handle(
                    inbound.delivery, accept_gap=accept_gap, skip_poison=self.policy == "skip"
                ),
                stopping,
            )
        except LetGo:
            raise
        except Exception as error:
            LOG.exception(
                "handling failed unexpectedly; abandoned", message_id=inbound.delivery.message_id
            )
            await held.channel.abandon(inbound)
            self._observer.abandoned()
            raise SessionFailed(repr(error)) from error
        self._observer.settled(decision, time.perf_counter() - started)
        return decision

    async def _settle(
        self, held: _Held, inbound: Inbound, decision: Decision, stopping: Callable[[], bool]
    ) -> None:
        delivery, channel = inbound.delivery, held.channel
        log = LOG.bind(session=delivery.session_id, message_id=delivery.message_id,
                       sequence_number=delivery.sequence_number, sequence=decision.sequence)  # fmt: skip
        if decision.action == "complete":
            await channel.complete(inbound)
            if decision.effect:
                log.info("applied")
            return
        if decision.action == "wait":
            self._wait(held, inbound)
            log.info(
                "early: waiting for the events before it",
                gap_wait_seconds=self._settings.gap_wait_seconds,
            )
            if len(held.waiting) > self._settings.max_waiting:
                await self._gap_expired(held, stopping, every=True)
            return
        reason = decision.reason or "unknown"
        description = (decision.description or "")[:1000]
        if decision.poison and self.policy == "block" and not delivery.is_marker:
            await self._block(held, f"{reason}: {description}"[:500], stopping)
        await channel.dead_letter(inbound, reason, description)
        log.warning("dead-lettered", reason=reason, description=description)

    def _wait(self, held: _Held, inbound: Inbound) -> None:
        held.waiting.append(inbound)
        held.waiting.sort(key=lambda i: _order(i, {}))
        held.since.setdefault(inbound.delivery.sequence_number, self._clock())
        self._next_deadline(held)
        self._observer.waited()

    async def _release_waiting(self, held: _Held, stopping: Callable[[], bool]) -> None:
        """Waiting messages whose predecessor has now been applied, lowest sequence first."""
        while held.waiting and not held.state.blocked:
            first = held.waiting.pop(0)
            decision = await self._decide(held, first, stopping)
            if decision.action == "wait":
                held.waiting.insert(0, first)
                return
            await self._settle(held, first, decision, stopping)
        self._next_deadline(held)

    def _next_deadline(self, held: _Held) -> None:
        """When the longest-waiting message's wait ends. Each message waits its own
        `gap_wait_seconds`: a session may carry many orders (a lane), and one order's early event
        must not cut short the wait of another's that came later."""
        waiting = {i.delivery.sequence_number for i in held.waiting}
        held.since = {n: t for n, t in held.since.items() if n in waiting}
        started = min(held.since.values(), default=None)
        held.waiting_until = None if started is None else started + self._settings.gap_wait_seconds

    async def _gap_expired(
        self, held: _Held, stopping: Callable[[], bool], *, every: bool = False
    ) -> None:
        """The predecessors did not come in time: skip applies the waiting events whose wait is over
        (or `every` one: too many wait) over the gap (the projection records the missing sequences
        as skipped); block blocks the session."""
        if self.policy == "block" or every:
            waiting, held.waiting = held.waiting, []
        else:
            over = self._clock() - self._settings.gap_wait_seconds

            def expired(i: Inbound) -> bool:
                return held.since.get(i.delivery.sequence_number, over) <= over

            waiting = [i for i in held.waiting if expired(i)]
            held.waiting = [i for i in held.waiting if not expired(i)]
        self._next_deadline(held)
        if not waiting:
            return
        first = waiting[0].delivery
        LOG.warning("events missing after the wait; the policy applies", session=first.session_id,
                    policy=self.policy, first_waiting=first.event_sequence)  # fmt: skip
        if self.policy == "block" and not held.state.blocked:
            description = f"event {first.event_sequence} waited {self._settings.gap_wait_seconds}s for the events before it"
            await self._block(held, f"sequence-gap: {description}", stopping)
        for inbound in waiting:
            if held.state.blocked:
                await self._defer(held, inbound)
                continue
            decision = await self._decide(held, inbound, stopping, accept_gap=True)
            await self._settle(held, inbound, decision, stopping)

    async def _block(self, held: _Held, reason: str, stopping: Callable[[], bool]) -> None:
        """The blocked record first (the operator must see every block), then the session state."""
        session_id = held.channel.session_id
        await self._through_outage(lambda: self._blocked.set_blocked(session_id, reason), stopping)
        held.state.blocked, held.state.reason = True, reason
        await held.channel.set_state(held.state.to_bytes())
        self._observer.blocked()
        LOG.warning("session blocked", session=session_id, reason=reason)
        for inbound in held.waiting:
            await self._defer(held, inbound)
        held.waiting = []
        self._next_deadline(held)

    async def _defer(self, held: _Held, inbound: Inbound) -> None:
        """Recorded in the session state before it is deferred, so it can never be orphaned."""
        delivery, state = inbound.delivery, held.state
        if len(state.deferred) >= self._settings.max_deferred:
            description = (f"session {delivery.session_id} is blocked and already holds {len(state.deferred)} "
                           f"deferred messages (the limit); resubmit after unblocking")  # fmt: skip
            await held.channel.dead_letter(inbound, "deferral-limit", description)
            self._observer.settled(Decision("dead_letter", reason="deferral-limit"), 0.0)
            LOG.warning("dead-lettered", reason="deferral-limit", message_id=delivery.message_id)
            return
        state.record(delivery.sequence_number, delivery.event_sequence)
        await held.channel.set_state(state.to_bytes())
        await held.channel.defer(inbound)
        self._observer.deferred()
        LOG.info("session blocked: message deferred", session=delivery.session_id,
                 sequence_number=delivery.sequence_number, reason=state.reason)  # fmt: skip

    # -- the store's outages -------------------------------------------------------------------

    async def _through_outage(
        self, call: Callable[[], Awaitable[T]], stopping: Callable[[], bool]
    ) -> T:
        return await through_outage(call, stopping, self.health, self._settings)


async def through_outage(
    call: Callable[[], Awaitable[T]],
    stopping: Callable[[], bool],
    health: StoreHealth,
    settings: WorkerSettings,
) -> T:
    """`call()`, retried with capped, jittered backoff for as long as the store is unavailable (a
    concurrent write: at once). Raises LetGo when the worker stops meanwhile."""
    delay = settings.retry_initial_seconds
    while True:
        try:
            result = await call()
        except ConcurrentWriteError:
            await asyncio.sleep(random.uniform(0, settings.retry_initial_seconds))
            continue
        except TransientStoreError as error:
            health.failed(error)
            if stopping():
                raise LetGo(str(error)) from error
            pause = error.retry_after if error.retry_after is not None else delay
            await asyncio.sleep(min(pause, settings.retry_max_seconds) * random.uniform(0.5, 1.0))
            delay = min(delay * 2, settings.retry_max_seconds)
            continue
        health.succeeded()
        return result
