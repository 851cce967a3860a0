"""Fakes of the consumer's own ports, with assertable state."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import datetime
from typing import Any

import orjson

from eventflow_consumer.handling import Delivery
from eventflow_consumer.ports import (
    AlreadyAppliedError,
    ConcurrentWriteError,
    DeferredElsewhereError,
    Inbound,
    LaneRecords,
    TransientStoreError,
)
from eventflow_consumer.projection import OrderSummary


class FakeStore:
    """ProjectionStore and BlockedSessions in memory. `failing` calls fail transiently; `broken`
    makes every call raise that error (an unexpected one)."""

    def __init__(self, failing: int = 0) -> None:
        self.summaries: dict[str, tuple[OrderSummary, str]] = {}
        self.marks: set[str] = set()
        self.blocked: dict[str, str] = {}
        self.records: dict[str, dict[str, Any]] = {}  # blocked records, with their lane
        self.deferrals: dict[str, dict[int, int | None]] = {}
        self.deferral_lanes: dict[str, str] = {}
        self.failing = failing
        self.broken: Exception | None = None
        self.conflicts = 0
        self.commits = 0
        self.log: list[str] = []

    def _call(self, name: str) -> None:
        if self.broken is not None:
            raise self.broken
        if self.failing:
            self.failing -= 1
            raise TransientStoreError("Cosmos DB answered 503")
        self.log.append(name)

    async def load(self, order_id: str) -> tuple[OrderSummary, str] | None:
        self._call("load")
        return self.summaries.get(order_id)

    async def commit(
        self,
        summary: OrderSummary,
        token: str | None,
        event_id: str | None,
        committed_at: datetime | None = None,
    ) -> str | None:
        self._call("commit")
        if self.conflicts:
            self.conflicts -= 1
            raise ConcurrentWriteError("412")
        # In the store's order: the summary's write first (a create that finds one, a replace on a
        # stale token: refused), then the mark (a mark that exists: already applied).
        current = self.summaries.get(summary.order_id)
        if (current[1] if current else None) != token:
            raise ConcurrentWriteError("stale token")
        if event_id is not None and event_id in self.marks:
            raise AlreadyAppliedError(event_id)
        self.commits += 1
        if event_id is not None:
            self.marks.add(event_id)
        self.summaries[summary.order_id] = (summary, str(self.commits))
        return str(self.commits)

    def summary(self, order_id: str) -> OrderSummary:
        return self.summaries[order_id][0]

    async def set_blocked(self, session_id: str, reason: str, lane: str | None = None) -> None:
        self._call("set_blocked")
        self.blocked[session_id] = reason
        record = self.records.setdefault(session_id, {"order_id": session_id})
        record["reason"] = reason
        if lane is not None:
            record["lane"] = lane

    async def clear_blocked(self, session_id: str) -> None:
        self._call("clear_blocked")
        self.blocked.pop(session_id, None)
        self.records.pop(session_id, None)

    # -- per-order records inside lanes (OrderRecords) -------------------------------------------

    async def lane_records(self, lane: str) -> LaneRecords:
        self._call("lane_records")
        return LaneRecords(
            {o: dict(r) for o, r in self.records.items() if r.get("lane") == lane},
            {o: dict(m) for o, m in self.deferrals.items() if self.deferral_lanes[o] == lane and m},
        )

    async def blocked_record(self, order_id: str) -> dict[str, Any] | None:
        self._call("blocked_record")
        record = self.records.get(order_id)
        return dict(record) if record is not None else None

    async def record_deferred(
        self, order_id: str, lane: str, sequence_number: int, event_sequence: int | None
    ) -> None:
        self._call("record_deferred")
        elsewhere = self.deferral_lanes.get(order_id)
        if self.deferrals.get(order_id) and elsewhere not in (None, lane):
            raise DeferredElsewhereError(str(elsewhere))
        self.deferrals.setdefault(order_id, {})[sequence_number] = event_sequence
        self.deferral_lanes[order_id] = lane

    async def forget_deferred(self, order_id: str, sequence_numbers: set[int]) -> None:
        self._call("forget_deferred")
        for number in sequence_numbers:
            self.deferrals.get(order_id, {}).pop(number, None)

    def request_unblock(self, order_id: str, request: str) -> None:
        """What the admin CLI writes."""
        self.records[order_id]["unblock_requested"] = {"id": request}

    async def start_unblock(self, order_id: str, request: str) -> bool:
        self._call("start_unblock")
        record = self.records.get(order_id)
        if record is None or (record.get("unblock_requested") or {}).get("id") != request:
            return False
        record["unblock_started"] = request
        return True

    async def answer_unblock(self, order_id: str, request: str, reason: str) -> None:
        self._call("answer_unblock")
        record = self.records[order_id]
        record.pop("unblock_requested", None)
        record.pop("unblock_started", None)
        record.update(reason=reason, unblock_answer={"id": request, "outcome": "blocked-again"})
        self.blocked[order_id] = reason


class FakeChannel:
    """One held session: active messages in broker order, deferred ones by sequence number, the
    session state, and a journal of every operation (for ordering assertions)."""

    def __init__(
        self, session_id: str, bodies: list[bytes] = (), state: bytes | None = None
    ) -> None:  # type: ignore[assignment]
        self.session_id = session_id
        self.state = state
        self.active: list[Inbound] = []
        self.deferred: dict[int, Inbound] = {}
        self.journal: list[tuple[Any, ...]] = []
        self.lost = False
        self.receives = 0
        self._next = 1
        for body in bodies:
            self.add(body)

    def add(self, body: bytes, message_id: str | None = None, session_id: str | None = None) -> int:
        number, self._next = self._next, self._next + 1
        try:
            event_id = str(orjson.loads(body)["id"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            event_id = f"m{number}"
        delivery = Delivery(
            body, message_id or event_id, session_id or self.session_id, number, 0, {}
        )
        self.active.append(Inbound(delivery, number))
        return number

    def outcomes(self, action: str) -> list[tuple[Any, ...]]:
        return [entry for entry in self.journal if entry[0] == action]

    async def get_state(self) -> bytes | None:
        return self.state

    async def set_state(self, state: bytes) -> None:
        self.journal.append(("set_state", orjson.loads(state)))
        self.state = state

    async def receive(self, max_count: int, wait: float) -> list[Inbound]:
        self.receives += 1
        if not self.active:
            await asyncio.sleep(min(wait, 0.01))
            return []
        batch, self.active = self.active[:max_count], self.active[max_count:]
        return batch

    async def receive_deferred(self, sequence_number: int) -> Inbound | None:
        self.journal.append(("receive_deferred", sequence_number))
        return self.deferred.pop(sequence_number, None)

    async def deferred_present(self, sequence_numbers: list[int]) -> set[int]:
        return {n for n in sequence_numbers if n in self.deferred}

    async def complete(self, inbound: Inbound) -> None:
        self.journal.append(("complete", inbound.delivery.sequence_number))

    async def abandon(self, inbound: Inbound) -> None:
        self.journal.append(("abandon", inbound.delivery.sequence_number))
        delivery = inbound.delivery
        self.active.insert(
            0,
            Inbound(replace(delivery, delivery_count=delivery.delivery_count + 1), inbound.handle),
        )

    async def defer(self, inbound: Inbound) -> None:
        self.journal.append(("defer", inbound.delivery.sequence_number))
        self.deferred[inbound.delivery.sequence_number] = inbound

    async def dead_letter(self, inbound: Inbound, reason: str, description: str) -> None:
        self.journal.append(("dead_letter", inbound.delivery.sequence_number, reason))
