"""CosmosMembership: the consumer replicas of one inbox, as heartbeat records in a small container of
the consumer's own (`consumer-members`, partition key /queue), on azure-cosmos aio.

One record per replica, `{id: <member>, queue: <inbox>, lanes: <N>, ttl: <expiry>}`, upserted
every period; all the records of an inbox are in one logical partition, so reading the members is
one single-partition query. A record not written for `expiry_seconds` no longer counts: Cosmos DB
deletes it (the item's `ttl`; the container has TTL on, default -1), and until the deletion runs a
record whose `_ts` is older than the heartbeat just written by this replica, minus the expiry, is
left out (both times are the server's, so the replicas' clocks do not matter).
"""

from __future__ import annotations

import math
from typing import Any

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
