"""A local stand-in for the async Service Bus client (`azure.servicebus.aio`), on SQLite.

Queues with or without sessions, duplicate detection, peek-lock settlement (complete, abandon,
defer, dead-letter), lock expiry and max delivery count, session state and session locks held
by one receiver at a time across processes. Messages are sent as the SDK's own ServiceBusMessage
(and ServiceBusMessageBatch); received messages have the SDK's attribute names and shapes,
including application property keys and string values as bytes.
"""

from __future__ import annotations

import asyncio
import base64
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Self

import orjson
from azure.servicebus import (
    ServiceBusMessage,
    ServiceBusMessageBatch,
    ServiceBusMessageState,
    ServiceBusReceiveMode,
    ServiceBusSessionFilter,
    ServiceBusSubQueue,
)
from azure.servicebus.exceptions import (
    MessageAlreadySettled,
    MessageLockLostError,
    MessageNotFoundError,
    MessageSizeExceededError,
    MessagingEntityAlreadyExistsError,
    MessagingEntityNotFoundError,
    OperationTimeoutError,
    ServiceBusConnectionError,
    ServiceBusError,
    ServiceBusServerBusyError,
    SessionCannotBeLockedError,
    SessionLockLostError,
)

from eventflow_local.environment import LocalEnvironment
from eventflow_local.faults import FaultKind, guarded

SCHEMA = """
CREATE TABLE IF NOT EXISTS sb_queues (
    name TEXT PRIMARY KEY, requires_session INTEGER NOT NULL, duplicate_detection INTEGER NOT NULL,
    duplicate_window_s REAL NOT NULL, max_delivery_count INTEGER NOT NULL, lock_duration_s REAL NOT NULL,
    max_message_bytes INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS sb_messages (
    queue TEXT NOT NULL, seq INTEGER NOT NULL, message_id TEXT NOT NULL, session_id TEXT,
    body BLOB NOT NULL, properties BLOB NOT NULL, content_type TEXT, subject TEXT, correlation_id TEXT,
    enqueued REAL NOT NULL, state TEXT NOT NULL, delivery_count INTEGER NOT NULL DEFAULT 0,
    lock_token TEXT, locked_until REAL, locked_by TEXT, dl_reason TEXT, dl_description TEXT,
    PRIMARY KEY (queue, seq)
);
CREATE INDEX IF NOT EXISTS sb_messages_session ON sb_messages (queue, state, session_id, seq);
CREATE INDEX IF NOT EXISTS sb_messages_order ON sb_messages (queue, state, seq);
CREATE TABLE IF NOT EXISTS sb_sessions (
    queue TEXT NOT NULL, session_id TEXT NOT NULL, state BLOB, locked_by TEXT, locked_until REAL,
    PRIMARY KEY (queue, session_id)
);
CREATE TABLE IF NOT EXISTS sb_duplicates (
    queue TEXT NOT NULL, message_id TEXT NOT NULL, expires REAL NOT NULL,
    PRIMARY KEY (queue, message_id)
);
CREATE TABLE IF NOT EXISTS sb_sequences (queue TEXT PRIMARY KEY, last INTEGER NOT NULL);
"""

ACTIVE, DEFERRED, DEAD = "active", "deferred", "dead"
STANDARD_MAX_MESSAGE_BYTES = 256 * 1024
POLL_INTERVAL_S = 0.02
MAX_DELIVERY_COUNT_EXCEEDED = "MaxDeliveryCountExceeded"
_FAULT_ERRORS: dict[FaultKind, type[ServiceBusError]] = {
    FaultKind.TRANSIENT: ServiceBusConnectionError,
    FaultKind.THROTTLED: ServiceBusServerBusyError,
    FaultKind.TIMEOUT: OperationTimeoutError,
}


def _now() -> float:
    return time.time()


def _seconds(value: timedelta | float | None, default: float) -> float:
    if value is None:
        return default
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def _encode_properties(properties: Mapping[Any, Any] | None) -> bytes:
    encoded: dict[str, dict[str, Any]] = {}
    for key, value in (properties or {}).items():
        name = key.decode() if isinstance(key, bytes) else str(key)
        if isinstance(value, bytes):
            encoded[name] = {"b": base64.b64encode(value).decode()}
        elif isinstance(value, str):
            encoded[name] = {"s": value}
        elif value is None or isinstance(value, bool | int | float):
            encoded[name] = {"v": value}
        else:
            raise TypeError(f"application property {name!r} has unsupported type {type(value)}")
    return orjson.dumps(encoded)


def _decode_properties(blob: bytes) -> dict[bytes, Any]:
    """As the SDK returns them on receive: keys and string values as bytes."""
    decoded: dict[bytes, Any] = {}
    for name, tagged in orjson.loads(blob).items():
        if "b" in tagged:
            decoded[name.encode()] = base64.b64decode(tagged["b"])
        elif "s" in tagged:
            decoded[name.encode()] = tagged["s"].encode()
        else:
            decoded[name.encode()] = tagged["v"]
    return decoded


@dataclass(frozen=True)
class _Queue:
    name: str
    requires_session: bool
    duplicate_detection: bool
    duplicate_window_s: float
    max_delivery_count: int
    lock_duration_s: float
    max_message_bytes: int


@dataclass(eq=False)
class ServiceBusReceivedMessage:
    """A received message with the SDK's attribute names (body is an iterator of bytes)."""

    message_id: str
    session_id: str | None
    content_type: str | None
    subject: str | None
    correlation_id: str | None
    application_properties: dict[bytes, Any]
    sequence_number: int
    delivery_count: int
    enqueued_time_utc: datetime
    locked_until_utc: datetime | None
    lock_token: str | None
    dead_letter_reason: str | None
    dead_letter_error_description: str | None
    state: ServiceBusMessageState
    _body: bytes = field(repr=False)
    _settled: bool = field(default=False, repr=False)
    time_to_live: timedelta | None = None
    partition_key: str | None = None

    @property
    def body(self) -> Iterator[bytes]:
        return iter([self._body])

    @property
    def dead_letter_source(self) -> str | None:
        return None

    def __str__(self) -> str:
        return self._body.decode("utf-8", errors="replace")


def _message_from_row(row: sqlite3.Row) -> ServiceBusReceivedMessage:
    return ServiceBusReceivedMessage(
        message_id=row["message_id"],
        session_id=row["session_id"],
        content_type=row["content_type"],
        subject=row["subject"],
        correlation_id=row["correlation_id"],
        application_properties=_decode_properties(row["properties"]),
        sequence_number=row["seq"],
        delivery_count=row["delivery_count"],
        enqueued_time_utc=datetime.fromtimestamp(row["enqueued"], UTC),
        locked_until_utc=(
            datetime.fromtimestamp(row["locked_until"], UTC) if row["locked_until"] else None
        ),
        lock_token=row["lock_token"],
        dead_letter_reason=row["dl_reason"],
        dead_letter_error_description=row["dl_description"],
        state=(
            ServiceBusMessageState.DEFERRED
            if row["state"] == DEFERRED
            else ServiceBusMessageState.ACTIVE
        ),
        _body=row["body"],
    )


class _Store:
    """The SQL behind every client of one environment, shared by sender, receiver and admin."""

    def __init__(self, environment: LocalEnvironment) -> None:
        self.database = environment.open("servicebus", SCHEMA)

    async def call(self, operation: str, work: Any, *, write: bool = True) -> Any:
        def with_rows(connection: sqlite3.Connection) -> Any:
            connection.row_factory = sqlite3.Row
            return work(connection)

        return await guarded(
            self.database, f"servicebus.{operation}", with_rows, write=write,
            error=lambda kind: _FAULT_ERRORS[kind](message=f"{operation} failed (injected fault)"),
        )  # fmt: skip

    @staticmethod
    def queue(connection: sqlite3.Connection, name: str) -> _Queue:
        row = connection.execute("SELECT * FROM sb_queues WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise MessagingEntityNotFoundError(
                message=f"The messaging entity '{name}' could not be found."
            )
        return _Queue(
            row["name"], bool(row["requires_session"]), bool(row["duplicate_detection"]),
            row["duplicate_window_s"], row["max_delivery_count"], row["lock_duration_s"],
            row["max_message_bytes"],
        )  # fmt: skip

    @staticmethod
    def release_expired(connection: sqlite3.Connection, queue: _Queue, now: float) -> None:
        """Messages whose lock expired count a delivery and become available (or dead)."""
        connection.execute(
            "UPDATE sb_messages SET delivery_count = delivery_count + 1, lock_token = NULL, "
            "locked_until = NULL, locked_by = NULL "
            "WHERE queue = ? AND lock_token IS NOT NULL AND locked_until <= ? AND state != ?",
            (queue.name, now, DEAD),
        )
        _Store.dead_letter_exhausted(connection, queue)

    @staticmethod
    def dead_letter_exhausted(connection: sqlite3.Connection, queue: _Queue) -> None:
        connection.execute(
            "UPDATE sb_messages SET state = ?, dl_reason = ?, dl_description = ? "
            "WHERE queue = ? AND state != ? AND lock_token IS NULL AND delivery_count >= ?",
            (DEAD, MAX_DELIVERY_COUNT_EXCEEDED,
             f"Message could not be consumed after {queue.max_delivery_count} delivery attempts.",
             queue.name, DEAD, queue.max_delivery_count),
        )  # fmt: skip


class ServiceBusAdministrationClient:
    """Stand-in for the admin client: create, read and delete queues with the SDK's kwargs."""

    def __init__(self, environment: LocalEnvironment) -> None:
        self._store = _Store(environment)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        self._store.database.close()

    async def create_queue(
        self,
        queue_name: str,
        *,
        requires_session: bool = False,
        requires_duplicate_detection: bool = False,
        duplicate_detection_history_time_window: timedelta | None = None,
        max_delivery_count: int = 10,
        lock_duration: timedelta | None = None,
        max_message_size_in_kilobytes: int | None = None,
        **_: Any,
    ) -> None:
        """Raises MessagingEntityAlreadyExistsError when the queue exists."""
        if max_delivery_count < 1:
            raise ValueError("max_delivery_count must be at least 1")
        values = (
            queue_name, int(requires_session), int(requires_duplicate_detection),
            _seconds(duplicate_detection_history_time_window, 600.0), max_delivery_count,
            _seconds(lock_duration, 60.0),
            (max_message_size_in_kilobytes or 256) * 1024,
        )  # fmt: skip

        def work(connection: sqlite3.Connection) -> None:
            if connection.execute(
                "SELECT 1 FROM sb_queues WHERE name = ?", (queue_name,)
            ).fetchone():
                raise MessagingEntityAlreadyExistsError(
                    message=f"Queue '{queue_name}' already exists."
                )
            connection.execute("INSERT INTO sb_queues VALUES (?, ?, ?, ?, ?, ?, ?)", values)

        await self._store.call("create_queue", work)

    async def delete_queue(self, queue_name: str) -> None:
        def work(connection: sqlite3.Connection) -> None:
            _Store.queue(connection, queue_name)
            for table in ("sb_queues", "sb_messages", "sb_sessions", "sb_duplicates"):
                column = "name" if table == "sb_queues" else "queue"
                connection.execute(f"DELETE FROM {table} WHERE {column} = ?", (queue_name,))

        await self._store.call("delete_queue", work)

    async def get_queue_runtime_properties(self, queue_name: str) -> dict[str, int]:
        """Counts of active, deferred and dead-lettered messages (keys as the SDK's properties)."""

        def work(connection: sqlite3.Connection) -> dict[str, int]:
            _Store.queue(connection, queue_name)
            counts = dict(
                connection.execute(
                    "SELECT state, COUNT(*) FROM sb_messages WHERE queue = ? GROUP BY state",
                    (queue_name,),
                ).fetchall()
            )
            return {
                "active_message_count": counts.get(ACTIVE, 0),
                "dead_letter_message_count": counts.get(DEAD, 0),
                "deferred_message_count": counts.get(DEFERRED, 0),
            }

        result: dict[str, int] = await self._store.call("runtime", work, write=False)
        return result


class _LocalMessageBatch(ServiceBusMessageBatch):
    """The SDK's batch (its size accounting and MessageSizeExceededError), keeping its messages."""

    def __init__(self, max_size_in_bytes: int) -> None:
        super().__init__(max_size_in_bytes=max_size_in_bytes)
        self.local_messages: list[ServiceBusMessage] = []

    def add_message(self, message: ServiceBusMessage | Any) -> None:
        super().add_message(message)
        self.local_messages.append(message)


class ServiceBusSender:
    """Stand-in for `ServiceBusSender` of one queue."""

    def __init__(self, store: _Store, queue_name: str) -> None:
        self._store = store
        self.entity_name = queue_name

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Nothing to release: the client owns the connection."""

    async def create_message_batch(
        self, max_size_in_bytes: int | None = None
    ) -> ServiceBusMessageBatch:
        queue = await self._store.call(
            "create_message_batch", lambda c: _Store.queue(c, self.entity_name), write=False
        )
        if max_size_in_bytes is not None and max_size_in_bytes > queue.max_message_bytes:
            raise ValueError(
                f"Max message size: {max_size_in_bytes} is too large, acceptable max batch size is: "
                f"{queue.max_message_bytes} bytes."
            )
        return _LocalMessageBatch(max_size_in_bytes or queue.max_message_bytes)

    async def send_messages(
        self,
        message: ServiceBusMessage | Iterable[ServiceBusMessage] | ServiceBusMessageBatch,
        **_: Any,
    ) -> None:
        """All messages are enqueued, or none (one transaction). A message whose id was seen within
        the duplicate detection window is accepted and dropped, as Service Bus does."""
        if isinstance(message, _LocalMessageBatch):
            messages = list(message.local_messages)
        elif isinstance(message, ServiceBusMessageBatch):
            raise TypeError("send a batch created by this sender's create_message_batch()")
        elif isinstance(message, ServiceBusMessage):
            messages = [message]
        else:
            messages = list(message)
        rows = [self._row(m) for m in messages]

        def work(connection: sqlite3.Connection) -> None:
            queue = _Store.queue(connection, self.entity_name)
            now = _now()
            connection.execute(
                "DELETE FROM sb_duplicates WHERE queue = ? AND expires <= ?", (queue.name, now)
            )
            for row in rows:
                self._enqueue(connection, queue, row, now)

        await self._store.call("send_messages", work)

    @staticmethod
    def _row(message: ServiceBusMessage) -> dict[str, Any]:
        body = b"".join(message.body) if not isinstance(message.body, bytes) else message.body
        return {
            "message_id": message.message_id or uuid.uuid4().hex,
            "session_id": message.session_id,
            "body": body,
            "properties": _encode_properties(message.application_properties),
            "content_type": message.content_type,
            "subject": message.subject,
            "correlation_id": message.correlation_id,
        }

    @staticmethod
    def _enqueue(
        connection: sqlite3.Connection, queue: _Queue, row: dict[str, Any], now: float
    ) -> None:
        size = len(row["body"]) + len(row["properties"])
        if size > queue.max_message_bytes:
            raise MessageSizeExceededError(
                message=f"The message is {size} bytes; the queue accepts {queue.max_message_bytes}."
            )
        if queue.requires_session and not row["session_id"]:
            raise ServiceBusError(
                f"The queue '{queue.name}' requires a session id on every message."
            )
        if not queue.requires_session and row["session_id"]:
            raise ServiceBusError(f"The queue '{queue.name}' does not accept session ids.")
        if queue.duplicate_detection:
            seen = connection.execute(
                "INSERT OR IGNORE INTO sb_duplicates VALUES (?, ?, ?) RETURNING 1",
                (queue.name, row["message_id"], now + queue.duplicate_window_s),
            ).fetchone()
            if seen is None:
                return
        (seq,) = connection.execute(
            "INSERT INTO sb_sequences VALUES (?, 1) ON CONFLICT (queue) DO UPDATE SET last = last + 1 "
            "RETURNING last",
            (queue.name,),
        ).fetchone()
        connection.execute(
            "INSERT INTO sb_messages (queue, seq, message_id, session_id, body, properties, "
            "content_type, subject, correlation_id, enqueued, state) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (queue.name, seq, row["message_id"], row["session_id"], row["body"], row["properties"],
             row["content_type"], row["subject"], row["correlation_id"], now, ACTIVE),
        )  # fmt: skip


class ServiceBusSession:
    """Stand-in for `ServiceBusSession`: state and lock of the session a receiver holds."""

    def __init__(self, receiver: ServiceBusReceiver, session_id: str, locked_until: float) -> None:
        self._receiver = receiver
        self.session_id = session_id
        self._locked_until = locked_until

    @property
    def locked_until_utc(self) -> datetime:
        return datetime.fromtimestamp(self._locked_until, UTC)

    async def get_state(self, **_: Any) -> bytes | None:
        def work(connection: sqlite3.Connection) -> bytes | None:
            row = self._receiver._held_session(connection)
            return None if row["state"] is None else bytes(row["state"])

        state: bytes | None = await self._receiver._store.call("get_state", work, write=False)
        return state

    async def set_state(self, state: str | bytes | None, **_: Any) -> None:
        value = state.encode() if isinstance(state, str) else state

        def work(connection: sqlite3.Connection) -> None:
            self._receiver._held_session(connection)
            connection.execute(
                "UPDATE sb_sessions SET state = ? WHERE queue = ? AND session_id = ?",
                (value, self._receiver._queue_name, self.session_id),
            )

        await self._receiver._store.call("set_state", work)

    async def renew_lock(self, **_: Any) -> datetime:
        """Extend the session lock (and the locks of its messages) by the queue's lock duration."""

        def work(connection: sqlite3.Connection) -> float:
            self._receiver._held_session(connection)
            queue = _Store.queue(connection, self._receiver._queue_name)
            until = _now() + queue.lock_duration_s
            connection.execute(
                "UPDATE sb_sessions SET locked_until = ? WHERE queue = ? AND session_id = ?",
                (until, queue.name, self.session_id),
            )
            connection.execute(
                "UPDATE sb_messages SET locked_until = ? WHERE queue = ? AND session_id = ? "
                "AND locked_by = ?",
                (until, queue.name, self.session_id, self._receiver._id),
            )
            return until

        self._locked_until = await self._receiver._store.call("renew_session_lock", work)
        return self.locked_until_utc


class ServiceBusReceiver:
    """Stand-in for `ServiceBusReceiver` (peek-lock) of one queue, its session, or its DLQ."""

    def __init__(
        self,
        store: _Store,
        queue_name: str,
        *,
        session_id: str | ServiceBusSessionFilter | None,
        sub_queue: ServiceBusSubQueue | str | None,
        max_wait_time: float | None,
    ) -> None:
        self._store = store
        self._queue_name = queue_name
        self._requested_session = session_id
        self._dead_letter = sub_queue in (ServiceBusSubQueue.DEAD_LETTER, "deadletter")
        self._max_wait_time = max_wait_time
        self._id = uuid.uuid4().hex
        self._session: ServiceBusSession | None = None
        self._open = False
        self.entity_path = f"{queue_name}/$deadletterqueue" if self._dead_letter else queue_name

    @property
    def session(self) -> ServiceBusSession:
        if self._session is None:
            raise TypeError("session is only available to an open session receiver")
        return self._session

    async def __aenter__(self) -> Self:
        await self._ensure_open()
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def __aiter__(self) -> AsyncIterator[ServiceBusReceivedMessage]:
        while True:
            messages = await self.receive_messages(
                max_message_count=1, max_wait_time=self._max_wait_time
            )
            if not messages:
                return
            yield messages[0]

    # -- opening: a session receiver holds its session lock from here until close -----------

    async def _ensure_open(self) -> None:
        if self._open:
            return
        queue = await self._store.call(
            "open", lambda c: _Store.queue(c, self._queue_name), write=False
        )
        if self._dead_letter:
            self._open = True
            return
        if queue.requires_session and self._requested_session is None:
            raise ServiceBusError(
                f"The queue '{queue.name}' requires sessions: pass session_id (or NEXT_AVAILABLE_SESSION)."
            )
        if not queue.requires_session and self._requested_session is not None:
            raise ServiceBusError(f"The queue '{queue.name}' is not session-enabled.")
        if queue.requires_session:
            await self._accept_session()
        self._open = True

    async def _accept_session(self) -> None:
        deadline = time.monotonic() + (self._max_wait_time or 60.0)
        while True:
            accepted = None
            # Looking is a read; only a session that seems free is taken in a write transaction, so
            # idle receivers polling for sessions do not queue behind the writers.
            if isinstance(self._requested_session, str) or await self._store.call(
                "peek_session", self._free_session, write=False
            ):
                accepted = await self._store.call("accept_session", self._try_accept)
            if accepted is not None:
                self._session = ServiceBusSession(self, *accepted)
                return
            if time.monotonic() >= deadline:
                raise OperationTimeoutError(message="No session is available within max_wait_time.")
            await asyncio.sleep(POLL_INTERVAL_S)

    def _free_session(self, connection: sqlite3.Connection) -> str | None:
        """The session of the oldest active message that nobody holds, or None."""
        row = connection.execute(
            "SELECT m.session_id FROM sb_messages m WHERE m.queue = ? AND m.state = ? "
            "AND NOT EXISTS (SELECT 1 FROM sb_sessions s WHERE s.queue = m.queue "
            "AND s.session_id = m.session_id AND s.locked_until > ?) ORDER BY m.seq LIMIT 1",
            (self._queue_name, ACTIVE, _now()),
        ).fetchone()
        return None if row is None else str(row["session_id"])

    def _try_accept(self, connection: sqlite3.Connection) -> tuple[str, float] | None:
        queue = _Store.queue(connection, self._queue_name)
        now = _now()
        if isinstance(self._requested_session, str):
            session_id = self._requested_session
            holder = connection.execute(
                "SELECT locked_until FROM sb_sessions WHERE queue = ? AND session_id = ? "
                "AND locked_by IS NOT NULL AND locked_until > ?",
                (queue.name, session_id, now),
            ).fetchone()
            if holder is not None:
                raise SessionCannotBeLockedError(
                    message=f"The session '{session_id}' is locked by another receiver."
                )
        else:
            # Walks (queue, state, seq) and stops at the first free session: a long backlog costs
            # no more than a short one.
            free = self._free_session(connection)
            if free is None:
                return None
            session_id = free
        # Messages delivered under an expired lock of this session count a delivery and return.
        connection.execute(
            "UPDATE sb_messages SET delivery_count = delivery_count + 1, lock_token = NULL, "
            "locked_until = NULL, locked_by = NULL WHERE queue = ? AND session_id = ? "
            "AND lock_token IS NOT NULL AND state != ?",
            (queue.name, session_id, DEAD),
        )
        _Store.dead_letter_exhausted(connection, queue)
        until = now + queue.lock_duration_s
        connection.execute(
            "INSERT INTO sb_sessions (queue, session_id, locked_by, locked_until) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (queue, session_id) DO UPDATE SET locked_by = excluded.locked_by, "
            "locked_until = excluded.locked_until",
            (queue.name, session_id, self._id, until),
        )
        return session_id, until

    def _held_session(self, connection: sqlite3.Connection) -> sqlite3.Row:
        row = connection.execute(
            "SELECT * FROM sb_sessions WHERE queue = ? AND session_id = ?",
            (self._queue_name, self.session.session_id),
        ).fetchone()
        if row is None or row["locked_by"] != self._id or row["locked_until"] <= _now():
            raise SessionLockLostError(
                message=f"The lock on session '{self.session.session_id}' was lost."
            )
        held: sqlite3.Row = row
        return held

    # -- receiving ---------------------------------------------------------------------------

    async def receive_messages(
        self, max_message_count: int | None = 1, max_wait_time: float | None = None
    ) -> list[ServiceBusReceivedMessage]:
        """Up to `max_message_count` messages, locked for this receiver; waits up to
        `max_wait_time` (default: the receiver's) for the first one, then returns what there is."""
        await self._ensure_open()
        count = max(1, max_message_count or 1)
        wait = max_wait_time if max_wait_time is not None else self._max_wait_time
        deadline = time.monotonic() + (60.0 if wait is None else wait)
        while True:
            messages = await self._store.call(
                "receive_messages", lambda c: self._lock_next(c, count)
            )
            if messages or time.monotonic() >= deadline:
                return list(messages)
            await asyncio.sleep(POLL_INTERVAL_S)

    def _lock_next(
        self, connection: sqlite3.Connection, count: int
    ) -> list[ServiceBusReceivedMessage]:
        queue = _Store.queue(connection, self._queue_name)
        now = _now()
        until = now + queue.lock_duration_s
        args: tuple[str, ...]
        if self._session is not None:
            until = self._held_session(connection)["locked_until"]
            condition, args = "session_id = ? AND state = ?", (self._session.session_id, ACTIVE)
        elif self._dead_letter:
            condition, args = "state = ?", (DEAD,)
        else:
            _Store.release_expired(connection, queue, now)
            condition, args = "session_id IS NULL AND state = ?", (ACTIVE,)
        rows = connection.execute(
            f"SELECT seq FROM sb_messages WHERE queue = ? AND {condition} "
            "AND (lock_token IS NULL OR locked_until <= ?) ORDER BY seq LIMIT ?",
            (queue.name, *args, now, count),
        ).fetchall()
        return [self._lock(connection, queue.name, row["seq"], until) for row in rows]

    def _lock(
        self, connection: sqlite3.Connection, queue: str, seq: int, until: float
    ) -> ServiceBusReceivedMessage:
        row = connection.execute(
            "UPDATE sb_messages SET lock_token = ?, locked_until = ?, locked_by = ? "
            "WHERE queue = ? AND seq = ? RETURNING *",
            (uuid.uuid4().hex, until, self._id, queue, seq),
        ).fetchone()
        return _message_from_row(row)

    async def receive_deferred_messages(
        self, sequence_numbers: int | Sequence[int], **_: Any
    ) -> list[ServiceBusReceivedMessage]:
        """Deferred messages by sequence number (of this receiver's session), locked for it."""
        await self._ensure_open()
        wanted = [sequence_numbers] if isinstance(sequence_numbers, int) else list(sequence_numbers)

        def work(connection: sqlite3.Connection) -> list[ServiceBusReceivedMessage]:
            queue = _Store.queue(connection, self._queue_name)
            until = _now() + queue.lock_duration_s
            if self._session is not None:
                until = self._held_session(connection)["locked_until"]
            found = []
            for seq in wanted:
                row = connection.execute(
                    "SELECT seq, session_id FROM sb_messages WHERE queue = ? AND seq = ? AND state = ?",
                    (queue.name, seq, DEFERRED),
                ).fetchone()
                if row is None or (self._session and row["session_id"] != self._session.session_id):
                    raise MessageNotFoundError(
                        message=f"No deferred message with sequence number {seq}."
                    )
                found.append(self._lock(connection, queue.name, seq, until))
            return found

        messages: list[ServiceBusReceivedMessage] = await self._store.call(
            "receive_deferred_messages", work
        )
        return messages

    async def peek_messages(
        self, max_message_count: int = 1, *, sequence_number: int = 0, **_: Any
    ) -> list[ServiceBusReceivedMessage]:
        """Messages from `sequence_number` on, without locking them."""
        await self._ensure_open()

        def work(connection: sqlite3.Connection) -> list[ServiceBusReceivedMessage]:
            states = (DEAD, DEAD) if self._dead_letter else (ACTIVE, DEFERRED)
            sql = "SELECT * FROM sb_messages WHERE queue = ? AND state IN (?, ?) AND seq >= ?"
            args: tuple[Any, ...] = (self._queue_name, *states, sequence_number)
            if self._session is not None:
                sql, args = sql + " AND session_id = ?", (*args, self._session.session_id)
            rows = connection.execute(
                sql + " ORDER BY seq LIMIT ?", (*args, max_message_count)
            ).fetchall()
            return [_message_from_row(row) for row in rows]

        messages: list[ServiceBusReceivedMessage] = await self._store.call(
            "peek_messages", work, write=False
        )
        return messages

    # -- settlement --------------------------------------------------------------------------

    async def _settle(self, message: ServiceBusReceivedMessage, action: str, work: Any) -> None:
        if message._settled:
            raise MessageAlreadySettled(action=action)

        def guarded(connection: sqlite3.Connection) -> None:
            if self._session is not None:
                self._held_session(connection)
            row = connection.execute(
                "SELECT * FROM sb_messages WHERE queue = ? AND seq = ?",
                (self._queue_name, message.sequence_number),
            ).fetchone()
            if (
                row is None
                or row["lock_token"] != message.lock_token
                or row["locked_by"] != self._id
                or row["locked_until"] <= _now()
            ):
                raise MessageLockLostError(
                    message=f"The lock of message {message.sequence_number} expired or was lost."
                )
            work(connection, _Store.queue(connection, self._queue_name))

        await self._store.call(f"{action}_message", guarded)
        message._settled = True

    def _unlock_sql(self) -> str:
        return "lock_token = NULL, locked_until = NULL, locked_by = NULL"

    async def complete_message(self, message: ServiceBusReceivedMessage) -> None:
        def work(connection: sqlite3.Connection, queue: _Queue) -> None:
            connection.execute(
                "DELETE FROM sb_messages WHERE queue = ? AND seq = ?",
                (queue.name, message.sequence_number),
            )

        await self._settle(message, "complete", work)

    async def abandon_message(self, message: ServiceBusReceivedMessage, **_: Any) -> None:
        """Back to the queue with delivery_count + 1; dead-lettered past max_delivery_count."""

        def work(connection: sqlite3.Connection, queue: _Queue) -> None:
            connection.execute(
                f"UPDATE sb_messages SET delivery_count = delivery_count + 1, {self._unlock_sql()} "
                "WHERE queue = ? AND seq = ?",
                (queue.name, message.sequence_number),
            )
            if not self._dead_letter:
                _Store.dead_letter_exhausted(connection, queue)

        await self._settle(message, "abandon", work)

    async def defer_message(self, message: ServiceBusReceivedMessage, **_: Any) -> None:
        def work(connection: sqlite3.Connection, queue: _Queue) -> None:
            connection.execute(
                f"UPDATE sb_messages SET state = ?, {self._unlock_sql()} WHERE queue = ? AND seq = ?",
                (DEFERRED, queue.name, message.sequence_number),
            )

        await self._settle(message, "defer", work)

    async def dead_letter_message(
        self,
        message: ServiceBusReceivedMessage,
        reason: str | None = None,
        error_description: str | None = None,
    ) -> None:
        if self._dead_letter:
            raise ServiceBusError(
                "A message in the dead-letter queue cannot be dead-lettered again."
            )

        def work(connection: sqlite3.Connection, queue: _Queue) -> None:
            connection.execute(
                f"UPDATE sb_messages SET state = ?, dl_reason = ?, dl_description = ?, {self._unlock_sql()} "
                "WHERE queue = ? AND seq = ?",
                (DEAD, reason, error_description, queue.name, message.sequence_number),
            )

        await self._settle(message, "dead_letter", work)

    async def renew_message_lock(self, message: ServiceBusReceivedMessage, **_: Any) -> datetime:
        if self._session is not None:
            raise TypeError(
                "Renewing message lock is an invalid operation when working with sessions."
            )
        if message._settled:
            raise MessageAlreadySettled(action="renew_lock")

        def work(connection: sqlite3.Connection) -> float:
            queue = _Store.queue(connection, self._queue_name)
            row = connection.execute(
                "UPDATE sb_messages SET locked_until = ? WHERE queue = ? AND seq = ? AND lock_token = ? "
                "AND locked_by = ? AND locked_until > ? RETURNING locked_until",
                (_now() + queue.lock_duration_s, queue.name, message.sequence_number,
                 message.lock_token, self._id, _now()),
            ).fetchone()  # fmt: skip
            if row is None:
                raise MessageLockLostError(message="The message lock expired or was lost.")
            return float(row["locked_until"])

        until = await self._store.call("renew_message_lock", work)
        message.locked_until_utc = datetime.fromtimestamp(until, UTC)
        return message.locked_until_utc

    async def close(self) -> None:
        """Release the session lock; messages this receiver still holds return to the queue as
        they were. As on Service Bus, closing counts no delivery: only an abandon or an expired
        lock does."""
        if not self._open:
            return
        self._open = False

        def work(connection: sqlite3.Connection) -> None:
            connection.execute(
                f"UPDATE sb_messages SET {self._unlock_sql()} WHERE queue = ? AND locked_by = ?",
                (self._queue_name, self._id),
            )
            connection.execute(
                "UPDATE sb_sessions SET locked_by = NULL, locked_until = NULL "
                "WHERE queue = ? AND locked_by = ?",
                (self._queue_name, self._id),
            )

        await self._store.call("close", work)


class ServiceBusClient:
    """Stand-in for `azure.servicebus.aio.ServiceBusClient`, on `environment`'s servicebus file."""

    def __init__(self, environment: LocalEnvironment) -> None:
        self._store = _Store(environment)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        self._store.database.close()

    def get_queue_sender(self, queue_name: str, **_: Any) -> ServiceBusSender:
        return ServiceBusSender(self._store, queue_name)

    def get_queue_receiver(
        self,
        queue_name: str,
        *,
        session_id: str | ServiceBusSessionFilter | None = None,
        sub_queue: ServiceBusSubQueue | str | None = None,
        receive_mode: ServiceBusReceiveMode | str = ServiceBusReceiveMode.PEEK_LOCK,
        max_wait_time: float | None = None,
        auto_lock_renewer: Any = None,
        **_: Any,
    ) -> ServiceBusReceiver:
        if receive_mode not in (ServiceBusReceiveMode.PEEK_LOCK, "peeklock"):
            raise ValueError("the local Service Bus stand-in supports PEEK_LOCK only")
        if auto_lock_renewer is not None:
            raise ValueError(
                "AutoLockRenewer accepts only the SDK's own message and session classes; "
                "renew with session.renew_lock() / renew_message_lock() instead"
            )
        return ServiceBusReceiver(
            self._store,
            queue_name,
            session_id=session_id,
            sub_queue=sub_queue,
            max_wait_time=max_wait_time,
        )
