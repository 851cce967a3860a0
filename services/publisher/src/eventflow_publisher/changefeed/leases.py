"""Leases: one per feed range, the unit of ownership and of checkpointing."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

LEASE_VERSION = 2
"""The lease document format this code writes. Version 1 (no owner token, no checkpoint time) is
read and upgraded on the next write; a newer version is left alone (a newer replica owns the
format during a rolling upgrade)."""


@dataclass(frozen=True, slots=True)
class StartPosition:
    """Where a lease without a continuation starts. Stored in the lease at creation, with "now"
    turned into the creation time, so a restart never skips changes made in between.

    A start at a time is read from the beginning of the range, skipping documents last modified
    before it (`_ts`, whole seconds, so changes of the start's own second are kept): the SDK cannot
    resume a continuation it wrote for a point-in-time start (see the README)."""

    kind: Literal["beginning", "time"]
    time: datetime | None = None

    def to_document(self) -> dict[str, Any]:
        return {"kind": self.kind, "time": self.time.isoformat() if self.time else None}

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> StartPosition:
        moment = document.get("time")
        return cls(document["kind"], datetime.fromisoformat(moment) if moment else None)

    @property
    def not_before_ts(self) -> int | None:
        """Documents with a `_ts` below this are before the start (None: keep everything)."""
        if self.kind != "time" or self.time is None:
            return None
        return math.floor(self.time.timestamp())


@dataclass(frozen=True, slots=True)
class Lease:
    """A lease as last read or written; `etag` guards the next write.

    `owner` is the instance name (for people, and what version-1 replicas compare);
    `owner_incarnation` names the owning process's run (a new one per start), the owner as
    balancing counts it: two live processes with one name are two owners. `owner_token` changes
    on every acquisition: a write by a worker whose token is no longer the lease's fails, so one
    lease never has two writers. `request`: the incarnation that asked for the lease (a steal);
    every write of the owner keeps it, and the owner hands the lease over at a page boundary.
    `checkpoint_ts` is the largest `_ts` of the changes handled up to the continuation: children
    of a split range start there."""

    id: str
    feed_range: dict[str, Any]
    owner: str | None
    continuation: str | None
    start: StartPosition
    timestamp: float
    etag: str
    owner_token: str | None = None
    owner_incarnation: str | None = None
    request: str | None = None
    checkpoint_ts: int | None = None
    version: int = LEASE_VERSION
    properties: dict[str, Any] = field(default_factory=dict)


class LeaseLostError(Exception):
    """The lease is owned by another instance or acquisition now (or was deleted): stop work on
    its range."""


class LeaseStore(Protocol):
    """Leases of one processor (one name, one monitored container) in a lease container.

    Every write is conditional on the lease's ETag and fenced by the owner token: a write that
    finds another owner or token raises LeaseLostError. Any other exception is transient (the
    store throttled, timed out or was unreachable) and the caller may retry."""

    async def bootstrap(self, feed_ranges: Sequence[dict[str, Any]], start: StartPosition) -> None:
        """Create one lease per feed range, once, under a lock with a TTL (a crash during
        bootstrap blocks nobody for longer than the TTL). Idempotent."""
        ...

    async def list_leases(self) -> list[Lease]:
        """Every lease of this processor."""
        ...

    async def acquire(self, lease: Lease, owner: str, incarnation: str | None = None) -> Lease:
        """Take `lease` as last listed (owner, ETag) with a new owner token, for the process run
        `incarnation`, clearing any request. LeaseLostError when it changed since."""
        ...

    async def read(self, lease_id: str) -> Lease | None:
        """The lease as stored now (None when it is gone)."""
        ...

    async def request(self, lease: Lease, by: str) -> Lease:
        """Ask the owner for `lease` (owner and token unchanged; the owner's writes keep the
        request). LeaseLostError when the owner changed since `lease` was listed."""
        ...

    async def renew(self, lease: Lease) -> Lease:
        """Rewrite a lease this acquisition owns, so others see it alive."""
        ...

    async def checkpoint(self, lease: Lease, continuation: str, checkpoint_ts: int | None) -> Lease:
        """Store the continuation reached, only while this acquisition still owns the lease."""
        ...

    async def release(self, lease: Lease) -> None:
        """Give the lease up (no owner, incarnation or token) so another instance can take it at
        once; a request stays: the asker is its next owner."""
        ...

    async def split(self, lease: Lease, children: Sequence[dict[str, Any]]) -> list[Lease]:
        """Replace an owned lease whose range was split by one unowned lease per child range,
        each starting where the parent stood (its checkpoint time, else its own start); then
        delete the parent. Idempotent: a crash in between is finished by the next owner."""
        ...
