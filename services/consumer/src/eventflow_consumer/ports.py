"""The consumer's ports: what the session worker and the handler need from the outside world."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from eventflow_consumer.handling import Delivery
    from eventflow_consumer.projection import OrderSummary


class DeferredElsewhereError(Exception):
    """The order's deferred messages are recorded in another lane (a lane of an earlier lane
    count): an order is deferred in one lane at a time, so that its unblock replays one lane."""

    def __init__(self, lane: str) -> None:
        super().__init__(f"the order's deferred messages are recorded in lane {lane}")
        self.lane = lane


class AlreadyAppliedError(Exception):
    """The inbox already holds this event's mark: its effect was applied before."""


class TransientStoreError(Exception):
    """The store cannot answer for now (throttled, unavailable, unreachable): retry, it is not the
    message's fault. `retry_after` is the store's hint in seconds, when it gave one."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ConcurrentWriteError(TransientStoreError):
    """Another writer changed the document in between: retry at once, the store is fine."""


class ProjectionStore(Protocol):
    async def load(self, order_id: str) -> tuple[OrderSummary, str] | None:
        """The summary and its concurrency token, or None. Raises TransientStoreError."""
        ...

    async def commit(
        self,
        summary: OrderSummary,
        token: str | None,
        event_id: str | None,
        committed_at: datetime | None = None,
    ) -> str | None:
        """Write the summary (created when token is None, else replaced on the token) and, when
        `event_id` is given, its inbox mark (with when the event was committed upstream, for
        latency) in one atomic write. Returns the summary's new token when the store tells it.
        Raises AlreadyAppliedError, TransientStoreError (ConcurrentWriteError when the token is
        stale)."""
        ...


class BlockedSessions(Protocol):
    """The operator's list of blocked sessions. The session state is the truth; this list is
    written before a block, repaired from the state on accept, and cleared after an unblock."""

    async def set_blocked(self, session_id: str, reason: str) -> None:
        """Idempotent: creates the record, or gives an existing one the current reason (keeping
        when it was first blocked). Raises TransientStoreError."""
        ...

    async def clear_blocked(self, session_id: str) -> None:
        """Idempotent: clearing an absent record is no error. Raises TransientStoreError."""
        ...


@dataclass
class LaneRecords:
    """What the store holds about one lane's orders: blocked records by order, and by order the
    deferred messages recorded in the lane (broker sequence number → event sequence, if known)."""

    blocked: dict[str, dict[str, Any]] = field(default_factory=dict)
    deferred: dict[str, dict[int, int | None]] = field(default_factory=dict)


class OrderRecords(BlockedSessions, Protocol):
    """Per-order records of the orders inside lanes, in the consumer's store (an order's state must
    survive its lane moving to another replica). The blocked record is the truth about a block:
    written before the order's first message is deferred, cleared last by an unblock. A deferred
    message is recorded before it is deferred and forgotten after it is settled. Every method
    raises TransientStoreError (ConcurrentWriteError: retry at once)."""

    async def set_blocked(self, session_id: str, reason: str, lane: str | None = None) -> None: ...

    async def lane_records(self, lane: str) -> LaneRecords: ...

    async def blocked_record(self, order_id: str) -> dict[str, Any] | None: ...

    async def record_deferred(
        self, order_id: str, lane: str, sequence_number: int, event_sequence: int | None
    ) -> None:
        """Raises DeferredElsewhereError while the order has recorded messages in another lane."""
        ...

    async def forget_deferred(self, order_id: str, sequence_numbers: set[int]) -> None: ...

    async def start_unblock(self, order_id: str, request: str) -> bool:
        """Takes a recorded unblock request on; False when it was withdrawn."""
        ...

    async def answer_unblock(self, order_id: str, request: str, reason: str) -> None:
        """The replay blocked the order again (`reason`): the request answered, the block kept."""
        ...


@dataclass(frozen=True, slots=True)
class Inbound:
    """A received message: what the consumer reads, and the broker's handle to settle it."""

    delivery: Delivery
    handle: object = field(compare=False, repr=False)


class ChannelLost(Exception):
    """The session (or a message) lock is gone: nothing held can be settled any more."""


class SessionChannel(Protocol):
    """What the session worker needs from a receiver that holds one session. Every method raises
    ChannelLost when the session lock is lost, and the adapter's broker errors otherwise."""

    @property
    def session_id(self) -> str: ...

    async def get_state(self) -> bytes | None: ...

    async def set_state(self, state: bytes) -> None: ...

    async def receive(self, max_count: int, wait: float) -> list[Inbound]:
        """Up to `max_count` messages in broker order, locked with the session; [] after `wait`."""
        ...

    async def receive_deferred(self, sequence_number: int) -> Inbound | None:
        """The deferred message, locked with the session; None when it no longer exists."""
        ...

    async def deferred_present(self, sequence_numbers: list[int]) -> set[int]:
        """Which of `sequence_numbers` are deferred messages of this session, without locking them."""
        ...

    async def complete(self, inbound: Inbound) -> None: ...

    async def abandon(self, inbound: Inbound) -> None:
        """Back to the queue; the broker counts a delivery."""
        ...

    async def defer(self, inbound: Inbound) -> None: ...

    async def dead_letter(self, inbound: Inbound, reason: str, description: str) -> None: ...
