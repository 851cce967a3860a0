"""Worker processes for the cross-process tests: each prints JSON lines on stdout as it goes.

python workers.py eh-consume FOLDER OWNER
python workers.py sb-sessions FOLDER QUEUE
python workers.py sb-take-one FOLDER QUEUE
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import orjson
from azure.servicebus import NEXT_AVAILABLE_SESSION
from azure.servicebus.exceptions import OperationTimeoutError

from eventflow_local.checkpoints import SqliteCheckpointStore
from eventflow_local.environment import LocalEnvironment
from eventflow_local.eventhubs import EventHubConsumerClient
from eventflow_local.servicebus import ServiceBusClient


def emit(**fields: Any) -> None:
    sys.stdout.write(orjson.dumps(fields | {"t": time.time()}).decode() + "\n")
    sys.stdout.flush()


async def eh_consume(environment: LocalEnvironment, owner: str) -> None:
    consumer = EventHubConsumerClient(
        environment, eventhub_name="orders", consumer_group="subscriber", owner_id=owner,
        checkpoint_store=SqliteCheckpointStore(environment), load_balancing_interval=0.3,
        partition_ownership_expiration_interval=1.5,
    )  # fmt: skip

    async def on_batch(context: Any, events: list[Any]) -> None:
        for event in events:
            emit(partition=context.partition_id, body=event.body_as_str())
        await context.update_checkpoint(events[-1])

    emit(started=owner)
    await consumer.receive_batch(on_batch, starting_position="-1")


async def sb_sessions(environment: LocalEnvironment, queue: str) -> None:
    async with ServiceBusClient(environment) as client:
        while True:
            try:
                receiver = client.get_queue_receiver(
                    queue, session_id=NEXT_AVAILABLE_SESSION, max_wait_time=2
                )
                await receiver.__aenter__()
            except OperationTimeoutError:
                emit(done=True)
                return
            session = receiver.session.session_id
            emit(acquired=session)
            for message in await receiver.receive_messages(max_message_count=10, max_wait_time=0.5):
                emit(handling=session, body=str(message))
                await asyncio.sleep(0.05)
                await receiver.complete_message(message)
            emit(releasing=session)
            await receiver.close()


async def sb_take_one(environment: LocalEnvironment, queue: str) -> None:
    async with ServiceBusClient(environment) as client:
        receiver = client.get_queue_receiver(queue, max_wait_time=10)
        async with receiver:
            (message,) = await receiver.receive_messages(max_message_count=1, max_wait_time=10)
            emit(locked=message.message_id, delivery_count=message.delivery_count)
            await asyncio.sleep(3600)  # hold the lock until the test kills this process


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("command")
    parser.add_argument("folder", type=Path)
    parser.add_argument("argument")
    args = parser.parse_args()
    environment = LocalEnvironment(args.folder)
    commands = {
        "eh-consume": lambda: eh_consume(environment, args.argument),
        "sb-sessions": lambda: sb_sessions(environment, args.argument),
        "sb-take-one": lambda: sb_take_one(environment, args.argument),
    }
    asyncio.run(commands[args.command]())


if __name__ == "__main__":
    main()
