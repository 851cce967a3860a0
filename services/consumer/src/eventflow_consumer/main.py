"""Entry point. SIGTERM/SIGINT: accept no new session, finish the in-flight message, close."""

from __future__ import annotations

import asyncio
import signal

import structlog
from aiohttp import web

from eventflow_consumer.adapters.servicebus_sessions import SessionPump
from eventflow_consumer.bootstrap import Resources, open_resources
from eventflow_consumer.handling import InboxHandler
from eventflow_consumer.logs import configure_logging
from eventflow_consumer.observability import ConsumerMetrics, http_app
from eventflow_consumer.sessions import PoisonPolicy, SessionWorker, WorkerSettings
from eventflow_consumer.settings import Settings

LOG = structlog.get_logger("eventflow_consumer")


def worker_of(
    settings: Settings,
    resources: Resources,
    metrics: ConsumerMetrics | None = None,
    *,
    policy: PoisonPolicy | None = None,
) -> SessionWorker:
    """`policy` overrides the setting (an unblock replays under the block policy)."""
    worker_settings = WorkerSettings(
        policy=policy or settings.poison_policy, gap_wait_seconds=settings.gap_wait_seconds,
        retry_max_seconds=settings.store_retry_max_seconds, max_deferred=settings.max_deferred_per_session,
    )  # fmt: skip
    return SessionWorker(
        InboxHandler(resources.store), resources.store, worker_settings, observer=metrics
    )


async def run(settings: Settings) -> None:
    metrics = ConsumerMetrics()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with open_resources(settings) as resources:
        worker = worker_of(settings, resources, metrics)
        pump = SessionPump(
            resources.servicebus, settings.inbox_queue, worker,
            concurrency=settings.max_concurrent_sessions, idle_seconds=settings.session_idle_seconds,
            renew_seconds=settings.session_renew_seconds,
        )  # fmt: skip
        running = asyncio.create_task(pump.run())
        runner = web.AppRunner(
            http_app(
                metrics, resources.store.get, lambda: not running.done() and worker.health.available
            ),
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
