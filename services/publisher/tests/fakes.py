"""Fakes of the change feed processor's own ports (ChangeFeed, LeaseStore), in memory, with the
semantics the Cosmos DB adapters implement: ETag-conditional, owner-token-fenced lease writes, and
a feed whose continuation is a position. They record what was written, for assertions."""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from eventflow_publisher.changefeed import Backlog, Lease, LeaseLostError, Page, StartPosition
from eventflow_publisher.changefeed.ranges import bounds


def feed_range(low: str, high: str) -> dict[str, Any]:
    return {"Range": {"min": low, "max": high, "isMinInclusive": True, "isMaxInclusive": False}}


class Unavailable(Exception):
    """A transient store failure (what a 503 or a timeout is to the adapters)."""


@dataclass
class Write:
    """One accepted lease write: `token` is the writer's (the new one for an acquisition)."""

    lease_id: str
    kind: str
    owner: str | None
    token: str | None
    continuation: str | None


@dataclass
class FakeLeaseStore:
    leases: dict[str, Lease] = field(default_factory=dict)
    writes: list[Write] = field(default_factory=list)
    failing: dict[str, int] = field(default_factory=dict)  # kind -> transient failures to inject
    failing_leases: set[str] = field(default_factory=set)  # every write to these fails
    listings: int = 0  # list_leases calls that answered (a balancing round each)
    _etags: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def _etag(self) -> str:
        return f'"{next(self._etags)}"'

    def _check(self, kind: str, lease: Lease) -> Lease:
        if self.failing.get(kind, 0) > 0:
            self.failing[kind] -= 1
            raise Unavailable(kind)
        if lease.id in self.failing_leases:
            raise Unavailable(lease.id)
        current = self.leases.get(lease.id)
        if current is None:
            raise LeaseLostError(lease.id)
        if (current.owner, current.owner_token) != (lease.owner, lease.owner_token):
            raise LeaseLostError(lease.id)
        return current

    def _write(self, kind: str, lease: Lease, **changes: Any) -> Lease:
        current = self._check(kind, lease)
        written = replace(current, etag=self._etag(), **changes)
        self.leases[lease.id] = written
        writer = written.owner_token if kind == "acquire" else lease.owner_token
        self.writes.append(Write(lease.id, kind, written.owner, writer, written.continuation))
        return written

    def add(
        self, range_: dict[str, Any], start: StartPosition | None = None, **fields: Any
    ) -> Lease:
        low, high = bounds(range_)
        lease = Lease(
            id=f"p..{low}-{high}", feed_range=range_, owner=None, continuation=None,
            start=start or StartPosition("beginning"), timestamp=0.0, etag=self._etag(),
        )  # fmt: skip
        lease = replace(lease, **fields)
        self.leases[lease.id] = lease
        return lease

    async def bootstrap(self, feed_ranges: Sequence[dict[str, Any]], start: StartPosition) -> None:
        if not self.leases:
            for range_ in feed_ranges:
                self.add(range_, start)

    async def list_leases(self) -> list[Lease]:
        if self.failing.get("list", 0) > 0:
            self.failing["list"] -= 1
            raise Unavailable("list")
        self.listings += 1
        return list(self.leases.values())

    async def acquire(self, lease: Lease, owner: str, incarnation: str | None = None) -> Lease:
        current = self.leases.get(lease.id)
        if current is None or (current.owner, current.owner_token) != (
            lease.owner,
            lease.owner_token,
        ):
            raise LeaseLostError(lease.id)
        if current.etag != lease.etag and current.owner is not None:
            raise LeaseLostError(lease.id)  # its owner wrote since the listing: alive
        return self._write("acquire", current, owner=owner, owner_token=uuid.uuid4().hex,
                           owner_incarnation=incarnation, request=None)  # fmt: skip

    async def read(self, lease_id: str) -> Lease | None:
        if self.failing.get("read", 0) > 0:
            self.failing["read"] -= 1
            raise Unavailable("read")
        return self.leases.get(lease_id)

    async def request(self, lease: Lease, by: str) -> Lease:
        current = self._check("request", lease)
        written = replace(current, etag=self._etag(), request=by)
        self.leases[lease.id] = written
        return written

    async def renew(self, lease: Lease) -> Lease:
        return self._write("renew", lease)

    async def checkpoint(self, lease: Lease, continuation: str, checkpoint_ts: int | None) -> Lease:
        return self._write(
            "checkpoint", lease, continuation=continuation, checkpoint_ts=checkpoint_ts
        )

    async def release(self, lease: Lease) -> None:
        self._write("release", lease, owner=None, owner_token=None, owner_incarnation=None)

    async def split(self, lease: Lease, children: Sequence[dict[str, Any]]) -> list[Lease]:
        self._check("split", lease)
        start = lease.start
        not_before = start.not_before_ts
        if lease.checkpoint_ts is not None and (
            not_before is None or lease.checkpoint_ts > not_before
        ):
            start = StartPosition("time", datetime.fromtimestamp(lease.checkpoint_ts, UTC))
        created = [self.add(child, start) for child in children]
        del self.leases[lease.id]
        self.writes.append(Write(lease.id, "split", None, None, None))
        return created

    def checkpoints(self, lease_id: str) -> list[Write]:
        return [w for w in self.writes if w.lease_id == lease_id and w.kind == "checkpoint"]


@dataclass
class FakeChangeFeed:
    """Items per feed range (by bounds); a continuation is `<position>` in that range's list.
    `unresumable` positions come back with a token the processor must not checkpoint."""

    ranges: list[dict[str, Any]]
    items: dict[tuple[str, str], list[dict[str, Any]]] = field(default_factory=dict)
    reads: int = 0
    read_times: list[float] = field(default_factory=list)  # time.monotonic() of each read
    failing_reads: int = 0
    unresumable: set[int] = field(default_factory=set)
    multi_range: bool = False  # tokens read several sub-ranges in turn (after a split)
    empty_page_token: str | None = None

    def append(self, range_: dict[str, Any], *documents: dict[str, Any]) -> None:
        self.items.setdefault(bounds(range_), []).extend(documents)

    async def identity(self) -> str:
        return "rid"

    async def feed_ranges(self, *, refresh: bool = True) -> list[dict[str, Any]]:
        return list(self.ranges)

    async def read_page(
        self,
        feed_range: dict[str, Any],
        *,
        continuation: str | None,
        start: StartPosition,
        max_items: int,
    ) -> Page:
        self.reads += 1
        self.read_times.append(time.monotonic())
        if self.failing_reads:
            self.failing_reads -= 1
            raise Unavailable("read")
        position = int(continuation.lstrip("xm")) if continuation else 0
        waiting = self.items.get(bounds(feed_range), [])[position : position + max_items]
        reached = position + len(waiting)
        if not waiting and self.empty_page_token is not None:
            return Page([], self.empty_page_token)
        token = f"m{reached}" if self.multi_range else str(reached)
        if reached in self.unresumable:
            self.unresumable.discard(reached)  # the SDK fills a missing sub-token on a later read
            token = f"x{reached}"
        return Page(list(waiting), token)

    def is_resumable(self, continuation: str) -> bool:
        return not continuation.startswith("x")

    def spans_one_range(self, continuation: str) -> bool:
        return not continuation.startswith("m")

    async def estimate(
        self, feed_range: dict[str, Any], *, continuation: str | None, start: StartPosition
    ) -> Backlog:
        position = int(continuation.lstrip("xm")) if continuation else 0
        waiting = self.items.get(bounds(feed_range), [])[position:]
        return Backlog(len(waiting), waiting[0].get("_ts") if waiting else None)
