"""The operator's CLI for the consumer's inbox.

    eventflow-consumer-admin dead-letters [--limit N]          list dead-letters with their reasons
    eventflow-consumer-admin resubmit [--message-id ID ...] [--keep-message-id] [--limit N]
    eventflow-consumer-admin blocked                           list blocked orders (with their lane)
    eventflow-consumer-admin unblock ORDER [--wait SECONDS]    unblock, replaying deferred messages in order
    eventflow-consumer-admin clear-projection --confirm CONTAINER
                                        delete every order summary and inbox mark, for a rebuild
                                        (docs/operations.md); consumers stopped first

Uses the consumer's own settings (CONSUMER_* environment variables). A resubmitted copy gets a new
message id by default, so Service Bus duplicate detection cannot drop it, and the original leaves
the dead-letter queue only once the copy is sent, in its order's lane under CONSUMER_INBOX_LANES
(recomputed: the lane it was dead-lettered in may be another count's) (the consumer's inbox marks still keep the effect
once: they are keyed by the event id in the body). With --keep-message-id the copy keeps the
original id, which Service Bus silently drops inside the duplicate-detection window: the original
then stays in the dead-letter queue, to be purged by hand once the copy is seen handled.
Bad input gets a one-line error and exit status 2; an operation that finds nothing to do, 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import orjson
from azure.servicebus import ServiceBusMessage, ServiceBusSubQueue
from azure.servicebus.exceptions import (
    MessageLockLostError,
    OperationTimeoutError,
    SessionCannotBeLockedError,
)

from eventflow_consumer.adapters.cosmos_membership import CosmosLaneCounts
from eventflow_consumer.adapters.servicebus_sessions import ServiceBusSessionChannel, keep_locked
from eventflow_consumer.bootstrap import Resources, open_resources, worker_of
from eventflow_consumer.handling import MARKER_PROPERTY, body_of, properties_of
from eventflow_consumer.observability import ConsumerMetrics
from eventflow_consumer.ports import TransientStoreError
from eventflow_consumer.sessions import NotBlocked
from eventflow_consumer.settings import Settings
from eventflow_contracts import ContractError, read_routing
from eventflow_contracts.lanes import parse_lane, session_id_for

PAGE = 100
UNBLOCK_POLL_SECONDS = 0.5
T = TypeVar("T")


def emit(record: dict[str, Any]) -> None:
    sys.stdout.write(orjson.dumps(record, default=str).decode() + "\n")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not at least 1")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} is not above 0")
    return value


async def dead_letters(resources: Resources, settings: Settings, limit: int) -> int:
    """Pages through the dead-letter queue by sequence number (peek neither locks nor counts)."""
    async with resources.servicebus.get_queue_receiver(
        settings.inbox_queue, sub_queue=ServiceBusSubQueue.DEAD_LETTER
    ) as dlq:
        listed, start = 0, 0
        while listed < limit:
            page = await dlq.peek_messages(
                max_message_count=min(PAGE, limit - listed), sequence_number=start
            )
            if not page:
                break
            for message in page:
                emit({"sequence_number": message.sequence_number, "message_id": message.message_id,
                      "session_id": message.session_id, "reason": message.dead_letter_reason,
                      "description": message.dead_letter_error_description,
                      "delivery_count": message.delivery_count, "subject": message.subject})  # fmt: skip
            listed += len(page)
            start = int(page[-1].sequence_number) + 1
    return 0


def session_of_copy(body: bytes, properties: dict[str, Any], session_id: str, lanes: int) -> str:
    """The session a resubmitted copy goes to: its order's lane under today's lane count (the lane
    it was dead-lettered in may belong to another count, or be the wrong one: `lane-mismatch`).
    A marker, or a body whose order cannot be read, keeps the session it came from."""
    if properties.get(MARKER_PROPERTY):
        return session_id
    try:
        order_id = read_routing(body).partitionkey
    except ContractError:
        return session_id
    return session_id_for(order_id, lanes)


def copy_of(message: Any, message_id: str, lanes: int) -> ServiceBusMessage:
    properties: dict[str | bytes, Any] = dict(properties_of(message.application_properties).items())
    body = body_of(message.body)
    session_id = session_of_copy(body, properties_of(message.application_properties),
                                 str(message.session_id), lanes)  # fmt: skip
    return ServiceBusMessage(
        body, message_id=message_id, session_id=session_id, subject=message.subject,
        content_type=message.content_type, application_properties=properties,
    )  # fmt: skip


async def resubmit(
    resources: Resources, settings: Settings, ids: Sequence[str], keep_ids: bool, limit: int
) -> int:
    """Moves up to `limit` dead-letters (those named by `ids`, when given) back to the inbox. The
    whole dead-letter queue is searched: messages not wanted stay locked until the end, so each
    receive brings new ones, and are then abandoned back; the search ends when the queue has no
    more, or (a long queue, where the first locks expired) when it only brings back seen ones."""
    wanted, moved, passed = set(ids), 0, []
    seen: set[int] = set()
    async with (
        resources.servicebus.get_queue_receiver(
            settings.inbox_queue, sub_queue=ServiceBusSubQueue.DEAD_LETTER, max_wait_time=1
        ) as dlq,
        resources.servicebus.get_queue_sender(settings.inbox_queue) as sender,
    ):
        try:
            while moved < limit and (not ids or wanted):
                batch = await dlq.receive_messages(max_message_count=PAGE, max_wait_time=1)
                if not batch:
                    break
                if all(m.sequence_number in seen for m in batch):
                    break  # held locks expired and the scan came round again: all was seen
                seen.update(m.sequence_number for m in batch)
                for message in batch:
                    if (ids and message.message_id not in wanted) or moved >= limit:
                        passed.append(message)
                        continue
                    wanted.discard(message.message_id)
                    await _move(dlq, sender, message, keep_ids, passed, settings.inbox_lanes)
                    moved += 1
        finally:
            for message in passed:
                with contextlib.suppress(MessageLockLostError):  # expired: it is back already
                    await dlq.abandon_message(message)
    for missing in sorted(wanted):
        emit({"error": f"no dead-letter with message id {missing}"})
    return 1 if wanted or (ids and not moved) else 0


async def _move(
    dlq: Any, sender: Any, message: Any, keep_ids: bool, passed: list[Any], lanes: int
) -> None:
    message_id = (
        message.message_id
        if keep_ids
        else f"{message.message_id}:resubmitted:{uuid.uuid4().hex[:8]}"[-128:]
    )
    copy = copy_of(message, message_id, lanes)
    await sender.send_messages(copy)
    if keep_ids:
        passed.append(message)  # a copy with the same id may be dropped as a duplicate: keep it
    else:
        await dlq.complete_message(message)
    emit({"resubmitted": message.message_id, "as": message_id, "session_id": copy.session_id,
          "original": "kept in the dead-letter queue" if keep_ids else "removed"})  # fmt: skip


async def blocked(resources: Resources) -> int:
    """Blocked orders inside lanes (with their lane), and blocked sessions of their own (a
    per-order session of an earlier release, a lane blocked whole by one)."""
    for record in await resources.store.list_blocked():
        lane = record.get("lane")
        entry: dict[str, Any] = (
            {"order_id": record["order_id"], "lane": lane}
            if lane
            else {"session_id": record["order_id"]}
        )
        entry |= {"reason": record["reason"], "blocked_at": record["blocked_at"]}
        requested = (record.get("unblock_requested") or {}).get("id")
        if requested:
            entry["unblock"] = (
                "in progress" if record.get("unblock_started") == requested else "requested"
            )
        emit(entry)
    return 0


async def unblock(resources: Resources, settings: Settings, order_id: str, wait: float) -> int:
    """An order blocked inside a lane: the request is recorded on its blocked record, and the lane's
    holder carries it out (lanes.py); this waits for the outcome. A holder that takes the request
    on finishes it whatever happens to this command (a store outage, an interrupt); one that does
    not take it on within `wait` seconds: the request is withdrawn, nothing changed, exit 1.
    A lane of another lane count than the consumers' (left by a change of the count) has no holder
    for good: this command holds it while the request is carried out (`_carry_out`); interrupting
    the command then stops the replay at a message boundary, the order stays blocked with its
    request in progress, and running `unblock` again finishes it.
    A session blocked on its own (no lane in its record, or no record): `unblock_session`."""
    deadline = time.monotonic() + wait
    record = await _patiently(lambda: resources.store.blocked_record(order_id), deadline)
    if record is None or not record.get("lane"):
        return await unblock_session(resources, settings, order_id, wait)
    lane, request = str(record["lane"]), uuid.uuid4().hex
    if not await _patiently(lambda: resources.store.request_unblock(order_id, request), deadline):
        emit({"unblocked": order_id, "lane": lane, "note": "unblocked meanwhile"})
        return 0
    if not await _held_by_nobody(resources, settings, lane):
        return await _outcome(resources, order_id, lane, request, deadline, wait)
    outcome = asyncio.create_task(_outcome(resources, order_id, lane, request, deadline, wait))
    done = asyncio.Event()
    carrying: asyncio.Task[None] | None = None
    try:
        while not outcome.done():  # the command's hold, again if it ends first (a lost lock)
            carrying = asyncio.create_task(_carry_out(resources, settings, lane, done))
            await asyncio.wait([outcome, carrying], return_when=asyncio.FIRST_COMPLETED)
            if carrying.done() and not outcome.done():
                _report_hold(lane, carrying)
                carrying = None
                await asyncio.wait([outcome], timeout=UNBLOCK_POLL_SECONDS)
        return outcome.result()
    finally:
        done.set()  # the hold finishes the message in handling and releases the lane
        if carrying is not None:
            await asyncio.wait([carrying])
            _report_hold(lane, carrying)
        outcome.cancel()


def _report_hold(lane: str, carrying: asyncio.Task[None]) -> None:
    if not carrying.cancelled() and carrying.exception() is not None:
        emit({"warning": f"holding lane {lane} failed", "error": repr(carrying.exception())})


async def _held_by_nobody(resources: Resources, settings: Settings, lane: str) -> bool:
    """Whether `lane` is of another count than the newest the consumers noted (the lane counts
    record; this command's CONSUMER_INBOX_LANES when the record cannot be read): no replica holds
    it for good, so the command holds it itself while the request is carried out."""
    named = parse_lane(lane)
    if named is None or resources.members is None:
        return False  # without lanes configured here, the record cannot be read: leave it to them
    newest = settings.inbox_lanes
    with contextlib.suppress(TransientStoreError):
        counts = await CosmosLaneCounts(resources.members, queue=settings.inbox_queue).counts()
        newest = counts[-1] if counts else newest
    return named.count != newest


async def _outcome(
    resources: Resources, order_id: str, lane: str, request: str, deadline: float, wait: float
) -> int:
    """Waits for the holder's answer to `request`; withdraws it when nobody took it on in time."""
    started = False
    while True:
        try:
            record = await resources.store.blocked_record(order_id)
        except TransientStoreError:
            await asyncio.sleep(UNBLOCK_POLL_SECONDS)  # the holder waits the outage out as well
            continue
        outcome = _unblock_outcome(record, request)
        if outcome is not None:
            emit({"unblocked": order_id, "lane": lane} | outcome)
            return 0
        started = started or (record or {}).get("unblock_started") == request
        if not started and time.monotonic() > deadline:
            try:
                withdrawn = await resources.store.withdraw_unblock(order_id, request)
            except TransientStoreError:
                continue  # tried again; the holder may have taken it on meanwhile
            if withdrawn:
                emit({"error": f"no consumer holding lane {lane} took the unblock of order {order_id} "
                               f"on within {wait}s (is one running?); nothing changed"})  # fmt: skip
                return 1
        await asyncio.sleep(UNBLOCK_POLL_SECONDS)


async def _carry_out(
    resources: Resources, settings: Settings, lane: str, done: asyncio.Event
) -> None:
    """Holds `lane` (of another lane count: no consumer's lane holder takes it, and the session
    pump takes a session only while it has active messages) with the lane worker, as a consumer
    would, until `done`: the worker takes the recorded request on and replays the order; the
    lane's other orders are handled meanwhile. While another receiver holds the lane (a consumer
    draining it, whose lane worker carries the request out itself), the accept is tried again."""
    from eventflow_consumer.main import barrier_of, lane_worker_of  # noqa: PLC0415 - the service's wiring

    metrics = ConsumerMetrics()
    sessions = worker_of(settings, resources, metrics)
    barrier = barrier_of(settings, resources, consumer=False)
    worker = lane_worker_of(settings, resources, sessions, metrics, barrier)
    client = resources.lane_servicebus or resources.servicebus
    receiver = await _accepted(client, settings.inbox_queue, lane, done)
    if receiver is None:
        return
    async with receiver:
        channel = ServiceBusSessionChannel(receiver)
        renewing = asyncio.create_task(keep_locked(channel, settings.session_renew_seconds))
        try:
            await worker.hold(channel, stopping=lambda: done.is_set() or renewing.done())
        finally:
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewing


async def _accepted(client: Any, queue: str, session_id: str, done: asyncio.Event) -> Any | None:
    """The session's receiver, opened, once no other receiver holds it; None once `done`."""
    while not done.is_set():
        receiver = client.get_queue_receiver(queue, session_id=session_id, max_wait_time=5)
        try:
            await receiver.__aenter__()
        except (SessionCannotBeLockedError, OperationTimeoutError):
            await receiver.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), UNBLOCK_POLL_SECONDS)
            continue
        except BaseException:
            await receiver.close()
            raise
        return receiver
    return None


def _unblock_outcome(record: dict[str, Any] | None, request: str) -> dict[str, Any] | None:
    """None while the request is pending or in progress."""
    if record is None:
        return {"blocked_again": False}
    answer = record.get("unblock_answer") or {}
    if answer.get("id") == request:
        return {"blocked_again": True, "reason": record.get("reason")}
    if (record.get("unblock_requested") or {}).get("id") == request:
        return None
    return {"blocked_again": False, "note": "blocked anew since, by a later message",
            "reason": record.get("reason")}  # fmt: skip


async def _patiently(call: Callable[[], Awaitable[T]], deadline: float) -> T:
    """`call()`, retried while the store is unavailable, until `deadline`."""
    while True:
        try:
            return await call()
        except TransientStoreError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(UNBLOCK_POLL_SECONDS)


async def unblock_session(
    resources: Resources, settings: Settings, session_id: str, wait: float
) -> int:
    """A session blocked on its own (its session state is the truth): accepted by id, its lock
    renewed while the replay runs (a store outage longer than the lock is waited out), replayed
    under the block policy, whatever this command line's own policy setting is: the session was
    blocked by that policy, and a poison message among the deferred blocks it again."""
    deadline = time.monotonic() + wait
    while True:
        try:
            receiver = resources.servicebus.get_queue_receiver(
                settings.inbox_queue, session_id=session_id, max_wait_time=5
            )
            await receiver.__aenter__()
            break
        except (SessionCannotBeLockedError, OperationTimeoutError):
            if time.monotonic() > deadline:
                emit({"error": f"session {session_id} stayed locked by a consumer for {wait}s"})
                return 1
            await asyncio.sleep(0.5)
    async with receiver:
        worker = worker_of(settings, resources, policy="block")
        channel = ServiceBusSessionChannel(receiver)
        renewing = asyncio.create_task(keep_locked(channel, settings.session_renew_seconds))
        try:
            replayed, state = await worker.unblock(channel, lambda: False)
        except NotBlocked:
            if await resources.store.is_blocked(session_id):
                await resources.store.clear_blocked(session_id)
                emit(
                    {
                        "unblocked": session_id,
                        "replayed": [],
                        "note": "the session was not blocked; stale record cleared",
                    }
                )
                return 0
            emit({"error": f"session {session_id} is not blocked"})
            return 1
        finally:
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewing
    emit(
        {
            "unblocked": session_id,
            "replayed": replayed,
            "blocked_again": state.blocked,
            "reason": state.reason,
        }
    )
    return 0


async def clear_projection(resources: Resources, settings: Settings, confirm: str) -> int:
    if confirm != settings.projections_container:
        sys.stderr.write(
            f"eventflow-consumer-admin: --confirm must name the projection container "
            f"({settings.projections_container!r}) to delete its documents\n"
        )
        return 2
    deleted = await resources.store.clear()
    emit({"cleared": settings.projections_container, "documents_deleted": deleted})
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="eventflow-consumer-admin", description=(__doc__ or "").split("\n")[0]
    )
    commands = root.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("dead-letters")
    listing.add_argument("--limit", type=positive_int, default=100)
    moving = commands.add_parser("resubmit")
    moving.add_argument("--message-id", action="append", default=[])
    moving.add_argument("--keep-message-id", action="store_true",
                        help="keep the original id (the original then stays in the dead-letter queue)")  # fmt: skip
    moving.add_argument("--limit", type=positive_int, default=100)
    commands.add_parser("blocked")
    unblocking = commands.add_parser("unblock")
    unblocking.add_argument("session_id", metavar="ORDER",
                            help="the blocked order (or a session blocked on its own)")  # fmt: skip
    unblocking.add_argument(
        "--wait",
        type=positive_float,
        default=60.0,
        help="seconds to wait for the lane's holder to take the request on (or for a consumer to "
        "release a session blocked on its own)",
    )
    clearing = commands.add_parser(
        "clear-projection", help="delete every order summary and inbox mark (for a rebuild)"
    )
    clearing.add_argument("--confirm", required=True, metavar="CONTAINER",
                          help="the projection container's name, as a confirmation")  # fmt: skip
    return root


async def run(argv: Sequence[str] | None) -> int:
    args = parser().parse_args(argv)
    settings = Settings()
    async with open_resources(settings) as resources:
        if args.command == "dead-letters":
            return await dead_letters(resources, settings, args.limit)
        if args.command == "resubmit":
            return await resubmit(
                resources, settings, args.message_id, args.keep_message_id, args.limit
            )
        if args.command == "blocked":
            return await blocked(resources)
        if args.command == "clear-projection":
            return await clear_projection(resources, settings, args.confirm)
        return await unblock(resources, settings, args.session_id, args.wait)


def main(argv: Sequence[str] | None = None) -> None:
    sys.exit(asyncio.run(run(argv)))


if __name__ == "__main__":
    main()
