"""The producer's one port: where orders and their outbox events are stored together."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from eventflow_contracts import CloudEvent
from eventflow_producer.domain import Order


@dataclass(frozen=True, slots=True)
class Stored:
    """An order as read, with the store's opaque concurrency token for its next write."""

    order: Order
    token: str


@dataclass(frozen=True, slots=True)
class IdempotencyRecord:
    """What a create with an Idempotency-Key answered: replayed for the same request."""

    request_hash: str
    order: Order


class OrderExistsError(Exception):
    """An order with this id is already stored."""


class ConcurrentChangeError(Exception):
    """The order changed since it was read (the token is stale): nothing was written."""


class OrderMissingError(Exception):
    """No order with this id is stored."""


class StoreUnavailableError(Exception):
    """The store refused for now (throttled after the SDK's retries, or unreachable)."""

    def __init__(self, detail: str, retry_after_seconds: float = 1.0) -> None:
        super().__init__(detail)
        self.retry_after_seconds = retry_after_seconds


class StoreConfigurationError(Exception):
    """The store refuses this service for a reason a retry cannot fix (a wrong key, a missing role
    assignment, a container that is not there and is not ours to create): the process exits 2."""


class OrderStore(Protocol):
    """Orders and their events, written together atomically (the transactional outbox)."""

    async def create(
        self, order: Order, events: Sequence[CloudEvent[Any]], idempotency: IdempotencyRecord | None
    ) -> str:
        """Store a new order, its events and (optionally) its idempotency record in one atomic
        write; return the new token. Raises OrderExistsError (nothing written)."""
        ...

    async def load(self, order_id: str) -> Stored | None:
        """The order and its token, or None."""
        ...

    async def update(self, order: Order, token: str, events: Sequence[CloudEvent[Any]]) -> str:
        """Replace the order read with `token` and add its events atomically; return the new
        token. Raises ConcurrentChangeError or OrderMissingError (nothing written)."""
        ...

    async def events(self, order_id: str) -> list[dict[str, Any]]:
        """The order's outbox events still within their TTL, as CloudEvent JSON objects, in
        sequence order."""
        ...

    async def idempotency_record(self, order_id: str) -> IdempotencyRecord | None:
        """The record stored with the order's create, while its TTL keeps it."""
        ...

    async def check(self) -> None:
        """Raise StoreUnavailableError unless the store answers."""
        ...
