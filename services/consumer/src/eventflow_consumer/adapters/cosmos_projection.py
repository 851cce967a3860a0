"""CosmosProjectionStore: order summaries and inbox marks in the consumer's own container
(partition key /order_id), written together in one transactional batch."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import aiohttp
from azure.core import MatchConditions
from azure.core.exceptions import ServiceRequestError, ServiceResponseError
from azure.cosmos.exceptions import CosmosBatchOperationError, CosmosHttpResponseError

from eventflow_consumer.ports import (
    AlreadyAppliedError,
    ConcurrentWriteError,
    DeferredElsewhereError,
    LaneRecords,
    TransientStoreError,
)
from eventflow_consumer.projection import OrderSummary

PARTITION_KEY_PATH = "/order_id"
BLOCKED = "blocked-session"
DEFERRED = "deferred-messages"
T = TypeVar("T")
# Throttled, timed out, retry-with, and every server-side failure: none of them is the message's.
_TRANSIENT_STATUS = {408, 429, 449}
# The request never got an answer: the account or the network is down.
_UNREACHABLE = (
    ServiceRequestError,
    ServiceResponseError,
    aiohttp.ClientError,
    ConnectionError,
    TimeoutError,
)


def _is_transient(status: int | None) -> bool:
    return status is not None and (status in _TRANSIENT_STATUS or status >= 500)


def _retry_after(error: CosmosHttpResponseError) -> float | None:
    headers = getattr(error, "headers", None) or {}
    value = headers.get("x-ms-retry-after-ms")
    try:
        return float(value) / 1000 if value is not None else None
    except ValueError:
        return None


async def _guarded(call: Callable[[], Awaitable[T]]) -> T:
    """`call()`, with every outage of the store raised as TransientStoreError."""
    try:
        return await call()
    except CosmosBatchOperationError:
        raise  # the batch's own outcome: the caller reads its operation status
    except CosmosHttpResponseError as error:
        if _is_transient(error.status_code):
            raise TransientStoreError(
                f"Cosmos DB answered {error.status_code}", _retry_after(error)
            ) from error
        raise
    except _UNREACHABLE as error:
        raise TransientStoreError(f"Cosmos DB unreachable: {error!r}") from error


def mark_id(event_id: str) -> str:
    return f"inbox:{event_id}"


class CosmosProjectionStore:
    def __init__(self, container: Any, *, mark_ttl_seconds: int) -> None:
        self._container = container
        self._mark_ttl = mark_ttl_seconds

    async def _read(self, item_id: str, partition_key: str) -> dict[str, Any] | None:
        try:
            document: dict[str, Any] = await _guarded(
                lambda: self._container.read_item(item_id, partition_key=partition_key)
            )
        except CosmosHttpResponseError as error:
            if error.status_code == 404:
                return None
            raise
        return document

    async def load(self, order_id: str) -> tuple[OrderSummary, str] | None:
        document = await self._read(order_id, order_id)
        return (
            None if document is None else (OrderSummary.from_document(document), document["_etag"])
        )

    async def get(self, order_id: str) -> dict[str, Any] | None:
        document = await self._read(order_id, order_id)
        return (
            None
            if document is None
            else {k: v for k, v in document.items() if not k.startswith("_")}
        )

    async def has_mark(self, order_id: str, event_id: str) -> bool:
        return await self._read(mark_id(event_id), order_id) is not None

    async def commit(
        self,
        summary: OrderSummary,
        token: str | None,
        event_id: str | None,
        committed_at: datetime | None = None,
    ) -> str | None:
        document = summary.to_document()
        write = (
            ("create", (document,))
            if token is None
            else ("replace", (summary.order_id, document), {"if_match_etag": token})
        )
        operations: list[Any] = [write]
        if event_id is not None:
            mark = {"id": mark_id(event_id), "order_id": summary.order_id, "kind": "inbox-mark", "ttl": self._mark_ttl,
                    "applied_at": datetime.now(UTC).isoformat(),
                    "committed_at": committed_at.isoformat() if committed_at else None}  # fmt: skip
            operations.append(("create", (mark,)))
        try:
            results = await _guarded(
                lambda: self._container.execute_item_batch(
                    operations, partition_key=summary.order_id
                )
            )
        except CosmosBatchOperationError as error:
            if error.error_index == 1 and error.status_code == 409:
                raise AlreadyAppliedError(event_id) from error
            if error.status_code in (409, 412):
                raise ConcurrentWriteError(
                    f"batch refused with {error.status_code} at {error.error_index}"
                ) from error
            if _is_transient(error.status_code):
                raise TransientStoreError(
                    f"batch refused with {error.status_code} at {error.error_index}"
                ) from error
            raise
        etag = results[0].get("eTag") if results else None
        return str(etag) if etag else None

    # -- blocked sessions: a record per blocked session, for the operator CLI -------------------

    async def set_blocked(self, session_id: str, reason: str, lane: str | None = None) -> None:
        """Creates the record; one that exists keeps its time (and an unblock in progress) and takes
        the current reason. `lane`: the order is blocked inside that lane (its holder defers the
        order's messages there), else `session_id` is a blocked session of its own."""
        record = {"id": f"blocked:{session_id}", "order_id": session_id, "kind": BLOCKED,
                  "reason": reason, "blocked_at": datetime.now(UTC).isoformat()}  # fmt: skip
        if lane is not None:
            record["lane"] = lane
        try:
            await _guarded(lambda: self._container.create_item(record))
            return
        except CosmosHttpResponseError as error:
            if error.status_code != 409:
                raise
        existing = await self._read(record["id"], session_id)
        if existing is not None and existing.get("reason") != reason:
            kept = {k: v for k, v in existing.items() if not k.startswith("_")}
            await self._write(kept | {"reason": reason}, existing["_etag"])

    async def is_blocked(self, session_id: str) -> bool:
        return await self._read(f"blocked:{session_id}", session_id) is not None

    async def clear_blocked(self, session_id: str) -> None:
        try:
            await _guarded(
                lambda: self._container.delete_item(
                    f"blocked:{session_id}", partition_key=session_id
                )
            )
        except CosmosHttpResponseError as error:
            if error.status_code != 404:
                raise

    async def list_blocked(self) -> list[dict[str, Any]]:
        query = "SELECT * FROM c WHERE c.kind = @kind"
        found = self._container.query_items(query, parameters=[{"name": "@kind", "value": BLOCKED}])
        return [
            {k: v for k, v in document.items() if not k.startswith("_")} async for document in found
        ]

    async def clear(self) -> int:
        """Deletes every order summary and inbox mark (for a rebuild from a replay); the blocked
        records and the deferral records stay: they describe messages the broker still holds.
        Returns how many went."""
        query = "SELECT c.id, c.order_id FROM c WHERE NOT IS_DEFINED(c.kind) OR (c.kind != @kind AND c.kind != @deferred)"
        found = self._container.query_items(
            query,
            parameters=[
                {"name": "@kind", "value": BLOCKED},
                {"name": "@deferred", "value": DEFERRED},
            ],
        )
        deleted = 0
        async for document in found:
            try:
                await self._container.delete_item(
                    document["id"], partition_key=document["order_id"]
                )
            except CosmosHttpResponseError as error:
                if error.status_code != 404:  # gone meanwhile (an inbox mark's TTL)
                    raise
            deleted += 1
        return deleted

    # -- per-order records inside lanes: deferred messages, unblock requests -------------------
    # One document per order for each: `blocked:<order>` (above, with the lane) and
    # `deferred:<order>` ({"lane", "messages": {"<broker sequence number>": event sequence}}), in
    # the order's partition. Every change is a read and a write on the read's etag (a concurrent
    # change: ConcurrentWriteError, retried by the caller).

    async def _write(self, document: dict[str, Any], etag: str | None) -> None:
        try:
            if etag is None:
                await _guarded(lambda: self._container.create_item(document))
            else:
                await _guarded(lambda: self._container.replace_item(
                    document["id"], document, etag=etag, match_condition=MatchConditions.IfNotModified))  # fmt: skip
        except CosmosHttpResponseError as error:
            if error.status_code in (409, 412):
                raise ConcurrentWriteError(f"{document['id']}: {error.status_code}") from error
            raise

    async def _delete(self, item_id: str, order_id: str, etag: str) -> None:
        try:
            await _guarded(lambda: self._container.delete_item(
                item_id, partition_key=order_id, etag=etag, match_condition=MatchConditions.IfNotModified))  # fmt: skip
        except CosmosHttpResponseError as error:
            if error.status_code == 412:
                raise ConcurrentWriteError(f"{item_id}: 412") from error
            if error.status_code != 404:
                raise

    async def blocked_record(self, order_id: str) -> dict[str, Any] | None:
        return await self._read(f"blocked:{order_id}", order_id)

    async def lane_records(self, lane: str) -> LaneRecords:
        query = "SELECT * FROM c WHERE c.lane = @lane AND (c.kind = @blocked OR c.kind = @deferred)"
        found = self._container.query_items(query, parameters=[
            {"name": "@lane", "value": lane}, {"name": "@blocked", "value": BLOCKED},
            {"name": "@deferred", "value": DEFERRED}])  # fmt: skip
        records = LaneRecords()
        try:
            async for document in _guarded_iter(found):
                order_id = str(document["order_id"])
                if document["kind"] == BLOCKED:
                    records.blocked[order_id] = document
                else:
                    records.deferred[order_id] = _messages_of(document)
        except CosmosHttpResponseError as error:
            if _is_transient(error.status_code):
                raise TransientStoreError(f"Cosmos DB answered {error.status_code}") from error
            raise
        return records

    async def record_deferred(
        self, order_id: str, lane: str, sequence_number: int, event_sequence: int | None
    ) -> None:
        document = await self._read(f"deferred:{order_id}", order_id)
        if document is None:
            fresh = {"id": f"deferred:{order_id}", "order_id": order_id, "kind": DEFERRED,
                     "lane": lane, "messages": {str(sequence_number): event_sequence}}  # fmt: skip
            await self._write(fresh, None)
            return
        messages = dict(document.get("messages") or {})
        if str(sequence_number) in messages:
            return
        if messages and document.get("lane") not in (None, lane):
            raise DeferredElsewhereError(str(document["lane"]))
        messages[str(sequence_number)] = event_sequence
        kept = {k: v for k, v in document.items() if not k.startswith("_")}
        await self._write(kept | {"lane": lane, "messages": messages}, document["_etag"])

    async def forget_deferred(self, order_id: str, sequence_numbers: set[int]) -> None:
        document = await self._read(f"deferred:{order_id}", order_id)
        if document is None:
            return
        messages = {k: v for k, v in (document.get("messages") or {}).items()
                    if int(k) not in sequence_numbers}  # fmt: skip
        if len(messages) == len(document.get("messages") or {}):
            return
        if not messages:
            await self._delete(document["id"], order_id, document["_etag"])
            return
        kept = {k: v for k, v in document.items() if not k.startswith("_")}
        await self._write(kept | {"messages": messages}, document["_etag"])

    async def _change_blocked(
        self, order_id: str, change: Callable[[dict[str, Any]], dict[str, Any] | None]
    ) -> bool:
        """Applies `change` to the order's blocked record; False when there is none, or `change`
        answered None (nothing to do)."""
        document = await self.blocked_record(order_id)
        if document is None:
            return False
        kept = {k: v for k, v in document.items() if not k.startswith("_")}
        changed = change(kept)
        if changed is None:
            return False
        await self._write(changed, document["_etag"])
        return True

    async def request_unblock(self, order_id: str, request: str) -> bool:
        """Records an unblock request on the order's blocked record; False when it is not blocked."""
        at = datetime.now(UTC).isoformat()
        return await self._change_blocked(
            order_id, lambda r: r | {"unblock_requested": {"id": request, "at": at}}
        )

    async def withdraw_unblock(self, order_id: str, request: str) -> bool:
        """Withdraws a request that no holder started; False when one did (or it is gone)."""

        def withdraw(record: dict[str, Any]) -> dict[str, Any] | None:
            if record.get("unblock_started") == request:
                return None
            return {k: v for k, v in record.items() if k != "unblock_requested"}

        return await self._change_blocked(order_id, withdraw)

    async def start_unblock(self, order_id: str, request: str) -> bool:
        """The holder takes the request on; False when it was withdrawn meanwhile."""

        def start(record: dict[str, Any]) -> dict[str, Any] | None:
            if (record.get("unblock_requested") or {}).get("id") != request:
                return None
            return record | {"unblock_started": request}

        if await self._change_blocked(order_id, start):
            return True
        record = await self.blocked_record(order_id)
        return record is not None and record.get("unblock_started") == request

    async def answer_unblock(self, order_id: str, request: str, reason: str) -> None:
        """The replay blocked the order again: the record keeps it blocked, with the answer."""

        def answer(record: dict[str, Any]) -> dict[str, Any]:
            kept = {
                k: v for k, v in record.items() if k not in ("unblock_requested", "unblock_started")
            }
            return kept | {
                "reason": reason,
                "unblock_answer": {"id": request, "outcome": "blocked-again"},
            }

        await self._change_blocked(order_id, answer)


def _messages_of(document: dict[str, Any]) -> dict[int, int | None]:
    return {
        int(k): (None if v is None else int(v)) for k, v in (document.get("messages") or {}).items()
    }


async def _guarded_iter(found: Any) -> AsyncIterator[dict[str, Any]]:
    try:
        async for document in found:
            yield document
    except _UNREACHABLE as error:
        raise TransientStoreError(f"Cosmos DB unreachable: {error!r}") from error
