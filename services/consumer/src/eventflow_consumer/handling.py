"""What to do with one inbox message: decode, recognise duplicates, apply the effect with its inbox
mark atomically, or decide to dead-letter or to wait for an earlier event. No SDK here; the session
worker settles. A store that is unavailable is never the message's fault: the handler raises
TransientStoreError and the worker retries for as long as the outage lasts."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import structlog

from eventflow_consumer.ports import AlreadyAppliedError, ConcurrentWriteError, ProjectionStore
from eventflow_consumer.projection import (
    WHOLE_STATE_EVENTS,
    OrderSummary,
    PermanentFailure,
    Position,
    apply,
    position,
)
from eventflow_consumer.tracing import traced_processing
from eventflow_contracts import ContractError, decode_event, read_routing
from eventflow_contracts.lanes import belongs, parse_lane, session_id_for

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

    @property
    def event_sequence(self) -> int | None:
        """The event's per-order sequence, read from the envelope only; None when unreadable."""
        if self.is_marker:
            return None
        try:
            return read_routing(self.body).sequence
        except ContractError:
            return None


@dataclass(frozen=True, slots=True)
class Decision:
    """complete (with or without an effect), dead_letter (reason, description), or wait (the
    event is early: an event before it has not been applied yet)."""

    action: Literal["complete", "dead_letter", "wait"]
    effect: bool = False
    duplicate: str | None = None
    reason: str | None = None
    description: str | None = None
    poison: bool = False
    sequence: int | None = None


class SummaryCache:
    """Order summaries and their tokens as one writer last wrote them, at most `size` (the least
    recently written go first)."""

    def __init__(self, size: int = 1000) -> None:
        self._size = size
        self._entries: OrderedDict[str, tuple[OrderSummary, str]] = OrderedDict()

    def get(self, order_id: str) -> tuple[OrderSummary, str] | None:
        return self._entries.get(order_id)

    def put(self, order_id: str, summary: OrderSummary, token: str | None) -> None:
        if token is None:  # the store did not say: nothing to apply on
            self._entries.pop(order_id, None)
            return
        self._entries[order_id] = (summary, token)
        self._entries.move_to_end(order_id)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)

    def pop(self, order_id: str, default: None = None) -> None:
        self._entries.pop(order_id, default)

    def __len__(self) -> int:
        return len(self._entries)


class InboxHandler:
    """Decides one delivery. `handle` is idempotent: the effect and its inbox mark are one write."""

    def __init__(
        self, store: ProjectionStore, *, whole_state: tuple[type, ...] = WHOLE_STATE_EVENTS
    ) -> None:
        self._store = store
        self._whole_state = whole_state

    async def handle(
        self,
        delivery: Delivery,
        *,
        accept_gap: bool = False,
        skip_poison: bool = False,
        cache: SummaryCache | None = None,
    ) -> Decision:
        """`accept_gap`: the wait for missing events is over and the skip policy applies, so an
        early event is applied and the missing sequences recorded as skipped. `skip_poison`: an
        event that breaks a projection rule is recorded as skipped in the projection before it is
        dead-lettered, so the events after it follow without a gap.
        Raises TransientStoreError (the store is unavailable: retry) and nothing else for the
        store; every other outcome is a Decision.
        `cache`: summaries this caller wrote (a lane's holder, since it acquired the lane), used
        for **apply** only: an event that is next after the cached summary is applied on it and
        committed on its token, without a read (a stale token is refused by the store: the entry
        is dropped and the call raises ConcurrentWriteError, retried with a read); any other
        verdict reads the store."""
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
        if not belongs(event.partitionkey, delivery.session_id):
            # Applying it would change an order that its session does not serialise.
            reason = "lane-mismatch" if parse_lane(delivery.session_id) else "session-mismatch"
            return Decision(
                "dead_letter", reason=reason, sequence=event.sequence,
                description=f"session {delivery.session_id!r} carries an event of order {event.partitionkey!r}, "
                            f"whose session is {_own_session(event.partitionkey, delivery.session_id)!r}",
            )  # fmt: skip
        applying = self._apply(event, accept_gap=accept_gap, skip_poison=skip_poison, cache=cache)
        return await traced_processing(event, delivery, applying)

    async def _apply_cached(self, event: Any, cache: SummaryCache) -> Decision | None:
        """The event applied on the cached summary, or None (no entry, or not the next event)."""
        cached = cache.get(event.partitionkey)
        if cached is None:
            return None
        summary, token = cached
        if position(summary, event, self._whole_state) is not Position.NEXT:
            return None
        try:
            changed = apply(summary, event, accept_gap=False, whole_state=self._whole_state)
        except PermanentFailure:
            return None  # judged against what the store holds
        try:
            written = await self._store.commit(changed, token, event.id, event.time)
        except (AlreadyAppliedError, ConcurrentWriteError):
            cache.pop(event.partitionkey, None)
            return None  # judged against what the store holds
        except BaseException:
            cache.pop(event.partitionkey, None)
            raise
        cache.put(event.partitionkey, changed, written)
        return Decision("complete", effect=True, sequence=event.sequence)

    async def _create_unread(self, event: Any, cache: SummaryCache | None) -> Decision | None:
        """An event that would create its order's summary (the order's first event, a whole-state
        event) is committed as a create without reading first: the store refuses the create when
        the summary exists, and only then is it read and the event judged against it (None). One
        event per order then costs one store call instead of two."""
        if position(None, event, self._whole_state) is not Position.NEXT:
            return None
        try:
            created = apply(None, event, accept_gap=False, whole_state=self._whole_state)
        except PermanentFailure:
            return None  # judged against what the store holds
        try:
            written = await self._store.commit(created, None, event.id, event.time)
        except AlreadyAppliedError:
            return Decision("complete", duplicate="inbox", sequence=event.sequence)
        except ConcurrentWriteError:
            return None  # the summary exists: read it and decide
        if cache is not None:
            cache.put(event.partitionkey, created, written)
        return Decision("complete", effect=True, sequence=event.sequence)

    async def _apply(
        self, event: Any, *, accept_gap: bool, skip_poison: bool, cache: SummaryCache | None
    ) -> Decision:
        # No inbox-mark read first: the summary's `last_sequence` (and its skipped sequences) already
        # tell a copy of an applied event, and a copy that races the write meets the mark in the
        # commit itself (AlreadyAppliedError), which writes the mark atomically with the effect.
        order_id, sequence = event.partitionkey, event.sequence
        if cache is not None:
            cached = await self._apply_cached(event, cache)
            if cached is not None:
                return cached
        first = await self._create_unread(event, cache)
        if first is not None:
            return first
        loaded = await self._store.load(order_id)
        summary, token = loaded if loaded else (None, None)
        where = position(summary, event, self._whole_state)
        if where is not Position.NEXT and not (where is Position.EARLY and accept_gap):
            return _not_applicable(where, order_id, sequence)
        try:
            changed = apply(summary, event, accept_gap=accept_gap, whole_state=self._whole_state)
        except PermanentFailure as failure:
            if skip_poison and summary is not None:
                await self._store.commit(summary.skip(sequence), token, None)
            return Decision(
                "dead_letter", reason=failure.reason, description=failure.description,
                poison=True, sequence=sequence,
            )  # fmt: skip
        try:
            written = await self._store.commit(changed, token, event.id, event.time)
        except AlreadyAppliedError:
            return Decision("complete", duplicate="inbox", sequence=sequence)
        if cache is not None:
            cache.put(order_id, changed, written)
        return Decision("complete", effect=True, sequence=sequence)


def _own_session(order_id: str, session_id: str) -> str:
    lane = parse_lane(session_id)
    return session_id_for(order_id, lane.count if lane else 0)


def _not_applicable(where: Position, order_id: str, sequence: int) -> Decision:
    if where is Position.SKIPPED:
        return Decision(
            "dead_letter", reason="skipped-earlier", sequence=sequence,
            description=f"sequence {sequence} of order {order_id} was skipped by the skip policy before "
                        "this copy arrived; the projection has moved past it",
        )  # fmt: skip
    if where is Position.DUPLICATE:
        return Decision("complete", duplicate="sequence", sequence=sequence)
    return Decision("wait", sequence=sequence)


def properties_of(raw: dict[Any, Any] | None) -> dict[str, Any]:
    """Application properties as the SDK returns them (bytes keys and string values) → str."""
    decoded: dict[str, Any] = {}
    for key, value in (raw or {}).items():
        name = key.decode() if isinstance(key, bytes) else str(key)
        decoded[name] = value.decode() if isinstance(value, bytes) else value
    return decoded


def body_of(body: bytes | Sequence[bytes] | Any) -> bytes:
    return body if isinstance(body, bytes) else b"".join(body)
