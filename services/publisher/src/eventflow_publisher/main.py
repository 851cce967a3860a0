"""Entry point: settings, logging, resources, the processor and the health endpoint.
SIGTERM/SIGINT: stop reading, finish the in-flight page and its checkpoint, release the leases,
close the clients."""

from __future__ import annotations

import asyncio
import signal

import structlog
from aiohttp import web

from eventflow_publisher.adapters.eventhubs_sender import EventHubsSender
from eventflow_publisher.bootstrap import open_resources
from eventflow_publisher.changefeed import ChangeFeedProcessor, ProcessorOptions
from eventflow_publisher.logs import configure_logging
from eventflow_publisher.observability import PublisherMetrics, health_app
from eventflow_publisher.publishing import EventPublisher, SendHealth
from eventflow_publisher.settings import Settings

LOG = structlog.get_logger("eventflow_publisher")


def options_of(settings: Settings) -> ProcessorOptions:
    return ProcessorOptions(
        instance_name=settings.instance_name, start=settings.start, poll_delay=settings.poll_delay_seconds,
        max_poll_delay=settings.max_poll_delay_seconds, max_items=settings.max_items_per_page,
        acquire_interval=settings.acquire_interval_seconds, renew_interval=settings.renew_interval_seconds,
        expiry=settings.lease_expiry_seconds, lag_interval=settings.lag_interval_seconds,
        stalled_after=settings.stalled_after_seconds,
        oldest_change_limit=settings.event_ttl_seconds * settings.oldest_event_alert_share,
    )  # fmt: skip


async def run(settings: Settings) -> None:
    metrics, health = PublisherMetrics(), SendHealth(settings.unready_after_failing_seconds)
    processor: ChangeFeedProcessor | None = None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    def ready() -> bool:
        return (
            processor is not None
            and processor.ready.is_set()
            and health.ready
            and not processor.problems()
        )

    runner = web.AppRunner(health_app(metrics, ready), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, settings.health_host, settings.health_port).start()
    try:
        async with open_resources(settings) as resources:
            publisher = EventPublisher(
                EventHubsSender(resources.producer),
                resources.poison,
                health=health,
                observer=metrics,
            )
            processor = ChangeFeedProcessor(
                feed=resources.feed,
                leases=resources.leases,
                handler=publisher,
                options=options_of(settings),
                observer=metrics,
            )
            running = asyncio.create_task(processor.run())
            stopped = asyncio.create_task(stop.wait())
            await asyncio.wait([running, stopped], return_when=asyncio.FIRST_COMPLETED)
            if not running.done():
                LOG.info("stopping: finishing in-flight pages, releasing leases")
                await processor.stop()
            await running
    finally:
        await runner.cleanup()
    LOG.info("publisher stopped")


def main() -> None:
    settings = Settings()
    configure_logging(settings.log_level, service="publisher")
    asyncio.run(run(settings))


if __name__ == "__main__":
    main()
