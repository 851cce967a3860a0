"""The operator's CLI for the consumer's inbox.

    eventflow-consumer-admin dead-letters [--limit N]          list dead-letters with their reasons
    eventflow-consumer-admin resubmit [--message-id ID ...] [--new-message-id] [--limit N]
    eventflow-consumer-admin blocked                           list blocked sessions
    eventflow-consumer-admin unblock SESSION [--wait SECONDS]  unblock, replaying deferred messages in order

Uses the consumer's own settings (CONSUMER_* environment variables). A resubmitted copy keeps the
message id, session id and properties; Service Bus drops it as a duplicate while the original id is
within the queue's duplicate-detection window, so use --new-message-id then (the consumer's inbox
marks still keep the effect once: they are keyed by the event id in the body).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from collections.abc import Sequence
from typing import Any

import orjson
from azure.servicebus import ServiceBusMessage, ServiceBusSubQueue
from azure.servicebus.exceptions import OperationTimeoutError, SessionCannotBeLockedError

from eventflow_consumer.bootstrap import Resources, open_resources
from eventflow_consumer.handling import SessionState, body_of, properties_of
from eventflow_consumer.main import worker_of
from eventflow_consumer.settings import Settings


def emit(record: dict[str, Any]) -> None:
    sys.stdout.write(orjson.dumps(record, default=str).decode() + "\n")


async def dead_letters(resources: Resources, settings: Settings, limit: int) -> int:
    async with resources.servicebus.get_queue_receiver(
        settings.inbox_queue, sub_queue=ServiceBusSubQueue.DEAD_LETTER
    ) as dlq:
        for message in await dlq.peek_messages(max_message_count=limit):
            emit({"sequence_number": message.sequence_number, "message_id": message.message_id,
                  "session_id": message.session_id, "reason": message.dead_letter_reason,
                  "description": message.dead_letter_error_description, "delivery_count": message.delivery_count,
                  "subject": message.subject})  # fmt: skip
    return 0


async def resubmit(
    resources: Resources, settings: Settings, ids: Sequence[str], new_ids: bool, limit: int
) -> int:
    moved = 0
    async with (
        resources.servicebus.get_queue_receiver(
            settings.inbox_queue, sub_queue=ServiceBusSubQueue.DEAD_LETTER, max_wait_time=1
        ) as dlq,
        resources.servicebus.get_queue_sender(settings.inbox_queue) as sender,
    ):
        for message in await dlq.receive_messages(max_message_count=limit, max_wait_time=1):
            if ids and message.message_id not in ids:
                await dlq.abandon_message(message)
                continue
            message_id = (
                f"{message.message_id}:resubmitted:{uuid.uuid4().hex[:8]}"[-128:]
                if new_ids
                else message.message_id
            )
            properties: dict[str | bytes, Any] = dict(
                properties_of(message.application_properties).items()
            )
            copy = ServiceBusMessage(
                body_of(message.body), message_id=message_id, session_id=message.session_id, subject=message.subject,
                content_type=message.content_type, application_properties=properties,
            )  # fmt: skip
            await sender.send_messages(copy)
            await dlq.complete_message(message)
            moved += 1
            emit(
                {
                    "resubmitted": message.message_id,
                    "as": message_id,
                    "session_id": message.session_id,
                }
            )
    return 0 if moved or not ids else 1


async def blocked(resources: Resources) -> int:
    for record in await resources.store.list_blocked():
        emit(
            {
                "session_id": record["order_id"],
                "reason": record["reason"],
                "blocked_at": record["blocked_at"],
            }
        )
    return 0


async def unblock(resources: Resources, settings: Settings, session_id: str, wait: float) -> int:
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
        state = SessionState.from_bytes(await receiver.session.get_state())
        replaying = list(state.deferred)
        state.blocked, state.reason = False, None
        await receiver.session.set_state(state.to_bytes())
        await resources.store.clear_blocked(session_id)
        await worker_of(settings, resources).replay_deferred(receiver, state)
        emit(
            {
                "unblocked": session_id,
                "replayed": replaying,
                "blocked_again": state.blocked,
                "reason": state.reason,
            }
        )
    return 0


async def run(argv: Sequence[str] | None) -> int:
    parser = argparse.ArgumentParser(
        prog="eventflow-consumer-admin", description=__doc__.split("\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("dead-letters")
    listing.add_argument("--limit", type=int, default=100)
    moving = commands.add_parser("resubmit")
    moving.add_argument("--message-id", action="append", default=[])
    moving.add_argument("--new-message-id", action="store_true")
    moving.add_argument("--limit", type=int, default=100)
    commands.add_parser("blocked")
    unblocking = commands.add_parser("unblock")
    unblocking.add_argument("session_id")
    unblocking.add_argument(
        "--wait",
        type=float,
        default=60.0,
        help="seconds to wait for a consumer to release the session",
    )
    args = parser.parse_args(argv)
    settings = Settings()
    async with open_resources(settings) as resources:
        if args.command == "dead-letters":
            return await dead_letters(resources, settings, args.limit)
        if args.command == "resubmit":
            return await resubmit(
                resources, settings, args.message_id, args.new_message_id, args.limit
            )
        if args.command == "blocked":
            return await blocked(resources)
        return await unblock(resources, settings, args.session_id, args.wait)


def main(argv: Sequence[str] | None = None) -> None:
    sys.exit(asyncio.run(run(argv)))


if __name__ == "__main__":
    main()
