"""In-memory views of databases, containers and partition key ranges, and how they look on the wire.

The model keeps these for every container (the store is written through), so a request finds its
container and the range of an effective partition key without touching SQLite.
"""

from __future__ import annotations

import base64
import bisect
import os
from dataclasses import dataclass, field
from typing import Any

from eventflow_emulators.cosmos.epk import EpkRange


def new_rid(parent: str = "", size: int = 4) -> str:
    """A resource id in the service's style: base64 of the parent's bytes plus new ones, with
    '/' written as '-' (database 4 bytes, container 8, item 16)."""
    raw = base64.b64decode(parent.replace("-", "/")) if parent else b""
    return base64.b64encode(raw + os.urandom(size)).decode().replace("/", "-")


def quoted_etag() -> str:
    """Azure ETags are opaque strings in double quotes, e.g. "\\"0000a1b2-0000-0800-...\\""."""
    token = os.urandom(8).hex()
    return f'"{token[:8]}-0000-0800-0000-{token[8:]}0000"'


@dataclass
class PartitionRange:
    """A partition key range (a physical partition): its EPK bounds, ancestry and write LSN."""

    id: str
    min: str
    max: str
    parents: list[str]
    lsn: int
    generation: int
    gone: bool
    ts: int

    @property
    def epk_range(self) -> EpkRange:
        return EpkRange(self.min, self.max)

    def session_token(self) -> str:
        # <pk range id>:<version>#<global LSN>: the SDK's VectorSessionToken format
        # (azure/cosmos/_vector_session_token.py), version -1 as the service sends it.
        return f"{self.id}:-1#{self.lsn}"


@dataclass
class Database:
    id: str
    rid: str
    ts: int
    etag: str

    def to_wire(self) -> dict[str, Any]:
        return {
            "id": self.id, "_rid": self.rid, "_self": f"dbs/{self.rid}/", "_etag": self.etag,
            "_colls": "colls/", "_users": "users/", "_ts": self.ts,
        }  # fmt: skip


@dataclass
class Container:
    """A container: its properties as the client sent them plus system ones, and its ranges."""

    db: str
    id: str
    rid: str
    db_rid: str
    properties: dict[str, Any]
    next_range_id: int
    generation: int
    ranges: list[PartitionRange] = field(default_factory=list)
    _live: list[PartitionRange] = field(default_factory=list, repr=False)
    _mins: list[str] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        self.reindex()

    def reindex(self) -> None:
        """Recompute the live ranges after a split or load."""
        self._live = sorted((r for r in self.ranges if not r.gone), key=lambda r: r.min)
        self._mins = [r.min for r in self._live]

    @property
    def pk_paths(self) -> list[list[str]]:
        paths: list[str] = self.properties["partitionKey"]["paths"]
        return [path.strip("/").split("/") for path in paths]

    @property
    def default_ttl(self) -> int | None:
        value = self.properties.get("defaultTtl")
        return None if value is None else int(value)

    @property
    def self_link(self) -> str:
        return f"dbs/{self.db_rid}/colls/{self.rid}/"

    def live_ranges(self) -> list[PartitionRange]:
        return self._live

    def range_for(self, epk: str) -> PartitionRange:
        return self._live[bisect.bisect_right(self._mins, epk) - 1]

    def range_by_id(self, range_id: str) -> PartitionRange | None:
        for candidate in self.ranges:
            if candidate.id == range_id:
                return candidate
        return None

    def to_wire(self) -> dict[str, Any]:
        return self.properties | {"_self": self.self_link}

    def range_to_wire(self, partition: PartitionRange) -> dict[str, Any]:
        return {
            "_rid": self.rid, "id": partition.id, "_etag": f'"{partition.generation}"',
            "minInclusive": partition.min, "maxExclusive": partition.max,
            "ridPrefix": int(partition.id), "_self": f"{self.self_link}pkranges/{partition.id}/",
            "throughputFraction": 1 / max(1, len(self._live)), "status": "online",
            "parents": partition.parents, "_ts": partition.ts, "_lsn": partition.lsn,
        }  # fmt: skip
