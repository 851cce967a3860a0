"""Entry point. SIGTERM/SIGINT: accept no new session, finish the in-flight message, close."""

from __future__ import annotations

import asyncio
import signal

import structlog
from aiohttp import web

from eventflow_consumer.adapters.servicebus_sessions import SessionPump, SessionWorker
from eventflow_consumer.bootstrap import Resources, open_resources
from eventflow_consumer.handling import InboxHandler
from eventflow_consumer.logs import configure_logging
from eventflow_consumer.observability import ConsumerMetrics, http_app
from eventflow_consumer.settings import Settings

LOG = structlog.get_logger("eventflow_consumer")


def worker_of(
    settings: Settings, resources: Resources, metrics: ConsumerMetrics | None = None
) -> SessionWorker:
    handler = InboxHandler(resources.store, attempts=settings.transient_attempts)
    return SessionWorker(handler, resources.store, policy=settings.poison_policy, observer=metrics)


async def run(settings: Settings) -> None:
    metrics = ConsumerMetrics()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with open_resources(settings) as resources:

        async def count_blocked() -> int:
            return len(await resources.store.list_blocked())

        pump = SessionPump(
            resources.servicebus, settings.inbox_queue, worker_of(settings, resources, metrics),
            concurrency=settings.max_concurrent_sessions, idle_seconds=settings.session_idle_seconds,
            renew_seconds=settings.session_renew_seconds,
        )  # fmt: skip
        running = asyncio.create_task(pump.run())
        runner = web.AppRunner(
            http_app(metrics, resources.store.get, count_blocked, lambda: not running.done()),
            access_log=None,
        )
        await runner.setup()
        await web.TCPSite(runner, settings.http_host, settings.http_port).start()
        try:
            await asyncio.wait(
                [running, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED
            )
            LOG.info("stopping: finishing in-flight messages")
            pump.stop()
            await running
        finally:
            await runner.cleanup()
    LOG.info("consumer stopped")


def main() -> None:
    settings = Settings()
    configure_logging(settings.log_level, service="consumer")
    asyncio.run(run(settings))


if __name__ == "__main__":
    main()
