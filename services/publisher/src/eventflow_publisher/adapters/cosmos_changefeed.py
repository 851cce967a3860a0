"""The change feed and the lease container on Cosmos DB, through the SDK's aio ContainerProxy."""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
import structlog
from azure.core import MatchConditions
from azure.cosmos.exceptions import CosmosHttpResponseError, CosmosResourceExistsError

from eventflow_publisher.changefeed import Lease, LeaseLostError, Page, StartPosition
from eventflow_publisher.changefeed.leases import LEASE_VERSION
from eventflow_publisher.changefeed.processor import Backlog

LOG = structlog.get_logger("eventflow_publisher.cosmos")
LEASE_SCHEMA = f"eventflow-lease-{LEASE_VERSION}"
MAX_CONFLICT_RETRIES = 5


def _v2_state(token: str) -> dict[str, Any] | None:
    """The decoded V2 continuation (read only, never edited), or None for any other token."""
    try:
        state = orjson.loads(base64.b64decode(token, validate=True))
    except (binascii.Error, orjson.JSONDecodeError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def continuation_spans_one_range(token: str) -> bool:
    """Whether a V2 token holds one sub-range (after a split it holds one per child)."""
    state = _v2_state(token)
    if state is None or not isinstance(state.get("continuation"), dict):
        return True
    parts = state["continuation"].get("continuation")
    return not isinstance(parts, list) or len(parts) <= 1


def is_point_in_time_token(token: str | None) -> bool:
    """A token the SDK wrote for a point-in-time start: it cannot read it back (4.17.1)."""
    state = _v2_state(token) if token else None
    start = state.get("startFrom") if state else None
    return isinstance(start, dict) and start.get("Type") == "PointInTime"


def continuation_is_resumable(token: str) -> bool:
    """Whether the SDK can read `token` back. A V2 token (base64 JSON) lists one sub-token per
    physical partition of the range; a partition not read yet since a split has a null one, and
    the SDK refuses the whole token ("Invalid composite token [Missing token]"). Only read here,
    never edited. Anything that is not a V2 token is the SDK's own business: resumable."""
    state = _v2_state(token)
    if state is None or is_point_in_time_token(token):
        return state is None
    if not isinstance(state.get("continuation"), dict):
        return True
    parts = state["continuation"].get("continuation")
    return isinstance(parts, list) and all(part.get("token") is not None for part in parts)


def _reached_lsn(token: str | None) -> int | None:
    """The LSN a one-range V2 token stands at (None for any other token)."""
    state = _v2_state(token) if token else None
    parts = state.get("continuation", {}).get("continuation") if state else None
    if not isinstance(parts, list) or len(parts) != 1 or not isinstance(parts[0], dict):
        return None
    try:
        return int(str(parts[0].get("token")).removeprefix("W/").strip('"'))
    except ValueError:
        return None


def _session_lsn(headers: Any) -> int | None:
    """The partition's global LSN in `x-ms-session-token` (`<range>:<version>#<lsn>...`)."""
    session = str(headers.get("x-ms-session-token", ""))
    try:
        return int(session.split(":", 1)[1].split("#")[1])
    except (IndexError, ValueError):
        return None


class CosmosChangeFeed:
    """The ChangeFeed port on the monitored container.

    A start at a time is read from the beginning (the processor skips what is older): the SDK
    writes a point-in-time start into every continuation and cannot parse it back
    (azure-cosmos 4.17.1, `ValueError: year ... is out of range`), so such a token never resumes."""

    def __init__(self, container: Any) -> None:
        self._container = container

    async def identity(self) -> str:
        properties = await self._container.read()
        return str(properties["_rid"]).replace("/", "-")

    async def feed_ranges(self, *, refresh: bool = True) -> list[dict[str, Any]]:
        return [
            feed_range
            async for feed_range in self._container.read_feed_ranges(force_refresh=refresh)
        ]

    def _pages(self, feed_range: dict[str, Any], continuation: str | None, max_items: int) -> Any:
        if continuation is not None:
            return self._container.query_items_change_feed(
                continuation=continuation, max_item_count=max_items
            )
        return self._container.query_items_change_feed(
            feed_range=feed_range, start_time="Beginning", max_item_count=max_items
        )

    async def read_page(
        self,
        feed_range: dict[str, Any],
        *,
        continuation: str | None,
        start: StartPosition,  # noqa: ARG002 - a time start is read from the beginning (above)
        max_items: int,
    ) -> Page:
        pager = self._pages(feed_range, continuation, max_items).by_page()
        try:
            page = await anext(pager)
        except StopAsyncIteration:
            # Nothing new (304): the SDK yields no page; the position this poll reached is only in
            # the client's last response headers. Read them now, before any other request.
            reached = self._container.client_connection.last_response_headers.get("etag")
            return Page([], reached or continuation, drained=True)
        items = [item async for item in page]
        token = pager.continuation_token
        # Whether the read reached the partition's latest LSN (its session token): a read short
        # of it (a narrow range scanned a few LSNs at a time, a full page) is followed at once.
        reached = _reached_lsn(token)
        head = _session_lsn(self._container.client_connection.last_response_headers)
        drained = None if reached is None or head is None else reached >= head
        return Page(items, token, drained=drained)

    def is_resumable(self, continuation: str) -> bool:
        return continuation_is_resumable(continuation)

    def spans_one_range(self, continuation: str) -> bool:
        return continuation_spans_one_range(continuation)

    async def estimate(
        self, feed_range: dict[str, Any], *, continuation: str | None, start: StartPosition
    ) -> Backlog:
        """As the .NET estimator: global LSN of the session token minus the first waiting item's
        LSN, plus one; 0 when nothing waits; 1 (a wake-up sentinel) before the first checkpoint.
        Also the `_ts` of that first waiting change."""
        if continuation is None:
            return Backlog(1, None)
        page = await self.read_page(feed_range, continuation=continuation, start=start, max_items=1)
        if not page.items:
            return Backlog(0, None)
        first = page.items[0]
        session = str(
            self._container.client_connection.last_response_headers.get("x-ms-session-token", "")
        )
        try:
            global_lsn = int(session.split(":", 1)[1].split("#")[1])
        except (IndexError, ValueError):
            global_lsn = int(first["_lsn"])
        return Backlog(max(1, global_lsn - (int(first["_lsn"]) - 1)), first.get("_ts"))


def _status(error: CosmosHttpResponseError) -> int | None:
    return error.status_code


class CosmosLeaseStore:
    """The LeaseStore port on a lease container (partition key /id, TTL on).

    Ids: `<prefix>..<min>-<max>` per lease, `<prefix>.lock` (with a TTL) during bootstrap,
    `<prefix>.info` once bootstrapped, `<prefix>.poison.<document id>` for poison records.
    Every write is an ETag-conditional replace fenced by (owner, owner token): a 412 is re-read
    and re-applied only while both are unchanged.
    """

    def __init__(
        self,
        container: Any,
        prefix: str,
        *,
        clock: Callable[[], float] = time.time,
        lock_ttl: int = 30,
        lock_retry: float = 2.0,
    ) -> None:
        self._container = container
        self.prefix = prefix
        self._clock = clock
        self._lock_ttl = lock_ttl
        self._lock_retry = lock_retry

    def lease_id(self, feed_range: dict[str, Any]) -> str:
        bounds = feed_range["Range"]
        return f"{self.prefix}..{bounds['min']}-{bounds['max']}"

    async def _read(self, item_id: str) -> dict[str, Any] | None:
        try:
            document: dict[str, Any] = await self._container.read_item(
                item_id, partition_key=item_id
            )
        except CosmosHttpResponseError as error:
            if _status(error) == 404:
                return None
            raise
        return document

    async def _create_if_absent(self, document: dict[str, Any]) -> None:
        try:
            await self._container.create_item(document)
        except CosmosResourceExistsError:
            return

    def _new_lease(self, feed_range: dict[str, Any], start: StartPosition) -> dict[str, Any]:
        return {
            "id": self.lease_id(feed_range), "kind": "lease", "schema": LEASE_SCHEMA,
            "version": LEASE_VERSION, "feed_range": feed_range, "owner": None, "owner_token": None,
            "continuation": None, "checkpoint_ts": None, "start": start.to_document(),
            "timestamp": self._clock(), "properties": {},
        }  # fmt: skip

    async def bootstrap(self, feed_ranges: Sequence[dict[str, Any]], start: StartPosition) -> None:
        info, lock = f"{self.prefix}.info", f"{self.prefix}.lock"
        while await self._read(info) is None:
            try:
                await self._container.create_item(
                    {"id": lock, "kind": "lock", "ttl": self._lock_ttl}
                )
            except CosmosResourceExistsError:
                LOG.info(
                    "another instance is creating the leases; waiting", retry_in_s=self._lock_retry
                )
                await asyncio.sleep(self._lock_retry)
                continue
            try:
                for feed_range in feed_ranges:
                    await self._create_if_absent(self._new_lease(feed_range, start))
                await self._create_if_absent(
                    {"id": info, "kind": "info", "leases": len(feed_ranges)}
                )
                LOG.info("leases created", leases=len(feed_ranges), prefix=self.prefix)
            finally:
                try:
                    await self._container.delete_item(lock, partition_key=lock)
                except CosmosHttpResponseError as error:
                    if _status(error) != 404:
                        raise

    @staticmethod
    def _lease(document: dict[str, Any]) -> Lease:
        """A lease of this version or of version 1 (no version field, no owner token). Version 1
        handed point-in-time starts to the SDK, whose tokens for them cannot be read back: such a
        continuation is dropped, and the lease reads again from its start (duplicates, no loss)."""
        continuation = document.get("continuation")
        if is_point_in_time_token(continuation):
            continuation = None
        return Lease(
            id=document["id"],
            feed_range=document["feed_range"],
            owner=document.get("owner"),
            continuation=continuation,
            start=StartPosition.from_document(document["start"]),
            timestamp=float(document.get("timestamp") or 0.0),
            etag=document["_etag"],
            owner_token=document.get("owner_token"),
            owner_incarnation=document.get("owner_incarnation"),
            request=document.get("request"),
            checkpoint_ts=document.get("checkpoint_ts"),
            version=int(document.get("version", 1)),
            properties=document.get("properties") or {},
        )

    def _document(self, lease: Lease, **changes: Any) -> dict[str, Any]:
        # `timestamp` (this writer's clock) is informational, and what version-1 replicas judge
        # expiry by during a rolling upgrade; this version judges by ETag changes it observed.
        document = {
            "id": lease.id, "kind": "lease", "schema": LEASE_SCHEMA, "version": LEASE_VERSION,
            "feed_range": lease.feed_range, "owner": lease.owner, "owner_token": lease.owner_token,
            "owner_incarnation": lease.owner_incarnation, "request": lease.request,
            "continuation": lease.continuation, "checkpoint_ts": lease.checkpoint_ts,
            "start": lease.start.to_document(), "timestamp": self._clock(),
            "properties": lease.properties,
        }  # fmt: skip
        return document | changes

    async def list_leases(self) -> list[Lease]:
        query = "SELECT * FROM c WHERE STARTSWITH(c.id, @prefix)"
        found = self._container.query_items(
            query, parameters=[{"name": "@prefix", "value": f"{self.prefix}.."}]
        )
        # A newer version's document may not parse as this version's lease: left alone.
        return [
            self._lease(document)
            async for document in found
            if int(document.get("version", 1)) <= LEASE_VERSION
        ]

    async def _fenced(
        self, lease: Lease, write: Callable[[Lease], Awaitable[Lease]], *, acquiring: bool = False
    ) -> Lease:
        """Run an ETag-conditional `write`; on a lost race re-read, and re-apply only while the
        owner and the owner token are the ones `lease` had (for an acquisition: only while the
        lease is unowned: a write in between by its owner proves the owner alive). 404: the lease
        is gone."""
        expected = (lease.owner, lease.owner_token)
        for _ in range(MAX_CONFLICT_RETRIES):
            try:
                return await write(lease)
            except CosmosHttpResponseError as error:
                if _status(error) == 404:
                    raise LeaseLostError(lease.id) from error
                if _status(error) != 412:
                    raise
            current = await self._read(lease.id)
            if current is None:
                raise LeaseLostError(lease.id)
            lease = self._lease(current)
            if (lease.owner, lease.owner_token) != expected or (acquiring and lease.owner):
                raise LeaseLostError(lease.id)
        raise LeaseLostError(f"{lease.id}: kept conflicting after {MAX_CONFLICT_RETRIES} attempts")

    async def _update(self, lease: Lease, *, acquiring: bool = False, **changes: Any) -> Lease:
        async def replace(current: Lease) -> Lease:
            replaced = await self._container.replace_item(
                current.id, self._document(current, **changes), etag=current.etag,
                match_condition=MatchConditions.IfNotModified,
            )  # fmt: skip
            return self._lease(replaced)

        return await self._fenced(lease, replace, acquiring=acquiring)

    async def acquire(self, lease: Lease, owner: str, incarnation: str | None = None) -> Lease:
        return await self._update(lease, acquiring=True, owner=owner, owner_token=uuid.uuid4().hex,
                                  owner_incarnation=incarnation, request=None)  # fmt: skip

    async def read(self, lease_id: str) -> Lease | None:
        document = await self._read(lease_id)
        return None if document is None else self._lease(document)

    async def request(self, lease: Lease, by: str) -> Lease:
        return await self._update(lease, request=by)

    async def renew(self, lease: Lease) -> Lease:
        return await self._update(lease)

    async def checkpoint(self, lease: Lease, continuation: str, checkpoint_ts: int | None) -> Lease:
        return await self._update(lease, continuation=continuation, checkpoint_ts=checkpoint_ts)

    async def release(self, lease: Lease) -> None:
        await self._update(lease, owner=None, owner_token=None, owner_incarnation=None)

    async def split(self, lease: Lease, children: Sequence[dict[str, Any]]) -> list[Lease]:
        start = lease.start
        not_before = start.not_before_ts
        if lease.checkpoint_ts is not None and (
            not_before is None or lease.checkpoint_ts > not_before
        ):
            start = StartPosition("time", datetime.fromtimestamp(lease.checkpoint_ts, UTC))
        created = []
        for child in children:
            document = self._new_lease(child, start)
            await self._create_if_absent(document)
            created.append(
                self._lease(await self._read(document["id"]) or document | {"_etag": ""})
            )

        async def delete(current: Lease) -> Lease:
            await self._container.delete_item(
                current.id, partition_key=current.id, etag=current.etag,
                match_condition=MatchConditions.IfNotModified,
            )  # fmt: skip
            return current

        try:
            await self._fenced(lease, delete)
        except LeaseLostError:
            if await self._read(lease.id) is not None:
                raise
        return created


class CosmosPoisonStore:
    """Events that can never be sent, kept in the lease container with the reason (no TTL)."""

    def __init__(self, container: Any, prefix: str) -> None:
        self._container = container
        self._prefix = prefix

    async def record(self, document: dict[str, Any], reason: str, detail: str) -> None:
        """Idempotent per source document: a replay overwrites the same record."""
        await self._container.upsert_item({
            "id": f"{self._prefix}.poison.{document.get('id', 'unknown')}", "kind": "poison",
            "reason": reason, "detail": detail, "document": document,
            "recorded_at": datetime.now(UTC).isoformat(),
        })  # fmt: skip

    async def list_records(self) -> list[dict[str, Any]]:
        query = "SELECT * FROM c WHERE STARTSWITH(c.id, @prefix)"
        found = self._container.query_items(
            query, parameters=[{"name": "@prefix", "value": f"{self._prefix}.poison."}]
        )
        return [document async for document in found]
