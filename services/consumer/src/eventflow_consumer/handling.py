"""What to do with one inbox message: decode, skip duplicates, apply the effect with its inbox mark
atomically, or decide to dead-letter or abandon. No SDK here; the session worker settles."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

import orjson
import structlog

from eventflow_consumer.projection import OrderSummary, PermanentFailure, apply
from eventflow_contracts import ContractError, decode_event

LOG = structlog.get_logger("eventflow_consumer.handling")
MARKER_PROPERTY = "eventflow_unroutable"


@dataclass(frozen=True, slots=True)
class Delivery:
    """The parts of a received message the consumer uses."""

    body: bytes
    message_id: str
    session_id: str
    sequence_number: int
    delivery_count: int
    properties: dict[str, Any]

    @property
    def is_marker(self) -> bool:
        return bool(self.properties.get(MARKER_PROPERTY))


@dataclass
class SessionState:
    """Kept in the Service Bus session state: the last applied sequence of the order, and whether
    the session is blocked (with the sequence numbers of the messages deferred meanwhile)."""

    last_sequence: int = 0
    blocked: bool = False
    reason: str | None = None
    deferred: list[int] = field(default_factory=list)

    def to_bytes(self) -> bytes:
        return orjson.dumps({"last_sequence": self.last_sequence, "blocked": self.blocked, "reason": self.reason,
                             "deferred": self.deferred})  # fmt: skip

    @classmethod
    def from_bytes(cls, raw: bytes | None) -> SessionState:
        if not raw:
            return cls()
        document = orjson.loads(raw)
        return cls(document.get("last_sequence", 0), document.get("blocked", False), document.get("reason"),
                   list(document.get("deferred", [])))  # fmt: skip


@dataclass(frozen=True, slots=True)
class Decision:
    """complete (with or without an effect), dead_letter (reason, description), or abandon."""

    action: Literal["complete", "dead_letter", "abandon"]
    effect: bool = False
    duplicate: str | None = None
    reason: str | None = None
    description: str | None = None
    poison: bool = False
    sequence: int | None = None


class AlreadyAppliedError(Exception):
    """The inbox already holds this event's mark: its effect was applied before."""


class TransientStoreError(Exception):
    """The store refused for now (throttled, unavailable, or a concurrent write): retry."""


class ProjectionStore(Protocol):
    async def load(self, order_id: str) -> tuple[OrderSummary, str] | None:
        """The summary and its concurrency token, or None."""
        ...

    async def has_mark(self, order_id: str, event_id: str) -> bool:
        """Whether the inbox mark of `event_id` exists (while its TTL keeps it)."""
        ...

    async def commit(
        self,
        summary: OrderSummary,
        token: str | None,
        event_id: str,
        committed_at: datetime | None = None,
    ) -> None:
        """Write the summary (created when token is None, else replaced on the token) and the inbox
        mark (with when the event was committed upstream, for latency) in one atomic write.
        Raises AlreadyAppliedError, TransientStoreError."""
        ...


class InboxHandler:
    def __init__(
        self, store: ProjectionStore, *, attempts: int = 3, retry_delay: float = 0.2
    ) -> None:
        self._store = store
        self._attempts = attempts
        self._retry_delay = retry_delay

    async def handle(self, delivery: Delivery, state: SessionState) -> Decision:
        if delivery.is_marker:
            reason = str(delivery.properties.get("reason", "unroutable"))
            return Decision(
                "dead_letter",
                reason=f"unroutable:{reason}",
                description=delivery.body.decode("utf-8", "replace")[:1000],
            )
        try:
            event = decode_event(delivery.body)
        except ContractError as error:
            return Decision(
                "dead_letter", reason=error.reason.value, description=error.detail, poison=True
            )
        if event.sequence <= state.last_sequence:
            return Decision("complete", duplicate="sequence", sequence=event.sequence)
        for attempt in range(1, self._attempts + 1):
            try:
                return await self._apply(event)
            except TransientStoreError as error:
                if attempt == self._attempts:
                    return Decision("abandon", reason="transient", description=str(error))
                await asyncio.sleep(random.uniform(0, self._retry_delay * 2**attempt))
        raise AssertionError("unreachable")

    async def _apply(self, event: Any) -> Decision:
        order_id = event.partitionkey
        if await self._store.has_mark(order_id, event.id):
            return Decision("complete", duplicate="inbox", sequence=event.sequence)
        loaded = await self._store.load(order_id)
        summary, token = loaded if loaded else (None, None)
        if summary is not None and event.sequence <= summary.last_sequence:
            return Decision("complete", duplicate="sequence", sequence=event.sequence)
        try:
            changed = apply(summary, event)
        except PermanentFailure as failure:
            return Decision(
                "dead_letter", reason=failure.reason, description=failure.description, poison=True
            )
        try:
            await self._store.commit(changed, token, event.id, event.time)
        except AlreadyAppliedError:
            return Decision("complete", duplicate="inbox", sequence=event.sequence)
        return Decision("complete", effect=True, sequence=event.sequence)


def properties_of(raw: dict[Any, Any] | None) -> dict[str, Any]:
    """Application properties as the SDK returns them (bytes keys and string values) → str."""
    decoded: dict[str, Any] = {}
    for key, value in (raw or {}).items():
        name = key.decode() if isinstance(key, bytes) else str(key)
        decoded[name] = value.decode() if isinstance(value, bytes) else value
    return decoded


def body_of(body: bytes | Sequence[bytes] | Any) -> bytes:
    return body if isinstance(body, bytes) else b"".join(body)
