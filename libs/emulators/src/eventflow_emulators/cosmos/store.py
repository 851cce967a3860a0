"""Durability: one SQLite file (WAL) holding databases, containers, partition key ranges and items.

The only module that knows the tables. The emulator process is the file's only user, so the model
keeps what it reads often (containers and their ranges) in memory and writes through. Item bodies
are stored as the exact JSON bytes the service returns, so a point read sends them unchanged.
`synchronous = NORMAL` in WAL mode survives a crash of the process (not of the machine).
"""

from __future__ import annotations

import fcntl
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS databases (
    id TEXT PRIMARY KEY, rid TEXT NOT NULL UNIQUE, ts INTEGER NOT NULL, etag TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS containers (
    db TEXT NOT NULL, id TEXT NOT NULL, rid TEXT NOT NULL UNIQUE, properties BLOB NOT NULL,
    next_range_id INTEGER NOT NULL, generation INTEGER NOT NULL,
    PRIMARY KEY (db, id)
);
CREATE TABLE IF NOT EXISTS pkranges (
    coll_rid TEXT NOT NULL, id TEXT NOT NULL, min TEXT NOT NULL, max TEXT NOT NULL,
    parents TEXT NOT NULL, lsn INTEGER NOT NULL, generation INTEGER NOT NULL,
    gone INTEGER NOT NULL DEFAULT 0, ts INTEGER NOT NULL,
    PRIMARY KEY (coll_rid, id)
);
CREATE TABLE IF NOT EXISTS items (
    coll_rid TEXT NOT NULL, pk TEXT NOT NULL, id TEXT NOT NULL, epk TEXT NOT NULL,
    lsn INTEGER NOT NULL, seq INTEGER NOT NULL, ts INTEGER NOT NULL, expires REAL,
    body BLOB NOT NULL,
    PRIMARY KEY (coll_rid, pk, id)
);
CREATE INDEX IF NOT EXISTS items_by_lsn ON items (coll_rid, lsn, seq);
CREATE INDEX IF NOT EXISTS items_by_expiry ON items (expires) WHERE expires IS NOT NULL;
"""


@dataclass(frozen=True)
class DatabaseRow:
    id: str
    rid: str
    ts: int
    etag: str


@dataclass(frozen=True)
class ContainerRow:
    db: str
    id: str
    rid: str
    properties: bytes
    next_range_id: int
    generation: int


@dataclass(frozen=True)
class RangeRow:
    id: str
    min: str
    max: str
    parents: str
    lsn: int
    generation: int
    gone: bool
    ts: int


@dataclass(frozen=True)
class ItemRow:
    pk: str
    id: str
    epk: str
    lsn: int
    seq: int
    ts: int
    expires: float | None
    body: bytes


class StoreInUseError(RuntimeError):
    """The data file is held by another emulator process."""


_LIVE = "(expires IS NULL OR expires > ?)"
_ITEM_COLUMNS = "pk, id, epk, lsn, seq, ts, expires, body"


class Store:
    """Synchronous SQLite access; every call runs on the caller's thread (the event loop)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # The model caches the file's state in memory, so a second emulator on the same file
        # would diverge from it: hold an exclusive lock for the life of the store.
        self._lock = (path.parent / f"{path.name}.lock").open("w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise StoreInUseError(f"another emulator is using {path}") from None
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = NORMAL")
        self._db.execute("PRAGMA busy_timeout = 5000")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        self._db.close()
        self._lock.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """All writes inside commit together, or none if the block raises."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # -- databases ----------------------------------------------------------------------------

    def databases(self) -> list[DatabaseRow]:
        rows = self._db.execute("SELECT id, rid, ts, etag FROM databases ORDER BY rowid")
        return [DatabaseRow(*row) for row in rows]

    def insert_database(self, row: DatabaseRow) -> None:
        self._db.execute(
            "INSERT INTO databases (id, rid, ts, etag) VALUES (?, ?, ?, ?)",
            (row.id, row.rid, row.ts, row.etag),
        )

    def delete_database(self, database: str) -> None:
        for (rid,) in self._db.execute(
            "SELECT rid FROM containers WHERE db = ?", (database,)
        ).fetchall():
            self.delete_container(database, rid)
        self._db.execute("DELETE FROM databases WHERE id = ?", (database,))

    # -- containers and ranges ----------------------------------------------------------------

    def containers(self) -> list[ContainerRow]:
        rows = self._db.execute(
            "SELECT db, id, rid, properties, next_range_id, generation FROM containers "
            "ORDER BY rowid"
        )
        return [ContainerRow(*row) for row in rows]

    def insert_container(self, row: ContainerRow) -> None:
        self._db.execute(
            "INSERT INTO containers (db, id, rid, properties, next_range_id, generation) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (row.db, row.id, row.rid, row.properties, row.next_range_id, row.generation),
        )

    def update_container(
        self, rid: str, properties: bytes, next_range_id: int, generation: int
    ) -> None:
        self._db.execute(
            "UPDATE containers SET properties = ?, next_range_id = ?, generation = ? WHERE rid = ?",
            (properties, next_range_id, generation, rid),
        )

    def delete_container(self, database: str, rid: str) -> None:
        self._db.execute("DELETE FROM containers WHERE db = ? AND rid = ?", (database, rid))
        self._db.execute("DELETE FROM pkranges WHERE coll_rid = ?", (rid,))
        self._db.execute("DELETE FROM items WHERE coll_rid = ?", (rid,))

    def ranges(self, coll_rid: str) -> list[RangeRow]:
        rows = self._db.execute(
            "SELECT id, min, max, parents, lsn, generation, gone, ts FROM pkranges "
            "WHERE coll_rid = ? ORDER BY CAST(id AS INTEGER)",
            (coll_rid,),
        )
        return [
            RangeRow(row[0], row[1], row[2], row[3], row[4], row[5], bool(row[6]), row[7])
            for row in rows
        ]

    def insert_range(self, coll_rid: str, row: RangeRow) -> None:
        self._db.execute(
            "INSERT INTO pkranges (coll_rid, id, min, max, parents, lsn, generation, gone, ts) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (coll_rid, row.id, row.min, row.max, row.parents, row.lsn, row.generation,
             int(row.gone), row.ts),
        )  # fmt: skip

    def mark_range_gone(self, coll_rid: str, range_id: str) -> None:
        self._db.execute(
            "UPDATE pkranges SET gone = 1 WHERE coll_rid = ? AND id = ?", (coll_rid, range_id)
        )

    def set_range_lsn(self, coll_rid: str, range_id: str, lsn: int) -> None:
        self._db.execute(
            "UPDATE pkranges SET lsn = ? WHERE coll_rid = ? AND id = ?", (lsn, coll_rid, range_id)
        )

    # -- items --------------------------------------------------------------------------------

    def item(self, coll_rid: str, pk: str, item_id: str, now: float) -> ItemRow | None:
        row = self._db.execute(
            f"SELECT {_ITEM_COLUMNS} FROM items WHERE coll_rid = ? AND pk = ? AND id = ? AND {_LIVE}",
            (coll_rid, pk, item_id, now),
        ).fetchone()
        return None if row is None else ItemRow(*row)

    def put_item(self, coll_rid: str, row: ItemRow) -> None:
        self._db.execute(
            f"INSERT OR REPLACE INTO items (coll_rid, {_ITEM_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (coll_rid, row.pk, row.id, row.epk, row.lsn, row.seq, row.ts, row.expires, row.body),
        )

    def delete_item(self, coll_rid: str, pk: str, item_id: str) -> None:
        self._db.execute(
            "DELETE FROM items WHERE coll_rid = ? AND pk = ? AND id = ?", (coll_rid, pk, item_id)
        )

    def scan(self, coll_rid: str, low: str, high: str, pk: str | None, now: float) -> list[ItemRow]:
        """Live items with low <= epk < high (and partition key `pk` when given), in EPK order."""
        sql = f"SELECT {_ITEM_COLUMNS} FROM items WHERE coll_rid = ? AND epk >= ? AND epk < ? AND {_LIVE}"
        args: tuple[object, ...] = (coll_rid, low, high, now)
        if pk is not None:
            sql, args = sql + " AND pk = ?", (*args, pk)
        return [ItemRow(*row) for row in self._db.execute(sql + " ORDER BY epk, pk, id", args)]

    def changes(
        self,
        coll_rid: str,
        low: str,
        high: str,
        *,
        after_lsn: int,
        since_ts: int | None,
        pk: str | None,
        now: float,
        limit: int,
        until_lsn: int | None = None,
    ) -> list[ItemRow]:
        """Latest versions changed after `after_lsn` (up to `until_lsn`) in [low, high), in commit
        order; the last transaction (LSN) is always returned whole, even past `limit`."""
        sql = (
            f"SELECT {_ITEM_COLUMNS} FROM items WHERE coll_rid = ? AND epk >= ? AND epk < ? "
            f"AND {_LIVE}"
        )
        args: tuple[object, ...] = (coll_rid, low, high, now)
        if pk is not None:
            sql, args = sql + " AND pk = ?", (*args, pk)
        if since_ts is not None:
            sql, args = sql + " AND ts >= ?", (*args, since_ts)
        if until_lsn is not None:
            sql, args = sql + " AND lsn <= ?", (*args, until_lsn)
        rows = [
            ItemRow(*row)
            for row in self._db.execute(
                sql + " AND lsn > ? ORDER BY lsn, seq LIMIT ?", (*args, after_lsn, limit)
            )
        ]
        if rows and len(rows) == limit:
            last = rows[-1]
            rows += [
                ItemRow(*row)
                for row in self._db.execute(
                    sql + " AND lsn = ? AND seq > ? ORDER BY seq", (*args, last.lsn, last.seq)
                )
            ]
        return rows

    def purge_expired(self, now: float) -> int:
        """Physically remove expired items (they are already invisible); how many went."""
        return self._db.execute(
            "DELETE FROM items WHERE expires IS NOT NULL AND expires <= ?", (now,)
        ).rowcount
