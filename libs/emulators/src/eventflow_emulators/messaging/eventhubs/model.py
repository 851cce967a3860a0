"""Event Hubs' rules as plain state: partitions, sequence numbers, offsets, positions, owner levels.

Offsets are byte positions in the partition (the sum of the sizes of the events before), as in the
service, shown as decimal strings. Sequence numbers start at 0 per partition.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from ..config import HubConfig
from ..store import EventRow, Store
from .hashing import partition_for_key

RECENT_EVENTS = 4096  # per partition, served from memory to readers at the tail


class EntityNotFound(Exception):
    pass


class ReaderRefused(Exception):
    def __init__(self, condition: str, description: str) -> None:
        super().__init__(description)
        self.condition = condition
        self.description = description


OUT_OF_RANGE = "com.microsoft:argument-out-of-range"


@dataclass(frozen=True)
class Position:
    """Where a reader starts: after (or at) an offset, a sequence number or an enqueued time."""

    kind: str  # "offset" | "sequence" | "time" | "start" | "end"
    value: int = 0
    inclusive: bool = False


class Reader(Protocol):
    owner_level: int | None

    def displace(self, condition: str, description: str) -> None: ...

    def wake(self) -> None: ...


@dataclass
class Partition:
    hub: str
    index: int
    next_seq: int = 0
    next_offset: int = 0
    last_enqueued_ms: int = 0
    last_offset: int = -1  # offset of the last event; -1 while empty
    recent: deque[EventRow] = field(default_factory=lambda: deque(maxlen=RECENT_EVENTS))
    readers: dict[str, list[Reader]] = field(default_factory=dict)  # by consumer group


def now_ms() -> int:
    return int(time.time() * 1000)


class EventHubsModel:
    def __init__(
        self, hubs: list[HubConfig], store: Store, clock: Callable[[], int] = now_ms
    ) -> None:
        self.store = store
        self.clock = clock
        self.hubs = {h.name.lower(): h for h in hubs}
        self.created_ms = {name: store.hub_created(name, clock()) for name in self.hubs}
        self.partitions: dict[tuple[str, int], Partition] = {}
        self._round_robin = {
            name: itertools.cycle(range(h.partition_count)) for name, h in self.hubs.items()
        }
        for name, hub in self.hubs.items():
            for index in range(hub.partition_count):
                part = Partition(name, index)
                _, last = store.partition_bounds(name, index)
                if last is not None:
                    part.next_seq = last.seq + 1
                    part.next_offset = last.offset  # bounds() gives offset + size for the last
                    part.last_enqueued_ms = last.enqueued_ms
                    part.last_offset = last.offset - len(last.body)
                self.partitions[(name, index)] = part

    # --- lookups ---------------------------------------------------------------------------

    def hub(self, name: str) -> HubConfig:
        hub = self.hubs.get(name.lower())
        if hub is None:
            raise EntityNotFound(f"The messaging entity '{name}' could not be found.")
        return hub

    def partition(self, hub: str, partition_id: str) -> Partition:
        config = self.hub(hub)
        try:
            index = int(partition_id)
        except ValueError:
            index = -1
        if not 0 <= index < config.partition_count:
            raise EntityNotFound(f"Partition '{partition_id}' of '{hub}' does not exist.")
        return self.partitions[(config.name.lower(), index)]

    def check_consumer_group(self, hub: str, group: str) -> None:
        if group.lower() not in (g.lower() for g in self.hub(hub).consumer_groups):
            raise EntityNotFound(f"The consumer group '{group}' of '{hub}' could not be found.")

    def route(self, hub: str, partition_key: str | None) -> int:
        """The partition an event without an explicit partition goes to."""
        config = self.hub(hub)
        if partition_key is not None:
            return partition_for_key(partition_key, config.partition_count)
        return next(self._round_robin[config.name.lower()])

    # --- writing ---------------------------------------------------------------------------

    def append(
        self, part: Partition, bodies: list[Callable[[int, int, int], bytes]]
    ) -> list[EventRow]:
        """Append events; each body is built from its (sequence number, offset, enqueued ms)."""
        enqueued = max(self.clock(), part.last_enqueued_ms)
        rows = []
        seq, offset = part.next_seq, part.next_offset
        for build in bodies:
            body = build(seq, offset, enqueued)
            rows.append(EventRow(seq, offset, enqueued, body))
            seq += 1
            offset += len(body)
        self.store.append_events(part.hub, part.index, rows)
        part.next_seq, part.next_offset, part.last_enqueued_ms = seq, offset, enqueued
        part.last_offset = rows[-1].offset if rows else part.last_offset
        part.recent.extend(rows)
        for readers in part.readers.values():
            for reader in list(readers):
                reader.wake()
        return rows

    def purge(self) -> int:
        dropped = 0
        for name, hub in self.hubs.items():
            dropped += self.store.purge_events(
                name, self.clock() - int(hub.retention.total_seconds() * 1000)
            )
        return dropped

    # --- reading ---------------------------------------------------------------------------

    def start_sequence(self, part: Partition, position: Position) -> int:
        """The first sequence number a reader at `position` gets. A sequence number or an offset
        past the partition's end is refused as the service refuses it, not read as "the end"
        (which would silently skip every event sent until the position is reached): "The
        supplied sequence number '488' is invalid. The last sequence number in the system is
        '482'" (the service's wording, seen in client reports; the AMQP condition is assumed)."""
        if position.kind == "start":
            return 0
        if position.kind == "end":
            return part.next_seq
        if position.kind == "sequence":
            start = position.value if position.inclusive else position.value + 1
            if start > part.next_seq:
                raise ReaderRefused(
                    OUT_OF_RANGE,
                    f"The supplied sequence number '{position.value}' is invalid. The last"
                    f" sequence number in the system is '{part.next_seq - 1}'",
                )
            return start
        if position.kind == "offset":
            end = part.next_offset if position.inclusive else part.last_offset
            if position.value > end:
                raise ReaderRefused(
                    OUT_OF_RANGE,
                    f"The supplied offset '{position.value}' is invalid. The last offset in the"
                    f" system is '{part.last_offset}'",
                )
        column = "offset" if position.kind == "offset" else "enqueued_ms"
        found = self.store.first_seq_at(
            part.hub, part.index, column, position.value, position.inclusive
        )
        return part.next_seq if found is None else found

    def read(self, part: Partition, from_seq: int, limit: int) -> list[EventRow]:
        if part.recent and part.recent[0].seq <= from_seq:
            start = from_seq - part.recent[0].seq
            return list(itertools.islice(part.recent, start, start + limit))
        return self.store.read_events(part.hub, part.index, from_seq, limit)

    def properties(self, part: Partition) -> dict[str, object]:
        first, last = self.store.partition_bounds(part.hub, part.index)
        return {
            "begin_sequence_number": first.seq if first else 0,
            "last_enqueued_sequence_number": part.next_seq - 1,
            "last_enqueued_offset": str(last.offset - len(last.body)) if last else "-1",
            "last_enqueued_time_utc": part.last_enqueued_ms,
            "is_partition_empty": part.next_seq == 0 or first is None,
        }

    # --- owner levels (epochs) -------------------------------------------------------------

    def open_reader(self, part: Partition, group: str, reader: Reader) -> None:
        """Register a reader, displacing those a higher (or equal) owner level takes over.

        Event Hubs: a receiver with an owner level takes the partition from every receiver with a
        lower or equal one and from all receivers without; while it holds, receivers without an
        owner level or with a lower one are refused (https://learn.microsoft.com/azure/event-hubs/
        event-hubs-event-processor-host#epoch, "Epoch"). At most 5 readers per partition and
        consumer group (event-hubs-quotas).
        """
        readers = part.readers.setdefault(group.lower(), [])
        level = reader.owner_level
        holders = [r.owner_level for r in readers if r.owner_level is not None]
        top = max(holders) if holders else None
        if top is not None and (level is None or level < top):
            raise ReaderRefused(
                "amqp:link:stolen",
                f"Receiver with a higher owner level '{top}' already exists; a receiver with"
                f" owner level '{level}' cannot be created.",
            )
        if level is not None:
            for other in [r for r in readers if r.owner_level is None or r.owner_level <= level]:
                readers.remove(other)
                other.displace(
                    "amqp:link:stolen",
                    f"New receiver with higher epoch of '{level}' is created hence current receiver"
                    f" with epoch '{other.owner_level}' is getting disconnected.",
                )
        elif len(readers) >= 5:
            raise ReaderRefused(
                "amqp:resource-limit-exceeded",
                "Exceeded the maximum number of allowed receivers per partition in a consumer"
                " group which is 5.",
            )
        readers.append(reader)

    def close_reader(self, part: Partition, group: str, reader: Reader) -> None:
        readers = part.readers.get(group.lower(), [])
        if reader in readers:
            readers.remove(reader)

    def steal(self, hub: str, group: str | None, partition_id: str) -> int:
        """Detach the readers of a partition as if a higher owner level took it (fault control)."""
        part = self.partition(hub, partition_id)
        stolen = 0
        for name, readers in part.readers.items():
            if group is not None and name != group.lower():
                continue
            for reader in list(readers):
                readers.remove(reader)
                reader.displace(
                    "amqp:link:stolen",
                    "New receiver with higher epoch is created hence current receiver is getting"
                    " disconnected.",
                )
                stolen += 1
        return stolen
