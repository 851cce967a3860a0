"""A SQLite checkpoint store implementing the Event Hubs SDK's `CheckpointStore` interface.

For machines without Node (no Azurite). It behaves like the SDK's BlobCheckpointStore: names are
compared lowercased, a claim with a stale ETag loses (the partition is missing from the result),
a claim without an ETag overwrites (Blob Storage does not enforce If-None-Match on metadata).
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Iterable
from typing import Any

from azure.eventhub.aio import CheckpointStore

from eventflow_local.environment import LocalEnvironment

SCHEMA = """
CREATE TABLE IF NOT EXISTS eh_ownership (
    scope TEXT NOT NULL, partition_id TEXT NOT NULL, owner_id TEXT NOT NULL,
    etag TEXT NOT NULL, last_modified REAL NOT NULL, PRIMARY KEY (scope, partition_id)
);
CREATE TABLE IF NOT EXISTS eh_checkpoints (
    scope TEXT NOT NULL, partition_id TEXT NOT NULL, offset TEXT, sequence_number INTEGER,
    PRIMARY KEY (scope, partition_id)
);
"""


def _scope(namespace: str, eventhub: str, consumer_group: str) -> str:
    return f"{namespace}/{eventhub}/{consumer_group}".lower()


class SqliteCheckpointStore(CheckpointStore):
    """Partition ownership and checkpoints in the environment's eventhubs file."""

    def __init__(self, environment: LocalEnvironment) -> None:
        self._database = environment.open("eventhubs", SCHEMA)

    async def __aenter__(self) -> SqliteCheckpointStore:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        self._database.close()

    async def list_ownership(
        self, fully_qualified_namespace: str, eventhub_name: str, consumer_group: str, **_: Any
    ) -> Iterable[dict[str, Any]]:
        rows = await self._database.read(
            lambda c: c.execute(
                "SELECT partition_id, owner_id, etag, last_modified FROM eh_ownership WHERE scope = ?",
                (_scope(fully_qualified_namespace, eventhub_name, consumer_group),),
            ).fetchall()
        )
        return [
            {
                "fully_qualified_namespace": fully_qualified_namespace,
                "eventhub_name": eventhub_name,
                "consumer_group": consumer_group,
                "partition_id": partition_id,
                "owner_id": owner_id or None,  # Blob Storage drops the empty owner of a release
                "etag": etag,
                "last_modified_time": last_modified,
            }
            for partition_id, owner_id, etag, last_modified in rows
        ]

    async def claim_ownership(
        self, ownership_list: Iterable[dict[str, Any]], **_: Any
    ) -> Iterable[dict[str, Any]]:
        """The claims that won; a claim whose ETag is stale is left out of the result."""
        claims = [dict(ownership) for ownership in ownership_list]

        def work(connection: sqlite3.Connection) -> list[dict[str, Any]]:
            won = []
            for claim in claims:
                scope = _scope(
                    claim["fully_qualified_namespace"],
                    claim["eventhub_name"],
                    claim["consumer_group"],
                )
                row = connection.execute(
                    "SELECT etag FROM eh_ownership WHERE scope = ? AND partition_id = ?",
                    (scope, claim["partition_id"]),
                ).fetchone()
                if row is not None and claim.get("etag") and claim["etag"] != row[0]:
                    continue
                claim["etag"], claim["last_modified_time"] = f'"{uuid.uuid4().hex}"', time.time()
                connection.execute(
                    "INSERT OR REPLACE INTO eh_ownership VALUES (?, ?, ?, ?, ?)",
                    (scope, claim["partition_id"], claim["owner_id"], claim["etag"],
                     claim["last_modified_time"]),
                )  # fmt: skip
                won.append(claim)
            return won

        return await self._database.write(work)

    async def update_checkpoint(self, checkpoint: dict[str, Any], **_: Any) -> None:
        scope = _scope(
            checkpoint["fully_qualified_namespace"],
            checkpoint["eventhub_name"],
            checkpoint["consumer_group"],
        )
        await self._database.write(
            lambda c: c.execute(
                "INSERT OR REPLACE INTO eh_checkpoints VALUES (?, ?, ?, ?)",
                (
                    scope,
                    checkpoint["partition_id"],
                    checkpoint.get("offset"),
                    checkpoint.get("sequence_number"),
                ),
            )
        )

    async def list_checkpoints(
        self, fully_qualified_namespace: str, eventhub_name: str, consumer_group: str, **_: Any
    ) -> Iterable[dict[str, Any]]:
        rows = await self._database.read(
            lambda c: c.execute(
                "SELECT partition_id, offset, sequence_number FROM eh_checkpoints WHERE scope = ?",
                (_scope(fully_qualified_namespace, eventhub_name, consumer_group),),
            ).fetchall()
        )
        return [
            {
                "fully_qualified_namespace": fully_qualified_namespace,
                "eventhub_name": eventhub_name,
                "consumer_group": consumer_group,
                "partition_id": partition_id,
                "offset": offset,
                "sequence_number": sequence_number,
            }
            for partition_id, offset, sequence_number in rows
        ]
