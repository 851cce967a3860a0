"""A local stand-in for the async Event Hubs clients (`azure.eventhub.aio`), on SQLite.

Producer: batches per partition key (the SDK's own EventDataBatch size accounting), partitions
by a stable hash of the key, sends a batch atomically. Consumer: `receive_batch` with partition
ownership spread across processes through any SDK `CheckpointStore` (the real
BlobCheckpointStore on Azurite, or `SqliteCheckpointStore`), claims with ETags, expiry, stealing
when unbalanced, release on close; a newer owner shuts out the older reader at once, like the
SDK's epoch receivers; an exception in the callback closes the partition, which is claimed again
and read from its last checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import math
import random
import sqlite3
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Self

import orjson
from azure.eventhub import CloseReason, EventData, EventDataBatch
from azure.eventhub.aio import CheckpointStore
from azure.eventhub.exceptions import ConnectionLostError, EventHubError, OperationTimeoutError

from eventflow_local.environment import LocalEnvironment
from eventflow_local.faults import FaultKind, guarded
from eventflow_local.servicebus import _decode_properties, _encode_properties

LOGGER = logging.getLogger(__name__)
SCHEMA = """
CREATE TABLE IF NOT EXISTS eh_hubs (
    name TEXT PRIMARY KEY, partitions INTEGER NOT NULL, retention_s REAL NOT NULL,
    max_event_bytes INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS eh_events (
    hub TEXT NOT NULL, partition_id TEXT NOT NULL, seq INTEGER NOT NULL, offset INTEGER NOT NULL,
    size INTEGER NOT NULL, body BLOB NOT NULL, properties BLOB NOT NULL, content_type TEXT,
    partition_key TEXT, enqueued REAL NOT NULL, PRIMARY KEY (hub, partition_id, seq)
);
CREATE TABLE IF NOT EXISTS eh_readers (
    hub TEXT NOT NULL, consumer_group TEXT NOT NULL, partition_id TEXT NOT NULL,
    owner TEXT NOT NULL, epoch INTEGER NOT NULL, PRIMARY KEY (hub, consumer_group, partition_id)
);
"""
STANDARD_MAX_EVENT_BYTES = 1024 * 1024
POLL_INTERVAL_S = 0.02
LOCAL_NAMESPACE = "eventflow.local"
_FAULT_ERRORS: dict[FaultKind, type[EventHubError]] = {
    FaultKind.TRANSIENT: ConnectionLostError,
    FaultKind.THROTTLED: EventHubError,
    FaultKind.TIMEOUT: OperationTimeoutError,
}
OnEventBatch = Callable[["PartitionContext", list["ReceivedEventData"]], Awaitable[None]]


def partition_for_key(partition_key: str, partition_count: int) -> str:
    """The partition a key always lands on (a stable hash, like the service's)."""
    digest = hashlib.blake2b(partition_key.encode(), digest_size=8).digest()
    return str(int.from_bytes(digest, "big") % partition_count)


async def create_event_hub(
    environment: LocalEnvironment,
    name: str,
    *,
    partition_count: int = 4,
    retention: timedelta = timedelta(days=1),
    max_event_bytes: int = STANDARD_MAX_EVENT_BYTES,
) -> None:
    """Create the hub if it does not exist (what infrastructure does in Azure)."""
    database = environment.open("eventhubs", SCHEMA)
    try:
        await database.write(
            lambda c: c.execute(
                "INSERT OR IGNORE INTO eh_hubs VALUES (?, ?, ?, ?)",
                (name, partition_count, retention.total_seconds(), max_event_bytes),
            )
        )
    finally:
        database.close()


def _body_of(event: EventData) -> bytes:
    body: Any = event.body
    return body if isinstance(body, bytes) else b"".join(body)


class ReceivedEventData:
    """A received event with the SDK's attribute names (properties as the SDK returns them:
    keys and string values as bytes)."""

    def __init__(self, row: sqlite3.Row) -> None:
        self._body: bytes = row["body"]
        self.properties: dict[bytes, Any] = _decode_properties(row["properties"])
        self.content_type: str | None = row["content_type"]
        self.partition_key: str | None = row["partition_key"]
        self.sequence_number: int = row["seq"]
        self.offset: str = str(row["offset"])
        self.enqueued_time: datetime = datetime.fromtimestamp(row["enqueued"], UTC)
        self.system_properties: dict[bytes, Any] = {
            b"x-opt-sequence-number": self.sequence_number,
            b"x-opt-offset": self.offset.encode(),
            b"x-opt-enqueued-time": int(row["enqueued"] * 1000),
            b"x-opt-partition-key": (self.partition_key or "").encode(),
        }

    @property
    def body(self) -> Iterator[bytes]:
        return iter([self._body])

    def body_as_str(self, encoding: str = "UTF-8") -> str:
        return self._body.decode(encoding)

    def body_as_json(self, encoding: str = "UTF-8") -> Any:
        return orjson.loads(self._body.decode(encoding))

    def __repr__(self) -> str:
        return f"ReceivedEventData(sequence_number={self.sequence_number}, offset={self.offset})"


class _Hubs:
    def __init__(self, environment: LocalEnvironment) -> None:
        self.database = environment.open("eventhubs", SCHEMA)

    async def call(
        self, operation: str, work: Callable[[sqlite3.Connection], Any], *, write: bool
    ) -> Any:
        def with_rows(connection: sqlite3.Connection) -> Any:
            connection.row_factory = sqlite3.Row
            return work(connection)

        return await guarded(
            self.database, f"eventhubs.{operation}", with_rows, write=write,
            error=lambda kind: _FAULT_ERRORS[kind](f"{operation} failed (injected fault)"),
        )  # fmt: skip

    @staticmethod
    def hub(connection: sqlite3.Connection, name: str) -> sqlite3.Row:
        row = connection.execute("SELECT * FROM eh_hubs WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise EventHubError(f"The messaging entity '{name}' could not be found.")
        found: sqlite3.Row = row
        return found


class _LocalEventDataBatch(EventDataBatch):
    """The SDK's batch (its size accounting, ValueError when full), keeping its events."""

    def __init__(
        self, max_size_in_bytes: int, partition_id: str | None, partition_key: str | None
    ) -> None:
        super().__init__(
            max_size_in_bytes=max_size_in_bytes,
            partition_id=partition_id,
            partition_key=partition_key,
        )
        self.local_events: list[EventData] = []
        self.local_partition_id = partition_id
        self.local_partition_key = partition_key

    def add(self, event_data: EventData | Any) -> None:
        super().add(event_data)
        self.local_events.append(event_data)


class EventHubProducerClient:
    """Stand-in for `azure.eventhub.aio.EventHubProducerClient` of one hub."""

    def __init__(self, environment: LocalEnvironment, *, eventhub_name: str) -> None:
        self._hubs = _Hubs(environment)
        self.eventhub_name = eventhub_name
        self._round_robin = random.randrange(1 << 16)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        self._hubs.database.close()

    async def get_partition_ids(self) -> list[str]:
        hub = await self._hubs.call(
            "get_partition_ids", lambda c: _Hubs.hub(c, self.eventhub_name), write=False
        )
        return [str(n) for n in range(hub["partitions"])]

    async def create_batch(
        self,
        *,
        partition_id: str | None = None,
        partition_key: str | None = None,
        max_size_in_bytes: int | None = None,
    ) -> EventDataBatch:
        hub = await self._hubs.call(
            "create_batch", lambda c: _Hubs.hub(c, self.eventhub_name), write=False
        )
        if max_size_in_bytes is not None and max_size_in_bytes > hub["max_event_bytes"]:
            raise ValueError(
                f"Max message size: {max_size_in_bytes} is too large, acceptable max batch size is: "
                f"{hub['max_event_bytes']} bytes."
            )
        return _LocalEventDataBatch(
            max_size_in_bytes or hub["max_event_bytes"], partition_id, partition_key
        )

    async def send_batch(
        self, event_data_batch: EventDataBatch | Sequence[EventData], **kwargs: Any
    ) -> None:
        """Every event of the batch lands on one partition, all or none."""
        if isinstance(event_data_batch, _LocalEventDataBatch):
            if kwargs.get("partition_id") or kwargs.get("partition_key"):
                raise TypeError("partition_id and partition_key go on the batch, not on send_batch")
            events = event_data_batch.local_events
            partition_id = event_data_batch.local_partition_id
            partition_key = event_data_batch.local_partition_key
        elif isinstance(event_data_batch, EventDataBatch):
            raise TypeError("send a batch created by this producer's create_batch()")
        else:
            events = list(event_data_batch)
            partition_id, partition_key = kwargs.get("partition_id"), kwargs.get("partition_key")
        if not events:
            return
        rows = [
            (_body_of(event), _encode_properties(event.properties), event.content_type)
            for event in events
        ]
        self._round_robin += 1
        spin = self._round_robin

        def work(connection: sqlite3.Connection) -> None:
            hub = _Hubs.hub(connection, self.eventhub_name)
            target = partition_id
            if target is None:
                target = (
                    partition_for_key(partition_key, hub["partitions"])
                    if isinstance(partition_key, str)
                    else str(spin % hub["partitions"])
                )
            if not 0 <= int(target) < hub["partitions"]:
                raise EventHubError(f"Partition {target} does not exist in hub '{hub['name']}'.")
            last = connection.execute(
                "SELECT seq, offset + size FROM eh_events WHERE hub = ? AND partition_id = ? ORDER BY seq DESC LIMIT 1",
                (hub["name"], target),
            ).fetchone()
            seq, offset = (last[0], last[1]) if last else (-1, 0)
            now = time.time()
            connection.execute(
                "DELETE FROM eh_events WHERE hub = ? AND partition_id = ? AND enqueued < ? AND seq < ?",
                (hub["name"], target, now - hub["retention_s"], seq),
            )
            for body, properties, content_type in rows:
                seq += 1
                connection.execute(
                    "INSERT INTO eh_events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        hub["name"],
                        target,
                        seq,
                        offset,
                        len(body),
                        body,
                        properties,
                        content_type,
                        partition_key,
                        now,
                    ),
                )
                offset += len(body)

        await self._hubs.call("send_batch", work, write=True)

    async def send_event(self, event_data: EventData, **kwargs: Any) -> None:
        await self.send_batch([event_data], **kwargs)


class PartitionContext:
    """Stand-in for the SDK's PartitionContext: which partition, and `update_checkpoint`."""

    def __init__(self, consumer: EventHubConsumerClient, partition_id: str) -> None:
        self._consumer = consumer
        self.partition_id = partition_id
        self.fully_qualified_namespace = consumer.fully_qualified_namespace
        self.eventhub_name = consumer.eventhub_name
        self.consumer_group = consumer.consumer_group
        self.last_enqueued_event_properties: dict[str, Any] = {}
        self._last_received: ReceivedEventData | None = None

    async def update_checkpoint(self, event: ReceivedEventData | None = None, **_: Any) -> None:
        """Store `event`'s (default: the last received event's) position for this partition."""
        event = event or self._last_received
        store = self._consumer.checkpoint_store
        if event is None:
            return
        if store is None:
            LOGGER.warning("update_checkpoint called without a checkpoint store: nothing stored")
            return
        await store.update_checkpoint(
            {
                "fully_qualified_namespace": self.fully_qualified_namespace,
                "eventhub_name": self.eventhub_name,
                "consumer_group": self.consumer_group,
                "partition_id": self.partition_id,
                "offset": event.offset,
                "sequence_number": event.sequence_number,
            }
        )


class _OwnershipLost(Exception):
    pass


class EventHubConsumerClient:
    """Stand-in for `azure.eventhub.aio.EventHubConsumerClient` of one hub and consumer group."""

    def __init__(
        self,
        environment: LocalEnvironment,
        *,
        eventhub_name: str,
        consumer_group: str,
        checkpoint_store: CheckpointStore | None = None,
        load_balancing_interval: float = 30.0,
        partition_ownership_expiration_interval: float | None = None,
        load_balancing_strategy: str = "greedy",
        fully_qualified_namespace: str = LOCAL_NAMESPACE,
        owner_id: str | None = None,
    ) -> None:
        self._hubs = _Hubs(environment)
        self.eventhub_name = eventhub_name
        self.consumer_group = consumer_group
        self.checkpoint_store = checkpoint_store
        self.fully_qualified_namespace = fully_qualified_namespace
        self.owner_id = owner_id or str(uuid.uuid4())
        self._interval = load_balancing_interval
        self._expiration = partition_ownership_expiration_interval or 6 * load_balancing_interval
        self._greedy = load_balancing_strategy != "balanced"
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._ownership: dict[str, dict[str, Any]] = {}
        self._stopping: asyncio.Event | None = None
        self._finished: asyncio.Event | None = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    @property
    def owned_partitions(self) -> list[str]:
        """The partitions this client reads now (a test and metrics aid; not in the SDK)."""
        return sorted(self._tasks, key=int)

    async def get_partition_ids(self) -> list[str]:
        hub = await self._hubs.call(
            "get_partition_ids", lambda c: _Hubs.hub(c, self.eventhub_name), write=False
        )
        return [str(n) for n in range(hub["partitions"])]

    async def get_partition_properties(self, partition_id: str) -> dict[str, Any]:
        """beginning/last enqueued sequence number and offset, as the SDK reports them."""

        def work(connection: sqlite3.Connection) -> dict[str, Any]:
            _Hubs.hub(connection, self.eventhub_name)
            first, last, offset, enqueued = connection.execute(
                "SELECT MIN(seq), MAX(seq), MAX(offset), MAX(enqueued) FROM eh_events WHERE hub = ? AND partition_id = ?",
                (self.eventhub_name, partition_id),
            ).fetchone()
            return {
                "eventhub_name": self.eventhub_name,
                "id": partition_id,
                "beginning_sequence_number": first if first is not None else -1,
                "last_enqueued_sequence_number": last if last is not None else -1,
                "last_enqueued_offset": str(offset if offset is not None else -1),
                "last_enqueued_time_utc": datetime.fromtimestamp(enqueued, UTC)
                if enqueued
                else None,
                "is_empty": last is None,
            }

        result: dict[str, Any] = await self._hubs.call(
            "get_partition_properties", work, write=False
        )
        return result

    async def receive_batch(
        self,
        on_event_batch: OnEventBatch,
        *,
        max_batch_size: int = 300,
        max_wait_time: float | None = None,
        partition_id: str | None = None,
        starting_position: Any = None,
        starting_position_inclusive: bool | Mapping[str, bool] = False,
        on_error: Callable[[PartitionContext, Exception], Awaitable[None]] | None = None,
        on_partition_initialize: Callable[[PartitionContext], Awaitable[None]] | None = None,
        on_partition_close: Callable[[PartitionContext, CloseReason], Awaitable[None]]
        | None = None,
        **_: Any,
    ) -> None:
        """Read until `close()`. With a checkpoint store and no partition_id, partitions are
        balanced across every consumer of the same hub and consumer group."""
        self._stopping, self._finished = asyncio.Event(), asyncio.Event()
        self._reader = _PartitionReader(
            self, on_event_batch, max_batch_size, max_wait_time, starting_position,
            starting_position_inclusive, on_error, on_partition_initialize, on_partition_close,
        )  # fmt: skip
        try:
            if partition_id is not None or self.checkpoint_store is None:
                for pid in (
                    [partition_id] if partition_id is not None else await self.get_partition_ids()
                ):
                    self._start(pid, balanced=False)
                await self._stopping.wait()
            else:
                while not self._stopping.is_set():
                    await self._balance()
                    jitter = self._interval * random.uniform(0, 0.2)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stopping.wait(), self._interval + jitter)
        finally:
            await self._shutdown()
            self._finished.set()

    async def close(self) -> None:
        """Stop reading (in-flight callbacks are cancelled, as in the SDK) and release ownership."""
        if self._stopping is not None and self._finished is not None:
            self._stopping.set()
            await self._finished.wait()
        self._hubs.database.close()

    # -- partitions --------------------------------------------------------------------------

    def _start(self, partition_id: str, *, balanced: bool) -> None:
        self._tasks[partition_id] = asyncio.create_task(
            self._reader.run(partition_id, balanced=balanced),
            name=f"eventhub-partition-{partition_id}",
        )

    async def _stop(self, partition_id: str, reason: CloseReason) -> None:
        task = self._tasks.pop(partition_id, None)
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await self._reader.closed(partition_id, reason)

    async def _shutdown(self) -> None:
        for partition_id in list(self._tasks):
            await self._stop(partition_id, CloseReason.SHUTDOWN)
        await self._release(list(self._ownership))

    async def _release(self, partition_ids: Sequence[str]) -> None:
        released = [
            self._ownership.pop(pid) | {"owner_id": ""}
            for pid in partition_ids
            if pid in self._ownership
        ]
        if released and self.checkpoint_store is not None:
            await self.checkpoint_store.claim_ownership(released)

    async def _partition_failed(self, partition_id: str) -> None:
        """After a callback error: the partition is closed and released, claimed again later."""
        self._tasks.pop(partition_id, None)
        await self._release([partition_id])

    # -- load balancing (the SDK's greedy / balanced strategies, equal distribution) ---------

    async def _balance(self) -> None:
        assert self.checkpoint_store is not None
        partition_ids = await self.get_partition_ids()
        listed = {
            o["partition_id"]: o
            for o in await self.checkpoint_store.list_ownership(
                self.fully_qualified_namespace, self.eventhub_name, self.consumer_group
            )
        }
        now = time.time()

        def active(ownership: Mapping[str, Any] | None) -> bool:
            return bool(ownership and ownership.get("owner_id")) and (
                now - float(ownership.get("last_modified_time") or 0) < self._expiration  # type: ignore[union-attr]
            )

        counts: dict[str, list[str]] = {self.owner_id: []}
        for pid, ownership in listed.items():
            if active(ownership) and pid in partition_ids:
                counts.setdefault(ownership["owner_id"], []).append(pid)
        mine = counts[self.owner_id]
        target = math.ceil(len(partition_ids) / len(counts))
        claims = [listed[pid] for pid in mine]
        need = target - len(mine)
        if need > 0:
            available = [pid for pid in partition_ids if not active(listed.get(pid))]
            random.shuffle(available)
            chosen = available[: need if self._greedy else 1]
            if not chosen:
                victim = max(
                    (o for o in counts if o != self.owner_id),
                    key=lambda o: len(counts[o]),
                    default=None,
                )
                if victim is not None and len(counts[victim]) > target - (1 if need > 1 else 0):
                    chosen = [random.choice(counts[victim])]
            claims += [self._claim_of(pid, listed.get(pid)) for pid in chosen]
        won = (
            {o["partition_id"]: o for o in await self.checkpoint_store.claim_ownership(claims)}
            if claims
            else {}
        )
        for pid in [pid for pid in self._tasks if pid not in won]:
            await self._stop(pid, CloseReason.OWNERSHIP_LOST)
        self._ownership = dict(won)
        for pid in won:
            if pid not in self._tasks:
                self._start(pid, balanced=True)

    def _claim_of(self, partition_id: str, current: Mapping[str, Any] | None) -> dict[str, Any]:
        claim = {
            "fully_qualified_namespace": self.fully_qualified_namespace,
            "eventhub_name": self.eventhub_name,
            "consumer_group": self.consumer_group,
            "partition_id": partition_id,
            "owner_id": self.owner_id,
        }
        if current is not None and current.get("etag"):
            claim["etag"] = current["etag"]
        return claim


class _PartitionReader:
    """One partition's read loop and callbacks, with the consumer's receive options."""

    def __init__(
        self,
        consumer: EventHubConsumerClient,
        on_event_batch: OnEventBatch,
        max_batch_size: int,
        max_wait_time: float | None,
        starting_position: Any,
        inclusive: bool | Mapping[str, bool],
        on_error: Callable[[PartitionContext, Exception], Awaitable[None]] | None,
        on_initialize: Callable[[PartitionContext], Awaitable[None]] | None,
        on_close: Callable[[PartitionContext, CloseReason], Awaitable[None]] | None,
    ) -> None:
        self.consumer = consumer
        self.on_event_batch = on_event_batch
        self.max_batch_size = max_batch_size
        self.max_wait_time = max_wait_time
        self.starting_position = "@latest" if starting_position is None else starting_position
        self.inclusive = inclusive
        self.on_error = on_error
        self.on_initialize = on_initialize
        self.on_close = on_close
        self.contexts: dict[str, PartitionContext] = {}

    async def run(self, partition_id: str, *, balanced: bool) -> None:
        context = self.contexts[partition_id] = PartitionContext(self.consumer, partition_id)
        await self._quietly(self.on_initialize, context)
        try:
            position = await self._start_position(partition_id)
            epoch = await self._become_reader(partition_id) if balanced else None
            await self._loop(context, position, epoch)
        except _OwnershipLost:
            self.consumer._tasks.pop(partition_id, None)
            await self.closed(partition_id, CloseReason.OWNERSHIP_LOST)
        except Exception as error:  # noqa: BLE001 - any callback error closes the partition, as in the SDK
            LOGGER.warning("partition %s closed after an error: %r", partition_id, error)
            if self.on_error is not None:
                await self._quietly(self.on_error, context, error)
            await self.closed(partition_id, CloseReason.OWNERSHIP_LOST)
            await self.consumer._partition_failed(partition_id)

    async def closed(self, partition_id: str, reason: CloseReason) -> None:
        context = self.contexts.pop(partition_id, None)
        if context is not None:
            await self._quietly(self.on_close, context, reason)

    @staticmethod
    async def _quietly(callback: Callable[..., Awaitable[None]] | None, *args: Any) -> None:
        """Errors in on_error / on_partition_* are logged only, as the SDK does."""
        if callback is None:
            return
        try:
            await callback(*args)
        except Exception:
            LOGGER.exception("error in an Event Hubs consumer callback")

    async def _loop(self, context: PartitionContext, position: int, epoch: int | None) -> None:
        last_callback = time.monotonic()
        while True:
            read = functools.partial(
                self._read, partition_id=context.partition_id, after=position, epoch=epoch
            )
            rows = await self.consumer._hubs.call("receive", read, write=False)
            if rows:
                events = [ReceivedEventData(row) for row in rows]
                context._last_received = events[-1]
                position = events[-1].sequence_number
                await self.on_event_batch(context, events)
                last_callback = time.monotonic()
            elif self.max_wait_time and time.monotonic() - last_callback >= self.max_wait_time:
                await self.on_event_batch(context, [])
                last_callback = time.monotonic()
            else:
                await asyncio.sleep(POLL_INTERVAL_S)

    def _read(
        self, connection: sqlite3.Connection, partition_id: str, after: int, epoch: int | None
    ) -> list[Any]:
        hub = _Hubs.hub(connection, self.consumer.eventhub_name)
        if epoch is not None:
            reader = connection.execute(
                "SELECT owner, epoch FROM eh_readers WHERE hub = ? AND consumer_group = ? AND partition_id = ?",
                (hub["name"], self.consumer.consumer_group, partition_id),
            ).fetchone()
            if reader is None or (reader["owner"], reader["epoch"]) != (
                self.consumer.owner_id,
                epoch,
            ):
                raise _OwnershipLost
        return connection.execute(
            "SELECT * FROM eh_events WHERE hub = ? AND partition_id = ? AND seq > ? AND enqueued >= ? "
            "ORDER BY seq LIMIT ?",
            (
                hub["name"],
                partition_id,
                after,
                time.time() - hub["retention_s"],
                self.max_batch_size,
            ),
        ).fetchall()

    async def _become_reader(self, partition_id: str) -> int:
        """Like an epoch receiver: a newer reader of the partition shuts the older one out."""

        def work(connection: sqlite3.Connection) -> int:
            row = connection.execute(
                "INSERT INTO eh_readers VALUES (?, ?, ?, ?, 1) ON CONFLICT (hub, consumer_group, partition_id) "
                "DO UPDATE SET owner = excluded.owner, epoch = epoch + 1 RETURNING epoch",
                (
                    self.consumer.eventhub_name,
                    self.consumer.consumer_group,
                    partition_id,
                    self.consumer.owner_id,
                ),
            ).fetchone()
            return int(row[0])

        epoch: int = await self.consumer._hubs.call("open_receiver", work, write=True)
        return epoch

    async def _start_position(self, partition_id: str) -> int:
        """The sequence number after which reading starts: the checkpoint's, else the starting position's."""
        store = self.consumer.checkpoint_store
        if store is not None:
            for checkpoint in await store.list_checkpoints(
                self.consumer.fully_qualified_namespace,
                self.consumer.eventhub_name,
                self.consumer.consumer_group,
            ):
                if checkpoint["partition_id"] == partition_id:
                    if checkpoint.get("sequence_number") is not None:
                        return int(checkpoint["sequence_number"])
                    return await self._position_of(
                        partition_id, str(checkpoint["offset"]), inclusive=False
                    )
        position = self.starting_position
        if isinstance(position, Mapping):
            position = position.get(partition_id, "@latest")
        inclusive = (
            self.inclusive.get(partition_id, False)
            if isinstance(self.inclusive, Mapping)
            else self.inclusive
        )
        return await self._position_of(partition_id, position, inclusive=bool(inclusive))

    async def _position_of(self, partition_id: str, position: Any, *, inclusive: bool) -> int:
        def work(connection: sqlite3.Connection) -> int:
            table = "FROM eh_events WHERE hub = ? AND partition_id = ?"
            args = (self.consumer.eventhub_name, partition_id)
            if position == "-1":
                return -1
            if position == "@latest":
                return int(
                    connection.execute(f"SELECT COALESCE(MAX(seq), -1) {table}", args).fetchone()[0]
                )
            if isinstance(position, int):
                return position - 1 if inclusive else position
            if isinstance(position, datetime):
                row = connection.execute(
                    f"SELECT MIN(seq) {table} AND enqueued >= ?", (*args, position.timestamp())
                ).fetchone()
                if row[0] is None:
                    return int(
                        connection.execute(
                            f"SELECT COALESCE(MAX(seq), -1) {table}", args
                        ).fetchone()[0]
                    )
                return int(row[0]) - 1
            row = connection.execute(
                f"SELECT seq {table} AND offset = ?", (*args, int(position))
            ).fetchone()
            if row is None:
                raise EventHubError(f"No event at offset {position} in partition {partition_id}.")
            return int(row[0]) - 1 if inclusive else int(row[0])

        result: int = await self.consumer._hubs.call("position", work, write=False)
        return result
