"""Entry point. SIGTERM/SIGINT: take no new batch, finish the in-flight ones and their checkpoints,
close the consumer (releasing partition ownership) and the inbox sender."""

from __future__ import annotations

import asyncio
import signal

import structlog
from aiohttp import web

from eventflow_subscriber.adapters.eventhubs_reader import Subscription
from eventflow_subscriber.adapters.servicebus_inbox import ServiceBusInbox
from eventflow_subscriber.bootstrap import open_clients
from eventflow_subscriber.forwarding import Forwarder
from eventflow_subscriber.logs import configure_logging
from eventflow_subscriber.observability import SubscriberMetrics, health_app
from eventflow_subscriber.settings import Settings

LOG = structlog.get_logger("eventflow_subscriber")


async def run(settings: Settings) -> None:
    metrics = SubscriberMetrics()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    running: list[asyncio.Task[None]] = []
    runner = web.AppRunner(
        health_app(metrics, lambda: bool(running) and not running[0].done()), access_log=None
    )
    await runner.setup()
    await web.TCPSite(runner, settings.health_host, settings.health_port).start()
    try:
        async with open_clients(settings) as clients:
            forwarder = Forwarder(
                ServiceBusInbox(clients.inbox_sender), hub=settings.eventhub_name,
                subscribed=set(settings.subscribed_types) or None, max_message_bytes=settings.max_message_bytes,
                observer=metrics,
            )  # fmt: skip
            subscription = Subscription(
                clients.consumer, forwarder, max_batch_size=settings.max_batch_size,
                max_wait_time=settings.max_wait_time_seconds, starting_position=settings.starting_position,
                on_checkpoint=metrics.checkpointed,
            )  # fmt: skip
            running.append(asyncio.create_task(subscription.run()))
            stopping = asyncio.create_task(stop.wait())
            await asyncio.wait([running[0], stopping], return_when=asyncio.FIRST_COMPLETED)
            LOG.info("stopping: finishing in-flight batches")
            await subscription.drain(settings.drain_timeout_seconds)
            await running[0]
    finally:
        await runner.cleanup()
    LOG.info("subscriber stopped")


def main() -> None:
    settings = Settings()
    configure_logging(settings.log_level, service="subscriber")
    asyncio.run(run(settings))


if __name__ == "__main__":
    main()
