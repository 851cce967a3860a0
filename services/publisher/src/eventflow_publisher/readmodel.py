"""The read-model maintainer of the event-first write pattern: a change feed handler that folds each
order's events into its read model, the order document the producer's API reads (id = order id,
kind = "order": `eventflow_contracts.orders_container`).

Events are the source of truth and are never changed or expired, so the fold is deterministic and
only moves forward: an event at or before the read model's version is a replay and changes nothing,
the next one is applied, and a gap (which a replay from an older checkpoint cannot cause, but a
read model restored from elsewhere could) is filled from the event store itself. A read model is
written with If-Match on the ETag it was read with; a conflict (two maintainers during a lease
handover) reloads and folds again. An event that cannot be folded is recorded as poison and the
order's read model stays at the version before it (the API folds the events itself, so its reads
stay current); the rest of the page goes on. The processor checkpoints only after this returns.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Final, Protocol

import orjson
import structlog

from eventflow_contracts import (
    CloudEvent,
    ContractError,
    ErrorReason,
    OrderState,
    StateError,
    decode_event,
    evolve,
)
from eventflow_contracts.orders_container import DocumentKind
from eventflow_publisher.changefeed import LeaseContext, LeaseLostError
from eventflow_publisher.publishing import PoisonRecorder

LOG = structlog.get_logger("eventflow_publisher.readmodel")
EVENT: Final[DocumentKind] = "event"
MAX_CONFLICT_RETRIES = 10


class ReadModelConflictError(Exception):
    """The read model changed since it was read (or was created meanwhile): nothing was written."""


class ReadModelStore(Protocol):
    """Read models and the event stream they are folded from, in the producer's container."""

    async def load(self, order_id: str) -> tuple[OrderState | None, str | None]:
        """The order's read model and its ETag, or (None, None)."""
        ...

    async def save(self, state: OrderState, etag: str | None) -> None:
        """Replace the read model read with `etag` (create it when `etag` is None).
        Raises ReadModelConflictError."""
        ...

    async def events_after(self, order_id: str, version: int) -> list[dict[str, Any]]:
        """The order's event documents after `version`, in sequence order."""
        ...


class ReadModelObserver:
    """Counts for metrics; the base class counts nothing."""

    def folded(self, orders: int, events: int) -> None: ...

    def poisoned(self, reason: str) -> None: ...


class ReadModelMaintainer:
    """The handler. Orders of a page are folded concurrently (at most `concurrency` at once)."""

    def __init__(
        self,
        store: ReadModelStore,
        poison: PoisonRecorder,
        *,
        observer: ReadModelObserver | None = None,
        concurrency: int = 32,
    ) -> None:
        self._store = store
        self._poison = poison
        self._observer = observer or ReadModelObserver()
        self._gate = asyncio.Semaphore(concurrency)

    async def __call__(self, context: LeaseContext, documents: Sequence[dict[str, Any]]) -> None:
        by_order: dict[str, list[dict[str, Any]]] = {}
        for document in documents:
            if document.get("kind") == EVENT:
                by_order.setdefault(str(document.get("order_id")), []).append(document)
        async with asyncio.TaskGroup() as folds:
            for order_id, events in by_order.items():
                folds.create_task(self._order(context, order_id, events))
        self._observer.folded(len(by_order), sum(len(events) for events in by_order.values()))

    async def _order(
        self, context: LeaseContext, order_id: str, documents: list[dict[str, Any]]
    ) -> None:
        async with self._gate:
            for _ in range(MAX_CONFLICT_RETRIES):
                if context.is_lost:
                    raise LeaseLostError(context.lease_id)
                state, etag = await self._store.load(order_id)
                folded = await self._fold(state, documents)
                if folded is state or folded is None:
                    return
                try:
                    await self._store.save(folded, etag)
                    return
                except ReadModelConflictError:
                    LOG.info("read model changed meanwhile; folding again", order_id=order_id)
            raise ReadModelConflictError(f"order {order_id}: {MAX_CONFLICT_RETRIES} conflicts")

    async def _fold(
        self, state: OrderState | None, documents: list[dict[str, Any]]
    ) -> OrderState | None:
        version = state.version if state else 0
        fresh = [d for d in documents if int(d.get("sequence", 0)) > version]
        if fresh and int(fresh[0]["sequence"]) != version + 1:
            fresh = await self._store.events_after(str(fresh[0]["order_id"]), version)
        for document in fresh:
            try:
                state = evolve(state, self._decoded(document))
            except (ContractError, StateError) as error:
                reason = getattr(error, "reason", "invalid")
                LOG.error("event cannot be folded; read model stays behind it",
                          document_id=document.get("id"), reason=str(reason), detail=str(error))  # fmt: skip
                await self._poison.record(document, f"read-model:{reason}", str(error))
                self._observer.poisoned(str(reason))
                return state
        return state

    @staticmethod
    def _decoded(document: dict[str, Any]) -> CloudEvent[Any]:
        try:
            return decode_event(orjson.dumps(document["event"]))
        except (KeyError, TypeError) as error:
            raise ContractError(ErrorReason.NOT_A_CLOUDEVENT, f"no event: {error!r}") from None
