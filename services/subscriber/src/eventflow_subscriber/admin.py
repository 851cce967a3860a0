"""The operator's CLI for the subscriber's position in the hub.

    eventflow-subscriber-admin checkpoints
        each partition: its checkpoint, the hub's last event, and how many events are left to read
    eventflow-subscriber-admin rewind --to TIME|beginning [--partition ID ...] [--dry-run] [--force]
                                      [--reader-group GROUP]
        move the checkpoints back so the subscribers read again every event enqueued at or after TIME
        (ISO 8601 with a time zone, e.g. 2026-11-28T09:00:00Z), or everything the hub still retains

A rewind replays: the events between the new and the old checkpoint reach the inbox again, and the
consumer's duplicate checks (inbox marks and each order's last applied sequence) keep their effects
single. A checkpoint is only ever moved back, never forward (that would skip events). The hub keeps
events for its retention period only: what is older is gone, and `--to` earlier than that starts at the
oldest retained event (the dry run says so per partition).

The subscribers must be stopped first (scaled to zero): a running one keeps reading from where it is
and overwrites the rewound checkpoint at its next batch. Partitions still claimed by an owner that renewed
its claim recently refuse the rewind; --force writes anyway (for claims left by a killed process). A
dry run works while they run, reading the hub in another consumer group (--reader-group $Default): the
running subscribers' exclusive receivers keep other readers out of their own group.

Uses the subscriber's own settings (SUBSCRIBER_* environment variables) and the same SDK clients.
Output: one JSON object per partition on stdout. Bad input: a one-line error and exit status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from azure.eventhub.exceptions import EventHubError

from eventflow_subscriber.bootstrap import open_hub
from eventflow_subscriber.main import load_settings
from eventflow_subscriber.settings import Settings

BEGINNING = "beginning"
START_OF_STREAM = (
    "-1"  # the offset before the first event: reading goes on from the oldest retained
)
# The SDK treats a claim as expired after six load-balancing intervals without a renewal.
CLAIM_EXPIRY_INTERVALS = 6
READ_WAIT_SECONDS = 5.0
READ_TIMEOUT_SECONDS = 60.0


def emit(record: dict[str, Any]) -> None:
    sys.stdout.write(orjson.dumps(record, default=str).decode() + "\n")


def point_in_time(text: str) -> datetime | None:
    """`beginning` (None) or an aware ISO 8601 time."""
    if text == BEGINNING:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 time (e.g. 2026-11-28T09:00:00Z) or 'beginning'"
        ) from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} has no time zone: add Z or an offset such as +01:00"
        )
    if moment > datetime.now(UTC):
        raise argparse.ArgumentTypeError(f"{text!r} is in the future: nothing to replay")
    return moment


class HubReadTimeout(Exception):
    """An event the partition holds could not be read in time."""


@dataclass(frozen=True)
class Hub:
    """What the admin commands use: the checkpoint store, a consumer client without it (for reads
    at a position), and the names the checkpoints are stored under."""

    store: Any
    client: Any
    new_client: Callable[[], Any]
    namespace: str
    hub: str
    group: str
    claim_expiry_seconds: float
    reader_group: str

    async def partitions(self, wanted: Sequence[str] = ()) -> list[str]:
        ids = [str(p) for p in await self.client.get_partition_ids()]
        unknown = sorted(set(wanted) - set(ids))
        if unknown:
            raise ValueError(
                f"hub {self.hub!r} has no partition {', '.join(unknown)} (it has {', '.join(ids)})"
            )
        return [p for p in ids if not wanted or p in wanted]

    async def checkpoints(self) -> dict[str, dict[str, Any]]:
        listed = await self.store.list_checkpoints(self.namespace, self.hub, self.group)
        return {str(c["partition_id"]): c for c in listed}

    async def live_claims(self) -> dict[str, dict[str, Any]]:
        """Partitions whose owner renewed its claim within the SDK's expiry."""
        now = time.time()
        claims = await self.store.list_ownership(self.namespace, self.hub, self.group)
        return {
            str(c["partition_id"]): c
            for c in claims
            if c.get("owner_id")
            and now - float(c.get("last_modified_time") or 0) < self.claim_expiry_seconds
        }

    async def first_event(self, partition: str, position: datetime | int) -> Any:
        """The first event at `position` (an enqueued time: at or after it; a sequence number: that
        event, or the oldest retained when it has left the retention). The caller knows one is
        there (from the partition's properties): an empty answer is a slow link, not a no, so
        this waits for an event. Raises HubReadTimeout."""
        found: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        async def on_batch(_context: Any, events: list[Any]) -> None:
            if events and not found.done():
                found.set_result(events[0])

        async def on_error(_context: Any, error: Exception) -> None:
            if not found.done():
                found.set_exception(error)

        reader = self.new_client()
        reading = reader.receive_batch(
            on_batch, partition_id=partition, starting_position=position,
            starting_position_inclusive=True, max_batch_size=1,
            max_wait_time=READ_WAIT_SECONDS, on_error=on_error,
        )  # fmt: skip
        receiving = asyncio.create_task(reading)
        try:
            return await asyncio.wait_for(asyncio.shield(found), READ_TIMEOUT_SECONDS)
        except TimeoutError:
            raise HubReadTimeout(
                f"partition {partition}: no event read at {position} within {READ_TIMEOUT_SECONDS:.0f}s "
                "although the partition's properties show one; nothing was written"
            ) from None
        finally:
            await reader.close()
            receiving.cancel()  # receive_batch does not always return after close
            await asyncio.wait([receiving])


@asynccontextmanager
async def opened(settings: Settings, reader_group: str | None) -> AsyncIterator[Hub]:
    async with AsyncExitStack() as stack:
        store, new_client, namespace = await open_hub(settings, stack, reader_group)
        client = await stack.enter_async_context(new_client())
        yield Hub(
            store, client, new_client, namespace, settings.eventhub_name, settings.consumer_group,
            CLAIM_EXPIRY_INTERVALS * settings.load_balancing_interval_seconds,
            reader_group or settings.consumer_group,
        )  # fmt: skip


async def checkpoints(hub: Hub) -> int:
    current = await hub.checkpoints()
    for partition in await hub.partitions():
        properties = await hub.client.get_partition_properties(partition)
        last = int(properties["last_enqueued_sequence_number"])
        checkpoint = current.get(partition)
        done = int(checkpoint["sequence_number"]) if checkpoint else None
        emit({
            "partition": partition,
            "checkpoint_sequence_number": done,
            "checkpoint_offset": checkpoint["offset"] if checkpoint else None,
            "oldest_retained_sequence_number": int(properties["beginning_sequence_number"]),
            "last_sequence_number": last,
            "last_enqueued_time": properties["last_enqueued_time_utc"],
            "unread": None if properties["is_empty"] else last - (done if done is not None else -1),
        })  # fmt: skip
    return 0


async def _target(hub: Hub, partition: str, to: datetime | None) -> tuple[Any, Any] | None:
    """The first event to read again (at or after `to`, or the oldest retained) and the event
    before it (None when it is the oldest retained); None when the partition has no such event."""
    properties = await hub.client.get_partition_properties(partition)
    if properties["is_empty"] or (to is not None and properties["last_enqueued_time_utc"] < to):
        return None
    oldest = int(properties["beginning_sequence_number"])
    first = await hub.first_event(partition, to if to is not None else oldest)
    sequence = int(first.sequence_number)
    before = None
    if sequence > oldest:
        before = await hub.first_event(partition, sequence - 1)
        if int(before.sequence_number) != sequence - 1:
            before = (
                None  # it left the retention meanwhile: the replay starts at the oldest retained
            )
    return first, before


async def rewind(
    hub: Hub, to: datetime | None, partitions: Sequence[str], *, dry_run: bool, force: bool
) -> int:
    wanted = await hub.partitions(partitions)
    claims = await hub.live_claims()
    claimed = sorted(set(wanted) & set(claims))
    if claimed and not force and not dry_run:
        owners = sorted({str(claims[p]["owner_id"]) for p in claimed})
        sys.stderr.write(
            f"eventflow-subscriber-admin: partitions {', '.join(claimed)} are claimed by running "
            f"subscribers ({', '.join(owners)}); stop them first (a running subscriber overwrites the "
            f"rewound checkpoint), or pass --force for claims a killed process left behind\n"
        )
        return 2
    if claimed and not force and hub.reader_group == hub.group:
        sys.stderr.write(
            f"eventflow-subscriber-admin: partitions {', '.join(claimed)} are being read by running "
            f"subscribers, whose exclusive receivers keep other readers out of consumer group "
            f"{hub.group!r}: pass --reader-group with another consumer group of the hub (e.g. $Default)\n"
        )
        return 2
    current = await hub.checkpoints()
    # Each read at a position costs a connection: the partitions are looked up side by side.
    targets = await asyncio.gather(*(
        _target(hub, p, to) if p in current else asyncio.sleep(0, None) for p in wanted
    ))  # fmt: skip
    for partition, target in zip(wanted, targets, strict=True):
        checkpoint = current.get(partition)
        record: dict[str, Any] = {"partition": partition, "dry_run": dry_run}
        if partition in claims:
            record["claimed_by"] = claims[partition]["owner_id"]
        if checkpoint is None:
            emit(record | {"action": "unchanged",
                           "why": "no checkpoint: the subscriber reads from its starting position"})  # fmt: skip
            continue
        done = int(checkpoint["sequence_number"])
        if target is None:
            emit(record | {"action": "unchanged", "checkpoint_sequence_number": done,
                           "why": "no retained event at or after the time"})  # fmt: skip
            continue
        first, before = target
        new_sequence = int(first.sequence_number) - 1
        if new_sequence >= done:
            emit(record | {"action": "unchanged", "checkpoint_sequence_number": done,
                           "why": "the checkpoint is already before the time (a rewind never moves it forward)"})  # fmt: skip
            continue
        record |= {
            "action": "rewind",
            "checkpoint_sequence_number": done,
            "new_checkpoint_sequence_number": new_sequence,
            "first_replayed_sequence_number": int(first.sequence_number),
            "first_replayed_enqueued_time": first.enqueued_time,
            "replayed": done - new_sequence,
        }
        if to is not None and before is None and first.enqueued_time > to:
            record["note"] = (
                "the hub no longer retains events that old: replay starts at the oldest retained"
            )
        if not dry_run:
            await hub.store.update_checkpoint({
                "fully_qualified_namespace": hub.namespace, "eventhub_name": hub.hub,
                "consumer_group": hub.group, "partition_id": partition,
                "offset": str(before.offset) if before is not None else START_OF_STREAM,
                "sequence_number": new_sequence,
            })  # fmt: skip
        emit(record)
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="eventflow-subscriber-admin",
        description="The subscriber's checkpoints: list them, or rewind them to replay events.",
    )
    commands = root.add_subparsers(dest="command", required=True)
    commands.add_parser("checkpoints", help="each partition's checkpoint and what is left to read")
    back = commands.add_parser("rewind", help="move checkpoints back to replay events from a time")
    back.add_argument(
        "--to", required=True, type=point_in_time, metavar="TIME|beginning",
        help="ISO 8601 time with a zone: replay every event enqueued at or after it; or 'beginning'",
    )  # fmt: skip
    back.add_argument(
        "--partition", action="append", default=[], help="only this partition (repeatable)"
    )
    back.add_argument("--dry-run", action="store_true", help="show per partition what would change")
    back.add_argument(
        "--reader-group", metavar="GROUP",
        help="consumer group to read the hub's events in (default: the subscriber's; while "
        "subscribers run, another one such as $Default, for a dry run)",
    )  # fmt: skip
    back.add_argument("--force", action="store_true", help="write even where a claim looks live")
    return root


async def run(arguments: argparse.Namespace, settings: Settings) -> int:
    async with opened(settings, getattr(arguments, "reader_group", None)) as hub:
        try:
            if arguments.command == "checkpoints":
                return await checkpoints(hub)
            return await rewind(
                hub, arguments.to, arguments.partition, dry_run=arguments.dry_run,
                force=arguments.force,
            )  # fmt: skip
        except ValueError as error:
            sys.stderr.write(f"eventflow-subscriber-admin: {error}\n")
            return 2
        except (EventHubError, HubReadTimeout) as error:
            sys.stderr.write(f"eventflow-subscriber-admin: could not read the hub: {error}\n")
            return 1


def main(argv: Sequence[str] | None = None) -> None:
    arguments = parser().parse_args(argv)
    settings = load_settings()
    raise SystemExit(asyncio.run(run(arguments, settings)))


if __name__ == "__main__":
    main()
