"""Leases: one per feed range, the unit of ownership and of checkpointing."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol


@dataclass(frozen=True, slots=True)
class StartPosition:
    """Where a lease without a continuation starts. Stored in the lease at creation, with "now"
    turned into the creation time, so a restart never skips changes made in between."""

    kind: Literal["beginning", "time"]
    time: datetime | None = None

    def to_document(self) -> dict[str, Any]:
        return {"kind": self.kind, "time": self.time.isoformat() if self.time else None}

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> StartPosition:
        moment = document.get("time")
        return cls(document["kind"], datetime.fromisoformat(moment) if moment else None)


@dataclass(frozen=True, slots=True)
class Lease:
    """A lease as last read or written; `etag` guards the next write."""

    id: str
    feed_range: dict[str, Any]
    owner: str | None
    continuation: str | None
    start: StartPosition
    timestamp: float
    etag: str
    properties: dict[str, Any] = field(default_factory=dict)


class LeaseLostError(Exception):
    """The lease is owned by another instance now (or was deleted): stop work on its range."""


class LeaseStore(Protocol):
    """Leases of one processor (one name, one monitored container) in a lease container.

    Every write is conditional on the lease's ETag. A write that finds another owner raises
    LeaseLostError; a write that only lost a race with this owner's own other write (renew vs
    checkpoint) is re-read and re-applied."""

    async def bootstrap(self, feed_ranges: Sequence[dict[str, Any]], start: StartPosition) -> None:
        """Create one lease per feed range, once, under a lock with a TTL (a crash during
        bootstrap blocks nobody for longer than the TTL). Idempotent."""
        ...

    async def list_leases(self) -> list[Lease]:
        """Every lease of this processor."""
        ...

    async def acquire(self, lease: Lease, owner: str) -> Lease:
        """Take `lease` as last listed (owner, ETag). LeaseLostError when it changed since."""
        ...

    async def renew(self, lease: Lease) -> Lease:
        """Refresh the timestamp of a lease this instance owns."""
        ...

    async def checkpoint(self, lease: Lease, continuation: str) -> Lease:
        """Store the continuation reached, only while this instance still owns the lease."""
        ...

    async def release(self, lease: Lease) -> None:
        """Give the lease up (owner = none) so another instance can take it at once."""
        ...
