"""The Service Bus side of lanes: one long-lived session receiver per held lane, on azure-servicebus
7.15 aio.

Each lane (`lanes<N>-<n>`) has one task here that accepts the lane's session by id (prefetch on),
hands the receiver to the LaneWorker for as long as it holds it, and renews the session lock
beside it. Which lanes to hold is the plan (`plan`, from the fair share, eventflow_consumer.share):
a lane of the plan that another replica holds (the broker refuses the lock) is tried again every
`retry_seconds`; a held lane that leaves the plan is released at a message boundary (the messages
in handling are finished, the others let go unsettled). With no plan (no share configured, or the
membership unreadable) every lane not held is tried every `unplanned_retry_seconds`. Closing a
receiver releases the session without counting a delivery; a lost lock returns the lane's
unsettled messages to the queue (one delivery each), and the lane is accepted again at once.

ServiceBusSessionProbe is the generation barrier's look into another session (barrier.py): it
accepts the session by id, peeks its messages and closes the receiver without receiving (the SDK
gives the link one credit, so the broker may lock a message for the moment; the close releases
it, and a release counts no delivery).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import structlog
from azure.servicebus.exceptions import (
    OperationTimeoutError,
    ServiceBusError,
    SessionCannotBeLockedError,
)

from eventflow_consumer.adapters.servicebus_sessions import (
    PEEK_PAGE,
    ServiceBusSessionChannel,
    delivery_of,
    keep_locked,
)
from eventflow_consumer.lanes import RECEIVE_BATCH, LaneWorker
from eventflow_consumer.ports import ChannelLost
from eventflow_consumer.sessions import LetGo
from eventflow_contracts import ContractError, read_routing

LOG = structlog.get_logger("eventflow_consumer.lanes")
ACCEPT_WAIT_SECONDS = 5.0
PROBE_MAX_MESSAGES = 5000


class LaneHolder:
    """Holds the lanes named by `session_ids`, one receiver each, until stopped."""

    def __init__(
        self,
        client: Any,
        queue: str,
        worker: LaneWorker,
        session_ids: list[str],
        *,
        renew_seconds: float,
        retry_seconds: float = 5.0,
        unplanned_retry_seconds: float | None = None,
        prefetch: int = 2 * RECEIVE_BATCH,
        wanted: frozenset[str] | None = None,
    ) -> None:
        self._client = client
        self._queue = queue
        self._worker = worker
        self._session_ids = session_ids
        self._renew = renew_seconds
        self._retry = retry_seconds
        self._unplanned_retry = unplanned_retry_seconds or retry_seconds
        self._prefetch = prefetch
        self._stopping = asyncio.Event()
        self._wanted = wanted
        self._replanned = asyncio.Event()  # set (and replaced) when the plan changes
        self._releasing: dict[str, asyncio.Event] = {}  # per held lane: leave it
        self._offered: dict[str, tuple[Any, list[Any]]] = {}  # accepted by the session pump
        self._offers: dict[str, asyncio.Event] = {s: asyncio.Event() for s in session_ids}
        self.held: set[str] = set()
        self.failed_opens_in_a_row = 0
        self.pause_seconds = unplanned_retry_seconds or retry_seconds  # the pump's, see `offer`
        self.accepts = 0  # lane receivers opened (for tests and benchmarks)
        self.refusals = 0  # lane accepts refused: held elsewhere

    @property
    def lanes(self) -> list[str]:
        return list(self._session_ids)

    @property
    def worker(self) -> LaneWorker:
        return self._worker

    @property
    def settled(self) -> int:
        return self._worker.settled

    @property
    def connected(self) -> bool:
        return self.failed_opens_in_a_row < 3

    def stop(self) -> None:
        """Receive no more; each lane finishes the messages in handling and is released."""
        self._stopping.set()
        self._replanned.set()

    def plan(self, wanted: frozenset[str] | None) -> None:
        """Hold the lanes in `wanted` (None: every lane); a held lane not in it is released at a
        message boundary."""
        if wanted == self._wanted:
            return
        self._wanted = wanted
        for session_id, releasing in self._releasing.items():
            if not self._wants(session_id):
                releasing.set()
        self._replanned.set()
        self._replanned = asyncio.Event()

    def _wants(self, session_id: str) -> bool:
        return self._wanted is None or session_id in self._wanted

    def is_lane(self, session_id: str) -> bool:
        return session_id in self._offers

    def offer(self, session_id: str, receiver: Any, first: list[Any]) -> bool:
        """A receiver of one of these lanes that the session pump accepted (as the next available
        session, with its first messages): taken when this replica's plan wants the lane and it is
        not held here; False: the pump lets it go."""
        wanted = self.is_lane(session_id) and self._wants(session_id)
        if not wanted or self._stopping.is_set() or session_id in self.held:
            return False
        if session_id in self._offered:
            return False
        self._offered[session_id] = (receiver, first)
        self._offers[session_id].set()
        return True

    async def run(self) -> None:
        try:
            await asyncio.gather(*(self._lane(session_id) for session_id in self._session_ids))
        finally:
            for session_id in list(self._offered):
                await _close(self._offered.pop(session_id)[0])

    async def _lane(self, session_id: str) -> None:
        offers = self._offers[session_id]
        while not self._stopping.is_set():
            offers.clear()
            offered = self._offered.pop(session_id, None)
            if not self._wants(session_id):
                if offered is not None:
                    await _close(offered[0])
                await self._replanned.wait()
                continue
            first: list[Any] = []
            if offered is not None:
                (receiver, first), self.accepts = offered, self.accepts + 1
            else:
                receiver = await self._accept(session_id)
            if receiver is not None:
                await self._hold(session_id, receiver, first)
                if self._stopping.is_set() or not self._wants(session_id):
                    continue
            retry = self._retry if self._wanted is not None else self._unplanned_retry
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(_first_of(self._stopping, offers), retry)

    async def _accept(self, session_id: str) -> Any | None:
        """The lane's receiver, opened (its session locked), or None when another holds it."""
        receiver = self._client.get_queue_receiver(
            self._queue, session_id=session_id, prefetch_count=self._prefetch,
            max_wait_time=ACCEPT_WAIT_SECONDS,
        )  # fmt: skip
        try:
            await receiver.__aenter__()
        except (SessionCannotBeLockedError, OperationTimeoutError) as error:
            self.failed_opens_in_a_row = 0
            self.refusals += 1
            LOG.debug("lane held elsewhere", lane=session_id, error=type(error).__name__)
            await _close(receiver)
            return None
        except ServiceBusError as error:
            self.failed_opens_in_a_row += 1
            LOG.warning("could not open a lane's receiver; retrying", lane=session_id,
                        error=repr(error))  # fmt: skip
            await _close(receiver)
            return None
        self.failed_opens_in_a_row = 0
        self.accepts += 1
        return receiver

    async def _hold(self, session_id: str, receiver: Any, first: list[Any]) -> None:
        channel = ServiceBusSessionChannel(receiver, first)
        lost = asyncio.Event()
        log = LOG.bind(lane=session_id)

        async def renewing() -> None:
            await keep_locked(channel, self._renew)
            lost.set()

        renewal = asyncio.create_task(renewing())
        releasing = asyncio.Event()
        if not self._wants(session_id):
            releasing.set()  # the plan changed while the lane was being accepted
        self._releasing[session_id] = releasing
        self.held.add(session_id)
        log.info("lane held")
        try:
            await self._worker.hold(
                channel,
                stopping=lambda: self._stopping.is_set() or lost.is_set() or releasing.is_set(),
            )
            if lost.is_set():
                log.warning("lane lock lost; its unsettled messages return to the queue")
            elif releasing.is_set() and not self._stopping.is_set():
                log.info("lane released to another replica (fair share)")
        except ChannelLost as error:
            log.warning("lane lock lost; its unsettled messages return to the queue",
                        error=str(error))  # fmt: skip
        except LetGo as error:
            log.warning("stopping during a store outage: lane released unsettled", error=str(error))
        except ServiceBusError as error:
            log.warning("Service Bus failed; lane released", error=repr(error))
        except Exception:
            log.exception("lane failed unexpectedly; released")
        finally:
            self.held.discard(session_id)
            self._releasing.pop(session_id, None)
            renewal.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewal
            log.info("lane no longer held")
            await _close(receiver)


async def _first_of(*events: asyncio.Event) -> None:
    waits = [asyncio.create_task(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()


async def _close(receiver: Any) -> None:
    try:
        await receiver.close()
    except Exception as error:  # noqa: BLE001 - the lock expires on its own
        LOG.warning("closing a lane's receiver failed", error=repr(error))


class ServiceBusSessionProbe:
    """Looks into a session of the inbox for the generation barrier: the lowest event sequence of
    each order among its messages (active and deferred), or None when another receiver holds the
    session or it holds more than `max_messages` (then it is being drained, or too large to read:
    the barrier waits on either way)."""

    def __init__(self, client: Any, queue: str, *, max_messages: int = PROBE_MAX_MESSAGES) -> None:
        self._client = client
        self._queue = queue
        self._max = max_messages

    async def orders_in(self, session_id: str) -> dict[str, int] | None:
        receiver = self._client.get_queue_receiver(
            self._queue, session_id=session_id, prefetch_count=0, max_wait_time=ACCEPT_WAIT_SECONDS
        )
        try:
            await receiver.__aenter__()
        except (SessionCannotBeLockedError, OperationTimeoutError):
            await _close(receiver)
            return None
        except BaseException:
            await _close(receiver)
            raise
        try:
            return await self._read(receiver)
        finally:
            await _close(receiver)

    async def _read(self, receiver: Any) -> dict[str, int] | None:
        lowest: dict[str, int] = {}
        start, seen = 1, 0
        while True:
            page = await receiver.peek_messages(max_message_count=PEEK_PAGE, sequence_number=start)
            if not page:
                return lowest
            for message in page:
                delivery = delivery_of(message)
                if delivery.is_marker:
                    continue
                try:
                    routing = read_routing(delivery.body)
                except ContractError:
                    continue  # judged alone wherever it is: it holds no order back
                order_id = routing.partitionkey
                lowest[order_id] = min(lowest.get(order_id, routing.sequence), routing.sequence)
            seen += len(page)
            if seen >= self._max:
                return None
            start = int(page[-1].sequence_number) + 1
