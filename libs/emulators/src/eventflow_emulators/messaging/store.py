"""Durability: one SQLite file in WAL mode. The only module that knows the tables.

Every state change the model makes is written here before the client hears it was accepted, so a
restart (or SIGKILL) loses nothing that was acknowledged. Locks and receivers are not durable: after
a restart every message is unlocked, as after a lock expiry.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS eh_events (
    hub TEXT NOT NULL, partition INTEGER NOT NULL, seq INTEGER NOT NULL,
    offset INTEGER NOT NULL, enqueued_ms INTEGER NOT NULL, body BLOB NOT NULL,
    PRIMARY KEY (hub, partition, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS eh_events_time ON eh_events (hub, partition, enqueued_ms);
CREATE TABLE IF NOT EXISTS eh_hubs (hub TEXT PRIMARY KEY, created_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS sb_messages (
    queue TEXT NOT NULL, seq INTEGER NOT NULL, dead INTEGER NOT NULL, state TEXT NOT NULL,
    session_id TEXT, message_id TEXT, delivery_count INTEGER NOT NULL, enqueued_ms INTEGER NOT NULL,
    scheduled_ms INTEGER, expires_ms INTEGER, dl_reason TEXT, dl_description TEXT,
    body BLOB NOT NULL,
    PRIMARY KEY (queue, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sb_sessions (
    queue TEXT NOT NULL, session_id TEXT NOT NULL, state BLOB,
    PRIMARY KEY (queue, session_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sb_duplicates (
    queue TEXT NOT NULL, message_id TEXT NOT NULL, seen_ms INTEGER NOT NULL,
    PRIMARY KEY (queue, message_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sb_counters (queue TEXT PRIMARY KEY, last_seq INTEGER NOT NULL);
"""


@dataclass(frozen=True)
class EventRow:
    seq: int
    offset: int
    enqueued_ms: int
    body: bytes


@dataclass(frozen=True)
class MessageRow:
    queue: str
    seq: int
    dead: bool
    state: str  # active | deferred | scheduled
    session_id: str | None
    message_id: str | None
    delivery_count: int
    enqueued_ms: int
    scheduled_ms: int | None
    expires_ms: int | None
    dl_reason: str | None
    dl_description: str | None
    body: bytes


class Store:
    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(folder / "messaging.sqlite3", isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        self.db.execute("BEGIN")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # --- Event Hubs ------------------------------------------------------------------------

    def hub_created(self, hub: str, now_ms: int) -> int:
        self.db.execute("INSERT OR IGNORE INTO eh_hubs VALUES (?, ?)", (hub, now_ms))
        row = self.db.execute("SELECT created_ms FROM eh_hubs WHERE hub = ?", (hub,)).fetchone()
        return int(row[0])

    def append_events(self, hub: str, partition: int, rows: Iterable[EventRow]) -> None:
        with self.transaction():
            self.db.executemany(
                "INSERT INTO eh_events VALUES (?, ?, ?, ?, ?, ?)",
                [(hub, partition, r.seq, r.offset, r.enqueued_ms, r.body) for r in rows],
            )

    def read_events(self, hub: str, partition: int, from_seq: int, limit: int) -> list[EventRow]:
        rows = self.db.execute(
            "SELECT seq, offset, enqueued_ms, body FROM eh_events"
            " WHERE hub = ? AND partition = ? AND seq >= ? ORDER BY seq LIMIT ?",
            (hub, partition, from_seq, limit),
        ).fetchall()
        return [EventRow(*row) for row in rows]

    def partition_bounds(self, hub: str, partition: int) -> tuple[EventRow | None, EventRow | None]:
        """The first and the last retained event of a partition."""
        first = self.db.execute(
            "SELECT seq, offset, enqueued_ms, x'' FROM eh_events WHERE hub = ? AND partition = ?"
            " ORDER BY seq LIMIT 1",
            (hub, partition),
        ).fetchone()
        last = self.db.execute(
            "SELECT seq, offset + length(body), enqueued_ms, body FROM eh_events"
            " WHERE hub = ? AND partition = ? ORDER BY seq DESC LIMIT 1",
            (hub, partition),
        ).fetchone()
        return (EventRow(*first) if first else None), (EventRow(*last) if last else None)

    def first_seq_at(
        self, hub: str, partition: int, column: str, value: int, inclusive: bool
    ) -> int | None:
        """The first sequence number whose offset or enqueued time passes `value`."""
        assert column in ("offset", "enqueued_ms")
        op = ">=" if inclusive else ">"
        row = self.db.execute(
            f"SELECT seq FROM eh_events WHERE hub = ? AND partition = ? AND {column} {op} ?"
            " ORDER BY seq LIMIT 1",
            (hub, partition, value),
        ).fetchone()
        return int(row[0]) if row else None

    def purge_events(self, hub: str, before_ms: int) -> int:
        """Drop events older than the retention; keeps the last event of each partition so
        sequence numbers and offsets continue after a restart."""
        cursor = self.db.execute(
            "DELETE FROM eh_events WHERE hub = ? AND enqueued_ms < ? AND seq < ("
            " SELECT max(seq) FROM eh_events e2 WHERE e2.hub = eh_events.hub"
            " AND e2.partition = eh_events.partition)",
            (hub, before_ms),
        )
        return cursor.rowcount

    # --- Service Bus -----------------------------------------------------------------------

    def load_messages(self, queue: str) -> list[MessageRow]:
        rows = self.db.execute(
            "SELECT * FROM sb_messages WHERE queue = ? ORDER BY seq", (queue,)
        ).fetchall()
        return [
            MessageRow(
                r[0],
                r[1],
                bool(r[2]),
                r[3],
                r[4],
                r[5],
                r[6],
                r[7],
                r[8],
                r[9],
                r[10],
                r[11],
                r[12],
            )
            for r in rows
        ]

    def save_messages(self, rows: Iterable[MessageRow]) -> None:
        with self.transaction():
            self.save_messages_in_transaction(rows)

    def save_messages_in_transaction(self, rows: Iterable[MessageRow]) -> None:
        self.db.executemany(
            "INSERT OR REPLACE INTO sb_messages VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    r.queue,
                    r.seq,
                    int(r.dead),
                    r.state,
                    r.session_id,
                    r.message_id,
                    r.delivery_count,
                    r.enqueued_ms,
                    r.scheduled_ms,
                    r.expires_ms,
                    r.dl_reason,
                    r.dl_description,
                    r.body,
                )
                for r in rows
            ],
        )

    def update_message(self, queue: str, seq: int, *, dead: bool, state: str, delivery_count: int,
                       dl_reason: str | None = None, dl_description: str | None = None) -> None:  # fmt: skip
        self.db.execute(
            "UPDATE sb_messages SET dead = ?, state = ?, delivery_count = ?,"
            " dl_reason = coalesce(?, dl_reason), dl_description = coalesce(?, dl_description)"
            " WHERE queue = ? AND seq = ?",
            (int(dead), state, delivery_count, dl_reason, dl_description, queue, seq),
        )

    def delete_messages(self, queue: str, seqs: Iterable[int]) -> None:
        with self.transaction():
            self.db.executemany(
                "DELETE FROM sb_messages WHERE queue = ? AND seq = ?", [(queue, s) for s in seqs]
            )

    def last_seq(self, queue: str) -> int:
        row = self.db.execute(
            "SELECT last_seq FROM sb_counters WHERE queue = ?", (queue,)
        ).fetchone()
        return int(row[0]) if row else 0

    def set_last_seq(self, queue: str, seq: int) -> None:
        self.db.execute("INSERT OR REPLACE INTO sb_counters VALUES (?, ?)", (queue, seq))

    def session_state(self, queue: str, session_id: str) -> bytes | None:
        row = self.db.execute(
            "SELECT state FROM sb_sessions WHERE queue = ? AND session_id = ?", (queue, session_id)
        ).fetchone()
        return bytes(row[0]) if row and row[0] is not None else None

    def set_session_state(self, queue: str, session_id: str, state: bytes | None) -> None:
        if state is None:
            self.db.execute(
                "DELETE FROM sb_sessions WHERE queue = ? AND session_id = ?", (queue, session_id)
            )
        else:
            self.db.execute(
                "INSERT OR REPLACE INTO sb_sessions VALUES (?, ?, ?)", (queue, session_id, state)
            )

    def load_duplicates(self, queue: str, since_ms: int) -> dict[str, int]:
        self.db.execute(
            "DELETE FROM sb_duplicates WHERE queue = ? AND seen_ms < ?", (queue, since_ms)
        )
        rows = self.db.execute(
            "SELECT message_id, seen_ms FROM sb_duplicates WHERE queue = ?", (queue,)
        ).fetchall()
        return {str(r[0]): int(r[1]) for r in rows}

    def add_duplicates(self, queue: str, ids: Iterable[tuple[str, int]]) -> None:
        self.db.executemany(
            "INSERT OR REPLACE INTO sb_duplicates VALUES (?, ?, ?)",
            [(queue, message_id, at) for message_id, at in ids],
        )
