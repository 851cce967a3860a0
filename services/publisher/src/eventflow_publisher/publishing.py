"""The processor's handler: the events of a change feed page → Event Hubs.

Documents that carry no event in the write pattern are ignored (`deriving`). Each order is mapped
to one hub partition by a stable hash of its id over the hub's partition ids (read once), the
page's events are grouped by partition in change feed order, and each partition gets one batch
(more only when one is full), all partitions at once.
So one order's events land on one partition in commit order, and a page of a busy range costs one
round trip per partition, not per order. The handler returns only when every event was accepted
by the hub (or recorded as poison), and the processor checkpoints only then.

Partitions added to the hub later remap orders: while the events an order had on its old
partition are still unread, its new events can overtake them on the new one. Add partitions only
with the flow drained (or accept that window); see the README.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
import structlog

from eventflow_contracts import ContractError, read_routing
from eventflow_publisher.changefeed import LeaseContext, LeaseLostError
from eventflow_publisher.changefeed.processor import backoff
from eventflow_publisher.deriving import OUTBOX, EventSource

LOG = structlog.get_logger("eventflow_publisher.publishing")


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One event to publish: its CloudEvent bytes and the properties routers read."""

    body: bytes
    event_id: str
    type: str
    traceparent: str | None
    document_id: str
    tracestate: str | None = None


@dataclass(frozen=True, slots=True)
class SendResult:
    """What a send did: batch sizes sent, and events refused because no batch can hold them."""

    batch_sizes: tuple[int, ...]
    too_large: tuple[int, ...] = ()


class SendError(Exception):
    """The hub did not accept a batch (nothing of that batch is published). `accepted` events
    at the front of the send (earlier batches, or skipped as too large) need no second try."""

    def __init__(self, message: str, *, accepted: int = 0, done: SendResult | None = None) -> None:
        super().__init__(message)
        self.accepted = accepted
        self.done = done or SendResult(())


class EventSender(Protocol):
    async def partition_ids(self) -> list[str]:
        """The hub's partition ids."""
        ...

    async def send(self, partition_id: str, events: Sequence[Outgoing]) -> SendResult:
        """Send `events` in order to `partition_id`, in as few batches as fit. Events that do
        not fit even an empty batch are skipped and reported in `too_large`.
        Raises SendError when a batch is refused; earlier batches may have been sent."""
        ...


def partition_for(order_id: str, partition_ids: Sequence[str]) -> str:
    """The hub partition of an order: a stable hash of its id (the same in every process and
    release) over the partition ids in numeric order."""
    digest = hashlib.blake2b(order_id.encode(), digest_size=8).digest()
    ordered = sorted(partition_ids, key=lambda pid: (len(pid), pid))
    return ordered[int.from_bytes(digest, "big") % len(ordered)]


class PoisonRecorder(Protocol):
    async def record(self, document: dict[str, Any], reason: str, detail: str) -> None:
        """Keep a document that can never be published, with why. Idempotent per document."""
        ...


class PublisherObserver:
    """Counts for metrics; the base class counts nothing."""

    def published(self, events: int, batch_sizes: Sequence[int]) -> None: ...

    def send_retry(self, error: BaseException) -> None: ...

    def poisoned(self, reason: str) -> None: ...


@dataclass
class SendHealth:
    """Unready while sends have been failing for longer than `unready_after` seconds."""

    unready_after: float
    failing_since: float | None = None
    clock: Any = field(default=time.monotonic)

    def failing(self) -> None:
        if self.failing_since is None:
            self.failing_since = self.clock()

    def recovered(self) -> None:
        self.failing_since = None

    @property
    def ready(self) -> bool:
        return self.failing_since is None or self.clock() - self.failing_since < self.unready_after


class EventPublisher:
    """The handler. Retries refused sends with back-off and jitter for as long as the lease is
    owned: an event is never skipped, only recorded as poison when it can never be sent."""

    def __init__(
        self,
        sender: EventSender,
        poison: PoisonRecorder,
        *,
        health: SendHealth,
        observer: PublisherObserver | None = None,
        retry_delay: float = 0.2,
        max_retry_delay: float = 10.0,
        source: EventSource = OUTBOX,
    ) -> None:
        """`source`: which documents carry events (the write pattern's; see `deriving`)."""
        self._sender = sender
        self._source = source
        self._poison = poison
        self._health = health
        self._observer = observer or PublisherObserver()
        self._retry_delay = retry_delay
        self._max_retry_delay = max_retry_delay
        self._partition_ids: list[str] | None = None

    async def _partitions(self) -> list[str]:
        if self._partition_ids is None:
            self._partition_ids = await self._sender.partition_ids()
            LOG.info("hub partitions", partition_ids=self._partition_ids)
        return self._partition_ids

    async def __call__(self, context: LeaseContext, documents: Sequence[dict[str, Any]]) -> None:
        partition_ids = await self._partitions()
        groups: dict[str, list[tuple[Outgoing, dict[str, Any]]]] = {}
        for document in documents:
            if document.get("kind") != self._source.kind:
                continue
            outgoing = await self._outgoing(document)
            if outgoing is not None:
                partition = partition_for(outgoing[0], partition_ids)
                groups.setdefault(partition, []).append((outgoing[1], document))
        # Partitions are independent: their batches go out concurrently; one partition's events
        # stay in one sequential send. The first failure that is not retried (a lost lease)
        # cancels the rest.
        try:
            async with asyncio.TaskGroup() as sends:
                for partition_id, events in groups.items():
                    sends.create_task(self._send(context, partition_id, events))
        except ExceptionGroup as failures:
            if failures.subgroup(LeaseLostError) is not None:
                raise LeaseLostError(context.lease_id) from failures
            raise

    async def _outgoing(self, document: dict[str, Any]) -> tuple[str, Outgoing] | None:
        try:
            body = orjson.dumps(self._source.event_of(document))
            routing = read_routing(body)
        except (KeyError, TypeError, orjson.JSONEncodeError) as error:
            await self._reject(
                document, "not-an-event", f"no CloudEvent in the document: {error!r}"
            )
            return None
        except ContractError as error:
            await self._reject(document, error.reason.value, error.detail)
            return None
        outgoing = Outgoing(
            body, routing.id, routing.type, routing.traceparent, str(document.get("id")),
            routing.tracestate,
        )  # fmt: skip
        return routing.partitionkey, outgoing

    async def _reject(self, document: dict[str, Any], reason: str, detail: str) -> None:
        LOG.error(
            "poison event recorded", document_id=document.get("id"), reason=reason, detail=detail
        )
        await self._poison.record(document, reason, detail)
        self._observer.poisoned(reason)

    async def _send(
        self,
        context: LeaseContext,
        partition_id: str,
        events: list[tuple[Outgoing, dict[str, Any]]],
    ) -> None:
        """Send until the hub accepted every event, resuming after the batches it accepted."""
        attempt, offset = 0, 0
        while True:
            if context.is_lost:
                raise LeaseLostError(context.lease_id)
            remaining = events[offset:]
            try:
                result = await self._sender.send(
                    partition_id, [outgoing for outgoing, _ in remaining]
                )
                break
            except SendError as error:
                await self._accepted(remaining[: error.accepted], error.done)
                offset += error.accepted
                attempt += 1
                self._health.failing()
                self._observer.send_retry(error)
                delay = backoff(attempt, self._retry_delay, self._max_retry_delay)
                LOG.warning(
                    "send refused; retrying",
                    partition_id=partition_id,
                    attempt=attempt,
                    retry_in_s=round(delay, 3),
                    error=str(error),
                )
                await asyncio.sleep(delay)
        self._health.recovered()
        await self._accepted(remaining, result)

    async def _accepted(
        self,
        events: list[tuple[Outgoing, dict[str, Any]]],
        result: SendResult,
    ) -> None:
        for index in result.too_large:
            await self._reject(
                events[index][1], "too-large", "the event does not fit an empty Event Hubs batch"
            )
        if events:
            self._observer.published(len(events) - len(result.too_large), result.batch_sizes)
