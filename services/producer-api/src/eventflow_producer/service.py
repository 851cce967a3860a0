"""Use cases of the orders API: validate the command against the order, write order and events
together, and make creates idempotent. No HTTP and no SDK knowledge here."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from eventflow_contracts import CloudEvent, EventData, OrderLine, new_event
from eventflow_contracts.auth import ANONYMOUS
from eventflow_producer.domain import Order, open_order
from eventflow_producer.ports import (
    ConcurrentChangeError,
    IdempotencyRecord,
    OrderExistsError,
    OrderMissingError,
    OrderStore,
)

Change = Callable[[Order, datetime], tuple[Order, EventData]]


class OrderNotFoundError(Exception):
    """No such order."""


class EventsNotKeptError(Exception):
    """This producer stores no events (the entity-first write pattern): they are derived later."""


class PreconditionRequiredError(Exception):
    """A change was asked for without If-Match."""


class PreconditionFailedError(Exception):
    """If-Match names a version that is not the order's current one."""


class IdempotencyConflictError(Exception):
    """An Idempotency-Key was used before for another request (or its record expired)."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


@dataclass(frozen=True, slots=True)
class CreateOrder:
    customer_id: str
    currency: str
    lines: tuple[OrderLine, ...]

    def fingerprint(self) -> str:
        """A hash of the request's meaning, to tell a retry from a different request."""
        canonical = {
            "customer_id": self.customer_id,
            "currency": self.currency,
            "lines": [line.model_dump(mode="json") for line in self.lines],
        }
        return hashlib.sha256(orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS)).hexdigest()


@dataclass(frozen=True, slots=True)
class Outcome:
    order: Order
    event_ids: tuple[str, ...] = ()
    replayed: bool = False


def etag_of(order: Order) -> str:
    """The HTTP entity tag of an order: its version, as a strong validator."""
    return f'"{order.version}"'


def if_match_allows(if_match: str, order: Order) -> bool:
    """RFC 9110 If-Match with strong comparison: `*`, or a list that names the current ETag."""
    candidates = [value.strip() for value in if_match.split(",")]
    return "*" in candidates or etag_of(order) in candidates


def order_id_for_key(idempotency_key: str, caller: str) -> str:
    """The order id a caller's key always maps to, so duplicates of one create collide in the
    store. Keys belong to their caller (the token's object id): another caller's same key maps to
    another order, never to this caller's."""
    scoped = f"idempotency:{len(caller)}:{caller}:{idempotency_key}"
    return "k" + hashlib.sha256(scoped.encode()).hexdigest()[:31]


class OrderService:
    def __init__(
        self,
        store: OrderStore,
        *,
        source: str,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        new_id: Callable[[], str] = lambda: uuid.uuid4().hex,
        keeps_events: bool = True,
    ) -> None:
        """`keeps_events=False` is the entity-first write pattern: only the order is written, as a
        legacy application would, and the publisher derives events from its versions."""
        self._store = store
        self._keeps_events = keeps_events
        self._source = source
        self._clock = clock
        self._new_id = new_id

    def _events(
        self, order: Order, data: EventData, traceparent: str | None
    ) -> list[CloudEvent[Any]]:
        return [self._event(order, data, traceparent)] if self._keeps_events else []

    def _event(self, order: Order, data: EventData, traceparent: str | None) -> CloudEvent[Any]:
        return new_event(
            data, source=self._source, sequence=order.version, traceparent=traceparent,
            event_id=str(uuid.uuid4()), time=order.updated_at,
        )  # fmt: skip

    async def create(
        self,
        command: CreateOrder,
        *,
        idempotency_key: str | None,
        traceparent: str | None,
        caller: str = ANONYMOUS.object_id,
    ) -> Outcome:
        """Open an order. With a key, a repeat of the same request by the same caller returns the
        first outcome (replayed=True) and writes nothing; the same key with another request is
        refused; another caller's same key is another key."""
        order_id = order_id_for_key(idempotency_key, caller) if idempotency_key else self._new_id()
        order, data = open_order(
            order_id, command.customer_id, command.currency, command.lines, self._clock()
        )
        events = self._events(order, data, traceparent)
        record = IdempotencyRecord(command.fingerprint(), order) if idempotency_key else None
        try:
            await self._store.create(order, events, record)
        except OrderExistsError:
            return await self._replay(order_id, command)
        return Outcome(order, tuple(event.id for event in events))

    async def _replay(self, order_id: str, command: CreateOrder) -> Outcome:
        record = await self._store.idempotency_record(order_id)
        if record is None:
            raise IdempotencyConflictError(
                "idempotency-key-expired",
                "this Idempotency-Key was used before and its record has expired",
            ) from None
        if record.request_hash != command.fingerprint():
            raise IdempotencyConflictError(
                "idempotency-key-reused", "this Idempotency-Key was used for a different request"
            )
        return Outcome(record.order, replayed=True)

    async def get(self, order_id: str) -> Order:
        stored = await self._store.load(order_id)
        if stored is None:
            raise OrderNotFoundError(order_id)
        return stored.order

    async def change(
        self, order_id: str, *, if_match: str | None, change: Change, traceparent: str | None
    ) -> Outcome:
        """Apply a command to the version the client names in If-Match, atomically with its event.

        Raises PreconditionRequiredError, OrderNotFoundError, PreconditionFailedError (stale or
        lost a race), or the domain's RuleBroken."""
        if if_match is None:
            raise PreconditionRequiredError
        stored = await self._store.load(order_id)
        if stored is None:
            raise OrderNotFoundError(order_id)
        if not if_match_allows(if_match, stored.order):
            raise PreconditionFailedError
        order, data = change(stored.order, self._clock())
        events = self._events(order, data, traceparent)
        try:
            await self._store.update(order, stored.token, events)
        except ConcurrentChangeError:
            raise PreconditionFailedError from None
        except OrderMissingError:
            raise OrderNotFoundError(order_id) from None
        return Outcome(order, tuple(event.id for event in events))

    async def events(self, order_id: str) -> list[dict[str, Any]]:
        """The order's stored events. Raises OrderNotFoundError, or EventsNotKeptError when this
        producer stores none (entity-first)."""
        if await self._store.load(order_id) is None:
            raise OrderNotFoundError(order_id)
        if not self._keeps_events:
            raise EventsNotKeptError(order_id)
        return await self._store.events(order_id)
