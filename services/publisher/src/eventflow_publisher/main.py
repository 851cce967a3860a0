"""Entry point: settings, logging, resources, the processor and the health endpoint.
SIGTERM/SIGINT: stop reading, finish the in-flight page and its checkpoint, release the leases,
close the clients. Backends that are down at start are waited for, for as long as it takes (unready
meanwhile); a stop signal while still connecting gives up the connecting (exit 0). Invalid settings
or a setup a backend refuses (a wrong key, a missing role or container): one line on stderr naming
the cause, exit 2."""

from __future__ import annotations

import asyncio
import signal
import sys
from contextlib import AsyncExitStack

import anyio
import structlog
from aiohttp import web
from pydantic import ValidationError

from eventflow_contracts.telemetry import Telemetry, configure_telemetry
from eventflow_publisher.bootstrap import ConfigurationError, open_resources, processors
from eventflow_publisher.changefeed import ChangeFeedProcessor
from eventflow_publisher.observability import METER, SERVICE, PublisherMetrics, health_app
from eventflow_publisher.publishing import SendHealth
from eventflow_publisher.settings import Settings

LOG = structlog.get_logger("eventflow_publisher")


def settings_problems(error: ValidationError) -> str:
    """What is wrong with the settings, on one line, by environment variable; never their values."""
    prefix = str(Settings.model_config.get("env_prefix", ""))
    problems = []
    for item in error.errors(include_url=False, include_input=False):
        message = item["msg"].removeprefix("Value error, ")
        name = "_".join(str(part) for part in item["loc"]).upper()
        problems.append(f"{prefix}{name}: {message}" if name else message)
    return " ".join("; ".join(problems).split())


def load_settings() -> Settings:
    """The settings from the environment; invalid ones end the process with exit code 2."""
    try:
        return Settings()
    except ValidationError as error:
        sys.stderr.write(f"eventflow-publisher: invalid settings: {settings_problems(error)}\n")
        raise SystemExit(2) from None


async def run(settings: Settings, telemetry: Telemetry | None = None) -> None:
    metrics = PublisherMetrics(telemetry)
    health = SendHealth(settings.unready_after_failing_seconds)
    workers: list[ChangeFeedProcessor] = []
    stop, connecting = asyncio.Event(), anyio.CancelScope()

    def on_stop_signal() -> None:
        stop.set()
        connecting.cancel()  # gives up the connecting, if it is still under way

    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, on_stop_signal)

    def ready() -> bool:
        return (
            bool(workers)
            and health.ready
            and all(each.ready.is_set() and not each.problems() for each in workers)
        )

    runner = web.AppRunner(health_app(metrics, ready), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, settings.health_host, settings.health_port).start()
    try:
        async with AsyncExitStack() as stack:
            with connecting:
                resources = await stack.enter_async_context(open_resources(settings))
            if connecting.cancel_called:
                LOG.info("stopped while connecting")
                return
            workers.extend(processors(settings, resources, health=health, metrics=metrics))
            running = [asyncio.create_task(each.run()) for each in workers]
            stopped = asyncio.create_task(stop.wait())
            await asyncio.wait([*running, stopped], return_when=asyncio.FIRST_COMPLETED)
            if not stopped.done():
                LOG.error("a change feed processor ended; stopping the others")
            LOG.info("stopping: finishing in-flight pages, releasing leases")
            await asyncio.gather(*(each.stop() for each in workers))
            stopped.cancel()
            for task in running:
                await task
    finally:
        await runner.cleanup()
    LOG.info("publisher stopped")


def main() -> None:
    settings = load_settings()
    telemetry = configure_telemetry(SERVICE, settings, METER)
    try:
        asyncio.run(run(settings, telemetry))
    except ConfigurationError as error:
        sys.stderr.write(f"eventflow-publisher: cannot start: {error}\n")
        raise SystemExit(2) from None
    finally:
        telemetry.shutdown()


if __name__ == "__main__":
    main()
