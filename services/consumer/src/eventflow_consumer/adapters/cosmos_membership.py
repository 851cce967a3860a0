"""CosmosMembership: the consumer replicas of one inbox, as heartbeat records in a small container of
the consumer's own (`consumer-members`, partition key /queue), on azure-cosmos aio.

One record per replica, `{id: <member>, queue: <inbox>, lanes: <N>, ttl: <expiry>}`, upserted
every period; all the records of an inbox are in one logical partition, so reading the members is
one single-partition query. A record not written for `expiry_seconds` no longer counts: Cosmos DB
deletes it (the item's `ttl`; the container has TTL on, default -1), and until the deletion runs a
record whose `_ts` is older than the heartbeat just written by this replica, minus the expiry, is
left out (both times are the server's, so the replicas' clocks do not matter).

CosmosLaneCounts: the lane counts the inbox has been used with (the generation barrier's record,
eventflow_consumer.barrier), one record in the same container under a logical partition of its own
(`<inbox>#lane-counts`), so the members query never reads it.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from azure.core import MatchConditions
from azure.cosmos.exceptions import CosmosHttpResponseError

from eventflow_consumer.adapters.cosmos_projection import _guarded

MEMBERS_PARTITION_KEY_PATH = "/queue"


class CosmosMembership:
    def __init__(
        self, container: Any, *, queue: str, member_id: str, lanes: int, expiry_seconds: float
    ) -> None:
        self._container = container
        self._queue = queue
        self.member_id = member_id
        self._lanes = lanes
        self._expiry = max(1, math.ceil(expiry_seconds))

    async def beat(self) -> frozenset[str]:
        record = {"id": self.member_id, "queue": self._queue, "lanes": self._lanes,
                  "ttl": self._expiry}  # fmt: skip
        written: dict[str, Any] = await _guarded(lambda: self._container.upsert_item(record))
        now = int(written["_ts"])

        async def members() -> list[dict[str, Any]]:
            found = self._container.query_items(
                "SELECT c.id, c._ts FROM c WHERE c.queue = @queue",
                parameters=[{"name": "@queue", "value": self._queue}],
                partition_key=self._queue,
            )
            return [item async for item in found]

        items = await _guarded(members)
        live = {str(i["id"]) for i in items if int(i["_ts"]) >= now - self._expiry}
        return frozenset(live | {self.member_id})

    async def leave(self) -> None:
        try:
            await _guarded(
                lambda: self._container.delete_item(self.member_id, partition_key=self._queue)
            )
        except CosmosHttpResponseError as error:
            if error.status_code != 404:
                raise


LANE_COUNTS_KEPT = 8
"""The newest lane counts the record keeps (older ones are assumed drained)."""


class CosmosLaneCounts:
    """`{id: "lane-counts", queue: "<inbox>#lane-counts", counts: [{count, noted}]}`, oldest first
    (the order is the record's, not the replicas' clocks; `noted` is for operators), changed only
    on its ETag, so concurrent notes never lose one another."""

    def __init__(self, container: Any, *, queue: str) -> None:
        self._container = container
        self._queue = queue
        self._key = f"{queue}#lane-counts"

    async def _read(self) -> dict[str, Any] | None:
        try:
            record: dict[str, Any] = await _guarded(
                lambda: self._container.read_item("lane-counts", partition_key=self._key)
            )
        except CosmosHttpResponseError as error:
            if error.status_code == 404:
                return None
            raise
        return record

    async def counts(self) -> list[int]:
        record = await self._read()
        return [int(entry["count"]) for entry in (record or {}).get("counts", [])]

    async def note(self, count: int, *, current: bool) -> None:
        while not await self._noted(count, current, await self._read()):
            pass  # another replica noted one meanwhile: read again

    async def _members_run(self, count: int) -> bool:
        """Whether a member record of the inbox (a replica alive within its expiry) names `count`."""

        async def lanes() -> list[Any]:
            found = self._container.query_items(
                "SELECT VALUE c.lanes FROM c WHERE c.queue = @queue",
                parameters=[{"name": "@queue", "value": self._queue}],
                partition_key=self._queue,
            )
            return [value async for value in found]

        return count in {int(value) for value in await _guarded(lanes) if value is not None}

    async def _noted(self, count: int, current: bool, record: dict[str, Any] | None) -> bool:
        """A count already there moves to the newest place only once no replica runs the newest:
        a replica of the old count that starts during a change (a restart, a scale-out) must not
        make the old count look newer than the one replacing it."""
        entries = list((record or {}).get("counts", []))  # oldest first
        there = [int(entry["count"]) for entry in entries]
        if (not current and count in there) or (current and there[-1:] == [count]):
            return True
        if current and count in there and await self._members_run(there[-1]):
            return True
        entry = {"count": count, "noted": datetime.now(UTC).isoformat()}
        others = [e for e in entries if int(e["count"]) != count]
        entries = [*others, entry] if current else [entry, *others]
        body = {"id": "lane-counts", "queue": self._key, "counts": entries[-LANE_COUNTS_KEPT:]}
        try:
            if record is None:
                await _guarded(lambda: self._container.create_item(body))
            else:
                await _guarded(lambda: self._container.replace_item(
                    "lane-counts", body, etag=record["_etag"],
                    match_condition=MatchConditions.IfNotModified))  # fmt: skip
        except CosmosHttpResponseError as error:
            if error.status_code in (409, 412):
                return False
            raise
        return True
